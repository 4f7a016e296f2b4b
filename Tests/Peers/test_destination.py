"""End-to-end tests of `localproxy` in destination mode.

Each test starts real peers on this machine: the test tunneling service (`tunnel_service.py`,
TLS + WebSocket, playing the source side of the tunnel too), local TCP servers standing in for
the device's services (`local_services.py`), and the `localproxy` process under test between
them. The tests then check, from both ends, what crossed the tunnel.

Waiting is always on something observable (a queue item, a log line, a process exit, a counter
reaching a value) with a generous timeout, never on a sleep. The only deliberate durations are
the slow consumer's reading rate and the proxy's own ping interval.

Environment:
  LOCALPROXY        path of the binary (default .build/debug/localproxy)
  LP_E2E_BIG_MIB    size of each bulk transfer in MiB (default 256)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import ssl
import string
import tempfile
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from local_services import (
    EchoServer,
    PatternServer,
    SinkServer,
    SlowSink,
    Waitable,
    free_port,
    ipv6_loopback_available,
    pattern_blocks,
)
from tunnel_service import (
    INVALID_CLIENT_TOKEN_MESSAGE,
    MAX_PAYLOAD,
    REUSED_TOKEN_MESSAGE,
    SUBPROTOCOL,
    WAIT,
    TunnelService,
    frame_message,
)

# A token shaped like a real one (long, base64-ish) and unique to this run, so that any
# appearance of it, or of a sizeable piece of it, in the proxy's output is certainly a leak.
ACCESS_TOKEN = "AQGAAXi" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(600))
UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE)
BIG_MIB = int(os.environ.get("LP_E2E_BIG_MIB", "256"))
MIB = 1 << 20
# Quick retry settings keep the failure-path tests short; tests that measure the retry budget
# pass their own values.
FAST_OPTIONS = {
    "--connect-retries": "2",
    "--connect-retry-delay-ms": "200",
    "--reconnect-delay-max-ms": "500",
}


def run(scenario, timeout: float = 120.0):
    """Run one test scenario on a fresh event loop, bounded so that a hang fails the test."""

    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


# --------------------------------------------------------------------------------------
# The proxy process
# --------------------------------------------------------------------------------------


class Proxy(Waitable):
    """A running `localproxy`, with its stderr collected line by line as it is written."""

    def __init__(self, binary: str, args: list[str], env: dict[str, str]):
        super().__init__()
        self.binary = binary
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self.stdout = bytearray()
        self.returncode: int | None = None
        self._tasks: list[asyncio.Task] = []

    def describe(self) -> str:
        return f"proxy exit={self.returncode}; last stderr lines:\n  " + "\n  ".join(self.lines[-25:])

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, *self.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env, limit=1 << 20,
        )
        self.pid = self.proc.pid
        self._tasks = [
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._read_stdout()),
        ]
        self._exit_task = asyncio.create_task(self._watch_exit())

    async def _read_stderr(self) -> None:
        while True:
            try:
                line = await self.proc.stderr.readline()
            except ValueError:
                # A line longer than the reader's limit: keep what fits rather than lose it.
                line = await self.proc.stderr.read(1 << 20)
            if not line:
                return
            self.lines.append(line.decode("utf-8", errors="replace").rstrip("\n"))
            self._notify()

    async def _read_stdout(self) -> None:
        while chunk := await self.proc.stdout.read(1 << 16):
            self.stdout += chunk

    async def _watch_exit(self) -> None:
        code = await self.proc.wait()
        # The exit is reported once everything the process wrote has been read, so that a test
        # checking stderr after the exit sees all of it.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.returncode = code
        self._notify()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, text: str, timeout: float = WAIT, start: int = 0) -> int:
        """Wait for a stderr line containing `text` (from line index `start`); returns its index."""
        found = []

        def seen() -> bool:
            for i in range(start, len(self.lines)):
                if text in self.lines[i]:
                    found.append(i)
                    return True
            return False

        await self.wait_until(seen, timeout, f"a stderr line containing {text!r}")
        return found[0]

    async def wait_exit(self, timeout: float = WAIT) -> int:
        await self.wait_until(lambda: self.returncode is not None, timeout, "the proxy to exit")
        return self.returncode

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line in /proc/<pid>/status")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.returncode is None and self.proc.returncode is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._exit_task, 10)


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return None


async def poll_until(predicate, timeout: float, what: str, detail=lambda: "") -> None:
    """Wait for state that nothing notifies about (here: the proxy's /proc entries).

    Polling an observable condition is not a synchronising sleep: the test proceeds the moment
    the condition holds and fails with a message when it never does.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} {detail()}")
        await asyncio.sleep(0.02)


class RssSampler:
    """Samples a process's VmRSS every 50 ms while active and keeps the peak."""

    def __init__(self, proxy: "Proxy"):
        self.proxy = proxy
        self.peak = 0

    async def __aenter__(self):
        self.peak = self.proxy.rss_kib()
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, AssertionError):
                self.peak = max(self.peak, self.proxy.rss_kib())
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._done.wait(), 0.05)

    async def __aexit__(self, *exc_info):
        self._done.set()
        await self._task


@contextlib.asynccontextmanager
async def running_proxy(binary: str, service: TunnelService, mapping: str, *, token: str | None = None,
                        token_via: str = "env", client_token: str | None = None, verbosity: int | None = None,
                        ca: Path | None = None, options: dict[str, str] | None = None,
                        token_file_mode: int = 0o600, extra_args: tuple[str, ...] = (),
                        extra_env: dict[str, str] | None = None):
    """Start `localproxy -m destination` against `service`, and kill it if the test left it running.

    The stderr lines are printed at the end so that pytest shows them for a failing test.
    """
    args = ["-m", "destination", "-e", service.endpoint, "-c", str(ca or service.certs.ca), "-d", mapping]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWSIOT_TUNNEL_")}
    env.update(extra_env or {})
    token = service.access_token if token is None else token
    token_dir = None
    if token_via == "arg":
        args += ["-t", token]
    elif token_via == "env":
        env["AWSIOT_TUNNEL_ACCESS_TOKEN"] = token
    elif token_via == "file":
        token_dir = tempfile.TemporaryDirectory()
        token_file = Path(token_dir.name) / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(token_file_mode)
        args += ["--access-token-file", str(token_file)]
    elif token_via != "none":
        raise ValueError(token_via)
    if client_token is not None:
        args += ["-i", client_token]
    if verbosity is not None:
        args += ["-v", str(verbosity)]
    for name, value in {**FAST_OPTIONS, **(options or {})}.items():
        args += [name, value]
    args += list(extra_args)
    proxy = Proxy(binary, args, env)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        print(f"localproxy {' '.join(a if a != token else '<token>' for a in args)}")
        print(proxy.describe())
        if token_dir is not None:
            token_dir.cleanup()


