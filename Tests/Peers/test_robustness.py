"""End-to-end tests of the hazards a hostile service, a hung local application or a dead network
path can cause (docs/RELIABILITY.md), with `localproxy` in destination mode between the test
tunneling service (`tunnel_service.py`) and local servers (`local_services.py`).

Each test names the hazard it covers and fails on a proxy without the fix: a crash, a frozen
tunnel, a hang at exit, a reconnect that never happens, a clean end of file for a transfer that
was cut off, buffers that are never given back. Waiting is always on an event or a log line with
a timeout; the only durations are the deadlines the proxy is configured with.

Environment: LOCALPROXY (default .build/debug/localproxy), TUNNEL_SERVICE for the emulator tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulator import start_emulator  # noqa: F401  (the fixture)
from local_services import EchoServer, PatternServer, SinkServer, StuckSink, free_port, pattern_blocks
from test_destination import (
    ACCESS_TOKEN,
    MIB,
    WAIT,
    assert_no_unexpected_controls,
    attach,
    echo_round_trip,
    new_service,
    open_fds,
    poll_until,
    run,
    running_proxy,
    unless_exited,
)


def stall_options(ms: int) -> dict[str, str]:
    return {"--stall-timeout-ms": str(ms)}


# ---- hazard 1: peer-supplied service ids -----------------------------------------------------


def test_overlong_service_id_is_refused_and_the_session_lives(localproxy, tunnel_certs, pb):
    # The in-place framing reserves 128 bytes for the service id behind each payload. A proxy
    # that adopts a longer id from SERVICE_IDS (the single unnamed -d mapping does) frames the
    # first bytes its local service sends past that room, and trips a precondition.
    long_id = "S" * 300

    async def scenario():
        async with PatternServer(64 * 1024, seed=5) as device, \
                new_service(pb, tunnel_certs, service_ids=(long_id,)) as service:
            async with running_proxy(localproxy, service, str(device.port)) as proxy:
                peer = await attach(service, proxy)
                await proxy.wait_line("longer than 128 bytes")
                await peer.start_stream(1, service_id=long_id)
                await peer.expect(pb.Message.STREAM_RESET, streamId=1, serviceId=long_id)
                # Nothing was connected, the proxy is alive and still answers.
                await peer.ping(b"still-there")
                assert proxy.returncode is None
                assert device.connections == []
                line = next(l for l in proxy.lines if "longer than 128 bytes" in l)
                assert "(300 bytes)" in line and long_id not in line, line

    run(scenario())


# ---- hazard 2: one stuck local application --------------------------------------------------


def test_stuck_local_app_is_reset_and_the_other_connections_go_on(localproxy, tunnel_certs, pb):
    # No per-stream flow control exists: while one local connection cannot take its data the
    # whole tunnel stops. After --stall-timeout-ms the stuck connection is reset on both sides
    # and the tunnel moves again.
    async def scenario():
        async with StuckSink() as stuck, EchoServer("echo") as echo, \
                new_service(pb, tunnel_certs, service_ids=("SSH", "HTTP")) as service:
            mapping = f"SSH={stuck.port},HTTP={echo.port}"
            async with running_proxy(localproxy, service, mapping, options=stall_options(1500)) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1, service_id="SSH")
                await peer.start_stream(2, service_id="HTTP")
                await echo_round_trip(peer, echo, 2, b"before\n", service_id="HTTP")
                # Far more than the stuck socket and the proxy's queue can hold.
                sender = asyncio.create_task(peer.send_blocks(1, pattern_blocks(3, 8 * MIB), service_id="SSH"))
                await proxy.wait_line("--stall-timeout-ms", timeout=WAIT)
                await peer.expect(pb.Message.CONNECTION_RESET, streamId=1, serviceId="SSH", connectionId=1)
                # The other service answers again, and so do pings.
                await echo_round_trip(peer, echo, 2, b"after the reset\n", service_id="HTTP")
                await peer.ping(b"after-stall")
                await asyncio.wait_for(sender, WAIT)
                stuck.release()
                await stuck.wait_all_closed(WAIT)
                assert stuck.connections[0].reset, "the stuck connection was closed without a reset"
                assert proxy.returncode is None

    run(scenario())


# ---- hazard 3: SIGTERM while a local write is pending ----------------------------------------


def test_sigterm_with_a_stuck_local_app_exits_promptly(localproxy, tunnel_certs, pb):
    # The stall deadline is off, so only the shutdown path itself can bound the exit.
    async def scenario():
        async with StuckSink() as stuck, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={stuck.port}", options=stall_options(0)) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                sender = asyncio.create_task(peer.send_blocks(1, pattern_blocks(4, 4 * MIB)))
                await stuck.wait_connections(1, WAIT)
                # Wait until the proxy holds data it cannot write.
                await poll_until(lambda: peer.data_sent.get(peer.key(1, 1), 0) >= 256 * 1024, WAIT,
                                 "the proxy to take 256 KiB for the stuck application")
                started = time.monotonic()
                proxy.send_signal(signal.SIGTERM)
                code = await proxy.wait_exit(timeout=15)
                elapsed = time.monotonic() - started
                print(f"exit {code} {elapsed:.2f} s after SIGTERM")
                assert code == 0
                assert elapsed < 8, f"took {elapsed:.1f} s to stop"
                sender.cancel()
                stuck.release()
                await stuck.wait_all_closed(WAIT)
                assert stuck.connections[0].reset

    run(scenario())


# ---- hazard 4: a path that silently stops ---------------------------------------------------


def test_silent_service_is_replaced_after_the_pong_deadline(localproxy, tunnel_certs, pb):
    # The service stops reading (a dropped cellular path looks like this: no FIN, no RST, no
    # pongs). The proxy must notice by its own deadline and reconnect with the same tokens.
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            options = {"--ping-interval-ms": "300", "--pong-timeout-ms": "1200"}
            async with running_proxy(localproxy, service, f"SSH={echo.port}", options=options) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"alive\n")
                started = time.monotonic()
                peer.ws.transport.pause_reading()
                await proxy.wait_line("presumed dead", timeout=WAIT)
                detected = time.monotonic() - started
                again = await unless_exited(proxy, service.next_session(), "the reconnected session")
                print(f"dead path noticed after {detected:.2f} s")
                assert detected < 6
                assert service.handshakes[1].client_token == service.handshakes[0].client_token
                await again.start_stream(1)
                await echo_round_trip(again, echo, 1, b"after the reconnect\n")

    run(scenario())


# ---- hazard 5: the control-frame queue ------------------------------------------------------


def test_control_queue_stays_bounded_when_the_service_stops_reading(localproxy, tunnel_certs, pb):
    # Every STREAM_START for a service that -d does not map is answered with a STREAM_RESET. A
    # service that sends them without reading the answers must not make the proxy queue
    # answers without end: it stops parsing instead, and TCP pushes back.
    count = 100_000

    async def scenario():
        async with new_service(pb, tunnel_certs, service_ids=("SSH",)) as service:
            async with running_proxy(localproxy, service, "SSH=22", options={"--pong-timeout-ms": "0"}) as proxy:
                peer = await attach(service, proxy)
                baseline = proxy.rss_kib()
                peer.ws.transport.pause_reading()
                # Long service ids make long answers: more than the sockets between us can hold.
                batch = [peer.message(pb.Message.STREAM_START, 5, "NOT-MAPPED-" + "X" * 110, 1) for _ in range(500)]

                async def flood():
                    for _ in range(count // len(batch)):
                        await peer.send(*batch)

                sender = asyncio.create_task(flood())
                # The service cannot finish: the proxy stops reading once its answers pile up.
                done, _ = await asyncio.wait({sender}, timeout=8)
                growth = proxy.rss_kib() - baseline
                print(f"flood of {count} STREAM_START: sender finished={bool(done)}, RSS growth {growth} KiB")
                assert growth < 16 * 1024, f"RSS grew {growth} KiB"
                assert not done, "the proxy took every message although nobody read its answers"
                # One error line per refused stream would flood a gateway's log: it is limited.
                assert len(proxy.lines) < 2000, f"{len(proxy.lines)} log lines for the flood"
                assert any("left out in the last second" in line for line in proxy.lines)
                assert proxy.returncode is None
                sender.cancel()

    run(scenario())


# ---- hazard 7: truncation must not look like success -----------------------------------------


def test_tunnel_loss_resets_local_connections(localproxy, tunnel_certs, pb):
    async def scenario():
        async with SinkServer() as sink, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={sink.port}") as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                sender = asyncio.create_task(peer.send_blocks(1, pattern_blocks(9, 64 * MIB)))
                await sink.wait_received(0, 1 * MIB, WAIT)
                peer.drop_tcp()
                sender.cancel()
                await sink.wait_all_closed(WAIT)
                conn = sink.connections[0]
                assert conn.reset and not conn.eof, f"cut off after {conn.received} bytes but ended with eof={conn.eof}"
                await proxy.wait_line("reconnecting in ")

    run(scenario())


# ---- hazard 8: the smaller ones ------------------------------------------------------------


def test_bad_token_written_to_the_token_file_is_waited_on(localproxy, tunnel_certs, pb, tmp_path):
    # After the service ends a session (token rotated), the proxy re-reads --access-token-file.
    # A token with a control character must be reported and waited on, never sent.
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            options = {"--token-wait-ms": "20000"}
            async with running_proxy(localproxy, service, f"SSH={echo.port}", token_via="file", options=options) as proxy:
                peer = await attach(service, proxy)
                token_file = Path(next(a for a in proxy.args if a.endswith("/token")))
                await peer.close(1008, "token rotated")
                await proxy.wait_line("waiting up to")
                token_file.write_text("AQGAAXiNew\x07Token\n")
                await proxy.wait_line("space or control character")
                assert len(service.handshakes) == 1
                service.access_token = "AQGAAXiRotatedToken"
                token_file.write_text("AQGAAXiRotatedToken\n")
                again = await unless_exited(proxy, service.next_session(), "the session with the new token")
                assert service.handshakes[-1].access_token == "AQGAAXiRotatedToken"
                await again.start_stream(1)
                await echo_round_trip(again, echo, 1, b"rotated\n")

    run(scenario())


def _future_certificate(certs, directory: Path) -> tuple[Path, Path]:
    """A server certificate signed by the test CA whose validity starts in 2099."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = any\ncopy_extensions = copy\nunique_subject = no\n[any]\ncommonName = supplied\n")
    (directory / "ext").write_text("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ca_key = certs.ca.with_suffix(".key")

    def openssl(*args):
        done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "future.key", "-out", "future.csr", "-subj", "/CN=localhost")
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", str(certs.ca), "-keyfile", str(ca_key),
            "-in", "future.csr", "-out", "future.pem", "-startdate", "20990101000000Z",
            "-enddate", "20991231000000Z", "-extfile", "ext", "-notext")
    return directory / "future.pem", directory / "future.key"


