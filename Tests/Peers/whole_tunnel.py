"""Helpers for whole-tunnel tests: the emulator, a destination `localproxy` and a source
`localproxy`, with real TCP clients and servers at both ends.

The emulator is started by `emulator.start_emulator`; its control plane is reached with
`Emulator.api`, the same JSON 1.1 requests boto3 and the AWS CLI send (the venv has neither
boto3 nor a need for one). Everything here runs on the
test's asyncio loop, so the local servers of `local_services`, the TCP clients and the proxies'
logs are all observed from one place and waits can be on conditions rather than sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from emulator import Emulator
from local_services import LocalConnection, LocalServer, Waitable, pattern_blocks

# Anything a healthy tunnel does promptly (connect, relay a few bytes, exit on close) may take
# this long on a small busy machine before a test calls it a hang.
WAIT = 20.0
MIB = 1 << 20

LISTENING_RE = re.compile(r"listening for service (\S+) on 127\.0\.0\.1:(\d+)")


def write_token(path: Path, token: str) -> None:
    """Replace a token file atomically with mode 0600: a proxy polling the file must never see
    a half-written token nor a moment where the file is readable by others (it refuses those)."""
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(temporary, 0o600)
    os.rename(temporary, path)


class LoggedProcess(Waitable):
    """A child process whose stderr lines are collected as they are written."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        super().__init__()
        self.name = name
        self.argv = argv
        self.env = env
        self.lines: list[str] = []
        self.returncode: int | None = None
        self.exited_at: float | None = None

    def describe(self) -> str:
        return (f"{self.name} exit={self.returncode}; last stderr lines:\n    "
                + "\n    ".join(self.lines[-30:]))

    async def start(self) -> "LoggedProcess":
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env, limit=1 << 20)
        self._reader = asyncio.create_task(self._read())
        self._waiter = asyncio.create_task(self._wait())
        return self

    async def _read(self) -> None:
        while True:
            try:
                line = await self.proc.stderr.readline()
            except ValueError:
                line = await self.proc.stderr.read(1 << 20)
            if not line:
                return
            self.lines.append(line.decode("utf-8", errors="replace").rstrip("\n"))
            self._notify()

    async def _wait(self) -> None:
        code = await self.proc.wait()
        self.exited_at = time.monotonic()
        # Report the exit only after the last stderr line, so a check after the exit sees all.
        await asyncio.gather(self._reader, return_exceptions=True)
        self.returncode = code
        self._notify()

    def mark(self) -> int:
        """Index of the next line: wait_line(start=mark) then only sees what comes later."""
        return len(self.lines)

    def find(self, text: str, start: int = 0) -> str | None:
        return next((line for line in self.lines[start:] if text in line), None)

    async def wait_line(self, text: str, timeout: float = WAIT, start: int = 0) -> str:
        """The first stderr line from index `start` containing `text`. Fails at once if the
        process exits without having written it."""
        found: list[str] = []

        def seen() -> bool:
            line = self.find(text, start)
            if line is not None:
                found.append(line)
                return True
            if self.returncode is not None:
                raise AssertionError(f"{self.name} exited {self.returncode} without logging {text!r}; "
                                     f"{self.describe()}")
            return False

        await self.wait_until(seen, timeout, f"{self.name} to log {text!r}")
        return found[0]

    async def wait_exit(self, timeout: float = WAIT) -> int:
        await self.wait_until(lambda: self.returncode is not None, timeout, f"{self.name} to exit")
        return self.returncode

    async def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM and the exit status."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._waiter), 10)


async def kill_and_show(processes: list[LoggedProcess]) -> None:
    """Kills whatever a test left running and prints every log (pytest shows it on failure)."""
    for proc in processes:
        await proc.kill()
    for proc in processes:
        print(f"==== {proc.name}: {' '.join(proc.argv)}")
        print(f"     exit {proc.returncode}")
        for line in proc.lines:
            print(f"     {line}")