def new_service(pb, certs, **kwargs) -> TunnelService:
    kwargs.setdefault("access_token", ACCESS_TOKEN)
    return TunnelService(pb, certs, **kwargs)


async def unless_exited(proxy: Proxy, awaitable, what: str):
    """Await `awaitable`, but fail at once (with the proxy's log) if the proxy exits first."""
    task = asyncio.ensure_future(awaitable)
    exited = asyncio.ensure_future(proxy.wait_until(lambda: proxy.returncode is not None, 3600, "exit"))
    try:
        await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if not task.done():
        task.cancel()
        raise AssertionError(f"the proxy exited with {proxy.returncode} while waiting for {what}; {proxy.describe()}")
    return task.result()


async def attach(service: TunnelService, proxy: Proxy):
    """The proxy's first WebSocket session, once its upgrade is also reported in the log."""
    peer = await unless_exited(proxy, service.next_session(), "the WebSocket session")
    await proxy.wait_line("connected to ")
    return peer


async def echo_round_trip(peer, echo: EchoServer, stream_id: int, text: bytes, connection_id: int = 1,
                          service_id: str | None = None) -> None:
    await peer.send_data(stream_id, text, service_id=service_id, connection_id=connection_id)
    expected = echo.reply_for(text)
    got = await peer.read_data(stream_id, len(expected), connection_id=connection_id, service_id=service_id)
    assert got == expected


def assert_no_unexpected_controls(peer, allowed: tuple = ()) -> None:
    """Every control message the destination sent was expected by the test (or is allowed)."""
    left = [m for m in peer.unconsumed() if not m.startswith(allowed)]
    assert left == [], f"unexpected control messages from the destination: {left}"


# ======================================================================================
# The test service itself, exercised with the `websockets` client as the destination.
# These run without the binary, so the harness is checked on its own.
# ======================================================================================


def client_context(certs) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.check_hostname = True
    return context


async def ws_destination(service: TunnelService, certs, *, client_token: str | None = "a" * 32,
                         token: str | None = None, path: str = "/tunnel?local-proxy-mode=destination"):
    headers = {"access-token": service.access_token if token is None else token}
    if client_token is not None:
        headers["client-token"] = client_token
    return await connect(f"wss://127.0.0.1:{service.port}{path}", ssl=client_context(certs), subprotocols=[SUBPROTOCOL],
                         additional_headers=headers, compression=None, ping_interval=None, open_timeout=WAIT)


class StreamParser:
    """Reassembles tunnel messages from a websockets client's received messages."""

    def __init__(self, pb):
        self.pb = pb
        self.buffer = b""

    async def next(self, ws):
        while True:
            if len(self.buffer) >= 2:
                length = int.from_bytes(self.buffer[:2], "big")
                if len(self.buffer) >= 2 + length:
                    body, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
                    return self.pb.Message.FromString(body)
            self.buffer += await asyncio.wait_for(ws.recv(), WAIT)


def test_service_selftest_session_with_websockets_client(pb, tunnel_certs):
    async def scenario():
        async with new_service(pb, tunnel_certs, service_ids=["SSH", "HTTP"]) as service:
            async with await ws_destination(service, tunnel_certs) as ws:
                assert ws.subprotocol == SUBPROTOCOL
                assert ws.response.headers["channel-id"] == service.channel_id
                parser = StreamParser(pb)
                first = await parser.next(ws)
                assert (first.type, list(first.availableServiceIds)) == (pb.Message.SERVICE_IDS, ["SSH", "HTTP"])
                peer = await service.next_session()
                # Every byte in its own frame, then a fragmented message: the client must see
                # exactly the two messages.
                await peer.start_stream(5, "HTTP", 2, framing="bytes:1")
                await peer.send_data(5, b"x" * 300, "HTTP", 2, framing="frag:7")
                start = await parser.next(ws)
                data = await parser.next(ws)
                assert (start.type, start.streamId, start.serviceId, start.connectionId) == (pb.Message.STREAM_START, 5, "HTTP", 2)
                assert (data.type, data.payload) == (pb.Message.DATA, b"x" * 300)
                # The client answers with DATA and a reset in one frame.
                reply = pb.Message(type=pb.Message.DATA, streamId=5, serviceId="HTTP", connectionId=2, payload=b"pong-data")
                reset = pb.Message(type=pb.Message.CONNECTION_RESET, streamId=5, serviceId="HTTP", connectionId=2)
                await ws.send(frame_message(reply.SerializeToString()) + frame_message(reset.SerializeToString()))
                assert await peer.read_data(5, 9, connection_id=2, service_id="HTTP") == b"pong-data"
                await peer.expect(pb.Message.CONNECTION_RESET, streamId=5, serviceId="HTTP", connectionId=2)
                assert await peer.ping(b"abc") >= 0
                assert service.violations == []
                # A destination may not send STREAM_START: the service records it and, as the
                # real service does (docs/PROTOCOL.md 14.4), disconnects the client with 1008.
                bad = pb.Message(type=pb.Message.STREAM_START, streamId=1, serviceId="SSH", connectionId=1)
                await ws.send(frame_message(bad.SerializeToString()))
                await service.wait_until(lambda: service.violations, WAIT, "a violation")
                assert "STREAM_START" in service.violations[0]
                await peer.wait_closed()
                await asyncio.wait_for(ws.wait_closed(), WAIT)
                assert ws.close_code == 1008 and "STREAM_START" in ws.close_reason, (ws.close_code, ws.close_reason)
            hs = service.handshakes[0]
            assert (hs.path, hs.query, hs.status, hs.client_token) == ("/tunnel", {"local-proxy-mode": ["destination"]}, 101, "a" * 32)

    run(scenario())


