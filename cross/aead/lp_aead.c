/*
 * localproxy: the record AEADs of mbedTLS (MBEDTLS_CHACHAPOLY_ALT, MBEDTLS_GCM_ALT) with a
 * vectorised library's code on CPUs that have the instructions, and mbedTLS's portable code
 * everywhere else. Which library serves which AEAD is chosen per architecture by the Makefile:
 *
 *   LP_AEAD_CHACHAPOLY_SODIUM  ChaCha20-Poly1305 from libsodium (x86_64: AVX2 or SSSE3)
 *   LP_AEAD_CHACHAPOLY_OPENSSL ChaCha20 and Poly1305 from OpenSSL's ARM assembly (armv7 NEON,
 *                              aarch64 Advanced SIMD), assembled by build-openssl-asm.sh, with
 *                              the AEAD built here
 *   LP_AEAD_GCM_OPENSSL        AES-128-GCM and AES-256-GCM on OpenSSL's armv7 assembly (AES in
 *                              ARMv4 integer code, GHASH in NEON), GCM built here
 *   LP_AEAD_GCM_NETTLE         AES-128-GCM and AES-256-GCM from Nettle (x86_64: AES-NI and
 *                              PCLMULQDQ; aarch64: the ARMv8 AES and PMULL instructions)
 *
 * The TLS record layer seals and opens each record with one call, in place
 * (mbedtls_*_encrypt_and_tag / crypt_and_tag, mbedtls_*_auth_decrypt): those go to the fast
 * code when it is on. The streaming calls, which TLS does not use, and key sizes the fast code
 * does not take, always go to mbedTLS's own implementation, compiled under other names by
 * chachapoly_portable.c and gcm_portable.c.
 *
 * Each AEAD's path is chosen once, at its first key set: fast when the CPU has the
 * instructions, portable otherwise or when the environment variable LOCALPROXY_AEAD is
 * "portable" (the switch that lets the tests run both paths on one machine).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "mbedtls/platform_util.h"

#if defined(LP_AEAD_CHACHAPOLY_SODIUM) && defined(LP_AEAD_CHACHAPOLY_OPENSSL)
#error "one ChaCha20-Poly1305 library at a time"
#endif
#if defined(LP_AEAD_CHACHAPOLY_SODIUM) || defined(LP_AEAD_CHACHAPOLY_OPENSSL)
#define LP_AEAD_CHACHAPOLY 1
#include "mbedtls/chachapoly.h"
#if !defined(MBEDTLS_CHACHAPOLY_ALT)
#error "LP_AEAD_CHACHAPOLY_* needs MBEDTLS_CHACHAPOLY_ALT in the mbedTLS configuration"
#endif
#endif
#if defined(LP_AEAD_CHACHAPOLY_SODIUM)
#include "sodium/crypto_aead_chacha20poly1305.h"
#include "sodium/runtime.h"
#endif
#if defined(LP_AEAD_CHACHAPOLY_OPENSSL)
#include "mbedtls/constant_time.h"
#include <sys/auxv.h>
#if defined(__ARMEL__) && defined(__ARM_ARCH) && __ARM_ARCH == 7
/* OpenSSL's armv4 code tests NEON (ARMV7_NEON in its crypto/arm_arch.h) itself, but only for
 * inputs long enough to pay off; the kernel reports NEON as HWCAP_NEON, bit 12. */
#define OPENSSL_SIMD_HWCAP (1UL << 12)
#define OPENSSL_CHACHAPOLY_TEXT "OpenSSL 3.0.17 ARMv7 assembly (ChaCha20 NEON, Poly1305 NEON)"
#define OPENSSL_NO_SIMD_TEXT "mbedTLS portable C (no NEON on this CPU)"
#elif defined(__aarch64__) && defined(__AARCH64EL__)
/* Every AArch64 Linux CPU has Advanced SIMD, but the kernel says so (HWCAP_ASIMD, bit 1). */
#define OPENSSL_SIMD_HWCAP (1UL << 1)
#define OPENSSL_CHACHAPOLY_TEXT "OpenSSL 3.0.17 ARMv8 assembly (ChaCha20 Advanced SIMD, Poly1305 Advanced SIMD)"
#define OPENSSL_NO_SIMD_TEXT "mbedTLS portable C (no Advanced SIMD on this CPU)"
#else
#error "LP_AEAD_CHACHAPOLY_OPENSSL is OpenSSL's little-endian armv7 or aarch64 code"
#endif

/* OpenSSL's assembly, its global names prefixed lp_openssl_ by build-openssl-asm.sh. The key
 * and the counter block are read as aligned 32-bit words (ldmia on armv7); the data may be
 * unaligned and in place (output == input). */
/* OpenSSL's CPU-feature word (OPENSSL_armcap_P); set at the first key set. */
unsigned int lp_openssl_armcap;
void lp_openssl_chacha20_ctr32(unsigned char *out, const unsigned char *in, size_t len, const uint32_t key[8],
                               const uint32_t counter[4]);
