/* test_mcache.c - metadata snapshots: round trips, and every way a file
 * can be short, damaged or wrong being refused without a crash.
 *
 * The "well-formed but wrong" cases build files by hand from the format in
 * the design note of src/mcache.c, with a correct checksum, so that the
 * parser's own checks are what rejects them.
 */
#include "imapfuse/mcache.h"

#include <glib/gstdio.h>
#include <string.h>

/* ---- helpers ---- */

static char *mct_tmpdir(void) {
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("mcache-XXXXXX", &error);
  g_assert_no_error(error);
  return dir;
}

static void mct_rm_dir(const char *dir) {
  GDir *d = g_dir_open(dir, 0, NULL);
  const char *n;
  while (d != NULL && (n = g_dir_read_name(d)) != NULL) {
    g_autofree char *p = g_build_filename(dir, n, NULL);
    g_unlink(p);
  }
  if (d != NULL)
    g_dir_close(d);
  g_rmdir(dir);
}

static guint mct_count_files(const char *dir) {
  GDir *d = g_dir_open(dir, 0, NULL);
  guint n = 0;
  while (g_dir_read_name(d) != NULL)
    n++;
  g_dir_close(d);
  return n;
}

/* Loads path expecting failure in domain/code; checks nothing was set. */
static void mct_assert_rejected(const char *path, GQuark domain, gint code) {
  McHead h = {7, 7, 7, 7};
  GArray *msgs = GUINT_TO_POINTER(1);
  GPtrArray *flags = GUINT_TO_POINTER(1);
  g_autoptr(GError) error = NULL;
  g_assert_false(mcache_load(path, &h, &msgs, &flags, &error));
  g_assert_error(error, domain, code);
  g_assert_cmpuint(h.uidvalidity, ==, 7);
  g_assert_cmpuint(h.uidnext, ==, 7);
  g_assert_cmpuint(h.highestmodseq, ==, 7);
  g_assert_cmpuint(h.changed_us, ==, 7);
  g_assert_true(msgs == GUINT_TO_POINTER(1));
  g_assert_true(flags == GUINT_TO_POINTER(1));
}

static const char *const mct_flags[] = {"", "\\Seen", "\\Seen \\Flagged $Work", "日本語 $x",
                                        "\\Answered \\Deleted \\Draft"};

/* n messages with UIDs 2, 5, 8, ... and varied fields. */
static McMsg *mct_msgs(guint n) {
  McMsg *m = g_new0(McMsg, n ? n : 1);
  for (guint i = 0; i < n; i++) {
    m[i].uid = 2 + 3 * i;
    m[i].flagset = i % G_N_ELEMENTS(mct_flags);
    m[i].size = 1000 + (guint64)i * 7919;
    m[i].date = 1700000000 + (gint64)i * 60 - (i % 3 == 0 ? 4000000000 : 0);
    m[i].seen = i % 4 == 0 ? 0 : 1800000000u + i;
  }
  return m;
}

/* The head mct_save writes for n messages. */
static McHead mct_head(guint n) {
  return (McHead){1234567, 2 + 3 * n, G_GUINT64_CONSTANT(9876543210),
                  G_GUINT64_CONSTANT(1800000000123456) + n};
}

static void mct_save(const char *path, const McMsg *m, guint n) {
  g_autoptr(GError) error = NULL;
  McHead h = mct_head(n);
  g_assert_true(mcache_save(path, &h, m, n, mct_flags, G_N_ELEMENTS(mct_flags), &error));
  g_assert_no_error(error);
}