def test_service_selftest_single_use_token_and_rejections(pb, tunnel_certs):
    async def scenario():
        async with new_service(pb, tunnel_certs, single_use=True) as service:
            async with await ws_destination(service, tunnel_certs, client_token="A" * 36):
                await service.next_session()
            # Same client token: the token may be used again.
            async with await ws_destination(service, tunnel_certs, client_token="A" * 36):
                await service.next_session()
            with pytest.raises(InvalidStatus) as rejected:
                await ws_destination(service, tunnel_certs, client_token="B" * 36)
            assert rejected.value.response.status_code == 400
            assert INVALID_CLIENT_TOKEN_MESSAGE.encode() in rejected.value.response.body
            service.reject_next.append((400, REUSED_TOKEN_MESSAGE))
            with pytest.raises(InvalidStatus) as rejected:
                await ws_destination(service, tunnel_certs, client_token="A" * 36)
            assert REUSED_TOKEN_MESSAGE.encode() in rejected.value.response.body
            assert rejected.value.response.headers["channel-id"] == service.channel_id
            assert service.violations == []
            with pytest.raises(InvalidStatus):
                await ws_destination(service, tunnel_certs, path="/tunnel?local-proxy-mode=source")
            assert "local-proxy-mode" in service.violations[-1]
            assert [h.status for h in service.handshakes] == [101, 101, 400, 400, 400]

        async with new_service(pb, tunnel_certs, single_use=True) as service:
            async with await ws_destination(service, tunnel_certs, client_token=None):
                await service.next_session()
            with pytest.raises(InvalidStatus) as rejected:
                await ws_destination(service, tunnel_certs, client_token=None)
            assert REUSED_TOKEN_MESSAGE.encode() in rejected.value.response.body

        # A client trusting another CA fails the TLS handshake; no request reaches the service.
        async with new_service(pb, tunnel_certs, server_cert="other-ca") as service:
            with pytest.raises(ssl.SSLCertVerificationError):
                await ws_destination(service, tunnel_certs)
            assert service.handshakes == []

    run(scenario())


# ======================================================================================
# Data paths
# ======================================================================================


VERSION_CASES = [
    # A tunnel without services and a bare port: the original V1 setup.
    pytest.param(1, [], "{port}", id="v1-tunnel-without-services"),
    # The console/browser case (LP#152): a V1 source on a tunnel that has one service.
    pytest.param(1, ["SSH"], "{port}", id="v1-source-single-service"),
    # The same with the service named in -d, which is how LP#152's users configured it.
    pytest.param(1, ["SSH"], "SSH={port}", id="v1-source-named-mapping"),
    pytest.param(2, ["SSH"], "SSH={port}", id="v2"),
    pytest.param(3, ["SSH"], "SSH={port}", id="v3"),
]


@pytest.mark.parametrize("version, services, mapping", VERSION_CASES)
def test_echo_session_in_each_protocol_version(localproxy, tunnel_certs, pb, version, services, mapping):
    async def scenario():
        async with EchoServer("device-echo") as echo, new_service(pb, tunnel_certs, service_ids=services, version=version) as service:
            async with running_proxy(localproxy, service, mapping.format(port=echo.port)) as proxy:
                peer = await attach(service, proxy)
                # A stream id other than 1, so that an answer with a made-up id shows.
                await peer.start_stream(7)
                await echo_round_trip(peer, echo, 7, b"hello from the source\nsecond line\n")
                # The device side ends the connection: the answer comes first, then the reset in
                # the peer's own format (CONNECTION_RESET in V3, STREAM_RESET before).
                await peer.send_data(7, b"QUIT\n")
                assert await peer.read_data(7, len(echo.marker) + 4) == echo.marker + b"bye\n"
                last_data = peer.data[peer.key(7, 1)].last_seq
                service_field = "SSH" if version >= 2 else ""
                if version == 3:
                    reset = await peer.expect(pb.Message.CONNECTION_RESET, streamId=7, serviceId="SSH", connectionId=1)
                    # A V3 stream outlives its connections: a new one joins the same stream.
                    await peer.connection_start(7, 2)
                    await echo_round_trip(peer, echo, 7, b"second connection\n", connection_id=2)
                    await peer.stream_reset(7)
                else:
                    reset = await peer.expect(pb.Message.STREAM_RESET, streamId=7, serviceId=service_field, connectionId=0)
                    await peer.start_stream(8)
                    await echo_round_trip(peer, echo, 8, b"next stream\n")
                    await peer.stream_reset(8)
                assert reset.ignorable is False
                assert peer.seq_of(reset) > last_data, "the reset overtook the connection's last data"
                await echo.wait_connections(2, WAIT)
                await echo.wait_all_closed(WAIT)
                assert [c.data for c in echo.connections] == [
                    b"hello from the source\nsecond line\nQUIT\n",
                    b"second connection\n" if version == 3 else b"next stream\n",
                ]
                assert_no_unexpected_controls(peer)
                assert len(service.handshakes) == 1
                service.assert_clean()

    run(scenario())


