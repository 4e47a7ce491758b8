/* test_diskcache.c - the on-disk blob cache: round trips, persistence,
 * eviction order, damage, locking, odd keys, threads, and timings.
 *
 * Every test works in its own g_dir_make_tmp() directory and deletes it.
 * The tests that damage entries find the entry files by walking the cache
 * directory (any file but the top "lock" and the "#group" files), so they do
 * not depend on how names are escaped.  Timings are printed with
 * g_test_message(), never asserted.  /diskcache/enospc runs only when
 * IMAPFUSE_TEST_SMALLFS names a directory on a small filesystem (e.g. a
 * 4 MB tmpfs); it is skipped otherwise.
 */
#include "imapfuse/diskcache.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DK_TEST_HDR 24 /* entry header before the key; sizes below are computed with it */

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

static void dkt_walk(const char *path, gboolean top, GPtrArray *out, guint64 *bytes) {
  GDir *d = g_dir_open(path, 0, NULL);
  g_assert_nonnull(d);
  const char *n;
  while ((n = g_dir_read_name(d)) != NULL) {
    g_autofree char *p = g_build_filename(path, n, NULL);
    GStatBuf st;
    g_assert_cmpint(g_lstat(p, &st), ==, 0);
    if (S_ISDIR(st.st_mode)) {
      dkt_walk(p, FALSE, out, bytes);
    } else if (!(top && strcmp(n, "lock") == 0) && strcmp(n, "#group") != 0) {
      if (out != NULL)
        g_ptr_array_add(out, g_strdup(p));
      if (bytes != NULL)
        *bytes += (guint64)st.st_size;
    }
  }
  g_dir_close(d);
}

/* Entry files (paths) under dir; *bytes their total size. */
static GPtrArray *dkt_files(const char *dir, guint64 *bytes) {
  GPtrArray *out = g_ptr_array_new_with_free_func(g_free);
  guint64 b = 0;
  dkt_walk(dir, TRUE, out, &b);
  if (bytes != NULL)
    *bytes = b;
  return out;
}

static Diskcache *dkt_open(const char *dir, guint64 max) {
  g_autoptr(GError) error = NULL;
  Diskcache *dc = diskcache_open(dir, max, &error);
  g_assert_no_error(error);
  g_assert_nonnull(dc);
  return dc;
}

/* The index and the files agree. */
static void dkt_assert_consistent(Diskcache *dc, const char *dir) {
  guint64 bytes;
  g_autoptr(GPtrArray) files = dkt_files(dir, &bytes);
  g_assert_cmpuint(files->len, ==, diskcache_count(dc));
  g_assert_cmpuint(bytes, ==, diskcache_size(dc));
}

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
  g_assert_true(dkt_has(dc, "g", "a", 1000)); /* a is now the most recent */
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

/* Recency survives a restart (file mtimes; timestamps are coarse, hence
 * the sleeps), and a smaller bound at open evicts the oldest. */
static void test_lru_restart(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, DKT_LRU_BOUND);
  dkt_put(dc, "g", "a", 1000);
  g_usleep(20000);
  dkt_put(dc, "g", "b", 1000);
  g_usleep(20000);
  dkt_put(dc, "g", "c", 1000);
  g_usleep(20000);
  g_assert_true(dkt_has(dc, "g", "a", 1000));
  diskcache_close(dc);

  g_usleep(20000);
  dc = dkt_open(dir, DKT_LRU_BOUND);
  dkt_put(dc, "g", "d", 1000); /* b is the oldest */
  g_assert_false(dkt_has(dc, "g", "b", 1000));
  diskcache_close(dc);

  g_usleep(20000);
  /* Order on disk now: c, a, d (d newest; the has() calls bumped only
   * entries that were present).  Shrink to one entry. */
  dc = dkt_open(dir, DKT_LRU_BOUND / 3);
  g_assert_cmpuint(diskcache_count(dc), ==, 1);
  g_assert_true(dkt_has(dc, "g", "d", 1000));
  dkt_assert_consistent(dc, dir);
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
  /* Exactly the bound fits (after evicting); one byte more does not. */
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
  diskcache_remove_group(dc, "acct/INBOX/100");
  diskcache_remove_group(dc, "acct/never-stored/1"); /* harmless */
  g_assert_cmpuint(diskcache_count(dc), ==, 20);
  g_assert_false(dkt_has(dc, "acct/INBOX/100", "3", 500));
  g_assert_true(dkt_has(dc, "acct/INBOX/101", "3", 600));
  dkt_assert_consistent(dc, dir);
  /* The group's directory is gone: only the other group's remains. */
  guint dirs = 0;
  GDir *d = g_dir_open(dir, 0, NULL);
  const char *n;
  while ((n = g_dir_read_name(d)) != NULL) {
    g_autofree char *p = g_build_filename(dir, n, NULL);
    dirs += g_file_test(p, G_FILE_TEST_IS_DIR);
  }
  g_dir_close(d);
  g_assert_cmpuint(dirs, ==, 1);
  /* The group can be filled again. */
  dkt_put(dc, "acct/INBOX/100", "3", 500);
  g_assert_true(dkt_has(dc, "acct/INBOX/100", "3", 500));
  diskcache_close(dc);

  dc = dkt_open(dir, 1 << 20);
  g_assert_cmpuint(diskcache_count(dc), ==, 21);
  dkt_assert_consistent(dc, dir);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

