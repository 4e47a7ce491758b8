/* staging.h - the local bytes of new files, and where refused mail is kept.
 *
 * Owns: one private file per new file while it is being written, under
 * $XDG_DATA_HOME/imapfuse/staging/<account>/run-XXXXXX/ (directories 0700, files
 * 0600; on disk, not in memory, so a large file costs no RAM, and a crash
 * leaves the bytes behind rather than nothing); turning those bytes into a
 * message (line ends made CRLF) mapped from disk for APPEND; and keeping a copy
 * under $XDG_DATA_HOME/imapfuse/unsent/<account>/<dir>/<stamp>-<name>.eml
 * when the server refuses it.  No IMAP and no FUSE here.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct Staging Staging;
typedef struct StagingFile StagingFile;

/* account: a label for the directories ("user@host"), escaped here so it
 * is one safe file name.  Nothing is created until the first file. */
Staging *staging_new(const char *account);
void staging_free(Staging *st);
/* The unsent directory of this account (may not exist yet). */
const char *staging_unsent_dir(const Staging *st);
/* At mount: the files an earlier mount of this account left being
 * written when it was killed (its run directory, whose lock nobody holds)
 * go to unsent/recovered-TIME-PID/, with one warning; a mount that still
 * runs keeps its own. */
void staging_recover(Staging *st);

StagingFile *staging_file_new(Staging *st, GError **error);
/* Notes on the local file where it is on the mount (dir as for
 * staging_file_keep, and name), and whether every writer has closed it,
 * for staging_recover after a crash.  Best effort, never an error. */
void staging_file_origin(StagingFile *f, const char *dir, const char *name);
void staging_file_complete(StagingFile *f, gboolean complete);
/* Closes and removes the local file (a kept copy stays). */
void staging_file_free(StagingFile *f);
/* Closes it but leaves the local file where it is (when even keeping a
 * copy failed: the bytes must survive somewhere). */
void staging_file_leave(StagingFile *f);
/* Removes the local file now; the descriptor stays open (at unmount, for
 * a file some process still holds open: nothing will free it). */
void staging_file_remove(StagingFile *f);
const char *staging_file_path(const StagingFile *f);
gboolean staging_file_pwrite(StagingFile *f, const void *buf, gsize len, guint64 off,
                             GError **error);
/* Bytes read (0 at the end), -1 with error. */
gssize staging_file_pread(StagingFile *f, void *buf, gsize len, guint64 off, GError **error);
/* Also to a larger size (fallocate): the bytes added are not written. */
gboolean staging_file_truncate(StagingFile *f, guint64 size, GError **error);
guint64 staging_file_size(const StagingFile *f);
/* TRUE if some bytes below the size were never written (a file made longer
 * by truncate or fallocate, or written past its end): the first such run
 * in *at and *len.  A restore writing a file's parts out of order, with
 * closes in between, has them until its last part. */
gboolean staging_file_hole(const StagingFile *f, guint64 *at, guint64 *len);
gboolean staging_file_sync(StagingFile *f, GError **error);
/* The server has these bytes now: a mount killed before the file goes
 * leaves nothing to recover for it.  The next write or truncate undoes
 * that (before it changes the bytes). */
void staging_file_stored(StagingFile *f);

/* The bytes as a message, line ends made CRLF (staging_crlf_convert; with
 * keep_crs only bare LFs change).  *crs_dropped (may be NULL): whether CRs
 * were dropped, so that keep_crs would give other bytes.  The result is
 * mapped from disk (the staging file itself when nothing needs
 * converting); the file must not be written while it is referenced. */
GBytes *staging_file_message(StagingFile *f, gboolean keep_crs, gboolean *crs_dropped,
                             GError **error);
/* Keeps a copy of the bytes as written under <unsent>/<dir>/<stamp>-<name>
 * (".eml" added unless name has it; "-2", "-3"... on a clash).  dir is a
 * relative path of directory names as the mount shows them ("" for none).
 * Returns the path. */
char *staging_file_keep(StagingFile *f, const char *dir, const char *name, GError **error);

/* ---- pure helpers (tests/unit/test_write.c) ---- */

/* A GArray of the written ranges of a file ({guint64 start, end}, sorted
 * and apart): [start, end) added, merged with what it touches or meets;
 * everything at or past size dropped. */
void staging_written_add(GArray *written, guint64 start, guint64 end);
void staging_written_cut(GArray *written, guint64 size);

/* Appends data to out with every line end made CRLF: a bare LF, and any
 * run of CRs before an LF, becomes CRLF; CRs at the very end are dropped.
 * With keep_crs only bare LFs change (CRs are written as they are).  *crs
 * carries the CRs not yet written from one chunk to the next (start with
 * 0); a call with len 0 ends the message.  Returns the number of places
 * changed (0: the bytes go as they are). */
gsize staging_crlf_convert(const guchar *data, gsize len, guint64 *crs, gboolean keep_crs,
                           GByteArray *out);
G_END_DECLS
