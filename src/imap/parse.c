/* parse.c - I/O-free IMAP response parser.
 *
 * Design
 * ------
 * Parsing runs in two passes so that neither ever looks at a byte twice
 * while data trickles in:
 *
 * 1. Framing (parse_frame, run from imap_parser_commit).  It only finds where
 *    each response ends.  A response is one line unless a line ends in a
 *    literal header "{n}" / "{n+}" / "~{n}": then n bytes of literal follow
 *    and the line goes on after them.  The framer keeps its position, the
 *    start of the current line and the literal bytes still missing across
 *    calls, so each fed byte is scanned once (a literal is skipped in O(1)
 *    per feed).  Status responses (OK/NO/BAD/BYE/PREAUTH) and continuations
 *    are always one line: their text is free-form, so a "{5}" at the end of
 *    it must not start a literal.  Limits are checked here, before the bytes
 *    of an oversized literal even arrive.  Completed frame ends are queued,
 *    so feeding several responses at once is fine.
 *
 * 2. Building (parse_build, run from imap_parser_next) turns one complete
 *    frame into an ImapResponse.  All ATOM/STRING values are written, each
 *    NUL-terminated, into one arena per response that becomes a GBytes;
 *    imap_response_bytes() hands out slices of it.  A literal is thus copied
 *    exactly once after it entered the feed buffer.  Every value's output is
 *    at most its input size plus one NUL, and that NUL can always be charged
 *    to a separator, a quote or a literal header, so frame length + 1 bytes
 *    is enough for the arena (checked anyway).  Lists are built with an
 *    explicit stack: no recursion on input, depth limited to
 *    PARSE_MAX_DEPTH.
 *
 * The feed buffer holds unreturned bytes.  When a literal header is seen the
 * buffer is grown once to hold the whole literal, so a large body is not
 * moved again by repeated growth while it arrives.  Bytes of a literal that
 * arrived in the same feed as its header may be moved once by that growth.
 *
 * Line ends: the RFC requires CRLF; a bare LF is accepted too, because some
 * proxies and test servers strip the CR and accepting it costs nothing.  A
 * CR that is not followed by LF is a syntax error.
 */
#include "imapfuse/parse.h"

#include <string.h>

#define PARSE_DEFAULT_MAX_LITERAL ((gsize)64 * 1024 * 1024)
#define PARSE_DEFAULT_MAX_LINE ((gsize)16 * 1024 * 1024)
#define PARSE_MAX_DEPTH 100
/* After a large response is returned, a buffer bigger than this is freed
 * rather than kept around for the next small one. */
#define PARSE_KEEP_BUFFER ((gsize)256 * 1024)

G_DEFINE_QUARK(imap-parse-error-quark, imap_parse_error)

struct ImapParser {
  gsize max_literal;
  gsize max_line;

  /* Feed buffer.  Offsets named *_abs count bytes since the last reset;
   * buf[0] is at absolute offset origin, so compaction moves no offsets. */
  guint8 *buf;
  gsize cap, len;
  gsize start;        /* index of the first byte not yet returned */
  gsize origin;

  GArray *frames;     /* gsize: absolute end offsets of complete frames */
  guint frames_head;  /* first unreturned entry in frames */

  /* Framer state for the response being received. */
  gsize fr_start_abs;
  gsize fr_line_abs;  /* start of the current line segment */
  gsize fr_scan_abs;  /* next byte to scan */
  gsize fr_lit_left;  /* literal bytes still missing */
  gsize fr_text;      /* non-literal bytes so far (max_line) */
  gboolean fr_first_line;

  GError *error;      /* sticky: framing or parse error */
};

typedef struct {
  ImapResponse pub;   /* first: ImapResponse* <-> ParseResponse* */
  GBytes *arena;
} ParseResponse;

/* ------------------------------------------------------------------ */
/* Values                                                              */

static void
parse_val_clear(ImapVal *v)
{
  /* Recursion depth is bounded by PARSE_MAX_DEPTH. */
  if (v->type == IMAP_VAL_LIST) {
    for (guint i = 0; i < v->n_items; i++)
      parse_val_clear(&v->items[i]);
    g_free(v->items);
  }
  memset(v, 0, sizeof *v);
}

static void
parse_val_empty_list(ImapVal *v)
{
  memset(v, 0, sizeof *v);
  v->type = IMAP_VAL_LIST;
}

/* Moves the values of a GArray into a LIST value and frees the array. */
static void
parse_val_take_list(ImapVal *v, GArray *items)
{
  parse_val_empty_list(v);
  v->n_items = items->len;
  if (items->len > 0) {
    gsize n = 0;
    v->items = g_array_steal(items, &n);
  }
  g_array_unref(items);
}

static void
parse_items_free(GArray *items)
{
  for (guint i = 0; i < items->len; i++)
    parse_val_clear(&g_array_index(items, ImapVal, i));
  g_array_unref(items);
}

/* ------------------------------------------------------------------ */
/* The first line: tag, number, keyword                                */

typedef struct {
  ImapRespKind kind;
  gsize tag_len;
  gboolean has_number;
  guint32 number;
  gsize kw_off, kw_len;
  gsize after;        /* offset just after the keyword (or the "+") */
  ImapStatus status;
} ParseHead;

static gboolean
parse_is_tag_char(guint8 c)
{
  /* astring-char minus '+', leniently including 8-bit bytes. */
  return c > 0x20 && c != 0x7f && c != '(' && c != ')' && c != '{' &&
         c != '"' && c != '\\' && c != '%' && c != '*' && c != '+';
}

