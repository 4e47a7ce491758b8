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
 * mem_bytes (the LRU) and readahead_bytes (what is ahead of the reader, at
 * most half of mem_bytes so that it is not evicted unread).  Details that
 * each saved measurable time (see test_cache.py):
 *  - the window is topped up once half of it is free, not at every open
 *    (that sent a one-message batch per message read);
 *  - the first file of a mailbox opened at either end of an order sends
 *    one batch that includes it (a lone cat costs that batch; the next
 *    open of a neighbour makes it a scan); a scan going on from another
 *    mailbox keeps its batch size (the ramp-up costs round trips);
 *  - a reader that starts a second place in a folder (rg's walker) gets
 *    a run of its own, and one batch beyond the per-folder bound if all
 *    of the first place's batches are in flight;
 *  - messages over chunk_bytes come whole with a batch if they fit in one,
 *    handed out as chunks (else a round trip per chunk);
 *  - a closed message goes to the cold end of the LRU (the kernel keeps
 *    its pages); a re-opened one schedules nothing (a second pass);
 *  - scheduling resumes where it stopped (front) and sizes the window
 *    with prefix sums (cum), so a scan costs O(1) per open;
 *  - a batch hands its bodies to the disk writer 1 MiB at a time, and a
 *    delivery wakes waiters only if there are any (a job and a broadcast
 *    per message were two futex calls each: daemon CPU 1.24 -> 1.09 s in
 *    a cold grep of 10,000 messages);
 *  - a forward scan with a window or less of its mailbox left unclaimed
 *    primes the mailbox a readdir-order walk reads next: its listing and
 *    a first batch of half a window, fetched while the reader finishes
 *    (else two round trips a folder: opendir's listing, then the first
 *    batch);
 *  - a batch for a reader walking down the UIDs is asked as up to seven
 *    FETCHes, highest UIDs first, in one write: a server answers a FETCH
 *    in UID order, so one command made the reader wait for the whole
 *    batch before its first message (cold rg through 20 ms: 1.76 ->
 *    1.64 s, medians of 8);
 *  - a batch (or a single fetch) whose connection has another mailbox
 *    selected sends the SELECT in the same write (imap_fetch_bodies,
 *    imap_fetch_body_in): a round trip less at every switch (cold rg
 *    through 20 ms 1.64 -> 1.53 s, grep 1.67 -> 1.62 s, medians of 6; a
 *    lone cat alternating between two folders 48 -> 27 ms);
 *  - the first scan that has two batches for the server in flight at
 *    once has the pool open its other connections in parallel
 *    (pool_warm);
 *  - batches are fetched one at a time from a server that answers within
 *    2 ms, up to readahead_threads at once from a farther one
 *    (_bc_batches, by the pool's shortest round trip);
 *  - batches go to the server in the order they were scheduled, except
 *    that one a reader waits for goes first (_bc_net_take, _bc_hurry);
 *  - without a disk cache, what all places hold claimed and unread is
 *    bounded too (_bc_unread), since what memory drops is fetched again;
 *    claims a reader passed over (it reads only some files) stop counting
 *    once it schedules again.
 * Workers schedule too (that priming), so once bodycache_free begins
 * nothing is scheduled and queued batches only release their claims.
 *
 * Locks: bc->lock protects the table, the LRU, in-flight entries and the
 * streams; it is never held across I/O or while waiting on the pool.
 */
#include "imapfuse/bodycache.h"

#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/diskcache.h"
#include "imapfuse/errors.h"
#include "imapfuse/heap.h"
#include "imapfuse/loop.h"

#define BC_WHOLE G_MAXUINT64
#define BC_BATCH_MIN 8
#define BC_BATCH_MAX 256
#define BC_BATCH_BYTES_MAX (4u << 20)
#define BC_PART_MIN 4 /* messages per FETCH of a downward batch, at least */
#define BC_DISK_QUEUE_MAX (8u << 20)
#define BC_COUNT_MAX (1u << 20) /* a message counts this much at most against the window */
#define BC_RESERVE_EXTRA (16u << 20) /* beyond mem_bytes: batches being received, FUSE buffers */
#define BC_NEAR_RTT_US 2000 /* a server this near needs one batch at a time (_bc_batches) */
#define BC_SCAN_GAP_US (5 * G_USEC_PER_SEC) /* a folder's opens further apart: a new scan */
#define BC_PASSED_LOOK 64 /* how far behind a reader claims count as passed (_bc_schedule) */

typedef struct {
  char *key;
  GBytes *bytes;
  GList link; /* in lru; data = this entry */
} BcEntry;

typedef struct BcBatch BcBatch;

typedef struct {
  gint refs;
  gboolean done;
  GBytes *bytes;  /* NULL when the fetch did not deliver it */
  BcBatch *batch; /* the read-ahead batch that fetches it (alive while !done), or NULL */
} BcInflight;

/* Read-ahead state of one mailbox (see the design note). */
enum { BC_NONE = 0, BC_CLAIMED = 1, BC_OPENED = 2, BC_SKIP = 3 };
typedef struct {
  guint32 uidvalidity;
  GArray *msgs;     /* listing snapshot (DcMsg, UID order), ref held */
  guint8 *state;    /* per index: BC_* */
  guint32 *by_name; /* index of the r-th message in file-name order */
  guint32 *rank;    /* rank in file-name order of index i */
  guint64 *cum[2];  /* [o][r]: bytes of the first r messages in order o (each
                     * counted up to a chunk: larger ones are read on demand) */
  gint64 front[2][2]; /* [o][dir < 0]: where the last schedule stopped looking */
  gboolean primed;  /* claimed ahead by the previous mailbox's scan; no reader yet */
  gboolean next_asked; /* this scan asked for the next mailbox to be primed */
  guint batch;      /* messages per batch now */
  guint running;    /* batches in flight */
  guint net_running; /* of them, batches from the server */
  guint64 unread;   /* bytes of the messages claimed and not yet opened */
  gint64 last_open; /* monotonic us */
} BcStream;

struct BcBatch {
  Bodycache *bc;
  char *mailbox;
  guint32 uidvalidity;
  guint64 seq;      /* order of scheduling: server batches are fetched in it */
  gboolean urgent;  /* a reader waits for one of its messages: fetched next */
  gboolean started; /* fetching (or reading the disk) has begun */
  GArray *uids; /* guint32 */
  GHashTable *big; /* uid -> its number of chunks, for messages over chunk_bytes */
  gboolean from_disk; /* read them from the disk cache into memory */
  gboolean prime_next; /* no UIDs: prime the mailbox read after this one */
  gboolean down; /* for a reader walking down the UIDs: highest first */
};

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
  guint scan_batch;         /* batch size of the latest scan, and when it */
  gint64 scan_time;         /* was scheduled: the next mailbox's scan goes on from it */
  GThreadPool *disk_writer; /* write-behind: disk writes off the fetch path */
  guint64 disk_queued;      /* bytes waiting for disk_writer */
  gboolean closing;         /* bodycache_free has begun: schedule nothing */
  gint scanning;            /* a reader went on to a neighbour: a scan */
  gint heap_reserved;       /* a batch of it faulted in the memory scans use */
  gboolean pool_warmed;     /* a scan had the pool open all its connections */
  guint net_active;         /* batches being fetched from the server now */
  GCond net_cond;           /* net_active went down, or closing */
  GPtrArray *net_wait;      /* BcBatch*: server batches not yet started (_bc_net_take) */
  guint64 batch_seq;        /* batches made so far */
  guint batches_seen;       /* _bc_batches' last answer, logged when it changes */
  guint64 unread;           /* the sum of the streams' unread */
  gint64 unread_swept;      /* when _bc_unread last forgot stale streams' claims */
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
  g_free(s->state);
  g_free(s->by_name);
  g_free(s->rank);
  g_free(s->cum[0]);
  g_free(s->cum[1]);
  g_free(s);
}

static void bc_batch_run(gpointer data, gpointer user);
static void bc_disk_job(gpointer data, gpointer user);

Bodycache *bodycache_new(Pool *pool, const BodycacheOptions *opts) {
  Bodycache *bc = g_new0(Bodycache, 1);
  bc->pool = pool;
  bc->opts = *opts;
  bc->account = g_strdup(opts->account != NULL ? opts->account : "");
  bc->opts.account = bc->account;
  if (bc->opts.chunk_bytes == 0)
    bc->opts.chunk_bytes = 1 << 20;
  /* What is read ahead waits in memory for its reader: a window larger
   * than the memory LRU would evict it unread, to be fetched again. */
  bc->opts.readahead_bytes = MIN(bc->opts.readahead_bytes, bc->opts.mem_bytes / 2);
  bc->opts.readahead_threads = MAX(1, bc->opts.readahead_threads);
  g_mutex_init(&bc->lock);
  g_cond_init(&bc->cond);
  g_cond_init(&bc->net_cond);
  bc->table = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, bc_entry_free);
  g_queue_init(&bc->lru);
  bc->inflight = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  bc->streams = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, bc_stream_free);
  bc->net_wait = g_ptr_array_new();
  return bc;
}

