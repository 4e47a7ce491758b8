/* conn.c - one IMAP connection: socket, TLS, tags, literals, capabilities.
 *
 * Commands run one at a time on a connection, on the caller's thread: the
 * caller sends, then reads until its own tagged reply, handing untagged
 * responses to the command's handler.  Concurrency comes from the pool
 * running several connections; bulk work (many bodies) is one command with
 * many responses, so per-command round trips stay rare.
 */
#include "imapfuse/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "imapfuse/auth.h"
#include "imapfuse/errors.h"
#include "imapfuse/tls.h"

struct ImapConn {
  const ImapEndpoint *ep;
  guint id;
  int fd;
  gint64 wait_since; /* monotonic us a recv began waiting, 0 when none (atomic: conn_abort) */
  gboolean changing; /* running a command that changes the server (atomic: conn_abort) */
  gboolean aborted;  /* conn_abort shut the socket down (atomic) */
  gboolean opened;   /* logged in: only then does close say LOGOUT (not in cleartext on a
                      * TLS port whose handshake failed, nor to a server that never answered) */
  SSL *ssl;
  ImapParser *parser;
  guint32 caps;
  guint64 appendlimit; /* APPENDLIMIT=n (RFC 7889), 0: none given */
  gboolean caps_known;
  guint tag_counter;
  char *selected;
  guint32 selected_uidvalidity;
  gboolean broken;
  gboolean qresync;
  ImapHandler unsolicited;
  gpointer unsolicited_user;
  gint64 last_used;
  gint64 rtt_us; /* shortest command round trip seen, 0 before any */
};

static gint conn_next_id = 0;
static GMutex conn_trace_lock;

/* Every connection being opened or open (the pool's or the watcher's),
 * also one still connecting or logging in: imap_conn_cut_waiting reaches
 * them all.  c->fd and c->changing change only under the lock, so that
 * conn_abort's test and its shutdown() are one step. */
static GMutex conn_reg_lock;
static GHashTable *conn_reg;
static gboolean conn_abort(ImapConn *c, gint64 waited_us);

/* Before a command is sent: an abort either came first (the command then
 * fails to go out, nothing reached the server) or sees the change under
 * way and leaves it alone, never cutting it halfway. */
static void conn_set_changing(ImapConn *c, gboolean changing) {
  g_mutex_lock(&conn_reg_lock);
  __atomic_store_n(&c->changing, changing, __ATOMIC_RELAXED);
  g_mutex_unlock(&conn_reg_lock);
}

/* ---- tracing (credentials never reach it) ---- */

static void conn_trace(const ImapConn *c, const char *dir, const void *data, gsize len) {
  if (!c->ep->trace)
    return;
  const gsize max = 400;
  g_autoptr(GString) s = g_string_new(NULL);
  const guchar *p = data;
  for (gsize i = 0; i < len && i < max; i++) {
    if (p[i] == '\r')
      continue;
    if (p[i] == '\n' && i + 1 < len)
      g_string_append(s, "\n    ");
    else if (p[i] == '\n')
      ;
    else if (p[i] >= 0x20 && p[i] < 0x7f)
      g_string_append_c(s, p[i]);
    else
      g_string_append_printf(s, "\\x%02x", p[i]);
  }
  if (len > max)
    g_string_append_printf(s, "... (%" G_GSIZE_FORMAT " bytes)", len);
  g_mutex_lock(&conn_trace_lock);
  g_printerr("imapfuse[#%u] %s %s\n", c->id, dir, s->str);
  g_mutex_unlock(&conn_trace_lock);
}

/* ---- raw I/O ---- */

static gboolean conn_fail(ImapConn *c, GError **error, IfsError code, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static gboolean conn_fail(ImapConn *c, GError **error, IfsError code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  /* Cut by the stop (conn_abort): not the server's doing, whatever the
   * socket said ("closed the connection", "no answer for 60 s") */
  if (__atomic_load_n(&c->aborted, __ATOMIC_RELAXED)) {
    g_free(msg);
    msg = g_strdup_printf("imapfuse is stopping: the wait for %s was cut", c->ep->host);
  }
  c->broken = TRUE;
  g_set_error_literal(error, IFS_ERROR, code, msg);
  return FALSE;
}

static gboolean conn_send_failed(ImapConn *c, GError **error) {
  if (errno == EAGAIN || errno == EWOULDBLOCK)
    return conn_fail(c, error, IFS_ERROR_TIMEOUT, "timed out sending to %s", c->ep->host);
  return conn_fail(c, error, IFS_ERROR_CLOSED, "connection to %s lost: %s", c->ep->host,
                   g_strerror(errno));
}

static gboolean conn_ssl_write(ImapConn *c, const char *p, gsize len, GError **error) {
  while (len > 0) {
    int chunk = len > G_MAXINT ? G_MAXINT : (int)len;
    int n = SSL_write(c->ssl, p, chunk);
    if (n <= 0) {
      int e = SSL_get_error(c->ssl, n);
      ERR_clear_error();
      if (e == SSL_ERROR_WANT_WRITE || (e == SSL_ERROR_SYSCALL && errno == EAGAIN))
        return conn_fail(c, error, IFS_ERROR_TIMEOUT, "timed out sending to %s", c->ep->host);
      return conn_fail(c, error, IFS_ERROR_CLOSED, "connection to %s lost while sending",
                       c->ep->host);
    }
    p += n;
    len -= (gsize)n;
  }
  return TRUE;
}

/* Sends the pieces in order, each from where it lies (a literal from the
 * mapped staging file, not a copy): one sendmsg for all of them where the
 * kernel takes it, one SSL_write per piece with TLS. */
static gboolean conn_writev(ImapConn *c, struct iovec *iov, gsize n, GError **error) {
  if (c->ssl != NULL) {
    for (gsize i = 0; i < n; i++)
      if (!conn_ssl_write(c, iov[i].iov_base, iov[i].iov_len, error))
        return FALSE;
    return TRUE;
  }
  while (n > 0) {
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = MIN(n, (gsize)IOV_MAX)};
    ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      return conn_send_failed(c, error);
    gsize done = (gsize)k;
    while (n > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + done;
      iov->iov_len -= done;
    }
  }
  return TRUE;
}

