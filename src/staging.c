/* staging.c - local files for new messages; the unsent directory.
 *
 * Design note.  A file created on the mount is written into a private
 * local file first (the kernel may write it in any order and size, so the
 * bytes are kept where pwrite is natural: a file), and becomes a message
 * only when fswrite.c sends it.  The staging directory lives next to the
 * unsent directory (both under $XDG_DATA_HOME/imapfuse), so keeping a
 * refused message is a hard link, not a copy, and a crash of imapfuse
 * leaves the bytes of files being written in staging/ instead of losing
 * them.  Converting to CRLF makes a second local file only when the bytes
 * need it (rsync'ing .eml files that already have CRLF costs no copy).
 */
#include "imapfuse/staging.h"

#include <glib/gstdio.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "imapfuse/errors.h"
#include "imapfuse/lockfile.h"
#include "imapfuse/names.h"

#define STAGING_CHUNK (256 * 1024)

struct Staging {
  char *base_dir;    /* staging/<account>: one run-XXXXXX directory per mount */
  char *staging_dir; /* this mount's, once made (staging_ensure_dir) */
  char *unsent_dir;
  GMutex lock;
  gboolean dir_ready;
  int lock_fd; /* staging_dir/lock, flock()ed while this mount runs */
  GPtrArray *old_dirs; /* earlier staging_dir strings, freed with st */
};

struct StagingFile {
  Staging *st;
  char *path; /* <run>/XXXXXX.part, or .sent while its bytes are stored */
  int fd;
  guint64 size;
  gboolean stored;
  char *dir, *name;  /* where it is on the mount (staging_file_origin) */
  gboolean complete; /* closed by every writer */
  GArray *written;   /* StagingRange: the bytes ever written, sorted, apart */
};

/* [start, end) of a file's bytes. */
typedef struct {
  guint64 start, end;
} StagingRange;

/* On each local file, for the mount after a crash: "1" (complete) or "0",
 * NUL, its directory on the mount, NUL, its name.  Recovered files had
 * random names, with no word of their folder or of being cut short (an
 * exploratory test).  Best effort: a file system without user xattrs
 * gives them random names still. */
#define STAGING_ORIGIN_XATTR "user.imapfuse.origin"

static gboolean staging_set_errno(GError **error, int err, const char *what, const char *path) {
  /* Our own disk is full, not the server's quota (EDQUOT said so); out
   * of descriptors is ours too, and so are a read-only or forbidden
   * directory (cp said only "Input/output error"). */
  g_set_error(error, IFS_ERROR,
              err == ENOSPC                    ? IFS_ERROR_NO_SPACE
              : err == EMFILE || err == ENFILE ? IFS_ERROR_NO_FILES
              : err == EROFS                   ? IFS_ERROR_READ_ONLY
              : err == EACCES || err == EPERM  ? IFS_ERROR_PERM
                                               : IFS_ERROR_FAILED,
              "%s %s: %s", what, path, g_strerror(err));
  static gint warned; /* monotonic seconds + 1; once in a while: every write() would repeat it */
  gint now = (gint)(g_get_monotonic_time() / G_USEC_PER_SEC) + 1, last = g_atomic_int_get(&warned);
  if (err == ENOSPC && (last == 0 || now - last > 10) &&
      g_atomic_int_compare_and_exchange(&warned, last, now)) {
    g_warning("%s %s: %s (new files are staged there until sent)", what, path,
              g_strerror(err));
  }
  return FALSE;
}

Staging *staging_new(const char *account) {
  Staging *st = g_new0(Staging, 1);
  g_autofree char *safe = names_escape_component(account);
  const char *data = g_get_user_data_dir();
  st->base_dir = g_build_filename(data, "imapfuse", "staging", safe, NULL);
  st->unsent_dir = g_build_filename(data, "imapfuse", "unsent", safe, NULL);
  st->lock_fd = -1;
  st->old_dirs = g_ptr_array_new_with_free_func(g_free);
  g_mutex_init(&st->lock);
  return st;
}

