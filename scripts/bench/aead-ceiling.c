/*
 * aead-ceiling: CPU cost of the proxy's TLS record cipher.
 *
 * Every byte the proxy relays goes through mbedTLS as a TLS 1.2 record: sealed with an
 * AEAD on the way out and opened on the way in. However lean the rest of the relay path
 * is, it cannot spend less CPU per byte than that cipher work, so this number is the
 * floor under the proxy's CPU cost (equivalently, the ceiling of its throughput per
 * core). The throughput harness compares measured proxy costs against it.
 *
 * For each suite, the program seals N MiB of plaintext as consecutive records, laid
 * out the way TLS 1.2 does it:
 *   - 13 bytes of additional data: sequence number (8), content type (1),
 *     protocol version (2), plaintext length (2);
 *   - AES-GCM nonce: 4-byte implicit salt followed by an 8-byte explicit part, which
 *     mbedTLS fills with the sequence number;
 *   - ChaCha20-Poly1305 nonce: the 12-byte IV XOR the sequence number, left-padded.
 * It then opens those records in place, as mbedTLS's record layer does, and checks
 * every tag and every plaintext byte. Sealing and opening are timed separately in
 * process CPU time, not wall time, so other load on the machine matters less.
 *
 * It calls the AEAD modules (mbedtls_gcm_*, mbedtls_chachapoly_*) directly. The TLS
 * layer reaches the same code through mbedtls_cipher_*; only its small per-record
 * bookkeeping is missing here.
 *
 * Build it with the proxy's compiler flags and against the same libmbedcrypto as the
 * binary being measured: the system one (mbedTLS 2.28 on Debian 12) or a minimal one
 * built from source, e.g.
 *   cc -O2 -Wall -Wextra -o aead-ceiling aead-ceiling.c -lmbedcrypto
 *   cc -O2 -Wall -Wextra -I<mbedtls>/include -o aead-ceiling aead-ceiling.c \
 *      -L<mbedtls>/library -lmbedcrypto
 * It compiles against mbedTLS 2.28 and 3.6. A suite whose module is left out of the
 * library's configuration is reported as unavailable.
 *
 * Key, IVs and plaintext come from a fixed-seed generator: the cipher cost does not
 * depend on the data, and fixed inputs make runs repeatable. Two known-answer tests run
 * first, so a broken library cannot produce a flattering number.
 */

#define _POSIX_C_SOURCE 200809L

/* First: in 2.28 this pulls in the library configuration (config.h or
 * MBEDTLS_CONFIG_FILE), in 3.x build_info.h, and defines MBEDTLS_VERSION_NUMBER. */
#include <mbedtls/version.h>
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#include <mbedtls/build_info.h>
#endif

#if defined(MBEDTLS_GCM_C)
#include <mbedtls/gcm.h>
#endif
#if defined(MBEDTLS_CHACHAPOLY_C)
#include <mbedtls/chachapoly.h>
#endif

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROG "aead-ceiling"

#define TAG_LEN 16
#define NONCE_LEN 12
#define AAD_LEN 13
#define TLS_MAX_PLAINTEXT 16384 /* largest TLS record plaintext */
#define WORKSET_BYTES (1u << 20) /* records in flight between sealing and opening */
#define MIB_MAX 65536ul

#define TLS_TYPE_APPLICATION_DATA 0x17
#define TLS_VERSION_MAJOR 0x03
#define TLS_VERSION_MINOR 0x03 /* TLS 1.2 */

#define EXIT_USAGE 2

/* ------------------------------------------------------------------------- */
/* Errors */

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_FAILURE);
}

/* mbedTLS error codes are negative; print them the way mbedTLS documents them. */
static unsigned mbedtls_code(int ret)
{
    return ret < 0 ? (unsigned)-ret : (unsigned)ret;
}

/* ------------------------------------------------------------------------- */
/* AEAD over the two mbedTLS modules */

enum aead_kind { KIND_GCM, KIND_CHACHAPOLY };

struct suite {
    const char *name;
    enum aead_kind kind;
    unsigned key_bits;
};

static const struct suite SUITES[] = {
    { "aes-128-gcm", KIND_GCM, 128 },
    { "aes-256-gcm", KIND_GCM, 256 },
    { "chacha20-poly1305", KIND_CHACHAPOLY, 256 },
};
#define SUITE_COUNT (sizeof SUITES / sizeof SUITES[0])

