/* dircache.c - mailbox tree from LIST and per-mailbox message lists.
 *
 * Design note.  The tree is small (one node per mailbox) and changes rarely;
 * it is rebuilt in place from LIST under tree_lock, nodes are never freed,
 * so a DcNode pointer or id handed to fs.c stays valid for the whole mount.
 * A message list is an immutable, refcounted GArray: a refresh builds a new
 * array and swaps it in under the node's state lock, so readers (readdir,
 * lookup, getattr) hold a reference to a consistent snapshot and never wait
 * for the network.  Refreshes of one mailbox are serialised by its
 * refresh_lock; a caller that waited for another's refresh uses that result
 * instead of fetching again.  A DcMsg is 24 bytes; flags are interned as
 * flag-set ids, since a mailbox has few distinct combinations.
 * Lock order: refresh_lock -> (pool) ; node->lock -> flags_lock ;
 * node->lock -> tree_lock (a node's change time, read under tree_lock, is
 * atomic for it).  tree_lock, node->lock and flags_lock are never held
 * across I/O.
 */
#include "imapfuse/dircache.h"

#include <string.h>

#include "imapfuse/cmd.h"
#include "imapfuse/errors.h"
#include "imapfuse/lockfile.h"
#include "imapfuse/loop.h"
#include "imapfuse/mcache.h"
#include "imapfuse/names.h"

#include <glib/gstdio.h>
#include <fcntl.h>
#include <unistd.h>

struct DcNode {
  guint32 id;
  DcNode *parent;
  char *name;       /* directory name (escaped) */
  char *mailbox;    /* server name; NULL for the root */
  gboolean selectable;
  gboolean held_mail; /* selectable when last listed as itself (kept when gone) */
  gboolean present;
  guint seen, listed;   /* the last LIST that named it on a path, as itself */
  GHashTable *children; /* name -> DcNode* (under tree_lock) */
  guint64 changed_us;   /* dircache_dir_info, wall-clock us (atomic: read under tree_lock) */

  GMutex refresh_lock;
  GMutex lock; /* protects the fields below */
  GArray *msgs;
  guint32 uidvalidity;
  guint32 epoch;
  guint64 highestmodseq; /* 0: unknown (no CONDSTORE) */
  guint32 uidnext;       /* the last SELECT's (or saved) UIDNEXT; 0: unknown */
  gboolean dirty;        /* changed since last saved to disk */
  gboolean save_failed;  /* the last save failed, and said so (once, not at each) */
  gboolean meta_tried;   /* the on-disk copy was looked at */
  gint64 fetched_at; /* monotonic us of the start of the last good fetch; 0 never */
  gint64 good_at;    /* the same, not reset when only stale; 0 after a new UIDVALIDITY */
  guint64 noticed;   /* wall-clock us a STATUS showed other entries than msgs (0: none
                      * since the last listing): the change time the listing then takes */
  guint32 noticed_messages, noticed_uidnext; /* ... what that STATUS said */
  gint64 noticed_us; /* ... monotonic us it was asked */
  gboolean stale;    /* msgs may not match the server at highestmodseq: ask it */
  gboolean served;   /* a listing of it was handed out in this mount */
  gboolean prefetching; /* queued or being listed ahead (dircache_prefetch_after) */
  guint voided;         /* listings voided by a STATUS with another UIDVALIDITY */
  guint32 status_uidvalidity; /* ... the UIDVALIDITY that STATUS showed */
  GHashTable *added;  /* uid -> monotonic us our APPEND or MOVE added it (until a
                       * fetch begun later has seen the mailbox); NULL: none */
  gint64 used_at;    /* monotonic us the user last opened it or a file in it (atomic) */
  gint64 failed_at;  /* monotonic us when the last fetch failed, with why: */
  GError *failed;
  /* uid -> length its bytes turned out to have where RFC822.SIZE said
   * otherwise (this uidvalidity; NULL until one did): later listings
   * carry the server's figure again, and the kernel would cut reads at
   * it.  A message's bytes never change, so the length learned stays. */
  GHashTable *sizes;
};

typedef struct {
  DcNode *node;          /* for a directory id: the node; for an epoch: its mailbox */
  guint32 uidvalidity;   /* 0 for directory ids */
} DcId;

struct Dircache {
  Pool *pool;
  /* Replaced mailbox names, freed at unmount only: other threads may still
   * hold the pointer dcnode_mailbox() gave them. */
  GPtrArray *graveyard;
  char *meta_dir; /* per-mailbox metadata files, or NULL */
  GMutex tree_lock;
  DcNode *root;
  GHashTable *ids; /* id -> DcId* given out in this mount; 0 unused, 1 the root */
  guint32 next_id;  /* the next new id: above every id an earlier mount gave out */
  gboolean ids_persist; /* this mount keeps ids in meta_dir (holds ids.lock) */
  int ids_lock_fd;
  gint64 tree_at;
  guint lists;            /* LIST responses applied */
  guint lists_asked;      /* LISTs asked (a ticket each) */
  guint lists_superseded; /* answers to LISTs asked up to this one are stale */
  GMutex flags_lock;
  GHashTable *flag_ids;  /* string -> id+1 */
  GPtrArray *flag_names; /* id -> string */
  GByteArray *flag_seen; /* id -> whether the set has \\Seen */
  GHashTable *saved_ids; /* "UIDVALIDITY\tmailbox" -> id, from the last mount */
  GHashTable *saved_dirs; /* mailbox ("" for the root) -> its change time (guint64 us) */
  guint64 born; /* wall-clock us this mount began: the time of a directory not known */
  guint ids_reserved;    /* ids below it are recorded as used (meta_dir/ids-next) */
  DcObserver observer;     /* (observer_lock) */
  gpointer observer_user;  /* (observer_lock) */
  GMutex observer_lock;
  GCond observer_done;
  guint telling;           /* observer calls under way (observer_lock) */
  GThreadPool *prefetch; /* listings ahead of a tree walk; NULL: none */
  GPtrArray *walk_next;  /* the folders a walk goes to after the last opened (tree_lock) */
  guint walk_steps;      /* quiet steps of a walk in a row (tree_lock) */
  guint prefetch_threads; /* threads listing ahead; threads + 1 folders are queued ahead */
};

/* Ids (the high half of inode numbers) stay the same from one mount to
 * the next: backup tools take a changed inode for a changed file (restic
 * and borg read every message again after each remount, and after
 * another client made a folder, since ids went by the order of listing).
 * meta_dir/ids keeps "UIDVALIDITY<TAB>id<TAB>mailbox" lines (0 for a
 * directory's id); an id is taken again by the same key if still free. */
#define DC_IDS_FILE "ids"
#define DC_DIRS_FILE "dirs" /* "<change time, us>\t<mailbox>" lines (dircache_dir_info) */
#define DC_IDS_NEXT_FILE "ids-next"
#define DC_IDS_RESERVE 64 /* new ids recorded as used this many at a time */
#define DC_IDS_MAX 0x7fffffffu /* ids stay below it */
#define DC_IDS_LOCK_FILE "ids.lock"
#define DC_IDS_GAP 65536u /* ids-next lost: new ids start this far above the saved */

static char *dc_id_key(guint32 uidvalidity, const char *mailbox) {
  return g_strdup_printf("%u\t%s", uidvalidity, mailbox);
}

static DcNode *_dc_find(DcNode *n, const char *mailbox);

/* _dc_id: caller holds tree_lock (or no other thread runs). */
static DcId *_dc_id(Dircache *dc, guint32 id) {
  return g_hash_table_lookup(dc->ids, GUINT_TO_POINTER(id));
}

static guint32 _dc_take_id(Dircache *dc, guint32 id, DcNode *node, guint32 uidvalidity) {
  DcId *rec = g_new(DcId, 1);
  *rec = (DcId){node, uidvalidity};
  g_hash_table_insert(dc->ids, GUINT_TO_POINTER(id), rec);
  return id;
}

/* Records next_id (and a reserve above it) as used, on disk, before an
 * id at or above what was recorded is given out: so no later mount gives
 * it out again, also after this one is killed. */
static void dc_reserve_ids(Dircache *dc) {
  if (!dc->ids_persist || dc->next_id < dc->ids_reserved)
    return;
  if (dc->next_id >= DC_IDS_MAX - DC_IDS_RESERVE) {
    g_warning("inode ids in %s are used up; they are not kept from now on",
              dc->meta_dir);
    dc->ids_persist = FALSE; /* 2^31 ids: beyond any real use */
    return;
  }
  dc->ids_reserved = dc->next_id + DC_IDS_RESERVE;
  g_autofree char *path = g_build_filename(dc->meta_dir, DC_IDS_NEXT_FILE, NULL);
  g_autofree char *text = g_strdup_printf("%u\n", dc->ids_reserved);
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, text, -1, &error)) {
    /* Without the mark the next mount starts far above the saved ids
     * (dc_load_ids), never at ids this one gives out from now on. */
    g_debug("saving inode ids: %s; not kept from now on", error->message);
    g_unlink(path);
    dc->ids_persist = FALSE;
  }
}

static guint32 _dc_new_id(Dircache *dc, DcNode *node, guint32 uidvalidity) {
  if (node->parent == NULL && _dc_id(dc, 1) == NULL)
    return _dc_take_id(dc, 1, node, 0);
  if (dc->saved_ids != NULL && node->mailbox != NULL) {
    g_autofree char *key = dc_id_key(uidvalidity, node->mailbox);
    guint id = GPOINTER_TO_UINT(g_hash_table_lookup(dc->saved_ids, key));
    if (id != 0 && _dc_id(dc, id) == NULL)
      return _dc_take_id(dc, id, node, uidvalidity);
  }
  /* A new id is never one an earlier mount gave out, also not to a folder
   * since deleted (a folder recreated under its name got its old inode
   * numbers), nor after a mount that was killed. */
  dc_reserve_ids(dc);
  return _dc_take_id(dc, dc->next_id++, node, uidvalidity);
}

/* Reads meta_dir/ids into saved_ids, and where new ids start.  Only the
 * mount that holds meta_dir/ids.lock keeps ids: two mounts sharing a
 * cache directory gave the same new id to different folders. */
static void dc_load_ids(Dircache *dc) {
  if (dc->meta_dir == NULL)
    return;
  g_autofree char *lpath = g_build_filename(dc->meta_dir, DC_IDS_LOCK_FILE, NULL);
  dc->ids_lock_fd = lockfile_take(AT_FDCWD, lpath, O_CREAT, LOCKFILE_MOUNT_WAIT_US);
  if (dc->ids_lock_fd < 0) {
    /* Said, not only logged: backup tools that compare inode numbers
     * (tar -g, borg) then see every file of this mount as new. */
    g_warning("%s is in use by another imapfuse mount: this mount's inode numbers are not "
              "kept for the next one, nor new to it (use another -o cache_dir for a second "
              "mount of the account)",
              lpath);
    return;
  }
  dc->ids_persist = TRUE;
  g_autofree char *npath = g_build_filename(dc->meta_dir, DC_IDS_NEXT_FILE, NULL);
  g_autofree char *ntext = NULL;
  guint64 next = 0;
  gboolean have_next =
      g_file_get_contents(npath, &ntext, NULL, NULL) &&
      g_ascii_string_to_unsigned(g_strstrip(ntext), 10, 2, DC_IDS_MAX, &next, NULL);
  g_autofree char *path = g_build_filename(dc->meta_dir, DC_IDS_FILE, NULL);
  g_autofree char *text = NULL;
  guint64 max = 1;
  if (g_file_get_contents(path, &text, NULL, NULL)) {
    dc->saved_ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l != NULL; l++) {
      g_auto(GStrv) f = g_strsplit(*l, "\t", 3);
      guint64 uv, id;
      if (g_strv_length(f) != 3 ||
          !g_ascii_string_to_unsigned(f[0], 10, 0, G_MAXUINT32, &uv, NULL) ||
          !g_ascii_string_to_unsigned(f[1], 10, 2, DC_IDS_MAX, &id, NULL))
        continue;
      g_hash_table_insert(dc->saved_ids, dc_id_key((guint32)uv, f[2]),
                          GUINT_TO_POINTER((guint)id));
      max = MAX(max, id);
    }
    /* ids without ids-next (lost or damaged): the ids given out after
     * the saved ones are not known; start well above them. */
    if (!have_next)
      next = MIN(max + DC_IDS_GAP, (guint64)DC_IDS_MAX - DC_IDS_RESERVE);
  }
  dc->next_id = (guint32)MAX(MAX(next, max + 1), 2);
}

