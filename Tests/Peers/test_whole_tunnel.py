"""Whole tunnels on one machine: the `tunnel-service` emulator, a destination `localproxy` in
front of local servers (the device), and a source `localproxy` that local clients connect to
(the laptop). Everything the tests check is observed at the two ends, as a user would see it:
bytes and checksums at the clients and servers, exit codes, and the proxies' log lines.

Waits are on events (a log line, a connection count, a process exit, a byte count) with
timeouts; the only fixed durations are the late answer of the half-close test, sshd's
start-up poll and the large transfer's progress samples (printed, never waited on).

Each test gets its own emulator (so its exit status is checked per test) and its own tunnel.

Environment:
  LOCALPROXY       the proxy binary (default .build/debug/localproxy)
  TUNNEL_SERVICE   the emulator binary (default .build/debug/tunnel-service)
  LP_WHOLE_MIB     size of each direction of the large transfer in MiB (default 64)
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import random
import shutil
import time

import pytest

from emulator import start_emulator  # noqa: F401  (a fixture, used by name)
from local_services import EchoServer, pattern_blocks, pattern_digest
from whole_tunnel import (
    MIB,
    WAIT,
    DelayedAnswerServer,
    ExactExchangeServer,
    Sshd,
    WholeTunnel,
    connect,
    read_until_closed,
)

WHOLE_MIB = int(os.environ.get("LP_WHOLE_MIB", "64"))
V3_SUBPROTOCOL = "subprotocol aws.iot.securetunneling-3.0"
# A client's close reaches the source as a plain FIN, which it cannot tell from a half-close, so
# it waits --half-close-linger-ms (10 s by default) for an answer before resetting the device
# connection. Tests that wait for that reset use a short linger to stay quick; the half-close
# test keeps the default.
SHORT_LINGER = ("--half-close-linger-ms", "1000")


def run(scenario, timeout: float = 150.0):
    """One scenario on a fresh event loop, bounded so that a hang fails the test."""

    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def emulator_state(tmp_path_factory):
    # One state directory for the module: the emulator makes its CA and certificate once.
    return tmp_path_factory.mktemp("whole-tunnel-service")


@pytest.fixture
def emulator(start_emulator, emulator_state):  # noqa: F811
    emu = start_emulator(state=emulator_state)
    yield emu
    if not emu.alive():
        pytest.fail(f"tunnel-service died during the test; stderr: {emu.stderr()[-3000:]}", pytrace=False)


@contextlib.asynccontextmanager
async def whole_tunnel(emulator, localproxy, tmp_path, services, **kwargs):
    tunnel = WholeTunnel(emulator, localproxy, tmp_path, services, **kwargs)
    try:
        yield tunnel
    finally:
        await tunnel.cleanup()
        print("==== tunnel-service stderr (tail)")
        print(emulator.stderr()[-4000:])


def lines_of(seed: int, size: int) -> bytes:
    """`size` bytes (rounded down to whole lines) of distinct 4 KiB text lines for the echo
    server, which answers line by line."""
    rng = random.Random(seed)
    count = max(1, size // 4096)
    return b"".join(rng.randbytes(2047).hex().encode() + b"\n" for _ in range(count))


async def round_trip(port: int, echo: EchoServer, text: bytes, keep_open: bool = False):
    """Connects to the source's port, sends lines, checks the echo server's exact answer."""
    reader, writer = await connect(port)
    writer.write(text)
    expected = echo.reply_for(text)
    got = await asyncio.wait_for(reader.readexactly(len(expected)), WAIT)
    assert got == expected
    if keep_open:
        return reader, writer
    writer.close()
    return None


async def closed_by_proxy(reader, what: str) -> None:
    """The proxy must close this client connection, with no bytes nobody sent."""
    data, _ = await read_until_closed(reader, WAIT)
    assert data == b"", f"{what}: unexpected bytes before the close: {data[:80]!r}"


# ==========================================================================================
# 1. Many simultaneous V3 connections
# ==========================================================================================


# The emulator re-frames what it relays as asked: passthrough keeps each sender's WebSocket
# frames, coalesce packs messages into frames up to 131076 bytes, split cuts them at random
# points, so both proxies must reassemble tunnel messages from any framing.
@pytest.mark.parametrize("framing", ["passthrough", "coalesce", "split"])
def test_v3_sixteen_simultaneous_connections(start_emulator, emulator_state, localproxy, tmp_path, framing):  # noqa: F811
    count = 16
    emulator = start_emulator("--framing", framing, state=emulator_state)

    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            destination = await t.start_destination(f"SSH={echo.endpoint}")
            source = await t.start_source("SSH=", *SHORT_LINGER)
            for proc in (destination, source):
                assert proc.find(V3_SUBPROTOCOL), f"{proc.name} did not speak V3: {proc.lines}"
            port = t.ports["SSH"]
            # 1 MiB to 4 MiB each, all different, so a connection receiving another's echo fails.
            payloads = [lines_of(100 + i, MIB + i * 3 * MIB // (count - 1)) for i in range(count)]
            clients = [await connect(port) for _ in range(count)]
            # Every connection is open on the device at the same time before any data flows:
            # V3 carries them side by side on one stream (V1/V2 would keep only the last).
            await echo.wait_until(lambda: echo.open_now == count, WAIT, f"{count} open device connections")

            async def exchange(i: int):
                reader, writer = clients[i]
                expected = echo.reply_for(payloads[i])

                async def send():
                    for at in range(0, len(payloads[i]), 256 * 1024):
                        writer.write(payloads[i][at:at + 256 * 1024])
                        await writer.drain()

                sender = asyncio.create_task(send())
                got = await asyncio.wait_for(reader.readexactly(len(expected)), 120)
                await sender
                writer.close()
                return hashlib.sha256(got).hexdigest(), hashlib.sha256(expected).hexdigest()

            started = time.monotonic()
            results = await asyncio.gather(*(exchange(i) for i in range(count)))
            elapsed = time.monotonic() - started
            bad = [i for i, (got, want) in enumerate(results) if got != want]
            assert bad == [], f"echoes differ on connections {bad}"
            assert echo.max_open == count and len(echo.connections) == count
            # Each device connection saw exactly one client's bytes.
            device = sorted(hashlib.sha256(bytes(c.data)).hexdigest() for c in echo.connections)
            assert device == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
            # Closing the clients closes their device connections (CONNECTION_RESET relayed).
            await echo.wait_all_closed(WAIT)
            total = sum(len(p) for p in payloads) / MIB
            print(f"{framing}: {count} connections, {total:.1f} MiB echoed in {elapsed:.2f} s ({total / elapsed:.1f} MiB/s each way)")

    run(scenario())


# ==========================================================================================
# 2. Large transfer, both directions at once
# ==========================================================================================


def test_large_transfer_both_directions(emulator, localproxy, tmp_path):
    size = WHOLE_MIB * MIB

    async def scenario():
        server = ExactExchangeServer(expect=size, send=size, seed=71)
        async with server, whole_tunnel(emulator, localproxy, tmp_path, ["BULK"]) as t:
            await t.start_destination(f"BULK={server.endpoint}")
            await t.start_source("BULK=")
            reader, writer = await connect(t.ports["BULK"])
            started = time.monotonic()
            uploaded_at = {}
            downloaded = [0]
            progress: list[str] = []

            async def sample():
                # A timeline (MiB up/down every half second) printed with the result, so that a
                # slow run shows whether the tunnel stalled or just crawled. Observation only.
                while True:
                    up = server.connections[0].received if server.connections else 0
                    progress.append(f"{time.monotonic() - started:.1f}s:{up >> 20}/{downloaded[0] >> 20}")
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())

            async def upload():
                for block in pattern_blocks(72, size):
                    writer.write(block)
                    await writer.drain()
                await server.wait_until(lambda: server.connections and server.connections[0].received >= size,
                                        120, f"{size} bytes at the device")
                uploaded_at["t"] = time.monotonic()

            async def download():
                digest, got = hashlib.sha256(), 0
                while got < size:
                    chunk = await asyncio.wait_for(reader.read(1 << 20), WAIT)
                    assert chunk, f"the download ended after {got} of {size} bytes"
                    digest.update(chunk)
                    got += len(chunk)
                    downloaded[0] = got
                assert got == size, f"{got - size} bytes more than the device sent"
                return digest.hexdigest(), time.monotonic()

            try:
                (down_digest, downloaded_at), _ = await asyncio.gather(download(), upload())
            finally:
                sampler.cancel()
                print("progress (time:MiB up/MiB down):", " ".join(progress))
            # The device closes after both directions: the client sees a clean end of stream.
            rest, how = await read_until_closed(reader, WAIT)
            assert (rest, how) == (b"", "eof")
            writer.close()
            assert server.connections[0].digest.hexdigest() == pattern_digest(72, size), "upload corrupted"
            assert down_digest == server.sent_digest == pattern_digest(71, size), "download corrupted"
            up_s, down_s = uploaded_at["t"] - started, downloaded_at - started
            print(f"{WHOLE_MIB} MiB each way at once: source->device {WHOLE_MIB / up_s:.1f} MiB/s ({up_s:.2f} s), "
                  f"device->source {WHOLE_MIB / down_s:.1f} MiB/s ({down_s:.2f} s)")

    run(scenario(), timeout=240)


# ==========================================================================================
# 3. Two services in one tunnel
# ==========================================================================================


def test_two_services_at_once(emulator, localproxy, tmp_path):
    async def scenario():
        async with EchoServer("ssh-server") as ssh, EchoServer("http-server") as http, \
                whole_tunnel(emulator, localproxy, tmp_path, ["SSH", "HTTP"]) as t:
            await t.start_destination(f"SSH={ssh.endpoint},HTTP={http.endpoint}")
            await t.start_source("SSH=,HTTP=", *SHORT_LINGER)
            assert t.ports["SSH"] != t.ports["HTTP"]
            ssh_client = await connect(t.ports["SSH"])
            http_client = await connect(t.ports["HTTP"])
            await ssh.wait_connections(1, WAIT)
            await http.wait_connections(1, WAIT)
            sent = {"SSH": b"", "HTTP": b""}
            # Interleaved lines on both connections, both open the whole time.
            for i in range(20):
                for name, (reader, writer), server in (("SSH", ssh_client, ssh), ("HTTP", http_client, http)):
                    line = f"{name} line {i} {'x' * (i * 97)}\n".encode()
                    writer.write(line)
                    sent[name] += line
                    expected = server.reply_for(line)
                    assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT) == expected
            assert bytes(ssh.connections[0].data) == sent["SSH"]
            assert bytes(http.connections[0].data) == sent["HTTP"]
            assert len(ssh.connections) == 1 and len(http.connections) == 1
            for _, writer in (ssh_client, http_client):
                writer.close()
            await ssh.wait_all_closed(WAIT)
            await http.wait_all_closed(WAIT)

    run(scenario())


# ==========================================================================================
# 4. A source speaking to an old destination (-y V1 / -y V2)
# ==========================================================================================


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_old_destination_format_one_connection_at_a_time(emulator, localproxy, tmp_path, version):
    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            await t.start_destination(f"SSH={echo.endpoint}")
            source = await t.start_source("SSH=", "-y", version, *SHORT_LINGER)
            port = t.ports["SSH"]
            first = await round_trip(port, echo, b"first connection\n", keep_open=True)
            # A second connection is a new stream in V1/V2: it replaces the first at both ends.
            second = await round_trip(port, echo, b"second connection\n", keep_open=True)
            await closed_by_proxy(first[0], "the first connection after the second started")
            await echo.wait_until(lambda: echo.connections[0].closed, WAIT, "the first device connection to close")
            assert len(echo.connections) == 2 and not echo.connections[1].closed
            assert source.find("replaces the previous one"), source.describe()
            # The survivor still works after the replacement.
            reader, writer = second
            writer.write(b"still here\n")
            expected = echo.reply_for(b"still here\n")
            assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT) == expected
            assert bytes(echo.connections[0].data) == b"first connection\n"
            assert bytes(echo.connections[1].data) == b"second connection\nstill here\n"
            writer.close()
            await echo.wait_all_closed(WAIT)

    run(scenario())


# ==========================================================================================
# 5. Reconnects: either side restarted, and token rotation
# ==========================================================================================


def test_destination_restart(emulator, localproxy, tmp_path):
    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            first = await t.start_destination(f"SSH={echo.endpoint}")
            source = await t.start_source("SSH=")
            port = t.ports["SSH"]
            old_client = await round_trip(port, echo, b"before the restart\n", keep_open=True)
            assert await first.terminate() == 0, first.describe()
            await echo.wait_all_closed(WAIT)
            mark = source.mark()
            # Same access token file and same -i: the single-use token is still accepted.
            await t.start_destination(f"SSH={echo.endpoint}")
            # The emulator (--on-reconnect stream-reset) tells the source its stream is gone; the
            # source closes the client that was on it.
            await source.wait_line("reset stream", start=mark)
            await closed_by_proxy(old_client[0], "the client of the stream the restart ended")
            await round_trip(port, echo, b"after the restart\n")
            assert len(echo.connections) == 2
            assert source.returncode is None

    run(scenario())


def test_source_restart(emulator, localproxy, tmp_path):
    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            destination = await t.start_destination(f"SSH={echo.endpoint}")
            first = await t.start_source("SSH=")
            old_client = await round_trip(t.ports["SSH"], echo, b"before the restart\n", keep_open=True)
            assert await first.terminate() == 0, first.describe()
            await closed_by_proxy(old_client[0], "the client of a stopped source")
            await t.start_source("SSH=")
            # The restarted source's first session made the emulator reset the old stream at
            # the destination, which closed the device connection of the old client.
            await echo.wait_until(lambda: echo.connections[0].closed, WAIT, "the old device connection to close")
            await round_trip(t.ports["SSH"], echo, b"after the restart\n")
            assert len(echo.connections) == 2
            assert destination.returncode is None

    run(scenario())


def test_token_rotation(emulator, localproxy, tmp_path):
    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            destination = await t.start_destination(f"SSH={echo.endpoint}")
            # Trace level shows when the source has its SERVICE_IDS again after reconnecting
            # (its listener stays, so no new 'listening' line says so).
            source = await t.start_source("SSH=", "-v", "6")
            old_client = await round_trip(t.ports["SSH"], echo, b"before the rotation\n", keep_open=True)
            marks = {p.name: p.mark() for p in (destination, source)}
            t.rotate_all()
            for proc in (destination, source):
                await proc.wait_line("new access token", start=marks[proc.name])
                await proc.wait_line("connected to ", start=marks[proc.name])
            await source.wait_line("tunnel message SERVICE_IDS", start=marks["source"])
            await closed_by_proxy(old_client[0], "the client of the session the rotation ended")
            await round_trip(t.ports["SSH"], echo, b"after the rotation\n")
            state = t.describe()
            assert state["sourceConnectionState"]["status"] == "CONNECTED", state
            assert state["destinationConnectionState"]["status"] == "CONNECTED", state
            assert destination.returncode is None and source.returncode is None

    run(scenario())


# ==========================================================================================
# 6. CloseTunnel
# ==========================================================================================


# "file" is how the other tests run (and what a device with a token agent uses); "env" has no
# file to wait on for a new token, so it separates a slow exit caused by the token wait from
# one caused by the close itself.
@pytest.mark.parametrize("token_via", ["file", "env"])
def test_close_tunnel_stops_both_proxies(emulator, localproxy, tmp_path, token_via):
    async def scenario():
        async with EchoServer("device") as echo, \
                whole_tunnel(emulator, localproxy, tmp_path, ["SSH"], token_via=token_via) as t:
            destination = await t.start_destination(f"SSH={echo.endpoint}")
            source = await t.start_source("SSH=")
            await round_trip(t.ports["SSH"], echo, b"before the close\n")
            closed_at = time.monotonic()
            t.close_tunnel()
            for proc in (destination, source):
                code = await proc.wait_exit(timeout=5.0)
                assert code == 0, proc.describe()
                assert proc.find("tunnel closed by the service"), proc.describe()
                print(f"{proc.name} exited {code} {proc.exited_at - closed_at:.2f} s after CloseTunnel")
            assert t.describe()["status"] == "CLOSED"

    run(scenario())


# ==========================================================================================
# 7. Half-close from the source side
# ==========================================================================================


def test_source_half_close_keeps_the_answer(emulator, localproxy, tmp_path):
    request = b"GET /status HTTP/1.0\r\n\r\n"
    answer = b"".join(pattern_blocks(9, 256 * 1024))

    async def scenario():
        server = DelayedAnswerServer(len(request), answer, delay=0.5)
        async with server, whole_tunnel(emulator, localproxy, tmp_path, ["HTTP"]) as t:
            await t.start_destination(f"HTTP={server.endpoint}")
            await t.start_source("HTTP=")
            reader, writer = await connect(t.ports["HTTP"])
            started = time.monotonic()
            writer.write(request)
            await writer.drain()
            # "No more requests" while waiting for the answer, as `nc -N` or an HTTP/1.0 client does.
            writer.write_eof()
            got, how = await read_until_closed(reader, WAIT)
            elapsed = time.monotonic() - started
            writer.close()
            assert server.requests == [request]
            assert len(got) == len(answer) and got == answer, f"got {len(got)} of {len(answer)} answer bytes"
            assert how == "eof"
            # The end came from the device closing, not from the linger timer (10 s default).
            assert elapsed < 5.0, f"the client saw the end only after {elapsed:.1f} s"

    run(scenario())


# ==========================================================================================
# 8. A real SSH session
# ==========================================================================================


def test_real_ssh_session_and_scp(emulator, localproxy, tmp_path):
    assert os.path.exists("/usr/sbin/sshd"), "openssh-server is not installed (make deps installs it)"
    assert shutil.which("ssh") and shutil.which("scp"), "openssh-client is not installed"
    user = getpass.getuser()
    nonce = os.urandom(8).hex()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(20 * MIB))
    copy = tmp_path / "payload.copy"

    async def command(*argv: str, timeout: float = 90):
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{argv[0]} did not finish within {timeout} s") from None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def scenario():
        sshd = Sshd(tmp_path).start()
        try:
            await sshd.wait_listening()
            async with whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
                await t.start_destination(f"SSH=127.0.0.1:{sshd.port}")
                await t.start_source("SSH=")
                port = str(t.ports["SSH"])
                code, out, err = await command("ssh", "-p", port, *sshd.client_options(), f"{user}@127.0.0.1",
                                               f"echo tunnel-{nonce}; id -un")
                assert code == 0, f"ssh exited {code}: {err}\nsshd: {sshd.log_text()[-2000:]}"
                assert out == f"tunnel-{nonce}\n{user}\n"
                started = time.monotonic()
                code, out, err = await command("scp", "-q", "-P", port, *sshd.client_options(), str(payload),
                                               f"{user}@127.0.0.1:{copy}")
                elapsed = time.monotonic() - started
                assert code == 0, f"scp exited {code}: {err}\nsshd: {sshd.log_text()[-2000:]}"
                assert copy.exists(), "scp reported success but no copy exists"
                assert hashlib.sha256(copy.read_bytes()).hexdigest() == hashlib.sha256(payload.read_bytes()).hexdigest()
                # Both sessions went through this sshd with the user key.
                assert sshd.log_text().count("Accepted publickey") == 2, sshd.log_text()
                print(f"scp of 20 MiB through the tunnel in {elapsed:.2f} s ({20 / elapsed:.1f} MiB/s)")
        finally:
            sshd.stop()

    run(scenario())


# ==========================================================================================
# 9. Start order
# ==========================================================================================


@pytest.mark.parametrize("first", ["destination", "source"])
def test_either_side_may_start_first(emulator, localproxy, tmp_path, first):
    async def scenario():
        async with EchoServer("device") as echo, whole_tunnel(emulator, localproxy, tmp_path, ["SSH"]) as t:
            if first == "destination":
                await t.start_destination(f"SSH={echo.endpoint}")
                state = t.describe()
                assert state["destinationConnectionState"]["status"] == "CONNECTED", state
                assert state["sourceConnectionState"]["status"] == "DISCONNECTED", state
                await t.start_source("SSH=")
            else:
                # The source listens as soon as the service sent it SERVICE_IDS, peer or not.
                await t.start_source("SSH=")
                state = t.describe()
                assert state["sourceConnectionState"]["status"] == "CONNECTED", state
                assert state["destinationConnectionState"]["status"] == "DISCONNECTED", state
                await t.start_destination(f"SSH={echo.endpoint}")
            await round_trip(t.ports["SSH"], echo, b"hello\n")
            await round_trip(t.ports["SSH"], echo, b"hello again\n" * 3)
            assert len(echo.connections) == 2

    run(scenario())
