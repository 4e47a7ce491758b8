/* diskcache.c - immutable blobs on disk with a size bound, kept in an
 * append-only log of segment files and evicted a whole segment at a time.
 *
 * Design note.  Layout of the cache directory:
 *   lock                  flock()ed for as long as a Diskcache has it open
 *   seg.<16 hex digits>   a segment: records back to back; the number (seq)
 *                         grows with each new segment, so it orders them
 * An older format's group directories (32 hex digits holding "#group")
 * and temporary files (.tmp.<hex>) found at open are deleted; anything else is
 * left alone and reported (diskcache_foreign): someone may have pointed
 * bodies/ at a directory of their own, and deleting what is in it lost
 * their files (an exploratory test).  One file per entry
 * cost an inode allocation and a rename per put, the largest CPU cost of a
 * cold grep -r; appending to a few open files costs a pwritev, and a get
 * is one pread on an open fd.
 *
 * A record is a 32-byte header, little-endian -- magic "IFDC", version and
 * type (ENTRY or TOMBSTONE) as one byte each, two zero bytes, data length
 * (u64), group length, name length, data checksum, checksum (u32) -- then
 * the group, the name and the data.  The checksum is 32-bit FNV-1a over
 * the first 28 header bytes and the key; the header checksum and the
 * lengths catch torn appends, truncation and foreign bytes at open.  The
 * data checksum (dk_data_sum) is checked at every get, so bytes that
 * changed on disk (a bad block, a crash on a file system that does not
 * order data before sizes, someone writing into the file) are a miss, not
 * the message: version 2 had none, and a reviewer's 4 KiB of zeros in a
 * segment read as a message's tail on every later mount.  A TOMBSTONE (a group, empty
 * name, no data) says that every earlier record of its group is gone.
 *
 * Puts append to the newest segment (the records of a diskcache_put_many
 * that follow each other there with one pwritev); a new one is started when a record
 * would take it past seg_max (an eighth of the bound or of the filesystem,
 * at most 64 MiB or 1/256 of the bound: each segment holds an open fd; a
 * larger record gets a segment to itself), so eviction
 * frees about an eighth of a full cache at a time.  Nothing is
 * fsync()ed: a crash can leave a torn record at a segment's end, and open
 * cuts the segment at the first bad record (what follows it cannot be
 * trusted to start where it seems to).  Losing recent entries costs a
 * refetch.
 *
 * The index in memory maps group -> name -> (segment, offset, length), and
 * each segment lists its live entries.  Open rebuilds it from the headers
 * and keys of all records in (seq, offset) order, reading each segment
 * sequentially in 64 KiB blocks: a later record of a key replaces an
 * earlier one, a tombstone drops its group.  Sizes count whole segment
 * files, dead records (replaced, dropped, damaged) included, and stay
 * within max_bytes by deleting segments, oldest first.  To approach LRU, a
 * hit (or a put of a stored key) on an entry whose segment is due for
 * eviction within the next max_bytes / 2 appended bytes -- in a full cache,
 * the older half of the log; in one less than half full, none -- copies
 * its record forward to the newest segment, leaving a dead copy.  If that
 * copy was its segment's only live record, that segment is the one
 * deleted to make room (nothing is lost) -- unless it holds a tombstone,
 * which must outlive the records it hides.  With one record per segment in
 * a full cache this is exact LRU; with many it is LRU by segment.
 *
 * Locking: write_lock serialises appends (put, remove_group, copy forward)
 * and owns the newest segment's tail and next_seq.  lock, taken after it,
 * protects the index, the segment list and the counts; no I/O happens
 * under it.  A get takes a reference on the segment (refcounted, owning the
 * fd) and reads unlocked, so eviction can unlink a file while reads through
 * its fd finish.  A put makes room under lock, writes unlocked (holding
 * write_lock only) and enters the entry under lock; the bytes on disk stay
 * within max_bytes throughout.  A get copies forward only if write_lock is
 * free (trylock): readers never wait for a writer.
 */
#include "imapfuse/diskcache.h"

#include "imapfuse/le.h"
#include "imapfuse/lockfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#define DK_MAGIC "IFDC"
#define DK_VERSION 3u
#define DK_ENTRY 1u
#define DK_TOMB 2u
#define DK_HDR 32u
#define DK_DSUM 24u   /* where the data's checksum is */
#define DK_SUMMED 28u /* header bytes under the checksum: all before it */
#define DK_FNV_SEED 2166136261u
#define DK_SEG_CAP (64ull << 20)
#define DK_SEGS_MAX 256
#define DK_SCAN_BLOCK (64u << 10) /* the open scan reads segments in blocks of this */
#define DK_WRITE_TRIES 4          /* a put retries after ENOSPC, evicting each time */
#define DK_LOCK_FILE "lock"
#define DK_SEG_PREFIX "seg."
#define DK_SEG_NAME 32 /* "seg." + 16 hex digits + NUL, rounded up */

G_DEFINE_QUARK(diskcache-error-quark, diskcache_error)

