/* test_diskcache.c - the on-disk blob cache: round trips, persistence,
 * eviction order, copy forward, damage, locking, odd keys, threads, and
 * timings.
 *
 * Every test works in its own g_dir_make_tmp() directory and deletes it.
 * The cache directory holds "lock" and segment files "seg.<16 hex>"; the
 * tests that damage records know the record layout (a DK_TEST_HDR-byte
 * header, the group, the name, the data; the data length at byte 8; the
 * data's checksum at 24) and
 * that records are appended in put order.  Segments hold up to an eighth
 * of the bound, so a small bound puts each entry in a segment of its own.
 * Timings are printed with g_test_message(), never asserted.
 * /diskcache/enospc runs only when IMAPFUSE_TEST_SMALLFS names a directory
 * on a small filesystem (e.g. a 4 MB tmpfs); it is skipped otherwise.
 */
#include "imapfuse/diskcache.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define DK_TEST_HDR 32 /* record header before the key; sizes below are computed with it */

/* ---- helpers ---- */

static char *dkt_tmpdir(void) {
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("diskcache-XXXXXX", &error);
  g_assert_no_error(error);
  return dir;
}

static void dkt_rm_rf(const char *path) {
  GDir *d = g_dir_open(path, 0, NULL);
  if (d != NULL) {
    const char *n;
    while ((n = g_dir_read_name(d)) != NULL) {
      g_autofree char *p = g_build_filename(path, n, NULL);
      if (g_file_test(p, G_FILE_TEST_IS_DIR) && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
        dkt_rm_rf(p);
      else
        g_unlink(p);
    }
    g_dir_close(d);
  }
  g_rmdir(path);
}

/* Deterministic bytes for a key, so any thread can check what it reads. */
static GBytes *dkt_data(const char *group, const char *name, gsize len) {
  guint32 x = g_str_hash(group) * 31u + g_str_hash(name) + (guint32)len;
  guint8 *p = g_malloc(len ? len : 1);
  for (gsize i = 0; i < len; i++) {
    x = x * 1664525u + 1013904223u;
    p[i] = (guint8)(x >> 24);
  }
  return g_bytes_new_take(p, len);
}

static guint64 dkt_entry_size(const char *group, const char *name, gsize len) {
  return DK_TEST_HDR + strlen(group) + strlen(name) + len;
}

static void dkt_put(Diskcache *dc, const char *group, const char *name, gsize len) {
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) b = dkt_data(group, name, len);
  g_assert_true(diskcache_put(dc, group, name, b, &error));
  g_assert_no_error(error);
}

static gboolean dkt_has(Diskcache *dc, const char *group, const char *name, gsize len) {
  g_autoptr(GBytes) got = diskcache_get(dc, group, name);
  if (got == NULL)
    return FALSE;
  g_autoptr(GBytes) want = dkt_data(group, name, len);
  g_assert_true(g_bytes_equal(got, want));
  return TRUE;
}

