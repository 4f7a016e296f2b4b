/*
 * localproxy: seals and opens N MiB of 16 KiB records (13-byte AAD, in place) with Nettle's
 * AES-128-GCM or ChaCha20-Poly1305, the way aead-ceiling does with mbedTLS, so that `make
 * aead-counts` can compare their instruction counts under qemu (docs/CRYPTO.md).
 *
 *   nettle-aead aes-128-gcm|chacha20-poly1305 MIB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nettle/chacha-poly1305.h>
#include <nettle/gcm.h>

int main(int argc, char **argv)
{
    static unsigned char record[16384];
    unsigned char key[32] = { 1 }, nonce[12] = { 2 }, aad[13] = { 3 }, tag[16];
    if (argc != 3 || atoi(argv[2]) <= 0) {
        fprintf(stderr, "usage: nettle-aead aes-128-gcm|chacha20-poly1305 MIB\n");
        return 2;
    }
    size_t records = ((size_t) atoi(argv[2]) << 20) / sizeof record;
    if (strcmp(argv[1], "aes-128-gcm") == 0) {
        struct gcm_aes128_ctx ctx;
        gcm_aes128_set_key(&ctx, key);
        for (size_t i = 0; i < records; i++) {
            nonce[11] = (unsigned char) i;
            gcm_aes128_set_iv(&ctx, sizeof nonce, nonce);
            gcm_aes128_update(&ctx, sizeof aad, aad);
            gcm_aes128_encrypt(&ctx, sizeof record, record, record);
            gcm_aes128_digest(&ctx, sizeof tag, tag);
            gcm_aes128_set_iv(&ctx, sizeof nonce, nonce);
            gcm_aes128_update(&ctx, sizeof aad, aad);
            gcm_aes128_decrypt(&ctx, sizeof record, record, record);
            gcm_aes128_digest(&ctx, sizeof tag, tag);
        }
    } else if (strcmp(argv[1], "chacha20-poly1305") == 0) {
        struct chacha_poly1305_ctx ctx;
        chacha_poly1305_set_key(&ctx, key);
        for (size_t i = 0; i < records; i++) {
            nonce[11] = (unsigned char) i;
            chacha_poly1305_set_nonce(&ctx, nonce);
            chacha_poly1305_update(&ctx, sizeof aad, aad);
            chacha_poly1305_encrypt(&ctx, sizeof record, record, record);
            chacha_poly1305_digest(&ctx, sizeof tag, tag);
            chacha_poly1305_set_nonce(&ctx, nonce);
            chacha_poly1305_update(&ctx, sizeof aad, aad);
            chacha_poly1305_decrypt(&ctx, sizeof record, record, record);
            chacha_poly1305_digest(&ctx, sizeof tag, tag);
        }
    } else {
        fprintf(stderr, "nettle-aead: unknown suite %s\n", argv[1]);
        return 2;
    }
    /* The tag depends on everything: printing it keeps the work from being optimised away. */
    printf("tag %02x%02x\n", tag[0], tag[1]);
    return 0;
}