void staging_free(Staging *st) {
  if (st == NULL)
    return;
  if (st->lock_fd >= 0) { /* held: ours to remove */
    /* A file left in it (its unsent copy could not be made) keeps the
     * lock file too: the next mount's staging_recover takes a run only
     * with one (without, it took the run for being taken by another). */
    gboolean left = FALSE;
    GDir *d = g_dir_open(st->staging_dir, 0, NULL);
    const char *name;
    while (d != NULL && !left && (name = g_dir_read_name(d)) != NULL)
      left = strcmp(name, "lock") != 0;
    if (d != NULL)
      g_dir_close(d);
    g_autofree char *lock = g_build_filename(st->staging_dir, "lock", NULL);
    if (!left)
      unlink(lock);
    close(st->lock_fd);
    rmdir(st->staging_dir);
  }
  g_free(st->base_dir);
  g_free(st->staging_dir);
  g_ptr_array_unref(st->old_dirs);
  g_free(st->unsent_dir);
  g_mutex_clear(&st->lock);
  g_free(st);
}

const char *staging_unsent_dir(const Staging *st) { return st->unsent_dir; }

/* "name" -> "name.eml" unless it ends so already. */
static char *staging_eml_name(const char *name) {
  gsize n = strlen(name);
  if (n >= 4 && g_ascii_strcasecmp(name + n - 4, ".eml") == 0)
    return g_strdup(name);
  return g_strconcat(name, ".eml", NULL);
}

/* How much of eml's stem (all but its ".eml") fits NAME_MAX (255) with
 * `other` bytes more around it: a long name is shortened at a UTF-8
 * character boundary, or the link fails with ENAMETOOLONG and the bytes
 * are not where the documentation says. */
static gsize staging_stem_fit(const char *eml, gsize other) {
  gsize stem = strlen(eml) - 4, max_stem = 255 - other;
  if (stem > max_stem) {
    stem = max_stem;
    while (stem > 0 && ((guchar)eml[stem] & 0xc0) == 0x80)
      stem--;
  }
  return stem;
}

/* A path component as it may be on the mount: not empty, ".", ".." or
 * with a '/' (what staging_file_origin was given never is, but the file
 * could have been tampered with). */
static gboolean staging_plain_component(const char *c, gsize len) {
  return len > 0 && memchr(c, '/', len) == NULL && !(len == 1 && c[0] == '.') &&
         !(len == 2 && c[0] == '.' && c[1] == '.');
}

/* Where a recovered file goes: into/DIR/NAME (NAME.partial.eml if it was
 * still being written), from the note on it; NULL when there is none. */
static char *staging_recovered_path(const char *path, const char *into) {
  char v[8192];
  ssize_t n = getxattr(path, STAGING_ORIGIN_XATTR, v, sizeof v - 1);
  if (n < 4 || (v[0] != '0' && v[0] != '1') || v[1] != '\0')
    return NULL;
  v[n] = '\0';
  const char *dir = v + 2, *name = dir + strlen(dir) + 1;
  if (name >= v + n || strlen(name) != (gsize)(v + n - name) ||
      !staging_plain_component(name, strlen(name)))
    return NULL;
  g_auto(GStrv) parts = g_strsplit(dir, "/", -1);
  for (char **p = parts; *dir != '\0' && *p != NULL; p++)
    if (!staging_plain_component(*p, strlen(*p)))
      return NULL;
  while (name[0] == '.')
    name++; /* never a hidden file: rsync's .NAME.XXXXXX is NAME.XXXXXX */
  g_autofree char *eml = staging_eml_name(*name != '\0' ? name : "message");
  /* STEM[.partial].eml[-N] (a 250-byte name came back under a random
   * name, out of its folder: an exploratory test). */
  const char *suffix = v[0] == '0' ? ".partial.eml" : ".eml";
  gsize stem = staging_stem_fit(eml, strlen(suffix) + 4);
  g_autofree char *base = g_strdup_printf("%.*s%s", (int)stem, eml, suffix);
  return g_build_filename(into, dir, base, NULL);
}

/* Moves path to want, or want-2.eml, want-3.eml... (never over a file).
 * FALSE with errno. */
