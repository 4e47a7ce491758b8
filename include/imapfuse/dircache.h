/* dircache.h - the mailbox tree and each mailbox's message list.
 *
 * Owns: what the filesystem shows as directories (from LIST, nested by the
 * server's delimiter, names decoded and escaped by names.c) and, per
 * mailbox, the UID/size/date/flags list from one
 * UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS).
 *
 * Identity: every directory node and every (mailbox, UIDVALIDITY) pair gets
 * a 32-bit id, never reused while mounted.  fs.c builds inode numbers from
 * them (directory: id << 32; message: epoch id << 32 | UID), so inodes are
 * stable without a per-message table, and a UIDVALIDITY change gives every
 * message of that mailbox new inodes (old handles see ESTALE).
 * Nodes are never freed while mounted; a mailbox that disappears is marked
 * absent, and comes back as the same node if it reappears.
 */
#pragma once

#include <glib.h>

#include "imapfuse/cmd.h"
#include "imapfuse/pool.h"

G_BEGIN_DECLS

typedef struct Dircache Dircache;
typedef struct DcNode DcNode;

typedef struct {
  guint32 uid;
  guint32 flagset; /* index for dircache_flags() */
  guint64 size;    /* RFC822.SIZE, corrected to the real length once read */
  gint64 date;     /* INTERNALDATE */
  guint32 seen;    /* wall-clock s this cache first listed it (0: listed before
                    * imapfuse kept it): its ctime, when later than date */
} DcMsg;

/* A consistent view of one mailbox's messages at one moment. */
typedef struct {
  GArray *msgs; /* DcMsg sorted by UID, refcounted; NULL when not selectable */
  guint32 uidvalidity;
  guint32 epoch;
  guint32 uidnext; /* the server's UIDNEXT when it was listed; 0: not known */
} DcListing;

/* Whether message uid, not in listing l, may exist on the server under
 * l's UIDVALIDITY: not if its UID is below the UIDNEXT of the listing
 * (such a message was expunged, and a UID is never given out again).
 * The folder may have a new UIDVALIDITY by now (fs_gone_for_good). */
gboolean dc_listing_may_have(const DcListing *l, guint32 uid);

typedef struct {
  guint32 id;
  char *name; /* directory name as shown */
} DcChild;

/* meta_dir: where message lists are kept between mounts (NULL: nowhere). */
Dircache *dircache_new(Pool *pool, const char *meta_dir);
void dircache_free(Dircache *dc);
/* Write every changed message list to meta_dir (at unmount). */
void dircache_flush(Dircache *dc);

/* LIST again when forced or older than max_age_us. */
gboolean dircache_refresh_tree(Dircache *dc, gint64 max_age_us, GError **error);

DcNode *dircache_root(Dircache *dc);
guint32 dcnode_id(const DcNode *n);
/* Server name, or NULL for the root. */
const char *dcnode_mailbox(const DcNode *n);
gboolean dcnode_selectable(const DcNode *n);
/* Could hold mail when last listed as itself; unlike selectable, kept
 * when it is gone. */
gboolean dcnode_held_mail(const DcNode *n);
gboolean dcnode_present(const DcNode *n);
DcNode *dcnode_parent(const DcNode *n);
/* n's path on the mount ("Archive/2024"; "" for the root), from the
 * tree as it is, with no round trip. */
char *dircache_path(Dircache *dc, DcNode *n);

/* A directory node by id, or NULL. */
DcNode *dircache_node(Dircache *dc, guint32 id);
/* The mailbox node and UIDVALIDITY an epoch id stands for; NULL if none. */
DcNode *dircache_epoch(Dircache *dc, guint32 epoch, guint32 *uidvalidity);
/* n is known to have another UIDVALIDITY than uidvalidity now (its last
 * listing, or a STATUS that voided it since): that one's messages are gone. */
