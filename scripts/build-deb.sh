#!/bin/sh
# Builds the localproxy .deb of one architecture with dpkg-deb, from a tree staged by
# `make install` (docs/GATEWAY.md).
#   scripts/build-deb.sh DEB_ARCH BINARY STAGE_DIR OUT_DIR VERSION
# DEB_ARCH: amd64, arm64 or armhf; BINARY: the stripped Embedded static build of that
# architecture. The binary may need only the C library: anything else it links fails here.
set -eu
# Who the package names as its maintainer: set DEB_MAINTAINER to the real address when
# publishing (the default is a placeholder of the reserved .invalid domain).
maintainer=${DEB_MAINTAINER:-"localproxy maintainers <maintainers@localproxy.invalid>"}

arch=$1 binary=$2 stage=$3 out=$4 version=$5
here=$(cd "$(dirname "$0")/.." && pwd)

case $arch in
	amd64) machine="X86-64" ;;
	arm64) machine="AArch64" ;;
	armhf) machine="ARM" ;;
	*) echo "build-deb: unknown architecture $arch (amd64, arm64 or armhf)" >&2; exit 1 ;;
esac
readelf -h "$binary" | grep -q "Machine:.*$machine" \
	|| { echo "build-deb: $binary is not an $arch binary:" >&2; readelf -h "$binary" | grep Machine >&2; exit 1; }

# Shared libraries: glibc's only (static builds link libuv and mbedTLS in), and on armhf
# libgcc_s.so.1, whose ARM unwinder personality routine (__aeabi_unwind_cpp_pr0) the C code's
# unwind tables refer to; libc6 itself depends on libgcc-s1, so this adds no package.
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
extra=""
for lib in $needed; do
	case $lib in
		libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | ld-linux*.so.* | librt.so.1) ;;
		libgcc_s.so.1) extra=", libgcc-s1" ;;
		*) echo "build-deb: $binary needs $lib, which is not part of libc6: build it with LINK=static" >&2; exit 1 ;;
	esac
done
# The newest glibc symbol version it uses is the version of libc6 it needs.
glibc=$(readelf -W --dyn-syms "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -1)
[ -n "$glibc" ] || { echo "build-deb: no glibc symbol versions in $binary" >&2; exit 1; }

rm -rf "$stage"
make -s -C "$here" install DESTDIR="$stage" PREFIX=/usr BIN="$binary" SYSTEMD_UNIT_DIR=/lib/systemd/system
doc="$stage/usr/share/doc/localproxy"
install -d -m 0755 "$doc"
install -m 0644 "$here/packaging/debian/copyright" "$doc/copyright"
install -m 0644 "$here/NOTICES.md" "$doc/NOTICES.md"
gzip -9n -c "$here/docs/GATEWAY.md" > "$doc/GATEWAY.md.gz" && chmod 0644 "$doc/GATEWAY.md.gz"
# The MIT (libuv) and ISC (libsodium) licences ask for their notices to travel with every copy,
# and Debian's common-licenses has neither: they are taken from the very source tarballs the
# binary was built from (the Makefile names them in LIBUV_TARBALL and SODIUM_TARBALL).
notice() { # NAME TARBALL
	[ -f "$2" ] || { echo "build-deb: $2 is missing: build the binary with make embedded first" >&2; exit 1; }
	tar -xzOf "$2" --wildcards '*/LICENSE' > "$doc/$1"
	[ -s "$doc/$1" ] || { echo "build-deb: no LICENSE in $2" >&2; exit 1; }
	chmod 0644 "$doc/$1"
}
notice LICENSE.libuv "${LIBUV_TARBALL:?set by the Makefile}"
[ "$arch" != amd64 ] || notice LICENSE.libsodium "${SODIUM_TARBALL:?set by the Makefile}"
# A changelog entry for this version (the project keeps its history in git). The version has
# no Debian revision: a native package, whose changelog is changelog.gz.
date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct)}")
printf '%s\n' "localproxy ($version) unstable; urgency=medium" "" \
	"  * Built from the localproxy source tree, commit $(git -C "$here" rev-parse --short HEAD)." "" \
	" -- $maintainer  $date" \
	| gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
# The BusyBox and OpenWrt files, for gateways that take the binary out of the package.
install -d -m 0755 "$doc/examples"
install -m 0644 "$here/packaging/busybox/inittab" "$doc/examples/busybox-inittab"
install -m 0644 "$here/packaging/openwrt/localproxy.init" "$doc/examples/openwrt-localproxy.init"
install -m 0644 "$here/packaging/openwrt/localproxy.uci" "$doc/examples/openwrt-localproxy.uci"
install -d -m 0755 "$stage/usr/share/lintian/overrides"
install -m 0644 "$here/packaging/debian/lintian-overrides" "$stage/usr/share/lintian/overrides/localproxy"

install -d -m 0755 "$stage/DEBIAN"
for f in postinst prerm postrm; do install -m 0755 "$here/packaging/debian/$f" "$stage/DEBIAN/$f"; done
install -m 0644 "$here/packaging/debian/conffiles" "$stage/DEBIAN/conffiles"
size=$(du -k -s --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s|@MAINTAINER@|$maintainer|" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	-e "s/@DEPENDS@/libc6 (>= $glibc)$extra, adduser/" "$here/packaging/debian/control.in" > "$stage/DEBIAN/control"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
	> "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/localproxy_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
