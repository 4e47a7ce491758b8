/* cmd.c - command building with safe quoting, and the typed operations.
 *
 * Every byte of protocol text imapfuse sends is built here.  Strings that
 * come from users or the server (mailbox names, flags, credentials) only go
 * out through imap_cmd_add_string(), which quotes or sends a literal.
 */
#include "imapfuse/cmd.h"

#include <string.h>

#include "imapfuse/errors.h"

struct ImapCmd {
  GPtrArray *segs; /* ImapCmdSeg* */
  gboolean secret;
  ImapContinueFn cont;
  gpointer cont_user;
};

static void cmd_seg_free(gpointer p) {
  ImapCmdSeg *seg = p;
  if (seg->text != NULL)
    g_string_free(seg->text, TRUE);
  if (seg->literal != NULL)
    g_bytes_unref(seg->literal);
  g_free(seg);
}

/* The segment whose text is still open (no literal after it yet). */
static GString *cmd_tail(ImapCmd *cmd) {
  ImapCmdSeg *last =
      cmd->segs->len ? g_ptr_array_index(cmd->segs, cmd->segs->len - 1) : NULL;
  if (last == NULL || last->literal != NULL) {
    last = g_new0(ImapCmdSeg, 1);
    last->text = g_string_new(NULL);
    g_ptr_array_add(cmd->segs, last);
  }
  return last->text;
}

ImapCmd *imap_cmd_new(const char *fmt, ...) {
  ImapCmd *cmd = g_new0(ImapCmd, 1);
  cmd->segs = g_ptr_array_new_with_free_func(cmd_seg_free);
  va_list ap;
  va_start(ap, fmt);
  g_string_append_vprintf(cmd_tail(cmd), fmt, ap);
  va_end(ap);
  return cmd;
}

void imap_cmd_add(ImapCmd *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  g_string_append_vprintf(cmd_tail(cmd), fmt, ap);
  va_end(ap);
}

void imap_cmd_add_literal(ImapCmd *cmd, GBytes *data) {
  cmd_tail(cmd);
  ImapCmdSeg *last = g_ptr_array_index(cmd->segs, cmd->segs->len - 1);
  last->literal = g_bytes_ref(data);
}

void imap_cmd_add_string(ImapCmd *cmd, const char *s) {
  gsize len = strlen(s);
  gboolean quotable = len <= 1000;
  for (gsize i = 0; i < len && quotable; i++) {
    guchar ch = (guchar)s[i];
    if (ch < 0x20 || ch >= 0x7f)
      quotable = FALSE;
  }
  if (!quotable) {
    g_autoptr(GBytes) b = g_bytes_new(s, len);
    imap_cmd_add_literal(cmd, b);
    return;
  }
  GString *t = cmd_tail(cmd);
  g_string_append_c(t, '"');
  for (gsize i = 0; i < len; i++) {
    if (s[i] == '"' || s[i] == '\\')
      g_string_append_c(t, '\\');
    g_string_append_c(t, s[i]);
  }
  g_string_append_c(t, '"');
}

void imap_cmd_set_secret(ImapCmd *cmd) { cmd->secret = TRUE; }

void imap_cmd_on_continue(ImapCmd *cmd, ImapContinueFn fn, gpointer user) {
  cmd->cont = fn;
  cmd->cont_user = user;
}

void imap_cmd_free(ImapCmd *cmd) {
  if (cmd == NULL)
    return;
  if (cmd->secret) /* do not leave credentials in freed memory */
    for (guint i = 0; i < cmd->segs->len; i++) {
      ImapCmdSeg *seg = g_ptr_array_index(cmd->segs, i);
      if (seg->text != NULL)
        memset(seg->text->str, 0, seg->text->len);
    }
  g_ptr_array_unref(cmd->segs);
  g_free(cmd);
}

const GPtrArray *imap_cmd_segments(const ImapCmd *cmd) { return cmd->segs; }
gboolean imap_cmd_is_secret(const ImapCmd *cmd) { return cmd->secret; }
ImapContinueFn imap_cmd_continue_fn(const ImapCmd *cmd, gpointer *user) {
  *user = cmd->cont_user;
  return cmd->cont;
}

/* ---- LIST ---- */

void imap_mailbox_info_free(ImapMailboxInfo *m) {
  if (m == NULL)
    return;
  g_free(m->name);
  g_free(m);
}

static guint32 cmd_list_attr(const char *a) {
  static const struct {
    const char *name;
    guint32 bit;
  } attrs[] = {
      {"\\Noselect", IMAP_MBX_NOSELECT},       {"\\NonExistent", IMAP_MBX_NONEXISTENT | IMAP_MBX_NOSELECT},
      {"\\Noinferiors", IMAP_MBX_NOINFERIORS}, {"\\HasChildren", IMAP_MBX_HASCHILDREN},
      {"\\HasNoChildren", IMAP_MBX_HASNOCHILDREN}, {"\\All", IMAP_MBX_ALL},
      {"\\Archive", IMAP_MBX_ARCHIVE},         {"\\Drafts", IMAP_MBX_DRAFTS},
      {"\\Flagged", IMAP_MBX_FLAGGED},         {"\\Junk", IMAP_MBX_JUNK},
      {"\\Sent", IMAP_MBX_SENT},               {"\\Trash", IMAP_MBX_TRASH},
  };
  for (gsize i = 0; i < G_N_ELEMENTS(attrs); i++)
    if (g_ascii_strcasecmp(a, attrs[i].name) == 0)
      return attrs[i].bit;
  return 0;
}

static gboolean cmd_list_handler(ImapResponse *r, gpointer user) {
  GPtrArray *out = user;
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "LIST") != 0 || r->args.n_items < 3)
    return FALSE;
  const ImapVal *attrs = &r->args.items[0], *delim = &r->args.items[1],
                *name = &r->args.items[2];
  if (attrs->type != IMAP_VAL_LIST || imap_val_str(name) == NULL)
    return TRUE; /* malformed entry: skip it rather than fail the listing */
  ImapMailboxInfo *m = g_new0(ImapMailboxInfo, 1);
  m->name = g_strndup(name->data, name->len);
  if (g_ascii_strcasecmp(m->name, "INBOX") == 0)
    memcpy(m->name, "INBOX", 5); /* INBOX is case-insensitive */
  if (imap_val_str(delim) != NULL && delim->len == 1)
    m->delim = delim->data[0];
  for (guint i = 0; i < attrs->n_items; i++)
    if (imap_val_str(&attrs->items[i]) != NULL)
      m->attrs |= cmd_list_attr(attrs->items[i].data);
  g_ptr_array_add(out, m);
  return TRUE;
}

gboolean imap_list(ImapConn *c, GPtrArray **out, GError **error) {
  g_autoptr(GPtrArray) list =
      g_ptr_array_new_with_free_func((GDestroyNotify)imap_mailbox_info_free);
  ImapCmd *cmd = imap_cmd_new("LIST \"\" \"*\"");
  if (imap_conn_has(c, IMAP_CAP_SPECIAL_USE) && imap_conn_has(c, IMAP_CAP_LIST_EXTENDED))
    imap_cmd_add(cmd, " RETURN (SPECIAL-USE)");
  if (!imap_conn_run(c, cmd, cmd_list_handler, list, NULL, error))
    return FALSE;
  *out = g_steal_pointer(&list);
  return TRUE;
}

/* ---- SELECT ---- */