/* Writes the ids of the mailboxes there are now (and of those not looked
 * at in this mount) to meta_dir/ids.  At unmount: no other thread runs. */
static void dc_save_ids(Dircache *dc) {
  if (!dc->ids_persist)
    return;
  g_autoptr(GString) out = g_string_new(NULL);
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, dc->ids);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    guint id = GPOINTER_TO_UINT(k);
    const DcId *rec = v;
    const DcNode *n = rec->node;
    if (id >= 2 && n->mailbox != NULL && n->present && strchr(n->mailbox, '\n') == NULL &&
        (rec->uidvalidity == 0 || rec->uidvalidity == n->uidvalidity))
      g_string_append_printf(out, "%u\t%u\t%s\n", rec->uidvalidity, id, n->mailbox);
  }
  if (dc->saved_ids != NULL) {
    g_hash_table_iter_init(&it, dc->saved_ids);
    while (g_hash_table_iter_next(&it, &k, &v)) {
      guint id = GPOINTER_TO_UINT(v);
      if (_dc_id(dc, id) != NULL)
        continue; /* claimed: written above */
      const char *tab = strchr(k, '\t');
      guint32 uv = (guint32)g_ascii_strtoull(k, NULL, 10);
      DcNode *n = _dc_find(dc->root, tab + 1);
      if (n != NULL && n->present && (uv == 0 || n->uidvalidity == 0 || n->uidvalidity == uv))
        g_string_append_printf(out, "%u\t%u\t%s\n", uv, id, tab + 1);
    }
  }
  g_autofree char *path = g_build_filename(dc->meta_dir, DC_IDS_FILE, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, out->str, (gssize)out->len, &error))
    g_debug("saving inode ids: %s", error->message);
}

/* ---- directory times kept ----
 * A mailbox's change time is kept in its saved listing too, but the root,
 * a \Noselect folder and a folder never listed have none: their times,
 * moved by a subfolder made or gone, went back at every remount.  All
 * are written to meta_dir/dirs at unmount, and a node made in a later
 * mount starts from its line. */

static void dc_load_dirs(Dircache *dc) {
  g_autofree char *text = NULL;
  g_autofree char *path =
      dc->meta_dir != NULL ? g_build_filename(dc->meta_dir, DC_DIRS_FILE, NULL) : NULL;
  if (path == NULL || !g_file_get_contents(path, &text, NULL, NULL))
    return;
  dc->saved_dirs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    g_auto(GStrv) f = g_strsplit(*l, "\t", 2);
    guint64 t;
    if (g_strv_length(f) == 2 && g_ascii_string_to_unsigned(f[0], 10, 1, G_MAXUINT64, &t, NULL)) {
      if (t <= G_MAXUINT32) /* an older version's file: seconds */
        t *= G_USEC_PER_SEC;
      g_hash_table_replace(dc->saved_dirs, g_strdup(f[1]), g_memdup2(&t, sizeof t));
    }
  }
}

/* A directory's change time (dircache_dir_info); atomic, see below. */
static guint64 dc_changed_get(DcNode *n) {
  return __atomic_load_n(&n->changed_us, __ATOMIC_RELAXED);
}

static void _dc_dirs_text(DcNode *n, guint64 born, GString *out) {
  guint64 t = dc_changed_get(n);
  /* A mailbox with no history shows the mount's start: kept as its time,
   * or the next mount showed its own start (restic, tar -g: a changed
   * directory at every remount; an adversarial test). */
  if (t == 0 && n->mailbox != NULL && n->selectable)
    t = born;
  const char *name = n->mailbox != NULL ? n->mailbox : "";
  if (n->present && t != 0 && strchr(name, '\n') == NULL)
    g_string_append_printf(out, "%" G_GUINT64_FORMAT "\t%s\n", t, name);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    _dc_dirs_text(v, born, out);
}

/* At unmount: no other thread runs. */
static void dc_save_dirs(Dircache *dc) {
  if (dc->meta_dir == NULL)
    return;
  g_autoptr(GString) out = g_string_new(NULL);
  _dc_dirs_text(dc->root, dc->born, out);
  g_autofree char *path = g_build_filename(dc->meta_dir, DC_DIRS_FILE, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, out->str, (gssize)out->len, &error))
    g_debug("saving directory times: %s", error->message);
}

/* _dc_new_epoch: caller holds n->lock (tree_lock is taken under it).  The
 * messages of n's list, under uidvalidity, get inodes of a new epoch. */
static void _dc_new_epoch(Dircache *dc, DcNode *n, guint32 uidvalidity) {
  g_mutex_lock(&dc->tree_lock);
  n->epoch = _dc_new_id(dc, n, uidvalidity);
  g_mutex_unlock(&dc->tree_lock);
}

/* _dc_set_mailbox: caller holds tree_lock.  The old string is kept alive. */
static void _dc_set_mailbox(Dircache *dc, DcNode *n, const char *mailbox) {
  if (g_strcmp0(n->mailbox, mailbox) == 0)
    return;
  if (n->mailbox != NULL)
    g_ptr_array_add(dc->graveyard, n->mailbox);
  n->mailbox = g_strdup(mailbox);
}

static DcNode *_dc_node_new(Dircache *dc, DcNode *parent, const char *name, const char *mailbox) {
  DcNode *n = g_new0(DcNode, 1);
  n->parent = parent;
  n->name = g_strdup(name);
  n->mailbox = g_strdup(mailbox);
  n->children = g_hash_table_new(g_str_hash, g_str_equal);
  g_mutex_init(&n->refresh_lock);
  g_mutex_init(&n->lock);
  const guint64 *saved =
      dc->saved_dirs != NULL ? g_hash_table_lookup(dc->saved_dirs, mailbox ? mailbox : "") : NULL;
  if (saved != NULL)
    n->changed_us = *saved;
  n->id = _dc_new_id(dc, n, 0);
  if (parent != NULL)
    g_hash_table_insert(parent->children, n->name, n);
  return n;
}

static void dc_node_free(DcNode *n) {
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    dc_node_free(v);
  g_hash_table_unref(n->children);
  if (n->msgs != NULL)
    g_array_unref(n->msgs);
  g_mutex_clear(&n->refresh_lock);
  g_mutex_clear(&n->lock);
  g_clear_error(&n->failed);
  g_clear_pointer(&n->sizes, g_hash_table_unref);
  g_clear_pointer(&n->added, g_hash_table_unref);
  g_free(n->name);
  g_free(n->mailbox);
  g_free(n);
}

Dircache *dircache_new(Pool *pool, const char *meta_dir) {
  Dircache *dc = g_new0(Dircache, 1);
  dc->pool = pool;
  dc->meta_dir = g_strdup(meta_dir);
  dc->graveyard = g_ptr_array_new_with_free_func(g_free);
  g_mutex_init(&dc->tree_lock);
  g_mutex_init(&dc->observer_lock);
  g_cond_init(&dc->observer_done);
  g_mutex_init(&dc->flags_lock);
  dc->ids = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  dc->next_id = 2;
  dc->ids_lock_fd = -1;
  dc->born = (guint64)g_get_real_time();
  dc_load_ids(dc);
  dc_load_dirs(dc);
  dc->root = _dc_node_new(dc, NULL, "", NULL);
  dc->root->present = TRUE;
  dc->flag_ids = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, NULL);
  dc->flag_names = g_ptr_array_new_with_free_func(g_free);
  g_ptr_array_add(dc->flag_names, g_strdup(""));
  g_hash_table_insert(dc->flag_ids, dc->flag_names->pdata[0], GUINT_TO_POINTER(1));
  dc->flag_seen = g_byte_array_new();
  g_byte_array_append(dc->flag_seen, (const guint8[]){0}, 1);
  return dc;
}

void dircache_free(Dircache *dc) {
  if (dc == NULL)
    return;
  dircache_set_prefetch(dc, 0);
  dc_node_free(dc->root);
  g_free(dc->meta_dir);
  g_ptr_array_unref(dc->graveyard);
  g_hash_table_unref(dc->ids);
  if (dc->ids_lock_fd >= 0)
    close(dc->ids_lock_fd); /* releases the flock */
  if (dc->saved_ids != NULL)
    g_hash_table_unref(dc->saved_ids);
  if (dc->saved_dirs != NULL)
    g_hash_table_unref(dc->saved_dirs);
  g_hash_table_unref(dc->flag_ids);
  g_ptr_array_unref(dc->flag_names);
  g_byte_array_unref(dc->flag_seen);
  g_mutex_clear(&dc->tree_lock);
  g_mutex_clear(&dc->observer_lock);
  g_cond_clear(&dc->observer_done);
  g_mutex_clear(&dc->flags_lock);
  g_free(dc);
}

/* ---- tree ---- */

static void dc_bump_dirs(Dircache *dc, GPtrArray *nodes);

/* What LIST number gen no longer names is gone (or no longer a mailbox);
 * gen 0: everything below n.  The parents of what went go to bumped (may
 * be NULL). */
static void _dc_mark_absent(DcNode *n, guint gen, GPtrArray *bumped) {
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DcNode *c = v;
    if (c->seen != gen) {
      if (c->present && n->present && bumped != NULL)
        g_ptr_array_add(bumped, n);
      c->present = FALSE;
    }
    if (c->listed != gen)
      c->selectable = FALSE;
    _dc_mark_absent(c, gen, bumped);
  }
}

/* Components of a server name as directory names; falls back to the raw
 * text for a name that is not valid modified UTF-7 (shown, not lost). */
static char **dc_split(const ImapMailboxInfo *m) {
  g_autoptr(GError) err = NULL;
  char **parts = names_split_mailbox(m->name, m->delim, FALSE, &err);
  if (parts == NULL) {
    g_warning("mailbox name \"%s\" is not valid modified UTF-7 (%s); showing it as is",
              m->name, err->message);
    parts = m->delim ? g_strsplit(m->name, (char[]){m->delim, 0}, -1)
                     : g_strsplit(m->name, "", 1);
  }
  for (char **p = parts; *p != NULL; p++) {
    char *esc = names_escape_component(*p);
    g_free(*p);
    *p = esc;
  }
  return parts;
}

/* Nodes still listed keep present and selectable TRUE throughout: they are
 * read without tree_lock (a write whose folder read as unselectable in the
 * middle of a refresh was refused: "not a mailbox").  Directories that got
 * or lost a subfolder since the last LIST go to bumped. */
static void _dc_apply_list(Dircache *dc, GPtrArray *list, GPtrArray *bumped) {
  guint gen = ++dc->lists;
  for (guint i = 0; i < list->len; i++) {
    const ImapMailboxInfo *m = g_ptr_array_index(list, i);
    if (m->attrs & IMAP_MBX_NONEXISTENT)
      continue;
    g_auto(GStrv) parts = dc_split(m);
    DcNode *n = dc->root;
    g_autoptr(GString) prefix = g_string_new(NULL);
    /* Raw name prefixes for intermediate nodes, in the server's form. */
    g_auto(GStrv) raw = m->delim ? g_strsplit(m->name, (char[]){m->delim, 0}, -1) : NULL;
    for (guint k = 0; parts[k] != NULL; k++) {
      if (k > 0)
        g_string_append_c(prefix, m->delim);
      g_string_append(prefix, raw != NULL && raw[k] != NULL ? raw[k] : m->name);
      DcNode *child = g_hash_table_lookup(n->children, parts[k]);
      if (child == NULL)
        child = _dc_node_new(dc, n, parts[k], prefix->str);
      /* Not at the mount's first LIST: that one finds, not makes, them.
       * A folder made now is new itself too (else it showed the mount's
       * start until listed). */
      if (!child->present && gen > 1) {
        g_ptr_array_add(bumped, n);
        g_ptr_array_add(bumped, child);
      }
      child->present = TRUE;
      child->seen = gen;
      n = child;
    }
    if (n != dc->root) {
      _dc_set_mailbox(dc, n, m->name);
      n->selectable = n->held_mail = !(m->attrs & IMAP_MBX_NOSELECT);
      n->listed = gen;
    }
  }
  _dc_mark_absent(dc->root, gen, bumped);
}

static gboolean dc_list_op(ImapConn *c, gpointer user, GError **error) {
  return imap_list(c, (GPtrArray **)user, error);
}

