/* options.c - fuse_opt table, server URL, password sources. */
#include "imapfuse/options.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "imapfuse/errors.h"

enum { KEY_HELP, KEY_VERSION, KEY_DISCARD, KEY_PASSWORD };

#define IFS_OPT(t, p, v) {t, offsetof(IfsOptions, p), v}

static const struct fuse_opt options_table[] = {
    IFS_OPT("password_command=%s", password_command, 0),
    IFS_OPT("password_file=%s", password_file, 0),
    IFS_OPT("cafile=%s", cafile, 0),
    IFS_OPT("tls=%s", tls, 0),
    IFS_OPT("connections=%s", int_text[IFS_INT_CONNECTIONS], 0),
    IFS_OPT("timeout=%s", int_text[IFS_INT_TIMEOUT], 0),
    IFS_OPT("imap_debug", imap_debug, 1),
    IFS_OPT("cache_mem=%s", int_text[IFS_INT_CACHE_MEM], 0),
    IFS_OPT("cache=%s", cache, 0),
    IFS_OPT("cache_dir=%s", cache_dir, 0),
    IFS_OPT("cache_size=%s", cache_size, 0),
    IFS_OPT("readahead=%s", readahead, 0),
    IFS_OPT("readahead_batches=%s", int_text[IFS_INT_READAHEAD_BATCHES], 0),
    IFS_OPT("poll=%s", int_text[IFS_INT_POLL], 0),
    IFS_OPT("watch_idle=%s", int_text[IFS_INT_WATCH_IDLE], 0),
    IFS_OPT("spin=%s", int_text[IFS_INT_SPIN], 0),
    IFS_OPT("xattr=%s", xattr, 0),
    IFS_OPT("delete=%s", delete_mode, 0),
    IFS_OPT("dedup=%s", dedup, 0),
    IFS_OPT("max_message=%s", max_message, 0),
    IFS_OPT("msg_timeout=%s", sec_text[IFS_SEC_MSG_TIMEOUT], 0),
    IFS_OPT("dir_timeout=%s", sec_text[IFS_SEC_DIR_TIMEOUT], 0),
    IFS_OPT("list_max_age=%s", sec_text[IFS_SEC_LIST_MAX_AGE], 0),
    IFS_OPT("linger=%s", sec_text[IFS_SEC_LINGER], 0),
    /* FUSE's own too (the kernel refuses writes); seen here for fs.c */
    IFS_OPT("ro", read_only, 1),
    IFS_OPT("rw", read_only, 0),
    FUSE_OPT_KEY("ro", FUSE_OPT_KEY_KEEP),
    FUSE_OPT_KEY("rw", FUSE_OPT_KEY_KEEP),
    /* FUSE's too: seen here to tell it from FUSE's default (see main.c) */
    IFS_OPT("max_threads=%s", int_text[IFS_INT_MAX_THREADS], 0),
    FUSE_OPT_KEY("max_threads=", FUSE_OPT_KEY_KEEP),
    /* libfuse would print it back as an unknown option, into logs */
    FUSE_OPT_KEY("password=", KEY_PASSWORD),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    /* fstab noise that mount(8) passes on */
    FUSE_OPT_KEY("auto", KEY_DISCARD),
    FUSE_OPT_KEY("noauto", KEY_DISCARD),
    FUSE_OPT_KEY("_netdev", KEY_DISCARD),
    FUSE_OPT_KEY("nofail", KEY_DISCARD),
    FUSE_OPT_KEY("user", KEY_DISCARD),
    FUSE_OPT_KEY("users", KEY_DISCARD),
    FUSE_OPT_END,
};

static int options_proc(void *data, const char *arg, int key, struct fuse_args *outargs) {
  IfsOptions *o = data;
  (void)outargs;
  switch (key) {
  case FUSE_OPT_KEY_NONOPT:
    if (o->url == NULL) {
      o->url = g_strdup(arg);
      return 0;
    }
    return 1; /* the mountpoint: FUSE's */
  case KEY_HELP:
    o->show_help = 1;
    return 1; /* FUSE prints its part too */
  case KEY_VERSION:
    o->show_version = 1;
    return 1;
  case KEY_DISCARD:
    return 0;
  case KEY_PASSWORD:
    o->password_in_argv = 1;
    return 0;
  case FUSE_OPT_KEY_OPT: {
    /* Not ours, and named like a password (passwd=, Password=, pass=):
     * libfuse would print it back, value and all, as an unknown option
     * (into a journal, from fstab). */
    g_autofree char *name = g_ascii_strdown(arg, strcspn(arg, "="));
    if (strstr(name, "pass") != NULL || strstr(name, "secret") != NULL ||
        g_str_equal(name, "pw")) {
      if (o->secret_like == NULL)
        o->secret_like = g_strndup(arg, strcspn(arg, "="));
      return 0;
    }
    return 1;
  }
  default:
    return 1;
  }
}