gboolean dircache_uidvalidity_gone(DcNode *n, guint32 uidvalidity);
/* A present child by directory name, or NULL. */
DcNode *dircache_child(Dircache *dc, DcNode *parent, const char *name);
/* The same, also a child no longer present (as it was last listed). */
DcNode *dircache_child_known(Dircache *dc, DcNode *parent, const char *name);
/* Snapshot of present children (DcChild*, sorted by name; owned). */
GPtrArray *dircache_children(Dircache *dc, DcNode *parent);

/* The message list, fetched from the server when it is older than
 * max_age_us (0: always revalidate; G_MAXINT64: only if never fetched).
 * Concurrent callers share one fetch.  Release with dc_listing_clear(). */
gboolean dircache_listing(Dircache *dc, DcNode *n, gint64 max_age_us, DcListing *out,
                          GError **error);
void dc_listing_clear(DcListing *l);
/* The listing n had when last known to match the server in this mount
 * (a fetch, or a STATUS that confirmed it), without asking the server,
 * and in *age_us how long ago that was: for when the server cannot be
 * reached.  FALSE if there is none, or a STATUS has shown another
 * UIDVALIDITY since (its messages are gone). */
gboolean dircache_listing_held(Dircache *dc, DcNode *n, DcListing *out, gint64 *age_us);
/* Binary search in a listing. */
const DcMsg *dc_listing_find(const DcListing *l, guint32 uid);
/* Age of the node's list in microseconds (G_MAXINT64 if never fetched). */
gint64 dircache_listing_age(Dircache *dc, DcNode *n);
/* The server turned out to hold a different number of bytes than
 * RFC822.SIZE said: trust the bytes.  TRUE if the listing said otherwise
 * until now. */
gboolean dircache_set_size(Dircache *dc, DcNode *n, guint32 uidvalidity, guint32 uid,
                           guint64 size);
/* *error (set) came from work in n's mailbox (asked: the name it had
 * then).  If it may mean the mailbox is gone (NO, a dropped connection),
 * the mailbox list is asked again; if n is gone, *error becomes
 * IFS_ERROR_NOT_FOUND and TRUE is returned. */
gboolean dircache_check_gone(Dircache *dc, DcNode *n, const char *asked, GError **error);

/* ---- changes known without a full listing ----
 * After an operation of ours (expunge, move, append, flag store) or a
 * server push (IDLE, QRESYNC), the list is patched in place (copy on
 * write, so snapshots already handed out do not change).  A change for a
 * UIDVALIDITY other than the list's just marks the list stale. */
typedef enum {
  DC_CHANGE_REMOVED,
  DC_CHANGE_ADDED,
  DC_CHANGE_FLAGS,
  DC_CHANGE_UIDVALIDITY, /* the whole mailbox was replaced; uid = the old UIDVALIDITY */
  DC_CHANGE_LISTED,      /* fetched anew, also the first time (no REMOVED then); uid =
                          * its SELECT's UIDNEXT: a message below it not listed is gone */
  DC_CHANGE_DIR,         /* n's change time moved (dircache_dir_info); epoch, uid 0 */
} DcChangeKind;
/* Told of every message that changed, e.g. to invalidate kernel entries.
 * Called without dircache locks held. */
typedef void (*DcObserver)(DcNode *n, guint32 epoch, guint32 uid, DcChangeKind kind,
                           gpointer user);
void dircache_set_observer(Dircache *dc, DcObserver fn, gpointer user);

guint32 dircache_intern_flags(Dircache *dc, const char *flags);
void dircache_msgs_removed(Dircache *dc, DcNode *n, guint32 uidvalidity, const guint32 *uids,
                           guint n_uids);
/* m->flagset from dircache_intern_flags(). */
void dircache_msg_added(Dircache *dc, DcNode *n, guint32 uidvalidity, const DcMsg *m);
void dircache_msg_flags(Dircache *dc, DcNode *n, guint32 uidvalidity, guint32 uid,
                        const char *flags);
/* The next listing asks the server. */
void dircache_invalidate(Dircache *dc, DcNode *n);
/* The mailbox whose messages a depth-first walk in readdir order (grep -r,
 * tar, find) reads after n's: readdir lists subdirectories (by name)
 * before messages, so the leftmost leaf of n's next sibling, else n's
 * parent.  Skips what is not selectable; NULL at the end of the tree. */