static gboolean conn_write(ImapConn *c, const void *data, gsize len, GError **error) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  return conn_writev(c, &iov, 1, error);
}

/* What goes out for one or more commands before the next wait for the
 * server: protocol text gathered in text, literals by reference.  An
 * APPEND of a 300 MB file is then sent from the file's mapping instead of
 * being copied into the command first (which doubled the memory it took,
 * and with a sparse file of gigabytes was enough to get imapfuse killed). */
typedef struct {
  GString *text;
  GArray *pieces; /* ConnPiece */
  gsize traced;   /* text up to here is traced */
} ConnOut;

typedef struct {
  const void *literal; /* NULL: text[off, off + len) */
  gsize off, len;
} ConnPiece;

static ConnOut conn_out_new(void) {
  return (ConnOut){.text = g_string_new(NULL),
                   .pieces = g_array_new(FALSE, FALSE, sizeof(ConnPiece))};
}

static void conn_out_clear(ConnOut *o) {
  g_string_free(o->text, TRUE);
  g_array_unref(o->pieces);
}

static void conn_out_text(ConnOut *o, const char *s, gsize len) {
  ConnPiece *last =
      o->pieces->len ? &g_array_index(o->pieces, ConnPiece, o->pieces->len - 1) : NULL;
  if (last != NULL && last->literal == NULL) {
    last->len += len;
  } else {
    ConnPiece p = {.off = o->text->len, .len = len};
    g_array_append_val(o->pieces, p);
  }
  g_string_append_len(o->text, s, (gssize)len);
}

static void conn_out_printf(ConnOut *o, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void conn_out_printf(ConnOut *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *s = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  conn_out_text(o, s, strlen(s));
}

static void conn_out_literal(ImapConn *c, ConnOut *o, GBytes *b) {
  ConnPiece p = {.literal = g_bytes_get_data(b, &p.len)};
  if (p.len == 0)
    return;
  g_array_append_val(o->pieces, p);
  conn_trace(c, "C:", "<literal>", 9);
}

/* Traces the text added since the last trace (credentials redacted). */
static void conn_out_trace(ImapConn *c, ConnOut *o, const ImapCmd *cmd) {
  gboolean secret = imap_cmd_is_secret(cmd);
  conn_trace(c, "C:", secret ? "<redacted>" : o->text->str + o->traced,
             secret ? 10 : o->text->len - o->traced);
  o->traced = o->text->len;
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ConnOut, conn_out_clear)

static gboolean conn_out_flush(ImapConn *c, ConnOut *o, GError **error) {
  g_autofree struct iovec *iov = g_new(struct iovec, MAX(o->pieces->len, 1));
  for (guint i = 0; i < o->pieces->len; i++) {
    const ConnPiece *p = &g_array_index(o->pieces, ConnPiece, i);
    iov[i].iov_base = (void *)(p->literal != NULL ? p->literal : o->text->str + p->off);
    iov[i].iov_len = p->len;
  }
  gboolean ok = conn_writev(c, iov, o->pieces->len, error);
  g_string_truncate(o->text, 0);
  g_array_set_size(o->pieces, 0);
  o->traced = 0;
  return ok;
}

/* Read what is available (at least one byte) into the parser, straight
 * into its buffer: no copy of the 150 MB a scan brings, and a message
 * announced as a literal comes in reads as large as it (the parser has
 * made room for it). */
static gboolean conn_fill(ImapConn *c, GError **error) {
  for (;;) {
    gsize room;
    guint8 *buf = imap_parser_space(c->parser, 65536, &room);
    room = MIN(room, (gsize)G_MAXINT);
    ssize_t n;
    __atomic_store_n(&c->wait_since, g_get_monotonic_time(), __ATOMIC_RELAXED); /* conn_abort */
    if (c->ssl != NULL) {
      n = SSL_read(c->ssl, buf, (int)room);
      __atomic_store_n(&c->wait_since, 0, __ATOMIC_RELAXED);
      if (n <= 0) {
        int e = SSL_get_error(c->ssl, (int)n);
        int saved = errno;
        ERR_clear_error();
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && n == 0))
          return conn_fail(c, error, IFS_ERROR_CLOSED, "%s closed the connection", c->ep->host);
        if (e == SSL_ERROR_WANT_READ || (e == SSL_ERROR_SYSCALL && saved == EAGAIN))
          return conn_fail(c, error, IFS_ERROR_TIMEOUT, "no answer from %s for %d s",
                           c->ep->host, c->ep->timeout_s);
        if (e == SSL_ERROR_SYSCALL && saved == EINTR)
          continue;
        return conn_fail(c, error, IFS_ERROR_CLOSED, "connection to %s lost (TLS error)",
                         c->ep->host);
      }
    } else {
      n = recv(c->fd, buf, room, 0);
      __atomic_store_n(&c->wait_since, 0, __ATOMIC_RELAXED);
      if (n == 0)
        return conn_fail(c, error, IFS_ERROR_CLOSED, "%s closed the connection", c->ep->host);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return conn_fail(c, error, IFS_ERROR_TIMEOUT, "no answer from %s for %d s",
                           c->ep->host, c->ep->timeout_s);
        return conn_fail(c, error, IFS_ERROR_CLOSED, "connection to %s lost: %s", c->ep->host,
                         g_strerror(errno));
      }
    }
    conn_trace(c, "S:", buf, (gsize)n);
    imap_parser_commit(c->parser, (gsize)n);
    return TRUE;
  }
}