static gboolean
parse_is_keyword_char(guint8 c)
{
  return g_ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
}

static ImapStatus
parse_status_of(const guint8 *kw, gsize len)
{
  static const struct {
    const char *name;
    ImapStatus status;
  } names[] = {
    { "OK", IMAP_STATUS_OK },   { "NO", IMAP_STATUS_NO },
    { "BAD", IMAP_STATUS_BAD }, { "BYE", IMAP_STATUS_BYE },
    { "PREAUTH", IMAP_STATUS_PREAUTH },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++)
    if (strlen(names[i].name) == len &&
        g_ascii_strncasecmp((const char *)kw, names[i].name, len) == 0)
      return names[i].status;
  return IMAP_STATUS_NONE;
}

/* s[0..n) is the first line without its line end.  On failure returns
 * FALSE and a static message in *why. */
static gboolean
parse_head(const guint8 *s, gsize n, ParseHead *h, const char **why)
{
  gsize i = 0;

  memset(h, 0, sizeof *h);
  if (n == 0) {
    *why = "empty line";
    return FALSE;
  }
  if (s[0] == '+') {
    h->kind = IMAP_RESP_CONTINUATION;
    h->after = 1;
    return TRUE;
  }
  if (s[0] == '*') {
    h->kind = IMAP_RESP_UNTAGGED;
    i = 1;
  } else {
    while (i < n && parse_is_tag_char(s[i]))
      i++;
    if (i == 0) {
      *why = "bad tag";
      return FALSE;
    }
    h->kind = IMAP_RESP_TAGGED;
    h->tag_len = i;
  }
  if (i >= n || s[i] != ' ') {
    *why = "expected a space after the tag";
    return FALSE;
  }
  i++;

  if (h->kind == IMAP_RESP_UNTAGGED && i < n && g_ascii_isdigit(s[i])) {
    guint64 num = 0;
    while (i < n && g_ascii_isdigit(s[i])) {
      num = num * 10 + (guint64)(s[i] - '0');
      if (num > G_MAXUINT32) {
        *why = "number out of range";
        return FALSE;
      }
      i++;
    }
    if (i >= n || s[i] != ' ') {
      *why = "expected a space after the number";
      return FALSE;
    }
    i++;
    h->has_number = TRUE;
    h->number = (guint32)num;
  }

  h->kw_off = i;
  while (i < n && parse_is_keyword_char(s[i]))
    i++;
  h->kw_len = i - h->kw_off;
  if (h->kw_len == 0 || !g_ascii_isalpha(s[h->kw_off])) {
    *why = "missing response keyword";
    return FALSE;
  }
  if (i < n && s[i] != ' ') {
    *why = "bad character after the response keyword";
    return FALSE;
  }
  h->after = i;
  h->status = parse_status_of(s + h->kw_off, h->kw_len);

  if (h->kind == IMAP_RESP_TAGGED && h->status != IMAP_STATUS_OK &&
      h->status != IMAP_STATUS_NO && h->status != IMAP_STATUS_BAD) {
    *why = "tagged response is not OK, NO or BAD";
    return FALSE;
  }
  if (h->has_number && h->status != IMAP_STATUS_NONE) {
    *why = "status response with a message number";
    return FALSE;
  }
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* Feed buffer and framing                                             */

static void
parse_set_error(ImapParser *p, gint code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void
parse_set_error(ImapParser *p, gint code, const char *fmt, ...)
{
  va_list ap;

  if (p->error)
    return;
  va_start(ap, fmt);
  p->error = g_error_new_valist(IMAP_PARSE_ERROR, code, fmt, ap);
  va_end(ap);
}

/* Makes room for `need` bytes from buf[start]; unreturned bytes are moved
 * to the front only when the buffer would otherwise grow, so moves are
 * amortised against the bytes already consumed. */
static void
parse_reserve(ImapParser *p, gsize need, gboolean best_effort)
{
  if (p->start + need <= p->cap)
    return;
  if (p->start > 0) {
    memmove(p->buf, p->buf + p->start, p->len - p->start);
    p->origin += p->start;
    p->len -= p->start;
    p->start = 0;
    if (need <= p->cap)
      return;
  }
  gsize ncap = MAX(p->cap * 2, (gsize)4096);
  if (ncap < need)
    ncap = need;
  if (best_effort) {
    /* A size announced by the server, not yet backed by bytes: failing to
     * get it only means growing later. */
    guint8 *nbuf = g_try_realloc(p->buf, ncap);
    if (!nbuf)
      return;
    p->buf = nbuf;
  } else {
    p->buf = g_realloc(p->buf, ncap);
  }
  p->cap = ncap;
}

static void
parse_frame_restart(ImapParser *p, gsize at_abs)
{
  p->fr_start_abs = at_abs;
  p->fr_line_abs = at_abs;
  p->fr_scan_abs = at_abs;
  p->fr_lit_left = 0;
  p->fr_text = 0;
  p->fr_first_line = TRUE;
}

/* If line (without line end) ends in "{n}" or "{n+}", stores n (saturated
 * at G_MAXSIZE) and returns TRUE. */
static gboolean
parse_literal_suffix(const guint8 *line, gsize n, gsize *size)
{
  gsize j, k;

  if (n < 3 || line[n - 1] != '}')
    return FALSE;
  j = n - 1;
  if (line[j - 1] == '+')
    j--;
  k = j;
  while (k > 0 && g_ascii_isdigit(line[k - 1]))
    k--;
  if (k == j || k == 0 || line[k - 1] != '{')
    return FALSE;

  gsize v = 0;
  for (gsize i = k; i < j; i++) {
    guint d = line[i] - '0';
    if (v > (G_MAXSIZE - d) / 10) {
      v = G_MAXSIZE;
      break;
    }
    v = v * 10 + d;
  }
  *size = v;
  return TRUE;
}

/* Scans newly fed bytes; see the design note. */
static void
parse_frame(ImapParser *p)
{
  gsize end_abs = p->origin + p->len;

  while (!p->error && p->fr_scan_abs < end_abs) {
    if (p->fr_lit_left > 0) {
      gsize take = MIN(p->fr_lit_left, end_abs - p->fr_scan_abs);
      p->fr_scan_abs += take;
      p->fr_lit_left -= take;
      if (p->fr_lit_left == 0)
        p->fr_line_abs = p->fr_scan_abs;
      continue;
    }

    const guint8 *from = p->buf + (p->fr_scan_abs - p->origin);
    const guint8 *nl = memchr(from, '\n', end_abs - p->fr_scan_abs);
    gsize scanned = nl ? (gsize)(nl - from) + 1 : end_abs - p->fr_scan_abs;

    p->fr_text += scanned;
    p->fr_scan_abs += scanned;
    if (p->fr_text > p->max_line) {
      parse_set_error(p, IMAP_PARSE_ERROR_TOO_BIG,
                      "response text longer than %" G_GSIZE_FORMAT " bytes",
                      p->max_line);
      return;
    }
    if (!nl)
      return;

    const guint8 *line = p->buf + (p->fr_line_abs - p->origin);
    gsize line_len = (gsize)(nl - line);
    if (line_len > 0 && line[line_len - 1] == '\r')
      line_len--;

    gboolean may_continue = TRUE;
    if (p->fr_first_line) {
      ParseHead h;
      const char *why;
      p->fr_first_line = FALSE;
      /* A malformed first line ends the frame; building reports it. */
      if (!parse_head(line, line_len, &h, &why) ||
          h.kind == IMAP_RESP_CONTINUATION || h.status != IMAP_STATUS_NONE)
        may_continue = FALSE;
    }

    gsize lit;
    if (may_continue && parse_literal_suffix(line, line_len, &lit)) {
      if (lit > p->max_literal) {
        parse_set_error(p, IMAP_PARSE_ERROR_TOO_BIG,
                        "literal of %" G_GSIZE_FORMAT " bytes exceeds the "
                        "limit of %" G_GSIZE_FORMAT, lit, p->max_literal);
        return;
      }
      p->fr_lit_left = lit;
      p->fr_line_abs = p->fr_scan_abs;
      /* Room for the whole literal now, so it is not moved while it
       * arrives; 64 covers the usual ")\r\n" after it. */
      gsize have = p->fr_scan_abs - p->origin - p->start;
      if (lit < G_MAXSIZE / 2 - have - 64)
        parse_reserve(p, MAX(have + lit + 64, p->len - p->start), TRUE);
      end_abs = p->origin + p->len;
      continue;
    }

    g_array_append_val(p->frames, p->fr_scan_abs);
    parse_frame_restart(p, p->fr_scan_abs);
  }
}

/* ------------------------------------------------------------------ */
/* Building a response                                                 */

typedef struct {
  const guint8 *in;
  gsize pos, end;
  gboolean line_mode; /* ends with a line end (else: at `end`) */
  gsize max_literal;
  guint8 *arena;
  gsize apos, acap;
  const char *why;    /* static message on failure */
  gint code;
} ParseCursor;

static gboolean
parse_fail(ParseCursor *c, gint code, const char *why)
{
  c->why = why;
  c->code = code;
  return FALSE;
}

/* Room for n bytes plus a NUL in the arena. */
static gboolean
parse_arena_room(ParseCursor *c, gsize n)
{
  if (c->acap - c->apos < n || c->acap - c->apos - n < 1)
    return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "internal arena overflow");
  return TRUE;
}

static void
parse_val_bytes(ImapVal *v, ImapValType type, gboolean literal,
                const guint8 *data, gsize len)
{
  memset(v, 0, sizeof *v);
  v->type = type;
  v->literal = literal;
  v->data = (const char *)data;
  v->len = len;
}

/* Does s[0..n) name a fetch attribute that takes a section?  Only then
 * does '[' open one: elsewhere '[' is an ordinary ATOM-CHAR (RFC 3501 9),
 * as in a mailbox "a[b" that Dovecot sends unquoted. */
static gboolean
parse_takes_section(const guint8 *s, gsize n)
{
  static const char *const names[] = {
    "BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++)
    if (n == strlen(names[i]) &&
        g_ascii_strncasecmp((const char *)s, names[i], n) == 0)
      return TRUE;
  return FALSE;
}

static gboolean
parse_atom(ParseCursor *c, ImapVal *v)
{
  gsize start = c->pos;

  while (c->pos < c->end) {
    guint8 ch = c->in[c->pos];
    if (ch == ' ' || ch == '(' || ch == ')' || ch == '\r' || ch == '\n')
      break;
    if (ch == '\0')
      return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "NUL byte in atom");
    if (ch == '[' && parse_takes_section(c->in + start, c->pos - start)) {
      /* Section: BODY[HEADER.FIELDS (FROM TO)] is one atom, spaces and
       * parens included. */
      guint depth = 1;
      c->pos++;
      while (depth > 0) {
        if (c->pos >= c->end)
          return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unterminated '['");
        ch = c->in[c->pos];
        if (ch == '\r' || ch == '\n' || ch == '\0')
          return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unterminated '['");
        if (ch == '[')
          depth++;
        else if (ch == ']')
          depth--;
        c->pos++;
      }
      continue;
    }
    c->pos++;
  }

  gsize len = c->pos - start;
  if (len == 3 && g_ascii_strncasecmp((const char *)c->in + start, "NIL", 3) == 0) {
    memset(v, 0, sizeof *v);
    v->type = IMAP_VAL_NIL;
    return TRUE;
  }
  if (!parse_arena_room(c, len))
    return FALSE;
  guint8 *out = c->arena + c->apos;
  memcpy(out, c->in + start, len);
  out[len] = '\0';
  c->apos += len + 1;
  parse_val_bytes(v, IMAP_VAL_ATOM, FALSE, out, len);
  return TRUE;
}

static gboolean
parse_quoted(ParseCursor *c, ImapVal *v)
{
  guint8 *out = c->arena + c->apos;
  gsize len = 0;

  c->pos++; /* opening quote */
  for (;;) {
    if (c->pos >= c->end)
      return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unterminated quoted string");
    guint8 ch = c->in[c->pos++];
    if (ch == '"')
      break;
    if (ch == '\\') {
      /* RFC: only \\ and \"; others are taken literally, as servers
       * rarely mean anything else. */
      if (c->pos >= c->end)
        return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unterminated quoted string");
      ch = c->in[c->pos++];
    }
    if (ch == '\r' || ch == '\n')
      return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unterminated quoted string");
    if (ch == '\0')
      return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "NUL byte in quoted string");
    if (!parse_arena_room(c, len + 1))
      return FALSE;
    out[len++] = ch;
  }
  if (!parse_arena_room(c, len))
    return FALSE;
  out[len] = '\0';
  c->apos += len + 1;
  parse_val_bytes(v, IMAP_VAL_STRING, FALSE, out, len);
  return TRUE;
}

