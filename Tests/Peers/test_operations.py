"""What a gateway's init system and operator see of a running `localproxy` (docs/GATEWAY.md):
systemd's readiness protocol over NOTIFY_SOCKET, SIGHUP reloading the token file, the SIGUSR1
statistics line, `--syslog` and `--log-format json`.

The notification and system-log sockets are real Unix datagram sockets bound by the test, as
systemd and syslog daemons bind theirs; every wait is on a datagram or a log line, with a timeout.

Environment: LOCALPROXY (default .build/debug/localproxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import tempfile
from pathlib import Path

import pytest

from local_services import EchoServer, Waitable, free_port
from test_destination import ACCESS_TOKEN, FAST_OPTIONS, WAIT, Proxy, attach, echo_round_trip, new_service, run, running_proxy, unless_exited


class DatagramSink(Waitable):
    """A bound Unix datagram socket collecting what is sent to it (systemd's notification
    socket, or /dev/log). `abstract` binds in Linux's abstract namespace, as systemd may."""

    def __init__(self, abstract: bool = False):
        super().__init__()
        self.messages: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir = tempfile.TemporaryDirectory()
        if abstract:
            name = f"localproxy-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.path = "@" + name
        else:
            self.path = str(Path(self._dir.name) / "socket")
            self.sock.bind(self.path)
        self.sock.setblocking(False)

    async def __aenter__(self):
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        return self

    async def __aexit__(self, *exc):
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self._dir.cleanup()

    def _readable(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.messages.append(data.decode("utf-8", errors="replace"))
        self._notify()

    def describe(self) -> str:
        return "datagrams so far: " + repr(self.messages[-10:])

    async def wait_message(self, pattern: str, start: int = 0, timeout: float = WAIT) -> int:
        """Index of the first datagram from `start` matching the regular expression."""
        regex = re.compile(pattern, re.DOTALL)

        def found():
            return any(regex.search(m) for m in self.messages[start:])

        await self.wait_until(found, timeout, f"a datagram matching {pattern!r}")
        return next(i for i in range(start, len(self.messages)) if regex.search(self.messages[i]))


# ---- systemd readiness (Type=notify) ---------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_socket_gets_ready_reloading_and_stopping(localproxy, tunnel_certs, pb, abstract):
    async def scenario():
        async with DatagramSink(abstract=abstract) as notify, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, "SSH=22", token_via="file",
                                     extra_env={"NOTIFY_SOCKET": notify.path}) as proxy:
                await attach(service, proxy)
                ready = await notify.wait_message(r"^READY=1\nSTATUS=connected to ")
                # Nothing said "ready" before the tunnel was up.
                assert not any("READY=1" in m for m in notify.messages[:ready]), notify.messages
                os.kill(proxy.pid, signal.SIGHUP)
                reloading = await notify.wait_message(r"^RELOADING=1\nMONOTONIC_USEC=\d+$", start=ready + 1)
                await notify.wait_message(r"^READY=1\nSTATUS=connected to ", start=reloading + 1)
                await proxy.wait_line("is unchanged")
                os.kill(proxy.pid, signal.SIGTERM)
                await notify.wait_message(r"^STOPPING=1$", start=reloading + 1)
                await proxy.wait_until(lambda: proxy.returncode is not None, WAIT, "the exit")
                assert proxy.returncode == 0, proxy.describe()

    run(scenario())


def test_notify_ready_once_the_first_attempt_failed(localproxy, tunnel_certs):
    # `systemctl start` must not hang while the network is down: after the first failed attempt
    # the proxy says it is up (and retrying) in STATUS.
    async def scenario():
        async with DatagramSink() as notify:
            args = ["-m", "destination", "-e", f"127.0.0.1:{free_port()}", "-c", str(tunnel_certs.ca), "-d", "SSH=22"]
            for name, value in FAST_OPTIONS.items():
                args += [name, value]
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWSIOT_TUNNEL_")}
            env.update(AWSIOT_TUNNEL_ACCESS_TOKEN=ACCESS_TOKEN, NOTIFY_SOCKET=notify.path)
            proxy = Proxy(localproxy, args, env)
            await proxy.start()
            try:
                await notify.wait_message(r"^READY=1\nSTATUS=not connected; reconnecting \(attempt 1\)$")
                assert proxy.returncode is None, proxy.describe()
            finally:
                await proxy.stop()

    run(scenario())