static gboolean cmd_select_handler(ImapResponse *r, gpointer user) {
  ImapSelectInfo *info = user;
  if (r->kind != IMAP_RESP_UNTAGGED)
    return FALSE;
  if (r->status == IMAP_STATUS_OK && r->code != NULL && r->code_args.n_items >= 1) {
    const ImapVal *v = &r->code_args.items[0];
    if (g_str_equal(r->code, "UIDVALIDITY"))
      return imap_val_to_u32(v, &info->uidvalidity);
    if (g_str_equal(r->code, "UIDNEXT"))
      return imap_val_to_u32(v, &info->uidnext);
    if (g_str_equal(r->code, "HIGHESTMODSEQ")) {
      /* Out of range (over 2^63-1): as if the mailbox had none. */
      if (!imap_val_to_modseq(v, &info->highestmodseq))
        info->highestmodseq = 0;
      return TRUE;
    }
  }
  if (r->status == IMAP_STATUS_OK && g_strcmp0(r->code, "NOMODSEQ") == 0) {
    info->highestmodseq = 0; /* no mod-sequences in this mailbox */
    return TRUE;
  }
  if (r->has_number && g_strcmp0(r->name, "EXISTS") == 0) {
    info->exists = r->number;
    return TRUE;
  }
  return FALSE;
}

/* SELECT mailbox; c counts as having nothing selected until its answer
 * says otherwise: a failed SELECT leaves nothing selected (RFC 3501
 * 6.3.1). */
static ImapCmd *cmd_select_new(ImapConn *c, const char *mailbox) {
  ImapCmd *cmd = imap_cmd_new("SELECT ");
  imap_cmd_add_string(cmd, mailbox);
  imap_conn_set_selected(c, NULL, 0);
  return cmd;
}

gboolean imap_select(ImapConn *c, const char *mailbox, ImapSelectInfo *info, GError **error) {
  ImapSelectInfo tmp = {0};
  ImapCmd *cmd = cmd_select_new(c, mailbox);
  if (!imap_conn_run(c, cmd, cmd_select_handler, &tmp, NULL, error))
    return FALSE;
  if (tmp.uidvalidity == 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_PROTOCOL, "server sent no UIDVALIDITY for %s",
                mailbox);
    return FALSE;
  }
  imap_conn_set_selected(c, mailbox, tmp.uidvalidity);
  if (info != NULL)
    *info = tmp;
  return TRUE;
}

gboolean imap_ensure_selected(ImapConn *c, const char *mailbox, guint32 *uidvalidity,
                              GError **error) {
  if (g_strcmp0(imap_conn_selected(c), mailbox) != 0) {
    ImapSelectInfo info;
    if (!imap_select(c, mailbox, &info, error))
      return FALSE;
  }
  if (uidvalidity != NULL)
    *uidvalidity = imap_conn_selected_uidvalidity(c);
  return TRUE;
}

/* ---- FETCH ---- */

static int cmd_flag_cmp(gconstpointer a, gconstpointer b) {
  return g_ascii_strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorted, space separated, without \Recent (a per-session flag). */
static char *cmd_canonical_flags(const ImapVal *list) {
  g_autoptr(GPtrArray) names = g_ptr_array_new();
  for (guint i = 0; i < list->n_items; i++) {
    const char *f = imap_val_str(&list->items[i]);
    if (f != NULL && g_ascii_strcasecmp(f, "\\Recent") != 0)
      g_ptr_array_add(names, (gpointer)f);
  }
  g_ptr_array_sort(names, cmd_flag_cmp);
  g_ptr_array_add(names, NULL);
  return g_strjoinv(" ", (char **)names->pdata);
}

#define CMD_SEQ_JUMP_MAX 65536

typedef struct {
  ImapMetaFn fn;
  ImapVanishedFn vanished;
  gpointer user;
  /* With vanished: the UID of each sequence number (index seq-1; 0 where
   * no FETCH told it yet), so that "* n EXPUNGE" names a UID. */
  GArray *seq_uids;
} CmdMetaCtx;

static void cmd_meta_ctx_clear(CmdMetaCtx *ctx) {
  g_clear_pointer(&ctx->seq_uids, g_array_unref);
}

static void cmd_meta_note_seq(CmdMetaCtx *ctx, guint32 seq, guint32 uid) {
  if (ctx->vanished == NULL || seq == 0)
    return;
  if (ctx->seq_uids == NULL)
    ctx->seq_uids = g_array_new(FALSE, TRUE, sizeof(guint32));
  /* A listing's FETCHes come near sequence order: a number far past the
   * ones seen is garbage (4,000,000,000 asked for a 16 GB array, and
   * the allocation failure ended the process).  Its EXPUNGE, if any,
   * then shows at the next listing. */
  if (seq > ctx->seq_uids->len && seq - ctx->seq_uids->len > CMD_SEQ_JUMP_MAX)
    return;
  if (ctx->seq_uids->len < seq)
    g_array_set_size(ctx->seq_uids, seq);
  g_array_index(ctx->seq_uids, guint32, seq - 1) = uid;
}

/* "* n EXPUNGE" (a server without QRESYNC enabled, RFC 3501 7.4.1): the
 * message n is gone and every later one moves down by one.  If no FETCH
 * has told n's UID yet, the listing has not reached it and will not. */
static void cmd_meta_expunge(CmdMetaCtx *ctx, guint32 seq) {
  if (ctx->seq_uids == NULL || seq == 0 || seq > ctx->seq_uids->len)
    return;
  guint32 uid = g_array_index(ctx->seq_uids, guint32, seq - 1);
  g_array_remove_index(ctx->seq_uids, seq - 1);
  if (uid != 0) {
    char set[16];
    g_snprintf(set, sizeof set, "%u", uid);
    ctx->vanished(set, ctx->user);
  }
}

static gboolean cmd_meta_handler(ImapResponse *r, gpointer user) {
  CmdMetaCtx *ctx = user;
  if (ctx->vanished != NULL && r->kind == IMAP_RESP_UNTAGGED &&
      g_strcmp0(r->name, "VANISHED") == 0 && r->args.n_items >= 1) {
    const ImapVal *set = &r->args.items[r->args.n_items - 1];
    if (imap_val_str(set) != NULL)
      ctx->vanished(set->data, ctx->user);
    return TRUE;
  }
  if (ctx->vanished != NULL && r->kind == IMAP_RESP_UNTAGGED && r->has_number &&
      g_strcmp0(r->name, "EXPUNGE") == 0) {
    cmd_meta_expunge(ctx, r->number);
    return TRUE;
  }
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "FETCH") != 0 ||
      r->args.n_items < 1 || r->args.items[0].type != IMAP_VAL_LIST)
    return FALSE;
  const ImapVal *atts = &r->args.items[0];
  ImapMsgMeta m = {0};
  const ImapVal *v = imap_fetch_get(atts, "UID", NULL);
  if (v == NULL || !imap_val_to_u32(v, &m.uid))
    return FALSE; /* no UID: not ours */
  if (r->has_number)
    cmd_meta_note_seq(ctx, r->number, m.uid);
  if ((v = imap_fetch_get(atts, "RFC822.SIZE", NULL)) != NULL)
    m.has_size = imap_val_to_u64(v, &m.size);
  if ((v = imap_fetch_get(atts, "INTERNALDATE", NULL)) != NULL && imap_val_str(v) != NULL)
    m.has_date = imap_parse_internaldate(v->data, &m.date);
  if ((v = imap_fetch_get(atts, "MODSEQ", NULL)) != NULL && v->type == IMAP_VAL_LIST &&
      v->n_items == 1)
    imap_val_to_modseq(&v->items[0], &m.modseq);
  g_autofree char *flags = NULL;
  if ((v = imap_fetch_get(atts, "FLAGS", NULL)) != NULL && v->type == IMAP_VAL_LIST) {
    flags = cmd_canonical_flags(v);
    m.has_flags = TRUE;
  }
  m.flags = flags != NULL ? flags : "";
  ctx->fn(&m, ctx->user);
  return TRUE;
}

