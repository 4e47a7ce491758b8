/* test_parse.c - table and stream tests for the IMAP response parser.
 *
 * Response texts are what Dovecot, Gmail, Cyrus and Courier actually send
 * (taken from their sessions and the RFC examples). */
#include "imapfuse/parse.h"

#include <string.h>

/* ---- helpers ---- */

/* Feeds the whole input and returns exactly one response; asserts that
 * nothing else is left. */
static ImapResponse *
parse_one(const char *input, gsize len)
{
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r = NULL;
  GError *error = NULL;

  imap_parser_feed(p, input, len);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_no_error(error);
  g_assert_nonnull(r);
  g_assert_cmpuint(imap_parser_buffered(p), ==, 0);
  ImapResponse *none = NULL;
  g_assert_cmpint(imap_parser_next(p, &none, &error), ==, 0);
  g_assert_null(none);
  imap_parser_free(p);
  return r;
}

static ImapResponse *
parse_str(const char *input)
{
  return parse_one(input, strlen(input));
}

/* Feeds input to a fresh parser with the given limits; expects -1. */
static void
expect_error(const char *input, gsize len, gsize max_literal, gsize max_line,
             ImapParseError code)
{
  ImapParser *p = imap_parser_new(max_literal, max_line);
  ImapResponse *r = NULL;
  GError *error = NULL;
  int rc;

  imap_parser_feed(p, input, len);
  rc = imap_parser_next(p, &r, &error);
  if (rc != -1)
    g_test_message("input accepted: %.*s", (int)MIN(len, 80), input);
  g_assert_cmpint(rc, ==, -1);
  g_assert_null(r);
  g_assert_error(error, IMAP_PARSE_ERROR, (gint)code);
  g_clear_error(&error);
  /* The error is sticky until reset. */
  imap_parser_feed(p, "* OK\r\n", 6);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, -1);
  g_assert_error(error, IMAP_PARSE_ERROR, (gint)code);
  g_clear_error(&error);
  imap_parser_free(p);
}

static void
expect_syntax(const char *input)
{
  expect_error(input, strlen(input), 0, 0, IMAP_PARSE_ERROR_SYNTAX);
}

static void
assert_atom(const ImapVal *v, const char *s)
{
  g_assert_nonnull(v);
  g_assert_cmpint(v->type, ==, IMAP_VAL_ATOM);
  g_assert_cmpstr(v->data, ==, s);
  g_assert_cmpuint(v->len, ==, strlen(s));
}

static void
assert_string(const ImapVal *v, const char *s)
{
  g_assert_nonnull(v);
  g_assert_cmpint(v->type, ==, IMAP_VAL_STRING);
  g_assert_cmpuint(v->len, ==, strlen(s));
  g_assert_cmpmem(v->data, v->len, s, strlen(s));
  g_assert_cmpint(v->data[v->len], ==, '\0');
}

static const ImapVal *
assert_list(const ImapVal *v, guint n)
{
  g_assert_nonnull(v);
  g_assert_cmpint(v->type, ==, IMAP_VAL_LIST);
  g_assert_cmpuint(v->n_items, ==, n);
  g_assert_true(n == 0 || v->items != NULL);
  return v;
}

/* A stable text form of a response, to compare parses of the same input
 * fed in different pieces. */
static void
dump_val(GString *out, const ImapVal *v)
{
  switch (v->type) {
  case IMAP_VAL_NIL:
    g_string_append(out, "NIL");
    break;
  case IMAP_VAL_ATOM:
  case IMAP_VAL_STRING:
    g_string_append_printf(out, "%c%s%" G_GSIZE_FORMAT ":",
                           v->type == IMAP_VAL_ATOM ? 'A' : 'S',
                           v->literal ? "L" : "", v->len);
    g_string_append_len(out, v->data, (gssize)v->len);
    break;
  case IMAP_VAL_LIST:
    g_string_append_c(out, '(');
    for (guint i = 0; i < v->n_items; i++) {
      if (i)
        g_string_append_c(out, ' ');
      dump_val(out, &v->items[i]);
    }
    g_string_append_c(out, ')');
    break;
  }
}

static char *
dump_resp(const ImapResponse *r)
{
  GString *out = g_string_new(NULL);

  g_string_append_printf(out, "%d|%s|%d:%u|%s|%d|%s|", r->kind, r->tag ? r->tag : "-",
                         r->has_number, r->number, r->name ? r->name : "-", r->status,
                         r->code ? r->code : "-");
  dump_val(out, &r->code_args);
  g_string_append_printf(out, "|%s|", r->text);
  dump_val(out, &r->args);
  return g_string_free(out, FALSE);
}

/* Appends the dumps of the complete responses p holds to out, each
 * followed by '\n'; asserts that none was malformed. */
static void
drain_dumps(ImapParser *p, GString *out)
{
  ImapResponse *r;
  GError *error = NULL;

  while (imap_parser_next(p, &r, &error) == 1) {
    g_autofree char *d = dump_resp(r);
    g_string_append(out, d);
    g_string_append_c(out, '\n');
    imap_response_free(r);
  }
  g_assert_no_error(error);
}

/* Parses all of input fed in one piece; returns the dumps joined by '\n'. */
static char *
dump_all(const char *input, gsize len)
{
  ImapParser *p = imap_parser_new(0, 0);
  GString *out = g_string_new(NULL);

  imap_parser_feed(p, input, len);
  drain_dumps(p, out);
  imap_parser_free(p);
  return g_string_free(out, FALSE);
}

/* ---- greetings and status responses ---- */

static void
test_greeting_dovecot(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
      "LITERAL+ STARTTLS AUTH=PLAIN] Dovecot ready.\r\n");

  g_assert_cmpint(r->kind, ==, IMAP_RESP_UNTAGGED);
  g_assert_null(r->tag);
  g_assert_false(r->has_number);
  g_assert_cmpstr(r->name, ==, "OK");
  g_assert_cmpint(r->status, ==, IMAP_STATUS_OK);
  g_assert_cmpstr(r->code, ==, "CAPABILITY");
  assert_list(&r->code_args, 9);
  assert_atom(&r->code_args.items[0], "IMAP4rev1");
  assert_atom(&r->code_args.items[6], "LITERAL+");
  assert_atom(&r->code_args.items[8], "AUTH=PLAIN");
  g_assert_cmpstr(r->text, ==, "Dovecot ready.");
  assert_list(&r->args, 0);
}

static void
test_greeting_gmail(void)
{
  g_autoptr(ImapResponse) r =
      parse_str("* OK Gimap ready for requests from 192.0.2.7 h7mb12345678lfv\r\n");

  g_assert_cmpint(r->status, ==, IMAP_STATUS_OK);
  g_assert_null(r->code);
  assert_list(&r->code_args, 0);
  g_assert_cmpstr(r->text, ==, "Gimap ready for requests from 192.0.2.7 h7mb12345678lfv");
}

static void
test_greeting_cyrus_courier(void)
{
  g_autoptr(ImapResponse) cy = parse_str(
      "* OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE STARTTLS AUTH=PLAIN SASL-IR] "
      "mail.example.org Cyrus IMAP 3.2.6-Debian-3.2.6-2+deb11u2 server ready\r\n");
  g_assert_cmpstr(cy->code, ==, "CAPABILITY");
  assert_list(&cy->code_args, 7);
  g_assert_cmpstr(cy->text, ==,
                  "mail.example.org Cyrus IMAP 3.2.6-Debian-3.2.6-2+deb11u2 server ready");

  g_autoptr(ImapResponse) co = parse_str(
      "* OK [CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
      "THREAD=REFERENCES SORT QUOTA IDLE ACL ACL2=UNION STARTTLS] Courier-IMAP ready. "
      "Copyright 1998-2018 Double Precision, Inc.  See COPYING for distribution "
      "information.\r\n");
  g_assert_cmpstr(co->code, ==, "CAPABILITY");
  assert_list(&co->code_args, 12);
  assert_atom(&co->code_args.items[10], "ACL2=UNION");
  g_assert_true(g_str_has_prefix(co->text, "Courier-IMAP ready. Copyright"));
  g_assert_true(g_str_has_suffix(co->text, "distribution information."));
}

static void
test_preauth_bye(void)
{
  g_autoptr(ImapResponse) pa =
      parse_str("* PREAUTH [CAPABILITY IMAP4rev2] Logged in as joe\r\n");
  g_assert_cmpint(pa->status, ==, IMAP_STATUS_PREAUTH);
  g_assert_cmpstr(pa->name, ==, "PREAUTH");
  g_assert_cmpstr(pa->text, ==, "Logged in as joe");

  g_autoptr(ImapResponse) bye =
      parse_str("* BYE Logging out\r\n");
  g_assert_cmpint(bye->status, ==, IMAP_STATUS_BYE);
  g_assert_cmpstr(bye->text, ==, "Logging out");

  g_autoptr(ImapResponse) bye2 =
      parse_str("* BYE [UNAVAILABLE] Server shutting down.\r\n");
  g_assert_cmpstr(bye2->code, ==, "UNAVAILABLE");
  assert_list(&bye2->code_args, 0);
}

