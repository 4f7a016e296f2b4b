"""TLS interoperability of `localproxy` (destination mode) with OpenSSL's `s_server`.

The device binaries link a minimal mbedTLS 3.6 (cross/mbedtls/mbedtls_config.h: TLS 1.2 and 1.3
client only, ECDHE-RSA and ECDHE-ECDSA, AES-GCM and ChaCha20-Poly1305, X25519/P-256/P-384); the
host build and LINK=dynamic use Debian 12's shared mbedTLS 2.28 (TLS 1.2 only). The real service
cannot be reached from a test machine, so `openssl s_server` plays it, presenting certificates
shaped like Amazon Trust Services chains (RSA 2048 under an RSA 4096 root, ECDSA P-256 and
P-384), with one cipher suite and one key-exchange group pinned per case. Each case checks:

* that the handshake completes, by the proxy's debug line
  `TLS established with 127.0.0.1:PORT: TLSv1.2 <suite>`, and that the suite it names is the one
  the server was limited to; the proxy's WebSocket upgrade then fails against s_server (it
  answers with a 200 status page), which does not matter: the proxy is stopped with SIGTERM and
  must exit 0;
* that an intermediate CA sent by the server is used, with only the root trusted;
* that Debian's CA bundle loads, as one file and certificate by certificate (each as its own
  `-c` entry, so that one that fails to parse stops the proxy instead of being skipped), and
  that each Amazon Root CA 1-4 in /etc/ssl/certs parses;
* refusals: a certificate problem (unknown CA, expired leaf, wrong name, SHA-1-signed leaf,
  missing intermediate) must end the proxy with exit code 3 (README, Exit codes) and an error
  naming the problem, over TLS 1.2 and (where built) over TLS 1.3, whose certificate messages
  mbedTLS handles in other code; a server the proxy cannot negotiate with (TLS 1.1 only, CBC
  suites only) is a handshake failure, logged as such, after which the proxy keeps retrying as
  for any transport error (it is then stopped with SIGTERM);
* TLS 1.3, for binaries whose mbedTLS offers it (`tls_peers.describe_binary`: the TLS 1.3
  suite names are in the binary, or in the shared libmbedtls it names; LP_TLS13=0|1
  overrides), skipped for the others: s_server limited to TLS 1.3 gets each of the three
  TLS 1.3 suites, with RSA (signing in PSS) and ECDSA keys, in each group (P-256 and P-384
  through a HelloRetryRequest, since the client's first key share is X25519); a server that
  offers TLS 1.2 and 1.3 and lets the client choose gets TLS 1.3 with ChaCha20-Poly1305; and
  for each TLS 1.3 suite a checksummed transfer both ways between two proxies through the
  benchmark's relay (scripts/bench/wsrelay.c, OpenSSL, pinned with --tls1_3 --ciphersuites),
  since s_server cannot carry a tunnel. That one needs `make bench-tools` (BENCH_TOOLS).

Expected differences between builds, keyed on the mbedTLS the binary uses (`tls_peers.
describe_binary`: a binary that names Debian's libmbedtls.so in its dynamic section uses
Debian's shared library, any other links the minimal configuration, as the Makefile's static
and fullstatic builds do; LP_TLS_PROFILE=debian|minimal overrides):

    capability          debian (host SwiftPM, LINK=dynamic)  minimal (LINK=static|fullstatic)
    CBC suites          offered: a CBC-only server connects  not built: the server ends the
                        with TLS-ECDHE-RSA-WITH-AES-128-     handshake ("no shared cipher");
                        CBC-SHA256                           the proxy logs a fatal alert
    TLS 1.1-only        the server answers TLS 1.1 with a    the server finds no TLS 1.1 suite
    server              CBC suite; the proxy refuses the     in the offer and ends the
                        version ("Handshake protocol not     handshake ("no shared cipher"); the
                        within min/max boundaries")          proxy logs a fatal alert
    P-521 and X448      offered: a server limited to either  not built: handshake failure, as
                        connects                             for CBC (this also shows that
                                                             s_server's -groups does limit)

A binary with TLS 1.3 (the minimal 3.6 build) lists the versions it speaks in its ClientHello,
so a TLS 1.1-only server refuses it for the version ("unsupported protocol") before looking at
suites; the proxy logs the fatal alert, as above.

Everything else, every suite and group above included, must behave the same in both.

Certificates are made fresh for each session by the openssl CLI in a pytest temporary
directory. Network traffic stays on 127.0.0.1. Waiting is on a log line or an exit, with a
timeout that is longer when the binary runs under qemu.

Environment:
  LOCALPROXY      the binary (default .build/debug/localproxy), or scripts/qemu-localproxy
  LP_CROSS_ARCH   with scripts/qemu-localproxy: aarch64 (default) or armv7
  LP_CROSS_LINK   with scripts/qemu-localproxy: static (default) or fullstatic
  LP_TLS_PROFILE  debian|minimal, to override the detected mbedTLS
  LP_TLS13        0|1, to override whether the binary is taken to offer TLS 1.3
  BENCH_TOOLS     directory holding wsrelay (default .build-bench)
"""

