/*
 * localproxy: the GCM context when MBEDTLS_GCM_ALT is on (static device builds with an
 * accelerated AES-GCM; see cross/aead/README.md).
 *
 * mbedTLS's gcm.h includes this file instead of defining the context itself. Both halves are
 * opaque bytes, so that nothing outside cross/aead/ needs the accelerating library's headers:
 * the accelerated key schedule and hash table (Nettle's gcm_aes128_ctx or gcm_aes256_ctx), and
 * mbedTLS's own context, which serves the streaming calls, other key sizes and every call when
 * the accelerated path is off. lp_aead.c and gcm_portable.c check at compile time that each fits.
 */
#ifndef LOCALPROXY_GCM_ALT_H
#define LOCALPROXY_GCM_ALT_H

#include <stdint.h>

#define LP_FAST_GCM_SIZE 4864
#define LP_PORTABLE_GCM_SIZE 1024

typedef struct mbedtls_gcm_context {
    /* 128 or 256 while `fast` holds a key schedule; 0 otherwise. */
    unsigned fast_key_bits;
    /* mbedTLS's context is keyed only when a call needs it (PSA, which runs TLS 1.3, sets a
     * new context up for every record): until then the key waits here. */
    int portable_keyed;
    int cipher;
    unsigned key_bits;
    unsigned char key[32];
    union {
        unsigned char bytes[LP_FAST_GCM_SIZE];
        uint64_t align;
    } fast;
    union {
        unsigned char bytes[LP_PORTABLE_GCM_SIZE];
        uint64_t align;
    } portable;
} mbedtls_gcm_context;

#endif