static ImapCmd *cmd_fetch_meta_new(const char *uidset, gboolean modseq) {
  return imap_cmd_new("UID FETCH %s (UID RFC822.SIZE INTERNALDATE FLAGS%s)", uidset,
                      modseq ? " MODSEQ" : "");
}

/* Runs a metadata FETCH (cmd_fetch_meta_new, cmd_fetch_changes_new). */
static gboolean cmd_run_meta(ImapConn *c, ImapCmd *cmd, ImapMetaFn fn, ImapVanishedFn vanished,
                             gpointer user, GError **error) {
  CmdMetaCtx ctx = {fn, vanished, user, NULL};
  gboolean ok = imap_conn_run(c, cmd, cmd_meta_handler, &ctx, NULL, error);
  cmd_meta_ctx_clear(&ctx);
  return ok;
}

gboolean imap_fetch_meta(ImapConn *c, const char *uidset, gboolean modseq, ImapMetaFn fn,
                         ImapVanishedFn vanished, gpointer user, GError **error) {
  return cmd_run_meta(c, cmd_fetch_meta_new(uidset, modseq), fn, vanished, user, error);
}

static ImapCmd *cmd_fetch_changes_new(guint64 modseq) {
  return imap_cmd_new("UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ) "
                      "(CHANGEDSINCE %" G_GUINT64_FORMAT " VANISHED)",
                      modseq);
}

gboolean imap_fetch_changes(ImapConn *c, guint64 modseq, ImapMetaFn fn, ImapVanishedFn vanished,
                            gpointer user, GError **error) {
  return cmd_run_meta(c, cmd_fetch_changes_new(modseq), fn, vanished, user, error);
}

typedef struct {
  ImapSelectInfo *info;
  CmdMetaCtx meta;
  gboolean closing; /* before "* OK [CLOSED]": the previous mailbox's */
} CmdListMsgsCtx;

static gboolean cmd_list_msgs_handler(ImapResponse *r, gpointer user) {
  CmdListMsgsCtx *ctx = user;
  if (ctx->closing && r->kind == IMAP_RESP_UNTAGGED) {
    /* RFC 7162 3.2.11: with QRESYNC, a SELECT of another mailbox answers
     * "* OK [CLOSED]" first, and what comes before it (a flag change, an
     * expunge) is the old mailbox's, with UIDs that mean other messages
     * here.  A server that sends no [CLOSED]: the new mailbox's
     * UIDVALIDITY ends it (not FLAGS: the old mailbox may report new
     * keywords). */
    if (r->status == IMAP_STATUS_OK && g_strcmp0(r->code, "CLOSED") == 0) {
      ctx->closing = FALSE;
      return TRUE;
    }
    if (g_strcmp0(r->code, "UIDVALIDITY") == 0)
      ctx->closing = FALSE;
    else if (g_strcmp0(r->name, "FETCH") == 0 || g_strcmp0(r->name, "VANISHED") == 0 ||
             g_strcmp0(r->name, "EXPUNGE") == 0)
      return TRUE;
  }
  return cmd_select_handler(r, ctx->info) || cmd_meta_handler(r, &ctx->meta);
}

gboolean imap_list_messages(ImapConn *c, const char *mailbox, guint64 changedsince,
                            ImapSelectInfo *info, ImapMetaFn fn,
                            ImapVanishedFn vanished, gpointer user, GError **error) {
  memset(info, 0, sizeof *info);
  gboolean qresync = imap_conn_qresync_enabled(c);
  gboolean modseq = qresync || imap_conn_has(c, IMAP_CAP_CONDSTORE);
  CmdListMsgsCtx ctx = {info, {fn, vanished, user, NULL},
                        qresync && imap_conn_selected(c) != NULL};
  ImapCmd *cmds[2];
  /* Always SELECT, also when this session has the mailbox selected
   * already: a pipelined NOOP would not do, as the FETCH after it may be
   * evaluated on the session's old view (Dovecot runs them together); a
   * SELECT gives a fresh view, and EXISTS to check a delta against. */
  cmds[0] = cmd_select_new(c, mailbox);
  if (changedsince > 0 && qresync)
    cmds[1] = cmd_fetch_changes_new(changedsince);
  else
    cmds[1] = cmd_fetch_meta_new("1:*", modseq);
  g_autoptr(GError) local = NULL;
  gboolean ok = imap_conn_run_pipeline(c, cmds, 2, cmd_list_msgs_handler, &ctx, NULL, &local);
  cmd_meta_ctx_clear(&ctx.meta);
  /* The SELECT went through even if the FETCH did not: the caller may ask
   * again in it (a refused delta, or MODSEQ in a [NOMODSEQ] mailbox). */
  gboolean selected = info->uidvalidity != 0 && !imap_conn_is_broken(c);
  if (selected)
    imap_conn_set_selected(c, mailbox, info->uidvalidity);
  /* "1:*" on an empty mailbox is an error on some servers: nothing to list. */
  if (!ok && selected && info->exists == 0)
    ok = TRUE;
  if (!ok) {
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
  if (info->uidvalidity == 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_PROTOCOL, "server sent no UIDVALIDITY for %s",
                mailbox);
    return FALSE;
  }
  return TRUE;
}

typedef struct {
  guint32 uid;         /* 0 = any (bulk) */
  const char *section; /* "BODY[]" or "BODY[]<" */
  guint64 offset;      /* of a partial fetch: the origin the answer must have */
  gboolean misplaced;  /* a partial answer came with another origin */
  GBytes *body;        /* single fetch result */
  ImapBodyFn fn;
  gpointer user;
  gboolean stopped;
} CmdBodyCtx;

static gboolean cmd_body_handler(ImapResponse *r, gpointer user) {
  CmdBodyCtx *ctx = user;
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "FETCH") != 0 ||
      r->args.n_items < 1 || r->args.items[0].type != IMAP_VAL_LIST)
    return FALSE;
  const ImapVal *atts = &r->args.items[0];
  guint32 uid;
  const ImapVal *v = imap_fetch_get(atts, "UID", NULL);
  if (v == NULL || !imap_val_to_u32(v, &uid) || (ctx->uid != 0 && uid != ctx->uid))
    return FALSE;
  guint64 origin = 0;
  const ImapVal *body = imap_fetch_get(atts, ctx->section, &origin);
  if (body == NULL)
    return FALSE; /* a flags update that happened to carry the UID */
  if (origin != ctx->offset) { /* other bytes than asked for: never taken */
    ctx->misplaced = TRUE;
    return TRUE;
  }
  /* NIL: the message is gone (Dovecot answers so, with OK [EXPUNGEISSUED],
   * for one another session expunged before this one synced).  Not an
   * empty body: a read got no bytes, or zeros up to the listed size. */
  if (body->type == IMAP_VAL_NIL)
    return TRUE;
  GBytes *bytes = imap_response_bytes(r, body);
  if (bytes == NULL)
    return TRUE;
  if (ctx->fn != NULL) {
    if (!ctx->stopped && !ctx->fn(uid, bytes, ctx->user))
      ctx->stopped = TRUE;
    g_bytes_unref(bytes);
  } else {
    if (ctx->body != NULL)
      g_bytes_unref(ctx->body);
    ctx->body = bytes;
  }
  return TRUE;
}

