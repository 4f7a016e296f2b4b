"""The throughput harness (scripts/bench): its relay, its traffic ends, and whole tiny runs.

These check that the instrument is right — the relay forwards exact frames and bounds its
memory, the traffic ends catch corruption, a run produces every figure — never how fast
anything is (speed is the harness's output, not a test assertion).

Environment:
  BENCH_TOOLS   directory holding wsrelay and aead-ceiling-system (make bench-tools)
  LOCALPROXY    the proxy measured by the whole-run tests (scripts/qemu-localproxy for an ARM
                build under qemu; LP_CROSS_ARCH then picks the architecture)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BENCH = REPO_ROOT / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
import traffic  # noqa: E402

WAIT = 20.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def tool(name: str) -> str:
    directory = Path(os.environ.get("BENCH_TOOLS", REPO_ROOT / ".build-bench"))
    path = directory / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built: run `make bench-tools` (or set BENCH_TOOLS)", pytrace=False)
    return str(path)


@pytest.fixture(scope="module")
def relay_certs(tmp_path_factory):
    return bench.make_certs(tmp_path_factory.mktemp("relay"))


class RelayProcess:
    def __init__(self, certs, *args: str):
        cert, key = certs
        self.proc = subprocess.Popen([tool("wsrelay"), "--cert", str(cert), "--key", str(key), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.expect("listening").split()[1])

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(line.strip())
                self.cond.notify_all()

    def expect(self, prefix: str) -> str:
        with self.cond:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if e.startswith(prefix)]
                return bool(found)

            assert self.cond.wait_for(seen, WAIT), f"the relay never said {prefix!r}: {self.events}"
            self.events.remove(found[0])
            return found[0]

    def peak_rss_kib(self) -> int:
        return bench.peak_rss_kib(self.proc.pid)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def relay(relay_certs):
    process = RelayProcess(relay_certs)
    yield process
    process.stop()


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


class RawClient:
    """A TLS client that speaks the upgrade and frames by hand, to check bytes exactly."""

    def __init__(self, port: int, role: str, protocols: str = "aws.iot.securetunneling-3.0"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET /tunnel?local-proxy-mode={role} HTTP/1.1\r\nHost: localhost\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Protocol: {protocols}\r\n"
                        "access-token: x\r\n\r\n").encode()
        self.buffer = b""

    def upgrade(self) -> str:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "the relay closed during the upgrade"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head.decode()

    def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, f"the relay closed with {len(self.buffer)} of {n} bytes read"
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def closed(self) -> bool:
        """Whether the relay ends the connection (reading whatever comes before)."""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return True
        except (ssl.SSLError, ConnectionResetError):
            return True
        except socket.timeout:
            return False




def test_upgrade_answer_and_service_ids_are_exact(relay):
    client = RawClient(relay.port, "destination",
                       "aws.iot.securetunneling-1.0, aws.iot.securetunneling-3.0, aws.iot.securetunneling-2.0")
    head = client.upgrade()
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    expected = base64.b64encode(hashlib.sha1(client.key.encode() + GUID).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    assert headers["sec-websocket-protocol"] == "aws.iot.securetunneling-3.0"
    assert headers["channel-id"]
    # SERVICE_IDS ["SSH"]: type 5 (08 05), field 6 "SSH" (32 03 53 53 48), a 2-byte length of 7,
    # in one unmasked binary frame of 9 bytes.
    assert client.read_exact(11) == bytes.fromhex("82 09 00 07 08 05 32 03 53 53 48")
    assert relay.expect("connected destination").split()[3].startswith("TLSv1.")


def test_v1_clients_get_no_service_ids(relay):
    client = RawClient(relay.port, "source", "aws.iot.securetunneling-1.0")
    assert "aws.iot.securetunneling-1.0" in client.upgrade()
    client.sock.settimeout(0.5)
    assert client.buffer == b""
    with pytest.raises(socket.timeout):
        client.sock.recv(1)


@pytest.mark.parametrize("request_text, why", [
    ("GET /other?local-proxy-mode=source HTTP/1.1\r\nSec-WebSocket-Key: a\r\n"
     "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n\r\n", "not a GET /tunnel"),
    ("GET /tunnel?local-proxy-mode=both HTTP/1.1\r\nSec-WebSocket-Key: a\r\n"
     "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n\r\n", "local-proxy-mode"),
    ("GET /tunnel?local-proxy-mode=source HTTP/1.1\r\nSec-WebSocket-Key: a\r\n"
     "Sec-WebSocket-Protocol: chat\r\n\r\n", "subprotocol"),
    ("GET /tunnel?local-proxy-mode=source HTTP/1.1\r\n"
     "Sec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n\r\n", "Sec-WebSocket-Key"),
])
def test_bad_upgrade_requests_get_400_and_a_reason(relay, request_text, why):
    client = RawClient(relay.port, "source")
    client.sock.sendall(request_text.encode())
    answer = client.sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert why in relay.expect("refused")


def paired(relay) -> tuple[RawClient, RawClient]:
    source = RawClient(relay.port, "source")
    source.upgrade()
    source.read_exact(11)
    destination = RawClient(relay.port, "destination")
    destination.upgrade()
    destination.read_exact(11)
    relay.expect("paired")
    return source, destination


def test_frames_cross_unmasked_and_exact_under_any_split(relay):
    source, destination = paired(relay)
    rng = random.Random(9)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 131076]
    frames = [(2, rng.randbytes(n), True) for n in sizes]
    frames += [(2, b"first part", False), (0, b"second part", True)]
    stream = b"".join(client_frame(op, payload, fin, mask=rng.randbytes(4)) for op, payload, fin in frames)
    expected = b"".join(server_frame(op, payload, fin) for op, payload, fin in frames)
    # Byte by byte for the first frames, then random cuts, so every header boundary is split.
    cuts, pos = [], 0
    while pos < len(stream):
        step = 1 if pos < 400 else rng.randint(1, 70000)
        cuts.append(stream[pos:pos + step])
        pos += step

    def send() -> None:
        for piece in cuts:
            source.sock.sendall(piece)

    sender = threading.Thread(target=send)
    sender.start()
    assert destination.read_exact(len(expected)) == expected
    sender.join(WAIT)
    # And the other way.
    destination.sock.sendall(client_frame(2, b"answer"))
    assert source.read_exact(8) == server_frame(2, b"answer")


def test_pings_are_answered_by_the_relay_and_not_forwarded(relay):
    source, destination = paired(relay)
    source.sock.sendall(client_frame(9, b"are you there") + client_frame(2, b"data"))
    assert source.read_exact(15) == server_frame(10, b"are you there")
    assert destination.read_exact(6) == server_frame(2, b"data")


@pytest.mark.parametrize("frame, why", [
    (server_frame(2, b"unmasked"), "unmasked"),
    (bytes((0x82, 0xFF)) + (131077).to_bytes(8, "big") + b"\0\0\0\0", "over 131076"),
    (bytes((0xC2, 0x80)) + b"\0\0\0\0", "reserved bits"),
    (client_frame(9, b"x" * 126), "control frame"),
])
def test_protocol_errors_close_both_sides(relay, frame, why):
    source, destination = paired(relay)
    source.sock.sendall(frame)
    assert why in relay.expect("closed source")
    destination.sock.settimeout(WAIT)
    assert destination.read_exact(4) == bytes.fromhex("88 02 03 e8")
    assert destination.closed()


def test_a_reader_that_stops_holds_the_sender_back_with_bounded_memory(relay):
    source, destination = paired(relay)
    chunk = client_frame(2, bytes(65536))
    sent = [0]
    stop = threading.Event()

    def send() -> None:
        source.sock.settimeout(2)
        try:
            while not stop.is_set() and sent[0] < (256 << 20):
                source.sock.sendall(chunk)
                sent[0] += 1
        except (socket.timeout, ssl.SSLError, OSError):
            pass

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(WAIT)
    # The sender is blocked by a full window long before 256 MiB: the relay did not buffer it.
    assert sent[0] < 4096, f"the relay took {sent[0] * 64} KiB from a sender whose reader never read"
    assert relay.peak_rss_kib() < 32 * 1024
    stop.set()
    # Every frame the relay accepted arrives whole once the reader reads.
    frame = server_frame(2, bytes(65536))
    destination.sock.settimeout(WAIT)
    got = 0
    while True:
        destination.sock.settimeout(1.0)
        try:
            assert destination.read_exact(len(frame)) == frame
            got += 1
        except (socket.timeout, AssertionError):
            break
    assert got >= sent[0]


def test_one_way_traffic_resumes_after_every_pause_of_the_reader(relay):
    """A reader that pauses until the sender is blocked, then reads on: each time the relay
    must start reading the sender again by itself, with no frame coming the other way to wake
    it (a relay that needed one would stall one-way benchmark transfers)."""
    source, destination = paired(relay)
    frame_payload = bytes(65536)
    frame = client_frame(2, frame_payload)
    expected = server_frame(2, frame_payload)
    total = 2048  # 128 MiB
    sent = [0]

    def send() -> None:
        for _ in range(total):
            source.sock.sendall(frame)
            sent[0] += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    destination.sock.settimeout(WAIT)
    received = 0
    while received < total:
        # Read a burst, then wait (bounded) until the sender stops making progress.
        for _ in range(min(96, total - received)):
            assert destination.read_exact(len(expected)) == expected, f"frame {received} differs"
            received += 1
        last, still = sent[0], 0
        deadline = time.monotonic() + WAIT
        while still < 3 and sent[0] < total and time.monotonic() < deadline:
            time.sleep(0.02)
            still = still + 1 if sent[0] == last else 0
            last = sent[0]
    sender.join(WAIT)
    assert sent[0] == total


# ---------------------------------------------------------------------------------------------
# Traffic ends

def test_the_sink_receipt_catches_a_corrupted_byte():
    sink = traffic.Sink("random")
    threading.Thread(target=sink.serve, daemon=True).start()
    payload = traffic.Payload("random")
    count, offset = 300_000, 12345
    good = traffic.expected_crc(payload, offset, count)
    for flip in (None, 0, 299_999):
        with socket.create_connection(("127.0.0.1", sink.port), timeout=WAIT) as sock:
            data = bytearray()
            while len(data) < count:
                data += payload.window(offset + len(data), count - len(data))
            if flip is not None:
                data[flip] ^= 1
            sock.sendall(traffic.HEADER.pack(b"U", count, offset) + data)
            status, got, crc = traffic.RECEIPT.unpack(traffic.recv_exact(sock, traffic.RECEIPT.size))
            assert (status, got) == (b"K", count)
            assert (crc == good) == (flip is None)


def test_payload_windows_wrap_around_the_pattern():
    payload = traffic.Payload("text")
    period = payload.period
    window = payload.window(period - 3, 10)
    assert bytes(window) == bytes(payload.view[period - 3:period]) + bytes(payload.view[:7])


# ---------------------------------------------------------------------------------------------
# Whole runs, tiny

def run_bench(tmp_path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCH / "bench.py"), "run", "--relay", tool("wsrelay"),
                           "--out", str(tmp_path), "--no-idle-gate", "--runs", "1",
                           "--latency-samples", "20", "--setup-samples", "2", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    results_dir = next(tmp_path.iterdir())
    results = json.loads((results_dir / "results.json").read_text())
    results["_stdout"] = done.stdout
    results["_dir"] = results_dir
    return results


def test_a_tiny_run_reports_every_figure(tmp_path, localproxy):
    emulated = "qemu" in Path(localproxy).name
    args = ["--proxy", f"ours={localproxy}", "--bytes", "2MiB", "--directions", "up,down,both",
            "--connections", "1,8"]
    if emulated:
        args += ["--emulated", "ours", "--no-plain"]
    else:
        args += ["--aead", f"ours={tool('aead-ceiling-system')}", "--aead-mib", "1"]
    results = run_bench(tmp_path, *args)
    rows = {(r["proxy"], r["direction"], r["connections"]): r for r in results["rows"]}
    expected = {("ours", d, c) for d in ("up", "down", "both") for c in (1, 8)}
    if not emulated:
        expected |= {("plain-tcp", d, c) for d in ("up", "down", "both") for c in (1, 8)}
    assert set(rows) == expected
    for (proxy, direction, _), row in rows.items():
        run = row["runs"][0]
        assert run["bytes"] == (2 << 20) * (2 if direction == "both" else 1)
        assert row["mb_per_s"]["median"] > 0
        assert set(row["cpu_ms_per_mb"]) == {"load", "source", "relay", "destination", "sink"}
        assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p99"] >= row["latency_ms"]["p50"]
        assert row["setup_ms"] > 0
        if proxy == "ours":
            assert row["peak_rss_kib"]["source"] > 0 and row["peak_rss_kib"]["destination"] > 0
            assert set(row["suites"]) == {"source", "destination"}
            assert all(name.startswith(("ECDHE-", "TLS_")) for name in row["suites"].values())
            assert row["emulated"] == emulated
            if not emulated:
                assert "ceiling" in row, row
                if direction != "both":
                    # CPU ticks are 10 ms: a 2 MiB run may count none, so only the presence is checked.
                    assert row["sender_vs_ceiling"] >= 0 and row["receiver_vs_ceiling"] >= 0
                assert row["vs_plain_tcp"] > 0
    table = results["_stdout"]
    assert "ours" in table and "MB/s" in table
    if emulated:
        assert "emulated" in table
    else:
        assert "cipher ceiling ours (mbedTLS" in table
    ElementTree.parse(results["_dir"] / "plot.svg")


def test_a_proxy_that_does_not_start_fails_the_run_with_its_log(tmp_path):
    fake = tmp_path / "not-a-proxy"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCH / "bench.py"), "run", "--relay", tool("wsrelay"),
                           "--out", str(out), "--no-idle-gate", "--no-plain", "--runs", "1",
                           "--proxy", f"fake={fake}", "--bytes", "1MiB", "--connections", "1",
                           "--directions", "up"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "fake-up-1-run1-dst.log" in done.stderr and "cannot start" in done.stderr


def test_aead_ceiling_reports_each_suite():
    done = subprocess.run([tool("aead-ceiling-system"), "--json", "--mib", "1"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["mbedtls_version"].startswith(("2.", "3."))
    for suite in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"):
        figures = report["suites"][suite]
        assert figures["encrypt_ms_per_mb"] > 0 and figures["decrypt_ms_per_mb"] > 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                pass
    return found


def test_ctrl_c_stops_every_process_the_harness_started(tmp_path, localproxy):
    harness = subprocess.Popen(
        [sys.executable, str(BENCH / "bench.py"), "run", "--relay", tool("wsrelay"), "--out", str(tmp_path),
         "--no-idle-gate", "--no-plain", "--runs", "1", "--proxy", f"ours={localproxy}", "--bytes", "64GiB",
         "--connections", "1", "--directions", "up", "--latency-samples", "5", "--setup-samples", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The progress line shows bytes moving once the transfer runs (read as it comes, no sleep).
    seen = ""
    deadline = time.monotonic() + 120
    while not re.search(r"run 1/1:\s+[1-9][0-9.]* / ", seen):
        assert time.monotonic() < deadline and harness.poll() is None, f"no transfer started: {seen[-2000:]}"
        seen += harness.stderr.read(1)
    started = children_of(harness.pid)
    assert len(started) == 5, f"expected sink, relay, two proxies and load, found {started}"
    harness.send_signal(signal.SIGINT)
    assert harness.wait(60) == 130
    harness.stdout.read()
    harness.stderr.read()
    alive = [pid for pid in started if os.path.exists(f"/proc/{pid}") and
             open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"]
    assert not alive, f"still running after Ctrl-C: {alive}"
