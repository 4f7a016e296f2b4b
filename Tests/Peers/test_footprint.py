"""scripts/footprint.py's guard against the Unicode tables (docs/FOOTPRINT.md).

The device modules compare and cut text as bytes so that the Embedded stdlib's normalisation
and grapheme tables (libswiftUnicodeDataTables.a, ~38 KB on armv7) stay out of the binary.
`make footprint-check` fails when a link map shows them again (it reads the real maps of the
armv7 builds); these tests feed the script small lld maps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "footprint.py"
TABLES = "/opt/swift/usr/lib/swift/embedded/armv7-none-none-eabi/libswiftUnicodeDataTables.a"

# The layout lld writes with -Map: VMA, LMA, size and alignment in hex, then an output section,
# an input section one level deeper ("file:(section)"), or a symbol deeper still.
HEADER = "     VMA      LMA     Size Align Out     In      Symbol\n"
CLEAN = (
    "   28bc4    28bc4       5c     4 .text\n"
    "   28bc4    28bc4       5c     4         main.o:(.text.$es32_swift_stdlib_Hashing_parameters_WZ)\n"
    "   28bc5    28bc5       5c     1                 $es32_swift_stdlib_Hashing_parameters_WZ\n"
)
WITH_TABLES = (
    "   13ff0    13ff0      db0     8 .rodata\n"
    f"   13ff0    13ff0      db0     8         {TABLES}(UnicodeNormalization.cpp.o):(.rodata._ZL22_swift_stdlib_normData)\n"
    "   13ff0    13ff0      db0     1                 _ZL22_swift_stdlib_normData\n"
    f"   15dc6    15dc6     259b     1         {TABLES}(UnicodeNormalization.cpp.o):(.rodata._ZL24_swift_stdlib_nfd_decomp)\n"
    "   15dc6    15dc6     259b     1                 _ZL24_swift_stdlib_nfd_decomp\n"
    f"   132d0    132d0      8f8     4         {TABLES}(UnicodeGrapheme.cpp.o):(.rodata._ZL37_swift_stdlib_graphemeBreakProperties)\n"
)
# Only the debug information mentions the tables: nothing of them is loaded.
DEBUG_ONLY = (
    "       0        0      100     1 .debug_info\n"
    f"       0        0      100     1         {TABLES}(UnicodeNormalization.cpp.o):(.debug_info)\n"
    "       0        0        4     1                 _ZL22_swift_stdlib_normData\n"
)


def run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    link_map = tmp_path / "localproxy.map"
    link_map.write_text(HEADER + body)
    return subprocess.run([sys.executable, str(SCRIPT), "--map", str(link_map)],
                          capture_output=True, text=True, timeout=60)


def test_a_map_without_the_tables_passes(tmp_path: Path) -> None:
    result = run(tmp_path, CLEAN + DEBUG_ONLY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unicode" not in result.stdout


def test_the_tables_fail_the_check_and_are_named(tmp_path: Path) -> None:
    result = run(tmp_path, CLEAN + WITH_TABLES)
    assert result.returncode == 1
    out = result.stdout
    for name in ("_swift_stdlib_nfd_decomp", "_swift_stdlib_normData", "_swift_stdlib_graphemeBreakProperties"):
        assert name in out
    # 0xdb0 + 0x259b + 0x8f8 bytes of input sections from the library.
    assert f"{0xdb0 + 0x259b + 0x8f8:,} bytes from libswiftUnicodeDataTables.a" in out
    assert "Sources/TunnelCore/ByteText.swift" in out and "--why-live" in out
    assert "Unicode tables are linked" in result.stderr