/* Whole numbers are taken as text and converted here: fuse_opt's "%u" is
 * sscanf's, which took 4294967296 as 0, -1 as 4294967295 and "10s" as 10. */
static const struct {
  const char *name;
  size_t field;
  gint64 min, max;
  const char *range;
} int_options[IFS_N_INT] = {
    [IFS_INT_CONNECTIONS] = {"connections", offsetof(IfsOptions, connections), 1, 64, "1 to 64"},
    [IFS_INT_TIMEOUT] = {"timeout", offsetof(IfsOptions, timeout), 1, 86400,
                         "1 to 86400 seconds"},
    [IFS_INT_CACHE_MEM] = {"cache_mem", offsetof(IfsOptions, cache_mem_mb), 1, 65536,
                           "1 to 65536 (MB)"},
    [IFS_INT_POLL] = {"poll", offsetof(IfsOptions, poll), 0, 86400,
                      "0 (off) to 86400 seconds"},
    [IFS_INT_WATCH_IDLE] = {"watch_idle", offsetof(IfsOptions, watch_idle), 0, 31536000,
                            "0 (poll every folder looked at) to 31536000 seconds"},
    [IFS_INT_SPIN] = {"spin", offsetof(IfsOptions, spin_us), 0, 100000,
                      "0 (never) to 100000 microseconds"},
    [IFS_INT_READAHEAD_BATCHES] = {"readahead_batches", offsetof(IfsOptions, readahead_batches),
                                   0, 64, "0 (chosen by the server's round trip) to 64"},
    [IFS_INT_MAX_THREADS] = {"max_threads", offsetof(IfsOptions, max_threads), 1, 1000,
                             "1 to 1000"},
};

static gboolean options_take_ints(IfsOptions *o, GError **error) {
  for (int i = 0; i < IFS_N_INT; i++) {
    const char *text = o->int_text[i];
    guint64 v;
    if (text == NULL)
      continue; /* the default set before parsing stays */
    /* The sign test: g_ascii_string_to_unsigned refuses "-1" but takes "+1" */
    if (!g_ascii_isdigit(text[0]) ||
        !g_ascii_string_to_unsigned(text, 10, (guint64)int_options[i].min,
                                    (guint64)int_options[i].max, &v, NULL)) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "%s= must be %s, not \"%s\"",
                  int_options[i].name, int_options[i].range, text);
      return FALSE;
    }
    *(int *)((char *)o + int_options[i].field) = (int)v;
  }
  return TRUE;
}

/* Seconds with an optional fraction, as text for the same reason: "%lf"
 * took "10min" as 10, "0x10" as 16 and "-1" as "not given". */
static const struct {
  const char *name;
  size_t field;
} sec_options[IFS_N_SEC] = {
    [IFS_SEC_MSG_TIMEOUT] = {"msg_timeout", offsetof(IfsOptions, msg_timeout)},
    [IFS_SEC_DIR_TIMEOUT] = {"dir_timeout", offsetof(IfsOptions, dir_timeout)},
    [IFS_SEC_LIST_MAX_AGE] = {"list_max_age", offsetof(IfsOptions, list_max_age)},
    [IFS_SEC_LINGER] = {"linger", offsetof(IfsOptions, linger)},
};

static gboolean options_take_seconds(IfsOptions *o, GError **error) {
  for (int i = 0; i < IFS_N_SEC; i++) {
    const char *text = o->sec_text[i];
    if (text == NULL)
      continue;
    gboolean plain = text[0] != '\0' && text[strspn(text, "0123456789.")] == '\0';
    char *end = NULL;
    double v = plain ? g_ascii_strtod(text, &end) : -1;
    if (!plain || end == text || *end != '\0' || !(v >= 0 && v <= 86400)) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  "%s= must be 0 to 86400 seconds (a fraction like 0.5 is allowed), not \"%s\"",
                  sec_options[i].name, text);
      return FALSE;
    }
    *(double *)((char *)o + sec_options[i].field) = v;
  }
  return TRUE;
}