def test_certificate_not_valid_yet_is_retried_not_fatal(localproxy, tunnel_certs, pb, tmp_path):
    # A gateway without a real-time clock boots in the past: the service's certificate then
    # looks "not valid yet". That must be retried with backoff (exit 3 is for wrong certificates).
    future = _future_certificate(tunnel_certs, tmp_path / "future")

    async def scenario():
        async with new_service(pb, tunnel_certs, server_cert=future) as service:
            async with running_proxy(localproxy, service, "SSH=22") as proxy:
                first = await proxy.wait_line("not valid yet")
                await proxy.wait_line("not valid yet", start=first + 1, timeout=WAIT)
                assert proxy.returncode is None, proxy.describe()
                assert service.handshakes == []

    run(scenario())


def test_core_dumps_are_off(localproxy, tunnel_certs, pb):
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, "SSH=22") as proxy:
                await attach(service, proxy)
                limits = Path(f"/proc/{proxy.pid}/limits").read_text()
                line = next(l for l in limits.splitlines() if l.startswith("Max core file size"))
                assert line.split()[4:6] == ["0", "0"], line

    run(scenario())


def test_emulator_reports_an_unparsable_certificate_in_its_bundle(tunnel_certs, tmp_path):
    # mbedTLS counts the certificates it could not parse with a positive result; the emulator
    # once trapped turning that count into an error message.
    from emulator import emulator_binary

    bundle = tmp_path / "bundle.pem"
    bundle.write_text(tunnel_certs.server_cert.read_text()
                      + "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    done = subprocess.run([emulator_binary(), "--state-dir", str(tmp_path / "state"), "--cert", str(bundle),
                           "--key", str(tunnel_certs.server_key), "--data-port", "0", "--api-port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode > 0, f"exit {done.returncode} (a negative code is a signal): {done.stderr}"
    assert "could not be parsed" in done.stderr and str(bundle) in done.stderr, done.stderr


def test_emulator_warns_when_listening_beyond_loopback(start_emulator):
    emulator = start_emulator("--host", "0.0.0.0")
    try:
        assert "not a loopback address" in emulator.stderr(), emulator.stderr()[-2000:]
    finally:
        assert emulator.stop() == 0
    quiet = start_emulator()
    try:
        assert "not a loopback address" not in quiet.stderr()
    finally:
        assert quiet.stop() == 0
