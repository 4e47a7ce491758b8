/* fswrite.c - FUSE operations that change mail.
 *
 * Design note.  A mail store that can be changed with rm and mv must be
 * more careful than a mail client, so every operation here is built from
 * UID commands on a mailbox whose UIDVALIDITY has been checked, and
 * nothing ever sends a plain EXPUNGE or CLOSE (they would also remove
 * messages another client flagged \Deleted without expunging).
 *
 *   rm      UID FETCH (FLAGS) to see it exists, UID STORE +FLAGS.SILENT
 *           (\Deleted), UID EXPUNGE (UIDPLUS); without UIDPLUS refused,
 *           unless -o delete=trash (UID MOVE to \Trash; else COPY + delete).
 *   mv      UID MOVE; else UID COPY + the rm above (UIDPLUS); else refused.
 *   mkdir/rmdir/rename of directories: CREATE / DELETE (empty only) /
 *           RENAME, never on INBOX; then a fresh LIST.
 *   new files: bytes kept in a local staging file (staging.c) while open,
 *           sent with APPEND when the last writer closes.
 *   xattr user.imap.flags: UID STORE FLAGS.
 *
 * New files.  A file created on the mount is a FswFile with an inode of
 * its own: (directory id << 32) | serial, which neither a directory
 * (low half 0) nor a message (high half an epoch id) can be.  It keeps its
 * name until it is unlinked or has lingered (-o linger, 30 s) after its
 * last close and after its writer's last work on the mount (see
 * "lingering"), so the writer's follow-up calls (chmod, utimes, setxattr,
 * rename) find it.
 * When it is sent:
 *   - at the close() of the last writer (flush), so the APPEND error is
 *     the close() error, and at fsync();
 *   - never when the last close is a writer killed by a signal closing
 *     its files as it dies (the bytes may be part of the file: kept
 *     unsent at the release, unless a living writer it shared the file
 *     with closes it later),
 *     nor after a write that failed (EFBIG past max_message, ENOSPC),
 *     nor with a NUL byte in it (EINVAL at close: kept unsent);
 *   - except under rsync's temporary name (".NAME.XXXXXX"): rsync closes
 *     the file, then sets its mtime, then renames it, so the APPEND waits
 *     for the rename (whose error rsync reports) to honour rsync -t as the
 *     INTERNALDATE; if no rename comes while it lingers it is sent
 *     anyway.
 * After a send the FswFile is an alias of the message (UID from
 * APPENDUID) until it lingers out: renaming it across directories moves
 * the message, unlinking it removes the message, a later utimes or write
 * replaces it (APPEND the new one, then remove the old one: UIDPLUS).
 * Before appending, a message with exactly the same bytes (same size,
 * same Message-ID, not \Deleted, compared byte for byte) is looked for in
 * the mailbox; if there is one, nothing is appended and the file becomes
 * that message, so a second identical `rsync -a` changes nothing (the
 * names on the mount are UIDs, so rsync always resends).  -o dedup=off
 * turns this off.  If the server refuses the APPEND the bytes are kept in
 * the unsent directory (staging.c) and a one-line warning says where.
 *
 * Locks: w->lock protects the tables and each file's name, attributes and
 * counters, and is never held across I/O.  f->lock serialises the content
 * and the sending of one file and is held across I/O.  Order: f->lock ->
 * mailbox append lock -> w->lock (-> pool, dircache: leaves).
 */
#include "imapfuse/fswrite.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#include "fs-internal.h"
#include "imapfuse/cmd.h"
#include "imapfuse/errors.h"
#include "imapfuse/loop.h"
#include "imapfuse/names.h"
#include "imapfuse/staging.h"

#define FSW_LINGER_US (30 * G_USEC_PER_SEC) /* the default of -o linger */
/* Names kept past their own linger while their writer works keep their
 * local copies (and a descriptor each) too: at most this many, this many
 * bytes, this long; beyond, the oldest go as before. */
#define FSW_HOLD_MAX_FILES 10000u
#define FSW_HOLD_MAX_BYTES (512u * 1024 * 1024)
#define FSW_HOLD_MAX_US ((gint64)3600 * G_USEC_PER_SEC)
#define FSW_LIST_MAX_AGE_US (30 * G_USEC_PER_SEC)
#define FSW_DEDUP_MAX_CANDIDATES 64 /* at least; large messages: exactly */
#define FSW_DEDUP_BYTES (16 * 1024 * 1024) /* small ones: up to this many bytes of them */
#define FSW_DEDUP_SET 256 /* UIDs in one FETCH of candidates, at most */
#define FSW_COMPARE_CHUNK (1024 * 1024)
#define FSW_XATTR_FLAGS "user.imap.flags"
#define FSW_PF_EXITING 0x00000004 /* task flag (linux/sched.h): in do_exit() */

enum {
  FSW_WARN_RM_UIDPLUS = 1 << 0,
  FSW_WARN_NO_TRASH = 1 << 1,
  FSW_WARN_TRASH_UIDPLUS = 1 << 2,
  FSW_WARN_MV = 1 << 3,
};

typedef struct {
  gint refs;
  fuse_ino_t ino;
  GMutex lock; /* content and sending; held across I/O */

  /* under w->lock */
  DcNode *parent;
  char *name;      /* NULL once unlinked or lingered out */
  char *orig_name; /* name at creation (for the unsent copy) */
  guint handles, writers;
  guint unflushed; /* writable handles written since their last flush */
  gint64 deadline; /* monotonic us when it lingers out; 0: not closed */
  gboolean in_table;
  mode_t mode;
  uid_t uid;
  gid_t gid;
  struct timespec atime, mtime, ctime;
  gboolean mtime_set;
  guint64 size;

  /* under lock */
  StagingFile *data;
  char **flags;   /* user.imap.flags set before the send, or NULL */
  gboolean dirty; /* bytes, date or flags changed since the last send */
  /* sent, sent_node, sent_uv, sent_uid and owned: written under w->lock
   * too (_fsw_set_sent) */
  gboolean sent;
  DcNode *sent_node;
  guint32 sent_uv, sent_uid;
  gint64 sent_date; /* INTERNALDATE given (0: the server's now) */
  int error;        /* sticky errno after a failed send */
  GError *killed;   /* the last close was by a writer killed by a signal:
                     * refused at the next send or living close, unless
                     * written on first (by a parent it was shared with) */
  GArray *wrote;    /* pid_t: the processes that wrote since the last send */
  pid_t wrote_tid, wrote_pid; /* the last write's thread and its process */
  pid_t writer;                /* the first writing process (w->lock) */
  gboolean rewritten; /* bytes changed after a send */
  gboolean owned;     /* our APPEND made sent_uid (not an identical message
                       * found there): only then may we move or delete it */
  gboolean left;    /* the staging file holds the only copy: do not remove */
  char *hidden_key; /* under w->lock: the <UID>.eml name of its message is
                     * hidden (w->hidden) while f is named */
  gboolean own_op;  /* under w->lock: an rm or mv for f itself (or a
                     * replaced version of it) is under way: its message
                     * going is not the end of f's name (fswrite_message_gone) */
} FswFile;

typedef struct {
  FswFile *f;
  gboolean writable;
  gboolean flushed; /* no write since its last flush (under w->lock) */
  pid_t opener;     /* the process that opened it (0: not known) */
} FswHandle;

/* The name mv gave a message moved from another directory (GNU mv stats
 * it after the rename; the message is listed as its new <UID>.eml). */
typedef struct {
  DcNode *node;
  guint32 uv, uid;
  gint64 deadline; /* monotonic us */
  fuse_ino_t ino;  /* in moved_from: the old inode */
} FswMoved;

/* The flags of a message rm removed while a copy of it was being made as
 * NAME~, for a new file made under its name soon after: vim, when its
 * rename to a backup name is refused, saves by copying the message to
 * NAME~, removing NAME and writing NAME anew; the new version lost every
 * flag (an exploratory test).  sed -i's rename over the name keeps them
 * (_fsw_keep_replaced_flags). */
typedef struct {
  char **flags;
  gint64 deadline; /* monotonic us */
} FswRemoved;

static void fsw_removed_free(gpointer p) {
  FswRemoved *r = p;
  g_strfreev(r->flags);
  g_free(r);
}

#define FSW_REMOVED_MAX 1024 /* names remembered at most */

typedef struct {
  mode_t mode;
  gboolean has_mode;
  struct timespec atime, mtime;
  gboolean has_times;
  struct timespec since; /* its ctime when they were set: they hold until it moves */
} FswDirAttr;

struct FsWrite {
  Fs *fs;
  Dircache *dc;
  Notify *notify;
  Pool *pool;
  char *account;
  gboolean delete_trash, dedup;
  gint64 linger_us;             /* -o linger */
  guint64 max_message;          /* largest message a new file may become */
  char *max_message_from;       /* where that bound comes from (warnings) */
  Staging *staging;

  GMutex lock;
  GHashTable *by_ino;    /* &f->ino -> FswFile* (holds a ref) */
  GHashTable *by_name;   /* "dirid/name" -> FswFile* */
  GHashTable *hidden;    /* "dirid/uidvalidity/uid" -> FswFile* that hides it */
  GHashTable *moved;     /* "dirid/name" -> FswMoved* (fswrite_moved_lookup) */
  GHashTable *moved_from; /* &ino -> FswMoved*: the moved message's old inode */
  GHashTable *removed;   /* "dirid/name" -> FswRemoved*: flags of a message rm removed */
  GHashTable *active;    /* writer pid -> gint64* monotonic us it last worked (_fsw_active) */
  GHashTable *handles;   /* FswHandle* not released yet (freed at unmount) */
  GHashTable *dir_attrs; /* dir id -> FswDirAttr* */
  GHashTable *mbox_locks; /* mailbox -> GMutex* */
  GHashTable *trashed;    /* "mailbox/uv/uid" copied to the Trash and left \Deleted (no
                           * MOVE or UIDPLUS): an rm again does not copy it again */
  guint32 serial;
  gboolean closing;

  GMutex list_lock;
  GPtrArray *boxes; /* ImapMailboxInfo* from our own LIST */
  gint64 boxes_at;

  GThread *thread;
  GCond cond;
  gboolean stop;
  gint warned;
};

/* ---- small helpers ---- */

static FsWrite *fsw_of(fuse_req_t req) { return fs_writer(fuse_req_userdata(req)); }

static void fsw_warn_once(FsWrite *w, int bit, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void fsw_warn_once(FsWrite *w, int bit, const char *fmt, ...) {
  if (g_atomic_int_or(&w->warned, bit) & bit)
    return;
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_warning("%s", msg);
}

static int fsw_errno(const GError *error) { return ifs_errno_from_error(error); }

static gboolean fsw_is_error(const GError *e, IfsError code) {
  return e != NULL && e->domain == IFS_ERROR && e->code == (int)code;
}

static void fsw_reply_error(fuse_req_t req, const char *what, const GError *error) {
  int err = fsw_errno(error);
  /* A refusal with no response code the errno can carry (a bare EIO):
   * only the server's text says why (mkdir at the top of an account whose
   * folders must be under "INBOX."). */
  if (fsw_is_error(error, IFS_ERROR_NO) || fsw_is_error(error, IFS_ERROR_BAD)) {
    g_warning("%s: %s", what, error->message);
  } else if (ifs_error_is_connection(error)) {
    /* The server is away: said too (rm, mv, mkdir and setfattr failed
     * with EIO and nothing in the log; an exploratory test). */
    g_autofree char *text = g_strdup_printf("%s: %s", what, error->message);
    fs_warn(fsw_of(req)->fs, text);
  } else {
    g_debug("%s: %s (%s)", what, error->message, g_strerror(err));
  }
  fuse_reply_err(req, err);
}

/* An operation on a message of node under UIDVALIDITY uv failed because the
 * folder was made again: its listing goes, so the next lookup finds the new
 * messages (with poll=0 every rm, mv or setfattr of the name gave ESTALE
 * until an ls). */
static void fsw_note_stale(FsWrite *w, DcNode *node, guint32 uv, const GError *error) {
  if (fsw_is_error(error, IFS_ERROR_STALE))
    dircache_uidvalidity_changed(w->dc, node, uv);
}

/* For mkdir and a folder's rename: a name refused ([CANNOT], a delimiter
 * in it) or not allowed ([NOPERM]) is said with the server's reason, which
 * EINVAL or EACCES alone does not give ("mkdir a.b: Invalid argument";
 * Dovecot: "Character not allowed in mailbox name: '.'"). */
static void fsw_reply_name_error(fuse_req_t req, const char *what, const GError *error) {
  if (fsw_is_error(error, IFS_ERROR_INVALID) || fsw_is_error(error, IFS_ERROR_PERM))
    g_warning("%s: %s", what, error->message);
  fsw_reply_error(req, what, error);
}

gboolean fswrite_is_temp_name(const char *name) {
  gsize n = strlen(name);
  if (n < 9 || name[0] != '.' || name[n - 7] != '.')
    return FALSE;
  for (gsize i = n - 6; i < n; i++)
    if (!g_ascii_isalnum(name[i]))
      return FALSE;
  return TRUE;
}

gboolean fswrite_is_editor_scratch(const char *name) {
  gsize n = strlen(name);
  if (n >= 3 && name[0] == '#' && name[n - 1] == '#')
    return TRUE;
  /* emacs's lock .#NAME: refused as a symbolic link, it is made as a file
   * .#-emacsXXXXXX and renamed; it was a message while the buffer was
   * modified, and for good after a crash (an exploratory test). */
  if (n >= 3 && name[0] == '.' && name[1] == '#')
    return TRUE;
  /* ".swp" itself: vim's swap of a buffer without a name yet (it renames
   * the file when the buffer gets one) */
  return n >= 4 && name[0] == '.' && strncmp(name + n - 4, ".sw", 3) == 0 &&
         name[n - 1] >= 'a' && name[n - 1] <= 'p';
}

char *fswrite_message_id(const char *msg, gsize len) {
  const char *p = msg, *end = msg + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (gsize)(end - p));
    const char *line_end = eol != NULL ? eol : end;
    gsize ll = (gsize)(line_end - p);
    if (ll > 0 && p[ll - 1] == '\r')
      ll--;
    if (ll == 0)
      return NULL; /* end of the header */
    if (ll >= 11 && g_ascii_strncasecmp(p, "Message-ID:", 11) == 0) {
      g_autoptr(GString) v = g_string_new_len(p + 11, (gssize)(ll - 11));
      /* Folded continuation lines. */
      const char *q = eol != NULL ? eol + 1 : end;
      while (q < end && (*q == ' ' || *q == '\t')) {
        const char *e2 = memchr(q, '\n', (gsize)(end - q));
        const char *le = e2 != NULL ? e2 : end;
        gsize l2 = (gsize)(le - q);
        if (l2 > 0 && q[l2 - 1] == '\r')
          l2--;
        g_string_append_len(v, q, (gssize)l2);
        q = e2 != NULL ? e2 + 1 : end;
      }
      char *s = g_strstrip(g_string_free(g_steal_pointer(&v), FALSE));
      if (*s == '\0') {
        g_free(s);
        return NULL;
      }
      char *out = g_strdup(s);
      g_free(s);
      return out;
    }
    p = eol != NULL ? eol + 1 : end;
  }
  return NULL;
}

