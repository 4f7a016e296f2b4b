"""Real TLS peers for the proxy's client side: `openssl s_server`, certificates from the openssl CLI.

Three pieces, used by test_tls_interop.py:

* `Pki` makes keys and certificates on demand in a temporary directory (roots, intermediates,
  leaves; RSA and ECDSA; expired, SHA-1-signed or misnamed leaves). Nothing it makes is ever
  committed, and every key is new for each test session.
* `SServer` runs `openssl s_server` on 127.0.0.1 with one certificate chain and the TLS
  parameters a test pins, and reports when it is accepting.
* `ProxyRun` runs `localproxy` with its stderr collected line by line, so that tests wait for a
  log line or an exit rather than sleeping.

It also classifies a `localproxy` binary by the mbedTLS it uses (`describe_binary`), because
the Embedded static builds link a minimal mbedTLS 3.6 (cross/mbedtls/mbedtls_config.h) that
offers less than Debian's shared library, and TLS 1.3, which Debian 12's 2.28 does not.
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PEERS_DIR.parents[1]


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------

# How each key kind is generated, and the digest its owner signs certificates with (a P-384
# CA signs with SHA-384, as Amazon Root CA 4 does).
KEY_KINDS = {
    "rsa2048": (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "sha256"),
    "rsa4096": (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"], "sha256"),
    "p256": (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], "sha256"),
    "p384": (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], "sha384"),
}

# The proxy connects to 127.0.0.1, so that is the name the leaf must carry; localhost is listed
# too, as a real deployment's certificate lists DNS names.
DEFAULT_SAN = "DNS:localhost,IP:127.0.0.1"

# `openssl ca` is the only way OpenSSL 3.0 (Debian 12) writes a certificate with chosen dates:
# `x509 -req` has no -not_before/-not_after before 3.4 and refuses negative -days. The serial
# file is named but never created: -rand_serial is used instead.
_CA_CONFIG = """\
[ca]
default_ca = test_ca
[test_ca]
database = {db}/index.txt
new_certs_dir = {db}
serial = {db}/serial
default_md = {md}
policy = any_name
unique_subject = no
copy_extensions = none
[any_name]
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""


@dataclass(frozen=True)
class Issued:
    """A certificate file with its key, and its issuer (None for a self-signed root)."""

    cert: Path
    key: Path
    kind: str
    issuer: "Issued | None" = None


