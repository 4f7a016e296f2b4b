"""The gateway packaging of issue 11 (docs/GATEWAY.md): init scripts run for real against the
emulator, the systemd unit and every script through their linters, the OpenWrt UCI translation,
`make install`, and the Debian packages (their contents, lintian, and the amd64 package
installed on this machine).

Real peers only: the `tunnel-service` emulator (whose DescribeTunnel says whether the proxy's
tunnel is connected), Debian's start-stop-daemon and BusyBox's, dash and BusyBox ash, dpkg.
Every wait polls a condition with a deadline (`wait_for`); nothing sleeps to synchronise.

Environment: LOCALPROXY and TUNNEL_SERVICE as for the other peer tests; LP_DEB_ARCHES names
the Debian architectures whose packages the deb_file tests build (with `make deb`) and check
(default amd64; `make deb-check` gives all three).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from emulator import start_emulator  # noqa: F401  (a fixture, used by name)

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
SYSV = PKG / "sysv" / "localproxy"
RESPAWN = PKG / "busybox" / "localproxy-respawn"
UNIT = PKG / "systemd" / "localproxy.service"
OPENWRT_INIT = PKG / "openwrt" / "localproxy.init"
OPENWRT_UCI = PKG / "openwrt" / "localproxy.uci"
VERSION = re.search(r'string = "([^"]+)"', (REPO / "Sources/LocalProxy/Version.swift").read_text()).group(1)
DEB_ARCHES = os.environ.get("LP_DEB_ARCHES", "amd64").split()
ELF_MACHINE = {"amd64": "X86-64", "arm64": "AArch64", "armhf": "ARM"}

# Anything that should happen promptly (a proxy connecting, stopping) may take this long on a
# small busy machine before it counts as a hang.
WAIT = 20.0


# ---- helpers ------------------------------------------------------------------------------

def wait_for(condition, what: str, timeout: float = WAIT, describe=lambda: ""):
    """Polls `condition` (every 0.1 s) until it returns something true, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; {describe()}")
        time.sleep(0.1)


def run(argv, *, env=None, timeout=60.0, cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(map(str, argv))} did not finish within {timeout} s; "
                             f"output: {exc.stdout!r} {exc.stderr!r}") from None


def shown(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}; stdout: {done.stdout.strip()!r}; stderr: {done.stderr.strip()!r}"


def destination_status(emulator, tunnel_id: str) -> str:
    return emulator.describe(tunnel_id)["destinationConnectionState"]["status"]


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def busybox() -> str:
    found = shutil.which("busybox")
    if not found:
        pytest.fail("busybox is not installed (make deps installs it)", pytrace=False)
    return found


OPEN_LOGS: list["SystemLog"] = []


class SystemLog:
    """A bound Unix datagram socket standing in for /dev/log (the proxy's --syslog writes to
    LOCALPROXY_SYSLOG_SOCKET when set), collecting every line; writable by the proxy's user."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        OPEN_LOGS.append(self)

    def _read(self):
        while not self._stop:
            try:
                self.lines.append(self.sock.recv(65536).decode(errors="replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    def find(self, pattern: str) -> str | None:
        return next((line for line in list(self.lines) if re.search(pattern, line)), None)

    def tail(self) -> str:
        return "\n    ".join(self.lines[-20:])

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


class Gateway:
    """The files of one proxy as an init script sees them, in a directory every user can
    traverse (the proxy runs as `nobody` when the tests run as root): settings, services.d,
    the token file (0600, owned by the proxy's user), the emulator's CA, a run directory and a
    defaults file for the SysV and respawn scripts."""

    def __init__(self, root: Path, emulator, localproxy: str, token: str):
        self.root = root
        self.emulator = emulator
        self.localproxy = localproxy
        self.user = "nobody" if os.geteuid() == 0 else ""
        self.uid = pwd.getpwnam("nobody").pw_uid if self.user else os.geteuid()
        self.conf = root / "localproxy.conf"
        self.services = root / "services.d"
        self.token = root / "access-token"
        self.ca = root / "ca.pem"
        self.run_dir = root / "run"
        self.pidfile = self.run_dir / "localproxy.pid"
        self.defaults = root / "defaults"
        self.syslog = SystemLog(root / "dev-log")
        shutil.copy(emulator.ca, self.ca)
        os.chmod(self.ca, 0o644)
        self.services.mkdir()
        (self.services / "ssh.conf").write_text("# the tunnel's one service\nSSH=22\n")
        self.write_conf()
        self.write_token(token)
        self.write_defaults()

    def write_conf(self, **changes: str | None) -> None:
        settings = {
            "mode": "destination",
            "config-dir": str(self.services),
            "access-token-file": str(self.token),
            "proxy-endpoint": f"{self.emulator.data_host}:{self.emulator.data_port}",
            "capath": str(self.ca),
            "reconnect-delay-max-ms": "1000",
        }
        settings.update(changes)
        self.conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None))
        os.chmod(self.conf, 0o644)

    def write_token(self, token: str) -> None:
        """Atomically, mode 0600, owned by the proxy's user (the proxy refuses anything else)."""
        temporary = self.token.with_name("access-token.new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        if self.user:
            os.chown(temporary, self.uid, -1)
        os.rename(temporary, self.token)

    def write_defaults(self, **changes: str) -> None:
        values = {
            "DAEMON": self.localproxy,
            "CONFIG": str(self.conf),
            "TOKEN_FILE": str(self.token),
            "SERVICES_DIR": str(self.services),
            "RUN_DIR": str(self.run_dir),
            "PIDFILE": str(self.pidfile),
            "USER": self.user,
            "STOP_TIMEOUT": "10",
            "POLL": "0.2",
            "RETRY_DELAY": "1",
        }
        values.update(changes)
        # DAEMON_ARGS is left to the scripts: their default, --syslog, is what is tested.
        self.defaults.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))

    def env(self, busybox_bin: Path | None = None) -> dict:
        """The environment an init script gets: nothing of the caller's tunnel settings, the
        defaults file, the stand-in /dev/log, BusyBox's applets first in PATH if asked."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWSIOT_TUNNEL_")}
        env["LOCALPROXY_DEFAULTS"] = str(self.defaults)
        env["LOCALPROXY_SYSLOG_SOCKET"] = str(self.syslog.path)
        if busybox_bin is not None:
            env["PATH"] = f"{busybox_bin}:{env['PATH']}"
        return env


@pytest.fixture
def world():
    """A directory under /tmp that `nobody` can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="lp-packaging-"))
    os.chmod(path, 0o755)
    yield path
    # Whatever a failed test left running: the processes whose command line names this
    # directory (every proxy and script of the test does, through its settings).
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
    while OPEN_LOGS:
        OPEN_LOGS.pop().close()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def busybox_path(world):
    """A PATH directory of symbolic links to every BusyBox applet, first in PATH: a BusyBox
    gateway's commands, start-stop-daemon included."""
    applets = world / "busybox-bin"
    applets.mkdir()
    bb = busybox()
    listed = run([bb, "--list"]).stdout.split()
    assert "start-stop-daemon" in listed, f"this busybox has no start-stop-daemon applet: {listed}"
    for name in listed:
        (applets / name).symlink_to(bb)
    return applets