static void conn_note_caps(ImapConn *c, const ImapVal *list, guint first);

/* Next complete response; also keeps capabilities current. */
static ImapResponse *conn_read(ImapConn *c, GError **error) {
  for (;;) {
    ImapResponse *r = NULL;
    g_autoptr(GError) perr = NULL;
    int rc = imap_parser_next(c->parser, &r, &perr);
    if (rc < 0) {
      conn_fail(c, error, IFS_ERROR_PROTOCOL, "bad response from %s: %s", c->ep->host,
                perr->message);
      return NULL;
    }
    if (rc > 0) {
      if (r->code != NULL && g_str_equal(r->code, "CAPABILITY"))
        conn_note_caps(c, &r->code_args, 0);
      else if (r->name != NULL && g_str_equal(r->name, "CAPABILITY"))
        conn_note_caps(c, &r->args, 0);
      return r;
    }
    if (!conn_fill(c, error))
      return NULL;
  }
}

/* ---- capabilities ---- */

static void conn_note_caps(ImapConn *c, const ImapVal *list, guint first) {
  static const struct {
    const char *name;
    guint32 bit;
  } names[] = {
      {"IMAP4REV1", IMAP_CAP_IMAP4REV1},     {"IMAP4REV2", IMAP_CAP_IMAP4REV2},
      {"STARTTLS", IMAP_CAP_STARTTLS},       {"LOGINDISABLED", IMAP_CAP_LOGINDISABLED},
      {"AUTH=PLAIN", IMAP_CAP_AUTH_PLAIN},   {"SASL-IR", IMAP_CAP_SASL_IR},
      {"LITERAL+", IMAP_CAP_LITERALPLUS},    {"LITERAL-", IMAP_CAP_LITERALMINUS},
      {"UIDPLUS", IMAP_CAP_UIDPLUS},         {"MOVE", IMAP_CAP_MOVE},
      {"CONDSTORE", IMAP_CAP_CONDSTORE},     {"QRESYNC", IMAP_CAP_QRESYNC},
      {"IDLE", IMAP_CAP_IDLE},               {"NOTIFY", IMAP_CAP_NOTIFY},
      {"ENABLE", IMAP_CAP_ENABLE},           {"ESEARCH", IMAP_CAP_ESEARCH},
      {"SPECIAL-USE", IMAP_CAP_SPECIAL_USE}, {"NAMESPACE", IMAP_CAP_NAMESPACE},
      {"ID", IMAP_CAP_ID},                   {"UTF8=ACCEPT", IMAP_CAP_UTF8_ACCEPT},
      {"COMPRESS=DEFLATE", IMAP_CAP_COMPRESS_DEFLATE},
      {"AUTH=XOAUTH2", IMAP_CAP_AUTH_XOAUTH2},
      {"AUTH=OAUTHBEARER", IMAP_CAP_AUTH_OAUTHBEARER},
      {"LIST-EXTENDED", IMAP_CAP_LIST_EXTENDED}, {"BINARY", IMAP_CAP_BINARY},
      {"LIST-STATUS", IMAP_CAP_LIST_STATUS},
  };
  guint32 caps = 0;
  guint64 appendlimit = 0;
  for (guint i = first; i < list->n_items; i++) {
    const char *s = imap_val_str(&list->items[i]);
    if (s == NULL)
      continue;
    for (gsize k = 0; k < G_N_ELEMENTS(names); k++)
      if (g_ascii_strcasecmp(s, names[k].name) == 0)
        caps |= names[k].bit;
    if (g_ascii_strncasecmp(s, "APPENDLIMIT", 11) == 0) {
      caps |= IMAP_CAP_APPENDLIMIT;
      /* Without "=n" the limits are per mailbox (STATUS), not used. */
      if (s[11] == '=' && !g_ascii_string_to_unsigned(s + 12, 10, 1, G_MAXUINT64,
                                                      &appendlimit, NULL))
        appendlimit = 0;
    }
  }
  /* IMAP4rev2 (RFC 9051) includes these. */
  if (caps & IMAP_CAP_IMAP4REV2)
    caps |= IMAP_CAP_UIDPLUS | IMAP_CAP_MOVE | IMAP_CAP_ENABLE | IMAP_CAP_ESEARCH |
            IMAP_CAP_NAMESPACE | IMAP_CAP_SPECIAL_USE | IMAP_CAP_LITERALMINUS | IMAP_CAP_IDLE |
            IMAP_CAP_SASL_IR | IMAP_CAP_LIST_EXTENDED | IMAP_CAP_LIST_STATUS;
  c->caps = caps;
  c->appendlimit = appendlimit;
  c->caps_known = TRUE;
}

/* ---- commands ---- */

static IfsError conn_error_code(const ImapResponse *r) {
  static const struct {
    const char *code;
    IfsError err;
  } codes[] = {
      {"NONEXISTENT", IFS_ERROR_NOT_FOUND}, {"TRYCREATE", IFS_ERROR_NOT_FOUND},
      {"ALREADYEXISTS", IFS_ERROR_EXISTS},  {"OVERQUOTA", IFS_ERROR_QUOTA},
      {"LIMIT", IFS_ERROR_TOO_BIG},         {"TOOBIG", IFS_ERROR_TOO_BIG},
      {"NOPERM", IFS_ERROR_PERM},           {"INUSE", IFS_ERROR_BUSY},
      {"CANNOT", IFS_ERROR_INVALID},        {"AUTHENTICATIONFAILED", IFS_ERROR_AUTH},
      {"AUTHORIZATIONFAILED", IFS_ERROR_AUTH}, {"EXPIRED", IFS_ERROR_AUTH},
      /* RFC 5530: "some of the requested messages no longer exist" (a
       * UID MOVE of a message another client has just expunged). */
      {"EXPUNGEISSUED", IFS_ERROR_NOT_FOUND},
      /* The server's own trouble ("Temporary authentication failure"):
       * not a refusal, so a login answered so is no refused password
       * (conn_gate_note: it shut the mount out for 30 s). */
      {"UNAVAILABLE", IFS_ERROR_FAILED},
  };
  if (r->code != NULL)
    for (gsize i = 0; i < G_N_ELEMENTS(codes); i++)
      if (g_str_equal(r->code, codes[i].code))
        return codes[i].err;
  return r->status == IMAP_STATUS_BAD ? IFS_ERROR_BAD : IFS_ERROR_NO;
}