static gint dkt_strcmp(gconstpointer a, gconstpointer b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Segment files (paths, oldest first) in dir; *bytes their total size.
 * Asserts that nothing but "lock" and segments is there. */
static GPtrArray *dkt_segs(const char *dir, guint64 *bytes) {
  GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
  guint64 b = 0;
  GDir *d = g_dir_open(dir, 0, NULL);
  g_assert_nonnull(d);
  const char *n;
  while ((n = g_dir_read_name(d)) != NULL) {
    if (strcmp(n, "lock") == 0)
      continue;
    g_assert_true(g_str_has_prefix(n, "seg.") && strlen(n) == 4 + 16);
    g_autofree char *p = g_build_filename(dir, n, NULL);
    GStatBuf st;
    g_assert_cmpint(g_lstat(p, &st), ==, 0);
    g_assert_true(S_ISREG(st.st_mode));
    b += (guint64)st.st_size;
    g_ptr_array_add(out, g_steal_pointer(&p));
  }
  g_dir_close(d);
  g_ptr_array_sort(out, dkt_strcmp);
  if (bytes != NULL)
    *bytes = b;
  return out;
}

static guint64 dkt_file_size(const char *path) {
  GStatBuf st;
  g_assert_cmpint(g_stat(path, &st), ==, 0);
  return (guint64)st.st_size;
}

static Diskcache *dkt_open(const char *dir, guint64 max) {
  g_autoptr(GError) error = NULL;
  Diskcache *dc = diskcache_open(dir, max, &error);
  g_assert_no_error(error);
  g_assert_nonnull(dc);
  return dc;
}

/* The counted size is what is on disk: the segments, dead records included. */
static void dkt_assert_consistent(Diskcache *dc, const char *dir) {
  guint64 bytes;
  g_autoptr(GPtrArray) segs = dkt_segs(dir, &bytes);
  g_assert_cmpuint(bytes, ==, diskcache_size(dc));
}

/* Write system calls this process has made so far (/proc/self/io), or -1
 * where the kernel does not count them. */
static gint64 dkt_write_calls(void) {
  g_autofree char *text = NULL;
  if (!g_file_get_contents("/proc/self/io", &text, NULL, NULL))
    return -1;
  const char *p = strstr(text, "syscw:");
  return p != NULL ? g_ascii_strtoll(p + 6, NULL, 10) : -1;
}

/* n entries of one group for diskcache_put_many: names prefix + i (1 up),
 * lengths len_of(i), deterministic bytes (dkt_data). */
typedef struct {
  guint n;
  char **names;
  gsize *lens;
  GBytes **datas;
} DktBatch;

static DktBatch *dkt_batch(const char *group, const char *prefix, guint n,
                           gsize (*len_of)(guint)) {
  DktBatch *b = g_new0(DktBatch, 1);
  b->n = n;
  b->names = g_new(char *, n);
  b->lens = g_new(gsize, n);
  b->datas = g_new(GBytes *, n);
  for (guint i = 0; i < n; i++) {
    b->names[i] = g_strdup_printf("%s%u", prefix, i + 1);
    b->lens[i] = len_of(i);
    b->datas[i] = dkt_data(group, b->names[i], b->lens[i]);
  }
  return b;
}

static gboolean dkt_put_batch(Diskcache *dc, const char *group, const DktBatch *b,
                              GError **error) {
  return diskcache_put_many(dc, group, b->n, (const char *const *)b->names, b->datas, error);
}

static void dkt_batch_free(DktBatch *b) {
  for (guint i = 0; i < b->n; i++) {
    g_free(b->names[i]);
    g_bytes_unref(b->datas[i]);
  }
  g_free(b->names);
  g_free(b->lens);
  g_free(b->datas);
  g_free(b);
}

static gsize dkt_len_mixed(guint i) { return (i * 7919u) % 9000u; }
static gsize dkt_len_10k(guint i) { return (void)i, 10000; }
static gsize dkt_len_64k(guint i) { return (void)i, 64 * 1024; }

/* ---- tests ---- */

static void test_roundtrip(void) {
  g_autofree char *dir = dkt_tmpdir();
  g_autofree char *sub = g_build_filename(dir, "a", "b", "cache", NULL);
  Diskcache *dc = dkt_open(sub, 1 << 20);
  GStatBuf st;
  g_assert_cmpint(g_stat(sub, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0700);

  g_assert_null(diskcache_get(dc, "acct/INBOX/1", "1"));
  static const gsize lens[] = {0, 1, 100, 4096, 8192, 100000};
  for (guint i = 0; i < G_N_ELEMENTS(lens); i++) {
    g_autofree char *name = g_strdup_printf("%u", i + 1);
    dkt_put(dc, "acct/INBOX/1", name, lens[i]);
  }
  guint64 total = 0;
  for (guint i = 0; i < G_N_ELEMENTS(lens); i++) {
    g_autofree char *name = g_strdup_printf("%u", i + 1);
    g_assert_true(dkt_has(dc, "acct/INBOX/1", name, lens[i]));
    total += dkt_entry_size("acct/INBOX/1", name, lens[i]);
  }
  g_assert_null(diskcache_get(dc, "acct/INBOX/1", "7"));
  g_assert_null(diskcache_get(dc, "acct/INBOX/2", "1"));
  g_assert_true(diskcache_contains(dc, "acct/INBOX/1", "1"));
  g_assert_false(diskcache_contains(dc, "acct/INBOX/1", "7"));
  g_assert_false(diskcache_contains(dc, "acct/INBOX/2", "1"));
  g_assert_cmpuint(diskcache_count(dc), ==, G_N_ELEMENTS(lens));
  g_assert_cmpuint(diskcache_size(dc), ==, total);
  dkt_assert_consistent(dc, sub);

  /* Storing a key again changes nothing. */
  dkt_put(dc, "acct/INBOX/1", "3", 100);
  g_assert_cmpuint(diskcache_count(dc), ==, G_N_ELEMENTS(lens));
  g_assert_cmpuint(diskcache_size(dc), ==, total);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_persist(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  for (guint i = 0; i < 50; i++) {
    g_autofree char *name = g_strdup_printf("%u", i);
    dkt_put(dc, i % 2 ? "g/odd" : "g/even", name, 1000 + i);
  }
  guint64 size = diskcache_size(dc);
  diskcache_close(dc);

  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 50);
  g_assert_cmpuint(diskcache_size(dc), ==, size);
  for (guint i = 0; i < 50; i++) {
    g_autofree char *name = g_strdup_printf("%u", i);
    g_assert_true(dkt_has(dc, i % 2 ? "g/odd" : "g/even", name, 1000 + i));
  }
  g_assert_null(diskcache_get(dc, "g/odd", "0"));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* Room for exactly three entries of 1000 bytes named "a".."f". */
#define DKT_LRU_BOUND (3 * (DK_TEST_HDR + 1 + 1 + 1000))

static void test_lru(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, DKT_LRU_BOUND);
  dkt_put(dc, "g", "a", 1000);
  dkt_put(dc, "g", "b", 1000);
  dkt_put(dc, "g", "c", 1000);
  g_assert_cmpuint(diskcache_count(dc), ==, 3);
  g_assert_true(dkt_has(dc, "g", "a", 1000)); /* a is copied forward: the most recent */
  g_assert_true(diskcache_contains(dc, "g", "b")); /* not a use */
  dkt_put(dc, "g", "d", 1000);                /* evicts b */
  g_assert_false(diskcache_contains(dc, "g", "b"));
  g_assert_false(dkt_has(dc, "g", "b", 1000));
  g_assert_true(dkt_has(dc, "g", "c", 1000)); /* recent first: c d a */
  dkt_put(dc, "g", "a", 1000);                /* a put of a present key is a use: a c d */
  dkt_put(dc, "g", "e", 1000);                /* evicts d */
  g_assert_false(dkt_has(dc, "g", "d", 1000));
  g_assert_true(dkt_has(dc, "g", "a", 1000));
  g_assert_true(dkt_has(dc, "g", "c", 1000));
  g_assert_true(dkt_has(dc, "g", "e", 1000));
  g_assert_cmpuint(diskcache_count(dc), ==, 3);
  g_assert_cmpuint(diskcache_size(dc), <=, DKT_LRU_BOUND);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* Recency survives a restart (it is the order of the segments), and a
 * smaller bound at open evicts the oldest. */
static void test_lru_restart(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, DKT_LRU_BOUND);
  dkt_put(dc, "g", "a", 1000);
  dkt_put(dc, "g", "b", 1000);
  dkt_put(dc, "g", "c", 1000);
  g_assert_true(dkt_has(dc, "g", "a", 1000));
  diskcache_close(dc);

  dc = dkt_open(dir, DKT_LRU_BOUND);
  dkt_put(dc, "g", "d", 1000); /* b is the oldest */
  g_assert_false(dkt_has(dc, "g", "b", 1000));
  diskcache_close(dc);

  /* Order on disk now: c, a, d (d newest; the has() calls bumped only
   * entries that were present).  Shrink to one entry. */
  dc = dkt_open(dir, DKT_LRU_BOUND / 3);
  g_assert_cmpuint(diskcache_count(dc), ==, 1);
  g_assert_true(dkt_has(dc, "g", "d", 1000));
  dkt_assert_consistent(dc, dir);
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 1);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_bound(void) {
  g_autofree char *dir = dkt_tmpdir();
  const guint64 bound = 64 * 1024;
  Diskcache *dc = dkt_open(dir, bound);
  GRand *rng = g_rand_new_with_seed(42);
  for (guint i = 0; i < 400; i++) {
    g_autofree char *name = g_strdup_printf("%u", i);
    dkt_put(dc, "acct/box/7", name, (gsize)g_rand_int_range(rng, 0, 20000));
    g_assert_cmpuint(diskcache_size(dc), <=, bound);
    if (i % 50 == 0)
      dkt_assert_consistent(dc, dir);
  }
  dkt_assert_consistent(dc, dir);
  g_assert_cmpuint(diskcache_count(dc), >, 3);
  g_rand_free(rng);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_too_big(void) {
  g_autofree char *dir = dkt_tmpdir();
  const guint64 bound = 10000;
  Diskcache *dc = dkt_open(dir, bound);
  dkt_put(dc, "g", "small", 1000);
  /* A record of exactly the bound fits (after evicting all else: it gets a
   * segment of its own, and the size counts whole records); one byte more
   * does not. */
  gsize fit = bound - dkt_entry_size("g", "fit", 0);
  dkt_put(dc, "g", "huge", fit + 1);
  g_assert_null(diskcache_get(dc, "g", "huge"));
  g_assert_true(dkt_has(dc, "g", "small", 1000)); /* nothing was evicted for it */
  g_assert_cmpuint(diskcache_count(dc), ==, 1);
  dkt_put(dc, "g", "fit", fit);
  g_assert_true(dkt_has(dc, "g", "fit", fit));
  g_assert_false(dkt_has(dc, "g", "small", 1000));
  g_assert_cmpuint(diskcache_size(dc), ==, bound);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);

  /* A bound of 0 stores nothing. */
  dc = dkt_open(dir, 0);
  g_assert_cmpuint(diskcache_count(dc), ==, 0);
  dkt_put(dc, "g", "x", 0);
  g_assert_cmpuint(diskcache_count(dc), ==, 0);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_remove_group(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  for (guint i = 0; i < 20; i++) {
    g_autofree char *name = g_strdup_printf("%u", i);
    dkt_put(dc, "acct/INBOX/100", name, 500);
    dkt_put(dc, "acct/INBOX/101", name, 600);
  }
  guint64 size = diskcache_size(dc);
  diskcache_remove_group(dc, "acct/INBOX/100");
  diskcache_remove_group(dc, "acct/never-stored/1"); /* harmless, and writes nothing */
  g_assert_cmpuint(diskcache_count(dc), ==, 20);
  g_assert_false(dkt_has(dc, "acct/INBOX/100", "3", 500));
  g_assert_false(diskcache_contains(dc, "acct/INBOX/100", "4"));
  g_assert_true(dkt_has(dc, "acct/INBOX/101", "3", 600));
  /* The records stay as dead bytes; one tombstone was appended. */
  g_assert_cmpuint(diskcache_size(dc), ==, size + DK_TEST_HDR + strlen("acct/INBOX/100"));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);

  /* The tombstone keeps the group gone after a restart. */
  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 20);
  g_assert_false(dkt_has(dc, "acct/INBOX/100", "3", 500));
  g_assert_true(dkt_has(dc, "acct/INBOX/101", "3", 600));
  /* The group can be filled again, and that survives a restart. */
  dkt_put(dc, "acct/INBOX/100", "3", 500);
  g_assert_true(dkt_has(dc, "acct/INBOX/100", "3", 500));
  diskcache_close(dc);

  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 21);
  g_assert_true(dkt_has(dc, "acct/INBOX/100", "3", 500));
  g_assert_false(diskcache_contains(dc, "acct/INBOX/100", "4"));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

typedef enum { DKT_TRUNCATE, DKT_FLIP_MAGIC, DKT_FLIP_VERSION, DKT_FLIP_LENGTH, DKT_FLIP_KEY,
               DKT_APPEND, DKT_EMPTY, DKT_N_DAMAGE } DktDamage;

/* Damages, in place (the cache has the file open), a segment holding three
 * records of rec bytes each: the header and key kinds hit the middle
 * record, truncation the last one. */
static void dkt_damage(const char *path, DktDamage how, gsize rec) {
  int fd = open(path, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpuint(dkt_file_size(path), ==, 3 * rec);
  gsize at = 0;
  switch (how) {
  case DKT_TRUNCATE:
    g_assert_cmpint(ftruncate(fd, (off_t)(3 * rec - 1)), ==, 0);
    break;
  case DKT_FLIP_MAGIC:
    at = rec;
    break;
  case DKT_FLIP_VERSION:
    at = rec + 4;
    break;
  case DKT_FLIP_LENGTH:
    at = rec + 8;
    break;
  case DKT_FLIP_KEY:
    at = rec + DK_TEST_HDR + 2; /* a byte of the group name */
    break;
  case DKT_APPEND:
    g_assert_cmpint(pwrite(fd, "xIFDC", 5, (off_t)(3 * rec)), ==, 5);
    break;
  case DKT_EMPTY:
    g_assert_cmpint(ftruncate(fd, 0), ==, 0);
    break;
  default:
    g_assert_not_reached();
  }
  if (at != 0) {
    guint8 c;
    g_assert_cmpint(pread(fd, &c, 1, (off_t)at), ==, 1);
    c ^= 0x01;
    g_assert_cmpint(pwrite(fd, &c, 1, (off_t)at), ==, 1);
  }
  close(fd);
}

static void test_damaged(void) {
  static const char *const names[3] = {"41", "42", "43"};
  /* Which of the three survive, bit i for names[i]: read in the same
   * session (a damaged record is a miss), and after a restart (the scan
   * cuts the segment at the first bad record: what precedes it survives). */
  static const struct {
    guint session, restart;
  } want[DKT_N_DAMAGE] = {
      [DKT_TRUNCATE] = {3, 3},     [DKT_FLIP_MAGIC] = {5, 1}, [DKT_FLIP_VERSION] = {5, 1},
      [DKT_FLIP_LENGTH] = {5, 1},  [DKT_FLIP_KEY] = {5, 1},   [DKT_APPEND] = {7, 7},
      [DKT_EMPTY] = {0, 0},
  };
  const char *g = "acct/INBOX/9";
  const gsize rec = dkt_entry_size(g, "41", 3000);
  for (int how = 0; how < DKT_N_DAMAGE; how++) {
    g_test_message("damage %d", how);
    g_autofree char *dir = dkt_tmpdir();
    Diskcache *dc = dkt_open(dir, 1 << 20);
    for (guint i = 0; i < 3; i++)
      dkt_put(dc, g, names[i], 3000);
    g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
    g_assert_cmpuint(segs->len, ==, 1);
    dkt_damage(g_ptr_array_index(segs, 0), how, rec);
    for (guint i = 0; i < 3; i++)
      g_assert_cmpint(dkt_has(dc, g, names[i], 3000), ==, (want[how].session >> i) & 1);
    g_assert_cmpuint(diskcache_count(dc), ==, __builtin_popcount(want[how].session));
    diskcache_close(dc);

    dc = dkt_open(dir, 1 << 20);
    for (guint i = 0; i < 3; i++)
      g_assert_cmpint(dkt_has(dc, g, names[i], 3000), ==, (want[how].restart >> i) & 1);
    g_assert_cmpuint(diskcache_count(dc), ==, __builtin_popcount(want[how].restart));
    g_assert_cmpuint(diskcache_size(dc), ==, diskcache_count(dc) * rec); /* cut after them */
    dkt_assert_consistent(dc, dir);
    /* And the lost keys can be stored again. */
    for (guint i = 0; i < 3; i++)
      dkt_put(dc, g, names[i], 3000);
    for (guint i = 0; i < 3; i++)
      g_assert_true(dkt_has(dc, g, names[i], 3000));
    diskcache_close(dc);
    dc = dkt_open(dir, 1 << 20);
    g_assert_cmpuint(diskcache_count(dc), ==, 3);
    dkt_assert_consistent(dc, dir);
    diskcache_close(dc);
    dkt_rm_rf(dir);
  }
}

/* A segment file deleted behind the cache's back: its entries may still be
 * read through the open fd, or be misses; after a restart they are gone --
 * except one that a hit copied forward into a live segment. */
static void test_vanished(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 64 * 1024); /* segments of 8 KiB: one entry each */
  for (guint i = 0; i < 4; i++) {
    char name[16];
    g_snprintf(name, sizeof name, "%u", i);
    dkt_put(dc, "g", name, 5000);
  }
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 4);
  g_assert_cmpint(g_unlink(g_ptr_array_index(segs, 1)), ==, 0); /* entry "1" */
  g_assert_cmpint(g_unlink(g_ptr_array_index(segs, 3)), ==, 0); /* "3", being appended to */
  dkt_put(dc, "g", "4", 100); /* appended to the deleted file */
  dkt_has(dc, "g", "3", 5000); /* either answer; no crash */
  dkt_has(dc, "g", "4", 100);
  dkt_has(dc, "g", "1", 5000);
  g_assert_true(dkt_has(dc, "g", "0", 5000)); /* copied forward */
  g_assert_true(dkt_has(dc, "g", "2", 5000));
  diskcache_close(dc);

  dc = dkt_open(dir, 64 * 1024);
  dkt_has(dc, "g", "1", 5000);                 /* either: copied forward by the hit above */
  g_assert_false(dkt_has(dc, "g", "3", 5000)); /* newest segment: never copied forward */
  g_assert_false(dkt_has(dc, "g", "4", 100));
  g_assert_true(dkt_has(dc, "g", "0", 5000));
  g_assert_true(dkt_has(dc, "g", "2", 5000));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* Left by the old format or a crash: gone at open; good records stay. */
static void test_tmp_cleanup(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  dkt_put(dc, "g", "1", 100);
  dkt_put(dc, "g", "2", 100);
  diskcache_close(dc);
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 1);
  const char *seg = g_ptr_array_index(segs, 0);
  guint64 size = dkt_file_size(seg);

  /* The old format's group directory with its files, temporary files. */
  g_autofree char *old = g_build_filename(dir, "0123456789abcdef0123456789abcdef", NULL);
  g_assert_cmpint(g_mkdir(old, 0700), ==, 0);
  g_autofree char *oldg = g_build_filename(old, "#group", NULL);
  g_autofree char *olde = g_build_filename(old, "17", NULL);
  g_autofree char *oldt = g_build_filename(old, ".tmp.1f", NULL);
  g_assert_true(g_file_set_contents(oldg, "acct/INBOX/1", -1, NULL));
  g_assert_true(g_file_set_contents(olde, "IFDC....", -1, NULL));
  g_assert_true(g_file_set_contents(oldt, "partial", -1, NULL));
  /* A temporary file of the old format; what is not the cache's: a file
   * and a directory of someone's, a directory and a symlink named like
   * segments (its target outside the cache). */
  g_autofree char *stray = g_build_filename(dir, ".tmp.deadbeef", NULL);
  g_assert_true(g_file_set_contents(stray, "", -1, NULL));
  g_autofree char *theirs_tmp = g_build_filename(dir, ".tmp.notes", NULL); /* not hex */
  g_assert_true(g_file_set_contents(theirs_tmp, "mine", -1, NULL));
  g_autofree char *notes = g_build_filename(dir, "notes.txt", NULL);
  g_assert_true(g_file_set_contents(notes, "important", -1, NULL));
  g_autofree char *mine = g_build_filename(dir, "keep", "file", NULL);
  g_assert_cmpint(g_mkdir_with_parents(mine, 0700), ==, 0);
  g_autofree char *hexdir = g_build_filename(dir, "fedcba9876543210fedcba9876543210", NULL);
  g_assert_cmpint(g_mkdir(hexdir, 0700), ==, 0); /* no #group: not the old format's */
  g_autofree char *segdir = g_build_filename(dir, "seg.00000000000000f0", "sub", NULL);
  g_assert_cmpint(g_mkdir_with_parents(segdir, 0700), ==, 0);
  g_autofree char *outside = g_strconcat(dir, ".outside", NULL);
  g_assert_true(g_file_set_contents(outside, "keep me", -1, NULL));
  g_autofree char *link = g_build_filename(dir, "seg.00000000000000f1", NULL);
  g_assert_cmpint(symlink(outside, link), ==, 0);
  /* A crash in the middle of an append: half a record at the end. */
  g_autofree char *buf = NULL;
  gsize len;
  g_assert_true(g_file_get_contents(seg, &buf, &len, NULL));
  FILE *f = fopen(seg, "ab");
  g_assert_nonnull(f);
  g_assert_cmpuint(fwrite(buf, 1, len / 4, f), ==, len / 4); /* a whole header and then some */
  fclose(f);

  dc = dkt_open(dir, 1 << 20);
  g_assert_false(g_file_test(old, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(stray, G_FILE_TEST_EXISTS));
  g_assert_true(g_file_test(link, G_FILE_TEST_IS_SYMLINK));
  g_assert_true(g_file_test(segdir, G_FILE_TEST_IS_DIR));
  g_assert_true(g_file_test(notes, G_FILE_TEST_IS_REGULAR));
  g_assert_true(g_file_test(mine, G_FILE_TEST_IS_DIR));
  g_assert_true(g_file_test(hexdir, G_FILE_TEST_IS_DIR));
  g_assert_true(g_file_test(outside, G_FILE_TEST_IS_REGULAR));
  const char *example = NULL;
  g_assert_cmpuint(diskcache_foreign(dc, &example), ==, 6);
  g_assert_true(g_file_test(theirs_tmp, G_FILE_TEST_IS_REGULAR));
  g_assert_nonnull(example);
  g_assert_cmpuint(dkt_file_size(seg), ==, size);
  g_assert_cmpuint(diskcache_count(dc), ==, 2);
  g_assert_true(dkt_has(dc, "g", "1", 100));
  g_assert_true(dkt_has(dc, "g", "2", 100));
  g_assert_cmpuint(dkt_file_size(seg) + dkt_file_size(g_ptr_array_index(segs, 0)), ==,
                   2 * diskcache_size(dc)); /* only the segment counts */
  g_unlink(link);
  g_unlink(theirs_tmp);
  dkt_rm_rf(segdir);
  g_unlink(notes);
  dkt_rm_rf(mine);
  dkt_rm_rf(hexdir);
  g_autofree char *keep = g_build_filename(dir, "keep", NULL);
  g_autofree char *segdir0 = g_build_filename(dir, "seg.00000000000000f0", NULL);
  g_rmdir(keep);
  g_rmdir(segdir0);
  dkt_assert_consistent(dc, dir); /* also: nothing but lock and segments left */
  /* Appends go on after the cut. */
  dkt_put(dc, "g", "3", 100);
  diskcache_close(dc);
  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 3);
  g_assert_true(dkt_has(dc, "g", "3", 100));
  diskcache_close(dc);
  g_unlink(outside);
  dkt_rm_rf(dir);
}