gboolean dircache_refresh_tree(Dircache *dc, gint64 max_age_us, GError **error) {
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&dc->tree_lock);
  gboolean fresh = dc->tree_at != 0 && now - dc->tree_at <= max_age_us;
  guint ticket = ++dc->lists_asked;
  g_mutex_unlock(&dc->tree_lock);
  if (fresh)
    return TRUE;
  g_autoptr(GPtrArray) list = NULL;
  if (!pool_run(dc->pool, NULL, TRUE, dc_list_op, &list, error))
    return FALSE;
  g_autoptr(GPtrArray) bumped = g_ptr_array_new();
  g_mutex_lock(&dc->tree_lock);
  /* A LIST asked later was applied already, or we renamed a mailbox since
   * this one was asked: its answer is older than the tree (applied, it
   * brought a renamed folder back under its old name until the next
   * refresh). */
  if (ticket > dc->lists_superseded) {
    _dc_apply_list(dc, list, bumped);
    dc->lists_superseded = ticket;
    dc->tree_at = now;
  }
  g_mutex_unlock(&dc->tree_lock);
  dc_bump_dirs(dc, bumped);
  return TRUE;
}

DcNode *dircache_root(Dircache *dc) { return dc->root; }
guint32 dcnode_id(const DcNode *n) { return n->id; }
const char *dcnode_mailbox(const DcNode *n) { return n->mailbox; }
gboolean dcnode_selectable(const DcNode *n) { return n->selectable; }
gboolean dcnode_held_mail(const DcNode *n) { return n->held_mail; }
gboolean dcnode_present(const DcNode *n) { return n->present; }
DcNode *dcnode_parent(const DcNode *n) { return n->parent; }

char *dircache_path(Dircache *dc, DcNode *n) {
  g_autoptr(GPtrArray) names = g_ptr_array_new();
  g_mutex_lock(&dc->tree_lock);
  for (; n != NULL && n->parent != NULL; n = n->parent)
    g_ptr_array_insert(names, 0, g_strdup(n->name));
  g_mutex_unlock(&dc->tree_lock);
  g_ptr_array_add(names, NULL);
  g_auto(GStrv) parts = (char **)g_ptr_array_free(g_steal_pointer(&names), FALSE);
  return g_strjoinv("/", parts);
}

DcNode *dircache_node(Dircache *dc, guint32 id) {
  DcNode *n = NULL;
  g_mutex_lock(&dc->tree_lock);
  DcId *rec = _dc_id(dc, id);
  if (rec != NULL && rec->uidvalidity == 0)
    n = rec->node;
  g_mutex_unlock(&dc->tree_lock);
  return n;
}

DcNode *dircache_epoch(Dircache *dc, guint32 epoch, guint32 *uidvalidity) {
  DcNode *n = NULL;
  g_mutex_lock(&dc->tree_lock);
  DcId *rec = _dc_id(dc, epoch);
  if (rec != NULL && rec->uidvalidity != 0) {
    n = rec->node;
    *uidvalidity = rec->uidvalidity;
  }
  g_mutex_unlock(&dc->tree_lock);
  return n;
}

gboolean dircache_uidvalidity_gone(DcNode *n, guint32 uidvalidity) {
  g_mutex_lock(&n->lock);
  gboolean gone = (n->uidvalidity != 0 && n->uidvalidity != uidvalidity) ||
                  (n->status_uidvalidity != 0 && n->status_uidvalidity != uidvalidity);
  g_mutex_unlock(&n->lock);
  return gone;
}

static DcNode *dc_child(Dircache *dc, DcNode *parent, const char *name, gboolean gone_too) {
  /* A folder is listed by its escaped name (x%25 for "x%"), but a name
   * typed the way mkdir takes it (x%, unescaped as far as it goes) finds
   * it too: else mkdir x% succeeded and x% was not there afterwards.
   * Only names with a '%': a message's name (1.eml) must not find the
   * folder named "1.eml" (listed %31.eml), nor a tool's .gitignore a
   * folder ".gitignore" (listed %2Egitignore). */
  g_mutex_lock(&dc->tree_lock);
  DcNode *n = g_hash_table_lookup(parent->children, name);
  g_mutex_unlock(&dc->tree_lock);
  if (n == NULL && strchr(name, '%') != NULL) {
    g_autofree char *component = names_unescape_component(name, NULL);
    g_autofree char *shown = component != NULL ? names_escape_component(component) : NULL;
    if (shown == NULL || strcmp(shown, name) == 0)
      return NULL;
    g_mutex_lock(&dc->tree_lock);
    n = g_hash_table_lookup(parent->children, shown);
    g_mutex_unlock(&dc->tree_lock);
  }
  return n != NULL && (n->present || gone_too) ? n : NULL; /* nodes live until unmount */
}

DcNode *dircache_child(Dircache *dc, DcNode *parent, const char *name) {
  return dc_child(dc, parent, name, FALSE);
}

DcNode *dircache_child_known(Dircache *dc, DcNode *parent, const char *name) {
  return dc_child(dc, parent, name, TRUE);
}

static void dc_child_free(gpointer p) {
  DcChild *c = p;
  g_free(c->name);
  g_free(c);
}

static int dc_child_cmp(gconstpointer a, gconstpointer b) {
  return strcmp((*(DcChild *const *)a)->name, (*(DcChild *const *)b)->name);
}

GPtrArray *dircache_children(Dircache *dc, DcNode *parent) {
  GPtrArray *out = g_ptr_array_new_with_free_func(dc_child_free);
  g_mutex_lock(&dc->tree_lock);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, parent->children);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DcNode *n = v;
    if (!n->present)
      continue;
    DcChild *c = g_new(DcChild, 1);
    c->id = n->id;
    c->name = g_strdup(n->name);
    g_ptr_array_add(out, c);
  }
  g_mutex_unlock(&dc->tree_lock);
  g_ptr_array_sort(out, dc_child_cmp);
  return out;
}

/* ---- listing ahead of a tree walk ----
 *
 * ls -R, find and du open folder after folder, each listing a round trip
 * of its own: 2,000 folders through 20 ms took 43 s.  Opening a folder
 * queues the next few folders, in the order those tools walk (depth
 * first, names sorted as readdir gives them), that have no listing
 * fetched in this mount; threads list them on other pooled connections
 * while the tool works on this one.  Only once a walk shows, twice in a
 * row the folder opened being one of those that come after the one
 * opened before, with no file read between (a grep -r spends its time
 * reading, and listings ahead slowed its read-ahead): ls of one folder
 * lists no others.  A tool that gets there first waits
 * for that listing instead of asking again (dircache_listing's
 * refresh_lock). */

static void dc_prefetch_task(gpointer data, gpointer user) {
  DcNode *n = data;
  Dircache *dc = user;
  DcListing l;
  g_autoptr(GError) error = NULL;
  /* Stopping: nobody will open it now */
  if (!pool_stopping(dc->pool)) {
    if (dircache_listing(dc, n, G_MAXINT64, &l, &error))
      dc_listing_clear(&l);
    else
      g_debug("listing %s ahead: %s", n->mailbox, error->message);
  }
  g_mutex_lock(&n->lock);
  n->prefetching = FALSE;
  g_mutex_unlock(&n->lock);
}

void dircache_set_prefetch(Dircache *dc, guint threads) {
  if (dc->prefetch != NULL) {
    /* Queued ones are dropped, running ones end (cut at a stop) */
    g_thread_pool_free(dc->prefetch, TRUE, TRUE);
    dc->prefetch = NULL;
  }
  g_clear_pointer(&dc->walk_next, g_ptr_array_unref);
  if (threads > 0) {
    dc->prefetch = g_thread_pool_new(dc_prefetch_task, dc, (gint)threads, FALSE, NULL);
    dc->prefetch_threads = threads;
  }
}

#define DC_WALK_SLACK 3

static int dc_node_name_cmp(gconstpointer a, gconstpointer b) {
  return strcmp((*(DcNode *const *)a)->name, (*(DcNode *const *)b)->name);
}

/* Caller holds tree_lock.  p's present children, sorted by name. */
static GPtrArray *_dc_sorted_children(DcNode *p) {
  GPtrArray *kids = g_ptr_array_new();
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, p->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    if (((DcNode *)v)->present)
      g_ptr_array_add(kids, v);
  g_ptr_array_sort(kids, dc_node_name_cmp);
  return kids;
}

typedef struct {
  GPtrArray *out;
  guint budget; /* nodes still to look at: a walk of a big tree is bounded */
} DcWalk;

static gboolean _dc_walk_below(DcWalk *w, DcNode *p);

/* Caller holds tree_lock.  Adds kids[from..] and the folders under each,
 * depth first, to w->out; FALSE once the budget is spent. */
static gboolean _dc_walk_kids(DcWalk *w, GPtrArray *kids, guint from) {
  for (guint i = from; i < kids->len; i++) {
    DcNode *k = g_ptr_array_index(kids, i);
    if (w->budget == 0)
      return FALSE;
    w->budget--;
    g_ptr_array_add(w->out, k);
    if (!_dc_walk_below(w, k))
      return FALSE;
  }
  return TRUE;
}

/* Caller holds tree_lock.  The folders under p, depth first (_dc_walk_kids). */
static gboolean _dc_walk_below(DcWalk *w, DcNode *p) {
  g_autoptr(GPtrArray) kids = _dc_sorted_children(p);
  return _dc_walk_kids(w, kids, 0);
}

void dircache_prefetch_after(Dircache *dc, DcNode *n, gboolean quiet) {
  if (dc->prefetch == NULL)
    return;
  guint ahead = dc->prefetch_threads + 1; /* folders queued ahead of n */
  GPtrArray *seen = g_ptr_array_new();
  DcWalk w = {seen, 4 * ahead + 16};
  g_mutex_lock(&dc->tree_lock);
  /* After n: what is under it, then the later siblings of n and of each
   * of its parents, with what is under them. */
  gboolean more = _dc_walk_below(&w, n);
  for (DcNode *c = n; more && c->parent != NULL; c = c->parent) {
    g_autoptr(GPtrArray) sib = _dc_sorted_children(c->parent);
    guint i = 0;
    while (i < sib->len && g_ptr_array_index(sib, i) != c)
      i++;
    more = _dc_walk_kids(&w, sib, i + 1);
  }
  /* A walk's next step is one of the first few folders after the one
   * opened before (ls -R and find open the very next; locale order may
   * differ a little from ours): ls of one folder after the root's is not. */
  guint at;
  gboolean step = quiet && dc->walk_next != NULL && g_ptr_array_find(dc->walk_next, n, &at) &&
                  at < DC_WALK_SLACK;
  /* Two steps: grep -r opens the root, then a folder, before it reads */
  dc->walk_steps = step ? dc->walk_steps + 1 : 0;
  gboolean walking = dc->walk_steps >= 2;
  if (dc->walk_next != NULL)
    g_ptr_array_unref(dc->walk_next);
  dc->walk_next = seen;
  g_autoptr(GPtrArray) cands = g_ptr_array_new();
  for (guint i = 0; walking && i < seen->len; i++) {
    DcNode *k = g_ptr_array_index(seen, i);
    if (k->selectable && k->mailbox != NULL)
      g_ptr_array_add(cands, k);
  }
  g_mutex_unlock(&dc->tree_lock);
  /* One folder in threads + 1 of the walk is left to the walk itself
   * (by its place in the walk: the same ones at every step): when the
   * threads took every folder in turn, the walk only followed them, one
   * step behind, and one thread (connections=2) gained nothing (13.4 s
   * against 13.6 s for 608 folders through 20 ms). */
  guint queued = 0, slot = dc->walk_steps + 1;
  for (guint i = 0; i < cands->len && queued < ahead; i++) {
    DcNode *k = g_ptr_array_index(cands, i);
    if ((slot + i) % (dc->prefetch_threads + 1) == 0)
      continue;
    g_mutex_lock(&k->lock);
    gboolean want = k->fetched_at == 0 && !k->prefetching;
    if (want)
      k->prefetching = TRUE;
    g_mutex_unlock(&k->lock);
    if (want) {
      g_thread_pool_push(dc->prefetch, k, NULL);
      queued++;
    }
  }
}

/* ---- flags ---- */