DcNode *dircache_walk_next(Dircache *dc, DcNode *n);
/* The node for a server mailbox name, or NULL. */
DcNode *dircache_find_mailbox(Dircache *dc, const char *mailbox);

/* Loads the lists the last mount saved, for every mailbox not listed yet
 * (they are served only once confirmed or fetched again). */
void dircache_load_saved(Dircache *dc);
/* After the mount's first LIST: saved listings (meta_dir) of mailboxes
 * that no longer exist are deleted (they piled up, one per folder ever
 * listed). */
void dircache_prune_saved(Dircache *dc);

/* The server says n is no longer the mailbox of UIDVALIDITY uidvalidity
 * (a SELECT for a read showed another): its listing is dropped as when a
 * STATUS shows it (the next lookup lists it again) and the kernel forgets
 * the old names.  Nothing if n's listing is already of another one. */
void dircache_uidvalidity_changed(Dircache *dc, DcNode *n, guint32 uidvalidity);

/* Mailboxes whose list was handed out in this mount (with idle_us > 0:
 * and that the user used within the last idle_us, dircache_touch), and
 * with saved also those with a list loaded from the last mount (DcNode*,
 * not owned). */
GPtrArray *dircache_listed_nodes(Dircache *dc, gboolean saved, gint64 idle_us);
/* Listing ahead: up to threads folders listed at once in the background
 * (0: none; the queue is dropped).  Set before use and at the end. */
void dircache_set_prefetch(Dircache *dc, guint threads);
/* The user opened folder n (or the root), having read no file since the
 * folder opened before if quiet: once two such steps follow a tree walk
 * (ls -R, find), the next folders it opens that have no listing yet are
 * listed in the background. */
void dircache_prefetch_after(Dircache *dc, DcNode *n, gboolean quiet);
/* The user opened n or a file in it (for the watcher: dircache_listed_nodes). */
void dircache_touch(Dircache *dc, DcNode *n);
/* Whether a STATUS answer, asked at monotonic time asked_us, disagrees
 * with the cached list (UIDVALIDITY, MESSAGES, UIDNEXT, HIGHESTMODSEQ or
 * UNSEEN).  When it agrees and carries a HIGHESTMODSEQ (any change to a
 * mailbox raises it), the list is known exact as of asked_us and counts
 * as fetched then. */
gboolean dircache_status_differs(Dircache *dc, DcNode *n, const ImapStatusInfo *st,
                                 gint64 asked_us);

/* A listing fetched after a STATUS reflects at least that HIGHESTMODSEQ. */
void dircache_note_modseq(Dircache *dc, DcNode *n, guint32 uidvalidity, guint64 highestmodseq);

/* For n's attributes: in *changed_us when its entries last changed
 * (wall-clock us), the directory's mtime: a message added or removed, a
 * subfolder made or gone, as this cache saw it (a STATUS that shows it, or
 * a listing).  A mailbox's is kept with its saved listing, the others' in
 * meta_dir/dirs; a folder with no history shows the mount's start, also
 * once listed.  A directory that holds no mail takes the newest of its
 * subfolders' too.  In *subdirs how many subfolders it has now. */
void dircache_dir_info(Dircache *dc, DcNode *n, guint64 *changed_us, guint *subdirs);

/* The flags string of a flag set id ("\\Seen $Work", "" for none). */
const char *dircache_flags(Dircache *dc, guint32 flagset);

/* ==== write path (issue 4, used by fswrite.c) ====
 * After a RENAME the kernel keeps the directory's inode under its new
 * name, so the node moves (same id, epoch and message list) instead of a
 * new node appearing: no stale inodes under the renamed directory.
 * new_name is the directory name as shown (escaped); new_mailbox the
 * server name; descendants' server names follow.  An absent node holding
 * new_name is set aside. */
void dircache_node_renamed(Dircache *dc, DcNode *n, DcNode *new_parent, const char *new_name,
                           const char *new_mailbox);

G_END_DECLS