static int fsw_flag_cmp(gconstpointer a, gconstpointer b) {
  return g_ascii_strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* Canonical flag string as dircache keeps it (sorted, space separated). */
static char *fsw_flags_string(const char *const *flags) {
  g_autoptr(GPtrArray) v = g_ptr_array_new();
  for (guint i = 0; flags != NULL && flags[i] != NULL; i++)
    g_ptr_array_add(v, (gpointer)flags[i]);
  g_ptr_array_sort(v, fsw_flag_cmp);
  g_ptr_array_add(v, NULL);
  return g_strjoinv(" ", (char **)v->pdata);
}

/* What getfattr shows: system flags first (\Seen \Answered \Flagged
 * \Deleted \Draft), then keywords as the server has them. */
static char *fsw_flags_display(const char *flags) {
  static const char *const order[] = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                      "\\Draft"};
  g_auto(GStrv) v = g_strsplit(flags, " ", -1);
  g_autoptr(GString) out = g_string_new(NULL);
  for (gsize k = 0; k < G_N_ELEMENTS(order); k++)
    for (char **p = v; *p != NULL; p++)
      if (g_ascii_strcasecmp(*p, order[k]) == 0)
        g_string_append_printf(out, "%s%s", out->len ? " " : "", *p);
  for (char **p = v; *p != NULL; p++) {
    gboolean system = FALSE;
    for (gsize k = 0; k < G_N_ELEMENTS(order) && !system; k++)
      system = g_ascii_strcasecmp(*p, order[k]) == 0;
    if (**p != '\0' && !system)
      g_string_append_printf(out, "%s%s", out->len ? " " : "", *p);
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

/* ---- files being written ---- */

static FswFile *fsw_file_ref(FswFile *f) {
  g_atomic_int_inc(&f->refs);
  return f;
}

static void fsw_file_unref(FswFile *f) {
  if (f == NULL || !g_atomic_int_dec_and_test(&f->refs))
    return;
  if (f->left)
    staging_file_leave(f->data);
  else
    staging_file_free(f->data);
  g_strfreev(f->flags);
  g_clear_error(&f->killed);
  if (f->wrote != NULL)
    g_array_unref(f->wrote);
  g_free(f->name);
  g_free(f->orig_name);
  g_free(f->hidden_key);
  g_mutex_clear(&f->lock);
  g_free(f);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FswFile, fsw_file_unref)

static char *fsw_key(DcNode *parent, const char *name) {
  return g_strdup_printf("%u/%s", dcnode_id(parent), name);
}

/* Caller holds w->lock.  Removes f's name (not the file). */
static void _fsw_unname(FsWrite *w, FswFile *f) {
  if (f->name == NULL)
    return;
  g_autofree char *key = fsw_key(f->parent, f->name);
  if (g_hash_table_lookup(w->by_name, key) == f)
    g_hash_table_remove(w->by_name, key);
  g_clear_pointer(&f->name, g_free);
}

static char *fsw_hidden_key(DcNode *node, guint32 uv, guint32 uid) {
  return g_strdup_printf("%u/%u/%u", dcnode_id(node), uv, uid);
}

/* Caller holds w->lock.  The <UID>.eml name f hid shows again. */
static void _fsw_unhide(FsWrite *w, FswFile *f) {
  if (f->hidden_key == NULL)
    return;
  if (g_hash_table_lookup(w->hidden, f->hidden_key) == f)
    g_hash_table_remove(w->hidden, f->hidden_key);
  g_clear_pointer(&f->hidden_key, g_free);
}

/* Caller holds w->lock.  A message our APPEND made from a file written
 * under a name like another UID's ("10.eml" that became UID 1) goes by
 * that name while it lingers: its own <UID>.eml is hidden (not listed, not
 * found), so that a restore of <UID>.eml files does not find "1.eml" taken
 * (tar x then unlinked it, cp failed with EPERM), and a listing never shows
 * one message twice.  A copy's (dedup) pre-existing message keeps its name
 * (its rm gives the copy a message of its own: fsw_keep_copies). */
static void _fsw_rehide(FsWrite *w, FswFile *f) {
  guint32 named;
  gboolean want = f->owned && f->in_table && f->name != NULL && f->sent && f->sent_uid != 0 &&
                  f->sent_node == f->parent && names_parse_message_filename(f->name, &named) &&
                  named != f->sent_uid;
  if (!want) {
    _fsw_unhide(w, f);
  } else if (f->hidden_key == NULL) {
    f->hidden_key = fsw_hidden_key(f->sent_node, f->sent_uv, f->sent_uid);
    g_hash_table_replace(w->hidden, g_strdup(f->hidden_key), f);
  }
}

/* Caller holds w->lock.  Gives f the name (replacing whatever had it). */
static void _fsw_name(FsWrite *w, FswFile *f, DcNode *parent, const char *name) {
  _fsw_unname(w, f);
  char *key = fsw_key(parent, name);
  FswFile *old = g_hash_table_lookup(w->by_name, key);
  if (old != NULL && old != f) {
    g_clear_pointer(&old->name, g_free); /* replaced, as rename(2) does */
    _fsw_unhide(w, old);
  }
  g_hash_table_remove(w->moved, key); /* the name is the new file's now */
  f->parent = parent;
  f->name = g_strdup(name);
  g_hash_table_insert(w->by_name, key, f);
  _fsw_rehide(w, f);
}

/* Caller holds w->lock.  Forgets f entirely; returns the table's ref. */
static FswFile *_fsw_forget(FsWrite *w, FswFile *f) {
  _fsw_unname(w, f);
  _fsw_unhide(w, f);
  if (!f->in_table)
    return NULL;
  f->in_table = FALSE;
  g_hash_table_remove(w->by_ino, &f->ino);
  return f;
}

static FswFile *fsw_get(FsWrite *w, fuse_ino_t ino) {
  g_mutex_lock(&w->lock);
  FswFile *f = g_hash_table_lookup(w->by_ino, &ino);
  if (f != NULL)
    fsw_file_ref(f);
  g_mutex_unlock(&w->lock);
  return f;
}

static FswFile *fsw_find(FsWrite *w, DcNode *parent, const char *name) {
  g_autofree char *key = fsw_key(parent, name);
  g_mutex_lock(&w->lock);
  FswFile *f = g_hash_table_lookup(w->by_name, key);
  if (f != NULL)
    fsw_file_ref(f);
  g_mutex_unlock(&w->lock);
  return f;
}

/* Drop f now: the kernel forgets its name. */
static void fsw_drop(FsWrite *w, FswFile *f) {
  g_mutex_lock(&w->lock);
  g_autofree char *name = g_strdup(f->name);
  DcNode *parent = f->parent;
  FswFile *ref = _fsw_forget(w, f);
  gboolean closing = w->closing;
  g_mutex_unlock(&w->lock);
  if (name != NULL && !closing)
    notify_inval_entry(w->notify, fs_dir_ino(w->fs, parent), name);
  fsw_file_unref(ref);
}

static void fsw_file_attr(FsWrite *w, FswFile *f, struct stat *st) {
  memset(st, 0, sizeof *st);
  g_mutex_lock(&w->lock);
  st->st_ino = f->ino;
  st->st_mode = S_IFREG | (f->mode & 07777);
  st->st_nlink = f->name != NULL ? 1 : 0;
  st->st_uid = f->uid;
  st->st_gid = f->gid;
  st->st_size = (off_t)f->size;
  st->st_blksize = 4096;
  st->st_blocks = (blkcnt_t)((f->size + 511) / 512);
  st->st_atim = f->atime;
  st->st_mtim = f->mtime;
  st->st_ctim = f->ctime;
  g_mutex_unlock(&w->lock);
}

static void fsw_file_entry(FsWrite *w, FswFile *f, struct fuse_entry_param *e) {
  memset(e, 0, sizeof *e);
  e->ino = f->ino;
  fsw_file_attr(w, f, &e->attr);
  /* Names of new files are transient: the kernel asks again each time. */
  e->attr_timeout = e->entry_timeout = 0;
}

/* Caller holds f->lock. */
static gboolean _fsw_needs_send(FswFile *f) {
  return f->error == 0 && staging_file_size(f->data) > 0 && (!f->sent || f->dirty);
}

/* Caller holds f->lock.  Bytes below its size were never written: a
 * writer that fills a file's parts out of order, closing it in between,
 * is not done (restic restores a large file that way: fallocate, then a
 * part at a time as its packs come, each write between an open and a
 * close).  Not sent at a close then (it stored the first part as the
 * message, and refused the next with a hole of NULs); the close that
 * completes it sends it, and if none does, it is kept unsent. */
static gboolean _fsw_incomplete(FswFile *f) {
  guint64 at, len;
  return staging_file_hole(f->data, &at, &len);
}

/* ---- what the server calls things ---- */

static gboolean fsw_list_op(ImapConn *c, gpointer user, GError **error) {
  return imap_list(c, (GPtrArray **)user, error);
}

/* Our own LIST (delimiters and special-use attributes), cached briefly. */
static GPtrArray *fsw_boxes(FsWrite *w, gboolean force, GError **error) {
  g_mutex_lock(&w->list_lock);
  if (!force && w->boxes != NULL && g_get_monotonic_time() - w->boxes_at < FSW_LIST_MAX_AGE_US) {
    GPtrArray *b = g_ptr_array_ref(w->boxes);
    g_mutex_unlock(&w->list_lock);
    return b;
  }
  g_mutex_unlock(&w->list_lock);
  GPtrArray *list = NULL;
  gint64 at = g_get_monotonic_time();
  if (!pool_run(w->pool, NULL, TRUE, fsw_list_op, &list, error))
    return NULL;
  g_mutex_lock(&w->list_lock);
  if (w->boxes != NULL)
    g_ptr_array_unref(w->boxes);
  w->boxes = g_ptr_array_ref(list);
  w->boxes_at = at;
  g_mutex_unlock(&w->list_lock);
  return list;
}

static void fsw_boxes_stale(FsWrite *w) {
  g_mutex_lock(&w->list_lock);
  w->boxes_at = 0;
  g_mutex_unlock(&w->list_lock);
}

/* The hierarchy delimiter below node (the root: INBOX's). */
static char fsw_delim(FsWrite *w, DcNode *node, GError **error) {
  g_autoptr(GPtrArray) boxes = fsw_boxes(w, FALSE, error);
  if (boxes == NULL)
    return -1;
  const char *mailbox = dcnode_mailbox(node);
  char any = 0;
  for (guint i = 0; i < boxes->len; i++) {
    const ImapMailboxInfo *m = g_ptr_array_index(boxes, i);
    if (mailbox != NULL && g_str_equal(m->name, mailbox))
      return m->delim;
    if (any == 0 || g_str_equal(m->name, "INBOX"))
      any = m->delim != 0 ? m->delim : any;
  }
  return any;
}

/* The \Trash mailbox (RFC 6154); without SPECIAL-USE, a top-level "Trash". */
static char *fsw_trash(FsWrite *w, GError **error) {
  g_autoptr(GPtrArray) boxes = fsw_boxes(w, FALSE, error);
  if (boxes == NULL)
    return NULL;
  const char *named = NULL, *under_inbox = NULL;
  for (guint i = 0; i < boxes->len; i++) {
    const ImapMailboxInfo *m = g_ptr_array_index(boxes, i);
    if (m->attrs & IMAP_MBX_NOSELECT)
      continue;
    if (m->attrs & IMAP_MBX_TRASH)
      return g_strdup(m->name);
    if (g_ascii_strcasecmp(m->name, "Trash") == 0)
      named = m->name;
    /* Servers that keep every folder under INBOX (Courier's "INBOX."
     * namespace) and mark none with special-use. */
    if (m->delim != 0 && g_ascii_strncasecmp(m->name, "INBOX", 5) == 0 &&
        m->name[5] == m->delim && g_ascii_strcasecmp(m->name + 6, "Trash") == 0)
      under_inbox = m->name;
  }
  if (named != NULL || under_inbox != NULL)
    return g_strdup(named != NULL ? named : under_inbox);
  g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
              "delete=trash: the server has no mailbox marked \\Trash, and none named Trash "
              "at the top or under INBOX");
  return NULL;
}

/* The mount's path of a directory ("Archive/2024"), for the unsent copy. */
static char *fsw_display_dir(FsWrite *w, DcNode *node) {
  const char *mailbox = dcnode_mailbox(node);
  if (mailbox == NULL)
    return g_strdup("");
  g_autoptr(GError) ignored = NULL;
  char delim = fsw_delim(w, node, &ignored);
  g_auto(GStrv) parts = delim >= 0 ? names_split_mailbox(mailbox, delim, FALSE, NULL) : NULL;
  if (parts == NULL)
    return names_escape_component(mailbox);
  for (char **p = parts; *p != NULL; p++) {
    char *esc = names_escape_component(*p);
    g_free(*p);
    *p = esc;
  }
  return g_strjoinv("/", parts);
}

/* Server name of the child called dirname (as the user typed it) of node. */
static char *fsw_child_mailbox(FsWrite *w, DcNode *node, const char *dirname, GError **error) {
  g_autofree char *component = names_unescape_component(dirname, error);
  if (component == NULL)
    return NULL;
  char delim = fsw_delim(w, node, error);
  if (delim < 0)
    return NULL;
  if (delim != 0 && strchr(component, delim) != NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                "\"%s\" contains the server's hierarchy delimiter '%c'", component, delim);
    return NULL;
  }
  g_autoptr(GPtrArray) parts = g_ptr_array_new_with_free_func(g_free);
  if (dcnode_mailbox(node) != NULL) {
    g_auto(GStrv) up = names_split_mailbox(dcnode_mailbox(node), delim, FALSE, error);
    if (up == NULL)
      return NULL;
    for (char **p = up; *p != NULL; p++)
      g_ptr_array_add(parts, g_strdup(*p));
  }
  g_ptr_array_add(parts, g_strdup(component));
  g_ptr_array_add(parts, NULL);
  return names_join_mailbox((const char *const *)parts->pdata, delim, FALSE, error);
}

/* ---- messages ---- */

/* The message uid in node's listing (asking the server once if it is not
 * in the cached one, when ask). */
static gboolean fsw_find_msg_in(FsWrite *w, DcNode *node, guint32 uid, gboolean ask,
                                guint32 *uv, guint32 *epoch, DcMsg *out, GError **error) {
  for (int pass = 0; pass < (ask ? 2 : 1); pass++) {
    DcListing l;
    dircache_touch(w->dc, node);
    if (pass == 0 ? !fs_listing(w->fs, node, G_MAXINT64, &l, error)
                  : !dircache_listing(w->dc, node, 0, &l, error))
      return FALSE;
    const DcMsg *m = dc_listing_find(&l, uid);
    if (m != NULL) {
      *out = *m;
      *uv = l.uidvalidity;
      *epoch = l.epoch;
    }
    gboolean gone = m == NULL && fs_gone_for_good(w->fs, node, &l, uid);
    dc_listing_clear(&l);
    if (m != NULL)
      return TRUE;
    if (gone)
      break; /* expunged for good: no new listing will have it */
  }
  g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_FOUND, "no message UID %u in %s", uid,
              dcnode_mailbox(node));
  return FALSE;
}

static gboolean fsw_find_msg(FsWrite *w, DcNode *node, guint32 uid, guint32 *uv, guint32 *epoch,
                             DcMsg *out, GError **error) {
  return fsw_find_msg_in(w, node, uid, TRUE, uv, epoch, out, error);
}

/* Whether name is a message of node's cached listing.  For the checks of
 * a name the kernel has just looked up (a rename's RENAME_NOREPLACE, a
 * mkdir): that LOOKUP asked the server already if it was not listed, and
 * asking again cost mv a round trip per file. */
static gboolean fsw_listed_name(FsWrite *w, DcNode *node, const char *name) {
  guint32 uid;
  return names_parse_message_filename(name, &uid) && dcnode_selectable(node) &&
         fsw_find_msg_in(w, node, uid, FALSE, &(guint32){0}, &(guint32){0}, &(DcMsg){0}, NULL);
}

/* A UID learnt under UIDVALIDITY want, looked up under have. */
static gboolean fsw_check_uv(DcNode *node, guint32 have, guint32 want, GError **error) {
  if (have == want)
    return TRUE;
  g_set_error(error, IFS_ERROR, IFS_ERROR_STALE,
              "%s has a new UIDVALIDITY (%u, was %u): its UIDs changed", dcnode_mailbox(node),
              have, want);
  return FALSE;
}

/* The message behind a message inode. */
static gboolean fsw_msg_of_ino(FsWrite *w, fuse_ino_t ino, DcNode **node, guint32 *uv,
                               DcMsg *out, int *err) {
  guint32 epoch = (guint32)(ino >> 32), uid = (guint32)(ino & 0xffffffffu), v = 0;
  DcNode *n = dircache_epoch(w->dc, epoch, &v);
  if (n == NULL || uid == 0) {
    *err = ENOENT;
    return FALSE;
  }
  DcListing l;
  g_autoptr(GError) error = NULL;
  dircache_touch(w->dc, n);
  if (!fs_listing(w->fs, n, G_MAXINT64, &l, &error)) {
    *err = fsw_errno(error);
    return FALSE;
  }
  const DcMsg *m = l.epoch == epoch ? dc_listing_find(&l, uid) : NULL;
  *err = l.epoch != epoch ? ESTALE : ENOENT;
  if (m != NULL) {
    *out = *m;
    *node = n;
    *uv = v;
  }
  dc_listing_clear(&l);
  return m != NULL;
}

/* Selects mailbox with a view that is current: a connection that had it
 * selected already is sent a NOOP, since a session learns of other
 * sessions' appends and expunges only when it syncs (a UID FETCH of a
 * message another client just moved in finds nothing without it). */
static gboolean fsw_select_synced(ImapConn *c, const char *mailbox, guint32 *uv, GError **error) {
  if (g_strcmp0(imap_conn_selected(c), mailbox) == 0 && !imap_noop(c, error))
    return FALSE;
  return imap_ensure_selected(c, mailbox, uv, error);
}

/* For the read-only first steps of an operation (SELECT, a flags FETCH,
 * STATUS): a connection lost there leaves the server unchanged, so the
 * error says the operation never ran and pool_run sends it again on
 * another connection.  (A connection the server dropped, e.g. one that had
 * a mailbox selected that was just deleted, is found dead at its next
 * command: mv and rm failed with EIO.)  Returns FALSE. */
static gboolean fsw_unchanged(GError **error) {
  if (error != NULL && *error != NULL && ifs_error_is_connection(*error) &&
      !g_error_matches(*error, IFS_ERROR, IFS_ERROR_NOT_RUN)) {
    GError *e = g_error_new(IFS_ERROR, IFS_ERROR_NOT_RUN, "%s", (*error)->message);
    g_clear_error(error);
    *error = e;
  }
  return FALSE;
}

static gboolean fsw_select_checked(ImapConn *c, const char *mailbox, guint32 uv,
                                   GError **error) {
  guint32 have = 0;
  if (!fsw_select_synced(c, mailbox, &have, error))
    return FALSE;
  if (uv != 0 && have != uv) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_STALE,
                "%s has a new UIDVALIDITY (%u, was %u): its UIDs changed", mailbox, have, uv);
    return FALSE;
  }
  return TRUE;
}

static const char *const fsw_deleted[] = {"\\Deleted", NULL};

/* Selects mailbox for a step whose own pipelined FETCH checks the message
 * it works on.  Already selected (with uv): no round trip of its own, but
 * the session's view may be behind (*synced FALSE), so a step that finds
 * no message is asked again after a NOOP (fsw_step).  rm and mv took four
 * and three round trips each (NOOP, FETCH, STORE, EXPUNGE; NOOP, FETCH,
 * MOVE); now one while the folder stays selected.  A connection the
 * server closed while idle is found before anything is sent (conn.c), so
 * such a step is still retried on another. */
static gboolean fsw_select_for_step(ImapConn *c, const char *mailbox, guint32 uv,
                                    gboolean *synced, GError **error) {
  *synced = uv == 0 || g_strcmp0(imap_conn_selected(c), mailbox) != 0 ||
            imap_conn_selected_uidvalidity(c) != uv;
  return !*synced || fsw_select_checked(c, mailbox, uv, error);
}

/* Whether a change that failed with error may have reached the server:
 * its connection was lost after it went out (not NOT_RUN: conn_usable
 * found the connection closed before anything was sent). */
static gboolean fsw_may_have_run(const GError *error) {
  return ifs_error_is_connection(error) && !g_error_matches(error, IFS_ERROR, IFS_ERROR_NOT_RUN);
}

/* A change that is the same to run twice failed (FALSE returned): if its
 * connection was lost, it goes again on another (NOT_RUN for pool_run),
 * and *tried says the lost attempt may have done it. */
static gboolean fsw_lost(gboolean *tried, GError **error) {
  if (!ifs_error_is_connection(*error))
    return FALSE;
  *tried = *tried || fsw_may_have_run(*error);
  return fsw_unchanged(error);
}

typedef gboolean (*FswStep)(ImapConn *c, gpointer user, gboolean *found, GError **error);

/* Runs step; if it found no message on a view not synced, once more after
 * a NOOP.  IFS_ERROR_NOT_FOUND when the message is not there either way.
 * The steps are the same to run twice, and a lost connection leaves their
 * outcome unknown: such a step is sent again on another connection
 * (IFS_ERROR_NOT_RUN for pool_run, *tried set), where a message no longer
 * there was removed by the lost attempt: done.  (rm and mv failed with EIO
 * for a change the server had made.) */
static gboolean fsw_step(ImapConn *c, gboolean synced, guint32 uid, FswStep step, gpointer user,
                         gboolean *tried, GError **error) {
  gboolean found;
  if (!step(c, user, &found, error) ||
      (!found && !synced && (!imap_noop(c, error) || !step(c, user, &found, error))))
    return fsw_lost(tried, error);
  if (!found && !*tried) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_FOUND, "message UID %u no longer exists", uid);
    return FALSE;
  }
  return TRUE;
}

static gboolean fsw_expunge_step(ImapConn *c, gpointer user, gboolean *found, GError **error) {
  return imap_uid_delete(c, *(guint32 *)user, found, error);
}

/* Remove one message safely: it must exist, gets \Deleted, and only its
 * UID is expunged (imap_uid_delete).  Without UIDPLUS refused before
 * anything is touched: never a \Deleted left behind. */
static gboolean fsw_expunge_one(ImapConn *c, guint32 uid, gboolean synced, gboolean *tried,
                                GError **error) {
  return fsw_step(c, synced, uid, fsw_expunge_step, &uid, tried, error);
}

typedef struct {
  guint32 uid;
  const char *dst;
  ImapCopyUid *cu;
} FswMoveStep;

static gboolean fsw_move_step(ImapConn *c, gpointer user, gboolean *found, GError **error) {
  FswMoveStep *s = user;
  return imap_uid_move_one(c, s->uid, s->dst, s->cu, found, error);
}

/* Moves uid of the selected mailbox to dst: with MOVE (in one round trip
 * when the server has UIDPLUS too), else with COPY alone (*copied): the
 * caller then removes the original as it can.  copied_before: an earlier
 * call copied it and left it \Deleted; while it still has that flag, no
 * second copy (its file stays listed until a mail client expunges it, so
 * rm is run again, and each one added a copy to the Trash). */
static gboolean fsw_move_one(ImapConn *c, gboolean synced, guint32 uid, const char *dst,
                             gboolean copied_before, ImapCopyUid *cu, gboolean *copied,
                             gboolean *tried, GError **error) {
  gboolean move = imap_conn_has(c, IMAP_CAP_MOVE);
  if (move && imap_conn_has(c, IMAP_CAP_UIDPLUS)) {
    FswMoveStep s = {uid, dst, cu};
    return fsw_step(c, synced, uid, fsw_move_step, &s, tried, error);
  }
  g_autofree char *flags = NULL;
  if ((!synced && !imap_noop(c, error)) || !imap_fetch_flags(c, uid, &flags, error)) {
    if (*tried && fsw_is_error(*error, IFS_ERROR_NOT_FOUND)) {
      g_clear_error(error); /* moved by the UID MOVE whose connection was lost */
      return TRUE;
    }
    return fsw_unchanged(error);
  }
  char set[16];
  g_snprintf(set, sizeof set, "%u", uid);
  if (move) {
    /* Sent again if its connection is lost, as in fsw_step (not a COPY,
     * below: its copy may exist). */
    return imap_uid_move(c, set, dst, cu, error) || fsw_lost(tried, error);
  }
  if (copied_before && imap_flags_have(flags, "\\Deleted")) {
    g_debug("%u is in %s already (and flagged \\Deleted)", uid, dst);
    *copied = TRUE;
    return TRUE;
  }
  if (!imap_uid_copy(c, set, dst, cu, error)) {
    /* Not sent again: the copy may have been made. */
    if (fsw_may_have_run(*error))
      g_warning("the connection was lost while UID %u of %s was copied to %s: it may now be "
                "in both (%s)",
                uid, imap_conn_selected(c) != NULL ? imap_conn_selected(c) : "?", dst,
                (*error)->message);
    return FALSE;
  }
  *copied = TRUE;
  return TRUE;
}