guint32 dircache_intern_flags(Dircache *dc, const char *flags) {
  g_mutex_lock(&dc->flags_lock);
  guint32 id = GPOINTER_TO_UINT(g_hash_table_lookup(dc->flag_ids, flags));
  if (id == 0) {
    char *copy = g_strdup(flags);
    g_auto(GStrv) each = g_strsplit(flags, " ", -1);
    guint8 seen = g_strv_contains((const char *const *)each, "\\Seen");
    g_ptr_array_add(dc->flag_names, copy);
    g_byte_array_append(dc->flag_seen, &seen, 1);
    id = dc->flag_names->len;
    g_hash_table_insert(dc->flag_ids, copy, GUINT_TO_POINTER(id));
  }
  g_mutex_unlock(&dc->flags_lock);
  return id - 1;
}

const char *dircache_flags(Dircache *dc, guint32 flagset) {
  g_mutex_lock(&dc->flags_lock);
  /* Strings are never freed while mounted, so the pointer stays valid. */
  const char *s = flagset < dc->flag_names->len ? g_ptr_array_index(dc->flag_names, flagset) : "";
  g_mutex_unlock(&dc->flags_lock);
  return s;
}

/* ---- message lists ---- */

typedef struct {
  Dircache *dc;
  DcNode *node;
  const char *mailbox; /* its name when asked (a rename may change node's) */
  /* what we knew before (may be NULL): a delta is asked against it */
  GArray *base;
  guint32 base_uidvalidity;
  guint64 base_modseq;
  /* results */
  GArray *msgs;      /* full: every message; delta: changed and new ones */
  GArray *vanished;  /* ImapUidRange: expunged while we listed, or since base */
  GHashTable *pushed; /* uid -> DcPushed*: flag changes for UIDs not listed yet */
  GArray *result;    /* delta applied to base (set by the op) */
  guint32 uidvalidity;
  guint32 uidnext;   /* the SELECT's */
  guint64 modseq;    /* best known HIGHESTMODSEQ after the fetch */
  gboolean sorted;
} DcFetch;

typedef struct {
  guint32 flagset;
  guint64 modseq;
} DcPushed;

static const DcMsg *dc_msgs_find(const GArray *msgs, guint32 uid);
static gboolean _dc_apply_sizes(GHashTable *sizes, GArray *msgs, gboolean apply);
static GArray *dc_msgs_dup(const GArray *msgs);

/* A FETCH with FLAGS but no size or date is a change another session made
 * while we listed.  Dovecot, during our UID FETCH 1:*, sent 3990 with
 * \Flagged at MODSEQ 4002, then "* 3990 FETCH (UID 3990 MODSEQ (4003)
 * FLAGS ())".  It is applied to what was listed for that UID, and only
 * then is its MODSEQ ours: HIGHESTMODSEQ may go only as far as the changes
 * reflected (RFC 7162 3.1), or no later delta would bring the change back.
 * For a UID not listed yet it waits: the listing may still bring that UID
 * (a later answer, which wins), or a delta's base holds it. */
static void dc_pushed_flags(DcFetch *f, const ImapMsgMeta *m) {
  if (!m->has_flags)
    return;
  guint32 flagset = dircache_intern_flags(f->dc, m->flags);
  DcMsg *have = NULL;
  if (f->sorted)
    have = (DcMsg *)dc_msgs_find(f->msgs, m->uid);
  else
    for (guint i = f->msgs->len; have == NULL && i-- > 0;)
      if (g_array_index(f->msgs, DcMsg, i).uid == m->uid)
        have = &g_array_index(f->msgs, DcMsg, i);
  if (have != NULL) {
    have->flagset = flagset;
    f->modseq = MAX(f->modseq, m->modseq);
    return;
  }
  if (f->pushed == NULL)
    f->pushed = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  DcPushed *p = g_new(DcPushed, 1);
  p->flagset = flagset;
  p->modseq = m->modseq;
  g_hash_table_replace(f->pushed, GUINT_TO_POINTER(m->uid), p);
}

static void dc_meta_cb(const ImapMsgMeta *m, gpointer user) {
  DcFetch *f = user;
  if (!m->has_size || !m->has_date) {
    dc_pushed_flags(f, m);
    return;
  }
  f->modseq = MAX(f->modseq, m->modseq);
  if (f->pushed != NULL)
    g_hash_table_remove(f->pushed, GUINT_TO_POINTER(m->uid));
  DcMsg msg = {.uid = m->uid,
               .flagset = dircache_intern_flags(f->dc, m->flags),
               .size = m->size,
               .date = m->date};
  if (f->msgs->len > 0 && g_array_index(f->msgs, DcMsg, f->msgs->len - 1).uid >= m->uid)
    f->sorted = FALSE;
  g_array_append_val(f->msgs, msg);
}

/* Pushed flag changes of a delta for messages of its base become changed
 * messages; any other is of a message we do not have, and dropped (its
 * MODSEQ with it). */
static void dc_pushed_to_changed(DcFetch *f) {
  if (f->pushed == NULL)
    return;
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, f->pushed);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    const DcMsg *b = dc_msgs_find(f->base, GPOINTER_TO_UINT(k));
    const DcPushed *p = v;
    if (b == NULL)
      continue;
    DcMsg msg = *b;
    msg.flagset = p->flagset;
    g_array_append_val(f->msgs, msg);
    f->sorted = FALSE;
    f->modseq = MAX(f->modseq, p->modseq);
  }
  g_hash_table_remove_all(f->pushed);
}

static void dc_vanished_cb(const char *set, gpointer user) {
  DcFetch *f = user;
  if (!imap_parse_uid_set(set, f->vanished))
    g_warning("ignoring malformed VANISHED set \"%s\"", set);
}

static GArray *dc_apply_delta(const GArray *base, const GArray *changed, const GArray *vanished);
static void dc_ranges_sort(GArray *ranges);
static gboolean dc_in_ranges(const GArray *ranges, guint32 uid);
static int dc_msg_cmp(gconstpointer a, gconstpointer b);

static void dc_fetch_reset(DcFetch *f) {
  g_clear_pointer(&f->result, g_array_unref);
  g_array_set_size(f->msgs, 0);
  g_array_set_size(f->vanished, 0);
  if (f->pushed != NULL)
    g_hash_table_remove_all(f->pushed);
  f->sorted = TRUE;
  f->modseq = 0;
}

/* A full listing leaves out what was expunged while it ran (VANISHED, or
 * EXPUNGE of a message already listed); flag changes pushed for UIDs it
 * did not list are of such messages too. */
static void dc_full_done(DcFetch *f) {
  dc_ranges_sort(f->vanished);
  guint k = 0;
  for (guint i = 0; i < f->msgs->len; i++) {
    DcMsg m = g_array_index(f->msgs, DcMsg, i);
    if (!dc_in_ranges(f->vanished, m.uid))
      g_array_index(f->msgs, DcMsg, k++) = m;
  }
  g_array_set_size(f->msgs, k);
  if (f->pushed != NULL)
    g_hash_table_remove_all(f->pushed);
}

/* Every message, in the mailbox c has just selected (info: its SELECT). */
static gboolean dc_fetch_all(ImapConn *c, DcFetch *f, const ImapSelectInfo *info,
                             GError **error) {
  dc_fetch_reset(f);
  f->uidvalidity = info->uidvalidity;
  f->uidnext = info->uidnext;
  f->modseq = info->highestmodseq;
  if (!imap_fetch_meta(c, "1:*", info->highestmodseq != 0, dc_meta_cb, dc_vanished_cb, f, error))
    return FALSE;
  dc_full_done(f);
  return TRUE;
}

/* One listing, one round trip: a delta (QRESYNC) against what we had when
 * possible, else every message's metadata. */
static gboolean dc_fetch_op(ImapConn *c, gpointer user, GError **error) {
  DcFetch *f = user;
  dc_fetch_reset(f);
  ImapSelectInfo info;
  gboolean want_delta = f->base != NULL && f->base_modseq > 0 && imap_conn_qresync_enabled(c) &&
                        (g_strcmp0(imap_conn_selected(c), f->mailbox) != 0 ||
                         imap_conn_selected_uidvalidity(c) == f->base_uidvalidity);
  if (!imap_list_messages(c, f->mailbox, want_delta ? f->base_modseq : 0, &info,
                          dc_meta_cb, dc_vanished_cb, f, error)) {
    /* The FETCH refused after a good SELECT: a delta (a server may answer
     * CHANGEDSINCE with NO or BAD), or MODSEQ in a [NOMODSEQ] mailbox. */
    gboolean refused = g_strcmp0(imap_conn_selected(c), f->mailbox) == 0 &&
                       (want_delta || info.highestmodseq == 0) &&
                       (g_error_matches(*error, IFS_ERROR, IFS_ERROR_NO) ||
                        g_error_matches(*error, IFS_ERROR, IFS_ERROR_BAD));
    if (!refused)
      return FALSE;
    g_debug("%s: listing refused (%s); listing it all", f->mailbox, (*error)->message);
    g_clear_error(error);
    return dc_fetch_all(c, f, &info, error);
  }
  f->uidvalidity = info.uidvalidity;
  f->uidnext = info.uidnext;
  f->modseq = MAX(f->modseq, info.highestmodseq);
  /* Without HIGHESTMODSEQ ([NOMODSEQ]) the mailbox has no mod-sequences to
   * have a delta against.  One lower than ours (a server whose index was
   * rebuilt) makes our changes-since meaningless: the delta would keep our
   * higher figure, and every STATUS after would differ and miss changes. */
  if (want_delta && info.uidvalidity == f->base_uidvalidity && info.highestmodseq != 0 &&
      info.highestmodseq >= f->base_modseq) {
    dc_pushed_to_changed(f);
    if (!f->sorted)
      g_array_sort(f->msgs, dc_msg_cmp);
    dc_ranges_sort(f->vanished);
    f->result = dc_apply_delta(f->base, f->msgs, f->vanished);
    /* A fresh SELECT says how many there are: a delta that disagrees (the
     * server forgot some expunges) is not trusted. */
    if (f->result->len == info.exists)
      return TRUE;
    g_debug("%s: delta gave %u messages, SELECT said %u; listing it all", f->mailbox,
            f->result->len, info.exists);
  }
  /* Recreated (other UIDVALIDITY), inconsistent or without mod-sequences:
   * list everything. */
  if (want_delta)
    return dc_fetch_all(c, f, &info, error);
  dc_full_done(f);
  return TRUE;
}

static int dc_msg_cmp(gconstpointer a, gconstpointer b) {
  guint32 x = ((const DcMsg *)a)->uid, y = ((const DcMsg *)b)->uid;
  return x < y ? -1 : x > y;
}

static int dc_range_cmp(gconstpointer a, gconstpointer b) {
  guint32 x = ((const ImapUidRange *)a)->lo, y = ((const ImapUidRange *)b)->lo;
  return x < y ? -1 : x > y;
}

/* Sorted by lo, overlapping and adjacent ranges merged: dc_in_ranges can
 * then search.  It looked through every range for every message: another
 * client expunging every other message of 100,000 made 50,000 ranges. */
static void dc_ranges_sort(GArray *ranges) {
  if (ranges->len < 2)
    return;
  g_array_sort(ranges, dc_range_cmp);
  guint k = 0;
  for (guint i = 1; i < ranges->len; i++) {
    ImapUidRange *last = &g_array_index(ranges, ImapUidRange, k);
    const ImapUidRange *r = &g_array_index(ranges, ImapUidRange, i);
    if (last->hi == G_MAXUINT32 || r->lo <= last->hi + 1)
      last->hi = MAX(last->hi, r->hi);
    else
      g_array_index(ranges, ImapUidRange, ++k) = *r;
  }
  g_array_set_size(ranges, k + 1);
}

/* In ranges sorted by dc_ranges_sort. */
static gboolean dc_in_ranges(const GArray *ranges, guint32 uid) {
  guint lo = 0, hi = ranges->len; /* the first range with lo > uid */
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    if (g_array_index(ranges, ImapUidRange, mid).lo <= uid)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo > 0 && uid <= g_array_index(ranges, ImapUidRange, lo - 1).hi;
}

/* base minus vanished, with changed (sorted) merged in. */
static GArray *dc_apply_delta(const GArray *base, const GArray *changed, const GArray *vanished) {
  GArray *out = g_array_sized_new(FALSE, FALSE, sizeof(DcMsg), base->len + changed->len);
  guint i = 0, j = 0;
  while (i < base->len || j < changed->len) {
    const DcMsg *b = i < base->len ? &g_array_index(base, DcMsg, i) : NULL;
    const DcMsg *c = j < changed->len ? &g_array_index(changed, DcMsg, j) : NULL;
    const DcMsg *take;
    if (c == NULL || (b != NULL && b->uid < c->uid)) {
      take = b;
      i++;
    } else {
      if (b != NULL && b->uid == c->uid)
        i++; /* the changed version replaces it */
      take = c;
      j++;
    }
    if (!dc_in_ranges(vanished, take->uid))
      g_array_append_val(out, *take);
  }
  return out;
}

