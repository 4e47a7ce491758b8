/* fuzz_parse.c - libFuzzer target for the IMAP response parser.
 *
 * Input: byte 0 picks how the rest is cut into feeds, byte 1 picks the
 * limits, the rest is the server stream.  Every response is checked
 * (NUL terminators, zero-copy slices, helper consistency), and the
 * responses of the chunked parse must equal those of a parse of the whole
 * stream fed at once: splitting must never change the result.
 */
#include "imapfuse/parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                      \
  do {                                                                        \
    if (!(cond)) {                                                            \
      g_printerr("%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
      abort();                                                                \
    }                                                                         \
  } while (0)

static void
fuzz_check_string(ImapResponse *r, const ImapVal *v)
{
  FUZZ_CHECK(v->data != NULL);
  FUZZ_CHECK(v->data[v->len] == '\0');
  FUZZ_CHECK(imap_val_str(v) == v->data);

  GBytes *b = imap_response_bytes(r, v);
  gsize n = 0;
  const void *d = g_bytes_get_data(b, &n);
  FUZZ_CHECK(n == v->len);
  FUZZ_CHECK(d == (const void *)v->data || n == 0); /* zero copy */
  g_bytes_unref(b);

  /* Only literals may hold NUL bytes. */
  if (!v->literal)
    FUZZ_CHECK(memchr(v->data, '\0', v->len) == NULL);
  if (v->type == IMAP_VAL_ATOM)
    FUZZ_CHECK(v->len > 0 && imap_val_is_atom(v, v->data));

  guint32 u32;
  guint64 u64;
  if (imap_val_to_u32(v, &u32)) {
    FUZZ_CHECK(imap_val_to_u64(v, &u64));
    FUZZ_CHECK(u64 == u32);
  }

  gint64 t;
  if (imap_parse_internaldate(v->data, &t)) {
    char buf[32], buf2[32];
    gint64 back;
    imap_format_internaldate(t, buf);
    FUZZ_CHECK(imap_parse_internaldate(buf, &back));
    /* Times outside years 0000..9999 are clamped by the formatter. */
    if (t >= G_GINT64_CONSTANT(-62167219200) && t <= G_GINT64_CONSTANT(253402300799))
      FUZZ_CHECK(back == t);
    imap_format_internaldate(back, buf2);
    FUZZ_CHECK(strcmp(buf, buf2) == 0);
  }

  GArray *set = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
  gboolean ok = imap_parse_uid_set(v->data, set);
  FUZZ_CHECK(ok == (set->len > 0));
  for (guint i = 0; i < set->len; i++) {
    ImapUidRange *rg = &g_array_index(set, ImapUidRange, i);
    FUZZ_CHECK(rg->lo >= 1 && rg->lo <= rg->hi);
  }
  g_array_unref(set);
}

static void
fuzz_check_val(ImapResponse *r, const ImapVal *v, guint depth)
{
  /* The parser limits nesting to 100 lists (+1 for the outer one). */
  FUZZ_CHECK(depth <= 102);
  switch (v->type) {
  case IMAP_VAL_NIL:
    FUZZ_CHECK(v->data == NULL);
    FUZZ_CHECK(imap_response_bytes(r, v) == NULL);
    FUZZ_CHECK(imap_val_str(v) == NULL);
    break;
  case IMAP_VAL_ATOM:
  case IMAP_VAL_STRING:
    fuzz_check_string(r, v);
    break;
  case IMAP_VAL_LIST: {
    static const char *const names[] = { "UID", "FLAGS", "BODY[]", "BODY[]<",
                                         "RFC822.SIZE", "MODSEQ", "BINARY[1]<" };
    guint64 origin;
    FUZZ_CHECK(v->data == NULL);
    FUZZ_CHECK(v->n_items == 0 || v->items != NULL);
    FUZZ_CHECK(imap_response_bytes(r, v) == NULL);
    for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
      const ImapVal *got = imap_fetch_get(v, names[i], &origin);
      FUZZ_CHECK(got == NULL || (got > v->items && got < v->items + v->n_items));
    }
    if (v->n_items >= 2 && v->items[0].type == IMAP_VAL_ATOM &&
        v->items[0].data[v->items[0].len - 1] != '<')
      FUZZ_CHECK(imap_fetch_get(v, v->items[0].data, &origin) == &v->items[1]);
    for (guint i = 0; i < v->n_items; i++)
      fuzz_check_val(r, &v->items[i], depth + 1);
    break;
  }
  default:
    FUZZ_CHECK(!"bad value type");
  }
}

static void
fuzz_dump_val(GString *out, const ImapVal *v)
{
  if (v->type == IMAP_VAL_LIST) {
    g_string_append_c(out, '(');
    for (guint i = 0; i < v->n_items; i++) {
      g_string_append_c(out, ' ');
      fuzz_dump_val(out, &v->items[i]);
    }
    g_string_append_c(out, ')');
  } else if (v->type == IMAP_VAL_NIL) {
    g_string_append(out, "NIL");
  } else {
    g_string_append_printf(out, "%d%d%" G_GSIZE_FORMAT ":", v->type, v->literal, v->len);
    g_string_append_len(out, v->data, (gssize)v->len);
  }
}

