/* lockfile.h - a lock file held for as long as its descriptor is open. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Opens path (relative to dirfd, or AT_FDCWD) read-write with
 * O_CLOEXEC | extra_flags (O_CREAT, O_EXCL: created 0600) and takes an
 * exclusive flock without waiting.  The descriptor, or -1 with errno set:
 * EWOULDBLOCK when another process holds the lock.  close() releases it. */
int lockfile_take(int dirfd, const char *path, int extra_flags);

G_END_DECLS
