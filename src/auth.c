/* auth.c - AUTHENTICATE PLAIN (with SASL-IR when offered), else LOGIN. */
#include "imapfuse/auth.h"

#include <string.h>

#include "imapfuse/errors.h"

/* base64("\0user\0password"), wiped by the caller after use. */
static char *auth_plain_blob(const ImapEndpoint *ep) {
  gsize ulen = strlen(ep->user), plen = strlen(ep->password);
  gsize n = ulen + plen + 2;
  g_autofree guchar *raw = g_malloc(n);
  raw[0] = 0;
  memcpy(raw + 1, ep->user, ulen);
  raw[ulen + 1] = 0;
  memcpy(raw + ulen + 2, ep->password, plen);
  char *b64 = g_base64_encode(raw, n);
  memset(raw, 0, n);
  return b64;
}

static char *auth_continue_plain(const ImapResponse *r, gpointer user) {
  (void)r;
  return g_strdup(user);
}

static void auth_wipe(char *s) {
  if (s != NULL)
    memset(s, 0, strlen(s));
  g_free(s);
}

gboolean auth_login(ImapConn *c, const ImapEndpoint *ep, GError **error) {
  g_autoptr(GError) local = NULL;
  gboolean ok;
  if (imap_conn_has(c, IMAP_CAP_AUTH_PLAIN)) {
    char *blob = auth_plain_blob(ep);
    ImapCmd *cmd;
    if (imap_conn_has(c, IMAP_CAP_SASL_IR)) {
      cmd = imap_cmd_new("AUTHENTICATE PLAIN %s", blob);
    } else {
      cmd = imap_cmd_new("AUTHENTICATE PLAIN");
      imap_cmd_on_continue(cmd, auth_continue_plain, blob);
    }
    imap_cmd_set_secret(cmd);
    ok = imap_conn_run(c, cmd, NULL, NULL, NULL, &local);
    auth_wipe(blob);
  } else if (imap_conn_has(c, IMAP_CAP_LOGINDISABLED)) {
    g_set_error(error, IFS_ERROR, IFS_ERROR_UNSUPPORTED,
                "the server allows no login method imapfuse knows (LOGINDISABLED, no AUTH=PLAIN)%s",
                ep->tls == IMAP_TLS_NONE ? ": it wants TLS first; drop -o tls=off" : "");
    return FALSE;
  } else {
    ImapCmd *cmd = imap_cmd_new("LOGIN ");
    imap_cmd_add_string(cmd, ep->user);
    imap_cmd_add(cmd, " ");
    imap_cmd_add_string(cmd, ep->password);
    imap_cmd_set_secret(cmd);
    ok = imap_conn_run(c, cmd, NULL, NULL, NULL, &local);
  }
  if (ok)
    return TRUE;
  if (local->domain == IFS_ERROR &&
      (local->code == IFS_ERROR_NO || local->code == IFS_ERROR_BAD ||
       local->code == IFS_ERROR_AUTH))
    g_set_error(error, IFS_ERROR, IFS_ERROR_AUTH, "login as %s failed: %s", ep->user,
                local->message);
  else
    g_propagate_error(error, g_steal_pointer(&local));
  return FALSE;
}
