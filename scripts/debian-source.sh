#!/usr/bin/env bash
# Fetches the upstream tarball of a Debian source package through this machine's own apt
# configuration, so builds behind a company mirror work and nothing names a host:
#
#   scripts/debian-source.sh PACKAGE TARBALL SHA256 OUTDIR [SUITE]
#
# The machine's `deb` entries (deb822 .sources files and one-line .list files) are turned into
# `deb-src` entries in a private apt state under OUTDIR/apt, so the system's own sources and
# package lists are never touched. SUITE (e.g. trixie) replaces the suites of those entries, to
# take a package from another Debian release. `apt-get source --download-only` then downloads
# the package's files, and TARBALL (its .orig tarball, or another of its files such as Debian's
# .debian.tar.xz of patches) must match SHA256, or nothing is kept.
set -euo pipefail
package="${1:?usage: debian-source.sh PACKAGE TARBALL SHA256 OUTDIR [SUITE]}"
tarball="${2:?}" sha256="${3:?}" outdir="$(realpath -m "${4:?}")" suite="${5:-}"
if [ -f "$outdir/$tarball" ] && echo "$sha256  $outdir/$tarball" | sha256sum -c --quiet - 2>/dev/null; then
    exit 0
fi
state="$outdir/apt"
rm -rf "$state"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/parts" "$outdir"
sources="$state/sources.list"
: > "$sources"
# One-line entries: "deb [options] URI SUITE COMPONENTS".
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '$1 == "deb" {
        $1 = "deb-src"; i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if (suite != "") { $(i + 1) = (index($(i + 1), "-security") ? suite "-security" : suite) }
        print }' "$f" >> "$sources"
done
# deb822 stanzas: Types / URIs / Suites / Components (Signed-By kept).
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                n = split(suites, s, " ")
                for (k = 1; k <= n; k++) {
                    name = s[k]
                    if (suite != "") {
                        if (name ~ /-security$/) name = suite "-security"
                        else if (name ~ /-updates$/) name = suite "-updates"
                        else name = suite
                    }
                    split(uris, u, " ")
                    print "deb-src" (signed != "" ? " [signed-by=" signed "]" : "") " " u[1] " " name " " components
                }
            }
            types = uris = suites = components = signed = enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        { key = $1; sub(/:$/, "", key); $1 = ""; sub(/^ /, ""); value = $0 }
        key == "Types" { types = value } key == "URIs" { uris = value } key == "Suites" { suites = value }
        key == "Components" { components = value } key == "Signed-By" { signed = value }
        key == "Enabled" { enabled = value }
        END { flush() }' "$f" >> "$sources"
done
sort -u -o "$sources" "$sources"
if [ ! -s "$sources" ]; then
    echo "debian-source.sh: no deb entries in /etc/apt/sources.list or /etc/apt/sources.list.d to derive deb-src from" >&2
    exit 1
fi
apt_opts=(-o Dir::Etc::SourceList="$sources" -o Dir::Etc::SourceParts="$state/parts"
          -o Dir::State::Lists="$state/lists" -o Dir::Cache="$state/cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" -qq update || echo "apt-get update reported errors; using the indexes it got" >&2
( cd "$state" && apt-get "${apt_opts[@]}" -qq source --download-only "$package" )
if [ ! -f "$state/$tarball" ]; then
    echo "debian-source.sh: the source package $package${suite:+ of $suite} has no $tarball (another upstream version?): $(ls "$state" | grep -E '\.orig\.' | tr '\n' ' ')" >&2
    exit 1
fi
if ! echo "$sha256  $state/$tarball" | sha256sum -c --quiet -; then
    echo "debian-source.sh: $tarball differs from the pinned SHA-256; refusing to build with it" >&2
    exit 1
fi
mv "$state/$tarball" "$outdir/$tarball"
rm -rf "$state"
