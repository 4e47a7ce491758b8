/* pool.c - session pool.
 *
 * Design note.  IMAP runs one command at a time per connection in our
 * client (bulk work is one command with many responses), so concurrency
 * comes from several connections, as sshfs gets it from several SFTP
 * channels.  The FUSE loop is multithreaded; a thread that needs the server
 * takes a connection from the pool and gives it back when done.  Choice of
 * connection, in order:
 *   1. an idle connection that already has the mailbox selected (affinity:
 *      no SELECT, and the server keeps its per-mailbox state warm);
 *   2. the idle connection used least recently (one SELECT to switch, one
 *      round trip, where a login costs several);
 *   3. a new connection, while fewer than max are open (only when all are
 *      busy: that is when more connections buy parallelism);
 *   4. otherwise wait until one is released.
 * When a scan first sends several batches at once (bodycache), pool_warm
 * opens the connections not yet open, in parallel on threads of their
 * own: the scan's batches then take whichever connection is free first,
 * instead of each paying a login (several round trips) in turn while the
 * connection they could have used finishes its batch.
 * A connection that failed mid-command is marked broken by conn.c and is
 * closed on release, never reused.  Idempotent operations (reads, listings)
 * are retried once on a fresh connection when the failure was the
 * connection's, so a server restart or an idle timeout costs one retry,
 * not an error; others only when the command is known never to have run
 * (IFS_ERROR_NOT_RUN: imap_append).  Connections idle for more than a minute are checked with
 * NOOP before use, and so is every idle connection once another one was
 * found dead (a server restart, or a deleted mailbox, drops them all), and
 * every idle one after our own DELETE or RENAME of a mailbox (the server
 * drops the connections that have it selected), so non-idempotent work
 * does not land on a dead socket.
 * Fences.  Dovecot (maildir) leaves a mailbox's dovecot-uidlist.lock
 * behind when one session renames or deletes the mailbox while another
 * holds that lock to sync it -- in a NOOP or any command of a session that
 * has it selected, a STATUS, an APPEND -- and every SELECT of the renamed
 * mailbox then waits seconds to minutes for the stale lock.  So a RENAME
 * or DELETE is fenced (pool_fence): work in the mailbox or below it is
 * counted (pool_enter: pool_run's mailbox, and the mailbox a connection
 * has selected when it is taken), the fence waits briefly for that work
 * to end, closes the idle connections that have it selected (the server
 * drops them after the RENAME anyway), closes instead of keeping those
 * released while it stands, and new work in it waits until pool_unfence.
 * A server that does not answer costs a request two timeouts, not one
 * per connection and retry: a login with no answer mutes new logins for
 * one timeout (requests then wait for an open connection, or fail at once
 * with none), and a NOOP check that times out ends the acquire.  At
 * unmount, pool_cut_waiting shuts down the sockets of connections that
 * have waited 2 s for a read-only command (never a change: its outcome
 * would be unknown), and from then on a read that fails is not retried
 * (its new login could not be cut).
 * The pool also keeps the shortest command round trip its connections
 * saw (pool_rtt_us; forgotten when one is found dead, as the way to the
 * server may have changed): read-ahead decides by it how many batches to
 * fetch at once (bodycache.c).
 * Lock order: the pool lock is a leaf: nothing else is taken while it is
 * held, and no I/O happens under it.
 */
#include "imapfuse/pool.h"

#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/errors.h"
#include "imapfuse/loop.h"

#define POOL_CHECK_IDLE_US (60 * G_USEC_PER_SEC)

struct Pool {
  const ImapEndpoint *ep;
  guint max;
  GMutex lock;
  GCond cond;
  GQueue idle;  /* ImapConn*, most recently released at the head */
  guint open;   /* connections open or being opened */
  guint opened_total;
  gint64 failure_at; /* last time a connection was found dead */
  ImapHandler unsolicited;
  gpointer unsolicited_user;
  GPtrArray *warmers; /* GThread*: pool_warm's, joined by pool_free */
  gint rtt_us;        /* atomic: pool_rtt_us */
  GHashTable *busy_in; /* mailbox -> work in it now (pool_enter, taken connections) */
  GHashTable *held;    /* ImapConn* taken -> the mailbox it had selected then */
  GPtrArray *fences;   /* PoolFence*: mailboxes being renamed or deleted */
  GCond busy_cond;     /* a mailbox's last work ended, or a fence was lifted */
  gint64 mute_until;   /* a login got no answer: no new login until then (pool_open) */
  gint stopping;       /* atomic: pool_cut_waiting was called; reads are not retried */
  gint reads_cut;      /* atomic: a read was cut at the stop: reads fail at once */
  char *mute_why;
};

