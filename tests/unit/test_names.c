/* test_names.c - table and property tests for names.c.
 *
 * Random inputs come from a GRand with a fixed seed rather than
 * g_test_rand_int(): GTest picks a new seed on every run unless --seed is
 * given, and a failure here should reproduce without extra flags.
 */
#include "imapfuse/names.h"

#include <string.h>

#define NAMES_TEST_SEED 0x1a2b3c4du
#define NAMES_TEST_ROUNDS 5000

typedef struct {
  const char *utf8;
  const char *mutf7;
} Mutf7Case;

/* Canonical pairs: each side maps to the other in both directions. */
static const Mutf7Case mutf7_cases[] = {
  {"", ""},
  {"INBOX", "INBOX"},
  {"Réunions", "R&AOk-unions"},
  {"☺!", "&Jjo-!"},
  {"~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"},
  {"&", "&-"},
  {"&&", "&-&-"},
  {"1&1", "1&-1"},
  {"&AOk-", "&-AOk-"},
  {"Entwürfe", "Entw&APw-rfe"},
  {"über", "&APw-ber"},
  {"mü", "m&APw-"},
  {"äö", "&AOQA9g-"},
  {"äöü", "&AOQA9gD8-"},
  {"\t", "&AAk-"},
  {"\t&\t", "&AAk-&-&AAk-"},
  {"m\177ll", "m&AH8-ll"},
  {"😀", "&2D3eAA-"},
  {"😂", "&2D3eAg-"},
  {"a😀b", "a&2D3eAA-b"},
  {"😈😎", "&2D3eCNg93g4-"},
  {"\xf4\x8f\xbf\xbf", "&2,,f,w-"}, /* U+10FFFF, the last code point */
  {"Ḁḁ", "&HgAeAQ-"},
  {" -+,~", " -+,~"},
};

static void
names_assert_invalid(GError *error)
{
  g_assert_error(error, NAMES_ERROR, NAMES_ERROR_INVALID);
  g_assert_nonnull(error->message);
}

static void
mutf7_assert_rejected(const char *in)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *out = names_mutf7_to_utf8(in, &error);

  if (out != NULL)
    g_test_message("\"%s\" unexpectedly decoded to \"%s\"", in, out);
  g_assert_null(out);
  names_assert_invalid(error);
}

/* A random valid UTF-8 string that stresses run boundaries: ASCII next to
 * '&' and '-', controls, BMP, and non-BMP characters. */
static char *
names_random_utf8(GRand *rng, guint max_chars)
{
  GString *s = g_string_new(NULL);
  guint n = (guint)g_rand_int_range(rng, 0, (gint32)max_chars + 1);

  for (guint i = 0; i < n; i++) {
    gunichar c;

    switch (g_rand_int_range(rng, 0, 7)) {
    case 0:
      c = (gunichar)g_rand_int_range(rng, 0x20, 0x7f);
      break;
    case 1:
      c = "&-+,/.%"[g_rand_int_range(rng, 0, 7)];
      break;
    case 2:
      c = (gunichar)g_rand_int_range(rng, 0x01, 0x20);
      break;
    case 3:
      c = (gunichar)g_rand_int_range(rng, 0x7f, 0x800);
      break;
    case 4:
      c = (gunichar)g_rand_int_range(rng, 0x800, 0xd800);
      break;
    case 5:
      c = (gunichar)g_rand_int_range(rng, 0xe000, 0x10000);
      break;
    default:
      c = (gunichar)g_rand_int_range(rng, 0x10000, 0x110000);
      break;
    }
    g_string_append_unichar(s, c);
  }
  return g_string_free(s, FALSE);
}

/* ---- modified UTF-7 ---------------------------------------------------- */

static void
test_mutf7_decode_table(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(mutf7_cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_mutf7_to_utf8(mutf7_cases[i].mutf7, &error);

    g_assert_no_error(error);
    g_assert_cmpstr(out, ==, mutf7_cases[i].utf8);
  }
}