/* "{n}\r\n" / "{n+}\r\n" / "~{n}\r\n" followed by n bytes. */
static gboolean
parse_literal(ParseCursor *c, ImapVal *v)
{
  gsize n = 0, digits = 0;

  if (c->in[c->pos] == '~')
    c->pos++;
  c->pos++; /* '{' */
  while (c->pos < c->end && g_ascii_isdigit(c->in[c->pos])) {
    guint d = c->in[c->pos] - '0';
    if (n > (G_MAXSIZE - d) / 10)
      return parse_fail(c, IMAP_PARSE_ERROR_TOO_BIG, "literal too big");
    n = n * 10 + d;
    digits++;
    c->pos++;
  }
  if (digits == 0)
    return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "bad literal size");
  if (c->pos < c->end && c->in[c->pos] == '+')
    c->pos++;
  if (c->pos >= c->end || c->in[c->pos] != '}')
    return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "bad literal header");
  c->pos++;
  if (c->pos < c->end && c->in[c->pos] == '\r')
    c->pos++;
  if (c->pos >= c->end || c->in[c->pos] != '\n')
    return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "literal header not at line end");
  c->pos++;
  if (n > c->max_literal)
    return parse_fail(c, IMAP_PARSE_ERROR_TOO_BIG, "literal too big");
  if (c->end - c->pos < n)
    return parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "truncated literal");
  if (!parse_arena_room(c, n))
    return FALSE;

  guint8 *out = c->arena + c->apos;
  memcpy(out, c->in + c->pos, n);
  out[n] = '\0';
  c->apos += n + 1;
  c->pos += n;
  parse_val_bytes(v, IMAP_VAL_STRING, TRUE, out, n);
  return TRUE;
}