static void
test_tagged_codes(void)
{
  static const struct {
    const char *in, *tag;
    ImapStatus status;
    const char *code;
    guint n_args;
    const char *text;
  } table[] = {
    { "a001 OK [READ-WRITE] SELECT completed\r\n", "a001", IMAP_STATUS_OK,
      "READ-WRITE", 0, "SELECT completed" },
    { "A2 NO [TRYCREATE] Mailbox doesn't exist: Foo\r\n", "A2", IMAP_STATUS_NO,
      "TRYCREATE", 0, "Mailbox doesn't exist: Foo" },
    { "A3 BAD Error in IMAP command UID FETCH: Invalid messageset "
      "(0.001 + 0.000 secs).\r\n", "A3", IMAP_STATUS_BAD, NULL, 0,
      "Error in IMAP command UID FETCH: Invalid messageset (0.001 + 0.000 secs)." },
    { "A4 OK [APPENDUID 38505 3955] APPEND completed\r\n", "A4", IMAP_STATUS_OK,
      "APPENDUID", 2, "APPEND completed" },
    { "A5 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n", "A5", IMAP_STATUS_OK,
      "COPYUID", 3, "Done" },
    { "A6 NO [ALREADYEXISTS] Mailbox already exists\r\n", "A6", IMAP_STATUS_NO,
      "ALREADYEXISTS", 0, "Mailbox already exists" },
    { "A7 NO [OVERQUOTA] Quota exceeded (mailbox for user is full)\r\n", "A7",
      IMAP_STATUS_NO, "OVERQUOTA", 0, "Quota exceeded (mailbox for user is full)" },
    { "a8 ok [read-only] Select done\r\n", "a8", IMAP_STATUS_OK, "READ-ONLY", 0,
      "Select done" },
    { "A9 OK [READ-ONLY]\r\n", "A9", IMAP_STATUS_OK, "READ-ONLY", 0, "" },
    { "A10 OK\r\n", "A10", IMAP_STATUS_OK, NULL, 0, "" },
    { "A11 OK [CLOSED] Previous mailbox closed.\r\n", "A11", IMAP_STATUS_OK,
      "CLOSED", 0, "Previous mailbox closed." },
    { "A12 NO [NONEXISTENT] Unknown Mailbox: Archive (now in state: Authenticated)\r\n",
      "A12", IMAP_STATUS_NO, "NONEXISTENT", 0,
      "Unknown Mailbox: Archive (now in state: Authenticated)" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    g_autoptr(ImapResponse) r = parse_str(table[i].in);
    g_assert_cmpint(r->kind, ==, IMAP_RESP_TAGGED);
    g_assert_cmpstr(r->tag, ==, table[i].tag);
    g_assert_cmpint(r->status, ==, table[i].status);
    g_assert_cmpstr(r->code, ==, table[i].code);
    assert_list(&r->code_args, table[i].n_args);
    g_assert_cmpstr(r->text, ==, table[i].text);
    assert_list(&r->args, 0);
  }
}

static void
test_code_args(void)
{
  g_autoptr(ImapResponse) pf = parse_str(
      "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
      "Flags permitted.\r\n");
  g_assert_cmpstr(pf->code, ==, "PERMANENTFLAGS");
  assert_list(&pf->code_args, 1);
  const ImapVal *fl = assert_list(&pf->code_args.items[0], 6);
  assert_atom(&fl->items[0], "\\Answered");
  assert_atom(&fl->items[5], "\\*");

  g_autoptr(ImapResponse) uv = parse_str("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n");
  guint32 v32 = 0;
  g_assert_cmpstr(uv->code, ==, "UIDVALIDITY");
  g_assert_true(imap_val_to_u32(&uv->code_args.items[0], &v32));
  g_assert_cmpuint(v32, ==, 3857529045u);

  g_autoptr(ImapResponse) hm =
      parse_str("* OK [HIGHESTMODSEQ 90060115205545359] Highest\r\n");
  guint64 v64 = 0;
  g_assert_true(imap_val_to_u64(&hm->code_args.items[0], &v64));
  g_assert_cmpuint(v64, ==, G_GUINT64_CONSTANT(90060115205545359));

  g_autoptr(ImapResponse) cu =
      parse_str("A5 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n");
  assert_atom(&cu->code_args.items[0], "38505");
  assert_atom(&cu->code_args.items[1], "304,319:320");
  assert_atom(&cu->code_args.items[2], "3956:3958");

  g_autoptr(ImapResponse) bc =
      parse_str("A6 NO [BADCHARSET (US-ASCII \"UTF-8\")] Unsupported charset\r\n");
  const ImapVal *cs = assert_list(&bc->code_args.items[0], 2);
  assert_atom(&cs->items[0], "US-ASCII");
  assert_string(&cs->items[1], "UTF-8");

  g_autoptr(ImapResponse) rf = parse_str(
      "A7 NO [REFERRAL imap://user;AUTH=*@SERVER2/] Remote Server\r\n");
  assert_atom(&rf->code_args.items[0], "imap://user;AUTH=*@SERVER2/");
}

static void
test_code_args_untokenizable(void)
{
  /* Args that do not tokenize stay one atom; the response still parses. */
  g_autoptr(ImapResponse) r = parse_str("* OK [XWEIRD (a \"b] and then some text\r\n");
  g_assert_cmpstr(r->code, ==, "XWEIRD");
  assert_list(&r->code_args, 1);
  assert_atom(&r->code_args.items[0], "(a \"b");
  g_assert_cmpstr(r->text, ==, "and then some text");

  /* No closing bracket: no code, all text. */
  g_autoptr(ImapResponse) t = parse_str("* NO [ALERT oops\r\n");
  g_assert_null(t->code);
  g_assert_cmpstr(t->text, ==, "[ALERT oops");
}

static void
test_status_text_anything(void)
{
  /* Status text is free-form: a "{5}" at its end is not a literal, and
   * unbalanced brackets, quotes and parens are fine. */
  const char in[] =
      "* OK [ALERT] Quota at 95% ] ) ( \" [ {5}\r\n"
      "A1 NO text ending like a literal {3}\r\n"
      "+ go ahead {12}\r\n"
      "* 3 EXISTS\r\n";
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;

  imap_parser_feed(p, in, sizeof in - 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->code, ==, "ALERT");
  g_assert_cmpstr(r->text, ==, "Quota at 95% ] ) ( \" [ {5}");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->text, ==, "text ending like a literal {3}");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpint(r->kind, ==, IMAP_RESP_CONTINUATION);
  g_assert_cmpstr(r->text, ==, "go ahead {12}");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->name, ==, "EXISTS");
  g_assert_cmpuint(r->number, ==, 3);
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  g_assert_no_error(error);
  imap_parser_free(p);
}

static void
test_continuation(void)
{
  static const struct {
    const char *in, *text;
  } table[] = {
    { "+ Ready for literal data\r\n", "Ready for literal data" },
    { "+ idling\r\n", "idling" },
    { "+\r\n", "" },
    { "+ \r\n", "" },
    { "+ YWJjZGVm\r\n", "YWJjZGVm" },
    { "+ OK\r\n", "OK" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    g_autoptr(ImapResponse) r = parse_str(table[i].in);
    g_assert_cmpint(r->kind, ==, IMAP_RESP_CONTINUATION);
    g_assert_null(r->tag);
    g_assert_null(r->name);
    g_assert_null(r->code);
    g_assert_cmpint(r->status, ==, IMAP_STATUS_NONE);
    g_assert_cmpstr(r->text, ==, table[i].text);
    assert_list(&r->args, 0);
  }
}

/* ---- data responses ---- */

static void
test_capability(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT "
      "SORT=DISPLAY THREAD=REFERENCES MULTIAPPEND URL-PARTIAL CATENATE UNSELECT "
      "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC "
      "ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE "
      "SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "
      "NOTIFY SPECIAL-USE\r\n");

  g_assert_cmpstr(r->name, ==, "CAPABILITY");
  g_assert_cmpint(r->status, ==, IMAP_STATUS_NONE);
  g_assert_cmpstr(r->text, ==, "");
  g_assert_null(r->code);
  assert_list(&r->args, 36);
  assert_atom(&r->args.items[0], "IMAP4rev1");
  assert_atom(&r->args.items[35], "SPECIAL-USE");
}

static void
test_list_dovecot(void)
{
  g_autoptr(ImapResponse) a = parse_str("* LIST (\\HasNoChildren) \"/\" INBOX\r\n");
  g_assert_cmpstr(a->name, ==, "LIST");
  assert_list(&a->args, 3);
  assert_atom(&assert_list(&a->args.items[0], 1)->items[0], "\\HasNoChildren");
  assert_string(&a->args.items[1], "/");
  assert_atom(&a->args.items[2], "INBOX");

  g_autoptr(ImapResponse) b =
      parse_str("* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Messages\"\r\n");
  assert_string(&b->args.items[2], "Sent Messages");
  g_assert_false(b->args.items[2].literal);

  /* Names with quotes or 8-bit bytes come as literals. */
  const char lit[] = "* LIST (\\HasNoChildren) \"/\" {10}\r\nFoo \"bar\"x\r\n";
  g_autoptr(ImapResponse) c = parse_one(lit, sizeof lit - 1);
  assert_string(&c->args.items[2], "Foo \"bar\"x");
  g_assert_true(c->args.items[2].literal);

  g_autoptr(ImapResponse) d = parse_str("* LIST (\\Noselect) NIL \"\"\r\n");
  g_assert_cmpint(d->args.items[1].type, ==, IMAP_VAL_NIL);
  g_assert_null(d->args.items[1].data);
  assert_string(&d->args.items[2], "");

  g_autoptr(ImapResponse) e =
      parse_str("* LIST (\\HasChildren \\Noselect) \"/\" \"&AMQ-pfel\"\r\n");
  assert_list(&e->args.items[0], 2);
  g_assert_true(imap_val_is_atom(&e->args.items[0].items[1], "\\noselect"));
  assert_string(&e->args.items[2], "&AMQ-pfel");
}

