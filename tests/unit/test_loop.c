/* test_loop.c - the FUSE request loop (loop.c) serving a real mount of a
 * tiny filesystem: a serial client is served by one worker; a request that
 * waits, whether it says so or not, does not hold up the others; workers
 * stay within max_threads; a stopping signal and an unmount end the loop.
 * Skipped where nothing can be mounted. */
#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "imapfuse/loop.h"

#define WAIT_US (20 * G_USEC_PER_SEC) /* only ever reached by a failure */

/* "fast" answers at once.  Directories s0..s9 each hold "marked", which
 * says it will wait, then waits until the test releases it, "unmarked",
 * which waits without saying so, and "blocking", which waits inside
 * loop_block_begin/end if that lets it (as a page cache store that meets
 * another reader's pages), else answers at once.  Waits are in directories of
 * their own because the kernel serialises lookups in one directory (libfuse
 * 3.14 asks for FUSE_PARALLEL_DIROPS but does not pass it on). */
enum { INO_FAST = 2, INO_DIR0 = 10, INO_MARKED0 = 20, INO_UNMARKED0 = 30, INO_BLOCKING0 = 40 };

typedef struct {
  GMutex lock;
  GCond cond;
  gboolean release;
  guint blocked; /* handlers waiting for release now */
  guint refused; /* "blocking" lookups that loop_block_begin refused */
  GArray *fast_threads; /* pthread_t of each "fast" lookup, in order */
  struct fuse_session *se;
  char *dir;
} T;

static void t_attr(fuse_ino_t ino, struct stat *st) {
  gboolean dir = ino == FUSE_ROOT_ID || (ino >= INO_DIR0 && ino < INO_DIR0 + 10);
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_mode = dir ? S_IFDIR | 0755 : S_IFREG | 0444;
  st->st_nlink = dir ? 2 : 1;
}

/* Counts the caller as blocked until the test releases it. */
static void t_hold(T *t) {
  g_mutex_lock(&t->lock);
  t->blocked++;
  g_cond_broadcast(&t->cond);
  while (!t->release)
    g_cond_wait(&t->cond, &t->lock);
  t->blocked--;
  g_mutex_unlock(&t->lock);
}

static void t_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  T *t = fuse_req_userdata(req);
  struct fuse_entry_param e = {0};
  gboolean sub = parent >= INO_DIR0 && parent < INO_DIR0 + 10;
  if (parent == FUSE_ROOT_ID && strcmp(name, "fast") == 0) {
    e.ino = INO_FAST;
    pthread_t self = pthread_self();
    g_mutex_lock(&t->lock);
    g_array_append_val(t->fast_threads, self);
    g_mutex_unlock(&t->lock);
  } else if (parent == FUSE_ROOT_ID && name[0] == 's' && g_ascii_isdigit(name[1]) && !name[2]) {
    e.ino = INO_DIR0 + (fuse_ino_t)(name[1] - '0');
  } else if (sub && (strcmp(name, "marked") == 0 || strcmp(name, "unmarked") == 0)) {
    gboolean marked = name[0] == 'm';
    e.ino = (marked ? INO_MARKED0 : INO_UNMARKED0) + (parent - INO_DIR0);
    if (marked)
      loop_about_to_wait();
    t_hold(t);
  } else if (sub && strcmp(name, "blocking") == 0) {
    e.ino = INO_BLOCKING0 + (parent - INO_DIR0);
    if (loop_block_begin()) {
      t_hold(t);
      loop_block_end();
    } else {
      g_mutex_lock(&t->lock);
      t->refused++;
      g_cond_broadcast(&t->cond);
      g_mutex_unlock(&t->lock);
    }
  } else {
    fuse_reply_err(req, ENOENT);
    return;
  }
  t_attr(e.ino, &e.attr); /* timeouts 0: every stat() is a LOOKUP */
  fuse_reply_entry(req, &e);
}

static void t_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  struct stat st;
  t_attr(ino, &st);
  fuse_reply_attr(req, &st, 0);
}

static const struct fuse_lowlevel_ops t_ops = {.lookup = t_lookup, .getattr = t_getattr};

