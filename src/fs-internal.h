/* fs-internal.h - what fs.c shares with fswrite.c (not a public API).
 *
 * The inode scheme stays fs.c's: fswrite.c asks it for directory nodes,
 * inode numbers and attributes instead of repeating the arithmetic.
 */
#pragma once

#include <sys/stat.h>

#include "imapfuse/fs.h"
#include "imapfuse/fswrite.h"

G_BEGIN_DECLS

const FsOptions *fs_options(Fs *fs);
FsWrite *fs_writer(Fs *fs);
/* The directory for ino, or NULL. */
DcNode *fs_dir(Fs *fs, fuse_ino_t ino);
/* The same for a request's inode; NULL, with ENOTDIR replied, if ino is
 * not a directory. */
DcNode *fs_dir_or_reply(fuse_req_t req, fuse_ino_t ino);
fuse_ino_t fs_dir_ino(Fs *fs, DcNode *n);
fuse_ino_t fs_msg_ino(guint32 epoch, guint32 uid);
void fs_dir_attr(Fs *fs, DcNode *n, struct stat *st);
void fs_msg_attr(Fs *fs, guint32 epoch, guint32 uidvalidity, const DcMsg *m, struct stat *st);
/* A warning, said once with a count while it repeats (at most every 10 s). */
void fs_warn(Fs *fs, const char *text);
/* dircache_listing, or while the server cannot be reached the listing
 * last known right (with a warning). */
gboolean fs_listing(Fs *fs, DcNode *n, gint64 max_age_us, DcListing *out, GError **error);
/* Message uid, not in n's listing l, cannot be on the server: its UID is
 * below the listing's UIDNEXT (dc_listing_may_have), and the listing is
 * no older than list_max_age (older, the folder may have been made again
 * under a new UIDVALIDITY, its UIDs starting at 1: a reviewer's test). */
gboolean fs_gone_for_good(Fs *fs, DcNode *n, const DcListing *l, guint32 uid);
/* After a read or change in folder n (mailbox) failed on its attempt-th
 * try: TRUE when it is worth asking again (a pause taken, *error
 * cleared).  While another client's DELETE of the folder is under way (or
 * it was made again at once) Dovecot answers NO, or BYE, and LIST still
 * shows the folder: asked up to three times, the folder is then gone
 * (*error NOT_FOUND: ENOENT) or another (ESTALE). */
gboolean fs_again_in_folder(Fs *fs, DcNode *n, const char *mailbox, int attempt,
                            GError **error);

G_END_DECLS