static gboolean staging_move_new(const char *path, const char *want) {
  g_autofree char *dir = g_path_get_dirname(want);
  if (g_mkdir_with_parents(dir, 0700) != 0)
    return FALSE;
  gsize stem = strlen(want) - 4; /* it ends in ".eml" */
  for (int i = 1; i < 1000; i++) {
    g_autofree char *to = i == 1 ? g_strdup(want)
                                 : g_strdup_printf("%.*s-%d.eml", (int)stem, want, i);
    if (link(path, to) == 0) {
      unlink(path);
      return TRUE;
    }
    if (errno != EEXIST)
      return FALSE;
  }
  errno = EEXIST;
  return FALSE;
}

/* Moves what one dead run left (its .part files) into into/, creating it;
 * drops the rest (.crlf conversions) and then the lock and the run
 * directory, but only once no .part is left: a run whose lock file is
 * gone is skipped as being taken by another mount, so removing it with a
 * file still there (into/ could not be made: a full disk) left that file
 * in the staging directory for good, with no word. */
static guint staging_take_run(const char *run, const char *into) {
  guint moved = 0, failed = 0;
  GDir *d = g_dir_open(run, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *path = g_build_filename(run, name, NULL);
    GStatBuf sb;
    if (g_str_has_suffix(name, ".part") && g_lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
        sb.st_size == 0) {
      unlink(path); /* nothing written: nothing to lose */
    } else if (g_str_has_suffix(name, ".part")) {
      g_autofree char *stem = g_strndup(name, strlen(name) - 5);
      g_autofree char *to = g_strdup_printf("%s/%s.eml", into, stem);
      g_autofree char *named = staging_recovered_path(path, into);
      if (named != NULL && staging_move_new(path, named)) {
        moved++;
      } else if (g_mkdir_with_parents(into, 0700) == 0 && rename(path, to) == 0) {
        moved++;
      } else {
        g_warning("cannot move %s to %s (%s): it stays there for the next mount", path, to,
                  g_strerror(errno));
        failed++;
      }
    } else if (g_str_has_suffix(name, ".crlf") || g_str_has_suffix(name, ".sent")) {
      unlink(path); /* a conversion, or bytes the server has */
    }
  }
  if (d != NULL)
    g_dir_close(d);
  if (failed == 0) {
    g_autofree char *lock = g_build_filename(run, "lock", NULL);
    unlink(lock);
    rmdir(run);
  }
  return moved;
}

void staging_recover(Staging *st) {
  GDir *d = g_dir_open(st->base_dir, 0, NULL);
  if (d == NULL)
    return;
  g_autoptr(GDateTime) now = g_date_time_new_now_utc();
  g_autofree char *stamp = g_date_time_format(now, "%Y%m%dT%H%M%SZ");
  g_autofree char *leaf = g_strdup_printf("recovered-%s-%d", stamp, (int)getpid());
  g_autofree char *into = g_build_filename(st->unsent_dir, leaf, NULL);
  guint moved = 0;
  const char *name;
  while ((name = g_dir_read_name(d)) != NULL) {
    g_autofree char *run = g_build_filename(st->base_dir, name, NULL);
    GStatBuf sb;
    gboolean fresh = g_str_has_prefix(name, ".new-") && g_stat(run, &sb) == 0 &&
                     time(NULL) - sb.st_mtime < 60; /* being made now, maybe */
    if (!(g_str_has_prefix(name, "run-") || g_str_has_prefix(name, ".new-")) || fresh ||
        g_strcmp0(run, st->staging_dir) == 0 || !g_file_test(run, G_FILE_TEST_IS_DIR))
      continue;
    g_autofree char *lock = g_build_filename(run, "lock", NULL);
    /* No lock file: another mount is taking the run right now (it
     * removes the lock first).  A held one: a mount that still runs. */
    int fd = lockfile_take(AT_FDCWD, lock, 0, 0);
    if (fd < 0)
      continue;
    moved += staging_take_run(run, into);
    close(fd);
  }
  g_dir_close(d);
  if (moved > 0)
    g_warning("%u file(s) being written when an earlier imapfuse of this account stopped "
              "without unmounting (killed, or a crash) were moved to %s, under their folder "
              "and name (NAME.partial.eml: its writer had not closed it): check which are on "
              "the server before sending any again (some may be stored already)",
              moved, into);
}

/* _staging_make_run: caller holds st->lock.  This mount's run directory:
 * made under a temporary name with its lock file locked inside, then
 * renamed into view, so that staging_recover never sees a run whose lock
 * is not held yet (and a unique name: not a pid, which another host or
 * container sharing the directory may have too). */