class Pki:
    """Makes keys and certificates with the openssl CLI, each once, on first use."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._made: dict[str, Issued] = {}
        self._lock = threading.Lock()

    def _openssl(self, *args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")

    def _key(self, name: str, kind: str) -> Path:
        key = self.dir / f"{name}.key"
        self._openssl("genpkey", *KEY_KINDS[kind][0], "-out", key.name)
        return key

    def _once(self, name: str, make) -> Issued:
        with self._lock:
            if name not in self._made:
                self._made[name] = make()
            return self._made[name]

    def root(self, name: str, kind: str) -> Issued:
        """A self-signed root CA (basicConstraints CA:TRUE is what mbedTLS insists on)."""

        def make() -> Issued:
            key = self._key(name, kind)
            cert = self.dir / f"{name}.pem"
            self._openssl(
                "req", "-x509", "-new", "-key", key.name, "-out", cert.name, "-days", "30",
                f"-{KEY_KINDS[kind][1]}", "-subj", f"/O=localproxy tests/CN={name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash",
            )
            return Issued(cert, key, kind)

        return self._once(name, make)

    def _sign(self, name: str, kind: str, issuer: Issued, extensions: str, subject: str, md: str | None) -> Issued:
        key = self._key(name, kind)
        csr, cert, ext = self.dir / f"{name}.csr", self.dir / f"{name}.pem", self.dir / f"{name}.ext"
        ext.write_text(extensions)
        self._openssl("req", "-new", "-key", key.name, "-out", csr.name, "-subj", subject)
        self._openssl(
            "x509", "-req", "-in", csr.name, "-CA", issuer.cert.name, "-CAkey", issuer.key.name,
            "-set_serial", str(secrets.randbits(63)), "-out", cert.name, "-days", "30",
            "-extfile", ext.name, f"-{md or KEY_KINDS[issuer.kind][1]}",
        )
        return Issued(cert, key, kind, issuer)

    def intermediate(self, name: str, kind: str, issuer: Issued) -> Issued:
        return self._once(name, lambda: self._sign(
            name, kind, issuer,
            "basicConstraints=critical,CA:TRUE,pathlen:0\n"
            "keyUsage=critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n",
            f"/O=localproxy tests/CN={name}", None,
        ))

    def leaf(self, name: str, kind: str, issuer: Issued, san: str = DEFAULT_SAN, md: str | None = None) -> Issued:
        """A server certificate for `san`, signed by `issuer` with `md` (default: the issuer's)."""
        return self._once(name, lambda: self._sign(
            name, kind, issuer,
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={san}\n",
            "/CN=localhost", md,
        ))

    def client(self, name: str, kind: str, issuer: Issued, common_name: str) -> Issued:
        """A client certificate (mutual TLS) whose subject is only `CN=common_name`.

        An MQTT broker that takes the certificate's identity as the username (mosquitto's
        use_identity_as_username, AWS IoT's thing certificates) reads that CN, so it is the
        whole subject: nothing else in it could be mistaken for the identity.
        """
        return self._once(name, lambda: self._sign(
            name, kind, issuer,
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n",
            f"/CN={common_name}", None,
        ))

    def leaf_with_dates(self, name: str, kind: str, issuer: Issued, start: str, end: str) -> Issued:
        """A server certificate valid only from `start` to `end` (YYYYMMDDHHMMSSZ)."""

        def make() -> Issued:
            key = self._key(name, kind)
            csr, cert = self.dir / f"{name}.csr", self.dir / f"{name}.pem"
            db = self.dir / f"{name}.db"
            db.mkdir()
            (db / "index.txt").touch()
            config = self.dir / f"{name}.cnf"
            config.write_text(_CA_CONFIG.format(db=db.name, md=KEY_KINDS[issuer.kind][1], san=DEFAULT_SAN))
            self._openssl("req", "-new", "-key", key.name, "-out", csr.name, "-subj", "/CN=localhost")
            self._openssl(
                "ca", "-batch", "-config", config.name, "-cert", issuer.cert.name, "-keyfile", issuer.key.name,
                "-in", csr.name, "-out", cert.name, "-startdate", start, "-enddate", end,
                "-extensions", "leaf", "-notext", "-rand_serial",
            )
            return Issued(cert, key, kind, issuer)

        return self._once(name, make)

    def bundle(self, name: str, *parts: Path) -> Path:
        """The concatenation of PEM files `parts`, as one file."""
        out = self.dir / name
        texts = [p.read_text() for p in parts]
        out.write_text("".join(t if t.endswith("\n") else t + "\n" for t in texts))
        return out


# --------------------------------------------------------------------------------------
# Waiting on output
# --------------------------------------------------------------------------------------


class LineCollector:
    """Collects a pipe's lines on a thread and lets the test wait for one (or for EOF)."""

    def __init__(self, pipe, name: str):
        self.lines: list[str] = []
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(pipe,), name=name, daemon=True)
        self.thread.start()

    def _read(self, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self.cond.notify_all()
        pipe.close()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first line matching `pattern`; None if the pipe closed or `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            checked = 0
            while True:
                for line in self.lines[checked:]:
                    if match := pattern.search(line):
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    return None
                self.cond.wait(remaining)

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


# --------------------------------------------------------------------------------------
# openssl s_server
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SServer:
    """`openssl s_server -www` on 127.0.0.1 presenting one chain, with pinned TLS parameters.

    `-www` answers the proxy's WebSocket upgrade request with a 200 status page, which the
    proxy treats as a failed upgrade and retries later: only the TLS handshake matters here.
    """

    def __init__(self, cert: Path, key: Path, *, chain: Path | None = None, cipher: str | None = None,
                 groups: str | None = None, protocol: str | None = "-tls1_2", extra: tuple[str, ...] = ()):
        self.options = ["-cert", str(cert), "-key", str(key)]
        if chain:
            self.options += ["-cert_chain", str(chain)]
        if cipher:
            self.options += ["-cipher", cipher]
        if groups:
            self.options += ["-groups", groups]
        # protocol None: every version this OpenSSL speaks (TLS 1.2 and 1.3 at its defaults).
        self.options += [*([protocol] if protocol else []), "-www", *extra]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "SServer":
        # The port is picked free and then bound by s_server; if another process takes it in
        # between, s_server fails to bind and another port is tried.
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", *self.options],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            self.out = LineCollector(self.proc.stdout, "s_server stdout")
            self.err = LineCollector(self.proc.stderr, "s_server stderr")
            if self.out.wait_for(re.compile(r"^ACCEPT$"), 30.0):
                return self
            self._stop()
            if "in use" not in self.err.text():
                raise RuntimeError(f"openssl s_server {' '.join(self.options)} did not start: {self.err.text()}")
        raise RuntimeError("openssl s_server found no free port on 127.0.0.1")

    def _stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.thread.join(5)
        self.err.thread.join(5)

    def __exit__(self, *exc) -> None:
        self._stop()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.out.text() + "\n" + self.err.text()

    def wait_error(self, text: str, timeout: float) -> bool:
        """Whether s_server reports `text` on stderr (where it prints failed handshakes) in time."""
        return self.err.wait_for(re.compile(re.escape(text)), timeout) is not None


# --------------------------------------------------------------------------------------
# localproxy
# --------------------------------------------------------------------------------------


class ProxyRun:
    """A running `localproxy`; stopped (SIGTERM, then SIGKILL) and reaped on leaving the block."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.command = command
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self.err = LineCollector(self.proc.stderr, "localproxy stderr")

    def __enter__(self) -> "ProxyRun":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.err.thread.join(5)

    def wait_line(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first stderr line matching `pattern`; None if the proxy ended or timed out first."""
        return self.err.wait_for(re.compile(pattern) if isinstance(pattern, str) else pattern, timeout)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, once the process has ended and all its stderr is read; None on timeout."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.err.thread.join(timeout)
        return code

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, then the exit code (None if it did not exit within `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    @property
    def stderr(self) -> str:
        return self.err.text()

    def describe(self) -> str:
        return f"command: {' '.join(self.command)}\nexit: {self.proc.poll()}\nstderr:\n{self.stderr[-6000:]}"


# --------------------------------------------------------------------------------------
# What the binary under test is
# --------------------------------------------------------------------------------------

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7"}


@dataclass(frozen=True)
class BinaryInfo:
    """The ELF behind LOCALPROXY: its architecture, whether it runs emulated, its mbedTLS."""

    elf: Path
    arch: str
    emulated: bool
    # "debian": linked against Debian's libmbedtls shared library (every feature Debian
    # enables); "minimal": mbedTLS linked in, which the Makefile only ever does with
    # cross/mbedtls/mbedtls_config.h.
    mbedtls: str
    # Whether that mbedTLS offers TLS 1.3: it knows the TLS 1.3 suites by name (mbedTLS 3.x
    # built with MBEDTLS_SSL_PROTO_TLS1_3; never 2.28, whose TLS 1.3 was a prototype Debian 12
    # leaves out).
    tls13: bool
    text: bytes

    def contains(self, needle: str) -> bool:
        return needle.encode() in self.text


def describe_binary(path: str) -> BinaryInfo:
    """Finds and inspects the ELF a LOCALPROXY path runs (following scripts/qemu-localproxy)."""
    binary = Path(path)
    with open(binary, "rb") as f:
        head = f.read(4)
    if head[:2] == b"#!":
        # The qemu wrapper execs .build-embedded/<LP_CROSS_ARCH>-<LP_CROSS_LINK>/localproxy.
        if binary.name != "qemu-localproxy":
            raise AssertionError(f"{binary} is a script, and the only script these tests know is scripts/qemu-localproxy")
        arch = os.environ.get("LP_CROSS_ARCH", "aarch64")
        link = os.environ.get("LP_CROSS_LINK", "static")
        binary = binary.resolve().parent.parent / ".build-embedded" / f"{arch}-{link}" / "localproxy"
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF":
        raise AssertionError(f"{binary} is not an ELF file")
    machine = int.from_bytes(data[18:20], "little")
    arch = _ELF_MACHINES.get(machine, f"machine-{machine:#x}")
    host = platform.machine()
    emulated = arch != host and not (arch == "armv7" and host.startswith("arm"))
    # A dynamically linked mbedTLS leaves its soname in the dynamic string table.
    mbedtls = os.environ.get("LP_TLS_PROFILE") or ("debian" if b"libmbedtls.so" in data else "minimal")
    if "LP_TLS13" in os.environ:
        tls13 = os.environ["LP_TLS13"] == "1"
    else:
        tls13 = TLS13_SUITE_NAME in data or any(TLS13_SUITE_NAME in lib.read_bytes() for lib in _shared_mbedtls(data))
    return BinaryInfo(binary, arch, emulated, mbedtls, tls13, data)


# mbedTLS's name of a TLS 1.3 suite: in its suite table only when TLS 1.3 is built.
TLS13_SUITE_NAME = b"TLS1-3-AES-128-GCM-SHA256"


def _shared_mbedtls(data: bytes) -> list[Path]:
    """The libmbedtls shared library an ELF names (DT_NEEDED), as found in the usual places."""
    found = []
    for soname in sorted(set(re.findall(rb"libmbedtls\.so\.[0-9.]+", data))):
        for directory in ("/usr/lib", "/lib", *(str(p) for p in Path("/usr/lib").glob("*-linux-gnu*"))):
            candidate = Path(directory) / soname.decode()
            if candidate.is_file():
                found.append(candidate)
                break
    return found
