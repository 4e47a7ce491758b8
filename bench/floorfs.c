/* floorfs.c - the "FUSE floor" for imapfuse's benchmarks.
 *
 * A minimal, read-only, in-memory FUSE filesystem (libfuse3 low-level API,
 * multithreaded loop).  At start it loads a local directory tree (the same
 * mail tree imapfuse would show: MAILBOX/.../<UID>.eml with CRLF bytes as
 * the server returns them) completely into memory, then mounts and serves
 * it: lookup, getattr, opendir/readdir/readdirplus, open, read, statfs.
 *
 * Everything is set up for the best case: entry and attribute timeouts of a
 * day, readdirplus always (ls -l needs no lookups), cached readdir,
 * keep_cache on open (the page cache survives close/reopen), async reads,
 * replies straight from memory.  What is left is the cost of FUSE itself:
 * the measured times are the floor any FUSE filesystem (imapfuse included)
 * pays for `ls -lR` and `grep -r` over the same tree.
 *
 * usage: floorfs [-f] [-s] [-o FUSE options] SRCDIR MOUNTPOINT
 * Only regular files and directories are loaded (others are skipped); the
 * source tree must fit in memory.  The tree never changes once mounted.
 *
 * Build: cc -O2 -Wall -Wextra $(pkg-config --cflags fuse3) floorfs.c \
 *            $(pkg-config --libs fuse3) -o floorfs
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define FLOOR_TIMEOUT 86400.0 /* seconds; nothing ever changes */

typedef struct {
  char *name;          /* component name ("" for the root) */
  fuse_ino_t parent;   /* inode of the parent */
  struct stat st;      /* st_ino = index + 1 */
  char *data;          /* file bytes (regular files) */
  uint32_t *kids;      /* child inodes sorted by name (directories) */
  uint32_t nkids;
} FloorNode;

static FloorNode *nodes;
static size_t nnodes, capnodes;
static uint64_t total_bytes, total_files;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) {
    fprintf(stderr, "floorfs: out of memory\n");
    exit(1);
  }
  return p;
}

static fuse_ino_t node_add(const char *name, fuse_ino_t parent, const struct stat *st) {
  if (nnodes == capnodes) {
    capnodes = capnodes ? capnodes * 2 : 1024;
    nodes = realloc(nodes, capnodes * sizeof *nodes);
    if (nodes == NULL) {
      fprintf(stderr, "floorfs: out of memory\n");
      exit(1);
    }
  }
  FloorNode *n = &nodes[nnodes];
  memset(n, 0, sizeof *n);
  n->name = strdup(name);
  if (n->name == NULL) {
    fprintf(stderr, "floorfs: out of memory\n");
    exit(1);
  }
  n->parent = parent;
  n->st = *st;
  n->st.st_ino = (ino_t)(nnodes + 1);
  n->st.st_dev = 0;
  n->st.st_mode = (st->st_mode & S_IFMT) | (S_ISDIR(st->st_mode) ? 0555 : 0444);
  n->st.st_blksize = 4096;
  nnodes++;
  return (fuse_ino_t)nnodes;
}

static FloorNode *node_get(fuse_ino_t ino) {
  if (ino == 0 || ino > nnodes)
    return NULL;
  return &nodes[ino - 1];
}

static int kid_cmp(const void *a, const void *b) {
  const FloorNode *x = &nodes[*(const uint32_t *)a - 1];
  const FloorNode *y = &nodes[*(const uint32_t *)b - 1];
  return strcmp(x->name, y->name);
}

static int read_file(int dirfd, const char *name, size_t size, char **out) {
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return -1;
  char *buf = xmalloc(size);
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  if (got != size) {
    free(buf);
    errno = EIO;
    return -1;
  }
  *out = buf;
  return 0;
}

