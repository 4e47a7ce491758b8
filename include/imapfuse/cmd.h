/* cmd.h - typed IMAP operations on one connection.
 *
 * Owns: which command text each operation sends (with capability
 * fallbacks) and how its responses are read back into C structures.  Only
 * UID commands are used: sequence numbers shift under expunges.  Nothing
 * here knows about FUSE or caches.
 */
#pragma once

#include <glib.h>

#include "imapfuse/conn.h"

G_BEGIN_DECLS

/* LIST attributes (RFC 3501, RFC 5258, RFC 6154). */
enum {
  IMAP_MBX_NOSELECT = 1u << 0,
  IMAP_MBX_NOINFERIORS = 1u << 1,
  IMAP_MBX_HASCHILDREN = 1u << 2,
  IMAP_MBX_HASNOCHILDREN = 1u << 3,
  IMAP_MBX_NONEXISTENT = 1u << 4,
  IMAP_MBX_ALL = 1u << 8,
  IMAP_MBX_ARCHIVE = 1u << 9,
  IMAP_MBX_DRAFTS = 1u << 10,
  IMAP_MBX_FLAGGED = 1u << 11,
  IMAP_MBX_JUNK = 1u << 12,
  IMAP_MBX_SENT = 1u << 13,
  IMAP_MBX_TRASH = 1u << 14,
};

typedef struct {
  char *name;   /* server form (modified UTF-7 unless UTF8=ACCEPT) */
  char delim;   /* 0 = flat (NIL) */
  guint32 attrs;
} ImapMailboxInfo;
void imap_mailbox_info_free(ImapMailboxInfo *m);

/* LIST "" "*" -> GPtrArray of ImapMailboxInfo* (owned by the array). */
gboolean imap_list(ImapConn *c, GPtrArray **out, GError **error);

typedef struct {
  guint32 uidvalidity;
  guint32 uidnext;
  guint32 exists;
  guint64 highestmodseq; /* 0 when the server has no CONDSTORE for it */
} ImapSelectInfo;

/* SELECT mailbox (always sent); records the selection on the connection. */
gboolean imap_select(ImapConn *c, const char *mailbox, ImapSelectInfo *info,
                     GError **error);
/* SELECT only if another mailbox (or none) is selected.  *uidvalidity gets
 * the selected mailbox's UIDVALIDITY either way. */
gboolean imap_ensure_selected(ImapConn *c, const char *mailbox,
                              guint32 *uidvalidity, GError **error);

typedef struct {
  guint32 uid;
  guint64 size;       /* RFC822.SIZE */
  gint64 date;        /* INTERNALDATE, Unix time */
  const char *flags;  /* canonical: sorted, space separated; "" for none */
  guint64 modseq;     /* 0 if not sent */
  gboolean has_size, has_date, has_flags;
} ImapMsgMeta;
typedef void (*ImapMetaFn)(const ImapMsgMeta *m, gpointer user);

/* UID FETCH uidset (UID RFC822.SIZE INTERNALDATE FLAGS [MODSEQ])
 * [(CHANGEDSINCE n)] on the selected mailbox; fn per message. */
gboolean imap_fetch_meta(ImapConn *c, const char *uidset, guint64 changedsince,
                         ImapMetaFn fn, gpointer user, GError **error);

/* UID FETCH uid BODY.PEEK[] (length 0) or BODY.PEEK[]<offset.length>.
 * IFS_ERROR_NOT_FOUND when the server returns no such message. */
gboolean imap_fetch_body(ImapConn *c, guint32 uid, guint64 offset,
                         guint64 length, GBytes **out, GError **error);

/* UID FETCH uidset BODY.PEEK[]: fn for each body as it arrives; returning
 * FALSE from fn only stops the callbacks (the command still completes). */
typedef gboolean (*ImapBodyFn)(guint32 uid, GBytes *body, gpointer user);
gboolean imap_fetch_bodies(ImapConn *c, const char *uidset, ImapBodyFn fn,
                           gpointer user, GError **error);

gboolean imap_noop(ImapConn *c, GError **error);

/* Sorted UIDs -> compact set "1:5,7,9:12". */
char *imap_uidset_format(const guint32 *uids, guint n);

G_END_DECLS
