#!/usr/bin/env python3
"""Prints the footprint of device binaries and enforces the size budgets (make footprint).

Usage: footprint.py [--budget PATH=BYTES ...] [--map LINKMAP ...] BINARY ...

For each binary: its size on disk (the stripped copies are what ships) and the sizes of the
sections that are loaded (code, read-only data, data, bss), read from the ELF section headers,
so any architecture works without a cross binutils. A binary over its budget makes the exit
status 1, with the excess named. A missing binary is an error too: a budget that measured
nothing must not pass. With --map (an lld link map, `-Wl,-Map`), the loaded bytes are also
split by where they come from: the Swift objects, each static library, and the linker's own
(merged strings, relocations, PLT); and a map that shows the Unicode normalisation or grapheme
tables of the Embedded stdlib (libswiftUnicodeDataTables.a) linked in makes the exit status 1:
the device modules compare text as bytes so that those ~38 KB stay out (docs/FOOTPRINT.md).
"""
import os
import re
import struct
import sys

UNICODE_TABLES_LIBRARY = "libswiftUnicodeDataTables.a"
# The tables themselves and the functions of the library that read them: String comparison and
# hashing (normalisation) and Character boundaries (grapheme breaking) are what reach them.
UNICODE_TABLE_SYMBOL = re.compile(
    r"_swift_stdlib_(?:nfd_decomp|nfc_comp|normData|graphemeBreakProperties|InCB_Consonant|emojiData"
    r"|getNormData|getComposition|getDecompositionEntry|getGraphemeBreakProperty|isInCB_Consonant"
    r"|isExtendedPictographic)\w*")

SHF_ALLOC = 0x2
SHT_NOBITS = 8


def sections(path):
    """Returns [(name, size, is_nobits)] of the allocated sections of an ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(endian + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(endian + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x2E)

    def header(i):
        base = shoff + i * shentsize
        if is64:
            name, kind, flags, _addr, offset, size = struct.unpack_from(endian + "IIQQQQ", data, base)
        else:
            name, kind, flags, _addr, offset, size = struct.unpack_from(endian + "IIIIII", data, base)
        return name, kind, flags, offset, size

    _, _, _, names_offset, names_size = header(shstrndx)
    names = data[names_offset:names_offset + names_size]
    result = []
    for i in range(shnum):
        name, kind, flags, _offset, size = header(i)
        if flags & SHF_ALLOC:
            label = names[name:names.index(b"\0", name)].decode()
            result.append((label, size, kind == SHT_NOBITS))
    return result


def summary(path):
    groups = {"code": 0, "rodata": 0, "data": 0, "bss": 0}
    for name, size, nobits in sections(path):
        if nobits:
            groups["bss"] += size
        elif name.startswith(".text") or name in (".plt", ".init", ".fini", ".iplt"):
            groups["code"] += size
        elif name.startswith((".data", ".got", ".init_array", ".fini_array", ".tbss", ".tdata")):
            groups["data"] += size
        else:
            groups["rodata"] += size
    return groups


def loaded_lines(map_path):
    """(output section, size, body) of each line of an lld map inside a loaded output section."""
    section = None
    for line in open(map_path, errors="replace"):
        # lld: VMA LMA Size Align, then the output section, or an input "file:(section)"
        # one level deeper, or a symbol deeper still.
        fields = line.split(None, 4)
        if len(fields) < 5 or not all(c in "0123456789abcdef" for c in fields[2]):
            continue
        body = fields[4].strip()
        if body.startswith(".") and ":(" not in body:
            section = body
            continue
        if section is None or section.startswith((".debug", ".comment", ".symtab", ".strtab", ".shstrtab")):
            continue
        yield section, int(fields[2], 16), body


def origins(map_path):
    """Bytes of loaded output sections per input (object file or archive) of an lld map."""
    totals = {}
    for section, size, body in loaded_lines(map_path):
        if ":(" not in body or section == ".bss":
            continue
        source = body.split(":(")[0]
        name = os.path.basename(source.split("(")[0])
        if name.endswith(".o") and "crt" not in name:
            name = "Swift objects (our modules + Embedded stdlib)"
        totals[name] = totals.get(name, 0) + size
    return totals


def unicode_tables(map_path):
    """Bytes of input sections from libswiftUnicodeDataTables.a and the table symbols an lld map
    shows linked (bytes 0 and no names when the tables are out)."""
    size = 0
    names = set()
    for _section, length, body in loaded_lines(map_path):
        if ":(" in body and UNICODE_TABLES_LIBRARY + "(" in body:
            size += length
        # One name for numbered families (_swift_stdlib_nfc_comp0 ... 44).
        names.update(re.sub(r"\d+$", "*", name) for name in UNICODE_TABLE_SYMBOL.findall(body))
    return size, sorted(names)


def main(argv):
    budgets = {}
    maps = []
    paths = []
    args = iter(argv)
    for arg in args:
        if arg == "--map":
            maps.append(next(args, ""))
        elif arg == "--budget":
            spec = next(args, "")
            path, _, limit = spec.rpartition("=")
            if not path or not limit.isdigit():
                print(f"footprint: --budget wants PATH=BYTES, got {spec!r}", file=sys.stderr)
                return 2
            budgets[path] = int(limit)
        else:
            paths.append(arg)
    for path in budgets:
        if path not in paths:
            paths.append(path)
    failed = False
    print(f"{'binary':58} {'bytes':>10} {'code':>9} {'rodata':>9} {'data':>8} {'bss':>8}  budget")
    for path in paths:
        if not os.path.exists(path):
            print(f"{path:58} missing: build it first (make embedded ARCH=... LINK=...)")
            failed = True
            continue
        size = os.path.getsize(path)
        g = summary(path)
        limit = budgets.get(path)
        verdict = ""
        if limit is not None:
            if size > limit:
                verdict = f"OVER {limit:,} by {size - limit:,}"
                failed = True
            else:
                verdict = f"<= {limit:,} ok"
        print(f"{path:58} {size:>10,} {g['code']:>9,} {g['rodata']:>9,} {g['data']:>8,} {g['bss']:>8,}  {verdict}")
    for map_path in maps:
        if not os.path.exists(map_path):
            print(f"{map_path}: missing link map")
            failed = True
            continue
        totals = origins(map_path)
        print(f"\nloaded bytes by origin ({map_path}, before stripping):")
        for name, size in sorted(totals.items(), key=lambda item: -item[1]):
            if size >= 1024:
                print(f"  {size:>10,}  {name}")
        table_bytes, table_names = unicode_tables(map_path)
        if table_bytes or table_names:
            shown = ", ".join(table_names) or "no table symbols named"
            print(f"\n{map_path}: the Unicode normalisation/grapheme tables are linked "
                  f"({table_bytes:,} bytes from {UNICODE_TABLES_LIBRARY}: {shown}). "
                  "A device module compares or cuts a String through Unicode: String ==/!=, a switch over "
                  "string literals, hasPrefix/hasSuffix, split/firstIndex/contains with a Character, "
                  "[String].contains, count, or a String dictionary key. Use the byte-wise helpers of "
                  "Sources/TunnelCore/ByteText.swift; the linker names the caller with "
                  "-Wl,--why-live=_swift_stdlib_getNormData (docs/FOOTPRINT.md).")
            failed = True
    if failed:
        print("footprint: a budget is exceeded, a binary or map is missing, or the Unicode tables are "
              "linked; docs/FOOTPRINT.md says where the space goes", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