static void dc_tell(Dircache *dc, DcNode *n, guint32 epoch, guint32 uid, DcChangeKind kind);
static void dc_tell_gone(Dircache *dc, DcNode *n, guint32 epoch, guint32 old_uidvalidity,
                         const GArray *gone);

/* ---- the on-disk copy of message lists ----
 * Saved after every change, loaded once per mailbox per mount, then
 * brought up to date with one QRESYNC delta instead of a full listing. */

/* The seen time of a message listed now: the next whole second, since its
 * ctime adds up to a second of nanoseconds (fs.c) and must not fall
 * before the moment it was listed (a backup started in between would
 * take it for older). */
static guint32 dc_seen_now(void) {
  return (guint32)(g_get_real_time() / G_USEC_PER_SEC + 1);
}

/* A directory's change time now: to the microsecond, as its mtime shows it.
 * Not dc_seen_now's next second: a directory's mtime up to a second in the
 * future made tar -x say "time stamp ... in the future" (an exploratory
 * test), and two changes in one second did not move it. */
static guint64 dc_now_us(void) { return (guint64)g_get_real_time(); }

/* ---- directory times ----
 * A directory showed the mount's start as its mtime and ctime: restic
 * took every directory for changed at each remount, and a tool watching a
 * folder's mtime for new mail (as mail notifiers watch a Maildir) never saw
 * it move.  Now it is when its entries last changed as far as this cache
 * saw (a message added or removed, a subfolder made or gone), kept with the
 * saved listing, so it stays put across remounts while nothing changes.
 * It only ever moves forward, and is read under tree_lock without n->lock
 * (the lock order is n->lock, then tree_lock), so it is atomic. */

