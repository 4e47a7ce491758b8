/* fs.c - FUSE low-level operations over dircache and bodycache.
 *
 * Inodes: 1 is the root; a directory node id N is N << 32; a message is
 * (epoch << 32) | UID where the epoch id names (mailbox, UIDVALIDITY).  So
 * inodes are stable while mounted and cost nothing to keep; forget needs no
 * bookkeeping.
 */
#include "imapfuse/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "imapfuse/errors.h"
#include "imapfuse/loop.h"
#include "imapfuse/names.h"
#include "fs-internal.h" /* shared with fswrite.c (the write path) */

struct Fs {
  Dircache *dc;
  Bodycache *bc;
  Notify *notify;
  FsOptions opts;
  FsWrite *w; /* the write path (fswrite.c) */
  /* Open handles, freed at the end if the kernel never sent their
   * RELEASE (it comes after close() returns: an unmount can overtake it). */
  GMutex handles_lock;
  GQueue dirs, files;
  /* fs_reply_error's last warning (under warn_lock): the same one again is
   * counted, and the count said at most every FS_WARN_REPEAT_US (fs_warn) */
  GMutex warn_lock;
  char *warn_last;
  gint64 warn_at;
  guint warn_repeats;
  /* requests on files (fs_counts): what a scan costs per file */
  gint n_open, n_read, n_release, n_flush;
  gint reads_seen; /* n_open + n_read at the last opendir (listing ahead) */
  gint n_stored; /* messages handed to the kernel's page cache at open (fs_store) */
  gint n_rests;  /* the rest of a message at its first READ (fs_store) */
};


/* A message went away or changed: drop the kernel's entry for its name;
 * a directory's time moved: drop its attributes. */
static void fs_observer(DcNode *n, guint32 epoch, guint32 uid, DcChangeKind kind, gpointer user) {
  Fs *fs = user;
  /* DC_CHANGE_FLAGS too: the flags are not in the attributes, but the
   * ctime that shows their change is (dc_stamp_seen), so the kernel asks
   * again. */
  if (kind == DC_CHANGE_DIR) {
    /* Its mtime moved, and with it that of each directory above that
     * holds no mail of its own (they show their newest subfolder's). */
    for (DcNode *d = n; d != NULL; d = dcnode_parent(d)) {
      notify_inval_inode(fs->notify, fs_dir_ino(fs, d), FALSE);
      if (dcnode_parent(d) != NULL && dcnode_selectable(dcnode_parent(d)))
        break;
    }
    return;
  }
  if (kind == DC_CHANGE_LISTED) {
    fswrite_listing_seen(fs->w, n, uid);
    return;
  }
  if (kind == DC_CHANGE_UIDVALIDITY) {
    /* uid is the old UIDVALIDITY: its bytes can never be asked for again. */
    bodycache_forget_mailbox(fs->bc, dcnode_mailbox(n), uid);
    fswrite_message_gone(fs->w, n, uid, 0);
    return;
  }
  guint32 uv = 0;
  if (kind == DC_CHANGE_REMOVED && dircache_epoch(fs->dc, epoch, &uv) == n)
    fswrite_message_gone(fs->w, n, uv, uid);
  char name[32];
  g_snprintf(name, sizeof name, "%u.eml", uid);
  notify_inval_entry(fs->notify, fs_dir_ino(fs, n), name);
}

Fs *fs_new(Dircache *dc, Bodycache *bc, Notify *notify, const FsOptions *opts) {
  Fs *fs = g_new0(Fs, 1);
  fs->dc = dc;
  fs->bc = bc;
  fs->notify = notify;
  fs->opts = *opts;
  g_mutex_init(&fs->handles_lock);
  g_mutex_init(&fs->warn_lock);
  dircache_set_observer(dc, fs_observer, fs);
  fs->w = fswrite_new(fs, dc, notify, &opts->write);
  return fs;
}

void fs_start(Fs *fs) { fswrite_start(fs->w); }

static void fs_handles_free(Fs *fs);
static void fs_warn_repeats(const char *text, guint repeats);

void fs_counts(Fs *fs, FsCounts *out) {
  out->open = (guint)g_atomic_int_get(&fs->n_open);
  out->read = (guint)g_atomic_int_get(&fs->n_read);
  out->stored = (guint)g_atomic_int_get(&fs->n_stored);
  out->rests = (guint)g_atomic_int_get(&fs->n_rests);
  out->release = (guint)g_atomic_int_get(&fs->n_release);
  out->flush = (guint)g_atomic_int_get(&fs->n_flush);
}

void fs_free(Fs *fs) {
  if (fs != NULL) {
    /* The notify thread is gone: changes made while the write path shuts
     * down (it sends what is waiting) must not reach fs_observer. */
    dircache_set_observer(fs->dc, NULL, NULL);
    fswrite_free(fs->w);
    fs_handles_free(fs);
    g_mutex_clear(&fs->handles_lock);
    fs_warn_repeats(fs->warn_last, fs->warn_repeats);
    g_free(fs->warn_last);
    g_mutex_clear(&fs->warn_lock);
  }
  g_free(fs);
}