void bodycache_start(Bodycache *bc) {
  /* Until started there are no threads: no read-ahead, disk writes inline.
   * Exclusive pools: GLib's shared pools start a helper thread of their
   * own, which must not exist before daemonising either. */
  g_mutex_lock(&bc->lock);
  if (bc->opts.disk != NULL && bc->disk_writer == NULL)
    bc->disk_writer = g_thread_pool_new(bc_disk_job, bc, 1, TRUE, NULL);
  if (bc->opts.readahead_bytes > 0 && bc->workers == NULL)
    bc->workers = g_thread_pool_new(bc_batch_run, bc, (gint)bc->opts.readahead_threads,
                                    TRUE, NULL);
  g_mutex_unlock(&bc->lock);
}

void bodycache_free(Bodycache *bc) {
  if (bc == NULL)
    return;
  /* Workers push batches too (read-ahead into the next mailbox): from
   * now on nothing is scheduled, and queued batches are released without
   * fetching (running ones finish). */
  g_mutex_lock(&bc->lock);
  bc->closing = TRUE;
  g_cond_broadcast(&bc->net_cond);
  g_mutex_unlock(&bc->lock);
  if (bc->workers != NULL)
    g_thread_pool_free(bc->workers, FALSE, TRUE);
  if (bc->disk_writer != NULL)
    g_thread_pool_free(bc->disk_writer, FALSE, TRUE); /* write what is queued */
  g_hash_table_unref(bc->table);
  g_hash_table_unref(bc->inflight);
  g_hash_table_unref(bc->streams);
  g_ptr_array_free(bc->net_wait, TRUE);
  g_mutex_clear(&bc->lock);
  g_cond_clear(&bc->cond);
  g_cond_clear(&bc->net_cond);
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

/* _bc_mem_put: caller holds the lock; evicted entries go to *dead, to be
 * freed (bc_entries_free) once it is dropped: freeing large buffers can
 * take a system call, and readers wait for the lock meanwhile. */
static void _bc_mem_put(Bodycache *bc, const char *key, GBytes *bytes, GSList **dead) {
  gsize n = g_bytes_get_size(bytes);
  if (n > bc->opts.mem_bytes || g_hash_table_contains(bc->table, key))
    return;
  while (bc->bytes + n > bc->opts.mem_bytes && bc->lru.tail != NULL) {
    BcEntry *old = bc->lru.tail->data;
    g_queue_unlink(&bc->lru, &old->link);
    bc->bytes -= g_bytes_get_size(old->bytes);
    g_hash_table_steal(bc->table, old->key);
    *dead = g_slist_prepend(*dead, old);
  }
  BcEntry *e = g_new0(BcEntry, 1);
  e->key = g_strdup(key);
  e->bytes = g_bytes_ref(bytes);
  e->link.data = e;
  g_queue_push_head_link(&bc->lru, &e->link);
  g_hash_table_insert(bc->table, e->key, e);
  bc->bytes += n;
}

static void bc_entries_free(GSList *dead) { g_slist_free_full(dead, bc_entry_free); }

/* _bc_mem_done: caller holds the lock.  A message whose reader closed it
 * moves to the cold end of the LRU: the kernel keeps its pages
 * (keep_cache), so our copy matters less than bytes read ahead and not
 * yet read, which the LRU would otherwise evict first. */
static void _bc_mem_done(Bodycache *bc, const char *key) {
  BcEntry *e = g_hash_table_lookup(bc->table, key);
  if (e == NULL)
    return;
  g_queue_unlink(&bc->lru, &e->link);
  g_queue_push_tail_link(&bc->lru, &e->link);
}

static GBytes *bc_disk_get(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                           guint64 chunk) {
  if (bc->opts.disk == NULL)
    return NULL;
  g_autofree char *group = bc_disk_group(bc, mailbox, uidvalidity);
  g_autofree char *name = bc_disk_name(uid, chunk);
  return diskcache_get(bc->opts.disk, group, name);
}

/* Disk writes of one group, queued as one job: a job per message cost two
 * futex calls and a thread wake-up each (a quarter of a cold scan's system
 * calls).  A batch hands its bodies over every BC_DISK_JOB_BYTES. */
#define BC_DISK_JOB_BYTES (1u << 20)
typedef struct {
  char *group;
  GPtrArray *names; /* char*, parallel to datas */
  GPtrArray *datas; /* GBytes* */
  gsize bytes;
} BcDiskJob;

static BcDiskJob *bc_disk_job_new(Bodycache *bc, const char *mailbox, guint32 uidvalidity) {
  BcDiskJob *j = g_new0(BcDiskJob, 1);
  j->group = bc_disk_group(bc, mailbox, uidvalidity);
  j->names = g_ptr_array_new_with_free_func(g_free);
  j->datas = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  return j;
}

static void bc_disk_job_add(BcDiskJob *j, guint32 uid, guint64 chunk, GBytes *bytes) {
  g_ptr_array_add(j->names, bc_disk_name(uid, chunk));
  g_ptr_array_add(j->datas, g_bytes_ref(bytes));
  j->bytes += g_bytes_get_size(bytes);
}

static void bc_disk_job_free(BcDiskJob *j) {
  g_free(j->group);
  g_ptr_array_unref(j->names);
  g_ptr_array_unref(j->datas);
  g_free(j);
}

static void bc_disk_write(Bodycache *bc, BcDiskJob *j) {
  g_autoptr(GError) error = NULL;
  if (!diskcache_put_many(bc->opts.disk, j->group, j->names->len,
                          (const char *const *)j->names->pdata,
                          (GBytes *const *)j->datas->pdata, &error))
    g_debug("disk cache: %s", error->message);
}

static void bc_disk_job(gpointer data, gpointer user) {
  BcDiskJob *j = data;
  Bodycache *bc = user;
  bc_disk_write(bc, j);
  g_mutex_lock(&bc->lock);
  bc->disk_queued -= j->bytes;
  g_mutex_unlock(&bc->lock);
  bc_disk_job_free(j);
}

/* Writes go to a thread of their own, so that a slow disk does not slow
 * the connection streaming bodies in; past a bound, the writer waits.
 * Takes j (NULL or empty: nothing to write). */
static void bc_disk_put(Bodycache *bc, BcDiskJob *j) {
  if (j == NULL)
    return;
  if (bc->opts.disk == NULL || j->names->len == 0) {
    bc_disk_job_free(j);
    return;
  }
  g_mutex_lock(&bc->lock);
  gboolean queue = bc->disk_writer != NULL && bc->disk_queued + j->bytes <= BC_DISK_QUEUE_MAX;
  if (queue)
    bc->disk_queued += j->bytes;
  g_mutex_unlock(&bc->lock);
  if (queue) {
    g_thread_pool_push(bc->disk_writer, j, NULL);
    return;
  }
  bc_disk_write(bc, j);
  bc_disk_job_free(j);
}

/* _bc_inflight_finish: caller holds the lock.  Ends the in-flight entry
 * of key, if any, with bytes (NULL: it delivered nothing, and its waiters
 * fetch for themselves).  Wakes waiters only if there are any: GLib's
 * GCond makes a system call per broadcast. */
static void _bc_inflight_finish(Bodycache *bc, const char *key, GBytes *bytes) {
  BcInflight *f = g_hash_table_lookup(bc->inflight, key);
  if (f == NULL || f->done)
    return;
  f->done = TRUE;
  f->bytes = bytes != NULL ? g_bytes_ref(bytes) : NULL;
  g_hash_table_remove(bc->inflight, key);
  if (g_atomic_int_get(&f->refs) > 1)
    g_cond_broadcast(&bc->cond); /* waiters hold the other references */
  if (g_atomic_int_dec_and_test(&f->refs)) {
    if (f->bytes != NULL)
      g_bytes_unref(f->bytes);
    g_free(f);
  }
}

/* Store fetched bytes in memory and release anyone waiting for them. */
static void bc_deliver(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 chunk, GBytes *bytes) {
  g_autofree char *key = bc_key(mailbox, uidvalidity, uid, chunk);
  GSList *dead = NULL;
  g_mutex_lock(&bc->lock);
  _bc_mem_put(bc, key, bytes, &dead);
  _bc_inflight_finish(bc, key, bytes);
  g_mutex_unlock(&bc->lock);
  bc_entries_free(dead);
}

/* _bc_inflight_begin: caller holds the lock.  Registers a fetch of key
 * (taken over; not in flight yet: replacing an entry would strand its
 * waiters) by batch b (NULL: a single fetch) that others can wait for
 * instead of fetching it too. */
static void _bc_inflight_begin(Bodycache *bc, char *key, BcBatch *b) {
  g_assert(!g_hash_table_contains(bc->inflight, key));
  BcInflight *f = g_new0(BcInflight, 1);
  f->refs = 1;
  f->batch = b;
  g_hash_table_insert(bc->inflight, key, f);
}

/* _bc_held: caller holds the lock.  Whether uid (nch chunks; 0: whole)
 * is in memory or being fetched, in whole or in part. */
static gboolean _bc_held(Bodycache *bc, const char *mailbox, guint32 uv, guint32 uid,
                         guint64 nch) {
  for (guint64 c = 0; c < MAX(nch, 1); c++) {
    g_autofree char *key = bc_key(mailbox, uv, uid, nch > 0 ? c : BC_WHOLE);
    if (g_hash_table_contains(bc->table, key) || g_hash_table_contains(bc->inflight, key))
      return TRUE;
  }
  return FALSE;
}

/* _bc_hurry: caller holds the lock.  A reader waits for a message of
 * batch b: unless b has started, it goes before the others. */
static void _bc_hurry(Bodycache *bc, BcBatch *b) {
  if (b == NULL || b->started || b->urgent)
    return;
  b->urgent = TRUE;
  if (b->from_disk)
    g_thread_pool_move_to_front(bc->workers, b); /* FALSE if a worker has it already */
}

/* ---- single fetches ---- */

typedef struct {
  const char *mailbox;
  guint32 uidvalidity, uid;
  guint64 off, len; /* len 0 = whole */
  GBytes *out;
} BcFetch;

static gboolean bc_fetch_op(ImapConn *c, gpointer user, GError **error) {
  BcFetch *f = user;
  g_clear_pointer(&f->out, g_bytes_unref);
  return imap_fetch_body_in(c, f->mailbox, f->uidvalidity, f->uid, f->off, f->len, &f->out,
                            error);
}

/* Whether a message of size bytes goes to the disk tier.  One larger
 * than half its bound pushed out most of what was there, a 60 MB one in a
 * 48 MB cache its own first chunks too, and was fetched again all the
 * same. */
static gboolean bc_disk_worth(const Bodycache *bc, guint64 size) {
  return bc->opts.disk != NULL && size <= diskcache_bound(bc->opts.disk) / 2;
}

/* The chunk with index chunk (BC_WHOLE: the whole message) of a message
 * of size bytes (as listed). */
static GBytes *bc_chunk(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                        guint64 size, guint64 chunk, GError **error) {
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
    /* Someone (read-ahead, or a reader of the same chunk: the kernel reads
     * a file at several offsets at once) is fetching it: wait for that. */
    g_atomic_int_inc(&f->refs);
    bc->stats.waits++;
    gint64 t0 = g_get_monotonic_time();
    if (!f->done) {
      _bc_hurry(bc, f->batch);
      /* f is ours (refs), so the lock can go while another worker takes
       * over reading FUSE requests. */
      g_mutex_unlock(&bc->lock);
      loop_about_to_wait();
      g_mutex_lock(&bc->lock);
    }
    while (!f->done)
      g_cond_wait(&bc->cond, &bc->lock);
    bc->stats.wait_us += (guint64)(g_get_monotonic_time() - t0);
    b = f->bytes != NULL ? g_bytes_ref(f->bytes) : NULL;
    if (g_atomic_int_dec_and_test(&f->refs)) {
      if (f->bytes != NULL)
        g_bytes_unref(f->bytes);
      g_free(f);
    }
    g_mutex_unlock(&bc->lock);
    if (b != NULL)
      return b;
    /* That fetch delivered nothing: fetch ourselves, unregistered. */
  } else {
    _bc_inflight_begin(bc, g_strdup(key), NULL);
    g_mutex_unlock(&bc->lock);
  }

  GBytes *disk = bc_disk_get(bc, mailbox, uidvalidity, uid, chunk);
  if (disk != NULL) {
    g_mutex_lock(&bc->lock);
    bc->stats.disk_hits++;
    g_mutex_unlock(&bc->lock);
    bc_deliver(bc, mailbox, uidvalidity, uid, chunk, disk);
    return disk;
  }
  BcFetch fe = {.mailbox = mailbox, .uidvalidity = uidvalidity, .uid = uid};
  if (chunk != BC_WHOLE) {
    fe.off = chunk * bc->opts.chunk_bytes;
    fe.len = bc->opts.chunk_bytes;
  }
  gint64 t0 = g_get_monotonic_time();
  gboolean ok = pool_run(bc->pool, mailbox, TRUE, bc_fetch_op, &fe, error);
  g_mutex_lock(&bc->lock);
  bc->stats.fetched_single++;
  bc->stats.wait_us += (guint64)(g_get_monotonic_time() - t0);
  if (!ok)
    _bc_inflight_finish(bc, key, NULL);
  g_mutex_unlock(&bc->lock);
  if (!ok)
    return NULL;
  bc_deliver(bc, mailbox, uidvalidity, uid, chunk, fe.out);
  if (bc_disk_worth(bc, size)) {
    BcDiskJob *j = bc_disk_job_new(bc, mailbox, uidvalidity);
    bc_disk_job_add(j, uid, chunk, fe.out);
    bc_disk_put(bc, j);
  }
  return fe.out;
}