typedef struct {
  const char *mailbox;
  guint32 uv, uid;
  const char *trash; /* NULL: expunge */
  /* out */
  ImapCopyUid cu;
  gboolean copied;       /* a copy is in the Trash (not made again on a retry) */
  gboolean copied_before; /* an earlier rm made one and left the original \Deleted */
  gboolean flagged_only; /* no MOVE or UIDPLUS: original left \Deleted */
  gboolean tried;        /* an attempt lost with its connection (fsw_step) */
  char *flags_after;
} FswDelete;

static gboolean fsw_delete_op(ImapConn *c, gpointer user, GError **error) {
  FswDelete *d = user;
  gboolean synced;
  if (!fsw_select_for_step(c, d->mailbox, d->uv, &synced, error))
    return fsw_unchanged(error);
  if (d->trash == NULL)
    return fsw_expunge_one(c, d->uid, synced, &d->tried, error);
  if (!d->copied) {
    if (!fsw_move_one(c, synced, d->uid, d->trash, d->copied_before, &d->cu, &d->copied,
                      &d->tried, error))
      return FALSE;
    if (!d->copied)
      return TRUE; /* moved */
  }
  if (imap_conn_has(c, IMAP_CAP_UIDPLUS))
    return fsw_expunge_one(c, d->uid, TRUE, &d->tried, error);
  d->flagged_only = TRUE;
  return imap_store_flags(c, d->uid, IMAP_STORE_ADD, fsw_deleted, FALSE, &d->flags_after, error);
}

/* Record that a message now exists in node (dst_uid 0: unknown). */
static void fsw_note_added(FsWrite *w, DcNode *node, guint32 uv, guint32 uid, const DcMsg *like) {
  if (node == NULL || w->closing)
    return;
  if (uid == 0 || uv == 0) {
    dircache_invalidate(w->dc, node);
    return;
  }
  DcMsg m = *like;
  m.uid = uid;
  m.seen = 0; /* new here: now (a file moved in gets a new ctime) */
  dircache_msg_added(w->dc, node, uv, &m);
}

static gboolean _fsw_send(FsWrite *w, FswFile *f, DcNode *node, const char *as, gboolean own,
                          GError **error);

/* Caller holds f->lock.  What f became on the server; also under w->lock,
 * so that fsw_keep_copies can look at every file without their locks. */
static void _fsw_set_sent(FsWrite *w, FswFile *f, DcNode *node, guint32 uv, guint32 uid,
                          gboolean owned) {
  g_mutex_lock(&w->lock);
  if (f->sent_node != node || f->sent_uv != uv || f->sent_uid != uid)
    _fsw_unhide(w, f);
  f->sent = TRUE;
  f->sent_node = node;
  f->sent_uv = uv;
  f->sent_uid = uid;
  f->owned = owned;
  _fsw_rehide(w, f);
  g_mutex_unlock(&w->lock);
}

/* A message: uid of node under UIDVALIDITY uv. */
typedef struct {
  DcNode *node;
  guint32 uv, uid;
} FswMsgRef;

/* Caller holds w->lock.  The files in the table that pred accepts (no
 * references taken). */
static GPtrArray *_fsw_matching(FsWrite *w, gboolean (*pred)(FswFile *f, gconstpointer data),
                                gconstpointer data) {
  GPtrArray *out = g_ptr_array_new();
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->by_ino);
  while (g_hash_table_iter_next(&it, NULL, &v))
    if (pred(v, data))
      g_ptr_array_add(out, v);
  return out;
}

/* Caller holds w->lock.  f is named and is message r (an FswMsgRef). */
static gboolean _fsw_named_for(FswFile *f, gconstpointer data) {
  const FswMsgRef *r = data;
  return f->in_table && f->name != NULL && f->sent && f->sent_node == r->node &&
         f->sent_uv == r->uv && f->sent_uid == r->uid;
}

/* Caller holds w->lock.  f is a new file that an identical message, r,
 * stands for (dedup), under its name. */
static gboolean _fsw_stands_for(FswFile *f, gconstpointer r) {
  return _fsw_named_for(f, r) && !f->owned;
}

/* Locks another file than the one whose lock the caller may hold: never
 * waits on it (two such callers would wait on each other), gives up after
 * 2 s. */
static gboolean fsw_lock_other(FswFile *f) {
  gint64 until = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
  while (!g_mutex_trylock(&f->lock)) {
    if (g_get_monotonic_time() > until)
      return FALSE;
    g_usleep(1000);
  }
  return TRUE;
}

/* Caller holds w->lock.  f is named like another UID's message ("10.eml")
 * and is message r: the name a restore gave it (see _fsw_rehide). */
static gboolean _fsw_uid_named_for(FswFile *f, gconstpointer data) {
  const FswMsgRef *r = data;
  guint32 named;
  return _fsw_named_for(f, r) && names_parse_message_filename(f->name, &named) &&
         named != r->uid;
}

/* Caller holds w->lock.  A file other than f is message r under a name
 * like another UID's (a name ls shows; other names of new files are not
 * listed, and a copy's is handled by fsw_keep_copies). */
static gboolean _fsw_other_name_for(FsWrite *w, FswFile *f, const FswMsgRef *r) {
  g_autoptr(GPtrArray) named = _fsw_matching(w, _fsw_uid_named_for, r);
  g_ptr_array_remove(named, f);
  return named->len > 0;
}

/* Message uid of node is about to go (rm, mv, a replaced version).  A new
 * file that it stands for (dedup: `cp 1.eml c.eml; rm 1.eml` in one
 * folder) would go with it: each such file still named gets a message of
 * its own first (an APPEND of its bytes), or, when a message with the
 * same bytes replaces it (same_uv/same_uid, not 0), stands for that one.
 * self: a file whose lock the caller holds. */
static gboolean fsw_keep_copies(FsWrite *w, FswFile *self, DcNode *node, guint32 uv,
                                guint32 uid, guint32 same_uv, guint32 same_uid,
                                GError **error) {
  FswMsgRef r = {node, uv, uid};
  g_mutex_lock(&w->lock);
  g_autoptr(GPtrArray) copies = _fsw_matching(w, _fsw_stands_for, &r);
  g_ptr_array_remove(copies, self);
  for (guint i = 0; i < copies->len; i++)
    fsw_file_ref(g_ptr_array_index(copies, i));
  g_ptr_array_set_free_func(copies, (GDestroyNotify)fsw_file_unref);
  g_mutex_unlock(&w->lock);
  for (guint i = 0; i < copies->len; i++) {
    FswFile *f = g_ptr_array_index(copies, i);
    if (!fsw_lock_other(f)) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_BUSY,
                  "\"%s\" is a copy of this message and is busy; the message was not removed",
                  f->orig_name);
      return FALSE;
    }
    g_mutex_lock(&w->lock);
    gboolean still = _fsw_stands_for(f, &r) && f->error == 0;
    g_mutex_unlock(&w->lock);
    gboolean ok = TRUE;
    if (still && same_uid != 0)
      _fsw_set_sent(w, f, node, same_uv, same_uid, FALSE);
    else if (still)
      ok = _fsw_send(w, f, node, NULL, TRUE, error);
    g_mutex_unlock(&f->lock);
    if (!ok) {
      g_prefix_error(error, "could not give its copy \"%s\" a message of its own, so the "
                            "message was not removed: ",
                     f->orig_name);
      return FALSE;
    }
  }
  return TRUE;
}

/* self (may be NULL) is removing or moving its own message: see own_op. */
static void fsw_own_op(FsWrite *w, FswFile *self, gboolean on) {
  if (self == NULL)
    return;
  g_mutex_lock(&w->lock);
  self->own_op = on;
  g_mutex_unlock(&w->lock);
}

/* rm of a message: expunge, or (delete=trash) move to the Trash. */
static gboolean fsw_remove_message(FsWrite *w, FswFile *self, DcNode *node, guint32 uv,
                                   guint32 uid, const DcMsg *m, gboolean force_expunge,
                                   GError **error) {
  FswDelete d = {.mailbox = dcnode_mailbox(node), .uv = uv, .uid = uid};
  if (!fsw_keep_copies(w, self, node, uv, uid, 0, 0, error))
    return FALSE;
  g_autofree char *trash = NULL;
  if (w->delete_trash && !force_expunge) {
    trash = fsw_trash(w, error);
    if (trash == NULL) {
      fsw_warn_once(w, FSW_WARN_NO_TRASH, "rm refused: %s", (*error)->message);
      return FALSE;
    }
    /* rm in the Trash itself: really remove (UIDPLUS), else refuse. */
    if (!g_str_equal(trash, d.mailbox))
      d.trash = trash;
  }
  g_autofree char *key = g_strdup_printf("%s/%u/%u", d.mailbox, uv, uid);
  g_mutex_lock(&w->lock);
  d.copied_before = d.trash != NULL && g_hash_table_contains(w->trashed, key);
  g_mutex_unlock(&w->lock);
  /* Set only here, cleared below: a refusal before (no Trash) left it
   * set, and an expunge elsewhere then never ended self's name. */
  fsw_own_op(w, self, TRUE);
  gboolean ok = pool_run(w->pool, d.mailbox, FALSE, fsw_delete_op, &d, error);
  /* A replacement's removal (force_expunge) is its caller's to report. */
  if (!ok && fsw_is_error(*error, IFS_ERROR_UNSUPPORTED) && !force_expunge) {
    if (d.trash == NULL && w->delete_trash)
      fsw_warn_once(w, FSW_WARN_TRASH_UIDPLUS,
                    "rm in the Trash mailbox refused: the server has no UIDPLUS, so one "
                    "message cannot be expunged without also expunging other clients' "
                    "\\Deleted messages");
    else if (d.trash == NULL)
      fsw_warn_once(w, FSW_WARN_RM_UIDPLUS,
                    "rm refused: the server has no UIDPLUS, so one message cannot be "
                    "expunged without also expunging other clients' \\Deleted messages; "
                    "mount with -o delete=trash to move deleted messages to the Trash");
  } else if (!ok && d.copied) {
    g_prefix_error(error, "copied UID %u of %s to %s, but could not remove it (now in both): ",
                   uid, d.mailbox, trash);
    g_warning("rm: %s", (*error)->message);
  }
  if (ok && d.trash != NULL) {
    DcNode *tn = dircache_find_mailbox(w->dc, d.trash);
    guint32 nu = imap_copyuid_lookup(&d.cu, uid);
    if (tn != NULL && m != NULL)
      fsw_note_added(w, tn, d.cu.uidvalidity, nu, m);
    else if (tn != NULL)
      dircache_invalidate(w->dc, tn);
  }
  if (ok && d.flagged_only) {
    g_mutex_lock(&w->lock);
    g_hash_table_add(w->trashed, g_steal_pointer(&key));
    g_mutex_unlock(&w->lock);
    if (d.flags_after != NULL)
      dircache_msg_flags(w->dc, node, uv, uid, d.flags_after);
    g_debug("rm: %s UID %u copied to %s and flagged \\Deleted (no MOVE or UIDPLUS: a mail "
            "client must expunge it)", d.mailbox, uid, d.trash);
  } else if (ok) {
    dircache_msgs_removed(w->dc, node, uv, &uid, 1);
  } else if (fsw_is_error(*error, IFS_ERROR_NOT_FOUND)) {
    dircache_invalidate(w->dc, node); /* gone, or the Trash is ([TRYCREATE]) */
  } else {
    fsw_note_stale(w, node, uv, *error);
  }
  fsw_own_op(w, self, FALSE);
  imap_copyuid_clear(&d.cu);
  g_free(d.flags_after);
  return ok;
}

typedef struct {
  const char *src, *dst;
  guint32 uv, uid;
  ImapCopyUid cu;
  gboolean copied; /* not made again on a retry */
  gboolean tried;  /* an attempt lost with its connection (fsw_step) */
} FswMove;

static gboolean fsw_move_op(ImapConn *c, gpointer user, GError **error) {
  FswMove *mv = user;
  gboolean synced;
  if (!fsw_select_for_step(c, mv->src, mv->uv, &synced, error))
    return fsw_unchanged(error);
  if (!imap_conn_has(c, IMAP_CAP_MOVE) && !imap_conn_has(c, IMAP_CAP_UIDPLUS)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                "the server has neither MOVE nor UIDPLUS, so the original could not be "
                "removed safely after a copy; nothing was changed");
    return FALSE;
  }
  if (!mv->copied && !fsw_move_one(c, synced, mv->uid, mv->dst, FALSE, &mv->cu, &mv->copied,
                                   &mv->tried, error))
    return FALSE;
  return !mv->copied || fsw_expunge_one(c, mv->uid, TRUE, &mv->tried, error);
}

/* Moves message uid of src to dst; *new_uid gets its UID there (0 when
 * the server does not say). */
static gboolean fsw_move_message(FsWrite *w, FswFile *self, DcNode *src, guint32 uv,
                                 const DcMsg *m, DcNode *dst, guint32 *dst_uv, guint32 *new_uid,
                                 GError **error) {
  FswMove mv = {.src = dcnode_mailbox(src), .dst = dcnode_mailbox(dst), .uv = uv, .uid = m->uid};
  *new_uid = *dst_uv = 0;
  if (!fsw_keep_copies(w, self, src, uv, m->uid, 0, 0, error))
    return FALSE;
  fsw_own_op(w, self, TRUE);
  gboolean ok = pool_run(w->pool, mv.src, FALSE, fsw_move_op, &mv, error);
  *new_uid = ok || mv.copied ? imap_copyuid_lookup(&mv.cu, m->uid) : 0;
  *dst_uv = mv.cu.uidvalidity;
  if (!ok && fsw_is_error(*error, IFS_ERROR_UNSUPPORTED)) {
    fsw_warn_once(w, FSW_WARN_MV, "mv between mailboxes refused: %s", (*error)->message);
  } else if (!ok && mv.copied) {
    g_prefix_error(error, "copied UID %u of %s to %s (as UID %u), but could not remove the "
                          "original, so the message is now in both: ",
                   m->uid, mv.src, mv.dst, *new_uid);
    g_warning("mv: %s", (*error)->message);
  }
  if (ok || mv.copied)
    fsw_note_added(w, dst, mv.cu.uidvalidity, *new_uid, m);
  /* Not found: the message, or the folder it was to go to ([TRYCREATE]):
   * the next use lists src again rather than drop a message that stayed
   * (a listing below UIDNEXT is not asked again: fs_gone_for_good). */
  if (ok)
    dircache_msgs_removed(w->dc, src, uv, &m->uid, 1);
  else if (fsw_is_error(*error, IFS_ERROR_NOT_FOUND))
    dircache_invalidate(w->dc, src);
  else
    fsw_note_stale(w, src, uv, *error);
  fsw_own_op(w, self, FALSE);
  imap_copyuid_clear(&mv.cu);
  return ok;
}

/* ---- sending a new file (APPEND) ---- */

typedef struct {
  const char *mailbox;
  GBytes *msg;
  GBytes *msg_kept; /* with the CRs msg dropped (a message already on a server
                     * may have them: a restored backup's), for dedup; or NULL */
  const char *const *flags;
  gint64 date;
  const char *message_id;
  gboolean dedup, replacing, same_date;
  guint32 exclude_uv, exclude_uid;
  gboolean searched; /* an earlier attempt's check found no identical message */
  /* out */
  guint32 uv, uid;
  gboolean dup;
  gboolean ours; /* dup, but stored by an earlier attempt whose reply was lost */
} FswAppend;

/* 1: uid holds exactly msg's bytes (a large message, compared in chunks);
 * 0: it does not (or is gone); -1: error. */
static int fsw_same_bytes(ImapConn *c, guint32 uid, GBytes *msg, GError **error) {
  gsize n;
  const guchar *data = g_bytes_get_data(msg, &n);
  for (gsize off = 0; off < n; off += FSW_COMPARE_CHUNK) {
    gsize len = MIN((gsize)FSW_COMPARE_CHUNK, n - off);
    GBytes *b = NULL;
    g_autoptr(GError) local = NULL;
    if (!imap_fetch_body(c, uid, off, len, &b, &local)) {
      if (fsw_is_error(local, IFS_ERROR_NOT_FOUND))
        return 0;
      g_propagate_error(error, g_steal_pointer(&local));
      return -1;
    }
    gsize bn;
    const guchar *bd = g_bytes_get_data(b, &bn);
    gboolean same = bn == len && memcmp(bd, data + off, len) == 0;
    g_bytes_unref(b);
    if (!same)
      return 0;
  }
  return 1;
}

typedef struct {
  GBytes *msg;
  GHashTable *asked; /* the UIDs of this FETCH: a body of any other is not one */
  guint32 found;
} FswSame;

static gboolean fsw_same_cb(guint32 uid, GBytes *body, gpointer user) {
  FswSame *s = user;
  if (!g_hash_table_contains(s->asked, GUINT_TO_POINTER(uid)) || !g_bytes_equal(body, s->msg))
    return TRUE;
  s->found = uid;
  return FALSE; /* found: no more comparing */
}

/* The candidates (UIDs, newest first) of a small message, fetched in sets
 * of 8, 32, 128, then FSW_DEDUP_SET UIDs, one FETCH each (a match ends
 * the check; the rest of a FETCH still comes): 1 and *found, 0, or -1. */
static int fsw_find_same_small(ImapConn *c, const char *mailbox, guint32 uv, GArray *cand,
                               GBytes *msg, guint32 *found, GError **error) {
  g_autoptr(GHashTable) asked = g_hash_table_new(NULL, NULL);
  FswSame s = {msg, asked, 0};
  for (guint i = 0, want = 8; i < cand->len && s.found == 0;
       want = MIN(want * 4, FSW_DEDUP_SET)) {
    g_autoptr(GString) set = g_string_new(NULL);
    g_hash_table_remove_all(asked);
    for (guint k = 0; k < want && i < cand->len; k++, i++) {
      guint32 u = g_array_index(cand, guint32, i);
      g_string_append_printf(set, "%s%u", set->len ? "," : "", u);
      g_hash_table_add(asked, GUINT_TO_POINTER(u));
    }
    char *sets[] = {set->str};
    if (!imap_fetch_bodies(c, mailbox, uv, sets, 1, fsw_same_cb, &s, error))
      return -1;
  }
  *found = s.found;
  return s.found != 0;
}

/* Looks in the selected mailbox (uv) for a message with msg's bytes: 1 and
 * a->uv, a->uid, a->dup set; 0: none; -1: error.  Newest first (a copy
 * made again after one cut short matches the last ones), and a small
 * message's candidates in few round trips, up to 16 MB of them (at least
 * 64): the first 64 only, one FETCH each, missed the copies of the newest
 * of 400 alerts of one size and no Message-ID, and a cp made them again
 * (an exploratory test). */
static int fsw_find_same(ImapConn *c, FswAppend *a, guint32 uv, GBytes *msg, GError **error) {
  g_autoptr(GArray) uids = g_array_new(FALSE, FALSE, sizeof(guint32));
  gsize size = g_bytes_get_size(msg);
  if (!imap_search_same_size(c, size, a->message_id, uids, error))
    return -1;
  g_autoptr(GArray) cand = g_array_new(FALSE, FALSE, sizeof(guint32));
  guint max = size <= FSW_COMPARE_CHUNK ? MAX(FSW_DEDUP_MAX_CANDIDATES, FSW_DEDUP_BYTES / size)
                                        : FSW_DEDUP_MAX_CANDIDATES;
  for (guint i = uids->len; i > 0 && cand->len < max; i--) {
    guint32 u = g_array_index(uids, guint32, i - 1);
    /* The earlier copy of this file counts only if the date is the same
     * (otherwise the point is to replace it). */
    if (!(uv == a->exclude_uv && u == a->exclude_uid && !a->same_date))
      g_array_append_val(cand, u);
  }
  guint32 u = 0;
  int same = 0;
  if (size <= FSW_COMPARE_CHUNK)
    same = fsw_find_same_small(c, a->mailbox, uv, cand, msg, &u, error);
  for (guint i = 0; size > FSW_COMPARE_CHUNK && same == 0 && i < cand->len; i++) {
    u = g_array_index(cand, guint32, i);
    same = fsw_same_bytes(c, u, msg, error);
  }
  if (same > 0) {
    a->uv = uv;
    a->uid = u;
    a->dup = TRUE;
  }
  return same;
}