int lp_openssl_poly1305_init(void *state, const unsigned char key[16], void *functions[2]);
#endif

#if defined(LP_AEAD_GCM_NETTLE) && defined(LP_AEAD_GCM_OPENSSL)
#error "one AES-GCM library at a time"
#endif
#if defined(LP_AEAD_GCM_NETTLE) || defined(LP_AEAD_GCM_OPENSSL)
#define LP_AEAD_GCM 1
#include "mbedtls/gcm.h"
#include "mbedtls/constant_time.h"
#if !defined(MBEDTLS_GCM_ALT)
#error "LP_AEAD_GCM_* needs MBEDTLS_GCM_ALT in the mbedTLS configuration"
#endif
#endif
#if defined(LP_AEAD_GCM_NETTLE)
#include "nettle/gcm.h"
#endif
#if defined(LP_AEAD_GCM_OPENSSL)
#include <sys/auxv.h>
#if !defined(__ARMEL__) || !defined(__ARM_ARCH) || __ARM_ARCH != 7
#error "LP_AEAD_GCM_OPENSSL is OpenSSL's little-endian armv7 code"
#endif
/* OpenSSL's aes-armv4 and ghash-armv4, globals prefixed lp_openssl_ by build-openssl-asm.sh.
 * The AES key schedule is OpenSSL's AES_KEY (60 round-key words and the round count); GHASH
 * keeps its twisted key in a 16-entry table of 128-bit values and its running value Xi as the
 * 16 bytes of the GCM block, in order. */
struct openssl_aes_key {
    uint32_t rd_key[60];
    int rounds;
};
int lp_openssl_AES_set_encrypt_key(const unsigned char *key, int bits, struct openssl_aes_key *schedule);
void lp_openssl_AES_encrypt(const unsigned char in[16], unsigned char out[16], const struct openssl_aes_key *schedule);
void lp_openssl_gcm_init_neon(uint64_t table[32], const uint64_t h[2]);
void lp_openssl_gcm_ghash_neon(uint64_t xi[2], const uint64_t table[32], const unsigned char *in, size_t len);
#endif

/* One event-loop thread: the choices below need no locking. */
static int forced_portable(void)
{
    const char *forced = getenv("LOCALPROXY_AEAD");
    return forced != NULL && strcmp(forced, "portable") == 0;
}

#define FORCED_TEXT "mbedTLS portable C (forced by LOCALPROXY_AEAD=portable)"

/* ------------------------------------------------------------------------------------------ */
/* ChaCha20-Poly1305 */

#if defined(LP_AEAD_CHACHAPOLY)

#if defined(LP_AEAD_CHACHAPOLY_SODIUM)
/* libsodium's CPU detection and implementation choice, normally run by sodium_init(), which
 * would also set up every other primitive and the random generator. */
int _sodium_runtime_get_cpu_features(void);
int _crypto_stream_chacha20_pick_best_implementation(void);
int _crypto_onetimeauth_poly1305_pick_best_implementation(void);

/* libsodium calls this on an API misuse (lengths beyond its limits, which TLS records never
 * reach). Its own version, in sodium/core.c, is not built (see build-sodium.sh); it aborts too. */
void sodium_misuse(void);
void sodium_misuse(void)
{
    abort();
}
#endif

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

#define PORTABLE_CHACHAPOLY(ctx) ((lp_portable_chachapoly_context *) (void *) (ctx)->portable.bytes)

/* -1: not chosen yet; 0: portable; 1: the library's code. */
static int chachapoly_fast = -1;
static const char *chachapoly_text = "mbedTLS portable C";

static int chachapoly_use_fast(void)
{
    if (chachapoly_fast >= 0) {
        return chachapoly_fast;
    }
    if (forced_portable()) {
        chachapoly_fast = 0;
        chachapoly_text = FORCED_TEXT;
        return chachapoly_fast;
    }
#if defined(LP_AEAD_CHACHAPOLY_OPENSSL)
    /* Without the SIMD instructions the whole AEAD stays on mbedTLS's portable code (OpenSSL's
     * integer code for short inputs is not used alone). */
    if ((getauxval(AT_HWCAP) & OPENSSL_SIMD_HWCAP) != 0) {
        lp_openssl_armcap = 1; /* ARMV7_NEON in OpenSSL's crypto/arm_arch.h: NEON / Advanced SIMD */
        chachapoly_fast = 1;
        chachapoly_text = OPENSSL_CHACHAPOLY_TEXT;
    } else {
        chachapoly_fast = 0;
        chachapoly_text = OPENSSL_NO_SIMD_TEXT;
    }
    return chachapoly_fast;
#else
    _sodium_runtime_get_cpu_features();
    _crypto_stream_chacha20_pick_best_implementation();
    _crypto_onetimeauth_poly1305_pick_best_implementation();
    if (sodium_runtime_has_avx2()) {
        chachapoly_fast = 1;
        chachapoly_text = "libsodium 1.0.18 (ChaCha20 AVX2, Poly1305 SSE2)";
    } else if (sodium_runtime_has_ssse3()) {
        chachapoly_fast = 1;
        chachapoly_text = "libsodium 1.0.18 (ChaCha20 SSSE3, Poly1305 SSE2)";
    } else {
        /* libsodium's own fallback is portable C too: keep mbedTLS's. */
        chachapoly_fast = 0;
        chachapoly_text = "mbedTLS portable C (no SSSE3 on this CPU)";
    }
    return chachapoly_fast;
#endif
}

