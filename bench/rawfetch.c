/* rawfetch.c - the raw network limit for imapfuse's benchmarks.
 *
 * A minimal plaintext IMAP client (loopback only, no TLS) that logs in,
 * LISTs the mailboxes and, for every selectable one, EXAMINEs it and sends
 * ONE command:
 *
 *   --bulk   UID FETCH 1:* (BODY.PEEK[])                       all bytes
 *   --meta   UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS) the listing
 *   --each   (diagnostic) one UID FETCH <uid> BODY.PEEK[] per message,
 *            strictly one at a time: what one-round-trip-per-file costs
 *            at best (the UIDs are listed first, untimed)
 *
 * and times that phase (first EXAMINE to last tagged OK; login and LIST
 * are timed separately because imapfuse does them before it mounts).
 * It is written in C, not Python, because it is the *limit*: message
 * literals are skipped in bulk straight from a 1 MiB receive buffer, so
 * the client costs next to nothing and the time is the server's plus the
 * network's.  (Python's imaplib parses and copies every literal and would
 * measure itself.)
 *
 *   --export DIR  also writes every message to DIR/<mailbox>/<UID>.eml
 *                 (bytes exactly as the server returns them, CRLF), the
 *                 tree imapfuse shows; used to build the floorfs copy.
 *                 Mailbox names must be plain (no '%', no leading '.',
 *                 no control characters): imapfuse would escape those.
 *   --noop N      N sequential NOOPs; prints the median round trip.
 *
 * usage: rawfetch -p PORT -u USER -P PASSWORD_FILE [-H 127.0.0.1|::1]
 *                 [--bulk] [--meta] [--each] [--export DIR] [--noop N]
 * Prints one JSON object per measurement on stdout.  Only loopback
 * addresses are accepted.  Every socket read has a 120 s timeout.
 *
 * Build: cc -O2 -Wall -Wextra rawfetch.c -o rawfetch
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP (1u << 20)
#define MAX_TEXT (1u << 20) /* non-literal text of one response */
#define MAX_MAILBOXES 10000

typedef struct {
  int fd;
  char *buf;
  size_t cap, r, w; /* unread bytes are buf[r..w) */
  uint64_t rx, tx;
  unsigned tagn;
} Conn;

/* One response: text (literals replaced by "{}"), and the last literal. */
typedef struct {
  char *text;
  size_t tlen;
  char *lit; /* only filled when keep_literal */
  size_t llen, lcap;
  uint64_t nlit, litbytes;
} Resp;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "rawfetch: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n);
  if (p == NULL)
    die("out of memory");
  return p;
}

/* ---- connection ---- */

static void conn_open(Conn *c, const char *host, int port) {
  memset(c, 0, sizeof *c);
  struct sockaddr_storage ss;
  socklen_t sl;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127)
      die("refusing non-loopback address %s", host);
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    sl = sizeof *s4;
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
      die("refusing non-loopback address %s", host);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    sl = sizeof *s6;
  } else {
    die("host must be a numeric loopback address, not %s", host);
  }
  c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    die("socket: %s", strerror(errno));
  struct timeval tv = {.tv_sec = 120};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&ss, sl) != 0)
    die("connect %s:%d: %s", host, port, strerror(errno));
  c->cap = BUF_CAP;
  c->buf = xrealloc(NULL, c->cap);
}