typedef struct {
  guint64 seq;
  guint64 start;  /* bytes appended to the log before this segment: its age */
  guint64 size;   /* bytes of whole records in the file; changed under both
                   * locks, so the writer may read it under write_lock */
  int fd;
  gint refs;      /* atomic: the segment list's, plus one per reader */
  gboolean tomb;  /* holds a tombstone */
  GQueue entries; /* its live DkEntry (under lock) */
  GList link;     /* in Diskcache.segs; data = this */
} DkSeg;

typedef struct DkGroup DkGroup;

typedef struct {
  DkGroup *group;
  DkSeg *seg;
  guint64 off, len; /* the whole record */
  GList link;       /* in seg->entries; data = this */
  char name[];
} DkEntry;

struct DkGroup {
  GHashTable *entries; /* name -> DkEntry* (owned) */
  char name[];
};

struct Diskcache {
  char *dir;
  guint foreign;       /* entries found at open that are not the cache's */
  char *foreign_name;  /* the first of them */
  int dirfd;
  int lockfd;
  guint64 max_bytes;
  guint64 seg_max;
  GMutex write_lock; /* serialises appends; protects next_seq */
  guint64 next_seq;
  GMutex lock;        /* protects the fields below; segs and bytes change only
                       * with write_lock held too */
  GHashTable *groups; /* name -> DkGroup* (owned) */
  GQueue segs;        /* oldest first; puts append to the tail */
  guint64 bytes;      /* sum of segment sizes */
  guint count;        /* live entries */
};

/* ---- records ---- */

typedef struct {
  guint8 type;
  guint32 glen, nlen;
  guint64 dlen, len; /* len: the whole record */
  guint32 dsum;      /* dk_data_sum of the data */
} DkHdr;

static guint32 dk_fnv(guint32 h, const void *p, gsize n) {
  const guint8 *b = p;
  for (gsize i = 0; i < n; i++)
    h = (h ^ b[i]) * 16777619u;
  return h;
}

static inline guint64 dk_rotl(guint64 x, int r) { return (x << r) | (x >> (64 - r)); }

/* The data's checksum: four independent multiply-rotate lanes over 8-byte
 * words (several GB/s, a few per cent of a warm grep's CPU), then the tail
 * and a final mix.  Catches bytes that changed on disk; not a defence
 * against anyone who writes the cache on purpose. */
static guint32 dk_data_sum(const guint8 *p, gsize n) {
  const guint64 k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
  guint64 a[4] = {k1, k2, k1 ^ n, k2 + n};
  gsize i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; l++)
      a[l] = dk_rotl(a[l] + le_get64(p + i + 8 * l) * k2, 31) * k1;
  guint64 h = dk_rotl(a[0], 1) + dk_rotl(a[1], 7) + dk_rotl(a[2], 12) + dk_rotl(a[3], 18);
  for (; i + 8 <= n; i += 8)
    h = dk_rotl(h ^ (le_get64(p + i) * k2), 27) * k1;
  for (; i < n; i++)
    h = dk_rotl(h ^ (p[i] * k1), 11) * k2;
  h ^= h >> 33;
  h *= k2;
  h ^= h >> 29;
  h *= k1;
  h ^= h >> 32;
  return (guint32)h;
}

static void dk_hdr_put(guint8 *p, guint8 type, const char *group, guint32 glen, const char *name,
                       guint32 nlen, guint64 dlen, guint32 dsum) {
  memcpy(p, DK_MAGIC, 4);
  p[4] = DK_VERSION;
  p[5] = type;
  p[6] = p[7] = 0;
  le_put64(p + 8, dlen);
  le_put32(p + 16, glen);
  le_put32(p + 20, nlen);
  le_put32(p + DK_DSUM, dsum);
  guint32 h = dk_fnv(dk_fnv(dk_fnv(DK_FNV_SEED, p, DK_SUMMED), group, glen), name, nlen);
  le_put32(p + DK_SUMMED, h);
}

/* Parses DK_HDR bytes at p; FALSE if they cannot start one of our records. */
static gboolean dk_hdr_get(const guint8 *p, DkHdr *h) {
  h->type = p[5];
  h->dlen = le_get64(p + 8);
  h->glen = le_get32(p + 16);
  h->nlen = le_get32(p + 20);
  h->dsum = le_get32(p + DK_DSUM);
  h->len = DK_HDR + (guint64)h->glen + h->nlen + h->dlen; /* wraps only if dlen is absurd */
  return memcmp(p, DK_MAGIC, 4) == 0 && p[4] == DK_VERSION && p[6] == 0 && p[7] == 0 &&
         (h->type == DK_ENTRY || (h->type == DK_TOMB && h->nlen == 0 && h->dlen == 0)) &&
         h->dlen <= G_MAXSSIZE && h->len <= G_MAXSSIZE;
}

/* Checks the checksum; p holds the header and the key. */
static gboolean dk_sum_ok(const guint8 *p, const DkHdr *h) {
  guint32 s = dk_fnv(dk_fnv(DK_FNV_SEED, p, DK_SUMMED), p + DK_HDR, (gsize)h->glen + h->nlen);
  return s == le_get32(p + DK_SUMMED);
}