gboolean options_parse(struct fuse_args *args, IfsOptions *o, GError **error) {
  memset(o, 0, sizeof *o);
  o->connections = 4;
  o->timeout = 60;
  o->cache_mem_mb = 16;
  o->msg_timeout = 60;
  o->dir_timeout = 1;
  o->list_max_age = -1; /* auto: see main.c */
  o->linger = 30;
  o->poll = 10;
  o->watch_idle = 600;
  o->spin_us = 50;
  if (fuse_opt_parse(args, o, options_table, options_proc) != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "invalid options");
    return FALSE;
  }
  if (o->show_help || o->show_version)
    return TRUE;
  if (o->password_in_argv) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "-o password= is refused (other users see the command line): use "
                "-o password_command=CMD or -o password_file=PATH");
    return FALSE;
  }
  if (o->secret_like != NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "unknown option %s= (its value is not shown); a password is given with "
                "-o password_command=CMD or -o password_file=PATH", o->secret_like);
    return FALSE;
  }
  if (o->cache_dir != NULL && o->cache_dir[0] == '\0') {
    /* It wrote the caches into the directory imapfuse was started in. */
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "cache_dir= needs a directory");
    return FALSE;
  }
  if (o->url == NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "missing server URL (imaps://USER@HOST[:PORT]); see --help");
    return FALSE;
  }
  if (o->tls != NULL && g_strcmp0(o->tls, "on") != 0 && g_strcmp0(o->tls, "off") != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "tls= takes on or off, not \"%s\"", o->tls);
    return FALSE;
  }
  /* list_max_age stays -1 when not given (1.5 x poll).  nan, -3 and
   * 1e300 were taken silently once (1e300 overflowed the conversion to
   * microseconds). */
  if (!options_take_ints(o, error) || !options_take_seconds(o, error))
    return FALSE;
  if (o->linger < 1) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "linger= must be at least 1 second (a name must answer the writer's own "
                "stat after close), not \"%s\"", o->sec_text[IFS_SEC_LINGER]);
    return FALSE;
  }
  if (o->cache != NULL && g_strcmp0(o->cache, "none") != 0 &&
      g_strcmp0(o->cache, "metadata") != 0 && g_strcmp0(o->cache, "full") != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "cache= takes none, metadata or full, not \"%s\"", o->cache);
    return FALSE;
  }
  guint64 ignored;
  if (o->cache_size != NULL && !options_parse_size(o->cache_size, &ignored)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "cache_size= takes a size like 2G, not \"%s\"",
                o->cache_size);
    return FALSE;
  }
  if (o->readahead != NULL && !options_parse_size(o->readahead, &ignored)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "readahead= takes a size like 8M, not \"%s\"",
                o->readahead);
    return FALSE;
  }
  guint64 max_message = 0;
  if (o->max_message != NULL &&
      (!options_parse_size(o->max_message, &max_message) || max_message == 0)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "max_message= takes a size like 64M (at least 1), not \"%s\"", o->max_message);
    return FALSE;
  }
  if (o->delete_mode != NULL && g_strcmp0(o->delete_mode, "expunge") != 0 &&
      g_strcmp0(o->delete_mode, "trash") != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "delete= takes expunge or trash, not \"%s\"",
                o->delete_mode);
    return FALSE;
  }
  if (o->dedup != NULL && g_strcmp0(o->dedup, "on") != 0 && g_strcmp0(o->dedup, "off") != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "dedup= takes on or off, not \"%s\"",
                o->dedup);
    return FALSE;
  }
  if (o->xattr != NULL && g_strcmp0(o->xattr, "on") != 0 && g_strcmp0(o->xattr, "off") != 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "xattr= takes on or off, not \"%s\"", o->xattr);
    return FALSE;
  }
  if (o->password_command != NULL && o->password_file != NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "give password_command= or password_file=, not both");
    return FALSE;
  }
  return TRUE;
}

void options_clear(IfsOptions *o) {
  g_free(o->url);
  g_free(o->password_command);
  g_free(o->password_file);
  g_free(o->cafile);
  g_free(o->tls);
  g_free(o->delete_mode);
  g_free(o->dedup);
  g_free(o->max_message);
  g_free(o->cache);
  g_free(o->cache_dir);
  g_free(o->secret_like);
  g_free(o->cache_size);
  g_free(o->readahead);
  g_free(o->xattr);
  for (int i = 0; i < IFS_N_INT; i++)
    g_free(o->int_text[i]);
  for (int i = 0; i < IFS_N_SEC; i++)
    g_free(o->sec_text[i]);
  memset(o, 0, sizeof *o);
}