static gboolean fsw_append_op(ImapConn *c, gpointer user, GError **error) {
  FswAppend *a = user;
  a->uv = a->uid = 0;
  a->dup = a->ours = FALSE;
  gboolean earlier = a->searched, looked = FALSE;
  gsize size = g_bytes_get_size(a->msg);
  if (a->dedup && size > 0) {
    /* The check is read-only: a connection lost in it changed nothing,
     * and must not use up the retry a lost APPEND reply needs. */
    guint32 uv = 0;
    gboolean look = fsw_select_synced(c, a->mailbox, &uv, error);
    /* Dovecot answers the SELECT of a mailbox another client deleted with
     * a plain NO, where the APPEND gets [TRYCREATE] (ENOENT, not EIO):
     * with nothing to look in, the APPEND says what is wrong.  Not after
     * an attempt whose reply was lost, which may have stored it. */
    if (!look && (earlier || !g_error_matches(*error, IFS_ERROR, IFS_ERROR_NO)))
      return fsw_unchanged(error);
    if (!look)
      g_clear_error(error);
    looked = look;
    for (int k = 0; look && k < 2 && !a->dup; k++) {
      GBytes *msg = k == 0 ? a->msg : a->msg_kept;
      int same = msg != NULL ? fsw_find_same(c, a, uv, msg, error) : 0;
      if (same < 0)
        return fsw_unchanged(error);
    }
  }
  gboolean unchanged = a->dup && a->uv == a->exclude_uv && a->uid == a->exclude_uid;
  if (a->replacing && !unchanged && !imap_conn_has(c, IMAP_CAP_UIDPLUS)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                "the message was already stored; replacing it needs UIDPLUS to remove the "
                "earlier copy safely");
    return FALSE;
  }
  /* Found now where an earlier attempt's check (on a synced view) found
   * nothing: that attempt's APPEND stored it, and its reply was lost.
   * The file made it, so rm of the file removes it.  (Taking it for a
   * message that was there before, rm left it, and rm of its UID name
   * gave the file a second APPEND.) */
  if (a->dup) {
    a->ours = earlier;
    return TRUE;
  }
  /* Only a check that ran makes a later find this file's own APPEND (a
   * reviewer: after an unchecked one whose reply was lost, a retry took a
   * message that was there before for the file's, and rm of the file
   * would have removed it). */
  if (looked)
    a->searched = TRUE;
  return imap_append(c, a->mailbox, a->flags, a->date, a->msg, &a->uv, &a->uid, error);
}

static GMutex *fsw_mailbox_lock(FsWrite *w, const char *mailbox) {
  g_mutex_lock(&w->lock);
  GMutex *m = g_hash_table_lookup(w->mbox_locks, mailbox);
  if (m == NULL) {
    m = g_new0(GMutex, 1);
    g_mutex_init(m);
    g_hash_table_insert(w->mbox_locks, g_strdup(mailbox), m);
  }
  g_mutex_unlock(&w->lock);
  return m;
}

static void fsw_mutex_free(gpointer p) {
  g_mutex_clear(p);
  g_free(p);
}

/* Caller holds f->lock.  The bytes could not be stored: keep them where
 * the user can find them, say where, and remember the error. */
static void _fsw_keep_unsent(FsWrite *w, FswFile *f, DcNode *node, const char *as,
                             const GError *why) {
  g_mutex_lock(&w->lock);
  g_autofree char *name = g_strdup(as != NULL ? as : f->name != NULL ? f->name : f->orig_name);
  g_mutex_unlock(&w->lock);
  g_autofree char *dir = fsw_display_dir(w, node);
  g_autoptr(GError) kerr = NULL;
  const char *mailbox = dcnode_mailbox(node) != NULL ? dcnode_mailbox(node) : "/";
  f->error = fsw_errno(why);
  if (staging_file_size(f->data) == 0) { /* refused before any byte came */
    g_warning("could not store \"%s\" in %s (%s); it had no bytes yet, none are kept", name,
              mailbox, why->message);
    return;
  }
  g_autofree char *path = staging_file_keep(f->data, dir, name, &kerr);
  if (path != NULL) {
    g_warning("could not store \"%s\" in %s (%s); its bytes are kept in %s", name, mailbox,
              why->message, path);
  } else {
    f->left = TRUE;
    g_warning("could not store \"%s\" in %s (%s) nor copy it (%s); its bytes stay in %s", name,
              mailbox, why->message, kerr != NULL ? kerr->message : "unknown error",
              staging_file_path(f->data));
  }
}

static GError *fsw_too_big_error(FsWrite *w, guint64 size) {
  return g_error_new(IFS_ERROR, IFS_ERROR_TOO_BIG,
                     "%" G_GUINT64_FORMAT " bytes is more than a message may have: %"
                     G_GUINT64_FORMAT " (%s)", size, w->max_message, w->max_message_from);
}

/* Caller holds f->lock.  f can no longer become the file its writer
 * meant (a write past max_message, a write the staging disk refused): the
 * call fails, and the file is never sent (what cp wrote up to there is
 * not the whole file, and must not be stored as if it were).  Its bytes
 * so far are kept like those of a refused message, with the one warning;
 * f->error makes the rest (and the close) fail at once.  Returns it. */
static int _fsw_refuse(FsWrite *w, FswFile *f, const GError *why) {
  g_mutex_lock(&w->lock);
  DcNode *node = f->parent;
  g_mutex_unlock(&w->lock);
  if (!f->sent || f->rewritten)
    _fsw_keep_unsent(w, f, node, NULL, why);
  else
    g_warning("\"%s\" is not changed on the server: %s", f->orig_name, why->message);
  f->error = fsw_errno(why);
  return f->error;
}

/* Caller holds w->lock.  No writer has f open, and it has a name that is
 * not a temporary one: a change to it now is a change to the stored
 * message. */
static gboolean _fsw_at_rest(const FswFile *f) {
  return f->writers == 0 && f->name != NULL && !fswrite_is_temp_name(f->name);
}

static gboolean fsw_at_rest(FsWrite *w, FswFile *f) {
  g_mutex_lock(&w->lock);
  gboolean r = _fsw_at_rest(f);
  g_mutex_unlock(&w->lock);
  return r;
}

/* Caller holds f->lock.  A stored file truncated to nothing: a message
 * cannot be empty, so the stored one stays as it was.  The close says so
 * (it returned 0 and the name read as empty while the server kept the
 * message), and f is refused, so that its name goes at the release and
 * the message is listed under its UID. */
static gboolean _fsw_emptied(FswFile *f) {
  return f->error == 0 && f->sent && f->rewritten && staging_file_size(f->data) == 0;
}

static int _fsw_refuse_emptied(FswFile *f) {
  g_warning("\"%s\" was emptied, but a message cannot be empty: the stored one is unchanged "
            "(rm removes it)",
            f->orig_name);
  f->error = EPERM;
  return f->error;
}

/* Caller holds f->lock.  A write or truncate would make f larger than a
 * message may be: EFBIG, and f is refused. */
static int _fsw_too_big(FsWrite *w, FswFile *f, guint64 size) {
  g_autoptr(GError) why = fsw_too_big_error(w, size);
  return _fsw_refuse(w, f, why);
}

static gboolean fsw_cached_msg(FsWrite *w, DcNode *node, guint32 uid, guint32 *uv,
                               guint32 *epoch, DcMsg *out);

/* Caller holds f->lock.  The INTERNALDATE the message f stands for has:
 * the one sent, else the server's (a copy of a message that was there, or
 * an APPEND without a date), as last listed; 0 if not known. */
static gint64 _fsw_stored_date(FsWrite *w, FswFile *f) {
  guint32 uv, epoch;
  DcMsg m;
  if (f->sent_date != 0 || !f->sent || f->sent_uid == 0)
    return f->sent_date;
  if (fsw_cached_msg(w, f->sent_node, f->sent_uid, &uv, &epoch, &m) && uv == f->sent_uv)
    return m.date;
  return 0;
}

/* Caller holds f->lock.  Sends f's bytes to node: finds an identical
 * message or APPENDs, then (if f was sent before) removes the earlier
 * copy.  On failure the bytes are kept (unsent directory) under the name
 * as (NULL: the file's name). */
static gboolean _fsw_send(FsWrite *w, FswFile *f, DcNode *node, const char *as, gboolean own,
                          GError **error) {
  GError *local = NULL;
  g_autoptr(GBytes) msg = NULL, msg_kept = NULL;
  FswAppend a = {.mailbox = dcnode_mailbox(node), .dedup = w->dedup && !own};
  g_autofree char *message_id = NULL, *fstr = NULL;
  gsize n = 0;
  if (a.mailbox == NULL || !dcnode_selectable(node)) {
    g_set_error(&local, IFS_ERROR, IFS_ERROR_REFUSED, "not a mailbox");
    goto fail;
  }
  /* A message this file made is replaced; an identical message that was
   * there already is not ours to remove: the file is a copy of it. */
  gboolean replacing = f->sent && f->owned;
  gboolean here = f->sent && f->sent_node == node;
  if (replacing && f->sent_uid == 0) {
    g_set_error(&local, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                "the earlier copy's UID is unknown, so it cannot be replaced");
    goto fail;
  }
  guint64 hole_at, hole_len;
  if (staging_file_hole(f->data, &hole_at, &hole_len)) {
    g_set_error(&local, IFS_ERROR, IFS_ERROR_INVALID,
                "it is incomplete: %" G_GUINT64_FORMAT " bytes from offset %" G_GUINT64_FORMAT
                " were never written (a copy or restore cut short?)",
                hole_len, hole_at);
    goto fail;
  }
  /* This reads the whole staged file under f->lock (and maps it): bounded
   * by max_message, which writes and truncates cannot go past. */
  gboolean crs_dropped = FALSE;
  msg = staging_file_message(f->data, FALSE, &crs_dropped, &local);
  if (msg == NULL)
    goto fail;
  const char *data = g_bytes_get_data(msg, &n);
  if (n > w->max_message) { /* bare LFs became CRLF */
    local = fsw_too_big_error(w, n);
    goto fail;
  }
  if (n == 0) { /* nothing but CRs, which the line-end conversion drops */
    g_set_error(&local, IFS_ERROR, IFS_ERROR_INVALID,
                "it holds nothing but CRs, and a message cannot be empty");
    goto fail;
  }
  /* A NUL cannot be sent in an IMAP literal: Dovecot stored each as 0x80,
   * so the message was not the file (and never matched it for dedup).
   * BINARY's literal8 is not used: refused, kept unsent. */
  if (memchr(data, '\0', n) != NULL) {
    g_set_error(&local, IFS_ERROR, IFS_ERROR_INVALID,
                "it contains a NUL byte, which a message sent by IMAP cannot carry");
    goto fail;
  }
  /* A copy of a message with such CRs (a backup's) is still that message. */
  if (crs_dropped && a.dedup) {
    msg_kept = staging_file_message(f->data, TRUE, NULL, &local);
    if (msg_kept == NULL)
      goto fail;
  }
  message_id = fswrite_message_id(data, n);
  g_mutex_lock(&w->lock);
  /* Not a date at or before the epoch: Dovecot read one as a date in 2096. */
  a.date = f->mtime_set && f->mtime.tv_sec > 0 ? f->mtime.tv_sec : 0;
  g_mutex_unlock(&w->lock);
  a.msg = msg;
  a.msg_kept = msg_kept;
  a.flags = (const char *const *)f->flags;
  a.message_id = message_id;
  a.replacing = replacing;
  a.exclude_uv = here ? f->sent_uv : 0;
  a.exclude_uid = here ? f->sent_uid : 0;
  /* Compared with the date the message has: cp of a message's copy
   * (which stands for the message that was there, date 0 sent), touch -d
   * with its own date, cp again stored it a second time. */
  a.same_date = here && a.date == _fsw_stored_date(w, f);
  GMutex *ml = fsw_mailbox_lock(w, a.mailbox);
  g_mutex_lock(ml);
  gboolean ok;
  /* With dedup the operation may be retried on a new connection: the
   * search then finds the message if the lost APPEND did store it. */
  ok = pool_run(w->pool, a.mailbox, a.dedup, fsw_append_op, &a, &local);
  g_mutex_unlock(ml);
  if (!ok)
    goto fail;

  fstr = fsw_flags_string(a.flags);
  DcMsg m = {.flagset = dircache_intern_flags(w->dc, fstr),
             .size = n,
             .date = a.date != 0 ? a.date : g_get_real_time() / G_USEC_PER_SEC};
  gboolean made = !a.dup || a.ours; /* the message is this file's */
  if (made)
    fsw_note_added(w, node, a.uv, a.uid, &m);
  g_debug("stored \"%s\" in %s as UID %u%s", f->orig_name, a.mailbox, a.uid,
          a.ours  ? " (by the attempt whose reply was lost)"
          : a.dup ? " (identical message already there)"
                  : "");
  gboolean same = here && a.uv == f->sent_uv && a.uid == f->sent_uid;
  if (replacing && !same) {
    g_autoptr(GError) derr = NULL;
    /* Only the date or flags changed: copies of the old message have
     * their bytes in the new one. */
    if (here && !f->rewritten)
      fsw_keep_copies(w, f, node, f->sent_uv, f->sent_uid, a.uv, a.uid, NULL);
    if (!fsw_remove_message(w, f, f->sent_node, f->sent_uv, f->sent_uid, NULL, TRUE, &derr) &&
        !fsw_is_error(derr, IFS_ERROR_NOT_FOUND)) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_FAILED,
                  "stored the new version as UID %u in %s, but could not remove the old one "
                  "(UID %u): both exist (%s)",
                  a.uid, a.mailbox, f->sent_uid, derr->message);
      g_warning("%s", (*error)->message);
      _fsw_set_sent(w, f, node, a.uv, a.uid, made);
      staging_file_stored(f->data);
      f->dirty = FALSE;
      return FALSE;
    }
  }
  _fsw_set_sent(w, f, node, a.uv, a.uid, same ? f->owned : made);
  staging_file_stored(f->data);
  f->sent_date = a.date;
  f->dirty = FALSE;
  f->rewritten = FALSE;
  g_array_set_size(f->wrote, 0);
  return TRUE;

fail:
  /* A refused replacement of an unchanged message loses nothing. */
  if (!f->sent || f->rewritten || !fsw_is_error(local, IFS_ERROR_UNSUPPORTED))
    _fsw_keep_unsent(w, f, node, as, local);
  g_propagate_error(error, local);
  return FALSE;
}

/* Caller holds f->lock.  Sends if needed, to where the file is now. */
static int _fsw_send_now(FsWrite *w, FswFile *f) {
  if (f->error != 0)
    return f->error;
  if (!_fsw_needs_send(f))
    return 0;
  if (f->killed != NULL)
    return _fsw_refuse(w, f, f->killed);
  g_mutex_lock(&w->lock);
  DcNode *node = f->parent;
  g_mutex_unlock(&w->lock);
  g_autoptr(GError) error = NULL;
  if (!_fsw_send(w, f, node, NULL, FALSE, &error))
    return fsw_errno(error);
  return 0;
}

/* ---- lingering ----
 * A written file's name lingers a while after its last close, and also
 * while the process that wrote it goes on writing new files or setting
 * their times, modes or flags, and as long again after: restic restores
 * all the data first and then sets each file's times and xattrs by name.  A
 * restore of more than 30 s found the names of its first files gone by
 * then, and N.eml then named the message with UID N: its flags went onto
 * another restored message, and its open for more data failed (EPERM).
 * Holding every name while anything at all was written on the mount (the
 * first fix) hid, in listings, the messages whose UID names the names of
 * an rsync finished long before stood for, as long as another rsync
 * wrote elsewhere: a tar of the mount missed 226 of 5,000 messages of
 * such a folder (an exploratory test).  Bounded (FSW_HOLD_MAX_*): a name
 * kept so keeps its local copy. */

/* Caller holds w->lock.  Process pid (a new file's writer) is at work on
 * the mount now (fsw_thread holds its names while it is). */
static void _fsw_active(FsWrite *w, pid_t pid) {
  if (pid <= 0)
    return;
  gint64 now = g_get_monotonic_time();
  if (g_hash_table_size(w->active) >= 4096) { /* the idle ones go */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, w->active);
    while (g_hash_table_iter_next(&it, NULL, &v))
      if (*(gint64 *)v + w->linger_us <= now)
        g_hash_table_iter_remove(&it);
  }
  gint64 *at = g_hash_table_lookup(w->active, GINT_TO_POINTER(pid));
  if (at == NULL) {
    at = g_new(gint64, 1);
    g_hash_table_insert(w->active, GINT_TO_POINTER(pid), at);
  }
  *at = now;
}

/* Someone works on written file f (its times, mode, flags, name; restic's
 * last pass): its writer counts as at work. */
static void fsw_touched(FsWrite *w, FswFile *f) {
  g_mutex_lock(&w->lock);
  _fsw_active(w, f->writer);
  g_mutex_unlock(&w->lock);
}

static int fsw_deadline_cmp(gconstpointer a, gconstpointer b) {
  gint64 x = (*(FswFile *const *)a)->deadline, y = (*(FswFile *const *)b)->deadline;
  return (x > y) - (x < y);
}

static gpointer fsw_thread(gpointer data) {
  FsWrite *w = data;
  g_mutex_lock(&w->lock);
  while (!w->stop) {
    gint64 now = g_get_monotonic_time(), next = G_MAXINT64;
    g_autoptr(GPtrArray) due = g_ptr_array_new();
    g_autoptr(GPtrArray) held = g_ptr_array_new(); /* past their own linger */
    guint64 held_bytes = 0;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, w->by_ino);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
      FswFile *f = v;
      if (f->handles > 0 || f->deadline == 0)
        continue;
      const gint64 *at = g_hash_table_lookup(w->active, GINT_TO_POINTER(f->writer));
      gint64 busy_until = at != NULL ? *at + w->linger_us : 0;
      if (f->deadline > now) {
        next = MIN(next, f->deadline);
      } else if (f->deadline != 1 /* dropped at once */ && busy_until > now &&
                 now - f->deadline < FSW_HOLD_MAX_US) {
        g_ptr_array_add(held, f);
        held_bytes += f->size;
        next = MIN(next, MIN(busy_until, f->deadline + FSW_HOLD_MAX_US));
      } else {
        f->deadline = 0;
        g_ptr_array_add(due, fsw_file_ref(f));
      }
    }
    if (held->len > FSW_HOLD_MAX_FILES || held_bytes > FSW_HOLD_MAX_BYTES) {
      g_ptr_array_sort(held, fsw_deadline_cmp);
      for (guint i = 0; i < held->len && (held->len - i > FSW_HOLD_MAX_FILES ||
                                          held_bytes > FSW_HOLD_MAX_BYTES); i++) {
        FswFile *f = g_ptr_array_index(held, i);
        held_bytes -= f->size;
        f->deadline = 0;
        g_ptr_array_add(due, fsw_file_ref(f));
      }
    }
    if (due->len == 0) {
      if (next == G_MAXINT64)
        g_cond_wait(&w->cond, &w->lock);
      else
        g_cond_wait_until(&w->cond, &w->lock, next);
      continue;
    }
    g_mutex_unlock(&w->lock);
    for (guint i = 0; i < due->len; i++) {
      FswFile *f = g_ptr_array_index(due, i);
      g_mutex_lock(&f->lock);
      g_mutex_lock(&w->lock);
      gboolean busy = f->handles > 0 || f->deadline != 0;
      gboolean named = f->name != NULL;
      g_mutex_unlock(&w->lock);
      if (!busy) {
        /* A closed file under a temporary name that was never renamed:
         * it was written completely, so send it rather than lose it. */
        if (named && _fsw_needs_send(f)) {
          int err = _fsw_send_now(w, f);
          if (err == 0)
            g_debug("sent \"%s\", which was not renamed", f->orig_name);
        }
        fsw_drop(w, f);
      }
      g_mutex_unlock(&f->lock);
      fsw_file_unref(f);
    }
    g_mutex_lock(&w->lock);
  }
  g_mutex_unlock(&w->lock);
  return NULL;
}

