/*
 * localproxy: the mbedTLS 3.6 configuration of the static device builds.
 *
 * The proxy is a TLS client of the tunnelling data plane and of AWS IoT Core's MQTT endpoint
 * (or of a local emulator of them), so everything else is left out: no server side, no DTLS,
 * no session tickets or resumption, no PSK, no early data, no renegotiation, no CBC or legacy
 * ciphers, no self tests, no threading (one event loop thread). `make` copies this file over
 * include/mbedtls/mbedtls_config.h of the source it unpacks, so the library and the Swift code
 * see one set of struct layouts (`make check-abi` verifies that). It keeps every choice of
 * the mbedTLS 2.28 configuration it replaced, and adds TLS 1.3.
 *
 * What stays, and why:
 * - TLS 1.2 and TLS 1.3, client side. TLS 1.3 brings its three usual suites
 *   (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256) with the
 *   same ciphers as TLS 1.2, and a handshake that is one round trip shorter. mbedTLS runs
 *   TLS 1.3 through its PSA crypto API, so the PSA core is built (MBEDTLS_PSA_CRYPTO_C; the
 *   proxy calls psa_crypto_init() through lp_tls_global_init() in Sources/CMbedTLS/shim.h)
 *   with HKDF. TLS 1.3 needs the peer's certificate kept (MBEDTLS_SSL_KEEP_PEER_CERTIFICATE),
 *   and RSA-PSS (MBEDTLS_PKCS1_V21) because a TLS 1.3 server signs with an RSA key in PSS.
 *   The middlebox compatibility mode stays on (as in every TLS 1.3 stack's default): some
 *   firewalls drop TLS 1.3 handshakes that do not look like a TLS 1.2 session resumption.
 * - Key exchange ECDHE with RSA or ECDSA certificates: Amazon Trust Services roots and
 *   the service's chains are RSA 2048 and ECDSA P-256/P-384. TLS 1.3 uses the ephemeral mode
 *   only (no PSK, no resumption).
 * - AES-GCM (AES-NI on x86_64, the Armv8 crypto extensions on aarch64 when the CPU has
 *   them) and ChaCha20-Poly1305 (fast without AES instructions, as on Cortex-A7/A9).
 * - Curves: X25519, P-256, P-384.
 * - SHA-1 only because the WebSocket accept key is a SHA-1 (RFC 6455); certificate
 *   verification keeps mbedTLS's default profile, which refuses SHA-1 signatures.
 *   SHA-384 (a SHA-512 variant) for the P-384 chains and TLS_AES_256_GCM_SHA384. SHA-256 and
 *   SHA-512 in their smaller (not unrolled) forms: they hash only handshakes and certificates,
 *   never the relayed bytes, and this saves 3.4 KB of armv7 code (docs/FOOTPRINT.md).
 * - PEM and X.509 parsing from files (the -c option and the system CA bundle, and the device
 *   certificate and key the MQTT agent presents to AWS IoT Core: a client certificate needs no
 *   other option, since signing with ECDSA or RSA and checking that key and certificate match,
 *   mbedtls_pk_check_pair, come with the modules above).
 * - ALPN (MBEDTLS_SSL_ALPN): AWS IoT Core takes MQTT over TLS on port 443 only from clients
 *   that offer the protocol x-amzn-mqtt-ca; on port 443 it is how the agent passes firewalls
 *   that allow HTTPS only.
 * - mbedtls_strerror, so every TLS failure is named in the log.
 *
 * Left out on purpose, besides the above:
 * - MBEDTLS_USE_PSA_CRYPTO: TLS 1.2, X.509 and the public keys stay on the classic crypto API.
 *   Routing them through PSA too made the armv7 static binary 8 KB larger (603,808 bytes,
 *   over its 600,000-byte budget) and changes nothing on the wire.
 * - MBEDTLS_SSL_SESSION_TICKETS: without it mbedTLS reads and drops the NewSessionTicket
 *   messages TLS 1.3 servers send after the handshake; the proxy never resumes a session.
 *
 * Known problem of 3.6.6, the version this is built with (Makefile, MBEDTLS_VERSION): its TLS 1.2
 * client rejects a ServerKeyExchange signed in RSA-PSS (fixed in 3.6.7). The proxy lists
 * PKCS#1 v1.5 before PSS (lp_ssl_conf_client_sig_algs in Sources/CMbedTLS/shim.h), which
 * servers that follow the client's order (OpenSSL's default) honour; a TLS 1.2-only server with
 * an RSA key that imposes its own order and prefers PSS still fails the handshake.
 *
 * The PSA key store keeps mbedTLS's default (MBEDTLS_PSA_KEY_STORE_DYNAMIC, which grows on
 * the heap): a TLS 1.3 session holds a few PSA keys while it lives, and the proxy has one or
 * two sessions at a time.
 */