void options_usage(const char *prog) {
  printf("usage: %s [options] imaps://USER@HOST[:PORT] MOUNTPOINT\n"
         "       %s [options] imap://USER@HOST[:PORT] MOUNTPOINT   (STARTTLS)\n"
         "\n"
         "imapfuse options:\n"
         "    -o password_command=CMD  run CMD with /bin/sh -c; its first output line is the password\n"
         "    -o password_file=PATH    first line of PATH is the password\n"
         "                             (neither: prompt on the terminal, without echo)\n"
         "    -o cafile=PATH           also trust the CA certificate(s) in PATH\n"
         "    -o tls=off               no TLS at all (warns unless HOST is a loopback address)\n"
         "    -o connections=N         IMAP connections to use (default 4)\n"
         "    -o timeout=SECS          give up on a silent server after SECS (default 60)\n"
         "    -o imap_debug            trace the IMAP exchange on stderr (credentials hidden)\n"
         "    -o ro                    read-only: changes fail with EROFS; reading costs fewer\n"
         "                             requests per file (for grep, rg and backups)\n"
         "    -o cache=MODE            none, metadata or full (default full): what is kept on disk\n"
         "    -o cache_dir=DIR         where (default $XDG_CACHE_HOME/imapfuse/USER@HOST:PORT)\n"
         "    -o cache_size=SIZE       disk bound for message bytes (default 1G; LRU eviction)\n"
         "    -o cache_mem=MB          memory for message bytes (default 16)\n"
         "    -o poll=SECS             check for other clients' changes every SECS (default 10; 0 off)\n"
         "    -o watch_idle=SECS       ... only in folders used within SECS (default 600; 0: all)\n"
         "    -o xattr=off             no extended attributes (user.imap.flags): ls -l asks\n"
         "                             no GETXATTR per file (faster listings)\n"
         "    -o readahead=SIZE        bytes fetched ahead of sequential readers (default 8M; 0 off)\n"
         "    -o readahead_batches=N   read-ahead batches fetched at once (default: 1 when\n"
         "                             the server answers within 2 ms, else connections-1)\n"
         "    -o delete=trash          rm moves messages to the \\Trash mailbox (default: expunge,\n"
         "                             which needs UIDPLUS)\n"
         "    -o dedup=off             cp/rsync into a mailbox append even if the same message\n"
         "                             (same bytes) is already there (default on)\n"
         "    -o max_message=SIZE      largest new file sent as a message (default: the server's\n"
         "                             APPENDLIMIT, else 256M); writing past it fails with EFBIG\n"
         "    -o linger=SECS           the name a new file was written under answers this long\n"
         "                             after its close and its writer's last work (default 30)\n"
         "    -o msg_timeout=SECS      kernel cache time for message entries (default 60)\n"
         "    -o dir_timeout=SECS      kernel cache time for directory entries (default 1)\n"
         "    -o list_max_age=SECS     reuse a mailbox listing this long on opendir (default 1.5 x poll)\n"
         "    -o spin=USECS            a FUSE worker whose requests come back to back polls for the\n"
         "                             next one this long before it sleeps (default 50, at most\n"
         "                             100000; 0 off)\n"
         "\n",
         prog, prog);
}

/* ---- URL ---- */

