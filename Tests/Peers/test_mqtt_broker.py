"""The MQTT broker fixture (mqtt_broker.py) against the real mosquitto, and the rules it enforces.

The MQTT agent's end-to-end tests rely on this broker behaving as AWS IoT Core does for a
gateway: only certificates of the right CA get in, the certificate's CN is the identity, a device
reads only its own `$aws/things/THING/tunnels/notify`, and only the tunneling service publishes
there. These tests pin what mosquitto 2.0 (Debian 12) actually does in each case, so that a
change of broker version or configuration that loosens a rule fails here first.

Nothing here sleeps: a message that must not arrive is shown absent by one that must arrive
after it on the same connection (the broker routes a QoS 1 PUBLISH to every subscriber before it
sends the PUBACK, and one connection delivers in order).
"""

from __future__ import annotations

import os
import pickle
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap

import pytest

from mqtt_broker import (
    PEERS_DIR,
    WAIT,
    BrokerError,
    Mosquitto,
    MqttRefused,
    mqtt_broker,  # noqa: F401  (a fixture, used by name)
    mqtt_pki,  # noqa: F401  (a fixture, used by name)
    notify_payload,
    notify_topic,
    require_mosquitto,
    tls_handshake,
)


def test_a_device_receives_a_qos1_notification_published_by_the_tunneling_service(mqtt_broker):
    gw1 = mqtt_broker.subscriber("gw1")
    service = mqtt_broker.publisher()
    sent = service.publish_notify("gw1", "token-for-gw1")

    got = gw1.next_message()
    assert (got.topic, got.payload, got.qos, got.retain, got.dup) == (
        "$aws/things/gw1/tunnels/notify", sent, 1, False, False)
    assert got.json() == {"clientAccessToken": "token-for-gw1", "clientMode": "destination",
                          "region": "us-east-1", "services": ["SSH"]}
    # The identity the broker used is the certificate's CN, not anything the client said.
    assert mqtt_broker.wait_log(rf"New client connected from .* as {re.escape(gw1.client_id)} "
                                r"\(p2, c1, k60, u'gw1'\)", 0), mqtt_broker.log()


def test_the_tunneling_service_reaches_each_device_only_on_its_own_topic(mqtt_broker):
    gw1 = mqtt_broker.subscriber("gw1")
    gw2 = mqtt_broker.subscriber("gw2")
    service = mqtt_broker.publisher()
    service.publish_notify("gw2", "for-gw2", services=["SSH", "RDP"])
    service.publish_notify("gw1", "for-gw1")

    assert gw1.next_message().json()["clientAccessToken"] == "for-gw1"
    got = gw2.next_message()
    assert got.json() == {"clientAccessToken": "for-gw2", "clientMode": "destination",
                          "region": "us-east-1", "services": ["SSH", "RDP"]}


def test_a_device_subscribing_to_another_devices_topic_is_granted_but_never_served(mqtt_broker):
    # mosquitto 2.0's acl_file does not check SUBSCRIBE: the SUBACK grants QoS 1 (not 0x80), and
    # the read rule is applied to each message instead, which is never sent to gw1. (IoT Core
    # answers a subscription its policy refuses differently; the agent must not rely on either.)
    gw1 = mqtt_broker.subscriber("gw1")
    assert gw1.subscribe(notify_topic("gw2"), 1) == 1
    service = mqtt_broker.publisher()
    service.publish_notify("gw2", "for-gw2")
    service.publish_notify("gw1", "for-gw1")

    assert gw1.next_message().json()["clientAccessToken"] == "for-gw1"
    assert gw1.events.messages.empty()


def test_a_device_cannot_publish_a_notification(mqtt_broker):
    gw2 = mqtt_broker.subscriber("gw2")
    gw1 = mqtt_broker.client(mqtt_broker.pki.devices["gw1"])
    gw1.connect()
    # MQTT 3.1.1 has no way to refuse a PUBLISH: the PUBACK comes (rc135 is only in the log) and
    # the message is dropped.
    gw1.publish(notify_topic("gw2"), notify_payload("forged"), 1)
    # The log line is read from the broker's stderr by another thread: wait for it (the PUBACK
    # may reach us before that thread has read the line).
    assert mqtt_broker.wait_log(rf"Denied PUBLISH from {re.escape(gw1.client_id)} .*"
                                r"'\$aws/things/gw2/tunnels/notify'"), mqtt_broker.log()
    mqtt_broker.publisher().publish_notify("gw2", "genuine")

    assert gw2.next_message().json()["clientAccessToken"] == "genuine"


def test_the_tunneling_service_reads_no_device_topic(mqtt_broker):
    gw1 = mqtt_broker.subscriber("gw1")
    service = mqtt_broker.publisher()
    assert service.subscribe(notify_topic("gw1"), 1) == 1
    assert service.subscribe(notify_topic("+"), 1) == 1
    service.publish_notify("gw1", "for-gw1")

    assert gw1.next_message().json()["clientAccessToken"] == "for-gw1"
    # The PUBACK came after the broker had routed the message to every subscriber, on the same
    # connection as any copy for the service would have: there was none.
    assert service.events.messages.empty()