/* A tagged NO or BAD as an error.  [SERVERBUG] (RFC 5530): the session
 * is given up, and the error is a lost connection's, so that work that
 * may run again does, on a fresh session.  Seen with Dovecot: a session
 * that had a folder selected when another client deleted and recreated
 * it answered every later command in that folder with "NO [SERVERBUG]
 * Internal error", and writes into it failed until the mount was
 * restarted. */
static void conn_tagged_error(ImapConn *c, const ImapResponse *r, GError **error) {
  if (r->code != NULL && g_str_equal(r->code, "SERVERBUG")) {
    c->broken = TRUE;
    g_set_error(error, IFS_ERROR, IFS_ERROR_CLOSED, "%s (server error: session dropped)",
                r->text);
    return;
  }
  g_set_error(error, IFS_ERROR, conn_error_code(r), "%s", r->text);
}

static gboolean conn_dispatch(ImapConn *c, ImapResponse *r, ImapHandler fn, gpointer user) {
  if (r->status == IMAP_STATUS_BYE) {
    /* The server is about to close; the next read fails. Keep the reason. */
    c->broken = TRUE;
    g_debug("#%u: server said BYE: %s", c->id, r->text);
  }
  if (fn != NULL && fn(r, user))
    return TRUE;
  if (c->unsolicited != NULL)
    return c->unsolicited(r, c->unsolicited_user);
  return FALSE;
}

/* Wait for a "+" continuation, handling untagged responses on the way.
 * Returns 1 on "+", 0 when the command's tagged reply came instead (in
 * *tagged), -1 on error. */
static int conn_wait_continuation(ImapConn *c, const char *tag, ImapHandler fn,
                                  gpointer user, ImapResponse **tagged, GError **error) {
  for (;;) {
    ImapResponse *r = conn_read(c, error);
    if (r == NULL)
      return -1;
    if (r->kind == IMAP_RESP_CONTINUATION) {
      imap_response_free(r);
      return 1;
    }
    if (r->kind == IMAP_RESP_TAGGED) {
      if (g_strcmp0(r->tag, tag) != 0) {
        imap_response_free(r);
        conn_fail(c, error, IFS_ERROR_PROTOCOL, "reply for unknown tag from %s", c->ep->host);
        return -1;
      }
      *tagged = r;
      return 0;
    }
    conn_dispatch(c, r, fn, user);
    imap_response_free(r);
  }
}

/* Whether a literal of n bytes may go without waiting for "+" (RFC 7888:
 * LITERAL+ always, LITERAL- up to 4096 bytes). */
static gboolean conn_literal_nonsync(const ImapConn *c, gsize n) {
  return imap_conn_has(c, IMAP_CAP_LITERALPLUS) ||
         (imap_conn_has(c, IMAP_CAP_LITERALMINUS) && n <= 4096);
}

/* Whether cmd changes what the server holds (so that cutting it would
 * leave its outcome unknown: conn_abort never does). */
static gboolean conn_cmd_changes(ImapCmd *cmd) {
  static const char *const verbs[] = {"APPEND ", "STORE ",  "EXPUNGE", "MOVE ",
                                      "COPY ",   "CREATE ", "DELETE ", "RENAME "};
  const GPtrArray *segs = imap_cmd_segments(cmd);
  const ImapCmdSeg *seg = segs->len > 0 ? g_ptr_array_index(segs, 0) : NULL;
  if (seg == NULL || seg->text == NULL)
    return FALSE;
  const char *t = seg->text->str;
  if (g_ascii_strncasecmp(t, "UID ", 4) == 0)
    t += 4;
  for (gsize i = 0; i < G_N_ELEMENTS(verbs); i++)
    if (g_ascii_strncasecmp(t, verbs[i], strlen(verbs[i])) == 0)
      return TRUE;
  return FALSE;
}

/* Before a change is sent: a server that closed the connection while it
 * sat idle (its idle timeout, or the BYE for a mailbox deleted by another
 * client) has sent its FIN, and nothing of the change has gone out: it
 * can go on another connection (IFS_ERROR_NOT_RUN).  Without this, a
 * change whose first command is itself the change (rm, mv: one pipelined
 * round trip, no NOOP first) would fail there with an unknown outcome. */