/* The FETCH of one message's body (length 0: whole); ctx says what to
 * take from the answer. */
static ImapCmd *cmd_fetch_body_new(CmdBodyCtx *ctx, guint32 uid, guint64 offset,
                                   guint64 length) {
  ctx->uid = uid;
  if (length == 0) {
    ctx->section = "BODY[]";
    return imap_cmd_new("UID FETCH %u BODY.PEEK[]", uid);
  }
  ctx->section = "BODY[]<";
  ctx->offset = offset;
  return imap_cmd_new("UID FETCH %u BODY.PEEK[]<%" G_GUINT64_FORMAT ".%" G_GUINT64_FORMAT ">",
                      uid, offset, length);
}

/* A single fetch's answer: its body, or NOT_FOUND. */
static gboolean cmd_fetch_body_done(gboolean ok, CmdBodyCtx *ctx, GBytes **out,
                                    GError **error) {
  if (!ok) {
    g_clear_pointer(&ctx->body, g_bytes_unref);
    return FALSE;
  }
  if (ctx->body == NULL && ctx->misplaced) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_PROTOCOL,
                "the server answered a fetch of UID %u from byte %" G_GUINT64_FORMAT
                " with bytes from another place",
                ctx->uid, ctx->offset);
    return FALSE;
  }
  if (ctx->body == NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_FOUND, "message UID %u no longer exists",
                ctx->uid);
    return FALSE;
  }
  *out = ctx->body;
  return TRUE;
}

gboolean imap_fetch_body(ImapConn *c, guint32 uid, guint64 offset, guint64 length,
                         GBytes **out, GError **error) {
  CmdBodyCtx ctx = {0};
  ImapCmd *cmd = cmd_fetch_body_new(&ctx, uid, offset, length);
  return cmd_fetch_body_done(imap_conn_run(c, cmd, cmd_body_handler, &ctx, NULL, error), &ctx,
                             out, error);
}

typedef struct {
  gboolean selecting;
  ImapSelectInfo info;
  guint32 want;
  CmdBodyCtx *body;
} CmdBodiesCtx;

static gboolean cmd_bodies_handler(ImapResponse *r, gpointer user) {
  CmdBodiesCtx *ctx = user;
  if (ctx->selecting && cmd_select_handler(r, &ctx->info))
    return TRUE;
  /* Messages of another UIDVALIDITY are other messages: never handed on. */
  if (ctx->selecting && ctx->info.uidvalidity != ctx->want && r->kind == IMAP_RESP_UNTAGGED &&
      g_strcmp0(r->name, "FETCH") == 0)
    return TRUE;
  return cmd_body_handler(r, ctx->body);
}

/* The n FETCHes (consumed) in mailbox, preceded in the same write by a
 * SELECT if the session has something else selected (see
 * imap_fetch_bodies). */
static gboolean cmd_fetch_in(ImapConn *c, const char *mailbox, guint32 uidvalidity,
                             ImapCmd **fetches, guint n, CmdBodyCtx *body, GError **error) {
  CmdBodiesCtx ctx = {.want = uidvalidity, .body = body};
  ctx.selecting = g_strcmp0(imap_conn_selected(c), mailbox) != 0 ||
                  imap_conn_selected_uidvalidity(c) != uidvalidity;
  ImapCmd *cmds[IMAP_PIPELINE_MAX];
  guint k = 0;
  if (ctx.selecting)
    cmds[k++] = cmd_select_new(c, mailbox);
  for (guint i = 0; i < n; i++)
    cmds[k++] = fetches[i];
  gboolean ok = imap_conn_run_pipeline(c, cmds, k, cmd_bodies_handler, &ctx, NULL, error);
  if (!ctx.selecting)
    return ok;
  /* Whatever became of the FETCHes, a UIDVALIDITY means SELECT worked. */
  if (ctx.info.uidvalidity != 0)
    imap_conn_set_selected(c, mailbox, ctx.info.uidvalidity);
  if (ok && ctx.info.uidvalidity != uidvalidity) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_STALE,
                "mailbox %s was recreated (UIDVALIDITY %u, was %u)", mailbox, ctx.info.uidvalidity,
                uidvalidity);
    return FALSE;
  }
  return ok;
}

gboolean imap_fetch_body_in(ImapConn *c, const char *mailbox, guint32 uidvalidity, guint32 uid,
                            guint64 offset, guint64 length, GBytes **out, GError **error) {
  CmdBodyCtx ctx = {0};
  ImapCmd *cmd = cmd_fetch_body_new(&ctx, uid, offset, length);
  return cmd_fetch_body_done(cmd_fetch_in(c, mailbox, uidvalidity, &cmd, 1, &ctx, error), &ctx,
                             out, error);
}

gboolean imap_fetch_bodies(ImapConn *c, const char *mailbox, guint32 uidvalidity,
                           char *const *uidsets, guint n, ImapBodyFn fn, gpointer user,
                           GError **error) {
  g_return_val_if_fail(n >= 1 && n < IMAP_PIPELINE_MAX, FALSE);
  CmdBodyCtx ctx = {.section = "BODY[]", .fn = fn, .user = user};
  ImapCmd *cmds[IMAP_PIPELINE_MAX];
  for (guint i = 0; i < n; i++)
    cmds[i] = imap_cmd_new("UID FETCH %s BODY.PEEK[]", uidsets[i]);
  return cmd_fetch_in(c, mailbox, uidvalidity, cmds, n, &ctx, error);
}

gboolean imap_noop(ImapConn *c, GError **error) {
  return imap_conn_run(c, imap_cmd_new("NOOP"), NULL, NULL, NULL, error);
}

static gboolean cmd_status_info_handler(ImapResponse *r, gpointer user) {
  ImapStatusInfo *out = user;
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "STATUS") != 0 || r->args.n_items < 2)
    return FALSE;
  const ImapVal *items = &r->args.items[1];
  if (items->type != IMAP_VAL_LIST)
    return TRUE;
  for (guint i = 0; i + 1 < items->n_items; i += 2) {
    const ImapVal *k = &items->items[i], *v = &items->items[i + 1];
    if (imap_val_is_atom(k, "UIDVALIDITY"))
      imap_val_to_u32(v, &out->uidvalidity);
    else if (imap_val_is_atom(k, "UIDNEXT"))
      imap_val_to_u32(v, &out->uidnext);
    else if (imap_val_is_atom(k, "MESSAGES"))
      imap_val_to_u32(v, &out->messages);
    else if (imap_val_is_atom(k, "HIGHESTMODSEQ"))
      imap_val_to_modseq(v, &out->highestmodseq);
    else if (imap_val_is_atom(k, "UNSEEN"))
      out->has_unseen = imap_val_to_u32(v, &out->unseen);
  }
  return TRUE;
}

/* STATUS of the mailbox this session has selected answers from the
 * session's view, which moves only at command boundaries: if one of the
 * mailboxes is the selected one, sync first. */
static gboolean cmd_status_sync(ImapConn *c, const char *const *mailboxes, guint n,
                                GError **error) {
  const char *selected = imap_conn_selected(c);
  for (guint i = 0; selected != NULL && i < n; i++)
    if (strcmp(selected, mailboxes[i]) == 0)
      return imap_noop(c, error);
  return TRUE;
}