class InitScript:
    """Runs an init script the way init would: `SHELL SCRIPT ACTION`, with the defaults file
    named by LOCALPROXY_DEFAULTS and, for BusyBox, BusyBox's applets first in PATH."""

    def __init__(self, flavour: str, gateway: Gateway, busybox_bin: Path | None):
        self.flavour = flavour
        self.gateway = gateway
        self.env = gateway.env(busybox_bin if flavour == "busybox" else None)
        if flavour == "busybox":
            self.shell = [busybox(), "sh"]
        else:
            self.shell = ["/bin/sh"]  # dash on Debian
        ssd = shutil.which("start-stop-daemon", path=self.env["PATH"])
        assert ssd, "no start-stop-daemon in PATH"
        is_busybox = os.path.realpath(ssd) == os.path.realpath(busybox())
        assert is_busybox == (flavour == "busybox"), f"{flavour}: start-stop-daemon resolves to {ssd}"

    def __call__(self, action: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        done = run([*self.shell, str(SYSV), action], env=self.env, timeout=60)
        if expect is not None:
            assert done.returncode == expect, \
                f"{self.flavour}: `localproxy {action}` should exit {expect}: {shown(done)}{self.diagnosis()}"
        return done

    def diagnosis(self) -> str:
        """The proxy's own words: start-stop-daemon drops its standard error, so run it once in
        the foreground the same way (as the same user, for at most 3 s)."""
        g = self.gateway
        logged = f"\nthe system log: {g.syslog.tail()}"
        argv = [g.localproxy, "--config", str(g.conf)]
        if g.user:
            argv = ["/usr/bin/setpriv", f"--reuid={g.uid}", f"--regid={pwd.getpwnam(g.user).pw_gid}", "--clear-groups", *argv]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3, env=self.env)
            return f"{logged}\nthe proxy run by hand exited {done.returncode}: {done.stderr[-2000:]}"
        except subprocess.TimeoutExpired as exc:
            return f"{logged}\nthe proxy run by hand was still running after 3 s: {(exc.stderr or b'')[-2000:]!r}"

    def pid(self) -> int:
        return int(self.gateway.pidfile.read_text().strip())


# ---- SysV init script, for real ---------------------------------------------------------

@pytest.mark.parametrize("flavour", ["debian", "busybox"])
def test_sysv_script_starts_connects_and_stops(flavour, start_emulator, localproxy, world, busybox_path):
    emulator = start_emulator()
    tunnel = emulator.open_tunnel(services=["SSH"], thing="sysv-gateway")
    gateway = Gateway(world, emulator, localproxy, tunnel["destinationAccessToken"])
    script = InitScript(flavour, gateway, busybox_path)
    tunnel_id = tunnel["tunnelId"]

    assert "not running" in script("status", expect=3).stdout
    script("start")
    pid = script.pid()
    try:
        wait_for(lambda: destination_status(emulator, tunnel_id) == "CONNECTED",
                 f"the emulator to show the {flavour}-started proxy (pid {pid}) connected",
                 describe=lambda: f"proxy alive: {process_alive(pid)}; emulator log: {emulator.stderr()[-1500:]}")
        assert f"running (pid {pid})" in script("status").stdout
        # The log went to the system log (--syslog, the script's default), as daemon.info.
        line = wait_for(lambda: gateway.syslog.find(rf"^<30>.* localproxy\[{pid}\]: info: connected to wss://"),
                        "the proxy's 'connected' line in the system log",
                        describe=lambda: f"system log: {gateway.syslog.tail()}")
        assert tunnel_id not in line
        assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(localproxy)
        assert process_uid(pid) == gateway.uid, f"the proxy runs as uid {process_uid(pid)}, not {gateway.uid}"
        # A second start finds it running and leaves it alone.
        assert f"already running (pid {pid})" in script("start").stdout
        assert script.pid() == pid

        assert "stopped" in script("stop").stdout
        # stop returns only once the process is gone.
        assert not process_alive(pid), f"pid {pid} still runs after `stop` returned"
        wait_for(lambda: destination_status(emulator, tunnel_id) == "DISCONNECTED",
                 "the emulator to see the stopped proxy's connection end")
        assert "not running" in script("status", expect=3).stdout
        assert not gateway.pidfile.exists(), "stop left the pid file"
        assert "not running" in script("stop").stdout
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("flavour", ["debian", "busybox"])
def test_sysv_script_refuses_to_start_without_a_token(flavour, start_emulator, localproxy, world, busybox_path):
    emulator = start_emulator()
    gateway = Gateway(world, emulator, localproxy, "unused")
    gateway.token.unlink()
    script = InitScript(flavour, gateway, busybox_path)
    done = script("start", expect=6)
    assert "no access token" in done.stdout, shown(done)
    assert not gateway.pidfile.exists(), "a pid file appeared although nothing was started"