def test_two_services_at_once(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("ssh") as ssh, EchoServer("http") as http, \
                new_service(pb, tunnel_certs, service_ids=["SSH", "HTTP"]) as service:
            async with running_proxy(localproxy, service, f"SSH={ssh.endpoint},HTTP={http.endpoint}") as proxy:
                peer = await attach(service, proxy)
                # The same stream id on both services: the destination must key streams by service.
                await peer.start_stream(1, "SSH")
                await peer.start_stream(1, "HTTP")
                for i in range(5):
                    await peer.send_data(1, f"ssh line {i}\n".encode(), "SSH")
                    await peer.send_data(1, f"http line {i}\n".encode(), "HTTP")
                ssh_sent = b"".join(f"ssh line {i}\n".encode() for i in range(5))
                http_sent = b"".join(f"http line {i}\n".encode() for i in range(5))
                assert await peer.read_data(1, len(ssh.reply_for(ssh_sent)), service_id="SSH") == ssh.reply_for(ssh_sent)
                assert await peer.read_data(1, len(http.reply_for(http_sent)), service_id="HTTP") == http.reply_for(http_sent)
                # Resetting one service's stream leaves the other working.
                await peer.stream_reset(1, "SSH")
                await ssh.wait_all_closed(WAIT)
                await echo_round_trip(peer, http, 1, b"http still works\n", service_id="HTTP")
                assert not http.connections[0].closed
                assert (len(ssh.connections), len(http.connections)) == (1, 1)
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


@pytest.mark.cross
def test_64_simultaneous_v3_connections(localproxy, tunnel_certs, pb):
    count = 64

    def lines_for(conn: int) -> bytes:
        # Distinct content per connection, several lines, so a mix-up between connections shows.
        return b"".join(f"conn {conn:02d} line {j} {secrets.token_hex(24)}\n".encode() for j in range(8))

    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(3, connection_id=1)
                for conn in range(2, count + 1):
                    await peer.connection_start(3, conn)
                await echo.wait_connections(count, WAIT)
                payloads = {conn: lines_for(conn) for conn in range(1, count + 1)}
                # Interleave the connections' data: one line of each connection in turn.
                for j in range(8):
                    for conn, data in payloads.items():
                        line = data.splitlines(keepends=True)[j]
                        await peer.send_data(3, line, connection_id=conn)
                for conn, data in payloads.items():
                    expected = echo.reply_for(data)
                    assert await peer.read_data(3, len(expected), connection_id=conn) == expected, f"connection {conn}"
                assert echo.max_open == count
                # Each local connection got exactly its own lines.
                assert sorted(c.data for c in echo.connections) == sorted(payloads.values())
                for conn in range(1, count + 1):
                    await peer.connection_reset(3, conn)
                await echo.wait_all_closed(WAIT)
                # Resets for connections the source closed may be echoed back (docs/PROTOCOL.md 8.4).
                assert_no_unexpected_controls(peer, allowed=("CONNECTION_RESET",))
                service.assert_clean()

    run(scenario())


@pytest.mark.cross
def test_big_transfer_device_to_source(localproxy, tunnel_certs, pb):
    total = BIG_MIB * MIB

    async def scenario():
        async with PatternServer(total, seed=11) as device, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={device.port}") as proxy:
                peer = await attach(service, proxy)
                key = peer.key(1, 1)
                peer.hash_data(key)
                started = time.monotonic()
                await peer.start_stream(1)
                digest = await peer.wait_hashed(key, total, timeout=max(120.0, BIG_MIB * 1.0))
                elapsed = time.monotonic() - started
                # The device closed after its last byte: the reset follows all of the data.
                reset = await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=1)
                collector = peer.data[key]
                assert peer.seq_of(reset) > collector.last_seq
                assert digest == device.digests[1]
                print(f"device->source: {BIG_MIB} MiB in {elapsed:.1f} s = {BIG_MIB / elapsed:.1f} MiB/s, "
                      f"{collector.messages} DATA messages (largest payload {collector.largest}), "
                      f"{service.frame_check.frames} frames (largest {service.frame_check.largest} bytes)")
                assert collector.largest <= MAX_PAYLOAD
                service.assert_clean()

    run(scenario(), timeout=max(240.0, BIG_MIB * 2.0))


@pytest.mark.cross
def test_big_transfer_source_to_device(localproxy, tunnel_certs, pb):
    total = BIG_MIB * MIB

    async def scenario():
        async with SinkServer() as sink, new_service(pb, tunnel_certs, framing="coalesce") as service:
            async with running_proxy(localproxy, service, f"SSH={sink.port}") as proxy:
                peer = await attach(service, proxy)
                started = time.monotonic()
                await peer.start_stream(1)
                sent_digest = await peer.send_blocks(1, pattern_blocks(12, total))
                await sink.wait_received(0, total, timeout=max(120.0, BIG_MIB * 1.0))
                elapsed = time.monotonic() - started
                conn = sink.connections[0]
                assert conn.received == total
                assert conn.digest.hexdigest() == sent_digest
                print(f"source->device: {BIG_MIB} MiB in {elapsed:.1f} s = {BIG_MIB / elapsed:.1f} MiB/s")
                await peer.stream_reset(1)
                await sink.wait_all_closed(WAIT)
                assert sink.connections[0].received == total
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario(), timeout=max(240.0, BIG_MIB * 2.0))


# ======================================================================================
# WebSocket framing independence
# ======================================================================================