static gboolean conn_usable(ImapConn *c, GError **error) {
  struct pollfd pfd = {.fd = c->fd, .events = POLLRDHUP};
  if (c->fd < 0 || poll(&pfd, 1, 0) <= 0 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
    return TRUE;
  return conn_fail(c, error, IFS_ERROR_NOT_RUN, "%s closed the connection while it was idle",
                   c->ep->host);
}

gboolean imap_conn_run(ImapConn *c, ImapCmd *cmd, ImapHandler fn, gpointer user,
                       ImapResponse **tagged_out, GError **error) {
  gboolean changes = conn_cmd_changes(cmd);
  conn_set_changing(c, changes);
  g_autoptr(ImapCmd) owned = cmd;
  g_autoptr(ImapResponse) tagged = NULL;
  if (tagged_out != NULL)
    *tagged_out = NULL;
  if (c->broken) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_CLOSED, "connection to %s is closed", c->ep->host);
    return FALSE;
  }
  if (changes && !conn_usable(c, error))
    return FALSE;
  g_autofree char *tag = g_strdup_printf("A%u", ++c->tag_counter);
  const GPtrArray *segs = imap_cmd_segments(cmd);
  gint64 sent = g_get_monotonic_time();
  g_auto(ConnOut) out = conn_out_new();
  conn_out_printf(&out, "%s ", tag);
  for (guint i = 0; i < segs->len && tagged == NULL; i++) {
    const ImapCmdSeg *seg = g_ptr_array_index(segs, i);
    if (seg->text != NULL)
      conn_out_text(&out, seg->text->str, seg->text->len);
    if (seg->literal == NULL)
      continue;
    gsize n = g_bytes_get_size(seg->literal);
    gboolean nonsync = conn_literal_nonsync(c, n);
    conn_out_printf(&out, "{%" G_GSIZE_FORMAT "%s}\r\n", n, nonsync ? "+" : "");
    conn_out_trace(c, &out, cmd);
    if (!nonsync) {
      if (!conn_out_flush(c, &out, error))
        return FALSE;
      int w = conn_wait_continuation(c, tag, fn, user, &tagged, error);
      if (w < 0)
        return FALSE;
      if (w == 0)
        break; /* the server refused the literal: its tagged reply decides */
    }
    conn_out_literal(c, &out, seg->literal);
  }
  if (tagged == NULL) {
    conn_out_text(&out, "\r\n", 2);
    conn_out_trace(c, &out, cmd);
    if (!conn_out_flush(c, &out, error))
      return FALSE;
  }
  while (tagged == NULL) {
    ImapResponse *r = conn_read(c, error);
    if (r == NULL)
      return FALSE;
    if (r->kind == IMAP_RESP_TAGGED) {
      if (g_strcmp0(r->tag, tag) != 0) {
        imap_response_free(r);
        return conn_fail(c, error, IFS_ERROR_PROTOCOL, "reply for unknown tag from %s",
                         c->ep->host);
      }
      tagged = r;
    } else if (r->kind == IMAP_RESP_CONTINUATION) {
      gpointer cuser = NULL;
      ImapContinueFn cfn = imap_cmd_continue_fn(cmd, &cuser);
      g_autofree char *line = cfn != NULL ? cfn(r, cuser) : NULL;
      imap_response_free(r);
      if (cfn == NULL)
        return conn_fail(c, error, IFS_ERROR_PROTOCOL, "unexpected continuation from %s",
                         c->ep->host);
      g_autofree char *send = g_strdup_printf("%s\r\n", line != NULL ? line : "*");
      conn_trace(c, "C:", "<redacted>", 10);
      if (!conn_write(c, send, strlen(send), error))
        return FALSE;
    } else {
      conn_dispatch(c, r, fn, user);
      imap_response_free(r);
    }
  }
  c->last_used = g_get_monotonic_time();
  /* The shortest command (ENABLE, NOOP, a SELECT) is about the network's
   * round trip: read-ahead sizes its parallelism by it (bodycache.c). */
  if (c->rtt_us == 0 || c->last_used - sent < c->rtt_us)
    c->rtt_us = MAX(c->last_used - sent, 1);
  gboolean ok = tagged->status == IMAP_STATUS_OK;
  if (!ok)
    conn_tagged_error(c, tagged, error);
  if (tagged_out != NULL)
    *tagged_out = g_steal_pointer(&tagged);
  return ok;
}

/* Whether cmd can be sent without waiting for the server in between. */
static gboolean conn_can_pipeline(const ImapConn *c, const ImapCmd *cmd) {
  gpointer ignored;
  if (imap_cmd_continue_fn(cmd, &ignored) != NULL)
    return FALSE;
  const GPtrArray *segs = imap_cmd_segments(cmd);
  for (guint i = 0; i < segs->len; i++) {
    const ImapCmdSeg *seg = g_ptr_array_index(segs, i);
    if (seg->literal != NULL && !conn_literal_nonsync(c, g_bytes_get_size(seg->literal)))
      return FALSE;
  }
  return TRUE;
}

