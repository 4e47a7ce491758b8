/* mcache.c - a mailbox's metadata snapshot in one binary file.
 *
 * Design note.  The file is small (28 bytes a message: 100,000 messages is
 * 2.8 MB) and is always read and written whole, so it is one buffer built
 * or checked in memory and one write or read.  Layout, all integers
 * little-endian and fixed width:
 *   header  (48)  "IFMC", u32 version, u64 payload length,
 *                 SHA-256 of the payload (32 bytes)
 *   payload       u32 UIDVALIDITY, u32 UIDNEXT, u64 HIGHESTMODSEQ,
 *                 u32 number of flag strings, u32 number of messages,
 *                 changed: u32 s (version 3), u64 us (version 4),
 *                 each flag string as u32 length + bytes (no NUL),
 *                 each message as u32 UID, u32 flag index, u64 size, i64 date,
 *                 u32 seen (version 2 on); files of earlier versions still load
 * The checksum covers the whole payload, so a torn or damaged file is
 * rejected before it is parsed; the parser still checks every length and
 * index against the buffer (a file that checks out but is wrong -- a bug,
 * or a file made by hand -- must not crash us either).  Writes go to
 * "<path>.tmp.XXXXXX" and are renamed over path; there is no fsync(): a
 * file lost or damaged by a crash only costs one full refetch, and the
 * checksum makes sure a damaged one is noticed.  A crash between creating
 * and renaming the temporary file leaves it behind (the caller's directory
 * is not ours to sweep).
 */
#include "imapfuse/mcache.h"

#include "imapfuse/le.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MC_MAGIC "IFMC"
#define MC_VERSION 4u
#define MC_SUM_LEN 32 /* SHA-256 */
#define MC_HDR (16 + MC_SUM_LEN)
#define MC_FIXED 32 /* UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the two counts, changed */
#define MC_FIXED_V3 28
#define MC_FIXED_V2 24
#define MC_MSG 28
#define MC_MSG_V1 24

G_DEFINE_QUARK(mcache-error-quark, mcache_error)

static void mc_sum(const guint8 *data, gsize len, guint8 out[MC_SUM_LEN]) {
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  gsize n = MC_SUM_LEN;
  g_checksum_update(sum, data, len);
  g_checksum_get_digest(sum, out, &n);
  g_checksum_free(sum);
}

static gboolean mc_write_file(const char *path, const guint8 *buf, gsize len, GError **error) {
  g_autofree char *tmp = g_strconcat(path, ".tmp.XXXXXX", NULL);
  int fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err),
                "cannot create a temporary file for %s: %s", path, g_strerror(err));
    return FALSE;
  }
  gsize done = 0;
  int err = 0;
  while (done < len) {
    ssize_t w = write(fd, buf + done, len - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      err = w < 0 ? errno : EIO; /* 0: no progress, do not spin */
      break;
    }
    done += (gsize)w;
  }
  if (close(fd) != 0 && err == 0)
    err = errno;
  if (err == 0 && rename(tmp, path) != 0)
    err = errno;
  if (err != 0) {
    unlink(tmp);
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "cannot write %s: %s",
                path, g_strerror(err));
    return FALSE;
  }
  return TRUE;
}

gboolean mcache_save(const char *path, const McHead *head, const McMsg *msgs, guint n_msgs,
                     const char *const *flagsets, guint n_flagsets, GError **error) {
  gsize len = MC_HDR + MC_FIXED + (gsize)n_msgs * MC_MSG;
  for (guint i = 0; i < n_flagsets; i++) {
    gsize fl = strlen(flagsets[i]);
    if (fl > G_MAXUINT32) {
      g_set_error(error, MCACHE_ERROR, MCACHE_ERROR_INVALID,
                  "cannot save %s: flag string %u is too long", path, i);
      return FALSE;
    }
    len += 4 + fl;
  }
  for (guint i = 0; i < n_msgs; i++) {
    if (msgs[i].uid == 0 || (i > 0 && msgs[i].uid <= msgs[i - 1].uid) ||
        msgs[i].flagset >= n_flagsets) {
      g_set_error(error, MCACHE_ERROR, MCACHE_ERROR_INVALID,
                  "cannot save %s: message %u (UID %u, flags %u) is out of order or has no "
                  "flag string",
                  path, i, msgs[i].uid, msgs[i].flagset);
      return FALSE;
    }
  }

  g_autofree guint8 *buf = g_malloc(len);
  guint8 *p = buf + MC_HDR;
  le_put32(p, head->uidvalidity);
  le_put32(p + 4, head->uidnext);
  le_put64(p + 8, head->highestmodseq);
  le_put32(p + 16, n_flagsets);
  le_put32(p + 20, n_msgs);
  le_put64(p + 24, head->changed_us);
  p += MC_FIXED;
  for (guint i = 0; i < n_flagsets; i++) {
    gsize fl = strlen(flagsets[i]);
    le_put32(p, (guint32)fl);
    memcpy(p + 4, flagsets[i], fl);
    p += 4 + fl;
  }
  for (guint i = 0; i < n_msgs; i++, p += MC_MSG) {
    le_put32(p, msgs[i].uid);
    le_put32(p + 4, msgs[i].flagset);
    le_put64(p + 8, msgs[i].size);
    le_put64(p + 16, (guint64)msgs[i].date);
    le_put32(p + 24, msgs[i].seen);
  }
  g_assert(p == buf + len);
  memcpy(buf, MC_MAGIC, 4);
  le_put32(buf + 4, MC_VERSION);
  le_put64(buf + 8, len - MC_HDR);
  mc_sum(buf + MC_HDR, len - MC_HDR, buf + 16);
  return mc_write_file(path, buf, len, error);
}