@pytest.mark.parametrize("flavour", ["debian", "busybox"])
def test_sysv_start_fails_when_the_proxy_refuses_its_settings(flavour, start_emulator, localproxy, world, busybox_path):
    emulator = start_emulator()
    gateway = Gateway(world, emulator, localproxy, "some-token")
    gateway.write_conf(**{"proxy-endpoint": None})  # no endpoint: the proxy exits 1 at once
    script = InitScript(flavour, gateway, busybox_path)
    done = script("start", expect=1)
    # Said before --syslog is known, the reason is on standard error, which the script keeps.
    assert "exited right after starting" in done.stdout and "no tunnel endpoint" in done.stdout, shown(done)
    status = script("status", expect=None)
    assert status.returncode in (1, 3), f"status after a failed start: {shown(status)}"


@pytest.mark.parametrize("flavour", ["debian", "busybox"])
def test_sysv_reload_makes_the_proxy_read_a_new_token(flavour, start_emulator, localproxy, world, busybox_path):
    """`reload` sends SIGHUP; the proxy reads its token file again and, the token having
    changed, connects with the new one: here a token of a second tunnel, so the emulator shows
    which token the proxy uses. Until then the file is not looked at (no session ended)."""
    emulator = start_emulator()
    first = emulator.open_tunnel(services=["SSH"], thing="reload-gateway")
    second = emulator.open_tunnel(services=["SSH"], thing="reload-gateway")
    gateway = Gateway(world, emulator, localproxy, first["destinationAccessToken"])
    script = InitScript(flavour, gateway, busybox_path)
    script("start")
    pid = script.pid()
    try:
        wait_for(lambda: destination_status(emulator, first["tunnelId"]) == "CONNECTED", "the first tunnel connected")
        gateway.write_token(second["destinationAccessToken"])
        assert destination_status(emulator, second["tunnelId"]) == "DISCONNECTED"
        assert "read" in script("reload").stdout
        wait_for(lambda: destination_status(emulator, second["tunnelId"]) == "CONNECTED",
                 "the proxy to connect with the new token after SIGHUP",
                 describe=lambda: f"proxy pid {pid} alive: {process_alive(pid)} (a proxy without a SIGHUP "
                                  f"handler dies of it); first tunnel: {destination_status(emulator, first['tunnelId'])}")
        assert process_alive(pid) and script.pid() == pid, "reload restarted the proxy instead of signalling it"
        wait_for(lambda: destination_status(emulator, first["tunnelId"]) == "DISCONNECTED",
                 "the old tunnel's connection to end")
        script("stop")
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


# ---- BusyBox inittab respawn script ------------------------------------------------------

def test_busybox_respawn_script_waits_for_a_new_token_after_the_tunnel_closes(
        start_emulator, localproxy, world, busybox_path):
    """Under BusyBox ash and start-stop-daemon: the proxy connects; CloseTunnel ends it with
    exit 0, after which the script does not run it again with the dead token but waits; a new
    token is picked up and connected with; SIGTERM stops proxy and script."""
    emulator = start_emulator()
    first = emulator.open_tunnel(services=["SSH"], thing="respawn-gateway")
    gateway = Gateway(world, emulator, localproxy, first["destinationAccessToken"])
    env = gateway.env(busybox_path)
    log = world / "respawn.log"
    with open(log, "wb") as out:
        wrapper = subprocess.Popen([busybox(), "sh", str(RESPAWN)], env=env, stdout=out, stderr=out)
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: destination_status(emulator, first["tunnelId"]) == "CONNECTED",
                 "the respawn script's proxy to connect", describe=lambda: f"script log: {text()}")
        assert emulator.api("CloseTunnel", {"tunnelId": first["tunnelId"]})[0] == 200
        wait_for(lambda: "exited 0" in text() and "waiting for a new token" in text(),
                 "the script to see exit 0 and wait for a new token", describe=lambda: f"script log: {text()}")
        assert text().count("proxy started") == 1, f"the proxy was run again with the dead token: {text()}"

        second = emulator.open_tunnel(services=["SSH"], thing="respawn-gateway")
        gateway.write_token(second["destinationAccessToken"])
        wait_for(lambda: destination_status(emulator, second["tunnelId"]) == "CONNECTED",
                 "the proxy to be run again with the new token", describe=lambda: f"script log: {text()}")
        assert text().count("proxy started") == 2, text()

        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=WAIT) == 0, f"the script's exit status after SIGTERM; log: {text()}"
        assert "proxy stopped" in text(), text()
        wait_for(lambda: destination_status(emulator, second["tunnelId"]) == "DISCONNECTED",
                 "the proxy to stop with the script")
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        pid_file = gateway.run_dir / "respawn.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            if pid and process_alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---- linters: shellcheck, systemd-analyze --------------------------------------------------