typedef struct {
  char *mailbox;
  char delim; /* 0: none, the fence covers the mailbox alone */
} PoolFence;

static void pool_fence_free(PoolFence *f) {
  g_free(f->mailbox);
  g_free(f);
}

/* The shortest round trip any connection saw since one was found dead:
 * server time only ever adds to a command's round trip. */
static void pool_note_rtt(Pool *p, const ImapConn *c) {
  gint r = (gint)MIN(imap_conn_rtt_us(c), G_MAXINT), cur = g_atomic_int_get(&p->rtt_us);
  while (r > 0 && (cur == 0 || r < cur) && !g_atomic_int_compare_and_exchange(&p->rtt_us, cur, r))
    cur = g_atomic_int_get(&p->rtt_us);
}

Pool *pool_new(const ImapEndpoint *ep, guint max_conns, ImapConn *first) {
  Pool *p = g_new0(Pool, 1);
  p->ep = ep;
  p->max = MAX(max_conns, 1);
  g_mutex_init(&p->lock);
  g_cond_init(&p->cond);
  g_queue_init(&p->idle);
  p->warmers = g_ptr_array_new();
  p->busy_in = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  p->held = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
  p->fences = g_ptr_array_new_with_free_func((GDestroyNotify)pool_fence_free);
  g_cond_init(&p->busy_cond);
  if (first != NULL) {
    g_queue_push_head(&p->idle, first);
    p->open = 1;
    p->opened_total = 1;
    pool_note_rtt(p, first);
  }
  return p;
}

void pool_free(Pool *p, gint64 deadline_us) {
  if (p == NULL)
    return;
  /* Nobody calls pool_warm any more: its threads end by releasing what
   * they opened. */
  for (guint i = 0; i < p->warmers->len; i++)
    g_thread_join(p->warmers->pdata[i]);
  g_ptr_array_unref(p->warmers);
  g_hash_table_unref(p->busy_in);
  g_hash_table_unref(p->held);
  g_free(p->mute_why);
  g_ptr_array_unref(p->fences);
  g_cond_clear(&p->busy_cond);
  ImapConn *c;
  while ((c = g_queue_pop_head(&p->idle)) != NULL)
    imap_conn_close_by(c, deadline_us);
  g_mutex_clear(&p->lock);
  g_cond_clear(&p->cond);
  g_free(p);
}

void pool_set_unsolicited(Pool *p, ImapHandler fn, gpointer user) {
  g_mutex_lock(&p->lock);
  p->unsolicited = fn;
  p->unsolicited_user = user;
  for (GList *l = p->idle.head; l != NULL; l = l->next)
    imap_conn_set_unsolicited(l->data, fn, user);
  g_mutex_unlock(&p->lock);
}

/* c out of the pool, closed (a healthy one with LOGOUT: the server closes
 * its mailbox before answering).  failed: it was found broken, so the
 * others are checked before use and the round trip is measured again. */
static void pool_drop(Pool *p, ImapConn *c, gboolean failed) {
  imap_conn_close(c);
  if (failed)
    g_atomic_int_set(&p->rtt_us, 0); /* the way to the server may have changed */
  g_mutex_lock(&p->lock);
  p->open--;
  if (failed)
    p->failure_at = g_get_monotonic_time();
  g_cond_signal(&p->cond);
  g_mutex_unlock(&p->lock);
}

/* Whether mailbox is f's or below it. */
static gboolean pool_fence_covers(const PoolFence *f, const char *mailbox) {
  gsize len = strlen(f->mailbox);
  return strncmp(mailbox, f->mailbox, len) == 0 &&
         (mailbox[len] == '\0' || (f->delim != 0 && mailbox[len] == f->delim));
}

/* _pool_fenced: caller holds the lock. */
static gboolean _pool_fenced(Pool *p, const char *mailbox) {
  for (guint i = 0; mailbox != NULL && i < p->fences->len; i++)
    if (pool_fence_covers(p->fences->pdata[i], mailbox))
      return TRUE;
  return FALSE;
}

/* _pool_busy: caller holds the lock.  One more (d 1) or one fewer (d -1)
 * piece of work in mailbox. */