const FsOptions *fs_options(Fs *fs) { return &fs->opts; }
FsWrite *fs_writer(Fs *fs) { return fs->w; }

/* ---- inode numbers ---- */

fuse_ino_t fs_dir_ino(Fs *fs, DcNode *n) {
  return n == dircache_root(fs->dc) ? FUSE_ROOT_ID : (fuse_ino_t)dcnode_id(n) << 32;
}

fuse_ino_t fs_msg_ino(guint32 epoch, guint32 uid) {
  return ((fuse_ino_t)epoch << 32) | uid;
}

/* The directory for ino, or NULL. */
DcNode *fs_dir(Fs *fs, fuse_ino_t ino) {
  if (ino == FUSE_ROOT_ID)
    return dircache_root(fs->dc);
  if ((ino & 0xffffffffu) != 0)
    return NULL;
  return dircache_node(fs->dc, (guint32)(ino >> 32));
}

DcNode *fs_dir_or_reply(fuse_req_t req, fuse_ino_t ino) {
  DcNode *n = fs_dir(fuse_req_userdata(req), ino);
  if (n == NULL)
    fuse_reply_err(req, ENOTDIR);
  return n;
}

#define FS_WARN_REPEAT_US (10 * G_USEC_PER_SEC)

/* The line that says how often text came again. */
static void fs_warn_repeats(const char *text, guint repeats) {
  if (repeats > 0)
    g_warning("%s (%u more %s)", text, repeats, repeats == 1 ? "time" : "times");
}

/* A warning, unless it is the same as the last one: a reader of a server
 * that was down printed one line per read(), 78 in 4 s.  Repeats are
 * counted and said in one line ("TEXT (N more times)") at most every
 * 10 s, before a different warning, and at the end. */
void fs_warn(Fs *fs, const char *text) {
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&fs->warn_lock);
  if (g_strcmp0(fs->warn_last, text) == 0) {
    fs->warn_repeats++;
    guint repeats = 0;
    if (now - fs->warn_at >= FS_WARN_REPEAT_US) { /* one line for the last 10 s */
      repeats = fs->warn_repeats;
      fs->warn_repeats = 0;
      fs->warn_at = now;
    }
    g_mutex_unlock(&fs->warn_lock);
    fs_warn_repeats(text, repeats);
    return;
  }
  guint repeats = fs->warn_repeats;
  g_autofree char *before = fs->warn_last;
  fs->warn_last = g_strdup(text);
  fs->warn_at = now;
  fs->warn_repeats = 0;
  g_mutex_unlock(&fs->warn_lock);
  fs_warn_repeats(before, repeats);
  g_warning("%s", text);
}

static void fs_reply_error(fuse_req_t req, const char *what, GError *error) {
  int err = ifs_errno_from_error(error);
  if (err != ENOENT && err != ESTALE) {
    g_autofree char *text = g_strdup_printf("%s: %s", what, error->message);
    fs_warn(fuse_req_userdata(req), text);
  }
  fuse_reply_err(req, err);
}

/* ---- attributes ---- */

void fs_dir_attr(Fs *fs, DcNode *n, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = fs_dir_ino(fs, n);
  st->st_mode = S_IFDIR | 0700;
  guint64 changed;
  guint subdirs;
  dircache_dir_info(fs->dc, n, &changed, &subdirs);
  /* "." and its name in the parent, and each subfolder's "..", as on a
   * disk: find's leaf optimisation and ls -l go by it. */
  st->st_nlink = 2 + subdirs;
  st->st_uid = fs->opts.uid;
  st->st_gid = fs->opts.gid;
  st->st_size = 4096;
  st->st_blksize = 4096;
  /* When its entries last changed (dircache_dir_info). */
  st->st_mtim = st->st_ctim = st->st_atim =
      (struct timespec){.tv_sec = (time_t)(changed / G_USEC_PER_SEC),
                        .tv_nsec = (long)(changed % G_USEC_PER_SEC) * 1000};
  fswrite_dir_attr(fs->w, n, st); /* chmod/utimens kept in memory */
}

void fs_msg_attr(Fs *fs, guint32 epoch, guint32 uidvalidity, const DcMsg *m, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = fs_msg_ino(epoch, m->uid);
  st->st_mode = S_IFREG | 0600;
  st->st_nlink = 1;
  st->st_uid = fs->opts.uid;
  st->st_gid = fs->opts.gid;
  st->st_size = (off_t)m->size;
  st->st_blksize = 4096;
  st->st_blocks = (blkcnt_t)((m->size + 511) / 512);
  st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = (time_t)m->date;
  /* ctime: when this cache first listed it, if later (dc_stamp_seen). */
  if ((gint64)m->seen > m->date)
    st->st_ctim.tv_sec = (time_t)m->seen;
  /* ctime also says which UIDVALIDITY: a folder deleted and recreated
   * under its name has the old UIDs again, and a message of the same size
   * and date with the same inode number looked unchanged to restic and
   * borg (they compare ctime, size and inode), which kept the old bytes
   * in the backup.  mtime stays the INTERNALDATE alone (rsync, cp -p). */
  st->st_ctim.tv_nsec = (long)(uidvalidity % 1000000000u);
}