/* Mounts a fresh T on a new directory; NULL (test skipped) if it cannot. */
static T *t_mount(void) {
  T *t = g_new0(T, 1);
  g_mutex_init(&t->lock);
  g_cond_init(&t->cond);
  t->fast_threads = g_array_new(FALSE, FALSE, sizeof(pthread_t));
  t->dir = g_dir_make_tmp("test-loop-XXXXXX", NULL);
  char *argv[] = {"test_loop", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(1, argv);
  t->se = fuse_session_new(&args, &t_ops, sizeof t_ops, t);
  fuse_opt_free_args(&args);
  if (t->se == NULL || t->dir == NULL || fuse_session_mount(t->se, t->dir) != 0) {
    g_test_skip("cannot mount a FUSE file system here");
    if (t->se != NULL)
      fuse_session_destroy(t->se);
    g_free(t->dir);
    g_array_free(t->fast_threads, TRUE);
    g_free(t);
    return NULL;
  }
  /* Client threads start after this, so only loop_run's wait takes the
   * stopping signals. */
  loop_block_signals();
  return t;
}

static void t_free(T *t) {
  fuse_session_unmount(t->se);
  fuse_session_destroy(t->se);
  g_rmdir(t->dir);
  g_free(t->dir);
  g_array_free(t->fast_threads, TRUE);
  g_cond_clear(&t->cond);
  g_mutex_clear(&t->lock);
  g_free(t);
}

static int t_stat(T *t, const char *name) {
  g_autofree char *path = g_build_filename(t->dir, name, NULL);
  struct stat st;
  return stat(path, &st) == 0 ? 0 : errno;
}

static void t_unmount(T *t) {
  const char *argv[] = {"fusermount3", "-u", "-z", t->dir, NULL};
  gint status = -1;
  g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL,
               &status, NULL);
  g_assert_cmpint(status, ==, 0);
}

/* Waits until n handlers are blocked; FALSE after WAIT_US. */
static gboolean t_wait_blocked(T *t, guint n) {
  gint64 end = g_get_monotonic_time() + WAIT_US;
  g_mutex_lock(&t->lock);
  while (t->blocked < n && g_cond_wait_until(&t->cond, &t->lock, end))
    ;
  gboolean ok = t->blocked >= n;
  g_mutex_unlock(&t->lock);
  return ok;
}

static void t_release(T *t) {
  g_mutex_lock(&t->lock);
  t->release = TRUE;
  g_cond_broadcast(&t->cond);
  g_mutex_unlock(&t->lock);
}

static guint t_blocked(T *t) {
  g_mutex_lock(&t->lock);
  guint n = t->blocked;
  g_mutex_unlock(&t->lock);
  return n;
}

typedef struct {
  T *t;
  const char *name;
  int err;
  gboolean done;
} Stat;

static gpointer t_stat_thread(gpointer data) {
  Stat *s = data;
  int err = t_stat(s->t, s->name);
  g_mutex_lock(&s->t->lock);
  s->err = err;
  s->done = TRUE;
  g_cond_broadcast(&s->t->cond);
  g_mutex_unlock(&s->t->lock);
  return NULL;
}

/* Waits until s is done; FALSE after WAIT_US. */
static gboolean t_wait_done(Stat *s) {
  gint64 end = g_get_monotonic_time() + WAIT_US;
  g_mutex_lock(&s->t->lock);
  while (!s->done && g_cond_wait_until(&s->t->cond, &s->t->lock, end))
    ;
  gboolean done = s->done;
  g_mutex_unlock(&s->t->lock);
  return done;
}

/* Runs the loop on this thread (as main.c does) while scenario runs on
 * another and ends with an unmount; t_run without spinning. */
static void t_run_spin(T *t, guint max_threads, guint spin_us, GThreadFunc scenario,
                       gpointer data, LoopStats *st) {
  GThread *c = g_thread_new("scenario", scenario, data);
  g_assert_cmpint(loop_run(t->se, max_threads, spin_us, st), ==, 0);
  g_thread_join(c);
}

static void t_run(T *t, guint max_threads, GThreadFunc scenario, gpointer data, LoopStats *st) {
  t_run_spin(t, max_threads, 0, scenario, data, st);
}

/* ---- a serial client is served by one worker ---- */

#define SERIAL_N 200

static gpointer serial_scenario(gpointer data) {
  T *t = data;
  for (int i = 0; i < SERIAL_N; i++)
    g_assert_cmpint(t_stat(t, "fast"), ==, 0);
  t_unmount(t);
  return NULL;
}