static void
test_list_gmail_courier(void)
{
  g_autoptr(ImapResponse) g = parse_str(
      "* LIST (\\All \\HasNoChildren) \"/\" \"[Gmail]/All Mail\"\r\n");
  assert_string(&g->args.items[2], "[Gmail]/All Mail");

  g_autoptr(ImapResponse) g2 =
      parse_str("* LIST (\\HasChildren \\Noselect) \"/\" \"[Gmail]\"\r\n");
  assert_string(&g2->args.items[2], "[Gmail]");

  g_autoptr(ImapResponse) co =
      parse_str("* LIST (\\Unmarked \\HasChildren) \".\" \"INBOX\"\r\n");
  assert_string(&co->args.items[1], ".");

  g_autoptr(ImapResponse) ls = parse_str("* LSUB () \".\" INBOX.Sent\r\n");
  g_assert_cmpstr(ls->name, ==, "LSUB");
  assert_list(&ls->args.items[0], 0);
  g_assert_null(ls->args.items[0].items);
  assert_atom(&ls->args.items[2], "INBOX.Sent");
}

/* '[' is an ATOM-CHAR: it opens a section only after BODY, BINARY and
 * their .PEEK/.SIZE forms.  Dovecot sends these names unquoted. */
static void
test_bracket_atoms(void)
{
  static const char *const names[] = {"a[b", "x]y[z", "[q"};
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    g_autofree char *in = g_strdup_printf("* LIST () \"/\" %s\r\n", names[i]);
    g_autoptr(ImapResponse) l = parse_str(in);
    assert_list(&l->args, 3);
    assert_atom(&l->args.items[2], names[i]);
  }

  g_autoptr(ImapResponse) st =
      parse_str("* STATUS a[b (MESSAGES 2 HIGHESTMODSEQ 7)\r\n");
  assert_atom(&st->args.items[0], "a[b");
  assert_list(&st->args.items[1], 4);

  g_autoptr(ImapResponse) f = parse_str(
      "* 4 FETCH (UID 9 FLAGS (\\Seen $x[y [z) BODY[1]<0> {1}\r\nq)\r\n");
  const ImapVal *att = assert_list(&f->args.items[0], 6);
  const ImapVal *fl = assert_list(imap_fetch_get(att, "FLAGS", NULL), 3);
  assert_atom(&fl->items[1], "$x[y");
  assert_atom(&fl->items[2], "[z");
  assert_atom(&att->items[4], "BODY[1]<0>");

  g_autoptr(ImapResponse) pf =
      parse_str("* FLAGS (\\Answered $x[y)\r\n");
  assert_atom(&assert_list(&pf->args.items[0], 2)->items[1], "$x[y");
}

static void
test_list_extended(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* LIST (\\Subscribed \\NonExistent) \"/\" \"Fruit/Peach\" "
      "(\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
  assert_list(&r->args, 4);
  const ImapVal *ext = assert_list(&r->args.items[3], 2);
  assert_string(&ext->items[0], "CHILDINFO");
  assert_string(&assert_list(&ext->items[1], 1)->items[0], "SUBSCRIBED");

  g_autoptr(ImapResponse) o = parse_str(
      "* LIST () \"/\" \"Foo\" (\"OLDNAME\" (\"Bar\"))\r\n");
  assert_string(&o->args.items[3].items[1].items[0], "Bar");
}

static void
test_flags(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk)\r\n");
  g_assert_cmpstr(r->name, ==, "FLAGS");
  const ImapVal *l = assert_list(&r->args.items[0], 7);
  assert_atom(&l->items[5], "$Forwarded");
}

