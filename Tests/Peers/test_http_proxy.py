"""Whole tunnels whose proxies reach the emulator through a web proxy (https_proxy, CONNECT).

The web proxy is Debian's real squid, started by each test in the foreground (`squid -N`) on a
free loopback port with its own configuration, logs, pid file and service name (`-n`), so it
neither needs nor disturbs a system squid on port 3128. Its configuration allows only CONNECT,
only to the emulator's port (which is not 443), caches nothing, and for the authentication
tests asks for Basic credentials checked by squid's own `basic_ncsa_auth` helper against a
password file made with `openssl passwd -apr1`.

What is checked, always from the outside: data crossing the whole tunnel (the echo server's
marker), squid's access log showing the CONNECTs, the proxies' log lines and exit codes, and
that no password appears in any log. Answers squid cannot be made to give (a malformed head,
a head over the 8 KiB limit, a close before any answer) come from a tiny asyncio fake that
also records the exact CONNECT request bytes.

Waits are on events with timeouts: squid's "Accepting HTTP Socket connections" line, log
lines, process exits. Squid writes a CONNECT's access-log line only when the tunnel ends, so
that line is awaited after the proxies stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from emulator import start_emulator  # noqa: F401  (a fixture, used by name)
from local_services import EchoServer
from whole_tunnel import WAIT, LoggedProcess, WholeTunnel, free_port

SQUID = shutil.which("squid") or "/usr/sbin/squid"
NCSA_HELPER = "/usr/lib/squid/basic_ncsa_auth"
USER = "gateway"
# Characters that need percent-encoding in a URL, so the decoding is exercised end to end.
PASSWORD = "S3cret p@ss:w%rd"
PASSWORD_IN_URL = "S3cret%20p%40ss%3Aw%25rd"
WRONG_PASSWORD = "Wr0ngHorseBattery"
# The 407 message the brief asks for, after "the web proxy at HOST:PORT".
REFUSED_CREDENTIALS = "refused the credentials (407 Proxy Authentication Required): check the user and password in https_proxy"
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY")


def run(scenario, timeout: float = 120.0):
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


class Squid:
    """One squid in the foreground. Its directory is made outside pytest's private tmp tree:
    squid drops to the `proxy` user, which must be able to reach its log and password files."""

    def __init__(self, allow_port: int, users: dict[str, str] | None = None):
        self.allow_port = allow_port
        self.users = users
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lp-squid-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Squid":
        if not os.access(SQUID, os.X_OK):
            pytest.fail(f"squid not found at {SQUID}: run `make deps` (APT_PACKAGES has squid)", pytrace=False)
        auth = ""
        allow = "http_access allow all"
        if self.users is not None:
            lines = []
            for user, password in self.users.items():
                hashed = subprocess.run(["openssl", "passwd", "-apr1", password], check=True,
                                        capture_output=True, text=True).stdout.strip()
                lines.append(f"{user}:{hashed}\n")
            (self.dir / "passwd").write_text("".join(lines))
            auth = (f"auth_param basic program {NCSA_HELPER} {self.dir / 'passwd'}\n"
                    "auth_param basic children 2\n"
                    "auth_param basic realm localproxy-test\n"
                    "acl authenticated proxy_auth REQUIRED\n")
            allow = "http_access allow authenticated"
        (self.dir / "squid.conf").write_text(f"""http_port 127.0.0.1:{self.port}