static void
test_mutf7_encode_table(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(mutf7_cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_utf8_to_mutf7(mutf7_cases[i].utf8, &error);

    g_assert_no_error(error);
    g_assert_cmpstr(out, ==, mutf7_cases[i].mutf7);
  }
}

static void
test_mutf7_rfc_example(void)
{
  /* The example as RFC 3501 prints it (the table has it reversed). */
  g_autoptr(GError) error = NULL;
  g_autofree char *dec = names_mutf7_to_utf8("~peter/mail/&ZeVnLIqe-/&U,BTFw-",
                                             &error);
  g_autofree char *enc = NULL;

  g_assert_no_error(error);
  g_assert_cmpstr(dec, ==, "~peter/mail/日本語/台北");
  enc = names_utf8_to_mutf7(dec, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(enc, ==, "~peter/mail/&ZeVnLIqe-/&U,BTFw-");
}

static void
test_mutf7_reject_raw_bytes(void)
{
  /* 8-bit bytes (raw UTF-8 is not modified UTF-7) and control characters
   * must be base64-encoded (RFC 3501: octets 0x00-0x1f, 0x7f-0xff). */
  static const char *const bad[] = {
    "R\xc3\xa9unions", "\x80", "abc\xff", "\t", "a\nb", "\x1f", "\x7f",
    "&AOk-\xc3\xa9",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_unterminated(void)
{
  static const char *const bad[] = {
    "&", "a&", "&AOk", "R&AOkunions", "&2D3eAA", "&-&",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_bad_base64(void)
{
  static const char *const bad[] = {
    "&&-",      /* '&' inside a run */
    "&*Ak-",
    "&A/k-",    /* standard base64 '/', modified uses ',' */
    "&AOk=-",   /* padding */
    "&AO k-",
    "&AO\xc3\xa9-",
    "&AO.k-",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_leftover_bits(void)
{
  static const char *const bad[] = {
    "&A-",        /* 6 bits, no code unit */
    "&AA-",       /* 12 bits */
    "&AOl-",      /* é with non-zero padding bits */
    "&AOkA-",     /* é plus a spare character (8 leftover bits) */
    "&AOQA9h-",   /* äö with non-zero padding bits */
    "&2D3eAB-",   /* emoji with non-zero padding bits */
    "&AOQA9gD8A-",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_non_minimal(void)
{
  static const char *const bad[] = {
    "&AGE-",      /* 'a' */
    "&ACY-",      /* '&' must be "&-" */
    "&AC0-",      /* '-' */
    "&ACA-",      /* ' ', lowest printable */
    "&AH4-",      /* '~', highest printable */
    "&AOkAYQ-",   /* "éa": 'a' inside a run */
    "x&AGEAYg-y",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_surrogates(void)
{
  static const char *const bad[] = {
    "&2D0-",        /* lone high surrogate at end of run */
    "&3gA-",        /* lone low surrogate */
    "&2D3YPQ-",     /* high followed by high */
    "&2D0A6Q-",     /* high followed by é */
    "&2D0-&3gA-",   /* pair split across two runs */
    "&3gDYPQ-",     /* low then high: reversed pair */
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
    mutf7_assert_rejected(bad[i]);
}

static void
test_mutf7_reject_nul(void)
{
  mutf7_assert_rejected("&AAA-");
  mutf7_assert_rejected("a&AAA-b");
  mutf7_assert_rejected("&AOkAAA-");
}

static void
test_mutf7_adjacent_runs(void)
{
  /* Not forbidden by RFC 3501, so accepted; the canonical spelling is one
   * run, so this name does not survive decode + encode unchanged. */
  g_autoptr(GError) error = NULL;
  g_autofree char *dec = names_mutf7_to_utf8("&AMA-&AMA-", &error);
  g_autofree char *enc = NULL;

  g_assert_no_error(error);
  g_assert_cmpstr(dec, ==, "ÀÀ");
  enc = names_utf8_to_mutf7(dec, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(enc, ==, "&AMAAwA-");
}

static void
test_mutf7_encode_invalid_utf8(void)
{
  static const char *const bad[] = {
    "\xff", "\xc3", "\xc3\x28", "a\200b", "\xe1\xb8", "\xf0\x9f\x98",
    "\xed\xa0\x80",       /* UTF-8-encoded surrogate (CESU-8) */
    "\xc0\xaf",           /* overlong '/' */
    "\xf4\x90\x80\x80",   /* above U+10FFFF */
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_utf8_to_mutf7(bad[i], &error);

    g_assert_null(out);
    names_assert_invalid(error);
  }
}

static void
test_mutf7_roundtrip_random(void)
{
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED);

  for (guint i = 0; i < NAMES_TEST_ROUNDS; i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *in = names_random_utf8(rng, 12);
    g_autofree char *enc = names_utf8_to_mutf7(in, &error);
    g_autofree char *dec = NULL;
    g_autofree char *again = NULL;

    g_assert_no_error(error);
    /* Output is always 7-bit printable. */
    for (const char *p = enc; *p != '\0'; p++)
      g_assert_true(*p >= 0x20 && *p <= 0x7e);
    dec = names_mutf7_to_utf8(enc, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(dec, ==, in);
    /* The encoder's output is canonical: decoding it and encoding again
     * gives the same bytes, so a server name survives a round trip. */
    again = names_utf8_to_mutf7(dec, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(again, ==, enc);
  }
}

static void
test_mutf7_decode_random_garbage(void)
{
  /* Random strings over the interesting alphabet: whatever the decoder
   * accepts must re-encode to the very same bytes (strictness), and it must
   * never crash (ASan/UBSan). */
  static const char alphabet[] = "&-AaZz09+,/=.Ok2D3eg";
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED + 1);
  guint accepted = 0;

  for (guint i = 0; i < NAMES_TEST_ROUNDS * 4; i++) {
    g_autoptr(GError) error = NULL;
    char in[16];
    guint n = (guint)g_rand_int_range(rng, 0, sizeof in);
    g_autofree char *dec = NULL;
    g_autofree char *enc = NULL;

    for (guint j = 0; j < n; j++)
      in[j] = alphabet[g_rand_int_range(rng, 0, sizeof alphabet - 1)];
    in[n] = '\0';

    dec = names_mutf7_to_utf8(in, &error);
    if (dec == NULL) {
      names_assert_invalid(error);
      continue;
    }
    g_assert_true(g_utf8_validate(dec, -1, NULL));
    enc = names_utf8_to_mutf7(dec, &error);
    g_assert_no_error(error);
    /* Adjacent runs are the one accepted non-canonical form. */
    if (strcmp(enc, in) != 0)
      g_assert_nonnull(strstr(in, "-&"));
    accepted++;
  }
  g_assert_cmpuint(accepted, >, 0);
}

/* ---- directory-name escaping -------------------------------------------- */

typedef struct {
  const char *component;
  const char *dirname;
} EscapeCase;

static const EscapeCase escape_cases[] = {
  {"", "%"},
  {"%", "%25"},
  {"%%", "%25%25"},
  {"50%", "50%25"},
  {"%2F", "%252F"},
  {"a/b", "a%2Fb"},
  {"/", "%2F"},
  {".", "%2E"},
  {"..", "%2E."},
  {".hidden", "%2Ehidden"},
  {".eml", "%2Eeml"},
  {"a.b", "a.b"},
  {"a.", "a."},
  {"tab\there", "tab%09here"},
  {"\x01", "%01"},
  {"\x1f", "%1F"},
  {"\x7f", "%7F"},
  {"1.eml", "%31.eml"},
  {"0.eml", "%30.eml"},
  {"01.eml", "%301.eml"},
  {"4294967295.eml", "%34294967295.eml"},
  {"4294967296.eml", "%34294967296.eml"},
  {"1.EML", "1.EML"},
  {"1.eml~", "1.eml~"},
  {"x1.eml", "x1.eml"},
  {"1", "1"},
  {"2024", "2024"},
  {"INBOX", "INBOX"},
  {"Réunions", "Réunions"},
  {"台北", "台北"},
  {"a b-c+d,e~f&g", "a b-c+d,e~f&g"},
};

static void
test_escape_table(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(escape_cases); i++) {
    g_autofree char *out = names_escape_component(escape_cases[i].component);

    g_assert_cmpstr(out, ==, escape_cases[i].dirname);
  }
}

static void
test_unescape_table(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(escape_cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out =
        names_unescape_component(escape_cases[i].dirname, &error);

    g_assert_no_error(error);
    g_assert_cmpstr(out, ==, escape_cases[i].component);
  }
}

static void
test_unescape_user_names(void)
{
  /* Names a user might type for mkdir (or a local directory cp -r
   * copies in): only what the escaping writes decodes (hex in either
   * case); any other '%' is the name's own. */
  static const EscapeCase cases[] = {
    {"100%", "100%"},
    {"%zz", "%zz"},
    {"%2", "%2"},
    {"a%", "a%"},
    {"%%", "%%"},
    {"%%25", "%%"},
    {"%2f", "/"},
    {"%2e.", ".."},
    {"a%2e", "a%2e"},     /* '.' is escaped only first */
    {"%0a", "\n"},
    {"%7F", "\x7f"},
    {"%31.eml", "1.eml"}, /* a message's name, escaped first */
    {"%31abc", "%31abc"},
    {"x%31.eml", "x%31.eml"},
    {"Q3%2024", "Q3%2024"},
    {"x%41", "x%41"},
    {"100%AB", "100%AB"},
    {"Report %E9", "Report %E9"},
    {"caf%C3%A9", "caf%C3%A9"},
    {"%00", "%00"},
    {"%FF", "%FF"},
    {".hidden", ".hidden"},
    {"1.eml", "1.eml"},
    {"", ""},
  };

  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_unescape_component(cases[i].component, &error);

    g_assert_no_error(error);
    g_assert_cmpstr(out, ==, cases[i].dirname);
  }
}

static void
test_unescape_invalid(void)
{
  static const char *const bad[] = {
    "caf\xc3", "\xff", "a\xed\xa0\x80",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_unescape_component(bad[i], &error);

    g_assert_null(out);
    names_assert_invalid(error);
  }
}

static gboolean
test_looks_like_message(const char *s)
{
  const char *p = s;

  while (g_ascii_isdigit(*p))
    p++;
  return p != s && strcmp(p, ".eml") == 0;
}

static void
test_escape_roundtrip_random(void)
{
  static const char *const pieces[] = {
    "%", "/", ".", "..", "\x01", "\x1f", "\x7f", "\t", "\n", "0", "1", "9",
    "42", ".eml", "%2F", "%25", "%2E", "%%", "1.eml", "a", "Z", " ", "-",
    "é", "台", "😀", "&", "~",
  };
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED + 2);

  for (guint i = 0; i < NAMES_TEST_ROUNDS; i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(GString) in = g_string_new(NULL);
    guint n = (guint)g_rand_int_range(rng, 0, 7);
    g_autofree char *esc = NULL;
    g_autofree char *back = NULL;

    for (guint j = 0; j < n; j++)
      g_string_append(in, pieces[g_rand_int_range(rng, 0,
                                                  G_N_ELEMENTS(pieces))]);
    g_assert_true(g_utf8_validate(in->str, -1, NULL));

    esc = names_escape_component(in->str);
    g_assert_nonnull(esc);
    g_assert_cmpstr(esc, !=, "");
    g_assert_cmpstr(esc, !=, ".");
    g_assert_cmpstr(esc, !=, "..");
    g_assert_null(strchr(esc, '/'));
    g_assert_cmpint(esc[0], !=, '.');
    g_assert_false(names_parse_message_filename(esc, NULL));
    g_assert_false(test_looks_like_message(esc));
    for (const char *p = esc; *p != '\0'; p++)
      g_assert_false((guchar)*p < 0x20 || *p == 0x7f);

    back = names_unescape_component(esc, &error);
    g_assert_no_error(error);
    g_assert_cmpstr(back, ==, in->str);
  }
}

static void
test_escape_roundtrip_random_utf8(void)
{
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED + 3);

  for (guint i = 0; i < NAMES_TEST_ROUNDS; i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *in = names_random_utf8(rng, 8);
    g_autofree char *esc = names_escape_component(in);
    g_autofree char *back = names_unescape_component(esc, &error);

    g_assert_no_error(error);
    g_assert_cmpstr(back, ==, in);
    g_assert_null(strchr(esc, '/'));
    g_assert_cmpint(esc[0], !=, '.');
    g_assert_cmpint(esc[0], !=, '\0');
  }
}

/* ---- mailbox hierarchy ------------------------------------------------- */

static void
names_assert_strv(char **got, const char *const *want)
{
  g_assert_nonnull(got);
  g_assert_cmpuint(g_strv_length(got), ==,
                   g_strv_length((char **)want));
  for (gsize i = 0; want[i] != NULL; i++)
    g_assert_cmpstr(got[i], ==, want[i]);
}

static void
test_split_dot(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) parts = names_split_mailbox("INBOX.Sent.2024", '.', FALSE,
                                            &error);

  g_assert_no_error(error);
  names_assert_strv(parts, (const char *const[]){"INBOX", "Sent", "2024",
                                                  NULL});
}

static void
test_split_slash_mutf7(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) a = names_split_mailbox("Archive/R&AOk-unions", '/', FALSE,
                                        &error);
  g_auto(GStrv) b = NULL;

  g_assert_no_error(error);
  names_assert_strv(a, (const char *const[]){"Archive", "Réunions", NULL});

  b = names_split_mailbox("~peter/mail/&U,BTFw-/&ZeVnLIqe-", '/', FALSE,
                          &error);
  g_assert_no_error(error);
  names_assert_strv(b, (const char *const[]){"~peter", "mail", "台北",
                                             "日本語", NULL});
}

static void
test_split_other_delim_inside(void)
{
  /* With '.' as delimiter, '/' is an ordinary character and vice versa. */
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) a = names_split_mailbox("INBOX.a/b.&ZeVnLIqe-", '.', FALSE,
                                        &error);
  g_auto(GStrv) b = NULL;

  g_assert_no_error(error);
  names_assert_strv(a, (const char *const[]){"INBOX", "a/b", "日本語", NULL});
  b = names_split_mailbox("v1.2/x", '/', FALSE, &error);
  g_assert_no_error(error);
  names_assert_strv(b, (const char *const[]){"v1.2", "x", NULL});
}

static void
test_split_flat(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) parts = names_split_mailbox("Archive/R&AOk-unions.2024", '\0',
                                            FALSE, &error);

  g_assert_no_error(error);
  names_assert_strv(parts, (const char *const[]){"Archive/Réunions.2024",
                                                  NULL});
}

static void
test_split_utf8(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) a = names_split_mailbox("Archive/Réunions", '/', TRUE, &error);
  g_auto(GStrv) b = NULL;

  g_assert_no_error(error);
  names_assert_strv(a, (const char *const[]){"Archive", "Réunions", NULL});

  /* With UTF8=ACCEPT, mUTF-7 text is taken literally. */
  b = names_split_mailbox("Archive/R&AOk-unions", '/', TRUE, &error);
  g_assert_no_error(error);
  names_assert_strv(b, (const char *const[]){"Archive", "R&AOk-unions", NULL});
}

static void
test_split_empty_components(void)
{
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) a = names_split_mailbox("a..b", '.', FALSE, &error);
  g_auto(GStrv) b = NULL;

  g_assert_no_error(error);
  names_assert_strv(a, (const char *const[]){"a", "", "b", NULL});
  b = names_split_mailbox("INBOX.", '.', FALSE, &error);
  g_assert_no_error(error);
  names_assert_strv(b, (const char *const[]){"INBOX", "", NULL});
}

static void
test_split_invalid(void)
{
  static const struct {
    const char *name;
    char delim;
    gboolean utf8;
  } bad[] = {
    {"Archive/R\xc3\xa9unions", '/', FALSE}, /* raw 8-bit without UTF8 */
    {"Archive/&AGE-", '/', FALSE},
    {"Archive/&AOk", '/', FALSE},
    {"Archive/\xff", '/', TRUE},
    {"", '/', FALSE},
    {"", '\0', TRUE},
    {"a\xc3\xa9", (char)0xc3, TRUE},         /* non-ASCII delimiter */
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_auto(GStrv) parts = names_split_mailbox(bad[i].name, bad[i].delim,
                                              bad[i].utf8, &error);

    g_assert_null(parts);
    names_assert_invalid(error);
  }
}

static void
test_join_basic(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *a = names_join_mailbox(
      (const char *const[]){"INBOX", "Sent", "2024", NULL}, '.', FALSE,
      &error);
  g_autofree char *b = NULL;
  g_autofree char *c = NULL;
  g_autofree char *d = NULL;

  g_assert_no_error(error);
  g_assert_cmpstr(a, ==, "INBOX.Sent.2024");

  b = names_join_mailbox((const char *const[]){"Archive", "Réunions", NULL},
                         '/', FALSE, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(b, ==, "Archive/R&AOk-unions");

  c = names_join_mailbox((const char *const[]){"a/b", "R&D", "😀", NULL},
                         '.', FALSE, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(c, ==, "a/b.R&-D.&2D3eAA-");

  d = names_join_mailbox((const char *const[]){"Archive/Réunions", NULL},
                         '\0', FALSE, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(d, ==, "Archive/R&AOk-unions");
}

static void
test_join_utf8(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *a = names_join_mailbox(
      (const char *const[]){"Archive", "Réunions", "R&D", NULL}, '/', TRUE,
      &error);

  g_assert_no_error(error);
  g_assert_cmpstr(a, ==, "Archive/Réunions/R&D");
}

static void
test_join_reject(void)
{
  static const char *const none[] = {NULL};
  static const char *const has_dot[] = {"INBOX", "a.b", NULL};
  static const char *const empty_first[] = {"", "x", NULL};
  static const char *const empty_last[] = {"INBOX", "", NULL};
  static const char *const not_utf8[] = {"INBOX", "\xc3", NULL};
  static const char *const two[] = {"a", "b", NULL};
  static const struct {
    const char *const *components;
    char delim;
    gboolean utf8;
  } bad[] = {
    {none, '.', FALSE},
    {has_dot, '.', FALSE},
    {has_dot, '.', TRUE},
    {empty_first, '/', FALSE},
    {empty_last, '/', TRUE},
    {not_utf8, '/', FALSE},
    {not_utf8, '/', TRUE},
    {two, '\0', FALSE},                    /* flat: one component only */
    {two, (char)0xc3, TRUE},               /* non-ASCII delimiter */
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *out = names_join_mailbox(bad[i].components, bad[i].delim,
                                              bad[i].utf8, &error);

    g_assert_null(out);
    names_assert_invalid(error);
  }
}

static void
test_join_split_roundtrip(void)
{
  static const char delims[] = {'/', '.', '\0'};
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED + 4);

  for (guint i = 0; i < NAMES_TEST_ROUNDS; i++) {
    g_autoptr(GError) error = NULL;
    char delim = delims[g_rand_int_range(rng, 0, G_N_ELEMENTS(delims))];
    gboolean utf8 = g_rand_boolean(rng);
    guint n = delim ? (guint)g_rand_int_range(rng, 1, 5) : 1;
    g_autoptr(GPtrArray) comps = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *joined = NULL;
    g_auto(GStrv) parts = NULL;

    for (guint j = 0; j < n; j++) {
      g_autofree char *raw = names_random_utf8(rng, 6);
      char *c = g_strdelimit(g_strdup(raw), (const char[]){delim, '\0'}, '_');

      if (*c == '\0') {
        g_free(c);
        c = g_strdup("x");
      }
      g_ptr_array_add(comps, c);
    }
    g_ptr_array_add(comps, NULL);

    joined = names_join_mailbox((const char *const *)comps->pdata, delim,
                                utf8, &error);
    g_assert_no_error(error);
    parts = names_split_mailbox(joined, delim, utf8, &error);
    g_assert_no_error(error);
    names_assert_strv(parts, (const char *const *)comps->pdata);
  }
}

/* ---- message files ----------------------------------------------------- */

static void
test_message_filename(void)
{
  static const struct {
    guint32 uid;
    const char *name;
  } cases[] = {
    {1, "1.eml"},
    {42, "42.eml"},
    {1000000, "1000000.eml"},
    {G_MAXUINT32, "4294967295.eml"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *name = names_message_filename(cases[i].uid);
    guint32 uid = 0;

    g_assert_cmpstr(name, ==, cases[i].name);
    g_assert_true(names_parse_message_filename(name, &uid));
    g_assert_cmpuint(uid, ==, cases[i].uid);
  }
}

static void
test_message_filename_zero(void)
{
  /* UID 0 is a programming error: critical warning, NULL. */
  if (g_test_subprocess()) {
    g_autofree char *name = names_message_filename(0);

    g_assert_null(name);
    return;
  }
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_failed();
  g_test_trap_assert_stderr("*CRITICAL*uid != 0*");
}

static void
test_message_parse_reject(void)
{
  static const char *const bad[] = {
    "", "0.eml", "01.eml", "007.eml", "1.EML", "1.Eml", "1.eml~", "1.eml.",
    "1.em", "1", ".eml", "eml", "-1.eml", "+1.eml", " 1.eml", "1 .eml",
    "1.eml ", "1a.eml", "0x1.eml", "4294967296.eml", "9999999999.eml",
    "18446744073709551617.eml", "99999999999999999999999.eml", "1..eml",
    "%31.eml", "1.eml/",
  };

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    guint32 uid = 12345;

    if (names_parse_message_filename(bad[i], &uid))
      g_test_message("\"%s\" unexpectedly parsed as %u", bad[i], uid);
    g_assert_false(names_parse_message_filename(bad[i], &uid));
    g_assert_cmpuint(uid, ==, 12345); /* untouched on failure */
  }
}

static void
test_message_parse_accept(void)
{
  guint32 uid = 0;

  g_assert_true(names_parse_message_filename("4294967295.eml", &uid));
  g_assert_cmpuint(uid, ==, 4294967295u);
  g_assert_true(names_parse_message_filename("10.eml", &uid));
  g_assert_cmpuint(uid, ==, 10);
  g_assert_true(names_parse_message_filename("1.eml", NULL));
}

static void
test_message_roundtrip_random(void)
{
  g_autoptr(GRand) rng = g_rand_new_with_seed(NAMES_TEST_SEED + 5);

  for (guint i = 0; i < NAMES_TEST_ROUNDS; i++) {
    /* Spread over all magnitudes, not just large numbers. */
    guint32 want = g_rand_int(rng) >> g_rand_int_range(rng, 0, 32);
    g_autofree char *name = NULL;
    g_autofree char *esc = NULL;
    guint32 got = 0;

    if (want == 0)
      want = 1;
    name = names_message_filename(want);
    g_assert_true(names_parse_message_filename(name, &got));
    g_assert_cmpuint(got, ==, want);
    /* A message name is never produced by the directory escaping. */
    esc = names_escape_component(name);
    g_assert_false(names_parse_message_filename(esc, NULL));
  }
}

static void
test_error_quark(void)
{
  g_assert_cmpstr(g_quark_to_string(NAMES_ERROR), ==, "names-error-quark");
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/names/mutf7/decode-table", test_mutf7_decode_table);
  g_test_add_func("/names/mutf7/encode-table", test_mutf7_encode_table);
  g_test_add_func("/names/mutf7/rfc-example", test_mutf7_rfc_example);
  g_test_add_func("/names/mutf7/reject-raw-bytes", test_mutf7_reject_raw_bytes);
  g_test_add_func("/names/mutf7/reject-unterminated",
                  test_mutf7_reject_unterminated);
  g_test_add_func("/names/mutf7/reject-bad-base64",
                  test_mutf7_reject_bad_base64);
  g_test_add_func("/names/mutf7/reject-leftover-bits",
                  test_mutf7_reject_leftover_bits);
  g_test_add_func("/names/mutf7/reject-non-minimal",
                  test_mutf7_reject_non_minimal);
  g_test_add_func("/names/mutf7/reject-surrogates",
                  test_mutf7_reject_surrogates);
  g_test_add_func("/names/mutf7/reject-nul", test_mutf7_reject_nul);
  g_test_add_func("/names/mutf7/adjacent-runs", test_mutf7_adjacent_runs);
  g_test_add_func("/names/mutf7/encode-invalid-utf8",
                  test_mutf7_encode_invalid_utf8);
  g_test_add_func("/names/mutf7/roundtrip-random", test_mutf7_roundtrip_random);
  g_test_add_func("/names/mutf7/decode-random-garbage",
                  test_mutf7_decode_random_garbage);

  g_test_add_func("/names/escape/table", test_escape_table);
  g_test_add_func("/names/escape/unescape-table", test_unescape_table);
  g_test_add_func("/names/escape/unescape-user-names",
                  test_unescape_user_names);
  g_test_add_func("/names/escape/unescape-invalid", test_unescape_invalid);
  g_test_add_func("/names/escape/roundtrip-random",
                  test_escape_roundtrip_random);
  g_test_add_func("/names/escape/roundtrip-random-utf8",
                  test_escape_roundtrip_random_utf8);

  g_test_add_func("/names/split/dot", test_split_dot);
  g_test_add_func("/names/split/slash-mutf7", test_split_slash_mutf7);
  g_test_add_func("/names/split/other-delim-inside",
                  test_split_other_delim_inside);
  g_test_add_func("/names/split/flat", test_split_flat);
  g_test_add_func("/names/split/utf8", test_split_utf8);
  g_test_add_func("/names/split/empty-components", test_split_empty_components);
  g_test_add_func("/names/split/invalid", test_split_invalid);
  g_test_add_func("/names/join/basic", test_join_basic);
  g_test_add_func("/names/join/utf8", test_join_utf8);
  g_test_add_func("/names/join/reject", test_join_reject);
  g_test_add_func("/names/join/split-roundtrip", test_join_split_roundtrip);

  g_test_add_func("/names/message/filename", test_message_filename);
  g_test_add_func("/names/message/filename-zero", test_message_filename_zero);
  g_test_add_func("/names/message/parse-reject", test_message_parse_reject);
  g_test_add_func("/names/message/parse-accept", test_message_parse_accept);
  g_test_add_func("/names/message/roundtrip-random",
                  test_message_roundtrip_random);

  g_test_add_func("/names/error-quark", test_error_quark);

  return g_test_run();
}
