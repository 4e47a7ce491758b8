/* lockfile.c - the one open-and-flock used by every lock file: the disk
 * cache's, the inode ids', and each staging run's. */
#include "imapfuse/lockfile.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

int lockfile_take(int dirfd, const char *path, int extra_flags, gint64 wait_us) {
  int fd = openat(dirfd, path, O_RDWR | O_CLOEXEC | extra_flags, 0600);
  if (fd < 0)
    return -1;
  gint64 end = g_get_monotonic_time() + wait_us;
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err != EWOULDBLOCK || g_get_monotonic_time() >= end) {
      close(fd);
      errno = err;
      return -1;
    }
    g_usleep(50 * 1000);
  }
  return fd;
}
