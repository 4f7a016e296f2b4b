"""The licence and the notices ship with the code, and the binary says where they are and
which TLS library and record-cipher code it runs."""

import re
import subprocess

from conftest import REPO_ROOT


def test_version_names_the_tls_backend_and_the_notices(localproxy):
    out = subprocess.run([localproxy, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"localproxy \d+\.\d+\.\d+", lines[0])
    tls = [line for line in lines if line.startswith("TLS: ")]
    assert len(tls) == 1, out.stdout
    assert re.fullmatch(r"TLS: mbedTLS \d+\.\d+\.\d+; AES-GCM: .+; ChaCha20-Poly1305: .+", tls[0]), tls[0]
    assert "Apache-2.0" in out.stdout and "NOTICES.md" in out.stdout and "LICENSE" in out.stdout


def test_the_licence_and_the_notices_are_in_the_tree():
    licence = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    notices = (REPO_ROOT / "NOTICES.md").read_text()
    # Every component the device builds link is named with its licence.
    for component, licence_name in [
        ("libuv", "MIT"),
        ("mbedTLS", "Apache-2.0"),
        ("Swift standard library", "Runtime Library Exception"),
        ("GNU C Library", "LGPL-2.1-or-later"),
        ("libgcc", "GCC Runtime Library Exception"),
        ("libsodium", "ISC"),
        ("Nettle", "LGPL-3.0-or-later"),
        ("OpenSSL", "Apache-2.0"),
    ]:
        rows = [line for line in notices.splitlines() if line.startswith("|") and component in line]
        assert rows, f"NOTICES.md has no row for {component}"
        assert any(licence_name in row for row in rows), f"{component} is not listed under {licence_name}"


def test_notices_name_the_releases_the_static_builds_use():
    """NOTICES.md must follow the Makefile when a library built for the static builds changes."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    notices = (REPO_ROOT / "NOTICES.md").read_text()
    version = re.search(r"^MBEDTLS_VERSION\s*:=\s*(\S+)", makefile, re.M).group(1)
    assert f"mbedTLS {version}" in notices
    sodium = re.search(r"^SODIUM_TARBALL\s*:=\s*libsodium_(\S+)\.orig", makefile, re.M).group(1)
    assert f"libsodium {sodium}" in notices
    nettle = re.search(r"^NETTLE_TARBALL\s*:=\s*nettle_(\S+)\.orig", makefile, re.M).group(1)
    assert f"Nettle {nettle}" in notices
    openssl = re.search(r"^OPENSSL_TARBALL\s*:=\s*openssl_(\S+)\.orig", makefile, re.M).group(1)
    assert f"OpenSSL {openssl}" in notices
    libuv = re.search(r"^LIBUV_VERSION\s*:=\s*(\S+)", makefile, re.M).group(1)
    assert f"libuv {libuv}" in notices
