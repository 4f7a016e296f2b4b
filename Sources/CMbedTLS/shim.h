// mbedTLS through one header. Debian 12 ships mbedTLS 2.28; the code must also build against 3.x,
// so the few calls whose names or signatures changed between them are wrapped here.
#ifndef LOCALPROXY_CMBEDTLS_SHIM_H
#define LOCALPROXY_CMBEDTLS_SHIM_H
#include <stddef.h>
#include <mbedtls/version.h>
#if MBEDTLS_VERSION_NUMBER < 0x03000000
#include <mbedtls/config.h>
#endif
#include <mbedtls/base64.h>
#include <mbedtls/sha1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/pk.h>

/// SHA-1 of `length` bytes into `digest` (20 bytes). Returns 0 on success.
static inline int lp_sha1(const unsigned char *input, size_t length, unsigned char digest[20]) {
#if MBEDTLS_VERSION_NUMBER < 0x03000000
    return mbedtls_sha1_ret(input, length, digest);
#else
    return mbedtls_sha1(input, length, digest);
#endif
}

/// Requires TLS 1.2 or newer on a configuration.
static inline void lp_ssl_conf_min_tls12(mbedtls_ssl_config *conf) {
#if MBEDTLS_VERSION_NUMBER < 0x03000000
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
#else
    mbedtls_ssl_conf_min_tls_version(conf, MBEDTLS_SSL_VERSION_TLS1_2);
#endif
}

/// Loads a PEM or DER private key file (unencrypted). 3.x wants the RNG for blinding.
static inline int lp_pk_parse_keyfile(mbedtls_pk_context *pk, const char *path, mbedtls_ctr_drbg_context *drbg) {
#if MBEDTLS_VERSION_NUMBER < 0x03000000
    (void)drbg;
    return mbedtls_pk_parse_keyfile(pk, path, NULL);
#else
    return mbedtls_pk_parse_keyfile(pk, path, NULL, mbedtls_ctr_drbg_random, drbg);
#endif
}

/// The error codes Swift code compares against, as constants (the macros are negative hex
/// literals, which not every importer mode turns into Swift constants).
enum {
    LP_ERR_SSL_WANT_READ = MBEDTLS_ERR_SSL_WANT_READ,
    LP_ERR_SSL_WANT_WRITE = MBEDTLS_ERR_SSL_WANT_WRITE,
    LP_ERR_SSL_PEER_CLOSE_NOTIFY = MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY,
    LP_ERR_SSL_CONN_EOF = MBEDTLS_ERR_SSL_CONN_EOF,
    LP_ERR_X509_CERT_VERIFY_FAILED = MBEDTLS_ERR_X509_CERT_VERIFY_FAILED,
    LP_ERR_X509_FILE_IO_ERROR = MBEDTLS_ERR_X509_FILE_IO_ERROR,
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
    LP_ERR_SSL_NEW_SESSION_TICKET = MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET,
#else
    LP_ERR_SSL_NEW_SESSION_TICKET = 1, /* never returned by 2.x (errors are negative) */
#endif
};
#endif
