"""The Makefile's header lists every target a user may call, so `head Makefile` is the whole
menu: each rule's target (in the Makefile and the cross/*.mk files it includes) must be named in
the header as `make TARGET` or on its "Internal" line, and the header must name no target that
does not exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULE = re.compile(r"^([a-z][a-z0-9-]*(?:\s+[a-z][a-z0-9-]*)*)\s*&?:(?!=)", re.M)


def header_lines() -> list[str]:
    lines = []
    for line in (REPO / "Makefile").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def rule_targets() -> set[str]:
    targets: set[str] = set()
    for path in [REPO / "Makefile", *sorted((REPO / "cross").glob("*.mk"))]:
        for match in RULE.finditer(path.read_text()):
            targets.update(match.group(1).split())
    return targets


def test_the_header_lists_every_target_and_only_those():
    header = header_lines()
    text = "\n".join(header)
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", text))
    internal_line = next((line for line in header if line.startswith("# Internal")), "")
    internal = set(re.findall(r"[a-z][a-z0-9-]+", internal_line.partition(":")[2]))
    targets = rule_targets()
    assert targets, "no rules found: the pattern no longer matches the Makefile"
    missing = sorted(targets - named - internal)
    assert not missing, f"targets missing from the Makefile's header: {missing}"
    unknown = sorted((named | internal) - targets)
    assert not unknown, f"the Makefile's header names targets that do not exist: {unknown}"