/* Tokenizes c->in[pos..end) into a LIST of values, iteratively. */
static gboolean
parse_values(ParseCursor *c, ImapVal *out)
{
  g_autoptr(GPtrArray) stack = g_ptr_array_new();
  gboolean ok = FALSE;

  g_ptr_array_add(stack, g_array_new(FALSE, FALSE, sizeof(ImapVal)));
  for (;;) {
    GArray *top = g_ptr_array_index(stack, stack->len - 1);
    ImapVal v;

    if (c->pos >= c->end) {
      if (c->line_mode) {
        parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "missing line end");
        goto out;
      }
      break;
    }
    guint8 ch = c->in[c->pos];
    if (ch == ' ') {
      c->pos++;
      continue;
    }
    if (ch == '\r' || ch == '\n') {
      if (!c->line_mode) {
        parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "line end in response code");
        goto out;
      }
      if (ch == '\r') {
        c->pos++;
        if (c->pos >= c->end || c->in[c->pos] != '\n') {
          parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "CR without LF");
          goto out;
        }
      }
      c->pos++;
      if (c->pos != c->end) {
        parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "data after the line end");
        goto out;
      }
      break;
    }
    if (ch == '(') {
      if (stack->len > PARSE_MAX_DEPTH) {
        parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "lists nested too deeply");
        goto out;
      }
      g_ptr_array_add(stack, g_array_new(FALSE, FALSE, sizeof(ImapVal)));
      c->pos++;
      continue;
    }
    if (ch == ')') {
      if (stack->len == 1) {
        parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unbalanced ')'");
        goto out;
      }
      g_ptr_array_remove_index(stack, stack->len - 1);
      parse_val_take_list(&v, top);
      top = g_ptr_array_index(stack, stack->len - 1);
      g_array_append_val(top, v);
      c->pos++;
      continue;
    }

    gboolean got;
    if (ch == '"')
      got = parse_quoted(c, &v);
    else if (ch == '{' ||
             (ch == '~' && c->pos + 1 < c->end && c->in[c->pos + 1] == '{'))
      got = parse_literal(c, &v);
    else
      got = parse_atom(c, &v);
    if (!got)
      goto out;
    g_array_append_val(top, v);
  }

  if (stack->len != 1) {
    parse_fail(c, IMAP_PARSE_ERROR_SYNTAX, "unbalanced '('");
    goto out;
  }
  parse_val_take_list(out, g_ptr_array_steal_index(stack, 0));
  ok = TRUE;

