// mbedTLS through one header. Debian 12 ships mbedTLS 2.28 (the host build and LINK=dynamic); the
// static device builds link a minimal 3.6 (cross/mbedtls/mbedtls_config.h). The few calls whose
// names or signatures changed between them are wrapped here.
#ifndef LOCALPROXY_CMBEDTLS_SHIM_H
#define LOCALPROXY_CMBEDTLS_SHIM_H
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
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
#if MBEDTLS_VERSION_NUMBER < 0x03000000 && defined(MBEDTLS_AESNI_C)
#include <mbedtls/aesni.h> /* public in 2.x only */
#endif
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && (defined(MBEDTLS_PSA_CRYPTO_C) || defined(MBEDTLS_PSA_CRYPTO_CLIENT))
#include <psa/crypto.h>
#define LP_PSA_CRYPTO 1
#endif

/// Process-wide set-up before the first TLS configuration. mbedTLS 3.x runs TLS 1.3 (and, with
/// MBEDTLS_USE_PSA_CRYPTO, all of its crypto) through the PSA API, whose psa_crypto_init() must
/// come before any handshake; it may be called again (later calls do nothing). Returns 0, or a
/// PSA status (negative). Nothing to do on 2.x, whose TLS does not use PSA.
static inline int lp_tls_global_init(void) {
#if defined(LP_PSA_CRYPTO)
    psa_status_t status = psa_crypto_init();
    return status == PSA_SUCCESS ? 0 : (int)status;
#else
    return 0;
#endif
}

/// The protocol versions this mbedTLS offers, for messages: "TLS 1.2" or "TLS 1.2 and 1.3".
static inline const char *lp_tls_offered_versions(void) {
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && defined(MBEDTLS_SSL_PROTO_TLS1_3)
    return "TLS 1.2 and 1.3";
#else
    return "TLS 1.2";
#endif
}

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