/* Caller holds w->lock. */
static void _fsw_linger(FsWrite *w, FswFile *f) {
  f->deadline = g_get_monotonic_time() + w->linger_us;
  g_cond_signal(&w->cond);
}

/* ---- setup ---- */

FsWrite *fswrite_new(Fs *fs, Dircache *dc, Notify *notify, const FsWriteOptions *opts) {
  FsWrite *w = g_new0(FsWrite, 1);
  w->fs = fs;
  w->dc = dc;
  w->notify = notify;
  w->pool = opts->pool;
  w->account = g_strdup(opts->account != NULL ? opts->account : "default");
  w->delete_trash = opts->delete_trash;
  w->dedup = !opts->no_dedup;
  w->linger_us = opts->linger_us > 0 ? opts->linger_us : FSW_LINGER_US;
  w->max_message = opts->max_message != 0 ? opts->max_message : G_MAXUINT64;
  w->max_message_from = g_strdup(opts->max_message_from != NULL ? opts->max_message_from : "");
  w->staging = staging_new(w->account);
  staging_recover(w->staging);
  g_mutex_init(&w->lock);
  g_mutex_init(&w->list_lock);
  g_cond_init(&w->cond);
  w->by_ino = g_hash_table_new(g_int64_hash, g_int64_equal);
  w->by_name = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  w->hidden = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  w->moved = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  w->moved_from = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
  w->removed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, fsw_removed_free);
  w->active = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  w->handles = g_hash_table_new(NULL, NULL);
  w->dir_attrs = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  w->mbox_locks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, fsw_mutex_free);
  w->trashed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  return w;
}

void fswrite_start(FsWrite *w) {
  if (w->thread == NULL)
    w->thread = g_thread_new("imapfuse-write", fsw_thread, w);
}

void fswrite_free(FsWrite *w) {
  if (w == NULL)
    return;
  g_mutex_lock(&w->lock);
  w->stop = TRUE;
  w->closing = TRUE; /* the kernel and the notify thread are gone */
  g_cond_broadcast(&w->cond);
  g_mutex_unlock(&w->lock);
  if (w->thread != NULL)
    g_thread_join(w->thread);

  g_autoptr(GPtrArray) all = g_ptr_array_new();
  g_mutex_lock(&w->lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->by_ino);
  while (g_hash_table_iter_next(&it, NULL, &v))
    g_ptr_array_add(all, fsw_file_ref(v));
  g_mutex_unlock(&w->lock);
  for (guint i = 0; i < all->len; i++) {
    FswFile *f = g_ptr_array_index(all, i);
    g_mutex_lock(&f->lock);
    g_mutex_lock(&w->lock);
    gboolean open = f->writers > 0, named = f->name != NULL, held = f->handles > 0;
    DcNode *node = f->parent;
    g_mutex_unlock(&w->lock);
    if (named && _fsw_needs_send(f)) {
      if (open) {
        /* Still being written at unmount: it may be incomplete. */
        GError *why = g_error_new(IFS_ERROR, IFS_ERROR_CANCELLED,
                                  "unmounted while it was still open for writing");
        _fsw_keep_unsent(w, f, node, NULL, why);
        g_error_free(why);
      } else {
        _fsw_send_now(w, f);
      }
    }
    /* A file some process still holds open is never released: its bytes
     * are in the unsent directory or on the server by now. */
    if (held && !f->left)
      staging_file_remove(f->data);
    g_mutex_lock(&w->lock);
    FswFile *ref = _fsw_forget(w, f);
    g_mutex_unlock(&w->lock);
    g_mutex_unlock(&f->lock);
    fsw_file_unref(ref);
    fsw_file_unref(f);
  }
  g_hash_table_unref(w->by_ino);
  g_hash_table_unref(w->by_name);
  g_hash_table_unref(w->hidden);
  g_hash_table_unref(w->moved);
  g_hash_table_unref(w->moved_from);
  g_hash_table_unref(w->removed);
  g_hash_table_unref(w->active);
  /* A release the kernel had not sent when the session ended (a close
   * just before the unmount) never comes: free those handles here. */
  g_hash_table_iter_init(&it, w->handles);
  while (g_hash_table_iter_next(&it, &v, NULL)) {
    FswHandle *h = v;
    fsw_file_unref(h->f);
    g_free(h);
  }
  g_hash_table_unref(w->handles);
  g_hash_table_unref(w->dir_attrs);
  g_hash_table_unref(w->mbox_locks);
  g_hash_table_unref(w->trashed);
  if (w->boxes != NULL)
    g_ptr_array_unref(w->boxes);
  staging_free(w->staging);
  g_mutex_clear(&w->lock);
  g_mutex_clear(&w->list_lock);
  g_cond_clear(&w->cond);
  g_free(w->account);
  g_free(w->max_message_from);
  g_free(w);
}

/* ---- hooks for fs.c ---- */

gboolean fswrite_lookup(FsWrite *w, DcNode *parent, const char *name,
                        struct fuse_entry_param *e) {
  g_autoptr(FswFile) f = fsw_find(w, parent, name);
  if (f == NULL)
    return FALSE;
  fsw_file_entry(w, f, e);
  return TRUE;
}

typedef struct {
  DcNode *parent;
  const DcListing *listing;
} FswExtra;

static gboolean _fsw_extra_name(FswFile *f, gconstpointer data) {
  const FswExtra *x = data;
  guint32 uid;
  return f->in_table && f->name != NULL && f->parent == x->parent &&
         names_parse_message_filename(f->name, &uid) &&
         (x->listing->msgs == NULL || dc_listing_find(x->listing, uid) == NULL);
}

char **fswrite_extra_names(FsWrite *w, DcNode *parent, const DcListing *listing) {
  FswExtra x = {parent, listing};
  g_mutex_lock(&w->lock);
  g_autoptr(GPtrArray) files = _fsw_matching(w, _fsw_extra_name, &x);
  char **names = NULL;
  if (files->len > 0) {
    names = g_new0(char *, files->len + 1);
    for (guint i = 0; i < files->len; i++)
      names[i] = g_strdup(((FswFile *)g_ptr_array_index(files, i))->name);
  }
  g_mutex_unlock(&w->lock);
  return names;
}

int fswrite_dirent(FsWrite *w, DcNode *parent, guint32 uv, guint32 uid, const char *name,
                   struct fuse_entry_param *e) {
  g_mutex_lock(&w->lock);
  gboolean none = g_hash_table_size(w->hidden) == 0 && g_hash_table_size(w->by_name) == 0;
  g_mutex_unlock(&w->lock);
  if (none) /* a listing of 10,000 messages asks 10,000 times */
    return 0;
  if (fswrite_lookup(w, parent, name, e))
    return 1;
  g_autofree char *key = fsw_hidden_key(parent, uv, uid);
  g_mutex_lock(&w->lock);
  gboolean hidden = g_hash_table_contains(w->hidden, key);
  g_mutex_unlock(&w->lock);
  return hidden ? -1 : 0;
}

/* Message uid of node, in the listing we have (no server round trip). */
static gboolean fsw_cached_msg(FsWrite *w, DcNode *node, guint32 uid, guint32 *uv,
                               guint32 *epoch, DcMsg *out) {
  DcListing l;
  if (!dcnode_selectable(node) || !dircache_listing(w->dc, node, G_MAXINT64, &l, NULL))
    return FALSE;
  const DcMsg *m = dc_listing_find(&l, uid);
  if (m != NULL) {
    *out = *m;
    *uv = l.uidvalidity;
    *epoch = l.epoch;
  }
  dc_listing_clear(&l);
  return m != NULL;
}

/* name is <UID>.eml of a message of node in the listing we have. */
static gboolean fsw_name_is_listed(FsWrite *w, DcNode *node, const char *name) {
  guint32 uid, uv, epoch;
  DcMsg m;
  return names_parse_message_filename(name, &uid) && fsw_cached_msg(w, node, uid, &uv, &epoch, &m);
}

/* Caller holds w->lock.  Drops the names mv gave (and old inodes) that
 * expired by now, and those that stand for message uid (0: any) of
 * node under uv (node NULL: none). */
static void _fsw_moved_drop(FsWrite *w, gint64 now, DcNode *node, guint32 uv, guint32 uid) {
  GHashTable *tables[] = {w->moved, w->moved_from};
  for (guint t = 0; t < G_N_ELEMENTS(tables); t++) {
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, tables[t]);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
      const FswMoved *mv = v;
      if (mv->deadline <= now ||
          (node != NULL && mv->node == node && mv->uv == uv && (uid == 0 || mv->uid == uid)))
        g_hash_table_iter_remove(&it);
    }
  }
}

/* After mv of a message into node as name: name stands for its new UID
 * for as long as a written file's name lingers. */
static void fsw_moved_add(FsWrite *w, DcNode *node, const char *name, guint32 uv, guint32 uid,
                          fuse_ino_t old_ino) {
  gint64 now = g_get_monotonic_time();
  FswMoved *mv = g_new0(FswMoved, 1);
  *mv = (FswMoved){node, uv, uid, now + w->linger_us, old_ino};
  FswMoved *from = g_memdup2(mv, sizeof *mv);
  g_mutex_lock(&w->lock);
  _fsw_moved_drop(w, now, NULL, 0, 0);
  if (name != NULL)
    g_hash_table_replace(w->moved, fsw_key(node, name), mv);
  else
    g_free(mv);
  g_hash_table_replace(w->moved_from, g_memdup2(&old_ino, sizeof old_ino), from);
  g_mutex_unlock(&w->lock);
}

fuse_ino_t fswrite_moved_ino(FsWrite *w, fuse_ino_t ino) {
  g_mutex_lock(&w->lock);
  const FswMoved *mv = g_hash_table_lookup(w->moved_from, &ino);
  FswMoved want = mv != NULL ? *mv : (FswMoved){0};
  g_mutex_unlock(&w->lock);
  guint32 uv, epoch;
  DcMsg m;
  if (want.node == NULL || want.deadline <= g_get_monotonic_time() ||
      !fsw_cached_msg(w, want.node, want.uid, &uv, &epoch, &m) || uv != want.uv)
    return 0;
  return fs_msg_ino(epoch, want.uid);
}

/* The message name stands for after a mv into node (fsw_moved_add), if
 * it is still there.  A message, directory or new file that has the name
 * itself keeps it: an existing N.eml of the folder is never shadowed. */
static gboolean fsw_moved_msg(FsWrite *w, DcNode *node, const char *name, guint32 *uv,
                              guint32 *epoch, DcMsg *out) {
  g_autofree char *key = fsw_key(node, name);
  g_mutex_lock(&w->lock);
  const FswMoved *mv = g_hash_table_lookup(w->moved, key);
  FswMoved want = mv != NULL ? *mv : (FswMoved){0};
  if (mv != NULL && mv->deadline <= g_get_monotonic_time())
    g_hash_table_remove(w->moved, key);
  g_mutex_unlock(&w->lock);
  if (want.node == NULL || want.deadline <= g_get_monotonic_time())
    return FALSE;
  if (dircache_child(w->dc, node, name) != NULL || fsw_name_is_listed(w, node, name))
    return FALSE;
  /* Gone meanwhile (fswrite_message_gone), or a new UIDVALIDITY. */
  return fsw_cached_msg(w, node, want.uid, uv, epoch, out) && *uv == want.uv;
}

gboolean fswrite_moved_lookup(FsWrite *w, DcNode *parent, const char *name,
                              struct fuse_entry_param *e) {
  guint32 uv, epoch;
  DcMsg m;
  if (!fsw_moved_msg(w, parent, name, &uv, &epoch, &m))
    return FALSE;
  memset(e, 0, sizeof *e);
  e->ino = fs_msg_ino(epoch, m.uid);
  fs_msg_attr(w->fs, epoch, uv, &m, &e->attr);
  e->attr_timeout = fs_options(w->fs)->msg_timeout;
  e->entry_timeout = 0; /* the name is transient: the kernel asks again */
  return TRUE;
}

/* Caller holds w->lock.  f's name stands for a message of node that f
 * stored or copied, and no rm or mv of f's own is under way: the name
 * ends with that message. */
static gboolean _fsw_names_message_of(const FswFile *f, DcNode *node) {
  return f->name != NULL && f->sent && !f->own_op && f->sent_node == node;
}

void fswrite_message_gone(FsWrite *w, DcNode *node, guint32 uv, guint32 uid) {
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  g_mutex_lock(&w->lock);
  gboolean closing = w->closing;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->by_ino);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    FswFile *f = v;
    if (!_fsw_names_message_of(f, node) || f->sent_uv != uv || (uid != 0 && f->sent_uid != uid))
      continue;
    /* Open for writing: the bytes may be a new version (an editor saving
     * in place); the name stays, and the last close stores them as a
     * message of their own (the old one's removal finds nothing).  The
     * name ending under the writer dropped its close's bytes silently. */
    if (f->writers > 0)
      continue;
    /* Only the name goes (its bytes are the deleted message's): a later
     * write or utimes through it would bring the message back, and rsync
     * would take the name for a file it need not send.  The file itself
     * is dropped by the lingering thread or its last release (under
     * f->lock, which fswrite_open relies on). */
    g_ptr_array_add(names, g_strdup(f->name));
    _fsw_unname(w, f);
    _fsw_unhide(w, f);
    if (f->handles == 0) {
      f->deadline = 1;
      g_cond_signal(&w->cond);
    }
  }
  _fsw_moved_drop(w, g_get_monotonic_time(), node, uv, uid);
  g_mutex_unlock(&w->lock);
  for (guint i = 0; i < names->len && !closing; i++)
    notify_inval_entry(w->notify, fs_dir_ino(w->fs, node), g_ptr_array_index(names, i));
}

void fswrite_listing_seen(FsWrite *w, DcNode *node, guint32 uidnext) {
  g_autoptr(GArray) sent = g_array_new(FALSE, FALSE, sizeof(guint32) * 2);
  g_mutex_lock(&w->lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->by_ino);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    FswFile *f = v;
    if (_fsw_names_message_of(f, node) && f->sent_uid != 0 && f->sent_uid < uidnext) {
      guint32 pair[2] = {f->sent_uv, f->sent_uid};
      g_array_append_vals(sent, pair, 1);
    }
  }
  g_mutex_unlock(&w->lock);
  if (sent->len == 0)
    return;
  DcListing l;
  if (!dircache_listing(w->dc, node, G_MAXINT64, &l, NULL)) /* the one just fetched */
    return;
  for (guint i = 0; i < sent->len; i++) {
    const guint32 *pair = (const guint32 *)sent->data + 2 * i;
    if (l.uidvalidity == pair[0] && dc_listing_find(&l, pair[1]) == NULL)
      fswrite_message_gone(w, node, pair[0], pair[1]);
  }
  dc_listing_clear(&l);
}

gboolean fswrite_owns(FsWrite *w, fuse_ino_t ino) {
  if ((ino & 0xffffffffu) == 0)
    return FALSE;
  g_mutex_lock(&w->lock);
  gboolean ours = g_hash_table_contains(w->by_ino, &ino);
  g_mutex_unlock(&w->lock);
  return ours;
}

void fswrite_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  FsWrite *w = fsw_of(req);
  g_autoptr(FswFile) f = fsw_get(w, ino);
  if (f == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fsw_file_attr(w, f, &st);
  fuse_reply_attr(req, &st, 0);
}

/* The process (thread group) of thread tid, from /proc; 0: not known
 * (tid 0, from another PID namespace, or gone). */
static pid_t fsw_process_of(pid_t tid) {
  g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)tid);
  g_autofree char *text = NULL;
  g_autoptr(GError) error = NULL;
  if (tid <= 0)
    return 0;
  if (!g_file_get_contents(path, &text, NULL, &error)) {
    /* Out of file descriptors ourselves: not known (-1), which counts as
     * the opener (flush).  Taken for another process, a cp's close() at
     * the limit returned 0 and the send at the release failed unseen. */
    return g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_MFILE) ||
                   g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NFILE)
               ? -1
               : 0;
  }
  const char *t = strstr(text, "\nTgid:");
  return t != NULL ? (pid_t)g_ascii_strtoll(t + 6, NULL, 10) : 0;
}

/* Caller holds f->lock.  Records that thread tid's process wrote f (one
 * /proc read per new writing thread, not per write). */
static void _fsw_note_writer(FswFile *f, pid_t tid) {
  if (tid != f->wrote_tid) {
    f->wrote_tid = tid;
    f->wrote_pid = fsw_process_of(tid);
  }
  for (guint i = 0; i < f->wrote->len; i++)
    if (g_array_index(f->wrote, pid_t, i) == f->wrote_pid)
      return;
  g_array_append_val(f->wrote, f->wrote_pid);
}

/* Caller holds f->lock.  Whether process pid wrote f since the last send
 * (0 or -1, not known: taken for yes). */
static gboolean _fsw_wrote(const FswFile *f, pid_t pid) {
  if (pid <= 0)
    return TRUE;
  for (guint i = 0; i < f->wrote->len; i++)
    if (g_array_index(f->wrote, pid_t, i) == pid || g_array_index(f->wrote, pid_t, i) <= 0)
      return TRUE;
  return FALSE;
}

static FswHandle *fsw_handle_new(FsWrite *w, fuse_req_t req, FswFile *f, gboolean writable) {
  FswHandle *h = g_new0(FswHandle, 1);
  h->f = fsw_file_ref(f);
  h->writable = writable;
  h->opener = writable ? MAX(fsw_process_of(fuse_req_ctx(req)->pid), 0) : 0;
  g_mutex_lock(&w->lock);
  f->handles++;
  if (writable) {
    f->writers++;
    f->unflushed++;
  }
  f->deadline = 0;
  g_hash_table_add(w->handles, h);
  g_mutex_unlock(&w->lock);
  if (writable)
    staging_file_complete(f->data, FALSE);
  return h;
}

void fswrite_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  FsWrite *w = fsw_of(req);
  g_autoptr(FswFile) f = fsw_get(w, ino);
  if (f == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  gboolean writable = (fi->flags & O_ACCMODE) != O_RDONLY;
  g_mutex_lock(&f->lock);
  /* Dropped (lingered out, unlinked) while this open waited for f->lock:
   * a handle on it would not be routed here (fswrite_owns) any more, so
   * its writes would never be sent and fs.c would take it for a message's
   * handle.  Drops happen under f->lock, so this check holds. */
  g_mutex_lock(&w->lock);
  int err = !f->in_table ? ENOENT : writable ? f->error : 0;
  g_mutex_unlock(&w->lock);
  if (err == 0 && writable && (fi->flags & O_TRUNC) && staging_file_size(f->data) > 0) {
    g_autoptr(GError) error = NULL;
    if (staging_file_truncate(f->data, 0, &error)) {
      f->dirty = TRUE;
      f->rewritten = f->sent;
      g_mutex_lock(&w->lock);
      f->size = 0;
      g_mutex_unlock(&w->lock);
    } else {
      err = fsw_errno(error);
    }
  }
  if (err == 0)
    fi->fh = (uint64_t)(uintptr_t)fsw_handle_new(w, req, f, writable);
  g_mutex_unlock(&f->lock);
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  fi->keep_cache = 0;
  fuse_reply_open(req, fi);
}

void fswrite_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                  struct fuse_file_info *fi) {
  (void)ino;
  FswHandle *h = (FswHandle *)(uintptr_t)fi->fh;
  g_autofree char *buf = g_malloc(size);
  g_autoptr(GError) error = NULL;
  g_mutex_lock(&h->f->lock);
  gssize n = staging_file_pread(h->f->data, buf, size, (guint64)off, &error);
  g_mutex_unlock(&h->f->lock);
  if (n < 0)
    fsw_reply_error(req, "reading a new file", error);
  else
    fuse_reply_buf(req, buf, (size_t)n);
}

