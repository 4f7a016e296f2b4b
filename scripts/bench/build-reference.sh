#!/usr/bin/env bash
# Builds the C++ reference local proxy as a benchmark baseline (BASELINE_LOCALPROXY), from a
# checkout of its source that you provide, against Debian 12's packages. Nothing is downloaded
# but Debian packages; the build happens outside this repository.
#
#   scripts/bench/build-reference.sh SOURCE_DIR [BUILD_DIR]     -> BUILD_DIR/bin/localproxy
#
# Its CMake has a "system" dependency mode that uses installed libraries; empty package
# versions drop its Boost and protobuf version pins (Debian 12 has Boost 1.74, protobuf 3.21).
# Release builds end up at -O2 (its own flags follow CMake's -O3). Boost, protobuf and OpenSSL
# are linked statically by default, so the binary runs on its own.
set -euo pipefail
source_dir="${1:?usage: build-reference.sh SOURCE_DIR [BUILD_DIR]}"
build_dir="${2:-${TMPDIR:-/tmp}/localproxy-reference-build}"
if [ ! -f "$source_dir/CMakeLists.txt" ]; then
    echo "build-reference.sh: $source_dir has no CMakeLists.txt; give the reference proxy's source checkout" >&2
    exit 2
fi
packages="cmake make g++ libboost-system-dev libboost-log-dev libboost-thread-dev
  libboost-program-options-dev libboost-date-time-dev libboost-filesystem-dev libboost-chrono-dev
  libboost-regex-dev libboost-random-dev libboost-atomic-dev libprotobuf-dev protobuf-compiler
  libssl-dev zlib1g-dev"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    apt-get update -qq || echo "apt-get update reported errors; installing with the indexes it has"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
mkdir -p "$build_dir"
cmake -S "$source_dir" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DLOCALPROXY_DEP_MODE=system \
      -DBUILD_TESTS=OFF -DBOOST_PKG_VERSION= -DPROTOBUF_PKG_VERSION=
make -C "$build_dir" -j"$(nproc)" localproxy
"$build_dir/bin/localproxy" --version
echo "baseline: make bench BASELINE_LOCALPROXY=$build_dir/bin/localproxy"
