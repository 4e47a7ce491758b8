/* names.c - names on the server <-> names in the filesystem.
 *
 * Three small codecs, all pure string functions:
 *
 *  - Modified UTF-7 (RFC 3501 5.1.3).  The decoder is strict because a
 *    mailbox name we decode is later re-encoded to address the same mailbox
 *    (SELECT, RENAME, DELETE): only the canonical encoding of a name
 *    survives that round trip, so anything non-canonical is refused rather
 *    than silently turned into the name of a different mailbox.  The one
 *    tolerated exception is two adjacent base64 runs ("&AMA-&AMA-"), which
 *    RFC 3501 does not forbid; such a name decodes, but re-encodes as a
 *    single run.
 *
 *  - The escaping of one mailbox-name component into a directory name
 *    (table in names.h).  Every '%' the encoder writes starts a "%XX"
 *    escape (or is the whole name "%"), which is what makes it reversible.
 *
 *  - Message file names "<UID>.eml", parsed strictly so that one UID has
 *    exactly one file name.
 */
#include "imapfuse/names.h"

#include <string.h>

G_DEFINE_QUARK(names-error-quark, names_error)

/* ---- modified UTF-7 ---------------------------------------------------- */

/* RFC 3501 modified base64: ',' instead of '/', no '=' padding. */
static const char mutf7_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int
mutf7_b64_value(guchar c)
{
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == ',')
    return 63;
  return -1;
}

/* Printable US-ASCII: the only characters that may appear unencoded, and so
 * (RFC 3501: "MUST NOT") the ones that may never appear encoded. */
static gboolean
mutf7_is_direct(gunichar c)
{
  return c >= 0x20 && c <= 0x7e;
}

/* Feeds one UTF-16 code unit of a base64 run.  *high holds a pending high
 * surrogate between calls; it must be 0 again when the run ends. */
static gboolean
mutf7_take_unit(guint unit, gunichar *high, GString *out, gsize offset,
                GError **error)
{
  gunichar c;

  if (*high != 0) {
    if (unit < 0xdc00 || unit > 0xdfff) {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "high surrogate not followed by a low surrogate "
                  "(offset %" G_GSIZE_FORMAT ")", offset);
      return FALSE;
    }
    c = 0x10000 + ((*high - 0xd800) << 10) + (unit - 0xdc00);
    *high = 0;
  } else if (unit >= 0xd800 && unit <= 0xdbff) {
    *high = unit;
    return TRUE;
  } else if (unit >= 0xdc00 && unit <= 0xdfff) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "lone low surrogate (offset %" G_GSIZE_FORMAT ")", offset);
    return FALSE;
  } else if (unit == 0) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "encoded NUL (offset %" G_GSIZE_FORMAT ")", offset);
    return FALSE;
  } else if (mutf7_is_direct(unit)) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "printable ASCII character encoded in base64 "
                "(offset %" G_GSIZE_FORMAT ")", offset);
    return FALSE;
  } else {
    c = unit;
  }
  g_string_append_unichar(out, c);
  return TRUE;
}

/* Decodes the base64 run starting at *pp (just after the '&', known not to
 * be '-') up to and including its '-'; advances *pp past the '-'. */
static gboolean
mutf7_decode_run(const char **pp, const char *start, GString *out,
                 GError **error)
{
  const char *p = *pp;
  guint32 bits = 0;
  guint nbits = 0;
  gunichar high = 0;

  for (; *p != '-'; p++) {
    int v;

    if (*p == '\0') {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "unterminated base64 run (no '-' after offset %"
                  G_GSIZE_FORMAT ")", (gsize)(*pp - 1 - start));
      return FALSE;
    }
    v = mutf7_b64_value((guchar)*p);
    if (v < 0) {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "byte 0x%02X is not modified base64 (offset %"
                  G_GSIZE_FORMAT ")", (guchar)*p, (gsize)(p - start));
      return FALSE;
    }
    bits = (bits << 6) | (guint32)v;
    nbits += 6;
    if (nbits >= 16) {
      nbits -= 16;
      if (!mutf7_take_unit((bits >> nbits) & 0xffff, &high, out,
                           (gsize)(p - start), error))
        return FALSE;
      bits &= (1u << nbits) - 1;
    }
  }

  if (high != 0) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "high surrogate at end of base64 run (offset %"
                G_GSIZE_FORMAT ")", (gsize)(p - start));
    return FALSE;
  }
  /* A whole spare base64 character, or non-zero padding bits, would give
   * a second spelling of the same name. */
  if (nbits >= 6 || bits != 0) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "base64 run has leftover bits (offset %" G_GSIZE_FORMAT ")",
                (gsize)(p - start));
    return FALSE;
  }
  *pp = p + 1;
  return TRUE;
}

