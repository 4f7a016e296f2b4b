"""Every document the repository cites is in the repository.

Comments and documents point readers to files such as docs/PROTOCOL.md (the protocol, by section)
and docs/BUILDING.md. These tests read every tracked file (`git ls-files`) and fail, with
file:line and the missing target, when one of them:
- names a `docs/NAME.md` that is not tracked;
- cites a `*.md` path in a comment or a document (Markdown files, comment lines of code and
  scripts, Python comments and docstrings) that is tracked neither from the repository's root
  nor from the citing file's directory;
- cites a section of docs/PROTOCOL.md (`§8.4`, `section 8.4`, `sections 3, 10.1 and 14`,
  `§16.11–12`) that the file has no heading for;
- points into the directory beside the repository that the project's private notes once lived
  in (`../` followed by `shared`), which readers of the repository do not have.

This file is not scanned itself: its docstring and patterns spell out the forms it looks for.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()
PROTOCOL = "docs/PROTOCOL.md"
OUTSIDE = "../" + "shared"

URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)
# A relative path ending in .md, not part of a longer path or word (absolute paths such as
# /usr/share/doc/... and shell variables such as $here/... are installed locations, not
# citations), and not followed by another extension (GATEWAY.md.gz).
MD_RE = re.compile(r"(?<![\w./$~-])((?:\.{1,2}/)*\w[\w.+-]*(?:/[\w.+-]+)*\.md)(?![\w/-]|\.\w)")
DOCS_RE = re.compile(r"(?<![\w./$~-])(docs/[\w.+-]+\.md)(?![\w/-]|\.\w)")
HEADING_RE = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s")
# What may follow a citation of docs/PROTOCOL.md: one or more section numbers, each optionally
# after § or "section(s)", separated by commas, "and" or "or"; "16.11–12" is a range of the
# last component.
SECTION_RE = re.compile(r"\s*(?:§\s*|sections?\s+)?(\d+(?:\.\d+)*)(?:\s*[–-]\s*(\d+)\b)?")
SEPARATOR_RE = re.compile(r"\s*(?:,|and\b|or\b)\s*")

COMMENT_SLASH = {".swift", ".c", ".h", ".proto", ".modulemap"}
SKIPPED_SUFFIXES = {".svg", ".png", ".jpg", ".gz", ".xz", ".bz2"}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout, so there is no list of tracked files: {e}")
    return [p for p in out.decode().split("\0") if p]


def read_text(path: str) -> str | None:
    if Path(path).suffix in SKIPPED_SUFFIXES:
        return None
    data = (REPO_ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def without_urls(text: str) -> str:
    return URL_RE.sub(" ", text)


def outside_quotes(line: str, index: int) -> bool:
    """Whether `index` is outside string literals, counting the quotes before it."""
    before = line[:index]
    return before.count('"') % 2 == 0 and before.count("'") % 2 == 0


def comment_lines(path: str, text: str) -> list[tuple[int, str]]:
    """The comment and documentation text of a file, line by line: (line number, text)."""
    lines = text.splitlines()
    suffix = Path(path).suffix
    if suffix == ".md":
        return list(enumerate(lines, 1))
    if suffix == ".py":
        return python_comments(text)
    out = []
    if suffix in COMMENT_SLASH:
        in_block = False
        for n, line in enumerate(lines, 1):
            stripped = line.strip()
            if in_block:
                out.append((n, line))
                in_block = "*/" not in line
                continue
            if stripped.startswith("/*"):
                out.append((n, line))
                in_block = "*/" not in line
                continue
            for m in re.finditer(r"//", line):
                if outside_quotes(line, m.start()) and not line[:m.start()].endswith(":"):
                    out.append((n, line[m.end():]))
                    break
        return out
    # Everything else (Makefile, shell, packaging, configuration, fuzz dictionaries): # comments.
    for n, line in enumerate(lines, 1):
        for m in re.finditer(r"#", line):
            at_start = not line[:m.start()].strip()
            if at_start or (line[m.start() - 1].isspace() and outside_quotes(line, m.start())):
                out.append((n, line[m.end():]))
                break
    return out


def python_comments(text: str) -> list[tuple[int, str]]:
    """Comments and triple-quoted strings (docstrings) of Python source."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out.append((tok.start[0], tok.string))
            elif tok.type == tokenize.STRING and re.match(r"^[rRbBuUfF]*('''|\"\"\")", tok.string):
                for i, line in enumerate(tok.string.splitlines()):
                    out.append((tok.start[0] + i, line))
    except (tokenize.TokenError, SyntaxError):
        out = [(n, line) for n, line in enumerate(text.splitlines(), 1)]
    return out


def protocol_sections() -> set[str]:
    text = (REPO_ROOT / PROTOCOL).read_text()
    return {m.group(1) for line in text.splitlines() if (m := HEADING_RE.match(line))}