SHELL_SCRIPTS = [SYSV, RESPAWN, OPENWRT_INIT, PKG / "default", PKG / "debian" / "postinst",
                 PKG / "debian" / "prerm", PKG / "debian" / "postrm", REPO / "scripts" / "build-deb.sh"]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_are_posix_and_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.fail("shellcheck is not installed (make deps installs it)", pytrace=False)
    done = run([shellcheck, "--shell=sh", "--severity=style", str(script)])
    assert done.returncode == 0, f"shellcheck {script.relative_to(REPO)}:\n{done.stdout}{done.stderr}"
    # And both shells gateways have parse it.
    for shell in (["/bin/sh"], [busybox(), "sh"]):
        done = run([*shell, "-n", str(script)])
        assert done.returncode == 0, f"{' '.join(shell)} -n {script.name}: {shown(done)}"


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values (repeated keys keep every value) of a unit file."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify_unit(unit_text: str, directory: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.fail("systemd-analyze is not installed (make deps installs systemd)", pytrace=False)
    path = directory / "localproxy.service"
    path.write_text(unit_text)
    done = run([analyze, "verify", str(path)])
    # verify exits 0 on unknown keys and the like but prints them: any output is a finding.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), \
        f"systemd-analyze verify: {shown(done)}"


def test_systemd_unit_verifies_and_has_the_promised_settings(localproxy, tmp_path):
    text = UNIT.read_text()
    # verify checks that ExecStart's program exists: point it at the build under test (the only
    # change). test_debian_package_installs... verifies the installed unit as it is.
    assert "ExecStart=/usr/bin/localproxy " in text
    verify_unit(text.replace("/usr/bin/localproxy", localproxy), tmp_path)

    s = unit_settings(text)
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["1 2"], "User": ["localproxy"], "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"], "CapabilityBoundingSet": [""],
        "RuntimeDirectory": ["localproxy"], "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    for key, values in expected.items():
        assert s.get(key) == values, f"{UNIT.name}: {key} is {s.get(key)}, expected {values}"
    assert "MemoryMax" in s, "no MemoryMax"
    assert "DynamicUser" not in s, "DynamicUser cannot own the token file (see the unit's comment)"
    # systemd's own score of the sandbox (0 best, 10 worst).
    done = run(["systemd-analyze", "security", "--offline=yes", str(tmp_path / "localproxy.service")])
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert level and float(level.group(1)) <= 2.0, f"systemd-analyze security: {shown(done)[-2000:]}"


def test_unit_commands_get_the_answers_the_unit_relies_on(start_emulator, localproxy, world):
    """systemd cannot run here (it is not PID 1), so this does what it would do with the unit:
    runs ExecStart (the binary and settings paths moved to the test's) as the service user with
    NOTIFY_SOCKET, as Type=notify does; ExecReload with $MAINPID; and stops with SIGTERM. The
    proxy must say READY=1 once connected, RELOADING=1 and READY=1 around the reload, which
    must switch to the new token, and STOPPING=1 then exit 0, which Restart=on-failure leaves
    alone."""
    settings = unit_settings(UNIT.read_text())
    start = settings["ExecStart"][0].split()
    assert start == ["/usr/bin/localproxy", "--config", "/etc/localproxy/localproxy.conf"], start
    assert settings.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    emulator = start_emulator()
    first = emulator.open_tunnel(services=["SSH"], thing="systemd-gateway")
    second = emulator.open_tunnel(services=["SSH"], thing="systemd-gateway")
    gateway = Gateway(world, emulator, localproxy, first["destinationAccessToken"])
    notify = SystemLog(world / "notify")
    argv = [localproxy, "--config", str(gateway.conf)]
    if gateway.user:  # User=: the token file belongs to the service user
        argv = ["/usr/bin/setpriv", f"--reuid={gateway.uid}", f"--regid={pwd.getpwnam(gateway.user).pw_gid}",
                "--clear-groups", *argv]
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(notify.path)}
    proxy = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    said = lambda: f"NOTIFY_SOCKET got: {notify.lines}"  # noqa: E731
    try:
        ready = wait_for(lambda: notify.find(r"^READY=1\nSTATUS=connected to "), "READY=1 once connected",
                         describe=said)
        assert destination_status(emulator, first["tunnelId"]) == "CONNECTED"
        assert not any("READY=1" in m for m in notify.lines[:notify.lines.index(ready)]), said()

        gateway.write_token(second["destinationAccessToken"])
        mark = len(notify.lines)
        reload = [word.replace("$MAINPID", str(proxy.pid)) for word in settings["ExecReload"][0].split()]
        done = run(reload)
        assert done.returncode == 0, f"ExecReload {reload}: {shown(done)}"
        wait_for(lambda: any(m.startswith("RELOADING=1") for m in notify.lines[mark:]), "RELOADING=1", describe=said)
        wait_for(lambda: destination_status(emulator, second["tunnelId"]) == "CONNECTED",
                 "the reload to connect with the new token", describe=said)
        # READY=1 ends the reload (systemctl reload returns), the status follows the connection.
        wait_for(lambda: any(m.startswith("READY=1") for m in notify.lines[mark:]), "READY=1 after the reload",
                 describe=said)
        wait_for(lambda: any("STATUS=connected to " in m for m in notify.lines[mark:]),
                 "STATUS=connected after the reload", describe=said)

        proxy.send_signal(signal.SIGTERM)
        code = proxy.wait(timeout=WAIT)
        assert code == 0, f"exit {code} after SIGTERM: Restart=on-failure would restart it"
        assert "STOPPING=1" in notify.lines, said()
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()