from __future__ import annotations

import os
import re
import secrets
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from tls_peers import LineCollector, Pki, ProxyRun, SServer, describe_binary

sys.path.insert(0, str(REPO_ROOT / "scripts" / "bench"))
import bench  # noqa: E402
import traffic  # noqa: E402

# The proxy's exit codes (README, Exit codes).
EXIT_CERTIFICATE = 3
EXIT_NORMAL = 0
EXIT_CONFIGURATION = 1

# OpenSSL's name of each suite the minimal configuration builds, and mbedTLS's.
SUITES = {
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256",
}
CBC_SUITE = ("ECDHE-RSA-AES128-SHA256", "TLS-ECDHE-RSA-WITH-AES-128-CBC-SHA256")
# The TLS 1.3 suites, OpenSSL's name and mbedTLS's, for binaries whose mbedTLS has TLS 1.3.
TLS13_SUITES = {
    "TLS_AES_128_GCM_SHA256": "TLS1-3-AES-128-GCM-SHA256",
    "TLS_AES_256_GCM_SHA384": "TLS1-3-AES-256-GCM-SHA384",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS1-3-CHACHA20-POLY1305-SHA256",
}
# The protocol versions a refusal is checked over (s_server's option), TLS 1.3 where built.
PROTOCOLS = ["-tls1_2", "-tls1_3"]

# What each kind of binary is expected to do where the two mbedTLS builds differ. A build
# without CBC suites offers nothing a TLS 1.1 server can use, so that server ends the handshake
# with an alert before any version is agreed; Debian's mbedTLS gets a TLS 1.1 ServerHello and
# refuses the version itself.
CAPABILITIES = {
    "debian": {
        "cbc_suites": True,
        "groups_beyond_minimal": True,
        "tls11_error": "Handshake protocol not within min/max boundaries",
        "tls11_server_error": None,
    },
    "minimal": {
        "cbc_suites": False,
        "groups_beyond_minimal": False,
        "tls11_error": "A fatal alert message was received from our peer",
        "tls11_server_error": "no shared cipher",
    },
}
# What the proxy says when the server answers its ClientHello with a handshake_failure alert.
PEER_ALERT = "A fatal alert message was received from our peer"
# What the proxy adds to that alert, so a misconfigured server does not look like a flaky network.
ALERT_HINT = "shares no TLS version, cipher suite or key-exchange group with this build"

# Server key kind -> (root key kind, the suites whose authentication matches the key).
SERVER_KEYS = {
    "rsa2048": ("rsa4096", [s for s in SUITES if s.startswith("ECDHE-RSA-")]),
    "p256": ("p256", [s for s in SUITES if s.startswith("ECDHE-ECDSA-")]),
    "p384": ("p384", [s for s in SUITES if s.startswith("ECDHE-ECDSA-")]),
}
# Groups the client offers; each group test pins s_server to one of them.
GROUPS = ["X25519", "P-256", "P-384"]
ALL_GROUPS = ":".join(GROUPS)
# Groups Debian's mbedTLS offers and the minimal configuration does not build.
GROUPS_BEYOND_MINIMAL = ["P-521", "X448"]

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
AMAZON_ROOTS = [Path(f"/etc/ssl/certs/Amazon_Root_CA_{n}.pem") for n in (1, 2, 3, 4)]

ACCESS_TOKEN = "AQGAAXi" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(200))


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary(localproxy):
    return describe_binary(localproxy)


@pytest.fixture(scope="module")
def wait(binary) -> float:
    """How long any single event may take: a handshake under qemu (RSA 4096, P-384) is slow."""
    return 180.0 if binary.emulated else 30.0