def test_wildcards_at_the_first_level_do_not_match_aws_topics(mqtt_broker):
    # MQTT 3.1.1 section 4.7.2: `#` and `+` at the start of a filter do not match topics that
    # begin with `$`, so the agent must subscribe to `$aws/...` itself. Within `$aws/...` a
    # wildcard works as on any topic (the tunneling service's ACL relies on that).
    gw1 = mqtt_broker.subscriber("gw1", "#")
    assert gw1.subscribe("+/things/gw1/tunnels/notify", 1) == 1
    service = mqtt_broker.publisher()
    service.publish_notify("gw1", "unseen")
    assert gw1.subscribe("$aws/things/gw1/tunnels/+", 1) == 1
    service.publish_notify("gw1", "seen")

    assert gw1.next_message().json()["clientAccessToken"] == "seen"
    assert gw1.events.messages.empty()


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_a_client_without_a_certificate_is_refused_in_the_tls_handshake(mqtt_broker, version):
    if version == "TLSv1.2":
        # The host build's mbedTLS 2.28 speaks TLS 1.2: the handshake itself fails.
        with pytest.raises(ssl.SSLError, match="SSLV3_ALERT_HANDSHAKE_FAILURE"):
            tls_handshake(mqtt_broker, None, max_version=ssl.TLSVersion.TLSv1_2)
    else:
        # In TLS 1.3 the client finishes first; the broker's alert is the first thing it reads.
        with tls_handshake(mqtt_broker, None) as sock:
            assert sock.version() == "TLSv1.3"
            with pytest.raises(ssl.SSLError, match="TLSV13_ALERT_CERTIFICATE_REQUIRED"):
                sock.recv(1)
    assert mqtt_broker.wait_log(r"peer did not return a certificate"), mqtt_broker.log()
    _assert_mqtt_client_refused(mqtt_broker, None, version)