static void
test_numbered(void)
{
  static const struct {
    const char *in, *name;
    guint32 n;
  } table[] = {
    { "* 172 EXISTS\r\n", "EXISTS", 172 },
    { "* 1 RECENT\r\n", "RECENT", 1 },
    { "* 44 EXPUNGE\r\n", "EXPUNGE", 44 },
    { "* 0 EXISTS\r\n", "EXISTS", 0 },
    { "* 4294967295 EXISTS\r\n", "EXISTS", 4294967295u },
    { "* 7 exists\r\n", "EXISTS", 7 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    g_autoptr(ImapResponse) r = parse_str(table[i].in);
    g_assert_cmpint(r->kind, ==, IMAP_RESP_UNTAGGED);
    g_assert_true(r->has_number);
    g_assert_cmpuint(r->number, ==, table[i].n);
    g_assert_cmpstr(r->name, ==, table[i].name);
    assert_list(&r->args, 0);
  }
  expect_syntax("* 4294967296 EXISTS\r\n");
}

static void
test_fetch_listing(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* 12 FETCH (UID 4827313 RFC822.SIZE 44827 INTERNALDATE "
      "\"17-Jul-1996 02:44:25 -0700\" FLAGS (\\Seen $Label1) MODSEQ (12345))\r\n");
  guint32 uid = 0, size = 0;
  guint64 modseq = 0;
  gint64 t = 0;

  g_assert_cmpstr(r->name, ==, "FETCH");
  g_assert_cmpuint(r->number, ==, 12);
  assert_list(&r->args, 1);
  const ImapVal *att = assert_list(&r->args.items[0], 10);
  g_assert_true(imap_val_to_u32(imap_fetch_get(att, "UID", NULL), &uid));
  g_assert_cmpuint(uid, ==, 4827313);
  g_assert_true(imap_val_to_u32(imap_fetch_get(att, "rfc822.size", NULL), &size));
  g_assert_cmpuint(size, ==, 44827);
  const ImapVal *date = imap_fetch_get(att, "INTERNALDATE", NULL);
  g_assert_true(imap_parse_internaldate(imap_val_str(date), &t));
  g_assert_cmpint(t, ==, 837596665);
  const ImapVal *flags = assert_list(imap_fetch_get(att, "FLAGS", NULL), 2);
  g_assert_true(imap_val_is_atom(&flags->items[0], "\\SEEN"));
  const ImapVal *ms = assert_list(imap_fetch_get(att, "MODSEQ", NULL), 1);
  g_assert_true(imap_val_to_u64(&ms->items[0], &modseq));
  g_assert_cmpuint(modseq, ==, 12345);
  g_assert_null(imap_fetch_get(att, "BODY[]", NULL));
  g_assert_null(imap_fetch_get(att, "FLAG", NULL));
}

static void
test_fetch_gmail(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* 1 FETCH (X-GM-THRID 1278455344230334865 X-GM-MSGID 1278455344230334865 "
      "X-GM-LABELS (\\Inbox \\Sent Important \"Muy Importante\") UID 1 "
      "MODSEQ (4721) FLAGS (\\Seen))\r\n");
  const ImapVal *att = &r->args.items[0];
  guint64 thrid = 0;

  g_assert_true(imap_val_to_u64(imap_fetch_get(att, "X-GM-THRID", NULL), &thrid));
  g_assert_cmpuint(thrid, ==, G_GUINT64_CONSTANT(1278455344230334865));
  const ImapVal *labels = assert_list(imap_fetch_get(att, "x-gm-labels", NULL), 4);
  assert_string(&labels->items[3], "Muy Importante");
}

/* A body with CRLFs, NUL, every byte value and a line that looks like a
 * response. */
static GByteArray *
make_body(gsize size)
{
  GByteArray *b = g_byte_array_sized_new((guint)size);
  static const char head[] = "From: a@example.org\r\nSubject: x\r\n\r\n* 1 EXISTS\r\n{5}\r\n";

  g_byte_array_append(b, (const guint8 *)head, MIN(size, sizeof head - 1));
  while (b->len < size) {
    guint8 c = (guint8)(b->len * 7 + b->len / 251);
    g_byte_array_append(b, &c, 1);
  }
  return b;
}

static GByteArray *
make_fetch(const GByteArray *body, const char *section, guint32 seq)
{
  GByteArray *msg = g_byte_array_new();
  g_autofree char *head = g_strdup_printf("* %u FETCH (UID %u %s {%u}\r\n", seq,
                                          seq * 10, section, body->len);

  g_byte_array_append(msg, (const guint8 *)head, (guint)strlen(head));
  g_byte_array_append(msg, body->data, body->len);
  g_byte_array_append(msg, (const guint8 *)" FLAGS (\\Seen))\r\n", 17);
  return msg;
}

static void
test_fetch_body_literal(void)
{
  g_autoptr(GByteArray) body = make_body(3000);
  g_autoptr(GByteArray) msg = make_fetch(body, "BODY[]", 5);
  g_autoptr(ImapResponse) r = parse_one((const char *)msg->data, msg->len);
  const ImapVal *att = assert_list(&r->args.items[0], 6);
  const ImapVal *b = imap_fetch_get(att, "BODY[]", NULL);

  g_assert_nonnull(b);
  g_assert_cmpint(b->type, ==, IMAP_VAL_STRING);
  g_assert_true(b->literal);
  g_assert_cmpmem(b->data, b->len, body->data, body->len);
  g_assert_cmpint(b->data[b->len], ==, '\0');

  /* Zero-copy: the GBytes shares the response's memory. */
  g_autoptr(GBytes) gb = imap_response_bytes(r, b);
  gsize n = 0;
  g_assert_true(g_bytes_get_data(gb, &n) == (gconstpointer)b->data);
  g_assert_cmpuint(n, ==, body->len);

  assert_list(imap_fetch_get(att, "FLAGS", NULL), 1);
}

static void
test_fetch_partial(void)
{
  const char in[] = "* 3 FETCH (UID 77 BODY[]<100> {4}\r\nabcd BODY[TEXT] NIL)\r\n";
  g_autoptr(ImapResponse) r = parse_one(in, sizeof in - 1);
  const ImapVal *att = &r->args.items[0];
  guint64 origin = 99;

  g_assert_null(imap_fetch_get(att, "BODY[]", &origin));
  g_assert_cmpuint(origin, ==, 0);
  const ImapVal *v = imap_fetch_get(att, "body[]<", &origin);
  assert_string(v, "abcd");
  g_assert_cmpuint(origin, ==, 100);
  g_assert_cmpint(imap_fetch_get(att, "BODY[TEXT]", NULL)->type, ==, IMAP_VAL_NIL);

  const char in0[] = "* 3 FETCH (BODY[]<0> {2}\r\nhi)\r\n";
  g_autoptr(ImapResponse) r0 = parse_one(in0, sizeof in0 - 1);
  origin = 5;
  assert_string(imap_fetch_get(&r0->args.items[0], "BODY[]<", &origin), "hi");
  g_assert_cmpuint(origin, ==, 0);
  assert_atom(&r0->args.items[0].items[0], "BODY[]<0>");

  /* Some servers omit a zero origin: "BODY[]<" still matches. */
  const char in1[] = "* 3 FETCH (BODY[] {2}\r\nhi)\r\n";
  g_autoptr(ImapResponse) r1 = parse_one(in1, sizeof in1 - 1);
  origin = 5;
  assert_string(imap_fetch_get(&r1->args.items[0], "BODY[]<", &origin), "hi");
  g_assert_cmpuint(origin, ==, 0);
  g_assert_null(imap_fetch_get(&r1->args.items[0], "BODY[HEADER]<", NULL));
}

static void
test_section_atoms(void)
{
  const char in[] =
      "* 9 FETCH (BODY[HEADER.FIELDS (FROM TO)] {4}\r\nab\r\n "
      "BINARY[1]<5> ~{3}\r\nx\0y BODY[1.2.MIME] \"\" "
      "BODY[HEADER.FIELDS.NOT (\"X-A\" [b])] NIL)\r\n";
  g_autoptr(ImapResponse) r = parse_one(in, sizeof in - 1);
  const ImapVal *att = assert_list(&r->args.items[0], 8);

  assert_atom(&att->items[0], "BODY[HEADER.FIELDS (FROM TO)]");
  assert_string(&att->items[1], "ab\r\n");
  assert_atom(&att->items[2], "BINARY[1]<5>");
  g_assert_true(att->items[3].literal);
  g_assert_cmpmem(att->items[3].data, att->items[3].len, "x\0y", 3);
  assert_atom(&att->items[4], "BODY[1.2.MIME]");
  assert_atom(&att->items[6], "BODY[HEADER.FIELDS.NOT (\"X-A\" [b])]");
  g_assert_nonnull(imap_fetch_get(att, "body[header.fields (from to)]", NULL));
  guint64 origin = 0;
  g_assert_nonnull(imap_fetch_get(att, "BINARY[1]<", &origin));
  g_assert_cmpuint(origin, ==, 5);
}

/* Every split point of a literal-bearing stream gives the same result. */
static void
test_split_every_point(void)
{
  g_autoptr(GByteArray) body = make_body(300);
  g_autoptr(GByteArray) msg = make_fetch(body, "BODY[]", 2);
  const char tail[] = "* 3 EXISTS\r\nA1 OK [READ-WRITE] done\r\n";
  g_byte_array_append(msg, (const guint8 *)tail, sizeof tail - 1);
  g_autofree char *want = dump_all((const char *)msg->data, msg->len);

  for (gsize k = 0; k <= msg->len; k++) {
    ImapParser *p = imap_parser_new(0, 0);
    GString *got = g_string_new(NULL);
    ImapResponse *r;
    GError *error = NULL;
    int rc;

    imap_parser_feed(p, msg->data, k);
    while ((rc = imap_parser_next(p, &r, &error)) == 1) {
      g_autofree char *d = dump_resp(r);
      g_string_append(got, d);
      g_string_append_c(got, '\n');
      imap_response_free(r);
    }
    g_assert_cmpint(rc, ==, 0);
    imap_parser_feed(p, msg->data + k, msg->len - k);
    while ((rc = imap_parser_next(p, &r, &error)) == 1) {
      g_autofree char *d = dump_resp(r);
      g_string_append(got, d);
      g_string_append_c(got, '\n');
      imap_response_free(r);
    }
    g_assert_cmpint(rc, ==, 0);
    g_assert_no_error(error);
    g_assert_cmpstr(got->str, ==, want);
    g_assert_cmpuint(imap_parser_buffered(p), ==, 0);
    g_string_free(got, TRUE);
    imap_parser_free(p);
  }
}

/* Two split points over a smaller stream with two literals, and byte-wise
 * feeding with literal_remaining checks. */
static void
test_split_two_points(void)
{
  const char in[] = "* 1 FETCH (BODY[HEADER] {3}\r\nab\n BODY[TEXT] {0}\r\n)\r\n"
                    "* LIST () NIL {1}\n/\n";
  gsize len = sizeof in - 1;
  g_autofree char *want = dump_all(in, len);

  for (gsize i = 0; i <= len; i++)
    for (gsize j = i; j <= len; j++) {
      ImapParser *p = imap_parser_new(0, 0);
      GString *got = g_string_new(NULL);
      const gsize cuts[] = { 0, i, j, len };

      for (gsize c = 0; c + 1 < G_N_ELEMENTS(cuts); c++) {
        gsize n = cuts[c + 1] - cuts[c];
        if ((i + j + c) % 2 == 0) {
          imap_parser_feed(p, in + cuts[c], n);
        } else { /* as conn_fill receives: into the room offered */
          for (gsize done = 0, k; done < n; done += k) {
            gsize room;
            guint8 *dst = imap_parser_space(p, n - done, &room);
            g_assert_cmpuint(room, >=, 1);
            k = MIN(room, n - done);
            memcpy(dst, in + cuts[c] + done, k);
            imap_parser_commit(p, k);
          }
        }
        drain_dumps(p, got);
      }
      g_assert_cmpstr(got->str, ==, want);
      g_string_free(got, TRUE);
      imap_parser_free(p);
    }
}

/* Receiving as conn_fill does: into the room the parser offers.  Once a
 * literal's size is known the room holds all of it, so a large message
 * comes in reads as large as it; the responses are those of one feed. */
static void
test_space_commit(void)
{
  g_autoptr(GByteArray) body = make_body(300 * 1024);
  g_autoptr(GByteArray) msg = make_fetch(body, "BODY[]", 7);
  const char tail[] = "A1 OK done\r\n";
  g_byte_array_append(msg, (const guint8 *)tail, sizeof tail - 1);
  g_autofree char *want = dump_all((const char *)msg->data, msg->len);

  ImapParser *p = imap_parser_new(0, 0);
  GString *got = g_string_new(NULL);
  gsize off = 0, reads = 0, biggest = 0;
  while (off < msg->len) {
    gsize room;
    guint8 *dst = imap_parser_space(p, 4096, &room);
    g_assert_cmpuint(room, >=, 4096);
    gsize n = MIN(room, msg->len - off);
    memcpy(dst, msg->data + off, n);
    imap_parser_commit(p, n);
    off += n;
    reads++;
    biggest = MAX(biggest, n);
    drain_dumps(p, got);
  }
  g_assert_cmpstr(got->str, ==, want);
  /* The first read brings the literal's header, the next all the rest. */
  g_assert_cmpuint(reads, <=, 3);
  g_assert_cmpuint(biggest, >=, 300 * 1024 - 4096);
  g_string_free(got, TRUE);
  imap_parser_free(p);

  /* Reads of 8 KB asking for 64 KB of room: near the literal's end the
   * room offered is what it still needs (and 64 bytes), not 64 KB more,
   * which would have doubled the buffer holding the message. */
  p = imap_parser_new(0, 0);
  got = g_string_new(NULL);
  gboolean near_end = FALSE;
  for (off = 0; off < msg->len;) {
    gsize room, left = imap_parser_literal_remaining(p);
    guint8 *dst = imap_parser_space(p, 65536, &room);
    if (left > 0 && left + 64 < 65536) {
      near_end = TRUE;
      g_assert_cmpuint(room, >=, left + 64);
      g_assert_cmpuint(room, <, 65536);
    }
    gsize n = MIN(MIN(room, (gsize)8192), msg->len - off);
    memcpy(dst, msg->data + off, n);
    imap_parser_commit(p, n);
    off += n;
    drain_dumps(p, got);
  }
  g_assert_true(near_end);
  g_assert_cmpstr(got->str, ==, want);
  g_string_free(got, TRUE);
  imap_parser_free(p);

  /* imap_parser_feed takes any length, also far past a literal's end
   * (beyond the 64 bytes the parser keeps after it). */
  for (int i = 0; i < 20; i++)
    g_byte_array_append(msg, (const guint8 *)"* 8 EXISTS\r\n", 12);
  g_autofree char *want_more = dump_all((const char *)msg->data, msg->len);
  p = imap_parser_new(0, 0);
  got = g_string_new(NULL);
  const guint8 *lit = memchr(msg->data, '\n', msg->len);
  g_assert_nonnull(lit);
  gsize head = (gsize)(lit - msg->data) + 1;
  imap_parser_feed(p, msg->data, head);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, body->len);
  imap_parser_feed(p, msg->data + head, msg->len - head);
  drain_dumps(p, got);
  g_assert_cmpstr(got->str, ==, want_more);
  g_string_free(got, TRUE);
  imap_parser_free(p);
}