gboolean imap_conn_run_pipeline(ImapConn *c, ImapCmd **cmds, guint n, ImapHandler fn,
                                gpointer user, ImapResponse **tagged, GError **error) {
  g_return_val_if_fail(n >= 1 && n <= IMAP_PIPELINE_MAX, FALSE);
  for (guint i = 0; tagged != NULL && i < n; i++)
    tagged[i] = NULL;
  gboolean changes = FALSE;
  for (guint i = 0; i < n; i++)
    changes |= conn_cmd_changes(cmds[i]);
  conn_set_changing(c, changes);
  gboolean pipeline = TRUE;
  for (guint i = 0; i < n; i++)
    pipeline = pipeline && conn_can_pipeline(c, cmds[i]);
  if (!pipeline || n == 1) {
    /* One after the other, as the pipeline runs them: a NO or BAD for one
     * leaves the rest to run (a STATUS per mailbox counts on it; the
     * rest of a round was skipped for a name needing a synchronizing
     * literal), a connection gone ends it.  The first error is returned. */
    GError *first = NULL;
    for (guint i = 0; i < n; i++) {
      if (c->broken && first != NULL) {
        imap_cmd_free(cmds[i]);
        continue;
      }
      GError *local = NULL;
      if (!imap_conn_run(c, cmds[i], fn, user, tagged != NULL ? &tagged[i] : NULL, &local)) {
        if (first == NULL)
          first = local;
        else
          g_error_free(local);
      }
    }
    if (first != NULL) {
      g_propagate_error(error, first);
      return FALSE;
    }
    return TRUE;
  }
  if (c->broken || (changes && !conn_usable(c, error))) {
    for (guint i = 0; i < n; i++)
      imap_cmd_free(cmds[i]);
    if (error != NULL && *error == NULL)
      g_set_error(error, IFS_ERROR, IFS_ERROR_CLOSED, "connection to %s is closed",
                  c->ep->host);
    return FALSE;
  }
  /* All commands in one write: one round trip for the lot. */
  char *tags[IMAP_PIPELINE_MAX];
  gboolean done[IMAP_PIPELINE_MAX] = {FALSE};
  g_auto(ConnOut) out = conn_out_new();
  for (guint i = 0; i < n; i++) {
    tags[i] = g_strdup_printf("A%u", ++c->tag_counter);
    conn_out_printf(&out, "%s ", tags[i]);
    const GPtrArray *segs = imap_cmd_segments(cmds[i]);
    for (guint k = 0; k < segs->len; k++) {
      const ImapCmdSeg *seg = g_ptr_array_index(segs, k);
      if (seg->text != NULL)
        conn_out_text(&out, seg->text->str, seg->text->len);
      if (seg->literal != NULL) {
        conn_out_printf(&out, "{%" G_GSIZE_FORMAT "+}\r\n", g_bytes_get_size(seg->literal));
        conn_out_trace(c, &out, cmds[i]);
        conn_out_literal(c, &out, seg->literal);
      }
    }
    conn_out_text(&out, "\r\n", 2);
    conn_out_trace(c, &out, cmds[i]);
  }
  /* The literals are referenced, not copied: the commands live until sent. */
  gboolean ok = conn_out_flush(c, &out, error);
  for (guint i = 0; i < n; i++)
    imap_cmd_free(cmds[i]);
  guint left = n;
  GError *first = NULL;
  while (ok && left > 0) {
    ImapResponse *r = conn_read(c, error);
    if (r == NULL) {
      ok = FALSE;
      break;
    }
    if (r->kind == IMAP_RESP_TAGGED) {
      guint i = 0;
      while (i < n && (done[i] || g_strcmp0(r->tag, tags[i]) != 0))
        i++;
      if (i == n) {
        imap_response_free(r);
        ok = conn_fail(c, error, IFS_ERROR_PROTOCOL, "reply for unknown tag from %s",
                       c->ep->host);
        break;
      }
      done[i] = TRUE;
      left--;
      if (r->status != IMAP_STATUS_OK && first == NULL)
        conn_tagged_error(c, r, &first);
      if (tagged != NULL) {
        tagged[i] = r;
        continue;
      }
    } else if (r->kind == IMAP_RESP_CONTINUATION) {
      imap_response_free(r);
      ok = conn_fail(c, error, IFS_ERROR_PROTOCOL, "unexpected continuation from %s",
                     c->ep->host);
      break;
    } else {
      conn_dispatch(c, r, fn, user);
    }
    imap_response_free(r);
  }
  for (guint i = 0; i < n; i++)
    g_free(tags[i]);
  if (!ok) {
    g_clear_error(&first);
    return FALSE;
  }
  c->last_used = g_get_monotonic_time();
  if (first != NULL) {
    g_propagate_error(error, first);
    return FALSE;
  }
  return TRUE;
}

/* ---- setup ---- */

static void conn_register(ImapConn *c, gboolean add) {
  g_mutex_lock(&conn_reg_lock);
  if (conn_reg == NULL)
    conn_reg = g_hash_table_new(NULL, NULL);
  if (add)
    g_hash_table_add(conn_reg, c);
  else
    g_hash_table_remove(conn_reg, c);
  g_mutex_unlock(&conn_reg_lock);
}

static void conn_set_fd(ImapConn *c, int fd) {
  g_mutex_lock(&conn_reg_lock);
  c->fd = fd;
  g_mutex_unlock(&conn_reg_lock);
}

static gboolean conn_connect(ImapConn *c, GError **error) {
  const ImapEndpoint *ep = c->ep;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  char port[8];
  g_snprintf(port, sizeof port, "%u", ep->port);
  int rc = getaddrinfo(ep->host, port, &hints, &res);
  if (rc != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_CONNECT, "cannot resolve %s: %s", ep->host,
                gai_strerror(rc));
    return FALSE;
  }
  int last_errno = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
      last_errno = errno;
      close(fd);
      continue;
    }
    /* A stop cuts a connect that waits as it cuts a recv (a server whose
     * host drops SYNs held the watcher, and so the unmount, for the whole
     * timeout): shutdown() of a connecting socket ends the poll. */
    conn_set_fd(c, fd);
    __atomic_store_n(&c->wait_since, g_get_monotonic_time(), __ATOMIC_RELAXED);
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int pr;
    do
      pr = poll(&pfd, 1, ep->timeout_s * 1000);
    while (pr < 0 && errno == EINTR);
    __atomic_store_n(&c->wait_since, 0, __ATOMIC_RELAXED);
    int soerr = 0;
    socklen_t slen = sizeof soerr;
    if (__atomic_load_n(&c->aborted, __ATOMIC_RELAXED))
      soerr = ECONNABORTED; /* cut by conn_abort: a stop */
    else if (pr == 0)
      soerr = ETIMEDOUT;
    else if (pr < 0)
      soerr = errno;
    else
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen);
    if (soerr != 0) {
      last_errno = soerr;
      conn_set_fd(c, -1);
      close(fd);
      if (__atomic_load_n(&c->aborted, __ATOMIC_RELAXED))
        break; /* stopping: no other address either */
      continue;
    }
    /* Back to blocking; timeouts come from SO_RCVTIMEO/SO_SNDTIMEO. */
    int one = 1;
    struct timeval tv = {.tv_sec = ep->timeout_s};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    freeaddrinfo(res);
    return TRUE;
  }
  freeaddrinfo(res);
  g_set_error(error, IFS_ERROR, last_errno == ETIMEDOUT ? IFS_ERROR_TIMEOUT : IFS_ERROR_CONNECT,
              "cannot connect to %s port %u: %s", ep->host, ep->port,
              g_strerror(last_errno ? last_errno : ECONNREFUSED));
  return FALSE;
}

