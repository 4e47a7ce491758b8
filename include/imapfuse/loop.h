/* loop.h - the multithreaded FUSE request loop.
 *
 * Owns: the worker threads that read and serve /dev/fuse, and the signals
 * that stop the mount (SIGINT, SIGTERM, SIGHUP).  One worker at a time
 * reads; handlers tell it when they are about to wait (loop_about_to_wait)
 * so that another worker reads meanwhile (design note in loop.c).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

struct fuse_session;

/* Blocks the stopping signals in the calling thread and so in every thread
 * it starts from now on: only loop_run's wait receives them.  Call before
 * starting any thread that should not take them. */
void loop_block_signals(void);

typedef struct {
  guint threads;   /* workers started */
  guint64 passes;  /* reader role handed on before a wait */
  guint64 watched; /* ... by the watchdog, after a tick on one request */
  guint64 spin_hits, spin_misses; /* polls before read() that found a request, and not */
} LoopStats;

/* Serves se with up to max_threads workers until it is unmounted or a
 * stopping signal arrives (libfuse's handlers, fuse_set_signal_handlers,
 * end the session); 0 then, else a negative errno from reading.  A reader
 * whose requests come back to back polls for up to spin_us before it
 * sleeps (0: never).  stats (may be NULL) gets the counts. */
int loop_run(struct fuse_session *se, guint max_threads, guint spin_us, LoopStats *stats);
/* fn(data) is called once loop_run has seen the session end (unmount or
 * signal), before it waits for busy workers to finish their requests. */
void loop_on_stop(void (*fn)(gpointer), gpointer data);

/* The calling thread is about to wait (for the server, another thread's
 * work, the kernel): if it is the loop's reader, another worker takes over
 * reading.  Anywhere else a no-op, so any module may call it. */
void loop_about_to_wait(void);
/* A handler is about to make a call that can wait in the kernel until
 * another request is answered (fuse_lowlevel_notify_store: a page it fills
 * may be held by another reader's READ).  TRUE: make it, then call
 * loop_block_end(); a worker is always left outside such calls to answer
 * that READ (the watchdog hands it the reading role).  FALSE: do not make
 * it: with one worker at most, with all others already in such calls, or
 * outside this loop's workers (-s, libfuse's loop) nobody else might. */
gboolean loop_block_begin(void);
void loop_block_end(void);
/* Sleeps us microseconds, after loop_about_to_wait(): a handler that gives
 * the server a moment before asking again. */
void loop_pause(gint64 us);

G_END_DECLS