/* n's change time becomes t if that is later; TRUE if it moved. */
static gboolean dc_changed_to(DcNode *n, guint64 t) {
  guint64 cur = dc_changed_get(n);
  while (t > cur)
    if (__atomic_compare_exchange_n(&n->changed_us, &cur, t, TRUE, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
      return TRUE;
  return FALSE;
}

/* For a listing saved before change times were kept: the newest of msgs'
 * ctimes (fs.c: when first listed, else the INTERNALDATE, here never after
 * now), in us; 0 for none. */
static guint64 dc_msgs_changed(const GArray *msgs) {
  gint64 now = g_get_real_time() / G_USEC_PER_SEC, t = 0;
  for (guint i = 0; i < msgs->len; i++) {
    const DcMsg *m = &g_array_index(msgs, DcMsg, i);
    gint64 c = m->seen != 0 ? (gint64)m->seen : CLAMP(m->date, 0, now);
    t = MAX(t, c);
  }
  return (guint64)t * G_USEC_PER_SEC;
}

/* dircache_dir_info's changed (born for a mailbox with no history, as it
 * shows); caller holds tree_lock. */
static guint64 _dc_dir_changed(DcNode *n, guint64 born) {
  guint64 t = dc_changed_get(n);
  if (n->mailbox != NULL && n->selectable)
    return t != 0 ? t : born;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    if (((DcNode *)v)->present)
      t = MAX(t, _dc_dir_changed(v, born));
  return t;
}

void dircache_dir_info(Dircache *dc, DcNode *n, guint64 *changed, guint *subdirs) {
  g_mutex_lock(&dc->tree_lock);
  *changed = _dc_dir_changed(n, dc->born);
  if (*changed == 0)
    *changed = dc->born;
  guint count = 0;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    count += ((DcNode *)v)->present;
  *subdirs = count;
  g_mutex_unlock(&dc->tree_lock);
}

/* The nodes (no lock held; duplicates allowed) got or lost a subfolder
 * now. */
static void dc_bump_dirs(Dircache *dc, GPtrArray *nodes) {
  guint64 now = dc_now_us();
  for (guint i = 0; i < nodes->len; i++) {
    DcNode *n = g_ptr_array_index(nodes, i);
    g_mutex_lock(&n->lock);
    gboolean moved = dc_changed_to(n, now);
    n->dirty |= moved && n->msgs != NULL; /* saved with its listing */
    g_mutex_unlock(&n->lock);
    if (moved)
      dc_tell(dc, n, 0, 0, DC_CHANGE_DIR);
  }
}

static char *dc_meta_path(Dircache *dc, DcNode *n) {
  g_autofree char *h = g_compute_checksum_for_string(G_CHECKSUM_SHA256, n->mailbox, -1);
  g_autofree char *file = g_strdup_printf("%.32s.mc", h);
  return g_build_filename(dc->meta_dir, file, NULL);
}

/* Called with refresh_lock held. */
static void dc_load_meta(Dircache *dc, DcNode *n) {
  if (dc->meta_dir == NULL || n->meta_tried)
    return;
  n->meta_tried = TRUE;
  g_autofree char *path = dc_meta_path(dc, n);
  McHead head;
  GArray *msgs = NULL;
  GPtrArray *flagsets = NULL;
  g_autoptr(GError) error = NULL;
  if (!mcache_load(path, &head, &msgs, &flagsets, &error)) {
    if (!g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      g_warning("ignoring cached listing of %s: %s", n->mailbox, error->message);
    return;
  }
  /* Flag sets are numbered per file; map them to this mount's ids. */
  for (guint i = 0; i < msgs->len; i++) {
    McMsg *m = &g_array_index(msgs, McMsg, i);
    m->flagset = dircache_intern_flags(dc, g_ptr_array_index(flagsets, m->flagset));
  }
  G_STATIC_ASSERT(sizeof(McMsg) == sizeof(DcMsg) &&
                  offsetof(McMsg, seen) == offsetof(DcMsg, seen));
  g_mutex_lock(&n->lock);
  if (n->msgs == NULL) {
    n->uidvalidity = head.uidvalidity;
    n->highestmodseq = head.highestmodseq;
    n->uidnext = head.uidnext;
    /* Files from before it was kept: what their messages say. */
    dc_changed_to(n, head.changed_us != 0 ? head.changed_us : dc_msgs_changed(msgs));
    n->msgs = msgs;
    msgs = NULL;
    /* fetched_at stays 0: this copy is revalidated before it is served. */
  }
  g_mutex_unlock(&n->lock);
  if (msgs != NULL)
    g_array_unref(msgs);
  g_ptr_array_unref(flagsets);
}

/* Called with refresh_lock held. */
static void dc_save_meta(Dircache *dc, DcNode *n) {
  if (dc->meta_dir == NULL)
    return;
  g_mutex_lock(&n->lock);
  g_autoptr(GArray) msgs = n->msgs != NULL ? g_array_ref(n->msgs) : NULL;
  McHead head = {.uidvalidity = n->uidvalidity,
                 .uidnext = n->uidnext,
                 .highestmodseq = n->highestmodseq,
                 .changed_us = dc_changed_get(n)};
  n->dirty = FALSE;
  g_mutex_unlock(&n->lock);
  if (msgs == NULL)
    return;
  g_autoptr(GArray) local = g_array_sized_new(FALSE, FALSE, sizeof(McMsg), msgs->len);
  g_autoptr(GHashTable) ids = g_hash_table_new(NULL, NULL);
  g_autoptr(GPtrArray) names = g_ptr_array_new();
  for (guint i = 0; i < msgs->len; i++) {
    const DcMsg *m = &g_array_index(msgs, DcMsg, i);
    gpointer v;
    if (!g_hash_table_lookup_extended(ids, GUINT_TO_POINTER(m->flagset), NULL, &v)) {
      v = GUINT_TO_POINTER(names->len);
      g_hash_table_insert(ids, GUINT_TO_POINTER(m->flagset), v);
      g_ptr_array_add(names, (gpointer)dircache_flags(dc, m->flagset));
    }
    McMsg mm = {m->uid, GPOINTER_TO_UINT(v), m->size, m->date, m->seen};
    g_array_append_val(local, mm);
  }
  g_autofree char *path = dc_meta_path(dc, n);
  g_autoptr(GError) error = NULL;
  guint32 last = msgs->len ? g_array_index(msgs, DcMsg, msgs->len - 1).uid : 0;
  if (head.uidnext <= last)
    head.uidnext = last + 1; /* not known, or messages added since the SELECT */
  gboolean ok = mcache_save(path, &head, (const McMsg *)local->data, local->len,
                            (const char *const *)names->pdata, names->len, &error);
  /* Only n's saves come here (refresh_lock), so save_failed needs no lock. */
  if (!ok && !n->save_failed)
    g_warning("cannot save the listing of %s: %s", n->mailbox, error->message);
  else if (!ok)
    g_debug("cannot save the listing of %s (again): %s", n->mailbox, error->message);
  n->save_failed = !ok;
}

/* When each message of msgs was first listed: as in old (both sorted; the
 * same UIDVALIDITY), now for a message old does not have.  A message's
 * ctime is this time when it is later than its INTERNALDATE: mail moved
 * in by another client, or a folder recreated with older mail under the
 * old UIDs, is new to `find -cnewer`, `tar -N` and `tar -g` as a file
 * moved in is on a disk (with the INTERNALDATE alone they missed it).
 * Flags that changed since old are a change of its user.imap.flags, which
 * on a disk changes a file's ctime: now then too (tar -g kept the old
 * flags), and the UID goes to flagged (may be NULL).  Returns how many
 * messages old does not have. */
static guint dc_stamp_seen(GArray *msgs, const GArray *old, guint32 now, GArray *flagged) {
  guint j = 0, fresh = 0;
  for (guint i = 0; i < msgs->len; i++) {
    DcMsg *m = &g_array_index(msgs, DcMsg, i);
    while (old != NULL && j < old->len && g_array_index(old, DcMsg, j).uid < m->uid)
      j++;
    const DcMsg *o = old != NULL && j < old->len ? &g_array_index(old, DcMsg, j) : NULL;
    if (o == NULL || o->uid != m->uid) {
      m->seen = now;
      fresh++;
    } else if (o->flagset != m->flagset && now != 0) {
      m->seen = now;
      if (flagged != NULL)
        g_array_append_val(flagged, m->uid);
    } else {
      m->seen = o->seen;
    }
  }
  return fresh;
}

/* UIDs in old but not in new (both sorted) go to gone. */
static void dc_diff_removed(const GArray *old, const GArray *new, GArray *gone) {
  guint j = 0;
  for (guint i = 0; i < old->len; i++) {
    guint32 uid = g_array_index(old, DcMsg, i).uid;
    while (j < new->len && g_array_index(new, DcMsg, j).uid < uid)
      j++;
    if (j >= new->len || g_array_index(new, DcMsg, j).uid != uid)
      g_array_append_val(gone, uid);
  }
}

static void _dc_snapshot(DcNode *n, DcListing *out) {
  n->served = TRUE;
  out->msgs = n->msgs != NULL ? g_array_ref(n->msgs) : NULL;
  out->uidvalidity = n->uidvalidity;
  out->epoch = n->epoch;
  out->uidnext = n->uidnext;
}

gboolean dc_listing_may_have(const DcListing *l, guint32 uid) {
  return l->uidnext == 0 || uid >= l->uidnext;
}

/* The listing of n, asked as mailbox `asked`, failed with *error.  A
 * mailbox another client deleted gets a plain NO to its SELECT from
 * Dovecot (no [NONEXISTENT]), and BYE on a session that had it selected:
 * LIST says whether it is gone, and then the error becomes ENOENT (not EIO
 * with a warning).  TRUE: ask again: n was renamed meanwhile (our own
 * rename, while this listing ran: under the new name), or the server said
 * NO or closed the session and still lists the mailbox (while another
 * client's DELETE of it is under way Dovecot answers a SELECT with NO, or
 * a FETCH with BYE, "Mailbox was deleted under us", and lists it until
 * that DELETE ends: the listing is asked up to three times, the last after
 * a pause). */
static gboolean dc_check_gone(Dircache *dc, DcNode *n, const char *asked, GError **error) {
  if (!(g_error_matches(*error, IFS_ERROR, IFS_ERROR_NO) || ifs_error_is_connection(*error)))
    return FALSE;
  g_autoptr(GError) lerr = NULL;
  if (!dircache_refresh_tree(dc, 0, &lerr))
    return FALSE;
  g_mutex_lock(&dc->tree_lock);
  gboolean gone = !n->present || !n->selectable, renamed = n->mailbox != asked;
  g_mutex_unlock(&dc->tree_lock);
  if (!gone)
    return renamed || g_error_matches(*error, IFS_ERROR, IFS_ERROR_CLOSED) ||
           g_error_matches(*error, IFS_ERROR, IFS_ERROR_NO);
  GError *e = g_error_new(IFS_ERROR, IFS_ERROR_NOT_FOUND, "%s no longer exists (%s)", asked,
                          (*error)->message);
  g_clear_error(error);
  *error = e;
  return FALSE;
}

gboolean dircache_check_gone(Dircache *dc, DcNode *n, const char *asked, GError **error) {
  dc_check_gone(dc, n, asked, error);
  return g_error_matches(*error, IFS_ERROR, IFS_ERROR_NOT_FOUND);
}

gboolean dircache_listing(Dircache *dc, DcNode *n, gint64 max_age_us, DcListing *out,
                          GError **error) {
  memset(out, 0, sizeof *out);
  if (!n->selectable || n->mailbox == NULL)
    return TRUE;
  gint64 asked = g_get_monotonic_time();
  g_mutex_lock(&n->lock);
  gboolean fresh = n->fetched_at != 0 && asked - n->fetched_at <= max_age_us;
  if (fresh)
    _dc_snapshot(n, out);
  g_mutex_unlock(&n->lock);
  if (fresh)
    return TRUE;

  loop_about_to_wait(); /* for the server, or for another thread's refresh */
  g_mutex_lock(&n->refresh_lock);
  g_mutex_lock(&n->lock);
  /* Someone else fetched meanwhile: fresh enough if it started after we
   * asked, or (a fetch started earlier, e.g. read-ahead's) within max_age. */
  if (n->fetched_at != 0 && asked - n->fetched_at <= max_age_us) {
    _dc_snapshot(n, out);
    g_mutex_unlock(&n->lock);
    g_mutex_unlock(&n->refresh_lock);
    return TRUE;
  }
  /* ... or failed while we waited for it: its answer is ours.  Each waiter
   * asking again in turn made a server that does not answer (Dovecot
   * waiting 2 minutes for a lock) cost every reader of the folder two
   * command timeouts, one after the other (a soak: threads stuck for
   * minutes). */
  if (n->failed != NULL && n->failed_at > asked) {
    g_propagate_error(error, g_error_copy(n->failed));
    g_mutex_unlock(&n->lock);
    g_mutex_unlock(&n->refresh_lock);
    return FALSE;
  }
  g_mutex_unlock(&n->lock);
  if (n->msgs == NULL)
    dc_load_meta(dc, n); /* what the last mount knew, if anything */

  DcFetch f = {.dc = dc,
               .node = n,
               .msgs = g_array_new(FALSE, FALSE, sizeof(DcMsg)),
               .vanished = g_array_new(FALSE, FALSE, sizeof(ImapUidRange))};
  g_mutex_lock(&n->lock);
  if (n->msgs != NULL) {
    f.base = g_array_ref(n->msgs);
    f.base_uidvalidity = n->uidvalidity;
    f.base_modseq = n->highestmodseq;
  }
  guint voided = n->voided;
  g_mutex_unlock(&n->lock);
  gint64 started = g_get_monotonic_time();
  GError *local = NULL;
  gboolean ok = FALSE;
  for (int attempt = 0; !ok && attempt < 3; attempt++) {
    if (attempt == 2)
      loop_pause(100 * 1000); /* still listed after two failures: another
                               * client's DELETE of it has not ended yet */
    g_mutex_lock(&dc->tree_lock);
    const char *asked = n->mailbox;
    g_mutex_unlock(&dc->tree_lock);
    g_clear_error(&local);
    f.mailbox = asked;
    ok = pool_run(dc->pool, asked, TRUE, dc_fetch_op, &f, &local);
    /* Stopping: no LIST to ask whether it is gone (a connect a stop cuts
     * only after 2 s: SIGTERM during a walk took 7 s) */
    if (ok || pool_stopping(dc->pool) || !dc_check_gone(dc, n, asked, &local))
      break;
  }
  g_mutex_lock(&n->lock);
  g_clear_error(&n->failed);
  if (!ok) {
    n->failed = g_error_copy(local);
    n->failed_at = g_get_monotonic_time();
  }
  g_mutex_unlock(&n->lock);
  if (!ok)
    g_propagate_error(error, local);
  g_autoptr(GArray) gone = g_array_new(FALSE, FALSE, sizeof(guint32));
  g_autoptr(GArray) flagged = g_array_new(FALSE, FALSE, sizeof(guint32));
  guint32 old_epoch = 0, old_uidvalidity = 0;
  gboolean changed = FALSE, dir_moved = FALSE;
  if (ok) {
    if (!f.sorted)
      g_array_sort(f.msgs, dc_msg_cmp);
    GArray *result;
    if (f.result != NULL) {
      changed = f.msgs->len > 0 || f.vanished->len > 0;
      result = changed ? g_steal_pointer(&f.result) : g_array_ref(f.base);
      if (f.modseq < f.base_modseq)
        f.modseq = f.base_modseq;
    } else {
      changed = TRUE;
      result = g_steal_pointer(&f.msgs);
    }
    g_mutex_lock(&n->lock);
    old_epoch = n->epoch;
    old_uidvalidity = n->uidvalidity;
    if (n->msgs != NULL) {
      if (n->uidvalidity == f.uidvalidity) {
        /* Added by our APPEND or MOVE after this fetch's SELECT (UIDs from
         * its UIDNEXT on): the fetch could not see them, so they are not
         * gone (they were reported removed, which ended the names that
         * stood for them: fswrite_message_gone).  Only those added while
         * it ran: any other UID at or above UIDNEXT (a server restored
         * from a backup) is gone, or it stayed listed for good. */
        DcListing fetched = {.msgs = result};
        GArray *kept = NULL;
        for (guint i = 0; f.uidnext != 0 && n->added != NULL && i < n->msgs->len; i++) {
          const DcMsg *m = &g_array_index(n->msgs, DcMsg, i);
          gpointer at;
          if (m->uid < f.uidnext || dc_listing_find(&fetched, m->uid) != NULL ||
              !g_hash_table_lookup_extended(n->added, GUINT_TO_POINTER(m->uid), NULL, &at) ||
              *(gint64 *)at < started)
            continue;
          if (kept == NULL)
            kept = dc_msgs_dup(result); /* result may be held elsewhere too */
          g_array_append_val(kept, *m);
        }
        if (kept != NULL) {
          g_array_sort(kept, dc_msg_cmp);
          g_array_unref(result);
          result = kept;
        }
        dc_diff_removed(n->msgs, result, gone);
        /* What was added before this fetch began, it has seen. */
        GHashTableIter ai;
        gpointer at;
        if (n->added != NULL) {
          g_hash_table_iter_init(&ai, n->added);
          while (g_hash_table_iter_next(&ai, NULL, &at))
            if (*(gint64 *)at < started)
              g_hash_table_iter_remove(&ai);
        }
      } else {
        g_clear_pointer(&n->added, g_hash_table_unref);
        /* A new UIDVALIDITY: every old name is gone, also the ones the new
         * list has again (another message under the same UID).  Else the
         * kernel kept its entry (and on -o ro, where no open is sent to
         * refuse it, its pages) and served the old message's bytes under
         * the name for msg_timeout. */
        for (guint i = 0; i < n->msgs->len; i++)
          g_array_append_val(gone, g_array_index(n->msgs, DcMsg, i).uid);
      }
    }
    /* With no cache directory nothing is kept from one mount to the next:
     * a folder's first listing stamped every message with the mount's
     * time, a new ctime for all at every mount (restic read all again). */
    if (result != f.base) {
      gboolean same = n->uidvalidity == f.uidvalidity;
      guint fresh =
          dc_stamp_seen(result, same ? n->msgs : NULL,
                        n->msgs == NULL && dc->meta_dir == NULL ? 0 : dc_seen_now(), flagged);
      /* A first listing keeps the time shown before it (one kept in
       * meta/dirs, else the mount's start): a time that moved while tar
       * read the folder, or its parent (which shows the newest), made it say
       * "file changed as we read it" and exit 1.  Changes take the time
       * a STATUS noticed them, if one did (the time shown since). */
      guint64 t = n->msgs == NULL ? (dc_changed_get(n) == 0 ? dc->born : 0)
                  : !same || fresh > 0 || gone->len > 0 ? (n->noticed ? n->noticed : dc_now_us())
                                                        : 0;
      dir_moved = dc_changed_to(n, t);
    }
    if (started > n->noticed_us)
      n->noticed = 0; /* listed since: the next change is a new one */
    if (n->msgs != NULL)
      g_array_unref(n->msgs);
    if (n->uidvalidity != f.uidvalidity) {
      g_clear_pointer(&n->sizes, g_hash_table_unref);
    } else if (n->sizes != NULL && _dc_apply_sizes(n->sizes, result, FALSE)) {
      if (result == f.base) { /* held elsewhere too */
        GArray *copy = dc_msgs_dup(result);
        g_array_unref(result);
        result = copy;
      }
      _dc_apply_sizes(n->sizes, result, TRUE);
    }
    n->msgs = result;
    n->highestmodseq = f.modseq;
    n->uidnext = f.uidnext;
    if (n->uidvalidity == f.uidvalidity)
      old_uidvalidity = 0; /* not a UIDVALIDITY change */
    if (n->uidvalidity != f.uidvalidity || n->epoch == 0) {
      /* First listing, or a new UIDVALIDITY (all UIDs void): messages get
       * new inodes. */
      _dc_new_epoch(dc, n, f.uidvalidity);
      n->uidvalidity = f.uidvalidity;
      changed = TRUE;
    }
    /* A STATUS that showed another UIDVALIDITY while this ran: this
     * answer may be from before it (dircache_status_differs). */
    n->fetched_at = n->voided == voided ? started : 0;
    if (n->voided == voided)
      n->good_at = started;
    n->stale = n->voided != voided;
    if (n->voided == voided)
      n->status_uidvalidity = 0; /* this listing is the newer word */
    n->dirty |= changed;
    _dc_snapshot(n, out);
    g_mutex_unlock(&n->lock);
    if (changed)
      dc_save_meta(dc, n);
  }
  if (f.msgs != NULL)
    g_array_unref(f.msgs);
  if (f.result != NULL)
    g_array_unref(f.result);
  if (f.base != NULL)
    g_array_unref(f.base);
  if (f.pushed != NULL)
    g_hash_table_unref(f.pushed);
  g_array_unref(f.vanished);
  g_mutex_unlock(&n->refresh_lock);
  if (dir_moved)
    dc_tell(dc, n, 0, 0, DC_CHANGE_DIR);
  dc_tell_gone(dc, n, old_epoch, old_uidvalidity, gone);
  if (old_uidvalidity == 0) /* the same messages: the kernel's ctime of these is old */
    for (guint i = 0; i < flagged->len; i++)
      dc_tell(dc, n, old_epoch, g_array_index(flagged, guint32, i), DC_CHANGE_FLAGS);
  if (ok && f.uidnext != 0) {
    g_mutex_lock(&n->lock);
    guint32 epoch = n->epoch;
    g_mutex_unlock(&n->lock);
    dc_tell(dc, n, epoch, f.uidnext, DC_CHANGE_LISTED);
  }
  return ok;
}

gboolean dircache_listing_held(Dircache *dc, DcNode *n, DcListing *out, gint64 *age_us) {
  (void)dc;
  memset(out, 0, sizeof *out);
  g_mutex_lock(&n->lock);
  gboolean held = n->msgs != NULL && n->good_at != 0;
  if (held) {
    _dc_snapshot(n, out);
    *age_us = g_get_monotonic_time() - n->good_at;
  }
  g_mutex_unlock(&n->lock);
  return held;
}

void dc_listing_clear(DcListing *l) {
  if (l->msgs != NULL)
    g_array_unref(l->msgs);
  memset(l, 0, sizeof *l);
}

const DcMsg *dc_listing_find(const DcListing *l, guint32 uid) {
  return l->msgs != NULL ? dc_msgs_find(l->msgs, uid) : NULL;
}

/* In a list sorted by UID. */
static const DcMsg *dc_msgs_find(const GArray *msgs, guint32 uid) {
  guint lo = 0, hi = msgs->len;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    const DcMsg *m = &g_array_index(msgs, DcMsg, mid);
    if (m->uid == uid)
      return m;
    if (m->uid < uid)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

gint64 dircache_listing_age(Dircache *dc, DcNode *n) {
  (void)dc;
  g_mutex_lock(&n->lock);
  gint64 age = n->fetched_at == 0 ? G_MAXINT64 : g_get_monotonic_time() - n->fetched_at;
  g_mutex_unlock(&n->lock);
  return age;
}

/* Whether msgs lacks a length learned by reading (DcNode.sizes); with
 * apply, puts them in (msgs is then nobody else's). */
static gboolean _dc_apply_sizes(GHashTable *sizes, GArray *msgs, gboolean apply) {
  GHashTableIter it;
  gpointer k, v;
  gboolean differs = FALSE;
  DcListing l = {.msgs = msgs};
  g_hash_table_iter_init(&it, sizes);
  while (g_hash_table_iter_next(&it, &k, &v)) {
    DcMsg *m = (DcMsg *)dc_listing_find(&l, GPOINTER_TO_UINT(k));
    if (m != NULL && m->size != *(guint64 *)v) {
      differs = TRUE;
      if (apply)
        m->size = *(guint64 *)v;
    }
  }
  return differs;
}

gboolean dircache_set_size(Dircache *dc, DcNode *n, guint32 uidvalidity, guint32 uid,
                           guint64 size) {
  (void)dc;
  gboolean changed = FALSE;
  g_mutex_lock(&n->lock);
  if (n->msgs != NULL && n->uidvalidity == uidvalidity) {
    if (n->sizes == NULL)
      n->sizes = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    g_hash_table_insert(n->sizes, GUINT_TO_POINTER(uid), g_memdup2(&size, sizeof size));
    /* Copy on write: snapshots already handed out stay as they were. */
    DcListing l = {.msgs = n->msgs};
    const DcMsg *m = dc_listing_find(&l, uid);
    if (m != NULL && m->size != size) {
      GArray *copy = dc_msgs_dup(n->msgs);
      g_array_index(copy, DcMsg, m - (const DcMsg *)n->msgs->data).size = size;
      g_array_unref(n->msgs);
      n->msgs = copy;
      changed = TRUE;
    }
  }
  g_mutex_unlock(&n->lock);
  return changed;
}

/* ---- patches ---- */

/* Returns once no call to the old observer is under way: fs_free clears
 * it before freeing what it uses, and a read-ahead thread's listing still
 * told the freed Fs at an unmount (ASan, once in a test run). */
void dircache_set_observer(Dircache *dc, DcObserver fn, gpointer user) {
  g_mutex_lock(&dc->observer_lock);
  dc->observer = fn;
  dc->observer_user = user;
  while (dc->telling > 0)
    g_cond_wait(&dc->observer_done, &dc->observer_lock);
  g_mutex_unlock(&dc->observer_lock);
}

/* A copy of msgs (NULL: none) with room for one more: copy on write,
 * since listings handed out share the array. */
static GArray *dc_msgs_dup(const GArray *msgs) {
  guint len = msgs != NULL ? msgs->len : 0;
  GArray *copy = g_array_sized_new(FALSE, FALSE, sizeof(DcMsg), len + 1);
  if (len > 0)
    g_array_append_vals(copy, msgs->data, len);
  return copy;
}

/* _dc_patchable: caller holds n->lock.  TRUE when the list can be patched
 * for uidvalidity; otherwise marks it stale. */
static gboolean _dc_patchable(DcNode *n, guint32 uidvalidity) {
  if (n->fetched_at != 0 && n->msgs != NULL && n->uidvalidity == uidvalidity)
    return TRUE;
  n->fetched_at = 0;
  n->stale = TRUE;
  if (n->uidvalidity != uidvalidity)
    n->good_at = 0; /* made again: not even to show while the server is away */
  return FALSE;
}

static void dc_tell(Dircache *dc, DcNode *n, guint32 epoch, guint32 uid, DcChangeKind kind) {
  /* Epoch 0: nothing was ever shown for it, but a UIDVALIDITY change still
   * matters for what the last mount left on disk, and a directory's time
   * is not a message's. */
  if (epoch == 0 && kind != DC_CHANGE_UIDVALIDITY && kind != DC_CHANGE_DIR)
    return;
  g_mutex_lock(&dc->observer_lock);
  DcObserver fn = dc->observer;
  gpointer user = dc->observer_user;
  dc->telling += fn != NULL;
  g_mutex_unlock(&dc->observer_lock);
  if (fn == NULL)
    return;
  fn(n, epoch, uid, kind, user);
  g_mutex_lock(&dc->observer_lock);
  if (--dc->telling == 0)
    g_cond_broadcast(&dc->observer_done);
  g_mutex_unlock(&dc->observer_lock);
}

/* Tells (no lock held) that the messages gone (UIDs) of epoch left n,
 * and first, if old_uidvalidity is not 0, that it was replaced. */
static void dc_tell_gone(Dircache *dc, DcNode *n, guint32 epoch, guint32 old_uidvalidity,
                         const GArray *gone) {
  if (old_uidvalidity != 0)
    dc_tell(dc, n, epoch, old_uidvalidity, DC_CHANGE_UIDVALIDITY);
  for (guint i = 0; i < gone->len; i++)
    dc_tell(dc, n, epoch, g_array_index(gone, guint32, i), DC_CHANGE_REMOVED);
}

void dircache_msgs_removed(Dircache *dc, DcNode *n, guint32 uidvalidity, const guint32 *uids,
                           guint n_uids) {
  g_autoptr(GArray) gone = g_array_new(FALSE, FALSE, sizeof(guint32));
  gboolean moved = FALSE;
  g_mutex_lock(&n->lock);
  guint32 epoch = n->epoch;
  /* Also out of a stale list: it is asked again before it is served, but
   * shown as it is while the server cannot be reached (fs_listing). */
  _dc_patchable(n, uidvalidity);
  if (n->msgs != NULL && n->uidvalidity == uidvalidity) {
    GHashTable *set = g_hash_table_new(NULL, NULL);
    for (guint i = 0; i < n_uids; i++)
      g_hash_table_add(set, GUINT_TO_POINTER(uids[i]));
    GArray *copy = g_array_sized_new(FALSE, FALSE, sizeof(DcMsg), n->msgs->len);
    for (guint i = 0; i < n->msgs->len; i++) {
      const DcMsg *m = &g_array_index(n->msgs, DcMsg, i);
      if (g_hash_table_contains(set, GUINT_TO_POINTER(m->uid)))
        g_array_append_val(gone, m->uid);
      else
        g_array_append_val(copy, *m);
    }
    g_hash_table_unref(set);
    g_array_unref(n->msgs);
    n->msgs = copy;
    n->dirty = TRUE;
    moved = gone->len > 0 && dc_changed_to(n, dc_now_us());
  } else {
    g_array_append_vals(gone, uids, n_uids);
    moved = n_uids > 0 && dc_changed_to(n, dc_now_us()); /* listed or not */
  }
  g_mutex_unlock(&n->lock);
  if (moved)
    dc_tell(dc, n, 0, 0, DC_CHANGE_DIR);
  for (guint i = 0; i < gone->len; i++)
    dc_tell(dc, n, epoch, g_array_index(gone, guint32, i), DC_CHANGE_REMOVED);
}

void dircache_msg_added(Dircache *dc, DcNode *n, guint32 uidvalidity, const DcMsg *m) {
  gboolean added = FALSE, moved = FALSE;
  g_mutex_lock(&n->lock);
  guint32 epoch = n->epoch;
  if (_dc_patchable(n, uidvalidity)) {
    DcListing l = {.msgs = n->msgs};
    if (dc_listing_find(&l, m->uid) == NULL) {
      GArray *copy = dc_msgs_dup(n->msgs);
      guint i = copy->len;
      while (i > 0 && g_array_index(copy, DcMsg, i - 1).uid > m->uid)
        i--;
      g_array_insert_val(copy, i, *m);
      DcMsg *in = &g_array_index(copy, DcMsg, i);
      if (in->seen == 0)
        in->seen = dc_seen_now();
      g_array_unref(n->msgs);
      n->msgs = copy;
      n->dirty = TRUE;
      added = TRUE;
      /* A fetch under way may not show it (dircache_listing) */
      if (n->added == NULL)
        n->added = g_hash_table_new_full(NULL, NULL, NULL, g_free);
      gint64 *at = g_new(gint64, 1);
      *at = g_get_monotonic_time();
      g_hash_table_replace(n->added, GUINT_TO_POINTER(m->uid), at);
      moved = dc_changed_to(n, dc_now_us());
    }
  } else {
    /* Not listed yet (a folder just made): its time moves all the same,
     * and its first listing keeps it. */
    moved = dc_changed_to(n, dc_now_us());
  }
  g_mutex_unlock(&n->lock);
  if (moved)
    dc_tell(dc, n, 0, 0, DC_CHANGE_DIR);
  if (added)
    dc_tell(dc, n, epoch, m->uid, DC_CHANGE_ADDED);
}

void dircache_msg_flags(Dircache *dc, DcNode *n, guint32 uidvalidity, guint32 uid,
                        const char *flags) {
  guint32 fs = dircache_intern_flags(dc, flags);
  gboolean changed = FALSE;
  g_mutex_lock(&n->lock);
  guint32 epoch = n->epoch;
  if (_dc_patchable(n, uidvalidity)) {
    DcListing l = {.msgs = n->msgs};
    const DcMsg *m = dc_listing_find(&l, uid);
    if (m != NULL && m->flagset != fs) {
      guint idx = (guint)(m - (const DcMsg *)n->msgs->data);
      GArray *copy = dc_msgs_dup(n->msgs);
      g_array_index(copy, DcMsg, idx).flagset = fs;
      g_array_index(copy, DcMsg, idx).seen = dc_seen_now(); /* its ctime: dc_stamp_seen */
      g_array_unref(n->msgs);
      n->msgs = copy;
      n->dirty = TRUE;
      changed = TRUE;
    }
  }
  g_mutex_unlock(&n->lock);
  if (changed)
    dc_tell(dc, n, epoch, uid, DC_CHANGE_FLAGS);
}

void dircache_invalidate(Dircache *dc, DcNode *n) {
  (void)dc;
  g_mutex_lock(&n->lock);
  n->fetched_at = 0;
  n->stale = TRUE;
  g_mutex_unlock(&n->lock);
}

static DcNode *_dc_find(DcNode *n, const char *mailbox) {
  if (n->mailbox != NULL && n->present && g_str_equal(n->mailbox, mailbox))
    return n;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DcNode *found = _dc_find(v, mailbox);
    if (found != NULL)
      return found;
  }
  return NULL;
}

/* _dc_next_child: caller holds tree_lock.  The present child of n first
 * in name order after the name after (NULL: the first one), or NULL. */
static DcNode *_dc_next_child(DcNode *n, const char *after) {
  DcNode *best = NULL;
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DcNode *c = v;
    if (c->present && (after == NULL || strcmp(c->name, after) > 0) &&
        (best == NULL || strcmp(c->name, best->name) < 0))
      best = c;
  }
  return best;
}

DcNode *dircache_walk_next(Dircache *dc, DcNode *n) {
  g_mutex_lock(&dc->tree_lock);
  DcNode *cur = n, *found = NULL;
  /* Bounded: a tree being renamed meanwhile must not loop forever. */
  for (guint steps = 0; cur != NULL && found == NULL && steps < 4096; steps++) {
    DcNode *parent = cur->parent;
    DcNode *sib = parent != NULL ? _dc_next_child(parent, cur->name) : NULL;
    if (sib != NULL) {
      /* Its subdirectories come first (readdir lists them before the
       * messages), and theirs before them. */
      for (DcNode *c = sib; c != NULL; c = _dc_next_child(sib, NULL))
        sib = c;
      cur = sib;
    } else {
      cur = parent != NULL && parent->parent != NULL ? parent : NULL;
    }
    if (cur != NULL && cur->present && cur->selectable && cur->mailbox != NULL)
      found = cur;
  }
  g_mutex_unlock(&dc->tree_lock);
  return found;
}

DcNode *dircache_find_mailbox(Dircache *dc, const char *mailbox) {
  g_mutex_lock(&dc->tree_lock);
  DcNode *n = _dc_find(dc->root, mailbox);
  g_mutex_unlock(&dc->tree_lock);
  return n;
}

static void _dc_flush(Dircache *dc, DcNode *n) {
  if (n->dirty && n->mailbox != NULL)
    dc_save_meta(dc, n);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    _dc_flush(dc, v);
}

void dircache_flush(Dircache *dc) {
  /* At unmount: no other thread runs, so no locks are needed. */
  _dc_flush(dc, dc->root);
  dc_save_ids(dc);
  dc_save_dirs(dc);
}

static void _dc_selectable(DcNode *n, GPtrArray *out) {
  if (n->mailbox != NULL && n->present && n->selectable)
    g_ptr_array_add(out, n);
  GHashTableIter it;
  gpointer v;
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v))
    _dc_selectable(v, out);
}