/* ---- files (never called with lock held) ---- */

static void dk_seg_name(char buf[DK_SEG_NAME], guint64 seq) {
  g_snprintf(buf, DK_SEG_NAME, DK_SEG_PREFIX "%016" G_GINT64_MODIFIER "x", seq);
}

static DkSeg *dk_seg_new(guint64 seq, int fd) {
  DkSeg *s = g_new0(DkSeg, 1);
  s->seq = seq;
  s->fd = fd;
  s->refs = 1;
  s->link.data = s;
  return s;
}

static void dk_seg_unref(DkSeg *s) {
  if (g_atomic_int_dec_and_test(&s->refs)) {
    close(s->fd);
    g_free(s);
  }
}

/* Bytes read, fewer than len at the end of the file or on an error. */
static gsize dk_pread(int fd, guint8 *buf, gsize len, guint64 off) {
  gsize got = 0;
  while (got < len) {
    ssize_t r = pread(fd, buf + got, len - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (gsize)r;
  }
  return got;
}

/* Writes iov (n parts, at most IOV_MAX) at off; 0 or an errno value. */
static int dk_pwrite(int fd, const struct iovec *parts, int n, guint64 off) {
  struct iovec small[4];
  struct iovec *iov = n <= 4 ? small : g_new(struct iovec, n); /* changed as it goes */
  memcpy(iov, parts, (gsize)n * sizeof *iov);
  struct iovec *v = iov;
  int err = 0;
  while (n > 0) {
    ssize_t w = pwritev(fd, v, n, (off_t)off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      err = w < 0 ? errno : EIO; /* no progress: do not spin */
      break;
    }
    off += (guint64)w;
    while (n > 0 && (gsize)w >= v->iov_len) {
      w -= (ssize_t)v->iov_len;
      v++;
      n--;
    }
    if (n > 0) {
      v->iov_base = (char *)v->iov_base + w;
      v->iov_len -= (gsize)w;
    }
  }
  if (iov != small)
    g_free(iov);
  return err;
}

/* Deletes name in directory dfd and, if it is a directory, all below it. */
static void dk_rm_tree(int dfd, const char *name) {
  if (unlinkat(dfd, name, 0) == 0 || (errno != EISDIR && errno != EPERM))
    return;
  int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (d == NULL) {
    if (fd >= 0)
      close(fd);
    return;
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
      dk_rm_tree(dirfd(d), de->d_name);
  closedir(d);
  unlinkat(dfd, name, AT_REMOVEDIR);
}

/* ---- index (callers of _functions hold lock) ---- */

static void dk_group_free(gpointer p) {
  DkGroup *g = p;
  g_hash_table_unref(g->entries);
  g_free(g);
}

static DkEntry *_dk_lookup(Diskcache *dc, const char *group, const char *name) {
  DkGroup *g = g_hash_table_lookup(dc->groups, group);
  return g != NULL ? g_hash_table_lookup(g->entries, name) : NULL;
}

/* Enters (group, name) as the record at seg/off; an older record of the
 * key becomes dead. */
static void _dk_insert(Diskcache *dc, const char *group, const char *name, DkSeg *seg,
                       guint64 off, guint64 len) {
  DkGroup *g = g_hash_table_lookup(dc->groups, group);
  if (g == NULL) {
    gsize n = strlen(group) + 1;
    g = g_malloc(sizeof *g + n);
    memcpy(g->name, group, n);
    g->entries = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
    g_hash_table_insert(dc->groups, g->name, g);
  }
  DkEntry *e = g_hash_table_lookup(g->entries, name);
  if (e != NULL) {
    g_queue_unlink(&e->seg->entries, &e->link);
  } else {
    gsize n = strlen(name) + 1;
    e = g_malloc(sizeof *e + n);
    memcpy(e->name, name, n);
    e->group = g;
    e->link = (GList){.data = e};
    g_hash_table_insert(g->entries, e->name, e);
    dc->count++;
  }
  e->seg = seg;
  e->off = off;
  e->len = len;
  g_queue_push_tail_link(&seg->entries, &e->link);
}

/* Forgets an entry; its record stays as dead bytes. */
static void _dk_drop(Diskcache *dc, DkEntry *e) {
  DkGroup *g = e->group;
  g_queue_unlink(&e->seg->entries, &e->link);
  dc->count--;
  g_hash_table_remove(g->entries, e->name);
  if (g_hash_table_size(g->entries) == 0)
    g_hash_table_remove(dc->groups, g->name);
}

/* Forgets a group's entries; FALSE if it had none. */
static gboolean _dk_drop_group(Diskcache *dc, const char *group) {
  DkGroup *g = g_hash_table_lookup(dc->groups, group);
  if (g == NULL)
    return FALSE;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, g->entries);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DkEntry *e = v;
    g_queue_unlink(&e->seg->entries, &e->link);
    dc->count--;
  }
  g_hash_table_remove(dc->groups, group);
  return TRUE;
}

