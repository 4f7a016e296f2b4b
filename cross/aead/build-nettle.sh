#!/usr/bin/env bash
# Builds Nettle's symmetric-crypto library (libnettle.a, no public-key part, so no GMP) from the
# source tarball of Debian's package:
#
#   cross/aead/build-nettle.sh TARBALL OUTDIR GNU_TRIPLE "CONFIGURE OPTIONS" CC CFLAGS...
#
# The options turn off Nettle's run-time dispatch and turn on the instruction-set extensions to
# compile in (x86_64: --disable-fat --enable-x86-aesni --enable-x86-pclmul). Nettle then uses
# them unconditionally, so nothing
# may call it on a CPU without them: lp_aead.c checks the CPU first and otherwise keeps
# mbedTLS's code. (Nettle's "fat" build would check by itself, but its dispatch table keeps
# every accelerated routine it has in the binary: +80 KB on x86_64 against +40 KB.)
#
# Leaves OUTDIR/lib/libnettle.a, OUTDIR/include/nettle/*.h, and OUTDIR/obj/nettle_*.o (the
# archive's members, renamed so that none can replace an mbedTLS member of the same name, e.g.
# gcm.o, when they are added to the minimal libmbedcrypto.a). Needs m4 (Debian package m4).
set -euo pipefail
tarball="${1:?usage: build-nettle.sh TARBALL OUTDIR GNU_TRIPLE OPTIONS CC CFLAGS...}" out="$(realpath -m "${2:?}")"
triple="${3:?}" options="${4?}" cc="${5:?}"
shift 5
rm -rf "$out" && mkdir -p "$out/src" "$out/obj"
tar xzf "$tarball" -C "$out/src" --strip-components=1
cd "$out/src"
# shellcheck disable=SC2086
./configure -q --host="$triple" --prefix="$out" $options --enable-static --disable-shared \
    --disable-public-key --disable-documentation --disable-openssl \
    CC="$cc" CFLAGS="$*" AR="$(dirname "$cc")/llvm-ar" > "$out/configure.log" 2>&1 \
    || { cat "$out/configure.log" >&2; exit 1; }
make -s libnettle.a > "$out/make.log" 2>&1 || { tail -20 "$out/make.log" >&2; exit 1; }
mkdir -p "$out/lib" "$out/include/nettle"
cp libnettle.a "$out/lib/"
cp ./*.h "$out/include/nettle/"
cd "$out/obj"
"$(dirname "$cc")/llvm-ar" x "$out/lib/libnettle.a"
for o in *.o; do mv "$o" "nettle_$o"; done