def _assert_mqtt_client_refused(broker, identity, version):
    """An MQTT client never gets a CONNACK: in TLS 1.2 its connect fails, in TLS 1.3 the broker
    closes the connection that the client thought open."""
    if version == "TLSv1.2":
        client = broker.client(identity, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(MqttRefused, match="TLS or TCP refused"):
            client.connect()
    else:
        client = broker.client(identity)
        with pytest.raises(MqttRefused, match="the broker closed the connection before CONNACK"):
            client.connect()


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_a_certificate_from_another_ca_is_refused_in_the_tls_handshake(mqtt_broker, version):
    stranger = mqtt_broker.pki.stranger
    assert stranger.name == "gw1", "the stranger has a device's name: only its issuer is wrong"
    if version == "TLSv1.2":
        with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_UNKNOWN_CA"):
            tls_handshake(mqtt_broker, stranger, max_version=ssl.TLSVersion.TLSv1_2)
    else:
        with tls_handshake(mqtt_broker, stranger) as sock:
            with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_UNKNOWN_CA"):
                sock.recv(1)
    assert mqtt_broker.wait_log(r"certificate verify failed"), mqtt_broker.log()
    _assert_mqtt_client_refused(mqtt_broker, stranger, version)
    assert not mqtt_broker.wait_log(r"u'gw1'", 0), mqtt_broker.log()


def test_a_tls12_only_client_gets_in_as_the_device_build_will(mqtt_broker):
    gw1 = mqtt_broker.subscriber("gw1", max_version=ssl.TLSVersion.TLSv1_2)
    assert gw1.tls_version == "TLSv1.2"
    mqtt_broker.publisher().publish_notify("gw1", "over-tls12")
    assert gw1.next_message().json()["clientAccessToken"] == "over-tls12"


def test_a_restart_keeps_the_port_and_a_client_reconnects(mqtt_broker):
    port = mqtt_broker.port
    gw1 = mqtt_broker.subscriber("gw1")
    mqtt_broker.restart()

    assert mqtt_broker.port == port
    assert mqtt_broker.wait_log(rf"Opening ipv4 listen socket on port {port}\.", 0), mqtt_broker.log()
    assert gw1.wait_disconnected(), "the client did not see its connection end when the broker stopped"
    # A clean session, as the broker's memory is gone too: the client subscribes again.
    assert gw1.connect() is False
    assert gw1.subscribe(notify_topic("gw1"), 1) == 1
    mqtt_broker.publisher().publish_notify("gw1", "after-restart")
    assert gw1.next_message().json()["clientAccessToken"] == "after-restart"


def test_a_persistent_session_gets_what_was_published_while_offline_across_a_restart(mqtt_pki, tmp_path):
    # IoT Core keeps a persistent session's subscriptions and queues QoS 1 messages while the
    # device is away; with `persistence` mosquitto does the same, also across its own restart.
    require_mosquitto()
    with Mosquitto(mqtt_pki, tmp_path, persistence=True) as broker:
        gw1 = broker.client(mqtt_pki.devices["gw1"], client_id="gw1-agent", clean_session=False)
        assert gw1.connect() is False
        assert gw1.subscribe(notify_topic("gw1"), 1) == 1
        gw1.disconnect()
        broker.publisher().publish_notify("gw1", "queued-while-away")
        broker.restart()

        assert gw1.connect() is True
        got = gw1.next_message()
        assert (got.topic, got.qos) == (notify_topic("gw1"), 1)
        assert got.json()["clientAccessToken"] == "queued-while-away"
    assert broker.process.returncode == 0, broker.log()


def test_a_broker_that_cannot_start_reports_why_with_its_log(mqtt_pki, tmp_path):
    require_mosquitto()
    broker = Mosquitto(mqtt_pki, tmp_path)
    with broker:
        port = broker.port
        broker.stop()
        with socket.socket() as squatter:
            squatter.bind((broker.host, port))
            squatter.listen()
            with pytest.raises(BrokerError) as error:
                broker.start()
    text = str(error.value)
    assert f"did not start on 127.0.0.1:{port}" in text
    assert "Address already in use" in text
    assert not broker.alive


def test_a_killed_test_process_leaves_no_broker_behind(mqtt_pki, tmp_path):
    # The fixtures stop the broker at the end of every test, also a failed one; if the test
    # process itself is killed, no teardown runs, and the broker must go by itself.
    require_mosquitto()
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import pickle, sys
            sys.path.insert(0, {str(PEERS_DIR)!r})
            from pathlib import Path
            from mqtt_broker import Mosquitto
            broker = Mosquitto(pickle.loads(sys.stdin.buffer.read()), Path({str(tmp_path)!r})).start()
            print(broker.process.pid, flush=True)
            sys.stdout.close()
            import threading
            threading.Event().wait()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdin.write(pickle.dumps(mqtt_pki))
        child.stdin.close()
        ready, _, _ = select.select([child.stdout], [], [], WAIT)
        assert ready, "the child did not start a broker"
        pid = int(child.stdout.readline())
        broker_fd = os.pidfd_open(pid)
    finally:
        child.kill()
        child.wait(WAIT)
    try:
        ready, _, _ = select.select([broker_fd], [], [], WAIT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        assert ready, f"mosquitto (pid {pid}) outlived the killed process that started it"
    finally:
        os.close(broker_fd)


# mbedTLS reads the device's key and certificate; this is the check the host build's library
# (Debian 12: mbedTLS 2.28) makes of them, compiled against the system headers.
_MBEDTLS_CHECK = r"""
#include <stdio.h>
#include <mbedtls/pk.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    mbedtls_pk_context key;
    mbedtls_x509_crt cert;
    mbedtls_pk_init(&key);
    mbedtls_x509_crt_init(&cert);
    int parsed_key = mbedtls_pk_parse_keyfile(&key, argv[1], NULL);
    int parsed_cert = mbedtls_x509_crt_parse_file(&cert, argv[2]);
    int pair = parsed_key == 0 && parsed_cert == 0 ? mbedtls_pk_check_pair(&cert.pk, &key) : -1;
    printf("mbedtls=%s key=%d cert=%d pair=%d type=%s\n", MBEDTLS_VERSION_STRING, parsed_key, parsed_cert,
           pair, parsed_key == 0 ? mbedtls_pk_get_name(&key) : "none");
    return parsed_key != 0 || parsed_cert != 0 || pair != 0;
}
"""


def test_the_keys_are_in_a_format_mbedtls_reads(mqtt_pki, tmp_path):
    swiftc = shutil.which("swiftc")
    toolchain_clang = os.path.join(os.path.dirname(os.path.realpath(swiftc)), "clang") if swiftc else None
    compiler = shutil.which("cc") or shutil.which("clang") or (toolchain_clang if toolchain_clang
                                                              and os.access(toolchain_clang, os.X_OK) else None)
    assert compiler, "no C compiler (cc, clang, or the Swift toolchain's clang) to build the mbedTLS check"
    source, program = tmp_path / "check.c", tmp_path / "check"
    source.write_text(_MBEDTLS_CHECK)
    built = subprocess.run([compiler, str(source), "-o", str(program), "-lmbedx509", "-lmbedcrypto"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"building the mbedTLS check failed (libmbedtls-dev?): {built.stderr}"
    identities = [*mqtt_pki.devices.values(), mqtt_pki.publisher]
    for identity in identities:
        assert identity.key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n"), "not unencrypted PKCS#8"
        done = subprocess.run([str(program), str(identity.key), str(identity.cert)],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, f"{identity.name}: {done.stdout}{done.stderr}"
        assert re.fullmatch(r"mbedtls=\S+ key=0 cert=0 pair=0 type=EC\n", done.stdout), done.stdout