typedef enum { DKT_TRUNCATE, DKT_FLIP_MAGIC, DKT_FLIP_VERSION, DKT_FLIP_LENGTH, DKT_FLIP_KEY,
               DKT_APPEND, DKT_EMPTY, DKT_N_DAMAGE } DktDamage;

static void dkt_damage(const char *path, DktDamage how) {
  g_autofree char *buf = NULL;
  gsize len;
  g_assert_true(g_file_get_contents(path, &buf, &len, NULL));
  switch (how) {
  case DKT_TRUNCATE:
    len -= 1;
    break;
  case DKT_FLIP_MAGIC:
    buf[0] ^= 0x20;
    break;
  case DKT_FLIP_VERSION:
    buf[4] ^= 0x01;
    break;
  case DKT_FLIP_LENGTH:
    buf[8] ^= 0x01;
    break;
  case DKT_FLIP_KEY:
    buf[DK_TEST_HDR + 2] ^= 0x01; /* a byte of the group name */
    break;
  case DKT_APPEND:
    buf = g_realloc(buf, len + 1);
    buf[len++] = 'x';
    break;
  case DKT_EMPTY:
    len = 0;
    break;
  default:
    g_assert_not_reached();
  }
  g_assert_true(g_file_set_contents(path, buf, (gssize)len, NULL));
}

static void test_damaged(void) {
  for (int how = 0; how < DKT_N_DAMAGE; how++) {
    g_autofree char *dir = dkt_tmpdir();
    Diskcache *dc = dkt_open(dir, 1 << 20);
    dkt_put(dc, "acct/INBOX/9", "42", 3000);
    dkt_put(dc, "acct/INBOX/9", "43", 3000);
    g_autoptr(GPtrArray) files = dkt_files(dir, NULL);
    g_assert_cmpuint(files->len, ==, 2);
    /* Damage both; the first is noticed by a get in this session, the
     * other after a restart (the scan reads no contents). */
    dkt_damage(g_ptr_array_index(files, 0), how);
    dkt_damage(g_ptr_array_index(files, 1), how);
    g_assert_false(dkt_has(dc, "acct/INBOX/9", "42", 3000));
    g_assert_cmpuint(diskcache_count(dc), ==, 1);
    diskcache_close(dc);
    dc = dkt_open(dir, 1 << 20);
    g_assert_false(dkt_has(dc, "acct/INBOX/9", "43", 3000));
    g_assert_cmpuint(diskcache_count(dc), ==, 0);
    g_assert_cmpuint(diskcache_size(dc), ==, 0);
    dkt_assert_consistent(dc, dir); /* the damaged files were deleted */
    /* And the key can be stored again. */
    dkt_put(dc, "acct/INBOX/9", "42", 3000);
    g_assert_true(dkt_has(dc, "acct/INBOX/9", "42", 3000));
    diskcache_close(dc);
    dkt_rm_rf(dir);
  }
}

/* A file the index knows vanishing behind its back is just a miss. */
static void test_vanished(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  dkt_put(dc, "g", "1", 10);
  g_autoptr(GPtrArray) files = dkt_files(dir, NULL);
  g_assert_cmpint(g_unlink(g_ptr_array_index(files, 0)), ==, 0);
  g_assert_null(diskcache_get(dc, "g", "1"));
  g_assert_cmpuint(diskcache_count(dc), ==, 0);
  g_assert_cmpuint(diskcache_size(dc), ==, 0);
  diskcache_close(dc);
  dkt_rm_rf(dir);
}