/* Reads more bytes into the buffer (compacting it first). */
static void conn_fill(Conn *c) {
  if (c->r > 0) {
    memmove(c->buf, c->buf + c->r, c->w - c->r);
    c->w -= c->r;
    c->r = 0;
  }
  if (c->w == c->cap)
    die("response line longer than %zu bytes", c->cap);
  for (;;) {
    ssize_t n = recv(c->fd, c->buf + c->w, c->cap - c->w, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      die("recv: %s", errno == EAGAIN ? "timeout (120 s)" : strerror(errno));
    if (n == 0)
      die("server closed the connection");
    c->w += (size_t)n;
    c->rx += (uint64_t)n;
    return;
  }
}

/* The next line without its CRLF; valid until the next read. */
static char *conn_line(Conn *c, size_t *len) {
  size_t scanned = c->r;
  for (;;) {
    char *nl = memchr(c->buf + scanned, '\n', c->w - scanned);
    if (nl != NULL) {
      char *line = c->buf + c->r;
      size_t l = (size_t)(nl - line);
      c->r += l + 1;
      if (l > 0 && line[l - 1] == '\r')
        l--;
      line[l] = '\0';
      *len = l;
      return line;
    }
    size_t off = c->w - c->r;
    conn_fill(c);
    scanned = c->r + off;
  }
}

/* Consumes a literal of n bytes, copying it to out (when not NULL). */
static void conn_literal(Conn *c, size_t n, char *out) {
  while (n > 0) {
    if (c->r == c->w) {
      c->r = c->w = 0;
      /* read straight into the caller's memory or the (empty) buffer */
      char *dst = out != NULL ? out : c->buf;
      size_t want = out != NULL ? n : (n < c->cap ? n : c->cap);
      ssize_t got = recv(c->fd, dst, want, 0);
      if (got < 0 && errno == EINTR)
        continue;
      if (got < 0)
        die("recv: %s", errno == EAGAIN ? "timeout (120 s)" : strerror(errno));
      if (got == 0)
        die("server closed the connection in a literal");
      c->rx += (uint64_t)got;
      n -= (size_t)got;
      if (out != NULL)
        out += got;
      continue;
    }
    size_t take = c->w - c->r;
    if (take > n)
      take = n;
    if (out != NULL) {
      memcpy(out, c->buf + c->r, take);
      out += take;
    }
    c->r += take;
    n -= take;
  }
}

static void conn_send(Conn *c, const char *s, size_t n) {
  while (n > 0) {
    ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      die("send: %s", strerror(errno));
    s += k;
    n -= (size_t)k;
    c->tx += (uint64_t)k;
  }
}

/* Sends "TAG cmd\r\n"; returns the tag number. */
static unsigned conn_cmd(Conn *c, const char *cmd) {
  char head[32];
  unsigned t = ++c->tagn;
  int hl = snprintf(head, sizeof head, "R%u ", t);
  size_t cl = strlen(cmd);
  char *line = xrealloc(NULL, (size_t)hl + cl + 2);
  memcpy(line, head, (size_t)hl);
  memcpy(line + hl, cmd, cl);
  memcpy(line + hl + cl, "\r\n", 2);
  conn_send(c, line, (size_t)hl + cl + 2);
  free(line);
  return t;
}

/* Literal size announced at the end of a line ("{123}" or "{123+}"), or -1. */
static long long trailing_literal(const char *line, size_t len) {
  if (len < 3 || line[len - 1] != '}')
    return -1;
  size_t i = len - 1;
  if (i > 0 && line[i - 1] == '+')
    i--;
  size_t end = i;
  while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
    i--;
  if (i == end || i == 0 || line[i - 1] != '{' || end - i > 18)
    return -1;
  return strtoll(line + i, NULL, 10);
}

typedef void (*RespFn)(Resp *r, void *user);

static int expect_bye; /* set before LOGOUT */

/* Reads responses until the tagged one for tag; calls fn for each untagged
 * response.  keep: copy literals into r->lit.  Returns 0 on OK. */
static int conn_wait(Conn *c, unsigned tag, int keep, RespFn fn, void *user, Resp *r,
                     char *status, size_t status_len) {
  char tagstr[32];
  int tl = snprintf(tagstr, sizeof tagstr, "R%u ", tag);
  for (;;) {
    r->tlen = 0;
    r->llen = 0;
    int first = 1, tagged = 0;
    for (;;) {
      size_t len;
      char *line = conn_line(c, &len);
      if (first) {
        tagged = len >= (size_t)tl && memcmp(line, tagstr, (size_t)tl) == 0;
        first = 0;
      }
      long long lit = trailing_literal(line, len);
      if (r->tlen + len + 3 > MAX_TEXT)
        die("response text too long");
      if (r->text == NULL)
        r->text = xrealloc(NULL, MAX_TEXT);
      memcpy(r->text + r->tlen, line, len);
      r->tlen += len;
      r->text[r->tlen] = '\0';
      if (lit < 0)
        break;
      size_t n = (size_t)lit;
      if (keep) {
        if (n > r->lcap) {
          r->lcap = n;
          r->lit = xrealloc(r->lit, n ? n : 1);
        }
        conn_literal(c, n, r->lit);
        r->llen = n;
      } else {
        conn_literal(c, n, NULL);
        r->llen = n;
      }
      r->nlit++;
      r->litbytes += n;
    }
    if (tagged) {
      const char *st = r->text + tl;
      if (status != NULL) {
        snprintf(status, status_len, "%s", st);
      }
      return strncmp(st, "OK", 2) == 0 ? 0 : -1;
    }
    if (!expect_bye && r->tlen >= 5 && strncmp(r->text, "* BYE", 5) == 0)
      die("server said: %.200s", r->text);
    if (fn != NULL)
      fn(r, user);
  }
}

static void must_ok(Conn *c, unsigned tag, const char *what, Resp *r, RespFn fn, void *user,
                    int keep) {
  char st[256];
  if (conn_wait(c, tag, keep, fn, user, r, st, sizeof st) != 0)
    die("%s failed: %s", what, st);
}

/* ---- mailbox list ---- */

typedef struct {
  char **names; /* wire names */
  char delim;
  size_t n;
} Boxes;

/* "quoted" or atom at *p; returns malloc'd string, advances p. */
static char *parse_astring(const char **pp) {
  const char *p = *pp;
  while (*p == ' ')
    p++;
  char *out = xrealloc(NULL, strlen(p) + 1);
  size_t o = 0;
  if (*p == '"') {
    p++;
    while (*p && *p != '"') {
      if (*p == '\\' && p[1])
        p++;
      out[o++] = *p++;
    }
    if (*p == '"')
      p++;
  } else {
    while (*p && *p != ' ')
      out[o++] = *p++;
  }
  out[o] = '\0';
  *pp = p;
  return out;
}

static void on_list(Resp *r, void *user) {
  Boxes *b = user;
  const char *t = r->text;
  if (strncmp(t, "* LIST (", 8) != 0)
    return;
  const char *close = strchr(t + 8, ')');
  if (close == NULL)
    return;
  size_t flen = (size_t)(close - (t + 8));
  char flags[512];
  snprintf(flags, sizeof flags, "%.*s", (int)(flen < 511 ? flen : 511), t + 8);
  for (char *q = flags; *q; q++)
    if (*q >= 'a' && *q <= 'z')
      *q = (char)(*q - 32);
  if (strstr(flags, "\\NOSELECT") != NULL || strstr(flags, "\\NONEXISTENT") != NULL)
    return;
  const char *p = close + 1;
  while (*p == ' ')
    p++;
  if (strncmp(p, "NIL", 3) == 0) {
    p += 3;
  } else {
    char *d = parse_astring(&p);
    if (d[0])
      b->delim = d[0];
    free(d);
  }
  while (*p == ' ')
    p++;
  char *name;
  if (r->llen > 0 && *p == '\0') { /* name sent as a literal (not kept: unusual) */
    die("mailbox name sent as a literal: not supported");
  } else {
    name = parse_astring(&p);
  }
  if (b->n >= MAX_MAILBOXES)
    die("too many mailboxes");
  b->names = xrealloc(b->names, (b->n + 1) * sizeof *b->names);
  b->names[b->n++] = name;
}

static char *quote(const char *s) {
  size_t n = strlen(s);
  char *out = xrealloc(NULL, 2 * n + 3);
  size_t o = 0;
  out[o++] = '"';
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n')
      die("CR/LF in a quoted string");
    if (s[i] == '"' || s[i] == '\\')
      out[o++] = '\\';
    out[o++] = s[i];
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}

/* ---- per-mailbox handlers ---- */

typedef struct {
  long exists;
} ExamineInfo;

static void on_examine(Resp *r, void *user) {
  ExamineInfo *e = user;
  long n;
  char word[16];
  if (sscanf(r->text, "* %ld %15s", &n, word) == 2 && strcmp(word, "EXISTS") == 0)
    e->exists = n;
}

typedef struct {
  uint64_t messages;
  uint64_t sizes; /* sum of RFC822.SIZE (meta) */
  const char *dir; /* export directory of the mailbox, or NULL */
  uint32_t *uids;  /* collected UIDs (--each), or NULL */
  size_t nuids, capuids;
} FetchInfo;

static long long find_num(const char *text, const char *key) {
  const char *p = text;
  size_t kl = strlen(key);
  while ((p = strstr(p, key)) != NULL) {
    if ((p == text || p[-1] == ' ' || p[-1] == '(') && p[kl] == ' ')
      return strtoll(p + kl + 1, NULL, 10);
    p += kl;
  }
  return -1;
}

static void write_file(const char *path, const char *data, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    die("%s: %s", path, strerror(errno));
  while (n > 0) {
    ssize_t k = write(fd, data, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      die("%s: %s", path, strerror(errno));
    data += k;
    n -= (size_t)k;
  }
  if (close(fd) != 0)
    die("%s: %s", path, strerror(errno));
}

static void on_fetch(Resp *r, void *user) {
  FetchInfo *f = user;
  if (strstr(r->text, " FETCH (") == NULL)
    return;
  f->messages++;
  long long sz = find_num(r->text, "RFC822.SIZE");
  if (sz > 0)
    f->sizes += (uint64_t)sz;
  if (f->capuids > 0) {
    long long uid = find_num(r->text, "UID");
    if (uid > 0 && uid <= UINT32_MAX) {
      if (f->nuids == f->capuids) {
        f->capuids *= 2;
        f->uids = xrealloc(f->uids, f->capuids * sizeof *f->uids);
      }
      f->uids[f->nuids++] = (uint32_t)uid;
    }
  }
  if (f->dir != NULL) {
    long long uid = find_num(r->text, "UID");
    if (uid <= 0)
      die("FETCH response without UID: %.100s", r->text);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%lld.eml", f->dir, uid);
    write_file(path, r->lit != NULL ? r->lit : "", r->llen);
  }
}

static void mkdirs(const char *path) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", tmp, strerror(errno));
      *p = '/';
    }
  }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
    die("mkdir %s: %s", tmp, strerror(errno));
}