struct aead {
    enum aead_kind kind;
    int initialised;
#if defined(MBEDTLS_GCM_C)
    mbedtls_gcm_context gcm;
#endif
#if defined(MBEDTLS_CHACHAPOLY_C)
    mbedtls_chachapoly_context chachapoly;
#endif
};

/*
 * Sets up a context with the key. Returns 0, or -1 with *why describing why the
 * algorithm is unavailable in this build (why points into `whybuf`).
 */
static int aead_init(struct aead *a, enum aead_kind kind, const uint8_t *key,
                     unsigned key_bits, const char **why, char *whybuf, size_t whylen)
{
    int ret = 0;
    const char *call = NULL;

    /* Each parameter is used only by the algorithms this build has. */
    (void)key;
    (void)key_bits;
    a->kind = kind;
    a->initialised = 0;
    switch (kind) {
    case KIND_GCM:
#if defined(MBEDTLS_GCM_C)
        mbedtls_gcm_init(&a->gcm);
        a->initialised = 1;
        ret = mbedtls_gcm_setkey(&a->gcm, MBEDTLS_CIPHER_ID_AES, key, key_bits);
        call = "mbedtls_gcm_setkey";
        break;
#else
        *why = "MBEDTLS_GCM_C is not enabled in this mbedTLS build";
        return -1;
#endif
    case KIND_CHACHAPOLY:
#if defined(MBEDTLS_CHACHAPOLY_C)
        mbedtls_chachapoly_init(&a->chachapoly);
        a->initialised = 1;
        ret = mbedtls_chachapoly_setkey(&a->chachapoly, key); /* always a 256-bit key */
        call = "mbedtls_chachapoly_setkey";
        break;
#else
        *why = "MBEDTLS_CHACHAPOLY_C is not enabled in this mbedTLS build";
        return -1;
#endif
    default:
        *why = "unknown algorithm";
        return -1;
    }
    if (ret != 0) {
        snprintf(whybuf, whylen, "%s with a %u-bit key returned -0x%04X", call, key_bits,
                 mbedtls_code(ret));
        *why = whybuf;
        return -1;
    }
    return 0;
}

static void aead_free(struct aead *a)
{
    if (!a->initialised)
        return;
    switch (a->kind) {
    case KIND_GCM:
#if defined(MBEDTLS_GCM_C)
        mbedtls_gcm_free(&a->gcm);
#endif
        break;
    case KIND_CHACHAPOLY:
#if defined(MBEDTLS_CHACHAPOLY_C)
        mbedtls_chachapoly_free(&a->chachapoly);
#endif
        break;
    }
    a->initialised = 0;
}

/* Encrypts buf[0..len) in place and writes the 16-byte tag. Returns an mbedTLS code. */
static int aead_seal(struct aead *a, const uint8_t nonce[NONCE_LEN], const uint8_t *aad,
                     size_t aad_len, uint8_t *buf, size_t len, uint8_t tag[TAG_LEN])
{
    switch (a->kind) {
    case KIND_GCM:
#if defined(MBEDTLS_GCM_C)
        return mbedtls_gcm_crypt_and_tag(&a->gcm, MBEDTLS_GCM_ENCRYPT, len, nonce,
                                         NONCE_LEN, aad, aad_len, buf, buf, TAG_LEN, tag);
#else
        break;
#endif
    case KIND_CHACHAPOLY:
#if defined(MBEDTLS_CHACHAPOLY_C)
        return mbedtls_chachapoly_encrypt_and_tag(&a->chachapoly, len, nonce, aad,
                                                  aad_len, buf, buf, tag);
#else
        break;
#endif
    }
    (void)nonce;
    (void)aad;
    (void)aad_len;
    (void)buf;
    (void)len;
    (void)tag;
    return -1;
}

/* Verifies the tag and decrypts buf[0..len) in place. Returns an mbedTLS code. */
static int aead_open(struct aead *a, const uint8_t nonce[NONCE_LEN], const uint8_t *aad,
                     size_t aad_len, uint8_t *buf, size_t len, const uint8_t tag[TAG_LEN])
{
    switch (a->kind) {
    case KIND_GCM:
#if defined(MBEDTLS_GCM_C)
        return mbedtls_gcm_auth_decrypt(&a->gcm, len, nonce, NONCE_LEN, aad, aad_len,
                                        tag, TAG_LEN, buf, buf);
#else
        break;
#endif
    case KIND_CHACHAPOLY:
#if defined(MBEDTLS_CHACHAPOLY_C)
        return mbedtls_chachapoly_auth_decrypt(&a->chachapoly, len, nonce, aad, aad_len,
                                               tag, buf, buf);
#else
        break;
#endif
    }
    (void)nonce;
    (void)aad;
    (void)aad_len;
    (void)buf;
    (void)len;
    (void)tag;
    return -1;
}

