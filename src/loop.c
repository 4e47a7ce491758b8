/* loop.c - the multithreaded FUSE request loop.
 *
 * Design note.  libfuse's multithreaded loop keeps every idle worker in
 * read() on /dev/fuse, and the kernel hands each request to the worker
 * that has waited longest.  A client that sends one request at a time
 * (grep -r: LOOKUP, OPEN, READ, RELEASE per file) is then served by each
 * worker in turn: every request wakes another sleeping thread, often on
 * the other CPU, which on a 2-core VM costs more than serving it (a
 * second grep -r over 10,000 cached files, read-write mount: 0.67-0.99 s
 * with 4 workers, 0.43-0.50 s with one).  One worker alone would stall
 * every request behind one that waits for the server.
 *
 * So: one worker at a time reads (it holds the reader role), serves what
 * it read itself and reads again; a serial client is served by one thread
 * that stays where the scheduler put it.  The role passes to another
 * worker (an idle one, else a new one, up to max_threads) when its holder
 * is about to wait: handlers call loop_about_to_wait() before they wait
 * for the server (pool_acquire), for another thread's fetch or for the
 * kernel.  A watchdog covers waits nobody marked: if the holder has been
 * on one request for a whole tick, it passes the role on, so such a wait
 * holds up other requests for at most two ticks, never until it ends.
 * The watchdog ticks only while requests come; after a quiet second it
 * sleeps until the next one.  Several workers may briefly read at once
 * (a worker that lost the role does not notice until it reads again);
 * that is what libfuse does all the time, so it is harmless.
 *
 * Spinning: a client that sends one request at a time makes the reader
 * sleep in read() after each reply and the kernel wake it for the next
 * request, microseconds later; on a VM a wake-up from idle costs more
 * than serving the request (a second grep -r over 10,000 cached files,
 * OPEN and RELEASE per file: 0.74 s, against 0.31 s when the reader
 * first polls /dev/fuse for up to 50 us; medians of 4 alternating).  So
 * a reader whose last request came within spin_us of the one before
 * polls that long before it blocks: requests that come back to back are
 * read without a sleep, and an idle mount stops spinning after one try.
 * Between polls it yields: when another thread is waiting for its CPU
 * (the server and our fetching threads in a first scan, rg's other
 * threads, any other program) that thread runs instead of the spin, and
 * when none is, sched_yield returns at once.  A spin that did not yield
 * cost every first scan CPU the others needed (cold grep -r on loopback
 * 0.589 -> 0.555 s, rg -j4 0.617 -> 0.592, medians of 5 alternating;
 * a second grep 0.279 -> 0.266 s, and 0.802 -> 0.705 s with two busy
 * loops running, medians of 6-8).
 *
 * Calls that can wait in the kernel for another request's answer (a
 * page cache store meeting pages another reader's READ holds) are
 * bracketed by loop_block_begin/end, which keeps one worker outside them:
 * with every worker in such a call, nobody would answer that READ (a
 * review found the mount hung for good with max_threads=1).
 *
 * Stopping: the stopping signals are blocked in every thread but during
 * loop_run's wait (ppoll), so their handler (libfuse's: it ends the
 * session) always interrupts that wait.  Workers in read() are cancelled
 * (cancellation is enabled only around the read, as in libfuse), idle ones
 * woken, busy ones finish their request; all are joined.
 *
 * Locks: loop->lock protects the role, the worker list and the counts; a
 * leaf, never held while serving a request.
 */
#include "imapfuse/loop.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LOOP_TICK_US (10 * 1000)
#define LOOP_QUIET_TICKS 100 /* a second without requests: stop ticking */

typedef struct Loop Loop;

typedef struct {
  Loop *loop;
  pthread_t thread;
  gint busy; /* atomic: serving a request */
  gint64 done_at; /* monotonic us: the end of its last request */
  gint64 gap;     /* us from that end to the next request read */
} LoopWorker;

struct Loop {
  struct fuse_session *se;
  guint max;
  gint64 spin_us;
  GMutex lock;
  GCond idle_cond; /* workers without the role wait here */
  GCond tick_cond; /* the watchdog sleeps here */
  LoopWorker *reader; /* written under lock, read atomically */
  GPtrArray *workers; /* LoopWorker*, every one started */
  guint idle;
  gboolean stop;
  int error;
  gint seq;     /* atomic: requests read so far */
  gint ticking; /* atomic: the watchdog is ticking */
  gint spin_hits, spin_misses; /* atomic: spins that found a request, and not */
  int done_fd;  /* eventfd: a worker saw the end */
  guint blocking; /* workers inside loop_block_begin/end */
  LoopStats stats;
};

static __thread LoopWorker *loop_self;

static const int loop_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void loop_signal_set(sigset_t *set) {
  sigemptyset(set);
  for (gsize i = 0; i < G_N_ELEMENTS(loop_signals); i++)
    sigaddset(set, loop_signals[i]);
}