/* The STATUS items asked.  Without CONDSTORE, UNSEEN is the one flag
 * change STATUS can show (the commonest: a message read or marked unread
 * elsewhere). */
static void cmd_status_items(ImapConn *c, ImapCmd *cmd) {
  imap_cmd_add(cmd, "(UIDVALIDITY UIDNEXT MESSAGES %s)",
               imap_conn_has(c, IMAP_CAP_CONDSTORE) ? "HIGHESTMODSEQ" : "UNSEEN");
}

static ImapCmd *cmd_status_new(ImapConn *c, const char *mailbox) {
  ImapCmd *cmd = imap_cmd_new("STATUS ");
  imap_cmd_add_string(cmd, mailbox);
  imap_cmd_add(cmd, " ");
  cmd_status_items(c, cmd);
  return cmd;
}

gboolean imap_status(ImapConn *c, const char *mailbox, ImapStatusInfo *out, GError **error) {
  memset(out, 0, sizeof *out);
  if (!cmd_status_sync(c, &mailbox, 1, error))
    return FALSE;
  if (!imap_conn_run(c, cmd_status_new(c, mailbox), cmd_status_info_handler, out, NULL, error))
    return FALSE;
  if (out->uidvalidity == 0) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_PROTOCOL, "no STATUS answer for %s", mailbox);
    return FALSE;
  }
  return TRUE;
}

typedef struct {
  const char *const *mailboxes;
  guint n;
  ImapStatusInfo *out;
  GHashTable *index; /* name -> i + 1, for a LIST-STATUS of many */
} CmdStatusMany;

static gboolean cmd_status_many_handler(ImapResponse *r, gpointer user) {
  CmdStatusMany *ctx = user;
  if (r->kind == IMAP_RESP_UNTAGGED && ctx->index != NULL && g_strcmp0(r->name, "LIST") == 0)
    return TRUE; /* the LIST-STATUS's own entries: the tree is listed apart */
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "STATUS") != 0 || r->args.n_items < 2)
    return FALSE;
  const char *name = imap_val_str(&r->args.items[0]);
  if (name == NULL)
    return TRUE;
  if (ctx->index != NULL) {
    guint i = GPOINTER_TO_UINT(g_hash_table_lookup(ctx->index, name));
    return i == 0 || cmd_status_info_handler(r, &ctx->out[i - 1]);
  }
  for (guint i = 0; i < ctx->n; i++)
    if (strcmp(name, ctx->mailboxes[i]) == 0)
      return cmd_status_info_handler(r, &ctx->out[i]);
  return TRUE;
}

/* One command for all (RFC 5819): with 2,000 folders in use, a round was
 * 2,000 STATUS, 250 round trips (5 s through 20 ms), and the mount could
 * confirm only 64 saved listings.  The server answers for every mailbox;
 * those not asked for are dropped. */
static gboolean cmd_status_by_list(ImapConn *c, const char *const *mailboxes, guint n,
                                   ImapStatusInfo *out, GError **error) {
  g_autoptr(GHashTable) index = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < n; i++)
    g_hash_table_insert(index, (gpointer)mailboxes[i], GUINT_TO_POINTER(i + 1));
  ImapCmd *cmd = imap_cmd_new("LIST \"\" \"*\" RETURN (STATUS ");
  cmd_status_items(c, cmd);
  imap_cmd_add(cmd, ")");
  CmdStatusMany ctx = {mailboxes, n, out, index};
  return imap_conn_run(c, cmd, cmd_status_many_handler, &ctx, NULL, error);
}

gboolean imap_status_many(ImapConn *c, const char *const *mailboxes, guint n, ImapStatusInfo *out,
                          GError **error) {
  memset(out, 0, n * sizeof *out);
  if (!cmd_status_sync(c, mailboxes, n, error))
    return FALSE;
  if (n > IMAP_STATUS_LIST_MIN && imap_conn_has(c, IMAP_CAP_LIST_STATUS)) {
    g_autoptr(GError) local = NULL;
    if (cmd_status_by_list(c, mailboxes, n, out, &local))
      return TRUE;
    if (imap_conn_is_broken(c)) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
    g_debug("LIST-STATUS refused (%s): asking STATUS of each", local->message);
    memset(out, 0, n * sizeof *out);
  }
  for (guint i = 0; i < n; i += IMAP_PIPELINE_MAX) {
    guint k = MIN(n - i, IMAP_PIPELINE_MAX);
    ImapCmd *cmds[IMAP_PIPELINE_MAX];
    for (guint j = 0; j < k; j++)
      cmds[j] = cmd_status_new(c, mailboxes[i + j]);
    CmdStatusMany ctx = {mailboxes + i, k, out + i, NULL};
    g_autoptr(GError) local = NULL;
    /* A NO for one (deleted meanwhile) leaves its answer empty; only a
     * dead connection stops the lot. */
    if (!imap_conn_run_pipeline(c, cmds, k, cmd_status_many_handler, &ctx, NULL, &local) &&
        imap_conn_is_broken(c)) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
  }
  return TRUE;
}

char *imap_uidset_format(const guint32 *uids, guint n) {
  GString *s = g_string_new(NULL);
  for (guint i = 0; i < n;) {
    guint j = i;
    while (j + 1 < n && uids[j + 1] == uids[j] + 1)
      j++;
    if (s->len)
      g_string_append_c(s, ',');
    if (j == i)
      g_string_append_printf(s, "%u", uids[i]);
    else
      g_string_append_printf(s, "%u:%u", uids[i], uids[j]);
    i = j + 1;
  }
  return g_string_free(s, FALSE);
}

/* ==== write operations (issue 4) ======================================
 * UID STORE / UID EXPUNGE / UID COPY / UID MOVE / APPEND / CREATE / DELETE
 * / RENAME / STATUS / UID SEARCH.  Mailbox names and dates go out through
 * imap_cmd_add_string(); flags are checked to be atoms (imap_flag_valid)
 * before they are written as protocol text; the message is a literal. */

static const char *const cmd_system_flags[] = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen",
                                               "\\Draft"};

/* atom-char of RFC 3501 (ATOM-CHAR: any CHAR except atom-specials). */
static gboolean cmd_atom_char(guchar ch) {
  return ch > 0x20 && ch < 0x7f && strchr("(){%*\"\\]", ch) == NULL;
}

/* The canonical spelling of flag, or NULL when it may not be stored. */
static const char *cmd_flag_canonical(const char *flag) {
  if (flag[0] == '\\') {
    for (gsize i = 0; i < G_N_ELEMENTS(cmd_system_flags); i++)
      if (g_ascii_strcasecmp(flag, cmd_system_flags[i]) == 0)
        return cmd_system_flags[i];
    return NULL; /* \Recent, \*, unknown extensions */
  }
  if (flag[0] == '\0')
    return NULL;
  for (const char *p = flag; *p != '\0'; p++)
    if (!cmd_atom_char((guchar)*p))
      return NULL;
  return flag;
}

gboolean imap_flag_valid(const char *flag) { return flag != NULL && cmd_flag_canonical(flag) != NULL; }