/* ------------------------------------------------------------------------- */
/* Known-answer tests */

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex);

    if (n % 2 != 0 || n / 2 > cap)
        fail("internal error: bad test vector \"%s\"", hex);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = hex[2 * i + (size_t)j];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= (unsigned)(c - 'a' + 10);
            else
                fail("internal error: bad hex digit '%c' in a test vector", c);
        }
        out[i] = (uint8_t)v;
    }
    return n / 2;
}

struct kat {
    const char *name;
    enum aead_kind kind;
    const char *key, *nonce, *aad, *plaintext, *ciphertext, *tag;
};

static const struct kat KATS[] = {
    {
        /* GCM specification (McGrew and Viega), test case 4: AES-128, 60-byte
         * plaintext, 20-byte AAD. */
        "AES-128-GCM",
        KIND_GCM,
        "feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
        "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        "5bc94fbc3221a5db94fae95ae7121a47",
    },
    {
        /* RFC 8439 section 2.8.2; the plaintext is the ASCII text
         * "Ladies and Gentlemen of the class of '99: If I could offer you only one
         * tip for the future, sunscreen would be it." */
        "ChaCha20-Poly1305",
        KIND_CHACHAPOLY,
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
        "1ae10b594f09e26a7e902ecbd0600691",
    },
};
#define KAT_COUNT (sizeof KATS / sizeof KATS[0])

/*
 * Runs one known-answer test: seal must give the expected ciphertext and tag, open must
 * restore the plaintext, and open with a corrupted tag must fail. Returns 1 if it ran,
 * 0 if the algorithm is unavailable (*why says why); exits on a wrong answer.
 */
static int run_kat(const struct kat *k, const char **why, char *whybuf, size_t whylen)
{
    uint8_t key[32], nonce[NONCE_LEN], aad[32], pt[128], ct[128], tag[TAG_LEN];
    uint8_t buf[128], out_tag[TAG_LEN];
    size_t key_len = unhex(k->key, key, sizeof key);
    size_t nonce_len = unhex(k->nonce, nonce, sizeof nonce);
    size_t aad_len = unhex(k->aad, aad, sizeof aad);
    size_t pt_len = unhex(k->plaintext, pt, sizeof pt);
    size_t ct_len = unhex(k->ciphertext, ct, sizeof ct);
    struct aead a;
    int ret;

    if (unhex(k->tag, tag, sizeof tag) != TAG_LEN || nonce_len != NONCE_LEN ||
        ct_len != pt_len)
        fail("internal error: malformed %s test vector", k->name);

    if (aead_init(&a, k->kind, key, (unsigned)(key_len * 8), why, whybuf, whylen) != 0) {
        aead_free(&a);
        return 0;
    }

    memcpy(buf, pt, pt_len);
    ret = aead_seal(&a, nonce, aad, aad_len, buf, pt_len, out_tag);
    if (ret != 0)
        fail("self-check: %s known-answer encryption returned -0x%04X", k->name,
             mbedtls_code(ret));
    if (memcmp(buf, ct, ct_len) != 0)
        fail("self-check: %s known-answer ciphertext is wrong: this mbedTLS build "
             "miscomputes %s, refusing to measure it", k->name, k->name);
    if (memcmp(out_tag, tag, TAG_LEN) != 0)
        fail("self-check: %s known-answer tag is wrong: this mbedTLS build "
             "miscomputes %s, refusing to measure it", k->name, k->name);

    ret = aead_open(&a, nonce, aad, aad_len, buf, ct_len, tag);
    if (ret != 0)
        fail("self-check: %s known-answer decryption rejected the correct tag (-0x%04X)",
             k->name, mbedtls_code(ret));
    if (memcmp(buf, pt, pt_len) != 0)
        fail("self-check: %s known-answer decryption gave the wrong plaintext", k->name);

    memcpy(buf, ct, ct_len);
    out_tag[0] = (uint8_t)(tag[0] ^ 0x01);
    memcpy(out_tag + 1, tag + 1, TAG_LEN - 1);
    if (aead_open(&a, nonce, aad, aad_len, buf, ct_len, out_tag) == 0)
        fail("self-check: %s decryption accepted a corrupted tag", k->name);

    aead_free(&a);
    return 1;
}

