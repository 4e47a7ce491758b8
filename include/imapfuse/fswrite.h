/* fswrite.h - the FUSE operations that change mail.
 *
 * Owns: unlink, rename, mkdir, rmdir, new files (create/write/flush/
 * fsync/release, kept locally by staging.c until they are sent with
 * APPEND), setattr, the user.imap.flags extended attribute, and the
 * refusals (link, symlink, mknod of anything but a regular file, writing
 * into a message).  It decides
 * which IMAP operations (cmd.h) each request becomes, runs them through
 * the pool, patches dircache with the outcome and queues kernel
 * invalidations (notify.h).  fs.c keeps the read path and calls the hooks
 * below for inodes of files being written.  User documentation:
 * README.md ("Changing mail") and doc/imapfuse.1.scd (CHANGING MAIL).
 */
#pragma once

#include <fuse_lowlevel.h>
#include <glib.h>

#include "imapfuse/dircache.h"
#include "imapfuse/notify.h"
#include "imapfuse/pool.h"

G_BEGIN_DECLS

typedef struct Fs Fs;
typedef struct FsWrite FsWrite;

typedef struct {
  Pool *pool;            /* for the operations that change the server */
  const char *account;   /* "user@host": names the staging and unsent directories */
  gboolean delete_trash; /* -o delete=trash: rm moves to the \Trash mailbox */
  gboolean no_dedup;     /* -o dedup=off: append even when identical bytes exist */
  guint64 max_message;   /* largest message; a bigger new file fails with EFBIG (0: no bound) */
  const char *max_message_from; /* where that limit comes from, for the warning */
  gint64 linger_us; /* a written file's name answers this long after its last close
                     * and after its writer's last work (0: the default, 30 s) */
} FsWriteOptions;

FsWrite *fswrite_new(Fs *fs, Dircache *dc, Notify *notify, const FsWriteOptions *opts);
/* Sends what is waiting (closed files under a temporary name), keeps
 * anything it cannot send in the unsent directory, and frees. */
/* Starts the thread that sends files whose last close was a while ago.
 * Separate from fswrite_new() because threads must not exist before the
 * fork of daemonising. */
void fswrite_start(FsWrite *w);
void fswrite_free(FsWrite *w);

/* ---- hooks for fs.c ---- */
/* A file being written (or just sent) named name in parent: its entry. */
gboolean fswrite_lookup(FsWrite *w, DcNode *parent, const char *name,
                        struct fuse_entry_param *e);
/* How readdir shows message uid (named name) of parent: 0 as the message,
 * 1 as the new file of that name (e filled: lookup finds it, not the
 * message), -1 not at all (a new file named like another UID is that
 * message, and goes by its own name while it lingers). */
int fswrite_dirent(FsWrite *w, DcNode *parent, guint32 uv, guint32 uid, const char *name,
                   struct fuse_entry_param *e);
/* Names of new files in parent to list besides its messages: those that
 * look like a UID no message of listing has (a restored "10.eml" that
 * became UID 1: as a second name of its message, rm must see it). */
char **fswrite_extra_names(FsWrite *w, DcNode *parent, const DcListing *listing);
/* The name mv gave a message it moved into parent from another directory
 * (not listed: the message is listed as its new <UID>.eml) answers for a
 * while like a written file's: e gets that message's entry. */
gboolean fswrite_moved_lookup(FsWrite *w, DcNode *parent, const char *name,
                              struct fuse_entry_param *e);
/* The same for the moved message's old inode (the kernel's entry for that
 * name until its invalidation is through, and any descriptor or O_PATH
 * handle on it): the moved message's inode, or 0. */
fuse_ino_t fswrite_moved_ino(FsWrite *w, fuse_ino_t ino);
/* Message uid of node (under UIDVALIDITY uv; uid 0: all of them) is gone,
 * by our rm or mv or as a listing or the server said: new files' names
 * that stand for it stop answering. */
void fswrite_message_gone(FsWrite *w, DcNode *node, guint32 uv, guint32 uid);
/* node was listed anew, its SELECT saying uidnext: names of new files
 * that stand for a message below uidnext that the listing lacks end (a
 * first listing reports nothing removed). */
void fswrite_listing_seen(FsWrite *w, DcNode *node, guint32 uidnext);
/* TRUE when ino is one of ours (then fs.c hands the request over). */
gboolean fswrite_owns(FsWrite *w, fuse_ino_t ino);
void fswrite_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fswrite_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fswrite_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                  struct fuse_file_info *fi);
void fswrite_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
/* Directory mode and times set by chmod/utimens (kept in memory only; the
 * times until its entries change). */
void fswrite_dir_attr(FsWrite *w, DcNode *n, struct stat *st);

/* ---- lowlevel operations (fs.c puts them in its table) ---- */
void fswrite_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                    struct fuse_file_info *fi);
void fswrite_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi);
void fswrite_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fswrite_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fswrite_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                       struct fuse_file_info *fi);
void fswrite_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void fswrite_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                    const char *newname, unsigned int flags);
void fswrite_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fswrite_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fswrite_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                     struct fuse_file_info *fi);
void fswrite_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                      size_t size, int flags);
void fswrite_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void fswrite_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void fswrite_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void fswrite_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void fswrite_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void fswrite_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);

/* ---- pure helpers (tests/unit/test_write.c) ---- */
/* rsync's temporary name: "." + name + "." + 6 letters/digits. */
gboolean fswrite_is_temp_name(const char *name);
/* An editor's swap or auto-save file (vim ".NAME.swp", ".swo", ...;
 * emacs "#NAME#"): refused in a mailbox, where it would become a message
 * every client sees while the editor runs (and after it crashes). */
gboolean fswrite_is_editor_scratch(const char *name);
/* The Message-ID header's value (unfolded, trimmed) or NULL. */
char *fswrite_message_id(const char *msg, gsize len);

G_END_DECLS