#if defined(LP_AEAD_CHACHAPOLY_OPENSSL)

typedef void (*openssl_poly1305_blocks)(void *state, const unsigned char *in, size_t len, uint32_t pad_bit);
typedef void (*openssl_poly1305_emit)(void *state, unsigned char mac[16], const uint32_t nonce[4]);

/* One record's ChaCha20 key and counter block, and its Poly1305 state (OpenSSL keeps that in
 * 24 doubles; the NEON code keeps precomputed powers of the key there). */
struct openssl_chachapoly {
    uint32_t key[8];
    uint32_t counter[4];
    _Alignas(16) double poly_state[24];
    uint32_t poly_nonce[4];
    openssl_poly1305_blocks blocks;
    openssl_poly1305_emit emit;
};

/* Poly1305 over `data` padded with zeros to a multiple of 16 bytes, as RFC 8439 section 2.8
 * pads the additional data and the ciphertext. */
static void openssl_poly1305_padded(struct openssl_chachapoly *aead, const unsigned char *data, size_t len)
{
    size_t whole = len & ~(size_t) 15;
    if (whole != 0) {
        aead->blocks(aead->poly_state, data, whole, 1);
    }
    if (whole != len) {
        unsigned char last[16] = { 0 };
        memcpy(last, data + whole, len - whole);
        aead->blocks(aead->poly_state, last, sizeof(last), 1);
    }
}

/* Keys ChaCha20 with the record's key and nonce, derives the Poly1305 key from block 0 and
 * authenticates the additional data (RFC 8439 section 2.8). */
static void openssl_chachapoly_start(struct openssl_chachapoly *aead, const unsigned char key[32],
                                     const unsigned char nonce[12], const unsigned char *aad, size_t aad_len)
{
    unsigned char block0[64] = { 0 };
    void *functions[2];
    memcpy(aead->key, key, sizeof(aead->key));
    aead->counter[0] = 0;
    memcpy(&aead->counter[1], nonce, 12);
    lp_openssl_chacha20_ctr32(block0, block0, sizeof(block0), aead->key, aead->counter);
    lp_openssl_poly1305_init(aead->poly_state, block0, functions);
    aead->blocks = (openssl_poly1305_blocks) functions[0];
    aead->emit = (openssl_poly1305_emit) functions[1];
    memcpy(aead->poly_nonce, block0 + 16, sizeof(aead->poly_nonce));
    mbedtls_platform_zeroize(block0, sizeof(block0));
    openssl_poly1305_padded(aead, aad, aad_len);
    aead->counter[0] = 1;
}

/* Authenticates the ciphertext and the two lengths, and writes the tag. */
static void openssl_chachapoly_tag(struct openssl_chachapoly *aead, const unsigned char *ciphertext, size_t len,
                                   size_t aad_len, unsigned char tag[16])
{
    unsigned char lengths[16];
    uint64_t aad_bits = aad_len, text_bits = len;
    openssl_poly1305_padded(aead, ciphertext, len);
    for (int i = 0; i < 8; i++) {
        lengths[i] = (unsigned char) (aad_bits >> (8 * i));
        lengths[8 + i] = (unsigned char) (text_bits >> (8 * i));
    }
    aead->blocks(aead->poly_state, lengths, sizeof(lengths), 1);
    aead->emit(aead->poly_state, tag, aead->poly_nonce);
}
#endif


const char *lp_aead_chachapoly_backend(void)
{
    chachapoly_use_fast();
    return chachapoly_text;
}

void mbedtls_chachapoly_init(mbedtls_chachapoly_context *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    lp_portable_chachapoly_init(PORTABLE_CHACHAPOLY(ctx));
}

void mbedtls_chachapoly_free(mbedtls_chachapoly_context *ctx)
{
    if (ctx == NULL) {
        return;
    }
    lp_portable_chachapoly_free(PORTABLE_CHACHAPOLY(ctx));
    mbedtls_platform_zeroize(ctx->key, sizeof(ctx->key));
}

int mbedtls_chachapoly_setkey(mbedtls_chachapoly_context *ctx, const unsigned char key[32])
{
    chachapoly_use_fast();
    memcpy(ctx->key, key, sizeof(ctx->key));
    return lp_portable_chachapoly_setkey(PORTABLE_CHACHAPOLY(ctx), key);
}