char **imap_flags_parse(const char *text, GError **error) {
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(g_free);
  g_auto(GStrv) words = g_strsplit_set(text, " \t", -1);
  for (char **w = words; *w != NULL; w++) {
    if (**w == '\0')
      continue;
    const char *canon = cmd_flag_canonical(*w);
    if (canon == NULL) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID,
                  "\"%s\" is not a flag that can be set (\\Answered \\Flagged \\Deleted "
                  "\\Seen \\Draft or a keyword atom)", *w);
      return NULL;
    }
    gboolean dup = FALSE;
    for (guint i = 0; i < out->len && !dup; i++)
      dup = g_ascii_strcasecmp(g_ptr_array_index(out, i), canon) == 0;
    if (!dup)
      g_ptr_array_add(out, g_strdup(canon));
  }
  g_ptr_array_add(out, NULL);
  return (char **)g_ptr_array_free(g_steal_pointer(&out), FALSE);
}

/* " (f1 f2)" after checking every flag; FALSE if one is bad. */
static gboolean cmd_add_flag_list(ImapCmd *cmd, const char *const *flags, GError **error) {
  imap_cmd_add(cmd, "(");
  for (guint i = 0; flags != NULL && flags[i] != NULL; i++) {
    const char *canon = cmd_flag_canonical(flags[i]);
    if (canon == NULL) {
      g_set_error(error, IFS_ERROR, IFS_ERROR_INVALID, "bad flag \"%s\"", flags[i]);
      return FALSE;
    }
    imap_cmd_add(cmd, "%s%s", i > 0 ? " " : "", canon);
  }
  imap_cmd_add(cmd, ")");
  return TRUE;
}

typedef struct {
  guint32 uid;
  char *flags;
} CmdFlagsCtx;

static gboolean cmd_flags_handler(ImapResponse *r, gpointer user) {
  CmdFlagsCtx *ctx = user;
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "FETCH") != 0 ||
      r->args.n_items < 1 || r->args.items[0].type != IMAP_VAL_LIST)
    return FALSE;
  const ImapVal *atts = &r->args.items[0];
  guint32 uid;
  const ImapVal *v = imap_fetch_get(atts, "UID", NULL);
  if (v == NULL || !imap_val_to_u32(v, &uid) || uid != ctx->uid)
    return FALSE;
  const ImapVal *f = imap_fetch_get(atts, "FLAGS", NULL);
  if (f == NULL || f->type != IMAP_VAL_LIST)
    return FALSE;
  g_free(ctx->flags);
  ctx->flags = cmd_canonical_flags(f);
  return FALSE; /* let others (dircache watchers) see the change too */
}

gboolean imap_store_flags(ImapConn *c, guint32 uid, ImapStoreMode mode, const char *const *flags,
                          gboolean silent, char **flags_out, GError **error) {
  static const char *const ops[] = {"", "+", "-"};
  g_autoptr(ImapCmd) cmd =
      imap_cmd_new("UID STORE %u %sFLAGS%s ", uid, ops[mode], silent ? ".SILENT" : "");
  if (!cmd_add_flag_list(cmd, flags, error))
    return FALSE;
  CmdFlagsCtx ctx = {.uid = uid};
  if (!imap_conn_run(c, g_steal_pointer(&cmd), cmd_flags_handler, &ctx, NULL, error)) {
    g_free(ctx.flags);
    return FALSE;
  }
  if (flags_out != NULL)
    *flags_out = ctx.flags;
  else
    g_free(ctx.flags);
  return TRUE;
}

gboolean imap_fetch_flags(ImapConn *c, guint32 uid, char **flags_out, GError **error) {
  CmdFlagsCtx ctx = {.uid = uid};
  if (!imap_conn_run(c, imap_cmd_new("UID FETCH %u (UID FLAGS)", uid), cmd_flags_handler, &ctx,
                     NULL, error)) {
    g_free(ctx.flags); /* the FETCH came, the tagged reply did not */
    return FALSE;
  }
  if (ctx.flags == NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_FOUND, "message UID %u no longer exists", uid);
    return FALSE;
  }
  *flags_out = ctx.flags;
  return TRUE;
}

gboolean imap_uid_expunge(ImapConn *c, const char *uidset, GError **error) {
  if (!imap_conn_has(c, IMAP_CAP_UIDPLUS)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                "the server has no UIDPLUS, so one message cannot be expunged safely");
    return FALSE;
  }
  return imap_conn_run(c, imap_cmd_new("UID EXPUNGE %s", uidset), NULL, NULL, NULL, error);
}

/* What a pipeline that works on one message learnt of it: its flags and
 * sequence number (FETCH), whether an expunge of it was reported
 * (VANISHED, or EXPUNGE of its sequence number), and COPYUID. */
typedef struct {
  CmdFlagsCtx flags;
  guint32 seq;
  gboolean gone;
  ImapCopyUid *cu;
} CmdOneCtx;

static gboolean cmd_copyuid_handler(ImapResponse *r, gpointer user);

static gboolean cmd_set_has(const char *set, guint32 uid) {
  g_autoptr(GArray) ranges = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
  if (set == NULL || !imap_parse_uid_set(set, ranges))
    return FALSE;
  for (guint i = 0; i < ranges->len; i++) {
    const ImapUidRange *r = &g_array_index(ranges, ImapUidRange, i);
    if (uid >= r->lo && uid <= r->hi)
      return TRUE;
  }
  return FALSE;
}

static gboolean cmd_one_handler(ImapResponse *r, gpointer user) {
  CmdOneCtx *ctx = user;
  if (r->kind == IMAP_RESP_UNTAGGED && r->has_number && g_strcmp0(r->name, "FETCH") == 0 &&
      r->args.n_items >= 1 && r->args.items[0].type == IMAP_VAL_LIST) {
    guint32 uid;
    const ImapVal *v = imap_fetch_get(&r->args.items[0], "UID", NULL);
    if (v != NULL && imap_val_to_u32(v, &uid) && uid == ctx->flags.uid)
      ctx->seq = (guint32)r->number;
  } else if (r->kind == IMAP_RESP_UNTAGGED && r->has_number &&
             g_strcmp0(r->name, "EXPUNGE") == 0 && ctx->seq != 0) {
    if (r->number == ctx->seq) {
      ctx->gone = TRUE;
      ctx->seq = 0;
    } else if (r->number < ctx->seq) {
      ctx->seq--; /* the ones after an expunged message move down */
    }
  } else if (r->kind == IMAP_RESP_UNTAGGED && g_strcmp0(r->name, "VANISHED") == 0 &&
             r->args.n_items >= 1 &&
             cmd_set_has(imap_val_str(&r->args.items[r->args.n_items - 1]), ctx->flags.uid)) {
    ctx->gone = TRUE;
  }
  /* FALSE: the dircache's watchers see the expunges and flags too. */
  return cmd_flags_handler(r, &ctx->flags) || cmd_copyuid_handler(r, ctx->cu);
}

gboolean imap_flags_have(const char *flags, const char *flag) {
  g_auto(GStrv) v = g_strsplit(flags, " ", -1);
  for (char **p = v; *p != NULL; p++)
    if (g_ascii_strcasecmp(*p, flag) == 0)
      return TRUE;
  return FALSE;
}

