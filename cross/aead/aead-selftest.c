/*
 * localproxy: checks the record AEADs of a static device build through mbedTLS's own APIs.
 * `make embedded` builds it against the same minimal mbedTLS as the proxy and runs it (under
 * qemu for ARM), once as the CPU allows and once with LOCALPROXY_AEAD=portable.
 *
 *   1. Known answers through the cipher layer (the calls the TLS record layer makes):
 *      AES-128-GCM and AES-256-GCM (GCM specification test cases 4 and 16) and
 *      ChaCha20-Poly1305 (RFC 8439 section 2.8.2), sealed and opened in place.
 *   2. Every bit of the tag, and bits of the ciphertext and the AAD, flipped one at a time:
 *      each is refused, and nothing of the plaintext is left in the output.
 *   3. With an accelerated AEAD (MBEDTLS_CHACHAPOLY_ALT, MBEDTLS_GCM_ALT): the result of
 *      mbedTLS's portable code compared with it, for random lengths from 0 to 70 KiB, at
 *      unaligned addresses, in place and out of place, and through the streaming calls; wrong
 *      tags refused and the output wiped.
 *
 * Prints one line per part and exits 1 at the first wrong answer, naming it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbedtls/cipher.h"
#include "mbedtls/chachapoly.h"
#include "mbedtls/gcm.h"

#if defined(MBEDTLS_GCM_ALT)
const char *lp_aead_gcm_backend(void);
typedef struct lp_portable_gcm_context lp_portable_gcm_context;
void lp_portable_gcm_init(lp_portable_gcm_context *ctx);
int lp_portable_gcm_setkey(lp_portable_gcm_context *ctx, mbedtls_cipher_id_t cipher, const unsigned char *key,
                           unsigned int keybits);
int lp_portable_gcm_crypt_and_tag(lp_portable_gcm_context *ctx, int mode, size_t length, const unsigned char *iv,
                                  size_t iv_len, const unsigned char *add, size_t add_len,
                                  const unsigned char *input, unsigned char *output, size_t tag_len,
                                  unsigned char *tag);
#endif

#if defined(MBEDTLS_CHACHAPOLY_ALT)
const char *lp_aead_chachapoly_backend(void);
typedef struct lp_portable_chachapoly_context lp_portable_chachapoly_context;
void lp_portable_chachapoly_init(lp_portable_chachapoly_context *ctx);
int lp_portable_chachapoly_setkey(lp_portable_chachapoly_context *ctx, const unsigned char key[32]);
int lp_portable_chachapoly_encrypt_and_tag(lp_portable_chachapoly_context *ctx, size_t length,
                                           const unsigned char nonce[12], const unsigned char *aad,
                                           size_t aad_len, const unsigned char *input,
                                           unsigned char *output, unsigned char tag[16]);
#endif

#define MAX_LENGTH (70 * 1024)

static void fail(const char *what, size_t detail)
{
    printf("aead-selftest: FAILED: %s (%zu)\n", what, detail);
    exit(1);
}

static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = 0;
    for (; hex[0] && hex[1]; hex += 2) {
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1) {
            fail("bad hex in a test vector", n);
        }
        out[n++] = (unsigned char) v;
    }
    return n;
}

struct vector {
    const char *name;
    mbedtls_cipher_type_t type;
    const char *key, *nonce, *aad, *plaintext, *ciphertext, *tag;
};

static const struct vector VECTORS[] = {
    { "AES-128-GCM (GCM test case 4)", MBEDTLS_CIPHER_AES_128_GCM,
      "feffe9928665731c6d6a8f9467308308",
      "cafebabefacedbaddecaf888",
      "feedfacedeadbeeffeedfacedeadbeefabaddad2",
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
      "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
      "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
      "5bc94fbc3221a5db94fae95ae7121a47" },
    { "AES-256-GCM (GCM test case 16)", MBEDTLS_CIPHER_AES_256_GCM,
      "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
      "cafebabefacedbaddecaf888",
      "feedfacedeadbeeffeedfacedeadbeefabaddad2",
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
      "76fc6ece0f4e1768cddf8853bb2d551b" },
    { "ChaCha20-Poly1305 (RFC 8439 2.8.2)", MBEDTLS_CIPHER_CHACHA20_POLY1305,
      "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
      "070000004041424344454647",
      "50515253c0c1c2c3c4c5c6c7",
      "4c616469657320616e642047656e746c656d656e206f662074686520636c6173"
      "73206f66202739393a204966204920636f756c64206f6666657220796f75206f"
      "6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73"
      "637265656e20776f756c642062652069742e",
      "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
      "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
      "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
      "3ff4def08e4b7a9de576d26586cec64b6116",
      "1ae10b594f09e26a7e902ecbd0600691" },
};

/* Seals `len` bytes of `in` into `out` (which may be `in`): the ciphertext, then the 16-byte
 * tag, as the cipher layer's "ext" calls lay it out. */