/* Takes a segment out of the log with its entries; the caller deletes the
 * victims' files once unlocked (dk_delete). */
static void _dk_evict(Diskcache *dc, DkSeg *s, GPtrArray *victims) {
  while (s->entries.head != NULL)
    _dk_drop(dc, s->entries.head->data);
  g_queue_unlink(&dc->segs, &s->link);
  dc->bytes -= s->size;
  g_ptr_array_add(victims, s);
}

static void dk_delete(Diskcache *dc, GPtrArray *victims) {
  for (guint i = 0; i < victims->len; i++) {
    DkSeg *s = g_ptr_array_index(victims, i);
    char name[DK_SEG_NAME];
    dk_seg_name(name, s->seq);
    unlinkat(dc->dirfd, name, 0);
    dk_seg_unref(s); /* readers still holding it keep the fd */
  }
  g_ptr_array_set_size(victims, 0);
}

/* Is the entry worth copying forward: would its segment be evicted within
 * the next max_bytes / 2 bytes appended?  For a full cache that is the
 * older half of the log; a cache less than half full copies nothing. */
static gboolean _dk_is_old(Diskcache *dc, const DkEntry *e) {
  const DkSeg *oldest = dc->segs.head->data;
  return &e->seg->link != dc->segs.tail &&
         e->seg->start - oldest->start + dc->max_bytes / 2 < dc->bytes;
}

/* ---- appending (callers hold write_lock) ---- */

/* The newest segment if len more bytes go there, else NULL (dk_target
 * then starts one).  The writer (write_lock) may read it unlocked. */
static DkSeg *dk_tail_for(const Diskcache *dc, guint64 len) {
  DkSeg *t = dc->segs.tail != NULL ? dc->segs.tail->data : NULL;
  return t != NULL && (t->size == 0 || t->size + len <= dc->seg_max) ? t : NULL;
}

/* The segment a record (or run) of len bytes goes to, started if need be. */
static DkSeg *dk_target(Diskcache *dc, guint64 len, GError **error) {
  DkSeg *t = dk_tail_for(dc, len);
  if (t != NULL)
    return t;
  const DkSeg *last = dc->segs.tail != NULL ? dc->segs.tail->data : NULL;
  char name[DK_SEG_NAME];
  dk_seg_name(name, dc->next_seq);
  int fd = openat(dc->dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot create a segment in cache directory %s: %s", dc->dir, g_strerror(err));
    return NULL;
  }
  DkSeg *s = dk_seg_new(dc->next_seq++, fd);
  s->start = last != NULL ? last->start + last->size : 0;
  g_mutex_lock(&dc->lock);
  g_queue_push_tail_link(&dc->segs, &s->link);
  g_mutex_unlock(&dc->lock);
  return s;
}

/* After ENOSPC: evicts the oldest segment other than t, unless even an
 * empty cache would leave no room for len bytes.  FALSE if nothing went. */
static gboolean dk_free_disk(Diskcache *dc, DkSeg *t, guint64 len, GPtrArray *victims) {
  struct statvfs vfs;
  guint64 avail = fstatvfs(dc->dirfd, &vfs) == 0 ? (guint64)vfs.f_bavail * vfs.f_frsize : 0;
  g_mutex_lock(&dc->lock);
  DkSeg *v = dc->segs.head->data;
  gboolean ok = v != t && len <= avail + (dc->bytes - t->size);
  if (ok)
    _dk_evict(dc, v, victims);
  g_mutex_unlock(&dc->lock);
  dk_delete(dc, victims);
  return ok;
}

/* Appends nrec records of one group back to back in one write (iov: all
 * of them, len bytes; names[k] and lens[k] are the k-th record's key and
 * length) and enters them into the index.  A pwritev per record had cost
 * a cold scan as much CPU as fetching the mail (ext4 updates the file's
 * times and takes its locks at every write): 7,300 writes for 10,000
 * messages.  For a copy forward (one record), from/from_off is the copy
 * it replaces: if that is no longer the key's entry, nothing is written. */