/* A hit on an old entry copies it forward, which protects it from the next
 * eviction; a hit on a recent one writes nothing. */
static void test_copy_forward(void) {
  const guint64 rec = dkt_entry_size("g", "e00", 1000);
  const guint64 bound = 20 * rec; /* segments of 2.5 records: two in each */
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, bound);
  char name[16];
  for (guint i = 0; i < 16; i++) {
    g_snprintf(name, sizeof name, "e%02u", i);
    dkt_put(dc, "g", name, 1000);
  }
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 8);
  g_assert_cmpuint(diskcache_size(dc), ==, 16 * rec);
  g_assert_true(dkt_has(dc, "g", "e15", 1000)); /* newest segment: stays */
  g_assert_true(dkt_has(dc, "g", "e09", 1000)); /* newer half: stays */
  g_assert_cmpuint(diskcache_size(dc), ==, 16 * rec);
  g_assert_true(dkt_has(dc, "g", "e00", 1000)); /* oldest: copied forward */
  g_assert_cmpuint(diskcache_size(dc), ==, 17 * rec); /* the old copy is dead bytes */
  g_assert_cmpuint(diskcache_count(dc), ==, 16);
  for (guint i = 16; i < 20; i++) {
    g_snprintf(name, sizeof name, "e%02u", i);
    dkt_put(dc, "g", name, 1000);
  }
  /* The last put evicted the oldest segment: e00's dead copy and e01. */
  g_assert_true(diskcache_contains(dc, "g", "e00"));
  g_assert_false(diskcache_contains(dc, "g", "e01"));
  g_assert_true(diskcache_contains(dc, "g", "e02"));
  g_assert_cmpuint(diskcache_count(dc), ==, 19);
  g_assert_cmpuint(diskcache_size(dc), <=, bound);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);

  dc = dkt_open(dir, bound);
  g_assert_cmpuint(diskcache_count(dc), ==, 19);
  g_assert_true(dkt_has(dc, "g", "e00", 1000));
  g_assert_false(dkt_has(dc, "g", "e01", 1000));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* A record larger than a segment's limit gets a segment to itself. */