static int seal(mbedtls_cipher_context_t *c, const unsigned char *nonce, const unsigned char *aad,
                size_t aad_len, const unsigned char *in, size_t len, unsigned char *out)
{
    size_t written = 0;
    int ret = mbedtls_cipher_auth_encrypt_ext(c, nonce, 12, aad, aad_len, in, len, out, len + 16,
                                              &written, 16);
    if (ret == 0 && written != len + 16) {
        fail("seal wrote an unexpected length", written);
    }
    return ret;
}

static int open_(mbedtls_cipher_context_t *c, const unsigned char *nonce, const unsigned char *aad,
                 size_t aad_len, const unsigned char *in, size_t len_with_tag, unsigned char *out)
{
    size_t written = 0;
    return mbedtls_cipher_auth_decrypt_ext(c, nonce, 12, aad, aad_len, in, len_with_tag, out,
                                           len_with_tag - 16, &written, 16);
}

static void setup(mbedtls_cipher_context_t *c, mbedtls_cipher_type_t type, const unsigned char *key,
                  mbedtls_operation_t op)
{
    const mbedtls_cipher_info_t *info = mbedtls_cipher_info_from_type(type);
    if (info == NULL) {
        fail("cipher missing from this mbedTLS build", (size_t) type);
    }
    mbedtls_cipher_init(c);
    if (mbedtls_cipher_setup(c, info) != 0 ||
        mbedtls_cipher_setkey(c, key, (int) mbedtls_cipher_get_key_bitlen(c), op) != 0) {
        fail("cipher setup", (size_t) type);
    }
}

static void known_answers(void)
{
    for (size_t i = 0; i < sizeof VECTORS / sizeof VECTORS[0]; i++) {
        const struct vector *v = &VECTORS[i];
        unsigned char key[32], nonce[12], aad[32], pt[128], expected[160], buf[160], out[160];
        unhex(v->key, key);
        unhex(v->nonce, nonce);
        size_t aad_len = unhex(v->aad, aad);
        size_t len = unhex(v->plaintext, pt);
        unhex(v->ciphertext, expected);
        unhex(v->tag, expected + len);

        mbedtls_cipher_context_t enc, dec;
        setup(&enc, v->type, key, MBEDTLS_ENCRYPT);
        setup(&dec, v->type, key, MBEDTLS_DECRYPT);
        memcpy(buf, pt, len);
        if (seal(&enc, nonce, aad, aad_len, buf, len, buf) != 0 || memcmp(buf, expected, len + 16) != 0) {
            printf("aead-selftest: %s: wrong ciphertext or tag\n", v->name);
            fail("known answer", i);
        }
        if (open_(&dec, nonce, aad, aad_len, buf, len + 16, out) != 0 || memcmp(out, pt, len) != 0) {
            printf("aead-selftest: %s: did not open its own known answer\n", v->name);
            fail("known answer", i);
        }

        /* Every tag bit, every 7th ciphertext bit and every AAD bit, one at a time. */
        for (size_t bit = 0; bit < (len + 16) * 8 + aad_len * 8; bit++) {
            int in_aad = bit >= (len + 16) * 8;
            if (!in_aad && bit < len * 8 && bit % 7 != 0) {
                continue;
            }
            memcpy(buf, expected, len + 16);
            unsigned char bad_aad[32];
            memcpy(bad_aad, aad, aad_len);
            if (in_aad) {
                size_t b = bit - (len + 16) * 8;
                bad_aad[b / 8] ^= (unsigned char) (1u << (b % 8));
            } else {
                buf[bit / 8] ^= (unsigned char) (1u << (bit % 8));
            }
            memset(out, 0xA5, sizeof out);
            int ret = open_(&dec, nonce, bad_aad, aad_len, buf, len + 16, out);
            if (ret != MBEDTLS_ERR_CIPHER_AUTH_FAILED) {
                printf("aead-selftest: %s: a flipped bit %zu was not refused (%d)\n", v->name, bit, ret);
                fail("tampering", bit);
            }
            for (size_t k = 0; k < len; k++) {
                if (out[k] != 0) {
                    printf("aead-selftest: %s: output not wiped after a refusal\n", v->name);
                    fail("tampering", bit);
                }
            }
        }
        mbedtls_cipher_free(&enc);
        mbedtls_cipher_free(&dec);
    }
    printf("aead-selftest: known answers and tampering: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 ok\n");
}