void fswrite_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  FsWrite *w = fsw_of(req);
  FswHandle *h = (FswHandle *)(uintptr_t)fi->fh;
  FswFile *f = h->f;
  g_mutex_lock(&f->lock);
  g_mutex_lock(&w->lock);
  g_hash_table_remove(w->handles, h);
  f->handles--;
  if (h->writable) {
    f->writers--;
    if (!h->flushed)
      f->unflushed--;
  }
  gboolean last_writer = h->writable && f->writers == 0;
  gboolean named = f->name != NULL;
  gboolean temp = named && fswrite_is_temp_name(f->name);
  g_mutex_unlock(&w->lock);
  /* Normally flush() sent it already; this is for a close without one. */
  if (last_writer && named && !temp && _fsw_needs_send(f) && !_fsw_incomplete(f))
    _fsw_send_now(w, f);
  g_mutex_lock(&w->lock);
  gboolean drop = f->handles == 0 && (f->name == NULL || f->error != 0);
  if (f->handles == 0 && !drop)
    _fsw_linger(w, f);
  g_mutex_unlock(&w->lock);
  if (drop)
    fsw_drop(w, f);
  g_mutex_unlock(&f->lock);
  fsw_file_unref(f);
  g_free(h);
  fuse_reply_err(req, 0);
}

void fswrite_dir_attr(FsWrite *w, DcNode *n, struct stat *st) {
  g_mutex_lock(&w->lock);
  const FswDirAttr *a = g_hash_table_lookup(w->dir_attrs, GUINT_TO_POINTER(dcnode_id(n)));
  if (a != NULL && a->has_mode)
    st->st_mode = S_IFDIR | (a->mode & 07777);
  /* As on a disk, times set by utimens (rsync -t, tar) hold until the
   * entries change (the ctime, fs_dir_attr): a watcher of the mtime then
   * sees the change. */
  if (a != NULL && a->has_times && st->st_ctim.tv_sec == a->since.tv_sec &&
      st->st_ctim.tv_nsec == a->since.tv_nsec) {
    st->st_atim = a->atime;
    st->st_mtim = a->mtime;
  }
  g_mutex_unlock(&w->lock);
}

/* ---- new files ---- */

/* rm removed message m, named name in node: a new file made under that
 * name within the lingering time gets its flags (FswRemoved). */
static void fsw_removed_add(FsWrite *w, DcNode *node, const char *name, const DcMsg *m) {
  const char *text = dircache_flags(w->dc, m->flagset);
  g_auto(GStrv) flags = text != NULL && *text != '\0' ? imap_flags_parse(text, NULL) : NULL;
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&w->lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, w->removed);
  while (g_hash_table_iter_next(&it, NULL, &v))
    if (((FswRemoved *)v)->deadline <= now)
      g_hash_table_iter_remove(&it);
  char *key = fsw_key(node, name);
  if (flags == NULL || g_hash_table_size(w->removed) >= FSW_REMOVED_MAX) {
    g_hash_table_remove(w->removed, key);
    g_free(key);
  } else {
    FswRemoved *r = g_new0(FswRemoved, 1);
    r->flags = g_steal_pointer(&flags);
    r->deadline = now + w->linger_us;
    g_hash_table_replace(w->removed, key, r);
  }
  g_mutex_unlock(&w->lock);
}

/* Caller holds w->lock.  The flags of the message rm removed under name
 * in node a moment ago, taken (NULL: none). */
static char **_fsw_removed_take(FsWrite *w, DcNode *node, const char *name) {
  g_autofree char *key = fsw_key(node, name);
  gpointer k, v;
  if (!g_hash_table_steal_extended(w->removed, key, &k, &v))
    return NULL;
  g_free(k);
  FswRemoved *r = v;
  char **flags = r->deadline > g_get_monotonic_time() ? g_steal_pointer(&r->flags) : NULL;
  fsw_removed_free(r);
  return flags;
}

/* A new file named name in parent, in the table, with no handle yet; NULL
 * after replying the error.  For create and for mknod alike. */
static FswFile *fsw_file_new(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  FsWrite *w = fsw_of(req);
  DcNode *p = fs_dir_or_reply(req, parent);
  if (p == NULL)
    return NULL;
  /* A folder gone (another client deleted or renamed it) is ENOENT, as
   * its readdir is: tar -x there said "Operation not permitted". */
  if (dcnode_mailbox(p) != NULL && !dcnode_present(p)) {
    fuse_reply_err(req, ENOENT);
    return NULL;
  }
  if (dcnode_mailbox(p) == NULL || !dcnode_selectable(p)) {
    g_debug("create %s: the directory is not a mailbox that can hold messages", name);
    fuse_reply_err(req, EPERM);
    return NULL;
  }
  if (fswrite_is_editor_scratch(name)) {
    g_debug("create %s refused: an editor's swap or auto-save file would become a message",
            name);
    fuse_reply_err(req, EPERM);
    return NULL;
  }
  g_autoptr(GError) error = NULL;
  StagingFile *data = staging_file_new(w->staging, &error);
  if (data == NULL) {
    g_warning("cannot keep a new file: %s", error->message);
    fuse_reply_err(req, fsw_errno(error));
    return NULL;
  }
  g_autofree char *dir = dircache_path(w->dc, p);
  staging_file_origin(data, dir, name); /* its name if imapfuse is killed */
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  FswFile *f = g_new0(FswFile, 1);
  f->refs = 1; /* the table's */
  g_mutex_init(&f->lock);
  f->wrote = g_array_new(FALSE, FALSE, sizeof(pid_t));
  f->data = data;
  f->orig_name = g_strdup(name);
  f->mode = mode & 07777;
  f->uid = ctx->uid;
  f->gid = ctx->gid;
  clock_gettime(CLOCK_REALTIME, &f->mtime);
  f->atime = f->ctime = f->mtime;
  g_mutex_lock(&w->lock);
  w->serial++;
  f->ino = ((fuse_ino_t)dcnode_id(p) << 32) | w->serial;
  f->in_table = TRUE;
  g_hash_table_insert(w->by_ino, &f->ino, f);
  _fsw_name(w, f, p, name);
  f->flags = _fsw_removed_take(w, p, name); /* its save after an rm: vim */
  g_mutex_unlock(&w->lock);
  return f;
}

void fswrite_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                    struct fuse_file_info *fi) {
  FsWrite *w = fsw_of(req);
  FswFile *f = fsw_file_new(req, parent, name, mode);
  if (f == NULL)
    return;
  gboolean writable = (fi->flags & O_ACCMODE) != O_RDONLY;
  fi->fh = (uint64_t)(uintptr_t)fsw_handle_new(w, req, f, writable);
  fi->keep_cache = 0;
  struct fuse_entry_param e;
  fsw_file_entry(w, f, &e);
  fuse_reply_create(req, &e, fi);
}

void fswrite_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi) {
  (void)ino;
  FsWrite *w = fsw_of(req);
  FswHandle *h = (FswHandle *)(uintptr_t)fi->fh;
  FswFile *f = h->f;
  g_autoptr(GError) error = NULL;
  g_mutex_lock(&f->lock);
  int err = f->error;
  guint64 end = (guint64)off + size;
  if (err == 0 && end > w->max_message && end > staging_file_size(f->data))
    err = _fsw_too_big(w, f, end);
  /* Bytes the staging disk did not take (ENOSPC) leave a hole in f:
   * refused like a write past max_message, never sent. */
  if (err == 0 && !staging_file_pwrite(f->data, buf, size, (guint64)off, &error))
    err = _fsw_refuse(w, f, error);
  if (err == 0) {
    f->dirty = TRUE;
    f->rewritten = f->sent;
    g_clear_error(&f->killed); /* written on by a living process */
    _fsw_note_writer(f, fuse_req_ctx(req)->pid);
    g_mutex_lock(&w->lock);
    if (f->writer <= 0)
      f->writer = f->wrote_pid;
    _fsw_active(w, f->wrote_pid);
    gboolean reopened = h->flushed;
    if (h->flushed) {
      h->flushed = FALSE;
      f->unflushed++;
    }
    f->size = staging_file_size(f->data);
    clock_gettime(CLOCK_REALTIME, &f->ctime);
    if (!f->mtime_set)
      f->mtime = f->ctime;
    g_mutex_unlock(&w->lock);
    if (reopened)
      staging_file_complete(f->data, FALSE); /* written after a close */
  }
  g_mutex_unlock(&f->lock);
  if (err != 0)
    fuse_reply_err(req, err);
  else
    fuse_reply_write(req, size);
}

/* Why a flush from pid must not send: pid was killed by a signal and
 * is closing its files as it dies (do_exit() sets PF_EXITING and the
 * exit code, then closes the files: the flush comes from the dying task,
 * measured on Linux 6.18).  The exit code (field 52 of /proc/PID/stat, a
 * wait status) tells; PF_SIGNALED (field 9) does not: the kernel sets it
 * also on the other threads of a process that exits normally (it ends
 * them with SIGKILL), and the last of them closes the files.  NULL: not
 * killed, or not known (pid 0 from another pid namespace; the exit code
 * reads 0 to a user who may not trace pid). */
static GError *fsw_killed_writer(pid_t pid) {
  g_autofree char *path = g_strdup_printf("/proc/%d/stat", (int)pid);
  g_autofree char *text = NULL;
  if (pid <= 0 || !g_file_get_contents(path, &text, NULL, NULL))
    return NULL;
  const char *lp = strchr(text, '('), *rp = strrchr(text, ')');
  if (lp == NULL || rp == NULL || rp < lp || rp[1] != ' ')
    return NULL;
  g_auto(GStrv) v = g_strsplit(rp + 2, " ", -1); /* v[n - 3]: field n */
  if (g_strv_length(v) < 50)
    return NULL;
  guint64 flags = g_ascii_strtoull(v[6], NULL, 10);
  int status = (int)g_ascii_strtoll(v[49], NULL, 10);
  if (!(flags & FSW_PF_EXITING) || !WIFSIGNALED(status))
    return NULL;
  int sig = WTERMSIG(status);
  g_autofree char *comm = g_strndup(lp + 1, (gsize)(rp - lp - 1));
#ifdef HAVE_SIGABBREV_NP
  const char *abbrev = sigabbrev_np(sig);
  g_autofree char *name = abbrev != NULL ? g_strconcat("SIG", abbrev, NULL)
                                         : g_strdup_printf("%d", sig);
#else
  g_autofree char *name = g_strdup_printf("%d", sig);
#endif
  return g_error_new(IFS_ERROR, IFS_ERROR_CANCELLED,
                     "its writer %s (pid %d) was killed by signal %s before it closed "
                     "it, so it may be incomplete", comm, (int)pid, name);
}

void fswrite_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  FsWrite *w = fsw_of(req);
  if (!fswrite_owns(w, ino)) {
    fuse_reply_err(req, 0); /* a message opened for reading */
    return;
  }
  FswHandle *h = (FswHandle *)(uintptr_t)fi->fh;
  FswFile *f = h->f;
  int err = 0;
  g_mutex_lock(&f->lock);
  if (h->writable) {
    g_mutex_lock(&w->lock);
    if (!h->flushed) {
      h->flushed = TRUE;
      f->unflushed--;
    }
    /* Every writer has flushed: this close() is the last that can report
     * how the APPEND went (counting releases instead missed it when two
     * writers closed at once: both flushes came before either release). */
    gboolean last = f->unflushed == 0;
    gboolean named = f->name != NULL;
    gboolean temp = named && fswrite_is_temp_name(f->name);
    g_mutex_unlock(&w->lock);
    gboolean incomplete = _fsw_incomplete(f);
    if (last)
      staging_file_complete(f->data, !incomplete);
    err = f->error;
    /* Bytes written since the last send by a writer that was killed: not
     * sent now.  Its close is not always the file's last: a parent may
     * share the open file with the killed child and write on (a write
     * clears the mark).  The next close by a living process that wrote
     * nothing since (a shell that survived the ^C that killed its
     * command) fails and keeps them unsent; a close by another killed one
     * leaves that to the release.  A message an fsync() stored stays. */
    pid_t tid = fuse_req_ctx(req)->pid;
    /* The closing process, read once (from /proc) and only for a last
     * close: it decides below whether the close sends. */
    pid_t pid = err == 0 && last && named ? fsw_process_of(tid) : 0;
    if (err == 0 && last && named && (!f->sent || f->rewritten) && _fsw_needs_send(f)) {
      GError *why = fsw_killed_writer(tid);
      if (why != NULL && (_fsw_wrote(f, pid) || pid == h->opener || h->opener == 0)) {
        g_clear_error(&f->killed);
        f->killed = why;
      } else if (why != NULL) {
        /* Killed, but neither wrote any of it nor opened it (`timeout 1
         * sleep 9` in a redirected group): its close says nothing about
         * the bytes.  It refused a file its parent had written whole.
         * The opener killed (a script's shell at ^C) does say it. */
        g_error_free(why);
      } else if (f->killed != NULL) {
        err = _fsw_refuse(w, f, f->killed);
      }
    }
    /* A close by another process than the one that opened it is a child
     * closing what it inherited (each command of a shell's `{ ...; } >
     * f` as it exits), not the file's last close: sending then stored
     * the part written so far, and a ^C later left it on the server.
     * The opener's close sends it, or the release after the last. */
    gboolean opener = h->opener == 0 || pid == h->opener || pid < 0;
    /* The close() of the last writer sends it, except under rsync's
     * temporary name: then the rename (or lingering out) does. */
    gboolean sends = err == 0 && last && named && !temp && f->killed == NULL && opener;
    if (sends && incomplete)
      g_debug("\"%s\" is not sent at this close: parts of it were never written yet",
              f->orig_name);
    else if (sends)
      err = _fsw_emptied(f) ? _fsw_refuse_emptied(f) : _fsw_send_now(w, f);
  }
  g_mutex_unlock(&f->lock);
  fuse_reply_err(req, err);
}

void fswrite_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  (void)datasync;
  FsWrite *w = fsw_of(req);
  if (!fswrite_owns(w, ino)) {
    /* A message (fi->fh is fs.c's, or 0 on -o ro): its bytes are the
     * server's, nothing to write.  sync FILE hung a worker, or crashed. */
    fuse_reply_err(req, 0);
    return;
  }
  FswHandle *h = (FswHandle *)(uintptr_t)fi->fh;
  FswFile *f = h->f;
  g_autoptr(GError) error = NULL;
  g_mutex_lock(&f->lock);
  g_mutex_lock(&w->lock);
  gboolean named = f->name != NULL;
  gboolean temp = named && fswrite_is_temp_name(f->name);
  g_mutex_unlock(&w->lock);
  int err = f->error;
  g_clear_error(&f->killed); /* a living process asks to store it */
  if (err == 0 && (temp || !named || _fsw_incomplete(f))) {
    /* Sent at the rename (or once complete): durable here until then. */
    if (!staging_file_sync(f->data, &error))
      err = fsw_errno(error);
  } else if (err == 0) {
    err = _fsw_send_now(w, f);
  }
  g_mutex_unlock(&f->lock);
  fuse_reply_err(req, err);
}

/* fallocate(2) of a new file: restic's restore gives a file its size so
 * before it writes the parts (ENOSYS made the kernel answer EOPNOTSUPP,
 * which restic ignores, and then each close of a part looked complete).
 * The file grows by bytes not yet written (_fsw_incomplete); nothing is
 * reserved on the staging disk.  Modes that make holes or move bytes are
 * not supported; FALLOC_FL_KEEP_SIZE changes nothing here. */
void fswrite_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                       struct fuse_file_info *fi) {
  FsWrite *w = fsw_of(req);
  if (!fswrite_owns(w, ino) || (mode & ~FALLOC_FL_KEEP_SIZE) != 0) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  FswFile *f = ((FswHandle *)(uintptr_t)fi->fh)->f;
  g_autoptr(GError) error = NULL;
  fsw_touched(w, f);
  g_mutex_lock(&f->lock);
  int err = f->error;
  guint64 end = (guint64)off + (guint64)len;
  gboolean grows = !(mode & FALLOC_FL_KEEP_SIZE) && end > staging_file_size(f->data);
  if (err == 0 && grows && end > w->max_message)
    err = _fsw_too_big(w, f, end);
  if (err == 0 && grows) {
    if (staging_file_truncate(f->data, end, &error)) {
      f->dirty = TRUE;
      f->rewritten = f->sent;
      g_mutex_lock(&w->lock);
      f->size = end;
      clock_gettime(CLOCK_REALTIME, &f->ctime);
      if (!f->mtime_set)
        f->mtime = f->ctime;
      g_mutex_unlock(&w->lock);
    } else {
      err = fsw_errno(error);
    }
  }
  g_mutex_unlock(&f->lock);
  fuse_reply_err(req, err);
}

/* ---- unlink ---- */

void fswrite_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  FsWrite *w = fsw_of(req);
  DcNode *p = fs_dir_or_reply(req, parent);
  if (p == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_autoptr(FswFile) f = fsw_find(w, p, name);
  if (f != NULL) {
    g_mutex_lock(&f->lock);
    int err = 0;
    /* Sent, but the server gave no APPENDUID: which message it became is
     * not known, so rm cannot remove it; never claim success. */
    if (f->sent && f->owned && f->sent_uid == 0) {
      g_warning("rm %s: the server did not say which UID the message got; remove its "
                "<UID>.eml after the next listing", name);
      err = EBUSY;
    }
    /* A file that became a message is that message: rm removes it (not
     * an identical message that was there before: the file was a copy),
     * also when a later version of it could not be stored (that one's
     * bytes are in the unsent directory). */
    if (err == 0 && f->sent && f->owned && f->sent_uid != 0 &&
        !fsw_remove_message(w, f, f->sent_node, f->sent_uv, f->sent_uid, NULL, FALSE, &error) &&
        !fsw_is_error(error, IFS_ERROR_NOT_FOUND))
      err = fsw_errno(error);
    if (err == 0) {
      g_mutex_lock(&w->lock);
      _fsw_unname(w, f);
      _fsw_unhide(w, f);
      gboolean drop = f->handles == 0;
      g_mutex_unlock(&w->lock);
      if (drop)
        fsw_drop(w, f);
    }
    g_mutex_unlock(&f->lock);
    fuse_reply_err(req, err);
    return;
  }
  guint32 uid, uv, epoch;
  DcMsg m;
  /* The name mv gave a moved message is that message, as stat says. */
  gboolean moved = fsw_moved_msg(w, p, name, &uv, &epoch, &m);
  if (moved)
    uid = m.uid;
  else if (!names_parse_message_filename(name, &uid) || !dcnode_selectable(p)) {
    fuse_reply_err(req, dircache_child(w->dc, p, name) != NULL ? EISDIR : ENOENT);
    return;
  }
  if (!fsw_find_msg(w, p, uid, &uv, &epoch, &m, &error) ||
      !fsw_remove_message(w, NULL, p, uv, uid, &m, FALSE, &error)) {
    fsw_reply_error(req, "rm", error);
    return;
  }
  /* vim's save: it copied the message to NAME~ first.  Only then: a tar
   * restoring a message with no flags (tar removes the file before it
   * writes it) would give it those of the message it replaces. */
  g_autofree char *backup = g_strconcat(name, "~", NULL);
  g_autoptr(FswFile) copy = fsw_find(w, p, backup);
  if (copy != NULL)
    fsw_removed_add(w, p, name, &m);
  fuse_reply_err(req, 0);
}

/* ---- rename ---- */

/* Caller holds f->lock.  f (stored) is renamed over newname, message r:
 * removes r.  If the server refused, both exist and the rename fails.  If
 * the connection was lost on the way, whether r went is unknown: the
 * rename goes ahead (failing it, sed -i removed its temporary file, which
 * is the new version, after the old one may have been expunged: both
 * were lost), and at worst both exist. */