GBytes *bodycache_read(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 size, guint64 off, gsize len, guint64 *real_size,
                       GError **error) {
  if (size <= bc->opts.chunk_bytes) {
    g_autoptr(GBytes) whole = bc_chunk(bc, mailbox, uidvalidity, uid, size, BC_WHOLE, error);
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
  gboolean grew = FALSE;
  while (out->len < len) {
    guint64 pos = off + out->len;
    g_autoptr(GBytes) chunk = bc_chunk(bc, mailbox, uidvalidity, uid, size, pos / cb, error);
    if (chunk == NULL)
      return NULL;
    gsize n;
    const guint8 *data = g_bytes_get_data(chunk, &n);
    guint64 in = pos % cb;
    if (real_size != NULL && n < cb) {
      *real_size = pos - in + n; /* a short chunk ends the message */
      grew = FALSE;              /* the end is known: nothing to look for */
    } else if (real_size != NULL && pos - in + n > *real_size) {
      grew = TRUE;
    }
    if (in >= n)
      break; /* past the end of the message */
    g_byte_array_append(out, data + in, MIN(len - out->len, n - in));
    if (n < cb)
      break; /* the last chunk */
  }
  /* A full chunk went past the listed size (RFC822.SIZE was off): the
   * kernel reads no further than the size it knows, so find the end. */
  for (guint64 k = (off + out->len) / cb; grew; k++) {
    g_autoptr(GBytes) chunk = bc_chunk(bc, mailbox, uidvalidity, uid, size, k, error);
    if (chunk == NULL)
      return NULL;
    gsize n = g_bytes_get_size(chunk);
    *real_size = k * cb + n;
    grew = n == cb;
  }
  return g_byte_array_free_to_bytes(g_steal_pointer(&out));
}

/* ---- read-ahead ---- */

typedef struct {
  Bodycache *bc;
  BcBatch *batch;
  BcDiskJob *disk; /* bodies not yet handed to the disk writer */
} BcBatchCtx;

static void bc_batch_to_disk(BcBatchCtx *ctx, guint32 uid, guint64 chunk, GBytes *bytes) {
  BcBatch *b = ctx->batch;
  if (ctx->bc->opts.disk == NULL)
    return;
  if (ctx->disk == NULL)
    ctx->disk = bc_disk_job_new(ctx->bc, b->mailbox, b->uidvalidity);
  bc_disk_job_add(ctx->disk, uid, chunk, bytes);
  if (ctx->disk->bytes >= BC_DISK_JOB_BYTES)
    bc_disk_put(ctx->bc, g_steal_pointer(&ctx->disk));
}

static gboolean bc_batch_body(guint32 uid, GBytes *body, gpointer user) {
  BcBatchCtx *ctx = user;
  BcBatch *b = ctx->batch;
  gboolean disk = bc_disk_worth(ctx->bc, g_bytes_get_size(body));
  if (b->big == NULL || !g_hash_table_contains(b->big, GUINT_TO_POINTER(uid))) {
    bc_deliver(ctx->bc, b->mailbox, b->uidvalidity, uid, BC_WHOLE, body);
    if (disk)
      bc_batch_to_disk(ctx, uid, BC_WHOLE, body);
    return TRUE;
  }
  /* A message read in chunks, fetched whole by the scan: hand it out as
   * the chunks its reader will ask for.  Copies, not slices: a slice
   * would keep the whole body in memory while the LRU counts a chunk. */
  gsize n, cb = (gsize)ctx->bc->opts.chunk_bytes;
  const guint8 *data = g_bytes_get_data(body, &n);
  for (gsize off = 0, k = 0; off < n || k == 0; off += cb, k++) {
    g_autoptr(GBytes) part = g_bytes_new(n > 0 ? data + off : NULL, MIN(cb, n - off));
    bc_deliver(ctx->bc, b->mailbox, b->uidvalidity, uid, k, part);
    if (disk)
      bc_batch_to_disk(ctx, uid, k, part);
  }
  return TRUE;
}

/* Chunks of a message of size bytes (at least one). */
static guint64 bc_nchunks(Bodycache *bc, guint64 size) {
  return MAX(1, (size + bc->opts.chunk_bytes - 1) / bc->opts.chunk_bytes);
}

static gint bc_u32_cmp(gconstpointer a, gconstpointer b) {
  guint32 x = *(const guint32 *)a, y = *(const guint32 *)b;
  return x < y ? -1 : x > y;
}

static gboolean bc_batch_op(ImapConn *c, gpointer user, GError **error) {
  BcBatchCtx *ctx = user;
  const guint32 *uids = (const guint32 *)ctx->batch->uids->data;
  guint n = ctx->batch->uids->len;
  /* A server sends one FETCH's bodies in UID order, so a reader walking
   * down (rg's walker) would wait for the whole batch before its first
   * message: ask in parts, highest first, pipelined in one round trip. */
  guint parts = ctx->batch->down ? CLAMP(n / BC_PART_MIN, 1, IMAP_PIPELINE_MAX - 1) : 1;
  char *sets[IMAP_PIPELINE_MAX];
  for (guint k = 0; k < parts; k++) {
    guint hi = n - (guint)((guint64)n * k / parts), lo = n - (guint)((guint64)n * (k + 1) / parts);
    sets[k] = imap_uidset_format(uids + lo, hi - lo);
  }
  /* A SELECT this session needs first goes in the same write. */
  gboolean ok = imap_fetch_bodies(c, ctx->batch->mailbox, ctx->batch->uidvalidity, sets, parts,
                                  bc_batch_body, ctx, error);
  for (guint k = 0; k < parts; k++)
    g_free(sets[k]);
  return ok;
}

static void bc_batch_free(BcBatch *b) {
  g_array_unref(b->uids);
  if (b->big != NULL)
    g_hash_table_unref(b->big);
  g_free(b->mailbox);
  g_free(b);
}

static void bc_prime_next(Bodycache *bc, const char *mailbox);

/* Whether the server answers within BC_NEAR_RTT_US (pool_rtt_us). */
static gboolean bc_server_near(Bodycache *bc) {
  gint64 rtt = pool_rtt_us(bc->pool);
  return rtt > 0 && rtt < BC_NEAR_RTT_US;
}

/* _bc_batches: caller holds the lock.  Batches fetched from the server
 * at once.  Near the server (a round trip under BC_NEAR_RTT_US), one at
 * a time keeps readers fed: a batch streams for milliseconds, the gap
 * before the next costs a fraction of one, and batches in parallel only
 * made everything compete for the CPU (cold grep -r on loopback, one
 * instead of three: 1.86 -> 1.63 CPU-seconds; 1.09 -> 1.01 s, medians of
 * 6).  Far from it a round trip outlasts a batch's streaming, and several
 * at once keep the link busy (through 20 ms, one: 2.03 s, three: 1.36). */
static guint _bc_batches(Bodycache *bc) {
  guint most = bc->opts.readahead_threads;
  if (bc->opts.readahead_batches > 0)
    return MIN(bc->opts.readahead_batches, most);
  guint n = bc_server_near(bc) ? 1 : most;
  if (n != bc->batches_seen) {
    bc->batches_seen = n;
    g_debug("read-ahead: server round trip %.3f ms, %u batches fetched at once",
            pool_rtt_us(bc->pool) / 1e3, n);
  }
  return n;
}

/* _bc_net_take: caller holds the lock.  Waits for a turn to fetch from
 * the server (_bc_batches), then takes the batch to fetch: one a reader
 * waits for (_bc_hurry), else the one scheduled first.  Chosen at the
 * turn, not when queued: workers that each waited with a batch of their
 * own were let through in no particular order, and readers waited for a
 * batch at their place while batches far ahead of them, scheduled later,
 * went first (cold rg -j4: readers waited 0.64 s in all, against 0.48 s
 * since; medians of 6).  When unmounting, at once, to be released. */
static BcBatch *_bc_net_take(Bodycache *bc) {
  while (!bc->closing && bc->net_active >= _bc_batches(bc))
    g_cond_wait(&bc->net_cond, &bc->lock);
  BcBatch *best = NULL;
  for (guint i = 0; i < bc->net_wait->len; i++) {
    BcBatch *b = g_ptr_array_index(bc->net_wait, i);
    if (best == NULL || (b->urgent && !best->urgent) ||
        (b->urgent == best->urgent && b->seq < best->seq))
      best = b;
  }
  g_ptr_array_remove_fast(bc->net_wait, best);
  if (!bc->closing && ++bc->net_active > bc->stats.net_max)
    bc->stats.net_max = bc->net_active;
  return best;
}

static void bc_net_end(Bodycache *bc) {
  g_mutex_lock(&bc->lock);
  bc->net_active--;
  g_cond_broadcast(&bc->net_cond); /* the number allowed may have grown meanwhile */
  g_mutex_unlock(&bc->lock);
}

/* What the workers' pool gets for each batch from the server: which one
 * a worker fetches is decided when its turn comes (_bc_net_take). */
static char bc_net_turn;

static void bc_batch_run(gpointer data, gpointer user) {
  Bodycache *bc = user;
  g_mutex_lock(&bc->lock);
  BcBatch *b = data == &bc_net_turn ? _bc_net_take(bc) : data;
  b->started = TRUE;
  gboolean closing = bc->closing;
  g_mutex_unlock(&bc->lock);
  if (b->prime_next) {
    if (!closing)
      bc_prime_next(bc, b->mailbox);
    bc_batch_free(b);
    return;
  }
  /* Unmounting: no fetch, only the claims released below. */
  if (!closing) {
    /* A scan fills the memory LRU: fault it in at once, not page by page
     * under the reader (see heap.h).  Only once a reader has gone on to a
     * neighbour: a lone cat must not cost 30 MB of resident memory. */
    if (g_atomic_int_get(&bc->scanning) &&
        g_atomic_int_compare_and_exchange(&bc->heap_reserved, 0, 1))
      heap_reserve(bc->opts.mem_bytes + BC_RESERVE_EXTRA);
    BcBatchCtx ctx = {bc, b, NULL};
    g_autoptr(GError) error = NULL;
    if (b->from_disk) {
      /* Warm scans: the disk reads happen here, ahead of the reader, not
       * in its FUSE requests. */
      for (guint i = 0; i < b->uids->len; i++) {
        guint32 uid = g_array_index(b->uids, guint32, i);
        g_autoptr(GBytes) bytes = bc_disk_get(bc, b->mailbox, b->uidvalidity, uid, BC_WHOLE);
        if (bytes != NULL)
          bc_deliver(bc, b->mailbox, b->uidvalidity, uid, BC_WHOLE, bytes);
      }
    } else {
      if (!pool_run(bc->pool, b->mailbox, TRUE, bc_batch_op, &ctx, &error))
        g_debug("read-ahead in %s stopped: %s", b->mailbox, error->message);
      bc_net_end(bc);
    }
    bc_disk_put(bc, g_steal_pointer(&ctx.disk));
  }
  g_mutex_lock(&bc->lock);
  if (!closing)
    *(b->from_disk ? &bc->stats.disk_ahead : &bc->stats.fetched_bulk) += b->uids->len;
  /* Whatever the batch did not deliver (expunged, failure) is released. */
  for (guint i = 0; i < b->uids->len; i++) {
    guint32 uid = g_array_index(b->uids, guint32, i);
    guint64 nch = b->big != NULL ? GPOINTER_TO_UINT(g_hash_table_lookup(b->big,
                                                                        GUINT_TO_POINTER(uid)))
                                 : 0;
    for (guint64 k = 0; k < MAX(nch, 1); k++) {
      g_autofree char *key = bc_key(b->mailbox, b->uidvalidity, uid, nch > 0 ? k : BC_WHOLE);
      BcInflight *f = g_hash_table_lookup(bc->inflight, key);
      if (f != NULL && f->batch == b) /* not a reader's own fetch of it */
        _bc_inflight_finish(bc, key, NULL);
    }
  }
  BcStream *s = g_hash_table_lookup(bc->streams, b->mailbox);
  if (s != NULL && s->uidvalidity == b->uidvalidity && s->running > 0) {
    s->running--;
    if (!b->from_disk && s->net_running > 0)
      s->net_running--;
  }
  g_mutex_unlock(&bc->lock);
  bc_batch_free(b);
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

/* File names are "<uid>.eml": their order is the order of the decimal
 * strings, i.e. of the digits scaled to ten places, shorter first on a tie
 * ("12" < "120" < "13"). */
static guint64 bc_name_key(guint32 uid) {
  guint digits = 1;
  guint64 scaled = uid;
  for (guint32 v = uid; v >= 10; v /= 10)
    digits++;
  for (guint d = digits; d < 10; d++)
    scaled *= 10;
  return scaled * 16 + digits;
}

static int bc_name_cmp(gconstpointer a, gconstpointer b, gpointer user) {
  const GArray *msgs = user;
  guint64 x = bc_name_key(g_array_index(msgs, DcMsg, *(const guint32 *)a).uid);
  guint64 y = bc_name_key(g_array_index(msgs, DcMsg, *(const guint32 *)b).uid);
  return x < y ? -1 : x > y;
}

/* _bc_unread_set: caller holds the lock.  Every change of a stream's
 * unread goes here, so that the sum stays right. */
static void _bc_unread_set(Bodycache *bc, BcStream *s, guint64 v) {
  bc->unread = bc->unread - s->unread + v;
  s->unread = v;
}

/* _bc_unclaim: caller holds the lock.  Message k, claimed, is opened or
 * passed over: it no longer counts as unread (after a sweep forgot the
 * stream's claims, nothing is left to take off). */
static void _bc_unclaim(Bodycache *bc, BcStream *s, guint k) {
  guint64 size = g_array_index(s->msgs, DcMsg, k).size;
  _bc_unread_set(bc, s, s->unread - MIN(s->unread, size));
}

/* _bc_stream_take: caller holds the lock.  Adopt a new listing snapshot,
 * keeping what is known per UID. */
static void _bc_stream_take(Bodycache *bc, BcStream *s, const DcListing *l) {
  guint n = l->msgs->len;
  guint8 *state = g_new0(guint8, MAX(n, 1));
  if (s->msgs != NULL && s->uidvalidity == l->uidvalidity) {
    guint j = 0;
    for (guint i = 0; i < n; i++) {
      guint32 uid = g_array_index(l->msgs, DcMsg, i).uid;
      while (j < s->msgs->len && g_array_index(s->msgs, DcMsg, j).uid < uid)
        j++;
      if (j < s->msgs->len && g_array_index(s->msgs, DcMsg, j).uid == uid)
        state[i] = s->state[j];
    }
  }
  if (s->msgs != NULL)
    g_array_unref(s->msgs);
  g_free(s->state);
  g_clear_pointer(&s->by_name, g_free);
  g_clear_pointer(&s->rank, g_free);
  g_clear_pointer(&s->cum[0], g_free);
  g_clear_pointer(&s->cum[1], g_free);
  s->msgs = g_array_ref(l->msgs);
  s->state = state;
  s->uidvalidity = l->uidvalidity;
  guint64 unread = 0;
  for (guint i = 0; i < n; i++)
    if (state[i] == BC_CLAIMED)
      unread += g_array_index(l->msgs, DcMsg, i).size;
  _bc_unread_set(bc, s, unread);
  s->by_name = g_new(guint32, MAX(n, 1));
  s->rank = g_new(guint32, MAX(n, 1));
  for (guint i = 0; i < n; i++)
    s->by_name[i] = i;
  g_qsort_with_data(s->by_name, (gint)n, sizeof(guint32), bc_name_cmp, s->msgs);
  for (guint r = 0; r < n; r++)
    s->rank[s->by_name[r]] = r;
  for (int o = 0; o < 2; o++) {
    s->cum[o] = g_new(guint64, n + 1);
    s->cum[o][0] = 0;
    for (guint r = 0; r < n; r++) {
      guint64 size = g_array_index(s->msgs, DcMsg, o == 0 ? r : s->by_name[r]).size;
      s->cum[o][r + 1] = s->cum[o][r] + MIN(size, BC_COUNT_MAX);
    }
    s->front[o][0] = s->front[o][1] = -2; /* nowhere */
  }
}

/* _bc_stream_get: caller holds the lock.  The stream of mailbox, on
 * listing l. */
static BcStream *_bc_stream_get(Bodycache *bc, const char *mailbox, const DcListing *l) {
  BcStream *s = g_hash_table_lookup(bc->streams, mailbox);
  if (s == NULL) {
    s = g_new0(BcStream, 1);
    g_hash_table_insert(bc->streams, g_strdup(mailbox), s);
  }
  if (s->msgs != l->msgs || s->uidvalidity != l->uidvalidity)
    _bc_stream_take(bc, s, l);
  return s;
}

/* Position p in order o (0: UID order, 1: file-name order) -> index. */
static guint bc_at(const BcStream *s, int o, guint p) { return o == 0 ? p : s->by_name[p]; }
static guint bc_pos(const BcStream *s, int o, guint i) { return o == 0 ? i : s->rank[i]; }

static BcBatch *bc_batch_new(Bodycache *bc, const char *mailbox, guint32 uidvalidity) {
  BcBatch *b = g_new0(BcBatch, 1);
  b->bc = bc;
  b->seq = bc->batch_seq++;
  b->mailbox = g_strdup(mailbox);
  b->uidvalidity = uidvalidity;
  b->uids = g_array_new(FALSE, FALSE, sizeof(guint32));
  return b;
}

/* _bc_unread: caller holds the lock.  Bytes claimed ahead of readers and
 * not yet opened.  Claims in a mailbox nobody opened anything in for
 * BC_SCAN_GAP_US are forgotten (a reader that stopped early must not hold
 * back the others), in a sweep at most once a second. */
static guint64 _bc_unread(Bodycache *bc) {
  gint64 now = g_get_monotonic_time();
  if (now - bc->unread_swept >= G_USEC_PER_SEC) {
    bc->unread_swept = now;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, bc->streams);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
      BcStream *s = v;
      if (now - s->last_open > BC_SCAN_GAP_US)
        _bc_unread_set(bc, s, 0);
    }
  }
  return bc->unread;
}

