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
#endif