def test_stream_start_and_data_in_one_frame(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                text = b"data sharing a frame with its STREAM_START\n"
                start = peer.message(pb.Message.STREAM_START, 1, connection_id=1)
                # Nothing else is sent after this frame: a proxy that pauses reading for the
                # connect and resumes only when more bytes arrive would stall here.
                await peer.send(start, *peer.data_messages(1, text), framing="coalesce")
                expected = echo.reply_for(text)
                assert await peer.read_data(1, len(expected)) == expected
                # The last DATA and the reset in one frame: the bytes are written before the close.
                last = b"last words before the reset\n"
                await peer.send(*peer.data_messages(1, last), peer.message(pb.Message.STREAM_RESET, 1), framing="coalesce")
                await echo.wait_all_closed(WAIT)
                assert echo.connections[0].data == text + last
                assert service.frame_check.frames >= 1
                service.assert_clean()

    run(scenario())


@pytest.mark.parametrize("framing", ["bytes:1", "frag:1", "bytes:3", "random:7"])
def test_messages_split_across_frames(localproxy, tunnel_certs, pb, framing):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                # Small messages plus one over 255 bytes, so that a cut inside a length prefix
                # falls between two non-zero bytes too.
                lines = [b"one\n", b"two two\n", b"x" * 700 + b"\n", b"four\n"]
                messages = [peer.message(pb.Message.STREAM_START, 2, connection_id=1)]
                for line in lines:
                    messages += peer.data_messages(2, line)
                await peer.send(*messages, framing=framing)
                data = b"".join(lines)
                assert await peer.read_data(2, len(echo.reply_for(data))) == echo.reply_for(data)
                service.assert_clean()

    run(scenario())


def test_every_cut_position_inside_a_message(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                sent = b""
                encoded_length = None
                # Equal-sized DATA messages; message k is cut into two frames after byte k, for
                # every k from inside the length prefix to just before the last byte.
                k = 1
                while encoded_length is None or k < encoded_length:
                    line = f"cut at {k:04d}\n".encode()
                    encoded = frame_message(peer.data_messages(1, line)[0].SerializeToString())
                    encoded_length = len(encoded)
                    await peer.send_raw(encoded[:k], framing="coalesce")
                    await peer.send_raw(encoded[k:], framing="coalesce")
                    sent += line
                    k += 1
                assert await peer.read_data(1, len(echo.reply_for(sent))) == echo.reply_for(sent)
                service.assert_clean()

    run(scenario())


# ======================================================================================
# Back-pressure
# ======================================================================================


@pytest.mark.cross
def test_slow_local_consumer_bounds_memory(localproxy, tunnel_certs, pb):
    total = 64 * MIB
    slow_bytes = 256 * 1024  # about 4 s at 64 KiB/s
    # The proxy may keep some buffers per connection and for the WebSocket, but it must not
    # take in what the local side cannot absorb: buffering the 64 MiB would grow it by ~60 MiB.
    rss_growth_limit_kib = 32 * 1024

    async def scenario():
        async with SlowSink(rate=64 * 1024) as sink, new_service(pb, tunnel_certs, framing="coalesce") as service:
            async with running_proxy(localproxy, service, f"SSH={sink.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await sink.wait_connections(1, WAIT)
                baseline = proxy.rss_kib()
                async with RssSampler(proxy) as rss:
                    sender = asyncio.create_task(peer.send_blocks(1, pattern_blocks(21, total)))
                    await sink.wait_received(0, slow_bytes, timeout=60)
                    sent_during_slow_phase = peer.data_sent.get(peer.key(1, 1), 0)
                    peak_during_slow_phase = rss.peak
                    # The source must be held back: had the proxy buffered everything, the
                    # sender would have finished long ago.
                    assert not sender.done(), "the proxy accepted all 64 MiB while the consumer read 256 KiB"
                    sink.speed_up()
                    sent_digest = await asyncio.wait_for(sender, 120)
                    await sink.wait_received(0, total, timeout=120)
                print(f"slow consumer: RSS baseline {baseline} KiB, peak {rss.peak} KiB "
                      f"(slow phase peak {peak_during_slow_phase} KiB); source had sent "
                      f"{sent_during_slow_phase / MIB:.1f} MiB when the consumer had read {slow_bytes // 1024} KiB")
                assert peak_during_slow_phase - baseline < rss_growth_limit_kib
                assert rss.peak - baseline < rss_growth_limit_kib
                conn = sink.connections[0]
                assert conn.received == total
                assert conn.digest.hexdigest() == sent_digest
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario(), timeout=240)


def test_slow_source_side_bounds_memory(localproxy, tunnel_certs, pb):
    # The mirror image of the slow consumer: the device sends faster than the tunnel drains.
    # The proxy must stop reading the local socket instead of queueing for the WebSocket.
    total = 64 * MIB
    slow_bytes = 512 * 1024  # about 4 s at 128 KiB/s
    rss_growth_limit_kib = 32 * 1024

    async def scenario():
        async with PatternServer(total, seed=31) as device, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={device.port}") as proxy:
                peer = await attach(service, proxy)
                key = peer.key(1, 1)
                peer.hash_data(key)
                baseline = proxy.rss_kib()
                peer.throttle_reading(128 * 1024)
                async with RssSampler(proxy) as rss:
                    await peer.start_stream(1)
                    await peer.wait_until(lambda: key in peer.data and peer.data[key].total >= slow_bytes, 60,
                                          f"{slow_bytes} bytes at the throttled rate")
                    peak_during_slow_phase = rss.peak
                    sent = device.connections[0].sent
                    assert not device.finished, "the proxy read all 64 MiB while the tunnel carried 512 KiB"
                    peer.unthrottle_reading()
                    digest = await peer.wait_hashed(key, total, timeout=120)
                print(f"slow source side: RSS baseline {baseline} KiB, peak {rss.peak} KiB (slow phase "
                      f"{peak_during_slow_phase} KiB); the device had written {sent / MIB:.1f} MiB when the "
                      f"tunnel had carried {slow_bytes // 1024} KiB")
                assert peak_during_slow_phase - baseline < rss_growth_limit_kib
                assert rss.peak - baseline < rss_growth_limit_kib
                assert digest == device.digests[1]
                await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=1)
                service.assert_clean()

    run(scenario(), timeout=240)


def test_many_sequential_connections_leave_nothing_behind(localproxy, tunnel_certs, pb):
    # Short-lived connections, as from a web UI behind the tunnel: after each one closes, its
    # socket and buffers must be gone. File descriptors are counted exactly; memory loosely.
    cycles = 300

    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"warm-up\n")
                await peer.connection_reset(1, 1)
                await echo.wait_all_closed(WAIT)
                await poll_until(lambda: open_fds(proxy.pid) is not None, WAIT, "the fd table")
                fds_before, rss_before = open_fds(proxy.pid), proxy.rss_kib()
                for conn in range(2, cycles + 2):
                    await peer.connection_start(1, conn)
                    await echo_round_trip(peer, echo, 1, f"connection {conn}\n".encode(), connection_id=conn)
                    # Alternate who closes: the source (CONNECTION_RESET) or the device (QUIT).
                    if conn % 2:
                        await peer.connection_reset(1, conn)
                    else:
                        await peer.send_data(1, b"QUIT\n", connection_id=conn)
                        await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=conn)
                await echo.wait_all_closed(WAIT)
                assert len(echo.connections) == cycles + 1
                # At most the baseline: the warm-up connection's socket may still have been
                # closing when the baseline was counted (its FIN goes out before the close).
                await poll_until(lambda: open_fds(proxy.pid) <= fds_before, WAIT,
                                 f"the proxy's open files to return to {fds_before}",
                                 lambda: f"now {open_fds(proxy.pid)}")
                growth = proxy.rss_kib() - rss_before
                print(f"{cycles} connections: RSS {rss_before} KiB -> {rss_before + growth} KiB")
                assert growth < 8 * 1024
                assert_no_unexpected_controls(peer, allowed=("CONNECTION_RESET",))
                service.assert_clean()

    run(scenario())