/* _bc_schedule: caller holds the lock.  The reader opened index i and is
 * walking in order o, direction dir (+1/-1): keep window bytes fetched or
 * in flight ahead of it, in batches (at most max_batches now; 0: no
 * bound but the per-folder one). */
static void _bc_schedule(Bodycache *bc, const char *mailbox, BcStream *s, int o, guint i,
                         int dir, gboolean with_i, guint64 window, guint max_batches) {
  if (bc->closing)
    return;
  gint64 n = s->msgs->len;
  gint64 p0 = (gint64)bc_pos(s, o, i) + (with_i ? 0 : dir); /* first one ahead of the reader */
  /* Claimed messages just behind the reader were passed over (rsync,
   * find -newer: only some files are read): they are no longer waited
   * for, so they stop counting as unread (_bc_unread), or such a reader
   * would use up the bound with them. */
  for (gint64 q = (gint64)bc_pos(s, o, i) - dir, k = 0;
       bc->opts.disk == NULL && q >= 0 && q < n && k < BC_PASSED_LOOK; q -= dir, k++) {
    guint x = bc_at(s, o, (guint)q);
    if (s->state[x] == BC_CLAIMED) {
      _bc_unclaim(bc, s, x);
      s->state[x] = BC_SKIP;
    }
  }
  /* Resume where the last schedule in this direction stopped looking
   * (everything up to it is claimed, opened or skipped): each position is
   * passed once per scan, not once per open. */
  gint64 *front = &s->front[o][dir < 0];
  gint64 p = *front;
  /* ... unless the reader is not in the claimed run that ends there: rg's
   * walker starts readers in several places of one folder. */
  if (p < -1 || p > n || (dir > 0 ? p < p0 : p > p0) ||
      (p0 >= 0 && p0 < n && s->state[bc_at(s, o, (guint)p0)] == BC_NONE))
    p = p0;
  while (p >= 0 && p < n && s->state[bc_at(s, o, (guint)p)] != BC_NONE)
    p += dir;
  /* Bytes between the reader and there count against the window; claims
   * the reader left behind do not. */
  const guint64 *cum = s->cum[o];
  guint64 ahead = dir > 0 ? cum[p] - cum[MIN(p0, p)] : cum[p0 + 1] - cum[MIN(p0, p) + 1];
  /* Downwards too (rg -j4 through 20 ms, median of 3: 2.8 -> 2.5 s); such
   * a batch is asked in parts, highest first (bc_batch_op). */
  guint max_batch = BC_BATCH_MAX;
  /* Top up only once half the window is free: topping up at every open
   * sends a batch of one message per message read (a command each). */
  gboolean refill = ahead * 2 <= window;
  /* A reader whose next message nobody claimed (a second place in the
   * folder, while the batches of the first one are all in flight) gets
   * one batch more than the bound: else it fetches message by message
   * until they are done. */
  guint limit = bc->opts.readahead_threads + (p == p0 ? 1 : 0);
  /* Without a disk cache, bytes read ahead and evicted before their
   * reader comes are fetched again, a round trip each.  rg -j4 reads
   * several places of a folder, and several folders, at once, and their
   * windows together overran the memory LRU (cold rg, cache=none: up to
   * 801 of 10,000 messages fetched twice).  So all places together keep
   * at most three quarters of it claimed and unread, except that each
   * place may keep a little ahead: a reader starved to small batches waits
   * a round trip for each (through 20 ms: 6 s instead of 1.8).  A far server needs a quarter
   * window for that; a near one a sixteenth (a quarter overran memory
   * again with rg's many places on loopback). */
  guint64 room = G_MAXUINT64;
  if (bc->opts.disk == NULL && refill) {
    guint64 cap = bc->opts.mem_bytes / 4 * 3, held = _bc_unread(bc);
    room = held < cap ? cap - held : 0;
    guint64 least = window / (bc_server_near(bc) ? 16 : 4);
    if (ahead < least)
      room = MAX(room, least - ahead);
  }
  for (guint made = 0; refill && p >= 0 && p < n && ahead < window && s->running < limit &&
                       (max_batches == 0 || made < max_batches) && room > 0;
       made++) {
    BcBatch *b[2]; /* [0] from the server, [1] from the disk cache */
    for (int t = 0; t < 2; t++) {
      b[t] = bc_batch_new(bc, mailbox, s->uidvalidity);
      b[t]->from_disk = t == 1;
    }
    guint64 bytes = 0;
    for (; p >= 0 && p < n && b[0]->uids->len + b[1]->uids->len < MIN(s->batch, max_batch) &&
           bytes < BC_BATCH_BYTES_MAX && ahead + bytes < window && bytes < room;
         p += dir) {
      guint k = bc_at(s, o, (guint)p);
      if (s->state[k] != BC_NONE)
        continue;
      const DcMsg *m = &g_array_index(s->msgs, DcMsg, k);
      /* A message read in chunks comes whole with the scan while it fits a
       * batch (else chunk by chunk, on demand): fetching its chunks one
       * by one when the reader gets there costs a round trip each. */
      gboolean big = m->size > bc->opts.chunk_bytes;
      guint64 nch = big ? bc_nchunks(bc, m->size) : 1;
      g_autofree char *key = bc_key(mailbox, s->uidvalidity, m->uid, BC_WHOLE);
      int t = 0;
      if (bc->opts.disk != NULL) {
        g_autofree char *group = bc_disk_group(bc, mailbox, s->uidvalidity);
        g_autofree char *name = bc_disk_name(m->uid, big ? 0 : BC_WHOLE);
        t = diskcache_contains(bc->opts.disk, group, name) ? 1 : 0;
      }
      /* Any chunk already here or being fetched (a reader that started
       * in the middle): that reader goes on chunk by chunk. */
      if ((big && (t == 1 || m->size > BC_BATCH_BYTES_MAX)) ||
          _bc_held(bc, mailbox, s->uidvalidity, m->uid, big ? nch : 0)) {
        s->state[k] = BC_SKIP;
        continue;
      }
      for (guint64 c = 0; c < nch; c++)
        _bc_inflight_begin(bc, big ? bc_key(mailbox, s->uidvalidity, m->uid, c)
                                   : g_steal_pointer(&key),
                           b[t]);
      if (big) {
        if (b[0]->big == NULL)
          b[0]->big = g_hash_table_new(NULL, NULL);
        g_hash_table_insert(b[0]->big, GUINT_TO_POINTER(m->uid), GUINT_TO_POINTER((guint)nch));
      }
      s->state[k] = BC_CLAIMED;
      _bc_unread_set(bc, s, s->unread + m->size);
      g_array_append_val(b[t]->uids, m->uid);
      bytes += m->size;
    }
    ahead += bytes;
    room = room > bytes ? room - bytes : 0;
    for (int t = 0; t < 2; t++) {
      if (b[t]->uids->len == 0) {
        bc_batch_free(b[t]);
        continue;
      }
      g_array_sort(b[t]->uids, bc_u32_cmp);
      b[t]->down = dir < 0 && o == 0;
      s->running++;
      if (t == 0) {
        /* The first time a scan has a second batch for the server in
         * flight (pushed with this one, or one still running), open the
         * other connections now, before the batches ask for them one
         * login at a time (pool.c).  Not for scans the disk cache serves,
         * nor for one batch (a lone cat, a few new messages). */
        if (s->net_running++ >= 1 && !bc->pool_warmed) {
          bc->pool_warmed = TRUE;
          pool_warm(bc->pool, mailbox);
        }
        g_ptr_array_add(bc->net_wait, b[t]);
      }
      g_thread_pool_push(bc->workers, t == 0 ? (gpointer)&bc_net_turn : b[t], NULL);
    }
    /* Doubles while the reader keeps consuming; a one-batch first open
     * has not shown that yet. */
    if (max_batches != 1)
      s->batch = MIN(s->batch * 2, BC_BATCH_MAX);
  }
  *front = p;
  bc->scan_batch = s->batch;
  bc->scan_time = g_get_monotonic_time();
}