static void _pool_busy(Pool *p, const char *mailbox, int d) {
  guint n = GPOINTER_TO_UINT(g_hash_table_lookup(p->busy_in, mailbox));
  n = (guint)((int)n + d);
  if (n == 0) {
    g_hash_table_remove(p->busy_in, mailbox);
    g_cond_broadcast(&p->busy_cond);
  } else {
    g_hash_table_insert(p->busy_in, g_strdup(mailbox), GUINT_TO_POINTER(n));
  }
}

/* _pool_hold: caller holds the lock; c was just taken from the idle list.
 * The mailbox it has selected counts as busy until it is released: its
 * next command may make the server sync that mailbox. */
static void _pool_hold(Pool *p, ImapConn *c) {
  const char *sel = imap_conn_selected(c);
  if (sel == NULL)
    return;
  _pool_busy(p, sel, 1);
  g_hash_table_insert(p->held, c, g_strdup(sel));
}

/* _pool_take: caller holds the lock.  Returns an idle connection by the
 * rules above, or NULL with *may_open set when a new one may be opened. */
static ImapConn *_pool_take(Pool *p, const char *mailbox, gboolean *may_open) {
  *may_open = FALSE;
  if (mailbox != NULL)
    for (GList *l = p->idle.head; l != NULL; l = l->next)
      if (g_strcmp0(imap_conn_selected(l->data), mailbox) == 0) {
        ImapConn *c = l->data;
        g_queue_delete_link(&p->idle, l);
        _pool_hold(p, c);
        return c;
      }
  /* An idle connection costs one SELECT to switch; a new one costs a
   * login, several round trips: only open more when none is idle. */
  if (p->idle.length > 0) {
    ImapConn *c = g_queue_pop_tail(&p->idle);
    _pool_hold(p, c);
    return c;
  }
  /* While logins are muted (pool_open), wait for an open connection
   * rather than fail at once; with none open, fail at once. */
  if (p->open < p->max && (p->open == 0 || g_get_monotonic_time() >= p->mute_until)) {
    *may_open = TRUE;
    return NULL;
  }
  return NULL;
}

/* A new connection, counted in p->open by the caller beforehand. */
static ImapConn *pool_open(Pool *p, GError **error) {
  /* A server that let a login go unanswered for the whole timeout (stopped,
   * or the way to it gone) gets no new login for as long again: else every
   * retry and every reader paid that wait anew (a read took 4x timeout,
   * then its kernel retry as much again). */
  ImapConn *c = NULL;
  GError *local = NULL;
  g_mutex_lock(&p->lock);
  if (g_get_monotonic_time() < p->mute_until)
    g_set_error(&local, IFS_ERROR, IFS_ERROR_TIMEOUT, "%s (no new login for %d s after it)",
                p->mute_why, p->ep->timeout_s);
  gboolean fresh = local == NULL;
  g_mutex_unlock(&p->lock);
  if (fresh)
    c = imap_conn_open(p->ep, &local);
  g_mutex_lock(&p->lock);
  if (fresh && local != NULL && g_error_matches(local, IFS_ERROR, IFS_ERROR_TIMEOUT)) {
    p->mute_until = g_get_monotonic_time() + (gint64)p->ep->timeout_s * G_USEC_PER_SEC;
    g_free(p->mute_why);
    p->mute_why = g_strdup(local->message);
  }
  if (c == NULL) {
    p->open--;
    g_cond_signal(&p->cond); /* a waiter may open one instead */
  } else {
    p->opened_total++;
    imap_conn_set_unsolicited(c, p->unsolicited, p->unsolicited_user);
  }
  g_mutex_unlock(&p->lock);
  if (local != NULL)
    g_propagate_error(error, local);
  return c;
}

gboolean pool_stopping(Pool *p) { return g_atomic_int_get(&p->stopping) != 0; }

guint pool_cut_waiting(Pool *p, gint64 waited_us) {
  g_atomic_int_set(&p->stopping, 1);
  return imap_conn_cut_waiting(waited_us); /* logins under way, the watcher's too */
}

typedef struct {
  Pool *p;
  char *mailbox;
} PoolWarm;

static gpointer pool_warm_thread(gpointer data) {
  PoolWarm *w = data;
  g_autoptr(GError) error = NULL;
  ImapConn *c = pool_open(w->p, &error);
  if (c == NULL) {
    g_debug("opening a connection ahead: %s", error->message);
  } else if (w->mailbox != NULL && pool_try_enter(w->p, w->mailbox)) {
    guint32 uv;
    if (!imap_ensure_selected(c, w->mailbox, &uv, &error))
      g_debug("selecting %s ahead: %s", w->mailbox, error->message);
    pool_leave(w->p, w->mailbox);
  }
  pool_release(w->p, c); /* a broken one is closed there */
  g_free(w->mailbox);
  g_free(w);
  return NULL;
}

