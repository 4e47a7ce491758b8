/* bodycache.c - message bytes: fetch on demand, keep in a bounded LRU.
 *
 * Design note.  The key is (mailbox, UIDVALIDITY, UID, chunk): the bytes
 * for it can never change, so an entry is never invalidated, only evicted
 * when the memory bound is reached (least recently used first).  Messages
 * up to chunk_bytes are one chunk fetched with BODY.PEEK[] (which also
 * tells their true length); larger ones are fetched chunk by chunk with
 * BODY.PEEK[]<off.len>.  The lock protects the table and the LRU list only;
 * fetches run without it.
 */
#include "imapfuse/bodycache.h"

#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/errors.h"

#define BC_WHOLE G_MAXUINT64

typedef struct {
  char *key;
  GBytes *bytes;
  GList link; /* in lru; data = this entry */
} BcEntry;

struct Bodycache {
  Pool *pool;
  BodycacheOptions opts;
  GMutex lock;
  GHashTable *table; /* key -> BcEntry* */
  GQueue lru;        /* most recent at head */
  guint64 bytes;
};

static void bc_entry_free(gpointer p) {
  BcEntry *e = p;
  g_free(e->key);
  g_bytes_unref(e->bytes);
  g_free(e);
}

Bodycache *bodycache_new(Pool *pool, const BodycacheOptions *opts) {
  Bodycache *bc = g_new0(Bodycache, 1);
  bc->pool = pool;
  bc->opts = *opts;
  if (bc->opts.chunk_bytes == 0)
    bc->opts.chunk_bytes = 1 << 20;
  g_mutex_init(&bc->lock);
  bc->table = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, bc_entry_free);
  g_queue_init(&bc->lru);
  return bc;
}

void bodycache_free(Bodycache *bc) {
  if (bc == NULL)
    return;
  g_hash_table_unref(bc->table);
  g_mutex_clear(&bc->lock);
  g_free(bc);
}

static char *bc_key(const char *mailbox, guint32 uidvalidity, guint32 uid, guint64 chunk) {
  return g_strdup_printf("%u/%u/%" G_GUINT64_FORMAT "/%s", uidvalidity, uid, chunk, mailbox);
}

static GBytes *bc_lookup(Bodycache *bc, const char *key) {
  GBytes *b = NULL;
  g_mutex_lock(&bc->lock);
  BcEntry *e = g_hash_table_lookup(bc->table, key);
  if (e != NULL) {
    g_queue_unlink(&bc->lru, &e->link);
    g_queue_push_head_link(&bc->lru, &e->link);
    b = g_bytes_ref(e->bytes);
  }
  g_mutex_unlock(&bc->lock);
  return b;
}

static void bc_store(Bodycache *bc, char *key, GBytes *bytes) {
  gsize n = g_bytes_get_size(bytes);
  if (n > bc->opts.mem_bytes) {
    g_free(key);
    return;
  }
  g_mutex_lock(&bc->lock);
  if (g_hash_table_contains(bc->table, key)) {
    g_mutex_unlock(&bc->lock);
    g_free(key);
    return;
  }
  while (bc->bytes + n > bc->opts.mem_bytes && bc->lru.tail != NULL) {
    BcEntry *old = bc->lru.tail->data;
    g_queue_unlink(&bc->lru, &old->link);
    bc->bytes -= g_bytes_get_size(old->bytes);
    g_hash_table_remove(bc->table, old->key);
  }
  BcEntry *e = g_new0(BcEntry, 1);
  e->key = key;
  e->bytes = g_bytes_ref(bytes);
  e->link.data = e;
  g_queue_push_head_link(&bc->lru, &e->link);
  g_hash_table_insert(bc->table, e->key, e);
  bc->bytes += n;
  g_mutex_unlock(&bc->lock);
}

typedef struct {
  const char *mailbox;
  guint32 uidvalidity, uid;
  guint64 off, len; /* len 0 = whole */
  GBytes *out;
} BcFetch;

static gboolean bc_fetch_op(ImapConn *c, gpointer user, GError **error) {
  BcFetch *f = user;
  guint32 uv;
  if (!imap_ensure_selected(c, f->mailbox, &uv, error))
    return FALSE;
  if (uv != f->uidvalidity) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_STALE,
                "mailbox %s was recreated (UIDVALIDITY %u, was %u)", f->mailbox, uv,
                f->uidvalidity);
    return FALSE;
  }
  return imap_fetch_body(c, f->uid, f->off, f->len, &f->out, error);
}

/* The chunk with index chunk (BC_WHOLE: the whole message). */
static GBytes *bc_chunk(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                        guint64 chunk, GError **error) {
  char *key = bc_key(mailbox, uidvalidity, uid, chunk);
  GBytes *b = bc_lookup(bc, key);
  if (b != NULL) {
    g_free(key);
    return b;
  }
  BcFetch f = {.mailbox = mailbox, .uidvalidity = uidvalidity, .uid = uid};
  if (chunk != BC_WHOLE) {
    f.off = chunk * bc->opts.chunk_bytes;
    f.len = bc->opts.chunk_bytes;
  }
  if (!pool_run(bc->pool, mailbox, TRUE, bc_fetch_op, &f, error)) {
    g_free(key);
    return NULL;
  }
  bc_store(bc, key, f.out);
  return f.out;
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
