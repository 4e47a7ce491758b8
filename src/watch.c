/* watch.c - polling for other clients' changes with STATUS (+CONDSTORE).
 *
 * Design note.  Each round costs one LIST plus one STATUS per mailbox the
 * user has looked at (never one command per message).  A mailbox is
 * refreshed only when its STATUS differs from what the cached listing
 * says (UIDVALIDITY, message count, UIDNEXT, and HIGHESTMODSEQ where the
 * server has CONDSTORE, else UNSEEN); the refresh itself is a QRESYNC
 * delta where possible.  The
 * watcher keeps its own connection and never selects a mailbox, so its
 * STATUS answers are never the inexact ones of a selected mailbox, and it
 * never competes with readers for a pooled connection except for refreshes.
 * STATUS commands go pipelined, eight a round trip, or for more than 16
 * mailboxes as one LIST-STATUS where the server has it; the first round
 * runs at mount.  Before the mount, the lists the last mount saved are
 * confirmed the same way on a pooled connection (watch_confirm_saved).
 * A STATUS that agrees (with HIGHESTMODSEQ) confirms the cached listing as
 * of when it was asked, so opening a directory needs no round trip while
 * the watcher runs (list_max_age defaults to 1.5 poll intervals).
 */
#include "imapfuse/watch.h"

#include "imapfuse/cmd.h"
#include "imapfuse/errors.h"

#define WATCH_CONFIRM_MAX (8 * IMAP_PIPELINE_MAX) /* at mount: 8 round trips at most */

struct Watch {
  const ImapEndpoint *ep;
  Dircache *dc;
  Pool *pool;
  gint64 interval_us;
  gint64 idle_us; /* mailboxes not used this long are not polled (0: all) */
  GMutex lock;
  GCond cond;
  gboolean stop;
  guint rounds;
  GThread *thread;
};

/* STATUS of the mailboxes whose lists are cached (with saved, also those
 * the last mount saved; at most max), pipelined; the lists that agree are
 * confirmed.  pool (NULL: none yet): the fenced mailboxes are left out.
 * *changed: the nodes that differ, with their STATUS in *sts. */
static gboolean watch_status(Dircache *dc, Pool *pool, ImapConn *c, gboolean saved, guint max,
                             gint64 idle_us, GPtrArray **changed, GArray **sts,
                             GError **error) {
  g_autoptr(GPtrArray) nodes = dircache_listed_nodes(dc, saved, idle_us);
  if (nodes->len > max)
    g_ptr_array_set_size(nodes, max);
  g_autofree const char **names = g_new0(const char *, nodes->len + 1);
  guint n = 0;
  for (guint i = 0; i < nodes->len; i++) {
    const char *name = dcnode_mailbox(g_ptr_array_index(nodes, i));
    if (pool == NULL || pool_try_enter(pool, name)) {
      nodes->pdata[n] = nodes->pdata[i];
      names[n++] = name;
    }
  }
  g_ptr_array_set_size(nodes, n);
  g_autofree ImapStatusInfo *all = g_new0(ImapStatusInfo, n + 1);
  gint64 asked = g_get_monotonic_time();
  gboolean ok = imap_status_many(c, names, n, all, error);
  for (guint i = 0; pool != NULL && i < n; i++)
    pool_leave(pool, names[i]);
  if (!ok)
    return FALSE;
  *changed = g_ptr_array_new();
  *sts = g_array_new(FALSE, FALSE, sizeof(ImapStatusInfo));
  for (guint i = 0; i < nodes->len; i++) {
    DcNode *n = g_ptr_array_index(nodes, i);
    if (all[i].uidvalidity == 0)
      continue; /* deleted meanwhile: the next LIST hides it */
    if (dircache_status_differs(dc, n, &all[i], asked)) {
      g_ptr_array_add(*changed, n);
      g_array_append_val(*sts, all[i]);
    }
  }
  return TRUE;
}

gboolean watch_confirm_saved(Dircache *dc, ImapConn *c, GError **error) {
  dircache_load_saved(dc);
  g_autoptr(GPtrArray) changed = NULL;
  g_autoptr(GArray) sts = NULL;
  /* Bounded: the mount waits for it (a big account's other folders are
   * checked when opened, as without a saved list).  With LIST-STATUS all
   * of them cost one command: a warm ls -R of 2,000 folders through 20 ms
   * took 43 s, a SELECT and a fetch for each folder past the 64th. */
  guint max = imap_conn_has(c, IMAP_CAP_LIST_STATUS) ? G_MAXUINT : WATCH_CONFIRM_MAX;
  return watch_status(dc, NULL, c, TRUE, max, 0, &changed, &sts, error);
}