void pool_warm(Pool *p, const char *mailbox) {
  g_mutex_lock(&p->lock);
  for (; p->open < p->max; p->open++) {
    PoolWarm *w = g_new0(PoolWarm, 1);
    w->p = p;
    w->mailbox = g_strdup(mailbox);
    g_ptr_array_add(p->warmers, g_thread_new("pool-warm", pool_warm_thread, w));
  }
  g_mutex_unlock(&p->lock);
}

ImapConn *pool_acquire(Pool *p, const char *mailbox, GError **error) {
  loop_about_to_wait(); /* a round trip at least, maybe a wait for a connection */
  for (;;) {
    gboolean may_open;
    g_mutex_lock(&p->lock);
    ImapConn *c;
    while ((c = _pool_take(p, mailbox, &may_open)) == NULL && !may_open) {
      /* Muted logins: when the mute ends this waiter may open a
       * connection, and no release need come first to say so (one long
       * upload held every new request until it ended). */
      if (p->open < p->max && g_get_monotonic_time() < p->mute_until)
        g_cond_wait_until(&p->cond, &p->lock, p->mute_until);
      else
        g_cond_wait(&p->cond, &p->lock);
    }
    if (c == NULL)
      p->open++;
    g_mutex_unlock(&p->lock);

    if (c == NULL)
      return pool_open(p, error);
    g_mutex_lock(&p->lock);
    gint64 failure_at = p->failure_at;
    g_mutex_unlock(&p->lock);
    /* Check a connection idle for long, or idle since another one died:
     * a server restart or a deleted mailbox drops them all at once. */
    if (g_get_monotonic_time() - imap_conn_last_used(c) > POOL_CHECK_IDLE_US ||
        imap_conn_last_used(c) <= failure_at) {
      g_autoptr(GError) ignored = NULL;
      if (!imap_noop(c, &ignored)) {
        g_debug("connection #%u was dead (%s); replacing it", imap_conn_id(c),
                ignored->message);
        imap_conn_set_broken(c);
        pool_release(p, c);
        /* A server that does not answer: the next idle connection would
         * wait as long again (four of them, four timeouts). */
        if (g_error_matches(ignored, IFS_ERROR, IFS_ERROR_TIMEOUT)) {
          g_propagate_error(error, g_steal_pointer(&ignored));
          return NULL;
        }
        continue;
      }
    }
    return c;
  }
}

void pool_release(Pool *p, ImapConn *c) {
  if (c == NULL)
    return;
  g_mutex_lock(&p->lock);
  char *held = g_hash_table_lookup(p->held, c);
  if (held != NULL) {
    _pool_busy(p, held, -1);
    g_hash_table_remove(p->held, c);
  }
  gboolean broken = imap_conn_is_broken(c);
  /* Kept, its next command could sync a mailbox being renamed. */
  gboolean retire = !broken && _pool_fenced(p, imap_conn_selected(c));
  if (!broken && !retire) {
    pool_note_rtt(p, c); /* lock-free */
    g_queue_push_head(&p->idle, c);
    g_cond_signal(&p->cond);
    g_mutex_unlock(&p->lock);
    return;
  }
  g_mutex_unlock(&p->lock);
  pool_drop(p, c, broken);
}

static gboolean pool_run_once(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op,
                              gpointer user, GError **error);

gboolean pool_run(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op, gpointer user,
                  GError **error) {
  if (mailbox == NULL)
    return pool_run_once(p, mailbox, idempotent, op, user, error);
  pool_enter(p, mailbox);
  gboolean ok = pool_run_once(p, mailbox, idempotent, op, user, error);
  pool_leave(p, mailbox);
  return ok;
}

void pool_enter(Pool *p, const char *mailbox) {
  g_mutex_lock(&p->lock);
  if (_pool_fenced(p, mailbox)) {
    g_mutex_unlock(&p->lock);
    loop_about_to_wait(); /* for the RENAME or DELETE's round trip */
    g_mutex_lock(&p->lock);
    while (_pool_fenced(p, mailbox))
      g_cond_wait(&p->busy_cond, &p->lock);
  }
  _pool_busy(p, mailbox, 1);
  g_mutex_unlock(&p->lock);
}

