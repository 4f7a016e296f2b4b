#!/usr/bin/env bash
# Builds OpenSSL's ChaCha20 and Poly1305 assembly for ARM (NEON / Advanced SIMD, with integer
# code for short inputs), and on armv7 its AES (ARMv4 integer code) and GHASH (NEON), from the
# source tarball of Debian's openssl package, for the ARM device builds:
#
#   cross/aead/build-openssl-asm.sh TARBALL OUTDIR ARCH CC CFLAGS...      (ARCH: armv7 | aarch64)
#
# Only the two assembly generators (crypto/chacha/asm/chacha-armv4.pl and
# crypto/poly1305/asm/poly1305-armv4.pl, or their -armv8 versions; on armv7 also
# crypto/aes/asm/aes-armv4.pl and crypto/modes/asm/ghash-armv4.pl), their translator
# (crypto/perlasm/arm-xlate.pl) and crypto/arm_arch.h are unpacked; perl turns the generators
# into GNU assembler files (flavour "linux32", Thumb-2 when CC targets Thumb; "linux64" on
# aarch64) and CC assembles them. Nothing else of OpenSSL is built or linked.
#
# Their global names are renamed while assembling (the preprocessor runs over .S files), so that
# nothing of them can meet another copy of OpenSSL in a process:
#   ChaCha20_ctr32  -> lp_openssl_chacha20_ctr32
#   poly1305_init / poly1305_blocks / poly1305_emit -> lp_openssl_poly1305_*
#   OPENSSL_armcap_P -> lp_openssl_armcap (the CPU-feature word the code tests for NEON;
#                       lp_aead.c sets it from the kernel's AT_HWCAP)
#   AES_* and gcm_* (armv7) -> lp_openssl_AES_*, lp_openssl_gcm_*
#
# Leaves OUTDIR/obj/openssl_NAME.o for each generator.
set -euo pipefail
tarball="${1:?usage: build-openssl-asm.sh TARBALL OUTDIR ARCH CC CFLAGS...}" out="$(realpath -m "${2:?}")"
arch="${3:?}" cc="${4:?}"
shift 4
case "$arch" in
armv7) variant=armv4 flavour=linux32 extra="aes/asm/aes-armv4 modes/asm/ghash-armv4" ;;
aarch64) variant=armv8 flavour=linux64 extra="" ;;
*) echo "build-openssl-asm.sh: no OpenSSL assembly is built for $arch" >&2; exit 2 ;;
esac
rm -rf "$out" && mkdir -p "$out/src" "$out/obj"
tar xzf "$tarball" -C "$out/src" --strip-components=1 --wildcards \
    '*/crypto/arm_arch.h' '*/crypto/perlasm/arm-xlate.pl' \
    "*/crypto/chacha/asm/chacha-$variant.pl" "*/crypto/poly1305/asm/poly1305-$variant.pl" \
    $(for generator in $extra; do echo "*/crypto/$generator.pl"; done)
renames="-DChaCha20_ctr32=lp_openssl_chacha20_ctr32 -Dpoly1305_init=lp_openssl_poly1305_init
         -Dpoly1305_blocks=lp_openssl_poly1305_blocks -Dpoly1305_emit=lp_openssl_poly1305_emit
         -DOPENSSL_armcap_P=lp_openssl_armcap
         -DAES_set_encrypt_key=lp_openssl_AES_set_encrypt_key -DAES_encrypt=lp_openssl_AES_encrypt
         -DAES_set_decrypt_key=lp_openssl_AES_set_decrypt_key -DAES_decrypt=lp_openssl_AES_decrypt
         -DAES_set_enc2dec_key=lp_openssl_AES_set_enc2dec_key
         -Dgcm_init_neon=lp_openssl_gcm_init_neon -Dgcm_gmult_neon=lp_openssl_gcm_gmult_neon
         -Dgcm_ghash_neon=lp_openssl_gcm_ghash_neon -Dgcm_gmult_4bit=lp_openssl_gcm_gmult_4bit
         -Dgcm_ghash_4bit=lp_openssl_gcm_ghash_4bit"
# Moves the code from the line that matches $2 up to the line that matches $3 (or to the end)
# of assembler file $1 into a section of its own, which nothing references, so that the link's
# --gc-sections drops it: AES decryption (its key schedule, rounds and tables) and GHASH's
# table-driven integer code, which the AEAD never calls, would otherwise share the one .text
# section with what it does call. Fails if a pattern is not found (another OpenSSL version).
set_apart() {
    awk -v from="$2" -v to="$3" -v section="$4" '
        !started && $0 ~ from { print ".section " section ",\"ax\",%progbits"; started = 1; inside = 1 }
        inside && to != "" && $0 ~ to { print ".text"; inside = 0; ended = 1 }
        { print }
        END { if (!started || (to != "" && !ended)) exit 1 }' "$1" > "$1.new" \
        || { echo "build-openssl-asm.sh: $(basename "$1"): no line matches $2${3:+ or $3}" >&2; exit 1; }
    mv "$1.new" "$1"
}
for generator in "chacha/asm/chacha-$variant" "poly1305/asm/poly1305-$variant" $extra; do
    name="$(basename "$generator")"
    perl "$out/src/crypto/$generator.pl" "$flavour" "$out/src/$name.S"
    case "$name" in
    aes-armv4) set_apart "$out/src/$name.S" '^\.globl[ \t]+AES_set_decrypt_key$' '' .text.lp_openssl_aes_decrypt ;;
    ghash-armv4) set_apart "$out/src/$name.S" '^\.type[ \t]+rem_4bit,' '^#if __ARM_MAX_ARCH__>=7$' .text.lp_openssl_ghash_4bit ;;
    esac
    # shellcheck disable=SC2086
    "$cc" "$@" $renames -I"$out/src/crypto" -c "$out/src/$name.S" -o "$out/obj/openssl_$name.o"
done
# Every global symbol must carry the lp_openssl_ prefix (a new global in another OpenSSL version
# would otherwise go unnoticed).
unexpected="$("$(dirname "$cc")/llvm-nm" --defined-only --extern-only "$out"/obj/*.o | awk 'NF == 3 && $3 !~ /^lp_openssl_/ { print $3 }')"
if [ -n "$unexpected" ]; then
    echo "build-openssl-asm.sh: unrenamed global symbols: $unexpected" >&2
    exit 1
fi