/* _bc_maybe_prime_next: caller holds the lock.  A forward scan in mailbox
 * has claimed all but at most a window of what is left: have a worker
 * prime the mailbox read next (once per scan).  Not only at the end: the
 * listing and the first batch take two round trips, longer than the last
 * window lasts a fast reader (through 20 ms, each folder's first file
 * waited 10-40 ms).  Memory held ahead is as before: at most a window in
 * this mailbox and half of one in the next. */
static void _bc_maybe_prime_next(Bodycache *bc, const char *mailbox, BcStream *s, int o) {
  guint n = s->msgs->len;
  guint front = (guint)CLAMP(s->front[o][0], 0, (gint64)n);
  if (bc->opts.dc == NULL || bc->closing || s->next_asked ||
      s->cum[o][n] - s->cum[o][front] > bc->opts.readahead_bytes)
    return;
  s->next_asked = TRUE;
  BcBatch *b = bc_batch_new(bc, mailbox, s->uidvalidity);
  b->prime_next = TRUE;
  g_thread_pool_push(bc->workers, b, NULL);
}

/* On a worker: the listing of the mailbox read after mailbox (a round
 * trip unless fresh), then a first batch of half a window, claimed so
 * that the reader's first open there waits for it instead of asking. */
static void bc_prime_next(Bodycache *bc, const char *mailbox) {
  DcNode *y = dircache_find_mailbox(bc->opts.dc, mailbox);
  DcListing l = {0};
  /* Empty mailboxes on the way get their listing (opendir then costs no
   * round trip either) and are passed over, a few at most. */
  for (int k = 0; k < 4 && (y = y != NULL ? dircache_walk_next(bc->opts.dc, y) : NULL); k++) {
    g_autoptr(GError) error = NULL;
    if (!dircache_listing(bc->opts.dc, y, bc->opts.list_max_age_us, &l, &error)) {
      g_debug("read-ahead into %s: %s", dcnode_mailbox(y), error->message);
      return;
    }
    if (l.msgs != NULL && l.msgs->len > 0)
      break;
    dc_listing_clear(&l);
  }
  if (y == NULL || l.msgs == NULL)
    return;
  const char *next = dcnode_mailbox(y);
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&bc->lock);
  BcStream *s = _bc_stream_get(bc, next, &l);
  /* Not where a reader is already (rg walks folders in parallel). */
  if (s->state[0] == BC_NONE && now - s->last_open > BC_SCAN_GAP_US) {
    s->batch = MAX(bc->scan_batch, BC_BATCH_MIN);
    s->primed = TRUE;
    s->last_open = now;
    _bc_schedule(bc, next, s, 0, 0, +1, TRUE, bc->opts.readahead_bytes / 2, 0);
  }
  g_mutex_unlock(&bc->lock);
  dc_listing_clear(&l);
}

