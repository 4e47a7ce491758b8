/* parse.h - I/O-free IMAP response parser (RFC 3501 / RFC 9051 grammar).
 *
 * Owns: turning the server's byte stream into ImapResponse structures.
 * It never reads or writes a socket: the connection feeds it bytes as they
 * arrive (in any split: a literal may come in many pieces) and asks for the
 * next complete response.  Scanning is incremental, so a large literal that
 * arrives in small chunks is not rescanned for every chunk (linear time).
 * It is fuzzed (tests/fuzz/fuzz_parse.c).
 *
 * Also here: small pure helpers for values the server sends (numbers,
 * INTERNALDATE, UID sets).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  IMAP_VAL_ATOM,   /* atom, number, flag (\Seen, \*), BODY[...]<n> section names */
  IMAP_VAL_STRING, /* quoted string (unescaped) or literal {n} / ~{n} */
  IMAP_VAL_NIL,
  IMAP_VAL_LIST,   /* parenthesised list */
} ImapValType;

typedef struct ImapVal ImapVal;
struct ImapVal {
  ImapValType type;
  gboolean literal;  /* STRING that arrived as a literal */
  const char *data;  /* ATOM/STRING bytes; data[len] == '\0' always; may
                      * contain NUL bytes when literal.  NULL for NIL/LIST. */
  gsize len;
  ImapVal *items;    /* LIST elements */
  guint n_items;
};

typedef enum {
  IMAP_RESP_UNTAGGED,     /* "* ..." */
  IMAP_RESP_TAGGED,       /* "A12 OK ..." */
  IMAP_RESP_CONTINUATION, /* "+ ..." */
} ImapRespKind;

typedef enum {
  IMAP_STATUS_NONE, /* data response (FETCH, LIST, ...) or continuation */
  IMAP_STATUS_OK,
  IMAP_STATUS_NO,
  IMAP_STATUS_BAD,
  IMAP_STATUS_BYE,
  IMAP_STATUS_PREAUTH,
} ImapStatus;

typedef struct ImapResponse ImapResponse;
struct ImapResponse {
  ImapRespKind kind;
  char *tag;           /* TAGGED only, else NULL */
  gboolean has_number; /* "* 12 EXISTS", "* 3 FETCH (...)" */
  guint32 number;
  char *name;          /* keyword, upper-cased: OK NO BAD BYE PREAUTH CAPABILITY
                        * LIST LSUB FLAGS EXISTS RECENT EXPUNGE FETCH SEARCH
                        * ESEARCH STATUS VANISHED ENABLED NAMESPACE ID ... ;
                        * NULL for a continuation */
  ImapStatus status;   /* for OK/NO/BAD/BYE/PREAUTH (tagged or untagged) */
  char *code;          /* response code name upper-cased ("UIDVALIDITY",
                        * "APPENDUID", "TRYCREATE", ...), NULL if none */
  ImapVal code_args;   /* IMAP_VAL_LIST of the code's arguments (maybe empty) */
  char *text;          /* human-readable text of status responses and
                        * continuations; never NULL ("" when absent) */
  ImapVal args;        /* IMAP_VAL_LIST of the values after the name for data
                        * responses; empty for status responses */
};

typedef struct ImapParser ImapParser;

#define IMAP_PARSE_ERROR (imap_parse_error_quark())
GQuark imap_parse_error_quark(void);
typedef enum {
  IMAP_PARSE_ERROR_SYNTAX,   /* malformed response */
  IMAP_PARSE_ERROR_TOO_BIG,  /* a line or literal exceeds the limit */
} ImapParseError;

/* max_literal: largest literal accepted (bytes); max_line: largest amount of
 * non-literal text in one response.  0 means a default (64 MiB, 16 MiB). */
ImapParser *imap_parser_new(gsize max_literal, gsize max_line);
void imap_parser_free(ImapParser *p);
/* Forget all buffered bytes (used after STARTTLS: nothing read before the
 * handshake may be trusted). */
void imap_parser_reset(ImapParser *p);
void imap_parser_feed(ImapParser *p, const void *data, gsize len);
/* Receiving without a copy: *room bytes to write at the end of the buffer,
 * at least want, except while a literal announced by the server arrives:
 * then at least the rest of it and 64 bytes more, which the parser made
 * room for when it saw its size (asking for more would grow a buffer that
 * holds a large message).  Write there, then commit the n <= *room bytes
 * written: the same as imap_parser_feed of them.  Nothing may touch the
 * parser between the two calls. */
guint8 *imap_parser_space(ImapParser *p, gsize want, gsize *room);
void imap_parser_commit(ImapParser *p, gsize n);
/* Bytes fed but not yet returned as responses. */
gsize imap_parser_buffered(const ImapParser *p);
/* If the response being received is waiting for literal bytes, how many are
 * still missing (for progress/timeouts); else 0. */
gsize imap_parser_literal_remaining(const ImapParser *p);

/* Returns 1 and sets *out (caller frees with imap_response_free) when a
 * complete response is available; 0 when more bytes are needed; -1 with
 * *error set when the input is malformed (the parser is then unusable until
 * reset). */
int imap_parser_next(ImapParser *p, ImapResponse **out, GError **error);

void imap_response_free(ImapResponse *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapResponse, imap_response_free)

/* A GBytes holding exactly v's bytes, sharing the response's memory where the
 * value came as a literal (no copy of large bodies).  v must be an ATOM or
 * STRING of r; returns NULL for NIL/LIST. */
GBytes *imap_response_bytes(ImapResponse *r, const ImapVal *v);

/* ---- value helpers ---- */
const char *imap_val_str(const ImapVal *v); /* ATOM/STRING data, else NULL */
gboolean imap_val_is_atom(const ImapVal *v, const char *name_ci);
gboolean imap_val_to_u32(const ImapVal *v, guint32 *out); /* strict decimal */
gboolean imap_val_to_u64(const ImapVal *v, guint64 *out);
/* A mod-sequence: 1..2^63-1 (RFC 7162 is 63-bit); anything else is
 * refused, so that no value a server cannot take back is cached. */
gboolean imap_val_to_modseq(const ImapVal *v, guint64 *out);
/* In a FETCH attribute list (name value name value ...), the value following
 * the attribute whose name matches name_ci case-insensitively, e.g. "UID",
 * "RFC822.SIZE", "BODY[]" (matches "BODY[]" exactly, not "BODY[]<0>"), or
 * NULL.  For a partial body "BODY[]<100>" pass "BODY[]<" to match any
 * origin; *origin_out (may be NULL) receives the origin number, 0 if none. */
const ImapVal *imap_fetch_get(const ImapVal *list, const char *name_ci,
                              guint64 *origin_out);

/* "17-Jul-1996 02:44:25 -0700" (day may be space-padded) -> Unix time. */
gboolean imap_parse_internaldate(const char *s, gint64 *unix_time);
/* Unix time -> "17-Jul-1996 02:44:25 +0000" (UTC), buf at least 32 bytes. */
void imap_format_internaldate(gint64 unix_time, char buf[32]);

typedef struct {
  guint32 lo, hi; /* inclusive, lo <= hi */
} ImapUidRange;
/* Parse a sequence set of UIDs ("1:3,7,9:8"; "*" is rejected) into ranges
 * (lo<=hi, in the order given).  Returns FALSE on syntax errors. */
gboolean imap_parse_uid_set(const char *s, GArray *ranges /* ImapUidRange */);

G_END_DECLS