static void
test_literal_remaining(void)
{
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r = NULL;
  GError *error = NULL;
  const char head[] = "* 1 FETCH (BODY[] {10}\r\n";

  imap_parser_feed(p, head, sizeof head - 1);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, 10);
  g_assert_cmpuint(imap_parser_buffered(p), ==, sizeof head - 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  imap_parser_feed(p, "0123", 4);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, 6);
  imap_parser_feed(p, "456789)", 7);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, 0);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  imap_parser_feed(p, "\r", 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  imap_parser_feed(p, "\n", 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  assert_string(imap_fetch_get(&r->args.items[0], "BODY[]", NULL), "0123456789");
  imap_response_free(r);
  g_assert_cmpuint(imap_parser_buffered(p), ==, 0);
  imap_parser_free(p);
}

static void
test_several_in_one_feed(void)
{
  const char in[] =
      "* 22 EXPUNGE\r\n"
      "* 23 EXISTS\r\n"
      "* 14 FETCH (FLAGS (\\Seen \\Deleted) UID 97)\r\n"
      "* 15 FETCH (UID 98 BODY[] {5}\r\nhello)\r\n"
      "A7 OK Fetch completed (0.001 + 0.000 secs).\r\n"
      "* 24 EXI"; /* incomplete: stays buffered */
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;
  const char *names[] = { "EXPUNGE", "EXISTS", "FETCH", "FETCH", "OK" };

  imap_parser_feed(p, in, sizeof in - 1);
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
    g_assert_cmpstr(r->name, ==, names[i]);
    imap_response_free(r);
  }
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  g_assert_cmpuint(imap_parser_buffered(p), ==, 8);
  imap_parser_feed(p, "STS\r\n", 5);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpuint(r->number, ==, 24);
  imap_response_free(r);
  g_assert_no_error(error);
  imap_parser_free(p);
}

static void
test_vanished(void)
{
  g_autoptr(ImapResponse) r = parse_str("* VANISHED (EARLIER) 1:3,5\r\n");
  g_autoptr(GArray) set = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));

  g_assert_cmpstr(r->name, ==, "VANISHED");
  assert_list(&r->args, 2);
  g_assert_true(imap_val_is_atom(&assert_list(&r->args.items[0], 1)->items[0], "EARLIER"));
  assert_atom(&r->args.items[1], "1:3,5");
  g_assert_true(imap_parse_uid_set(imap_val_str(&r->args.items[1]), set));
  g_assert_cmpuint(set->len, ==, 2);
  g_assert_cmpuint(g_array_index(set, ImapUidRange, 0).hi, ==, 3);
  g_assert_cmpuint(g_array_index(set, ImapUidRange, 1).lo, ==, 5);

  g_autoptr(ImapResponse) v = parse_str("* VANISHED 405,407,410:425\r\n");
  assert_list(&v->args, 1);
}

static void
test_esearch_search(void)
{
  g_autoptr(ImapResponse) e = parse_str(
      "* ESEARCH (TAG \"A285\") UID MIN 7 MAX 3800 COUNT 15 ALL 7:3800\r\n");
  g_assert_cmpstr(e->name, ==, "ESEARCH");
  assert_list(&e->args, 10);
  assert_string(&e->args.items[0].items[1], "A285");
  assert_atom(&e->args.items[9], "7:3800");

  g_autoptr(ImapResponse) s = parse_str("* SEARCH 2 84 882\r\n");
  assert_list(&s->args, 3);
  g_autoptr(ImapResponse) s0 = parse_str("* SEARCH\r\n");
  assert_list(&s0->args, 0);
  g_autoptr(ImapResponse) sm = parse_str("* SEARCH 2 84 (MODSEQ 917162500)\r\n");
  assert_list(&sm->args.items[2], 2);
}

static void
test_status(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* STATUS \"INBOX\" (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY 1 UNSEEN 0 "
      "HIGHESTMODSEQ 7011231777)\r\n");
  guint64 hm = 0;

  g_assert_cmpstr(r->name, ==, "STATUS");
  assert_string(&r->args.items[0], "INBOX");
  const ImapVal *att = assert_list(&r->args.items[1], 10);
  g_assert_true(imap_val_to_u64(imap_fetch_get(att, "HIGHESTMODSEQ", NULL), &hm));
  g_assert_cmpuint(hm, ==, G_GUINT64_CONSTANT(7011231777));

  g_autoptr(ImapResponse) a = parse_str("* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n");
  assert_atom(&a->args.items[0], "blurdybloop");
}

/* RFC 7162 mod-sequences are 63-bit: a bigger one is not taken. */
static void
test_val_modseq(void)
{
  g_autoptr(ImapResponse) r = parse_str(
      "* 1 FETCH (MODSEQ (9223372036854775807 9223372036854775808 "
      "18446744073709551615 0 12))\r\n");
  const ImapVal *l = &r->args.items[0].items[1];
  guint64 v = 0;
  g_assert_true(imap_val_to_modseq(&l->items[0], &v));
  g_assert_cmpuint(v, ==, G_MAXINT64);
  g_assert_false(imap_val_to_modseq(&l->items[1], NULL));
  g_assert_false(imap_val_to_modseq(&l->items[2], NULL));
  g_assert_false(imap_val_to_modseq(&l->items[3], NULL));
  g_assert_true(imap_val_to_modseq(&l->items[4], &v));
  g_assert_cmpuint(v, ==, 12);
}

static void
test_namespace_id_enabled(void)
{
  g_autoptr(ImapResponse) d = parse_str("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
  assert_list(&d->args, 3);
  const ImapVal *pers = assert_list(&assert_list(&d->args.items[0], 1)->items[0], 2);
  assert_string(&pers->items[0], "");
  assert_string(&pers->items[1], "/");
  g_assert_cmpint(d->args.items[2].type, ==, IMAP_VAL_NIL);

  /* Courier: no space between list elements. */
  g_autoptr(ImapResponse) c = parse_str(
      "* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"#shared.\" \".\")(\"shared.\" \".\"))\r\n");
  assert_list(&c->args.items[2], 2);
  assert_string(&c->args.items[2].items[1].items[0], "shared.");

  g_autoptr(ImapResponse) id = parse_str(
      "* ID (\"name\" \"Dovecot\" \"version\" \"2.3.19.1\")\r\n");
  assert_list(&id->args.items[0], 4);
  g_autoptr(ImapResponse) id0 = parse_str("* ID NIL\r\n");
  g_assert_cmpint(id0->args.items[0].type, ==, IMAP_VAL_NIL);

  g_autoptr(ImapResponse) en = parse_str("* ENABLED CONDSTORE QRESYNC\r\n");
  g_assert_cmpstr(en->name, ==, "ENABLED");
  assert_list(&en->args, 2);
}

static void
test_quoted_escapes(void)
{
  g_autoptr(ImapResponse) r =
      parse_str("* LIST () \"/\" \"a\\\\b\\\"c \\\"quoted\\\"\"\r\n");
  assert_string(&r->args.items[2], "a\\b\"c \"quoted\"");

  g_autoptr(ImapResponse) e = parse_str("* LIST () \"\" \"\"\r\n");
  assert_string(&e->args.items[1], "");
  assert_string(&e->args.items[2], "");

  /* 8-bit (UTF8=ACCEPT) in a quoted string. */
  g_autoptr(ImapResponse) u = parse_str("* LIST () \"/\" \"K\xc3\xa4se\"\r\n");
  assert_string(&u->args.items[2], "K\xc3\xa4se");
}

static void
test_empty_literal(void)
{
  const char in[] = "* LIST () \"/\" {0}\r\n\r\n";
  g_autoptr(ImapResponse) r = parse_one(in, sizeof in - 1);
  assert_string(&r->args.items[2], "");
  g_assert_true(r->args.items[2].literal);
  g_autoptr(GBytes) b = imap_response_bytes(r, &r->args.items[2]);
  g_assert_cmpuint(g_bytes_get_size(b), ==, 0);
}

static void
test_literal_variants(void)
{
  const char plus[] = "* LIST () \"/\" {3+}\r\nabc\r\n";
  g_autoptr(ImapResponse) a = parse_one(plus, sizeof plus - 1);
  assert_string(&a->args.items[2], "abc");

  const char l8[] = "* 1 FETCH (BINARY[] ~{4}\r\n\0\x01\xff\n)\r\n";
  g_autoptr(ImapResponse) b = parse_one(l8, sizeof l8 - 1);
  const ImapVal *v = imap_fetch_get(&b->args.items[0], "BINARY[]", NULL);
  g_assert_true(v->literal);
  g_assert_cmpmem(v->data, v->len, "\0\x01\xff\n", 4);

  /* A literal holding a line that looks like a response. */
  const char tricky[] = "* 1 FETCH (BODY[] {13}\r\n* 2 EXISTS\r\n) UID 4)\r\n";
  g_autoptr(ImapResponse) c = parse_one(tricky, sizeof tricky - 1);
  assert_string(imap_fetch_get(&c->args.items[0], "BODY[]", NULL), "* 2 EXISTS\r\n)");
  assert_atom(imap_fetch_get(&c->args.items[0], "UID", NULL), "4");
  g_assert_cmpuint(c->args.items[0].n_items, ==, 4);
}

static void
test_nil(void)
{
  g_autoptr(ImapResponse) r = parse_str("* XDATA NIL nil Nil NILS \"NIL\" (NIL)\r\n");
  assert_list(&r->args, 6);
  g_assert_cmpint(r->args.items[0].type, ==, IMAP_VAL_NIL);
  g_assert_cmpint(r->args.items[1].type, ==, IMAP_VAL_NIL);
  g_assert_cmpint(r->args.items[2].type, ==, IMAP_VAL_NIL);
  assert_atom(&r->args.items[3], "NILS");
  assert_string(&r->args.items[4], "NIL");
  g_assert_cmpint(r->args.items[5].items[0].type, ==, IMAP_VAL_NIL);
  g_assert_null(imap_response_bytes(r, &r->args.items[0]));
  g_assert_null(imap_response_bytes(r, &r->args.items[5]));
  g_assert_null(imap_val_str(&r->args.items[0]));
}

static void
test_bare_lf(void)
{
  const char in[] = "* OK hi\n* 1 FETCH (BODY[] {3}\nab\n)\nA1 OK done\n";
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;

  imap_parser_feed(p, in, sizeof in - 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->text, ==, "hi");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  assert_string(imap_fetch_get(&r->args.items[0], "BODY[]", NULL), "ab\n");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->tag, ==, "A1");
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 0);
  imap_parser_free(p);

  /* A CR that does not end a line is malformed. */
  expect_syntax("* LIST () \"/\" abc\rdef\r\n");
}