# ======================================================================================
# Local connection failures
# ======================================================================================


@pytest.mark.parametrize("version", [1, 2, 3], ids=["v1", "v2", "v3"])
def test_refused_local_port_resets_stream_and_keeps_answering_pings(localproxy, tunnel_certs, pb, version):
    retries, delay_ms = 3, 700
    budget = retries * delay_ms / 1000

    async def scenario():
        async with new_service(pb, tunnel_certs, version=version) as service:
            options = {"--connect-retries": str(retries), "--connect-retry-delay-ms": str(delay_ms)}
            async with running_proxy(localproxy, service, f"SSH={free_port()}", options=options) as proxy:
                peer = await attach(service, proxy)
                loop = asyncio.get_running_loop()
                started = loop.time()
                await peer.start_stream(4)
                # While the proxy waits between connect attempts it must keep reading the
                # WebSocket: the pong has to come back before the retries are over.
                rtt = await peer.ping(b"during-retries", timeout=WAIT)
                pong_at = loop.time() - started
                assert not peer.find(pb.Message.STREAM_RESET), "reset before the retries could have run"
                # Even in V3 the whole stream is reset: its first connection never existed.
                await peer.expect(pb.Message.STREAM_RESET, timeout=budget + WAIT,
                                  streamId=4, serviceId="" if version == 1 else "SSH", connectionId=0)
                reset_at = loop.time() - started
                print(f"pong after {pong_at:.2f} s (rtt {rtt * 1000:.0f} ms), STREAM_RESET after {reset_at:.2f} s")
                assert pong_at < reset_at
                # The retries ran (with their delays) but stayed within the budget plus slack.
                assert (retries - 1) * delay_ms / 1000 <= reset_at <= budget + 10
                assert len(service.handshakes) == 1 and not peer.closed
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


def test_close_frame_during_local_connect_retries_exits_promptly(localproxy, tunnel_certs, pb):
    # LP#132: the reference stops reading the WebSocket while it retries a local connect, so a
    # closed tunnel goes unnoticed. Here the retries would take 20 s; the close must not wait.
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            options = {"--connect-retries": "10", "--connect-retry-delay-ms": "2000"}
            async with running_proxy(localproxy, service, f"SSH={free_port()}", options=options) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                # The pong proves the STREAM_START was read, so the first attempt has failed
                # (a refused loopback connect fails at once) and the retries are under way.
                await peer.ping()
                started = time.monotonic()
                await peer.close(1000, "tunnel closed")
                assert await proxy.wait_exit() == 0, proxy.describe()
                assert time.monotonic() - started < 10
                assert len(service.handshakes) == 1
                service.assert_clean()

    run(scenario())


def test_failed_connection_start_resets_only_that_connection(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"first connection\n")
                # Nothing listens any more, but connection 1 stays open.
                echo.stop_listening()
                await peer.connection_start(1, 2)
                await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=2)
                assert not peer.find(pb.Message.STREAM_RESET)
                await echo_round_trip(peer, echo, 1, b"first connection still works\n")
                assert len(echo.connections) == 1 and not echo.connections[0].closed
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


# ======================================================================================
# Tunnel lifecycle
# ======================================================================================


@pytest.mark.valgrind
@pytest.mark.cross
def test_service_dropping_tcp_mid_transfer_reconnects_with_same_tokens(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs, single_use=True) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                line = b"z" * 1023 + b"\n"
                sender = asyncio.create_task(peer.send_data(1, line * 4096))
                await echo.wait_received(0, 256 * 1024, WAIT)
                peer.drop_tcp()
                with contextlib.suppress(Exception):
                    await sender
                await proxy.wait_line("reconnecting in ")
                again = await unless_exited(proxy, service.next_session(), "the reconnected session")
                first, second = service.handshakes[0], service.handshakes[1]
                assert second.status == 101
                assert second.access_token == first.access_token == ACCESS_TOKEN
                assert first.client_token is not None and UUID4_RE.fullmatch(first.client_token), first.client_token
                assert second.client_token == first.client_token
                # The old session's local connection is closed, and a new stream works.
                await echo.wait_all_closed(WAIT)
                await again.start_stream(1)
                await echo_round_trip(again, echo, 1, b"after the reconnect\n")
                assert len(echo.connections) == 2
                assert_no_unexpected_controls(again)
                service.assert_clean()

    run(scenario())


def test_reused_token_rejected_with_400_exits_2(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"before the drop\n")
                # The service no longer takes the token (as after a reuse without client token).
                service.reject_next.append((400, REUSED_TOKEN_MESSAGE))
                peer.drop_tcp()
                code = await proxy.wait_exit(WAIT * 2)
                assert code == 2, proxy.describe()
                assert any("rejected the connection: 400" in l for l in proxy.lines), proxy.describe()
                assert REUSED_TOKEN_MESSAGE in proxy.stderr, proxy.describe()
                # A 4xx is final: no further attempt.
                assert [h.status for h in service.handshakes] == [101, 400]
                await echo.wait_all_closed(WAIT)
                service.assert_clean()

    run(scenario())


