"""Shared fixtures and helpers for the Python peers that exercise the Swift wire-probe.

The Python side is the reference: the official protobuf runtime decides what a tunnel
message means, and the `websockets` library plays the other end of a WebSocket. The Swift
codecs are reached only through the `wire-probe` executable, whose line-oriented contract
is described in the test modules next to this file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest


def pytest_configure(config):
    # The ARM builds run under qemu on a chosen set of end-to-end tests (make test-cross): the set
    # is marked on the tests, so that renaming one cannot drop it silently as a -k pattern would.
    config.addinivalue_line("markers", "cross: also run against the ARM builds under qemu (make test-cross)")
    config.addinivalue_line("markers", "valgrind: also run with the Embedded build under valgrind (make test-valgrind)")
    config.addinivalue_line("markers", "deb_file: checks of a built .deb, run for each architecture by make deb-check")

PEERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parents[1]
PROTO_FILE = PEERS_DIR / "tunnel.proto"

# A tunnel frame carries its protobuf bytes behind a 2-byte big-endian length, so no
# encoded message may exceed this (docs/PROTOCOL.md section 5).
MAX_FRAME_BODY = 0xFFFF
# The largest `payload` a peer may put in one message (docs/PROTOCOL.md section 5).
MAX_PAYLOAD = 64_512

# One probe run in these tests moves at most a few megabytes over a pipe or loopback, so
# anything slower than this is a hang rather than a slow machine. An AddressSanitizer build
# (make test-asan sets LP_SANITIZER_LOG_DIR) runs several times slower: it gets four times as
# long (seen: pb-random with 3000 messages took over 15 s under ASan on a loaded machine).
PROBE_TIMEOUT = 15.0 * (4 if os.environ.get("LP_SANITIZER_LOG_DIR") else 1)

_HEX = r"(?:[0-9a-f]{2})*"
# The probe's canonical text is parsed strictly, so that a formatting slip on the Swift
# side (upper-case hex, a missing field, a stray space) is reported instead of tolerated.
CANONICAL_RE = re.compile(
    rf"type=(-?\d+) stream=(-?\d+) ignorable=([01]) payload=({_HEX}) "
    rf"service=({_HEX}) ids=({_HEX}(?:,{_HEX})*) conn=(\d+)"
)


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Compile tunnel.proto with the bundled protoc and import the generated module.

    The generated code goes to a temporary directory because it depends on the installed
    protoc and must never end up committed next to the hand-written schema.
    """
    from grpc_tools import protoc

    out_dir = tmp_path_factory.mktemp("generated_pb2")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PEERS_DIR}",
            f"--python_out={out_dir}",
            str(PROTO_FILE),
        ]
    )
    assert rc == 0, f"protoc failed on {PROTO_FILE} (exit {rc})"
    generated = out_dir / "tunnel_pb2.py"
    spec = importlib.util.spec_from_file_location("tunnel_pb2", generated)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def probe():
    """Path of the Swift wire-probe executable.

    A missing probe is a failure, not a skip: a skipped peer suite would let CI pass
    without ever comparing the Swift codecs against the reference implementations.
    """
    configured = os.environ.get("WIRE_PROBE")
    path = Path(configured) if configured else REPO_ROOT / ".build" / "debug" / "wire-probe"
    if not path.is_absolute() and not path.exists():
        # The Makefile runs pytest from the repository root, but a developer may not.
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"wire-probe executable not found at {path}; "
            "run `swift build --product wire-probe` first (or set WIRE_PROBE)",
            pytrace=False,
        )
    return str(path)


def canonical(msg) -> str:
    """Render a tunnel Message as the probe's one-line canonical text.

    Strings are shown as hex of their UTF-8 bytes so that non-ASCII text, spaces and
    commas can never be confused with the separators of the line itself.
    """
    ids = ",".join(s.encode("utf-8").hex() for s in msg.availableServiceIds)
    return (
        f"type={int(msg.type)} stream={msg.streamId} ignorable={1 if msg.ignorable else 0} "
        f"payload={bytes(msg.payload).hex()} service={msg.serviceId.encode('utf-8').hex()} "
        f"ids={ids} conn={msg.connectionId}"
    )