/* ------------------------------------------------------------------------- */
/* Fixed-seed data and TLS 1.2 record framing */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_fixed(uint64_t *state, uint8_t *p, size_t n)
{
    while (n > 0) {
        uint64_t v = splitmix64(state);
        for (int i = 0; i < 8 && n > 0; i++, n--) {
            *p++ = (uint8_t)v;
            v >>= 8;
        }
    }
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* seq_num || type || version || length, as TLS 1.2 authenticates each record. */
static void record_aad(uint8_t aad[AAD_LEN], uint64_t seq, size_t len)
{
    put_be64(aad, seq);
    aad[8] = TLS_TYPE_APPLICATION_DATA;
    aad[9] = TLS_VERSION_MAJOR;
    aad[10] = TLS_VERSION_MINOR;
    aad[11] = (uint8_t)(len >> 8);
    aad[12] = (uint8_t)len;
}

/* GCM: 4-byte implicit salt || 8-byte explicit nonce (the sequence number).
 * ChaCha20-Poly1305: 12-byte IV XOR the sequence number padded on the left. */
static void record_nonce(uint8_t nonce[NONCE_LEN], enum aead_kind kind,
                         const uint8_t iv[NONCE_LEN], uint64_t seq)
{
    uint8_t s[8];

    put_be64(s, seq);
    if (kind == KIND_GCM) {
        memcpy(nonce, iv, 4);
        memcpy(nonce + 4, s, 8);
    } else {
        memcpy(nonce, iv, 4);
        for (int i = 0; i < 8; i++)
            nonce[4 + i] = (uint8_t)(iv[4 + i] ^ s[i]);
    }
}

/* ------------------------------------------------------------------------- */
/* Measurement */

static uint64_t cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
        fail("clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed: %s", strerror(errno));
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct result {
    int ran;
    int available;
    const char *why;
    char whybuf[160];
    uint64_t bytes;
    uint64_t encrypt_ns, decrypt_ns;
};

/*
 * Seals `total` bytes of plaintext as records of `record` bytes (the last one possibly
 * shorter), then opens them in place, a working set at a time: `plain` holds `slots`
 * records of plaintext, `work` holds `slots` slots of record + tag.
 */
static void run_suite(const struct suite *s, uint64_t total, size_t record,
                      const uint8_t *plain, uint8_t *work, size_t slots, struct result *r)
{
    const size_t stride = record + TAG_LEN;
    uint64_t seed = 0x6c6f63616c70726full; /* same key material for every suite */
    uint8_t key[32], iv[NONCE_LEN], nonce[NONCE_LEN], aad[AAD_LEN];
    struct aead enc, dec;
    uint64_t seq = 0, remaining = total;

    memset(r, 0, sizeof *r);
    memset(&enc, 0, sizeof enc); /* aead_free is safe on a context never set up */
    memset(&dec, 0, sizeof dec);
    r->ran = 1;
    r->bytes = total;
    fill_fixed(&seed, key, sizeof key);
    fill_fixed(&seed, iv, sizeof iv);

    if (aead_init(&enc, s->kind, key, s->key_bits, &r->why, r->whybuf,
                  sizeof r->whybuf) != 0 ||
        aead_init(&dec, s->kind, key, s->key_bits, &r->why, r->whybuf,
                  sizeof r->whybuf) != 0) {
        aead_free(&enc);
        aead_free(&dec);
        return;
    }
    r->available = 1;

    while (remaining > 0) {
        uint64_t capacity = (uint64_t)slots * record;
        size_t pass = (size_t)(remaining < capacity ? remaining : capacity);
        size_t n = (pass + record - 1) / record;
        uint64_t t0, t1, t2;

        for (size_t i = 0; i < n; i++) {
            size_t len = i + 1 < n ? record : pass - i * record;
            memcpy(work + i * stride, plain + i * record, len);
        }

        t0 = cpu_ns();
        for (size_t i = 0; i < n; i++) {
            size_t len = i + 1 < n ? record : pass - i * record;
            uint8_t *rec = work + i * stride;
            int ret;

            record_nonce(nonce, s->kind, iv, seq + i);
            record_aad(aad, seq + i, len);
            ret = aead_seal(&enc, nonce, aad, AAD_LEN, rec, len, rec + len);
            if (ret != 0)
                fail("%s: encrypting record %" PRIu64 " returned -0x%04X", s->name,
                     seq + i, mbedtls_code(ret));
        }
        t1 = cpu_ns();
        for (size_t i = 0; i < n; i++) {
            size_t len = i + 1 < n ? record : pass - i * record;
            uint8_t *rec = work + i * stride;
            int ret;

            record_nonce(nonce, s->kind, iv, seq + i);
            record_aad(aad, seq + i, len);
            ret = aead_open(&dec, nonce, aad, AAD_LEN, rec, len, rec + len);
            if (ret != 0)
                fail("%s: record %" PRIu64 " (%zu bytes) failed to decrypt: tag did not "
                     "verify (-0x%04X)", s->name, seq + i, len, mbedtls_code(ret));
        }
        t2 = cpu_ns();

        for (size_t i = 0; i < n; i++) {
            size_t len = i + 1 < n ? record : pass - i * record;
            if (memcmp(work + i * stride, plain + i * record, len) != 0)
                fail("%s: record %" PRIu64 " decrypted with a valid tag but to the wrong "
                     "plaintext", s->name, seq + i);
        }

        r->encrypt_ns += t1 - t0;
        r->decrypt_ns += t2 - t1;
        seq += n;
        remaining -= pass;
    }

    aead_free(&enc);
    aead_free(&dec);
}

/* CPU-ms per MB (10^6 bytes) is numerically CPU-ns per byte. */
static double ms_per_mb(uint64_t ns, uint64_t bytes)
{
    return (double)ns / (double)bytes;
}

static double mb_per_s(uint64_t ns, uint64_t bytes)
{
    return ns == 0 ? 0.0 : (double)bytes * 1000.0 / (double)ns;
}

/* ------------------------------------------------------------------------- */
/* Command line */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROG " [--mib N] [--record BYTES] [--suite NAME] [--json]\n"
            "\n"
            "Measures the CPU time mbedTLS spends sealing and opening TLS 1.2 records.\n"
            "  --mib N         MiB of plaintext per suite and direction, 1 to %lu "
            "(default 64)\n"
            "  --record BYTES  record plaintext size, 1 to %d (default %d)\n"
            "  --suite NAME    aes-128-gcm, aes-256-gcm, chacha20-poly1305 or all "
            "(default all)\n"
            "  --json          print one JSON object instead of text\n",
            MIB_MAX, TLS_MAX_PLAINTEXT, TLS_MAX_PLAINTEXT);
}

