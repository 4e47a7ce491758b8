/* bodycache.c - message bytes: memory LRU, optional disk tier, read-ahead.
 *
 * Design note.  The key is (mailbox, UIDVALIDITY, UID, chunk): the bytes
 * for it can never change, so an entry is never invalidated, only evicted
 * (least recently used first) when a bound is reached.  Messages up to
 * chunk_bytes are one chunk fetched with BODY.PEEK[] (which also tells their
 * true length); larger ones are fetched chunk by chunk with
 * BODY.PEEK[]<off.len>, only when read.
 *
 * Lookup order for a chunk: memory, disk, a fetch already in flight (wait
 * for it), else fetch it now.  "In flight" entries make one fetch serve
 * every reader: the read-ahead registers the messages of a batch before it
 * sends the batch, and a reader that arrives first waits for the bytes
 * instead of asking the server a second time.  A batch that fails simply
 * releases its waiters, who then fetch for themselves.
 *
 * Read-ahead (what grep -r, tar and rsync need): every open() of a message
 * tells us its position in the mailbox listing.  While opens move forward
 * through the listing, we keep up to readahead_bytes of the following
 * messages fetched or in flight, in batches of one
 * UID FETCH <set> BODY.PEEK[], each on its own pooled connection, so the
 * network stays busy while FUSE serves the reader.  The batch size starts
 * small and doubles while the reader keeps consuming what was fetched, so
 * a single `cat` costs little and a long scan gets large batches.  An open
 * far from the expected position resets the stream.  Memory is bounded by
 * mem_bytes (the LRU) and readahead_bytes (what is ahead of the reader).
 *
 * Locks: bc->lock protects the table, the LRU, in-flight entries and the
 * streams; it is never held across I/O or while waiting on the pool.
 */
#include "imapfuse/bodycache.h"

#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/diskcache.h"
#include "imapfuse/errors.h"

#define BC_WHOLE G_MAXUINT64
#define BC_BATCH_MIN 8
#define BC_BATCH_MAX 256
#define BC_BATCH_BYTES_MAX (4u << 20)

typedef struct {
  char *key;
  GBytes *bytes;
  GList link; /* in lru; data = this entry */
} BcEntry;

typedef struct {
  gint refs;
  gboolean done;
  GBytes *bytes; /* NULL when the fetch did not deliver it */
} BcInflight;

/* Read-ahead state of one mailbox. */
typedef struct {
  guint32 uidvalidity;
  GArray *msgs;      /* listing snapshot (DcMsg), ref held */
  guint last_open;   /* index of the last open */
  guint next;        /* first index not yet scheduled */
  guint batch;       /* messages per batch now */
  guint running;     /* batches in flight */
} BcStream;

typedef struct {
  Bodycache *bc;
  char *mailbox;
  guint32 uidvalidity;
  GArray *uids; /* guint32 */
} BcBatch;

struct Bodycache {
  Pool *pool;
  BodycacheOptions opts;
  char *account;
  GMutex lock;
  GCond cond;        /* in-flight completions */
  GHashTable *table; /* key -> BcEntry* */
  GQueue lru;        /* most recent at head */
  guint64 bytes;
  GHashTable *inflight; /* key -> BcInflight* */
  GHashTable *streams;  /* mailbox -> BcStream* */
  GThreadPool *workers;
  BodycacheStats stats;
};

static void bc_entry_free(gpointer p) {
  BcEntry *e = p;
  g_free(e->key);
  g_bytes_unref(e->bytes);
  g_free(e);
}

static void bc_stream_free(gpointer p) {
  BcStream *s = p;
  if (s->msgs != NULL)
    g_array_unref(s->msgs);
  g_free(s);
}

static void bc_batch_run(gpointer data, gpointer user);

Bodycache *bodycache_new(Pool *pool, const BodycacheOptions *opts) {
  Bodycache *bc = g_new0(Bodycache, 1);
  bc->pool = pool;
  bc->opts = *opts;
  bc->account = g_strdup(opts->account != NULL ? opts->account : "");
  bc->opts.account = bc->account;
  if (bc->opts.chunk_bytes == 0)
    bc->opts.chunk_bytes = 1 << 20;
  g_mutex_init(&bc->lock);
  g_cond_init(&bc->cond);
  bc->table = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, bc_entry_free);
  g_queue_init(&bc->lru);
  bc->inflight = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  bc->streams = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, bc_stream_free);
  if (bc->opts.readahead_bytes > 0)
    bc->workers = g_thread_pool_new(bc_batch_run, bc, MAX(1, (gint)bc->opts.readahead_threads),
                                    FALSE, NULL);
  return bc;
}

