/* main.c - command line, login, mount, run, shut down.
 *
 * Order matters: everything that can fail for a user reason (options, URL,
 * password, connect, TLS, login, LIST) happens before the mount, so a
 * failure leaves no mount behind and the mount appears only once the login
 * has succeeded.  Daemonising happens after login but before any thread is
 * started (fork keeps only the calling thread).
 */
#include <fuse_lowlevel.h>
#include <glib.h>
#include <errno.h>
#include <sched.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <syslog.h>
#include <string.h>
#include <unistd.h>

#include "imapfuse/bodycache.h"
#include "imapfuse/conn.h"
#include "imapfuse/dircache.h"
#include "imapfuse/diskcache.h"
#include "imapfuse/errors.h"
#include "imapfuse/fs.h"
#include "imapfuse/heap.h"
#include "imapfuse/loop.h"
#include "imapfuse/notify.h"
#include "imapfuse/options.h"
#include "imapfuse/pool.h"
#include "imapfuse/tls.h"
#include "imapfuse/watch.h"

/* Once daemonised, stderr is /dev/null: warnings (where the bytes of a
 * refused message were kept) go to syslog (the journal) instead. */
static gboolean main_syslog;

static void main_log(const gchar *domain, GLogLevelFlags level, const gchar *message,
                     gpointer user) {
  (void)domain;
  gboolean debug = GPOINTER_TO_INT(user);
  if ((level & G_LOG_LEVEL_DEBUG) && !debug)
    return;
  const char *what = (level & G_LOG_LEVEL_ERROR)      ? "error"
                     : (level & G_LOG_LEVEL_CRITICAL) ? "critical"
                     : (level & G_LOG_LEVEL_WARNING)  ? "warning"
                     : (level & G_LOG_LEVEL_DEBUG)    ? "debug"
                                                      : "info";
  if (main_syslog) {
    int prio = (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)) ? LOG_ERR
               : (level & G_LOG_LEVEL_WARNING)                      ? LOG_WARNING
               : (level & G_LOG_LEVEL_DEBUG)                        ? LOG_DEBUG
                                                                    : LOG_INFO;
    syslog(prio, "%s: %s", what, message);
    return;
  }
  fprintf(stderr, "imapfuse: %s: %s\n", what, message);
}

/* The IMAP trace (g_printerr) follows the log to syslog once daemonised:
 * -o imap_debug without -f wrote it to /dev/null, with no word. */
static void main_printerr(const gchar *text) {
  if (main_syslog)
    syslog(LOG_DEBUG, "%s", text);
  else
    fputs(text, stderr);
}

#define MAIN_FUSE_SUPER_MAGIC 0x65735546 /* linux/magic.h */

/* A mountpoint must be a directory with no FUSE file system mounted on
 * it: a file was mounted on (and then failed every stat with EIO), and a
 * second imapfuse on the same directory mounted on top of the first. */
static gboolean main_check_mountpoint(const char *mp, GError **error) {
  struct stat st, up;
  if (g_str_has_prefix(mp, "/dev/fd/"))
    return TRUE; /* a /dev/fuse mounted already (mount.fuse3 -o drop_privileges) */
  g_autofree char *parent = g_build_filename(mp, "..", NULL);
  if (stat(mp, &st) != 0) {
    int err = errno;
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "mountpoint %s: %s%s", mp, g_strerror(err),
                err == ENOTCONN ? " (a mount whose file system died: fusermount3 -u it first)"
                                : "");
    return FALSE;
  }
  if (!S_ISDIR(st.st_mode)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "mountpoint %s is not a directory", mp);
    return FALSE;
  }
  /* Only a FUSE mount there is refused: an autofs one is where
   * x-systemd.automount (fstab) has imapfuse mounted on first access. */
  struct statfs sf;
  if (stat(parent, &up) == 0 && (up.st_dev != st.st_dev || up.st_ino == st.st_ino) &&
      statfs(mp, &sf) == 0 && sf.f_type == MAIN_FUSE_SUPER_MAGIC) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "%s is already a mount point (of a FUSE file system, imapfuse perhaps): "
                "unmount it first (fusermount3 -u %s), or choose another directory",
                mp, mp);
    return FALSE;
  }
  return TRUE;
}