static gboolean mc_corrupt(GError **error, const char *path, const char *what) {
  g_set_error(error, MCACHE_ERROR, MCACHE_ERROR_CORRUPT, "metadata cache %s: %s", path, what);
  return FALSE;
}

gboolean mcache_load(const char *path, McHead *head, GArray **msgs, GPtrArray **flagsets,
                     GError **error) {
  g_autofree char *data = NULL;
  gsize len;
  if (!g_file_get_contents(path, &data, &len, error))
    return FALSE;
  const guint8 *buf = (const guint8 *)data;
  if (len < MC_HDR)
    return mc_corrupt(error, path, "shorter than its header");
  if (memcmp(buf, MC_MAGIC, 4) != 0)
    return mc_corrupt(error, path, "not a metadata cache file (bad magic)");
  guint32 version = le_get32(buf + 4);
  if (version < 1 || version > MC_VERSION) {
    g_set_error(error, MCACHE_ERROR, MCACHE_ERROR_CORRUPT,
                "metadata cache %s: unsupported version %u (expected %u)", path, version,
                MC_VERSION);
    return FALSE;
  }
  gsize row = version == 1 ? MC_MSG_V1 : MC_MSG;
  gsize fixed = version < 3 ? MC_FIXED_V2 : version == 3 ? MC_FIXED_V3 : MC_FIXED;
  if (le_get64(buf + 8) != len - MC_HDR)
    return mc_corrupt(error, path, "length does not match the header (truncated?)");
  guint8 sum[MC_SUM_LEN];
  mc_sum(buf + MC_HDR, len - MC_HDR, sum);
  if (memcmp(sum, buf + 16, MC_SUM_LEN) != 0)
    return mc_corrupt(error, path, "checksum mismatch");

  /* The checksum matched; still trust no length or index. */
  const guint8 *p = buf + MC_HDR, *end = buf + len;
  if ((gsize)(end - p) < fixed)
    return mc_corrupt(error, path, "payload too short");
  McHead h = {.uidvalidity = le_get32(p), .uidnext = le_get32(p + 4)};
  h.highestmodseq = le_get64(p + 8);
  guint32 nf = le_get32(p + 16), nm = le_get32(p + 20);
  h.changed_us = version < 3    ? 0
                 : version == 3 ? (guint64)le_get32(p + 24) * G_USEC_PER_SEC
                                : le_get64(p + 24);
  p += fixed;
  if (nf > (gsize)(end - p) / 4)
    return mc_corrupt(error, path, "flag string count out of range");
  g_autoptr(GPtrArray) flags = g_ptr_array_new_full(nf, g_free);
  for (guint32 i = 0; i < nf; i++) {
    if (end - p < 4)
      return mc_corrupt(error, path, "flag strings truncated");
    guint32 fl = le_get32(p);
    p += 4;
    if (fl > (gsize)(end - p))
      return mc_corrupt(error, path, "flag string longer than the file");
    if (memchr(p, '\0', fl) != NULL)
      return mc_corrupt(error, path, "NUL in a flag string");
    g_ptr_array_add(flags, g_strndup((const char *)p, fl));
    p += fl;
  }
  if ((gsize)(end - p) != (gsize)nm * row)
    return mc_corrupt(error, path, "message table length does not match its count");
  g_autoptr(GArray) list = g_array_sized_new(FALSE, TRUE, sizeof(McMsg), nm);
  g_array_set_size(list, nm);
  McMsg *m = (McMsg *)(void *)list->data;
  for (guint32 i = 0; i < nm; i++, p += row) {
    m[i].uid = le_get32(p);
    m[i].flagset = le_get32(p + 4);
    m[i].size = le_get64(p + 8);
    m[i].date = (gint64)le_get64(p + 16);
    m[i].seen = version == 1 ? 0 : le_get32(p + 24);
    if (m[i].uid == 0 || (i > 0 && m[i].uid <= m[i - 1].uid))
      return mc_corrupt(error, path, "UIDs not strictly increasing");
    if (m[i].flagset >= nf)
      return mc_corrupt(error, path, "flag index out of range");
  }
  *head = h;
  *msgs = g_steal_pointer(&list);
  *flagsets = g_steal_pointer(&flags);
  return TRUE;
}
