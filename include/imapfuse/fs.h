/* fs.h - the FUSE low-level operations.
 *
 * Owns: inode numbers, attributes, directory handles and the mapping of
 * each FUSE request onto dircache/bodycache calls.  It never formats IMAP:
 * everything it knows about the server comes through those modules, and
 * every GError becomes an errno through ifs_errno_from_error().
 */
#pragma once

#include <fuse_lowlevel.h>
#include <glib.h>

#include "imapfuse/bodycache.h"
#include "imapfuse/dircache.h"
#include "imapfuse/fswrite.h"
#include "imapfuse/notify.h"

G_BEGIN_DECLS

typedef struct {
  uid_t uid;
  gid_t gid;
  double msg_timeout;      /* entry/attr timeout for messages (bytes never change) */
  double dir_timeout;      /* entry/attr timeout for directories */
  gint64 list_max_age_us;  /* opendir revalidates message lists older than this */
  gint64 tree_max_age_us;  /* LIST again when older than this on opendir of the root */
  gint64 lookup_tree_age_us; /* ... or when a name nobody knows is looked up */
  gboolean read_only;      /* mounted -o ro: no OPEN, RELEASE or FLUSH (see fs_open) */
  FsWriteOptions write;    /* the write path (fswrite.h) */
} FsOptions;

typedef struct Fs Fs;

/* Registers itself as dc's observer so the kernel forgets what changed. */
Fs *fs_new(Dircache *dc, Bodycache *bc, Notify *notify, const FsOptions *opts);
/* Starts its threads: call after fuse_daemonize() (a fork keeps only the
 * calling thread). */
void fs_start(Fs *fs);
void fs_free(Fs *fs);

/* FUSE requests on files so far (for the debug summary at exit). */
typedef struct {
  guint open, read, release, flush;
  guint stored; /* messages handed to the kernel at open, saving their READs */
  guint rests;  /* ... and the rest of a message at its first READ (fs_read) */
} FsCounts;
void fs_counts(Fs *fs, FsCounts *out);
/* Pass fs as the userdata of fuse_session_new(). */
/* xattr FALSE: no extended attributes at all (user.imap.flags unavailable). */
const struct fuse_lowlevel_ops *fs_lowlevel_ops(gboolean xattr);

G_END_DECLS