def test_unit_does_not_restart_what_a_restart_cannot_cure(start_emulator, localproxy, world):
    """The exit codes the proxy gives for a refused token and for bad settings are the ones the
    unit's RestartPreventExitStatus names (exit 0 is never restarted by on-failure)."""
    prevented = set(unit_settings(UNIT.read_text())["RestartPreventExitStatus"][0].split())
    emulator = start_emulator()
    gateway = Gateway(world, emulator, localproxy, "AQGAAXi-not-a-token-the-emulator-issued")
    env = {"PATH": os.environ["PATH"]}
    gateway.write_conf(**{"token-wait-ms": "0"})
    argv = [localproxy, "--config", str(gateway.conf)]
    if gateway.user:
        argv = ["/usr/bin/setpriv", f"--reuid={gateway.uid}", f"--regid={pwd.getpwnam(gateway.user).pw_gid}",
                "--clear-groups", *argv]
    refused = run(argv, env=env, timeout=WAIT)
    assert refused.returncode == 2, f"a refused token: {shown(refused)}"
    gateway.write_conf(**{"proxy-endpoint": None})
    misconfigured = run(argv, env=env, timeout=WAIT)
    assert misconfigured.returncode == 1, f"no endpoint: {shown(misconfigured)}"
    assert prevented == {"1", "2"}, f"RestartPreventExitStatus is {prevented}"


def test_unit_verifier_catches_a_misspelt_setting(localproxy, tmp_path):
    """The check above is worth something: a typo in the unit is reported."""
    broken = UNIT.read_text().replace("/usr/bin/localproxy", localproxy).replace("NoNewPrivileges=", "NoNewPrivilege=")
    with pytest.raises(AssertionError, match="Unknown key"):
        verify_unit(broken, tmp_path)


# ---- OpenWrt: the UCI -> command line translation -----------------------------------------

# A stand-in for the parts of OpenWrt's /lib/functions.sh and /lib/functions/procd.sh the init
# script calls. UCI's export format (`config TYPE 'NAME'`, `option KEY 'VALUE'`, `list KEY
# 'VALUE'`) is shell syntax, which is how OpenWrt itself loads it: config_load evaluates
# `uci export`; here the file is sourced the same way. procd_* print what procd would be given.
OPENWRT_STUB = r'''
UCI_DIR=$1; INIT=$2
config() { uci_type=$1; uci_section=$2; uci_sections="$uci_sections $2"; eval "T_$2=\$1"; }
option() { eval "O_${uci_section}_$1=\$2"; }
list() { eval "L_${uci_section}_$1=\"\${L_${uci_section}_$1}\$2
\""; }
config_load() { uci_sections=""; . "$UCI_DIR/$1"; }
config_get() { eval "$1=\${O_$2_$3-\$4}"; }
config_get_bool() {
	config_get "$@"
	eval "v=\$$1"
	case $v in 1 | on | true | yes | enabled) eval "$1=1" ;; *) eval "$1=0" ;; esac
}
config_foreach() { for s in $uci_sections; do eval "t=\$T_$s"; [ "$t" = "$2" ] && "$1" "$s"; done; }
config_list_foreach() {
	eval "items=\${L_$1_$2}"
	while [ -n "$items" ]; do item=${items%%
*}; items=${items#*
}; "$3" "$item"; done
}
procd_open_instance() { echo "instance $1"; }
procd_set_param() { printf 'set %s' "$1"; shift; printf ' [%s]' "$@"; echo; }
procd_append_param() { printf 'append %s' "$1"; shift; printf ' [%s]' "$@"; echo; }
procd_close_instance() { echo "close"; }
. "$INIT"
start_service
'''


def openwrt(shell: list[str], uci: str, world: Path) -> list[str]:
    (world / "localproxy").write_text(uci)
    stub = world / "stub.sh"
    stub.write_text(OPENWRT_STUB)
    done = run([*shell, str(stub), str(world), str(OPENWRT_INIT)])
    assert done.returncode == 0, f"start_service under {shell}: {shown(done)}"
    return done.stdout.splitlines() + [f"stderr: {line}" for line in done.stderr.splitlines()]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_openwrt_uci_becomes_the_proxy_command_line(shell, world):
    sh = ["/bin/sh"] if shell == "dash" else [busybox(), "sh"]
    token = world / "token"
    token.write_text("x\n")
    shipped = OPENWRT_UCI.read_text()
    # The shipped file is disabled: nothing runs.
    assert openwrt(sh, shipped, world) == []
    enabled = (shipped.replace("option enabled '0'", "option enabled '1'")
               .replace("'/etc/localproxy/access-token'", f"'{token}'")
               + "\tlist service 'HTTP=192.168.1.10:80'\n\toption verbose '5'\n\toption no_ssl_host_verify '1'\n"
               + "\noption dns 'builtin'\n"  # after the section's lines: still the same section
               + "\nconfig localproxy 'spare'\n\toption enabled '0'\n\toption region 'eu-west-1'\n")
    lines = openwrt(sh, enabled, world)
    assert lines == [
        "instance main",
        f"set command [/usr/bin/localproxy] [--mode] [destination] [--access-token-file] [{token}]",
        "append command [--region] [us-east-1]",
        "append command [--verbose] [5]",
        "append command [--dns] [builtin]",
        "append command [--destination-app] [SSH=22,HTTP=192.168.1.10:80]",
        "append command [--no-ssl-host-verify]",
        "set user [localproxy]",
        "set no_new_privs [1]",
        "set respawn [3600] [30] [5]",
        "set reload_signal [HUP]",
        "set stderr [1]",
        "close",
    ], "\n".join(lines)
    # Enabled but without a token: not started, and it says why.
    token.unlink()
    lines = openwrt(sh, enabled, world)
    assert [line for line in lines if not line.startswith("stderr:")] == [], lines
    assert any("no access token" in line for line in lines), lines