static void test_big_record(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20); /* segments of 128 KiB */
  dkt_put(dc, "g", "small1", 10000);
  dkt_put(dc, "g", "big", 300000);
  dkt_put(dc, "g", "small2", 10000);
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 3);
  g_assert_cmpuint(dkt_file_size(g_ptr_array_index(segs, 1)), ==,
                   dkt_entry_size("g", "big", 300000));
  g_assert_true(dkt_has(dc, "g", "big", 300000));
  g_assert_true(dkt_has(dc, "g", "small2", 10000));
  diskcache_close(dc);
  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 3);
  g_assert_true(dkt_has(dc, "g", "big", 300000));
  g_assert_true(dkt_has(dc, "g", "small1", 10000));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* Many records, replaced, copied forward and tombstoned, read back by the
 * scan at open exactly as the index had them. */
static void test_scan_many(void) {
  const guint n = 20000, groups = 10;
  g_autofree char *dir = dkt_tmpdir();
  const guint64 bound = 8 << 20; /* about 6 MB stored: more than half full */
  Diskcache *dc = dkt_open(dir, bound);
  char group[32], name[16];
  for (guint i = 0; i < n; i++) {
    g_snprintf(group, sizeof group, "acct/box%u/1", i % groups);
    g_snprintf(name, sizeof name, "%u", i);
    dkt_put(dc, group, name, i % 500);
  }
  diskcache_remove_group(dc, "acct/box3/1");
  guint64 before = diskcache_size(dc);
  for (guint i = 0; i < n; i += 7) { /* the older ones are copied forward */
    g_snprintf(group, sizeof group, "acct/box%u/1", i % groups);
    g_snprintf(name, sizeof name, "%u", i);
    g_assert_cmpint(dkt_has(dc, group, name, i % 500), ==, i % groups != 3);
  }
  g_assert_cmpuint(diskcache_size(dc), >, before);
  dkt_put(dc, "acct/box3/1", "3", 3);
  guint count = diskcache_count(dc);
  guint64 size = diskcache_size(dc);
  g_assert_cmpuint(count, ==, n - n / groups + 1);
  diskcache_close(dc);

  gint64 t0 = g_get_monotonic_time();
  dc = dkt_open(dir, bound);
  gint64 t1 = g_get_monotonic_time();
  g_test_message("scan of about %u records (%" G_GUINT64_FORMAT " bytes): %.3f s", n, size,
                 (t1 - t0) / 1e6);
  g_assert_cmpuint(diskcache_count(dc), ==, count);
  g_assert_cmpuint(diskcache_size(dc), ==, size);
  for (guint i = 0; i < n; i++) {
    g_snprintf(group, sizeof group, "acct/box%u/1", i % groups);
    g_snprintf(name, sizeof name, "%u", i);
    g_assert_cmpint(diskcache_contains(dc, group, name), ==, i % groups != 3 || i == 3);
  }
  for (guint i = 1; i < n; i += 13) {
    g_snprintf(group, sizeof group, "acct/box%u/1", i % groups);
    g_snprintf(name, sizeof name, "%u", i);
    g_assert_cmpint(dkt_has(dc, group, name, i % 500), ==, i % groups != 3 || i == 3);
  }
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_locked(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  g_autoptr(GError) error = NULL;
  Diskcache *dc2 = diskcache_open(dir, 1 << 20, &error);
  g_assert_null(dc2);
  g_assert_error(error, DISKCACHE_ERROR, DISKCACHE_ERROR_LOCKED);
  g_assert_nonnull(strstr(error->message, dir));
  g_test_message("second open: %s", error->message);
  diskcache_close(dc);
  dc2 = dkt_open(dir, 1 << 20); /* free again */
  diskcache_close(dc2);

  /* A path that cannot be a directory. */
  g_clear_error(&error);
  g_autofree char *file = g_build_filename(dir, "plain", NULL);
  g_assert_true(g_file_set_contents(file, "", -1, NULL));
  g_autofree char *below = g_build_filename(file, "cache", NULL);
  g_assert_null(diskcache_open(below, 1 << 20, &error));
  g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_NOTDIR);
  dkt_rm_rf(dir);
}