@pytest.fixture(scope="module")
def capabilities(binary) -> dict:
    assert binary.mbedtls in CAPABILITIES, f"unknown LP_TLS_PROFILE {binary.mbedtls!r}"
    return CAPABILITIES[binary.mbedtls]


@pytest.fixture(scope="module")
def tls13(binary) -> None:
    """Skips a TLS 1.3 test for a binary whose mbedTLS has no TLS 1.3 (Debian 12's 2.28)."""
    if not binary.tls13:
        pytest.skip(f"{binary.elf}: its mbedTLS offers no TLS 1.3 (mbedTLS 2.28, or 3.x built without it)")


def skip_unless_offered(binary, protocol: str) -> None:
    if protocol == "-tls1_3" and not binary.tls13:
        pytest.skip(f"{binary.elf}: its mbedTLS offers no TLS 1.3")


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls_interop_pki"))


def server_cert(pki: Pki, key: str):
    """The leaf for `key` (see SERVER_KEYS) under its own root."""
    root_kind = SERVER_KEYS[key][0]
    root = pki.root(f"root-{root_kind}", root_kind)
    return pki.leaf(f"leaf-{key}", key, root)


# --------------------------------------------------------------------------------------
# Running the proxy against a server
# --------------------------------------------------------------------------------------


def start_proxy(localproxy: str, server: SServer, trust: str) -> ProxyRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWSIOT_TUNNEL_")}
    env["AWSIOT_TUNNEL_ACCESS_TOKEN"] = ACCESS_TOKEN
    # -d names a local service that is never connected to: no tunnel ever opens.
    command = [
        localproxy, "-d", "127.0.0.1:9", "-e", server.endpoint, "-c", trust, "-v", "5",
        "--reconnect-delay-max-ms", "1000",
    ]
    return ProxyRun(command, env)


def established_re(endpoint: str) -> re.Pattern[str]:
    return re.compile(rf"TLS established with {re.escape(endpoint)}: (\S+) (\S+)$")


def expect_established(localproxy: str, server: SServer, trust: str | Path, wait: float) -> tuple[str, str]:
    """Runs the proxy until its TLS handshake completes, stops it; returns (version, suite)."""
    with start_proxy(localproxy, server, str(trust)) as proxy:
        match = proxy.wait_line(established_re(server.endpoint), wait)
        assert match, f"no TLS session with s_server\n{proxy.describe()}\ns_server:\n{server.output()[-3000:]}"
        code = proxy.terminate(wait)
        assert code == EXIT_NORMAL, f"after SIGTERM the proxy exited {code}, not 0\n{proxy.describe()}"
        assert "TLS established" in proxy.stderr
        return match.group(1), match.group(2)


def expect_certificate_refusal(localproxy: str, server: SServer, trust: str | Path, wait: float) -> str:
    """Runs the proxy until it gives up on the server's certificate; returns its error line."""
    with start_proxy(localproxy, server, str(trust)) as proxy:
        code = proxy.wait_exit(wait)
        if code is None:
            code = proxy.terminate(wait)
            pytest.fail(f"the proxy kept running after a bad certificate (exit {code} after SIGTERM)\n{proxy.describe()}")
        assert code == EXIT_CERTIFICATE, f"exit {code}, not {EXIT_CERTIFICATE}\n{proxy.describe()}"
        assert "TLS established" not in proxy.stderr, proxy.describe()
        errors = [line for line in proxy.stderr.splitlines() if "certificate was not accepted" in line]
        assert len(errors) == 1, f"expected one certificate error line\n{proxy.describe()}"
        return errors[0]


def expect_handshake_failure(localproxy: str, server: SServer, trust: str | Path, wait: float) -> str:
    """Runs the proxy until a handshake fails (not as a certificate problem), stops it; returns the line."""
    with start_proxy(localproxy, server, str(trust)) as proxy:
        match = proxy.wait_line(rf"tunnel connection ended: TLS handshake with {re.escape(server.endpoint)} failed: .*", wait)
        assert match, f"no handshake failure logged\n{proxy.describe()}\ns_server:\n{server.output()[-3000:]}"
        code = proxy.terminate(wait)
        assert code == EXIT_NORMAL, f"after SIGTERM the proxy exited {code}, not 0\n{proxy.describe()}"
        assert "TLS established" not in proxy.stderr, proxy.describe()
        assert "certificate was not accepted" not in proxy.stderr, proxy.describe()
        return match.group(0)


