/*
 * localproxy: ChaCha20-Poly1305 for mbedTLS (MBEDTLS_CHACHAPOLY_ALT) with libsodium's
 * vectorised code on CPUs that have it, and mbedTLS's portable code everywhere else.
 *
 * The TLS record layer encrypts and decrypts each record with one call
 * (mbedtls_chachapoly_encrypt_and_tag / mbedtls_chachapoly_auth_decrypt, in place): those go to
 * libsodium's crypto_aead_chacha20poly1305_ietf_*_detached when the accelerated path is on. The
 * streaming calls (starts / update_aad / update / finish), which TLS does not use, always go to
 * mbedTLS's own implementation, compiled under other names by chachapoly_portable.c.
 *
 * The path is chosen once, on the first key set: accelerated when libsodium found SSSE3 or
 * AVX2 (x86_64), portable otherwise, or when the environment variable LOCALPROXY_AEAD is
 * "portable" (the switch the tests use to run both paths on one machine).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "mbedtls/chachapoly.h"
#include "mbedtls/platform_util.h"

#include "sodium/crypto_aead_chacha20poly1305.h"
#include "sodium/runtime.h"

#if !defined(MBEDTLS_CHACHAPOLY_ALT)
#error "lp_aead.c implements MBEDTLS_CHACHAPOLY_ALT: build it with the accelerated configuration"
#endif

/* libsodium's CPU detection and implementation choice, normally run by sodium_init(), which
 * would also set up every other primitive and the random generator. */
int _sodium_runtime_get_cpu_features(void);
int _crypto_stream_chacha20_pick_best_implementation(void);
int _crypto_onetimeauth_poly1305_pick_best_implementation(void);

typedef struct lp_portable_chachapoly_context lp_portable_chachapoly_context;
void lp_portable_chachapoly_init(lp_portable_chachapoly_context *ctx);
void lp_portable_chachapoly_free(lp_portable_chachapoly_context *ctx);
int lp_portable_chachapoly_setkey(lp_portable_chachapoly_context *ctx, const unsigned char key[32]);
int lp_portable_chachapoly_starts(lp_portable_chachapoly_context *ctx, const unsigned char nonce[12],
                                  mbedtls_chachapoly_mode_t mode);
int lp_portable_chachapoly_update_aad(lp_portable_chachapoly_context *ctx, const unsigned char *aad,
                                      size_t aad_len);
int lp_portable_chachapoly_update(lp_portable_chachapoly_context *ctx, size_t len, const unsigned char *input,
                                  unsigned char *output);
int lp_portable_chachapoly_finish(lp_portable_chachapoly_context *ctx, unsigned char mac[16]);
int lp_portable_chachapoly_encrypt_and_tag(lp_portable_chachapoly_context *ctx, size_t length,
                                           const unsigned char nonce[12], const unsigned char *aad,
                                           size_t aad_len, const unsigned char *input,
                                           unsigned char *output, unsigned char tag[16]);
int lp_portable_chachapoly_auth_decrypt(lp_portable_chachapoly_context *ctx, size_t length,
                                        const unsigned char nonce[12], const unsigned char *aad,
                                        size_t aad_len, const unsigned char tag[16],
                                        const unsigned char *input, unsigned char *output);

/* libsodium calls this on an API misuse (lengths beyond its limits, which TLS records never
 * reach). Its own version, in sodium/core.c, is not built (see build-sodium.sh); it aborts too. */
void sodium_misuse(void);
void sodium_misuse(void)
{
    abort();
}

#define PORTABLE(ctx) ((lp_portable_chachapoly_context *) (void *) (ctx)->portable.bytes)

/* -1: not chosen yet; 0: portable; 1: libsodium. One event-loop thread: no locking needed. */
static int accelerated = -1;
static const char *backend = "mbedTLS portable C";

