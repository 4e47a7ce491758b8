/* errors.c - IFS_ERROR domain and the single error -> errno table. */
#include "imapfuse/errors.h"

#include <errno.h>

#include "imapfuse/names.h"
#include "imapfuse/parse.h"

G_DEFINE_QUARK(imapfuse-error-quark, ifs_error)

int ifs_errno_from_error(const GError *error) {
  static const struct {
    IfsError code;
    int err;
  } table[] = {
      {IFS_ERROR_FAILED, EIO},         {IFS_ERROR_CONNECT, EIO},
      {IFS_ERROR_TLS, EIO},            {IFS_ERROR_AUTH, EACCES},
      {IFS_ERROR_PROTOCOL, EPROTO},    {IFS_ERROR_TIMEOUT, ETIMEDOUT},
      {IFS_ERROR_CLOSED, EIO},         {IFS_ERROR_NO, EIO},
      {IFS_ERROR_BAD, EIO},            {IFS_ERROR_NOT_FOUND, ENOENT},
      {IFS_ERROR_STALE, ESTALE},       {IFS_ERROR_UNSUPPORTED, ENOTSUP},
      {IFS_ERROR_EXISTS, EEXIST},      {IFS_ERROR_QUOTA, EDQUOT},
      {IFS_ERROR_TOO_BIG, EFBIG},      {IFS_ERROR_PERM, EACCES},
      {IFS_ERROR_BUSY, EBUSY},         {IFS_ERROR_INVALID, EINVAL},
      {IFS_ERROR_CANCELLED, EIO},      {IFS_ERROR_REFUSED, EPERM},
      {IFS_ERROR_NOT_EMPTY, ENOTEMPTY}, {IFS_ERROR_NOT_RUN, EIO},
      {IFS_ERROR_NO_SPACE, ENOSPC},    {IFS_ERROR_NO_FILES, EMFILE},
      {IFS_ERROR_READ_ONLY, EROFS},
  };
  if (error == NULL)
    return EIO;
  if (error->domain == IFS_ERROR) {
    for (gsize i = 0; i < G_N_ELEMENTS(table); i++)
      if (table[i].code == (IfsError)error->code)
        return table[i].err;
    return EIO;
  }
  if (error->domain == NAMES_ERROR)
    return EINVAL;
  if (error->domain == IMAP_PARSE_ERROR)
    return EPROTO;
  return EIO;
}

gboolean ifs_error_is_unreachable(const GError *error) {
  return g_error_matches(error, IFS_ERROR, IFS_ERROR_CONNECT) ||
         g_error_matches(error, IFS_ERROR, IFS_ERROR_TIMEOUT) ||
         g_error_matches(error, IFS_ERROR, IFS_ERROR_NOT_RUN);
}

gboolean ifs_error_is_connection(const GError *error) {
  if (error == NULL)
    return FALSE;
  if (error->domain == IMAP_PARSE_ERROR)
    return TRUE;
  return error->domain == IFS_ERROR &&
         (error->code == IFS_ERROR_CLOSED || error->code == IFS_ERROR_TIMEOUT ||
          error->code == IFS_ERROR_PROTOCOL || error->code == IFS_ERROR_CONNECT ||
          error->code == IFS_ERROR_NOT_RUN);
}