# --------------------------------------------------------------------------------------
# The binary is what the capability table says it is
# --------------------------------------------------------------------------------------


def test_binary_matches_its_capability_row(binary):
    """mbedTLS keeps the name of every suite it was built with; the minimal build has no CBC.

    A static binary that still names CBC suites was linked against Debian's full libmbedtls.a
    (a build from before the minimal configuration): rebuild it with `make embedded`.
    """
    if binary.mbedtls == "minimal" and "LP_TLS_PROFILE" not in os.environ:
        assert not binary.contains(CBC_SUITE[1]), (
            f"{binary.elf} links mbedTLS statically but contains the CBC suite {CBC_SUITE[1]}: "
            "not the minimal configuration (stale build?)"
        )
        for name in SUITES.values():
            assert binary.contains(name), f"{binary.elf} does not know the suite {name}"
        if binary.tls13:
            for name in TLS13_SUITES.values():
                assert binary.contains(name), f"{binary.elf} does not know the TLS 1.3 suite {name}"


# --------------------------------------------------------------------------------------
# Handshakes that must complete
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,suite",
    [pytest.param(key, suite, id=f"{key}-{suite}") for key, (_, suites) in SERVER_KEYS.items() for suite in suites],
)
def test_suite(localproxy, pki, wait, key, suite):
    leaf = server_cert(pki, key)
    with SServer(leaf.cert, leaf.key, cipher=suite, groups=ALL_GROUPS) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert (version, negotiated) == ("TLSv1.2", SUITES[suite])