static gboolean dk_append(Diskcache *dc, guint8 type, const char *group, guint nrec,
                          const char *const *names, const guint64 *lens,
                          const struct iovec *iov, int niov, guint64 len, const DkSeg *from,
                          guint64 from_off, GError **error) {
  DkSeg *t = dk_target(dc, len, error);
  if (t == NULL)
    return FALSE;
  g_autoptr(GPtrArray) victims = g_ptr_array_new();
  g_mutex_lock(&dc->lock);
  /* A stored key rewritten (a lone record): its segment may be the room. */
  DkEntry *keep = type == DK_ENTRY && nrec == 1 ? _dk_lookup(dc, group, names[0]) : NULL;
  gboolean go = from == NULL || (keep != NULL && keep->seg == from && keep->off == from_off);
  while (go && dc->bytes + len > dc->max_bytes) {
    DkSeg *v = dc->segs.head->data;
    if (keep != NULL && keep->seg != t && keep->seg->entries.length == 1 && !keep->seg->tomb)
      v = keep->seg; /* its only live record is being rewritten: nothing is lost */
    if (v == t)
      break; /* t alone always fits (see dk_target); this is a safety net */
    if (keep != NULL && v == keep->seg)
      keep = NULL;
    _dk_evict(dc, v, victims);
  }
  go = go && dc->bytes + len <= dc->max_bytes;
  g_mutex_unlock(&dc->lock);
  dk_delete(dc, victims);
  if (!go)
    return TRUE;

  int err;
  for (int tries = 1;; tries++) {
    err = dk_pwrite(t->fd, iov, niov, t->size);
    if (err == 0)
      break;
    if (ftruncate(t->fd, (off_t)t->size) != 0)
      g_debug("disk cache: cannot cut a failed write: %s", g_strerror(errno));
    if ((err != ENOSPC && err != EDQUOT) || tries == DK_WRITE_TRIES ||
        !dk_free_disk(dc, t, len, victims))
      break;
  }
  if (err != 0) {
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot write to cache directory %s: %s", dc->dir, g_strerror(err));
    return FALSE;
  }
  g_mutex_lock(&dc->lock);
  if (type == DK_TOMB) {
    t->tomb = TRUE;
  } else {
    guint64 off = t->size;
    for (guint k = 0; k < nrec; k++) {
      _dk_insert(dc, group, names[k], t, off, lens[k]);
      off += lens[k];
    }
  }
  t->size += len;
  dc->bytes += len;
  g_mutex_unlock(&dc->lock);
  return TRUE;
}

/* ---- open: rebuild the index ---- */

typedef struct {
  int fd;
  guint64 fsize;
  guint64 at; /* file offset of buf[0] */
  gsize n, cap;
  guint8 *buf;
} DkReader;

/* Bytes [off, off + len) of the file, or NULL if the file ends before. */
static const guint8 *dk_reader_get(DkReader *r, guint64 off, guint64 len) {
  if (off >= r->at && off + len <= r->at + r->n)
    return r->buf + (off - r->at);
  if (off > r->fsize || len > r->fsize - off)
    return NULL;
  gsize want = (gsize)MIN(MAX(len, DK_SCAN_BLOCK), r->fsize - off);
  if (want > r->cap)
    r->buf = g_realloc(r->buf, r->cap = want);
  r->at = off;
  r->n = dk_pread(r->fd, r->buf, want, off);
  return r->n >= len ? r->buf : NULL;
}

/* Enters one segment's records; the segment is cut at the first bad one. */
static void dk_scan_seg(Diskcache *dc, DkSeg *s) {
  struct stat st;
  if (fstat(s->fd, &st) != 0)
    return;
  DkReader r = {.fd = s->fd, .fsize = (guint64)st.st_size};
  guint64 off = 0;
  while (off < r.fsize) {
    DkHdr h;
    const guint8 *p = dk_reader_get(&r, off, DK_HDR);
    if (p == NULL || !dk_hdr_get(p, &h) || h.len > r.fsize - off)
      break;
    gsize klen = (gsize)h.glen + h.nlen;
    p = dk_reader_get(&r, off, DK_HDR + klen);
    if (p == NULL || !dk_sum_ok(p, &h) || memchr(p + DK_HDR, '\0', klen) != NULL)
      break;
    g_autofree char *group = g_strndup((const char *)p + DK_HDR, h.glen);
    if (h.type == DK_TOMB) {
      _dk_drop_group(dc, group);
      s->tomb = TRUE;
    } else {
      g_autofree char *name = g_strndup((const char *)p + DK_HDR + h.glen, h.nlen);
      _dk_insert(dc, group, name, s, off, h.len);
    }
    off += h.len;
  }
  g_free(r.buf);
  if (off < r.fsize) {
    g_debug("disk cache: segment %016" G_GINT64_MODIFIER "x cut at %" G_GUINT64_FORMAT
            " of %" G_GUINT64_FORMAT " bytes",
            s->seq, off, r.fsize);
    if (ftruncate(s->fd, (off_t)off) != 0)
      g_debug("disk cache: cannot cut segment: %s", g_strerror(errno));
  }
  s->size = off;
}

/* Is this "seg." and 16 lower-case hex digits?  *seq: the number. */
static gboolean dk_parse_seg_name(const char *s, guint64 *seq) {
  if (strlen(s) != strlen(DK_SEG_PREFIX) + 16 || !g_str_has_prefix(s, DK_SEG_PREFIX))
    return FALSE;
  for (const char *c = s + strlen(DK_SEG_PREFIX); *c != '\0'; c++)
    if (!g_ascii_isdigit(*c) && !(*c >= 'a' && *c <= 'f'))
      return FALSE;
  *seq = g_ascii_strtoull(s + strlen(DK_SEG_PREFIX), NULL, 16);
  return TRUE;
}

static gint dk_seq_cmp(gconstpointer a, gconstpointer b) {
  guint64 x = *(const guint64 *)a, y = *(const guint64 *)b;
  return x < y ? -1 : x > y;
}

