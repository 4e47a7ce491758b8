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
 * pool_run counts the operations under way per mailbox, so that a RENAME
 * or DELETE of a mailbox can wait (briefly) for ours in it to end
 * (pool_quiesce).
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
  GHashTable *busy_in; /* mailbox -> pool_run operations in it now (pool_quiesce) */
  GCond idle_cond;     /* a mailbox's last operation ended */
};

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
  g_cond_init(&p->idle_cond);
  if (first != NULL) {
    g_queue_push_head(&p->idle, first);
    p->open = 1;
    p->opened_total = 1;
    pool_note_rtt(p, first);
  }
  return p;
}

void pool_free(Pool *p) {
  if (p == NULL)
    return;
  /* Nobody calls pool_warm any more: its threads end by releasing what
   * they opened. */
  for (guint i = 0; i < p->warmers->len; i++)
    g_thread_join(p->warmers->pdata[i]);
  g_ptr_array_unref(p->warmers);
  g_hash_table_unref(p->busy_in);
  g_cond_clear(&p->idle_cond);
  ImapConn *c;
  while ((c = g_queue_pop_head(&p->idle)) != NULL)
    imap_conn_close(c);
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

/* _pool_take: caller holds the lock.  Returns an idle connection by the
 * rules above, or NULL with *may_open set when a new one may be opened. */
static ImapConn *_pool_take(Pool *p, const char *mailbox, gboolean *may_open) {
  *may_open = FALSE;
  if (mailbox != NULL)
    for (GList *l = p->idle.head; l != NULL; l = l->next)
      if (g_strcmp0(imap_conn_selected(l->data), mailbox) == 0) {
        ImapConn *c = l->data;
        g_queue_delete_link(&p->idle, l);
        return c;
      }
  /* An idle connection costs one SELECT to switch; a new one costs a
   * login, several round trips: only open more when none is idle. */
  if (p->idle.length > 0)
    return g_queue_pop_tail(&p->idle);
  if (p->open < p->max) {
    *may_open = TRUE;
    return NULL;
  }
  return NULL;
}

/* A new connection, counted in p->open by the caller beforehand. */
static ImapConn *pool_open(Pool *p, GError **error) {
  ImapConn *c = imap_conn_open(p->ep, error);
  g_mutex_lock(&p->lock);
  if (c == NULL) {
    p->open--;
    g_cond_signal(&p->cond); /* a waiter may open one instead */
  } else {
    p->opened_total++;
    imap_conn_set_unsolicited(c, p->unsolicited, p->unsolicited_user);
  }
  g_mutex_unlock(&p->lock);
  return c;
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
  } else if (w->mailbox != NULL) {
    guint32 uv;
    if (!imap_ensure_selected(c, w->mailbox, &uv, &error))
      g_debug("selecting %s ahead: %s", w->mailbox, error->message);
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
    while ((c = _pool_take(p, mailbox, &may_open)) == NULL && !may_open)
      g_cond_wait(&p->cond, &p->lock);
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
        continue;
      }
    }
    return c;
  }
}

void pool_release(Pool *p, ImapConn *c) {
  if (c == NULL)
    return;
  if (imap_conn_is_broken(c)) {
    imap_conn_close(c);
    g_atomic_int_set(&p->rtt_us, 0); /* the way to the server may have changed */
    g_mutex_lock(&p->lock);
    p->open--;
    p->failure_at = g_get_monotonic_time();
  } else {
    pool_note_rtt(p, c);
    g_mutex_lock(&p->lock);
    g_queue_push_head(&p->idle, c);
  }
  g_cond_signal(&p->cond);
  g_mutex_unlock(&p->lock);
}

/* _pool_busy: caller holds the lock.  One more (d 1) or one fewer (d -1)
 * operation in mailbox. */
static void _pool_busy(Pool *p, const char *mailbox, int d) {
  guint n = GPOINTER_TO_UINT(g_hash_table_lookup(p->busy_in, mailbox));
  n = (guint)((int)n + d);
  if (n == 0) {
    g_hash_table_remove(p->busy_in, mailbox);
    g_cond_broadcast(&p->idle_cond);
  } else {
    g_hash_table_insert(p->busy_in, g_strdup(mailbox), GUINT_TO_POINTER(n));
  }
}

static gboolean pool_run_once(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op,
                              gpointer user, GError **error);

gboolean pool_run(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op, gpointer user,
                  GError **error) {
  if (mailbox == NULL)
    return pool_run_once(p, mailbox, idempotent, op, user, error);
  g_mutex_lock(&p->lock);
  _pool_busy(p, mailbox, 1);
  g_mutex_unlock(&p->lock);
  gboolean ok = pool_run_once(p, mailbox, idempotent, op, user, error);
  g_mutex_lock(&p->lock);
  _pool_busy(p, mailbox, -1);
  g_mutex_unlock(&p->lock);
  return ok;
}

void pool_quiesce(Pool *p, const char *mailbox, char delim, gint64 max_us) {
  gint64 until = g_get_monotonic_time() + max_us;
  gsize len = strlen(mailbox);
  g_mutex_lock(&p->lock);
  for (;;) {
    gboolean busy = FALSE;
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, p->busy_in);
    while (!busy && g_hash_table_iter_next(&it, &k, NULL))
      busy = strncmp(k, mailbox, len) == 0 &&
             (((const char *)k)[len] == '\0' || (delim != 0 && ((const char *)k)[len] == delim));
    if (!busy || !g_cond_wait_until(&p->idle_cond, &p->lock, until))
      break;
  }
  g_mutex_unlock(&p->lock);
}

static gboolean pool_run_once(Pool *p, const char *mailbox, gboolean idempotent, PoolOp op,
                              gpointer user, GError **error) {
  for (int attempt = 0;; attempt++) {
    g_autoptr(GError) local = NULL;
    ImapConn *c = pool_acquire(p, mailbox, &local);
    gboolean ok = c != NULL && op(c, user, &local);
    pool_release(p, c);
    if (ok)
      return TRUE;
    /* Work that is not idempotent goes again only if it never ran. */
    if ((idempotent || g_error_matches(local, IFS_ERROR, IFS_ERROR_NOT_RUN)) && attempt == 0 &&
        ifs_error_is_connection(local)) {
      g_debug("retrying after connection failure: %s", local->message);
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