#if defined(MBEDTLS_CHACHAPOLY_ALT) || defined(MBEDTLS_GCM_ALT)
static const size_t edges[] = { 0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 511, 512, 513,
                                16383, 16384, 16385, 65535, 65536, MAX_LENGTH };
#define ROUNDS 400

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t next_random(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void random_bytes(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char) next_random();
    }
}

static size_t round_length(size_t round)
{
    return round < sizeof edges / sizeof edges[0] ? edges[round] : (size_t) (next_random() % (MAX_LENGTH + 1));
}

static void check_wiped(const unsigned char *p, size_t len, const char *what)
{
    for (size_t k = 0; k < len; k++) {
        if (p[k] != 0) {
            fail(what, len);
        }
    }
}
#endif

#if defined(MBEDTLS_CHACHAPOLY_ALT)
/* The accelerated ChaCha20-Poly1305 against mbedTLS's portable code. */
static void chachapoly_differential(void)
{
    unsigned char *reference = malloc(MAX_LENGTH + 64), *work = malloc(MAX_LENGTH + 64),
                  *plain = malloc(MAX_LENGTH + 64);
    static lp_portable_chachapoly_context *portable;
    static union { unsigned char bytes[LP_PORTABLE_CHACHAPOLY_SIZE]; uint64_t align; } portable_storage;
    portable = (lp_portable_chachapoly_context *) (void *) portable_storage.bytes;
    if (reference == NULL || work == NULL || plain == NULL) {
        fail("out of memory", MAX_LENGTH);
    }
    const size_t rounds = ROUNDS;
    for (size_t round = 0; round < rounds; round++) {
        size_t len = round_length(round);
        size_t offset = (size_t) (next_random() % 16), out_offset = (size_t) (next_random() % 16);
        size_t aad_len = (size_t) (next_random() % 65);
        unsigned char key[32], nonce[12], aad[64], tag_ref[16], tag[16];
        random_bytes(key, sizeof key);
        random_bytes(nonce, sizeof nonce);
        random_bytes(aad, aad_len);
        random_bytes(plain + offset, len);

        lp_portable_chachapoly_init(portable);
        if (lp_portable_chachapoly_setkey(portable, key) != 0 ||
            lp_portable_chachapoly_encrypt_and_tag(portable, len, nonce, aad, aad_len, plain + offset,
                                                   reference, tag_ref) != 0) {
            fail("portable encryption", round);
        }

        mbedtls_chachapoly_context ctx;
        mbedtls_chachapoly_init(&ctx);
        if (mbedtls_chachapoly_setkey(&ctx, key) != 0) {
            fail("setkey", round);
        }
        /* Out of place, unaligned. */
        if (mbedtls_chachapoly_encrypt_and_tag(&ctx, len, nonce, aad, aad_len, plain + offset, work + out_offset, tag) != 0 ||
            memcmp(work + out_offset, reference, len) != 0 || memcmp(tag, tag_ref, 16) != 0) {
            fail("out-of-place encryption differs from mbedTLS's portable code; length", len);
        }
        /* In place (as the TLS record layer does), then back. */
        memcpy(work + offset, plain + offset, len);
        if (mbedtls_chachapoly_encrypt_and_tag(&ctx, len, nonce, aad, aad_len, work + offset, work + offset, tag) != 0 ||
            memcmp(work + offset, reference, len) != 0 || memcmp(tag, tag_ref, 16) != 0) {
            fail("in-place encryption differs from mbedTLS's portable code; length", len);
        }
        if (mbedtls_chachapoly_auth_decrypt(&ctx, len, nonce, aad, aad_len, tag, work + offset, work + offset) != 0 ||
            memcmp(work + offset, plain + offset, len) != 0) {
            fail("in-place decryption; length", len);
        }
        /* The streaming calls, in uneven pieces. */
        if (mbedtls_chachapoly_starts(&ctx, nonce, MBEDTLS_CHACHAPOLY_ENCRYPT) != 0 ||
            mbedtls_chachapoly_update_aad(&ctx, aad, aad_len) != 0) {
            fail("streaming start", round);
        }
        size_t done = 0;
        while (done < len) {
            size_t piece = 1 + (size_t) (next_random() % 5000);
            if (piece > len - done) {
                piece = len - done;
            }
            if (mbedtls_chachapoly_update(&ctx, piece, plain + offset + done, work + done) != 0) {
                fail("streaming update", round);
            }
            done += piece;
        }
        if (mbedtls_chachapoly_finish(&ctx, tag) != 0 || memcmp(work, reference, len) != 0 ||
            memcmp(tag, tag_ref, 16) != 0) {
            fail("streaming encryption differs from the one-shot call; length", len);
        }
        /* A wrong tag is refused and the output is wiped. */
        tag_ref[round % 16] ^= (unsigned char) (1u << (round % 8));
        memcpy(work, reference, len);
        if (mbedtls_chachapoly_auth_decrypt(&ctx, len, nonce, aad, aad_len, tag_ref, work, work) !=
            MBEDTLS_ERR_CHACHAPOLY_AUTH_FAILED) {
            fail("a wrong tag was accepted; length", len);
        }
        check_wiped(work, len, "output not wiped after a refused tag; length");
        mbedtls_chachapoly_free(&ctx);
    }
    free(reference);
    free(work);
    free(plain);
    printf("aead-selftest: ChaCha20-Poly1305 (%s) equals mbedTLS's portable code: %zu messages of 0 to %d bytes, "
           "unaligned, in place and out of place, one-shot and streaming; wrong tags refused\n",
           lp_aead_chachapoly_backend(), rounds, MAX_LENGTH);
}
#endif