static void test_keys(void) {
  g_autofree char *long1 = g_strnfill(300, 'x');
  g_autofree char *long2 = g_strconcat(long1, "y", NULL);
  g_autofree char *long3 = g_strnfill(5000, '/');
  g_autofree char *edge = g_strnfill(128, 'e'); /* right at the escaping limit */
  g_autofree char *edge1 = g_strnfill(129, 'e');
  g_autofree char *edgepct = g_strnfill(43, ' '); /* 129 bytes once escaped */
  const char *groups[] = {"acct/INBOX/1", "acct/Sent Items/2", "acct/Réunions/台北/3",
                          "..", "../../etc", "", "/", long3};
  const char *names[] = {"1", "1234.c5", "..", ".", "", "a/b", "a%2Fb", "%", "%25",
                         " ", "a b", "日本語", "#group", ".tmp.1", "lock", "~", long1, long2,
                         long3, edge, edge1, edgepct, "\x01\x7f\xff"};
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 64 << 20);
  for (guint g = 0; g < G_N_ELEMENTS(groups); g++)
    for (guint n = 0; n < G_N_ELEMENTS(names); n++)
      dkt_put(dc, groups[g], names[n], 10 + g * 7 + n);
  const guint total = G_N_ELEMENTS(groups) * G_N_ELEMENTS(names);
  g_assert_cmpuint(diskcache_count(dc), ==, total);
  for (int pass = 0; pass < 2; pass++) {
    for (guint g = 0; g < G_N_ELEMENTS(groups); g++)
      for (guint n = 0; n < G_N_ELEMENTS(names); n++)
        g_assert_true(dkt_has(dc, groups[g], names[n], 10 + g * 7 + n));
    dkt_assert_consistent(dc, dir); /* also: every file is inside dir */
    diskcache_close(dc);
    dc = dkt_open(dir, 64 << 20);
    g_assert_cmpuint(diskcache_count(dc), ==, total);
  }
  g_assert_null(diskcache_get(dc, "acct/INBOX/1", "a%2"));
  g_assert_null(diskcache_get(dc, "acct/INBOX/1", long3 + 1));
  diskcache_remove_group(dc, "..");
  g_assert_cmpuint(diskcache_count(dc), ==, total - G_N_ELEMENTS(names));
  g_assert_true(dkt_has(dc, "../../etc", "..", 10 + 4 * 7 + 2));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* ---- threads ---- */