static void
test_unknown_keyword(void)
{
  /* Tokenizable: generic values. */
  g_autoptr(ImapResponse) a = parse_str("* XSTUFF a (b \"c\") {1}\r\nd\r\n");
  g_assert_cmpstr(a->name, ==, "XSTUFF");
  assert_list(&a->args, 3);
  assert_string(&a->args.items[2], "d");

  /* Not tokenizable but one line: kept as one atom. */
  g_autoptr(ImapResponse) b = parse_str("* XSTATS hits=5 (unbalanced \"x\r\n");
  g_assert_cmpstr(b->name, ==, "XSTATS");
  assert_list(&b->args, 1);
  assert_atom(&b->args.items[0], "hits=5 (unbalanced \"x");

  /* Known keywords stay strict. */
  expect_syntax("* LIST (unbalanced \"/\" x\r\n");
}

static void
test_response_bytes(void)
{
  g_autoptr(ImapResponse) r = parse_str("* LIST (\\X) \"a b\" Atom\r\n");
  g_autoptr(GBytes) q = imap_response_bytes(r, &r->args.items[1]);
  g_autoptr(GBytes) a = imap_response_bytes(r, &r->args.items[2]);

  g_assert_cmpmem(g_bytes_get_data(q, NULL), g_bytes_get_size(q), "a b", 3);
  g_assert_cmpmem(g_bytes_get_data(a, NULL), g_bytes_get_size(a), "Atom", 4);
  g_assert_null(imap_response_bytes(r, &r->args.items[0]));
  g_assert_null(imap_response_bytes(r, NULL));

  /* The slice outlives the response. */
  g_autoptr(GBytes) keep = NULL;
  {
    const char in[] = "* 1 FETCH (BODY[] {6}\r\nkeep\r\n)\r\n";
    ImapResponse *t = parse_one(in, sizeof in - 1);
    keep = imap_response_bytes(t, imap_fetch_get(&t->args.items[0], "BODY[]", NULL));
    imap_response_free(t);
  }
  g_assert_cmpmem(g_bytes_get_data(keep, NULL), g_bytes_get_size(keep), "keep\r\n", 6);
}

/* ---- malformed input ---- */

static void
test_malformed(void)
{
#define BAD(x) { x, sizeof x - 1 }
  static const struct {
    const char *s;
    gsize len;
  } bad[] = {
    BAD("\r\n"),                                     /* empty line */
    BAD("*\r\n"),                                    /* nothing after '*' */
    BAD("* \r\n"),                                   /* no keyword */
    BAD("* 12\r\n"),                                 /* number, no keyword */
    BAD("* 12 \r\n"),
    BAD("A1 FETCH (UID 1)\r\n"),                     /* tagged, not a status */
    BAD("A1 BYE bye\r\n"),
    BAD("* 5 OK hello\r\n"),                         /* status with a number */
    BAD("(A1) OK\r\n"),                              /* bad tag */
    BAD("A1OK\r\n"),
    BAD("\x01\x02\x03 junk\r\n"),
    BAD("* LIST () \"/\" \"abc\r\n"),                /* unterminated quote */
    BAD("* LIST () \"/\" \"abc\\\r\n"),
    BAD("* LIST () \"/\" {abc}\r\nabc\r\n"),         /* bad literal size */
    BAD("* LIST () \"/\" {}\r\n"),
    BAD("* LIST () \"/\" {-1}\r\n"),
    BAD("* LIST () \"/\" {3}abc\r\n"),               /* literal not at line end */
    BAD("* LIST () \"/\" {3\r\nabc\r\n"),
    BAD("* FLAGS (\\Seen\r\n"),                      /* unbalanced parens */
    BAD("* FLAGS \\Seen)\r\n"),
    BAD("* FLAGS ((\\Seen)\r\n"),
    BAD("* 1 FETCH (BODY[HEADER (X) {3}\r\nabc)\r\n"), /* unterminated section */
    BAD("* {3}\r\nabc\r\n"),                         /* keyword as a literal */
    BAD("* OK[ALERT] x\r\n"),
    BAD("* FETCH\x7f (UID 1)\r\n"),
    /* NUL outside a literal, wherever it is (found by the fuzzer in the
     * unknown-response fallback). */
    BAD("* SEARCH 1 2\0 3\r\n"),
    BAD("* 1 FETCH (UID 1) \"a\0b\"\r\n"),
    BAD("* OK hello\0world\r\n"),
    BAD("A1 NO [ALERT a\0] x\r\n"),
    BAD("+ abc\0\r\n"),
    BAD("* XUNKNOWN (a \0\r\n"),
  };
#undef BAD

  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_test_message("case %" G_GSIZE_FORMAT, i);
    expect_error(bad[i].s, bad[i].len, 0, 0, IMAP_PARSE_ERROR_SYNTAX);
  }
}

static void
test_error_message(void)
{
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;

  imap_parser_feed(p, "* LIST () \"/\" \"abc\r\n", 20);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, -1);
  g_assert_error(error, IMAP_PARSE_ERROR, IMAP_PARSE_ERROR_SYNTAX);
  g_assert_nonnull(strstr(error->message, "unterminated quoted string"));
  g_assert_nonnull(strstr(error->message, "LIST"));
  g_clear_error(&error);
  imap_parser_free(p);
}

static void
test_literal_too_big(void)
{
  /* Rejected as soon as the header is seen, before the bytes arrive. */
  const char in[] = "* 1 FETCH (BODY[] {101}\r\n";
  expect_error(in, sizeof in - 1, 100, 0, IMAP_PARSE_ERROR_TOO_BIG);

  const char ok[] = "* 1 FETCH (BODY[] {5}\r\n12345)\r\n";
  ImapParser *p = imap_parser_new(5, 0);
  ImapResponse *r;
  GError *error = NULL;
  imap_parser_feed(p, ok, sizeof ok - 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  imap_response_free(r);
  imap_parser_free(p);

  const char huge[] = "* 1 FETCH (BODY[] {99999999999999999999999999}\r\n";
  expect_error(huge, sizeof huge - 1, 0, 0, IMAP_PARSE_ERROR_TOO_BIG);
  const char dflt[] = "* 1 FETCH (BODY[] {67108865}\r\n";
  expect_error(dflt, sizeof dflt - 1, 0, 0, IMAP_PARSE_ERROR_TOO_BIG);
}

static void
test_nesting_depth(void)
{
  GString *ok = g_string_new("* XDEEP ");
  GString *bad = g_string_new("* XDEEP ");

  for (int i = 0; i < 100; i++)
    g_string_append_c(ok, '(');
  for (int i = 0; i < 100; i++)
    g_string_append_c(ok, ')');
  g_string_append(ok, "\r\n");
  g_autoptr(ImapResponse) r = parse_one(ok->str, ok->len);
  const ImapVal *v = &r->args;
  for (int i = 0; i < 100; i++)
    v = assert_list(&v->items[0], i == 99 ? 0 : 1);

  /* 101 levels; FETCH is a known keyword, so no lenient fallback. */
  g_string_assign(bad, "* 1 FETCH ");
  for (int i = 0; i < 101; i++)
    g_string_append_c(bad, '(');
  for (int i = 0; i < 101; i++)
    g_string_append_c(bad, ')');
  g_string_append(bad, "\r\n");
  expect_error(bad->str, bad->len, 0, 0, IMAP_PARSE_ERROR_SYNTAX);

  /* Far deeper: no recursion, no crash. */
  g_string_assign(bad, "* 1 FETCH ");
  for (int i = 0; i < 1000000; i++)
    g_string_append_c(bad, '(');
  g_string_append(bad, "\r\n");
  expect_error(bad->str, bad->len, 0, 0, IMAP_PARSE_ERROR_SYNTAX);

  g_string_free(ok, TRUE);
  g_string_free(bad, TRUE);
}

static void
test_line_too_long(void)
{
  GString *s = g_string_new("* SEARCH");
  while (s->len < 2000)
    g_string_append(s, " 12345");

  /* No line end yet: the limit applies while the line is still coming. */
  expect_error(s->str, s->len, 0, 1000, IMAP_PARSE_ERROR_TOO_BIG);
  g_string_append(s, "\r\n");
  expect_error(s->str, s->len, 0, 1000, IMAP_PARSE_ERROR_TOO_BIG);

  /* Literals do not count towards the line limit; headers around do. */
  GString *lit = g_string_new("* 1 FETCH (BODY[] {5000}\r\n");
  for (int i = 0; i < 5000; i++)
    g_string_append_c(lit, 'x');
  g_string_append(lit, ")\r\n");
  ImapParser *p = imap_parser_new(0, 100);
  ImapResponse *r;
  GError *error = NULL;
  imap_parser_feed(p, lit->str, lit->len);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_no_error(error);
  imap_response_free(r);
  imap_parser_free(p);

  g_string_free(s, TRUE);
  g_string_free(lit, TRUE);
}

static void
test_error_after_good(void)
{
  const char in[] = "* 1 EXISTS\r\n* 2 EXISTS\r\n* LIST () \"/\" {999999}\r\n";
  ImapParser *p = imap_parser_new(1000, 0);
  ImapResponse *r;
  GError *error = NULL;

  imap_parser_feed(p, in, sizeof in - 1);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  imap_response_free(r);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, -1);
  g_assert_error(error, IMAP_PARSE_ERROR, IMAP_PARSE_ERROR_TOO_BIG);
  g_clear_error(&error);
  imap_parser_free(p);
}