def test_server_errors_on_handshake_are_retried(localproxy, tunnel_certs, pb):
    # 5xx means "try again" (docs/PROTOCOL.md 3.3); the backoff is capped by --reconnect-delay-max-ms.
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            service.reject_next.extend([(503, "Service Unavailable"), (502, "Bad Gateway"), (500, "Internal error")])
            started = time.monotonic()
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await unless_exited(proxy, service.next_session(), "a session after the 5xx answers")
                elapsed = time.monotonic() - started
                assert [h.status for h in service.handshakes] == [503, 502, 500, 101]
                assert len({h.client_token for h in service.handshakes}) == 1
                # Three delays of at most 500 ms each, plus generous room for a slow machine.
                assert elapsed < 1.5 + 10
                assert sum("reconnecting in " in line for line in proxy.lines) >= 3, proxy.describe()
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"after the 5xx answers\n")
                assert proxy.returncode is None
                service.assert_clean()

    run(scenario())


@pytest.mark.valgrind
@pytest.mark.cross
def test_close_frame_from_service_exits_0(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"open before the close\n")
                await peer.close(1000, "tunnel closed")
                await proxy.wait_line("tunnel closed by the service")
                assert await proxy.wait_exit() == 0, proxy.describe()
                await echo.wait_all_closed(WAIT)
                assert len(service.handshakes) == 1
                service.assert_clean()

    run(scenario())


CERT_CASES = [
    pytest.param("other-ca", "ca", id="server-cert-from-other-ca"),
    pytest.param("good", "other_ca", id="proxy-trusts-other-ca"),
    pytest.param("wrong-name", "ca", id="server-cert-for-another-name"),
]


@pytest.mark.parametrize("server_cert, trusted", CERT_CASES)
def test_certificate_not_accepted_exits_3(localproxy, tunnel_certs, pb, server_cert, trusted):
    async def scenario():
        async with new_service(pb, tunnel_certs, server_cert=server_cert) as service:
            ca = getattr(tunnel_certs, trusted)
            async with running_proxy(localproxy, service, "SSH=22", ca=ca) as proxy:
                assert await proxy.wait_exit() == 3, proxy.describe()
                assert any("certificate" in line.lower() and "localproxy error:" in line for line in proxy.lines), \
                    proxy.describe()
                # The TLS handshake failed before any HTTP: the token was never sent.
                assert service.handshakes == []

    run(scenario())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_endpoint_name_matches_certificate(localproxy, tunnel_certs, pb, host):
    # The server certificate names both; the proxy must accept either as the -e host (an IP
    # address is matched against the IP entries of subjectAltName, a name against DNS ones).
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            service.endpoint_host = host
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, f"connected as {host}\n".encode())
                service.assert_clean()

    run(scenario())


@pytest.mark.parametrize("token_via", ["arg", "env", "file"])
def test_access_token_never_logged(localproxy, tunnel_certs, pb, token_via):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}", verbosity=6, token_via=token_via) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"a session with data\n" * 20)
                await peer.stream_reset(1)
                await echo.wait_all_closed(WAIT)
                proxy.send_signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0, proxy.describe()
                output = proxy.stderr + "\n" + proxy.stdout.decode(errors="replace")
                assert len(proxy.lines) > 5, "expected a chatty trace log at -v 6"
                # Neither the token nor any 16-character piece of it may appear.
                leaks = {ACCESS_TOKEN[i : i + 16] for i in range(len(ACCESS_TOKEN) - 15)} & {
                    output[i : i + 16] for i in range(len(output) - 15)}
                assert not leaks, f"pieces of the access token appear in the output: {sorted(leaks)[:3]}"
                assert service.handshakes[0].access_token == ACCESS_TOKEN
                service.assert_clean()

    run(scenario())


@pytest.mark.valgrind
@pytest.mark.cross
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_with_1000_and_exits_0(localproxy, tunnel_certs, pb, sig):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"open when the signal comes\n")
                proxy.send_signal(sig)
                assert await proxy.wait_exit() == 0, proxy.describe()
                await peer.wait_closed()
                assert peer.close_received is not None and peer.close_received[0] == 1000, peer.close_received
                await echo.wait_all_closed(WAIT)
                assert len(service.handshakes) == 1
                service.assert_clean()

    run(scenario())


CONFIG_ERRORS = [
    pytest.param(dict(token_via="none"), "access token", id="no-access-token"),
    pytest.param(dict(mapping="SSH=abc"), "abc", id="endpoint-without-port"),
    pytest.param(dict(client_token="too-short"), "client token", id="client-token-too-short"),
    pytest.param(dict(token_via="file", token_file_mode=0o644), "access-token-file", id="token-file-readable-by-others"),
    pytest.param(dict(extra_args=("--no-such-option",)), "--no-such-option", id="unknown-option"),
]


@pytest.mark.parametrize("kwargs, mentioned", CONFIG_ERRORS)
def test_configuration_errors_exit_1_before_connecting(localproxy, tunnel_certs, pb, kwargs, mentioned):
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            options = dict(kwargs)
            mapping = options.pop("mapping", "SSH=22")
            async with running_proxy(localproxy, service, mapping, **options) as proxy:
                assert await proxy.wait_exit() == 1, proxy.describe()
                assert any(mentioned in line for line in proxy.lines), proxy.describe()
                assert ACCESS_TOKEN[:16] not in proxy.stderr
                assert service.handshakes == []

    run(scenario())


def test_tunnel_services_not_mapped_exit_1(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs, service_ids=["SSH", "HTTP"]) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                assert await proxy.wait_exit() == 1, proxy.describe()
                assert any("SSH" in line and "HTTP" in line for line in proxy.lines), proxy.describe()
                # A configuration problem is not retried.
                assert len(service.handshakes) == 1

    run(scenario())