#if defined(MBEDTLS_GCM_ALT)
/* The accelerated AES-GCM against mbedTLS's portable code, for 128- and 256-bit keys (the ones
 * the fast path takes) and 192-bit keys (which stay on mbedTLS's code through the same API). */
static void gcm_differential(void)
{
    unsigned char *reference = malloc(MAX_LENGTH + 64), *work = malloc(MAX_LENGTH + 64),
                  *plain = malloc(MAX_LENGTH + 64);
    static union { unsigned char bytes[LP_PORTABLE_GCM_SIZE]; uint64_t align; } portable_storage;
    lp_portable_gcm_context *portable = (lp_portable_gcm_context *) (void *) portable_storage.bytes;
    if (reference == NULL || work == NULL || plain == NULL) {
        fail("out of memory", MAX_LENGTH);
    }
    static const unsigned key_sizes[] = { 128, 256, 192 };
    for (size_t round = 0; round < ROUNDS; round++) {
        unsigned bits = key_sizes[round % 3];
        size_t len = round_length(round);
        size_t offset = (size_t) (next_random() % 16), out_offset = (size_t) (next_random() % 16);
        size_t aad_len = (size_t) (next_random() % 65);
        unsigned char key[32], iv[12], aad[64], tag_ref[16], tag[16];
        random_bytes(key, sizeof key);
        random_bytes(iv, sizeof iv);
        random_bytes(aad, aad_len);
        random_bytes(plain + offset, len);

        lp_portable_gcm_init(portable);
        if (lp_portable_gcm_setkey(portable, MBEDTLS_CIPHER_ID_AES, key, bits) != 0 ||
            lp_portable_gcm_crypt_and_tag(portable, MBEDTLS_GCM_ENCRYPT, len, iv, 12, aad, aad_len,
                                          plain + offset, reference, 16, tag_ref) != 0) {
            fail("portable GCM encryption", round);
        }
        mbedtls_gcm_context ctx;
        mbedtls_gcm_init(&ctx);
        if (mbedtls_gcm_setkey(&ctx, MBEDTLS_CIPHER_ID_AES, key, bits) != 0) {
            fail("GCM setkey", bits);
        }
        if (mbedtls_gcm_crypt_and_tag(&ctx, MBEDTLS_GCM_ENCRYPT, len, iv, 12, aad, aad_len, plain + offset,
                                      work + out_offset, 16, tag) != 0 ||
            memcmp(work + out_offset, reference, len) != 0 || memcmp(tag, tag_ref, 16) != 0) {
            fail("out-of-place GCM encryption differs from mbedTLS's portable code; length", len);
        }
        memcpy(work + offset, plain + offset, len);
        if (mbedtls_gcm_crypt_and_tag(&ctx, MBEDTLS_GCM_ENCRYPT, len, iv, 12, aad, aad_len, work + offset,
                                      work + offset, 16, tag) != 0 ||
            memcmp(work + offset, reference, len) != 0 || memcmp(tag, tag_ref, 16) != 0) {
            fail("in-place GCM encryption differs from mbedTLS's portable code; length", len);
        }
        if (mbedtls_gcm_auth_decrypt(&ctx, len, iv, 12, aad, aad_len, tag, 16, work + offset, work + offset) != 0 ||
            memcmp(work + offset, plain + offset, len) != 0) {
            fail("in-place GCM decryption; length", len);
        }
        /* A shortened tag (the API allows 4 to 16 bytes) is the reference's prefix. */
        if (mbedtls_gcm_crypt_and_tag(&ctx, MBEDTLS_GCM_ENCRYPT, len, iv, 12, aad, aad_len, plain + offset,
                                      work, 12, tag) != 0 || memcmp(tag, tag_ref, 12) != 0) {
            fail("12-byte GCM tag; length", len);
        }
        /* The streaming calls through the cipher layer, in pieces of whole blocks. */
        mbedtls_cipher_context_t c;
        mbedtls_cipher_type_t type = bits == 128 ? MBEDTLS_CIPHER_AES_128_GCM
                                   : bits == 192 ? MBEDTLS_CIPHER_AES_192_GCM : MBEDTLS_CIPHER_AES_256_GCM;
        if (mbedtls_cipher_info_from_type(type) != NULL) {
            setup(&c, type, key, MBEDTLS_ENCRYPT);
            size_t done = 0, olen = 0;
            if (mbedtls_cipher_set_iv(&c, iv, 12) != 0 || mbedtls_cipher_reset(&c) != 0 ||
                mbedtls_cipher_update_ad(&c, aad, aad_len) != 0) {
                fail("GCM streaming start", round);
            }
            while (done < len) {
                size_t piece = 16 * (1 + (size_t) (next_random() % 300));
                if (piece > len - done) {
                    piece = len - done;
                }
                if (mbedtls_cipher_update(&c, plain + offset + done, piece, work + done, &olen) != 0 || olen != piece) {
                    fail("GCM streaming update", round);
                }
                done += piece;
            }
            if (mbedtls_cipher_finish(&c, work + done, &olen) != 0 || mbedtls_cipher_write_tag(&c, tag, 16) != 0 ||
                memcmp(work, reference, len) != 0 || memcmp(tag, tag_ref, 16) != 0) {
                fail("GCM streaming encryption differs from the one-shot call; length", len);
            }
            mbedtls_cipher_free(&c);
        }
        /* A wrong tag is refused and the output is wiped. */
        tag_ref[round % 16] ^= (unsigned char) (1u << (round % 8));
        memcpy(work, reference, len);
        if (mbedtls_gcm_auth_decrypt(&ctx, len, iv, 12, aad, aad_len, tag_ref, 16, work, work) !=
            MBEDTLS_ERR_GCM_AUTH_FAILED) {
            fail("a wrong GCM tag was accepted; length", len);
        }
        check_wiped(work, len, "output not wiped after a refused GCM tag; length");
        mbedtls_gcm_free(&ctx);
    }
    free(reference);
    free(work);
    free(plain);
    printf("aead-selftest: AES-GCM (%s) equals mbedTLS's portable code: %d messages of 0 to %d bytes, "
           "128-, 192- and 256-bit keys, unaligned, in place and out of place, one-shot and streaming; "
           "wrong tags refused\n", lp_aead_gcm_backend(), ROUNDS, MAX_LENGTH);
}
#endif

int main(void)
{
    known_answers();
#if defined(MBEDTLS_GCM_ALT)
    gcm_differential();
#endif
#if defined(MBEDTLS_CHACHAPOLY_ALT)
    chachapoly_differential();
#endif
#if !defined(MBEDTLS_GCM_ALT) && !defined(MBEDTLS_CHACHAPOLY_ALT)
    printf("aead-selftest: this build has no accelerated AEAD (mbedTLS's portable code only)\n");
#endif
    return 0;
}