/* DIR/<components of name split at delim> (plain names only). */
static char *export_dir(const char *root, const char *name, char delim) {
  size_t n = strlen(root) + strlen(name) + 2;
  char *out = xrealloc(NULL, n);
  snprintf(out, n, "%s/%s", root, name);
  char *comp = out + strlen(root) + 1;
  int at_start = 1;
  for (char *p = comp; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (delim != '\0' && *p == delim) {
      if (at_start)
        die("empty component in mailbox name %s", name);
      *p = '/';
      at_start = 1;
      continue;
    }
    if (ch < 0x20 || ch == 0x7f || ch == '%' || ch == '/' || (at_start && ch == '.'))
      die("mailbox name %s needs escaping; --export supports plain names only", name);
    at_start = 0;
  }
  if (at_start)
    die("empty component in mailbox name %s", name);
  return out;
}

/* ---- main ---- */

static void usage(void) {
  fprintf(stderr, "usage: rawfetch -p PORT -u USER -P PASSWORD_FILE [-H HOST] [--bulk] "
                  "[--meta] [--each] [--export DIR] [--noop N]\n");
  exit(2);
}

static char *read_password(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    die("%s: %s", path, strerror(errno));
  char buf[1024];
  if (fgets(buf, sizeof buf, f) == NULL)
    buf[0] = '\0';
  fclose(f);
  buf[strcspn(buf, "\r\n")] = '\0';
  char *pw = strdup(buf);
  memset(buf, 0, sizeof buf);
  return pw;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *user = NULL, *pwfile = NULL, *export = NULL;
  int port = 0, bulk = 0, meta = 0, each = 0;
  long noop = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--bulk") == 0)
      bulk = 1;
    else if (strcmp(a, "--meta") == 0)
      meta = 1;
    else if (strcmp(a, "--each") == 0)
      each = 1;
    else if (strcmp(a, "-p") == 0 && v) {
      port = atoi(v);
      i++;
    } else if (strcmp(a, "-H") == 0 && v) {
      host = v;
      i++;
    } else if (strcmp(a, "-u") == 0 && v) {
      user = v;
      i++;
    } else if (strcmp(a, "-P") == 0 && v) {
      pwfile = v;
      i++;
    } else if (strcmp(a, "--export") == 0 && v) {
      export = v;
      i++;
    } else if (strcmp(a, "--noop") == 0 && v) {
      noop = atol(v);
      i++;
    } else
      usage();
  }
  if (port <= 0 || port > 65535 || user == NULL || pwfile == NULL)
    usage();
  if (noop < 0 || noop > 100000)
    die("--noop takes 0 to 100000");

  Conn c;
  Resp r;
  memset(&r, 0, sizeof r);
  double t0 = now();
  conn_open(&c, host, port);
  size_t len;
  char *greet = conn_line(&c, &len);
  if (strncmp(greet, "* OK", 4) != 0)
    die("bad greeting: %.100s", greet);
  char *pw = read_password(pwfile);
  char *qu = quote(user), *qp = quote(pw);
  size_t ll = strlen(qu) + strlen(qp) + 8;
  char *login = xrealloc(NULL, ll);
  snprintf(login, ll, "LOGIN %s %s", qu, qp);
  unsigned t = conn_cmd(&c, login);
  memset(login, 0, ll);
  memset(qp, 0, strlen(qp));
  memset(pw, 0, strlen(pw));
  free(login);
  free(qp);
  free(pw);
  free(qu);
  {
    char st[256];
    if (conn_wait(&c, t, 0, NULL, NULL, &r, st, sizeof st) != 0)
      die("LOGIN failed");
  }
  double t_login = now();
  Boxes boxes = {0};
  boxes.delim = '/';
  t = conn_cmd(&c, "LIST \"\" \"*\"");
  must_ok(&c, t, "LIST", &r, on_list, &boxes, 0);
  double t_list = now();

  if (noop > 0) {
    double *rtt = xrealloc(NULL, (size_t)noop * sizeof *rtt);
    for (long i = 0; i < noop; i++) {
      double a = now();
      t = conn_cmd(&c, "NOOP");
      must_ok(&c, t, "NOOP", &r, NULL, NULL, 0);
      rtt[i] = now() - a;
    }
    qsort(rtt, (size_t)noop, sizeof *rtt, cmp_double);
    printf("{\"mode\": \"noop\", \"count\": %ld, \"median_ms\": %.3f, \"min_ms\": %.3f, "
           "\"max_ms\": %.3f}\n",
           noop, rtt[noop / 2] * 1e3, rtt[0] * 1e3, rtt[noop - 1] * 1e3);
    free(rtt);
  }

  const char *modes[3];
  int nm = 0;
  if (bulk || export != NULL)
    modes[nm++] = "bulk";
  if (meta)
    modes[nm++] = "meta";
  if (each) {
    /* one fetch per message, one at a time; only the fetches are timed */
    uint64_t rx0 = c.rx, lit0 = r.litbytes, msgs = 0;
    double spent = 0;
    for (size_t i = 0; i < boxes.n; i++) {
      char *q = quote(boxes.names[i]);
      size_t cl = strlen(q) + 16;
      char *cmd = xrealloc(NULL, cl);
      snprintf(cmd, cl, "EXAMINE %s", q);
      ExamineInfo ei = {.exists = -1};
      t = conn_cmd(&c, cmd);
      char st[256];
      int ok = conn_wait(&c, t, 0, on_examine, &ei, &r, st, sizeof st) == 0;
      free(cmd);
      free(q);
      if (!ok || ei.exists == 0)
        continue;
      FetchInfo fi = {.capuids = 1024};
      fi.uids = xrealloc(NULL, fi.capuids * sizeof *fi.uids);
      t = conn_cmd(&c, "UID FETCH 1:* (UID)");
      must_ok(&c, t, "UID FETCH", &r, on_fetch, &fi, 0);
      for (size_t k = 0; k < fi.nuids; k++) {
        char fcmd[64];
        snprintf(fcmd, sizeof fcmd, "UID FETCH %u BODY.PEEK[]", fi.uids[k]);
        FetchInfo one = {0};
        double a = now();
        t = conn_cmd(&c, fcmd);
        must_ok(&c, t, "UID FETCH", &r, on_fetch, &one, 0);
        spent += now() - a;
        msgs += one.messages;
      }
      free(fi.uids);
    }
    printf("{\"mode\": \"each\", \"seconds\": %.6f, \"messages\": %llu, "
           "\"literal_bytes\": %llu, \"wire_bytes\": %llu}\n",
           spent, (unsigned long long)msgs, (unsigned long long)(r.litbytes - lit0),
           (unsigned long long)(c.rx - rx0));
    fflush(stdout);
  }
  for (int m = 0; m < nm; m++) {
    int is_bulk = strcmp(modes[m], "bulk") == 0;
    const char *items = is_bulk ? (export != NULL ? "(UID BODY.PEEK[])" : "(BODY.PEEK[])")
                                : "(UID RFC822.SIZE INTERNALDATE FLAGS)";
    uint64_t rx0 = c.rx, lit0 = r.litbytes, msgs = 0, sizes = 0;
    size_t selectable = 0;
    double a = now();
    for (size_t i = 0; i < boxes.n; i++) {
      char *q = quote(boxes.names[i]);
      size_t cl = strlen(q) + 16;
      char *cmd = xrealloc(NULL, cl);
      snprintf(cmd, cl, "EXAMINE %s", q);
      ExamineInfo ei = {.exists = -1};
      t = conn_cmd(&c, cmd);
      char st[256];
      if (conn_wait(&c, t, 0, on_examine, &ei, &r, st, sizeof st) != 0) {
        fprintf(stderr, "rawfetch: EXAMINE %s: %s (skipped)\n", boxes.names[i], st);
        free(cmd);
        free(q);
        continue;
      }
      selectable++;
      char *dir = NULL;
      if (export != NULL && is_bulk) {
        dir = export_dir(export, boxes.names[i], boxes.delim);
        mkdirs(dir);
      }
      if (ei.exists != 0) {
        char fcmd[128];
        snprintf(fcmd, sizeof fcmd, "UID FETCH 1:* %s", items);
        FetchInfo fi = {.dir = dir};
        t = conn_cmd(&c, fcmd);
        must_ok(&c, t, "UID FETCH", &r, on_fetch, &fi, dir != NULL);
        msgs += fi.messages;
        sizes += fi.sizes;
      }
      free(dir);
      free(cmd);
      free(q);
    }
    double b = now();
    printf("{\"mode\": \"%s\", \"seconds\": %.6f, \"mailboxes\": %zu, \"messages\": %llu, "
           "\"literal_bytes\": %llu, \"size_sum\": %llu, \"wire_bytes\": %llu, "
           "\"connect_login_seconds\": %.6f, \"list_seconds\": %.6f}\n",
           modes[m], b - a, selectable, (unsigned long long)msgs,
           (unsigned long long)(r.litbytes - lit0), (unsigned long long)sizes,
           (unsigned long long)(c.rx - rx0), t_login - t0, t_list - t_login);
    fflush(stdout);
  }
  expect_bye = 1;
  t = conn_cmd(&c, "LOGOUT");
  conn_wait(&c, t, 0, NULL, NULL, &r, NULL, 0);
  close(c.fd);
  for (size_t i = 0; i < boxes.n; i++)
    free(boxes.names[i]);
  free(boxes.names);
  free(r.text);
  free(r.lit);
  free(c.buf);
  return 0;
}
