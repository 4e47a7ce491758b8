/* diskcache.c - immutable blobs on disk with a size bound and LRU eviction.
 *
 * Design note.  Layout of the cache directory:
 *   lock                  flock()ed for as long as a Diskcache has it open
 *   <h>/                  one per group; h = first 32 hex digits of SHA-256(group)
 *   <h>/#group            the group's real name (for people; never read back)
 *   <h>/<escaped name>    one entry: header, then the bytes
 *   <h>/.tmp.<n>          an entry being written (deleted at open: a crash)
 * A name is escaped to [A-Za-z0-9._-] plus "%XX" (a leading '.' and '%'
 * are escaped too, so "." and ".." are harmless and no entry name starts
 * with '.' or '#'); an escaped name longer than DK_NAME_MAX becomes "~" and
 * the SHA-256 of the name.  The header is 24 bytes, little-endian: magic
 * "IFDC", version, data length (u64), group length, name length (u32),
 * then the group and the name themselves, then the data.  A get checks the
 * magic, version, key and that the file is exactly as long as the header
 * says; anything else is a damaged entry, deleted and reported absent.
 * The data is not checksummed: hashing every hit would cost more than the
 * read itself on the warm-grep path, and an entry is only ever created by
 * a complete write followed by rename(), so a crash leaves either a whole
 * file or none; the header and length checks catch truncation and foreign
 * files.  Nothing is fsync()ed: losing recent entries costs a refetch.
 *
 * The index lives in memory: group hash -> DkGroup -> escaped name ->
 * DkEntry, plus one LRU list.  It is rebuilt at open from a listing and
 * fstatat() of every entry (contents are not read), ordered by mtime; a
 * hit sets the file's mtime to now, so recency survives a restart.
 * Locking: one mutex protects the index and the byte counts only.  No file
 * is read, written, created, renamed or deleted under it: a get takes a
 * reference (a generation number) under the lock and reads unlocked; a put
 * reserves its size (evicting to make room) under the lock, writes and
 * renames unlocked, and enters the entry under the lock; evicted files are
 * unlinked after the lock is dropped.  The index is authoritative: a file
 * the index does not know is never served, and an index entry whose file
 * vanished in a race (an eviction and a re-put of the same key crossing)
 * is a miss that removes it.  Reservations keep the bytes on disk within
 * max_bytes even while puts are in flight.
 */
#include "imapfuse/diskcache.h"

#include "imapfuse/le.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#define DK_MAGIC "IFDC"
#define DK_VERSION 1u
#define DK_HDR 24u         /* magic, version, data length, group length, name length */
#define DK_GROUP_HEX 32    /* hex digits of SHA-256(group) in its directory name */
#define DK_NAME_MAX 128    /* longer escaped names are replaced by a hash */
#define DK_WRITE_TRIES 4   /* a put retries after ENOENT (group dir removed) or ENOSPC */
#define DK_LOCK_FILE "lock"
#define DK_GROUP_FILE "#group"
#define DK_TMP_PREFIX ".tmp."

G_DEFINE_QUARK(diskcache-error-quark, diskcache_error)

/* For utimensat(): the mtime (our recency mark) becomes now, the atime stays. */
static const struct timespec dk_mtime_now[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_NOW}};

typedef struct DkGroup DkGroup;

typedef struct {
  DkGroup *group;
  char *fname;  /* escaped name */
  guint64 size; /* whole file, header included */
  guint64 gen;  /* tells a re-stored entry from the one a reader saw */
  GList link;   /* in lru; data = this entry */
} DkEntry;

struct DkGroup {
  char hex[DK_GROUP_HEX + 1];
  GHashTable *entries; /* fname -> DkEntry* (owned) */
};

struct Diskcache {
  char *dir;
  int dirfd;
  int lockfd;
  guint64 max_bytes;
  gint tmp_seq; /* atomic; temp file names */
  GMutex lock;  /* protects the fields below */
  GHashTable *groups; /* hex -> DkGroup* (owned) */
  GQueue lru;         /* most recently used at head */
  guint64 bytes;      /* sum of entry sizes */
  guint64 reserved;   /* sizes of puts in flight */
  guint count;
  guint64 next_gen;
};

/* ---- names and headers ---- */

static void dk_group_hex(const char *group, char hex[DK_GROUP_HEX + 1]) {
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(sum, (const guchar *)group, strlen(group));
  memcpy(hex, g_checksum_get_string(sum), DK_GROUP_HEX);
  hex[DK_GROUP_HEX] = '\0';
  g_checksum_free(sum);
}

static gboolean dk_name_char(guchar c) {
  return g_ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
}