int mbedtls_chachapoly_starts(mbedtls_chachapoly_context *ctx, const unsigned char nonce[12],
                              mbedtls_chachapoly_mode_t mode)
{
    return lp_portable_chachapoly_starts(PORTABLE_CHACHAPOLY(ctx), nonce, mode);
}

int mbedtls_chachapoly_update_aad(mbedtls_chachapoly_context *ctx, const unsigned char *aad, size_t aad_len)
{
    return lp_portable_chachapoly_update_aad(PORTABLE_CHACHAPOLY(ctx), aad, aad_len);
}

int mbedtls_chachapoly_update(mbedtls_chachapoly_context *ctx, size_t len, const unsigned char *input,
                              unsigned char *output)
{
    return lp_portable_chachapoly_update(PORTABLE_CHACHAPOLY(ctx), len, input, output);
}

int mbedtls_chachapoly_finish(mbedtls_chachapoly_context *ctx, unsigned char mac[16])
{
    return lp_portable_chachapoly_finish(PORTABLE_CHACHAPOLY(ctx), mac);
}

int mbedtls_chachapoly_encrypt_and_tag(mbedtls_chachapoly_context *ctx, size_t length,
                                       const unsigned char nonce[12], const unsigned char *aad, size_t aad_len,
                                       const unsigned char *input, unsigned char *output, unsigned char tag[16])
{
    if (!chachapoly_use_fast()) {
        return lp_portable_chachapoly_encrypt_and_tag(PORTABLE_CHACHAPOLY(ctx), length, nonce, aad, aad_len,
                                                      input, output, tag);
    }
#if defined(LP_AEAD_CHACHAPOLY_OPENSSL)
    struct openssl_chachapoly aead;
    openssl_chachapoly_start(&aead, ctx->key, nonce, aad, aad_len);
    lp_openssl_chacha20_ctr32(output, input, length, aead.key, aead.counter);
    openssl_chachapoly_tag(&aead, output, length, aad_len, tag);
    mbedtls_platform_zeroize(&aead, sizeof(aead));
#else
    /* libsodium allows input == output (in place), as mbedTLS does. */
    if (crypto_aead_chacha20poly1305_ietf_encrypt_detached(output, tag, NULL, input, length, aad, aad_len,
                                                           NULL, nonce, ctx->key) != 0) {
        return MBEDTLS_ERR_CHACHAPOLY_BAD_STATE;
    }
#endif
    return 0;
}

int mbedtls_chachapoly_auth_decrypt(mbedtls_chachapoly_context *ctx, size_t length,
                                    const unsigned char nonce[12], const unsigned char *aad, size_t aad_len,
                                    const unsigned char tag[16], const unsigned char *input, unsigned char *output)
{
    if (!chachapoly_use_fast()) {
        return lp_portable_chachapoly_auth_decrypt(PORTABLE_CHACHAPOLY(ctx), length, nonce, aad, aad_len, tag,
                                                   input, output);
    }
#if defined(LP_AEAD_CHACHAPOLY_OPENSSL)
    /* The tag is checked (in constant time) before anything is decrypted. */
    struct openssl_chachapoly aead;
    unsigned char expected[16];
    openssl_chachapoly_start(&aead, ctx->key, nonce, aad, aad_len);
    openssl_chachapoly_tag(&aead, input, length, aad_len, expected);
    int refused = mbedtls_ct_memcmp(expected, tag, sizeof(expected)) != 0;
    if (!refused) {
        lp_openssl_chacha20_ctr32(output, input, length, aead.key, aead.counter);
    }
    mbedtls_platform_zeroize(&aead, sizeof(aead));
    mbedtls_platform_zeroize(expected, sizeof(expected));
#else
    /* libsodium checks the tag before decrypting anything. */
    int refused = crypto_aead_chacha20poly1305_ietf_decrypt_detached(output, NULL, input, length, tag, aad,
                                                                     aad_len, nonce, ctx->key) != 0;
#endif
    if (refused) {
        /* As mbedTLS does: nothing of an unauthenticated message is left in the output. */
        mbedtls_platform_zeroize(output, length);
        return MBEDTLS_ERR_CHACHAPOLY_AUTH_FAILED;
    }
    return 0;
}

#else

const char *lp_aead_chachapoly_backend(void)
{
    return "mbedTLS portable C";
}

#endif /* LP_AEAD_CHACHAPOLY */

/* ------------------------------------------------------------------------------------------ */
/* AES-GCM */

#if defined(LP_AEAD_GCM)

typedef struct lp_portable_gcm_context lp_portable_gcm_context;
void lp_portable_gcm_init(lp_portable_gcm_context *ctx);
void lp_portable_gcm_free(lp_portable_gcm_context *ctx);
int lp_portable_gcm_setkey(lp_portable_gcm_context *ctx, mbedtls_cipher_id_t cipher, const unsigned char *key,
                           unsigned int keybits);