static int _fsw_remove_replaced(FsWrite *w, FswFile *f, const char *newname,
                                const FswMsgRef *r) {
  g_autoptr(GError) error = NULL;
  if (fsw_remove_message(w, f, r->node, r->uv, r->uid, NULL, TRUE, &error) ||
      fsw_is_error(error, IFS_ERROR_NOT_FOUND))
    return 0;
  if (ifs_error_is_connection(error)) {
    g_warning("mv over %s: stored the new file as UID %u; removing UID %u was cut off (%s), "
              "so it may still exist beside it",
              newname, f->sent_uid, r->uid, error->message);
    return 0;
  }
  g_warning("mv over %s: stored the new file as UID %u, but could not remove UID %u, so both "
            "exist: %s",
            newname, f->sent_uid, r->uid, error->message);
  return fsw_errno(error);
}

static gboolean fsw_store(FsWrite *w, DcNode *n, guint32 uv, guint32 uid, char **flags,
                          GError **error);

/* Caller holds f->lock.  An editor's save (sed -i, vim, perl -pi) is a new
 * message in place of the old one: it keeps the old one's flags (\\Seen,
 * \\Flagged, keywords; they were lost), unless the file was given flags
 * of its own.  Its INTERNALDATE is the save's: an APPEND cannot be dated
 * after the fact. */
static void _fsw_keep_replaced_flags(FsWrite *w, FswFile *f, const char *newname,
                                     const DcMsg *old) {
  if (f->flags != NULL || !f->owned || f->sent_uid == 0)
    return;
  const char *text = dircache_flags(w->dc, old->flagset);
  if (text == NULL || *text == '\0')
    return;
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) flags = imap_flags_parse(text, &error);
  if (flags != NULL && fsw_store(w, f->sent_node, f->sent_uv, f->sent_uid, flags, &error))
    f->flags = g_steal_pointer(&flags); /* kept if this version is sent again */
  else
    g_warning("%s: the new version (UID %u) did not get the flags of the one it replaces "
              "(%s): %s",
              newname, f->sent_uid, text, error->message);
}

/* Caller holds f->lock.  rename(2) of new file f over another new file's
 * name (sed -i on a file written a moment ago): the message that file
 * became is removed once f's bytes are stored, unless it has yet another
 * name; with edit (within one folder, not rsync's temporary name) f's
 * message takes its flags.  0: no such file; -1: done; else an errno. */
static int _fsw_replace_file(FsWrite *w, FswFile *f, DcNode *p2, const char *newname,
                             gboolean edit) {
  g_autofree char *key = fsw_key(p2, newname);
  g_mutex_lock(&w->lock);
  FswFile *o = g_hash_table_lookup(w->by_name, key);
  if (o == f)
    o = NULL;
  if (o != NULL)
    fsw_file_ref(o);
  g_mutex_unlock(&w->lock);
  if (o == NULL)
    return 0;
  g_autoptr(FswFile) old = o;
  if (!f->sent || f->dirty)
    return -1; /* f not stored: the name alone moves, nothing is removed */
  if (!fsw_lock_other(old))
    return EBUSY;
  g_mutex_lock(&w->lock);
  FswMsgRef r = {old->sent_node, old->sent_uv, old->sent_uid};
  gboolean its = old->sent && old->sent_uid != 0 && old->owned &&
                 !(f->sent_node == r.node && f->sent_uv == r.uv && f->sent_uid == r.uid);
  if (its) {
    _fsw_unname(w, old); /* replaced, as rename(2) does */
    _fsw_unhide(w, old);
    its = !_fsw_other_name_for(w, f, &r);
  }
  g_mutex_unlock(&w->lock);
  guint32 uv, epoch;
  DcMsg m;
  if (its && edit && fsw_find_msg(w, r.node, r.uid, &uv, &epoch, &m, NULL) && uv == r.uv)
    _fsw_keep_replaced_flags(w, f, newname, &m);
  int err = its ? _fsw_remove_replaced(w, f, newname, &r) : 0;
  g_mutex_unlock(&old->lock);
  return err != 0 ? err : -1;
}

/* Caller holds f->lock.  rename(2) of new file f over the name of message
 * N of p2, as `sed -i` does (it writes a temporary file, then renames it
 * over the one it edits): f replaces N, which is removed once f's bytes
 * are on the server, never before.  Only within one folder (same_dir):
 * UID names are per folder, so mv of a just-written 3.eml into another
 * folder says nothing about that folder's message 3 (it expunged it), as
 * for a message's own mv.  Not for rsync's temporary names (from_temp):
 * rsync into a folder whose UIDs are not the source's would remove
 * unrelated mail that has the same number. */
static int _fsw_replace_message(FsWrite *w, FswFile *f, DcNode *p2, const char *newname,
                                gboolean from_temp, gboolean same_dir) {
  guint32 n, uv, epoch;
  DcMsg m;
  /* A name mv gave stands for the moved message (fsw_moved_msg): sed -i
   * of it replaces that one (both versions stayed).  Asked before
   * _fsw_replace_file makes the name f's. */
  gboolean moved = !from_temp && same_dir && fsw_moved_msg(w, p2, newname, &uv, &epoch, &m);
  int err = _fsw_replace_file(w, f, p2, newname, same_dir && !from_temp);
  if (err != 0)
    return err < 0 ? 0 : err;
  if (moved)
    n = m.uid;
  else if (from_temp || !same_dir || !names_parse_message_filename(newname, &n) ||
           !fsw_find_msg(w, p2, n, &uv, &epoch, &m, NULL))
    return 0;
  if (f->sent && f->sent_node == p2 && f->sent_uv == uv && f->sent_uid == n)
    return 0; /* f is that message */
  if (!f->sent || f->dirty) {
    g_warning("mv over %s refused: the new file is not stored yet (still open, or empty), "
              "and the message it would replace is left as it is",
              newname);
    return EPERM;
  }
  /* Message N has another name, a new file's ("10.eml" that became UID
   * 1): only this name is taken over (a restore renaming its temporary
   * files into place). */
  FswMsgRef r = {p2, uv, n};
  g_mutex_lock(&w->lock);
  gboolean named = _fsw_other_name_for(w, f, &r);
  g_mutex_unlock(&w->lock);
  if (named)
    return 0;
  _fsw_keep_replaced_flags(w, f, newname, &m);
  return _fsw_remove_replaced(w, f, newname, &r);
}

static void fsw_rename_file(fuse_req_t req, FsWrite *w, FswFile *f, DcNode *p2,
                            const char *newname) {
  g_autoptr(GError) error = NULL;
  fsw_touched(w, f);
  if (dcnode_mailbox(p2) == NULL || !dcnode_selectable(p2)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  g_mutex_lock(&f->lock);
  /* Dropped while this rename waited for f->lock (the lingering send):
   * naming it again would leave a name without a reference (freed file). */
  g_mutex_lock(&w->lock);
  int err = !f->in_table || f->name == NULL ? ENOENT : f->error;
  gboolean from_temp = f->name != NULL && fswrite_is_temp_name(f->name);
  gboolean same_dir = f->parent == p2;
  g_mutex_unlock(&w->lock);
  if (err == 0 && f->sent && !f->owned && p2 != f->sent_node) {
    /* A copy of a message that was there already: the copy goes to p2. */
    if (!_fsw_send(w, f, p2, newname, FALSE, &error))
      err = fsw_errno(error);
  } else if (err == 0 && f->sent && p2 != f->sent_node && f->sent_uid != 0) {
    /* Already a message: moving it to another directory moves the message. */
    guint32 uv, epoch, nuv, nuid;
    DcMsg m;
    /* sent_uid means something only under sent_uv: after a new
     * UIDVALIDITY that UID is another message. */
    if (!fsw_find_msg(w, f->sent_node, f->sent_uid, &uv, &epoch, &m, &error) ||
        !fsw_check_uv(f->sent_node, uv, f->sent_uv, &error) ||
        !fsw_move_message(w, f, f->sent_node, uv, &m, p2, &nuv, &nuid, &error)) {
      err = fsw_errno(error);
    } else {
      _fsw_set_sent(w, f, p2, nuv, nuid, f->owned);
    }
  } else if (err == 0 && f->sent && p2 != f->sent_node && f->sent_uid == 0) {
    /* No APPENDUID: the message is not known by UID, so it cannot be
     * moved; renaming the name alone would claim a move that did not
     * happen. */
    g_warning("mv %s: the server did not say which UID the message got; move its "
              "<UID>.eml after the next listing", newname);
    err = EBUSY;
  } else if (err == 0 && !f->sent) {
    g_mutex_lock(&w->lock);
    gboolean closed = f->writers == 0;
    g_mutex_unlock(&w->lock);
    /* rsync's rename of its temporary file: the moment to send it (its
     * mtime is set by now); not while bytes below its size were never
     * written: it waits for them under its new name (the send failed, and
     * both names went). */
    if (closed && !fswrite_is_temp_name(newname) && _fsw_needs_send(f) &&
        !_fsw_incomplete(f) && !_fsw_send(w, f, p2, newname, FALSE, &error))
      err = fsw_errno(error);
  }
  if (err == 0)
    err = _fsw_replace_message(w, f, p2, newname, from_temp, same_dir);
  if (err == 0) {
    g_mutex_lock(&w->lock);
    _fsw_name(w, f, p2, newname);
    if (f->handles == 0)
      _fsw_linger(w, f);
    g_mutex_unlock(&w->lock);
    g_autofree char *dir = dircache_path(w->dc, p2);
    staging_file_origin(f->data, dir, newname);
  }
  g_mutex_unlock(&f->lock);
  fuse_reply_err(req, err);
}

static void fsw_rename_dir(fuse_req_t req, FsWrite *w, DcNode *child, DcNode *p2,
                           const char *newname);

typedef struct {
  const char *from, *to;
} FswRename;

static gboolean fsw_rename_op(ImapConn *c, gpointer user, GError **error) {
  FswRename *r = user;
  return imap_rename(c, r->from, r->to, error);
}

void fswrite_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                    const char *newname, unsigned int flags) {
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  DcNode *p1 = fs_dir(fs, parent), *p2 = fs_dir(fs, newparent);
  if (p1 == NULL || p2 == NULL) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if (flags & RENAME_EXCHANGE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  g_autoptr(FswFile) target = fsw_find(w, p2, newname);
  if ((flags & RENAME_NOREPLACE) &&
      (target != NULL || dircache_child(w->dc, p2, newname) != NULL ||
       fsw_listed_name(w, p2, newname) ||
       fsw_moved_msg(w, p2, newname, &(guint32){0}, &(guint32){0}, &(DcMsg){0}))) {
    fuse_reply_err(req, EEXIST);
    return;
  }

  g_autoptr(FswFile) f = fsw_find(w, p1, name);
  if (f != NULL) {
    if (dircache_child(w->dc, p2, newname) != NULL) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    fsw_rename_file(req, w, f, p2, newname);
    return;
  }
  DcNode *child = dircache_child(w->dc, p1, name);
  if (child != NULL) {
    fsw_rename_dir(req, w, child, p2, newname);
    return;
  }
  guint32 uid, uv, epoch;
  DcMsg m;
  g_autoptr(GError) error = NULL;
  if (fsw_moved_msg(w, p1, name, &uv, &epoch, &m))
    uid = m.uid; /* moved here a moment ago under this name */
  else if (!names_parse_message_filename(name, &uid) || !dcnode_selectable(p1)) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (!fsw_find_msg(w, p1, uid, &uv, &epoch, &m, &error)) {
    fsw_reply_error(req, "mv", error);
    return;
  }
  struct fuse_entry_param ignored;
  if (fswrite_dirent(w, p1, uv, uid, name, &ignored) < 0) {
    fuse_reply_err(req, ENOENT); /* hidden while a new file's name is it (_fsw_rehide) */
    return;
  }
  if (p1 == p2) {
    /* A message's name is its UID. */
    g_debug("mv %s -> %s in %s refused: a message's name is its UID", name, newname,
            dcnode_mailbox(p1));
    fuse_reply_err(req, EPERM);
    return;
  }
  if (dcnode_mailbox(p2) == NULL || !dcnode_selectable(p2)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (dircache_child(w->dc, p2, newname) != NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  guint32 nuv, nuid;
  if (!fsw_move_message(w, NULL, p1, uv, &m, p2, &nuv, &nuid, &error)) {
    fsw_reply_error(req, "mv", error);
    return;
  }
  if (target != NULL) {
    /* rename(2) replaced that new file's name. */
    g_mutex_lock(&w->lock);
    _fsw_unname(w, target);
    _fsw_unhide(w, target);
    g_mutex_unlock(&w->lock);
  }
  /* newname answers for the moved message a while (GNU mv stats it after
   * the rename, and failed "cannot stat" for every message), unless it is
   * the name of a message of p2 already listed: that one keeps it. */
  gboolean taken = fsw_name_is_listed(w, p2, newname);
  /* The kernel's entry for newname is still the old inode until the
   * invalidation below is through: its stat answers for the message too. */
  if (nuid != 0 && nuv != 0)
    fsw_moved_add(w, p2, taken ? NULL : newname, nuv, nuid, fs_msg_ino(epoch, uid));
  fuse_reply_err(req, 0);
  /* The kernel now has newname for the moved file; its real name is
   * <nuid>.eml.  Make it look again (an existing message called newname
   * was not touched and comes back). */
  notify_inval_entry(w->notify, fs_dir_ino(w->fs, p2), newname);
}

/* Before a RENAME or DELETE of mailbox (node's): our own work in it ends
 * first (for at most 2 s) and no more starts until pool_unfence (see
 * pool_fence: Dovecot left a lock behind, and the renamed folder could not
 * be opened for two minutes). */
static void fsw_fence(FsWrite *w, DcNode *node, const char *mailbox) {
  g_autoptr(GError) ignored = NULL;
  char delim = fsw_delim(w, node, &ignored);
  loop_about_to_wait(); /* the RENAME or DELETE waits for the server anyway */
  pool_fence(w->pool, mailbox, delim > 0 ? delim : 0, 2 * G_USEC_PER_SEC);
}

/* Runs op, a RENAME or DELETE of node's mailbox, with that mailbox fenced
 * off the pool (fsw_fence).  Once it succeeded, connections that had the
 * mailbox selected are dropped; the mailbox list is stale either way. */
static gboolean fsw_run_fenced(FsWrite *w, DcNode *node, const char *mailbox, PoolOp op,
                               gpointer data, GError **error) {
  fsw_fence(w, node, mailbox);
  gboolean ok = pool_run(w->pool, NULL, FALSE, op, data, error);
  pool_unfence(w->pool, mailbox);
  if (ok)
    pool_check_before_use(w->pool);
  fsw_boxes_stale(w);
  return ok;
}

/* A fresh LIST after a change to the mailboxes (what = "RENAME" ...). */
static void fsw_relist(FsWrite *w, const char *what) {
  g_autoptr(GError) error = NULL;
  if (!dircache_refresh_tree(w->dc, 0, &error))
    g_debug("LIST after %s: %s", what, error->message);
}

static void fsw_rename_dir(fuse_req_t req, FsWrite *w, DcNode *child, DcNode *p2,
                           const char *newname) {
  g_autoptr(GError) error = NULL;
  const char *from = dcnode_mailbox(child);
  if (from == NULL || g_ascii_strcasecmp(from, "INBOX") == 0) {
    g_debug("renaming INBOX refused: RENAME INBOX would move all its mail");
    fuse_reply_err(req, EPERM);
    return;
  }
  if (p2 != dircache_root(w->dc) && !dcnode_present(p2)) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  guint32 uid;
  if (dircache_child(w->dc, p2, newname) != NULL) {
    fuse_reply_err(req, EEXIST);
    return;
  }
  if (names_parse_message_filename(newname, &uid)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  g_autofree char *to = fsw_child_mailbox(w, p2, newname, &error);
  if (to == NULL) {
    fsw_reply_name_error(req, "rename", error);
    return;
  }
  FswRename r = {from, to};
  gboolean ok = fsw_run_fenced(w, child, from, fsw_rename_op, &r, &error);
  g_autofree char *component = names_unescape_component(newname, NULL);
  g_autofree char *shown = names_escape_component(component);
  /* The kernel keeps the directory's inode under the new name: so does
   * dircache (same node, same message inodes). */
  if (ok)
    dircache_node_renamed(w->dc, child, p2, shown, to);
  fsw_relist(w, "RENAME");
  if (!ok) {
    g_autofree char *what = g_strdup_printf("rename of %s to %s refused by the server", from, to);
    fsw_reply_name_error(req, what, error);
    return;
  }
  fuse_reply_err(req, 0);
  /* Shown under its escaped name ("50% off" -> "50%25 off"). */
  if (!g_str_equal(shown, newname))
    notify_inval_entry(w->notify, fs_dir_ino(w->fs, p2), newname);
}

/* ---- mkdir, rmdir ---- */

static gboolean fsw_create_op(ImapConn *c, gpointer user, GError **error) {
  return imap_create(c, user, error);
}

void fswrite_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  (void)mode;
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  DcNode *p = fs_dir_or_reply(req, parent);
  if (p == NULL)
    return;
  if (dircache_child(w->dc, p, name) != NULL || fsw_listed_name(w, p, name)) {
    fuse_reply_err(req, EEXIST);
    return;
  }
  g_autoptr(GError) error = NULL;
  g_autofree char *mailbox = fsw_child_mailbox(w, p, name, &error);
  if (mailbox == NULL) {
    fsw_reply_name_error(req, "mkdir", error);
    return;
  }
  gboolean ok = pool_run(w->pool, NULL, FALSE, fsw_create_op, mailbox, &error);
  fsw_boxes_stale(w);
  g_autofree char *component = names_unescape_component(name, NULL);
  g_autofree char *shown = names_escape_component(component);
  DcNode *child = NULL;
  /* Dovecot's LIST on another session right after a CREATE's OK can miss
   * the new mailbox (a soak trace: the next LIST, tens of ms later, had
   * it; 4 runs in 20): ask up to three times, the last after a pause,
   * before calling it an error. */
  for (int attempt = 0; child == NULL && (attempt == 0 || (ok && attempt < 3)); attempt++) {
    if (attempt == 2)
      loop_pause(100 * 1000);
    fsw_relist(w, "CREATE");
    child = dircache_child(w->dc, p, shown);
    if (child == NULL && ok && attempt == 0)
      g_debug("mkdir: %s created but not in the LIST after it; asking again", mailbox);
  }
  /* Not there in the LIST just before, there now: it exists as asked.
   * Dovecot says [ALREADYEXISTS] to a CREATE it carried out when another
   * session's STATUS of the parent opened the new mailbox meanwhile (its
   * list index saw the new directory before the CREATE had finished). */
  if (!ok && fsw_is_error(error, IFS_ERROR_EXISTS) && child != NULL) {
    g_debug("mkdir: %s (%s), but it was not there just before: taken as created", mailbox,
            error->message);
    ok = TRUE;
  }
  if (!ok) {
    g_autofree char *what = g_strdup_printf("mkdir of %s refused by the server", mailbox);
    fsw_reply_name_error(req, what, error);
    return;
  }
  if (child == NULL) {
    g_warning("mkdir: created %s, but the server does not list it", mailbox);
    fuse_reply_err(req, EIO);
    return;
  }
  struct fuse_entry_param e = {0};
  e.ino = fs_dir_ino(fs, child);
  fs_dir_attr(fs, child, &e.attr);
  gboolean canonical = g_str_equal(shown, name);
  e.attr_timeout = e.entry_timeout = canonical ? fs_options(fs)->dir_timeout : 0;
  fuse_reply_entry(req, &e);
  /* Shown under its escaped name ("50% off" -> "50%25 off"). */
  if (!canonical)
    notify_inval_entry(w->notify, fs_dir_ino(fs, p), name);
}

typedef struct {
  const char *mailbox;
  gboolean selectable;
} FswRmdir;

static gboolean fsw_rmdir_op(ImapConn *c, gpointer user, GError **error) {
  FswRmdir *r = user;
  if (r->selectable) {
    guint32 n;
    if (!imap_status_messages(c, r->mailbox, &n, error))
      return fsw_unchanged(error);
    if (n > 0) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_EMPTY, "%s holds %u message(s)", r->mailbox,
                  n);
      return FALSE;
    }
  }
  return imap_delete(c, r->mailbox, error);
}

/* A file in node is still open, or has bytes not sent yet (rsync's
 * temporary name): the folder is not empty (its DELETE would leave the
 * bytes nowhere to go but the unsent directory). */
static gboolean _fsw_pending_in(FswFile *f, gconstpointer node) {
  return f->in_table && f->parent == node &&
         (f->handles > 0 || (f->name != NULL && !f->sent && f->size > 0));
}

static gboolean fsw_has_pending(FsWrite *w, DcNode *node) {
  g_mutex_lock(&w->lock);
  g_autoptr(GPtrArray) pending = _fsw_matching(w, _fsw_pending_in, node);
  g_mutex_unlock(&w->lock);
  return pending->len > 0;
}

void fswrite_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  FsWrite *w = fsw_of(req);
  DcNode *p = fs_dir_or_reply(req, parent);
  if (p == NULL)
    return;
  g_autoptr(GError) error = NULL;
  /* Ask the server, not the cache: a fresh LIST for children. */
  if (!dircache_refresh_tree(w->dc, 0, &error)) {
    fsw_reply_error(req, "rmdir", error);
    return;
  }
  DcNode *child = dircache_child(w->dc, p, name);
  DcNode *gone = child == NULL ? dircache_child_known(w->dc, p, name) : NULL;
  if (gone != NULL && !dcnode_held_mail(gone)) {
    /* A folder that only held folders (\Noselect): servers drop it with
     * its last child, so rm -r found it gone, as it wanted, and failed. */
    g_debug("rmdir %s: the server dropped it with its last subfolder", name);
    fuse_reply_err(req, 0);
    return;
  }
  if (child == NULL) {
    fuse_reply_err(req, names_parse_message_filename(name, &(guint32){0}) ? ENOTDIR : ENOENT);
    return;
  }
  const char *mailbox = dcnode_mailbox(child);
  if (g_ascii_strcasecmp(mailbox, "INBOX") == 0) {
    g_debug("rmdir INBOX refused");
    fuse_reply_err(req, EPERM);
    return;
  }
  g_autoptr(GPtrArray) kids = dircache_children(w->dc, child);
  if (kids->len > 0 || fsw_has_pending(w, child)) {
    fuse_reply_err(req, ENOTEMPTY);
    return;
  }
  FswRmdir r = {mailbox, dcnode_selectable(child)};
  gboolean ok = fsw_run_fenced(w, child, mailbox, fsw_rmdir_op, &r, &error);
  fsw_relist(w, "DELETE");
  if (!ok) {
    fsw_reply_error(req, "rmdir", error);
    return;
  }
  fuse_reply_err(req, 0);
}