static void
test_reset(void)
{
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;

  /* Bytes before STARTTLS are dropped, including a partial literal. */
  imap_parser_feed(p, "* 1 FETCH (BODY[] {100}\r\nabc", 28);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, 97);
  imap_parser_reset(p);
  g_assert_cmpuint(imap_parser_buffered(p), ==, 0);
  g_assert_cmpuint(imap_parser_literal_remaining(p), ==, 0);
  imap_parser_feed(p, "* OK fresh\r\n", 12);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->text, ==, "fresh");
  imap_response_free(r);

  /* And a parser that failed is usable again after reset. */
  imap_parser_feed(p, "garbage\r\n", 9);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, -1);
  g_clear_error(&error);
  imap_parser_reset(p);
  imap_parser_feed(p, "A1 OK done\r\n", 12);
  g_assert_cmpint(imap_parser_next(p, &r, &error), ==, 1);
  g_assert_cmpstr(r->tag, ==, "A1");
  imap_response_free(r);
  imap_parser_free(p);
}

/* A 20 MB literal in random 1 B..16 KiB pieces, then 2 MB one byte at a
 * time: must be linear (a rescan per feed would take minutes). */
static void
test_big_literal_linear(void)
{
  const gsize size = 20 * 1024 * 1024;
  g_autoptr(GByteArray) body = make_body(size);
  g_autoptr(GByteArray) msg = make_fetch(body, "BODY[]", 1);
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r = NULL;
  GError *error = NULL;
  gint64 t0 = g_get_monotonic_time();
  gsize off = 0;
  int rc = 0;

  while (off < msg->len) {
    gsize n = (gsize)g_test_rand_int_range(1, 16385); /* not inside MIN() */
    n = MIN(n, msg->len - off);
    imap_parser_feed(p, msg->data + off, n);
    off += n;
    rc = imap_parser_next(p, &r, &error);
    if (rc != 0)
      break;
  }
  g_assert_cmpint(rc, ==, 1);
  g_assert_cmpuint(off, ==, msg->len);
  const ImapVal *b = imap_fetch_get(&r->args.items[0], "BODY[]", NULL);
  g_assert_cmpuint(b->len, ==, size);
  g_assert_true(memcmp(b->data, body->data, size) == 0);
  g_autoptr(GBytes) gb = imap_response_bytes(r, b);
  g_assert_true(g_bytes_get_data(gb, NULL) == (gconstpointer)b->data);
  imap_response_free(r);

  g_autoptr(GByteArray) small = make_body(2 * 1024 * 1024);
  g_autoptr(GByteArray) msg2 = make_fetch(small, "BODY[]", 2);
  for (off = 0; off < msg2->len; off++) {
    imap_parser_feed(p, msg2->data + off, 1);
    rc = imap_parser_next(p, &r, &error);
    g_assert_cmpint(rc, ==, off + 1 == msg2->len ? 1 : 0);
  }
  b = imap_fetch_get(&r->args.items[0], "BODY[]", NULL);
  g_assert_cmpuint(b->len, ==, small->len);
  imap_response_free(r);
  imap_parser_free(p);

  gint64 ms = (g_get_monotonic_time() - t0) / 1000;
  g_test_message("22 MB fed in pieces in %" G_GINT64_FORMAT " ms", ms);
  g_assert_cmpint(ms, <, 10000);
}

/* Many small responses one byte at a time: also linear. */
static void
test_many_small_bytewise(void)
{
  GString *s = g_string_new(NULL);
  ImapParser *p = imap_parser_new(0, 0);
  ImapResponse *r;
  GError *error = NULL;
  guint count = 0;

  for (guint i = 1; i <= 20000; i++)
    g_string_append_printf(s, "* %u FETCH (UID %u FLAGS (\\Seen))\r\n", i, i + 1000);
  for (gsize i = 0; i < s->len; i++) {
    imap_parser_feed(p, s->str + i, 1);
    while (imap_parser_next(p, &r, &error) == 1) {
      count++;
      g_assert_cmpuint(r->number, ==, count);
      imap_response_free(r);
    }
  }
  g_assert_no_error(error);
  g_assert_cmpuint(count, ==, 20000);
  g_string_free(s, TRUE);
  imap_parser_free(p);
}

/* ---- value helpers ---- */