static gboolean _staging_make_run(Staging *st, GError **error) {
  if (g_mkdir_with_parents(st->base_dir, 0700) != 0)
    return staging_set_errno(error, errno, "cannot create", st->base_dir);
  g_autofree char *tmp = g_build_filename(st->base_dir, ".new-XXXXXX", NULL);
  if (g_mkdtemp_full(tmp, 0700) == NULL)
    return staging_set_errno(error, errno, "cannot create a directory in", st->base_dir);
  g_autofree char *lock = g_build_filename(tmp, "lock", NULL);
  int fd = lockfile_take(AT_FDCWD, lock, O_CREAT | O_EXCL, 0);
  if (fd < 0) {
    int err = errno;
    unlink(lock);
    rmdir(tmp);
    return staging_set_errno(error, err, "cannot lock", lock);
  }
  g_autofree char *run = g_strdup_printf("%s/run-%s", st->base_dir, strrchr(tmp, '-') + 1);
  if (rename(tmp, run) != 0) {
    int err = errno;
    close(fd);
    unlink(lock);
    rmdir(tmp);
    return staging_set_errno(error, err, "cannot create", run);
  }
  st->lock_fd = fd;
  st->staging_dir = g_steal_pointer(&run);
  return TRUE;
}

static gboolean staging_ensure_dir(Staging *st, GError **error) {
  g_mutex_lock(&st->lock);
  /* Made again if it went (someone removed it): else every later new
   * file failed. */
  if (st->dir_ready && !g_file_test(st->staging_dir, G_FILE_TEST_IS_DIR)) {
    g_warning("%s went away; new files are staged in a new directory", st->staging_dir);
    close(st->lock_fd);
    st->lock_fd = -1;
    g_ptr_array_add(st->old_dirs, g_steal_pointer(&st->staging_dir)); /* others may read it */
    st->dir_ready = FALSE;
  }
  gboolean ok = st->dir_ready || _staging_make_run(st, error);
  if (ok)
    st->dir_ready = TRUE;
  g_mutex_unlock(&st->lock);
  return ok;
}

/* A new private file in dir: fd, path in *path. */
static int staging_mkstemp(const char *dir, const char *suffix, char **path, GError **error) {
  g_autofree char *tmpl = g_strdup_printf("%s/XXXXXX%s", dir, suffix);
  int fd = g_mkstemp_full(tmpl, O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    staging_set_errno(error, errno, "cannot create a file in", dir);
    return -1;
  }
  *path = g_steal_pointer(&tmpl);
  return fd;
}

/* Adds [start, end) to the sorted, disjoint ranges of written, merging
 * those it touches. */
void staging_written_add(GArray *written, guint64 start, guint64 end) {
  if (start >= end)
    return;
  guint i = written->len;
  while (i > 0 && g_array_index(written, StagingRange, i - 1).end >= start)
    i--; /* ranges i.. end at or after start: merge those that begin by end */
  guint j = i;
  StagingRange m = {start, end};
  while (j < written->len && g_array_index(written, StagingRange, j).start <= end) {
    const StagingRange *r = &g_array_index(written, StagingRange, j);
    m.start = MIN(m.start, r->start);
    m.end = MAX(m.end, r->end);
    j++;
  }
  g_array_remove_range(written, i, j - i);
  g_array_insert_val(written, i, m);
}

/* Drops what of written lies at or past size. */
void staging_written_cut(GArray *written, guint64 size) {
  guint keep = 0;
  while (keep < written->len && g_array_index(written, StagingRange, keep).start < size) {
    StagingRange *r = &g_array_index(written, StagingRange, keep);
    r->end = MIN(r->end, size);
    keep++;
  }
  g_array_set_size(written, keep);
}

StagingFile *staging_file_new(Staging *st, GError **error) {
  if (!staging_ensure_dir(st, error))
    return NULL;
  StagingFile *f = g_new0(StagingFile, 1);
  f->st = st;
  f->fd = staging_mkstemp(st->staging_dir, ".part", &f->path, error);
  if (f->fd < 0) {
    g_free(f);
    return NULL;
  }
  f->written = g_array_new(FALSE, FALSE, sizeof(StagingRange));
  return f;
}