gboolean options_parse_url(const char *url, gboolean tls_off, ImapEndpoint *ep, GError **error) {
  const char *rest;
  guint16 port;
  if (g_str_has_prefix(url, "imaps://")) {
    rest = url + 8;
    port = 993;
    ep->tls = IMAP_TLS_IMPLICIT;
    if (tls_off) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  "tls=off contradicts imaps://; use imap://USER@HOST with tls=off");
      return FALSE;
    }
  } else if (g_str_has_prefix(url, "imap://")) {
    rest = url + 7;
    port = 143;
    ep->tls = tls_off ? IMAP_TLS_NONE : IMAP_TLS_STARTTLS;
  } else {
    /* Not what came before an '@': a password there ("imaps:/me:pw@h",
     * a typo) was printed back. */
    const char *at = strrchr(url, '@');
    g_autofree char *shown = at != NULL ? g_strconcat("...", at, NULL) : g_strdup(url);
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "server must be imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT], not \"%s\"%s",
                shown, at != NULL ? " (the part before @ is not shown)" : "");
    return FALSE;
  }
  g_autofree char *authority = g_strdup(rest);
  char *slash = strchr(authority, '/');
  if (slash != NULL) {
    if (slash[1] != '\0') {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "a path in the server URL is not supported");
      return FALSE;
    }
    *slash = '\0';
  }
  char *at = strrchr(authority, '@');
  if (at == NULL || at == authority) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "the server URL needs a user: %s://USER@HOST",
                ep->tls == IMAP_TLS_IMPLICIT ? "imaps" : "imap");
    return FALSE;
  }
  *at = '\0';
  const char *hostport = at + 1;
  if (strchr(authority, ':') != NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "passwords in the URL are refused (they would show in ps); use password_command=");
    return FALSE;
  }
  char *user = g_uri_unescape_string(authority, NULL);
  if (user == NULL || *user == '\0') {
    g_free(user);
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "bad user name in the server URL");
    return FALSE;
  }
  g_autofree char *host = NULL;
  const char *portstr = NULL;
  if (hostport[0] == '[') {
    const char *end = strchr(hostport, ']');
    if (end == NULL || (end[1] != '\0' && end[1] != ':')) {
      g_free(user);
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "bad IPv6 address in the server URL");
      return FALSE;
    }
    host = g_strndup(hostport + 1, (gsize)(end - hostport - 1));
    portstr = end[1] == ':' ? end + 2 : NULL;
  } else {
    const char *colon = strchr(hostport, ':');
    host = colon ? g_strndup(hostport, (gsize)(colon - hostport)) : g_strdup(hostport);
    portstr = colon ? colon + 1 : NULL;
  }
  if (portstr != NULL) {
    guint64 p;
    if (!g_ascii_string_to_unsigned(portstr, 10, 1, 65535, &p, NULL)) {
      g_free(user);
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "bad port \"%s\" in the server URL", portstr);
      return FALSE;
    }
    port = (guint16)p;
  }
  if (*host == '\0') {
    g_free(user);
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "the server URL has no host");
    return FALSE;
  }
  ep->user = user;
  ep->host = g_steal_pointer(&host);
  ep->port = port;
  return TRUE;
}

gboolean options_parse_size(const char *s, guint64 *out) {
  char *end = NULL;
  if (s == NULL || !g_ascii_isdigit(*s))
    return FALSE;
  guint64 v = g_ascii_strtoull(s, &end, 10);
  guint shift = 0;
  switch (g_ascii_toupper(*end)) {
  case '\0': break;
  case 'K': shift = 10; end++; break;
  case 'M': shift = 20; end++; break;
  case 'G': shift = 30; end++; break;
  case 'T': shift = 40; end++; break;
  default: return FALSE;
  }
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end != '\0' || (shift && v > (G_MAXUINT64 >> shift)))
    return FALSE;
  *out = v << shift;
  return TRUE;
}

gboolean options_host_is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (g_ascii_strcasecmp(host, "localhost") == 0)
    return TRUE;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6);
  return FALSE;
}

/* ---- password ---- */

static char *options_first_line(const char *text, gsize len) {
  gsize n = 0;
  while (n < len && text[n] != '\n' && text[n] != '\r')
    n++;
  return g_strndup(text, n);
}

static void options_wipe(char *s, gsize len) {
  if (s != NULL)
    memset(s, 0, len);
}

static char *options_prompt(const ImapEndpoint *ep, GError **error) {
  int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "no password: use -o password_command=CMD or -o password_file=PATH");
    return NULL;
  }
  struct termios old, quiet;
  gboolean restore = tcgetattr(fd, &old) == 0;
  if (restore) {
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    tcsetattr(fd, TCSAFLUSH, &quiet);
  }
  g_autofree char *prompt = g_strdup_printf("Password for %s@%s: ", ep->user, ep->host);
  ssize_t ignored = write(fd, prompt, strlen(prompt));
  char buf[1024];
  gsize len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    len += (gsize)n;
    if (memchr(buf, '\n', len) != NULL || len == sizeof buf - 1)
      break;
  }
  if (restore)
    tcsetattr(fd, TCSAFLUSH, &old);
  ignored = write(fd, "\n", 1);
  (void)ignored;
  close(fd);
  char *pw = options_first_line(buf, len);
  options_wipe(buf, sizeof buf);
  return pw;
}

