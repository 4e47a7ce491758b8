/* notify.h - telling the kernel that cached entries and pages are stale,
 * and handing it pages.
 *
 * Owns: a queue and one thread that calls fuse_lowlevel_notify_inval_*.
 * Those calls must not run inside a FUSE request handler or while holding
 * a lock a handler may need (libfuse's notify_inval_entry example), so
 * everyone else only queues; the thread does the calls.  notify_store is
 * the exception: the kernel's side of it takes no lock a pending request
 * holds but the pages' own (a READ of the same file by another process
 * holds them until a worker answers it: the FUSE loop's watchdog hands
 * reading on), so an OPEN or READ handler calls it directly, between
 * loop_block_begin and loop_block_end (a worker must be left to answer).
 */
#pragma once

#include <fuse_lowlevel.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct Notify Notify;

/* se may be NULL until the session exists; notifications are then dropped. */
Notify *notify_new(void);
void notify_set_session(Notify *n, struct fuse_session *se);
/* Stops the thread; pending items and any pushed later are dropped, and
 * nothing touches the session any more.  The Notify stays valid for the
 * threads that may still push (read-ahead workers telling of a listing,
 * the write path's lingering names) until notify_free, after they end. */
void notify_stop(Notify *n);
void notify_free(Notify *n); /* notify_stop, then frees */
/* Before the session's /dev/fuse descriptor is closed: nothing more is
 * written to it (later items are dropped); waits up to timeout_us for the
 * one being written.  Its number may be reused once closed. */
void notify_detach(Notify *n, gint64 timeout_us);

/* The entry name in directory parent is stale (deleted, renamed, replaced). */
void notify_inval_entry(Notify *n, fuse_ino_t parent, const char *name);
/* ino's attributes (and pages, if data is TRUE) are stale. */
void notify_inval_inode(Notify *n, fuse_ino_t ino, gboolean data);
/* Wait until everything queued so far has been sent, or timeout_us has
 * passed; FALSE if something is still unsent.  Always with a limit: the
 * kernel side of a call can wait for a lock that a request queued behind
 * the waiting handler holds. */
gboolean notify_flush(Notify *n, gint64 timeout_us);

/* Put len bytes at offset off of ino into the kernel's page cache, now
 * (not queued); FALSE if that failed (no session, inode not cached).
 * The pages must not be ones a READ the caller is answering holds. */
gboolean notify_store(Notify *n, fuse_ino_t ino, guint64 off, const void *data, gsize len);

G_END_DECLS
