/* lockfile.h - a lock file held for as long as its descriptor is open. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Opens path (relative to dirfd, or AT_FDCWD) read-write with
 * O_CLOEXEC | extra_flags (O_CREAT, O_EXCL: created 0600) and takes an
 * exclusive flock, waiting up to wait_us for another holder to let go.
 * The descriptor, or -1 with errno set: EWOULDBLOCK when another process
 * holds the lock.  close() releases it. */
int lockfile_take(int dirfd, const char *path, int extra_flags, gint64 wait_us);

/* How long a mount waits for its account's cache locks: the mount before
 * it may still be writing its caches out after fusermount3 -u returned. */
#define LOCKFILE_MOUNT_WAIT_US (3 * G_USEC_PER_SEC)

G_END_DECLS
