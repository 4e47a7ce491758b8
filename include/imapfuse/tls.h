/* tls.h - OpenSSL client setup and verification.
 *
 * Owns: one SSL_CTX per mount (system trust store plus an optional extra CA
 * file, TLS 1.2 minimum) and the per-connection handshake with the host name
 * or IP address checked by OpenSSL itself (SSL_set1_host), never by hand.
 */
#pragma once

#include <glib.h>
#include <openssl/ssl.h>

G_BEGIN_DECLS

SSL_CTX *tls_ctx_new(const char *cafile, GError **error);
/* Handshake on a connected blocking socket (its timeouts apply).  Returns an
 * SSL bound to fd, or NULL with IFS_ERROR_TLS naming the cause. */
SSL *tls_handshake(SSL_CTX *ctx, int fd, const char *host, GError **error);
/* Last OpenSSL error as text (for messages), never NULL. */
char *tls_error_string(void);

G_END_DECLS
