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
    if (g_str_equal(r->code, "HIGHESTMODSEQ"))
      return imap_val_to_u64(v, &info->highestmodseq);
  }
  if (r->has_number && g_strcmp0(r->name, "EXISTS") == 0) {
    info->exists = r->number;
    return TRUE;
  }
  return FALSE;
}

gboolean imap_select(ImapConn *c, const char *mailbox, ImapSelectInfo *info, GError **error) {
  ImapSelectInfo tmp = {0};
  ImapCmd *cmd = imap_cmd_new("SELECT ");
  imap_cmd_add_string(cmd, mailbox);
  /* A failed SELECT leaves nothing selected (RFC 3501 6.3.1). */
  imap_conn_set_selected(c, NULL, 0);
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

typedef struct {
  ImapMetaFn fn;
  gpointer user;
} CmdMetaCtx;

static gboolean cmd_meta_handler(ImapResponse *r, gpointer user) {
  CmdMetaCtx *ctx = user;
  if (r->kind != IMAP_RESP_UNTAGGED || g_strcmp0(r->name, "FETCH") != 0 ||
      r->args.n_items < 1 || r->args.items[0].type != IMAP_VAL_LIST)
    return FALSE;
  const ImapVal *atts = &r->args.items[0];
  ImapMsgMeta m = {0};
  const ImapVal *v = imap_fetch_get(atts, "UID", NULL);
  if (v == NULL || !imap_val_to_u32(v, &m.uid))
    return FALSE; /* no UID: not ours */
  if ((v = imap_fetch_get(atts, "RFC822.SIZE", NULL)) != NULL)
    m.has_size = imap_val_to_u64(v, &m.size);
  if ((v = imap_fetch_get(atts, "INTERNALDATE", NULL)) != NULL && imap_val_str(v) != NULL)
    m.has_date = imap_parse_internaldate(v->data, &m.date);
  if ((v = imap_fetch_get(atts, "MODSEQ", NULL)) != NULL && v->type == IMAP_VAL_LIST &&
      v->n_items == 1)
    imap_val_to_u64(&v->items[0], &m.modseq);
  g_autofree char *flags = NULL;
  if ((v = imap_fetch_get(atts, "FLAGS", NULL)) != NULL && v->type == IMAP_VAL_LIST) {
    flags = cmd_canonical_flags(v);
    m.has_flags = TRUE;
  }
  m.flags = flags != NULL ? flags : "";
  ctx->fn(&m, ctx->user);
  return TRUE;
}

gboolean imap_fetch_meta(ImapConn *c, const char *uidset, guint64 changedsince, ImapMetaFn fn,
                         gpointer user, GError **error) {
  CmdMetaCtx ctx = {fn, user};
  gboolean modseq = imap_conn_qresync_enabled(c) || imap_conn_has(c, IMAP_CAP_CONDSTORE);
  ImapCmd *cmd = imap_cmd_new("UID FETCH %s (UID RFC822.SIZE INTERNALDATE FLAGS%s)", uidset,
                              modseq ? " MODSEQ" : "");
  if (changedsince > 0 && modseq)
    imap_cmd_add(cmd, " (CHANGEDSINCE %" G_GUINT64_FORMAT ")", changedsince);
  return imap_conn_run(c, cmd, cmd_meta_handler, &ctx, NULL, error);
}

typedef struct {
  guint32 uid;         /* 0 = any (bulk) */
  const char *section; /* "BODY[]" or "BODY[]<" */
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
  const ImapVal *body = imap_fetch_get(atts, ctx->section, NULL);
  if (body == NULL)
    return FALSE; /* a flags update that happened to carry the UID */
  /* NIL means the server has no content for it: treat as empty. */
  GBytes *bytes = body->type == IMAP_VAL_NIL ? g_bytes_new(NULL, 0) : imap_response_bytes(r, body);
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

gboolean imap_fetch_body(ImapConn *c, guint32 uid, guint64 offset, guint64 length,
                         GBytes **out, GError **error) {
  CmdBodyCtx ctx = {.uid = uid};
  ImapCmd *cmd;
  if (length == 0) {
    ctx.section = "BODY[]";
    cmd = imap_cmd_new("UID FETCH %u BODY.PEEK[]", uid);
  } else {
    ctx.section = "BODY[]<";
    cmd = imap_cmd_new("UID FETCH %u BODY.PEEK[]<%" G_GUINT64_FORMAT ".%" G_GUINT64_FORMAT ">",
                       uid, offset, length);
  }
  if (!imap_conn_run(c, cmd, cmd_body_handler, &ctx, NULL, error)) {
    g_clear_pointer(&ctx.body, g_bytes_unref);
    return FALSE;
  }
  if (ctx.body == NULL) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_NOT_FOUND, "message UID %u no longer exists", uid);
    return FALSE;
  }
  *out = ctx.body;
  return TRUE;
}

gboolean imap_fetch_bodies(ImapConn *c, const char *uidset, ImapBodyFn fn, gpointer user,
                           GError **error) {
  CmdBodyCtx ctx = {.section = "BODY[]", .fn = fn, .user = user};
  ImapCmd *cmd = imap_cmd_new("UID FETCH %s BODY.PEEK[]", uidset);
  return imap_conn_run(c, cmd, cmd_body_handler, &ctx, NULL, error);
}

gboolean imap_noop(ImapConn *c, GError **error) {
  return imap_conn_run(c, imap_cmd_new("NOOP"), NULL, NULL, NULL, error);
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