def test_unknown_ignorable_message_is_ignored(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                unknown = peer.message(42, 1, connection_id=1, ignorable=True)
                await peer.send(unknown, *peer.data_messages(1, b"after an unknown type\n"), framing="coalesce")
                expected = echo.reply_for(b"after an unknown type\n")
                assert await peer.read_data(1, len(expected)) == expected
                await echo_round_trip(peer, echo, 1, b"and more\n")
                assert len(service.handshakes) == 1 and not peer.closed
                assert len(echo.connections) == 1 and not echo.connections[0].closed
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


SESSION_ERRORS = ["unknown-type", "type-0", "unparsable-message", "text-frame"]


@pytest.mark.parametrize("error", SESSION_ERRORS)
def test_session_error_reconnects_with_same_client_token(localproxy, tunnel_certs, pb, error):
    # An unknown message type without `ignorable`, or input that cannot be a tunnel message,
    # ends the WebSocket session; the proxy must come back with the same tokens (with
    # single-use tokens anything else would lose the tunnel, LP#152) and work again.
    client_token = "test-client-token-" + secrets.token_hex(16)

    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs, single_use=True) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}", client_token=client_token) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"before the bad input\n")
                if error == "unknown-type":
                    await peer.send(peer.message(42, 1, connection_id=1))
                elif error == "type-0":
                    await peer.send(peer.message(0, 1, connection_id=1))
                elif error == "unparsable-message":
                    # A field tag whose varint never ends inside the 5-byte message.
                    await peer.send_raw_message(b"\xff" * 5)
                else:
                    await peer.ws.send("a text frame")
                await peer.wait_closed()
                again = await unless_exited(proxy, service.next_session(), "the reconnected session")
                assert [h.client_token for h in service.handshakes] == [client_token, client_token]
                assert [h.access_token for h in service.handshakes] == [ACCESS_TOKEN, ACCESS_TOKEN]
                await echo.wait_until(lambda: echo.connections[0].closed, WAIT, "the old local connection to close")
                await again.start_stream(1)
                await echo_round_trip(again, echo, 1, b"in the new session\n")
                assert proxy.returncode is None
                service.assert_clean()

    run(scenario())


def test_invalid_requests_do_not_disturb_the_session(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"first\n")
                # Each of these is refused or dropped on its own; none may end the session.
                await peer.start_stream(0)  # stream id 0 is invalid
                await peer.start_stream(3, "FOO")  # a service -d does not map
                await peer.send_data(1, b"to nowhere\n", connection_id=99)  # unknown connection
                await peer.send_data(5, b"stale\n")  # not the current stream
                await peer.connection_reset(1, 42)  # unknown connection
                await peer.stream_reset(9)  # not the current stream
                await echo_round_trip(peer, echo, 1, b"still the same connection\n")
                await peer.expect(pb.Message.STREAM_RESET, streamId=3, serviceId="FOO")
                # A CONNECTION_START that repeats an open connection id is answered with a reset.
                await peer.connection_start(1, 1)
                await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=1)
                assert [c.data for c in echo.connections] == [b"first\nstill the same connection\n"]
                assert len(service.handshakes) == 1 and not peer.closed and proxy.returncode is None
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


# ======================================================================================
# Stream management and configuration forms
# ======================================================================================


def test_new_stream_start_replaces_the_old_stream(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"old stream\n")
                # A newer STREAM_START for the same service closes the old stream and starts the
                # new one at once (docs/PROTOCOL.md 8.4); late DATA for the old stream is stale.
                await peer.send(peer.message(pb.Message.STREAM_START, 2, connection_id=1),
                                *peer.data_messages(1, b"stale\n"),
                                *peer.data_messages(2, b"new stream\n"), framing="coalesce")
                expected = echo.reply_for(b"new stream\n")
                assert await peer.read_data(2, len(expected)) == expected
                await echo.wait_until(lambda: echo.connections[0].closed, WAIT, "the old connection to close")
                assert [c.data for c in echo.connections] == [b"old stream\n", b"new stream\n"]
                assert peer.pending_data(peer.key(1, 1)) == b""
                service.assert_clean()

    run(scenario())


def test_service_ids_repeated_mid_session_are_tolerated(localproxy, tunnel_certs, pb):
    # Whether the service re-sends SERVICE_IDS is not known (docs/PROTOCOL.md 14.3); a destination
    # must accept it at any time without disturbing streams.
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"before\n")
                await peer.send(peer.message(pb.Message.SERVICE_IDS, ids=["SSH"], version=3))
                await echo_round_trip(peer, echo, 1, b"after a second SERVICE_IDS\n")
                assert len(echo.connections) == 1 and not echo.connections[0].closed
                assert len(service.handshakes) == 1 and proxy.returncode is None
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


def test_session_reset_closes_everything_and_session_continues(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("ssh") as ssh, EchoServer("http") as http, \
                new_service(pb, tunnel_certs, service_ids=["SSH", "HTTP"]) as service:
            async with running_proxy(localproxy, service, f"SSH={ssh.port},HTTP={http.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1, "SSH")
                await peer.start_stream(1, "HTTP")
                await echo_round_trip(peer, ssh, 1, b"ssh\n", service_id="SSH")
                await echo_round_trip(peer, http, 1, b"http\n", service_id="HTTP")
                await peer.session_reset()
                await ssh.wait_all_closed(WAIT)
                await http.wait_all_closed(WAIT)
                await peer.start_stream(2, "HTTP")
                await echo_round_trip(peer, http, 2, b"after the session reset\n", service_id="HTTP")
                assert len(service.handshakes) == 1 and not peer.closed
                assert_no_unexpected_controls(peer)
                service.assert_clean()

    run(scenario())


ENDPOINT_FORMS = ["host-port", "ipv6", "unix-socket"]


@pytest.mark.parametrize("form", ENDPOINT_FORMS)
def test_destination_endpoint_forms(localproxy, tunnel_certs, pb, form, tmp_path):
    if form == "ipv6" and not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback on this machine")

    async def scenario():
        kwargs = {"ipv6": dict(host="::1"), "unix-socket": dict(unix_path=str(tmp_path / "echo.sock"))}.get(form, {})
        async with EchoServer("echo", **kwargs) as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.endpoint}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, f"via {echo.endpoint}\n".encode())
                service.assert_clean()

    run(scenario())


def test_proxy_sends_pings_at_the_configured_interval(localproxy, tunnel_certs, pb):
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, "SSH=22", options={"--ping-interval-ms": "300"}) as proxy:
                await attach(service, proxy)
                started = time.monotonic()
                await service.wait_until(lambda: service.frame_check.pings >= 4, WAIT, "4 pings from the proxy")
                # Four pings at 300 ms take about a second; far longer means the option is ignored.
                assert time.monotonic() - started < 10
                service.assert_clean()

    run(scenario())