/* An earlier version's files, which only imapfuse made: a group directory
 * (32 hex digits, with a "#group" file) or a temporary regular file
 * (.tmp.<hex>). */
static gboolean dk_is_old_format(int dfd, const char *name) {
  struct stat st;
  if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return FALSE;
  if (g_str_has_prefix(name, ".tmp.")) /* .tmp.<hex>, as that version named them */
    return name[5] != '\0' && strspn(name + 5, "0123456789abcdef") == strlen(name + 5) &&
           S_ISREG(st.st_mode);
  if (strlen(name) != 32 || strspn(name, "0123456789abcdef") != 32 || !S_ISDIR(st.st_mode))
    return FALSE;
  g_autofree char *group = g_strconcat(name, "/#group", NULL);
  return fstatat(dfd, group, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

static void dk_note_foreign(Diskcache *dc, const char *name) {
  if (dc->foreign++ == 0)
    dc->foreign_name = g_strdup(name);
}

static gboolean dk_scan(Diskcache *dc, GError **error) {
  int fd = openat(dc->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (d == NULL) {
    int err = errno;
    if (fd >= 0)
      close(fd);
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot list cache directory %s: %s", dc->dir, g_strerror(err));
    return FALSE;
  }
  g_autoptr(GArray) seqs = g_array_new(FALSE, FALSE, sizeof(guint64));
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    guint64 seq;
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
        strcmp(de->d_name, DK_LOCK_FILE) == 0)
      continue;
    if (dk_parse_seg_name(de->d_name, &seq))
      g_array_append_val(seqs, seq);
    else if (dk_is_old_format(dc->dirfd, de->d_name))
      dk_rm_tree(dc->dirfd, de->d_name);
    else
      dk_note_foreign(dc, de->d_name);
  }
  closedir(d);
  g_array_sort(seqs, dk_seq_cmp);

  g_autoptr(GPtrArray) victims = g_ptr_array_new();
  for (guint i = 0; i < seqs->len; i++) {
    guint64 seq = g_array_index(seqs, guint64, i);
    char name[DK_SEG_NAME];
    dk_seg_name(name, seq);
    dc->next_seq = seq + 1;
    struct stat st;
    int sfd = openat(dc->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0 && errno != ELOOP && errno != EISDIR) {
      /* Not the file's fault (EMFILE, EACCES, ...): deleting it would
       * empty the cache for a passing reason. */
      int err = errno;
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                  "cannot open %s in cache directory %s: %s", name, dc->dir, g_strerror(err));
      return FALSE;
    }
    if (sfd < 0 || fstat(sfd, &st) != 0 || !S_ISREG(st.st_mode)) {
      if (sfd >= 0)
        close(sfd);
      dk_note_foreign(dc, name); /* the cache makes only regular files */
      continue;
    }
    DkSeg *s = dk_seg_new(seq, sfd);
    DkSeg *prev = dc->segs.tail != NULL ? dc->segs.tail->data : NULL;
    s->start = prev != NULL ? prev->start + prev->size : 0;
    g_queue_push_tail_link(&dc->segs, &s->link);
    dk_scan_seg(dc, s);
    dc->bytes += s->size;
    if (s->size == 0)
      _dk_evict(dc, s, victims);
  }
  /* The bound may have shrunk: now the newest segment may go too.  No other
   * thread exists yet, so no lock. */
  while (dc->bytes > dc->max_bytes)
    _dk_evict(dc, dc->segs.head->data, victims);
  dk_delete(dc, victims);
  return TRUE;
}

/* ---- API ---- */

Diskcache *diskcache_open(const char *dir, guint64 max_bytes, GError **error) {
  if (g_mkdir_with_parents(dir, 0700) != 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot create cache directory %s: %s", dir, g_strerror(err));
    return NULL;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot open cache directory %s: %s", dir, g_strerror(err));
    return NULL;
  }
  int lfd = lockfile_take(dfd, DK_LOCK_FILE, O_CREAT, LOCKFILE_MOUNT_WAIT_US);
  if (lfd < 0) {
    int err = errno;
    if (err == EWOULDBLOCK)
      g_set_error(error, DISKCACHE_ERROR, DISKCACHE_ERROR_LOCKED,
                  "cache directory %s is in use by another imapfuse mount", dir);
    else
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                  "cannot lock cache directory %s: %s", dir, g_strerror(err));
    close(dfd);
    return NULL;
  }
  Diskcache *dc = g_new0(Diskcache, 1);
  dc->dir = g_strdup(dir);
  dc->dirfd = dfd;
  dc->lockfd = lfd;
  dc->max_bytes = max_bytes;
  /* A filesystem smaller than the bound is the real bound: segments sized
   * from it keep evictions after ENOSPC fine-grained. */
  struct statvfs vfs;
  guint64 room = max_bytes;
  if (fstatvfs(dfd, &vfs) == 0 && vfs.f_blocks > 0) /* 0: the filesystem does not say */
    room = MIN(room, (guint64)vfs.f_blocks * vfs.f_frsize);
  /* Every segment holds an fd: at most about DK_SEGS_MAX of them, however
   * large the bound (64 MiB segments made a 64 GiB cache 1,024 fds). */
  dc->seg_max = MIN(room / 8, MAX(DK_SEG_CAP, max_bytes / DK_SEGS_MAX));
  g_mutex_init(&dc->write_lock);
  g_mutex_init(&dc->lock);
  dc->groups = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, dk_group_free);
  g_queue_init(&dc->segs);
  if (!dk_scan(dc, error)) {
    diskcache_close(dc);
    return NULL;
  }
  return dc;
}

