/* test_write.c - table tests for the pure parts of the write path:
 * LF -> CRLF (staging.c), rsync temporary names and Message-ID
 * (fswrite.c), flag validation and COPYUID (cmd.c). */
#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/fswrite.h"
#include "imapfuse/staging.h"

static char *crlf(const char *in, gsize chunk, gboolean keep_crs, gsize *changed) {
  GByteArray *out = g_byte_array_new();
  guint64 cr = 0;
  gsize n = strlen(in);
  *changed = 0;
  for (gsize off = 0; off < n; off += chunk)
    *changed += staging_crlf_convert((const guchar *)in + off, MIN(chunk, n - off), &cr,
                                     keep_crs, out);
  *changed += staging_crlf_convert(NULL, 0, &cr, keep_crs, out);
  g_byte_array_append(out, (const guint8 *)"", 1);
  return (char *)g_byte_array_free(out, FALSE);
}

static void test_crlf(void) {
  static const struct {
    const char *in, *out;
    gsize changed;
    const char *kept; /* with keep_crs: only bare LFs change */
    gsize kept_changed;
  } cases[] = {
      {"", "", 0, "", 0},
      {"a", "a", 0, "a", 0},
      {"a\n", "a\r\n", 1, "a\r\n", 1},
      {"a\r\n", "a\r\n", 0, "a\r\n", 0},
      {"\n\n", "\r\n\r\n", 2, "\r\n\r\n", 2},
      {"a\r\nb\nc\r\n", "a\r\nb\r\nc\r\n", 1, "a\r\nb\r\nc\r\n", 1},
      {"x\n\r\n\n", "x\r\n\r\n\r\n", 2, "x\r\n\r\n\r\n", 2},
      /* CRs: kept inside a line, one kept before LF, none at the end, as
       * Dovecot stores them (and RFC 5322's CRLF is kept by any server) */
      {"a\rb\r\n", "a\rb\r\n", 0, "a\rb\r\n", 0},
      {"a\r\rb", "a\r\rb", 0, "a\r\rb", 0},
      {"\n\ra", "\r\n\ra", 1, "\r\n\ra", 1},
      {"\r\r\n", "\r\n", 1, "\r\r\n", 0},
      {"a\r\r\r\nb\r\r\n", "a\r\nb\r\n", 2, "a\r\r\r\nb\r\r\n", 0},
      {"\r", "", 1, "\r", 0},
      {"a\r\n\r\r", "a\r\n", 1, "a\r\n\r\r", 0},
      {"a\r\n\r\rb", "a\r\n\r\rb", 0, "a\r\n\r\rb", 0},
      {"a\r\r\nb\nc\r", "a\r\nb\r\nc", 3, "a\r\r\nb\r\nc\r", 1},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++)
    /* Every chunking gives the same result (CR at a chunk's end). */
    for (gsize chunk = 1; chunk <= 8; chunk++) {
      gsize changed;
      g_autofree char *got = crlf(cases[i].in, chunk, FALSE, &changed);
      g_assert_cmpstr(got, ==, cases[i].out);
      g_assert_cmpuint(changed, ==, cases[i].changed);
      g_autofree char *kept = crlf(cases[i].in, chunk, TRUE, &changed);
      g_assert_cmpstr(kept, ==, cases[i].kept);
      g_assert_cmpuint(changed, ==, cases[i].kept_changed);
    }
}

static void test_temp_name(void) {
  g_assert_true(fswrite_is_temp_name(".x.eml.XSbe88"));
  g_assert_true(fswrite_is_temp_name(".a.b.c.123456"));
  g_assert_true(fswrite_is_temp_name(".1.aaaaaa"));
  g_assert_false(fswrite_is_temp_name("x.eml"));
  g_assert_false(fswrite_is_temp_name(".x.eml"));
  g_assert_false(fswrite_is_temp_name("..abcdef")); /* no name between the dots */
  g_assert_false(fswrite_is_temp_name(".x.eml.XSb-88"));
  g_assert_false(fswrite_is_temp_name("a.x.eml.XSbe88"));
  g_assert_false(fswrite_is_temp_name(".x.eml.XSbe8"));
}