void bodycache_free(Bodycache *bc) {
  if (bc == NULL)
    return;
  if (bc->workers != NULL)
    g_thread_pool_free(bc->workers, TRUE, TRUE); /* let running batches finish */
  g_hash_table_unref(bc->table);
  g_hash_table_unref(bc->inflight);
  g_hash_table_unref(bc->streams);
  g_mutex_clear(&bc->lock);
  g_cond_clear(&bc->cond);
  g_free(bc->account);
  g_free(bc);
}

void bodycache_stats(Bodycache *bc, BodycacheStats *out) {
  g_mutex_lock(&bc->lock);
  *out = bc->stats;
  g_mutex_unlock(&bc->lock);
}

/* ---- keys and the two tiers ---- */

static char *bc_key(const char *mailbox, guint32 uidvalidity, guint32 uid, guint64 chunk) {
  return g_strdup_printf("%u/%u/%" G_GUINT64_FORMAT "/%s", uidvalidity, uid, chunk, mailbox);
}

/* Disk keys: group = account/mailbox/uidvalidity, name = uid[.chunk]. */
static char *bc_disk_group(Bodycache *bc, const char *mailbox, guint32 uidvalidity) {
  return g_strdup_printf("%s/%s/%u", bc->account, mailbox, uidvalidity);
}

static char *bc_disk_name(guint32 uid, guint64 chunk) {
  return chunk == BC_WHOLE ? g_strdup_printf("%u", uid)
                           : g_strdup_printf("%u.c%" G_GUINT64_FORMAT, uid, chunk);
}

static GBytes *_bc_mem_get(Bodycache *bc, const char *key) {
  BcEntry *e = g_hash_table_lookup(bc->table, key);
  if (e == NULL)
    return NULL;
  g_queue_unlink(&bc->lru, &e->link);
  g_queue_push_head_link(&bc->lru, &e->link);
  return g_bytes_ref(e->bytes);
}

static void _bc_mem_put(Bodycache *bc, const char *key, GBytes *bytes) {
  gsize n = g_bytes_get_size(bytes);
  if (n > bc->opts.mem_bytes || g_hash_table_contains(bc->table, key))
    return;
  while (bc->bytes + n > bc->opts.mem_bytes && bc->lru.tail != NULL) {
    BcEntry *old = bc->lru.tail->data;
    g_queue_unlink(&bc->lru, &old->link);
    bc->bytes -= g_bytes_get_size(old->bytes);
    g_hash_table_remove(bc->table, old->key);
  }
  BcEntry *e = g_new0(BcEntry, 1);
  e->key = g_strdup(key);
  e->bytes = g_bytes_ref(bytes);
  e->link.data = e;
  g_queue_push_head_link(&bc->lru, &e->link);
  g_hash_table_insert(bc->table, e->key, e);
  bc->bytes += n;
}

static GBytes *bc_disk_get(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                           guint64 chunk) {
  if (bc->opts.disk == NULL)
    return NULL;
  g_autofree char *group = bc_disk_group(bc, mailbox, uidvalidity);
  g_autofree char *name = bc_disk_name(uid, chunk);
  return diskcache_get(bc->opts.disk, group, name);
}

static void bc_disk_put(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                        guint64 chunk, GBytes *bytes) {
  if (bc->opts.disk == NULL)
    return;
  g_autofree char *group = bc_disk_group(bc, mailbox, uidvalidity);
  g_autofree char *name = bc_disk_name(uid, chunk);
  g_autoptr(GError) error = NULL;
  if (!diskcache_put(bc->opts.disk, group, name, bytes, &error))
    g_debug("disk cache: %s", error->message);
}

/* Store fetched bytes in both tiers and release anyone waiting for them. */
static void bc_deliver(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 chunk, GBytes *bytes) {
  g_autofree char *key = bc_key(mailbox, uidvalidity, uid, chunk);
  g_mutex_lock(&bc->lock);
  _bc_mem_put(bc, key, bytes);
  BcInflight *f = g_hash_table_lookup(bc->inflight, key);
  if (f != NULL && !f->done) {
    f->done = TRUE;
    f->bytes = g_bytes_ref(bytes);
    g_hash_table_remove(bc->inflight, key);
    if (g_atomic_int_dec_and_test(&f->refs)) {
      g_bytes_unref(f->bytes);
      g_free(f);
    }
    g_cond_broadcast(&bc->cond);
  }
  g_mutex_unlock(&bc->lock);
  bc_disk_put(bc, mailbox, uidvalidity, uid, chunk, bytes);
}