static void mct_assert_loads(const char *path, const McMsg *m, guint n) {
  McHead h, want = mct_head(n);
  g_autoptr(GArray) msgs = NULL;
  g_autoptr(GPtrArray) flags = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(mcache_load(path, &h, &msgs, &flags, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(h.uidvalidity, ==, want.uidvalidity);
  g_assert_cmpuint(h.highestmodseq, ==, want.highestmodseq);
  g_assert_cmpuint(h.uidnext, ==, want.uidnext);
  g_assert_cmpuint(h.changed_us, ==, want.changed_us);
  g_assert_cmpuint(flags->len, ==, G_N_ELEMENTS(mct_flags));
  for (guint i = 0; i < flags->len; i++)
    g_assert_cmpstr(g_ptr_array_index(flags, i), ==, mct_flags[i]);
  g_assert_cmpuint(g_array_get_element_size(msgs), ==, sizeof(McMsg));
  g_assert_cmpuint(msgs->len, ==, n);
  for (guint i = 0; i < n; i++) {
    const McMsg *got = &g_array_index(msgs, McMsg, i);
    g_assert_cmpuint(got->uid, ==, m[i].uid);
    g_assert_cmpuint(got->flagset, ==, m[i].flagset);
    g_assert_cmpuint(got->size, ==, m[i].size);
    g_assert_cmpint(got->date, ==, m[i].date);
    g_assert_cmpuint(got->seen, ==, m[i].seen);
  }
}

/* ---- a hand-made file ---- */

static void mct_u32(GByteArray *b, guint32 v) {
  v = GUINT32_TO_LE(v);
  g_byte_array_append(b, (const guint8 *)&v, 4);
}

static void mct_u64(GByteArray *b, guint64 v) {
  v = GUINT64_TO_LE(v);
  g_byte_array_append(b, (const guint8 *)&v, 8);
}

/* Wraps a payload in a header with a correct checksum and writes it. */
static void mct_write_raw(const char *path, GByteArray *payload, const char *magic,
                          guint32 version) {
  g_autoptr(GByteArray) f = g_byte_array_new();
  g_byte_array_append(f, (const guint8 *)magic, 4);
  mct_u32(f, version);
  mct_u64(f, payload->len);
  guint8 sum[32];
  gsize n = sizeof sum;
  GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(c, payload->data, payload->len);
  g_checksum_get_digest(c, sum, &n);
  g_checksum_free(c);
  g_byte_array_append(f, sum, 32);
  g_byte_array_append(f, payload->data, payload->len);
  g_assert_true(g_file_set_contents(path, (const char *)f->data, f->len, NULL));
}

typedef struct {
  guint32 uid, flagset;
} MctRow;

/* A payload with flag strings fl and rows, claiming nf_claimed strings and
 * nr_claimed rows in its counts. */
static GByteArray *mct_payload_v(guint32 version, const char *const *fl, guint nf,
                                 guint32 nf_claimed, const MctRow *rows, guint nr,
                                 guint32 nr_claimed) {
  GByteArray *b = g_byte_array_new();
  mct_u32(b, 1);           /* UIDVALIDITY */
  mct_u32(b, 100);         /* UIDNEXT */
  mct_u64(b, 5);           /* HIGHESTMODSEQ */
  mct_u32(b, nf_claimed);
  mct_u32(b, nr_claimed);
  if (version == 3)
    mct_u32(b, 77); /* changed, s */
  if (version >= 4)
    mct_u64(b, 77000001); /* changed, us */
  for (guint i = 0; i < nf; i++) {
    mct_u32(b, (guint32)strlen(fl[i]));
    g_byte_array_append(b, (const guint8 *)fl[i], (guint)strlen(fl[i]));
  }
  for (guint i = 0; i < nr; i++) {
    mct_u32(b, rows[i].uid);
    mct_u32(b, rows[i].flagset);
    mct_u64(b, 10);
    mct_u64(b, 20);
    if (version >= 2)
      mct_u32(b, 30 + rows[i].uid); /* seen */
  }
  return b;
}

/* Version 1 rows (no seen): files from before it was kept still load. */
static GByteArray *mct_payload(const char *const *fl, guint nf, guint32 nf_claimed,
                               const MctRow *rows, guint nr, guint32 nr_claimed) {
  return mct_payload_v(1, fl, nf, nf_claimed, rows, nr, nr_claimed);
}

/* ---- tests ---- */

static void test_roundtrip(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "INBOX.mc", NULL);
  McMsg m[] = {
      {1, 0, 0, 0, 0},
      {2, 1, 1, -1, 1},
      {1000, 4, G_MAXUINT64, G_MININT64, 1800000000},
      {G_MAXUINT32, 2, 12345, G_MAXINT64, G_MAXUINT32},
  };
  mct_save(path, m, G_N_ELEMENTS(m));
  /* mct_save sets UIDNEXT from n; mct_assert_loads expects the same. */
  mct_assert_loads(path, m, G_N_ELEMENTS(m));

  /* Overwriting replaces it, and leaves no temporary file behind. */
  g_autofree McMsg *m2 = mct_msgs(50);
  mct_save(path, m2, 50);
  mct_assert_loads(path, m2, 50);
  g_assert_cmpuint(mct_count_files(dir), ==, 1);
  mct_rm_dir(dir);
}

static void test_empty(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "empty.mc", NULL);
  g_autoptr(GError) error = NULL;
  McHead zero = {0, 0, 0, 0}, h = {1, 1, 1, 1};
  g_assert_true(mcache_save(path, &zero, NULL, 0, NULL, 0, &error));
  g_assert_no_error(error);
  g_autoptr(GArray) msgs = NULL;
  g_autoptr(GPtrArray) flags = NULL;
  g_assert_true(mcache_load(path, &h, &msgs, &flags, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(h.uidvalidity, ==, 0);
  g_assert_cmpuint(h.highestmodseq, ==, 0);
  g_assert_cmpuint(h.uidnext, ==, 0);
  g_assert_cmpuint(h.changed_us, ==, 0);
  g_assert_cmpuint(msgs->len, ==, 0);
  g_assert_cmpuint(flags->len, ==, 0);
  mct_rm_dir(dir);
}

#define MCT_LARGE 100000

static void test_large(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "big.mc", NULL);
  g_autofree McMsg *m = mct_msgs(MCT_LARGE);
  gint64 t0 = g_get_monotonic_time();
  mct_save(path, m, MCT_LARGE);
  gint64 t1 = g_get_monotonic_time();
  McHead h;
  g_autoptr(GArray) msgs = NULL;
  g_autoptr(GPtrArray) flags = NULL;
  g_assert_true(mcache_load(path, &h, &msgs, &flags, NULL));
  gint64 t2 = g_get_monotonic_time();
  GStatBuf st;
  g_assert_cmpint(g_stat(path, &st), ==, 0);
  g_test_message("%u messages: save %.1f ms, load %.1f ms, file %" G_GINT64_FORMAT " bytes",
                 MCT_LARGE, (t1 - t0) / 1e3, (t2 - t1) / 1e3, (gint64)st.st_size);
  mct_assert_loads(path, m, MCT_LARGE);
  mct_rm_dir(dir);
}

static void test_missing(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "none.mc", NULL);
  mct_assert_rejected(path, G_FILE_ERROR, G_FILE_ERROR_NOENT);
  /* Saving into a directory that does not exist fails cleanly too. */
  g_autofree char *deep = g_build_filename(dir, "no", "such.mc", NULL);
  g_autoptr(GError) error = NULL;
  McHead h = {1, 1, 1, 1};
  g_assert_false(mcache_save(deep, &h, NULL, 0, NULL, 0, &error));
  g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_NOENT);
  mct_rm_dir(dir);
}

