/* conn.h - one IMAP connection.
 *
 * Owns: the socket, its TLS state, the response parser, the tag counter,
 * the server's capabilities and which mailbox is selected.  Setup is one
 * explicit sequence in imap_conn_open(): connect -> TLS (implicit or
 * STARTTLS) -> greeting -> capabilities -> login -> capabilities -> ENABLE.
 *
 * A connection is used by one thread at a time (the pool hands it out);
 * nothing here is shared, so nothing here locks.  Every wait on the server
 * has a timeout, and a connection that failed mid-command is marked broken:
 * the pool then drops it instead of reusing a half-read stream.
 */
#pragma once

#include <glib.h>

#include "imapfuse/parse.h"

G_BEGIN_DECLS

typedef struct ImapConn ImapConn;
typedef struct ImapCmd ImapCmd;

typedef enum {
  IMAP_TLS_NONE,     /* plaintext (tls=off) */
  IMAP_TLS_IMPLICIT, /* imaps:// */
  IMAP_TLS_STARTTLS, /* imap:// */
} ImapTlsMode;

/* Where and how to connect; shared read-only by every connection. */
typedef struct {
  char *host;
  guint16 port;
  ImapTlsMode tls;
  char *cafile;     /* extra trusted CA file, or NULL */
  char *user;
  char *password;   /* secret: never logged */
  int timeout_s;    /* inactivity timeout for any wait on the server */
  gboolean trace;   /* protocol trace on stderr, credentials redacted */
  struct ssl_ctx_st *tls_ctx; /* made once by tls_ctx_new() when tls != NONE */
} ImapEndpoint;

/* Capability bits (the ones imapfuse acts on). */
enum {
  IMAP_CAP_IMAP4REV1 = 1u << 0,
  IMAP_CAP_IMAP4REV2 = 1u << 1,
  IMAP_CAP_STARTTLS = 1u << 2,
  IMAP_CAP_LOGINDISABLED = 1u << 3,
  IMAP_CAP_AUTH_PLAIN = 1u << 4,
  IMAP_CAP_SASL_IR = 1u << 5,
  IMAP_CAP_LITERALPLUS = 1u << 6,
  IMAP_CAP_LITERALMINUS = 1u << 7,
  IMAP_CAP_UIDPLUS = 1u << 8,
  IMAP_CAP_MOVE = 1u << 9,
  IMAP_CAP_CONDSTORE = 1u << 10,
  IMAP_CAP_QRESYNC = 1u << 11,
  IMAP_CAP_IDLE = 1u << 12,
  IMAP_CAP_NOTIFY = 1u << 13,
  IMAP_CAP_ENABLE = 1u << 14,
  IMAP_CAP_ESEARCH = 1u << 15,
  IMAP_CAP_SPECIAL_USE = 1u << 16,
  IMAP_CAP_NAMESPACE = 1u << 17,
  IMAP_CAP_ID = 1u << 18,
  IMAP_CAP_UTF8_ACCEPT = 1u << 19,
  IMAP_CAP_COMPRESS_DEFLATE = 1u << 20,
  IMAP_CAP_AUTH_XOAUTH2 = 1u << 21,
  IMAP_CAP_AUTH_OAUTHBEARER = 1u << 22,
  IMAP_CAP_LIST_EXTENDED = 1u << 23,
  IMAP_CAP_BINARY = 1u << 24,
  IMAP_CAP_APPENDLIMIT = 1u << 25,
  IMAP_CAP_LIST_STATUS = 1u << 26,
};

/* A handler sees each untagged response of a command; it returns TRUE when
 * it consumed it (else the connection's unsolicited handler gets it). */
typedef gboolean (*ImapHandler)(ImapResponse *r, gpointer user);

/* Connect, secure, log in.  Errors: IFS_ERROR_CONNECT, _TLS, _AUTH,
 * _TIMEOUT, _CLOSED, _UNSUPPORTED (e.g. no STARTTLS), _PROTOCOL. */
ImapConn *imap_conn_open(const ImapEndpoint *ep, GError **error);
/* LOGOUT (best effort, short timeout) and free. */
void imap_conn_close(ImapConn *c);
/* The same, waiting for LOGOUT's answer until deadline_us (monotonic), at
 * least 10 ms and at most 2 s: connections closed one after another share
 * one wait when the server has gone silent (they took 2 s each). */
void imap_conn_close_by(ImapConn *c, gint64 deadline_us);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapConn, imap_conn_close)

/* Send cmd (consumed) and read until its tagged reply.  Untagged responses
 * go to fn first.  On a tagged NO/BAD returns FALSE with an error whose code
 * follows the response code ([NONEXISTENT] -> IFS_ERROR_NOT_FOUND, ...);
 * the tagged reply is returned in *tagged (if not NULL) in every case where
 * one arrived. */