def cheapest_suite_first(localproxy: str) -> str:
    """What the binary should offer first: AES-GCM when its --version says AES-GCM runs on the
    CPU's AES instructions here (AES-NI, ARMv8 AES; AES-128 before AES-256), ChaCha20-Poly1305
    otherwise: with mbedTLS's portable code, and with the armv7 build's OpenSSL code, whose
    table-driven AES costs about four times the NEON ChaCha20-Poly1305 (docs/CRYPTO.md)."""
    out = subprocess.run([localproxy, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    gcm = re.search(r"AES-GCM: ([^;]+);", out.stdout)
    assert gcm, out.stdout
    hardware_aes = not gcm.group(1).startswith("mbedTLS portable C") and re.search(r"AES-NI|ARMv8 AES", gcm.group(1))
    return "AES-128-GCM" if hardware_aes else "CHACHA20-POLY1305"


@pytest.mark.parametrize("key", ["p256", "rsa2048"])
def test_cheapest_suite_first_when_the_server_lets_the_client_choose(localproxy, pki, wait, key):
    """The proxy offers its cheapest record cipher first: ChaCha20-Poly1305 where AES-GCM is
    mbedTLS's portable code (2.8-3.1 CPU-ms/MB against 3.6-4.5 here, docs/CRYPTO.md), AES-128-GCM
    where the build has AES-NI and PCLMULQDQ code for it and the CPU has the instructions
    (0.4-0.5, against 0.7 for ChaCha20-Poly1305 from libsodium). s_server without -serverpref
    takes the client's order."""
    leaf = server_cert(pki, key)
    _, suites = SERVER_KEYS[key]
    expected = cheapest_suite_first(localproxy)
    with SServer(leaf.cert, leaf.key, cipher=":".join(suites), groups=ALL_GROUPS) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert version == "TLSv1.2"
    assert expected in negotiated, f"negotiated {negotiated}, expected {expected} first"


def test_cheapest_tls13_suite_first(localproxy, binary, tls13, pki, wait):
    """The same order in TLS 1.3, where s_server also takes the client's order by default."""
    leaf = server_cert(pki, "p256")
    expected = cheapest_suite_first(localproxy)
    suites = ":".join(TLS13_SUITES)
    with SServer(leaf.cert, leaf.key, groups=ALL_GROUPS, protocol="-tls1_3", extra=("-ciphersuites", suites)) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert version == "TLSv1.3"
    assert expected in negotiated, f"negotiated {negotiated}, expected {expected} first"


@pytest.mark.parametrize("group", GROUPS)
def test_group(localproxy, pki, wait, group):
    # With one group allowed, s_server can only complete an ECDHE handshake in that group.
    leaf = server_cert(pki, "rsa2048")
    suite = "ECDHE-RSA-AES128-GCM-SHA256"
    with SServer(leaf.cert, leaf.key, cipher=suite, groups=group) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert (version, negotiated) == ("TLSv1.2", SUITES[suite])


@pytest.mark.parametrize("group", GROUPS_BEYOND_MINIMAL)
def test_group_beyond_minimal(localproxy, pki, wait, capabilities, group):
    leaf = server_cert(pki, "rsa2048")
    suite = "ECDHE-RSA-AES128-GCM-SHA256"
    with SServer(leaf.cert, leaf.key, cipher=suite, groups=group) as server:
        if capabilities["groups_beyond_minimal"]:
            _, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
            assert negotiated == SUITES[suite]
            return
        line = expect_handshake_failure(localproxy, server, leaf.issuer.cert, wait)
        assert PEER_ALERT in line, line
        assert ALERT_HINT in line, line
        assert server.wait_error("no shared cipher", wait), server.output()


CHAINS = {
    # Like Amazon Root CA 1 -> an RSA intermediate -> an RSA leaf.
    "rsa": ("rsa2048", "rsa2048", "rsa2048", "ECDHE-RSA-AES128-GCM-SHA256"),
    # Like Amazon Root CA 4 (P-384) -> an ECDSA intermediate -> a P-256 leaf.
    "ecdsa": ("p384", "p256", "p256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
}


def chain(pki: Pki, kind: str):
    root_kind, inter_kind, leaf_kind, _ = CHAINS[kind]
    root = pki.root(f"chain-root-{kind}", root_kind)
    inter = pki.intermediate(f"chain-intermediate-{kind}", inter_kind, root)
    return root, inter, pki.leaf(f"chain-leaf-{kind}", leaf_kind, inter)


@pytest.mark.parametrize("kind", CHAINS)
def test_intermediate_from_server(localproxy, pki, wait, kind):
    root, inter, leaf = chain(pki, kind)
    suite = CHAINS[kind][3]
    with SServer(leaf.cert, leaf.key, chain=inter.cert, cipher=suite, groups=ALL_GROUPS) as server:
        _, negotiated = expect_established(localproxy, server, root.cert, wait)
    assert negotiated == SUITES[suite]


def test_system_bundle_with_test_root(localproxy, pki, wait):
    if not SYSTEM_BUNDLE.is_file():
        pytest.skip(f"{SYSTEM_BUNDLE} not installed")
    leaf = server_cert(pki, "p256")
    bundle = pki.bundle("system-bundle-plus-test-root.pem", SYSTEM_BUNDLE, leaf.issuer.cert)
    with SServer(leaf.cert, leaf.key, cipher="ECDHE-ECDSA-AES128-GCM-SHA256", groups=ALL_GROUPS) as server:
        expect_established(localproxy, server, bundle, wait)


def split_pem(bundle: Path, directory: Path) -> list[Path]:
    """One file per certificate of a PEM bundle."""
    directory.mkdir(exist_ok=True)
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", bundle.read_text(), re.S)
    files = []
    for i, block in enumerate(blocks):
        path = directory / f"system-{i:03d}.pem"
        path.write_text(block if block.endswith("\n") else block + "\n")
        files.append(path)
    return files


def subject(cert: Path) -> str:
    done = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-subject"], capture_output=True, text=True)
    return done.stdout.strip()


def test_every_system_root_parses(localproxy, pki, wait):
    """Each certificate of the bundle as its own -c entry: a file whose only certificate fails
    to parse is a fatal error (exit 1, naming the file), where a failure inside a bundle would
    only be skipped."""
    if not SYSTEM_BUNDLE.is_file():
        pytest.skip(f"{SYSTEM_BUNDLE} not installed")
    files = split_pem(SYSTEM_BUNDLE, pki.dir / "system-roots")
    assert len(files) > 100, f"only {len(files)} certificates in {SYSTEM_BUNDLE}"
    leaf = server_cert(pki, "p256")
    trust = ",".join(str(p) for p in [*files, leaf.issuer.cert])
    with SServer(leaf.cert, leaf.key, cipher="ECDHE-ECDSA-AES128-GCM-SHA256", groups=ALL_GROUPS) as server:
        with start_proxy(localproxy, server, trust) as proxy:
            match = proxy.wait_line(established_re(server.endpoint), wait)
            if not match:
                failed = re.search(r"loading trusted certificates from (\S+?):", proxy.stderr)
                which = f" ({subject(Path(failed.group(1)))})" if failed else ""
                pytest.fail(f"the system roots did not all load{which}\n{proxy.describe()}")
            assert proxy.terminate(wait) == EXIT_NORMAL, proxy.describe()


@pytest.mark.parametrize("root", AMAZON_ROOTS, ids=lambda p: p.stem)
def test_amazon_root_parses(localproxy, pki, wait, root):
    """The Amazon root first and alone in its -c entry: if it did not parse, the proxy would
    stop with exit 1 before connecting."""
    if not root.is_file():
        pytest.skip(f"{root} not installed")
    leaf = server_cert(pki, "rsa2048")
    with SServer(leaf.cert, leaf.key, cipher="ECDHE-RSA-AES128-GCM-SHA256", groups=ALL_GROUPS) as server:
        expect_established(localproxy, server, f"{root},{leaf.issuer.cert}", wait)


def test_unparsable_trust_file_is_fatal(localproxy, pki, wait):
    """The premise of the two tests above: a -c file with no certificate mbedTLS can use stops
    the proxy with exit 1 and names the file."""
    junk = pki.dir / "not-a-certificate.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    leaf = server_cert(pki, "p256")
    with SServer(leaf.cert, leaf.key, groups=ALL_GROUPS) as server:
        with start_proxy(localproxy, server, f"{junk},{leaf.issuer.cert}") as proxy:
            code = proxy.wait_exit(wait)
            assert code == EXIT_CONFIGURATION, proxy.describe()
            assert f"loading trusted certificates from {junk}" in proxy.stderr, proxy.describe()


# --------------------------------------------------------------------------------------
# Certificate refusals: exit 3
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_ca(localproxy, binary, pki, wait, protocol):
    skip_unless_offered(binary, protocol)
    leaf = server_cert(pki, "p256")
    stranger = pki.leaf("leaf-unknown-ca", "p256", pki.root("root-unknown", "p256"))
    with SServer(stranger.cert, stranger.key, groups=ALL_GROUPS, protocol=protocol) as server:
        line = expect_certificate_refusal(localproxy, server, leaf.issuer.cert, wait)
    assert "The certificate is not correctly signed by the trusted CA" in line, line


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_expired_leaf(localproxy, binary, pki, wait, protocol):
    skip_unless_offered(binary, protocol)
    root = pki.root("root-p256", "p256")
    expired = pki.leaf_with_dates("leaf-expired", "p256", root, "20200101000000Z", "20200102000000Z")
    with SServer(expired.cert, expired.key, groups=ALL_GROUPS, protocol=protocol) as server:
        line = expect_certificate_refusal(localproxy, server, root.cert, wait)
    assert "The certificate validity has expired" in line, line


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_host_name(localproxy, binary, pki, wait, protocol):
    skip_unless_offered(binary, protocol)
    root = pki.root("root-p256", "p256")
    other = pki.leaf("leaf-wrong-name", "p256", root, san="DNS:tunnel.example.com,IP:127.0.0.2")
    with SServer(other.cert, other.key, groups=ALL_GROUPS, protocol=protocol) as server:
        line = expect_certificate_refusal(localproxy, server, root.cert, wait)
    assert "does not match with the expected CN (expected 127.0.0.1 among the certificate's names)" in line, line


def test_sha1_signed_leaf(localproxy, pki, wait):
    root = pki.root("root-rsa4096", "rsa4096")
    weak = pki.leaf("leaf-sha1", "rsa2048", root, md="sha1")
    # OpenSSL 3 refuses to serve a SHA-1-signed certificate above security level 0.
    with SServer(weak.cert, weak.key, cipher="ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0", groups=ALL_GROUPS) as server:
        line = expect_certificate_refusal(localproxy, server, root.cert, wait)
    assert "The certificate is signed with an unacceptable hash" in line, line
    assert ".." not in line, line


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", CHAINS)
def test_missing_intermediate(localproxy, binary, pki, wait, kind, protocol):
    # The same chain as test_intermediate_from_server, without the intermediate: the root alone
    # cannot vouch for the leaf, which shows that test's success came from the sent intermediate.
    skip_unless_offered(binary, protocol)
    root, _, leaf = chain(pki, kind)
    with SServer(leaf.cert, leaf.key, cipher=CHAINS[kind][3], groups=ALL_GROUPS, protocol=protocol) as server:
        line = expect_certificate_refusal(localproxy, server, root.cert, wait)
    assert "The certificate is not correctly signed by the trusted CA" in line, line


# --------------------------------------------------------------------------------------
# Servers the proxy cannot negotiate with: handshake failures, not certificate problems
# --------------------------------------------------------------------------------------


def test_tls11_only_server(localproxy, binary, pki, wait, capabilities):
    leaf = server_cert(pki, "p256")
    client_error, server_error = capabilities["tls11_error"], capabilities["tls11_server_error"]
    if binary.tls13:
        # A TLS 1.3 ClientHello lists its versions (supported_versions: 1.3, 1.2), and a server
        # that has none of them refuses at once, before looking at suites.
        client_error, server_error = PEER_ALERT, "unsupported protocol"
    with SServer(leaf.cert, leaf.key, protocol="-tls1_1", cipher="DEFAULT:@SECLEVEL=0") as server:
        line = expect_handshake_failure(localproxy, server, leaf.issuer.cert, wait)
        assert client_error in line, line
        if server_error:
            assert server.wait_error(server_error, wait), server.output()


def test_cbc_only_server(localproxy, pki, wait, capabilities):
    leaf = server_cert(pki, "rsa2048")
    with SServer(leaf.cert, leaf.key, cipher=CBC_SUITE[0], groups=ALL_GROUPS) as server:
        if capabilities["cbc_suites"]:
            _, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
            assert negotiated == CBC_SUITE[1]
            return
        line = expect_handshake_failure(localproxy, server, leaf.issuer.cert, wait)
        assert PEER_ALERT in line, line
        assert ALERT_HINT in line, line
        # The proxy offered no suite the server accepts: s_server says so on its side.
        assert server.wait_error("no shared cipher", wait), server.output()


# --------------------------------------------------------------------------------------
# TLS 1.3 (mbedTLS 3.x built with it: the static device builds)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,suite",
    [pytest.param(key, suite, id=f"{key}-{suite}") for key in ("rsa2048", "p256") for suite in TLS13_SUITES],
)
def test_tls13_suite(localproxy, tls13, pki, wait, key, suite):
    # With an RSA key a TLS 1.3 server signs in RSA-PSS; with P-256, in ECDSA.
    leaf = server_cert(pki, key)
    with SServer(leaf.cert, leaf.key, groups=ALL_GROUPS, protocol="-tls1_3", extra=("-ciphersuites", suite)) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert (version, negotiated) == ("TLSv1.3", TLS13_SUITES[suite])


@pytest.mark.parametrize("group", GROUPS)
def test_tls13_group(localproxy, tls13, pki, wait, group):
    """The client sends one key share, X25519's; a server limited to P-256 or P-384 asks for
    another with a HelloRetryRequest, which must be answered."""
    leaf = server_cert(pki, "p384")
    suite = "TLS_AES_256_GCM_SHA384"
    with SServer(leaf.cert, leaf.key, groups=group, protocol="-tls1_3", extra=("-ciphersuites", suite)) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    assert (version, negotiated) == ("TLSv1.3", TLS13_SUITES[suite])


def test_newest_version_and_cheapest_suite_when_the_server_lets_the_client_choose(localproxy, binary, pki, wait):
    """A server with TLS 1.2 and 1.3 and its default suites: the client's newest version, and
    its first suite, the cheapest here (see test_cheapest_suite_first_...). This one also runs
    for builds without TLS 1.3, which must then get TLS 1.2."""
    leaf = server_cert(pki, "p256")
    expected = cheapest_suite_first(localproxy)
    with SServer(leaf.cert, leaf.key, groups=ALL_GROUPS, protocol=None) as server:
        version, negotiated = expect_established(localproxy, server, leaf.issuer.cert, wait)
    if binary.tls13:
        assert version == "TLSv1.3" and expected in negotiated, (version, negotiated, expected)
    else:
        assert version == "TLSv1.2" and expected in negotiated, (version, negotiated, expected)


def wsrelay_tool() -> str:
    path = Path(os.environ.get("BENCH_TOOLS", REPO_ROOT / ".build-bench")) / "wsrelay"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built: run `make bench-tools` (or set BENCH_TOOLS)", pytrace=False)
    return str(path)


class Relay:
    """scripts/bench/wsrelay.c on 127.0.0.1: the tunnelling service as far as two proxies need."""

    def __init__(self, cert: Path, key: Path, *options: str):
        self.proc = subprocess.Popen([wsrelay_tool(), "--cert", str(cert), "--key", str(key), *options],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = LineCollector(self.proc.stdout, "wsrelay stdout")
        self.err = LineCollector(self.proc.stderr, "wsrelay stderr")
        match = self.out.wait_for(re.compile(r"^listening (\d+)$"), 30.0)
        if not match:
            self.stop()
            raise RuntimeError(f"wsrelay did not start: {self.err.text()}")
        self.endpoint = f"127.0.0.1:{match.group(1)}"

    def wait(self, pattern: str, timeout: float) -> re.Match[str] | None:
        return self.out.wait_for(re.compile(pattern), timeout)

    def output(self) -> str:
        return self.out.text() + "\n" + self.err.text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.thread.join(5)
        self.err.thread.join(5)


@pytest.mark.parametrize("aead_path", ["as-the-cpu-allows", "portable"])
@pytest.mark.parametrize("suite", TLS13_SUITES)
def test_tls13_transfer(localproxy, binary, tls13, pki, wait, suite, aead_path):
    """Bytes both ways through source proxy -> relay -> destination proxy over TLS 1.3 with one
    suite, checked end to end by CRC-32 (scripts/bench/traffic.py), 2 MiB each way under qemu
    and 16 MiB natively: enough records to wrap the proxies' buffers many times. Twice: with the
    AEAD code the CPU allows, and with LOCALPROXY_AEAD=portable (mbedTLS's own code, in builds
    with an accelerated AEAD; cross/aead/README.md)."""
    root = pki.root("root-p256", "p256")
    leaf = pki.leaf("leaf-relay-p256", "p256", root)
    size = (2 if binary.emulated else 16) << 20
    sink = traffic.Sink("random")
    threading.Thread(target=serve_until_closed, args=(sink,), daemon=True).start()
    relay = Relay(leaf.cert, leaf.key, "--tls1_3", "--ciphersuites", suite)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWSIOT_TUNNEL_")}
    env["AWSIOT_TUNNEL_ACCESS_TOKEN"] = ACCESS_TOKEN
    env.pop("LOCALPROXY_AEAD", None)
    if aead_path == "portable":
        env["LOCALPROXY_AEAD"] = "portable"
    common = ["-e", relay.endpoint, "-c", str(root.cert), "-v", "5"]
    source_port = bench.free_port()
    try:
        with ProxyRun([localproxy, "-d", f"127.0.0.1:{sink.port}", *common], env) as destination, \
                ProxyRun([localproxy, "-s", str(source_port), *common], env) as source:
            for role, proxy in (("destination", destination), ("source", source)):
                line = relay.wait(rf"^connected {role} (\S+) (\S+)$", wait)
                assert line, f"the {role} proxy did not connect\n{proxy.describe()}\nrelay:\n{relay.output()[-3000:]}"
                assert line.groups() == (suite, "TLSv1.3"), line.group(0)
                match = proxy.wait_line(established_re(relay.endpoint), wait)
                assert match and match.groups() == ("TLSv1.3", TLS13_SUITES[suite]), proxy.describe()
            assert relay.wait(r"^paired$", wait), relay.output()
            deadline = time.monotonic() + wait
            while not bench.listening(source_port):
                assert source.proc.poll() is None and time.monotonic() < deadline, source.describe()
                time.sleep(0.05)
            result = traffic.Load(source_port, "random").transfer("both", size, 1, [0])
            assert not result["errors"], f"{result['errors']}\n{source.describe()}\n{destination.describe()}"
            assert result["bytes"] == 2 * size
            assert destination.terminate(wait) == EXIT_NORMAL, destination.describe()
            # The relay then closes the source's tunnel (code 1000), after which the source
            # exits by itself; a SIGTERM sent while it already exits could meet it without
            # its handler (seen under qemu), so it gets one only if it is still running.
            code = source.wait_exit(wait)
            if code is None:
                code = source.terminate(wait)
            assert code == EXIT_NORMAL, source.describe()
    finally:
        relay.stop()
        sink.listener.close()


def serve_until_closed(sink: traffic.Sink) -> None:
    try:
        sink.serve()
    except OSError:
        pass  # the test closed the listener