static void test_tmp_cleanup(void) {
  g_autofree char *dir = dkt_tmpdir();
  Diskcache *dc = dkt_open(dir, 1 << 20);
  dkt_put(dc, "g", "1", 100);
  diskcache_close(dc);
  g_autoptr(GPtrArray) files = dkt_files(dir, NULL);
  g_autofree char *gdir = g_path_get_dirname(g_ptr_array_index(files, 0));
  /* What a crash in the middle of a put leaves behind. */
  g_autofree char *tmp1 = g_build_filename(gdir, ".tmp.1f", NULL);
  g_autofree char *tmp2 = g_build_filename(gdir, ".tmp.deadbeef", NULL);
  g_assert_true(g_file_set_contents(tmp1, "partial", -1, NULL));
  g_assert_true(g_file_set_contents(tmp2, "", -1, NULL));

  dc = dkt_open(dir, 1 << 20);
  g_assert_false(g_file_test(tmp1, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(tmp2, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(diskcache_count(dc), ==, 1);
  g_assert_true(dkt_has(dc, "g", "1", 100));
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
  guint64 disk;
  g_autoptr(GPtrArray) files = dkt_files(dir, &disk);
  /* A race can leave an index entry without its file (a miss later), never
   * a file the index does not count. */
  g_assert_cmpuint(disk, <=, diskcache_size(dc));
  g_assert_cmpuint(files->len, <=, diskcache_count(dc));
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

/* What the filesystem itself costs for the same work: per entry one
 * create + write + close + rename, then one open + fstat + read + close. */
static void dkt_floor(const char *dir, const char *tag, double *put_s, double *get_s) {
  g_autofree char *sub = g_build_filename(dir, tag, NULL);
  g_assert_cmpint(g_mkdir(sub, 0700), ==, 0);
  int dfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  g_assert_cmpint(dfd, >=, 0);
  static guint8 buf[DKT_PERF_LEN + 64];
  char name[32], tmp[32];
  gint64 t0 = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_snprintf(tmp, sizeof tmp, ".tmp.%u", i + 1);
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(fd, buf, DKT_PERF_LEN + 40), ==, DKT_PERF_LEN + 40);
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
  close(dfd);
  *put_s = (t1 - t0) / 1e6;
  *get_s = (t2 - t1) / 1e6;
}

static void test_perf(void) {
  g_autofree char *dir = dkt_tmpdir();
  /* Run once before and once after: whichever runs first on a busy disk
   * tends to pay more, so the two bracket the cache's numbers. */
  double floor_put[2], floor_get[2];
  dkt_floor(dir, "floor1", &floor_put[0], &floor_get[0]);
  Diskcache *dc = dkt_open(dir, G_MAXUINT64);
  GBytes **data = g_new(GBytes *, DKT_PERF_N);
  char name[16];
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    data[i] = dkt_data("acct/INBOX/1", name, DKT_PERF_LEN);
  }
  gint64 t0 = g_get_monotonic_time();
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_assert_true(diskcache_put(dc, "acct/INBOX/1", name, data[i], NULL));
  }
  gint64 t1 = g_get_monotonic_time();
  guint64 got = 0;
  for (guint i = 0; i < DKT_PERF_N; i++) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    GBytes *b = diskcache_get(dc, "acct/INBOX/1", name);
    g_assert_nonnull(b);
    got += g_bytes_get_size(b);
    g_bytes_unref(b);
  }
  gint64 t2 = g_get_monotonic_time();
  g_assert_cmpuint(got, ==, (guint64)DKT_PERF_N * DKT_PERF_LEN);
  diskcache_close(dc);
  gint64 t3 = g_get_monotonic_time();
  dc = dkt_open(dir, G_MAXUINT64);
  gint64 t4 = g_get_monotonic_time();
  g_assert_cmpuint(diskcache_count(dc), ==, DKT_PERF_N);
  /* Spot-check the contents once, outside the timed loops. */
  for (guint i = 0; i < DKT_PERF_N; i += 997) {
    g_snprintf(name, sizeof name, "%u", i + 1);
    g_autoptr(GBytes) b = diskcache_get(dc, "acct/INBOX/1", name);
    g_assert_true(g_bytes_equal(b, data[i]));
  }
  dkt_floor(dir, "floor2", &floor_put[1], &floor_get[1]);
  g_test_message("%u x %u B: put %.3f s (%.1f us each), get %.3f s (%.1f us each), "
                 "reopen (scan) %.3f s",
                 DKT_PERF_N, DKT_PERF_LEN, (t1 - t0) / 1e6, (double)(t1 - t0) / DKT_PERF_N,
                 (t2 - t1) / 1e6, (double)(t2 - t1) / DKT_PERF_N, (t4 - t3) / 1e6);
  g_test_message("the same syscalls without the cache (filesystem floor, before/after): "
                 "put %.3f/%.3f s, get %.3f/%.3f s",
                 floor_put[0], floor_put[1], floor_get[0], floor_get[1]);
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
  guint64 disk;
  g_autoptr(GPtrArray) files = dkt_files(dir, &disk);
  g_assert_cmpuint(files->len, ==, diskcache_count(dc)); /* no temp files left */
  g_assert_cmpuint(disk, ==, diskcache_size(dc));
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
  g_test_add_func("/diskcache/vanished", test_vanished);
  g_test_add_func("/diskcache/tmp-cleanup", test_tmp_cleanup);
  g_test_add_func("/diskcache/locked", test_locked);
  g_test_add_func("/diskcache/keys", test_keys);
  g_test_add_func("/diskcache/threads", test_threads);
  g_test_add_func("/diskcache/perf", test_perf);
  g_test_add_func("/diskcache/enospc", test_enospc);
  return g_test_run();
}