out:
  for (guint i = 0; i < stack->len; i++)
    parse_items_free(g_ptr_array_index(stack, i));
  return ok;
}

/* "[CODE args] text" or "text" in s[pos..n). */
static gboolean
parse_resp_text(ParseCursor *c, ImapResponse *r, const guint8 *s, gsize pos,
                gsize n)
{
  if (pos < n && s[pos] == '[') {
    const guint8 *close = memchr(s + pos + 1, ']', n - pos - 1);
    gsize name_end = pos + 1;
    while (close && name_end < (gsize)(close - s) && s[name_end] != ' ')
      name_end++;
    /* No ']' or an empty name: not a code, all text. */
    if (close && name_end > pos + 1) {
      gsize cl = (gsize)(close - s);
      gsize args = name_end < cl ? name_end + 1 : cl;

      r->code = g_ascii_strup((const char *)s + pos + 1, name_end - pos - 1);
      ParseCursor sub = *c;
      sub.in = s;
      sub.pos = args;
      sub.end = cl;
      sub.line_mode = FALSE;
      if (parse_values(&sub, &r->code_args)) {
        c->apos = sub.apos;
      } else {
        /* Untokenizable arguments are kept as one atom: the code name is
         * what clients act on, and the text must still get through. */
        if (!parse_arena_room(c, cl - args))
          return FALSE;
        guint8 *out = c->arena + c->apos;
        memcpy(out, s + args, cl - args);
        out[cl - args] = '\0';
        c->apos += cl - args + 1;
        GArray *items = g_array_new(FALSE, FALSE, sizeof(ImapVal));
        ImapVal v;
        parse_val_bytes(&v, IMAP_VAL_ATOM, FALSE, out, cl - args);
        g_array_append_val(items, v);
        parse_val_take_list(&r->code_args, items);
      }
      pos = cl + 1;
      if (pos < n && s[pos] == ' ')
        pos++;
    }
  }
  r->text = g_strndup((const char *)s + pos, n - pos);
  return TRUE;
}

/* Keywords whose arguments we know to be tokenizable; unknown ones fall
 * back to one atom when they are not (see parse_build). */
