/* notify.c - kernel cache invalidation from a thread of its own. */
#include "imapfuse/notify.h"

#include <errno.h>
#include <string.h>

#include "imapfuse/loop.h"

typedef struct {
  fuse_ino_t ino; /* parent for entries */
  char *name;     /* NULL: an inode invalidation */
  gboolean data;
} NotifyItem;

struct Notify {
  GMutex lock;
  GCond cond;
  GQueue queue;
  gboolean stop;
  gboolean writing; /* the thread is in a notify call (notify_detach) */
  guint64 queued, done;
  struct fuse_session *se;
  GThread *thread;
};

static void notify_item_free(NotifyItem *it) {
  g_free(it->name);
  g_free(it);
}

static gpointer notify_thread(gpointer data) {
  Notify *n = data;
  g_mutex_lock(&n->lock);
  while (!n->stop) {
    NotifyItem *it = g_queue_pop_head(&n->queue);
    if (it == NULL) {
      g_cond_wait(&n->cond, &n->lock);
      continue;
    }
    struct fuse_session *se = n->se;
    n->writing = se != NULL;
    g_mutex_unlock(&n->lock);
    if (se != NULL) {
      int rc = it->name != NULL
                   ? fuse_lowlevel_notify_inval_entry(se, it->ino, it->name, strlen(it->name))
                   : fuse_lowlevel_notify_inval_inode(se, it->ino, it->data ? 0 : -1, 0);
      /* ENOENT: the kernel had nothing cached, which is fine. */
      if (rc != 0 && rc != -ENOENT && rc != -ENOSYS)
        g_debug("kernel invalidation failed: %s", g_strerror(-rc));
    }
    notify_item_free(it);
    g_mutex_lock(&n->lock);
    n->writing = FALSE;
    n->done++;
    g_cond_broadcast(&n->cond);
  }
  g_mutex_unlock(&n->lock);
  return NULL;
}

Notify *notify_new(void) {
  Notify *n = g_new0(Notify, 1);
  g_mutex_init(&n->lock);
  g_cond_init(&n->cond);
  g_queue_init(&n->queue);
  return n;
}

void notify_set_session(Notify *n, struct fuse_session *se) {
  g_mutex_lock(&n->lock);
  n->se = se;
  if (se != NULL && n->thread == NULL)
    n->thread = g_thread_new("imapfuse-notify", notify_thread, n);
  g_mutex_unlock(&n->lock);
}

void notify_stop(Notify *n) {
  if (n == NULL)
    return;
  g_mutex_lock(&n->lock);
  n->stop = TRUE;
  g_cond_broadcast(&n->cond);
  GThread *t = n->thread;
  n->thread = NULL;
  g_mutex_unlock(&n->lock);
  if (t != NULL)
    g_thread_join(t);
}

void notify_free(Notify *n) {
  if (n == NULL)
    return;
  notify_stop(n);
  g_queue_clear_full(&n->queue, (GDestroyNotify)notify_item_free);
  g_mutex_clear(&n->lock);
  g_cond_clear(&n->cond);
  g_free(n);
}

void notify_detach(Notify *n, gint64 timeout_us) {
  if (n == NULL)
    return;
  gint64 end = g_get_monotonic_time() + timeout_us;
  g_mutex_lock(&n->lock);
  n->se = NULL;
  /* One the kernel holds (it may wait for a request the stopped loop will
   * not answer) has its file already: only calls not begun use the number. */
  while (n->writing && g_cond_wait_until(&n->cond, &n->lock, end))
    ;
  g_mutex_unlock(&n->lock);
}

static void notify_push(Notify *n, NotifyItem *it) {
  g_mutex_lock(&n->lock);
  if (n->se == NULL || n->stop) {
    g_mutex_unlock(&n->lock);
    notify_item_free(it);
    return;
  }
  g_queue_push_tail(&n->queue, it);
  n->queued++;
  g_cond_broadcast(&n->cond);
  g_mutex_unlock(&n->lock);
}

void notify_inval_entry(Notify *n, fuse_ino_t parent, const char *name) {
  NotifyItem *it = g_new0(NotifyItem, 1);
  it->ino = parent;
  it->name = g_strdup(name);
  notify_push(n, it);
}

void notify_inval_inode(Notify *n, fuse_ino_t ino, gboolean data) {
  NotifyItem *it = g_new0(NotifyItem, 1);
  it->ino = ino;
  it->data = data;
  notify_push(n, it);
}

gboolean notify_flush(Notify *n, gint64 timeout_us) {
  gint64 end = g_get_monotonic_time() + timeout_us;
  g_mutex_lock(&n->lock);
  guint64 target = n->queued;
  if (n->done < target) {
    /* The kernel side may need a request queued behind ours served. */
    g_mutex_unlock(&n->lock);
    loop_about_to_wait();
    g_mutex_lock(&n->lock);
  }
  while (n->done < target && !n->stop && n->thread != NULL &&
         g_cond_wait_until(&n->cond, &n->lock, end))
    ;
  gboolean sent = n->done >= target;
  g_mutex_unlock(&n->lock);
  return sent;
}

gboolean notify_store(Notify *n, fuse_ino_t ino, guint64 off, const void *data, gsize len) {
  g_mutex_lock(&n->lock);
  struct fuse_session *se = n->stop ? NULL : n->se;
  g_mutex_unlock(&n->lock);
  if (se == NULL)
    return FALSE;
  struct fuse_bufvec bufv = FUSE_BUFVEC_INIT(len);
  bufv.buf[0].mem = (void *)data;
  int rc = fuse_lowlevel_notify_store(se, ino, (off_t)off, &bufv, 0);
  if (rc != 0 && rc != -ENOENT)
    g_debug("storing pages in the kernel failed: %s", g_strerror(-rc));
  return rc == 0;
}
