/* diskcache.h - immutable blobs on disk, bounded, least recently used out.
 *
 * Owns: one cache directory (exclusively, through a lock file) holding
 * blobs keyed by (group, name) -- for imapfuse a group is
 * "<account>/<mailbox>/<UIDVALIDITY>" and a name is a UID or a UID plus a
 * chunk suffix.  The bytes stored under a key never change, so an entry is
 * never updated, only evicted (about least recently used first, across
 * restarts: entries live in an append-only log of segment files, evicted a
 * segment at a time, oldest first, and a use of an old entry copies it
 * forward) or dropped with its whole group.
 * Both parts of a key are arbitrary NUL-terminated strings ('/', "..",
 * spaces, UTF-8 and long names are all fine).  Sizes count whole segment
 * files: each record is a short header, the key and the bytes, and records
 * that are no longer live count until their segment is evicted.
 * All functions may be called from several threads at once, except
 * diskcache_close(), which must be the last call.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define DISKCACHE_ERROR (diskcache_error_quark())
GQuark diskcache_error_quark(void);
typedef enum {
  DISKCACHE_ERROR_LOCKED, /* another process has the directory open */
} DiskcacheError;
/* Everything else is G_FILE_ERROR from the failing system call. */

typedef struct Diskcache Diskcache;

/* Opens (creating it 0700, with parents) the cache in dir and takes its
 * lock; fails with DISKCACHE_ERROR_LOCKED while another Diskcache -- in this
 * or another process -- has it open.  Rebuilds the index by reading every
 * segment through (in 64 KiB blocks; headers and keys are parsed, the
 * data skipped), cuts a segment
 * at its first bad record (a torn append left by a crash), deletes
 * anything else in dir (e.g. an older format's files), and evicts down to
 * max_bytes if the bound shrank. */
Diskcache *diskcache_open(const char *dir, guint64 max_bytes, GError **error);
void diskcache_close(Diskcache *dc);

/* The bytes stored under (group, name), or NULL if there are none.  A
 * damaged entry (bad header or checksum, wrong key, wrong or short length;
 * the bytes themselves are not checksummed) is forgotten and reported as
 * absent.  A hit counts as a use (see diskcache.c for how exactly). */
GBytes *diskcache_get(Diskcache *dc, const char *group, const char *name);

/* Whether (group, name) is stored, from the index alone (no I/O; does not
 * count as a use).  A TRUE can still be followed by a NULL get if the record
 * turns out damaged or is evicted meanwhile. */
gboolean diskcache_contains(Diskcache *dc, const char *group, const char *name);

/* Stores data under (group, name), evicting the oldest segments to stay
 * within max_bytes.  Atomic: a crash leaves the old state or the new one,
 * never a partial entry (a torn record is cut off at the next open).
 * Storing a key that is already present only marks it used (the bytes for
 * a key never change).  An entry whose record would be larger than
 * max_bytes is silently not stored (TRUE).  FALSE only when the record
 * cannot be written (e.g. G_FILE_ERROR_NOSPC even after evicting), leaving
 * the cache as it was. */
gboolean diskcache_put(Diskcache *dc, const char *group, const char *name, GBytes *data,
                       GError **error);

/* diskcache_put for n entries of one group (names[i] -> datas[i], the
 * names distinct: a name given twice is written twice, the first copy
 * dead space) at once: entries that follow each other in the log are
 * written with one system call.  Each entry is stored or not as with
 * diskcache_put of its own; FALSE (and the first error) when one or more
 * could not be written, the others stored. */
gboolean diskcache_put_many(Diskcache *dc, const char *group, guint n, const char *const *names,
                            GBytes *const *datas, GError **error);

/* Drops every entry of a group (a mailbox whose UIDVALIDITY changed); a
 * tombstone record keeps them dropped across a restart. */
void diskcache_remove_group(Diskcache *dc, const char *group);

/* How many entries of the directory, found at open, are not the cache's
 * (left alone, not counted in its size); *example gets the first one's
 * name (owned by dc) when there are any. */
guint diskcache_foreign(Diskcache *dc, const char **example);

/* The bound on its bytes, as given to diskcache_open. */
guint64 diskcache_bound(const Diskcache *dc);
/* Bytes in the segment files (writes in progress not counted) and number
 * of live entries. */
guint64 diskcache_size(Diskcache *dc);
guint diskcache_count(Diskcache *dc);

G_END_DECLS