def test_no_notification_and_no_error_without_notify_socket(localproxy, tunnel_certs, pb):
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, "SSH=22") as proxy:
                await attach(service, proxy)
                assert not any("NOTIFY_SOCKET" in line for line in proxy.lines), proxy.describe()

    run(scenario())


# ---- SIGHUP: the token file is read again ----------------------------------------------------


def test_sighup_connects_with_a_new_token_and_ignores_bad_or_unchanged_ones(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={echo.port}", token_via="file") as proxy:
                await attach(service, proxy)
                token_file = Path(next(a for a in proxy.args if a.endswith("/token")))
                first_token = service.handshakes[0].access_token
                first_client = service.handshakes[0].client_token

                # The same token: nothing happens.
                os.kill(proxy.pid, signal.SIGHUP)
                await proxy.wait_line("is unchanged")
                # A token with a control character: reported, not used.
                token_file.write_text("AQGAAXiNew\x07Token\n")
                os.kill(proxy.pid, signal.SIGHUP)
                await proxy.wait_line("space or control character")
                await proxy.wait_line("keeping the current access token")
                # A file others can read: reported, not used.
                token_file.write_text("AQGAAXiReadable\n")
                token_file.chmod(0o644)
                os.kill(proxy.pid, signal.SIGHUP)
                await proxy.wait_line("can be read or changed by other users")
                token_file.chmod(0o600)
                assert len(service.handshakes) == 1

                # A good new token: the session is replaced at once, with a new client token.
                service.access_token = "AQGAAXiReloadedToken"
                token_file.write_text("AQGAAXiReloadedToken\n")
                os.kill(proxy.pid, signal.SIGHUP)
                again = await unless_exited(proxy, service.next_session(), "the session with the reloaded token")
                assert service.handshakes[-1].access_token == "AQGAAXiReloadedToken" != first_token
                assert service.handshakes[-1].client_token != first_client
                await proxy.wait_line("new access token in")
                await again.start_stream(1)
                await echo_round_trip(again, echo, 1, b"after the reload\n")
                assert proxy.returncode is None

    run(scenario())


def test_sighup_ends_a_wait_for_a_token_at_once(localproxy, tunnel_certs, pb):
    # After the service ends a session (token rotated) the proxy polls the file; a SIGHUP after
    # the new token is written connects without waiting for the next poll or the deadline.
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            options = {"--token-wait-ms": "600000"}
            async with running_proxy(localproxy, service, "SSH=22", token_via="file", options=options) as proxy:
                peer = await attach(service, proxy)
                token_file = Path(next(a for a in proxy.args if a.endswith("/token")))
                await peer.close(1008, "token rotated")
                await proxy.wait_line("waiting up to")
                service.access_token = "AQGAAXiAfterRotation"
                token_file.write_text("AQGAAXiAfterRotation\n")
                os.kill(proxy.pid, signal.SIGHUP)
                await unless_exited(proxy, service.next_session(), "the session after the reload")
                assert service.handshakes[-1].access_token == "AQGAAXiAfterRotation"

    run(scenario())


def test_sighup_without_a_token_file_says_there_is_nothing_to_reload(localproxy, tunnel_certs, pb):
    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, "SSH=22") as proxy:
                await attach(service, proxy)
                os.kill(proxy.pid, signal.SIGHUP)
                await proxy.wait_line("nothing to reload")
                assert proxy.returncode is None and len(service.handshakes) == 1

    run(scenario())


# ---- SIGUSR1: statistics ---------------------------------------------------------------------


