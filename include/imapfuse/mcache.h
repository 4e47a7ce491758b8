/* mcache.h - one mailbox's message list, kept on disk between mounts.
 *
 * Owns: the file format of a mailbox's metadata snapshot -- UIDVALIDITY,
 * HIGHESTMODSEQ, UIDNEXT, when its entries last changed, the distinct flag
 * strings, and per message its UID, flag-string index, size, date and
 * when it was first listed -- and reading and writing it
 * whole.  A file is written atomically (temporary file + rename) and
 * carries a checksum; anything unexpected when loading (short file, other
 * version, checksum mismatch, unsorted UIDs, bad flag index) is an error,
 * after which the caller refetches from the server.  No I/O but the one
 * file; no state between calls.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define MCACHE_ERROR (mcache_error_quark())
GQuark mcache_error_quark(void);
typedef enum {
  MCACHE_ERROR_CORRUPT, /* load: the file is not a valid snapshot */
  MCACHE_ERROR_INVALID, /* save: unsorted or zero UIDs, flag index out of range */
} McacheError;
/* I/O failures are G_FILE_ERROR (a missing file: G_FILE_ERROR_NOENT). */

/* Same layout as DcMsg in dircache.h. */
typedef struct {
  guint32 uid;     /* > 0, strictly increasing in a list */
  guint32 flagset; /* index into the flag strings */
  guint64 size;
  gint64 date;
  guint32 seen; /* 0 in version 1 files */
} McMsg;

/* The mailbox as a whole. */
typedef struct {
  guint32 uidvalidity;
  guint32 uidnext;
  guint64 highestmodseq;
  guint64 changed_us; /* wall-clock us its messages or subfolders last changed
                       * (the directory's mtime); 0 in version 1 and 2 files,
                       * whole seconds in version 3 */
} McHead;

/* Writes the snapshot to path (atomically; not fsync()ed).  msgs must be
 * sorted by UID without duplicates; every flagset < n_flagsets. */
gboolean mcache_save(const char *path, const McHead *head, const McMsg *msgs, guint n_msgs,
                     const char *const *flagsets, guint n_flagsets, GError **error);

/* Reads a snapshot.  On success every out-parameter is set; *msgs is a new
 * GArray of McMsg sorted by UID, *flagsets a new GPtrArray of char* (freed
 * with it).  On failure nothing is set. */
gboolean mcache_load(const char *path, McHead *head, GArray **msgs, GPtrArray **flagsets,
                     GError **error);

G_END_DECLS