/* The XDG Base Directory spec: a relative path in these is invalid and
 * ignored.  Taken relative to where imapfuse was started, it named another
 * directory once the mount had moved to "/": listings were not saved and
 * new files were kept under /reldata (an exploratory test).  Before the
 * first g_get_user_*_dir(), which keeps what it found. */
static void main_drop_relative_xdg(void) {
  static const char *const vars[] = {"XDG_CACHE_HOME", "XDG_DATA_HOME"};
  for (gsize i = 0; i < G_N_ELEMENTS(vars); i++) {
    const char *v = g_getenv(vars[i]);
    if (v != NULL && *v != '\0' && !g_path_is_absolute(v)) {
      fprintf(stderr, "imapfuse: warning: %s=%s is not an absolute path: ignored, as the "
                      "XDG Base Directory specification says\n", vars[i], v);
      g_unsetenv(vars[i]);
    }
  }
}

/* $XDG_CACHE_HOME/imapfuse/USER@HOST:PORT, with '/' kept out of the name. */
static char *main_cache_dir(const IfsOptions *o, const ImapEndpoint *ep) {
  if (o->cache_dir != NULL) /* absolute: daemonising moves to "/" */
    return g_canonicalize_filename(o->cache_dir, NULL);
  g_autofree char *account = g_strdup_printf("%s@%s:%u", ep->user, ep->host, ep->port);
  g_strdelimit(account, "/", '_');
  return g_build_filename(g_get_user_cache_dir(), "imapfuse", account, NULL);
}

/* Let libfuse reject an unknown option before anything talks to the
 * server (a session that is never mounted costs nothing). */
static gboolean main_check_fuse_options(const struct fuse_args *args) {
  struct fuse_args probe = FUSE_ARGS_INIT(0, NULL);
  for (int i = 0; i < args->argc; i++)
    fuse_opt_add_arg(&probe, args->argv[i]);
  static const struct fuse_lowlevel_ops none;
  struct fuse_session *se = fuse_session_new(&probe, &none, sizeof none, NULL);
  fuse_opt_free_args(&probe);
  if (se == NULL)
    return FALSE;
  fuse_session_destroy(se);
  return TRUE;
}

static int main_fail(const GError *error) {
  fprintf(stderr, "imapfuse: %s\n", error->message);
  return 1;
}

static gboolean main_confirm_op(ImapConn *c, gpointer user, GError **error) {
  return watch_confirm_saved(user, c, error);
}

/* CPUs this process may run on: with one, a worker polling for the next
 * request would only keep the client that sends it off the CPU. */
static int main_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return 2;
  return CPU_COUNT(&set);
}

/* Open files: every cache segment, connection and open message holds an
 * fd, and the usual soft limit (1,024) is far below the hard one. */
static void main_raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* At unmount or a stopping signal, a connection that has waited
 * MAIN_STOP_WAIT_US for the answer to a read is cut (pool_cut_waiting): a
 * server that does not answer held the exit for several timeouts.  Changes
 * under way, and the files sent at unmount, go on as before. */
#define MAIN_STOP_WAIT_US (2 * G_USEC_PER_SEC)
typedef struct {
  GMutex lock;
  GCond cond;
  gboolean done;
  Pool *pool;
  Watch *watch;
  GThread *thread;
} MainStop;

static gpointer main_stop_thread(gpointer data) {
  MainStop *st = data;
  g_mutex_lock(&st->lock);
  while (!st->done) {
    g_mutex_unlock(&st->lock);
    guint cut = pool_cut_waiting(st->pool, MAIN_STOP_WAIT_US);
    if (cut > 0)
      g_debug("stopping: cut %u connection(s) waiting for the server", cut);
    g_mutex_lock(&st->lock);
    g_cond_wait_until(&st->cond, &st->lock, g_get_monotonic_time() + G_USEC_PER_SEC / 4);
  }
  g_mutex_unlock(&st->lock);
  return NULL;
}