#define DKT_THREADS 8
#define DKT_OPS 1500
#define DKT_KEYS 24

typedef struct {
  Diskcache *dc;
  guint seed;
  guint hits;
} DktWorker;

static gpointer dkt_worker(gpointer p) {
  DktWorker *w = p;
  GRand *rng = g_rand_new_with_seed(w->seed);
  for (guint i = 0; i < DKT_OPS; i++) {
    guint k = (guint)g_rand_int_range(rng, 0, DKT_KEYS);
    char group[32], name[16];
    g_snprintf(group, sizeof group, "acct/box %u/1", k % 4);
    g_snprintf(name, sizeof name, "%u", k);
    gsize len = 1000 + k * 50;
    guint op = (guint)g_rand_int_range(rng, 0, 100);
    if (op < 45) {
      g_autoptr(GBytes) b = dkt_data(group, name, len);
      g_autoptr(GError) error = NULL;
      g_assert_true(diskcache_put(w->dc, group, name, b, &error));
    } else if (op < 99) {
      w->hits += dkt_has(w->dc, group, name, len); /* asserts the contents */
    } else {
      diskcache_remove_group(w->dc, group);
    }
  }
  g_rand_free(rng);
  return NULL;
}

static void test_threads(void) {
  g_autofree char *dir = dkt_tmpdir();
  const guint64 bound = 16 * 1024; /* a handful of entries: constant eviction */
  Diskcache *dc = dkt_open(dir, bound);
  GThread *t[DKT_THREADS];
  DktWorker w[DKT_THREADS];
  for (guint i = 0; i < DKT_THREADS; i++) {
    w[i] = (DktWorker){dc, 1000 + i, 0};
    t[i] = g_thread_new("dkt", dkt_worker, &w[i]);
  }
  guint hits = 0;
  for (guint i = 0; i < DKT_THREADS; i++) {
    g_thread_join(t[i]);
    hits += w[i].hits;
  }
  g_test_message("%u threads x %u ops: %u hits, %u entries, %" G_GUINT64_FORMAT " bytes",
                 DKT_THREADS, DKT_OPS, hits, diskcache_count(dc), diskcache_size(dc));
  g_assert_cmpuint(diskcache_size(dc), <=, bound);
  dkt_assert_consistent(dc, dir); /* no write in flight now: exact */
  diskcache_close(dc);
  dc = dkt_open(dir, bound);
  g_assert_cmpuint(diskcache_size(dc), <=, bound);
  dkt_assert_consistent(dc, dir);
  for (guint k = 0; k < DKT_KEYS; k++) {
    char group[32], name[16];
    g_snprintf(group, sizeof group, "acct/box %u/1", k % 4);
    g_snprintf(name, sizeof name, "%u", k);
    dkt_has(dc, group, name, 1000 + k * 50);
  }
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* ---- timings ---- */

#define DKT_PERF_N 10000
#define DKT_PERF_LEN 8192
#define DKT_PERF_REC (DKT_PERF_LEN + 64) /* about a record: header, key, data */

/* What the filesystem itself costs for the same work, two ways: per entry
 * a file (create + write + close + rename, then open + fstat + read +
 * close: the old one-file-per-entry cache), and one file appended to
 * (a pwrite per entry, then a pread per entry: the least a log can do). */
static void dkt_floor(const char *dir, const char *tag, double t[4]) {
  g_autofree char *sub = g_build_filename(dir, tag, NULL);
  g_assert_cmpint(g_mkdir(sub, 0700), ==, 0);
  int dfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  g_assert_cmpint(dfd, >=, 0);
  static guint8 buf[DKT_PERF_REC];
  char name[32], tmp[32];
  gint64 t0 = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_snprintf(tmp, sizeof tmp, ".tmp.%u", i + 1);
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(fd, buf, DKT_PERF_REC), ==, DKT_PERF_REC);
    close(fd);
    g_assert_cmpint(renameat(dfd, tmp, dfd, name), ==, 0);
  }
  gint64 t1 = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++) {
    struct stat st;
    g_snprintf(name, sizeof name, "%u", i + 1);
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(fstat(fd, &st), ==, 0);
    g_assert_cmpint(read(fd, buf, sizeof buf), ==, st.st_size);
    close(fd);
  }
  gint64 t2 = g_get_monotonic_time();
  int fd = openat(dfd, "log", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  g_assert_cmpint(fd, >=, 0);
  for (guint i = 0; i < DKT_PERF_N; i++)
    g_assert_cmpint(pwrite(fd, buf, DKT_PERF_REC, (off_t)i * DKT_PERF_REC), ==, DKT_PERF_REC);
  gint64 t3 = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++)
    g_assert_cmpint(pread(fd, buf, DKT_PERF_REC, (off_t)i * DKT_PERF_REC), ==, DKT_PERF_REC);
  gint64 t4 = g_get_monotonic_time();
  close(fd);
  close(dfd);
  t[0] = (t1 - t0) / 1e6;
  t[1] = (t2 - t1) / 1e6;
  t[2] = (t3 - t2) / 1e6;
  t[3] = (t4 - t3) / 1e6;
}

static void test_perf(void) {
  g_autofree char *dir = dkt_tmpdir();
  /* Run once before and once after: whichever runs first on a busy disk
   * tends to pay more, so the two bracket the cache's numbers. */
  double fl[2][4];
  dkt_floor(dir, "floor1", fl[0]);
  g_autofree char *cdir = g_build_filename(dir, "cache", NULL);
  Diskcache *dc = dkt_open(cdir, G_MAXUINT64);
  GBytes **data = g_new(GBytes *, DKT_PERF_N);
  char name[16];
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    data[i] = dkt_data("acct/INBOX/1", name, DKT_PERF_LEN);
  }
  /* Unbounded: the cache is never half full, so no hit is copied forward. */
  gint64 t[5];
  t[0] = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_assert_true(diskcache_put(dc, "acct/INBOX/1", name, data[i], NULL));
  }
  t[1] = g_get_monotonic_time();
  guint64 got = 0;
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    GBytes *b = diskcache_get(dc, "acct/INBOX/1", name);
    g_assert_nonnull(b);
    got += g_bytes_get_size(b);
    g_bytes_unref(b);
  }
  t[2] = g_get_monotonic_time();
  g_assert_cmpuint(got, ==, (guint64)DKT_PERF_N * DKT_PERF_LEN);
  diskcache_close(dc);
  t[3] = g_get_monotonic_time();
  dc = dkt_open(cdir, G_MAXUINT64);
  t[4] = g_get_monotonic_time();
  g_assert_cmpuint(diskcache_count(dc), ==, DKT_PERF_N);
  /* Spot-check the contents once, outside the timed loops. */
  for (guint i = 0; i < DKT_PERF_N; i += 997) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_autoptr(GBytes) b = diskcache_get(dc, "acct/INBOX/1", name);
    g_assert_true(g_bytes_equal(b, data[i]));
  }
  dkt_floor(dir, "floor2", fl[1]);
  g_test_message("%u x %u B: put %.3f s (%.1f us each), get %.3f s (%.1f us each), "
                 "reopen (scan) %.3f s",
                 DKT_PERF_N, DKT_PERF_LEN, (t[1] - t[0]) / 1e6,
                 (double)(t[1] - t[0]) / DKT_PERF_N, (t[2] - t[1]) / 1e6,
                 (double)(t[2] - t[1]) / DKT_PERF_N, (t[4] - t[3]) / 1e6);
  g_test_message("filesystem floor (before/after): file per entry: put %.3f/%.3f s, "
                 "get %.3f/%.3f s; one appended file: put %.3f/%.3f s, get %.3f/%.3f s",
                 fl[0][0], fl[1][0], fl[0][1], fl[1][1], fl[0][2], fl[1][2], fl[0][3],
                 fl[1][3]);
  diskcache_close(dc);
  for (guint i = 0; i < DKT_PERF_N; i++)
    g_bytes_unref(data[i]);
  g_free(data);
  dkt_rm_rf(dir);
}

