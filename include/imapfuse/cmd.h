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
  guint64 highestmodseq; /* 0 when the server has no CONDSTORE for it
                          * ([NOMODSEQ], or none sent, or over 2^63-1) */
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

/* UID FETCH uidset (UID RFC822.SIZE INTERNALDATE FLAGS [MODSEQ]) on the
 * selected mailbox; fn per message.  MODSEQ only with modseq (a mailbox
 * whose SELECT gave HIGHESTMODSEQ: RFC 7162 has a server refuse it in a
 * [NOMODSEQ] one).  vanished (may be NULL) gets expunged UIDs as a set
 * ("3:5,9"), from VANISHED and from "* n EXPUNGE" of a message already
 * fetched. */
typedef void (*ImapVanishedFn)(const char *uidset, gpointer user);
gboolean imap_fetch_meta(ImapConn *c, const char *uidset, gboolean modseq,
                         ImapMetaFn fn, ImapVanishedFn vanished, gpointer user,
                         GError **error);

/* What changed since modseq on the selected mailbox (QRESYNC enabled):
 * UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ)
 *   (CHANGEDSINCE modseq VANISHED)
 * fn gets changed and new messages, vanished gets each expunged UID set
 * as text ("3:5,9"). */
gboolean imap_fetch_changes(ImapConn *c, guint64 modseq, ImapMetaFn fn, ImapVanishedFn vanished,
                            gpointer user, GError **error);

/* A mailbox's listing in one round trip: SELECT pipelined with
 * UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS [MODSEQ]), or with the
 * CHANGEDSINCE/VANISHED form when changedsince > 0 and QRESYNC is on.  A
 * SELECT even when the session has the mailbox selected already: a
 * pipelined NOOP would not do (the FETCH after it may be evaluated on the
 * old view).  info holds SELECT's answers; when the SELECT succeeded and
 * only the FETCH was refused, this fails but the mailbox stays selected.
 * The caller must check info->uidvalidity against what a delta was asked
 * against: a different one makes the delta meaningless. */
gboolean imap_list_messages(ImapConn *c, const char *mailbox, guint64 changedsince,
                            ImapSelectInfo *info, ImapMetaFn fn,
                            ImapVanishedFn vanished, gpointer user, GError **error);

/* UID FETCH uid BODY.PEEK[] (length 0) or BODY.PEEK[]<offset.length>.
 * IFS_ERROR_NOT_FOUND when the server returns no such message. */
gboolean imap_fetch_body(ImapConn *c, guint32 uid, guint64 offset,
                         guint64 length, GBytes **out, GError **error);
/* The same in mailbox, which must have UIDVALIDITY uidvalidity: a SELECT
 * the session needs first goes in the same write (as imap_fetch_bodies). */
gboolean imap_fetch_body_in(ImapConn *c, const char *mailbox, guint32 uidvalidity, guint32 uid,
                            guint64 offset, guint64 length, GBytes **out, GError **error);

/* In mailbox, which must have UIDVALIDITY uidvalidity: UID FETCH
 * uidsets[i] BODY.PEEK[] for i < n (1..IMAP_PIPELINE_MAX - 1), pipelined:
 * fn for each body as it arrives, the sets' bodies in the order of the
 * sets (a server answers one FETCH in its own order, UIDs ascending for
 * Dovecot).  A session with another mailbox (or another UIDVALIDITY of
 * it) selected sends the SELECT in the same write: a round trip less per
 * switch.  Bodies reach fn only once SELECT's UIDVALIDITY matched; else
 * IFS_ERROR_STALE.  Returning FALSE from fn only stops the callbacks (the
 * commands still complete). */
typedef gboolean (*ImapBodyFn)(guint32 uid, GBytes *body, gpointer user);
gboolean imap_fetch_bodies(ImapConn *c, const char *mailbox, guint32 uidvalidity,
                           char *const *uidsets, guint n, ImapBodyFn fn, gpointer user,
                           GError **error);

gboolean imap_noop(ImapConn *c, GError **error);

typedef struct {
  guint32 uidvalidity, uidnext, messages;
  guint64 highestmodseq; /* 0 unless CONDSTORE */
  guint32 unseen;        /* asked only without CONDSTORE: */
  gboolean has_unseen;
} ImapStatusInfo;
/* STATUS of n mailboxes, pipelined (IMAP_PIPELINE_MAX a round trip), or
 * for more than IMAP_STATUS_LIST_MIN of them, with LIST-STATUS, one LIST
 * of every mailbox; a mailbox the server refused or did not name is left
 * all zero.  FALSE only when the
 * connection failed. */
#define IMAP_STATUS_LIST_MIN (2 * IMAP_PIPELINE_MAX)
gboolean imap_status_many(ImapConn *c, const char *const *mailboxes, guint n, ImapStatusInfo *out,
                          GError **error);
/* STATUS mailbox (UIDVALIDITY UIDNEXT MESSAGES, and HIGHESTMODSEQ with
 * CONDSTORE, else UNSEEN). */
gboolean imap_status(ImapConn *c, const char *mailbox, ImapStatusInfo *out, GError **error);

/* Sorted UIDs -> compact set "1:5,7,9:12". */
char *imap_uidset_format(const guint32 *uids, guint n);

/* ==== write operations (issue 4) ====================================
 * Everything that changes the server.  UID commands act on the selected
 * mailbox: callers select it first (imap_ensure_selected) and check its
 * UIDVALIDITY.  A plain EXPUNGE or CLOSE is never sent: they would also
 * remove messages another client flagged \Deleted without expunging. */

/* A flag that may be stored: \Answered \Flagged \Deleted \Seen \Draft
 * (any case) or a keyword atom ($Work, NonJunk).  \Recent, \* and other
 * backslash names are refused. */