gboolean fs_gone_for_good(Fs *fs, DcNode *n, const DcListing *l, guint32 uid) {
  return !dc_listing_may_have(l, uid) &&
         dircache_listing_age(fs->dc, n) <= fs->opts.list_max_age_us;
}

/* n's listing, no older than max_age_us (dircache_listing); when the
 * server cannot be reached, the last one known to be right in this mount,
 * however old: ls of a folder failed with EIO while the server was down,
 * though its messages could still be read from the cache.  Not when the
 * server answers, if with BYE (a folder being deleted). */
gboolean fs_listing(Fs *fs, DcNode *n, gint64 max_age_us, DcListing *out, GError **error) {
  if (dircache_listing(fs->dc, n, max_age_us, out, error))
    return TRUE;
  gint64 age_us;
  if (!ifs_error_is_unreachable(*error) || !dircache_listing_held(fs->dc, n, out, &age_us))
    return FALSE;
  /* In minutes: a warning the same as the last is only counted (fs_warn). */
  gint64 min = age_us / (60 * G_USEC_PER_SEC);
  g_autofree char *ago = min == 0 ? g_strdup("less than a minute")
                                  : g_strdup_printf("%" G_GINT64_FORMAT " min", min);
  g_autofree char *text = g_strdup_printf("%s: %s; showing its listing from %s ago",
                                          dcnode_mailbox(n), (*error)->message, ago);
  fs_warn(fs, text);
  g_clear_error(error);
  return TRUE;
}

/* The message behind ino from the cached listing (no network unless the
 * mailbox was never listed).  Returns FALSE with errno in *err.  With keep,
 * the listing snapshot it was found in is handed over (clear it after).
 * With found_as, the inode it was found under: another than ino for a
 * message mv moved a moment ago. */
static gboolean fs_msg(Fs *fs, fuse_ino_t ino, DcNode **node, guint32 *uidvalidity, DcMsg *out,
                       DcListing *keep, fuse_ino_t *found_as, int *err) {
  if (found_as != NULL)
    *found_as = ino;
  guint32 epoch = (guint32)(ino >> 32), uid = (guint32)(ino & 0xffffffffu), uv = 0;
  DcNode *n = dircache_epoch(fs->dc, epoch, &uv);
  if (n == NULL || uid == 0) {
    *err = ENOENT;
    return FALSE;
  }
  DcListing l;
  g_autoptr(GError) error = NULL;
  dircache_touch(fs->dc, n); /* in use: the watcher goes on polling it */
  if (!fs_listing(fs, n, G_MAXINT64, &l, &error)) {
    /* Made again under its name (a STATUS showed another UIDVALIDITY) and
     * no new listing to be had yet (the server refuses its SELECT while
     * another client changes it): a message of the old one is stale all
     * the same.  It read EIO, with no word (a test's readers, at times). */
    *err = dircache_uidvalidity_gone(n, uv) ? ESTALE : ifs_errno_from_error(error);
    return FALSE;
  }
  const DcMsg *m = l.epoch == epoch ? dc_listing_find(&l, uid) : NULL;
  if (l.epoch != epoch) /* a folder of the name again, or none any more */
    *err = dcnode_present(n) ? ESTALE : ENOENT;
  else if (m == NULL)
    *err = ENOENT;
  else {
    *out = *m;
    *node = n;
    *uidvalidity = uv;
  }
  gboolean found = m != NULL;
  if (found && keep != NULL)
    *keep = l; /* the caller's snapshot now */
  else
    dc_listing_clear(&l);
  /* Moved by mv a moment ago: the kernel's entry for the name mv gave is
   * the old inode until its invalidation is through, and an open of it
   * then failed with ENOENT (sed -i right after mv, at times). */
  fuse_ino_t moved = !found && *err == ENOENT ? fswrite_moved_ino(fs->w, ino) : 0;
  if (moved != 0 && moved != ino)
    return fs_msg(fs, moved, node, uidvalidity, out, keep, found_as, err);
  return found;
}

/* ---- operations ---- */

static void fs_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  /* Listings come with attributes: ls -l and find cost no lookups. */
  if (conn->capable & FUSE_CAP_READDIRPLUS)
    conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_ASYNC_READ)
    conn->want |= FUSE_CAP_ASYNC_READ;
  /* A message's bytes never change under its inode: no need for the kernel
   * to drop pages when it sees attributes again. */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

