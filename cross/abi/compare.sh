#!/usr/bin/env bash
# Compares the outputs of the two ABI probes (see cross/abi/README.md).
#   compare.sh ARCH C_OUTPUT SWIFT_OUTPUT [C_DESCRIPTION] [SWIFT_DESCRIPTION]
# Prints both sides, one row per type or field, then a summary line. Exits 0 when every row is
# identical, 1 when anything differs (each difference is named with both values), 2 on misuse.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 ARCH C_OUTPUT SWIFT_OUTPUT [C_DESCRIPTION] [SWIFT_DESCRIPTION]" >&2
    exit 2
fi
arch=$1 c_out=$2 swift_out=$3
c_desc=${4:-C probe}
swift_desc=${5:-Swift probe}

for f in "$c_out" "$swift_out"; do
    if [ ! -s "$f" ]; then
        echo "check-abi $arch: FAILED: $f is missing or empty (did the probe run?)" >&2
        exit 1
    fi
done

awk -v arch="$arch" -v cdesc="$c_desc" -v sdesc="$swift_desc" '
    # A row is "type LABEL size=N align=N" or "field LABEL offset=N size=N".
    function parse(line, side,    n, w, key, i, kv) {
        n = split(line, w, " ")
        if (n != 4 || (w[1] != "type" && w[1] != "field")) {
            printf "check-abi %s: FAILED: unreadable line from the %s probe: %s\n", arch, side, line > "/dev/stderr"
            broken = 1
            return ""
        }
        key = w[2]
        kind[key] = w[1]
        val[side, key] = w[3] " " w[4]
        for (i = 3; i <= 4; i++) {
            split(w[i], kv, "=")
            attr[side, key, i - 2] = kv[1]
            num[side, key, i - 2] = kv[2]
        }
        return key
    }
    FNR == NR { k = parse($0, "C"); if (k != "") { order[++nc] = k; inC[k] = 1 }; next }
              { k = parse($0, "Swift"); if (k != "") { sorder[++ns] = k; inS[k] = 1 } }
    END {
        if (broken) exit 1
        printf "check-abi %s\n  C:     %s\n  Swift: %s\n", arch, cdesc, sdesc
        printf "  %-5s %-40s %-24s %s\n", "", "name", "C", "Swift"
        ntypes = 0; nfields = 0; nbad = 0
        for (i = 1; i <= nc; i++) {
            k = order[i]
            if (kind[k] == "type") ntypes++; else nfields++
            if (!(k in inS)) {
                printf "  %-5s %-40s %-24s %s  <- DIFFERS\n", kind[k], k, val["C", k], "(missing)"
                bad[++nbad] = sprintf("%s: printed by the C probe only", k)
                continue
            }
            mark = ""
            for (j = 1; j <= 2; j++) {
                if (num["C", k, j] != num["Swift", k, j]) {
                    mark = "  <- DIFFERS"
                    bad[++nbad] = sprintf("%s: %s is %s in C but %s in Swift", k, attr["C", k, j], num["C", k, j], num["Swift", k, j])
                }
            }
            printf "  %-5s %-40s %-24s %s%s\n", kind[k], k, val["C", k], val["Swift", k], mark
        }
        for (i = 1; i <= ns; i++) {
            k = sorder[i]
            if (!(k in inC)) {
                printf "  %-5s %-40s %-24s %s  <- DIFFERS\n", kind[k], k, "(missing)", val["Swift", k]
                bad[++nbad] = sprintf("%s: printed by the Swift probe only", k)
            }
        }
        if (nbad == 0) {
            printf "check-abi %s: OK: %d types and %d fields, C and Embedded Swift identical\n", arch, ntypes, nfields
            exit 0
        }
        for (i = 1; i <= nbad; i++) printf "ABI MISMATCH %s: %s\n", arch, bad[i]
        printf "check-abi %s: FAILED: %d difference(s) in %d types and %d fields.\n", arch, nbad, ntypes, nfields
        printf "The Swift code would read and write these C types with a layout the C libraries do not\n"
        printf "use: do not ship this build. Find the setting that differs between the Embedded Swift\n"
        printf "compile (EMB_TARGET/EMB_XFLAGS in the Makefile: the -D defines, -mfloat-abi, the include\n"
        printf "paths, the clang module cache) and the Linux triple the C libraries were built for\n"
        printf "(LINK_ARCH), fix it there or in Sources/CLibC|CLibUV|CMbedTLS/shim.h, and run\n"
        printf "make check-abi ARCH=%s again (cross/abi/README.md).\n", arch
        exit 1
    }
' "$c_out" "$swift_out"