static void main_stopping(gpointer data) {
  MainStop *st = data;
  watch_stop(st->watch); /* no new round (and connect) while stopping */
  st->thread = g_thread_new("stop", main_stop_thread, st);
}

int main(int argc, char *argv[]) {
  setlocale(LC_ALL, "");
  /* The password stays in memory for reconnects: keep it out of core
   * dumps (and from other processes of the user: ptrace, /proc/PID/mem). */
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  signal(SIGPIPE, SIG_IGN); /* a dead TLS peer must be an error, not a kill */
  main_raise_fd_limit();
  heap_setup();
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  IfsOptions o;
  struct fuse_cmdline_opts fo = {0};
  ImapEndpoint ep = {0};
  g_autoptr(GError) error = NULL;
  int ret = 1;
  Pool *pool = NULL;
  Dircache *dc = NULL;
  Bodycache *bc = NULL;
  Fs *fs = NULL;
  Notify *notify = NULL;
  Diskcache *disk = NULL;
  Watch *watch = NULL;
  ImapConn *watch_conn = NULL; /* the watcher's, closed last (watch_free) */
  g_autofree char *cache_dir = NULL, *meta_dir = NULL, *account = NULL;
  struct fuse_session *se = NULL;
  g_autofree char *fsname = NULL;
  MainStop stop = {0};
  g_mutex_init(&stop.lock);
  g_cond_init(&stop.cond);

  if (!options_parse(&args, &o, &error)) {
    ret = main_fail(error);
    goto out;
  }
  if (fuse_parse_cmdline(&args, &fo) != 0)
    goto out;
  if (o.show_help || fo.show_help) {
    options_usage(argv[0]);
    printf("FUSE options:\n");
    fuse_cmdline_help();
    fuse_lowlevel_help();
    ret = 0;
    goto out;
  }
  if (o.show_version || fo.show_version) {
    printf("imapfuse %s\n", IMAPFUSE_VERSION);
    fflush(stdout); /* before fusermount3 writes its own line */
    fuse_lowlevel_version();
    ret = 0;
    goto out;
  }
  if (fo.mountpoint == NULL) {
    fprintf(stderr, "imapfuse: missing mountpoint; see --help\n");
    goto out;
  }
  g_log_set_default_handler(main_log, GINT_TO_POINTER(fo.debug || o.imap_debug));
  g_set_printerr_handler(main_printerr);
  main_drop_relative_xdg();
  if (!main_check_mountpoint(fo.mountpoint, &error)) {
    ret = main_fail(error);
    goto out;
  }

  if (!options_parse_url(o.url, g_strcmp0(o.tls, "off") == 0, &ep, &error)) {
    ret = main_fail(error);
    goto out;
  }
  fsname = g_strdup_printf("-ofsname=imapfuse#%s@%s", ep.user, ep.host);
  fuse_opt_add_arg(&args, "-osubtype=imapfuse");
  fuse_opt_add_arg(&args, "-odefault_permissions");
  fuse_opt_add_arg(&args, fsname);
  if (!main_check_fuse_options(&args))
    goto out; /* libfuse has said which option it does not know */
  ep.cafile = g_strdup(o.cafile);
  ep.timeout_s = o.timeout;
  ep.trace = o.imap_debug || fo.debug;
  if (ep.tls == IMAP_TLS_NONE && !options_host_is_loopback(ep.host))
    fprintf(stderr, "imapfuse: warning: tls=off: your password and mail cross the network "
                    "to %s unencrypted\n", ep.host);
  if (ep.tls != IMAP_TLS_NONE) {
    ep.tls_ctx = tls_ctx_new(ep.cafile, &error);
    if (ep.tls_ctx == NULL) {
      ret = main_fail(error);
      goto out;
    }
  }
  ep.password = options_get_password(&o, &ep, &error);
  if (ep.password == NULL) {
    ret = main_fail(error);
    goto out;
  }

  ImapConn *first = imap_conn_open(&ep, &error);
  if (first == NULL) {
    ret = main_fail(error);
    goto out;
  }
  guint64 appendlimit = imap_conn_appendlimit(first); /* first is the pool's now */
  pool = pool_new(&ep, (guint)o.connections, first);
  const char *mode = o.cache != NULL ? o.cache : "full";
  if (g_strcmp0(mode, "none") != 0) {
    cache_dir = main_cache_dir(&o, &ep);
    meta_dir = g_build_filename(cache_dir, "meta", NULL);
    struct stat sb;
    if (g_mkdir_with_parents(meta_dir, 0700) != 0) {
      fprintf(stderr, "imapfuse: warning: cannot create %s (%s); not caching on disk\n", meta_dir,
              g_strerror(errno));
      g_clear_pointer(&meta_dir, g_free);
    } else if (stat(cache_dir, &sb) == 0 &&
               (sb.st_uid != geteuid() || (sb.st_mode & (S_IWGRP | S_IWOTH)) != 0)) {
      /* What is cached there is served as mail: nobody else may write it. */
      fprintf(stderr,
              "imapfuse: warning: %s is not yours alone (owner uid %u, mode %04o): not "
              "caching on disk, since whoever can write there could change the mail shown "
              "(chmod 700 it, or use another -o cache_dir)\n",
              cache_dir, (unsigned)sb.st_uid, (unsigned)(sb.st_mode & 07777));
      g_clear_pointer(&meta_dir, g_free);
    }
  }
  if (meta_dir != NULL && g_strcmp0(mode, "full") == 0) {
    guint64 bound = 1ull << 30;
    if (o.cache_size != NULL)
      options_parse_size(o.cache_size, &bound);
    g_autofree char *bodies = g_build_filename(cache_dir, "bodies", NULL);
    g_autoptr(GError) derr = NULL;
    disk = diskcache_open(bodies, bound, &derr);
    const char *stray = NULL;
    guint strays = disk != NULL ? diskcache_foreign(disk, &stray) : 0;
    if (disk == NULL)
      fprintf(stderr, "imapfuse: warning: message cache disabled: %s\n", derr->message);
    else if (strays > 0)
      fprintf(stderr,
              "imapfuse: warning: %s holds %u %s imapfuse did not make (\"%s\"%s); left "
              "alone, and not counted in cache_size\n",
              bodies, strays, strays == 1 ? "entry" : "entries", stray,
              strays > 1 ? ", ..." : "");
  }
  dc = dircache_new(pool, meta_dir);
  if (!dircache_refresh_tree(dc, 0, &error)) {
    ret = main_fail(error);
    goto out;
  }
  dircache_prune_saved(dc);
  if (meta_dir != NULL) {
    /* One round trip at mount saves one per mailbox when it is opened. */
    g_autoptr(GError) cerr = NULL;
    if (!pool_run(pool, NULL, TRUE, main_confirm_op, dc, &cerr))
      g_debug("confirming saved listings: %s", cerr->message);
  }
  guint64 readahead = 8u << 20;
  if (o.readahead != NULL)
    options_parse_size(o.readahead, &readahead);
  /* The server's APPENDLIMIT, else ours: bounds what a new file may grow
   * to (and so what sending it reads and maps). */
  guint64 max_message = 256u << 20;
  const char *max_message_from = "the default max_message=256M";
  if (o.max_message != NULL) {
    options_parse_size(o.max_message, &max_message);
    max_message_from = "max_message=";
  }
  if (appendlimit != 0 && (o.max_message == NULL || appendlimit < max_message)) {
    max_message = appendlimit;
    max_message_from = "the server's APPENDLIMIT";
  }
  account = g_strdup_printf("%s@%s:%u", ep.user, ep.host, ep.port);
  /* While the watcher polls, its rounds confirm listings (and LIST the
   * tree): opendir then needs no round trip of its own. */
  double list_max_age = o.list_max_age >= 0 ? o.list_max_age : o.poll * 1.5;
  BodycacheOptions bo = {
      .mem_bytes = (guint64)o.cache_mem_mb << 20,
      .chunk_bytes = 1 << 20,
      .readahead_bytes = readahead,
      /* keep one connection for readers that are not scanning */
      .readahead_threads = (guint)MAX(1, o.connections - 1),
      .readahead_batches = (guint)o.readahead_batches,
      .disk = disk,
      .account = account,
      .dc = dc,
      .list_max_age_us = (gint64)(list_max_age * G_USEC_PER_SEC),
  };
  bc = bodycache_new(pool, &bo);
  FsOptions fso = {
      .uid = getuid(),
      .gid = getgid(),
      .msg_timeout = o.msg_timeout,
      .dir_timeout = o.dir_timeout,
      .list_max_age_us = (gint64)(list_max_age * G_USEC_PER_SEC),
      .tree_max_age_us = (gint64)(MAX(o.dir_timeout, list_max_age) * G_USEC_PER_SEC),
      .lookup_tree_age_us = (gint64)(o.dir_timeout * G_USEC_PER_SEC),
      .read_only = o.read_only,
      .write = {.pool = pool,
                .account = account,
                .delete_trash = g_strcmp0(o.delete_mode, "trash") == 0,
                .no_dedup = g_strcmp0(o.dedup, "off") == 0,
                .max_message = max_message,
                .max_message_from = max_message_from,
                .linger_us = (gint64)(o.linger * G_USEC_PER_SEC)},
  };
  notify = notify_new();
  fs = fs_new(dc, bc, notify, &fso);

  se = fuse_session_new(&args, fs_lowlevel_ops(g_strcmp0(o.xattr, "off") != 0), sizeof(struct fuse_lowlevel_ops), fs);
  if (se == NULL)
    goto out;
  if (fuse_set_signal_handlers(se) != 0)
    goto out;
  if (fuse_session_mount(se, fo.mountpoint) != 0) {
    fprintf(stderr, "imapfuse: cannot mount on %s\n", fo.mountpoint);
    goto out_signals;
  }
  if (!fo.foreground) {
    openlog("imapfuse", LOG_PID, LOG_USER);
    main_syslog = TRUE;
  }
  fuse_daemonize(fo.foreground);
  /* Our loop takes the stopping signals in one wait, so no other thread
   * may take them: block them before any thread starts (libfuse's loops
   * read /dev/fuse on this thread, -s, or take them in any thread). */
  gboolean own_loop = !fo.singlethread && !fo.clone_fd;
  if (own_loop)
    loop_block_signals();
  /* Threads only after the fork of daemonising: the child keeps only the
   * thread that forked, and a lock another thread held stays locked. */
  bodycache_start(bc);
  /* Listing ahead of ls -R on all connections but one (the user's), where
   * a listing is used for a while: with list_max_age under 1 s (poll=0)
   * every opendir asks again, and each folder was listed twice.  After
   * daemonising: a shared pool may have a helper thread (GLib >= 2.75). */
  dircache_set_prefetch(dc, list_max_age >= 1 ? (guint)o.connections - 1 : 0);
  fs_start(fs);
  notify_set_session(notify, se);
  watch = watch_new(&ep, dc, pool, (guint)o.poll, (guint)o.watch_idle);
  /* By default twice as many workers as connections, at least 10: not
   * only for requests that wait for a connection.  Readers that wait for
   * one folder's listing (a server slow to answer its SELECT) hold a
   * worker each, and with as many workers as connections they held them
   * all: requests the cache could answer waited too.  Workers start only
   * when one is about to wait (loop.c), so spare ones cost nothing (cold
   * grep -r, 4 against 10: 1.24 and 1.20 s, medians of 8 alternating). */
  int workers =
      o.max_threads > 0 ? o.max_threads : MAX(10, 2 * o.connections);
  LoopStats lst = {0};
  stop.pool = pool;
  stop.watch = watch;
  loop_on_stop(main_stopping, &stop);
  if (fo.singlethread) {
    ret = fuse_session_loop(se);
  } else if (own_loop) {
    ret = loop_run(se, workers, main_cpus() > 1 ? (guint)o.spin_us : 0, &lst);
  } else {
    /* -o clone_fd: libfuse's loop, a /dev/fuse descriptor per worker */
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, fo.clone_fd);
    fuse_loop_cfg_set_max_threads(cfg, workers);
    if (fo.max_idle_threads > 0 && fo.max_idle_threads <= 1000)
      fuse_loop_cfg_set_idle_threads(cfg, fo.max_idle_threads);
    ret = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
  }
  /* Stopped by SIGTERM, SIGINT or SIGHUP (libfuse returns the signal): a
   * clean unmount, not a failure. */
  if (ret == SIGTERM || ret == SIGINT || ret == SIGHUP)
    ret = 0;
  ret = ret != 0 ? 1 : 0;
  /* Neither the watcher nor the notify thread may write to /dev/fuse once
   * fuse_session_unmount has closed it: its number may be a cache file's
   * by then.  (libfuse's loops, -s and clone_fd, call no loop_on_stop.) */
  if (stop.thread == NULL)
    main_stopping(&stop);
  watch_conn = watch_free(watch);
  watch = NULL;
  dircache_set_prefetch(dc, 0);
  notify_detach(notify, G_USEC_PER_SEC);
  fuse_session_unmount(se);
  BodycacheStats bst;
  bodycache_stats(bc, &bst);
  g_debug("message bytes: %" G_GUINT64_FORMAT " single fetches, %" G_GUINT64_FORMAT
          " by read-ahead, %" G_GUINT64_FORMAT " read ahead from disk, %" G_GUINT64_FORMAT
          " memory hits, %" G_GUINT64_FORMAT
          " disk hits, %" G_GUINT64_FORMAT " waits for read-ahead; readers waited %.3f s; "
          "%u connections opened; at most %u read-ahead batches fetched at once; "
          "server round trip %.3f ms",
          bst.fetched_single, bst.fetched_bulk, bst.disk_ahead, bst.mem_hits, bst.disk_hits, bst.waits,
          bst.wait_us / 1e6, pool_opened_total(pool), bst.net_max, pool_rtt_us(pool) / 1e3);
  FsCounts fc;
  fs_counts(fs, &fc);
  g_debug("FUSE loop: %u workers; reader handed on %" G_GUINT64_FORMAT
          " times before a wait, %" G_GUINT64_FORMAT " by the watchdog; %" G_GUINT64_FORMAT
          " of %" G_GUINT64_FORMAT " spins found a request",
          lst.threads, lst.passes, lst.watched, lst.spin_hits, lst.spin_hits + lst.spin_misses);
  g_debug("file requests: %u OPEN, %u READ, %u FLUSH, %u RELEASE; %u messages stored at open, "
          "%u rests at a first READ",
          fc.open, fc.read, fc.flush, fc.release, fc.stored, fc.rests);