/* ---- setattr ---- */

static struct timespec fsw_time_arg(const struct timespec *given, gboolean now) {
  struct timespec t;
  if (now)
    clock_gettime(CLOCK_REALTIME, &t);
  else
    t = *given;
  return t;
}

static void fsw_setattr_dir(fuse_req_t req, Fs *fs, FsWrite *w, DcNode *n, struct stat *attr,
                            int to_set) {
  const FsOptions *o = fs_options(fs);
  if (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != o->uid) ||
      ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != o->gid)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  struct stat cur;
  fs_dir_attr(fs, n, &cur);
  g_mutex_lock(&w->lock);
  FswDirAttr *a = g_hash_table_lookup(w->dir_attrs, GUINT_TO_POINTER(dcnode_id(n)));
  if (a == NULL) {
    a = g_new0(FswDirAttr, 1);
    g_hash_table_insert(w->dir_attrs, GUINT_TO_POINTER(dcnode_id(n)), a);
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    a->mode = attr->st_mode & 07777;
    a->has_mode = TRUE;
  }
  if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    a->atime = (to_set & FUSE_SET_ATTR_ATIME)
                   ? fsw_time_arg(&attr->st_atim, to_set & FUSE_SET_ATTR_ATIME_NOW)
                   : cur.st_atim;
    a->mtime = (to_set & FUSE_SET_ATTR_MTIME)
                   ? fsw_time_arg(&attr->st_mtim, to_set & FUSE_SET_ATTR_MTIME_NOW)
                   : cur.st_mtim;
    a->since = cur.st_ctim;
    a->has_times = TRUE;
  }
  g_mutex_unlock(&w->lock);
  struct stat st;
  fs_dir_attr(fs, n, &st);
  fuse_reply_attr(req, &st, fs_options(fs)->dir_timeout);
}

/* An existing message: only "changes" that change nothing are accepted. */
static void fsw_setattr_msg(fuse_req_t req, Fs *fs, FsWrite *w, fuse_ino_t ino,
                            struct stat *attr, int to_set) {
  DcNode *n;
  guint32 uv;
  DcMsg m;
  int err;
  if (!fsw_msg_of_ino(w, ino, &n, &uv, &m, &err)) {
    fuse_reply_err(req, err);
    return;
  }
  struct stat cur;
  fs_msg_attr(fs, (guint32)(ino >> 32), uv, &m, &cur);
  gboolean change =
      ((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (cur.st_mode & 07777)) ||
      ((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != cur.st_uid) ||
      ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != cur.st_gid) ||
      ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != cur.st_size) ||
      ((to_set & FUSE_SET_ATTR_MTIME) &&
       ((to_set & FUSE_SET_ATTR_MTIME_NOW) || attr->st_mtim.tv_sec != cur.st_mtim.tv_sec));
  /* atime alone is not kept (as on a noatime mount). */
  if (change) {
    g_debug("setattr on %s UID %u refused: a message's attributes come from the server",
            dcnode_mailbox(n), m.uid);
    fuse_reply_err(req, EPERM);
    return;
  }
  fuse_reply_attr(req, &cur, fs_options(fs)->msg_timeout);
}

static void fsw_setattr_file(fuse_req_t req, FsWrite *w, FswFile *f, struct stat *attr,
                             int to_set) {
  g_autoptr(GError) error = NULL;
  int err = 0;
  fsw_touched(w, f);
  g_mutex_lock(&f->lock);
  if (to_set & FUSE_SET_ATTR_SIZE) {
    guint64 want = (guint64)attr->st_size;
    if (f->error != 0)
      err = f->error;
    else if (want > w->max_message && want > staging_file_size(f->data))
      err = _fsw_too_big(w, f, want);
    else if (want == 0 && f->sent && fsw_at_rest(w, f)) {
      /* Nothing would be sent (see _fsw_emptied): as for a message. */
      g_debug("truncate of \"%s\" refused: a message cannot be empty", f->orig_name);
      err = EPERM;
    }
    else if (want != staging_file_size(f->data)) {
      if (staging_file_truncate(f->data, (guint64)attr->st_size, &error)) {
        f->dirty = TRUE;
        f->rewritten = f->sent;
      }
      else
        err = fsw_errno(error);
    }
  }
  /* Setting the stored message's date again changes nothing stored (nano
   * -B gives its backup, a copy of the message, the message's own times). */
  gint64 stored_date = (to_set & FUSE_SET_ATTR_MTIME) ? _fsw_stored_date(w, f) : f->sent_date;
  g_mutex_lock(&w->lock);
  struct timespec old_mtime = f->mtime;
  gboolean old_set = f->mtime_set, old_dirty = f->dirty;
  if (err == 0) {
    f->size = staging_file_size(f->data);
    if (to_set & FUSE_SET_ATTR_MODE)
      f->mode = attr->st_mode & 07777;
    if (to_set & FUSE_SET_ATTR_UID)
      f->uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID)
      f->gid = attr->st_gid;
    if (to_set & FUSE_SET_ATTR_ATIME)
      f->atime = fsw_time_arg(&attr->st_atim, to_set & FUSE_SET_ATTR_ATIME_NOW);
    if (to_set & FUSE_SET_ATTR_MTIME) {
      struct timespec t = fsw_time_arg(&attr->st_mtim, to_set & FUSE_SET_ATTR_MTIME_NOW);
      if (f->sent && t.tv_sec != stored_date)
        f->dirty = TRUE; /* the INTERNALDATE must follow */
      f->mtime = t;
      f->mtime_set = TRUE;
    }
    clock_gettime(CLOCK_REALTIME, &f->ctime);
  }
  gboolean at_rest = _fsw_at_rest(f);
  g_mutex_unlock(&w->lock);
  /* A file already sent and closed: a new date (or size) means the
   * message is replaced now (utimes after cp, install -p, ...).  Not once
   * unlinked or its message deleted: that would bring it back. */
  /* ... once complete: a truncate that made it longer waits for the bytes
   * (the send failed, and the size stayed changed all the same). */
  if (err == 0 && f->sent && at_rest && !_fsw_incomplete(f)) {
    err = _fsw_send_now(w, f);
    if (err != 0 && f->error == 0) {
      /* Not replaced (and nothing lost): the date stays the server's. */
      g_mutex_lock(&w->lock);
      f->mtime = old_mtime;
      f->mtime_set = old_set;
      f->dirty = old_dirty;
      g_mutex_unlock(&w->lock);
    }
  }
  g_mutex_unlock(&f->lock);
  if (err != 0) {
    fuse_reply_err(req, err);
    return;
  }
  struct stat st;
  fsw_file_attr(w, f, &st);
  fuse_reply_attr(req, &st, 0);
}

void fswrite_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                     struct fuse_file_info *fi) {
  (void)fi;
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  DcNode *d = fs_dir(fs, ino);
  if (d != NULL) {
    fsw_setattr_dir(req, fs, w, d, attr, to_set);
    return;
  }
  g_autoptr(FswFile) f = fsw_get(w, ino);
  if (f != NULL) {
    fsw_setattr_file(req, w, f, attr, to_set);
    return;
  }
  fsw_setattr_msg(req, fs, w, ino, attr, to_set);
}

/* ---- user.imap.flags ---- */

typedef struct {
  const char *mailbox;
  guint32 uv, uid;
  char **flags;
  char *result;
} FswStore;

static gboolean fsw_store_op(ImapConn *c, gpointer user, GError **error) {
  FswStore *s = user;
  if (!fsw_select_checked(c, s->mailbox, s->uv, error))
    return fsw_unchanged(error);
  g_clear_pointer(&s->result, g_free);
  /* The flags are replaced, not added to: sent again on a fresh session
   * after a lost one (or Dovecot's [SERVERBUG] in a folder made again
   * under this session), it does no harm (that setfattr failed with EIO). */
  if (!imap_store_flags(c, s->uid, IMAP_STORE_REPLACE, (const char *const *)s->flags, FALSE,
                        &s->result, error))
    return fsw_unchanged(error);
  /* No FETCH back: unchanged flags (Dovecot says nothing then) or the
   * message is gone; ask. */
  if (s->result == NULL)
    return imap_fetch_flags(c, s->uid, &s->result, error);
  return TRUE;
}

static gboolean fsw_store(FsWrite *w, DcNode *n, guint32 uv, guint32 uid, char **flags,
                          GError **error) {
  FswStore s = {dcnode_mailbox(n), uv, uid, flags, NULL};
  gboolean ok = pool_run(w->pool, s.mailbox, FALSE, fsw_store_op, &s, error);
  /* "NO Mailbox was deleted under us" (a folder being deleted, or just
   * made again): asked again as a read is (fs_again_in_folder); setfattr
   * failed with EIO (an adversarial test). */
  for (int attempt = 1; !ok && fsw_is_error(*error, IFS_ERROR_NO) &&
                        fs_again_in_folder(w->fs, n, s.mailbox, attempt, error);
       attempt++)
    ok = pool_run(w->pool, s.mailbox, FALSE, fsw_store_op, &s, error);
  if (ok)
    dircache_msg_flags(w->dc, n, uv, uid, s.result);
  else if (fsw_is_error(*error, IFS_ERROR_NOT_FOUND))
    dircache_msgs_removed(w->dc, n, uv, &uid, 1);
  else
    fsw_note_stale(w, n, uv, *error);
  g_free(s.result);
  return ok;
}

/* Sets the flags of the message behind ino (a message or a sent file). */
static void fsw_set_flags(fuse_req_t req, FsWrite *w, fuse_ino_t ino, const char *text) {
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) flags = imap_flags_parse(text, &error);
  if (flags == NULL) {
    fsw_reply_error(req, "setfattr", error);
    return;
  }
  g_autoptr(FswFile) f = fsw_get(w, ino);
  if (f != NULL) {
    fsw_touched(w, f);
    g_mutex_lock(&f->lock);
    gboolean ok = TRUE;
    if (f->sent && f->sent_uid != 0)
      ok = fsw_store(w, f->sent_node, f->sent_uv, f->sent_uid, flags, &error);
    else
      f->dirty = f->dirty || f->sent; /* not sent yet: they go with its APPEND */
    if (ok) { /* the file's own: a new version of it is sent with them too */
      g_strfreev(f->flags);
      f->flags = g_strdupv(flags);
    }
    g_mutex_unlock(&f->lock);
    if (!ok)
      fsw_reply_error(req, "setfattr", error);
    else
      fuse_reply_err(req, 0);
    return;
  }
  DcNode *n;
  guint32 uv;
  DcMsg m;
  int err;
  if (!fsw_msg_of_ino(w, ino, &n, &uv, &m, &err)) {
    fuse_reply_err(req, err);
    return;
  }
  if (!fsw_store(w, n, uv, m.uid, flags, &error)) {
    fsw_reply_error(req, "setfattr", error);
    return;
  }
  fuse_reply_err(req, 0);
}

/* The flags text of ino, or NULL with *err. */
static char *fsw_get_flags(FsWrite *w, fuse_ino_t ino, int *err) {
  g_autoptr(FswFile) f = fsw_get(w, ino);
  guint32 uv;
  DcMsg m;
  DcNode *n;
  if (f != NULL) {
    g_mutex_lock(&f->lock);
    gboolean sent = f->sent && f->sent_uid != 0;
    char *out = NULL;
    if (!sent) {
      g_autofree char *canon = fsw_flags_string((const char *const *)f->flags);
      out = fsw_flags_display(canon);
    }
    n = f->sent_node;
    guint32 sent_uv = f->sent_uv;
    guint32 uid = f->sent_uid;
    g_mutex_unlock(&f->lock);
    if (!sent)
      return out;
    g_autoptr(GError) error = NULL;
    guint32 epoch;
    if (!fsw_find_msg(w, n, uid, &uv, &epoch, &m, &error) ||
        !fsw_check_uv(n, uv, sent_uv, &error)) {
      *err = fsw_errno(error);
      return NULL;
    }
    return fsw_flags_display(dircache_flags(w->dc, m.flagset));
  }
  if (!fsw_msg_of_ino(w, ino, &n, &uv, &m, err))
    return NULL;
  return fsw_flags_display(dircache_flags(w->dc, m.flagset));
}

static gboolean fsw_is_file_ino(Fs *fs, FsWrite *w, fuse_ino_t ino) {
  (void)w;
  return fs_dir(fs, ino) == NULL && ino != FUSE_ROOT_ID;
}

/* For reading or removing attribute name of ino: 0 if it exists, else the
 * errno.  Only the user namespace is ours: names elsewhere
 * (security.selinux, system.posix_acl_access: ls -l asks both for every
 * file) get ENOTSUP, not ENODATA, so coreutils stops asking for the rest of
 * the mount, where ENODATA would cost two FUSE round trips per file. */
static int fsw_xattr_missing(Fs *fs, FsWrite *w, fuse_ino_t ino, const char *name) {
  if (!g_str_has_prefix(name, "user."))
    return ENOTSUP;
  if (strcmp(name, FSW_XATTR_FLAGS) != 0 || !fsw_is_file_ino(fs, w, ino))
    return ENODATA;
  return 0;
}

/* Whether user.imap.flags exists on ino, that is its message has flags
 * (listxattr lists it only then): 1 or 0, or -errno. */
static int fsw_flags_exist(FsWrite *w, fuse_ino_t ino) {
  int err = 0;
  g_autofree char *now = fsw_get_flags(w, ino, &err);
  return now == NULL ? -err : now[0] != '\0';
}

void fswrite_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                      size_t size, int flags) {
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  if (strcmp(name, FSW_XATTR_FLAGS) != 0 || !fsw_is_file_ino(fs, w, ino)) {
    fuse_reply_err(req, ENOTSUP);
    return;
  }
  /* Tolerate one trailing NUL or newline (setfattr, echo). */
  if (size > 0 && value[size - 1] == '\0')
    size--;
  if (size > 0 && value[size - 1] == '\n')
    size--;
  if (size > 0 && value[size - 1] == '\r')
    size--;
  g_autofree char *text = g_strndup(value, size);
  if (strlen(text) != size) {
    fuse_reply_err(req, EINVAL); /* a NUL inside */
    return;
  }
  if ((flags & (XATTR_CREATE | XATTR_REPLACE)) || size == 0) {
    int exists = fsw_flags_exist(w, ino);
    if (exists < 0) {
      fuse_reply_err(req, -exists);
      return;
    }
    if ((flags & XATTR_CREATE) && exists) {
      fuse_reply_err(req, EEXIST);
      return;
    }
    if ((flags & XATTR_REPLACE) && !exists) {
      fuse_reply_err(req, ENODATA);
      return;
    }
    if (size == 0 && !exists) {
      /* No flags, and none to set: nothing to send (rsync -X from a
       * backup made with an empty attribute on every file). */
      fuse_reply_err(req, 0);
      return;
    }
  }
  fsw_set_flags(req, w, ino, text);
}

void fswrite_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  int bad = fsw_xattr_missing(fs, w, ino, name);
  if (bad != 0) {
    fuse_reply_err(req, bad);
    return;
  }
  int err = 0;
  g_autofree char *v = fsw_get_flags(w, ino, &err);
  if (v == NULL) {
    fuse_reply_err(req, err);
    return;
  }
  size_t len = strlen(v);
  if (size == 0)
    fuse_reply_xattr(req, len);
  else if (size < len)
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, v, len);
}

/* user.imap.flags is listed only when the message has flags: rsync -X and
 * tar --xattrs then see no attribute where a copy without attributes has
 * none either (rsync -aX would otherwise report and "remove" it on every
 * file, every run).  getxattr of it still answers "" for no flags. */
void fswrite_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  static const char names[] = FSW_XATTR_FLAGS; /* with its NUL */
  int exists = fsw_is_file_ino(fs, w, ino) ? fsw_flags_exist(w, ino) : 0;
  if (exists < 0) {
    fuse_reply_err(req, -exists);
    return;
  }
  size_t len = exists ? sizeof names : 0;
  if (size == 0)
    fuse_reply_xattr(req, len);
  else if (size < len)
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, names, len);
}

void fswrite_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  Fs *fs = fuse_req_userdata(req);
  FsWrite *w = fs_writer(fs);
  int bad = fsw_xattr_missing(fs, w, ino, name);
  if (bad != 0) {
    fuse_reply_err(req, bad);
    return;
  }
  int exists = fsw_flags_exist(w, ino);
  if (exists <= 0) {
    fuse_reply_err(req, exists < 0 ? -exists : ENODATA); /* not there: no flags */
    return;
  }
  fsw_set_flags(req, w, ino, ""); /* removing the flags = no flags */
}

/* ---- refused outright ---- */

void fswrite_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  (void)ino;
  (void)newparent;
  (void)newname;
  fuse_reply_err(req, EPERM); /* a message lives in one mailbox; cp makes a copy */
}

void fswrite_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  (void)link;
  (void)parent;
  (void)name;
  fuse_reply_err(req, EPERM);
}

/* A regular file only: GNU tar makes each file it restores with xattrs
 * (a message with flags has user.imap.flags) by mknod, then opens it.  Like a
 * create without its open: a file never opened lingers out unsent. */
void fswrite_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  (void)rdev;
  if (!S_ISREG(mode)) {
    fuse_reply_err(req, EPERM); /* no devices, fifos or sockets in a mailbox */
    return;
  }
  FsWrite *w = fsw_of(req);
  FswFile *f = fsw_file_new(req, parent, name, mode);
  if (f == NULL)
    return;
  struct fuse_entry_param e;
  fsw_file_entry(w, f, &e);
  g_mutex_lock(&w->lock);
  _fsw_linger(w, f);
  g_mutex_unlock(&w->lock);
  fuse_reply_entry(req, &e);
}
