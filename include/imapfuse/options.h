/* options.h - command line, the server URL and the password sources.
 *
 * Owns: the fuse_opt table for imapfuse's own -o options (everything else
 * is passed on to FUSE), parsing imap[s]://USER@HOST[:PORT], and getting
 * the password from password_command, password_file or a no-echo prompt;
 * never from argv.
 */
#pragma once

#include <fuse_lowlevel.h>
#include <glib.h>

#include "imapfuse/conn.h"

G_BEGIN_DECLS

/* Whole-number options, taken as text and converted by options_parse. */
enum {
  IFS_INT_CONNECTIONS,
  IFS_INT_TIMEOUT,
  IFS_INT_CACHE_MEM,
  IFS_INT_POLL,
  IFS_INT_WATCH_IDLE,
  IFS_INT_SPIN,
  IFS_INT_READAHEAD_BATCHES,
  IFS_INT_MAX_THREADS,
  IFS_N_INT
};

/* Options in seconds that take a fraction (0.5), taken as text too. */
enum { IFS_SEC_MSG_TIMEOUT, IFS_SEC_DIR_TIMEOUT, IFS_SEC_LIST_MAX_AGE, IFS_SEC_LINGER, IFS_N_SEC };

typedef struct {
  char *url;
  char *password_command;
  char *password_file;
  int password_in_argv; /* -o password=...: refused, never echoed */
  char *secret_like;    /* an unknown option named like a password (its name only) */
  char *cafile;
  char *tls;          /* "on" (default) or "off" */
  int connections;
  int timeout;
  int imap_debug;
  int cache_mem_mb;
  char *cache;        /* none | metadata | full (default) */
  char *cache_dir;    /* default $XDG_CACHE_HOME/imapfuse/<account> */
  char *cache_size;   /* disk bound for message bytes, e.g. 2G (default 1G) */
  char *xattr;        /* "on" (default) or "off" */
  int poll;           /* seconds between checks for others' changes; 0 off */
  int watch_idle;     /* poll only mailboxes used within this many seconds; 0 all */
  int spin_us;        /* loop.c: poll /dev/fuse this long before sleeping; 0 off */
  char *readahead;    /* bytes fetched ahead of sequential readers (default 8M) */
  int readahead_batches; /* read-ahead batches fetched at once; 0: by the round trip */
  char *delete_mode;  /* write path: expunge (default) | trash */
  char *dedup;        /* write path: on (default) | off */
  char *max_message;  /* write path: largest new message (default 256M) */
  double msg_timeout;
  double dir_timeout;
  double list_max_age;
  double linger;      /* write path: a written file's name answers this long (default 30) */
  int read_only;      /* -o ro (also passed on to FUSE) */
  int max_threads;    /* -o max_threads= (also FUSE's); 0: not given */
  char *int_text[IFS_N_INT]; /* the whole-number options as given */
  char *sec_text[IFS_N_SEC]; /* the options in seconds as given */
  int show_help;
  int show_version;
} IfsOptions;

/* Parses imapfuse options out of args (leaving FUSE's own and the
 * mountpoint in it).  FALSE with a message on bad input. */
gboolean options_parse(struct fuse_args *args, IfsOptions *o, GError **error);
void options_clear(IfsOptions *o);
void options_usage(const char *prog);

/* URL -> endpoint fields (host, port, tls mode, user).  tls_off turns
 * imap:// into plaintext. */
gboolean options_parse_url(const char *url, gboolean tls_off, ImapEndpoint *ep, GError **error);

/* The password by the configured source; caller wipes and frees it. */
char *options_get_password(const IfsOptions *o, const ImapEndpoint *ep, GError **error);

/* "512K", "64M", "2G", "1000" -> bytes; FALSE on junk. */
gboolean options_parse_size(const char *s, guint64 *out);

/* 127.0.0.0/8, ::1 and "localhost". */
gboolean options_host_is_loopback(const char *host);

G_END_DECLS