out_signals:
  fuse_remove_signal_handlers(se);
out:
  if (watch != NULL)
    watch_conn = watch_free(watch);
  notify_stop(notify); /* before the session it talks to goes away */
  if (se != NULL)
    fuse_session_destroy(se);
  fs_free(fs);
  bodycache_free(bc);
  if (dc != NULL)
    dircache_flush(dc);
  dircache_free(dc);
  /* Only now: a read-ahead worker's listing told fs_observer of a change
   * and pushed into a freed Notify, and the exit hung on its lock (twice in
   * full test runs; the threads' stacks showed it). */
  notify_free(notify);
  diskcache_close(disk);
  if (stop.thread != NULL) {
    g_mutex_lock(&stop.lock);
    stop.done = TRUE;
    g_cond_signal(&stop.cond);
    g_mutex_unlock(&stop.lock);
    g_thread_join(stop.thread);
  }
  g_mutex_clear(&stop.lock);
  g_cond_clear(&stop.cond);
  /* The LOGOUTs share one wait of at most 2 s, after the unmount. */
  gint64 bye = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
  imap_conn_close_by(watch_conn, bye);
  pool_free(pool, bye);
  if (ep.password != NULL)
    memset(ep.password, 0, strlen(ep.password));
  g_free(ep.password);
  g_free(ep.user);
  g_free(ep.host);
  g_free(ep.cafile);
  if (ep.tls_ctx != NULL)
    SSL_CTX_free(ep.tls_ctx);
  free(fo.mountpoint);
  fuse_opt_free_args(&args);
  options_clear(&o);
  return ret;
}
