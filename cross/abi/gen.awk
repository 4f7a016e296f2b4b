# Generates one of the two ABI probes from cross/abi/types.txt.
#   awk -v lang=c     -f cross/abi/gen.awk cross/abi/types.txt > probe.c
#   awk -v lang=swift -f cross/abi/gen.awk cross/abi/types.txt > probe.swift
# Both probes print the same lines, in list order:
#   type  LABEL size=N align=N
#   field LABEL.path offset=N size=N
# The C probe adds 8 to the first number of the line whose label is ABI_SKEW (a -D define),
# which is how the self-test proves that a difference is caught.

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

# "struct sockaddr_in" -> "sockaddr_in", "void *" -> "void*", "long long" -> "long_long"
function label_of(c,    s) {
    s = c
    sub(/^(struct|enum|union)[ \t]+/, "", s)
    gsub(/[ \t]*\*/, "*", s)
    gsub(/[ \t]+/, "_", s)
    return s
}

function swift_default(c,    s) {
    s = c
    sub(/^(struct|enum|union)[ \t]+/, "", s)
    return s
}

BEGIN {
    if (lang != "c" && lang != "swift") { print "gen.awk: set lang=c or lang=swift" > "/dev/stderr"; exit 2 }
    ntypes = 0
}

{
    line = $0
    sub(/#.*/, "", line)
    line = trim(line)
    if (line == "") next
    if (substr(line, 1, 1) == ".") {
        if (ntypes == 0) { printf "types.txt:%d: field before any type\n", NR > "/dev/stderr"; bad = 1; exit 2 }
        path = substr(line, 2)
        if (path !~ /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/) {
            printf "types.txt:%d: bad field path '%s'\n", NR, path > "/dev/stderr"; bad = 1; exit 2
        }
        n = ++nitems
        kind[n] = "field"; owner[n] = ntypes; fpath[n] = path
        next
    }
    n = split(line, part, "|")
    if (n > 2) { printf "types.txt:%d: more than one '|'\n", NR > "/dev/stderr"; bad = 1; exit 2 }
    ctype = trim(part[1])
    stype = (n == 2) ? trim(part[2]) : swift_default(ctype)
    ntypes++
    tc[ntypes] = ctype; ts[ntypes] = stype; tl[ntypes] = label_of(ctype)
    if (tl[ntypes] in seen) { printf "types.txt:%d: %s listed twice\n", NR, tl[ntypes] > "/dev/stderr"; bad = 1; exit 2 }
    seen[tl[ntypes]] = 1
    n = ++nitems
    kind[n] = "type"; owner[n] = ntypes
}

END {
    if (bad) exit 2
    if (lang == "c") emit_c(); else emit_swift()
}

function emit_c(    i, t) {
    print "/* Generated from cross/abi/types.txt by cross/abi/gen.awk: do not edit. */"
    print "#include <stddef.h>"
    print "#include <stdio.h>"
    print "#include <string.h>"
    print "/* Exactly the headers the Swift modules import. */"
    print "#include \"CLibC/shim.h\""
    print "#include \"CLibUV/shim.h\""
    print "#include \"CMbedTLS/shim.h\""
    print ""
    print "#ifndef ABI_SKEW"
    print "#define ABI_SKEW \"\""
    print "#endif"
    print "static size_t skew(const char *label) { return strcmp(label, ABI_SKEW) == 0 ? 8 : 0; }"
    print "static void type_row(const char *label, size_t size, size_t align) {"
    print "    printf(\"type %s size=%zu align=%zu\\n\", label, size + skew(label), align);"
    print "}"
    print "static void field_row(const char *label, size_t offset, size_t size) {"
    print "    printf(\"field %s offset=%zu size=%zu\\n\", label, offset + skew(label), size);"
    print "}"
    print ""
    print "int main(void) {"
    for (i = 1; i <= nitems; i++) {
        t = owner[i]
        if (kind[i] == "type")
            printf "    type_row(\"%s\", sizeof(%s), _Alignof(%s));\n", tl[t], tc[t], tc[t]
        else
            printf "    field_row(\"%s.%s\", offsetof(%s, %s), sizeof(((%s *)0)->%s));\n", \
                tl[t], fpath[i], tc[t], fpath[i], tc[t], fpath[i]
    }
    print "    return fflush(stdout) == 0 ? 0 : 1;"
    print "}"
}

function emit_swift(    i, t) {
    print "// Generated from cross/abi/types.txt by cross/abi/gen.awk: do not edit."
    print "import CLibC"
    print "import CLibUV"
    print "import CMbedTLS"
    print ""
    print "func typeRow<T>(_ label: String, _ type: T.Type) {"
    print "    print(\"type \\(label) size=\\(MemoryLayout<T>.size) align=\\(MemoryLayout<T>.alignment)\")"
    print "}"
    print ""
    print "// Embedded Swift has no key paths, so MemoryLayout.offset(of:) is out: the offset is the"
    print "// distance from the value's address to the field's address."
    print "func fieldRow<T, F>(_ label: String, _ base: UnsafeMutablePointer<T>, _ field: UnsafeMutablePointer<F>) {"
    print "    let offset = UnsafeRawPointer(base).distance(to: UnsafeRawPointer(field))"
    print "    print(\"field \\(label) offset=\\(offset) size=\\(MemoryLayout<F>.size)\")"
    print "}"
    print ""
    print "@main"
    print "struct ABIProbe {"
    print "    static func main() {"
    for (i = 1; i <= nitems; i++) {
        t = owner[i]
        if (kind[i] == "type") {
            printf "        typeRow(\"%s\", %s.self)\n", tl[t], ts[t]
        } else {
            printf "        do {\n"
            printf "            var value = %s()\n", ts[t]
            printf "            withUnsafeMutablePointer(to: &value) { base in\n"
            printf "                withUnsafeMutablePointer(to: &base.pointee.%s) { fieldRow(\"%s.%s\", base, $0) }\n", \
                fpath[i], tl[t], fpath[i]
            printf "            }\n"
            printf "        }\n"
        }
    }
    print "    }"
    print "}"
}