gboolean fs_again_in_folder(Fs *fs, DcNode *n, const char *mailbox, int attempt,
                            GError **error) {
  if (dircache_check_gone(fs->dc, n, mailbox, error) || attempt == 3 ||
      !(g_error_matches(*error, IFS_ERROR, IFS_ERROR_NO) ||
        g_error_matches(*error, IFS_ERROR, IFS_ERROR_CLOSED)))
    return FALSE;
  loop_pause(100 * 1000);
  g_clear_error(error);
  return TRUE;
}

/* The folder tree, no older than max_age_us (dircache_refresh_tree); when
 * the server cannot be reached, the mount's last LIST (it had one to
 * mount), with a warning: a lookup of a new name (mkdir's, a directory
 * mv's target) failed with EIO and nothing said, and mkdir never ran to
 * say the server was away (an exploratory test). */
static gboolean fs_tree(Fs *fs, gint64 max_age_us, GError **error) {
  if (dircache_refresh_tree(fs->dc, max_age_us, error))
    return TRUE;
  if (!ifs_error_is_unreachable(*error))
    return FALSE;
  g_autofree char *text = g_strdup_printf(
      "listing mailboxes: %s; showing the folders last listed", (*error)->message);
  fs_warn(fs, text);
  g_clear_error(error);
  return TRUE;
}

static gboolean fs_entry_for(Fs *fs, DcNode *parent, const char *name,
                             struct fuse_entry_param *e, int *err) {
  memset(e, 0, sizeof *e);
  DcNode *child = dircache_child(fs->dc, parent, name);
  if (child == NULL && !names_parse_message_filename(name, &(guint32){0})) {
    /* Perhaps a mailbox created elsewhere since the last LIST. */
    g_autoptr(GError) error = NULL;
    if (!fs_tree(fs, MAX(fs->opts.lookup_tree_age_us, G_USEC_PER_SEC), &error)) {
      *err = ifs_errno_from_error(error);
      return FALSE;
    }
    child = dircache_child(fs->dc, parent, name);
  }
  if (child != NULL) {
    e->ino = fs_dir_ino(fs, child);
    fs_dir_attr(fs, child, &e->attr);
    e->attr_timeout = e->entry_timeout = fs->opts.dir_timeout;
    return TRUE;
  }
  guint32 uid;
  if (!names_parse_message_filename(name, &uid) || !dcnode_selectable(parent)) {
    *err = ENOENT;
    return FALSE;
  }
  gint64 asked = g_get_monotonic_time();
  for (int pass = 0; pass < 2; pass++) {
    DcListing l;
    g_autoptr(GError) error = NULL;
    /* First the cached list; if the name is not in it, and the list was not
     * fetched for this very lookup, ask the server once (the message may
     * have just arrived).  Concurrent misses share one fetch. */
    dircache_touch(fs->dc, parent);
    if (pass == 0 ? !fs_listing(fs, parent, G_MAXINT64, &l, &error)
                  : !dircache_listing(fs->dc, parent, 0, &l, &error)) {
      *err = ifs_errno_from_error(error);
      return FALSE;
    }
    const DcMsg *m = dc_listing_find(&l, uid);
    if (m != NULL && fswrite_dirent(fs->w, parent, l.uidvalidity, uid, name, e) < 0) {
      dc_listing_clear(&l); /* hidden while a new file's name is it (_fsw_rehide) */
      break;
    }
    if (m != NULL) {
      e->ino = fs_msg_ino(l.epoch, uid);
      fs_msg_attr(fs, l.epoch, l.uidvalidity, m, &e->attr);
      e->attr_timeout = e->entry_timeout = fs->opts.msg_timeout;
    }
    gboolean gone = m == NULL && fs_gone_for_good(fs, parent, &l, uid);
    dc_listing_clear(&l);
    if (m != NULL)
      return TRUE;
    /* Below UIDNEXT: expunged for good (cp -r and restores write such
     * names: a listing for each cost a SELECT and a FETCH). */
    if (gone || dircache_listing_age(fs->dc, parent) <= g_get_monotonic_time() - asked)
      break;
  }
  *err = ENOENT;
  return FALSE;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  Fs *fs = fuse_req_userdata(req);
  DcNode *p = fs_dir_or_reply(req, parent);
  if (p == NULL)
    return;
  struct fuse_entry_param e;
  int err;
  if (fswrite_lookup(fs->w, p, name, &e) || /* a file being written */
      fswrite_moved_lookup(fs->w, p, name, &e)) {
    fuse_reply_entry(req, &e);
    return;
  }
  if (!fs_entry_for(fs, p, name, &e, &err)) {
    if (err == ENOENT) {
      /* Negative entries are not cached: mail arrives any time. */
      memset(&e, 0, sizeof e);
      fuse_reply_entry(req, &e);
    } else {
      fuse_reply_err(req, err);
    }
    return;
  }
  fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  struct stat st;
  DcNode *d = fs_dir(fs, ino);
  if (d != NULL) {
    fs_dir_attr(fs, d, &st);
    fuse_reply_attr(req, &st, fs->opts.dir_timeout);
    return;
  }
  if (fswrite_owns(fs->w, ino)) {
    fswrite_getattr(req, ino, fi);
    return;
  }
  DcNode *n;
  guint32 uv;
  DcMsg m;
  int err;
  fuse_ino_t found_as;
  if (!fs_msg(fs, ino, &n, &uv, &m, NULL, &found_as, &err)) {
    fuse_reply_err(req, err);
    return;
  }
  fs_msg_attr(fs, (guint32)(ino >> 32), uv, &m, &st);
  st.st_ino = ino; /* the moved message's old inode too (fs_msg) */
  fuse_reply_attr(req, &st, found_as != ino ? 0 : fs->opts.msg_timeout);
}