static void options_own_group(gpointer unused) {
  (void)unused;
  setpgid(0, 0);
}

/* Runs password_command; its output (NULL with *error if it could not
 * run or took too long) and its wait status.  Without a terminal (fstab,
 * systemd, a script) nobody can answer a prompt it shows, so it gets
 * -o timeout seconds: one that never returned held the mount for good.
 * With a terminal it may be asking for a passphrase: no limit. */
#define OPTIONS_PW_MAX 4096 /* bytes of a password, at most */

static char *options_run_password_command(const IfsOptions *o, int *status, GError **error) {
  const char *argv[] = {"/bin/sh", "-c", o->password_command, NULL};
  GPid pid;
  int out_fd;
  g_autoptr(GError) local = NULL;
  int tty = open("/dev/tty", O_RDONLY | O_CLOEXEC);
  gboolean interactive = tty >= 0;
  if (tty >= 0)
    close(tty);
  /* Without a terminal, a group of its own: killing the shell alone left
   * its command holding our stderr. */
  if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                G_SPAWN_CHILD_INHERITS_STDIN | G_SPAWN_DO_NOT_REAP_CHILD,
                                interactive ? NULL : options_own_group, NULL, &pid, NULL,
                                &out_fd, NULL, &local)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "password_command could not run: %s",
                local->message);
    return NULL;
  }
  /* Stopped meanwhile (SIGTERM, SIGINT, SIGHUP), its group went on running
   * with nobody to end it: the signals wait while it runs, and one that
   * comes ends it first, then us as before (an exploratory test).  With a
   * terminal it is in our group, which ^C ends anyway. */
  sigset_t stops, before;
  sigemptyset(&stops);
  static const int stop_sigs[] = {SIGTERM, SIGINT, SIGHUP};
  for (gsize i = 0; i < G_N_ELEMENTS(stop_sigs); i++) {
    struct sigaction sa;
    /* One ignored (SIGINT of a script's background job) stays pending
     * when blocked, and must not stop us. */
    if (sigaction(stop_sigs[i], NULL, &sa) == 0 && sa.sa_handler != SIG_IGN)
      sigaddset(&stops, stop_sigs[i]);
  }
  if (!interactive)
    pthread_sigmask(SIG_BLOCK, &stops, &before);
  gint64 end = g_get_monotonic_time() + (gint64)o->timeout * G_USEC_PER_SEC;
  GString *out = g_string_new(NULL);
  /* Until it has exited and its output is read.  Not until end of file
   * alone: a helper it started in the background (an agent) may hold
   * the pipe for good after it printed the password and exited. */
  gboolean late = FALSE, eof = FALSE, exited = FALSE, stopped = FALSE;
  while (!(eof && exited)) {
    sigset_t pending;
    if (!interactive && sigpending(&pending) == 0)
      for (gsize i = 0; i < G_N_ELEMENTS(stop_sigs); i++)
        stopped |= sigismember(&stops, stop_sigs[i]) && sigismember(&pending, stop_sigs[i]);
    if (stopped)
      break;
    if (!exited) {
      pid_t r = waitpid(pid, status, WNOHANG);
      exited = r == pid || (r < 0 && errno != EINTR);
    }
    /* Exited with something printed: the rest is in the pipe already.
     * Exited with nothing yet: a helper it left may still print it. */
    gboolean done = exited && out->len > 0;
    gint64 left = end - g_get_monotonic_time();
    if (!done && !interactive && left <= 0) {
      late = TRUE;
      break;
    }
    if (eof) { /* its output closed: wait for it to exit */
      if (!exited)
        g_usleep(20 * 1000);
      continue;
    }
    int wait_ms = done ? 0 : interactive ? 100 : (int)MIN(left / 1000 + 1, 100);
    struct pollfd pfd = {.fd = out_fd, .events = POLLIN};
    int r = poll(&pfd, 1, wait_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0) {
      eof = done; /* nothing left to read */
      continue;
    }
    char buf[512];
    ssize_t n = r < 0 ? -1 : read(out_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      eof = TRUE;
      continue;
    }
    /* Its first line is all that is used: what follows is read and
     * dropped (`yes x` filled gigabytes of memory in seconds), and a first
     * line is cut at OPTIONS_PW_MAX (refused below). */
    if (out->len <= OPTIONS_PW_MAX && memchr(out->str, '\n', out->len) == NULL)
      g_string_append_len(out, buf, MIN((gsize)n, OPTIONS_PW_MAX + 1 - out->len));
    options_wipe(buf, sizeof buf);
  }
  close(out_fd);
  if (late || stopped) {
    kill(-pid, SIGKILL);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
      ;
    g_spawn_close_pid(pid);
    options_wipe(out->str, out->len);
    g_string_free(out, TRUE);
    if (!interactive)
      pthread_sigmask(SIG_SETMASK, &before, NULL); /* a stop pending ends us here */
    if (stopped) /* ... unless that signal is ignored */
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  "stopped by a signal while password_command ran");
    else
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  "password_command gave no password within %d s (timeout=; with no terminal "
                  "nobody can answer a prompt)", o->timeout);
    return NULL;
  }
  g_spawn_close_pid(pid);
  if (!interactive)
    pthread_sigmask(SIG_SETMASK, &before, NULL);
  return g_string_free(out, FALSE);
}