/// Puts the client's signature algorithms in an order that TLS 1.2 servers with RSA keys can use
/// with mbedTLS 3.6.6: a client offering TLS 1.2 and 1.3 lists RSA-PSS (which TLS 1.3 needs)
/// before PKCS#1 v1.5 by default, and a TLS 1.2 server that follows the client's order (OpenSSL
/// does) then signs its key exchange in PSS, which 3.6.6's TLS 1.2 client rejects ("A field in a
/// message was incorrect", a regression of 3.6.6 fixed upstream after it). With PKCS#1 v1.5
/// first such a server picks it; a TLS 1.3 server cannot (TLS 1.3 signs RSA in PSS only) and
/// takes PSS. Same algorithms as mbedTLS's default, in another order; mbedTLS leaves out those
/// its build lacks. Client configurations only; nothing to do on 2.x or without TLS 1.3.
static inline void lp_ssl_conf_client_sig_algs(mbedtls_ssl_config *conf) {
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && defined(MBEDTLS_SSL_PROTO_TLS1_2) && defined(MBEDTLS_SSL_PROTO_TLS1_3)
    static const uint16_t algorithms[] = {
        MBEDTLS_TLS1_3_SIG_ECDSA_SECP256R1_SHA256,
        MBEDTLS_TLS1_3_SIG_ECDSA_SECP384R1_SHA384,
        MBEDTLS_TLS1_3_SIG_ECDSA_SECP521R1_SHA512,
        MBEDTLS_TLS1_3_SIG_RSA_PKCS1_SHA512,
        MBEDTLS_TLS1_3_SIG_RSA_PKCS1_SHA384,
        MBEDTLS_TLS1_3_SIG_RSA_PKCS1_SHA256,
        MBEDTLS_TLS1_3_SIG_RSA_PSS_RSAE_SHA512,
        MBEDTLS_TLS1_3_SIG_RSA_PSS_RSAE_SHA384,
        MBEDTLS_TLS1_3_SIG_RSA_PSS_RSAE_SHA256,
        MBEDTLS_TLS1_3_SIG_NONE,
    };
    mbedtls_ssl_conf_sig_algs(conf, algorithms);
#else
    (void)conf;
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

/// Whether the private key `key` belongs to the public key of the certificate `crt` (0), or not
/// (an mbedTLS error, MBEDTLS_ERR_PK_TYPE_MISMATCH or MBEDTLS_ERR_PK_BAD_INPUT_DATA). 3.x
/// wants the RNG for RSA blinding.
static inline int lp_x509_crt_check_key(const mbedtls_x509_crt *crt, const mbedtls_pk_context *key,
                                        mbedtls_ctr_drbg_context *drbg) {
#if MBEDTLS_VERSION_NUMBER < 0x03000000
    (void)drbg;
    return mbedtls_pk_check_pair(&crt->pk, key);
#else
    return mbedtls_pk_check_pair(&crt->pk, key, mbedtls_ctr_drbg_random, drbg);
#endif
}

/// 1 when the file at `path` says it holds an encrypted key ("ENCRYPTED" in its first MiB: the
/// PEM line "BEGIN ENCRYPTED PRIVATE KEY" of PKCS#8, or the "Proc-Type: 4,ENCRYPTED" header of
/// the older PEM form), 0 otherwise or when it cannot be read. Only to explain a key that did
/// not load: the minimal 3.6 build (no PKCS#5) reports an encrypted PKCS#8 key as an invalid one.
static inline int lp_file_says_encrypted(const char *path) {
    static const char needle[] = "ENCRYPTED";
    const size_t m = sizeof(needle) - 1;
    FILE *file = fopen(path, "rb");
    if (file == NULL) return 0;
    char buffer[4096];
    size_t kept = 0, total = 0;
    int found = 0;
    while (!found && total < (size_t)1 << 20) {
        size_t n = fread(buffer + kept, 1, sizeof(buffer) - kept, file);
        if (n == 0) break;
        total += n;
        size_t have = kept + n;
        for (size_t i = 0; i + m <= have && !found; i++) found = memcmp(buffer + i, needle, m) == 0;
        /* The last m - 1 bytes may begin the needle that the next read completes. */
        kept = have < m - 1 ? have : m - 1;
        memmove(buffer, buffer + have - kept, kept);
    }
    fclose(file);
    return found;
}

/// The description of the alert the peer ended the handshake with (RFC 8446 §6.2: 40
/// handshake_failure, 116 certificate_required...), right after a call returned
/// MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE; -1 when the last record read was not an alert. mbedTLS
/// has no accessor for it: the alert stays in the session's input message buffer (a private
/// member in 3.x), which nothing overwrites once the session has failed.
static inline int lp_ssl_received_alert(const mbedtls_ssl_context *ssl) {
#if MBEDTLS_VERSION_NUMBER < 0x03000000
    const unsigned char *msg = ssl->in_msg;
    int type = ssl->in_msgtype;
    size_t length = ssl->in_msglen;
#else
    const unsigned char *msg = ssl->MBEDTLS_PRIVATE(in_msg);
    int type = ssl->MBEDTLS_PRIVATE(in_msgtype);
    size_t length = ssl->MBEDTLS_PRIVATE(in_msglen);
#endif
    if (msg == NULL || type != MBEDTLS_SSL_MSG_ALERT || length < 2) return -1;
    return msg[1];
}

/// The mbedTLS release this binary was compiled against, e.g. "2.28.3".
static inline const char *lp_mbedtls_version(void) { return MBEDTLS_VERSION_STRING; }

/// Whether mbedTLS's AES uses the CPU's AES instructions here (AES-NI on x86_64): 1 yes,
/// 0 no, -1 not knowable (3.x keeps that query private).
static inline int lp_mbedtls_aes_uses_cpu(void) {
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
    return -1;
#elif defined(MBEDTLS_AESNI_C) && defined(MBEDTLS_HAVE_X86_64)
    return mbedtls_aesni_has_support(MBEDTLS_AESNI_AES);
#else
    return 0;
#endif
}

#if defined(LP_AEAD)
/// What seals and opens records of each AEAD in a build with accelerated AEADs
/// (cross/aead/lp_aead.c): the fast library's code, or mbedTLS's portable code when the CPU
/// lacks the instructions or LOCALPROXY_AEAD=portable.
const char *lp_aead_gcm_backend(void);
const char *lp_aead_chachapoly_backend(void);
/// 1 when AES-GCM records go to the fast code on this CPU (and are then the cheapest).
int lp_aead_gcm_fast(void);
#endif

/// Offers the AES-GCM suites (AES-128 first) before ChaCha20-Poly1305 when `aes_first`, else
/// ChaCha20-Poly1305 first, in TLS 1.3 (3.x builds that have it) and in TLS 1.2; every other
/// suite the library has follows in its own order. The list lives as long as the program
/// (mbedTLS keeps a pointer to it).
static inline void lp_ssl_conf_cipher_order(mbedtls_ssl_config *conf, int aes_first) {
    static int list[256];
    const int aes[] = {
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
        MBEDTLS_TLS1_3_AES_128_GCM_SHA256, MBEDTLS_TLS1_3_AES_256_GCM_SHA384,
#endif
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    };
    const int chacha[] = {
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
        MBEDTLS_TLS1_3_CHACHA20_POLY1305_SHA256,
#endif
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    };
    const size_t aes_count = sizeof(aes) / sizeof(aes[0]), chacha_count = sizeof(chacha) / sizeof(chacha[0]);
    size_t n = 0;
    const int *first = aes_first ? aes : chacha, *second = aes_first ? chacha : aes;
    size_t first_count = aes_first ? aes_count : chacha_count, second_count = aes_first ? chacha_count : aes_count;
    for (size_t i = 0; i < first_count; i++) list[n++] = first[i];
    for (size_t i = 0; i < second_count; i++) list[n++] = second[i];
    const size_t preferred = n;
    const int *all = mbedtls_ssl_list_ciphersuites();
    for (size_t i = 0; all[i] != 0 && n + 1 < sizeof(list) / sizeof(list[0]); i++) {
        int seen = 0;
        for (size_t k = 0; k < preferred && !seen; k++) seen = list[k] == all[i];
        if (!seen) list[n++] = all[i];
    }
    list[n] = 0;
    mbedtls_ssl_conf_ciphersuites(conf, list);
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
    LP_ERR_SSL_FATAL_ALERT_MESSAGE = MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE,
    LP_ERR_SSL_NO_CLIENT_CERTIFICATE = MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE,
    LP_ERR_SSL_BAD_INPUT_DATA = MBEDTLS_ERR_SSL_BAD_INPUT_DATA,
    LP_ERR_PK_FILE_IO_ERROR = MBEDTLS_ERR_PK_FILE_IO_ERROR,
    LP_ERR_PK_PASSWORD_REQUIRED = MBEDTLS_ERR_PK_PASSWORD_REQUIRED,
    LP_ERR_PK_PASSWORD_MISMATCH = MBEDTLS_ERR_PK_PASSWORD_MISMATCH,
    LP_ERR_PK_UNKNOWN_PK_ALG = MBEDTLS_ERR_PK_UNKNOWN_PK_ALG,
    LP_ERR_PK_FEATURE_UNAVAILABLE = MBEDTLS_ERR_PK_FEATURE_UNAVAILABLE,
#if defined(MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION)
    LP_ERR_SSL_BAD_PROTOCOL_VERSION = MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION,
#else
    LP_ERR_SSL_BAD_PROTOCOL_VERSION = MBEDTLS_ERR_SSL_BAD_PROTOCOL_VERSION,
#endif
#if MBEDTLS_VERSION_NUMBER >= 0x03000000 && defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
    LP_ERR_SSL_NEW_SESSION_TICKET = MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET,
#else
    /* 2.x never reports tickets. The stand-in must be a value mbedtls_ssl_read can never
     * return: positive values are byte counts (1 was, and a 1-byte record was read past and
     * lost), and mbedTLS's errors all lie within -0x0001...-0x7FFF. */
    LP_ERR_SSL_NEW_SESSION_TICKET = -0x10000,
#endif
};
/// An IP-literal endpoint, for matching the certificate's iPAddress subjectAltName entries
/// (mbedTLS 2.28 matches only DNS names and the CN against the configured host name).
typedef struct {
    unsigned char address[16];
    size_t length; /* 4 or 16; 0 when the host is a name */
} lp_ip_match;

/// Fills `match` if `host` is a numeric IPv4 or IPv6 address.
static inline void lp_ip_match_init(lp_ip_match *match, const char *host) {
    memset(match, 0, sizeof(*match));
    if (inet_pton(AF_INET, host, match->address) == 1) { match->length = 4; return; }
    if (inet_pton(AF_INET6, host, match->address) == 1) { match->length = 16; return; }
}

/// Verification callback: for the leaf certificate, a name mismatch is forgiven when the
/// endpoint is an IP address listed in the certificate's iPAddress SANs. Every other check
/// (chain, validity, usage) is left as mbedTLS decided.
static inline int lp_verify_ip_san(void *context, mbedtls_x509_crt *crt, int depth, uint32_t *flags) {
    const lp_ip_match *match = (const lp_ip_match *)context;
    if (depth != 0 || match == NULL || match->length == 0) return 0;
    if ((*flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) == 0) return 0;
    for (const mbedtls_x509_sequence *san = &crt->subject_alt_names; san != NULL; san = san->next) {
        if (san->buf.p == NULL) continue;
        if (san->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && san->buf.len == match->length &&
            memcmp(san->buf.p, match->address, match->length) == 0) {
            *flags &= ~(uint32_t)MBEDTLS_X509_BADCERT_CN_MISMATCH;
            return 0;
        }
    }
    return 0;
}

/// Installs `lp_verify_ip_san` on one session.
static inline void lp_ssl_set_ip_verify(mbedtls_ssl_context *ssl, lp_ip_match *match) {
    mbedtls_ssl_set_verify(ssl, lp_verify_ip_san, match);
}
#endif