static gboolean
parse_is_known_keyword(const char *name)
{
  static const char *const known[] = {
    "CAPABILITY", "LIST", "LSUB", "XLIST", "FLAGS", "EXISTS", "RECENT",
    "EXPUNGE", "FETCH", "SEARCH", "ESEARCH", "STATUS", "VANISHED", "ENABLED",
    "NAMESPACE", "ID", "SORT", "THREAD", "QUOTA", "QUOTAROOT", "METADATA",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
    if (strcmp(name, known[i]) == 0)
      return TRUE;
  return FALSE;
}

/* Builds one response from the frame s[0..n), which ends with a line end. */
static ImapResponse *
parse_build(ImapParser *p, const guint8 *s, gsize n, GError **error)
{
  ParseResponse *pr = g_new0(ParseResponse, 1);
  ImapResponse *r = &pr->pub;
  const guint8 *nl = memchr(s, '\n', n);
  gsize first = nl ? (gsize)(nl - s) : n;
  gsize first_end = first; /* just past the first line's end */
  ParseHead h;
  const char *why = NULL;
  ParseCursor c = { 0 };

  if (nl)
    first_end = first + 1;
  if (first > 0 && s[first - 1] == '\r')
    first--;
  parse_val_empty_list(&r->code_args);
  parse_val_empty_list(&r->args);
  c.code = IMAP_PARSE_ERROR_SYNTAX;

  if (!parse_head(s, first, &h, &why))
    goto fail;

  c.max_literal = p->max_literal;
  c.acap = n + 1;
  c.arena = g_malloc(c.acap);
  c.in = s;
  c.end = n;
  c.line_mode = TRUE;

  r->kind = h.kind;
  r->has_number = h.has_number;
  r->number = h.number;
  r->status = h.status;
  if (h.kind == IMAP_RESP_TAGGED)
    r->tag = g_strndup((const char *)s, h.tag_len);
  if (h.kind != IMAP_RESP_CONTINUATION)
    r->name = g_ascii_strup((const char *)s + h.kw_off, h.kw_len);

  if (h.kind == IMAP_RESP_CONTINUATION || h.status != IMAP_STATUS_NONE) {
    gsize pos = h.after;
    /* TEXT-CHAR excludes NUL; text and code args are C strings. */
    if (memchr(s, '\0', first)) {
      parse_fail(&c, IMAP_PARSE_ERROR_SYNTAX, "NUL byte in response text");
      goto fail;
    }
    if (pos < first && s[pos] == ' ')
      pos++;
    if (!parse_resp_text(&c, r, s, pos, first))
      goto fail;
  } else {
    c.pos = h.after;
    if (!parse_values(&c, &r->args)) {
      /* An extension we never asked for should not kill the connection:
       * keep an untokenizable one-line unknown response as one atom. */
      if (parse_is_known_keyword(r->name) || first_end != n ||
          memchr(s, '\0', first))
        goto fail;
      gsize a = h.after < first && s[h.after] == ' ' ? h.after + 1 : h.after;
      c.apos = 0;
      if (!parse_arena_room(&c, first - a))
        goto fail;
      memcpy(c.arena, s + a, first - a);
      c.arena[first - a] = '\0';
      c.apos = first - a + 1;
      GArray *items = g_array_new(FALSE, FALSE, sizeof(ImapVal));
      ImapVal v;
      parse_val_bytes(&v, IMAP_VAL_ATOM, FALSE, c.arena, first - a);
      g_array_append_val(items, v);
      parse_val_take_list(&r->args, items);
    }
  }
  if (!r->text)
    r->text = g_strdup("");
  pr->arena = g_bytes_new_take(c.arena, c.acap);
  return r;

fail:
  {
    g_autofree char *near = g_strndup((const char *)s, MIN(first, (gsize)60));
    g_autofree char *esc = g_strescape(near, NULL);
    g_set_error(error, IMAP_PARSE_ERROR, c.code, "malformed IMAP response (%s): \"%s\"",
                c.why ? c.why : why, esc);
  }
  g_free(c.arena);
  imap_response_free(r);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Public parser API                                                   */

ImapParser *
imap_parser_new(gsize max_literal, gsize max_line)
{
  ImapParser *p = g_new0(ImapParser, 1);

  p->max_literal = max_literal ? max_literal : PARSE_DEFAULT_MAX_LITERAL;
  p->max_line = max_line ? max_line : PARSE_DEFAULT_MAX_LINE;
  p->frames = g_array_new(FALSE, FALSE, sizeof(gsize));
  parse_frame_restart(p, 0);
  return p;
}

void
imap_parser_free(ImapParser *p)
{
  if (!p)
    return;
  g_free(p->buf);
  g_array_unref(p->frames);
  g_clear_error(&p->error);
  g_free(p);
}

void
imap_parser_reset(ImapParser *p)
{
  g_return_if_fail(p != NULL);
  g_clear_pointer(&p->buf, g_free);
  p->cap = p->len = p->start = p->origin = 0;
  g_array_set_size(p->frames, 0);
  p->frames_head = 0;
  parse_frame_restart(p, 0);
  g_clear_error(&p->error);
}

void
imap_parser_feed(ImapParser *p, const void *data, gsize len)
{
  g_return_if_fail(p != NULL);
  g_return_if_fail(data != NULL || len == 0);
  if (len == 0 || p->error)
    return; /* after an error nothing is parsed until reset */
  /* Room for all of len: imap_parser_space offers less while a literal
   * arrives. */
  parse_reserve(p, p->len - p->start + len, FALSE);
  memcpy(p->buf + p->len, data, len);
  imap_parser_commit(p, len);
}

guint8 *
imap_parser_space(ImapParser *p, gsize want, gsize *room)
{
  g_return_val_if_fail(p != NULL && room != NULL, NULL);
  /* A literal being received has its room already (parse_frame made it,
   * with 64 bytes for what follows): asking for more near its end would
   * double a buffer that holds a large message. */
  if (p->fr_lit_left > 0 && p->fr_lit_left < G_MAXSIZE - 64)
    want = MIN(want, p->fr_lit_left + 64);
  parse_reserve(p, p->len - p->start + MAX(want, 1), FALSE);
  *room = p->cap - p->len;
  return p->buf + p->len;
}

void
imap_parser_commit(ImapParser *p, gsize n)
{
  g_return_if_fail(p != NULL);
  g_return_if_fail(n <= p->cap - p->len);
  if (n == 0 || p->error)
    return; /* after an error nothing is parsed until reset */
  p->len += n;
  parse_frame(p);
}

gsize
imap_parser_buffered(const ImapParser *p)
{
  g_return_val_if_fail(p != NULL, 0);
  return p->len - p->start;
}

gsize
imap_parser_literal_remaining(const ImapParser *p)
{
  g_return_val_if_fail(p != NULL, 0);
  return p->fr_lit_left;
}

int
imap_parser_next(ImapParser *p, ImapResponse **out, GError **error)
{
  g_return_val_if_fail(p != NULL, -1);
  g_return_val_if_fail(out != NULL, -1);
  g_return_val_if_fail(error == NULL || *error == NULL, -1);

  *out = NULL;
  if (p->frames_head >= p->frames->len) {
    if (p->error) {
      g_propagate_error(error, g_error_copy(p->error));
      return -1;
    }
    return 0;
  }

  gsize end_abs = g_array_index(p->frames, gsize, p->frames_head);
  gsize end = end_abs - p->origin;
  GError *local = NULL;
  ImapResponse *r = parse_build(p, p->buf + p->start, end - p->start, &local);
  if (!r) {
    /* The stream is out of step now: nothing after this can be trusted. */
    g_clear_error(&p->error);
    p->error = g_error_copy(local);
    g_array_set_size(p->frames, 0);
    p->frames_head = 0;
    g_propagate_error(error, local);
    return -1;
  }

  p->start = end;
  p->frames_head++;
  if (p->frames_head == p->frames->len) {
    g_array_set_size(p->frames, 0);
    p->frames_head = 0;
  } else if (p->frames_head >= 64 && p->frames_head * 2 >= p->frames->len) {
    /* A caller that never drains fully must not grow the queue forever. */
    g_array_remove_range(p->frames, 0, p->frames_head);
    p->frames_head = 0;
  }
  if (p->start == p->len) {
    p->origin += p->len;
    p->len = p->start = 0;
    if (p->cap > PARSE_KEEP_BUFFER) {
      g_clear_pointer(&p->buf, g_free);
      p->cap = 0;
    }
  }
  *out = r;
  return 1;
}

void
imap_response_free(ImapResponse *r)
{
  ParseResponse *pr = (ParseResponse *)r;

  if (!r)
    return;
  g_free(r->tag);
  g_free(r->name);
  g_free(r->code);
  g_free(r->text);
  parse_val_clear(&r->code_args);
  parse_val_clear(&r->args);
  g_clear_pointer(&pr->arena, g_bytes_unref);
  g_free(pr);
}

GBytes *
imap_response_bytes(ImapResponse *r, const ImapVal *v)
{
  ParseResponse *pr = (ParseResponse *)r;

  g_return_val_if_fail(r != NULL, NULL);
  if (!v || (v->type != IMAP_VAL_ATOM && v->type != IMAP_VAL_STRING) || !v->data)
    return NULL;
  if (pr->arena) {
    gsize size;
    const char *base = g_bytes_get_data(pr->arena, &size);
    /* Compare as integers: v may point anywhere if the caller erred. */
    guintptr b = (guintptr)base, d = (guintptr)v->data;
    if (d >= b && d - b <= size && v->len <= size - (d - b))
      return g_bytes_new_from_bytes(pr->arena, d - b, v->len);
  }
  return g_bytes_new(v->data, v->len);
}

/* ------------------------------------------------------------------ */
/* Value helpers                                                       */

const char *
imap_val_str(const ImapVal *v)
{
  if (!v || (v->type != IMAP_VAL_ATOM && v->type != IMAP_VAL_STRING))
    return NULL;
  return v->data;
}

gboolean
imap_val_is_atom(const ImapVal *v, const char *name_ci)
{
  if (!v || v->type != IMAP_VAL_ATOM || !name_ci)
    return FALSE;
  return strlen(name_ci) == v->len && g_ascii_strcasecmp(v->data, name_ci) == 0;
}

static gboolean
parse_decimal(const char *s, gsize len, guint64 max, guint64 *out)
{
  guint64 v = 0;

  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isdigit(s[i]))
      return FALSE;
    guint d = (guint)(s[i] - '0');
    if (v > (max - d) / 10)
      return FALSE;
    v = v * 10 + d;
  }
  *out = v;
  return TRUE;
}

