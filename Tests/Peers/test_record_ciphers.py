"""Checksummed transfers through each TLS 1.2 record cipher the proxy offers.

The service here is Python's ssl module (OpenSSL) with one suite pinned per case, and the
proxy runs in destination mode: 4 MiB go device -> source and 4 MiB source -> device, and
both SHA-256 digests must match. Each case runs twice: with the AEAD path this CPU takes, and
with LOCALPROXY_AEAD=portable, which makes a build with an accelerated AEAD (cross/aead/) use
mbedTLS's own code instead. For a binary without one, both runs take the same path.

LOCALPROXY picks the binary (the host build by default; `make test-embedded` runs this file
with the Embedded x86_64 static build, the one with libsodium's ChaCha20-Poly1305).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from local_services import PatternServer, SinkServer, pattern_blocks
from test_destination import attach, new_service, run, running_proxy

MIB = 1 << 20
TOTAL = 4 * MIB

# OpenSSL's name of each suite (the test certificates are ECDSA P-256) and mbedTLS's.
SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256",
}


@pytest.fixture(params=["as-the-cpu-allows", "portable"])
def aead_path(request, monkeypatch):
    if request.param == "portable":
        monkeypatch.setenv("LOCALPROXY_AEAD", "portable")
    else:
        monkeypatch.delenv("LOCALPROXY_AEAD", raising=False)
    return request.param


@pytest.mark.parametrize("suite", list(SUITES))
def test_transfer_both_ways(localproxy, tunnel_certs, pb, aead_path, suite):
    async def scenario():
        async with PatternServer(TOTAL, seed=5) as device, SinkServer() as sink, \
                new_service(pb, tunnel_certs, service_ids=("SSH", "WEB"), ciphers=suite) as service:
            async with running_proxy(localproxy, service, f"SSH={device.port},WEB={sink.port}") as proxy:
                line = proxy.lines[await proxy.wait_line("TLS established with ")]
                established = re.search(r"TLS established with \S+: (\S+) (\S+)", line)
                assert established, line
                assert established.group(1) == "TLSv1.2", line
                assert established.group(2) == SUITES[suite], line
                peer = await attach(service, proxy)
                # Device -> source: the pattern server's bytes, hashed on arrival.
                key = peer.key(1, 1, service_id="SSH")
                peer.hash_data(key)
                await peer.start_stream(1, service_id="SSH")
                digest = await peer.wait_hashed(key, TOTAL, timeout=120.0)
                assert digest == device.digests[1]
                # Source -> device: blocks sent to the sink, hashed on both ends.
                await peer.start_stream(2, service_id="WEB")
                sent = await peer.send_blocks(2, pattern_blocks(9, TOTAL), service_id="WEB")
                await sink.wait_received(0, TOTAL, timeout=120.0)
                assert sink.connections[0].digest.hexdigest() == sent
                service.assert_clean()

    run(scenario(), timeout=240.0)


def test_version_names_the_aead_path(localproxy):
    """A build with an accelerated AEAD says which code runs for each, and that the switch works."""
    def version(env_value):
        env = {k: v for k, v in os.environ.items() if k != "LOCALPROXY_AEAD"}
        if env_value is not None:
            env["LOCALPROXY_AEAD"] = env_value
        out = subprocess.run([localproxy, "--version"], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        found = re.search(r"AES-GCM: (.+); ChaCha20-Poly1305: (.+)", out.stdout)
        assert found, out.stdout
        return {"AES-GCM": found.group(1), "ChaCha20-Poly1305": found.group(2)}

    default = version(None)
    forced = version("portable")
    accelerated = [aead for aead, text in default.items() if not text.startswith("mbedTLS portable C")]
    for aead in default:
        if aead in accelerated:
            assert forced[aead] == "mbedTLS portable C (forced by LOCALPROXY_AEAD=portable)", (aead, forced)
        else:
            # Portable already (no such code in the build, or not for this CPU): it stays portable.
            assert forced[aead].startswith("mbedTLS portable C"), (aead, forced)
    if not accelerated:
        pytest.skip(f"this binary has no accelerated AEAD on this CPU ({default})")