# ---- make install ----------------------------------------------------------------------------

# The agent-mode settings of localproxy.conf (docs/AGENT.md).
AGENT_KEYS = ("mqtt-endpoint", "thing-name", "cert", "key", "mqtt-client-id", "mqtt-keep-alive")


def test_make_install_lays_out_a_gateway(localproxy, tmp_path):
    dest = tmp_path / "root"
    done = run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/lp", f"BIN={localproxy}"], cwd=REPO)
    assert done.returncode == 0, f"make install: {shown(done)}"
    expected = {
        "opt/lp/bin/localproxy": 0o755,
        "etc/localproxy": 0o755,
        "etc/localproxy/localproxy.conf": 0o644,
        "etc/localproxy/services.d": 0o755,
        "etc/localproxy/services.d/example.conf": 0o644,
        "etc/default/localproxy": 0o644,
        "etc/init.d/localproxy": 0o755,
        "opt/lp/lib/systemd/system/localproxy.service": 0o644,
        "opt/lp/libexec/localproxy/localproxy-respawn": 0o755,
    }
    for path, mode in expected.items():
        assert (dest / path).exists(), f"make install did not create /{path}"
        got = stat.S_IMODE((dest / path).stat().st_mode)
        assert got == mode, f"/{path} has mode {got:o}, expected {mode:o}"
    assert not (dest / "etc/localproxy/access-token").exists(), "make install must not create a token"
    # Paths follow PREFIX.
    unit = (dest / "opt/lp/lib/systemd/system/localproxy.service").read_text()
    assert "ExecStart=/opt/lp/bin/localproxy --config /etc/localproxy/localproxy.conf" in unit
    assert "DAEMON=/opt/lp/bin/localproxy" in (dest / "etc/init.d/localproxy").read_text()
    # The installed settings file is one the proxy accepts (only the endpoint is missing).
    conf = (dest / "etc/localproxy/localproxy.conf").read_text()
    done = run([localproxy, "--config", str(dest / "etc/localproxy/localproxy.conf")],
               env={"PATH": os.environ["PATH"]}, timeout=20)
    assert done.returncode == 1 and "no tunnel endpoint" in done.stderr, \
        f"the shipped localproxy.conf should fail only for want of an endpoint: {shown(done)}\n{conf}"
    # Every commented default, uncommented, is accepted: the proxy starts and tries to connect.
    # (The agent-mode lines are an alternative to the token file, not defaults: they stay out.)
    token = tmp_path / "token"
    token.write_text("token\n")
    os.chmod(token, 0o600)
    services = tmp_path / "services"
    services.mkdir()
    (services / "ssh").write_text("SSH=22\n")
    lines = []
    for line in conf.splitlines():
        m = re.fullmatch(r"#\s*([a-z-]+) = (\S+)", line)
        if m and m.group(1) not in ("client-token", "region", "proxy-endpoint", *AGENT_KEYS):
            line = f"{m.group(1)} = {m.group(2)}"
        lines.append(line)
    text = "\n".join(lines).replace("/etc/localproxy/services.d", str(services))
    text = text.replace("/etc/localproxy/access-token", str(token)) + "\nproxy-endpoint = 127.0.0.1:1\n"
    every = tmp_path / "every.conf"
    every.write_text(text)
    proxy = subprocess.Popen([localproxy, "--config", str(every)], stderr=subprocess.PIPE, text=True,
                             env={"PATH": os.environ["PATH"]})
    # A proxy that neither logs nor exits is killed after WAIT, which ends the reading.
    killer = threading.Timer(WAIT, proxy.kill)
    killer.start()
    try:
        seen = []
        while True:
            line = proxy.stderr.readline()
            seen.append(line)
            if not line or "connecting to 127.0.0.1:1" in line:
                break
        assert "connecting to 127.0.0.1:1" in seen[-1], \
            f"the shipped defaults, uncommented, were not accepted: {''.join(seen)}\n{text}"
    finally:
        killer.cancel()
        proxy.kill()
        proxy.wait()
    # A second install keeps settings an operator changed, and replaces the scripts.
    (dest / "etc/localproxy/localproxy.conf").write_text("region = eu-west-1\n")
    done = run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/lp", f"BIN={localproxy}"], cwd=REPO)
    assert done.returncode == 0, shown(done)
    assert (dest / "etc/localproxy/localproxy.conf").read_text() == "region = eu-west-1\n"
    assert "kept" in done.stdout, shown(done)


# ---- Debian packages -------------------------------------------------------------------------

def build_deb(arch: str) -> Path:
    done = run(["make", "-s", "deb", f"ARCH={arch}"], cwd=REPO, timeout=3600)
    assert done.returncode == 0, f"make deb ARCH={arch}: {shown(done)[-4000:]}"
    deb = REPO / ".build-deb" / f"localproxy_{VERSION}_{arch}.deb"
    assert deb.is_file(), f"make deb ARCH={arch} did not make {deb}: {shown(done)}"
    return deb


@pytest.fixture(scope="module")
def debs():
    return {}


def deb_for(debs: dict, arch: str) -> Path:
    if arch not in debs:
        debs[arch] = build_deb(arch)
    return debs[arch]