static void
test_val_numbers(void)
{
  static const struct {
    const char *s;
    gboolean ok32, ok64;
    guint64 v;
  } table[] = {
    { "0", TRUE, TRUE, 0 },
    { "42", TRUE, TRUE, 42 },
    { "007", TRUE, TRUE, 7 },
    { "4294967295", TRUE, TRUE, 4294967295u },
    { "4294967296", FALSE, TRUE, 4294967296u },
    { "18446744073709551615", FALSE, TRUE, G_MAXUINT64 },
    { "18446744073709551616", FALSE, FALSE, 0 },
    { "", FALSE, FALSE, 0 },
    { "-1", FALSE, FALSE, 0 },
    { "+1", FALSE, FALSE, 0 },
    { "12a", FALSE, FALSE, 0 },
    { " 1", FALSE, FALSE, 0 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    ImapVal v = { .type = IMAP_VAL_ATOM, .data = table[i].s, .len = strlen(table[i].s) };
    guint32 a = 0;
    guint64 b = 0;
    g_assert_cmpint(imap_val_to_u32(&v, &a), ==, table[i].ok32);
    g_assert_cmpint(imap_val_to_u64(&v, &b), ==, table[i].ok64);
    if (table[i].ok32)
      g_assert_cmpuint(a, ==, table[i].v);
    if (table[i].ok64)
      g_assert_cmpuint(b, ==, table[i].v);
  }
  ImapVal nil = { .type = IMAP_VAL_NIL };
  ImapVal list = { .type = IMAP_VAL_LIST };
  guint32 x;
  g_assert_false(imap_val_to_u32(&nil, &x));
  g_assert_false(imap_val_to_u32(&list, &x));
  g_assert_false(imap_val_to_u32(NULL, &x));
  /* Embedded NUL in a literal is not a number. */
  ImapVal lit = { .type = IMAP_VAL_STRING, .literal = TRUE, .data = "1\0" "2", .len = 3 };
  g_assert_false(imap_val_to_u32(&lit, &x));
}

static void
test_val_atoms(void)
{
  ImapVal a = { .type = IMAP_VAL_ATOM, .data = "\\Seen", .len = 5 };
  ImapVal s = { .type = IMAP_VAL_STRING, .data = "\\Seen", .len = 5 };

  g_assert_true(imap_val_is_atom(&a, "\\seen"));
  g_assert_true(imap_val_is_atom(&a, "\\SEEN"));
  g_assert_false(imap_val_is_atom(&a, "\\See"));
  g_assert_false(imap_val_is_atom(&a, "\\Seen2"));
  g_assert_false(imap_val_is_atom(&s, "\\Seen"));
  g_assert_false(imap_val_is_atom(NULL, "x"));
  g_assert_cmpstr(imap_val_str(&a), ==, "\\Seen");
  g_assert_cmpstr(imap_val_str(&s), ==, "\\Seen");
  g_assert_null(imap_val_str(NULL));
}

static void
test_fetch_get_edges(void)
{
  g_autoptr(ImapResponse) r =
      parse_str("* 1 FETCH (UID 5 \"FLAGS\" (x) BODY[]<7x> a BODY[]<> b BODY[]<12> c UID)\r\n");
  const ImapVal *att = &r->args.items[0];
  guint64 o = 1;

  assert_atom(imap_fetch_get(att, "UID", NULL), "5");
  g_assert_null(imap_fetch_get(att, "FLAGS", NULL)); /* name must be an atom */
  assert_atom(imap_fetch_get(att, "BODY[]<", &o), "c");
  g_assert_cmpuint(o, ==, 12);
  o = 1;
  g_assert_null(imap_fetch_get(att, "BODY[TEXT]<", &o));
  g_assert_cmpuint(o, ==, 0);
  g_assert_null(imap_fetch_get(att, "", NULL));
  g_assert_null(imap_fetch_get(&att->items[0], "UID", NULL)); /* not a list */
  g_assert_null(imap_fetch_get(NULL, "UID", NULL));

  /* A trailing name without value. */
  g_autoptr(ImapResponse) odd = parse_str("* 1 FETCH (UID 5 FLAGS)\r\n");
  g_assert_null(imap_fetch_get(&odd->args.items[0], "FLAGS", NULL));
}

static void
test_internaldate(void)
{
  static const struct {
    const char *s;
    gboolean ok;
    gint64 t;
  } table[] = {
    { "17-Jul-1996 02:44:25 -0700", TRUE, 837596665 },
    { "01-Jan-1970 00:00:00 +0000", TRUE, 0 },
    { " 1-Jan-1970 00:00:00 +0000", TRUE, 0 },
    { "1-Jan-1970 00:00:00 +0000", TRUE, 0 },
    { " 7-Feb-2024 13:05:09 +0100", TRUE, 1707307509 },
    { "29-Feb-2000 23:59:59 +0000", TRUE, 951868799 },
    { "29-feb-2024 00:00:00 +0000", TRUE, 1709164800 },
    { "31-Dec-1969 23:59:59 +0000", TRUE, -1 },
    { "01-Jan-1970 01:00:00 +0100", TRUE, 0 },
    { "31-Dec-1969 19:00:00 -0500", TRUE, 0 },
    { "19-Jan-2038 03:14:08 +0000", TRUE, G_GINT64_CONSTANT(2147483648) },
    { "31-Dec-9999 23:59:59 +0000", TRUE, G_GINT64_CONSTANT(253402300799) },
    { "01-Jan-1970 00:00:00 +1400", TRUE, -50400 },
    { "29-Feb-2023 00:00:00 +0000", FALSE, 0 },
    { "29-Feb-1900 00:00:00 +0000", FALSE, 0 },
    { "32-Jan-2020 00:00:00 +0000", FALSE, 0 },
    { "00-Jan-2020 00:00:00 +0000", FALSE, 0 },
    { "31-Apr-2020 00:00:00 +0000", FALSE, 0 },
    { "01-Foo-2020 00:00:00 +0000", FALSE, 0 },
    { "01-Jan-20 00:00:00 +0000", FALSE, 0 },
    { "01-Jan-2020 24:00:00 +0000", FALSE, 0 },
    { "01-Jan-2020 00:60:00 +0000", FALSE, 0 },
    { "01-Jan-2020 00:00:61 +0000", FALSE, 0 },
    { "01-Jan-2020 00:00:00 0000", FALSE, 0 },
    { "01-Jan-2020 00:00:00 +000", FALSE, 0 },
    { "01-Jan-2020 00:00:00 +0060", FALSE, 0 },
    { "01-Jan-2020 00:00:00 +0000 ", FALSE, 0 },
    { "01-Jan-2020 00:00:00", FALSE, 0 },
    { "01-Jan-2020", FALSE, 0 },
    { "  7-Jan-2020 00:00:00 +0000", FALSE, 0 },
    { "123-Jan-2020 00:00:00 +0000", FALSE, 0 },
    { "", FALSE, 0 },
    { "01-Ja", FALSE, 0 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    gint64 t = 12345;
    g_test_message("%s", table[i].s);
    g_assert_cmpint(imap_parse_internaldate(table[i].s, &t), ==, table[i].ok);
    if (table[i].ok)
      g_assert_cmpint(t, ==, table[i].t);
  }
  g_assert_false(imap_parse_internaldate(NULL, NULL));
}

static void
test_internaldate_format(void)
{
  char buf[32];
  static const gint64 samples[] = { 0, 837596665, 951868799, 1707307509, -1,
                                    -86400, -86401, G_GINT64_CONSTANT(253402300799),
                                    G_GINT64_CONSTANT(-62167219200) };

  imap_format_internaldate(837596665, buf);
  g_assert_cmpstr(buf, ==, "17-Jul-1996 09:44:25 +0000");
  imap_format_internaldate(0, buf);
  g_assert_cmpstr(buf, ==, "01-Jan-1970 00:00:00 +0000");
  imap_format_internaldate(-1, buf);
  g_assert_cmpstr(buf, ==, "31-Dec-1969 23:59:59 +0000");
  imap_format_internaldate(G_MAXINT64, buf);
  g_assert_cmpstr(buf, ==, "31-Dec-9999 23:59:59 +0000");
  imap_format_internaldate(G_MININT64, buf);
  g_assert_cmpstr(buf, ==, "01-Jan-0000 00:00:00 +0000");

  for (gsize i = 0; i < G_N_ELEMENTS(samples); i++) {
    gint64 t;
    imap_format_internaldate(samples[i], buf);
    g_assert_true(imap_parse_internaldate(buf, &t));
    g_assert_cmpint(t, ==, samples[i]);
  }
  /* Round trip every ~day and a bit over four centuries around 1970. */
  for (gint64 t = -6000000000; t < 6000000000; t += 86400 + 3671) {
    gint64 back;
    imap_format_internaldate(t, buf);
    g_assert_true(imap_parse_internaldate(buf, &back));
    g_assert_cmpint(back, ==, t);
  }
}

static void
test_uid_set(void)
{
  static const struct {
    const char *s;
    gboolean ok;
    guint n;
    guint32 r[6];
  } table[] = {
    { "1", TRUE, 1, { 1, 1 } },
    { "1:3,7,9:8", TRUE, 3, { 1, 3, 7, 7, 8, 9 } },
    { "304,319:320", TRUE, 2, { 304, 304, 319, 320 } },
    { "4294967295", TRUE, 1, { 4294967295u, 4294967295u } },
    { "1:4294967295", TRUE, 1, { 1, 4294967295u } },
    { "", FALSE, 0, { 0 } },
    { "*", FALSE, 0, { 0 } },
    { "1:*", FALSE, 0, { 0 } },
    { "0", FALSE, 0, { 0 } },
    { "0:5", FALSE, 0, { 0 } },
    { "4294967296", FALSE, 0, { 0 } },
    { "99999999999999999999", FALSE, 0, { 0 } },
    { "1,", FALSE, 0, { 0 } },
    { ",1", FALSE, 0, { 0 } },
    { "1,,2", FALSE, 0, { 0 } },
    { "1:", FALSE, 0, { 0 } },
    { "1::2", FALSE, 0, { 0 } },
    { "1:2:3", FALSE, 0, { 0 } },
    { "1 2", FALSE, 0, { 0 } },
    { "-1", FALSE, 0, { 0 } },
    { "+1", FALSE, 0, { 0 } },
    { "01", FALSE, 0, { 0 } },
    { "1a", FALSE, 0, { 0 } },
  };

  for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
    g_autoptr(GArray) a = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
    g_test_message("%s", table[i].s);
    g_assert_cmpint(imap_parse_uid_set(table[i].s, a), ==, table[i].ok);
    g_assert_cmpuint(a->len, ==, table[i].n);
    for (guint j = 0; j < a->len; j++) {
      g_assert_cmpuint(g_array_index(a, ImapUidRange, j).lo, ==, table[i].r[2 * j]);
      g_assert_cmpuint(g_array_index(a, ImapUidRange, j).hi, ==, table[i].r[2 * j + 1]);
    }
  }

  /* Appends; a failure leaves earlier contents alone. */
  g_autoptr(GArray) acc = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
  g_assert_true(imap_parse_uid_set("5", acc));
  g_assert_false(imap_parse_uid_set("6,7,x", acc));
  g_assert_cmpuint(acc->len, ==, 1);
  g_assert_true(imap_parse_uid_set("6:7", acc));
  g_assert_cmpuint(acc->len, ==, 2);
  g_assert_false(imap_parse_uid_set(NULL, acc));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/parse/greeting/dovecot", test_greeting_dovecot);
  g_test_add_func("/parse/greeting/gmail", test_greeting_gmail);
  g_test_add_func("/parse/greeting/cyrus-courier", test_greeting_cyrus_courier);
  g_test_add_func("/parse/status/preauth-bye", test_preauth_bye);
  g_test_add_func("/parse/status/tagged-codes", test_tagged_codes);
  g_test_add_func("/parse/status/code-args", test_code_args);
  g_test_add_func("/parse/status/code-args-untokenizable", test_code_args_untokenizable);
  g_test_add_func("/parse/status/text-anything", test_status_text_anything);
  g_test_add_func("/parse/continuation", test_continuation);
  g_test_add_func("/parse/data/capability", test_capability);
  g_test_add_func("/parse/data/list-dovecot", test_list_dovecot);
  g_test_add_func("/parse/data/list-gmail-courier", test_list_gmail_courier);
  g_test_add_func("/parse/data/list-extended", test_list_extended);
  g_test_add_func("/parse/data/flags", test_flags);
  g_test_add_func("/parse/data/numbered", test_numbered);
  g_test_add_func("/parse/fetch/listing", test_fetch_listing);
  g_test_add_func("/parse/fetch/gmail", test_fetch_gmail);
  g_test_add_func("/parse/fetch/body-literal", test_fetch_body_literal);
  g_test_add_func("/parse/fetch/partial", test_fetch_partial);
  g_test_add_func("/parse/fetch/section-atoms", test_section_atoms);
  g_test_add_func("/parse/data/bracket-atoms", test_bracket_atoms);
  g_test_add_func("/parse/stream/split-every-point", test_split_every_point);
  g_test_add_func("/parse/stream/split-two-points", test_split_two_points);
  g_test_add_func("/parse/stream/space-commit", test_space_commit);
  g_test_add_func("/parse/stream/literal-remaining", test_literal_remaining);
  g_test_add_func("/parse/stream/several-in-one-feed", test_several_in_one_feed);
  g_test_add_func("/parse/data/vanished", test_vanished);
  g_test_add_func("/parse/data/esearch-search", test_esearch_search);
  g_test_add_func("/parse/data/status", test_status);
  g_test_add_func("/parse/data/namespace-id-enabled", test_namespace_id_enabled);
  g_test_add_func("/parse/value/quoted-escapes", test_quoted_escapes);
  g_test_add_func("/parse/value/empty-literal", test_empty_literal);
  g_test_add_func("/parse/value/literal-variants", test_literal_variants);
  g_test_add_func("/parse/value/nil", test_nil);
  g_test_add_func("/parse/stream/bare-lf", test_bare_lf);
  g_test_add_func("/parse/data/unknown-keyword", test_unknown_keyword);
  g_test_add_func("/parse/value/response-bytes", test_response_bytes);
  g_test_add_func("/parse/error/malformed", test_malformed);
  g_test_add_func("/parse/error/message", test_error_message);
  g_test_add_func("/parse/error/literal-too-big", test_literal_too_big);
  g_test_add_func("/parse/error/nesting-depth", test_nesting_depth);
  g_test_add_func("/parse/error/line-too-long", test_line_too_long);
  g_test_add_func("/parse/error/after-good", test_error_after_good);
  g_test_add_func("/parse/stream/reset", test_reset);
  g_test_add_func("/parse/stream/big-literal-linear", test_big_literal_linear);
  g_test_add_func("/parse/stream/many-small-bytewise", test_many_small_bytewise);
  g_test_add_func("/parse/helper/val-numbers", test_val_numbers);
  g_test_add_func("/parse/helper/val-modseq", test_val_modseq);
  g_test_add_func("/parse/helper/val-atoms", test_val_atoms);
  g_test_add_func("/parse/helper/fetch-get-edges", test_fetch_get_edges);
  g_test_add_func("/parse/helper/internaldate", test_internaldate);
  g_test_add_func("/parse/helper/internaldate-format", test_internaldate_format);
  g_test_add_func("/parse/helper/uid-set", test_uid_set);

  return g_test_run();
}