static void test_editor_scratch(void) {
  g_assert_true(fswrite_is_editor_scratch(".9.eml.swp"));
  g_assert_true(fswrite_is_editor_scratch(".x.swo"));
  g_assert_true(fswrite_is_editor_scratch(".x.swa"));
  g_assert_true(fswrite_is_editor_scratch("#9.eml#"));
  g_assert_false(fswrite_is_editor_scratch("x.swp"));   /* vim's are hidden */
  g_assert_false(fswrite_is_editor_scratch(".x.swq"));
  g_assert_true(fswrite_is_editor_scratch(".swp")); /* vim, no buffer name yet */
  g_assert_true(fswrite_is_editor_scratch(".swo"));
  g_assert_false(fswrite_is_editor_scratch(".sw"));
  g_assert_false(fswrite_is_editor_scratch("#x.eml"));
  g_assert_false(fswrite_is_editor_scratch("#"));
  g_assert_false(fswrite_is_editor_scratch("9.eml"));
  g_assert_false(fswrite_is_editor_scratch(".x.eml.XSbe88"));
  g_assert_true(fswrite_is_editor_scratch(".#17.eml"));      /* emacs's lock */
  g_assert_true(fswrite_is_editor_scratch(".#-emacsa12345")); /* made, then renamed */
  g_assert_false(fswrite_is_editor_scratch(".#"));
  g_assert_false(fswrite_is_editor_scratch("a.#b"));
}

static void test_message_id(void) {
  static const struct {
    const char *msg, *id;
  } cases[] = {
      {"Message-ID: <a@b>\r\nSubject: x\r\n\r\nbody", "<a@b>"},
      {"Subject: x\nmessage-id:   <c@d>  \n\nbody", "<c@d>"},
      {"Message-Id:\r\n <folded@x>\r\n\r\n", "<folded@x>"},
      {"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", NULL},
      {"Subject: x\r\n", NULL},
      {"Message-ID:\r\n\r\n", NULL},
      {"X-Message-ID: <no@x>\r\n\r\n", NULL},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *id = fswrite_message_id(cases[i].msg, strlen(cases[i].msg));
    g_assert_cmpstr(id, ==, cases[i].id);
  }
}

