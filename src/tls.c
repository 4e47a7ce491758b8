/* tls.c - OpenSSL context and handshake with certificate verification. */
#include "imapfuse/tls.h"

#include <errno.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "imapfuse/errors.h"

char *tls_error_string(void) {
  unsigned long e = ERR_get_error();
  char buf[256];
  if (e == 0)
    return g_strdup("unknown TLS error");
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return g_strdup(buf);
}

SSL_CTX *tls_ctx_new(const char *cafile, GError **error) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    g_autofree char *why = tls_error_string();
    g_set_error(error, IFS_ERROR, IFS_ERROR_TLS, "cannot create TLS context: %s", why);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_set_default_verify_paths(ctx) != 1)
    ERR_clear_error(); /* no system store is not fatal when cafile is given */
  if (cafile != NULL && SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
    g_autofree char *why = tls_error_string();
    g_set_error(error, IFS_ERROR, IFS_ERROR_TLS, "cannot load CA file %s: %s", cafile, why);
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

static gboolean tls_is_ip(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

SSL *tls_handshake(SSL_CTX *ctx, int fd, const char *host, GError **error) {
  SSL *ssl = SSL_new(ctx);
  if (ssl == NULL)
    goto fail;
  if (tls_is_ip(host)) {
    /* An IP address is checked against the certificate's IP SANs. */
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
      goto fail;
  } else {
    if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
      goto fail;
  }
  if (SSL_set_fd(ssl, fd) != 1)
    goto fail;
  int rc = SSL_connect(ssl);
  if (rc != 1) {
    int saved = errno, e = SSL_get_error(ssl, rc);
    long vr = SSL_get_verify_result(ssl);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
        (e == SSL_ERROR_SYSCALL && (saved == EAGAIN || saved == EWOULDBLOCK))) {
      /* The socket's timeout: a server that does not answer, as in any
       * other step (so the pool mutes logins), not a TLS failure. */
      g_set_error(error, IFS_ERROR, IFS_ERROR_TIMEOUT,
                  "no answer from %s during the TLS handshake", host);
      ERR_clear_error();
    } else if (vr != X509_V_OK) {
      /* Say how to trust it: the message alone sent users searching. */
      g_set_error(error, IFS_ERROR, IFS_ERROR_TLS,
                  "TLS certificate verification failed for %s: %s%s", host,
                  X509_verify_cert_error_string(vr),
                  vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH
                      ? " (use the name the certificate was made for)"
                      : "; if you trust this server, give its CA or its own certificate with "
                        "-o cafile=PATH");
      ERR_clear_error();
    } else {
      /* What a plain IMAP port answers to a TLS hello. */
      gboolean plain = ERR_GET_REASON(ERR_peek_error()) == SSL_R_WRONG_VERSION_NUMBER;
      /* A reset or a close during the handshake leaves OpenSSL's queue
       * empty: say what the socket said ("unknown TLS error" did not). */
      g_autofree char *why = e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && saved != 0
                                 ? g_strdup(g_strerror(saved))
                                 : tls_error_string();
      g_set_error(error, IFS_ERROR, IFS_ERROR_TLS, "TLS handshake with %s failed: %s%s", host,
                  why, plain ? " (a plain IMAP port? then use imap://, which asks for STARTTLS)"
                             : "");
    }
    SSL_free(ssl);
    return NULL;
  }
  return ssl;

fail : {
  g_autofree char *why = tls_error_string();
  g_set_error(error, IFS_ERROR, IFS_ERROR_TLS, "TLS setup failed: %s", why);
  if (ssl != NULL)
    SSL_free(ssl);
  return NULL;
}
}