int lp_portable_gcm_crypt_and_tag(lp_portable_gcm_context *ctx, int mode, size_t length, const unsigned char *iv,
                                  size_t iv_len, const unsigned char *add, size_t add_len,
                                  const unsigned char *input, unsigned char *output, size_t tag_len,
                                  unsigned char *tag);
int lp_portable_gcm_auth_decrypt(lp_portable_gcm_context *ctx, size_t length, const unsigned char *iv,
                                 size_t iv_len, const unsigned char *add, size_t add_len,
                                 const unsigned char *tag, size_t tag_len, const unsigned char *input,
                                 unsigned char *output);
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
int lp_portable_gcm_starts(lp_portable_gcm_context *ctx, int mode, const unsigned char *iv, size_t iv_len);
int lp_portable_gcm_update_ad(lp_portable_gcm_context *ctx, const unsigned char *add, size_t add_len);
int lp_portable_gcm_update(lp_portable_gcm_context *ctx, const unsigned char *input, size_t input_length,
                           unsigned char *output, size_t output_size, size_t *output_length);
int lp_portable_gcm_finish(lp_portable_gcm_context *ctx, unsigned char *output, size_t output_size,
                           size_t *output_length, unsigned char *tag, size_t tag_len);
#else
int lp_portable_gcm_starts(lp_portable_gcm_context *ctx, int mode, const unsigned char *iv, size_t iv_len,
                           const unsigned char *add, size_t add_len);
int lp_portable_gcm_update(lp_portable_gcm_context *ctx, size_t length, const unsigned char *input,
                           unsigned char *output);
int lp_portable_gcm_finish(lp_portable_gcm_context *ctx, unsigned char *tag, size_t tag_len);
#endif

#define PORTABLE_GCM(ctx) ((lp_portable_gcm_context *) (void *) (ctx)->portable.bytes)

#if defined(LP_AEAD_GCM_NETTLE)
_Static_assert(sizeof(struct gcm_aes128_ctx) <= LP_FAST_GCM_SIZE, "Nettle's gcm_aes128_ctx outgrew LP_FAST_GCM_SIZE");
_Static_assert(sizeof(struct gcm_aes256_ctx) <= LP_FAST_GCM_SIZE, "Nettle's gcm_aes256_ctx outgrew LP_FAST_GCM_SIZE");
_Static_assert(_Alignof(struct gcm_aes256_ctx) <= _Alignof(uint64_t), "Nettle's GCM context needs a stricter alignment");

#define FAST_GCM128(ctx) ((struct gcm_aes128_ctx *) (void *) (ctx)->fast.bytes)
#define FAST_GCM256(ctx) ((struct gcm_aes256_ctx *) (void *) (ctx)->fast.bytes)
#define GCM_FAST_TEXT "Nettle 3.8.1 (" GCM_FAST_INSTRUCTIONS " GHASH)"
/* Without the instructions Nettle's AES is table-driven C, as mbedTLS's is. */
#define GCM_NO_FAST_TEXT "mbedTLS portable C (no " GCM_FAST_INSTRUCTIONS " on this CPU)"
#else
/* The OpenSSL key state: the AES key schedule and the GHASH table (NEON loads it 16-aligned). */
struct openssl_gcm {
    uint64_t table[32];
    struct openssl_aes_key aes;
};
_Static_assert(sizeof(struct openssl_gcm) <= LP_FAST_GCM_SIZE, "the OpenSSL GCM state outgrew LP_FAST_GCM_SIZE");
#define FAST_OPENSSL_GCM(ctx) ((struct openssl_gcm *) (void *) (ctx)->fast.bytes)
#define GCM_FAST_TEXT "OpenSSL 3.0.17 ARMv7 assembly (AES ARMv4, GHASH NEON)"
#define GCM_NO_FAST_TEXT "mbedTLS portable C (no NEON on this CPU)"
#endif