void staging_file_remove(StagingFile *f) {
  if (f->path != NULL && unlink(f->path) != 0 && errno != ENOENT)
    g_debug("cannot remove %s: %s", f->path, g_strerror(errno));
  g_clear_pointer(&f->path, g_free);
}

void staging_file_free(StagingFile *f) {
  if (f == NULL)
    return;
  if (f->fd >= 0)
    close(f->fd);
  staging_file_remove(f);
  g_free(f->dir);
  g_free(f->name);
  g_array_unref(f->written);
  g_free(f);
}

void staging_file_leave(StagingFile *f) {
  if (f == NULL)
    return;
  g_clear_pointer(&f->path, g_free);
  staging_file_free(f);
}

const char *staging_file_path(const StagingFile *f) { return f->path; }

/* The name says whether the server has these bytes (.sent) or not
 * (.part): what a killed mount leaves is recovered only if not.  After a
 * kill -9 a few seconds after a cp, every file it had stored (still
 * lingering under its name) was moved to unsent/ as "being written". */
static gboolean staging_file_name_stored(StagingFile *f, gboolean stored, GError **error) {
  if (f->stored == stored || f->path == NULL)
    return TRUE;
  g_autofree char *stem = g_strndup(f->path, strlen(f->path) - 5);
  g_autofree char *to = g_strconcat(stem, stored ? ".sent" : ".part", NULL);
  if (rename(f->path, to) != 0)
    return staging_set_errno(error, errno, "cannot rename", f->path);
  g_free(f->path);
  f->path = g_steal_pointer(&to);
  f->stored = stored;
  return TRUE;
}

static void staging_origin_write(StagingFile *f) {
  if (f->name == NULL)
    return;
  g_autoptr(GString) v = g_string_new(f->complete ? "1" : "0");
  g_string_append_c(v, '\0');
  g_string_append(v, f->dir);
  g_string_append_c(v, '\0');
  g_string_append(v, f->name);
  if (fsetxattr(f->fd, STAGING_ORIGIN_XATTR, v->str, v->len, 0) != 0)
    g_debug("cannot note the name of %s on it: %s", f->path, g_strerror(errno));
}

void staging_file_origin(StagingFile *f, const char *dir, const char *name) {
  if (g_strcmp0(f->dir, dir) == 0 && g_strcmp0(f->name, name) == 0)
    return;
  g_free(f->dir);
  g_free(f->name);
  f->dir = g_strdup(dir);
  f->name = g_strdup(name);
  staging_origin_write(f);
}

void staging_file_complete(StagingFile *f, gboolean complete) {
  if (f->complete == complete)
    return;
  f->complete = complete;
  staging_origin_write(f);
}

void staging_file_stored(StagingFile *f) {
  g_autoptr(GError) error = NULL;
  if (!staging_file_name_stored(f, TRUE, &error))
    g_debug("%s", error->message); /* recovered for nothing, at worst */
}