gboolean imap_flag_valid(const char *flag);
/* Flags separated by spaces or tabs -> vector of canonical spellings (system
 * flags capitalised as in RFC 3501, duplicates dropped); an empty text
 * gives an empty vector.  IFS_ERROR_INVALID naming the first bad flag. */
char **imap_flags_parse(const char *text, GError **error);

typedef enum {
  IMAP_STORE_REPLACE, /* FLAGS */
  IMAP_STORE_ADD,     /* +FLAGS */
  IMAP_STORE_REMOVE,  /* -FLAGS */
} ImapStoreMode;
/* UID STORE uid [+-]FLAGS[.SILENT] (flags).  *flags_out (may be NULL)
 * gets the canonical flags the server reported afterwards (not with
 * silent), or NULL when it reported none (the message is gone). */
gboolean imap_store_flags(ImapConn *c, guint32 uid, ImapStoreMode mode,
                          const char *const *flags, gboolean silent, char **flags_out,
                          GError **error);
/* UID FETCH uid (FLAGS): canonical flags; IFS_ERROR_NOT_FOUND when the
 * message does not exist. */
gboolean imap_fetch_flags(ImapConn *c, guint32 uid, char **flags_out, GError **error);
/* Whether a space-separated canonical flag list (as from imap_fetch_flags)
 * has flag. */
gboolean imap_flags_have(const char *flags, const char *flag);
/* UID EXPUNGE uidset (UIDPLUS / IMAP4rev2); IFS_ERROR_UNSUPPORTED without
 * them, never a plain EXPUNGE. */
gboolean imap_uid_expunge(ImapConn *c, const char *uidset, GError **error);

/* Expunges message uid alone, in one round trip: UID FETCH uid (FLAGS),
 * UID STORE uid +FLAGS.SILENT (\Deleted) and UID EXPUNGE uid, pipelined.
 * *found: the FETCH saw the message (then TRUE means an expunge of it
 * was reported; an OK without one is an error, after one more UID
 * EXPUNGE alone: Dovecot may run a pipelined one before the STORE shows).
 * Pipelined after nothing,
 * the FETCH sees the session's view as it was (a message another session
 * just added may not be in it): the caller syncs (NOOP) and asks again
 * when !*found.  On a failure the \Deleted it set is taken off again.
 * Without UIDPLUS nothing is sent: IFS_ERROR_UNSUPPORTED. */
gboolean imap_uid_delete(ImapConn *c, guint32 uid, gboolean *found, GError **error);

/* COPYUID (RFC 4315) from UID COPY / UID MOVE: the destination's
 * UIDVALIDITY and the UIDs, source[i] -> dest[i]. */
typedef struct {
  guint32 uidvalidity; /* 0: the server sent no COPYUID */
  GArray *src;         /* guint32 */
  GArray *dst;         /* guint32 */
} ImapCopyUid;
void imap_copyuid_clear(ImapCopyUid *cu);
/* The destination UID of src_uid, or 0. */
guint32 imap_copyuid_lookup(const ImapCopyUid *cu, guint32 src_uid);
/* Parses the arguments of a COPYUID response code into cu. */
gboolean imap_parse_copyuid(const ImapVal *code_args, ImapCopyUid *cu);

/* UID COPY / UID MOVE uidset to dest; cu (may be NULL) gets COPYUID. */
gboolean imap_uid_copy(ImapConn *c, const char *uidset, const char *dest, ImapCopyUid *cu,
                       GError **error);
gboolean imap_uid_move(ImapConn *c, const char *uidset, const char *dest, ImapCopyUid *cu,
                       GError **error);

/* UID FETCH uid (FLAGS) and UID MOVE uid dest, pipelined: one round
 * trip.  *found: COPYUID names uid, or, with no COPYUID at all, an
 * expunge of uid was reported (so the caller syncs and asks again when
 * not, as for imap_uid_delete).  IFS_ERROR_UNSUPPORTED without MOVE and
 * UIDPLUS. */
gboolean imap_uid_move_one(ImapConn *c, guint32 uid, const char *dest, ImapCopyUid *cu,
                           gboolean *found, GError **error);

/* APPEND mailbox [(flags)] [date] {n}message.  date 0: the server's now.
 * The UIDVALIDITY and UID from APPENDUID go to uidvalidity and uid (0 when
 * the server sent none). */
gboolean imap_append(ImapConn *c, const char *mailbox, const char *const *flags, gint64 date,
                     GBytes *message, guint32 *uidvalidity, guint32 *uid, GError **error);

/* CREATE / DELETE / RENAME.  DELETE and RENAME of INBOX are refused here
 * (IFS_ERROR_REFUSED) without asking the server: RFC 3501 gives them
 * special meanings (RENAME INBOX moves all its mail). */
gboolean imap_create(ImapConn *c, const char *mailbox, GError **error);
gboolean imap_delete(ImapConn *c, const char *mailbox, GError **error);
gboolean imap_rename(ImapConn *c, const char *from, const char *to, GError **error);

/* STATUS mailbox (MESSAGES). */
gboolean imap_status_messages(ImapConn *c, const char *mailbox, guint32 *messages,
                              GError **error);

/* UID SEARCH UNDELETED LARGER size-1 SMALLER size+1 [HEADER Message-ID id]
 * on the selected mailbox: messages of exactly size bytes (size >= 1),
 * appended to uids (guint32).  message_id is used only when it is
 * printable ASCII. */
gboolean imap_search_same_size(ImapConn *c, guint64 size, const char *message_id, GArray *uids,
                               GError **error);

G_END_DECLS