static void
fuzz_check_response(ImapResponse *r, GString *dump)
{
  FUZZ_CHECK(r->text != NULL);
  FUZZ_CHECK((r->tag != NULL) == (r->kind == IMAP_RESP_TAGGED));
  FUZZ_CHECK((r->name == NULL) == (r->kind == IMAP_RESP_CONTINUATION));
  FUZZ_CHECK(r->code_args.type == IMAP_VAL_LIST);
  FUZZ_CHECK(r->args.type == IMAP_VAL_LIST);
  if (r->status != IMAP_STATUS_NONE)
    FUZZ_CHECK(r->args.n_items == 0);
  if (!r->code)
    FUZZ_CHECK(r->code_args.n_items == 0);
  fuzz_check_val(r, &r->code_args, 0);
  fuzz_check_val(r, &r->args, 0);

  g_string_append_printf(dump, "%d|%s|%d:%u|%s|%d|%s|", r->kind, r->tag ? r->tag : "",
                         r->has_number, r->number, r->name ? r->name : "", r->status,
                         r->code ? r->code : "");
  fuzz_dump_val(dump, &r->code_args);
  g_string_append_printf(dump, "|%s|", r->text);
  fuzz_dump_val(dump, &r->args);
  g_string_append_c(dump, '\n');
}

/* Drains the parser; returns FALSE once it reported an error. */
static gboolean
fuzz_drain(ImapParser *p, GString *dump)
{
  for (;;) {
    ImapResponse *r = NULL;
    GError *error = NULL;
    int rc = imap_parser_next(p, &r, &error);
    if (rc == 1) {
      FUZZ_CHECK(r != NULL && error == NULL);
      fuzz_check_response(r, dump);
      imap_response_free(r);
      continue;
    }
    FUZZ_CHECK(r == NULL);
    if (rc == 0) {
      FUZZ_CHECK(error == NULL);
      return TRUE;
    }
    FUZZ_CHECK(rc == -1 && error != NULL);
    FUZZ_CHECK(error->domain == IMAP_PARSE_ERROR);
    g_string_append_printf(dump, "ERROR %d\n", error->code);
    g_error_free(error);
    return FALSE;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const gsize fixed[] = { 1, 2, 3, 5, 16, 64, 1024, G_MAXSIZE };
  if (size < 2)
    return 0;

  guint8 mode = data[0], limits = data[1];
  const guint8 *in = data + 2;
  gsize len = size - 2;
  /* Small limits reach the TOO_BIG paths with small inputs. */
  gsize max_literal = limits & 1 ? 0 : (gsize)(limits >> 1) * 4;
  gsize max_line = limits & 2 ? 0 : 16 + (gsize)(limits >> 2) * 8;

  /* Reference: everything in one feed. */
  ImapParser *whole = imap_parser_new(max_literal, max_line);
  GString *want = g_string_new(NULL);
  imap_parser_feed(whole, in, len);
  gboolean whole_ok = fuzz_drain(whole, want);
  FUZZ_CHECK(!whole_ok || imap_parser_buffered(whole) <= len);
  imap_parser_free(whole);

  /* The same in pieces, draining after each. */
  ImapParser *p = imap_parser_new(max_literal, max_line);
  GString *got = g_string_new(NULL);
  guint32 rng = mode * 2654435761u + 1;
  gsize off = 0;
  gboolean ok = TRUE;
  while (off < len && ok) {
    gsize n;
    if (mode < 8) {
      n = fixed[mode];
    } else {
      rng = rng * 1103515245u + 12345u;
      n = 1 + (rng >> 16) % (mode < 128 ? 8u : 300u);
    }
    n = MIN(n, len - off);
    if (mode & 1) {
      /* As conn_fill receives: straight into the parser's buffer. */
      gsize room, lit_left = imap_parser_literal_remaining(p);
      guint8 *dst = imap_parser_space(p, n, &room);
      FUZZ_CHECK(room >= MIN(n, lit_left > 0 ? lit_left + 64 : n));
      n = MIN(n, room);
      memcpy(dst, in + off, n);
      imap_parser_commit(p, n);
    } else {
      imap_parser_feed(p, in + off, n);
    }
    off += n;
    gsize lit_left = imap_parser_literal_remaining(p);
    FUZZ_CHECK(lit_left <= (max_literal ? max_literal : (gsize)64 * 1024 * 1024));
    ok = fuzz_drain(p, got);
    FUZZ_CHECK(imap_parser_buffered(p) <= off);
  }
  if (strcmp(want->str, got->str) != 0) {
    g_printerr("whole:\n%s\nchunked:\n%s\n", want->str, got->str);
    FUZZ_CHECK(!"chunked parse differs from whole parse");
  }

  /* After an error (or not), reset must give a working parser. */
  imap_parser_reset(p);
  FUZZ_CHECK(imap_parser_buffered(p) == 0 && imap_parser_literal_remaining(p) == 0);
  imap_parser_feed(p, "* 1 EXISTS\r\n", 12);
  ImapResponse *r = NULL;
  FUZZ_CHECK(imap_parser_next(p, &r, NULL) == 1);
  FUZZ_CHECK(r->has_number && r->number == 1);
  imap_response_free(r);

  imap_parser_free(p);
  g_string_free(want, TRUE);
  g_string_free(got, TRUE);
  return 0;
}