gboolean staging_file_pwrite(StagingFile *f, const void *buf, gsize len, guint64 off,
                             GError **error) {
  if (!staging_file_name_stored(f, FALSE, error))
    return FALSE;
  const char *p = buf;
  gsize done = 0;
  while (done < len) {
    ssize_t n = pwrite(f->fd, p + done, len - done, (off_t)(off + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return staging_set_errno(error, errno, "cannot write", f->path);
    done += (gsize)n;
  }
  if (len > 0) /* a write of nothing past the end makes the file no longer */
    f->size = MAX(f->size, off + len);
  staging_written_add(f->written, off, off + len);
  return TRUE;
}

gssize staging_file_pread(StagingFile *f, void *buf, gsize len, guint64 off, GError **error) {
  for (;;) {
    ssize_t n = pread(f->fd, buf, len, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      staging_set_errno(error, errno, "cannot read", f->path);
      return -1;
    }
    return n;
  }
}

gboolean staging_file_truncate(StagingFile *f, guint64 size, GError **error) {
  if (!staging_file_name_stored(f, FALSE, error))
    return FALSE;
  if (ftruncate(f->fd, (off_t)size) != 0)
    return staging_set_errno(error, errno, "cannot truncate", f->path);
  f->size = size;
  staging_written_cut(f->written, size);
  return TRUE;
}

gboolean staging_file_hole(const StagingFile *f, guint64 *at, guint64 *len) {
  /* The ranges are sorted and apart: only the first may begin at 0, and
   * the first hole ends where the next range begins. */
  const GArray *w = f->written;
  gboolean from_0 = w->len > 0 && g_array_index(w, StagingRange, 0).start == 0;
  guint64 from = from_0 ? g_array_index(w, StagingRange, 0).end : 0;
  if (from >= f->size)
    return FALSE;
  guint next = from_0 ? 1 : 0;
  *at = from;
  *len = (next < w->len ? MIN(g_array_index(w, StagingRange, next).start, f->size) : f->size) -
         from;
  return TRUE;
}

guint64 staging_file_size(const StagingFile *f) { return f->size; }

gboolean staging_file_sync(StagingFile *f, GError **error) {
  if (fsync(f->fd) != 0)
    return staging_set_errno(error, errno, "cannot sync", f->path);
  return TRUE;
}

/* Line ends as a server keeps them: Dovecot drops a CR before a line end
 * or the end of the message and sends LF as CRLF, so a file with "\r\r\n"
 * came back a byte shorter, was never the same message as the file, and a
 * second cp stored it again.  CRLF is what every server keeps.  keep_crs:
 * only bare LFs change (the bytes a message already on a server may have). */
static void staging_put_crs(GByteArray *out, guint64 n) {
  for (; out != NULL && n > 0; n--)
    g_byte_array_append(out, (const guint8 *)"\r", 1);
}

gsize staging_crlf_convert(const guchar *data, gsize len, guint64 *crs, gboolean keep_crs,
                           GByteArray *out) {
  if (len == 0) { /* the end: CRs there end no line */
    gsize dropped = *crs > 0 && !keep_crs;
    if (keep_crs)
      staging_put_crs(out, *crs);
    *crs = 0;
    return dropped;
  }
  gsize changed = 0, start = 0;
  guint64 pending = *crs; /* CRs seen and not yet written */
  for (gsize i = 0; i < len; i++) {
    if (data[i] != '\r' && data[i] != '\n') {
      staging_put_crs(out, pending); /* CRs inside a line stay */
      pending = 0;
      continue;
    }
    if (out != NULL)
      g_byte_array_append(out, data + start, (guint)(i - start));
    start = i + 1;
    if (data[i] == '\r') {
      pending++;
      continue;
    }
    if (keep_crs && pending > 1) /* CRs, then the LF as it was */
      staging_put_crs(out, pending - 1);
    if (out != NULL)
      g_byte_array_append(out, (const guint8 *)"\r\n", 2);
    changed += keep_crs ? pending == 0 : pending != 1;
    pending = 0;
  }
  if (out != NULL && start < len)
    g_byte_array_append(out, data + start, (guint)(len - start));
  *crs = pending;
  return changed;
}

static GBytes *staging_map(int fd, const char *path, GError **error) {
  g_autoptr(GError) local = NULL;
  GMappedFile *m = g_mapped_file_new_from_fd(fd, FALSE, &local);
  if (m == NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_FAILED, "cannot map %s: %s", path, local->message);
    return NULL;
  }
  GBytes *b = g_mapped_file_get_bytes(m);
  g_mapped_file_unref(m);
  return b;
}

GBytes *staging_file_message(StagingFile *f, gboolean keep_crs, gboolean *crs_dropped,
                             GError **error) {
  g_autofree guchar *buf = g_malloc(STAGING_CHUNK);
  guint64 cr = 0, cr_kept = 0;
  gsize changed = 0, changed_kept = 0;
  for (guint64 off = 0; off < f->size;) {
    gssize n = staging_file_pread(f, buf, STAGING_CHUNK, off, error);
    if (n < 0)
      return NULL;
    if (n == 0)
      break;
    changed += staging_crlf_convert(buf, (gsize)n, &cr, keep_crs, NULL);
    if (crs_dropped != NULL && !keep_crs)
      changed_kept += staging_crlf_convert(buf, (gsize)n, &cr_kept, TRUE, NULL);
    off += (guint64)n;
  }
  changed += staging_crlf_convert(NULL, 0, &cr, keep_crs, NULL);
  if (crs_dropped != NULL) /* bare LFs count in both; CRs only without keep_crs */
    *crs_dropped = !keep_crs && changed != changed_kept;
  if (changed == 0)
    return staging_map(f->fd, f->path, error);

  g_autofree char *path = NULL;
  g_autofree char *dir = g_path_get_dirname(f->path); /* its run's, wherever that is now */
  int fd = staging_mkstemp(dir, ".crlf", &path, error);
  if (fd < 0)
    return NULL;
  GBytes *out = NULL;
  g_autoptr(GByteArray) conv = g_byte_array_sized_new(STAGING_CHUNK * 2);
  cr = 0;
  guint64 off = 0, woff = 0;
  for (gboolean end = FALSE; !end;) {
    gssize n = off < f->size ? staging_file_pread(f, buf, STAGING_CHUNK, off, error) : 0;
    if (n < 0)
      goto done;
    end = n == 0; /* then the CRs held back at the end, if kept */
    g_byte_array_set_size(conv, 0);
    staging_crlf_convert(end ? NULL : buf, (gsize)n, &cr, keep_crs, conv);
    for (gsize w = 0; w < conv->len;) {
      ssize_t k = pwrite(fd, conv->data + w, conv->len - w, (off_t)woff);
      if (k < 0 && errno == EINTR)
        continue;
      if (k < 0) {
        staging_set_errno(error, errno, "cannot write", path);
        goto done;
      }
      w += (gsize)k;
      woff += (guint64)k;
    }
    off += (guint64)n;
  }
  out = staging_map(fd, path, error);
done:
  close(fd);
  unlink(path);
  return out;
}

static gboolean staging_copy(int from, int to, GError **error, const char *path) {
  char buf[65536];
  for (off_t off = 0;;) {
    ssize_t n = pread(from, buf, sizeof buf, off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return staging_set_errno(error, errno, "cannot read for", path);
    if (n == 0)
      return TRUE;
    for (ssize_t w = 0; w < n;) {
      ssize_t k = write(to, buf + w, (size_t)(n - w));
      if (k < 0 && errno == EINTR)
        continue;
      if (k < 0)
        return staging_set_errno(error, errno, "cannot write", path);
      w += k;
    }
    off += n;
  }
}

char *staging_file_keep(StagingFile *f, const char *dir, const char *name, GError **error) {
  g_autofree char *where = g_build_filename(f->st->unsent_dir, dir, NULL);
  if (g_mkdir_with_parents(where, 0700) != 0) {
    staging_set_errno(error, errno, "cannot create", where);
    return NULL;
  }
  g_autoptr(GDateTime) now = g_date_time_new_now_utc();
  g_autofree char *stamp = g_date_time_format(now, "%Y%m%dT%H%M%SZ");
  g_autofree char *base = staging_eml_name(name);
  gsize stem = staging_stem_fit(base, strlen(stamp) + 1 + 4 + 4); /* TIME-NAME[-i].eml */
  if (fsync(f->fd) != 0)
    g_debug("fsync %s: %s", f->path, g_strerror(errno));
  for (int i = 1; i < 1000; i++) {
    g_autofree char *fname =
        i == 1 ? g_strdup_printf("%s-%.*s%s", stamp, (int)stem, base, base + strlen(base) - 4)
               : g_strdup_printf("%s-%.*s-%d.eml", stamp, (int)stem, base, i);
    char *path = g_build_filename(where, fname, NULL);
    if (link(f->path, path) == 0)
      return path;
    if (errno != EEXIST) {
      /* Another file system (or no hard links): copy. */
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0 && errno == EEXIST) {
        g_free(path);
        continue;
      }
      if (fd < 0) {
        staging_set_errno(error, errno, "cannot create", path);
        g_free(path);
        return NULL;
      }
      gboolean ok = staging_copy(f->fd, fd, error, path);
      if (ok && fsync(fd) != 0)
        ok = staging_set_errno(error, errno, "cannot write", path);
      close(fd);
      if (!ok) {
        unlink(path);
        g_free(path);
        return NULL;
      }
      return path;
    }
    g_free(path);
  }
  g_set_error(error, IFS_ERROR, IFS_ERROR_FAILED, "too many unsent files named %s in %s", base,
              where);
  return NULL;
}
