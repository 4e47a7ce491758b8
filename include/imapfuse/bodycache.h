/* bodycache.h - message bytes, fetched from the server and kept.
 *
 * Owns: getting the bytes of (mailbox, UIDVALIDITY, UID) for a read, and
 * keeping them: a message's bytes never change for that key, so anything
 * fetched can be served again without asking the server.  Small messages
 * are fetched whole; large ones in aligned chunks (BODY.PEEK[]<off.len>),
 * so reading the head of a 20 MB message costs one chunk.  Also owns
 * read-ahead across files: when files of a mailbox are opened in listing
 * order, the next messages are fetched in bulk ahead of the reader.
 */
#pragma once

#include <glib.h>

#include "imapfuse/dircache.h"
#include "imapfuse/pool.h"

G_BEGIN_DECLS

typedef struct Bodycache Bodycache;
typedef struct Diskcache Diskcache;

typedef struct {
  guint64 mem_bytes;       /* in-memory LRU bound */
  guint64 chunk_bytes;     /* partial-fetch unit; messages up to this size are fetched whole */
  guint64 readahead_bytes; /* bound on bytes fetched ahead of readers and not yet read; 0 = off */
  guint readahead_threads; /* connections read-ahead may use at once (0 counts as 1) */
  /* Read-ahead batches fetched from the server at once (at most
   * readahead_threads); 0: by the server's round trip, 1 when it is near,
   * else readahead_threads. */
  guint readahead_batches;
  Diskcache *disk;         /* on-disk tier, or NULL */
  const char *account;     /* disk key prefix for this account */
  /* A scan reaching the end of a mailbox goes on into the one a walk in
   * readdir order reads next (dircache_walk_next): its listing and first
   * batch, before the reader gets there.  NULL: it does not.  Must
   * outlive the bodycache. */
  Dircache *dc;
  gint64 list_max_age_us; /* for that listing, as opendir would ask */
} BodycacheOptions;

Bodycache *bodycache_new(Pool *pool, const BodycacheOptions *opts);
/* Starts the read-ahead and disk-writer threads; call after daemonising
 * (until then: no read-ahead, disk writes inline). */
void bodycache_start(Bodycache *bc);
void bodycache_free(Bodycache *bc);

/* Up to len bytes at off of the message (fewer at its end; empty past it).
 * size is what the listing says.  *real_size (may be NULL; the caller
 * sets it to size) becomes the true length when the bytes read show it (a
 * whole message, or the short last chunk of a large one), or at least the
 * end of a full chunk read past it (the message is longer than size).
 * Errors: IFS_ERROR_NOT_FOUND (expunged), IFS_ERROR_STALE (UIDVALIDITY
 * changed), connection errors. */
GBytes *bodycache_read(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 size, guint64 off, gsize len, guint64 *real_size,
                       GError **error);

/* A file was opened: uid of listing l in mailbox.  Drives read-ahead.
 * TRUE if this scan of the mailbox had not opened it before. */
gboolean bodycache_opened(Bodycache *bc, const char *mailbox, const DcListing *l, guint32 uid);
/* The whole message if its bytes are at hand in memory, without waiting
 * for a fetch or sending one; else NULL. */
GBytes *bodycache_peek(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 size);
/* The reader of a message (size bytes) closed it: its bytes become the
 * first to go from memory. */
void bodycache_closed(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                      guint64 size);

/* Drop everything kept for a mailbox whose UIDVALIDITY changed. */
void bodycache_forget_mailbox(Bodycache *bc, const char *mailbox, guint32 uidvalidity);

typedef struct {
  guint64 fetched_single; /* single-message fetches sent */
  guint64 fetched_bulk;   /* bodies that arrived through read-ahead */
  guint64 disk_ahead;     /* bodies read from disk ahead of a reader */
  guint64 mem_hits, disk_hits, waits;
  guint64 wait_us; /* time readers spent waiting for bytes (in flight or fetched for them) */
  guint net_max;   /* most read-ahead batches fetched from the server at once */
} BodycacheStats;
void bodycache_stats(Bodycache *bc, BodycacheStats *out);

G_END_DECLS