/* The start of a password file, enough for its first line: a file named by
 * mistake (a log, /dev/zero) was read whole into memory.  A FIFO or a
 * device is read up to OPTIONS_PW_MAX + 1 bytes or its first newline. */
static char *options_read_password_file(const char *path, gsize *len, GError **error) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "%s: %s", path,
                g_strerror(err));
    return NULL;
  }
  char *buf = g_malloc(OPTIONS_PW_MAX + 2);
  gsize n = 0;
  while (n < OPTIONS_PW_MAX + 1 && memchr(buf, '\n', n) == NULL) {
    ssize_t r = read(fd, buf + n, OPTIONS_PW_MAX + 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int err = errno;
      g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "%s: %s", path,
                  g_strerror(err));
      options_wipe(buf, n);
      g_free(buf);
      close(fd);
      return NULL;
    }
    if (r == 0)
      break;
    n += (gsize)r;
  }
  close(fd);
  buf[n] = '\0';
  *len = n;
  return buf;
}

char *options_get_password(const IfsOptions *o, const ImapEndpoint *ep, GError **error) {
  if (o->password_command != NULL) {
    int status = 0;
    char *out = options_run_password_command(o, &status, error);
    if (out == NULL)
      return NULL;
    if (!g_spawn_check_wait_status(status, NULL)) {
      options_wipe(out, strlen(out));
      g_free(out);
      if (WIFEXITED(status))
        g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "password_command failed (exit status %d)",
                    WEXITSTATUS(status));
      else
        g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "password_command killed by signal %d",
                    WTERMSIG(status));
      return NULL;
    }
    char *pw = options_first_line(out, strlen(out));
    options_wipe(out, strlen(out));
    g_free(out);
    if (*pw == '\0' || strlen(pw) > OPTIONS_PW_MAX) {
      gboolean empty = *pw == '\0';
      options_wipe(pw, strlen(pw));
      g_free(pw);
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  empty ? "password_command printed no password"
                        : "password_command's first line is longer than %d bytes",
                  OPTIONS_PW_MAX);
      return NULL;
    }
    return pw;
  }
  if (o->password_file != NULL) {
    gsize len = 0;
    g_autoptr(GError) local = NULL;
    char *text = options_read_password_file(o->password_file, &len, &local);
    if (text == NULL) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "password_file: %s", local->message);
      return NULL;
    }
    char *pw = options_first_line(text, len);
    options_wipe(text, len);
    g_free(text);
    /* An empty password cost a failed login (which servers and fail2ban
     * count) and said only that the login failed. */
    if (*pw == '\0' || strlen(pw) > OPTIONS_PW_MAX) {
      gboolean empty = *pw == '\0';
      options_wipe(pw, strlen(pw));
      g_free(pw);
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  empty ? "password_file %s: its first line is empty"
                        : "password_file %s: its first line is longer than %d bytes",
                  o->password_file, OPTIONS_PW_MAX);
      return NULL;
    }
    struct stat st;
    if (stat(o->password_file, &st) == 0 && (st.st_mode & 0077) != 0)
      fprintf(stderr,
              "imapfuse: warning: password_file %s can be read by other users (mode %04o): "
              "chmod 600 it\n",
              o->password_file, (unsigned)(st.st_mode & 07777));
    return pw;
  }
  return options_prompt(ep, error);
}