gboolean
imap_val_to_u32(const ImapVal *v, guint32 *out)
{
  guint64 n;

  if (!imap_val_str(v) || !parse_decimal(v->data, v->len, G_MAXUINT32, &n))
    return FALSE;
  if (out)
    *out = (guint32)n;
  return TRUE;
}

gboolean
imap_val_to_u64(const ImapVal *v, guint64 *out)
{
  guint64 n;

  if (!imap_val_str(v) || !parse_decimal(v->data, v->len, G_MAXUINT64, &n))
    return FALSE;
  if (out)
    *out = n;
  return TRUE;
}

gboolean
imap_val_to_modseq(const ImapVal *v, guint64 *out)
{
  guint64 n;

  if (!imap_val_str(v) || !parse_decimal(v->data, v->len, G_MAXINT64, &n) || n == 0)
    return FALSE;
  if (out)
    *out = n;
  return TRUE;
}

/* Does atom a match a name ending in '<' ("BODY[]<")?  Accepts the name
 * without origin ("BODY[]", origin 0; some servers omit a zero origin) or
 * followed by "<digits>". */
static gboolean
parse_match_partial(const ImapVal *a, const char *name, gsize nlen,
                    guint64 *origin)
{
  gsize base = nlen - 1;

  if (a->len < base || g_ascii_strncasecmp(a->data, name, base) != 0)
    return FALSE;
  if (a->len == base) {
    *origin = 0;
    return TRUE;
  }
  if (a->data[base] != '<' || a->len < base + 3 || a->data[a->len - 1] != '>')
    return FALSE;
  return parse_decimal(a->data + base + 1, a->len - base - 2, G_MAXUINT64, origin);
}