gboolean pool_try_enter(Pool *p, const char *mailbox) {
  g_mutex_lock(&p->lock);
  gboolean ok = !_pool_fenced(p, mailbox);
  if (ok)
    _pool_busy(p, mailbox, 1);
  g_mutex_unlock(&p->lock);
  return ok;
}

void pool_leave(Pool *p, const char *mailbox) {
  g_mutex_lock(&p->lock);
  _pool_busy(p, mailbox, -1);
  g_mutex_unlock(&p->lock);
}

void pool_fence(Pool *p, const char *mailbox, char delim, gint64 max_us) {
  PoolFence *f = g_new0(PoolFence, 1);
  f->mailbox = g_strdup(mailbox);
  f->delim = delim;
  gint64 until = g_get_monotonic_time() + max_us;
  g_mutex_lock(&p->lock);
  g_ptr_array_add(p->fences, f);
  for (;;) {
    gboolean busy = FALSE;
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, p->busy_in);
    while (!busy && g_hash_table_iter_next(&it, &k, NULL))
      busy = pool_fence_covers(f, k);
    if (!busy || !g_cond_wait_until(&p->busy_cond, &p->lock, until))
      break;
  }
  GSList *doomed = NULL;
  for (GList *l = p->idle.head, *next; l != NULL; l = next) {
    next = l->next;
    const char *sel = imap_conn_selected(l->data);
    if (sel != NULL && pool_fence_covers(f, sel)) {
      doomed = g_slist_prepend(doomed, l->data);
      g_queue_delete_link(&p->idle, l);
    }
  }
  g_mutex_unlock(&p->lock);
  /* Before the RENAME; the server would drop them after it anyway. */
  for (GSList *l = doomed; l != NULL; l = l->next)
    pool_drop(p, l->data, FALSE);
  g_slist_free(doomed);
}

void pool_unfence(Pool *p, const char *mailbox) {
  g_mutex_lock(&p->lock);
  for (guint i = 0; i < p->fences->len; i++)
    if (g_str_equal(((PoolFence *)p->fences->pdata[i])->mailbox, mailbox)) {
      g_ptr_array_remove_index_fast(p->fences, i);
      break;
    }
  g_cond_broadcast(&p->busy_cond);
  g_mutex_unlock(&p->lock);
}

static gboolean pool_run_once(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op,
                              gpointer user, GError **error) {
  /* One retry after a failure that may have reached the server; one
   * that never ran (a dead connection found at the first command) does
   * not use it up: a cp after an idle connection died got no retry when
   * its APPEND's reply was then lost.  Three attempts at most. */
  gboolean retried = FALSE;
  if (idempotent && pool_stopping(p) && g_atomic_int_get(&p->reads_cut)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_CANCELLED,
                "imapfuse is stopping and the server did not answer a read");
    return FALSE;
  }
  for (int attempt = 0;; attempt++) {
    g_autoptr(GError) local = NULL;
    ImapConn *c = pool_acquire(p, mailbox, &local);
    gboolean ok = c != NULL && op(c, user, &local);
    pool_release(p, c);
    if (ok)
      return TRUE;
    /* Work that is not idempotent goes again only if it never ran. */
    gboolean not_run = g_error_matches(local, IFS_ERROR, IFS_ERROR_NOT_RUN);
    /* At a stop a read that was cut is not sent again: its retry's login
     * could not be cut and held the exit for a timeout. */
    gboolean stop = idempotent && !not_run && pool_stopping(p);
    /* ... nor is any later read (pool_run_once's start): each new READ
     * of the file logged in anew and waited 2 s for its own cut (SIGTERM
     * while a read waited on a silent server took 14 s; an exploratory
     * test).  Changes, such as the files sent at unmount, still go. */
    if (stop && ifs_error_is_connection(local))
      g_atomic_int_set(&p->reads_cut, 1);
    if ((idempotent || not_run) && attempt < 2 && (not_run || !retried) && !stop &&
        ifs_error_is_connection(local)) {
      g_debug("retrying after connection failure: %s", local->message);
      retried |= !not_run;
      continue;
    }
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
}

void pool_check_before_use(Pool *p) {
  g_mutex_lock(&p->lock);
  p->failure_at = g_get_monotonic_time();
  g_mutex_unlock(&p->lock);
}

gint64 pool_rtt_us(Pool *p) { return g_atomic_int_get(&p->rtt_us); }

guint pool_opened_total(Pool *p) {
  g_mutex_lock(&p->lock);
  guint n = p->opened_total;
  g_mutex_unlock(&p->lock);
  return n;
}