def test_sigusr1_logs_one_line_of_statistics(localproxy, tunnel_certs, pb):
    async def scenario():
        async with EchoServer("echo") as echo, new_service(pb, tunnel_certs) as service:
            # -v 3: the line is asked for, so it shows although info lines do not.
            async with running_proxy(localproxy, service, f"SSH={echo.port}", verbosity=3) as proxy:
                peer = await unless_exited(proxy, service.next_session(), "the WebSocket session")
                await peer.start_stream(1)
                sent = b"x" * 1000 + b"\n"
                await echo_round_trip(peer, echo, 1, sent)
                os.kill(proxy.pid, signal.SIGUSR1)
                index = await proxy.wait_line("statistics: ")
                line = proxy.lines[index]
                reply = len(echo.reply_for(sent))
                assert "tunnel connected for " in line, line
                assert "1 session(s), 0 reconnect(s)" in line, line
                assert "local connections: 1 open, 1 in all" in line, line
                assert f"bytes {len(sent)} to local, {reply} from local" in line, line
                assert re.search(rf"open: #\d+ \d+ s, {len(sent)} to local, {reply} from local", line), line
                assert line.count("\n") == 0

    run(scenario())


# ---- --syslog and --log-format ----------------------------------------------------------------


def test_syslog_lines_go_to_the_log_socket_and_fall_back_to_stderr(localproxy, tunnel_certs, pb):
    async def scenario():
        async with DatagramSink() as log, new_service(pb, tunnel_certs) as service:
            env = {"LOCALPROXY_SYSLOG_SOCKET": log.path}
            async with running_proxy(localproxy, service, "SSH=22", extra_args=("--syslog",), extra_env=env) as proxy:
                await unless_exited(proxy, service.next_session(), "the WebSocket session")
                index = await log.wait_message(r"connected to wss://")
                # <daemon.info>, an RFC 3164 time stamp, the program and its pid.
                pattern = rf"^<30>[A-Z][a-z]{{2}} [ \d]\d \d\d:\d\d:\d\d localproxy\[{proxy.pid}\]: info: connected to wss://"
                assert re.match(pattern, log.messages[index]), log.messages[index]
                assert not any("connected to" in line for line in proxy.lines), proxy.describe()
                # The log socket goes away: lines are not lost, they go to stderr.
                os.unlink(log.path)
                os.kill(proxy.pid, signal.SIGUSR1)
                await proxy.wait_line("cannot write to the system log")
                await proxy.wait_line("statistics: ")

    run(scenario())


def test_log_format_json_gives_one_object_a_line(localproxy, tunnel_certs, pb):
    # A Unix socket path with a quote, a backslash and a tab is logged at start-up: it must come
    # back intact from the JSON.
    odd_path = '/tmp/q"uo\\te\tx'

    async def scenario():
        async with new_service(pb, tunnel_certs) as service:
            async with running_proxy(localproxy, service, f"SSH={odd_path}", extra_args=("--log-format", "json")) as proxy:
                await attach(service, proxy)
                os.kill(proxy.pid, signal.SIGTERM)
                await proxy.wait_until(lambda: proxy.returncode is not None, WAIT, "the exit")
                assert proxy.returncode == 0, proxy.describe()
                objects = [json.loads(line) for line in proxy.lines]
                for o in objects:
                    assert set(o) == {"time", "level", "message"}, o
                    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"]), o
                    assert o["level"] in ("fatal", "error", "warning", "info"), o
                assert objects[0]["level"] == "info" and objects[0]["message"].startswith("localproxy ")
                assert any(odd_path in o["message"] for o in objects), objects

    run(scenario())


def test_bad_log_format_is_a_configuration_error(localproxy):
    import subprocess
    done = subprocess.run([localproxy, "-r", "us-east-1", "-t", "x", "-d", "22", "--log-format", "xml"],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 1
    assert "--log-format must be text or json, got 'xml'" in done.stderr
