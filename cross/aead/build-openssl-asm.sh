#!/usr/bin/env bash
# Builds OpenSSL's ChaCha20 and Poly1305 assembly for ARM (NEON / Advanced SIMD, with integer
# code for short inputs) from the source tarball of Debian's openssl package, for the ARM device
# builds:
#
#   cross/aead/build-openssl-asm.sh TARBALL OUTDIR ARCH CC CFLAGS...      (ARCH: armv7 | aarch64)
#
# Only the two assembly generators (crypto/chacha/asm/chacha-armv4.pl and
# crypto/poly1305/asm/poly1305-armv4.pl, or their -armv8 versions), their translator
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
#
# Leaves OUTDIR/obj/openssl_chacha-armvN.o and OUTDIR/obj/openssl_poly1305-armvN.o.
set -euo pipefail
tarball="${1:?usage: build-openssl-asm.sh TARBALL OUTDIR ARCH CC CFLAGS...}" out="$(realpath -m "${2:?}")"
arch="${3:?}" cc="${4:?}"
shift 4
case "$arch" in
armv7) variant=armv4 flavour=linux32 ;;
aarch64) variant=armv8 flavour=linux64 ;;
*) echo "build-openssl-asm.sh: no OpenSSL assembly is built for $arch" >&2; exit 2 ;;
esac
rm -rf "$out" && mkdir -p "$out/src" "$out/obj"
tar xzf "$tarball" -C "$out/src" --strip-components=1 --wildcards \
    '*/crypto/arm_arch.h' '*/crypto/perlasm/arm-xlate.pl' \
    "*/crypto/chacha/asm/chacha-$variant.pl" "*/crypto/poly1305/asm/poly1305-$variant.pl"
renames="-DChaCha20_ctr32=lp_openssl_chacha20_ctr32 -Dpoly1305_init=lp_openssl_poly1305_init
         -Dpoly1305_blocks=lp_openssl_poly1305_blocks -Dpoly1305_emit=lp_openssl_poly1305_emit
         -DOPENSSL_armcap_P=lp_openssl_armcap"
for generator in "chacha/asm/chacha-$variant" "poly1305/asm/poly1305-$variant"; do
    name="$(basename "$generator")"
    perl "$out/src/crypto/$generator.pl" "$flavour" "$out/src/$name.S"
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