gboolean bodycache_opened(Bodycache *bc, const char *mailbox, const DcListing *l, guint32 uid) {
  if (bc->workers == NULL || l->msgs == NULL)
    return FALSE;
  guint i = bc_index_of(l->msgs, uid);
  if (i == G_MAXUINT)
    return FALSE;
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&bc->lock);
  BcStream *s = _bc_stream_get(bc, mailbox, l);
  gboolean fresh = now - s->last_open > BC_SCAN_GAP_US;
  if (fresh) {
    s->next_asked = FALSE;
    /* A new scan starts small, unless a scan of another mailbox was
     * running just now (grep -r going from one folder to the next): then
     * it goes on at that pace instead of paying the ramp-up round trips
     * again. */
    s->batch = now - bc->scan_time < 2 * G_USEC_PER_SEC ? MAX(bc->scan_batch, BC_BATCH_MIN)
                                                         : BC_BATCH_MIN;
  }
  s->last_open = now;
  guint n = l->msgs->len;
  /* A scan shows as a neighbour already opened, in UID order (grep -r,
   * tar, find: readdir order; ripgrep's parallel walker also runs it
   * backwards) or in file-name order (rsync, borg, restic sort by name).
   * The first file of a mailbox at either end of those orders, opened
   * before anything claimed it, is taken as the start of one (also in the
   * middle of another scan: rg starts near where its listing got to, then
   * goes down from the last file): the batch then includes it, so its own
   * fetch brings the next ones with it (a lone `cat` of it costs a few
   * small messages more). */
  /* Opened before: a second pass, served from the kernel's page cache
   * (keep_cache); walking the stream for it would only cost time. */
  gboolean done = s->state[i] == BC_OPENED;
  gboolean first = !done;
  /* A primed mailbox: the reader's first open goes on from the batch
   * claimed for it, whichever end it starts from. */
  if (!done && (s->state[i] == BC_NONE || s->primed)) {
    int dir = 0, o = 0;
    if (i == 0 || s->rank[i] == 0)
      dir = +1, o = i == 0 ? 0 : 1;
    else if (i + 1 == n)
      dir = -1;
    if (dir != 0) {
      /* One batch (the reader may be a lone cat; in a scan, the batch has
       * the scan's size); the next open, a neighbour, makes it a scan. */
      _bc_schedule(bc, mailbox, s, o, i, dir, TRUE, bc->opts.readahead_bytes,
                   s->primed ? 0 : 1);
      done = TRUE;
    }
  }
  s->primed = FALSE;
  /* One order per open (UID order first): scheduling along both would
   * double what is held ahead of the reader.  The reader's own message,
   * if nothing claimed it, goes in the batch: its fetch then brings the
   * next ones (a name-order scan leaves UID order after "1.eml"). */
  for (int o = 0; o < 2 && !done; o++) {
    guint p = bc_pos(s, o, i);
    gboolean up = p > 0 && s->state[bc_at(s, o, p - 1)] == BC_OPENED;
    gboolean down = p + 1 < n && s->state[bc_at(s, o, p + 1)] == BC_OPENED;
    if (up) {
      _bc_schedule(bc, mailbox, s, o, i, +1, s->state[i] == BC_NONE, bc->opts.readahead_bytes,
                   0);
      _bc_maybe_prime_next(bc, mailbox, s, o);
    }
    if (down)
      _bc_schedule(bc, mailbox, s, o, i, -1, s->state[i] == BC_NONE, bc->opts.readahead_bytes,
                   0);
    done = up || down;
    if (done)
      g_atomic_int_set(&bc->scanning, 1);
  }
  if (s->state[i] == BC_CLAIMED)
    _bc_unclaim(bc, s, i);
  s->state[i] = BC_OPENED;
  g_mutex_unlock(&bc->lock);
  return first;
}