/* The CPU check for the instructions the fast code was built with. */
#if defined(LP_AEAD_GCM_OPENSSL)
/* GHASH runs on NEON (the kernel's HWCAP_NEON, bit 12); the AES is integer code. */
static int cpu_has_aes_and_clmul(void)
{
    return (getauxval(AT_HWCAP) & (1UL << 12)) != 0;
}
#elif defined(__x86_64__)
#define GCM_FAST_INSTRUCTIONS "AES-NI, PCLMULQDQ"
static int cpu_has_aes_and_clmul(void)
{
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
/* Linux's arm64 hwcap bits (asm/hwcap.h), stable ABI. */
#define LP_HWCAP_AES (1UL << 3)
#define LP_HWCAP_PMULL (1UL << 4)
#define GCM_FAST_INSTRUCTIONS "ARMv8 AES, PMULL"
static int cpu_has_aes_and_clmul(void)
{
    unsigned long hwcap = getauxval(AT_HWCAP);
    return (hwcap & LP_HWCAP_AES) != 0 && (hwcap & LP_HWCAP_PMULL) != 0;
}
#else
#error "LP_AEAD_GCM_NETTLE: no CPU check for this architecture"
#endif

static int gcm_fast = -1;
static const char *gcm_text = "mbedTLS portable C";

static int gcm_use_fast(void)
{
    if (gcm_fast >= 0) {
        return gcm_fast;
    }
    if (forced_portable()) {
        gcm_fast = 0;
        gcm_text = FORCED_TEXT;
    } else if (cpu_has_aes_and_clmul()) {
        /* The fast code is built with the instructions of this check (build-nettle.sh,
         * build-openssl-asm.sh), which alone keeps it from running on a CPU without them. */
        gcm_fast = 1;
        gcm_text = GCM_FAST_TEXT;
    } else {
        gcm_fast = 0;
        gcm_text = GCM_NO_FAST_TEXT;
    }
    return gcm_fast;
}

const char *lp_aead_gcm_backend(void)
{
    gcm_use_fast();
    return gcm_text;
}

int lp_aead_gcm_fast(void)
{
#if defined(LP_AEAD_GCM_OPENSSL)
    /* Several times faster than mbedTLS's, but still dearer than ChaCha20-Poly1305 on NEON
     * (docs/CRYPTO.md): ChaCha20-Poly1305 stays first in the client's offer. */
    return 0;
#else
    return gcm_use_fast();
#endif
}

void mbedtls_gcm_init(mbedtls_gcm_context *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    lp_portable_gcm_init(PORTABLE_GCM(ctx));
}

void mbedtls_gcm_free(mbedtls_gcm_context *ctx)
{
    if (ctx == NULL) {
        return;
    }
    lp_portable_gcm_free(PORTABLE_GCM(ctx));
    mbedtls_platform_zeroize(ctx, sizeof(*ctx));
}

/* mbedTLS's own context, keyed on first use. Returns 0 or mbedTLS's error. */
static int portable_gcm(mbedtls_gcm_context *ctx, lp_portable_gcm_context **portable)
{
    *portable = PORTABLE_GCM(ctx);
    if (ctx->portable_keyed) {
        return 0;
    }
    int ret = lp_portable_gcm_setkey(*portable, (mbedtls_cipher_id_t) ctx->cipher, ctx->key, ctx->key_bits);
    ctx->portable_keyed = ret == 0;
    return ret;
}

int mbedtls_gcm_setkey(mbedtls_gcm_context *ctx, mbedtls_cipher_id_t cipher, const unsigned char *key,
                       unsigned int keybits)
{
    mbedtls_platform_zeroize(ctx->fast.bytes, sizeof(ctx->fast.bytes));
    mbedtls_platform_zeroize(ctx->key, sizeof(ctx->key));
    ctx->fast_key_bits = 0;
    ctx->portable_keyed = 0;
    int fast = cipher == MBEDTLS_CIPHER_ID_AES && (keybits == 128 || keybits == 256) && gcm_use_fast();
    if (!fast) {
        /* mbedTLS keys its context now, and answers for keys and ciphers it refuses. */
        int ret = lp_portable_gcm_setkey(PORTABLE_GCM(ctx), cipher, key, keybits);
        ctx->portable_keyed = ret == 0;
        return ret;
    }
    memcpy(ctx->key, key, keybits / 8);
    ctx->cipher = (int) cipher;
    ctx->key_bits = keybits;
#if defined(LP_AEAD_GCM_OPENSSL)
    /* H, the GHASH key, is the encrypted zero block, given to OpenSSL as two big-endian
     * 64-bit halves. */
    struct openssl_gcm *state = FAST_OPENSSL_GCM(ctx);
    unsigned char zero[16] = { 0 };
    uint64_t h[2] = { 0, 0 };
    lp_openssl_AES_set_encrypt_key(key, (int) keybits, &state->aes);
    lp_openssl_AES_encrypt(zero, zero, &state->aes);
    for (int i = 0; i < 8; i++) {
        h[0] = (h[0] << 8) | zero[i];
        h[1] = (h[1] << 8) | zero[8 + i];
    }
    lp_openssl_gcm_init_neon(state->table, h);
    mbedtls_platform_zeroize(zero, sizeof(zero));
    mbedtls_platform_zeroize(h, sizeof(h));
#else
    if (keybits == 128) {
        nettle_gcm_aes128_set_key(FAST_GCM128(ctx), key);
    } else {
        nettle_gcm_aes256_set_key(FAST_GCM256(ctx), key);
    }
#endif
    ctx->fast_key_bits = keybits;
    return 0;
}

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
/* The streaming calls: always mbedTLS's code (the portable context's state lives across them). */
#define WITH_PORTABLE_GCM(ctx, call)                                   \
    do {                                                               \
        lp_portable_gcm_context *portable;                             \
        int keyed = portable_gcm((ctx), &portable);                    \
        return keyed != 0 ? keyed : (call);                            \
    } while (0)

int mbedtls_gcm_starts(mbedtls_gcm_context *ctx, int mode, const unsigned char *iv, size_t iv_len)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_starts(portable, mode, iv, iv_len));
}