/* Loads directory dirfd (already added as inode dino) recursively. */
static int load_dir(int dirfd, fuse_ino_t dino, int depth) {
  if (depth > 64) {
    fprintf(stderr, "floorfs: tree too deep\n");
    return -1;
  }
  DIR *d = fdopendir(dirfd);
  if (d == NULL) {
    close(dirfd);
    return -1;
  }
  uint32_t *kids = NULL;
  size_t nk = 0, ck = 0;
  struct dirent *de;
  int ret = 0;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    struct stat st;
    if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      perror(de->d_name);
      ret = -1;
      break;
    }
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
      continue;
    fuse_ino_t ino = node_add(de->d_name, dino, &st);
    if (nk == ck) {
      ck = ck ? ck * 2 : 64;
      kids = realloc(kids, ck * sizeof *kids);
      if (kids == NULL) {
        fprintf(stderr, "floorfs: out of memory\n");
        exit(1);
      }
    }
    kids[nk++] = (uint32_t)ino;
    if (S_ISREG(st.st_mode)) {
      char *data = NULL;
      if (read_file(dirfd, de->d_name, (size_t)st.st_size, &data) != 0) {
        perror(de->d_name);
        ret = -1;
        break;
      }
      node_get(ino)->data = data;
      total_bytes += (uint64_t)st.st_size;
      total_files++;
    } else {
      int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
      if (sub < 0 || load_dir(sub, ino, depth + 1) != 0) {
        perror(de->d_name);
        ret = -1;
        break;
      }
    }
  }
  closedir(d);
  if (ret == 0) {
    /* nodes may have moved (realloc): index again */
    FloorNode *dn = node_get(dino);
    qsort(kids, nk, sizeof *kids, kid_cmp);
    dn->kids = kids;
    dn->nkids = (uint32_t)nk;
    nlink_t sub = 0;
    for (size_t i = 0; i < nk; i++)
      if (S_ISDIR(nodes[kids[i] - 1].st.st_mode))
        sub++;
    dn->st.st_nlink = 2 + sub;
  } else {
    free(kids);
  }
  return ret;
}

static FloorNode *find_kid(FloorNode *dir, const char *name) {
  size_t lo = 0, hi = dir->nkids;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    FloorNode *k = &nodes[dir->kids[mid] - 1];
    int c = strcmp(name, k->name);
    if (c == 0)
      return k;
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

static void fill_entry(const FloorNode *n, struct fuse_entry_param *e) {
  memset(e, 0, sizeof *e);
  e->ino = n->st.st_ino;
  e->generation = 1;
  e->attr = n->st;
  e->attr_timeout = FLOOR_TIMEOUT;
  e->entry_timeout = FLOOR_TIMEOUT;
}

/* ---- operations ---- */

static void floor_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  if (conn->capable & FUSE_CAP_READDIRPLUS)
    conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO; /* always plus: no lookups for ls -l */
  if (conn->capable & FUSE_CAP_ASYNC_READ)
    conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA; /* data never changes */
}

static void floor_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  FloorNode *p = node_get(parent);
  if (p == NULL || !S_ISDIR(p->st.st_mode)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  FloorNode *k = find_kid(p, name);
  struct fuse_entry_param e;
  if (k == NULL) {
    /* negative entry, cached as long as the positive ones */
    memset(&e, 0, sizeof e);
    e.entry_timeout = FLOOR_TIMEOUT;
    fuse_reply_entry(req, &e);
    return;
  }
  fill_entry(k, &e);
  fuse_reply_entry(req, &e);
}

static void floor_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  FloorNode *n = node_get(ino);
  if (n == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_attr(req, &n->st, FLOOR_TIMEOUT);
}

static void floor_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  FloorNode *n = node_get(ino);
  if (n == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (!S_ISDIR(n->st.st_mode)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

static void floor_readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                                 int plus) {
  FloorNode *d = node_get(ino);
  if (d == NULL || !S_ISDIR(d->st.st_mode)) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char *buf = malloc(size);
  if (buf == NULL) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  size_t used = 0;
  for (uint64_t i = (uint64_t)(off < 0 ? 0 : off); i < d->nkids; i++) {
    FloorNode *k = &nodes[d->kids[i] - 1];
    size_t n;
    if (plus) {
      struct fuse_entry_param e;
      fill_entry(k, &e);
      n = fuse_add_direntry_plus(req, buf + used, size - used, k->name, &e, (off_t)(i + 1));
    } else {
      n = fuse_add_direntry(req, buf + used, size - used, k->name, &k->st, (off_t)(i + 1));
    }
    if (n > size - used)
      break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void floor_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                          struct fuse_file_info *fi) {
  (void)fi;
  floor_readdir_common(req, ino, size, off, 0);
}

static void floor_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                              struct fuse_file_info *fi) {
  (void)fi;
  floor_readdir_common(req, ino, size, off, 1);
}

static void floor_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  fuse_reply_err(req, 0);
}

static void floor_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  FloorNode *n = node_get(ino);
  if (n == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (S_ISDIR(n->st.st_mode)) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->keep_cache = 1;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

static void floor_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
  (void)fi;
  FloorNode *n = node_get(ino);
  if (n == NULL || !S_ISREG(n->st.st_mode)) {
    fuse_reply_err(req, EBADF);
    return;
  }
  size_t len = (size_t)n->st.st_size;
  if (off < 0 || (size_t)off >= len) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  size_t take = len - (size_t)off;
  if (take > size)
    take = size;
  fuse_reply_buf(req, n->data + off, take);
}