class WholeTunnel:
    """One tunnel of the emulator and the two proxies that serve it.

    Each side has its own token file (0600) and a fixed client token, so a side can be stopped
    and started again with the same single-use access token, as a restarted device would.
    """

    def __init__(self, emulator: Emulator, localproxy: str, workdir: Path, services: list[str],
                 thing: str = "whole-tunnel-thing", token_via: str = "file"):
        self.emulator = emulator
        self.localproxy = localproxy
        self.workdir = workdir
        self.services = services
        self.thing = thing
        # "file" (--access-token-file, what the rotation tests need) or "env"
        # (AWSIOT_TUNNEL_ACCESS_TOKEN, where the proxy has no file to wait on).
        self.token_via = token_via
        self.processes: list[LoggedProcess] = []
        self.destination: LoggedProcess | None = None
        self.source: LoggedProcess | None = None
        self.ports: dict[str, int] = {}
        self.token_file = {"destination": workdir / "destination.token", "source": workdir / "source.token"}
        self.client_token = {"destination": str(uuid.uuid4()), "source": str(uuid.uuid4())}
        opened = emulator.open_tunnel(services=services, thing=thing)
        self.tunnel_id = opened["tunnelId"]
        write_token(self.token_file["destination"], opened["destinationAccessToken"])
        write_token(self.token_file["source"], opened["sourceAccessToken"])

    # ---- processes ---------------------------------------------------------------------

    def _argv(self, side: str, mapping_flag: str, mapping: str, extra: tuple[str, ...]) -> list[str]:
        return [self.localproxy, "-e", f"{self.emulator.data_host}:{self.emulator.data_port}",
                "-c", self.emulator.ca, mapping_flag, mapping,
                *(["--access-token-file", str(self.token_file[side])] if self.token_via == "file" else []),
                "-i", self.client_token[side],
                # Quick reconnects: the tests restart peers on purpose and should not sit out a
                # long random backoff if a first attempt races with the emulator.
                "--reconnect-delay-max-ms", "1000", *extra]

    def _env(self, side: str) -> dict:
        # Nothing from the caller's environment may decide the token, the endpoint or a web
        # proxy on the way to it (test_http_proxy.py sets its own).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWSIOT_TUNNEL_") and k.lower() not in ("https_proxy", "no_proxy")}
        if self.token_via == "env":
            env["AWSIOT_TUNNEL_ACCESS_TOKEN"] = self.token_file[side].read_text().strip()
        return env

    async def start_destination(self, mapping: str, *extra: str, wait: bool = True) -> LoggedProcess:
        proc = LoggedProcess("destination", self._argv("destination", "-d", mapping, extra), self._env("destination"))
        self.processes.append(proc)
        self.destination = proc
        await proc.start()
        if wait:
            await proc.wait_line("connected to ")
        return proc

    async def start_source(self, mapping: str, *extra: str, wait: bool = True) -> LoggedProcess:
        """Starts the source; with `wait`, returns once it listens for every tunnel service
        (its ports are then in `self.ports`)."""
        proc = LoggedProcess("source", self._argv("source", "-s", mapping, extra), self._env("source"))
        self.processes.append(proc)
        self.source = proc
        start = proc.mark()
        await proc.start()
        if wait:
            await self.wait_source_listening(proc, start)
        return proc

    async def wait_source_listening(self, proc: LoggedProcess, start: int = 0) -> None:
        for service in self.services:
            line = await proc.wait_line(f"listening for service {service} on ", start=start)
            match = LISTENING_RE.search(line)
            assert match and match.group(1) == service, f"unexpected listening line: {line!r}"
            self.ports[service] = int(match.group(2))

    async def cleanup(self) -> None:
        await kill_and_show(self.processes)

    # ---- control plane -----------------------------------------------------------------

    def api(self, operation: str, body: dict) -> dict:
        status, out = self.emulator.api(operation, body)
        assert status == 200, f"{operation} failed with {status}: {out}"
        return out

    def rotate_all(self) -> None:
        """RotateTunnelAccessToken for both sides; the new tokens replace the files atomically."""
        out = self.api("RotateTunnelAccessToken", {
            "tunnelId": self.tunnel_id, "clientMode": "ALL",
            "destinationConfig": {"thingName": self.thing, "services": self.services}})
        assert out.get("sourceAccessToken") and out.get("destinationAccessToken"), out
        write_token(self.token_file["destination"], out["destinationAccessToken"])
        write_token(self.token_file["source"], out["sourceAccessToken"])

    def close_tunnel(self) -> None:
        self.api("CloseTunnel", {"tunnelId": self.tunnel_id})

    def describe(self) -> dict:
        return self.api("DescribeTunnel", {"tunnelId": self.tunnel_id})["tunnel"]