def cited_sections(rest: str) -> list[str]:
    """Section numbers at the start of `rest`, the text right after a citation of the protocol."""
    found = []
    pos = 0
    while True:
        m = SECTION_RE.match(rest, pos)
        if not m:
            return found
        number = m.group(1)
        found.append(number)
        if m.group(2):
            found.append(".".join(number.split(".")[:-1] + [m.group(2)]))
        pos = m.end()
        sep = SEPARATOR_RE.match(rest, pos)
        if not sep or not SECTION_RE.match(rest, sep.end()):
            return found
        pos = sep.end()


def exists(target: str, citing: str, tracked: set[str]) -> bool:
    """Whether `target` is a tracked file, read from the root or from the citing file's directory."""
    for base in ("", os.path.dirname(citing)):
        candidate = os.path.normpath(os.path.join(base, target))
        if not candidate.startswith("..") and candidate in tracked:
            return True
    return False


def scanned() -> list[tuple[str, str]]:
    out = []
    for path in tracked_files():
        if path == SELF:
            continue
        text = read_text(path)
        if text is not None:
            out.append((path, text))
    return out


def fail_with(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n" + "\n".join(problems), pytrace=False)


def test_section_citations_are_parsed():
    assert cited_sections(" §7, §8, §11, §17): every") == ["7", "8", "11", "17"]
    assert cited_sections(" §6, §7, §9, §11, §16.11–12).") == ["6", "7", "9", "11", "16.11", "16.12"]
    assert cited_sections(" sections 3, 10.1 and 14): it") == ["3", "10.1", "14"]
    assert cited_sections(" section 5).") == ["5"]
    assert cited_sections(" 14.4), disconnects") == ["14.4"]
    assert cited_sections(" §8 and §17, without the quirks of §16)") == ["8", "17"]
    assert cited_sections(" says, or") == []
    assert cited_sections(", docs/EMULATOR.md)") == []


def test_markdown_paths_are_found_in_comments():
    swift = 'let s = "a.md" // see docs/GATEWAY.md and cross/README.md\n/// (docs/X.md §2)\n'
    lines = comment_lines("Sources/A/B.swift", swift)
    found = [m.group(1) for _, text in lines for m in MD_RE.finditer(text)]
    assert found == ["docs/GATEWAY.md", "cross/README.md", "docs/X.md"]
    shell = 'install "$here/NOTICES.md" /usr/share/doc/x/GATEWAY.md.gz  # NOTICES.md\n'
    found = [m.group(1) for _, text in comment_lines("scripts/x.sh", shell) for m in MD_RE.finditer(text)]
    assert found == ["NOTICES.md"]
    py = '"""Docstring naming docs/A.md."""\nx = "docs/B.md"  # and C.md\n'
    found = [m.group(1) for _, text in comment_lines("t.py", py) for m in MD_RE.finditer(text)]
    assert found == ["docs/A.md", "C.md"]
    assert MD_RE.findall(without_urls("[V3](https://github.com/o/r/blob/main/V3Guide.md)")) == []


def test_cited_documents_exist():
    tracked = set(tracked_files())
    problems = []
    for path, text in scanned():
        seen = set()
        for n, line in enumerate(text.splitlines(), 1):
            for m in DOCS_RE.finditer(without_urls(line)):
                if m.group(1) not in tracked:
                    problems.append(f"{path}:{n}: names {m.group(1)}, which is not in the repository")
                    seen.add((n, m.group(1)))
        for n, line in comment_lines(path, text):
            for m in MD_RE.finditer(without_urls(line)):
                target = m.group(1)
                if (n, target) not in seen and not exists(target, path, tracked):
                    problems.append(f"{path}:{n}: cites {target}, which is not in the repository "
                                    f"(neither from its root nor from {Path(path).parent.as_posix() or '.'}/)")
    fail_with(problems, "citation(s) of documents the repository does not have")


def test_protocol_sections_cited_exist():
    sections = protocol_sections()
    assert {"3.1", "8.4", "16.11", "17"} <= sections, f"{PROTOCOL} lost its numbered headings"
    problems = []
    for path, text in scanned():
        for n, line in enumerate(text.splitlines(), 1):
            for m in re.finditer(re.escape(PROTOCOL), line):
                for number in cited_sections(line[m.end():]):
                    if number not in sections:
                        problems.append(f"{path}:{n}: cites {PROTOCOL} §{number}, which it does not have")
    fail_with(problems, f"citation(s) of sections {PROTOCOL} does not have "
                        f"(its sections: {', '.join(sorted(sections, key=lambda s: [int(x) for x in s.split('.')]))})")


def test_nothing_points_outside_the_repository():
    problems = [f"{path}:{n}: points to {OUTSIDE}, outside the repository"
                for path, text in scanned()
                for n, line in enumerate(text.splitlines(), 1) if OUTSIDE in line]
    fail_with(problems, "reference(s) to files outside the repository")