static void test_serial_client_one_worker(void) {
  T *t = t_mount();
  if (t == NULL)
    return;
  LoopStats st;
  t_run(t, 4, serial_scenario, t, &st);
  /* libfuse's loop hands requests to its idle workers in turn, so nearly
   * every request would switch.  Here only a watchdog pass may (a request
   * preempted for a whole tick on a loaded machine). */
  g_assert_cmpuint(t->fast_threads->len, ==, SERIAL_N);
  guint switches = 0;
  for (guint i = 1; i < t->fast_threads->len; i++)
    switches += !pthread_equal(g_array_index(t->fast_threads, pthread_t, i),
                               g_array_index(t->fast_threads, pthread_t, i - 1));
  g_assert_cmpuint(switches, <=, st.watched);
  g_assert_cmpuint(st.passes, ==, 0);
  g_assert_cmpuint(st.spin_hits + st.spin_misses, ==, 0); /* spin_us 0: never */
  t_free(t);
}

/* ---- a serial client's requests are read without a sleep ---- */

static void test_serial_client_spin(void) {
  T *t = t_mount();
  if (t == NULL)
    return;
  LoopStats st;
  /* 2 ms, not the default 50 us: a loaded machine (sanitizers, CI) can
   * take longer than 50 us between a reply and the client's next stat. */
  t_run_spin(t, 4, 2000, serial_scenario, t, &st);
  g_assert_cmpuint(t->fast_threads->len, ==, SERIAL_N);
  /* After the first request every one follows the last closely, so the
   * reader polls before each read and finds it there. */
  g_assert_cmpuint(st.spin_hits, >=, SERIAL_N / 2);
  g_assert_cmpuint(st.passes, ==, 0);
  t_free(t);
}

/* ---- a request that waits does not hold up the others ---- */

typedef struct {
  T *t;
  const char *name;
  gboolean fast_served;  /* a "fast" stat was answered ... */
  guint blocked_then;    /* ... while this many handlers were waiting */
  int slow_err, fast_err;
} Wait;

static gpointer wait_scenario(gpointer data) {
  Wait *w = data;
  Stat slow = {w->t, w->name, -1, FALSE}, fast = {w->t, "fast", -1, FALSE};
  GThread *s = g_thread_new("slow", t_stat_thread, &slow);
  GThread *f = NULL;
  if (t_wait_blocked(w->t, 1)) {
    f = g_thread_new("fast", t_stat_thread, &fast);
    w->fast_served = t_wait_done(&fast);
    w->blocked_then = t_blocked(w->t);
  }
  t_release(w->t);
  g_thread_join(s);
  if (f != NULL)
    g_thread_join(f);
  w->slow_err = slow.err;
  w->fast_err = fast.err;
  t_unmount(w->t);
  return NULL;
}

static void check_wait(const char *name, gboolean marked) {
  T *t = t_mount();
  if (t == NULL)
    return;
  Wait w = {.t = t, .name = name};
  LoopStats st;
  t_run(t, 4, wait_scenario, &w, &st);
  g_assert_true(w.fast_served);
  g_assert_cmpuint(w.blocked_then, ==, 1);
  g_assert_cmpint(w.fast_err, ==, 0);
  g_assert_cmpint(w.slow_err, ==, 0);
  g_assert_cmpuint(st.threads, >=, 2);
  if (marked)
    g_assert_cmpuint(st.passes, >=, 1);
  else
    g_assert_cmpuint(st.watched, >=, 1); /* nobody said: the watchdog saw it */
  t_free(t);
}

static void test_marked_wait_hands_on(void) {
  check_wait("s0/marked", TRUE);
}

static void test_unmarked_wait_watchdog(void) {
  check_wait("s0/unmarked", FALSE);
}

/* ---- never more workers than max_threads ---- */

typedef struct {
  T *t;
  guint blocked_then;
  int errs[3];
} Max;

static gpointer max_scenario(gpointer data) {
  Max *m = data;
  Stat s[3];
  GThread *th[3];
  static const char *names[] = {"s0/marked", "s1/marked", "s2/marked"};
  for (int i = 0; i < 3; i++) {
    s[i] = (Stat){m->t, names[i], -1, FALSE};
    th[i] = g_thread_new("slow", t_stat_thread, &s[i]);
  }
  if (t_wait_blocked(m->t, 2)) {
    g_usleep(200 * 1000); /* a third worker would take the third by now */
    m->blocked_then = t_blocked(m->t);
  }
  t_release(m->t);
  for (int i = 0; i < 3; i++) {
    g_thread_join(th[i]);
    m->errs[i] = s[i].err;
  }
  t_unmount(m->t);
  return NULL;
}