int mbedtls_gcm_update_ad(mbedtls_gcm_context *ctx, const unsigned char *add, size_t add_len)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_update_ad(portable, add, add_len));
}

int mbedtls_gcm_update(mbedtls_gcm_context *ctx, const unsigned char *input, size_t input_length,
                       unsigned char *output, size_t output_size, size_t *output_length)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_update(portable, input, input_length, output, output_size, output_length));
}

int mbedtls_gcm_finish(mbedtls_gcm_context *ctx, unsigned char *output, size_t output_size,
                       size_t *output_length, unsigned char *tag, size_t tag_len)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_finish(portable, output, output_size, output_length, tag, tag_len));
}
#else
int mbedtls_gcm_starts(mbedtls_gcm_context *ctx, int mode, const unsigned char *iv, size_t iv_len,
                       const unsigned char *add, size_t add_len)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_starts(portable, mode, iv, iv_len, add, add_len));
}

int mbedtls_gcm_update(mbedtls_gcm_context *ctx, size_t length, const unsigned char *input, unsigned char *output)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_update(portable, length, input, output));
}

int mbedtls_gcm_finish(mbedtls_gcm_context *ctx, unsigned char *tag, size_t tag_len)
{
    WITH_PORTABLE_GCM(ctx, lp_portable_gcm_finish(portable, tag, tag_len));
}
#endif

/* The fast path takes what the TLS record layer uses: 12-byte IVs, tags of 4 to 16 bytes.
 * Anything else keeps mbedTLS's checks and answers. */
static int gcm_fast_call(const mbedtls_gcm_context *ctx, size_t iv_len, size_t tag_len)
{
    return ctx->fast_key_bits != 0 && iv_len == 12 && tag_len >= 4 && tag_len <= 16;
}

#if defined(LP_AEAD_GCM_OPENSSL)
/* GHASH over `data` padded with zeros to a multiple of 16 bytes (NIST SP 800-38D, 7.1). */
static void openssl_ghash_padded(const struct openssl_gcm *fast, uint64_t xi[2], const unsigned char *data,
                                 size_t len)
{
    size_t whole = len & ~(size_t) 15;
    if (whole != 0) {
        lp_openssl_gcm_ghash_neon(xi, fast->table, data, whole);
    }
    if (whole != len) {
        unsigned char last[16] = { 0 };
        memcpy(last, data + whole, len - whole);
        lp_openssl_gcm_ghash_neon(xi, fast->table, last, sizeof(last));
    }
}

/* One record, sealed or opened with a 12-byte IV: counter mode from J0 + 1 with a 32-bit
 * big-endian counter, GHASH over the additional data and the ciphertext (each padded) and
 * their bit lengths, tag = E(J0) xor GHASH. In place allowed: the ciphertext is hashed before
 * it is decrypted and after it is encrypted. */
static void openssl_gcm_crypt(const struct openssl_gcm *fast, int encrypt, size_t length, const unsigned char iv[12],
                              const unsigned char *add, size_t add_len, const unsigned char *input,
                              unsigned char *output, size_t tag_len, unsigned char *tag)
{
    unsigned char counter[16], stream[16], lengths[16];
    uint64_t xi[2] = { 0, 0 };
    memcpy(counter, iv, 12);
    counter[12] = 0, counter[13] = 0, counter[14] = 0, counter[15] = 1;
    openssl_ghash_padded(fast, xi, add, add_len);
    if (!encrypt) {
        openssl_ghash_padded(fast, xi, input, length);
    }
    uint32_t block = 1;
    for (size_t done = 0; done < length; done += 16) {
        block++;
        counter[12] = (unsigned char) (block >> 24), counter[13] = (unsigned char) (block >> 16);
        counter[14] = (unsigned char) (block >> 8), counter[15] = (unsigned char) block;
        lp_openssl_AES_encrypt(counter, stream, &fast->aes);
        size_t n = length - done < 16 ? length - done : 16;
        if (n == 16) {
            uint32_t in[4], key[4];
            memcpy(in, input + done, 16);
            memcpy(key, stream, 16);
            for (int i = 0; i < 4; i++) {
                in[i] ^= key[i];
            }
            memcpy(output + done, in, 16);
        } else {
            for (size_t i = 0; i < n; i++) {
                output[done + i] = input[done + i] ^ stream[i];
            }
        }
    }
    if (encrypt) {
        openssl_ghash_padded(fast, xi, output, length);
    }
    uint64_t add_bits = (uint64_t) add_len * 8, text_bits = (uint64_t) length * 8;
    for (int i = 0; i < 8; i++) {
        lengths[i] = (unsigned char) (add_bits >> (56 - 8 * i));
        lengths[8 + i] = (unsigned char) (text_bits >> (56 - 8 * i));
    }
    lp_openssl_gcm_ghash_neon(xi, fast->table, lengths, sizeof(lengths));
    counter[12] = 0, counter[13] = 0, counter[14] = 0, counter[15] = 1;
    lp_openssl_AES_encrypt(counter, stream, &fast->aes);
    unsigned char hash[16];
    memcpy(hash, xi, sizeof(hash));
    for (size_t i = 0; i < tag_len; i++) {
        tag[i] = hash[i] ^ stream[i];
    }
    mbedtls_platform_zeroize(stream, sizeof(stream));
    mbedtls_platform_zeroize(hash, sizeof(hash));
    mbedtls_platform_zeroize(xi, sizeof(xi));
}
#else
static void gcm_fast_start(mbedtls_gcm_context *ctx, const unsigned char *iv, const unsigned char *add,
                           size_t add_len)
{
    if (ctx->fast_key_bits == 128) {
        nettle_gcm_aes128_set_iv(FAST_GCM128(ctx), 12, iv);
        nettle_gcm_aes128_update(FAST_GCM128(ctx), add_len, add);
    } else {
        nettle_gcm_aes256_set_iv(FAST_GCM256(ctx), 12, iv);
        nettle_gcm_aes256_update(FAST_GCM256(ctx), add_len, add);
    }
}