static gboolean conn_simple(ImapConn *c, const char *command, GError **error) {
  return imap_conn_run(c, imap_cmd_new("%s", command), NULL, NULL, NULL, error);
}

static gboolean conn_enable_qresync(ImapConn *c, GError **error) {
  const char *what = NULL;
  if (imap_conn_has(c, IMAP_CAP_QRESYNC))
    what = "ENABLE QRESYNC";
  else if (imap_conn_has(c, IMAP_CAP_CONDSTORE))
    what = "ENABLE CONDSTORE";
  if (what == NULL || !imap_conn_has(c, IMAP_CAP_ENABLE))
    return TRUE;
  if (!conn_simple(c, what, error))
    return FALSE;
  c->qresync = imap_conn_has(c, IMAP_CAP_QRESYNC);
  return TRUE;
}


guint imap_conn_cut_waiting(gint64 waited_us) {
  guint cut = 0;
  g_mutex_lock(&conn_reg_lock);
  if (conn_reg != NULL) {
    GHashTableIter it;
    gpointer c;
    g_hash_table_iter_init(&it, conn_reg);
    while (g_hash_table_iter_next(&it, &c, NULL))
      cut += conn_abort(c, waited_us);
  }
  g_mutex_unlock(&conn_reg_lock);
  return cut;
}

/* The TLS handshake waits in recv like a command does (conn_abort). */
static SSL *conn_tls_handshake(ImapConn *c, GError **error) {
  __atomic_store_n(&c->wait_since, g_get_monotonic_time(), __ATOMIC_RELAXED);
  SSL *ssl = tls_handshake(c->ep->tls_ctx, c->fd, c->ep->host, error);
  __atomic_store_n(&c->wait_since, 0, __ATOMIC_RELAXED);
  return ssl;
}

/* Some connection of this process got a greeting (one server per mount). */
static gint conn_greeted;

/* Logins after a refused one.  The password is read once, at mount: a
 * server that refuses it (changed elsewhere) refuses it again, and each
 * try counts against the account (lockouts, fail2ban).  The watcher's
 * polls and every access logged in again, some 7,000 times a day at the
 * default poll=10 (an exploratory test).  So after a refusal no login is
 * tried for 30 s, doubling up to 10 min while they go on being refused;
 * one that works ends it.  One gate for the process: it mounts one
 * account. */
#define CONN_GATE_FIRST_S 30
#define CONN_GATE_MAX_S 600
static GMutex conn_gate_lock;
static gint64 conn_gate_until; /* monotonic us: no login before (conn_gate_lock) */
static int conn_gate_s;        /* the last wait set (conn_gate_lock) */
static char *conn_gate_why;    /* the last refusal (conn_gate_lock) */

static gboolean conn_gate_open(GError **error) {
  g_mutex_lock(&conn_gate_lock);
  gint64 left = conn_gate_until - g_get_monotonic_time();
  if (left > 0) /* the same text each time: repeats are counted (fs_warn) */
    g_set_error(error, IFS_ERROR, IFS_ERROR_AUTH, "%s (no new login for %d s after it)",
                conn_gate_why, conn_gate_s);
  g_mutex_unlock(&conn_gate_lock);
  return left <= 0;
}

static void conn_gate_note(const GError *login_error) {
  g_mutex_lock(&conn_gate_lock);
  if (login_error == NULL) {
    conn_gate_s = 0;
  } else if (g_error_matches(login_error, IFS_ERROR, IFS_ERROR_AUTH)) {
    conn_gate_s = conn_gate_s == 0 ? CONN_GATE_FIRST_S : MIN(2 * conn_gate_s, CONN_GATE_MAX_S);
    conn_gate_until = g_get_monotonic_time() + (gint64)conn_gate_s * G_USEC_PER_SEC;
    g_free(conn_gate_why);
    conn_gate_why = g_strdup(login_error->message);
  }
  g_mutex_unlock(&conn_gate_lock);
}