DEB_FILES = {
    # path: (mode, is directory)
    "./usr/bin/localproxy": 0o755,
    "./etc/localproxy/": 0o755,
    "./etc/localproxy/localproxy.conf": 0o644,
    "./etc/localproxy/services.d/": 0o755,
    "./etc/localproxy/services.d/example.conf": 0o644,
    "./etc/default/localproxy": 0o644,
    "./etc/init.d/localproxy": 0o755,
    "./lib/systemd/system/localproxy.service": 0o644,
    "./usr/libexec/localproxy/localproxy-respawn": 0o755,
    "./usr/share/doc/localproxy/copyright": 0o644,
    "./usr/share/doc/localproxy/NOTICES.md": 0o644,
    "./usr/share/doc/localproxy/changelog.gz": 0o644,
    # The MIT notice of libuv must travel with the binary (common-licenses has no MIT text).
    "./usr/share/doc/localproxy/LICENSE.libuv": 0o644,
}


@pytest.mark.deb_file
@pytest.mark.parametrize("arch", DEB_ARCHES)
def test_deb_file_info_and_contents(arch, debs, tmp_path):
    deb = deb_for(debs, arch)
    info = run(["dpkg-deb", "--info", str(deb)])
    assert info.returncode == 0, shown(info)
    fields = dict(re.findall(r"^ (\S+): (.*)$", info.stdout, re.M))
    assert fields.get("Package") == "localproxy", info.stdout
    assert fields.get("Version") == VERSION, info.stdout
    assert fields.get("Architecture") == arch, info.stdout
    # libgcc-s1 (which libc6 depends on anyway) only where the binary needs libgcc_s.so.1.
    assert re.fullmatch(r"libc6 \(>= 2\.\d+\)(, libgcc-s1)?, adduser", fields.get("Depends", "")), \
        f"Depends must be libc6 (and adduser for the postinst) only: {fields.get('Depends')}"
    for script in ("postinst", "prerm", "postrm", "conffiles", "md5sums"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s*{script}\b", info.stdout, re.M), \
            f"no {script} in the control archive:\n{info.stdout}"

    contents = run(["dpkg-deb", "--contents", str(deb)])
    assert contents.returncode == 0, shown(contents)
    listed = {}
    for line in contents.stdout.splitlines():
        perms, owner, _size, _date, _time, path = line.split(None, 5)
        listed[path.split(" -> ")[0]] = (perms, owner)
    for path, mode in DEB_FILES.items():
        assert path in listed, f"{deb.name} lacks {path}:\n{contents.stdout}"
        perms, owner = listed[path]
        assert owner == "root/root", f"{path} is owned by {owner}"
        want = stat.filemode(mode | (stat.S_IFDIR if path.endswith("/") else stat.S_IFREG))
        assert perms == want, f"{path} has {perms}, expected {want}"
    assert "./etc/localproxy/access-token" not in listed, "the package must not ship a token"
    # libsodium (ISC) is linked into the x86_64 build only; its notice goes with it.
    assert ("./usr/share/doc/localproxy/LICENSE.libsodium" in listed) == (arch == "amd64"), sorted(listed)

    conffiles = run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    assert sorted(conffiles) == sorted(["/etc/default/localproxy", "/etc/init.d/localproxy",
                                        "/etc/localproxy/localproxy.conf",
                                        "/etc/localproxy/services.d/example.conf"]), conffiles

    # The binary is the architecture's, stripped, needing only the C library.
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    binary = tmp_path / "usr/bin/localproxy"
    header = run(["readelf", "-h", str(binary)]).stdout
    assert re.search(rf"Machine:\s+.*{ELF_MACHINE[arch]}", header), header
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", run(["readelf", "-d", str(binary)]).stdout)
    assert set(needed) <= {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2"} | \
        {n for n in needed if n.startswith("ld-linux")} | ({"libgcc_s.so.1"} if "libgcc-s1" in fields["Depends"] else set()), \
        f"{deb.name}: the binary needs {needed}; Depends: {fields['Depends']}"
    assert ".symtab" not in run(["readelf", "-S", str(binary)]).stdout, "the binary is not stripped"
    libuv_notice = (tmp_path / "usr/share/doc/localproxy/LICENSE.libuv").read_text()
    assert "Permission is hereby granted, free of charge" in libuv_notice, libuv_notice[:400]


@pytest.mark.deb_file
@pytest.mark.parametrize("arch", DEB_ARCHES)
def test_deb_file_lintian(arch, debs):
    lintian = shutil.which("lintian")
    if not lintian:
        pytest.skip("lintian is not installed (make deps installs it)")
    deb = deb_for(debs, arch)
    done = run([lintian, "--no-tag-display-limit", "--display-info", str(deb)], timeout=600)
    findings = [line for line in done.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert not findings and done.returncode == 0, f"lintian {deb.name}: {shown(done)}"


def package_state() -> str:
    done = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "localproxy"])
    return done.stdout.strip() if done.returncode == 0 else "absent"


def test_debian_package_installs_removes_and_purges(debs, tmp_path, start_emulator, world):
    if os.geteuid() != 0:
        pytest.skip("installing the .deb with dpkg -i needs root (the CI machine runs the tests as root)")
    if shutil.which("dpkg") is None or run(["dpkg", "--print-architecture"]).stdout.strip() != "amd64":
        pytest.skip("this test installs the amd64 package: not an amd64 Debian machine")
    if package_state() not in ("absent", "un"):
        pytest.skip(f"a localproxy package is already installed here ({package_state()}): not touching it")
    user_existed = run(["getent", "passwd", "localproxy"]).returncode == 0
    deb = deb_for(debs, "amd64")
    try:
        done = run(["dpkg", "-i", str(deb)], timeout=300)
        assert done.returncode == 0, f"dpkg -i: {shown(done)}"
        assert package_state() == "ii", package_state()
        version = run(["/usr/bin/localproxy", "--version"])
        assert version.returncode == 0 and f"localproxy {VERSION}" in version.stdout, shown(version)

        user = pwd.getpwnam("localproxy")
        assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false"), f"the user's shell is {user.pw_shell}"
        assert user.pw_uid < 1000, f"localproxy is not a system user (uid {user.pw_uid})"
        for path, mode in DEB_FILES.items():
            p = Path(path[1:])
            got = stat.S_IMODE(p.stat().st_mode)
            assert got == mode and p.stat().st_uid == 0, f"{p}: mode {got:o}, owner {p.stat().st_uid}"
        # Enabled for both init systems, and not started: there is no token.
        assert Path("/etc/systemd/system/multi-user.target.wants/localproxy.service").is_symlink(), \
            "the systemd unit is not enabled"
        assert list(Path("/etc").glob("rc2.d/S*localproxy")), "no SysV start link in /etc/rc2.d"
        assert not Path("/run/localproxy/localproxy.pid").exists(), "the proxy was started without a token"
        assert run(["pgrep", "-x", "-u", "localproxy", "localproxy"]).returncode == 1, "a proxy runs without a token"
        # The unit as installed, unchanged, verifies (its ExecStart now exists).
        verify_unit(Path("/lib/systemd/system/localproxy.service").read_text(), tmp_path)
        # The installed SysV script, told nothing: no token, so it does not start.
        done = run(["/etc/init.d/localproxy", "start"])
        assert done.returncode == 6 and "no access token" in done.stdout, shown(done)

        # The installed package serving a tunnel: settings for the emulator, a service, a token
        # delivered the documented way; the installed SysV script starts the installed binary
        # as the package's user, the emulator shows it connected, stop ends it.
        emulator = start_emulator()
        tunnel = emulator.open_tunnel(services=["SSH"], thing="deb-gateway")
        ca = world / "ca.pem"
        shutil.copy(emulator.ca, ca)
        os.chmod(ca, 0o644)
        conf = Path("/etc/localproxy/localproxy.conf")
        conf.write_text(conf.read_text() + f"proxy-endpoint = {emulator.data_host}:{emulator.data_port}\ncapath = {ca}\n")
        Path("/etc/localproxy/services.d/ssh.conf").write_text("SSH=22\n")
        token = Path("/etc/localproxy/access-token")
        new = token.with_name("access-token.new")
        new.write_text(tunnel["destinationAccessToken"] + "\n")
        os.chmod(new, 0o600)
        os.chown(new, user.pw_uid, user.pw_gid)
        new.rename(token)
        done = run(["/etc/init.d/localproxy", "start"])
        assert done.returncode == 0, f"the installed script's start: {shown(done)}"
        pid = int(Path("/run/localproxy/localproxy.pid").read_text())
        try:
            wait_for(lambda: destination_status(emulator, tunnel["tunnelId"]) == "CONNECTED",
                     "the installed proxy to connect",
                     describe=lambda: f"alive: {process_alive(pid)}; its stderr: "
                                      f"{Path('/run/localproxy/stderr').read_text(errors='replace')[-2000:]}")
            assert os.path.realpath(f"/proc/{pid}/exe") == "/usr/bin/localproxy"
            assert process_uid(pid) == user.pw_uid, "the installed proxy does not run as localproxy"
            done = run(["/etc/init.d/localproxy", "stop"])
            assert done.returncode == 0 and not process_alive(pid), f"stop: {shown(done)}"
            wait_for(lambda: destination_status(emulator, tunnel["tunnelId"]) == "DISCONNECTED",
                     "the installed proxy's connection to end")
        finally:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)

        # remove keeps the settings and the token.
        done = run(["dpkg", "-r", "localproxy"], timeout=300)
        assert done.returncode == 0, f"dpkg -r: {shown(done)}"
        assert package_state() == "rc", package_state()
        assert not Path("/usr/bin/localproxy").exists(), "dpkg -r left the binary"
        assert Path("/etc/localproxy/localproxy.conf").is_file(), "dpkg -r removed the settings"
        assert token.read_text().strip() == tunnel["destinationAccessToken"], "dpkg -r removed the token"
        assert Path("/etc/localproxy/services.d/ssh.conf").is_file(), "dpkg -r removed a service file"

        done = run(["dpkg", "-P", "localproxy"], timeout=300)
        assert done.returncode == 0, f"dpkg -P: {shown(done)}"
        assert package_state() in ("absent", "un"), package_state()
        assert not Path("/etc/localproxy").exists(), \
            f"dpkg -P left /etc/localproxy: {sorted(map(str, Path('/etc/localproxy').rglob('*')))}"
        assert not Path("/etc/default/localproxy").exists() and not Path("/etc/init.d/localproxy").exists()
        assert not list(Path("/etc").glob("rc?.d/*localproxy")), "dpkg -P left rc links"
        assert not Path("/etc/systemd/system/multi-user.target.wants/localproxy.service").exists()
    finally:
        if package_state() not in ("absent", "un"):
            run(["dpkg", "-P", "localproxy"], timeout=300)
        if not user_existed and run(["getent", "passwd", "localproxy"]).returncode == 0:
            run(["userdel", "localproxy"])
            run(["groupdel", "localproxy"])