#ifndef LOCALPROXY_MBEDTLS_CONFIG_H
#define LOCALPROXY_MBEDTLS_CONFIG_H

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
#define MBEDTLS_PKCS1_V21
#define MBEDTLS_X509_RSASSA_PSS_SUPPORT

/* Smaller SHA-256 and SHA-512 code (handshakes and certificates only) */
#define MBEDTLS_SHA256_SMALLER
#define MBEDTLS_SHA512_SMALLER

/* TLS */
#define MBEDTLS_SSL_ALL_ALERT_MESSAGES
#define MBEDTLS_SSL_ALPN
#define MBEDTLS_SSL_EXTENDED_MASTER_SECRET
#define MBEDTLS_SSL_KEEP_PEER_CERTIFICATE
#define MBEDTLS_SSL_PROTO_TLS1_2
#define MBEDTLS_SSL_PROTO_TLS1_3
#define MBEDTLS_SSL_TLS1_3_COMPATIBILITY_MODE
#define MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL_ENABLED
#define MBEDTLS_SSL_SERVER_NAME_INDICATION
#define MBEDTLS_X509_CHECK_KEY_USAGE
#define MBEDTLS_X509_CHECK_EXTENDED_KEY_USAGE

/* Modules */
#define MBEDTLS_AES_C
#if defined(__x86_64__) || defined(__amd64__)
#define MBEDTLS_AESNI_C
#endif
#if defined(__aarch64__)
#define MBEDTLS_AESCE_C
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
#define MBEDTLS_HKDF_C
#define MBEDTLS_MD_C
#define MBEDTLS_OID_C
#define MBEDTLS_PEM_PARSE_C
#define MBEDTLS_PK_C
#define MBEDTLS_PK_PARSE_C
#define MBEDTLS_POLY1305_C
#define MBEDTLS_PSA_CRYPTO_C
#define MBEDTLS_PSA_KEY_STORE_DYNAMIC
/* TLS 1.3 seals and opens every record through PSA, which by default copies each argument
 * buffer to a fresh heap buffer first (a protection for buffers shared with another, untrusted
 * party): two 16 KiB allocations and copies per record. The proxy's buffers belong to its one
 * process and thread, so the copies protect nothing here. */
#define MBEDTLS_PSA_ASSUME_EXCLUSIVE_BUFFERS
#define MBEDTLS_RSA_C
#define MBEDTLS_SHA1_C
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA384_C
#define MBEDTLS_SHA512_C
#define MBEDTLS_SSL_CLI_C
#define MBEDTLS_SSL_TLS_C
#define MBEDTLS_X509_USE_C
#define MBEDTLS_X509_CRT_PARSE_C
/* AES is only ever used forwards here: GCM and CTR_DRBG encrypt in both directions, and there is
 * no CBC, XTS, DES or key wrapping. Without AES decryption (its key schedule, rounds and
 * inverse tables) the armv7 static binary is 1.3 KB smaller and 4.3 KB less .bss. */
#define MBEDTLS_BLOCK_CIPHER_NO_DECRYPT

/* The accelerated record AEADs (cross/aead/): on when the build defines LP_AEAD_* (the
 * Makefile does per architecture), except in the files that compile mbedTLS's own
 * implementations under other names as the fallback (LP_PORTABLE_AEAD). */
#if !defined(LP_PORTABLE_AEAD)
#if defined(LP_AEAD_CHACHAPOLY_SODIUM) || defined(LP_AEAD_CHACHAPOLY_OPENSSL)
#define MBEDTLS_CHACHAPOLY_ALT
#endif
#if defined(LP_AEAD_GCM_NETTLE) || defined(LP_AEAD_GCM_OPENSSL)
#define MBEDTLS_GCM_ALT
#endif
#endif

#endif /* LOCALPROXY_MBEDTLS_CONFIG_H */