static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, PROG ": ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(run " PROG " --help for usage)\n");
    exit(EXIT_USAGE);
}

static unsigned long parse_count(const char *opt, const char *val, unsigned long min,
                                 unsigned long max, const char *unit)
{
    unsigned long v;
    char *end;

    if (val[0] < '0' || val[0] > '9')
        usage_error("%s: \"%s\" is not a whole number; allowed: %lu to %lu %s", opt, val,
                    min, max, unit);
    errno = 0;
    v = strtoul(val, &end, 10);
    if (*end != '\0')
        usage_error("%s: \"%s\" is not a whole number; allowed: %lu to %lu %s", opt, val,
                    min, max, unit);
    if (errno == ERANGE || v < min || v > max)
        usage_error("%s: %s is out of range; allowed: %lu to %lu %s", opt, val, min, max,
                    unit);
    return v;
}

/* ------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    unsigned long mib = 64, record = TLS_MAX_PLAINTEXT;
    int json = 0;
    int selected[SUITE_COUNT];
    const char *suite_arg = "all";
    char version[32];
    struct result results[SUITE_COUNT];
    int kat_ran[KAT_COUNT];

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = NULL;
        const char *eq = strchr(arg, '=');
        char opt[32];

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return EXIT_SUCCESS;
        }
        if (strcmp(arg, "--json") == 0) {
            json = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) == 0 && eq != NULL && (size_t)(eq - arg) < sizeof opt) {
            memcpy(opt, arg, (size_t)(eq - arg));
            opt[eq - arg] = '\0';
            val = eq + 1;
        } else {
            snprintf(opt, sizeof opt, "%s", arg);
        }
        if (strcmp(opt, "--mib") != 0 && strcmp(opt, "--record") != 0 &&
            strcmp(opt, "--suite") != 0) {
            if (strcmp(opt, "--json") == 0)
                usage_error("--json takes no value (got \"%s\")", arg);
            usage_error("unknown argument \"%s\"; allowed: --mib N, --record BYTES, "
                        "--suite NAME, --json, --help", arg);
        }
        if (val == NULL) {
            if (i + 1 >= argc)
                usage_error("%s needs a value", opt);
            val = argv[++i];
        }
        if (strcmp(opt, "--mib") == 0)
            mib = parse_count("--mib", val, 1, MIB_MAX, "(MiB of plaintext per suite)");
        else if (strcmp(opt, "--record") == 0)
            record = parse_count("--record", val, 1, TLS_MAX_PLAINTEXT,
                                 "(bytes of plaintext per TLS record)");
        else
            suite_arg = val;
    }

    for (size_t s = 0; s < SUITE_COUNT; s++)
        selected[s] = strcmp(suite_arg, "all") == 0 || strcmp(suite_arg, SUITES[s].name) == 0;
    {
        int any = 0;
        for (size_t s = 0; s < SUITE_COUNT; s++)
            any |= selected[s];
        if (!any)
            usage_error("--suite: \"%s\" is not a suite; allowed: aes-128-gcm, aes-256-gcm, "
                        "chacha20-poly1305, all", suite_arg);
    }

#if defined(MBEDTLS_VERSION_C)
    mbedtls_version_get_string(version); /* the linked library's own version */