static void test_flags(void) {
  g_assert_true(imap_flag_valid("\\Seen"));
  g_assert_true(imap_flag_valid("\\seen"));
  g_assert_true(imap_flag_valid("$Work"));
  g_assert_true(imap_flag_valid("NonJunk"));
  g_assert_false(imap_flag_valid("\\Recent"));
  g_assert_false(imap_flag_valid("\\*"));
  g_assert_false(imap_flag_valid("\\Foo"));
  g_assert_false(imap_flag_valid(""));
  g_assert_false(imap_flag_valid("a b"));
  g_assert_false(imap_flag_valid("a(b"));
  g_assert_false(imap_flag_valid("a\"b"));
  g_assert_false(imap_flag_valid("a%b"));
  g_assert_false(imap_flag_valid("a*"));
  g_assert_false(imap_flag_valid("a]"));
  g_assert_false(imap_flag_valid("{3}"));
  g_assert_false(imap_flag_valid("a\\b"));
  g_assert_false(imap_flag_valid("caf\xc3\xa9"));

  g_autoptr(GError) error = NULL;
  g_auto(GStrv) v = imap_flags_parse("  \\seen \\FLAGGED\t$Work \\Seen", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(g_strv_length(v), ==, 3);
  g_assert_cmpstr(v[0], ==, "\\Seen");
  g_assert_cmpstr(v[1], ==, "\\Flagged");
  g_assert_cmpstr(v[2], ==, "$Work");
  g_auto(GStrv) empty = imap_flags_parse("", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(g_strv_length(empty), ==, 0);
  g_auto(GStrv) bad = imap_flags_parse("\\Seen (x", &error);
  g_assert_null(bad);
  g_assert_nonnull(error);
  g_clear_error(&error);
  /* CR/LF are not separators: no second line of protocol. */
  g_auto(GStrv) crlf = imap_flags_parse("\\Seen\r\nA1 EXPUNGE", &error);
  g_assert_null(crlf);
  g_assert_nonnull(error);
}

static ImapVal atom(const char *s) {
  ImapVal v = {.type = IMAP_VAL_ATOM, .data = s, .len = strlen(s)};
  return v;
}

static void test_copyuid(void) {
  ImapVal items[3] = {atom("38505"), atom("304,319:320"), atom("3956:3958")};
  ImapVal list = {.type = IMAP_VAL_LIST, .items = items, .n_items = 3};
  ImapCopyUid cu = {0};
  g_assert_true(imap_parse_copyuid(&list, &cu));
  g_assert_cmpuint(cu.uidvalidity, ==, 38505);
  g_assert_cmpuint(imap_copyuid_lookup(&cu, 304), ==, 3956);
  g_assert_cmpuint(imap_copyuid_lookup(&cu, 319), ==, 3957);
  g_assert_cmpuint(imap_copyuid_lookup(&cu, 320), ==, 3958);
  g_assert_cmpuint(imap_copyuid_lookup(&cu, 305), ==, 0);
  imap_copyuid_clear(&cu);

  ImapVal bad_items[3] = {atom("1"), atom("1:2"), atom("5")};
  ImapVal bad = {.type = IMAP_VAL_LIST, .items = bad_items, .n_items = 3};
  g_assert_false(imap_parse_copyuid(&bad, &cu));
  g_assert_cmpuint(imap_copyuid_lookup(&cu, 1), ==, 0);
}

/* The written ranges of a staged file, as "a-b,c-d" ([a, b) each). */
static char *wr_text(GArray *w) {
  GString *out = g_string_new(NULL);
  for (guint i = 0; i < w->len; i++) {
    const guint64 *r = &g_array_index(w, guint64, 2 * i);
    g_string_append_printf(out, "%s%" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT, i ? "," : "",
                           r[0], r[1]);
  }
  return g_string_free(out, FALSE);
}

/* Writes in any order merge into sorted, disjoint ranges (restic's parts
 * come out of order); a truncate cuts them. */
static void test_written_ranges(void) {
  GArray *w = g_array_new(FALSE, FALSE, 2 * sizeof(guint64));
  static const struct {
    guint64 start, end;
    gboolean cut; /* start is a size to truncate to */
    const char *want;
  } steps[] = {
      {0, 10, FALSE, "0-10"},
      {10, 20, FALSE, "0-20"},                  /* meets: merged */
      {50, 60, FALSE, "0-20,50-60"},
      {30, 40, FALSE, "0-20,30-40,50-60"},      /* between */
      {35, 36, FALSE, "0-20,30-40,50-60"},      /* inside */
      {25, 25, FALSE, "0-20,30-40,50-60"},      /* empty */
      {18, 52, FALSE, "0-60"},                  /* spans three */
      {70, 80, FALSE, "0-60,70-80"},
      {65, 66, FALSE, "0-60,65-66,70-80"},
      {75, 0, TRUE, "0-60,65-66,70-75"},        /* truncated inside one */
      {66, 0, TRUE, "0-60,65-66"},              /* at an end */
      {62, 0, TRUE, "0-60"},                    /* in a gap */
      {0, 0, TRUE, ""},
      {5, 9, FALSE, "5-9"},
      {0, 5, FALSE, "0-9"},                     /* meets from below */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(steps); i++) {
    if (steps[i].cut)
      staging_written_cut(w, steps[i].start);
    else
      staging_written_add(w, steps[i].start, steps[i].end);
    g_autofree char *got = wr_text(w);
    g_assert_cmpstr(got, ==, steps[i].want);
  }
  g_array_unref(w);
}

int main(int argc, char **argv) {
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/write/crlf", test_crlf);
  g_test_add_func("/write/written-ranges", test_written_ranges);
  g_test_add_func("/write/temp-name", test_temp_name);
  g_test_add_func("/write/editor-scratch", test_editor_scratch);
  g_test_add_func("/write/message-id", test_message_id);
  g_test_add_func("/write/flags", test_flags);
  g_test_add_func("/write/copyuid", test_copyuid);
  return g_test_run();
}