/* ---- a full disk ---- */

static void test_enospc(void) {
  const char *fs = g_getenv("IMAPFUSE_TEST_SMALLFS");
  if (fs == NULL) {
    g_test_skip("set IMAPFUSE_TEST_SMALLFS to a directory on a small filesystem");
    return;
  }
  g_autofree char *dir = g_build_filename(fs, "diskcache-enospc", NULL);
  dkt_rm_rf(dir);
  /* A bound far above the filesystem's size: only ENOSPC limits us. */
  Diskcache *dc = dkt_open(dir, G_MAXUINT64);
  guint stored = 0, failed = 0;
  for (guint i = 0; i < 2000; i++) {
    char name[16];
    g_snprintf(name, sizeof name, "%u", i);
    g_autoptr(GBytes) b = dkt_data("g", name, 64 * 1024);
    g_autoptr(GError) error = NULL;
    if (diskcache_put(dc, "g", name, b, &error)) {
      stored++;
    } else {
      g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSPC);
      failed++;
    }
    /* Whatever was just stored can be read back. */
    if (error == NULL)
      g_assert_true(dkt_has(dc, "g", name, 64 * 1024));
  }
  g_test_message("full disk: %u puts stored (evicting older entries), %u failed, %u kept",
                 stored, failed, diskcache_count(dc));
  g_assert_cmpuint(stored, >, 0);
  /* An entry larger than the whole filesystem fails without emptying the
   * cache for nothing. */
  guint kept = diskcache_count(dc);
  g_autoptr(GBytes) huge = dkt_data("g", "huge", 64 << 20);
  g_autoptr(GError) error = NULL;
  g_assert_false(diskcache_put(dc, "g", "huge", huge, &error));
  g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_NOSPC);
  g_test_message("too big for the disk: %s", error->message);
  g_assert_cmpuint(diskcache_count(dc), ==, kept);
  dkt_assert_consistent(dc, dir); /* the failed appends were cut off */
  /* Batches on the full disk (diskcache_put_many): each is stored,
   * evicting older entries, or fails with NOSPC; what is there reads
   * back, and the log stays whole. */
  guint batches_stored = 0;
  for (guint round = 0; round < 4; round++) {
    g_autofree char *prefix = g_strdup_printf("b%u-", round);
    DktBatch *b = dkt_batch("g", prefix, 40, dkt_len_64k);
    g_autoptr(GError) berr = NULL;
    if (dkt_put_batch(dc, "g", b, &berr))
      batches_stored++;
    else
      g_assert_error(berr, G_FILE_ERROR, G_FILE_ERROR_NOSPC);
    for (guint i = 0; i < b->n; i++) {
      if (berr == NULL && i >= b->n / 2)
        g_assert_true(dkt_has(dc, "g", b->names[i], b->lens[i])); /* the newest are kept */
      else
        dkt_has(dc, "g", b->names[i], b->lens[i]); /* if there, the right bytes */
    }
    dkt_batch_free(b);
    dkt_assert_consistent(dc, dir);
  }
  g_test_message("full disk: %u of 4 batches stored", batches_stored);
  kept = diskcache_count(dc);
  diskcache_close(dc);
  dc = dkt_open(dir, G_MAXUINT64);
  g_assert_cmpuint(diskcache_count(dc), ==, kept);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* diskcache_put_many: a batch of entries (sizes from 0 up, across several
 * segments, a key already stored among them) reads back byte for byte,
 * before and after a restart, takes the space one put each would, and is
 * written with a system call per run of records, not one per record (a
 * pwritev per record cost a cold scan as much CPU as fetching the mail). */
static void test_put_many(void) {
  const char *g = "acct/INBOX/7";
  enum { N = 700, STORED = 4 };
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 8 << 20); /* segments of up to 1 MiB */
  DktBatch *b = dkt_batch(g, "", N, dkt_len_mixed);
  guint64 total = 0;
  for (guint i = 0; i < N; i++)
    total += dkt_entry_size(g, b->names[i], b->lens[i]);
  dkt_put(dc, g, b->names[STORED], b->lens[STORED]); /* stored before: not written again */
  gint64 before = dkt_write_calls();
  g_autoptr(GError) error = NULL;
  g_assert_true(dkt_put_batch(dc, g, b, &error));
  g_assert_no_error(error);
  gint64 calls = dkt_write_calls() - before;
  g_test_message("%d entries, %" G_GUINT64_FORMAT " bytes: %" G_GINT64_FORMAT " write calls",
                 N, total, calls);
  if (before >= 0)
    g_assert_cmpint(calls, <=, 16); /* 3.1 MB in segments of 1 MiB, 256 records a call */
  for (int round = 0; round < 2; round++) {
    g_assert_cmpuint(diskcache_count(dc), ==, N);
    g_assert_cmpuint(diskcache_size(dc), ==, total);
    for (guint i = 0; i < N; i++)
      g_assert_true(dkt_has(dc, g, b->names[i], b->lens[i]));
    g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
    g_assert_cmpuint(segs->len, >=, 3);
    dkt_assert_consistent(dc, dir);
    diskcache_close(dc);
    dc = dkt_open(dir, 8 << 20);
  }
  diskcache_close(dc);
  dkt_batch_free(b);
  dkt_rm_rf(dir);
}

/* A batch whose write fails part way (here a file size limit, EFBIG; a
 * full disk is /diskcache/enospc): the entries that fit are stored, as
 * with one put each, not none of the batch, and the cache stays whole. */