#else
    snprintf(version, sizeof version, "%s", MBEDTLS_VERSION_STRING);
#endif

    /* Self-check before measuring. */
    for (size_t k = 0; k < KAT_COUNT; k++) {
        const char *why = NULL;
        char whybuf[160];

        kat_ran[k] = run_kat(&KATS[k], &why, whybuf, sizeof whybuf);
        if (!kat_ran[k])
            fprintf(stderr, PROG ": %s known-answer test skipped: %s\n", KATS[k].name,
                    why);
    }

    /* Buffers: a working set of about 1 MiB of records, reused for every pass. */
    {
        size_t slots = WORKSET_BYTES / (record + TAG_LEN);
        uint8_t *plain, *work;
        uint64_t seed = 0x706c61696e746578ull;

        if (slots == 0)
            slots = 1;
        plain = malloc(slots * record);
        work = malloc(slots * (record + TAG_LEN));
        if (plain == NULL || work == NULL)
            fail("out of memory allocating a %zu-record working set", slots);
        fill_fixed(&seed, plain, slots * record);

        if (!json) {
            printf("mbedTLS %s; known-answer tests", version);
            for (size_t k = 0; k < KAT_COUNT; k++)
                printf("%s %s %s", k == 0 ? "" : ",", KATS[k].name,
                       kat_ran[k] ? "ok" : "skipped");
            printf("; %lu MiB per suite and direction, CPU time\n", mib);
            fflush(stdout);
        }

        for (size_t s = 0; s < SUITE_COUNT; s++) {
            struct result *r = &results[s];

            if (!selected[s]) {
                r->ran = 0;
                continue;
            }
            run_suite(&SUITES[s], (uint64_t)mib << 20, record, plain, work, slots, r);
            if (!r->available) {
                if (json)
                    fprintf(stderr, PROG ": %s unavailable: %s\n", SUITES[s].name, r->why);
                else
                    printf("%s: unavailable (%s)\n", SUITES[s].name, r->why);
            } else if (!json) {
                printf("%s encrypt %lu-byte records: %.3f CPU-ms/MB (%.0f MB/s)\n",
                       SUITES[s].name, record, ms_per_mb(r->encrypt_ns, r->bytes),
                       mb_per_s(r->encrypt_ns, r->bytes));
                printf("%s decrypt %lu-byte records: %.3f CPU-ms/MB (%.0f MB/s)\n",
                       SUITES[s].name, record, ms_per_mb(r->decrypt_ns, r->bytes),
                       mb_per_s(r->decrypt_ns, r->bytes));
            }
            fflush(stdout);
        }
        free(plain);
        free(work);
    }

    if (json) {
        int first = 1;

        printf("{\"mbedtls_version\": \"%s\", \"record_bytes\": %lu, \"mib\": %lu, "
               "\"suites\": {", version, record, mib);
        for (size_t s = 0; s < SUITE_COUNT; s++) {
            const struct result *r = &results[s];

            if (!r->ran)
                continue;
            printf("%s\"%s\": ", first ? "" : ", ", SUITES[s].name);
            first = 0;
            if (!r->available)
                printf("null");
            else
                printf("{\"encrypt_ms_per_mb\": %.4f, \"decrypt_ms_per_mb\": %.4f}",
                       ms_per_mb(r->encrypt_ns, r->bytes),
                       ms_per_mb(r->decrypt_ns, r->bytes));
        }
        printf("}}\n");
    }

    if (fflush(stdout) != 0 || ferror(stdout))
        fail("writing the results failed: %s", strerror(errno));
    return EXIT_SUCCESS;
}