void loop_block_signals(void) {
  sigset_t set;
  loop_signal_set(&set);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *loop_worker(void *data);

/* _loop_start_worker: caller holds the lock.  The new worker claims the
 * role if it is free. */
static void _loop_start_worker(Loop *l) {
  LoopWorker *w = g_new0(LoopWorker, 1);
  w->loop = l;
  w->gap = G_MAXINT64;
  int err = pthread_create(&w->thread, NULL, loop_worker, w);
  if (err != 0) {
    g_warning("cannot start a FUSE worker: %s", g_strerror(err));
    g_free(w);
    return;
  }
  g_ptr_array_add(l->workers, w);
  l->stats.threads++;
}

/* _loop_pass: caller holds the lock.  Frees the reader role and gets a
 * worker to take it: an idle one, else a new one while fewer than max;
 * else the first worker to finish its request takes it. */
static void _loop_pass(Loop *l) {
  g_atomic_pointer_set(&l->reader, NULL);
  if (l->stop)
    return;
  if (l->idle > 0)
    g_cond_signal(&l->idle_cond);
  else if (l->workers->len < l->max)
    _loop_start_worker(l);
}

void loop_about_to_wait(void) {
  LoopWorker *w = loop_self;
  if (w == NULL || g_atomic_pointer_get(&w->loop->reader) != w)
    return;
  Loop *l = w->loop;
  g_mutex_lock(&l->lock);
  if (l->reader == w) { /* the watchdog may have passed it on meanwhile */
    l->stats.passes++;
    _loop_pass(l);
  }
  g_mutex_unlock(&l->lock);
}

gboolean loop_block_begin(void) {
  LoopWorker *w = loop_self;
  if (w == NULL)
    return FALSE;
  Loop *l = w->loop;
  g_mutex_lock(&l->lock);
  /* At least one worker stays outside: it answers the request the
   * blocked ones wait for, once the watchdog hands it the role. */
  gboolean ok = l->blocking + 1 < l->max;
  if (ok)
    l->blocking++;
  g_mutex_unlock(&l->lock);
  return ok;
}

void loop_block_end(void) {
  Loop *l = loop_self->loop;
  g_mutex_lock(&l->lock);
  l->blocking--;
  g_mutex_unlock(&l->lock);
}

void loop_pause(gint64 us) {
  loop_about_to_wait();
  g_usleep((gulong)us);
}

/* Waits until the role is free and takes it; FALSE once stopping. */
static gboolean loop_claim(Loop *l, LoopWorker *w) {
  g_mutex_lock(&l->lock);
  while (!l->stop && l->reader != NULL && l->reader != w) {
    l->idle++;
    g_cond_wait(&l->idle_cond, &l->lock);
    l->idle--;
  }
  gboolean ok = !l->stop;
  if (ok)
    g_atomic_pointer_set(&l->reader, w);
  g_mutex_unlock(&l->lock);
  return ok;
}

/* The session ended (unmounted, or res < 0: reading failed). */
static void loop_end(Loop *l, int res) {
  g_mutex_lock(&l->lock);
  if (res < 0 && l->error == 0)
    l->error = res;
  g_mutex_unlock(&l->lock);
  fuse_session_exit(l->se);
  guint64 one = 1;
  if (write(l->done_fd, &one, sizeof one) < 0) {
    /* cannot fail for an eventfd below its maximum */
  }
}

static void loop_wake_watchdog(Loop *l) {
  g_mutex_lock(&l->lock);
  if (!l->ticking) {
    g_atomic_int_set(&l->ticking, 1);
    g_cond_signal(&l->tick_cond);
  }
  g_mutex_unlock(&l->lock);
}

/* A request follows the last one closely: poll /dev/fuse for up to
 * spin_us before blocking in read() (design note). */
static void loop_spin(Loop *l, LoopWorker *w) {
  if (w->gap >= l->spin_us)
    return;
  struct pollfd pfd = {.fd = fuse_session_fd(l->se), .events = POLLIN};
  gint64 t0 = g_get_monotonic_time();
  int n;
  while ((n = poll(&pfd, 1, 0)) == 0 && g_get_monotonic_time() - t0 < l->spin_us)
    sched_yield(); /* a thread waiting for this CPU gets it (design note) */
  g_atomic_int_inc(n > 0 ? &l->spin_hits : &l->spin_misses);
}

static void loop_free_buf(void *data) {
  struct fuse_buf *buf = data;
  free(buf->mem);
}

static void *loop_worker(void *data) {
  LoopWorker *w = data;
  Loop *l = w->loop;
  loop_self = w;
  struct fuse_buf buf = {.mem = NULL};
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
  pthread_cleanup_push(loop_free_buf, &buf);
  for (;;) {
    /* The fast path: still the reader, so read again, with no lock. */
    if (g_atomic_pointer_get(&l->reader) != w && !loop_claim(l, w))
      break;
    loop_spin(l, w);
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
    int res = fuse_session_receive_buf(l->se, &buf);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    w->gap = g_get_monotonic_time() - w->done_at;
    if (res == -EINTR || res == -EAGAIN)
      continue;
    if (res <= 0) {
      loop_end(l, res);
      break;
    }
    g_atomic_int_set(&w->busy, 1);
    g_atomic_int_inc(&l->seq);
    if (!g_atomic_int_get(&l->ticking))
      loop_wake_watchdog(l);
    fuse_session_process_buf(l->se, &buf);
    g_atomic_int_set(&w->busy, 0);
    w->done_at = g_get_monotonic_time();
    if (fuse_session_exited(l->se)) {
      loop_end(l, 0);
      break;
    }
  }
  pthread_cleanup_pop(1);
  return NULL;
}

static void *loop_watchdog(void *data) {
  Loop *l = data;
  pthread_setname_np(pthread_self(), "fuse-watchdog"); /* workers keep the program's name */
  gint seen = -1;
  guint quiet = 0;
  g_mutex_lock(&l->lock);
  while (!l->stop) {
    if (!l->ticking) {
      g_cond_wait(&l->tick_cond, &l->lock);
      seen = -1;
      quiet = 0;
      continue;
    }
    g_cond_wait_until(&l->tick_cond, &l->lock, g_get_monotonic_time() + LOOP_TICK_US);
    if (l->stop)
      break;
    gint seq = g_atomic_int_get(&l->seq);
    LoopWorker *r = l->reader;
    gboolean busy = r != NULL && g_atomic_int_get(&r->busy);
    if (busy && seq == seen) {
      /* The reader has been on one request for a whole tick. */
      l->stats.watched++;
      _loop_pass(l);
    }
    quiet = seq == seen && !busy ? quiet + 1 : 0;
    if (quiet >= LOOP_QUIET_TICKS)
      g_atomic_int_set(&l->ticking, 0);
    seen = seq;
  }
  g_mutex_unlock(&l->lock);
  return NULL;
}

static void (*loop_stop_fn)(gpointer);
static gpointer loop_stop_data;

void loop_on_stop(void (*fn)(gpointer), gpointer data) {
  loop_stop_fn = fn;
  loop_stop_data = data;
}

int loop_run(struct fuse_session *se, guint max_threads, guint spin_us, LoopStats *stats) {
  Loop l = {.se = se, .max = MAX(max_threads, 1), .spin_us = spin_us};
  g_mutex_init(&l.lock);
  g_cond_init(&l.idle_cond);
  g_cond_init(&l.tick_cond);
  l.workers = g_ptr_array_new_with_free_func(g_free);
  l.done_fd = eventfd(0, EFD_CLOEXEC);
  int ret = 0;
  if (l.done_fd < 0) {
    ret = -errno;
    goto out;
  }
  /* Workers and the watchdog inherit the mask: only the wait below takes
   * the stopping signals. */
  loop_block_signals();
  sigset_t wait_mask;
  pthread_sigmask(SIG_SETMASK, NULL, &wait_mask);
  for (gsize i = 0; i < G_N_ELEMENTS(loop_signals); i++)
    sigdelset(&wait_mask, loop_signals[i]);

  pthread_t watchdog;
  int err = pthread_create(&watchdog, NULL, loop_watchdog, &l);
  if (err != 0) {
    ret = -err;
    goto out;
  }
  g_mutex_lock(&l.lock);
  _loop_start_worker(&l);
  gboolean started = l.workers->len > 0;
  g_mutex_unlock(&l.lock);
  if (!started) {
    fuse_session_exit(se);
    ret = -EAGAIN;
  }

  struct pollfd pfd = {.fd = l.done_fd, .events = POLLIN};
  while (!fuse_session_exited(se)) {
    if (ppoll(&pfd, 1, NULL, &wait_mask) < 0 && errno != EINTR) {
      ret = -errno;
      break;
    }
  }

  if (loop_stop_fn != NULL)
    loop_stop_fn(loop_stop_data); /* before waiting for busy workers */
  g_mutex_lock(&l.lock);
  l.stop = TRUE;
  g_cond_broadcast(&l.idle_cond);
  g_cond_broadcast(&l.tick_cond);
  g_mutex_unlock(&l.lock);
  /* No worker starts once stop is set, so the list is final.  A cancel
   * acts only in read(); a busy worker finishes its request first. */
  for (guint i = 0; i < l.workers->len; i++)
    pthread_cancel(((LoopWorker *)g_ptr_array_index(l.workers, i))->thread);
  for (guint i = 0; i < l.workers->len; i++)
    pthread_join(((LoopWorker *)g_ptr_array_index(l.workers, i))->thread, NULL);
  pthread_join(watchdog, NULL);
  if (ret == 0)
    ret = l.error;
out:
  l.stats.spin_hits = (guint64)g_atomic_int_get(&l.spin_hits);
  l.stats.spin_misses = (guint64)g_atomic_int_get(&l.spin_misses);
  if (stats != NULL)
    *stats = l.stats;
  if (l.done_fd >= 0)
    close(l.done_fd);
  g_ptr_array_free(l.workers, TRUE);
  g_cond_clear(&l.tick_cond);
  g_cond_clear(&l.idle_cond);
  g_mutex_clear(&l.lock);
  return ret;
}
