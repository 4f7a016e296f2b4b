"""Runs the `tunnel-service` emulator binary for tests, and talks to it.

The fixture builds nothing (the Makefile does): it starts the binary named by the environment
variable TUNNEL_SERVICE (default `.build/debug/tunnel-service`) with a temporary state
directory, reads the lines it prints on start (`data-plane HOST:PORT`, `control-plane URL`,
`ca FILE`, `ready`), and at the end stops it with SIGTERM and checks that it exited 0.

Three ways in are provided:
* `Emulator.aws(...)`: the AWS CLI against the control plane, as a user would run it;
* `Emulator.api(...)`: the same JSON 1.1 calls over plain HTTP, for tests that only need a
  tunnel quickly (the CLI takes about a second per call on these machines);
* `Emulator.connect(...)` and `RawClient`: the data plane through Python's `websockets` (a
  strict RFC 6455 client) over TLS trusting the emulator's CA, or raw bytes over TLS for what a
  well-behaved client library refuses to send.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

PEERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parents[1]

V1 = "aws.iot.securetunneling-1.0"
V2 = "aws.iot.securetunneling-2.0"
V3 = "aws.iot.securetunneling-3.0"

# How long anything the emulator should do promptly may take before a test calls it a hang.
# The machines are small and busy, so this is generous.
WAIT = 20.0


def emulator_binary() -> str:
    configured = os.environ.get("TUNNEL_SERVICE")
    path = Path(configured) if configured else REPO_ROOT / ".build" / "debug" / "tunnel-service"
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        # A failure, not a skip: a skipped suite would let CI pass without testing the emulator.
        pytest.fail(f"tunnel-service executable not found at {path}; run `swift build --product tunnel-service` "
                    "first (or set TUNNEL_SERVICE)", pytrace=False)
    return str(path)


def aws_cli() -> str:
    """The venv's AWS CLI if it has one, else the system's."""
    venv = REPO_ROOT / ".venv" / "bin" / "aws"
    if venv.is_file():
        return str(venv)
    found = shutil.which("aws")
    if not found:
        pytest.fail("the AWS CLI (`aws`) is not installed", pytrace=False)
    return found


def frame_message(body: bytes) -> bytes:
    """Prefix protobuf bytes with the tunnel's 2-byte big-endian length."""
    assert len(body) <= 0xFFFF
    return len(body).to_bytes(2, "big") + body


def split_messages(data: bytes) -> list[bytes]:
    """Cut a tunnel byte stream into protobuf message bodies; the stream must end on a boundary."""
    out, pos = [], 0
    while pos < len(data):
        assert pos + 2 <= len(data), "stream ends inside a length prefix"
        n = int.from_bytes(data[pos:pos + 2], "big")
        assert pos + 2 + n <= len(data), "stream ends inside a message"
        out.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out