void dircache_touch(Dircache *dc, DcNode *n) {
  (void)dc;
  __atomic_store_n(&n->used_at, g_get_monotonic_time(), __ATOMIC_RELAXED);
}

GPtrArray *dircache_listed_nodes(Dircache *dc, gboolean saved, gint64 idle_us) {
  gint64 since = idle_us > 0 ? g_get_monotonic_time() - idle_us : G_MININT64;
  g_autoptr(GPtrArray) all = g_ptr_array_new();
  g_mutex_lock(&dc->tree_lock);
  _dc_selectable(dc->root, all);
  g_mutex_unlock(&dc->tree_lock);
  /* Elsewhere tree_lock is taken with n->lock held (new epochs), so
   * n->lock is never taken under tree_lock. */
  GPtrArray *out = g_ptr_array_new();
  for (guint i = 0; i < all->len; i++) {
    DcNode *n = g_ptr_array_index(all, i);
    g_mutex_lock(&n->lock);
    gboolean want = (n->served && __atomic_load_n(&n->used_at, __ATOMIC_RELAXED) >= since) ||
                    (saved && n->msgs != NULL);
    g_mutex_unlock(&n->lock);
    if (want)
      g_ptr_array_add(out, n);
  }
  return out;
}

void dircache_prune_saved(Dircache *dc) {
  if (dc->meta_dir == NULL)
    return;
  g_autoptr(GPtrArray) all = g_ptr_array_new();
  g_mutex_lock(&dc->tree_lock);
  _dc_selectable(dc->root, all);
  g_mutex_unlock(&dc->tree_lock);
  g_autoptr(GHashTable) keep = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  for (guint i = 0; i < all->len; i++) {
    g_autofree char *path = dc_meta_path(dc, all->pdata[i]);
    g_hash_table_add(keep, g_path_get_basename(path));
  }
  GDir *d = g_dir_open(dc->meta_dir, 0, NULL);
  if (d == NULL)
    return;
  const char *name;
  guint removed = 0;
  while ((name = g_dir_read_name(d)) != NULL) {
    /* <32 hex>.mc, or a temporary file of one that a crash left */
    const char *dot = strstr(name, ".mc");
    if (dot == NULL || dot - name != 32 || (dot[3] != '\0' && dot[3] != '.') ||
        g_hash_table_contains(keep, name))
      continue;
    g_autofree char *path = g_build_filename(dc->meta_dir, name, NULL);
    removed += g_unlink(path) == 0;
  }
  g_dir_close(d);
  if (removed > 0)
    g_debug("removed %u saved listings of mailboxes that are gone", removed);
}