const ImapVal *
imap_fetch_get(const ImapVal *list, const char *name_ci, guint64 *origin_out)
{
  gsize nlen;

  if (origin_out)
    *origin_out = 0;
  if (!list || list->type != IMAP_VAL_LIST || !name_ci)
    return NULL;
  nlen = strlen(name_ci);
  if (nlen == 0)
    return NULL;
  gboolean partial = name_ci[nlen - 1] == '<';

  for (guint i = 0; i + 1 < list->n_items; i += 2) {
    const ImapVal *a = &list->items[i];
    guint64 origin = 0;
    if (a->type != IMAP_VAL_ATOM)
      continue;
    if (partial ? parse_match_partial(a, name_ci, nlen, &origin)
                : (a->len == nlen && g_ascii_strcasecmp(a->data, name_ci) == 0)) {
      if (origin_out)
        *origin_out = origin;
      return &list->items[i + 1];
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* INTERNALDATE                                                        */

static const char parse_months[12][4] = {
  "Jan", "Feb", "Mar", "Apr", "May", "Jun",
  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): no timezone, no libc. */
static gint64
parse_days_from_civil(gint64 y, guint m, guint d)
{
  y -= m <= 2;
  gint64 era = (y >= 0 ? y : y - 399) / 400;
  guint yoe = (guint)(y - era * 400);
  guint doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  guint doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (gint64)doe - 719468;
}

static void
parse_civil_from_days(gint64 z, gint64 *y, guint *m, guint *d)
{
  z += 719468;
  gint64 era = (z >= 0 ? z : z - 146096) / 146097;
  guint doe = (guint)(z - era * 146097);
  guint yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  guint doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  guint mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (gint64)yoe + era * 400 + (*m <= 2);
}

static gboolean
parse_digits(const char **s, guint n, guint *out)
{
  guint v = 0;

  for (guint i = 0; i < n; i++) {
    if (!g_ascii_isdigit((*s)[i]))
      return FALSE;
    v = v * 10 + (guint)((*s)[i] - '0');
  }
  *s += n;
  *out = v;
  return TRUE;
}

gboolean
imap_parse_internaldate(const char *s, gint64 *unix_time)
{
  guint day, year, hh, mm, ss, zh, zm, mon = 12;
  int sign;

  if (!s)
    return FALSE;
  /* date-day-fixed is " 7" or "07"; "7" alone is accepted too. */
  if (s[0] == ' ')
    s++;
  if (g_ascii_isdigit(s[0]) && g_ascii_isdigit(s[1])) {
    if (!parse_digits(&s, 2, &day))
      return FALSE;
  } else if (!parse_digits(&s, 1, &day)) {
    return FALSE;
  }
  if (*s++ != '-')
    return FALSE;
  for (guint i = 0; i < 12; i++)
    if (g_ascii_strncasecmp(s, parse_months[i], 3) == 0)
      mon = i;
  if (mon == 12)
    return FALSE;
  s += 3;
  if (*s++ != '-' || !parse_digits(&s, 4, &year) || *s++ != ' ' ||
      !parse_digits(&s, 2, &hh) || *s++ != ':' || !parse_digits(&s, 2, &mm) ||
      *s++ != ':' || !parse_digits(&s, 2, &ss) || *s++ != ' ')
    return FALSE;
  if (*s != '+' && *s != '-')
    return FALSE;
  sign = *s++ == '-' ? -1 : 1;
  if (!parse_digits(&s, 2, &zh) || !parse_digits(&s, 2, &zm) || *s != '\0')
    return FALSE;

  static const guint mdays[12] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  gboolean leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (day < 1 || day > mdays[mon] || (mon == 1 && day == 29 && !leap))
    return FALSE;
  /* ss == 60: a leap second, counted as the next second like timegm. */
  if (hh > 23 || mm > 59 || ss > 60 || zh > 23 || zm > 59)
    return FALSE;

  gint64 t = parse_days_from_civil(year, mon + 1, day) * 86400 +
             hh * 3600 + mm * 60 + ss;
  t -= sign * (gint64)(zh * 3600 + zm * 60);
  if (unix_time)
    *unix_time = t;
  return TRUE;
}

void
imap_format_internaldate(gint64 unix_time, char buf[32])
{
  /* The format has four year digits: clamp to 0000-01-01..9999-12-31. */
  const gint64 lo = -62167219200, hi = 253402300799;
  gint64 t = CLAMP(unix_time, lo, hi);
  gint64 days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
  gint64 secs = t - days * 86400;
  gint64 y;
  guint m, d;

  parse_civil_from_days(days, &y, &m, &d);
  g_snprintf(buf, 32, "%02u-%s-%04d %02d:%02d:%02d +0000", d, parse_months[m - 1],
             (int)y, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
}

/* ------------------------------------------------------------------ */
/* UID sets                                                            */

/* nz-number: no sign, no leading zero, 1..2^32-1. */
static gboolean
parse_nz_number(const char **s, guint32 *out)
{
  const char *p = *s;
  guint64 v = 0;

  if (*p < '1' || *p > '9')
    return FALSE;
  while (g_ascii_isdigit(*p)) {
    v = v * 10 + (guint64)(*p - '0');
    if (v > G_MAXUINT32)
      return FALSE;
    p++;
  }
  *s = p;
  *out = (guint32)v;
  return TRUE;
}

gboolean
imap_parse_uid_set(const char *s, GArray *ranges)
{
  guint old_len;

  g_return_val_if_fail(ranges != NULL, FALSE);
  g_return_val_if_fail(g_array_get_element_size(ranges) == sizeof(ImapUidRange), FALSE);
  if (!s)
    return FALSE;
  old_len = ranges->len;
  for (;;) {
    ImapUidRange r;
    guint32 a, b;

    if (!parse_nz_number(&s, &a))
      goto fail;
    b = a;
    if (*s == ':') {
      s++;
      if (!parse_nz_number(&s, &b))
        goto fail;
    }
    r.lo = MIN(a, b);
    r.hi = MAX(a, b);
    g_array_append_val(ranges, r);
    if (*s == '\0')
      return TRUE;
    if (*s++ != ',')
      goto fail;
  }

fail:
  /* Leave the caller's array as it was. */
  g_array_set_size(ranges, old_len);
  return FALSE;
}