class Emulator:
    """One running `tunnel-service` process."""

    def __init__(self, binary: str, state_dir: Path, args: list[str]):
        self.binary = binary
        self.state_dir = state_dir
        self.args = args
        self.process: subprocess.Popen | None = None
        self.stderr_path = state_dir / f"stderr-{time.monotonic_ns()}.log"
        self.data_host = ""
        self.data_port = 0
        self.api_url = ""
        self.ca = ""

    # ---- process -----------------------------------------------------------------------

    def start(self) -> "Emulator":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen([self.binary, "--state-dir", str(self.state_dir), "-v", "5", *self.args],
                                        stdout=subprocess.PIPE, stderr=self._stderr)
        deadline = time.monotonic() + 60
        lines = []
        while True:
            line = self.process.stdout.readline().decode().strip()
            if not line:
                self.process.wait(timeout=10)
                pytest.fail(f"tunnel-service exited {self.process.returncode} before 'ready'; "
                            f"stdout {lines}; stderr: {self.stderr()[-3000:]}", pytrace=False)
            lines.append(line)
            word, _, rest = line.partition(" ")
            if word == "data-plane":
                self.data_host, _, port = rest.rpartition(":")
                self.data_port = int(port)
            elif word == "control-plane":
                self.api_url = rest
            elif word == "ca":
                self.ca = rest
            elif word == "ready":
                break
            assert time.monotonic() < deadline, "tunnel-service did not get ready"
        assert self.data_port and self.api_url and self.ca, f"incomplete start-up lines: {lines}"
        return self

    def stop(self) -> int:
        """SIGTERM, then the exit status (the process must stop by itself)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"tunnel-service did not stop on SIGTERM; stderr: {self.stderr()[-3000:]}", pytrace=False)
        self._stderr.close()
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    # ---- control plane -----------------------------------------------------------------

    def aws_env(self, access_key: str = "AKIDEXAMPLE") -> dict:
        env = dict(os.environ)
        env.update({
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": "dummy-secret-for-the-local-emulator",
            "AWS_DEFAULT_REGION": "us-east-1",
            # Nothing from the machine's own AWS setup may leak into the tests.
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
        return env

    def aws(self, operation: str, *args: str, expect_error: str | None = None, access_key: str = "AKIDEXAMPLE"):
        """Runs `aws iotsecuretunneling OPERATION ARGS`; returns the JSON output, or the stderr
        text when `expect_error` names the error type that must appear in it."""
        command = [aws_cli(), "iotsecuretunneling", operation, "--endpoint-url", self.api_url, "--output", "json", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.aws_env(access_key), timeout=60)
        if expect_error is not None:
            assert done.returncode != 0, f"{operation} succeeded but {expect_error} was expected: {done.stdout}"
            assert f"An error occurred ({expect_error})" in done.stderr, done.stderr
            return done.stderr
        assert done.returncode == 0, f"aws {operation} failed: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def api(self, operation: str, body: dict | None = None, access_key: str = "AKIDEXAMPLE") -> tuple[int, dict]:
        """One JSON 1.1 call without the CLI: (HTTP status, decoded body)."""
        request = urllib.request.Request(
            self.api_url + "/", data=json.dumps(body or {}).encode(), method="POST",
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"IoTSecuredTunneling.{operation}",
                "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/20240101/us-east-1/IoTSecuredTunneling/"
                                 "aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
            })
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def open_tunnel(self, services: list[str] | None = None, thing: str | None = None,
                    lifetime: int | None = None) -> dict:
        body: dict = {}
        if services is not None or thing is not None:
            body["destinationConfig"] = {"services": services or []}
            if thing:
                body["destinationConfig"]["thingName"] = thing
        if lifetime is not None:
            body["timeoutConfig"] = {"maxLifetimeTimeoutMinutes": lifetime}
        status, out = self.api("OpenTunnel", body)
        assert status == 200, out
        return out

    def describe(self, tunnel_id: str) -> dict:
        status, out = self.api("DescribeTunnel", {"tunnelId": tunnel_id})
        assert status == 200, out
        return out["tunnel"]

    # ---- data plane --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        return context

    def url(self, mode: str | None, path: str = "/tunnel") -> str:
        query = f"?local-proxy-mode={mode}" if mode is not None else ""
        return f"wss://{self.data_host}:{self.data_port}{path}{query}"

    async def connect(self, mode: str | None, token: str | None, client_token: str | None = None,
                      subprotocols=(V3,), cookie: bool = False, headers: list | None = None, path: str = "/tunnel"):
        """A websockets client connection (use with `async with`)."""
        extra = list(headers or [])
        if token is not None:
            extra.append(("Cookie", f"awsiot-tunnel-token={token}") if cookie else ("access-token", token))
        if client_token is not None:
            extra.append(("client-token", client_token))
        return await ws_connect(self.url(mode, path), ssl=self.ssl_context(), subprotocols=list(subprotocols),
                                additional_headers=extra, compression=None, max_size=None, ping_interval=None,
                                open_timeout=WAIT, close_timeout=5)

    async def refused(self, mode: str | None, token: str | None, **kwargs) -> tuple[int, str]:
        """Attempts an upgrade that must fail; returns (status, body)."""
        try:
            ws = await self.connect(mode, token, **kwargs)
        except InvalidStatus as error:
            return error.response.status_code, error.response.body.decode(errors="replace")
        await ws.close()
        raise AssertionError("the upgrade was accepted but should have been refused")


class RawClient:
    """TLS to the data plane with hand-made bytes: for requests and frames that no
    well-behaved WebSocket library would produce."""

    def __init__(self, emulator: Emulator):
        raw = socket.create_connection((emulator.data_host, emulator.data_port), timeout=WAIT)
        self.sock = emulator.ssl_context().wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_response(self) -> tuple[int, dict, bytes]:
        """Reads an HTTP response head and, for non-101, its Content-Length body."""
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed before a response: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                assert self._fill(), "connection closed inside the body"
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def upgrade(self, mode: str, token: str, extra: str = "") -> tuple[int, dict, bytes]:
        request = (f"GET /tunnel?local-proxy-mode={mode} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Protocol: {V3}\r\naccess-token: {token}\r\n{extra}\r\n")
        self.send(request.encode())
        return self.read_response()

    def send_frame(self, opcode: int, payload: bytes, mask: bool = True, fin: bool = True):
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        bit = 0x80 if mask else 0
        if n <= 125:
            header += bytes([bit | n])
        elif n <= 0xFFFF:
            header += bytes([bit | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([bit | 127]) + n.to_bytes(8, "big")
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.send(header + payload)

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame, or None at the end of the stream."""
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                at = 2
                if length == 126:
                    if len(self.buffer) < 4:
                        length = None
                    else:
                        length, at = int.from_bytes(self.buffer[2:4], "big"), 4
                elif length == 127:
                    if len(self.buffer) < 10:
                        length = None
                    else:
                        length, at = int.from_bytes(self.buffer[2:10], "big"), 10
                if length is not None and len(self.buffer) >= at + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[at:at + length]
                    self.buffer = self.buffer[at + length:]
                    return opcode, payload
            try:
                if not self._fill():
                    return None
            except (ssl.SSLError, ConnectionResetError):
                return None

    def read_close(self) -> tuple[int | None, str]:
        """Skips data frames up to the server's close frame; returns its code and reason."""
        while True:
            frame = self.read_frame()
            assert frame is not None, "the connection ended without a close frame"
            opcode, payload = frame
            if opcode == 0x8:
                if len(payload) >= 2:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode()
                return None, ""


@pytest.fixture
def start_emulator(tmp_path_factory):
    """Starts emulators: `start_emulator(*args)` returns a running `Emulator`. All of them are
    stopped at the end of the test, each of which must exit 0."""
    binary = emulator_binary()
    started: list[Emulator] = []
    # One state directory per test: its certificates are made on the first start.
    state_dir = tmp_path_factory.mktemp("tunnel-service")

    def start(*args: str, state: Path | None = None) -> Emulator:
        emulator = Emulator(binary, state or state_dir, list(args)).start()
        started.append(emulator)
        return emulator

    yield start
    failures = []
    for emulator in started:
        if emulator.process.returncode is None:
            code = emulator.stop()
            if code != 0:
                failures.append(f"exit {code}; stderr: {emulator.stderr()[-3000:]}")
    assert not failures, f"tunnel-service did not exit cleanly: {failures}"