void dircache_load_saved(Dircache *dc) {
  g_autoptr(GPtrArray) all = g_ptr_array_new();
  g_mutex_lock(&dc->tree_lock);
  _dc_selectable(dc->root, all);
  g_mutex_unlock(&dc->tree_lock);
  for (guint i = 0; i < all->len; i++) {
    DcNode *n = g_ptr_array_index(all, i);
    g_mutex_lock(&n->refresh_lock);
    if (n->msgs == NULL)
      dc_load_meta(dc, n);
    g_mutex_unlock(&n->refresh_lock);
  }
}

/* Caller holds n->lock. */
static guint32 _dc_unseen(Dircache *dc, const GArray *msgs) {
  guint32 unseen = 0;
  g_mutex_lock(&dc->flags_lock);
  for (guint i = 0; i < msgs->len; i++) {
    guint32 set = g_array_index(msgs, DcMsg, i).flagset;
    unseen += set < dc->flag_seen->len && !dc->flag_seen->data[set];
  }
  g_mutex_unlock(&dc->flags_lock);
  return unseen;
}

/* Caller holds n->lock.  n's list is of a UIDVALIDITY the folder no longer
 * has: the next lookup or open must wait for a new listing, and a listing
 * under way when this was seen is not taken (voided).  Returns the UIDs
 * that are gone with it (dc_tell_gone, once the lock is released). */
static GArray *_dc_void(DcNode *n) {
  n->fetched_at = 0;
  n->good_at = 0;
  n->stale = TRUE;
  n->voided++;
  GArray *gone = g_array_new(FALSE, FALSE, sizeof(guint32));
  for (guint i = 0; i < n->msgs->len; i++)
    g_array_append_val(gone, g_array_index(n->msgs, DcMsg, i).uid);
  return gone;
}

void dircache_uidvalidity_changed(Dircache *dc, DcNode *n, guint32 uidvalidity) {
  g_autoptr(GArray) gone = NULL;
  g_mutex_lock(&n->lock);
  guint32 epoch = n->epoch;
  if (n->msgs != NULL && n->uidvalidity == uidvalidity)
    gone = _dc_void(n);
  g_mutex_unlock(&n->lock);
  if (gone != NULL && epoch != 0)
    dc_tell_gone(dc, n, epoch, uidvalidity, gone);
}

gboolean dircache_status_differs(Dircache *dc, DcNode *n, const ImapStatusInfo *st,
                                 gint64 asked_us) {
  g_mutex_lock(&n->lock);
  /* UIDNEXT shows an expunge plus an append, which leave the count as it
   * was; without CONDSTORE, UNSEEN shows a message read elsewhere.  Other
   * flag changes there show at the next listing. */
  gboolean differs = n->msgs == NULL || n->uidvalidity != st->uidvalidity ||
                     n->msgs->len != st->messages ||
                     (st->uidnext != 0 && n->uidnext != 0 && st->uidnext != n->uidnext) ||
                     (st->highestmodseq != 0 && st->highestmodseq != n->highestmodseq) ||
                     (st->has_unseen && _dc_unseen(dc, n->msgs) != st->unseen);
  /* Another UIDVALIDITY: every message of the list is gone, though the
   * refresh may take long (a slow SELECT): lookups and opens, which take
   * the list at any age, must wait for it, not find the old messages
   * (which read the old bytes from the caches for as long as it took). */
  /* Other entries (not only flags): the directory's time moves now, when
   * the change is seen, not when the folder is next read (tar, reading it
   * then, said "file changed as we read it"); the listing then keeps it. */
  gboolean moved = FALSE;
  if (n->msgs != NULL) {
    guint32 last = n->msgs->len ? g_array_index(n->msgs, DcMsg, n->msgs->len - 1).uid : 0;
    gboolean other = (st->uidvalidity != 0 && n->uidvalidity != st->uidvalidity) ||
                     n->msgs->len != st->messages || st->uidnext > MAX(n->uidnext, last + 1);
    /* ... and again for each further change a STATUS shows before then */
    if (other && (n->noticed == 0 || st->messages != n->noticed_messages ||
                  st->uidnext != n->noticed_uidnext)) {
      n->noticed = dc_now_us();
      n->noticed_messages = st->messages;
      n->noticed_uidnext = st->uidnext;
      n->noticed_us = asked_us;
      moved = dc_changed_to(n, n->noticed);
      n->dirty |= moved;
    }
  }
  g_autoptr(GArray) gone = NULL;
  guint32 epoch = n->epoch, old_uidvalidity = n->uidvalidity;
  if (n->msgs != NULL && st->uidvalidity != 0 && n->uidvalidity != st->uidvalidity) {
    gone = _dc_void(n);
    n->status_uidvalidity = st->uidvalidity;
  }
  /* Without CONDSTORE an equal STATUS proves nothing (flags).  A stale
   * list is left alone; one the last mount saved is confirmed too (any
   * change would have raised HIGHESTMODSEQ), and its messages then get
   * their inodes as after a fetch. */
  if (!differs && st->highestmodseq != 0 && !n->stale && asked_us > n->fetched_at) {
    if (n->epoch == 0)
      _dc_new_epoch(dc, n, st->uidvalidity);
    n->fetched_at = n->good_at = asked_us;
  }
  g_mutex_unlock(&n->lock);
  if (moved)
    dc_tell(dc, n, 0, 0, DC_CHANGE_DIR);
  /* ... and the kernel's entries of the old names go now (on -o ro its
   * pages of them were read with no request to us). */
  if (gone != NULL && epoch != 0)
    dc_tell_gone(dc, n, epoch, old_uidvalidity, gone);
  return differs;
}

void dircache_note_modseq(Dircache *dc, DcNode *n, guint32 uidvalidity, guint64 highestmodseq) {
  (void)dc;
  g_mutex_lock(&n->lock);
  if (n->uidvalidity == uidvalidity && highestmodseq > n->highestmodseq) {
    n->highestmodseq = highestmodseq;
    n->dirty = TRUE;
  }
  g_mutex_unlock(&n->lock);
}

/* ==== write path (issue 4, used by fswrite.c) ==========================
 * Kept apart from the listing code above: only the tree is touched. */

/* _dc_reprefix: caller holds tree_lock. */
static void _dc_reprefix(Dircache *dc, DcNode *n, const char *old, const char *new) {
  GHashTableIter it;
  gpointer v;
  gsize len = strlen(old);
  g_hash_table_iter_init(&it, n->children);
  while (g_hash_table_iter_next(&it, NULL, &v)) {
    DcNode *c = v;
    if (c->mailbox != NULL && strncmp(c->mailbox, old, len) == 0) {
      g_autofree char *m = g_strconcat(new, c->mailbox + len, NULL);
      _dc_set_mailbox(dc, c, m);
    }
    _dc_reprefix(dc, c, old, new);
  }
}

void dircache_node_renamed(Dircache *dc, DcNode *n, DcNode *new_parent, const char *new_name,
                           const char *new_mailbox) {
  g_mutex_lock(&dc->tree_lock);
  DcNode *clash = g_hash_table_lookup(new_parent->children, new_name);
  gboolean took_place = FALSE;
  if (clash != NULL && clash != n) {
    /* A present node of that name is this mailbox too when a LIST asked
     * after the server's RENAME was applied first: it took n for gone and
     * made a new node.  n is the inode the kernel now has under that name,
     * so n stays and the new one goes (else the renamed folder read as
     * gone, ENOENT, until unmounted). */
    if (clash->present && g_strcmp0(clash->mailbox, new_mailbox) != 0) {
      g_mutex_unlock(&dc->tree_lock);
      return; /* someone else's: the next LIST sorts it out */
    }
    if (clash->present) {
      took_place = TRUE;
      n->selectable = n->held_mail = clash->selectable;
      clash->present = clash->selectable = FALSE;
      _dc_mark_absent(clash, 0, NULL);
    }
    /* An old absent node of that name: out of the way, under a name no
     * lookup can produce. */
    g_hash_table_remove(new_parent->children, clash->name);
    g_free(clash->name);
    clash->name = g_strdup_printf("\001%u", clash->id);
    g_hash_table_insert(new_parent->children, clash->name, clash);
  }
  g_autoptr(GPtrArray) bumped = g_ptr_array_new();
  g_ptr_array_add(bumped, n->parent);
  if (new_parent != n->parent)
    g_ptr_array_add(bumped, new_parent);
  g_hash_table_remove(n->parent->children, n->name);
  if (n->mailbox != NULL)
    _dc_reprefix(dc, n, n->mailbox, new_mailbox);
  _dc_set_mailbox(dc, n, new_mailbox);
  g_free(n->name);
  n->name = g_strdup(new_name);
  n->parent = new_parent;
  if (took_place)
    n->present = TRUE;
  g_hash_table_insert(new_parent->children, n->name, n);
  dc->lists_superseded = dc->lists_asked; /* LISTs under way predate the rename */
  g_mutex_unlock(&dc->tree_lock);
  g_mutex_lock(&n->lock);
  n->fetched_at = 0; /* revalidate the list on next use */
  n->stale = TRUE;
  g_mutex_unlock(&n->lock);
  dc_bump_dirs(dc, bumped);
}