/* _bc_inflight_end: caller holds the lock.  Ends an entry that delivered
 * nothing, so its waiters fetch for themselves. */
static void _bc_inflight_end(Bodycache *bc, const char *key) {
  BcInflight *f = g_hash_table_lookup(bc->inflight, key);
  if (f == NULL)
    return;
  f->done = TRUE;
  g_hash_table_remove(bc->inflight, key);
  if (g_atomic_int_dec_and_test(&f->refs))
    g_free(f);
  g_cond_broadcast(&bc->cond);
}

/* ---- single fetches ---- */

typedef struct {
  const char *mailbox;
  guint32 uidvalidity, uid;
  guint64 off, len; /* len 0 = whole */
  GBytes *out;
} BcFetch;

static gboolean bc_check_selected(ImapConn *c, const char *mailbox, guint32 uidvalidity,
                                  GError **error) {
  guint32 uv;
  if (!imap_ensure_selected(c, mailbox, &uv, error))
    return FALSE;
  if (uv != uidvalidity) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_STALE,
                "mailbox %s was recreated (UIDVALIDITY %u, was %u)", mailbox, uv, uidvalidity);
    return FALSE;
  }
  return TRUE;
}

static gboolean bc_fetch_op(ImapConn *c, gpointer user, GError **error) {
  BcFetch *f = user;
  if (!bc_check_selected(c, f->mailbox, f->uidvalidity, error))
    return FALSE;
  g_clear_pointer(&f->out, g_bytes_unref);
  return imap_fetch_body(c, f->uid, f->off, f->len, &f->out, error);
}

/* The chunk with index chunk (BC_WHOLE: the whole message). */
static GBytes *bc_chunk(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                        guint64 chunk, GError **error) {
  g_autofree char *key = bc_key(mailbox, uidvalidity, uid, chunk);
  g_mutex_lock(&bc->lock);
  GBytes *b = _bc_mem_get(bc, key);
  if (b != NULL) {
    bc->stats.mem_hits++;
    g_mutex_unlock(&bc->lock);
    return b;
  }
  BcInflight *f = g_hash_table_lookup(bc->inflight, key);
  if (f != NULL) {
    /* Read-ahead is fetching it: wait for that instead of asking again. */
    g_atomic_int_inc(&f->refs);
    bc->stats.waits++;
    while (!f->done)
      g_cond_wait(&bc->cond, &bc->lock);
    b = f->bytes != NULL ? g_bytes_ref(f->bytes) : NULL;
    if (g_atomic_int_dec_and_test(&f->refs)) {
      if (f->bytes != NULL)
        g_bytes_unref(f->bytes);
      g_free(f);
    }
  }
  g_mutex_unlock(&bc->lock);
  if (b != NULL)
    return b;
  /* Not in memory, and no fetch of it delivered: disk, else the server. */

  GBytes *disk = bc_disk_get(bc, mailbox, uidvalidity, uid, chunk);
  if (disk != NULL) {
    g_mutex_lock(&bc->lock);
    bc->stats.disk_hits++;
    _bc_mem_put(bc, key, disk);
    g_mutex_unlock(&bc->lock);
    return disk;
  }
  BcFetch fe = {.mailbox = mailbox, .uidvalidity = uidvalidity, .uid = uid};
  if (chunk != BC_WHOLE) {
    fe.off = chunk * bc->opts.chunk_bytes;
    fe.len = bc->opts.chunk_bytes;
  }
  g_mutex_lock(&bc->lock);
  bc->stats.fetched_single++;
  g_mutex_unlock(&bc->lock);
  if (!pool_run(bc->pool, mailbox, TRUE, bc_fetch_op, &fe, error))
    return NULL;
  bc_deliver(bc, mailbox, uidvalidity, uid, chunk, fe.out);
  return fe.out;
}

