/*
 * localproxy: the ChaCha20-Poly1305 context when MBEDTLS_CHACHAPOLY_ALT is on (static device
 * builds with an accelerated AEAD; see cross/aead/README.md).
 *
 * mbedTLS's chachapoly.h includes this file instead of defining the context itself. The
 * context keeps the key for the accelerated one-shot calls (the ones the TLS record layer
 * makes) and, as opaque bytes, mbedTLS's own portable context, which serves the streaming
 * calls and every call when the accelerated path is off. chachapoly_portable.c checks at
 * compile time that the portable context fits.
 */
#ifndef LOCALPROXY_CHACHAPOLY_ALT_H
#define LOCALPROXY_CHACHAPOLY_ALT_H

#include <stdint.h>

#define LP_PORTABLE_CHACHAPOLY_SIZE 512

typedef struct mbedtls_chachapoly_context {
    unsigned char key[32];
    union {
        unsigned char bytes[LP_PORTABLE_CHACHAPOLY_SIZE];
        uint64_t align;
    } portable;
} mbedtls_chachapoly_context;

#endif
