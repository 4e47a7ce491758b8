/* auth.h - logging in (SASL PLAIN with SASL-IR, AUTHENTICATE PLAIN, LOGIN).
 *
 * Owns: choosing a mechanism from the capabilities and sending credentials
 * in commands marked secret, so no trace or log ever shows them.
 */
#pragma once

#include <glib.h>

#include "imapfuse/conn.h"

G_BEGIN_DECLS

/* IFS_ERROR_AUTH when the server refuses, IFS_ERROR_UNSUPPORTED when no
 * usable mechanism is offered (e.g. LOGINDISABLED without AUTH=PLAIN). */
gboolean auth_login(ImapConn *c, const ImapEndpoint *ep, GError **error);

G_END_DECLS