void diskcache_close(Diskcache *dc) {
  if (dc == NULL)
    return;
  g_hash_table_unref(dc->groups);
  while (dc->segs.head != NULL) {
    DkSeg *s = dc->segs.head->data;
    g_queue_unlink(&dc->segs, &s->link);
    dk_seg_unref(s);
  }
  g_mutex_clear(&dc->write_lock);
  g_mutex_clear(&dc->lock);
  close(dc->dirfd);
  close(dc->lockfd); /* releases the flock */
  g_free(dc->foreign_name);
  g_free(dc->dir);
  g_free(dc);
}

GBytes *diskcache_get(Diskcache *dc, const char *group, const char *name) {
  DkSeg *seg = NULL;
  guint64 off = 0, len = 0;
  gboolean old = FALSE;
  g_mutex_lock(&dc->lock);
  DkEntry *e = _dk_lookup(dc, group, name);
  if (e != NULL) {
    seg = e->seg;
    g_atomic_int_inc(&seg->refs);
    off = e->off;
    len = e->len;
    old = _dk_is_old(dc, e);
  }
  g_mutex_unlock(&dc->lock);
  if (seg == NULL)
    return NULL;

  /* One read for header, key and data; each test below only looks at
   * bytes the previous ones proved to be there. */
  gsize glen = strlen(group), nlen = strlen(name);
  guint8 *buf = g_malloc(len);
  DkHdr h = {0};
  gboolean ok = dk_pread(seg->fd, buf, len, off) == len && dk_hdr_get(buf, &h) &&
                h.type == DK_ENTRY && h.len == len && h.glen == glen && h.nlen == nlen &&
                dk_sum_ok(buf, &h) && memcmp(buf + DK_HDR, group, glen) == 0 &&
                memcmp(buf + DK_HDR + glen, name, nlen) == 0 &&
                dk_data_sum(buf + DK_HDR + glen + nlen, h.dlen) == h.dsum;
  GBytes *out = NULL;
  if (ok) {
    if (old && g_mutex_trylock(&dc->write_lock)) {
      struct iovec iov[1] = {{buf, len}};
      dk_append(dc, DK_ENTRY, group, 1, &name, &len, iov, 1, len, seg, off, NULL);
      g_mutex_unlock(&dc->write_lock);
    }
    GBytes *whole = g_bytes_new_take(buf, len);
    out = g_bytes_new_from_bytes(whole, DK_HDR + glen + nlen, h.dlen);
    g_bytes_unref(whole);
  } else {
    /* Forget it, unless it moved meanwhile; its bytes stay as dead space. */
    g_free(buf);
    g_mutex_lock(&dc->lock);
    e = _dk_lookup(dc, group, name);
    if (e != NULL && e->seg == seg && e->off == off) {
      g_debug("disk cache: damaged record in %s, segment %016" G_GINT64_MODIFIER "x", dc->dir,
              seg->seq);
      _dk_drop(dc, e);
    }
    g_mutex_unlock(&dc->lock);
  }
  dk_seg_unref(seg);
  return out;
}

gboolean diskcache_contains(Diskcache *dc, const char *group, const char *name) {
  g_mutex_lock(&dc->lock);
  gboolean found = _dk_lookup(dc, group, name) != NULL;
  g_mutex_unlock(&dc->lock);
  return found;
}

gboolean diskcache_put(Diskcache *dc, const char *group, const char *name, GBytes *data,
                       GError **error) {
  return diskcache_put_many(dc, group, 1, &name, &data, error);
}

/* Records written with one pwritev at most: four iovecs each (header,
 * group, name, data) within Linux's IOV_MAX of 1024. */
#define DK_RUN_MAX 256u