/* ---- directories ---- */

typedef struct {
  DcNode *node;
  GPtrArray *children; /* DcChild* */
  DcListing listing;
  char **extra; /* names of new files shown besides the messages (fswrite_extra_names) */
  GList link; /* in Fs.dirs */
} FsDir;

static void fs_dir_free(FsDir *d) {
  g_ptr_array_unref(d->children);
  g_strfreev(d->extra);
  dc_listing_clear(&d->listing);
  g_free(d);
}

/* Enters or takes out a handle (link's data set) in one of Fs's lists. */
static void fs_handle_add(Fs *fs, GQueue *q, GList *link) {
  g_mutex_lock(&fs->handles_lock);
  g_queue_push_tail_link(q, link);
  g_mutex_unlock(&fs->handles_lock);
}

static void fs_handle_remove(Fs *fs, GQueue *q, GList *link) {
  g_mutex_lock(&fs->handles_lock);
  g_queue_unlink(q, link);
  g_mutex_unlock(&fs->handles_lock);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  DcNode *n = fs_dir_or_reply(req, ino);
  if (n == NULL)
    return;
  g_autoptr(GError) error = NULL;
  gint64 tree_age = n == dircache_root(fs->dc) ? fs->opts.tree_max_age_us : G_MAXINT64;
  if (!fs_tree(fs, tree_age, &error)) {
    fs_reply_error(req, "listing mailboxes", error);
    return;
  }
  if (n != dircache_root(fs->dc) && !dcnode_present(n)) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  FsDir *d = g_new0(FsDir, 1);
  d->node = n;
  dircache_touch(fs->dc, n);
  if (!fs_listing(fs, n, fs->opts.list_max_age_us, &d->listing, &error)) {
    g_free(d);
    fs_reply_error(req, dcnode_mailbox(n), error);
    return;
  }
  /* A listing that shows a message gone must not be followed by an open
   * of its old name that the kernel answers from its own caches (on -o ro
   * no OPEN reaches us to refuse it): the names this refresh dropped are
   * invalidated before the reply.  Bounded, see notify_flush. */
  if (!notify_flush(fs->notify, G_USEC_PER_SEC))
    g_debug("opendir %s: kernel invalidations still queued after 1 s", dcnode_mailbox(n));
  /* A walk that reads files (grep -r) spends its time reading, and
   * listings ahead took connections and CPU from read-ahead there (cold
   * grep 0.55 -> 0.63-0.67 s on loopback); only walks that read nothing
   * between folders (ls -R, find, du) get them. */
  gint reads = g_atomic_int_get(&fs->n_open) + g_atomic_int_get(&fs->n_read);
  gint before = g_atomic_int_get(&fs->reads_seen); /* a race costs a guess */
  g_atomic_int_set(&fs->reads_seen, reads);
  dircache_prefetch_after(fs->dc, n, reads == before);
  d->children = dircache_children(fs->dc, n);
  d->extra = fswrite_extra_names(fs->w, n, &d->listing);
  d->link.data = d;
  fs_handle_add(fs, &fs->dirs, &d->link);
  fi->fh = (uint64_t)(uintptr_t)d;
  fi->cache_readdir = 0;
  fuse_reply_open(req, fi);
}