/* Every proper prefix of a valid file is refused. */
static void test_truncated(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "t.mc", NULL);
  g_autofree char *cut = g_build_filename(dir, "cut.mc", NULL);
  g_autofree McMsg *m = mct_msgs(6);
  mct_save(path, m, 6);
  g_autofree char *buf = NULL;
  gsize len;
  g_assert_true(g_file_get_contents(path, &buf, &len, NULL));
  for (gsize n = 0; n < len; n++) {
    g_assert_true(g_file_set_contents(cut, buf, (gssize)n, NULL));
    mct_assert_rejected(cut, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
  }
  g_test_message("%" G_GSIZE_FORMAT " truncations refused", len);
  mct_assert_loads(path, m, 6);
  mct_rm_dir(dir);
}

/* Every single-byte change, and trailing garbage, is refused. */
static void test_corrupt(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "c.mc", NULL);
  g_autofree char *bad = g_build_filename(dir, "bad.mc", NULL);
  g_autofree McMsg *m = mct_msgs(4);
  mct_save(path, m, 4);
  g_autofree char *buf = NULL;
  gsize len;
  g_assert_true(g_file_get_contents(path, &buf, &len, NULL));
  for (gsize i = 0; i < len; i++) {
    for (guint bit = 0; bit < 8; bit += 7) {
      buf[i] ^= (char)(1u << bit);
      g_assert_true(g_file_set_contents(bad, buf, (gssize)len, NULL));
      mct_assert_rejected(bad, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
      buf[i] ^= (char)(1u << bit);
    }
  }
  g_autofree char *longer = g_malloc(len + 1);
  memcpy(longer, buf, len);
  longer[len] = 0;
  g_assert_true(g_file_set_contents(bad, longer, (gssize)len + 1, NULL));
  mct_assert_rejected(bad, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
  mct_rm_dir(dir);
}

/* Files with a correct checksum whose contents are wrong. */
static void test_malformed(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "m.mc", NULL);
  const char *fl[] = {"", "\\Seen"};
  const MctRow good[] = {{1, 0}, {5, 1}, {9, 0}};
  const MctRow unsorted[] = {{1, 0}, {9, 1}, {5, 0}};
  const MctRow dup[] = {{1, 0}, {5, 1}, {5, 0}};
  const MctRow zero[] = {{0, 0}, {5, 1}};
  const MctRow badflag[] = {{1, 0}, {5, 2}};
  GByteArray *p;

  /* The hand-made format is right: the good one loads, in every version
   * (version 1 rows have no seen: 0; later rows 30 + UID; version 3 has
   * changed in seconds: 77, version 4 in microseconds). */
  for (guint32 version = 1; version <= 4; version++) {
    p = mct_payload_v(version, fl, 2, 2, good, 3, 3);
    mct_write_raw(path, p, "IFMC", version);
    g_byte_array_unref(p);
    McHead h;
    g_autoptr(GArray) msgs = NULL;
    g_autoptr(GPtrArray) flags = NULL;
    g_autoptr(GError) error = NULL;
    g_assert_true(mcache_load(path, &h, &msgs, &flags, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(h.uidvalidity, ==, 1);
    g_assert_cmpuint(h.uidnext, ==, 100);
    g_assert_cmpuint(h.highestmodseq, ==, 5);
    g_assert_cmpuint(h.changed_us, ==,
                     version == 4 ? 77000001 : version == 3 ? 77 * G_USEC_PER_SEC : 0);
    g_assert_cmpuint(msgs->len, ==, 3);
    g_assert_cmpuint(g_array_index(msgs, McMsg, 2).uid, ==, 9);
    g_assert_cmpuint(g_array_index(msgs, McMsg, 2).seen, ==, version == 1 ? 0 : 39);
    g_assert_cmpstr(g_ptr_array_index(flags, 1), ==, "\\Seen");
  }

  struct {
    const char *what;
    GByteArray *payload;
    const char *magic;
    guint32 version;
  } cases[] = {
      {"unsorted", mct_payload(fl, 2, 2, unsorted, 3, 3), "IFMC", 1},
      {"duplicate UID", mct_payload(fl, 2, 2, dup, 3, 3), "IFMC", 1},
      {"UID 0", mct_payload(fl, 2, 2, zero, 2, 2), "IFMC", 1},
      {"flag index", mct_payload(fl, 2, 2, badflag, 2, 2), "IFMC", 1},
      {"flag count huge", mct_payload(fl, 2, G_MAXUINT32, good, 3, 3), "IFMC", 1},
      {"flag count short", mct_payload(fl, 2, 1, good, 3, 3), "IFMC", 1},
      {"msg count high", mct_payload(fl, 2, 2, good, 3, 4), "IFMC", 1},
      {"msg count huge", mct_payload(fl, 2, 2, good, 3, G_MAXUINT32), "IFMC", 1},
      {"msg count low", mct_payload(fl, 2, 2, good, 3, 2), "IFMC", 1},
      {"magic", mct_payload(fl, 2, 2, good, 3, 3), "IFDC", 1},
      {"version", mct_payload(fl, 2, 2, good, 3, 3), "IFMC", 5},
      {"version 0", mct_payload(fl, 2, 2, good, 3, 3), "IFMC", 0},
      {"version 3 without changed", mct_payload_v(2, fl, 2, 2, good, 3, 3), "IFMC", 3},
      {"version 2 with changed", mct_payload_v(3, fl, 2, 2, good, 3, 3), "IFMC", 2},
      {"version 4 with a changed of 4 bytes", mct_payload_v(3, fl, 2, 2, good, 3, 3), "IFMC", 4},
      {"version 3 with a changed of 8 bytes", mct_payload_v(4, fl, 2, 2, good, 3, 3), "IFMC", 3},
      {"version 2 with version 1 rows", mct_payload(fl, 2, 2, good, 3, 3), "IFMC", 2},
      {"version 1 with version 2 rows", mct_payload_v(2, fl, 2, 2, good, 3, 3), "IFMC", 1},
      {"empty payload", g_byte_array_new(), "IFMC", 1},
  };
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_test_message("malformed: %s", cases[i].what);
    mct_write_raw(path, cases[i].payload, cases[i].magic, cases[i].version);
    mct_assert_rejected(path, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
    g_byte_array_unref(cases[i].payload);
  }

  /* A flag string whose length runs past the end, and one with a NUL. */
  p = mct_payload(fl, 2, 2, good, 3, 3);
  guint32 huge = GUINT32_TO_LE(G_MAXUINT32 - 2);
  memcpy(p->data + 24 + 4, &huge, 4); /* second string's length field */
  mct_write_raw(path, p, "IFMC", 1);
  mct_assert_rejected(path, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
  g_byte_array_unref(p);
  const char *nul[] = {"", "\\Se.n"};
  p = mct_payload(nul, 2, 2, good, 3, 3);
  p->data[24 + 4 + 4 + 3] = 0; /* the '.' */
  mct_write_raw(path, p, "IFMC", 1);
  mct_assert_rejected(path, MCACHE_ERROR, MCACHE_ERROR_CORRUPT);
  g_byte_array_unref(p);
  mct_rm_dir(dir);
}

static void test_save_invalid(void) {
  g_autofree char *dir = mct_tmpdir();
  g_autofree char *path = g_build_filename(dir, "s.mc", NULL);
  const char *fl[] = {"", "\\Seen"};
  const McMsg unsorted[] = {{1, 0, 1, 1, 0}, {3, 0, 1, 1, 0}, {2, 0, 1, 1, 0}};
  const McMsg dup[] = {{1, 0, 1, 1, 0}, {1, 0, 1, 1, 0}};
  const McMsg zero[] = {{0, 0, 1, 1, 0}};
  const McMsg badflag[] = {{1, 2, 1, 1, 0}};
  struct {
    const McMsg *m;
    guint n;
  } cases[] = {{unsorted, 3}, {dup, 2}, {zero, 1}, {badflag, 1}};
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    McHead h = {1, 10, 1, 1};
    g_assert_false(mcache_save(path, &h, cases[i].m, cases[i].n, fl, 2, &error));
    g_assert_error(error, MCACHE_ERROR, MCACHE_ERROR_INVALID);
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
  }
  g_assert_cmpuint(mct_count_files(dir), ==, 0);
  mct_rm_dir(dir);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/mcache/roundtrip", test_roundtrip);
  g_test_add_func("/mcache/empty", test_empty);
  g_test_add_func("/mcache/large", test_large);
  g_test_add_func("/mcache/missing", test_missing);
  g_test_add_func("/mcache/truncated", test_truncated);
  g_test_add_func("/mcache/corrupt", test_corrupt);
  g_test_add_func("/mcache/malformed", test_malformed);
  g_test_add_func("/mcache/save-invalid", test_save_invalid);
  return g_test_run();
}