/* The file name of an entry: see the design note. */
static char *dk_file_name(const char *name) {
  static const char hexd[] = "0123456789ABCDEF";
  gsize n = strlen(name);
  if (n == 0)
    return g_strdup("%");
  if (n <= DK_NAME_MAX) {
    char buf[3 * DK_NAME_MAX + 1];
    gsize k = 0;
    for (gsize i = 0; i < n && k <= DK_NAME_MAX; i++) {
      guchar c = (guchar)name[i];
      if (dk_name_char(c) && !(c == '.' && i == 0)) {
        buf[k++] = (char)c;
      } else {
        buf[k++] = '%';
        buf[k++] = hexd[c >> 4];
        buf[k++] = hexd[c & 15];
      }
    }
    if (k <= DK_NAME_MAX)
      return g_strndup(buf, k);
  }
  g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, (gssize)n);
  return g_strconcat("~", sum, NULL);
}

/* Could this directory entry be an entry file made by dk_file_name()? */
static gboolean dk_entry_name_ok(const char *s) {
  if (s[0] == '\0' || s[0] == '.' || s[0] == '#')
    return FALSE;
  for (; *s != '\0'; s++)
    if (!dk_name_char((guchar)*s) && *s != '%' && *s != '~')
      return FALSE;
  return TRUE;
}

static gboolean dk_group_dir_ok(const char *s) {
  if (strlen(s) != DK_GROUP_HEX)
    return FALSE;
  for (; *s != '\0'; s++)
    if (!g_ascii_isdigit(*s) && !(*s >= 'a' && *s <= 'f'))
      return FALSE;
  return TRUE;
}

/* ---- files (never called with the lock held) ---- */

static gboolean dk_write_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return FALSE;
    if (w == 0 && iov->iov_len > 0) {
      errno = EIO; /* no progress: do not spin */
      return FALSE;
    }
    while (n > 0 && (gsize)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (gsize)w;
    }
  }
  return TRUE;
}

/* Writes iov to hex/final through a temporary file and rename().  Returns 0
 * or an errno value. */