static void floor_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino;
  (void)fi;
  fuse_reply_err(req, 0);
}

static void floor_statfs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = st.f_frsize = 4096;
  st.f_blocks = (fsblkcnt_t)((total_bytes + 4095) / 4096);
  st.f_files = (fsfilcnt_t)nnodes;
  st.f_namemax = NAME_MAX;
  st.f_flag = ST_RDONLY;
  fuse_reply_statfs(req, &st);
}

static const struct fuse_lowlevel_ops floor_ops = {
    .init = floor_init,
    .lookup = floor_lookup,
    .getattr = floor_getattr,
    .opendir = floor_opendir,
    .readdir = floor_readdir,
    .readdirplus = floor_readdirplus,
    .releasedir = floor_releasedir,
    .open = floor_open,
    .read = floor_read,
    .release = floor_release,
    .statfs = floor_statfs,
};

/* ---- command line ---- */

static char *src_dir;

static int floor_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs) {
  (void)data;
  (void)outargs;
  if (key == FUSE_OPT_KEY_NONOPT && src_dir == NULL) {
    src_dir = strdup(arg);
    return 0; /* consumed; the next non-option is the mountpoint */
  }
  return 1;
}

static void usage(const char *prog) {
  printf("usage: %s [-f] [-s] [-o FUSE options] SRCDIR MOUNTPOINT\n"
         "Loads SRCDIR into memory and serves it read-only on MOUNTPOINT.\n\n",
         prog);
  fuse_cmdline_help();
  fuse_lowlevel_help();
}

int main(int argc, char *argv[]) {
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts opts;
  struct fuse_session *se = NULL;
  int ret = 1;

  if (fuse_opt_parse(&args, NULL, NULL, floor_opt_proc) != 0)
    return 1;
  if (fuse_parse_cmdline(&args, &opts) != 0)
    return 1;
  if (opts.show_help) {
    usage(argv[0]);
    ret = 0;
    goto out;
  }
  if (opts.show_version) {
    printf("floorfs (FUSE library %s)\n", fuse_pkgversion());
    ret = 0;
    goto out;
  }
  if (src_dir == NULL || opts.mountpoint == NULL) {
    fprintf(stderr, "usage: %s [-f] [-o opts] SRCDIR MOUNTPOINT\n", argv[0]);
    goto out;
  }

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rootfd = open(src_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat rst;
  if (rootfd < 0 || fstat(rootfd, &rst) != 0) {
    perror(src_dir);
    goto out;
  }
  node_add("", FUSE_ROOT_ID, &rst);
  if (load_dir(rootfd, FUSE_ROOT_ID, 0) != 0) {
    fprintf(stderr, "floorfs: cannot load %s\n", src_dir);
    goto out;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fprintf(stderr, "floorfs: loaded %llu files, %llu bytes, %zu inodes in %.2f s\n",
          (unsigned long long)total_files, (unsigned long long)total_bytes, nnodes,
          (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);

  fuse_opt_add_arg(&args, "-oro");
  fuse_opt_add_arg(&args, "-ofsname=floorfs");
  fuse_opt_add_arg(&args, "-osubtype=floorfs");
  se = fuse_session_new(&args, &floor_ops, sizeof floor_ops, NULL);
  if (se == NULL)
    goto out;
  if (fuse_set_signal_handlers(se) != 0)
    goto out;
  if (fuse_session_mount(se, opts.mountpoint) != 0)
    goto out_signals;
  fuse_daemonize(opts.foreground);
  if (opts.singlethread) {
    ret = fuse_session_loop(se);
  } else {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, (unsigned)opts.clone_fd);
    fuse_loop_cfg_set_max_threads(cfg, opts.max_threads > 0 && opts.max_threads <= 1000
                                           ? opts.max_threads : 16);
    if (opts.max_idle_threads > 0 && opts.max_idle_threads <= 1000)
      fuse_loop_cfg_set_idle_threads(cfg, opts.max_idle_threads);
    ret = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
  }
  ret = ret != 0 ? 1 : 0;
  fuse_session_unmount(se);
out_signals:
  fuse_remove_signal_handlers(se);
out:
  if (se != NULL)
    fuse_session_destroy(se);
  free(opts.mountpoint);
  free(src_dir);
  fuse_opt_free_args(&args);
  return ret;
}