static void fs_readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                              struct fuse_file_info *fi, gboolean plus) {
  (void)ino;
  Fs *fs = fuse_req_userdata(req);
  FsDir *d = (FsDir *)(uintptr_t)fi->fh;
  g_autofree char *buf = g_malloc(size);
  size_t used = 0;
  guint nchild = d->children->len;
  guint nmsg = d->listing.msgs != NULL ? d->listing.msgs->len : 0;
  guint nextra = d->extra != NULL ? g_strv_length(d->extra) : 0;
  /* Positions: 0 ".", 1 "..", then subdirectories, then messages, then
   * new files' names shown besides them. */
  for (guint64 pos = (guint64)off; pos < 2 + (guint64)nchild + nmsg + nextra; pos++) {
    struct fuse_entry_param e = {0};
    char name[32];
    const char *nm;
    guint64 i = pos - 2;
    if (pos < 2) {
      /* As libfuse's passthrough_ll: no entry (ino 0) for "." and "..",
       * only their attributes; the kernel links neither. */
      DcNode *dn = pos == 0 || dcnode_parent(d->node) == NULL ? d->node : dcnode_parent(d->node);
      nm = pos == 0 ? "." : "..";
      fs_dir_attr(fs, dn, &e.attr);
    } else if (i < nchild) {
      const DcChild *c = g_ptr_array_index(d->children, i);
      DcNode *cn = dircache_node(fs->dc, c->id);
      nm = c->name;
      e.ino = (fuse_ino_t)c->id << 32;
      fs_dir_attr(fs, cn, &e.attr);
      e.attr_timeout = e.entry_timeout = fs->opts.dir_timeout;
    } else if (i >= (guint64)nchild + nmsg) {
      nm = d->extra[i - nchild - nmsg];
      if (!fswrite_lookup(fs->w, d->node, nm, &e))
        continue; /* gone since opendir */
    } else {
      const DcMsg *m = &g_array_index(d->listing.msgs, DcMsg, i - nchild);
      g_snprintf(name, sizeof name, "%u.eml", m->uid);
      nm = name;
      int how = fswrite_dirent(fs->w, d->node, d->listing.uidvalidity, m->uid, name, &e);
      if (how < 0)
        continue;
      if (how == 0) {
        e.ino = fs_msg_ino(d->listing.epoch, m->uid);
        fs_msg_attr(fs, d->listing.epoch, d->listing.uidvalidity, m, &e.attr);
        e.attr_timeout = e.entry_timeout = fs->opts.msg_timeout;
      }
    }
    size_t n = plus ? fuse_add_direntry_plus(req, buf + used, size - used, nm, &e, (off_t)(pos + 1))
                    : fuse_add_direntry(req, buf + used, size - used, nm, &e.attr, (off_t)(pos + 1));
    if (n > size - used)
      break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
  fs_readdir_common(req, ino, size, off, fi, FALSE);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
  fs_readdir_common(req, ino, size, off, fi, TRUE);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  Fs *fs = fuse_req_userdata(req);
  FsDir *d = (FsDir *)(uintptr_t)fi->fh;
  fs_handle_remove(fs, &fs->dirs, &d->link);
  fs_dir_free(d);
  fuse_reply_err(req, 0);
}

/* ---- files ---- */

typedef struct {
  DcNode *node;
  guint32 uidvalidity;
  guint32 uid;
  guint64 size;
  GList link; /* in Fs.files */
} FsFile;

/* The handles the kernel never released (no FUSE thread runs any more). */
static void fs_handles_free(Fs *fs) {
  while (fs->dirs.head != NULL) {
    FsDir *d = fs->dirs.head->data;
    g_queue_unlink(&fs->dirs, &d->link);
    fs_dir_free(d);
  }
  while (fs->files.head != NULL) {
    FsFile *f = fs->files.head->data;
    g_queue_unlink(&fs->files, &f->link);
    g_free(f);
  }
}

/* The message of inode ino into f (node, UIDVALIDITY, UID, size); opened:
 * tell read-ahead that a reader opened it.  Used by OPEN and, on
 * read-only mounts where the kernel sends none, by each READ: there the
 * first READ (offset 0) counts as the open, the one that reaches the end
 * as the close (fs_read). */
static gboolean fs_file_find(Fs *fs, fuse_ino_t ino, gboolean opened, FsFile *f, int *err,
                             gboolean *first) {
  DcMsg m;
  DcListing l;
  if (!fs_msg(fs, ino, &f->node, &f->uidvalidity, &m, opened ? &l : NULL, NULL, err))
    return FALSE;
  f->uid = m.uid;
  f->size = m.size;
  if (opened) {
    gboolean fst = bodycache_opened(fs->bc, dcnode_mailbox(f->node), &l, f->uid);
    if (first != NULL)
      *first = fst;
    dc_listing_clear(&l);
  }
  return TRUE;
}

/* f's bytes turned out to be len long, not the listed RFC822.SIZE (some
 * servers' figure is off): from now on stat says len. */
static gboolean fs_size_learned(Fs *fs, const FsFile *f, guint64 len) {
  g_debug("UID %u in %s: RFC822.SIZE %" G_GUINT64_FORMAT " but %" G_GUINT64_FORMAT " bytes",
          f->uid, dcnode_mailbox(f->node), f->size, len);
  return dircache_set_size(fs->dc, f->node, f->uidvalidity, f->uid, len);
}

/* A scan's reader finds the bytes of most messages at hand when it opens
 * them (read ahead, or read from the disk cache ahead).  Handing them to
 * the kernel's page cache before the OPEN reply lets its read()s find them
 * there: the READ request each file cost, and the two thread wake-ups it
 * takes, are saved (cold grep -r of 10,000 files: 1.25 -> 0.85 s, rg -j4
 * 0.87 -> 0.78 s, medians of 6).  Only at the scan's first open of the
 * message (a second pass finds the kernel's pages: keep_cache), only for
 * a whole message of one chunk, and only if it is not shorter than the
 * listing says (the pages past its end would read as zeros; fs_read's
 * short reply makes the kernel cut the size instead).  A longer one sets
 * the kernel's size to its own with the store.  Called before the reply,
 * the pages are in place when the kernel checks keep_cache.
 * From a first READ (from > 0: where that READ ends), the rest of the
 * message: on -o ro no OPEN can hand the bytes over, and a reader whose
 * first read is short (rg reads 3 bytes first; the kernel asks 16 KiB)
 * cost a READ more for every larger message (cold rg -j4 of 10,000
 * messages: 12,929 -> 10,158 READs; rg 0.558 -> 0.532 s and 0.580 ->
 * 0.566 s, grep 0.527 -> 0.514 s and 0.521 -> 0.506 s, medians of 6 and
 * 10 alternating runs).  Only when the message is as long as listed: the
 * READ's reply has already set the kernel's size. */
static gboolean fs_store(Fs *fs, fuse_ino_t ino, const FsFile *f, guint64 from) {
  g_autoptr(GBytes) b =
      bodycache_peek(fs->bc, dcnode_mailbox(f->node), f->uidvalidity, f->uid, f->size);
  if (b == NULL)
    return FALSE;
  gsize n;
  const guint8 *data = g_bytes_get_data(b, &n);
  if (n < f->size || n == 0 || from >= n || (from > 0 && n != f->size))
    return FALSE;
  /* The kernel may wait for pages another reader's READ holds (notify.h):
   * only while a worker is left to answer it. */
  if (!loop_block_begin())
    return FALSE;
  if (n > f->size)
    fs_size_learned(fs, f, n);
  gboolean ok = notify_store(fs->notify, ino, from, data + from, n - from);
  loop_block_end();
  if (ok)
    g_atomic_int_inc(from == 0 ? &fs->n_stored : &fs->n_rests);
  return ok;
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  g_atomic_int_inc(&fs->n_open);
  if (fs->opts.read_only) {
    /* Nothing can be written, so no open needs a handle: ENOSYS makes the
     * kernel stop sending OPEN and RELEASE (and, with fs_flush, FLUSH) for
     * every file, two of the three requests a grep -r costs per file.  The
     * kernel then keeps page caches (keep_cache) and fs_read finds the
     * message by its inode number. */
    fuse_reply_err(req, ENOSYS);
    return;
  }
  if (fs_dir(fs, ino) != NULL) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (fswrite_owns(fs->w, ino)) {
    fswrite_open(req, ino, fi);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EPERM); /* a message's bytes cannot change */
    return;
  }
  FsFile *f = g_new0(FsFile, 1);
  int err;
  gboolean first = FALSE;
  if (!fs_file_find(fs, ino, TRUE, f, &err, &first)) {
    g_free(f);
    fuse_reply_err(req, err);
    return;
  }
  f->link.data = f;
  fs_handle_add(fs, &fs->files, &f->link);
  fi->fh = (uint64_t)(uintptr_t)f;
  fi->keep_cache = 1; /* bytes are immutable per (mailbox, UIDVALIDITY, UID) */
  fi->noflush = 1;    /* nothing to flush: saves a request per close */
  if (first)
    fs_store(fs, ino, f, 0);
  fuse_reply_open(req, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  g_atomic_int_inc(&fs->n_read);
  if (fswrite_owns(fs->w, ino)) {
    fswrite_read(req, ino, size, off, fi);
    return;
  }
  FsFile unopened = {0}, *f = (FsFile *)(uintptr_t)fi->fh;
  if (f == NULL) {
    int err;
    if (!fs_file_find(fs, ino, off == 0, &unopened, &err, NULL)) {
      fuse_reply_err(req, err);
      return;
    }
    f = &unopened;
  }
  g_autoptr(GError) error = NULL;
  guint64 real = f->size;
  const char *mailbox = dcnode_mailbox(f->node);
  g_autoptr(GBytes) b = bodycache_read(fs->bc, mailbox, f->uidvalidity, f->uid, f->size,
                                       (guint64)off, size, &real, &error);
  /* Another client deleted or renamed the folder (SELECT: NO, or a BYE):
   * the message is gone (ENOENT), not an I/O error with a warning.  Once,
   * it read EIO. */
  for (int attempt = 1; b == NULL && !g_error_matches(error, IFS_ERROR, IFS_ERROR_TIMEOUT) &&
                        fs_again_in_folder(fs, f->node, mailbox, attempt, &error);
       attempt++)
    b = bodycache_read(fs->bc, mailbox, f->uidvalidity, f->uid, f->size, (guint64)off, size,
                       &real, &error);
  if (b == NULL) {
    /* The folder was made again: the next lookup lists it anew, and the
     * kernel forgets the old names now (with poll=0 nothing else would
     * tell it: every read of the name gave ESTALE until an ls). */
    if (g_error_matches(error, IFS_ERROR, IFS_ERROR_STALE))
      dircache_uidvalidity_changed(fs->dc, f->node, f->uidvalidity);
    fs_reply_error(req, "reading a message", error);
    return;
  }
  if (real != f->size && fs_size_learned(fs, f, real)) {
    /* Longer: the kernel cut this read at the listed size and would end
     * the file there; with its attributes stale, a read past that size
     * asks for them (the size just learned) before it decides.  Before
     * the reply, so that the reader's next read finds them stale.  Not
     * for shorter: the short reply cuts the kernel's size, which a stale
     * mark would stop (and the pages' zeros past the end would be read). */
    if (real > f->size) {
      notify_inval_inode(fs->notify, ino, FALSE);
      notify_flush(fs->notify, G_USEC_PER_SEC);
    }
  }
  gsize n;
  const void *data = g_bytes_get_data(b, &n);
  /* On -o ro (no OPEN: no handle), a first READ that does not reach the
   * end: the rest goes to the kernel's pages now, before the reply wakes
   * the reader (fs_store).  This READ holds the pages up to off + size
   * only.  Not on read-write mounts, where the OPEN hands over what is at
   * hand and a READ at 0 means the reader waited for the bytes: there it
   * moved cold rg -j4 0.541 -> 0.559 s and 0.585 -> 0.605 s (medians of
   * 8 alternating runs, two sittings; grep 0.515 -> 0.507, 0.589 -> 0.550). */
  gboolean rest = FALSE;
  if (f == &unopened && off == 0 && n == size && real == f->size && real > size) {
    guint64 page = (guint64)sysconf(_SC_PAGESIZE);
    rest = fs_store(fs, ino, f, ((guint64)size + page - 1) / page * page);
  }
  fuse_reply_buf(req, data, n);
  /* Read to the end, or the kernel has the rest (no READ will reach it):
   * the memory cache may let it go before messages nobody has read. */
  if (f == &unopened && (rest || (guint64)off + n >= real))
    bodycache_closed(fs->bc, dcnode_mailbox(f->node), f->uidvalidity, f->uid, f->size);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  g_atomic_int_inc(&fs->n_release);
  if (fswrite_owns(fs->w, ino)) {
    fswrite_release(req, ino, fi);
    return;
  }
  FsFile *f = (FsFile *)(uintptr_t)fi->fh;
  fuse_reply_err(req, 0);
  bodycache_closed(fs->bc, dcnode_mailbox(f->node), f->uidvalidity, f->uid, f->size);
  fs_handle_remove(fs, &fs->files, &f->link);
  g_free(f);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Fs *fs = fuse_req_userdata(req);
  g_atomic_int_inc(&fs->n_flush);
  if (fs->opts.read_only)
    fuse_reply_err(req, ENOSYS); /* never again: no FLUSH at each close */
  else
    fswrite_flush(req, ino, fi);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs st = {0};
  st.f_bsize = st.f_frsize = 4096;
  st.f_namemax = 255;
  /* IMAP tells no free space (a quota, if any, refuses at APPEND: EDQUOT).
   * Zero free made file managers refuse to copy into the mount; like
   * sshfs without statvfs, report plenty (1 TiB, 2^30 files). */
  st.f_blocks = st.f_bfree = st.f_bavail = (1ull << 40) / st.f_frsize;
  st.f_files = st.f_ffree = st.f_favail = 1u << 30;
  fuse_reply_statfs(req, &st);
}

static const struct fuse_lowlevel_ops fs_ops = {
    .init = fs_init,
    .lookup = fs_lookup,
    .getattr = fs_getattr,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .readdirplus = fs_readdirplus,
    .releasedir = fs_releasedir,
    .open = fs_open,
    .read = fs_read,
    .release = fs_release,
    .statfs = fs_statfs,
    /* the write path: fswrite.c */
    .create = fswrite_create,
    .write = fswrite_write,
    .flush = fs_flush,
    .fsync = fswrite_fsync,
    .fallocate = fswrite_fallocate,
    .unlink = fswrite_unlink,
    .rename = fswrite_rename,
    .mkdir = fswrite_mkdir,
    .rmdir = fswrite_rmdir,
    .setattr = fswrite_setattr,
    .setxattr = fswrite_setxattr,
    .getxattr = fswrite_getxattr,
    .listxattr = fswrite_listxattr,
    .removexattr = fswrite_removexattr,
    .link = fswrite_link,
    .symlink = fswrite_symlink,
    .mknod = fswrite_mknod,
};

const struct fuse_lowlevel_ops *fs_lowlevel_ops(gboolean xattr) {
  static struct fuse_lowlevel_ops plain;
  if (xattr)
    return &fs_ops;
  /* Without xattr handlers libfuse answers ENOSYS once and the kernel stops
   * asking: `ls -l` then costs no GETXATTR round trips per file. */
  plain = fs_ops;
  plain.setxattr = NULL;
  plain.getxattr = NULL;
  plain.listxattr = NULL;
  plain.removexattr = NULL;
  return &plain;
}
