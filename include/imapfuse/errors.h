/* errors.h - the one error domain inside imapfuse and its errno table.
 *
 * Inside, every failure is a GError in IFS_ERROR (or a parser/names domain);
 * only the FUSE edge turns it into a negative errno, through
 * ifs_errno_from_error(), so the mapping lives in exactly one place.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define IFS_ERROR (ifs_error_quark())
GQuark ifs_error_quark(void);

typedef enum {
  IFS_ERROR_FAILED,      /* anything else                          -> EIO */
  IFS_ERROR_CONNECT,     /* cannot reach the server                -> EIO */
  IFS_ERROR_TLS,         /* handshake or certificate verification  -> EIO */
  IFS_ERROR_AUTH,        /* login refused                          -> EACCES */
  IFS_ERROR_PROTOCOL,    /* the server sent something unparsable   -> EPROTO */
  IFS_ERROR_TIMEOUT,     /* no answer in time                      -> ETIMEDOUT */
  IFS_ERROR_CLOSED,      /* connection lost / BYE                  -> EIO */
  IFS_ERROR_NO,          /* server answered NO (no known code)     -> EIO */
  IFS_ERROR_BAD,         /* server answered BAD                    -> EIO */
  IFS_ERROR_NOT_FOUND,   /* message or mailbox does not exist      -> ENOENT */
  IFS_ERROR_STALE,       /* UIDVALIDITY changed under a handle     -> ESTALE */
  IFS_ERROR_UNSUPPORTED, /* server lacks a needed capability       -> ENOTSUP */
  IFS_ERROR_EXISTS,      /* [ALREADYEXISTS]                        -> EEXIST */
  IFS_ERROR_QUOTA,       /* [OVERQUOTA]                            -> EDQUOT */
  IFS_ERROR_TOO_BIG,     /* [TOOBIG], [LIMIT]                      -> EFBIG */
  IFS_ERROR_PERM,        /* [NOPERM]                               -> EACCES */
  IFS_ERROR_BUSY,        /* [INUSE]                                -> EBUSY */
  IFS_ERROR_INVALID,     /* bad argument/name                      -> EINVAL */
  IFS_ERROR_CANCELLED,   /* shutting down, writer killed           -> EIO
                          * (never EINTR: callers retry that forever) */
  IFS_ERROR_REFUSED,     /* imapfuse will not do it (unsafe/INBOX) -> EPERM */
  IFS_ERROR_NOT_EMPTY,   /* mailbox still holds mail or children   -> ENOTEMPTY */
  IFS_ERROR_NOT_RUN,     /* connection lost; the command never ran -> EIO */
  IFS_ERROR_NO_SPACE,    /* our own disk (staging) is full         -> ENOSPC */
  IFS_ERROR_NO_FILES,    /* imapfuse is out of file descriptors    -> EMFILE */
  IFS_ERROR_READ_ONLY,   /* our own disk (staging) is read-only    -> EROFS */
} IfsError;

/* Positive errno for any GError (IFS_ERROR or another domain). */
int ifs_errno_from_error(const GError *error);
/* TRUE when the error means the connection is unusable (retry elsewhere;
 * only IFS_ERROR_NOT_RUN says the command itself is safe to send again). */
gboolean ifs_error_is_connection(const GError *error);
/* TRUE when the server could not be reached or did not answer (not when
 * it answered, if with a BYE, a close or something unreadable). */
gboolean ifs_error_is_unreachable(const GError *error);

G_END_DECLS