char *
names_mutf7_to_utf8(const char *in, GError **error)
{
  g_autoptr(GString) out = NULL;
  const char *p = in;

  g_return_val_if_fail(in != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  out = g_string_sized_new(strlen(in));
  while (*p != '\0') {
    guchar c = (guchar)*p;

    if (c != '&') {
      /* Control characters and 8-bit bytes must be base64-encoded. */
      if (!mutf7_is_direct(c)) {
        g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                    "raw byte 0x%02X in modified UTF-7 (offset %"
                    G_GSIZE_FORMAT ")", c, (gsize)(p - in));
        return NULL;
      }
      g_string_append_c(out, (char)c);
      p++;
      continue;
    }
    p++;
    if (*p == '-') {
      g_string_append_c(out, '&');
      p++;
      continue;
    }
    if (!mutf7_decode_run(&p, in, out, error))
      return NULL;
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* Appends one UTF-16 code unit to an open base64 run; whole 6-bit groups
 * are written at once, the rest (< 6 bits) stays in *bits. */
static void
mutf7_push_unit(GString *out, guint unit, guint32 *bits, guint *nbits)
{
  *bits = (*bits << 16) | unit;
  *nbits += 16;
  while (*nbits >= 6) {
    *nbits -= 6;
    g_string_append_c(out, mutf7_alphabet[(*bits >> *nbits) & 0x3f]);
  }
  *bits &= (1u << *nbits) - 1;
}

static void
mutf7_close_run(GString *out, guint32 *bits, guint *nbits)
{
  if (*nbits > 0)
    g_string_append_c(out, mutf7_alphabet[(*bits << (6 - *nbits)) & 0x3f]);
  g_string_append_c(out, '-');
  *bits = 0;
  *nbits = 0;
}

char *
names_utf8_to_mutf7(const char *in, GError **error)
{
  g_autoptr(GString) out = NULL;
  gboolean in_run = FALSE;
  guint32 bits = 0;
  guint nbits = 0;

  g_return_val_if_fail(in != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!g_utf8_validate(in, -1, NULL)) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "mailbox name is not valid UTF-8");
    return NULL;
  }

  out = g_string_sized_new(strlen(in) + 8);
  for (const char *p = in; *p != '\0'; p = g_utf8_next_char(p)) {
    gunichar c = g_utf8_get_char(p);

    if (mutf7_is_direct(c)) {
      if (in_run) {
        mutf7_close_run(out, &bits, &nbits);
        in_run = FALSE;
      }
      g_string_append_c(out, (char)c);
      if (c == '&')
        g_string_append_c(out, '-');
      continue;
    }
    if (!in_run) {
      g_string_append_c(out, '&');
      in_run = TRUE;
    }
    if (c >= 0x10000) {
      c -= 0x10000;
      mutf7_push_unit(out, 0xd800 + (c >> 10), &bits, &nbits);
      mutf7_push_unit(out, 0xdc00 + (c & 0x3ff), &bits, &nbits);
    } else {
      mutf7_push_unit(out, c, &bits, &nbits);
    }
  }
  /* RFC 3501: a name MUST end in US-ASCII, so an open run gets its '-'. */
  if (in_run)
    mutf7_close_run(out, &bits, &nbits);
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* ---- directory-name escaping -------------------------------------------- */

/* Digits followed by ".eml".  Wider than names_parse_message_filename
 * ("0.eml", "01.eml" too) so that no escaped name is even close to a
 * message file name. */
static gboolean
names_looks_like_message(const char *name)
{
  const char *p = name;

  while (g_ascii_isdigit(*p))
    p++;
  return p != name && strcmp(p, ".eml") == 0;
}

static gboolean
names_byte_needs_escape(guchar c)
{
  return c == '%' || c == '/' || (c >= 0x01 && c <= 0x1f) || c == 0x7f;
}

char *
names_escape_component(const char *component)
{
  g_autoptr(GString) out = NULL;
  gboolean escape_first;

  g_return_val_if_fail(component != NULL, NULL);

  if (component[0] == '\0')
    return g_strdup("%");

  escape_first = component[0] == '.' || names_looks_like_message(component);
  out = g_string_sized_new(strlen(component) + 4);
  for (const char *p = component; *p != '\0'; p++) {
    guchar c = (guchar)*p;

    if (names_byte_needs_escape(c) || (p == component && escape_first))
      g_string_append_printf(out, "%%%02X", c);
    else
      g_string_append_c(out, (char)c);
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

char *
names_unescape_component(const char *dirname, GError **error)
{
  g_autoptr(GString) out = NULL;
  const char *p = dirname;

  g_return_val_if_fail(dirname != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (strcmp(dirname, "%") == 0)
    return g_strdup("");

  out = g_string_sized_new(strlen(dirname));
  while (*p != '\0') {
    guchar c = 0;
    if (p[0] == '%' && g_ascii_isxdigit(p[1]) && g_ascii_isxdigit(p[2]))
      c = (guchar)(g_ascii_xdigit_value(p[1]) * 16 + g_ascii_xdigit_value(p[2]));
    /* Only what names_escape_component writes is decoded: any other '%'
     * is the name's own, so a name is typed as ls shows it, and a local
     * directory copied in keeps its name ("100%", "Q3%2024", "100%AB":
     * decoded, they became "Q3 24", or were refused as not UTF-8). */
    gboolean first = p == dirname;
    gboolean ours = c != 0 && (names_byte_needs_escape(c) || (first && c == '.'));
    if (c != 0 && first && g_ascii_isdigit(c)) {
      g_autofree char *as = g_strdup_printf("%c%s", c, p + 3);
      ours = names_looks_like_message(as);
    }
    if (ours) {
      g_string_append_c(out, (char)c);
      p += 3;
    } else {
      g_string_append_c(out, *p);
      p++;
    }
  }
  if (!g_utf8_validate(out->str, (gssize)out->len, NULL)) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "directory name does not decode to valid UTF-8");
    return NULL;
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* ---- mailbox hierarchy ------------------------------------------------- */

static gboolean
names_check_delim(char delim, GError **error)
{
  /* A byte >= 0x80 could split a UTF-8 sequence in two. */
  if ((guchar)delim >= 0x80) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "hierarchy delimiter 0x%02X is not ASCII", (guchar)delim);
    return FALSE;
  }
  return TRUE;
}

char **
names_split_mailbox(const char *imap_name, char delim, gboolean utf8,
                    GError **error)
{
  g_autofree char *decoded = NULL;
  char sep[2] = {delim, '\0'};
  char **parts;

  g_return_val_if_fail(imap_name != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!names_check_delim(delim, error))
    return NULL;
  if (imap_name[0] == '\0') {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "empty mailbox name");
    return NULL;
  }

  /* Decode first, split second: valid modified UTF-7 never base64-encodes
   * a printable ASCII character, so each delimiter in the decoded name is
   * exactly a delimiter in the server's name, and a run can never hide
   * one. */
  if (utf8) {
    if (!g_utf8_validate(imap_name, -1, NULL)) {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "mailbox name is not valid UTF-8");
      return NULL;
    }
    decoded = g_strdup(imap_name);
  } else {
    decoded = names_mutf7_to_utf8(imap_name, error);
    if (decoded == NULL)
      return NULL;
  }

  if (delim == '\0') {
    parts = g_new0(char *, 2);
    parts[0] = g_steal_pointer(&decoded);
    return parts;
  }
  /* Empty components ("a..b", "INBOX.") are kept: they are the server's
   * names, and the escaping has a spelling for them ("%"). */
  return g_strsplit(decoded, sep, -1);
}