# ---- local servers that complement local_services --------------------------------------


class ExactExchangeServer(LocalServer):
    """Reads exactly `expect` bytes (hashing them), answering at the same time with `send`
    pattern bytes, then closes. The protocol has no half-close, so the device side can never
    see the client's EOF through the tunnel: the amount to read must be known in advance."""

    name = "exchange"

    def __init__(self, expect: int, send: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.expect = expect
        self.send = send
        self.seed = seed
        self.sent_digest: str | None = None

    async def serve(self, conn: LocalConnection, reader, writer):
        async def upload():
            digest = hashlib.sha256()
            for block in pattern_blocks(self.seed, self.send):
                digest.update(block)
                writer.write(block)
                conn.sent += len(block)
                await writer.drain()
            self.sent_digest = digest.hexdigest()

        sending = asyncio.create_task(upload())
        try:
            while conn.received < self.expect:
                chunk = await reader.read(min(1 << 18, self.expect - conn.received))
                if not chunk:
                    conn.eof = True
                    break
                self._received(conn, chunk)
            await sending
        finally:
            sending.cancel()
        writer.close()
        await writer.wait_closed()
        self._notify()


class DelayedAnswerServer(LocalServer):
    """Reads a request of known length, waits `delay` s, answers with `answer` and closes: the
    shape of a request/response exchange whose client half-closes after the request."""

    name = "delayed-answer"

    def __init__(self, request_length: int, answer: bytes, delay: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.request_length = request_length
        self.answer = answer
        self.delay = delay
        self.requests: list[bytes] = []

    async def serve(self, conn: LocalConnection, reader, writer):
        request = await reader.readexactly(self.request_length)
        self._received(conn, request)
        self.requests.append(request)
        await asyncio.sleep(self.delay)  # the answer is deliberately late (the point of the test)
        writer.write(self.answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        self._notify()


# ---- TCP clients on the source side ------------------------------------------------------


async def connect(port: int, timeout: float = WAIT):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, str]:
    """Everything until the connection ends; returns (bytes, 'eof' | 'reset')."""
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(1 << 16):
                data += chunk
    except ConnectionResetError:
        return bytes(data), "reset"
    return bytes(data), "eof"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- sshd --------------------------------------------------------------------------------


class Sshd:
    """A throwaway OpenSSH server on a loopback port, with its own host key and a user key
    that it authorises (the configuration scripts/demo.sh uses, plus an SFTP subsystem: since
    OpenSSH 9.0 scp transfers over SFTP, and without the subsystem it fails with "Connection
    closed")."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "ssh"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        self.dir.mkdir(parents=True, exist_ok=True)
        # sshd refuses to start without its privilege-separation directory.
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / key)], check=True)
        (self.dir / "authorized_keys").write_bytes((self.dir / "user_key.pub").read_bytes())
        config = self.dir / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir / 'host_key'}
AuthorizedKeysFile {self.dir / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile {self.dir / 'sshd.pid'}
Subsystem sftp internal-sftp
""")
        self.log = open(self.dir / "sshd.log", "wb")
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                        stdout=self.log, stderr=self.log)
        return self

    async def wait_listening(self, timeout: float = WAIT) -> None:
        """sshd prints 'Server listening' once its socket is bound."""
        deadline = time.monotonic() + timeout
        while "Server listening" not in self.log_text():
            assert self.process.poll() is None, f"sshd exited {self.process.returncode}: {self.log_text()}"
            assert time.monotonic() < deadline, f"sshd did not start listening: {self.log_text()}"
            await asyncio.sleep(0.05)  # polling a log file nothing notifies about

    def log_text(self) -> str:
        return (self.dir / "sshd.log").read_text(errors="replace")

    def client_options(self) -> list[str]:
        return ["-i", str(self.dir / "user_key"), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=20"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()