gboolean imap_conn_run(ImapConn *c, ImapCmd *cmd, ImapHandler fn,
                       gpointer user, ImapResponse **tagged, GError **error);

/* Send up to IMAP_PIPELINE_MAX commands (all consumed) before reading any
 * reply: one round trip for the lot.  Untagged responses of all of them go
 * to fn.  FALSE with the first NO/BAD as the error (the others still ran),
 * or a connection error.  Commands whose literals would need the server's
 * "+" (no LITERAL+) are sent one after the other instead.  tagged (NULL, or
 * n entries) gets each command's tagged reply, NULL where none arrived. */
#define IMAP_PIPELINE_MAX 8
gboolean imap_conn_run_pipeline(ImapConn *c, ImapCmd **cmds, guint n, ImapHandler fn,
                                gpointer user, ImapResponse **tagged, GError **error);

/* Responses no command claimed (EXISTS, EXPUNGE, FETCH FLAGS pushed by the
 * server, ...).  Called on the thread that runs commands. */
void imap_conn_set_unsolicited(ImapConn *c, ImapHandler fn, gpointer user);

guint32 imap_conn_caps(const ImapConn *c);
gboolean imap_conn_has(const ImapConn *c, guint32 cap);
/* The largest message the server takes (CAPABILITY APPENDLIMIT=n, RFC
 * 7889), 0 when it named none. */
guint64 imap_conn_appendlimit(const ImapConn *c);
gboolean imap_conn_is_broken(const ImapConn *c);
/* Marks the connection unusable (the pool will close it). */
void imap_conn_set_broken(ImapConn *c);
/* From any thread: every connection of the process (also those still
 * connecting or logging in) that has waited for the server for waited_us
 * or more, in a command that changes nothing, has its socket shut down,
 * so that the command fails now (the connection is then broken).  Returns
 * how many were cut.  Frees nothing. */
guint imap_conn_cut_waiting(gint64 waited_us);
/* Name of the selected mailbox (server form) or NULL, and its UIDVALIDITY. */
const char *imap_conn_selected(const ImapConn *c);
guint32 imap_conn_selected_uidvalidity(const ImapConn *c);
/* Recorded by the SELECT code; NULL deselects. */
void imap_conn_set_selected(ImapConn *c, const char *mailbox,
                            guint32 uidvalidity);
/* Monotonic time of the last successful exchange (for keepalive). */
gint64 imap_conn_last_used(const ImapConn *c);
/* The shortest command round trip seen on c, in microseconds (0: none
 * yet): about the network's round trip to the server. */
gint64 imap_conn_rtt_us(const ImapConn *c);
/* An id for logs ("#3"). */
guint imap_conn_id(const ImapConn *c);
/* Whether QRESYNC / CONDSTORE were ENABLEd at login. */
gboolean imap_conn_qresync_enabled(const ImapConn *c);

/* ---- command building (cmd.c) ----
 * The only way protocol text is produced.  Strings from users (mailbox
 * names, flags) go through imap_cmd_add_string() which picks a quoted string
 * or a literal, so no name can inject protocol text. */
ImapCmd *imap_cmd_new(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Raw protocol text: only for fixed keywords and numbers. */
void imap_cmd_add(ImapCmd *cmd, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* An astring: atom-safe text is quoted; anything with CR, LF, NUL, 8-bit or
 * a length over 1000 becomes a literal. */
void imap_cmd_add_string(ImapCmd *cmd, const char *s);
void imap_cmd_add_literal(ImapCmd *cmd, GBytes *data);
/* Trace this command as "<redacted>" (credentials). */
void imap_cmd_set_secret(ImapCmd *cmd);
/* Answer a "+ ..." continuation that is not for a literal (AUTHENTICATE):
 * fn returns the next line to send (without CRLF, caller frees) or NULL to
 * cancel with "*". */
typedef char *(*ImapContinueFn)(const ImapResponse *r, gpointer user);
void imap_cmd_on_continue(ImapCmd *cmd, ImapContinueFn fn, gpointer user);
void imap_cmd_free(ImapCmd *cmd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapCmd, imap_cmd_free)

/* Internal to conn.c/cmd.c: walking a command's segments when sending. */
typedef struct {
  GString *text;  /* protocol text (may be NULL for a pure literal) */
  GBytes *literal; /* literal that follows the text, or NULL */
} ImapCmdSeg;
const GPtrArray *imap_cmd_segments(const ImapCmd *cmd); /* of ImapCmdSeg* */
gboolean imap_cmd_is_secret(const ImapCmd *cmd);
ImapContinueFn imap_cmd_continue_fn(const ImapCmd *cmd, gpointer *user);

G_END_DECLS