char *
names_join_mailbox(const char *const *components, char delim, gboolean utf8,
                   GError **error)
{
  g_autoptr(GString) out = NULL;

  g_return_val_if_fail(components != NULL, NULL);
  g_return_val_if_fail(error == NULL || *error == NULL, NULL);

  if (!names_check_delim(delim, error))
    return NULL;
  if (components[0] == NULL) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "mailbox name has no components");
    return NULL;
  }
  if (delim == '\0' && components[1] != NULL) {
    g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                "flat hierarchy: a mailbox name has only one component");
    return NULL;
  }

  out = g_string_new(NULL);
  for (gsize i = 0; components[i] != NULL; i++) {
    const char *c = components[i];

    if (c[0] == '\0') {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "empty mailbox name component");
      return NULL;
    }
    if (!g_utf8_validate(c, -1, NULL)) {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "mailbox name component is not valid UTF-8");
      return NULL;
    }
    if (delim != '\0' && strchr(c, delim) != NULL) {
      g_set_error(error, NAMES_ERROR, NAMES_ERROR_INVALID,
                  "mailbox name component contains the hierarchy "
                  "delimiter '%c'", delim);
      return NULL;
    }
    if (i > 0)
      g_string_append_c(out, delim);
    if (utf8) {
      g_string_append(out, c);
    } else {
      g_autofree char *enc = names_utf8_to_mutf7(c, error);

      if (enc == NULL)
        return NULL;
      g_string_append(out, enc);
    }
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* ---- message files ----------------------------------------------------- */

char *
names_message_filename(guint32 uid)
{
  /* UID 0 does not exist in IMAP and "0.eml" would not parse back. */
  g_return_val_if_fail(uid != 0, NULL);

  return g_strdup_printf("%" G_GUINT32_FORMAT ".eml", uid);
}

gboolean
names_parse_message_filename(const char *name, guint32 *uid)
{
  const char *p = name;
  guint64 v = 0;

  g_return_val_if_fail(name != NULL, FALSE);

  /* No leading zeros: one UID, one file name. */
  if (*p < '1' || *p > '9')
    return FALSE;
  for (; g_ascii_isdigit(*p); p++) {
    v = v * 10 + (guint64)(*p - '0');
    if (v > G_MAXUINT32)
      return FALSE;
  }
  if (strcmp(p, ".eml") != 0)
    return FALSE;
  if (uid != NULL)
    *uid = (guint32)v;
  return TRUE;
}