static void watch_round(Watch *w, ImapConn **conn, gboolean first) {
  g_autoptr(GError) error = NULL;
  /* The mount has just listed the tree before the first round. */
  if (!dircache_refresh_tree(w->dc, first ? w->interval_us : 0, &error)) {
    g_debug("watch: LIST failed: %s", error->message);
    return;
  }
  if (*conn == NULL) {
    *conn = imap_conn_open(w->ep, &error);
    if (*conn == NULL) {
      g_debug("watch: cannot connect: %s", error->message);
      return;
    }
  }
  /* Only the mailboxes looked at in this mount, and lately: lists the last
   * mount saved were confirmed once, before the mount; one ls -lR of 2,000
   * folders made every round 2,000 STATUS for as long as the mount ran.
   * A folder not polled is asked when it is next opened (list_max_age). */
  g_autoptr(GPtrArray) changed = NULL;
  g_autoptr(GArray) sts = NULL;
  if (!watch_status(w->dc, w->pool, *conn, FALSE, G_MAXUINT, w->idle_us, &changed, &sts,
                    &error)) {
    g_clear_pointer(conn, imap_conn_close);
    return;
  }
  for (guint i = 0; i < changed->len; i++) {
    DcNode *n = g_ptr_array_index(changed, i);
    const ImapStatusInfo st = g_array_index(sts, ImapStatusInfo, i);
    DcListing l;
    g_clear_error(&error);
    if (dircache_listing(w->dc, n, 0, &l, &error)) {
      dc_listing_clear(&l);
      dircache_note_modseq(w->dc, n, st.uidvalidity, st.highestmodseq);
    }
    else
      g_debug("watch: refreshing %s failed: %s", dcnode_mailbox(n), error->message);
  }
}

static gpointer watch_thread(gpointer data) {
  Watch *w = data;
  ImapConn *conn = NULL;
  g_mutex_lock(&w->lock);
  for (gboolean first = TRUE; !w->stop; first = FALSE) {
    gint64 until = g_get_monotonic_time() + w->interval_us;
    while (!first && !w->stop && g_cond_wait_until(&w->cond, &w->lock, until))
      ;
    if (w->stop)
      break;
    g_mutex_unlock(&w->lock);
    /* The first round at once after mounting: the lists opened since are
     * checked (the ones the last mount saved were confirmed before the
     * mount, see watch_confirm_saved). */
    watch_round(w, &conn, first);
    g_mutex_lock(&w->lock);
    w->rounds++;
  }
  g_mutex_unlock(&w->lock);
  return conn; /* watch_free's caller closes it */
}

Watch *watch_new(const ImapEndpoint *ep, Dircache *dc, Pool *pool, guint interval_s,
                 guint idle_s) {
  if (interval_s == 0)
    return NULL;
  Watch *w = g_new0(Watch, 1);
  w->ep = ep;
  w->dc = dc;
  w->pool = pool;
  w->interval_us = (gint64)interval_s * G_USEC_PER_SEC;
  w->idle_us = (gint64)idle_s * G_USEC_PER_SEC;
  g_mutex_init(&w->lock);
  g_cond_init(&w->cond);
  w->thread = g_thread_new("imapfuse-watch", watch_thread, w);
  return w;
}

void watch_stop(Watch *w) {
  if (w == NULL)
    return;
  g_mutex_lock(&w->lock);
  w->stop = TRUE;
  g_cond_broadcast(&w->cond);
  g_mutex_unlock(&w->lock);
}

ImapConn *watch_free(Watch *w) {
  if (w == NULL)
    return NULL;
  watch_stop(w);
  ImapConn *conn = g_thread_join(w->thread);
  g_mutex_clear(&w->lock);
  g_cond_clear(&w->cond);
  g_free(w);
  return conn;
}

guint watch_rounds(Watch *w) {
  g_mutex_lock(&w->lock);
  guint n = w->rounds;
  g_mutex_unlock(&w->lock);
  return n;
}