static void test_put_many_partial(void) {
  const char *g = "acct/Work/5";
  enum { N = 40 };
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 8 << 20);
  DktBatch *b = dkt_batch(g, "", N, dkt_len_10k);
  const guint64 limit = 100000;
  guint fit = (guint)(limit / dkt_entry_size(g, b->names[N - 1], b->lens[N - 1]));
  struct rlimit old;
  g_assert_cmpint(getrlimit(RLIMIT_FSIZE, &old), ==, 0);
  struct rlimit small = {limit, old.rlim_max};
  void (*was)(int) = signal(SIGXFSZ, SIG_IGN); /* EFBIG instead of the signal */
  g_assert_cmpint(setrlimit(RLIMIT_FSIZE, &small), ==, 0);
  g_autoptr(GError) error = NULL;
  gboolean ok = dkt_put_batch(dc, g, b, &error);
  g_assert_cmpint(setrlimit(RLIMIT_FSIZE, &old), ==, 0);
  signal(SIGXFSZ, was);
  g_assert_false(ok);
  g_assert_nonnull(error);
  g_assert_true(error->domain == G_FILE_ERROR && strstr(error->message, g_strerror(EFBIG)));
  g_test_message("file size limit %" G_GUINT64_FORMAT ": %u of %d stored (%s)", limit,
                 diskcache_count(dc), N, error->message);
  g_assert_cmpuint(diskcache_count(dc), ==, fit);
  for (guint i = 0; i < N; i++)
    g_assert_true(dkt_has(dc, g, b->names[i], b->lens[i]) == (i < fit));
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dc = dkt_open(dir, 8 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, fit);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_batch_free(b);
  dkt_rm_rf(dir);
}

/* A batch larger than the bound: older entries (of the batch too) are
 * evicted as it is written, and what stays is the newest, whole, within
 * the bound, also after a restart. */
static void test_put_many_bound(void) {
  const char *g = "acct/Lists/3";
  enum { N = 300 };
  const guint64 bound = 1 << 20;
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, bound);
  DktBatch *b = dkt_batch(g, "", N, dkt_len_10k);
  g_autoptr(GError) error = NULL;
  g_assert_true(dkt_put_batch(dc, g, b, &error));
  g_assert_no_error(error);
  for (int round = 0; round < 2; round++) {
    g_assert_cmpuint(diskcache_size(dc), <=, bound);
    guint kept = 0, first = N;
    for (guint i = 0; i < N; i++)
      if (dkt_has(dc, g, b->names[i], b->lens[i])) {
        kept++;
        first = MIN(first, i);
      }
    g_assert_cmpuint(kept, ==, diskcache_count(dc));
    g_assert_cmpuint(kept, >=, (bound / 2) / dkt_entry_size(g, b->names[N - 1], b->lens[N - 1]));
    g_assert_cmpuint(first + kept, ==, N); /* the newest ones, all of them */
    dkt_assert_consistent(dc, dir);
    diskcache_close(dc);
    dc = dkt_open(dir, bound);
  }
  diskcache_close(dc);
  dkt_batch_free(b);
  dkt_rm_rf(dir);
}

/* Bytes of the data that changed on disk (a bad block, a crash on a file
 * system that does not order data before sizes, a stray write): a miss,
 * also after a restart (the scan reads no data), never the bytes. */
static void test_damaged_data(void) {
  const char *g = "acct/INBOX/9";
  const gsize rec = dkt_entry_size(g, "41", 3000);
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  dkt_put(dc, g, "41", 3000);
  dkt_put(dc, g, "42", 3000);
  g_autoptr(GPtrArray) segs = dkt_segs(dir, NULL);
  g_assert_cmpuint(segs->len, ==, 1);
  int fd = open(g_ptr_array_index(segs, 0), O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  static const guint8 zeros[512];
  /* In the second half of 42's data: the header and key stay right. */
  g_assert_cmpint(pwrite(fd, zeros, sizeof zeros, (off_t)(2 * rec - 1000)), ==, sizeof zeros);
  close(fd);
  g_assert_true(dkt_has(dc, g, "41", 3000));
  g_assert_null(diskcache_get(dc, g, "42"));
  g_assert_false(diskcache_contains(dc, g, "42")); /* dropped */
  diskcache_close(dc);
  dc = dkt_open(dir, 1 << 20);
  g_assert_true(dkt_has(dc, g, "41", 3000));
  g_assert_null(diskcache_get(dc, g, "42"));
  dkt_put(dc, g, "42", 3000); /* and it can be stored again */
  g_assert_true(dkt_has(dc, g, "42", 3000));
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

/* Open failing for a reason that is not the file's (out of fds: a large
 * cache once held one per 64 MiB segment) must not delete segments: the
 * open fails with the reason, and a later one finds every entry. */
static void test_open_out_of_fds(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20); /* 128 KiB segments */
  for (guint i = 0; i < 12; i++) {
    char name[16];
    g_snprintf(name, sizeof name, "%u", i);
    dkt_put(dc, "g", name, 80 * 1024); /* one per segment */
  }
  diskcache_close(dc);
  g_autoptr(GPtrArray) before = dkt_segs(dir, NULL);
  g_assert_cmpuint(before->len, ==, 12);

  int probe = open("/dev/null", O_RDONLY); /* the lowest free fd */
  g_assert_cmpint(probe, >=, 0);
  close(probe);
  struct rlimit old, lim;
  g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &old), ==, 0);
  lim = old;
  lim.rlim_cur = (rlim_t)probe + 6; /* directory, lock, a listing, a few segments */
  g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &lim), ==, 0);
  g_autoptr(GError) error = NULL;
  dc = diskcache_open(dir, 1 << 20, &error);
  g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &old), ==, 0);
  g_assert_null(dc);
  g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_MFILE);
  g_test_message("%s", error->message);
  g_autoptr(GPtrArray) after = dkt_segs(dir, NULL);
  g_assert_cmpuint(after->len, ==, 12);

  dc = dkt_open(dir, 1 << 20);
  for (guint i = 0; i < 12; i++) {
    char name[16];
    g_snprintf(name, sizeof name, "%u", i);
    g_assert_true(dkt_has(dc, "g", name, 80 * 1024));
  }
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/diskcache/roundtrip", test_roundtrip);
  g_test_add_func("/diskcache/persist", test_persist);
  g_test_add_func("/diskcache/lru", test_lru);
  g_test_add_func("/diskcache/lru-restart", test_lru_restart);
  g_test_add_func("/diskcache/bound", test_bound);
  g_test_add_func("/diskcache/too-big", test_too_big);
  g_test_add_func("/diskcache/remove-group", test_remove_group);
  g_test_add_func("/diskcache/damaged", test_damaged);
  g_test_add_func("/diskcache/damaged-data", test_damaged_data);
  g_test_add_func("/diskcache/vanished", test_vanished);
  g_test_add_func("/diskcache/tmp-cleanup", test_tmp_cleanup);
  g_test_add_func("/diskcache/copy-forward", test_copy_forward);
  g_test_add_func("/diskcache/big-record", test_big_record);
  g_test_add_func("/diskcache/scan-many", test_scan_many);
  g_test_add_func("/diskcache/locked", test_locked);
  g_test_add_func("/diskcache/keys", test_keys);
  g_test_add_func("/diskcache/threads", test_threads);
  g_test_add_func("/diskcache/perf", test_perf);
  g_test_add_func("/diskcache/enospc", test_enospc);
  g_test_add_func("/diskcache/put-many", test_put_many);
  g_test_add_func("/diskcache/put-many-bound", test_put_many_bound);
  g_test_add_func("/diskcache/put-many-partial", test_put_many_partial);
  g_test_add_func("/diskcache/open-out-of-fds", test_open_out_of_fds);
  return g_test_run();
}