static int use_accelerated(void)
{
    if (accelerated >= 0) {
        return accelerated;
    }
    const char *forced = getenv("LOCALPROXY_AEAD");
    if (forced != NULL && strcmp(forced, "portable") == 0) {
        accelerated = 0;
        backend = "mbedTLS portable C (forced by LOCALPROXY_AEAD=portable)";
        return accelerated;
    }
    _sodium_runtime_get_cpu_features();
    _crypto_stream_chacha20_pick_best_implementation();
    _crypto_onetimeauth_poly1305_pick_best_implementation();
    if (sodium_runtime_has_avx2()) {
        accelerated = 1;
        backend = "libsodium 1.0.18 (ChaCha20 AVX2, Poly1305 SSE2)";
    } else if (sodium_runtime_has_ssse3()) {
        accelerated = 1;
        backend = "libsodium 1.0.18 (ChaCha20 SSSE3, Poly1305 SSE2)";
    } else {
        /* libsodium's own fallback is portable C too: keep mbedTLS's. */
        accelerated = 0;
        backend = "mbedTLS portable C (no SSSE3 on this CPU)";
    }
    return accelerated;
}

/* What does ChaCha20-Poly1305 here, for `localproxy --version` (declared in the Swift shim). */
const char *lp_aead_chachapoly_backend(void)
{
    use_accelerated();
    return backend;
}

void mbedtls_chachapoly_init(mbedtls_chachapoly_context *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    lp_portable_chachapoly_init(PORTABLE(ctx));
}

void mbedtls_chachapoly_free(mbedtls_chachapoly_context *ctx)
{
    if (ctx == NULL) {
        return;
    }
    lp_portable_chachapoly_free(PORTABLE(ctx));
    mbedtls_platform_zeroize(ctx->key, sizeof(ctx->key));
}

int mbedtls_chachapoly_setkey(mbedtls_chachapoly_context *ctx, const unsigned char key[32])
{
    use_accelerated();
    memcpy(ctx->key, key, sizeof(ctx->key));
    return lp_portable_chachapoly_setkey(PORTABLE(ctx), key);
}

int mbedtls_chachapoly_starts(mbedtls_chachapoly_context *ctx, const unsigned char nonce[12],
                              mbedtls_chachapoly_mode_t mode)
{
    return lp_portable_chachapoly_starts(PORTABLE(ctx), nonce, mode);
}

int mbedtls_chachapoly_update_aad(mbedtls_chachapoly_context *ctx, const unsigned char *aad, size_t aad_len)
{
    return lp_portable_chachapoly_update_aad(PORTABLE(ctx), aad, aad_len);
}

int mbedtls_chachapoly_update(mbedtls_chachapoly_context *ctx, size_t len, const unsigned char *input,
                              unsigned char *output)
{
    return lp_portable_chachapoly_update(PORTABLE(ctx), len, input, output);
}

int mbedtls_chachapoly_finish(mbedtls_chachapoly_context *ctx, unsigned char mac[16])
{
    return lp_portable_chachapoly_finish(PORTABLE(ctx), mac);
}

int mbedtls_chachapoly_encrypt_and_tag(mbedtls_chachapoly_context *ctx, size_t length,
                                       const unsigned char nonce[12], const unsigned char *aad, size_t aad_len,
                                       const unsigned char *input, unsigned char *output, unsigned char tag[16])
{
    if (!use_accelerated()) {
        return lp_portable_chachapoly_encrypt_and_tag(PORTABLE(ctx), length, nonce, aad, aad_len, input, output, tag);
    }
    /* libsodium allows input == output (in place), as mbedTLS does. */
    if (crypto_aead_chacha20poly1305_ietf_encrypt_detached(output, tag, NULL, input, length, aad, aad_len,
                                                           NULL, nonce, ctx->key) != 0) {
        return MBEDTLS_ERR_CHACHAPOLY_BAD_STATE;
    }
    return 0;
}

int mbedtls_chachapoly_auth_decrypt(mbedtls_chachapoly_context *ctx, size_t length,
                                    const unsigned char nonce[12], const unsigned char *aad, size_t aad_len,
                                    const unsigned char tag[16], const unsigned char *input, unsigned char *output)
{
    if (!use_accelerated()) {
        return lp_portable_chachapoly_auth_decrypt(PORTABLE(ctx), length, nonce, aad, aad_len, tag, input, output);
    }
    /* libsodium checks the tag before decrypting anything. */
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(output, NULL, input, length, tag, aad, aad_len,
                                                           nonce, ctx->key) != 0) {
        /* As mbedTLS does: nothing of an unauthenticated message is left in the output. */
        mbedtls_platform_zeroize(output, length);
        return MBEDTLS_ERR_CHACHAPOLY_AUTH_FAILED;
    }
    return 0;
}