visible_hostname localproxy-test
pid_filename {self.dir / 'squid.pid'}
cache_log {self.dir / 'cache.log'}
access_log stdio:{self.dir / 'access.log'} squid
cache_store_log none
netdb_filename none
coredump_dir {self.dir}
cache deny all
cache_mem 1 MB
pinger_enable off
shutdown_lifetime 0 seconds
logfile_rotate 0
acl connect_method method CONNECT
acl tunnel_port port {self.allow_port}
{auth}http_access deny !connect_method
http_access deny !tunnel_port
{allow}
http_access deny all
""")
        os.chmod(self.dir, 0o755)
        for path in [self.dir, *self.dir.iterdir()]:
            shutil.chown(path, "proxy", "proxy")
        self.stderr = open(self.dir / "stderr.log", "wb")
        self.process = subprocess.Popen([SQUID, "-N", "-n", f"lptest{self.port}", "-f", str(self.dir / "squid.conf")],
                                        stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
        return self

    async def wait_ready(self, timeout: float = WAIT) -> None:
        """Squid logs this line once its port is bound and accepting."""
        await self.wait_log("cache.log", "Accepting HTTP Socket connections at conn", timeout)

    async def wait_log(self, name: str, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.read(name).splitlines():
                if text in line:
                    return line
            assert self.process.poll() is None, f"squid exited {self.process.returncode}: {self.all_logs()[-3000:]}"
            assert time.monotonic() < deadline, f"squid did not log {text!r} in {name}: {self.all_logs()[-3000:]}"
            await asyncio.sleep(0.05)  # polling a log file nothing notifies about

    def read(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "".join(f"--- {n}\n{self.read(n)}" for n in ("stderr.log", "cache.log", "access.log"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.stderr.close()
            print(f"==== squid on port {self.port}\n{self.all_logs()[-6000:]}")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def squid(allow_port: int, users: dict[str, str] | None = None):
    proxy = Squid(allow_port, users).start()
    try:
        await proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


class ProxiedTunnel(WholeTunnel):
    """A whole tunnel whose proxies get `proxy_env` (WholeTunnel drops the caller's settings)."""

    proxy_env: dict[str, str] = {}

    def _env(self, side: str) -> dict:
        return {**super()._env(side), **self.proxy_env}


@contextlib.asynccontextmanager
async def proxied_tunnel(emulator, localproxy, tmp_path, services, proxy_env):
    tunnel = ProxiedTunnel(emulator, localproxy, tmp_path, services)
    tunnel.proxy_env = proxy_env
    try:
        yield tunnel
    finally:
        await tunnel.cleanup()
        print("==== tunnel-service stderr (tail)")
        print(emulator.stderr()[-4000:])


@pytest.fixture(scope="module")
def emulator_state(tmp_path_factory):
    return tmp_path_factory.mktemp("http-proxy-service")


@pytest.fixture
def emulator(start_emulator, emulator_state):  # noqa: F811
    emu = start_emulator(state=emulator_state)
    yield emu
    if not emu.alive():
        pytest.fail(f"tunnel-service died during the test; stderr: {emu.stderr()[-3000:]}", pytrace=False)


async def echo_through(t: ProxiedTunnel, echo: EchoServer, text: bytes = b"through the web proxy\n") -> None:
    """One connection at the source's port; the device's echo (with its marker) must come back."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", t.ports["SSH"]), WAIT)
    writer.write(text)
    expected = echo.reply_for(text)
    assert await asyncio.wait_for(reader.readexactly(len(expected)), WAIT) == expected
    writer.close()


def assert_no_secret(where: str, text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), base64.b64encode(f"{USER}:{secret}".encode()).decode()}:
            assert form not in text, f"{where} shows a password ({form!r})"


# ==========================================================================================
# Through squid
# ==========================================================================================


def test_whole_tunnel_through_squid_without_credentials(emulator, localproxy, tmp_path):
    async def scenario():
        async with squid(emulator.data_port) as proxy, EchoServer("device") as echo:
            env = {"https_proxy": f"http://127.0.0.1:{proxy.port}"}
            async with proxied_tunnel(emulator, localproxy, tmp_path, ["SSH"], env) as t:
                # Both modes share the connection code: both go through squid.
                destination = await t.start_destination(f"SSH={echo.endpoint}")
                source = await t.start_source("SSH=")
                for proc in (destination, source):
                    assert proc.find(f"through the web proxy http://127.0.0.1:{proxy.port} (from https_proxy)"), proc.lines
                    assert not proc.find("with credentials")
                await echo_through(t, echo)
                assert await source.terminate() == 0
                assert await destination.terminate() == 0
            # One CONNECT per side, to the emulator's port, logged once each tunnel ended.
            target = f"CONNECT {emulator.data_host}:{emulator.data_port} "
            await proxy.wait_log("access.log", target)
            deadline = time.monotonic() + WAIT
            while proxy.read("access.log").count(target) < 2:
                assert time.monotonic() < deadline, proxy.read("access.log")
                await asyncio.sleep(0.05)  # polling a log file nothing notifies about
            assert "TCP_TUNNEL/200" in proxy.read("access.log")

    run(scenario())


def test_basic_credentials_right_and_wrong(emulator, localproxy, tmp_path):
    async def scenario():
        async with squid(emulator.data_port, users={USER: PASSWORD}) as proxy, EchoServer("device") as echo:
            base = f"127.0.0.1:{proxy.port}"
            env = {"HTTPS_PROXY": f"http://{USER}:{PASSWORD_IN_URL}@{base}"}
            async with proxied_tunnel(emulator, localproxy, tmp_path, ["SSH"], env) as t:
                # Right credentials: the whole tunnel works through the authenticating squid.
                destination = await t.start_destination(f"SSH={echo.endpoint}")
                source = await t.start_source("SSH=")
                for proc in (destination, source):
                    assert proc.find(f"through the web proxy http://{base} with credentials (from HTTPS_PROXY)"), proc.lines
                await echo_through(t, echo)
                assert await source.terminate() == 0
                assert await destination.terminate() == 0
                await proxy.wait_log("access.log", f" {USER} HIER_DIRECT/")

                # Wrong password: the 407 is reported as such and ends the process with exit
                # code 1 at once, without a retry (the credentials cannot change in-process).
                t.proxy_env = {"https_proxy": f"http://{USER}:{WRONG_PASSWORD}@{base}"}
                wrong = await t.start_destination(f"SSH={echo.endpoint}", wait=False)
                assert await wrong.wait_exit() == 1, wrong.describe()
                line = wrong.find(REFUSED_CREDENTIALS)
                assert line and f"the web proxy at {base} {REFUSED_CREDENTIALS}" in line, wrong.lines
                assert not wrong.find("reconnecting in"), wrong.lines

                # No credentials at all: squid asks for them; the message says where they go.
                t.proxy_env = {"https_proxy": f"http://{base}"}
                bare = await t.start_destination(f"SSH={echo.endpoint}", wait=False)
                assert await bare.wait_exit() == 1, bare.describe()
                assert bare.find(f"the web proxy at {base} requires credentials (407 Proxy Authentication Required)"), bare.lines

                for proc in t.processes:
                    assert_no_secret(f"{proc.name}'s log", "\n".join(proc.lines), PASSWORD, WRONG_PASSWORD)
            await proxy.wait_log("access.log", "TCP_DENIED/407")
            assert_no_secret("squid's logs", proxy.all_logs(), PASSWORD, WRONG_PASSWORD)

    run(scenario())


def test_no_proxy_bypasses_the_web_proxy(emulator, localproxy, tmp_path):
    # https_proxy names a port nobody listens on: the tunnel can only work if it is bypassed.
    dead = free_port()

    async def scenario():
        async with EchoServer("device") as echo:
            env = {"https_proxy": f"http://127.0.0.1:{dead}", "no_proxy": f"localhost, {emulator.data_host}"}
            async with proxied_tunnel(emulator, localproxy, tmp_path, ["SSH"], env) as t:
                destination = await t.start_destination(f"SSH={echo.endpoint}")
                source = await t.start_source("SSH=")
                for proc in (destination, source):
                    assert proc.find(f"no_proxy covers {emulator.data_host}: connecting to the service directly"), proc.lines
                await echo_through(t, echo)
                assert await source.terminate() == 0
                assert await destination.terminate() == 0

    run(scenario())


def test_squid_refusing_the_port_is_retried_with_backoff(emulator, localproxy, tmp_path):
    async def scenario():
        # This squid allows CONNECT to another port only: it answers 403 for the emulator's.
        async with squid(emulator.data_port + 1) as proxy, EchoServer("device") as echo:
            env = {"https_proxy": f"http://127.0.0.1:{proxy.port}"}
            async with proxied_tunnel(emulator, localproxy, tmp_path, ["SSH"], env) as t:
                destination = await t.start_destination(f"SSH={echo.endpoint}", wait=False)
                target = f"{emulator.data_host}:{emulator.data_port}"
                await destination.wait_line(f"the web proxy at 127.0.0.1:{proxy.port} refused to connect to {target}: 403 Forbidden")
                # Then the normal backoff, and another attempt refused the same way.
                await destination.wait_line("reconnecting in")
                start = destination.mark()
                await destination.wait_line("refused to connect", start=start)
                assert destination.returncode is None
                assert await destination.terminate() == 0
            await proxy.wait_log("access.log", "TCP_DENIED/403")

    run(scenario())


# ==========================================================================================
# A fake proxy for answers squid does not give
# ==========================================================================================


class FakeProxy:
    """Reads one request head per connection, records it, answers `answer` and closes."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.requests: list[bytes] = []
        self.server = None
        self.port = 0

    async def __aenter__(self):
        async def serve(reader, writer):
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(self.answer)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("answer, problem", [
    (b"HTTP/1.1 200 Connection established\nVia: fake\n\n",
     "answered CONNECT with something that is not an HTTP response: malformed HTTP head at byte 35: line feed without carriage return"),
    (b"HTTP/1.1 200 OK\r\nVia: " + b"x" * 9000,
     "answered CONNECT with something that is not an HTTP response: HTTP head longer than 8192 bytes"),
    (b"SSH-2.0-OpenSSH_9.2 Debian\r\n\r\n",
     "answered CONNECT with something that is not an HTTP response: not an HTTP/1.x status line: \"SSH-2.0-OpenSSH_9.2 Debian\""),
    (b"HTTP/1.1 200 Conn",
     "closed the connection before answering CONNECT"),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
     "refused to connect to 127.0.0.1:9: 502 Bad Gateway"),
], ids=["bare-line-feeds", "over-8-KiB", "not-http", "closed-mid-answer", "502"])
def test_unusable_answers_are_named_and_retried(localproxy, tmp_path, answer, problem):
    async def scenario():
        async with FakeProxy(answer) as fake:
            env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES and not k.startswith("AWSIOT_TUNNEL_")}
            env["AWSIOT_TUNNEL_ACCESS_TOKEN"] = "AQGAAXiFakeTokenForTheProxyTest"
            env["https_proxy"] = f"http://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{fake.port}"
            proc = LoggedProcess("destination", [localproxy, "-e", "127.0.0.1:9", "-d", "22",
                                                 "--reconnect-delay-max-ms", "200"], env)
            try:
                await proc.start()
                await proc.wait_line(f"the web proxy at 127.0.0.1:{fake.port} {problem}")
                # Not a configuration problem: the connection is retried.
                await proc.wait_line("reconnecting in")
                await proc.wait_until(lambda: len(fake.requests) >= 2, WAIT, "a second CONNECT")
                assert await proc.terminate() == 0
            finally:
                await proc.kill()
                print("\n".join(proc.lines))
            # The exact request: the endpoint in the request line and Host, Basic credentials.
            credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            assert fake.requests[0] == (b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
                                        + f"Proxy-Authorization: Basic {credentials}\r\n\r\n".encode())
            assert_no_secret("the proxy's log", "\n".join(proc.lines), PASSWORD)

    run(scenario())


def test_https_proxy_scheme_is_refused_at_start(localproxy):
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(AWSIOT_TUNNEL_ACCESS_TOKEN="AQGAAXiFakeTokenForTheProxyTest", https_proxy=f"https://{USER}:{WRONG_PASSWORD}@proxy:3128")
    done = subprocess.run([localproxy, "-e", "127.0.0.1:9", "-d", "22"], env=env, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 1, done.stderr
    assert "https_proxy: https:// proxies (TLS to the proxy itself) are not supported" in done.stderr, done.stderr
    assert WRONG_PASSWORD not in done.stderr