gboolean imap_uid_delete(ImapConn *c, guint32 uid, gboolean *found, GError **error) {
  *found = FALSE;
  if (!imap_conn_has(c, IMAP_CAP_UIDPLUS))
    return imap_uid_expunge(c, "", error); /* the refusal */
  static const char *const deleted[] = {"\\Deleted", NULL};
  ImapCmd *cmds[3] = {imap_cmd_new("UID FETCH %u (UID FLAGS)", uid),
                      imap_cmd_new("UID STORE %u +FLAGS.SILENT (\\Deleted)", uid),
                      imap_cmd_new("UID EXPUNGE %u", uid)};
  CmdOneCtx ctx = {.flags = {.uid = uid}};
  GError *local = NULL;
  gboolean ok = imap_conn_run_pipeline(c, cmds, 3, cmd_one_handler, &ctx, NULL, &local);
  g_autofree char *flags = g_steal_pointer(&ctx.flags.flags);
  *found = flags != NULL;
  if (ok && *found && !ctx.gone) {
    /* Dovecot may run the pipelined UID EXPUNGE on a view that does not
     * show the STORE's \Deleted yet (seen without QRESYNC: OK, nothing
     * expunged).  Alone, after the STORE's OK, it does. */
    ok = imap_conn_run(c, imap_cmd_new("UID EXPUNGE %u", uid), cmd_one_handler, &ctx, NULL,
                       &local);
  }
  if (ok && *found && !ctx.gone) {
    /* An OK, yet no expunge of it reported: a server that ignored the
     * \Deleted (not a flag it keeps), say.  Not taken for done. */
    ok = FALSE;
    g_set_error(&local, IFS_ERROR, IFS_ERROR_FAILED,
                "the server did not expunge message UID %u (it answered OK)", uid);
  }
  if (!ok && *found && !ctx.gone && !imap_conn_is_broken(c) &&
      !imap_flags_have(flags, "\\Deleted")) {
    /* Refused: take back the \Deleted this set (not one set before). */
    g_autoptr(GError) ignored = NULL;
    imap_store_flags(c, uid, IMAP_STORE_REMOVE, deleted, TRUE, NULL, &ignored);
  }
  g_free(ctx.flags.flags); /* a FETCH of it during the second expunge */
  if (!ok)
    g_propagate_error(error, local);
  return ok;
}

gboolean imap_uid_move_one(ImapConn *c, guint32 uid, const char *dest, ImapCopyUid *cu,
                           gboolean *found, GError **error) {
  *found = FALSE;
  imap_copyuid_clear(cu);
  if (!imap_conn_has(c, IMAP_CAP_MOVE) || !imap_conn_has(c, IMAP_CAP_UIDPLUS)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED, "the server has no MOVE or UIDPLUS");
    return FALSE;
  }
  ImapCmd *cmds[2] = {imap_cmd_new("UID FETCH %u (UID FLAGS)", uid),
                      imap_cmd_new("UID MOVE %u ", uid)};
  imap_cmd_add_string(cmds[1], dest);
  CmdOneCtx ctx = {.flags = {.uid = uid}, .cu = cu};
  ImapResponse *tagged[2] = {NULL, NULL};
  gboolean ok = imap_conn_run_pipeline(c, cmds, 2, cmd_one_handler, &ctx, tagged, error);
  if (cu->uidvalidity == 0 && tagged[1] != NULL && tagged[1]->status == IMAP_STATUS_OK &&
      g_strcmp0(tagged[1]->code, "COPYUID") == 0)
    imap_parse_copyuid(&tagged[1]->code_args, cu);
  for (guint i = 0; i < 2; i++)
    if (tagged[i] != NULL)
      imap_response_free(tagged[i]);
  g_free(ctx.flags.flags);
  /* Moved if COPYUID names it: on a view not synced, a message another
   * client expunged may still answer the FETCH, and its MOVE moves
   * nothing.  COPYUID is only a SHOULD for MOVE (RFC 6851): without any,
   * an expunge of it reported with the OK says it went. */
  *found = imap_copyuid_lookup(cu, uid) != 0 || (ok && cu->uidvalidity == 0 && ctx.gone);
  return ok;
}

void imap_copyuid_clear(ImapCopyUid *cu) {
  if (cu->src != NULL)
    g_array_unref(cu->src);
  if (cu->dst != NULL)
    g_array_unref(cu->dst);
  memset(cu, 0, sizeof *cu);
}

guint32 imap_copyuid_lookup(const ImapCopyUid *cu, guint32 src_uid) {
  if (cu->uidvalidity == 0 || cu->src == NULL)
    return 0;
  for (guint i = 0; i < cu->src->len; i++)
    if (g_array_index(cu->src, guint32, i) == src_uid)
      return g_array_index(cu->dst, guint32, i);
  return 0;
}

/* A UID set -> UIDs in order; FALSE on junk or more than max UIDs. */
static gboolean cmd_expand_uid_set(const char *s, GArray *out, guint max) {
  g_autoptr(GArray) ranges = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
  if (!imap_parse_uid_set(s, ranges))
    return FALSE;
  for (guint i = 0; i < ranges->len; i++) {
    const ImapUidRange *r = &g_array_index(ranges, ImapUidRange, i);
    if ((guint64)out->len + (r->hi - r->lo) + 1 > max)
      return FALSE;
    for (guint64 u = r->lo; u <= r->hi; u++) {
      guint32 v = (guint32)u;
      g_array_append_val(out, v);
    }
  }
  return TRUE;
}

gboolean imap_parse_copyuid(const ImapVal *code_args, ImapCopyUid *cu) {
  imap_copyuid_clear(cu);
  guint32 uv;
  if (code_args->n_items != 3 || !imap_val_to_u32(&code_args->items[0], &uv) || uv == 0 ||
      imap_val_str(&code_args->items[1]) == NULL || imap_val_str(&code_args->items[2]) == NULL)
    return FALSE;
  cu->src = g_array_new(FALSE, FALSE, sizeof(guint32));
  cu->dst = g_array_new(FALSE, FALSE, sizeof(guint32));
  if (!cmd_expand_uid_set(code_args->items[1].data, cu->src, 1u << 20) ||
      !cmd_expand_uid_set(code_args->items[2].data, cu->dst, 1u << 20) ||
      cu->src->len != cu->dst->len) {
    imap_copyuid_clear(cu);
    return FALSE;
  }
  cu->uidvalidity = uv;
  return TRUE;
}

/* COPYUID comes in the tagged OK (COPY) or an untagged OK before the
 * EXPUNGEs (MOVE, RFC 6851 section 4.3). */
static gboolean cmd_copyuid_handler(ImapResponse *r, gpointer user) {
  ImapCopyUid *cu = user;
  if (cu != NULL && r->kind == IMAP_RESP_UNTAGGED && r->status == IMAP_STATUS_OK &&
      g_strcmp0(r->code, "COPYUID") == 0) {
    imap_parse_copyuid(&r->code_args, cu);
    return TRUE;
  }
  return FALSE;
}

static gboolean cmd_copy_or_move(ImapConn *c, const char *verb, const char *uidset,
                                 const char *dest, ImapCopyUid *cu, GError **error) {
  if (cu != NULL)
    imap_copyuid_clear(cu);
  ImapCmd *cmd = imap_cmd_new("UID %s %s ", verb, uidset);
  imap_cmd_add_string(cmd, dest);
  g_autoptr(ImapResponse) tagged = NULL;
  if (!imap_conn_run(c, cmd, cmd_copyuid_handler, cu, &tagged, error))
    return FALSE;
  if (cu != NULL && cu->uidvalidity == 0 && g_strcmp0(tagged->code, "COPYUID") == 0)
    imap_parse_copyuid(&tagged->code_args, cu);
  return TRUE;
}