static int dk_write_file(Diskcache *dc, const char *hex, const char *final, struct iovec *iov,
                         int n) {
  char tmp[DK_GROUP_HEX + sizeof("/" DK_TMP_PREFIX) + 16];
  int fd;
  do {
    guint seq = (guint)g_atomic_int_add(&dc->tmp_seq, 1);
    g_snprintf(tmp, sizeof tmp, "%s/" DK_TMP_PREFIX "%x", hex, seq);
    fd = openat(dc->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  } while (fd < 0 && errno == EEXIST);
  if (fd < 0)
    return errno;
  gboolean ok = dk_write_all(fd, iov, n);
  int err = errno;
  if (close(fd) != 0 && ok) {
    ok = FALSE;
    err = errno;
  }
  if (ok) {
    g_autofree char *dst = g_strconcat(hex, "/", final, NULL);
    if (renameat(dc->dirfd, tmp, dc->dirfd, dst) == 0)
      return 0;
    err = errno;
  }
  unlinkat(dc->dirfd, tmp, 0);
  return err;
}

/* Creates a group's directory and its #group file; 0 or an errno value. */
static int dk_make_group_dir(Diskcache *dc, const char *hex, const char *group) {
  if (mkdirat(dc->dirfd, hex, 0700) != 0)
    return errno == EEXIST ? 0 : errno;
  struct iovec iov[1] = {{(void *)group, strlen(group)}};
  dk_write_file(dc, hex, DK_GROUP_FILE, iov, 1); /* informational only */
  return 0;
}

static void dk_unlink_all(Diskcache *dc, GPtrArray *paths) {
  for (guint i = 0; i < paths->len; i++)
    unlinkat(dc->dirfd, g_ptr_array_index(paths, i), 0);
}

typedef enum { DK_READ_OK, DK_READ_MISSING, DK_READ_DAMAGED } DkRead;

/* Reads and checks one entry file; *out is the data on DK_READ_OK. */
static DkRead dk_read_entry(Diskcache *dc, const char *rel, const char *group,
                            const char *name, GBytes **out) {
  /* O_NOATIME: the mtime is our recency mark; an atime update on top of it
   * would dirty the inode a second time (refused if we are not the owner). */
  int fd = openat(dc->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
  if (fd < 0 && errno == EPERM)
    fd = openat(dc->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return errno == ENOENT ? DK_READ_MISSING : DK_READ_DAMAGED;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < (off_t)DK_HDR ||
      (guint64)st.st_size > G_MAXSSIZE) {
    close(fd);
    return DK_READ_DAMAGED;
  }
  gsize size = (gsize)st.st_size, got = 0;
  guint8 *buf = g_malloc(size);
  while (got < size) {
    ssize_t r = pread(fd, buf + got, size - got, (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (gsize)r;
  }
  /* In this order, so that each test only reads bytes the previous ones
   * proved to be there. */
  gsize glen = strlen(group), nlen = strlen(name);
  if (got != size || memcmp(buf, DK_MAGIC, 4) != 0 || le_get32(buf + 4) != DK_VERSION ||
      le_get32(buf + 16) != glen || le_get32(buf + 20) != nlen ||
      size - DK_HDR < (guint64)glen + nlen ||
      le_get64(buf + 8) != size - DK_HDR - glen - nlen ||
      memcmp(buf + DK_HDR, group, glen) != 0 || memcmp(buf + DK_HDR + glen, name, nlen) != 0) {
    close(fd);
    g_free(buf);
    return DK_READ_DAMAGED;
  }
  futimens(fd, dk_mtime_now);
  close(fd);
  GBytes *whole = g_bytes_new_take(buf, size);
  *out = g_bytes_new_from_bytes(whole, DK_HDR + glen + nlen, size - DK_HDR - glen - nlen);
  g_bytes_unref(whole);
  return DK_READ_OK;
}

/* ---- index (callers of _functions hold the lock) ---- */

static void dk_group_free(gpointer p) {
  DkGroup *g = p;
  g_hash_table_unref(g->entries);
  g_free(g);
}

static void dk_entry_free(gpointer p) {
  DkEntry *e = p;
  g_free(e->fname);
  g_free(e);
}

static DkEntry *_dk_lookup(Diskcache *dc, const char *hex, const char *fname) {
  DkGroup *g = g_hash_table_lookup(dc->groups, hex);
  return g != NULL ? g_hash_table_lookup(g->entries, fname) : NULL;
}

static void _dk_touch(Diskcache *dc, DkEntry *e) {
  g_queue_unlink(&dc->lru, &e->link);
  g_queue_push_head_link(&dc->lru, &e->link);
}

/* A new entry, not yet in the LRU list. */
static DkEntry *_dk_add(Diskcache *dc, const char *hex, const char *fname, guint64 size) {
  DkGroup *g = g_hash_table_lookup(dc->groups, hex);
  if (g == NULL) {
    g = g_new0(DkGroup, 1);
    memcpy(g->hex, hex, sizeof g->hex);
    g->entries = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, dk_entry_free);
    g_hash_table_insert(dc->groups, g->hex, g);
  }
  DkEntry *e = g_new0(DkEntry, 1);
  e->group = g;
  e->fname = g_strdup(fname);
  e->size = size;
  e->gen = ++dc->next_gen;
  e->link.data = e;
  g_hash_table_insert(g->entries, e->fname, e);
  dc->bytes += size;
  dc->count++;
  return e;
}

/* Drops e from the index; its path goes to victims (if not NULL) for the
 * caller to unlink once unlocked. */
static void _dk_drop(Diskcache *dc, DkEntry *e, GPtrArray *victims) {
  DkGroup *g = e->group;
  g_queue_unlink(&dc->lru, &e->link);
  dc->bytes -= e->size;
  dc->count--;
  if (victims != NULL)
    g_ptr_array_add(victims, g_strconcat(g->hex, "/", e->fname, NULL));
  g_hash_table_remove(g->entries, e->fname);
  if (g_hash_table_size(g->entries) == 0)
    g_hash_table_remove(dc->groups, g->hex);
}

/* Evicts from the LRU tail until stored + reserved bytes fit the bound and
 * at least want bytes were freed, never evicting keep. */
static void _dk_evict(Diskcache *dc, guint64 want, DkEntry *keep, GPtrArray *victims) {
  guint64 freed = 0;
  while (dc->lru.tail != NULL && dc->lru.tail->data != keep &&
         (dc->bytes + dc->reserved > dc->max_bytes || freed < want)) {
    DkEntry *e = dc->lru.tail->data;
    freed += e->size;
    _dk_drop(dc, e, victims);
  }
}

/* ---- open: rebuild the index ---- */

typedef struct {
  DkEntry *e;
  gint64 sec;
  glong nsec;
} DkScanned;

static gint dk_scanned_cmp(gconstpointer a, gconstpointer b) {
  const DkScanned *x = a, *y = b;
  if (x->sec != y->sec)
    return x->sec < y->sec ? -1 : 1;
  return x->nsec < y->nsec ? -1 : x->nsec > y->nsec;
}

static void dk_scan_group(Diskcache *dc, const char *hex, GArray *scanned) {
  int fd = openat(dc->dirfd, hex, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (d == NULL) {
    if (fd >= 0)
      close(fd);
    return;
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    struct stat st;
    if (g_str_has_prefix(de->d_name, DK_TMP_PREFIX)) {
      unlinkat(dirfd(d), de->d_name, 0);
      continue;
    }
    if (!dk_entry_name_ok(de->d_name) ||
        fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    DkScanned s = {_dk_add(dc, hex, de->d_name, (guint64)st.st_size), st.st_mtim.tv_sec,
                   st.st_mtim.tv_nsec};
    g_array_append_val(scanned, s);
  }
  closedir(d);
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
  g_autoptr(GArray) scanned = g_array_new(FALSE, FALSE, sizeof(DkScanned));
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    if (dk_group_dir_ok(de->d_name))
      dk_scan_group(dc, de->d_name, scanned);
  closedir(d);
  g_array_sort(scanned, dk_scanned_cmp);
  for (guint i = 0; i < scanned->len; i++)
    g_queue_push_head_link(&dc->lru, &g_array_index(scanned, DkScanned, i).e->link);
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
  int lfd = openat(dfd, DK_LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK)
      g_set_error(error, DISKCACHE_ERROR, DISKCACHE_ERROR_LOCKED,
                  "cache directory %s is in use by another imapfuse mount", dir);
    else
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                  "cannot lock cache directory %s: %s", dir, g_strerror(err));
    if (lfd >= 0)
      close(lfd);
    close(dfd);
    return NULL;
  }
  Diskcache *dc = g_new0(Diskcache, 1);
  dc->dir = g_strdup(dir);
  dc->dirfd = dfd;
  dc->lockfd = lfd;
  dc->max_bytes = max_bytes;
  g_mutex_init(&dc->lock);
  dc->groups = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, dk_group_free);
  g_queue_init(&dc->lru);
  if (!dk_scan(dc, error)) {
    diskcache_close(dc);
    return NULL;
  }
  g_autoptr(GPtrArray) victims = g_ptr_array_new_with_free_func(g_free);
  _dk_evict(dc, 0, NULL, victims); /* the bound may have shrunk; no other thread yet */
  dk_unlink_all(dc, victims);
  return dc;
}

void diskcache_close(Diskcache *dc) {
  if (dc == NULL)
    return;
  g_hash_table_unref(dc->groups);
  g_mutex_clear(&dc->lock);
  close(dc->dirfd);
  close(dc->lockfd); /* releases the flock */
  g_free(dc->dir);
  g_free(dc);
}

GBytes *diskcache_get(Diskcache *dc, const char *group, const char *name) {
  char hex[DK_GROUP_HEX + 1];
  dk_group_hex(group, hex);
  g_autofree char *fname = dk_file_name(name);
  guint64 gen = 0;
  g_mutex_lock(&dc->lock);
  DkEntry *e = _dk_lookup(dc, hex, fname);
  if (e != NULL) {
    _dk_touch(dc, e);
    gen = e->gen;
  }
  g_mutex_unlock(&dc->lock);
  if (gen == 0)
    return NULL;

  g_autofree char *rel = g_strconcat(hex, "/", fname, NULL);
  GBytes *out = NULL;
  DkRead r = dk_read_entry(dc, rel, group, name, &out);
  if (r == DK_READ_OK)
    return out;
  /* Forget it, unless it was dropped and stored again meanwhile. */
  gboolean forget = FALSE;
  g_mutex_lock(&dc->lock);
  e = _dk_lookup(dc, hex, fname);
  if (e != NULL && e->gen == gen) {
    _dk_drop(dc, e, NULL);
    forget = TRUE;
  }
  g_mutex_unlock(&dc->lock);
  if (forget && r == DK_READ_DAMAGED) {
    g_debug("disk cache: damaged entry %s/%s deleted", dc->dir, rel);
    unlinkat(dc->dirfd, rel, 0);
  }
  return NULL;
}

gboolean diskcache_contains(Diskcache *dc, const char *group, const char *name) {
  char hex[DK_GROUP_HEX + 1];
  dk_group_hex(group, hex);
  g_autofree char *fname = dk_file_name(name);
  g_mutex_lock(&dc->lock);
  gboolean found = _dk_lookup(dc, hex, fname) != NULL;
  g_mutex_unlock(&dc->lock);
  return found;
}

gboolean diskcache_put(Diskcache *dc, const char *group, const char *name, GBytes *data,
                       GError **error) {
  gsize dlen;
  const void *d = g_bytes_get_data(data, &dlen);
  gsize glen = strlen(group), nlen = strlen(name);
  if (glen > G_MAXUINT32 || nlen > G_MAXUINT32)
    return TRUE;
  guint64 size = (guint64)DK_HDR + glen + nlen + dlen;
  if (size > dc->max_bytes)
    return TRUE;
  char hex[DK_GROUP_HEX + 1];
  dk_group_hex(group, hex);
  g_autofree char *fname = dk_file_name(name);
  g_autoptr(GPtrArray) victims = g_ptr_array_new_with_free_func(g_free);

  g_mutex_lock(&dc->lock);
  DkEntry *e = _dk_lookup(dc, hex, fname);
  if (e != NULL) {
    _dk_touch(dc, e);
    g_mutex_unlock(&dc->lock);
    g_autofree char *rel = g_strconcat(hex, "/", fname, NULL);
    utimensat(dc->dirfd, rel, dk_mtime_now, AT_SYMLINK_NOFOLLOW);
    return TRUE;
  }
  dc->reserved += size;
  _dk_evict(dc, 0, NULL, victims);
  g_mutex_unlock(&dc->lock);
  dk_unlink_all(dc, victims);

  guint8 hdr[DK_HDR];
  memcpy(hdr, DK_MAGIC, 4);
  le_put32(hdr + 4, DK_VERSION);
  le_put64(hdr + 8, dlen);
  le_put32(hdr + 16, (guint32)glen);
  le_put32(hdr + 20, (guint32)nlen);
  int err = 0;
  for (int tries = 0; tries < DK_WRITE_TRIES; tries++) {
    struct iovec iov[4] = {
        {hdr, DK_HDR}, {(void *)group, glen}, {(void *)name, nlen}, {(void *)d, dlen}};
    err = dk_write_file(dc, hex, fname, iov, 4);
    if (err == ENOENT) {
      /* First entry of the group, or remove_group() raced with us. */
      int merr = dk_make_group_dir(dc, hex, group);
      if (merr != 0) {
        err = merr;
        break;
      }
    } else if (err == ENOSPC || err == EDQUOT) {
      /* The disk filled up below our bound: give back room and retry,
       * unless even an empty cache would not make the entry fit. */
      struct statvfs vfs;
      guint64 avail = fstatvfs(dc->dirfd, &vfs) == 0 ? (guint64)vfs.f_bavail * vfs.f_frsize : 0;
      g_ptr_array_set_size(victims, 0);
      g_mutex_lock(&dc->lock);
      if (size <= avail + dc->bytes)
        _dk_evict(dc, size, NULL, victims);
      g_mutex_unlock(&dc->lock);
      if (victims->len == 0)
        break;
      dk_unlink_all(dc, victims);
    } else {
      break;
    }
  }

  g_ptr_array_set_size(victims, 0);
  g_mutex_lock(&dc->lock);
  dc->reserved -= size;
  if (err == 0) {
    e = _dk_lookup(dc, hex, fname);
    if (e != NULL) { /* another thread stored the same bytes meanwhile */
      _dk_touch(dc, e);
    } else {
      e = _dk_add(dc, hex, fname, size);
      g_queue_push_head_link(&dc->lru, &e->link);
    }
    _dk_evict(dc, 0, e, victims);
  }
  g_mutex_unlock(&dc->lock);
  dk_unlink_all(dc, victims);
  if (err != 0) {
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot write to cache directory %s: %s", dc->dir, g_strerror(err));
    return FALSE;
  }
  return TRUE;
}

void diskcache_remove_group(Diskcache *dc, const char *group) {
  char hex[DK_GROUP_HEX + 1];
  dk_group_hex(group, hex);
  g_mutex_lock(&dc->lock);
  DkGroup *g = g_hash_table_lookup(dc->groups, hex);
  if (g != NULL) {
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, g->entries);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
      DkEntry *e = v;
      g_queue_unlink(&dc->lru, &e->link);
      dc->bytes -= e->size;
      dc->count--;
    }
    g_hash_table_remove(dc->groups, hex);
  }
  g_mutex_unlock(&dc->lock);

  /* Everything in the directory goes, including temp files of puts in
   * flight (they notice and retry) and files the index never knew. */
  int fd = openat(dc->dirfd, hex, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (d == NULL) {
    if (fd >= 0)
      close(fd);
    return;
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
      unlinkat(dirfd(d), de->d_name, 0);
  closedir(d);
  unlinkat(dc->dirfd, hex, AT_REMOVEDIR); /* fails harmlessly if a put just refilled it */
}

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