gboolean diskcache_put_many(Diskcache *dc, const char *group, guint n, const char *const *names,
                            GBytes *const *datas, GError **error) {
  gsize glen = strlen(group);
  if (glen > G_MAXUINT32 || n == 0)
    return TRUE;
  guint cap = MIN(n, DK_RUN_MAX);
  guint8 *hdrs = g_malloc((gsize)cap * DK_HDR);
  struct iovec *iov = g_new(struct iovec, 4 * (gsize)cap);
  const char **rnames = g_new(const char *, cap);
  guint64 *lens = g_new(guint64, cap);
  gboolean ok = TRUE;
  g_mutex_lock(&dc->write_lock);
  for (guint i = 0; i < n;) {
    /* A run: records that go back to back into one segment. */
    guint k = 0;
    guint64 run = 0, base = 0;
    for (; i < n && k < cap; i++) {
      gsize dlen, nlen = strlen(names[i]);
      const void *d = g_bytes_get_data(datas[i], &dlen);
      guint64 len = (guint64)DK_HDR + glen + nlen + dlen;
      if (nlen > G_MAXUINT32 || dlen > dc->max_bytes || len > dc->max_bytes)
        continue; /* larger than the whole cache: not stored */
      g_mutex_lock(&dc->lock);
      DkEntry *e = _dk_lookup(dc, group, names[i]);
      gboolean stored = e != NULL, old = stored && _dk_is_old(dc, e);
      g_mutex_unlock(&dc->lock);
      if (stored && !old)
        continue; /* the bytes are the same: just a use */
      if (stored && k > 0)
        break; /* an old one is rewritten on its own (dk_append's keep) */
      if (k == 0) {
        DkSeg *tail = dk_tail_for(dc, len); /* where dk_target will put the run */
        base = tail != NULL ? tail->size : 0;
      } else if (base + run + len > dc->seg_max) {
        break; /* the next run starts a segment */
      }
      guint8 *hdr = hdrs + (gsize)k * DK_HDR;
      dk_hdr_put(hdr, DK_ENTRY, group, (guint32)glen, names[i], (guint32)nlen, dlen,
                 dk_data_sum(d, dlen));
      iov[4 * k] = (struct iovec){hdr, DK_HDR};
      iov[4 * k + 1] = (struct iovec){(void *)group, glen};
      iov[4 * k + 2] = (struct iovec){(void *)names[i], nlen};
      iov[4 * k + 3] = (struct iovec){(void *)d, dlen};
      rnames[k] = names[i];
      lens[k] = len;
      run += len;
      k++;
      if (stored) {
        i++;
        break;
      }
    }
    if (k == 0)
      continue;
    g_autoptr(GError) run_error = NULL;
    if (dk_append(dc, DK_ENTRY, group, k, rnames, lens, iov, (int)(4 * k), run, NULL, 0,
                  &run_error))
      continue;
    if (k > 1) {
      /* The run was cut off whole (a full disk, a file size limit): each
       * of its records on its own, as one put each would have gone, so
       * that those that fit are kept.  (A lone record is not tried
       * twice: each try may evict more to make room.) */
      g_clear_error(&run_error);
      for (guint r = 0; r < k; r++) {
        g_autoptr(GError) rerr = NULL;
        if (!dk_append(dc, DK_ENTRY, group, 1, &rnames[r], &lens[r], iov + 4 * r, 4, lens[r],
                       NULL, 0, &rerr) &&
            run_error == NULL)
          run_error = g_steal_pointer(&rerr);
      }
    }
    if (run_error != NULL) {
      if (ok)
        g_propagate_error(error, g_steal_pointer(&run_error));
      ok = FALSE;
    }
  }
  g_mutex_unlock(&dc->write_lock);
  g_free(hdrs);
  g_free(iov);
  g_free(rnames);
  g_free(lens);
  return ok;
}

void diskcache_remove_group(Diskcache *dc, const char *group) {
  gsize glen = strlen(group);
  g_mutex_lock(&dc->write_lock);
  g_mutex_lock(&dc->lock);
  gboolean had = _dk_drop_group(dc, group);
  g_mutex_unlock(&dc->lock);
  /* The tombstone keeps a restart from bringing the records back.  A group
   * without live entries has none worth hiding (dead copies only ever hold
   * the same immutable bytes). */
  if (had && glen <= G_MAXUINT32 && DK_HDR + glen <= dc->max_bytes) {
    guint8 hdr[DK_HDR];
    dk_hdr_put(hdr, DK_TOMB, group, (guint32)glen, "", 0, 0, dk_data_sum(NULL, 0));
    struct iovec iov[2] = {{hdr, DK_HDR}, {(void *)group, glen}};
    g_autoptr(GError) error = NULL;
    const char *none = "";
    guint64 len = DK_HDR + glen;
    if (!dk_append(dc, DK_TOMB, group, 1, &none, &len, iov, 2, len, NULL, 0, &error))
      g_debug("disk cache: %s", error->message);
  }
  g_mutex_unlock(&dc->write_lock);
}

guint64 diskcache_bound(const Diskcache *dc) { return dc->max_bytes; }

guint64 diskcache_size(Diskcache *dc) {
  g_mutex_lock(&dc->lock);
  guint64 n = dc->bytes;
  g_mutex_unlock(&dc->lock);
  return n;
}

guint diskcache_count(Diskcache *dc) {
  g_mutex_lock(&dc->lock);
  guint n = dc->count;
  g_mutex_unlock(&dc->lock);
  return n;
}

guint diskcache_foreign(Diskcache *dc, const char **example) {
  if (example != NULL)
    *example = dc->foreign_name;
  return dc->foreign;
}