GBytes *bodycache_read(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 size, guint64 off, gsize len, guint64 *real_size,
                       GError **error) {
  if (size <= bc->opts.chunk_bytes) {
    g_autoptr(GBytes) whole = bc_chunk(bc, mailbox, uidvalidity, uid, BC_WHOLE, error);
    if (whole == NULL)
      return NULL;
    gsize n = g_bytes_get_size(whole);
    if (real_size != NULL)
      *real_size = n;
    if (off >= n)
      return g_bytes_new(NULL, 0);
    return g_bytes_new_from_bytes(whole, off, MIN(len, n - off));
  }
  /* Large message: assemble the range from chunks; FUSE wants the full
   * length except at the end of the file. */
  g_autoptr(GByteArray) out = g_byte_array_sized_new(len);
  guint64 cb = bc->opts.chunk_bytes;
  while (out->len < len) {
    guint64 pos = off + out->len;
    g_autoptr(GBytes) chunk = bc_chunk(bc, mailbox, uidvalidity, uid, pos / cb, error);
    if (chunk == NULL)
      return NULL;
    gsize n;
    const guint8 *data = g_bytes_get_data(chunk, &n);
    guint64 in = pos % cb;
    if (in >= n)
      break; /* past the end of the message */
    gsize take = MIN(len - out->len, n - in);
    g_byte_array_append(out, data + in, take);
    if (n < cb)
      break; /* the last chunk */
  }
  return g_byte_array_free_to_bytes(g_steal_pointer(&out));
}

/* ---- read-ahead ---- */

typedef struct {
  Bodycache *bc;
  BcBatch *batch;
} BcBatchCtx;

static gboolean bc_batch_body(guint32 uid, GBytes *body, gpointer user) {
  BcBatchCtx *ctx = user;
  bc_deliver(ctx->bc, ctx->batch->mailbox, ctx->batch->uidvalidity, uid, BC_WHOLE, body);
  return TRUE;
}

static gboolean bc_batch_op(ImapConn *c, gpointer user, GError **error) {
  BcBatchCtx *ctx = user;
  if (!bc_check_selected(c, ctx->batch->mailbox, ctx->batch->uidvalidity, error))
    return FALSE;
  g_autofree char *set =
      imap_uidset_format((const guint32 *)ctx->batch->uids->data, ctx->batch->uids->len);
  return imap_fetch_bodies(c, set, bc_batch_body, ctx, error);
}

static void bc_batch_run(gpointer data, gpointer user) {
  BcBatch *b = data;
  Bodycache *bc = user;
  BcBatchCtx ctx = {bc, b};
  g_autoptr(GError) error = NULL;
  if (!pool_run(bc->pool, b->mailbox, TRUE, bc_batch_op, &ctx, &error))
    g_debug("read-ahead in %s stopped: %s", b->mailbox, error->message);
  g_mutex_lock(&bc->lock);
  bc->stats.fetched_bulk += b->uids->len;
  /* Whatever the batch did not deliver (expunged, failure) is released. */
  for (guint i = 0; i < b->uids->len; i++) {
    g_autofree char *key = bc_key(b->mailbox, b->uidvalidity, g_array_index(b->uids, guint32, i),
                                  BC_WHOLE);
    _bc_inflight_end(bc, key);
  }
  BcStream *s = g_hash_table_lookup(bc->streams, b->mailbox);
  if (s != NULL && s->uidvalidity == b->uidvalidity && s->running > 0)
    s->running--;
  g_mutex_unlock(&bc->lock);
  g_array_unref(b->uids);
  g_free(b->mailbox);
  g_free(b);
}

static guint bc_index_of(const GArray *msgs, guint32 uid) {
  guint lo = 0, hi = msgs->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    guint32 u = g_array_index(msgs, DcMsg, mid).uid;
    if (u == uid)
      return mid;
    if (u < uid)
      lo = mid + 1;
    else
      hi = mid;
  }
  return G_MAXUINT;
}

/* _bc_schedule: caller holds the lock.  Queue batches until the bytes
 * ahead of the reader reach the bound. */