def message_from_canonical(pb, line: str):
    """Build the Message that a canonical line describes, failing on any malformed line.

    An empty `ids=` means an empty list: the tests never create a list holding a single
    empty string, which would render the same way.
    """
    match = CANONICAL_RE.fullmatch(line)
    assert match is not None, f"not a canonical message line: {line!r}"
    mtype, stream, ignorable, payload, service, ids, conn = match.groups()
    msg = pb.Message()
    msg.type = int(mtype)
    msg.streamId = int(stream)
    msg.ignorable = ignorable == "1"
    msg.payload = bytes.fromhex(payload)
    msg.serviceId = bytes.fromhex(service).decode("utf-8")
    if ids:
        msg.availableServiceIds.extend(bytes.fromhex(h).decode("utf-8") for h in ids.split(","))
    msg.connectionId = int(conn)
    return msg


def frame(body: bytes) -> bytes:
    """Prefix protobuf bytes with the 2-byte big-endian tunnel length."""
    assert len(body) <= MAX_FRAME_BODY, f"frame body of {len(body)} bytes cannot be length-prefixed"
    return len(body).to_bytes(2, "big") + body


def run_probe(probe: str, *args: str, stdin: bytes = b"", timeout: float = PROBE_TIMEOUT) -> list[str]:
    """Run one probe sub-command to completion and return its stdout lines.

    The probe must exit 0; otherwise the test fails with the probe's own output, which
    is what the engineer fixing it needs to see.
    """
    command = [probe, *args]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(command)} did not finish within {timeout} s; "
            f"stderr: {(exc.stderr or b'').decode(errors='replace')[-2000:]}",
            pytrace=False,
        )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {done.returncode}; "
            f"stderr: {done.stderr.decode(errors='replace')[-2000:]}; "
            f"stdout tail: {done.stdout.decode(errors='replace')[-2000:]}",
            pytrace=False,
        )
    text = done.stdout.decode("utf-8")
    return text.splitlines()


@pytest.fixture(scope="session")
def tunnel_certs(tmp_path_factory):
    """A CA, a server certificate it signed (SAN localhost, 127.0.0.1) and an unrelated CA.

    Generated once per test session with the openssl CLI, so no private key is ever committed.
    """
    from tunnel_service import make_certs

    return make_certs(tmp_path_factory.mktemp("tunnel_certs"))


@pytest.fixture(scope="session")
def localproxy():
    """Path of the `localproxy` executable under test.

    As with the wire-probe, a missing binary fails the end-to-end tests instead of skipping
    them, so that they cannot silently stop running.
    """
    configured = os.environ.get("LOCALPROXY")
    path = Path(configured) if configured else REPO_ROOT / ".build" / "debug" / "localproxy"
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"localproxy executable not found at {path}; "
            "run `swift build --product localproxy` first (or set LOCALPROXY)",
            pytrace=False,
        )
    return str(path)


# Sanitizer and valgrind reports (make test-asan, make test-valgrind). With LP_SANITIZER_LOG_DIR
# set, every ASan/UBSan-built process writes its reports to a file there (log_path; the file
# exists only if there is a report) and scripts/valgrind-localproxy writes valgrind.PID.xml for
# every process (a report is an <error> record in it). A report that appears while a test runs
# fails that test, also when the test killed the process before its exit status could show it.
# scripts/sanitizer-reports applies the same rule to the whole run.
SANITIZER_LOG_DIR = os.environ.get("LP_SANITIZER_LOG_DIR")


def _files_with_sanitizer_reports() -> set[str]:
    found = set()
    for entry in os.scandir(SANITIZER_LOG_DIR):
        if not entry.name.startswith("valgrind."):
            found.add(entry.name)
        elif entry.name.endswith(".xml") and b"<error>" in Path(entry.path).read_bytes():
            found.add(entry.name)
    return found


@pytest.fixture(autouse=True)
def _fail_on_sanitizer_reports():
    if not SANITIZER_LOG_DIR:
        yield
        return
    before = _files_with_sanitizer_reports()
    yield
    new = sorted(_files_with_sanitizer_reports() - before)
    if new:
        texts = []
        for name in new:
            text = (Path(SANITIZER_LOG_DIR) / name).read_text(errors="replace")
            if name.endswith(".xml"):
                text = "\n".join(re.findall(r"<error>.*?</error>", text, re.S))
            texts.append(f"--- {name}\n{text[-6000:]}")
        pytest.fail("sanitizer or valgrind reports from processes of this test:\n" + "\n".join(texts),
                    pytrace=False)