GBytes *bodycache_peek(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                       guint64 size) {
  if (size > bc->opts.chunk_bytes)
    return NULL;
  g_autofree char *key = bc_key(mailbox, uidvalidity, uid, BC_WHOLE);
  g_mutex_lock(&bc->lock);
  GBytes *b = _bc_mem_get(bc, key);
  g_mutex_unlock(&bc->lock);
  return b;
}

void bodycache_closed(Bodycache *bc, const char *mailbox, guint32 uidvalidity, guint32 uid,
                      guint64 size) {
  gboolean whole = size <= bc->opts.chunk_bytes;
  guint64 n = whole ? 1 : bc_nchunks(bc, size);
  g_mutex_lock(&bc->lock);
  for (guint64 k = 0; k < n; k++) {
    g_autofree char *key = bc_key(mailbox, uidvalidity, uid, whole ? BC_WHOLE : k);
    _bc_mem_done(bc, key);
  }
  g_mutex_unlock(&bc->lock);
}

void bodycache_forget_mailbox(Bodycache *bc, const char *mailbox, guint32 uidvalidity) {
  g_mutex_lock(&bc->lock);
  BcStream *s = g_hash_table_lookup(bc->streams, mailbox);
  if (s != NULL) {
    _bc_unread_set(bc, s, 0);
    g_hash_table_remove(bc->streams, mailbox);
  }
  g_mutex_unlock(&bc->lock);
  if (bc->opts.disk != NULL) {
    g_autofree char *group = bc_disk_group(bc, mailbox, uidvalidity);
    diskcache_remove_group(bc->opts.disk, group);
  }
}