static void _bc_schedule(Bodycache *bc, const char *mailbox, BcStream *s) {
  for (;;) {
    guint64 ahead = 0;
    for (guint i = s->last_open + 1; i < s->next && i < s->msgs->len; i++)
      ahead += g_array_index(s->msgs, DcMsg, i).size;
    if (ahead >= bc->opts.readahead_bytes || s->next >= s->msgs->len ||
        s->running >= MAX(1, bc->opts.readahead_threads))
      return;
    BcBatch *b = g_new0(BcBatch, 1);
    b->bc = bc;
    b->mailbox = g_strdup(mailbox);
    b->uidvalidity = s->uidvalidity;
    b->uids = g_array_new(FALSE, FALSE, sizeof(guint32));
    guint64 bytes = 0;
    while (s->next < s->msgs->len && b->uids->len < s->batch && bytes < BC_BATCH_BYTES_MAX &&
           ahead + bytes < bc->opts.readahead_bytes) {
      const DcMsg *m = &g_array_index(s->msgs, DcMsg, s->next++);
      if (m->size > bc->opts.chunk_bytes)
        continue; /* large messages are read chunk by chunk, on demand */
      g_autofree char *key = bc_key(mailbox, s->uidvalidity, m->uid, BC_WHOLE);
      if (g_hash_table_contains(bc->table, key) || g_hash_table_contains(bc->inflight, key))
        continue;
      if (bc->opts.disk != NULL) {
        /* Already on disk: no need to fetch (read when opened). */
        g_autofree char *group = bc_disk_group(bc, mailbox, s->uidvalidity);
        g_autofree char *name = bc_disk_name(m->uid, BC_WHOLE);
        if (diskcache_contains(bc->opts.disk, group, name))
          continue;
      }
      BcInflight *f = g_new0(BcInflight, 1);
      f->refs = 1;
      g_hash_table_insert(bc->inflight, g_steal_pointer(&key), f);
      g_array_append_val(b->uids, m->uid);
      bytes += m->size;
    }
    if (b->uids->len == 0) {
      g_array_unref(b->uids);
      g_free(b->mailbox);
      g_free(b);
      if (s->next >= s->msgs->len)
        return;
      continue;
    }
    s->running++;
    s->batch = MIN(s->batch * 2, BC_BATCH_MAX);
    g_thread_pool_push(bc->workers, b, NULL);
  }
}

void bodycache_opened(Bodycache *bc, const char *mailbox, const DcListing *l, guint32 uid) {
  if (bc->workers == NULL || l->msgs == NULL)
    return;
  guint i = bc_index_of(l->msgs, uid);
  if (i == G_MAXUINT)
    return;
  g_mutex_lock(&bc->lock);
  BcStream *s = g_hash_table_lookup(bc->streams, mailbox);
  if (s == NULL || s->uidvalidity != l->uidvalidity || s->msgs != l->msgs) {
    gboolean continuing = s != NULL && s->msgs != NULL && s->uidvalidity == l->uidvalidity;
    guint next = continuing ? s->next : 0;
    if (s == NULL) {
      s = g_new0(BcStream, 1);
      g_hash_table_insert(bc->streams, g_strdup(mailbox), s);
    }
    if (s->msgs != NULL)
      g_array_unref(s->msgs);
    /* A new snapshot of the same mailbox: keep going from the same UID. */
    guint32 next_uid =
        continuing && next < s->msgs->len ? g_array_index(s->msgs, DcMsg, next).uid : 0;
    s->msgs = g_array_ref(l->msgs);
    s->uidvalidity = l->uidvalidity;
    s->next = 0;
    if (next_uid != 0) {
      guint k = bc_index_of(s->msgs, next_uid);
      s->next = k != G_MAXUINT ? k : 0;
    }
    if (!continuing) {
      s->last_open = i;
      s->next = i + 1;
      s->batch = BC_BATCH_MIN;
      g_mutex_unlock(&bc->lock);
      return; /* one open is not a pattern yet */
    }
  }
  /* Forward and not far beyond what is scheduled: a scan.  Parallel readers
   * (rg -j4) open a little out of order, hence the slack. */
  gboolean forward = i + 64 >= s->last_open && i <= s->next + 64;
  if (!forward) {
    s->last_open = i;
    s->next = i + 1;
    s->batch = BC_BATCH_MIN;
    g_mutex_unlock(&bc->lock);
    return;
  }
  if (i > s->last_open)
    s->last_open = i;
  if (s->next <= i)
    s->next = i + 1;
  _bc_schedule(bc, mailbox, s);
  g_mutex_unlock(&bc->lock);
}

void bodycache_forget_mailbox(Bodycache *bc, const char *mailbox, guint32 uidvalidity) {
  g_mutex_lock(&bc->lock);
  g_hash_table_remove(bc->streams, mailbox);
  g_mutex_unlock(&bc->lock);
  if (bc->opts.disk != NULL) {
    g_autofree char *group = bc_disk_group(bc, mailbox, uidvalidity);
    diskcache_remove_group(bc->opts.disk, group);
  }
}