static void test_max_threads(void) {
  T *t = t_mount();
  if (t == NULL)
    return;
  Max m = {.t = t};
  LoopStats st;
  t_run(t, 2, max_scenario, &m, &st);
  g_assert_cmpuint(m.blocked_then, ==, 2);
  for (int i = 0; i < 3; i++)
    g_assert_cmpint(m.errs[i], ==, 0);
  g_assert_cmpuint(st.threads, ==, 2);
  t_free(t);
}

/* ---- calls that may wait for another request leave a worker out ---- */

typedef struct {
  T *t;
  guint n;             /* "blocking" lookups sent at once */
  guint blocked_then;  /* handlers inside loop_block_begin/end ... */
  guint refused_then;  /* ... and refused, once all had their answer or held */
  gboolean fast_served; /* a "fast" stat was answered meanwhile */
  int errs[3];
} Block;

static gpointer block_scenario(gpointer data) {
  Block *b = data;
  Stat s[3], fast = {b->t, "fast", -1, FALSE};
  GThread *th[3];
  static const char *names[] = {"s0/blocking", "s1/blocking", "s2/blocking"};
  for (guint i = 0; i < b->n; i++) {
    s[i] = (Stat){b->t, names[i], -1, FALSE};
    th[i] = g_thread_new("blocking", t_stat_thread, &s[i]);
  }
  gint64 end = g_get_monotonic_time() + WAIT_US;
  g_mutex_lock(&b->t->lock);
  while (b->t->blocked + b->t->refused < b->n && g_cond_wait_until(&b->t->cond, &b->t->lock, end))
    ;
  g_mutex_unlock(&b->t->lock);
  GThread *f = g_thread_new("fast", t_stat_thread, &fast);
  b->fast_served = t_wait_done(&fast);
  g_mutex_lock(&b->t->lock);
  b->blocked_then = b->t->blocked;
  b->refused_then = b->t->refused;
  g_mutex_unlock(&b->t->lock);
  t_release(b->t);
  g_thread_join(f);
  for (guint i = 0; i < b->n; i++) {
    g_thread_join(th[i]);
    b->errs[i] = s[i].err;
  }
  t_unmount(b->t);
  return NULL;
}

static void check_block(guint max_threads, guint n, guint held, guint refused) {
  T *t = t_mount();
  if (t == NULL)
    return;
  Block b = {.t = t, .n = n};
  LoopStats st;
  t_run(t, max_threads, block_scenario, &b, &st);
  g_assert_cmpuint(b.blocked_then, ==, held);
  g_assert_cmpuint(b.refused_then, ==, refused);
  g_assert_true(b.fast_served); /* a worker was left for it */
  for (guint i = 0; i < n; i++)
    g_assert_cmpint(b.errs[i], ==, 0);
  t_free(t);
}

static void test_block_leaves_a_worker(void) {
  /* Outside the loop's workers nobody else is known to read. */
  g_assert_false(loop_block_begin());
  check_block(3, 3, 2, 1); /* two of three workers at most */
  check_block(1, 1, 0, 1); /* one worker: never (it hung the mount) */
}

/* ---- a stopping signal ends the loop ---- */

static gpointer signal_scenario(gpointer data) {
  T *t = data;
  g_assert_cmpint(t_stat(t, "fast"), ==, 0);
  kill(getpid(), SIGTERM); /* blocked here: only loop_run's wait takes it */
  return NULL;
}

static void test_signal_ends_loop(void) {
  T *t = t_mount();
  if (t == NULL)
    return;
  g_assert_cmpint(fuse_set_signal_handlers(t->se), ==, 0);
  LoopStats st;
  t_run(t, 4, signal_scenario, t, &st);
  fuse_remove_signal_handlers(t->se);
  g_assert_true(fuse_session_exited(t->se));
  g_assert_cmpuint(t->fast_threads->len, ==, 1);
  t_free(t);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/loop/serial-client-one-worker", test_serial_client_one_worker);
  g_test_add_func("/loop/serial-client-spin", test_serial_client_spin);
  g_test_add_func("/loop/marked-wait-hands-on", test_marked_wait_hands_on);
  g_test_add_func("/loop/unmarked-wait-watchdog", test_unmarked_wait_watchdog);
  g_test_add_func("/loop/max-threads", test_max_threads);
  g_test_add_func("/loop/block-leaves-a-worker", test_block_leaves_a_worker);
  g_test_add_func("/loop/signal-ends-loop", test_signal_ends_loop);
  return g_test_run();
}