static void gcm_fast_digest(mbedtls_gcm_context *ctx, size_t tag_len, unsigned char *tag)
{
    if (ctx->fast_key_bits == 128) {
        nettle_gcm_aes128_digest(FAST_GCM128(ctx), tag_len, tag);
    } else {
        nettle_gcm_aes256_digest(FAST_GCM256(ctx), tag_len, tag);
    }
}
#endif

int mbedtls_gcm_crypt_and_tag(mbedtls_gcm_context *ctx, int mode, size_t length, const unsigned char *iv,
                              size_t iv_len, const unsigned char *add, size_t add_len,
                              const unsigned char *input, unsigned char *output, size_t tag_len,
                              unsigned char *tag)
{
    if (!gcm_fast_call(ctx, iv_len, tag_len)) {
        WITH_PORTABLE_GCM(ctx, lp_portable_gcm_crypt_and_tag(portable, mode, length, iv, iv_len, add, add_len,
                                                             input, output, tag_len, tag));
    }
#if defined(LP_AEAD_GCM_OPENSSL)
    openssl_gcm_crypt(FAST_OPENSSL_GCM(ctx), mode == MBEDTLS_GCM_ENCRYPT, length, iv, add, add_len, input, output,
                      tag_len, tag);
#else
    gcm_fast_start(ctx, iv, add, add_len);
    /* Nettle allows output == input (in place), as mbedTLS does. */
    if (ctx->fast_key_bits == 128) {
        if (mode == MBEDTLS_GCM_ENCRYPT) {
            nettle_gcm_aes128_encrypt(FAST_GCM128(ctx), length, output, input);
        } else {
            nettle_gcm_aes128_decrypt(FAST_GCM128(ctx), length, output, input);
        }
    } else {
        if (mode == MBEDTLS_GCM_ENCRYPT) {
            nettle_gcm_aes256_encrypt(FAST_GCM256(ctx), length, output, input);
        } else {
            nettle_gcm_aes256_decrypt(FAST_GCM256(ctx), length, output, input);
        }
    }
    gcm_fast_digest(ctx, tag_len, tag);
#endif
    return 0;
}

int mbedtls_gcm_auth_decrypt(mbedtls_gcm_context *ctx, size_t length, const unsigned char *iv, size_t iv_len,
                             const unsigned char *add, size_t add_len, const unsigned char *tag, size_t tag_len,
                             const unsigned char *input, unsigned char *output)
{
    if (!gcm_fast_call(ctx, iv_len, tag_len)) {
        WITH_PORTABLE_GCM(ctx, lp_portable_gcm_auth_decrypt(portable, length, iv, iv_len, add, add_len, tag, tag_len,
                                                            input, output));
    }
    unsigned char expected[16];
    mbedtls_gcm_crypt_and_tag(ctx, MBEDTLS_GCM_DECRYPT, length, iv, iv_len, add, add_len, input, output,
                              tag_len, expected);
    int same = mbedtls_ct_memcmp(expected, tag, tag_len) == 0;
    mbedtls_platform_zeroize(expected, sizeof(expected));
    if (!same) {
        /* As mbedTLS does: nothing of an unauthenticated message is left in the output. */
        mbedtls_platform_zeroize(output, length);
        return MBEDTLS_ERR_GCM_AUTH_FAILED;
    }
    return 0;
}

#else

const char *lp_aead_gcm_backend(void)
{
    return "mbedTLS portable C";
}

int lp_aead_gcm_fast(void)
{
    return 0;
}

#endif /* LP_AEAD_GCM */
