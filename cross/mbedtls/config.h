/*
 * localproxy: the mbedTLS 2.28 configuration of the static device builds.
 *
 * The proxy is a TLS 1.2 client of one kind of server (the tunnelling data plane, or a
 * local emulator), so everything else is left out: no server side, no DTLS, no session
 * tickets, no renegotiation, no CBC or legacy ciphers, no self tests, no threading (one
 * event loop thread). `make` copies this file over include/mbedtls/config.h of the
 * source it unpacks, so the library and the Swift code see one set of struct layouts
 * (`make check-abi` verifies that).
 *
 * What stays, and why:
 * - Key exchange ECDHE with RSA or ECDSA certificates: Amazon Trust Services roots and
 *   the service's chains are RSA 2048 and ECDSA P-256/P-384.
 * - AES-GCM (AES-NI on x86_64) and ChaCha20-Poly1305 (fast without AES instructions, as on
 *   Cortex-A7/A9).
 * - Curves: X25519, P-256, P-384.
 * - SHA-1 only because the WebSocket accept key is a SHA-1 (RFC 6455); certificate
 *   verification keeps mbedTLS's default profile, which refuses SHA-1 signatures.
 * - PEM and X.509 parsing from files (the -c option and the system CA bundle).
 * - mbedtls_strerror, so every TLS failure is named in the log.
 */
#ifndef MBEDTLS_CONFIG_H
#define MBEDTLS_CONFIG_H

/* System support */
#define MBEDTLS_HAVE_ASM
#define MBEDTLS_HAVE_TIME
#define MBEDTLS_HAVE_TIME_DATE
#define MBEDTLS_FS_IO

/* Curves and key exchanges */
#define MBEDTLS_ECP_DP_SECP256R1_ENABLED
#define MBEDTLS_ECP_DP_SECP384R1_ENABLED
#define MBEDTLS_ECP_DP_CURVE25519_ENABLED
#define MBEDTLS_ECP_NIST_OPTIM
#define MBEDTLS_KEY_EXCHANGE_ECDHE_RSA_ENABLED
#define MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA_ENABLED
#define MBEDTLS_PKCS1_V15

/* TLS */
#define MBEDTLS_SSL_ALL_ALERT_MESSAGES
#define MBEDTLS_SSL_EXTENDED_MASTER_SECRET
#define MBEDTLS_SSL_PROTO_TLS1_2
#define MBEDTLS_SSL_SERVER_NAME_INDICATION
#define MBEDTLS_X509_CHECK_KEY_USAGE
#define MBEDTLS_X509_CHECK_EXTENDED_KEY_USAGE

/* Modules */
#define MBEDTLS_AES_C
#if defined(__x86_64__) || defined(__amd64__)
#define MBEDTLS_AESNI_C
#endif
#define MBEDTLS_ASN1_PARSE_C
#define MBEDTLS_ASN1_WRITE_C
#define MBEDTLS_BASE64_C
#define MBEDTLS_BIGNUM_C
#define MBEDTLS_CHACHA20_C
#define MBEDTLS_CHACHAPOLY_C
#define MBEDTLS_CIPHER_C
#define MBEDTLS_CTR_DRBG_C
#define MBEDTLS_ECDH_C
#define MBEDTLS_ECDSA_C
#define MBEDTLS_ECP_C
#define MBEDTLS_ENTROPY_C
#define MBEDTLS_ERROR_C
#define MBEDTLS_GCM_C
#define MBEDTLS_MD_C
#define MBEDTLS_OID_C
#define MBEDTLS_PEM_PARSE_C
#define MBEDTLS_PK_C
#define MBEDTLS_PK_PARSE_C
#define MBEDTLS_POLY1305_C
#define MBEDTLS_RSA_C
#define MBEDTLS_SHA1_C
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA512_C
#define MBEDTLS_SSL_CLI_C
#define MBEDTLS_SSL_TLS_C
#define MBEDTLS_X509_USE_C
#define MBEDTLS_X509_CRT_PARSE_C

/* The accelerated record AEADs (cross/aead/): on when the build defines LP_AEAD_* (the
 * Makefile does per architecture), except in the files that compile mbedTLS's own
 * implementations under other names as the fallback (LP_PORTABLE_AEAD). */
#if !defined(LP_PORTABLE_AEAD)
#if defined(LP_AEAD_CHACHAPOLY_SODIUM)
#define MBEDTLS_CHACHAPOLY_ALT
#endif
#if defined(LP_AEAD_GCM_NETTLE)
#define MBEDTLS_GCM_ALT
#endif
#endif

#include "mbedtls/check_config.h"

#endif /* MBEDTLS_CONFIG_H */