gboolean imap_uid_copy(ImapConn *c, const char *uidset, const char *dest, ImapCopyUid *cu,
                       GError **error) {
  return cmd_copy_or_move(c, "COPY", uidset, dest, cu, error);
}

gboolean imap_uid_move(ImapConn *c, const char *uidset, const char *dest, ImapCopyUid *cu,
                       GError **error) {
  if (!imap_conn_has(c, IMAP_CAP_MOVE)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED, "the server has no MOVE");
    return FALSE;
  }
  return cmd_copy_or_move(c, "MOVE", uidset, dest, cu, error);
}

static gboolean cmd_bye_handler(ImapResponse *r, gpointer user) {
  if (r->kind == IMAP_RESP_UNTAGGED && r->status == IMAP_STATUS_BYE)
    *(gboolean *)user = TRUE;
  return FALSE; /* it goes on as unsolicited, as before */
}

gboolean imap_append(ImapConn *c, const char *mailbox, const char *const *flags, gint64 date,
                     GBytes *message, guint32 *uidvalidity, guint32 *uid, GError **error) {
  *uidvalidity = *uid = 0;
  g_autoptr(ImapCmd) cmd = imap_cmd_new("APPEND ");
  imap_cmd_add_string(cmd, mailbox);
  if (flags != NULL && flags[0] != NULL) {
    imap_cmd_add(cmd, " ");
    if (!cmd_add_flag_list(cmd, flags, error))
      return FALSE;
  }
  if (date > 0) {
    char buf[32];
    imap_format_internaldate(date, buf);
    imap_cmd_add(cmd, " ");
    imap_cmd_add_string(cmd, buf);
  }
  imap_cmd_add(cmd, " ");
  imap_cmd_add_literal(cmd, message);
  /* A session whose selected mailbox another client deleted answers its
   * next NOOP or APPEND with BYE (Dovecot): an APPEND sent alone may or
   * may not have been stored then, and cannot safely go again.  A NOOP
   * sent first, in the same write, takes that BYE instead: a BYE before
   * the NOOP's reply means the server never read the APPEND. */
  guint first = imap_conn_selected(c) != NULL ? 0 : 1;
  ImapCmd *cmds[2] = {first == 0 ? imap_cmd_new("NOOP") : NULL, g_steal_pointer(&cmd)};
  ImapResponse *replies[2] = {NULL, NULL};
  gboolean bye = FALSE;
  g_autoptr(GError) local = NULL;
  gboolean ok = imap_conn_run_pipeline(c, cmds + first, 2 - first, cmd_bye_handler, &bye,
                                       replies + first, &local);
  gboolean never_ran = first == 0 && !ok && bye && replies[0] == NULL;
  g_clear_pointer(&replies[0], imap_response_free);
  g_autoptr(ImapResponse) tagged = replies[1];
  if (never_ran) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_RUN, "%s before reading the APPEND", local->message);
    return FALSE;
  }
  /* The APPEND's own reply decides (not a NOOP's). */
  if (tagged == NULL || tagged->status != IMAP_STATUS_OK) {
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
  if (g_strcmp0(tagged->code, "APPENDUID") == 0 && tagged->code_args.n_items == 2) {
    guint32 uv, u;
    /* One message appended: its UID set is one number. */
    if (imap_val_to_u32(&tagged->code_args.items[0], &uv) &&
        imap_val_to_u32(&tagged->code_args.items[1], &u) && uv != 0 && u != 0) {
      *uidvalidity = uv;
      *uid = u;
    }
  }
  return TRUE;
}

static gboolean cmd_is_inbox(const char *mailbox) { return g_ascii_strcasecmp(mailbox, "INBOX") == 0; }

static gboolean cmd_simple_mailbox(ImapConn *c, const char *verb, const char *mailbox,
                                   const char *to, GError **error) {
  ImapCmd *cmd = imap_cmd_new("%s ", verb);
  imap_cmd_add_string(cmd, mailbox);
  if (to != NULL) {
    imap_cmd_add(cmd, " ");
    imap_cmd_add_string(cmd, to);
  }
  return imap_conn_run(c, cmd, NULL, NULL, NULL, error);
}

gboolean imap_create(ImapConn *c, const char *mailbox, GError **error) {
  return cmd_simple_mailbox(c, "CREATE", mailbox, NULL, error);
}

gboolean imap_delete(ImapConn *c, const char *mailbox, GError **error) {
  if (cmd_is_inbox(mailbox)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_REFUSED, "INBOX is never deleted");
    return FALSE;
  }
  if (!cmd_simple_mailbox(c, "DELETE", mailbox, NULL, error))
    return FALSE;
  /* Dovecot drops a session whose selected mailbox it deleted (BYE after
   * the OK), and one whose selected mailbox was renamed answers its next
   * NOOP with BYE: such a connection is not used again. */
  if (g_strcmp0(imap_conn_selected(c), mailbox) == 0)
    imap_conn_set_broken(c);
  return TRUE;
}

gboolean imap_rename(ImapConn *c, const char *from, const char *to, GError **error) {
  if (cmd_is_inbox(from) || cmd_is_inbox(to)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_REFUSED,
                "INBOX is never renamed (RENAME INBOX moves all its mail)");
    return FALSE;
  }
  if (!cmd_simple_mailbox(c, "RENAME", from, to, error))
    return FALSE;
  if (g_strcmp0(imap_conn_selected(c), from) == 0)
    imap_conn_set_broken(c); /* as after DELETE */
  return TRUE;
}

gboolean imap_status_messages(ImapConn *c, const char *mailbox, guint32 *messages,
                              GError **error) {
  ImapStatusInfo st;
  if (!imap_status(c, mailbox, &st, error))
    return FALSE;
  *messages = st.messages;
  return TRUE;
}

static gboolean cmd_search_handler(ImapResponse *r, gpointer user) {
  GArray *uids = user;
  if (r->kind != IMAP_RESP_UNTAGGED)
    return FALSE;
  if (g_strcmp0(r->name, "SEARCH") == 0) {
    for (guint i = 0; i < r->args.n_items; i++) {
      guint32 u;
      if (imap_val_to_u32(&r->args.items[i], &u))
        g_array_append_val(uids, u);
    }
    return TRUE;
  }
  if (g_strcmp0(r->name, "ESEARCH") == 0) {
    for (guint i = 0; i + 1 < r->args.n_items; i++)
      if (imap_val_is_atom(&r->args.items[i], "ALL") &&
          imap_val_str(&r->args.items[i + 1]) != NULL)
        cmd_expand_uid_set(r->args.items[i + 1].data, uids, 1u << 20);
    return TRUE;
  }
  return FALSE;
}

gboolean imap_search_same_size(ImapConn *c, guint64 size, const char *message_id, GArray *uids,
                               GError **error) {
  g_return_val_if_fail(size >= 1, FALSE);
  ImapCmd *cmd = imap_cmd_new("UID SEARCH UNDELETED LARGER %" G_GUINT64_FORMAT
                              " SMALLER %" G_GUINT64_FORMAT,
                              size - 1, size + 1);
  gboolean ascii = message_id != NULL && *message_id != '\0' && strlen(message_id) <= 900;
  for (const char *p = message_id; ascii && *p != '\0'; p++)
    ascii = *p >= 0x20 && *p < 0x7f;
  if (ascii) {
    imap_cmd_add(cmd, " HEADER Message-ID ");
    imap_cmd_add_string(cmd, message_id);
  }
  return imap_conn_run(c, cmd, cmd_search_handler, uids, NULL, error);
}