ImapConn *imap_conn_open(const ImapEndpoint *ep, GError **error) {
  if (!conn_gate_open(error))
    return NULL;
  g_autoptr(ImapConn) c = g_new0(ImapConn, 1);
  c->ep = ep;
  c->fd = -1;
  c->id = (guint)g_atomic_int_add(&conn_next_id, 1) + 1;
  c->parser = imap_parser_new(0, 0);
  conn_register(c, TRUE);
  if (!conn_connect(c, error))
    return NULL;
  if (ep->tls == IMAP_TLS_IMPLICIT) {
    c->ssl = conn_tls_handshake(c, error);
    if (c->ssl == NULL)
      return NULL;
  }
  g_autoptr(ImapResponse) greeting = conn_read(c, error);
  if (greeting == NULL) {
    /* A TLS port says nothing until it gets a TLS hello; a server that has
     * greeted before is only not answering now (the hint misled then). */
    if (ep->tls != IMAP_TLS_IMPLICIT && g_error_matches(*error, IFS_ERROR, IFS_ERROR_TIMEOUT) &&
        !g_atomic_int_get(&conn_greeted))
      g_prefix_error(error, "no IMAP greeting (a TLS port? then use imaps://): ");
    return NULL;
  }
  g_atomic_int_set(&conn_greeted, 1);
  if (greeting->kind != IMAP_RESP_UNTAGGED ||
      (greeting->status != IMAP_STATUS_OK && greeting->status != IMAP_STATUS_PREAUTH)) {
    g_set_error(error, IFS_ERROR, greeting->status == IMAP_STATUS_BYE ? IFS_ERROR_CLOSED
                                                                        : IFS_ERROR_PROTOCOL,
                "%s refused the connection: %s", ep->host,
                greeting->text[0] ? greeting->text : "no greeting");
    return NULL;
  }
  gboolean preauth = greeting->status == IMAP_STATUS_PREAUTH;
  if (ep->tls == IMAP_TLS_STARTTLS) {
    if (preauth) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_TLS,
                  "%s sent PREAUTH, so STARTTLS is impossible; use imaps:// or -o tls=off",
                  ep->host);
      return NULL;
    }
    if (!c->caps_known && !conn_simple(c, "CAPABILITY", error))
      return NULL;
    if (!imap_conn_has(c, IMAP_CAP_STARTTLS)) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                  "%s does not offer STARTTLS; use imaps:// or -o tls=off", ep->host);
      return NULL;
    }
    if (!conn_simple(c, "STARTTLS", error)) {
      if (!ifs_error_is_connection(*error))
        g_prefix_error(error, "%s refused STARTTLS, so nothing more is sent without TLS: ",
                       ep->host);
      return NULL;
    }
    /* Anything the server sent after its OK arrived unencrypted and may be
     * injected: refuse rather than parse it after the handshake. */
    if (imap_parser_buffered(c->parser) > 0) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_TLS,
                  "%s sent data after STARTTLS before the TLS handshake", ep->host);
      return NULL;
    }
    imap_parser_reset(c->parser);
    c->ssl = conn_tls_handshake(c, error);
    if (c->ssl == NULL)
      return NULL;
    c->caps_known = FALSE; /* capabilities before TLS are not to be trusted */
  }
  if (!preauth) {
    if (!c->caps_known && !conn_simple(c, "CAPABILITY", error))
      return NULL;
    c->caps_known = FALSE;
    gboolean in = auth_login(c, ep, error);
    conn_gate_note(in ? NULL : *error);
    if (!in)
      return NULL;
  }
  if (!c->caps_known && !conn_simple(c, "CAPABILITY", error))
    return NULL;
  if (!conn_enable_qresync(c, error))
    return NULL;
  c->last_used = g_get_monotonic_time();
  c->opened = TRUE;
  return g_steal_pointer(&c);
}

void imap_conn_close(ImapConn *c) {
  imap_conn_close_by(c, g_get_monotonic_time() + 2 * G_USEC_PER_SEC);
}

void imap_conn_close_by(ImapConn *c, gint64 deadline_us) {
  if (c == NULL)
    return;
  conn_register(c, FALSE); /* before it is freed */
  if (c->fd >= 0 && !c->broken && c->opened) {
    /* Best effort, and quick: do not wait long on a server going away. */
    gint64 wait = CLAMP(deadline_us - g_get_monotonic_time(), 10000, 2 * G_USEC_PER_SEC);
    struct timeval tv = {.tv_sec = wait / G_USEC_PER_SEC, .tv_usec = wait % G_USEC_PER_SEC};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    GError *ignored = NULL;
    conn_simple(c, "LOGOUT", &ignored);
    g_clear_error(&ignored);
  }
  if (c->ssl != NULL) {
    SSL_free(c->ssl);
    ERR_clear_error();
  }
  if (c->fd >= 0)
    close(c->fd);
  imap_parser_free(c->parser);
  g_free(c->selected);
  g_free(c);
}

void imap_conn_set_unsolicited(ImapConn *c, ImapHandler fn, gpointer user) {
  c->unsolicited = fn;
  c->unsolicited_user = user;
}

guint32 imap_conn_caps(const ImapConn *c) { return c->caps; }
gboolean imap_conn_has(const ImapConn *c, guint32 cap) { return (c->caps & cap) == cap; }
guint64 imap_conn_appendlimit(const ImapConn *c) { return c->appendlimit; }
gboolean imap_conn_is_broken(const ImapConn *c) { return c->broken; }
void imap_conn_set_broken(ImapConn *c) { c->broken = TRUE; }

static gboolean conn_abort(ImapConn *c, gint64 waited_us) {
  /* shutdown, not close: the fd stays valid for the thread blocked on it,
   * whose recv then fails at once.  Called under conn_reg_lock
   * (imap_conn_cut_waiting): see conn_set_changing. */
  gint64 since = __atomic_load_n(&c->wait_since, __ATOMIC_RELAXED);
  if (c->fd < 0 || since == 0 || __atomic_load_n(&c->changing, __ATOMIC_RELAXED) ||
      g_get_monotonic_time() - since < waited_us)
    return FALSE;
  __atomic_store_n(&c->aborted, TRUE, __ATOMIC_RELAXED);
  shutdown(c->fd, SHUT_RDWR);
  return TRUE;
}
const char *imap_conn_selected(const ImapConn *c) { return c->selected; }
guint32 imap_conn_selected_uidvalidity(const ImapConn *c) { return c->selected_uidvalidity; }
gint64 imap_conn_last_used(const ImapConn *c) { return c->last_used; }
gint64 imap_conn_rtt_us(const ImapConn *c) { return c->rtt_us; }
guint imap_conn_id(const ImapConn *c) { return c->id; }
gboolean imap_conn_qresync_enabled(const ImapConn *c) { return c->qresync; }

void imap_conn_set_selected(ImapConn *c, const char *mailbox, guint32 uidvalidity) {
  g_free(c->selected);
  c->selected = g_strdup(mailbox);
  c->selected_uidvalidity = mailbox != NULL ? uidvalidity : 0;
}
