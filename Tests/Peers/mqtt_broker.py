"""A real MQTT broker for the agent's tests: Debian's `mosquitto`, over mutual TLS, as AWS IoT Core.

On a gateway the MQTT agent connects to AWS IoT Core (MQTT 3.1.1 over TLS with a device
certificate), subscribes with QoS 1 to `$aws/things/THING/tunnels/notify` and opens a tunnel with
the token in each notification. Here mosquitto stands in for IoT Core, configured the way the
product relies on it:

* one TLS listener on 127.0.0.1 (a free port, kept across `restart()`), TLS 1.2 or later, that
  requires a client certificate from the test CA (`require_certificate`);
* the certificate's CN is the MQTT username (`use_identity_as_username`), no anonymous client,
  and an ACL file: each device (`gw1`, `gw2`) may only read its own notify topic, and
  `tunnel-service` (the emulator's identity) may only write the notify topics of every thing.

`make_broker_pki` makes the certificates with the openssl CLI (`tls_peers.Pki`) in a temporary
directory, so no key is ever committed: EC P-256 keys in unencrypted PKCS#8 PEM, which mbedTLS
2.28 reads (test_mqtt_broker.py checks that with the system's mbedTLS).

`MqttClient` is a paho-mqtt (2.x API) client speaking MQTT 3.1.1 as one identity; its events
(CONNACK, SUBACK, PUBACK, messages, disconnection) go to queues that tests wait on with timeouts.
`Mosquitto.subscriber(...)` and `Mosquitto.publisher()` give the two roles ready to use, and
`MqttClient.publish_notify(...)` publishes a notification as the tunneling service does.

Fixtures: `mqtt_pki` (one PKI per session) and `mqtt_broker` (a started broker per test, stopped
at the end, which must exit 0). Test modules import them by name, as with `start_emulator`.
Without mosquitto installed the tests that use the broker are skipped (`make deps` installs it),
except under CI, where that is a failure.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tls_peers import LineCollector, Pki, free_port

PEERS_DIR = Path(__file__).resolve().parent

# How long anything the broker or a client should do promptly may take before a test calls it
# a hang. The machines are small and busy, so this is generous.
WAIT = 20.0

HOST = "127.0.0.1"
DEVICES = ("gw1", "gw2")
PUBLISHER = "tunnel-service"
MISSING = "mosquitto is not installed: `make deps` installs it (Debian package mosquitto)"


def notify_topic(thing: str) -> str:
    """The topic on which AWS IoT Secure Tunneling publishes a thing's destination token."""
    return f"$aws/things/{thing}/tunnels/notify"


def notify_payload(token: str, *, mode: str = "destination", region: str = "us-east-1",
                   services: tuple[str, ...] | list[str] = ("SSH",)) -> bytes:
    """A notification as the tunneling service publishes it (the shape AWS documents)."""
    return json.dumps({"clientAccessToken": token, "clientMode": mode, "region": region,
                       "services": list(services)}).encode()


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A client certificate, its key, and the CN that the broker takes as the username."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class BrokerPki:
    """Everything the broker and its clients load.

    `ca` issued the broker's certificate (SAN 127.0.0.1 and localhost) and every identity in
    `devices` and `publisher`; `other_ca` is unrelated to the broker and issued `stranger`, whose
    CN is `gw1` too, so that a refusal of it is about the issuer, not the name.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    devices: dict[str, Identity]
    publisher: Identity
    other_ca: Path
    stranger: Identity


def make_broker_pki(directory: Path, devices: tuple[str, ...] = DEVICES) -> BrokerPki:
    """Make the test CA, the broker's certificate and the clients' in `directory` (EC P-256)."""
    pki = Pki(directory)
    ca = pki.root("mqtt-ca", "p256")
    server = pki.leaf("mqtt-broker", "p256", ca)

    def client(name: str, issuer) -> Identity:
        issued = pki.client(f"mqtt-client-{name}" if issuer is ca else f"mqtt-stranger-{name}", "p256", issuer, name)
        return Identity(name, issued.cert, issued.key)

    other_ca = pki.root("mqtt-other-ca", "p256")
    return BrokerPki(
        ca=ca.cert, server_cert=server.cert, server_key=server.key,
        devices={name: client(name, ca) for name in devices},
        publisher=client(PUBLISHER, ca),
        other_ca=other_ca.cert, stranger=client("gw1", other_ca),
    )


# --------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    """The mosquitto executable (in /usr/sbin, which a non-root PATH may lack), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class BrokerError(RuntimeError):
    """The broker did not start or stop as asked; the message carries its log."""


class Mosquitto:
    """One mosquitto broker configured as described in this module's docstring.

    `start()` picks a free port (kept by `restart()` and later `start()`s), writes the
    configuration, starts the broker and returns once it logs that it is running and has
    completed a TLS handshake (see `_wait_serving`). Its log
    (everything, packets included: `log_type all`) is collected from stderr, over every run.
    With `persistence`, sessions and queued QoS 1 messages are saved when the broker stops and
    restored when it starts again, as IoT Core keeps persistent sessions.
    """

    def __init__(self, pki: BrokerPki, directory: Path, *, persistence: bool = False):
        self.pki = pki
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.host = HOST
        self.port = 0
        self.conf_path = self.dir / "mosquitto.conf"
        self.acl_path = self.dir / "acl"
        self.process: subprocess.Popen | None = None
        self._logs: list[LineCollector] = []
        self._clients: list[MqttClient] = []

    # ---- configuration ---------------------------------------------------------------

    def acl_text(self) -> str:
        lines = [
            "# Written by Tests/Peers/mqtt_broker.py. The username is the client certificate's CN.",
            "# A device reads only its own notify topic; it may write nothing.",
        ]
        for name in self.pki.devices:
            lines += [f"user {name}", f"topic read {notify_topic(name)}", ""]
        lines += [
            "# The tunneling service publishes every thing's notifications and reads nothing.",
            f"user {PUBLISHER}", f"topic write {notify_topic('+')}", "",
        ]
        return "\n".join(lines)

    def config_text(self) -> str:
        # As root, mosquitto would switch to the `mosquitto` user, which cannot read the
        # certificates in pytest's private temporary directory: naming the current user keeps it.
        lines = [
            "# Written by Tests/Peers/mqtt_broker.py for one test; see that file.",
            f"user {getpass.getuser()}",
            "per_listener_settings true",
            "log_dest stderr",
            "log_type all",
            "log_timestamp true",
            "log_timestamp_format %H:%M:%S",
            "connection_messages true",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.dir}")
        lines += [
            "",
            f"listener {self.port} {self.host}",
            "protocol mqtt",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            # The minimum version (mosquitto 2): TLS 1.2 and 1.3, as IoT Core offers.
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            # A client is not anonymous when its certificate gave it a username, so this refuses
            # only a connection without one (none can pass require_certificate anyway).
            "allow_anonymous false",
            f"acl_file {self.acl_path}",
            "",
        ]
        return "\n".join(lines)

    # ---- process ---------------------------------------------------------------------

    def start(self, timeout: float = WAIT) -> "Mosquitto":
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError(MISSING)
        if self.alive:
            raise BrokerError(f"mosquitto is already running on port {self.port}")
        self.acl_path.write_text(self.acl_text())
        # A new port is picked only on the first start; if another process takes it between
        # free_port() and the broker's bind, another one is tried. A restart keeps its port.
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port()
            self.conf_path.write_text(self.config_text())
            command = [binary, "-c", str(self.conf_path)]
            # --pdeathsig: the broker ends with the test process even if that is killed and no
            # teardown runs (the signal follows the thread that started it: start from the
            # test's main thread, as the fixtures do).
            setpriv = shutil.which("setpriv")
            if setpriv:
                command = [setpriv, "--pdeathsig", "TERM", *command]
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
            log = LineCollector(self.process.stderr, f"mosquitto:{self.port} stderr")
            self._logs.append(log)
            if log.wait_for(re.compile(r"mosquitto version \S+ running"), timeout):
                self._wait_serving(timeout)
                return self
            self._terminate()
            if fixed or not re.search(r"Address already in use", log.text()):
                raise BrokerError(
                    f"mosquitto did not start on {self.host}:{self.port} within {timeout} s "
                    f"(exit {self.process.returncode}); configuration {self.conf_path}; its log:\n{log.text()}")
        raise BrokerError(f"mosquitto found no free port on {self.host}; last log:\n{self.log()}")

    def _wait_serving(self, timeout: float) -> None:
        """Return once the broker's main loop has served a TLS handshake.

        A SIGTERM sent right after mosquitto 2.0.11 logs "running" is sometimes lost (about 1
        in 40 here, more under load): its handler is installed before the main loop sets the
        flag that the handler clears. A broker stopped that early (a short test, or the end of
        the process that started it) would run on until killed. A TLS 1.2 handshake completes
        only once the main loop answers it. It leaves a connection without CONNECT in the log.
        """
        try:
            tls_handshake(self, self.pki.publisher, max_version=ssl.TLSVersion.TLSv1_2, timeout=timeout).close()
        except (OSError, ssl.SSLError) as error:
            self._terminate()
            raise BrokerError(f"mosquitto on {self.host}:{self.port} logged that it runs but refused a TLS "
                              f"handshake with a valid certificate: {error!r}; its log:\n{self.log()}") from error

    def _terminate(self, timeout: float = WAIT) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._logs:
            self._logs[-1].thread.join(timeout)
        return self.process.returncode

    def stop(self, timeout: float = WAIT) -> int | None:
        """Stop the broker with SIGTERM (SIGKILL after `timeout`); its exit status, None if not started."""
        return self._terminate(timeout)

    def restart(self, timeout: float = WAIT) -> "Mosquitto":
        """Stop the broker and start it again on the same port (clients see their connection drop)."""
        code = self.stop(timeout)
        if code not in (None, 0):
            raise BrokerError(f"mosquitto exited {code} when stopped for a restart; its log:\n{self.log()}")
        return self.start(timeout)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> int | None:
        """Disconnect every client made here, then stop the broker; its exit status."""
        for client in self._clients:
            client.close()
        return self.stop()

    # ---- log ---------------------------------------------------------------------------

    def log(self) -> str:
        """The broker's log of every run so far."""
        return "\n".join(f"--- run {i + 1}\n{log.text()}" for i, log in enumerate(self._logs))

    def wait_log(self, pattern: str | re.Pattern[str], timeout: float = WAIT) -> re.Match[str] | None:
        """The first line of the current run's log matching `pattern`, waiting up to `timeout`."""
        if isinstance(pattern, str):
            pattern = re.compile(pattern)
        return self._logs[-1].wait_for(pattern, timeout) if self._logs else None

    # ---- clients -----------------------------------------------------------------------

    def client_context(self, identity: Identity | None, *, ca: Path | None = None,
                       max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A TLS client context trusting `ca` (default: the test CA) and presenting `identity`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if max_version is not None:
            context.maximum_version = max_version
        context.load_verify_locations(ca or self.pki.ca)
        if identity is not None:
            context.load_cert_chain(identity.cert, identity.key)
        return context

    def client(self, identity: Identity | None, *, client_id: str | None = None, clean_session: bool = True,
               max_version: ssl.TLSVersion | None = None) -> "MqttClient":
        """A client of this broker (not yet connected), closed with the broker at the end."""
        made = MqttClient(self, identity, client_id=client_id, clean_session=clean_session,
                          context=self.client_context(identity, max_version=max_version))
        self._clients.append(made)
        return made

    def subscriber(self, identity: Identity | str, topic: str | None = None, *, qos: int = 1,
                   timeout: float = WAIT, **kwargs) -> "MqttClient":
        """A connected client of `identity` (or a device name) subscribed to `topic` (default:
        its notify topic) whose subscription the broker granted at `qos`."""
        if isinstance(identity, str):
            identity = self.pki.devices[identity]
        client = self.client(identity, **kwargs)
        client.connect(timeout)
        topic = topic or notify_topic(identity.name)
        granted = client.subscribe(topic, qos, timeout)
        assert granted == qos, f"{identity.name}: SUBSCRIBE {topic} QoS {qos} answered {granted:#04x}\n{self.log()}"
        return client

    def publisher(self, timeout: float = WAIT, **kwargs) -> "MqttClient":
        """A connected client with the tunneling service's identity."""
        client = self.client(self.pki.publisher, **kwargs)
        client.connect(timeout)
        return client


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One PUBLISH the broker delivered."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool

    def json(self):
        return json.loads(self.payload)


class MqttRefused(AssertionError):
    """The broker refused a connection (a TLS alert, a CONNACK code or a closed socket)."""


@dataclass
class _Events:
    # (return code, session present) per CONNACK; None when the connection ended.
    connack: "queue.Queue[tuple[int, bool] | None]" = field(default_factory=queue.Queue)
    suback: "queue.Queue[tuple[int, list[int]]]" = field(default_factory=queue.Queue)
    puback: "queue.Queue[int]" = field(default_factory=queue.Queue)
    messages: "queue.Queue[Received]" = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)


class MqttClient:
    """A paho-mqtt client (MQTT 3.1.1) with its network loop on a thread and its events in queues.

    paho-mqtt 2.x asks for the callback API version in its constructor; the 2.x signatures
    (reason codes as objects) are the ones used. It does not reconnect by itself: a test that
    wants a reconnection makes a new client or calls `connect` again.
    """

    def __init__(self, broker: Mosquitto, identity: Identity | None, *, client_id: str | None,
                 clean_session: bool, context: ssl.SSLContext):
        import paho.mqtt.client as paho

        if not hasattr(paho, "CallbackAPIVersion"):
            raise RuntimeError("paho-mqtt 2.x is required (Tests/Peers/requirements.txt pins it): run `make venv`")
        self.broker = broker
        self.identity = identity
        self.name = identity.name if identity else "no-certificate"
        self.client_id = client_id or f"{self.name}-{os.getpid()}-{id(self):x}"
        self.events = _Events()
        self._paho = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=clean_session, protocol=paho.MQTTv311, reconnect_on_failure=False)
        self._paho.tls_set_context(context)
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_publish = self._on_publish
        self._paho.on_message = self._on_message
        self._paho.on_disconnect = self._on_disconnect
        self._looping = False

    # paho's thread calls these.
    def _on_connect(self, _client, _userdata, flags, reason_code, _properties) -> None:
        self.events.connack.put((reason_code.value, bool(flags.session_present)))

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        self.events.suback.put((mid, [code.value for code in reason_codes]))

    def _on_publish(self, _client, _userdata, mid, _reason_code, _properties) -> None:
        self.events.puback.put(mid)

    def _on_message(self, _client, _userdata, message) -> None:
        self.events.messages.put(Received(message.topic, bytes(message.payload), message.qos,
                                          bool(message.retain), bool(message.dup)))

    def _on_disconnect(self, _client, _userdata, _flags, _reason_code, _properties) -> None:
        self.events.disconnected.set()
        self.events.connack.put(None)

    def _fail(self, what: str) -> str:
        return f"{self.name} ({self.client_id}): {what}\nbroker log:\n{self.broker.log()[-6000:]}"

    def connect(self, timeout: float = WAIT) -> bool:
        """Connect (TCP, TLS, CONNECT) and wait for CONNACK; whether the broker had a session.

        Raises MqttRefused with the reason when the TLS handshake fails, CONNACK refuses or the
        broker closes the connection first.
        """
        if self._looping:
            # A connection that ended also ended paho's thread (it does not reconnect by itself).
            self._paho.loop_stop()
            self._looping = False
        self.events.disconnected.clear()
        while not self.events.connack.empty():
            self.events.connack.get_nowait()
        try:
            self._paho.connect(self.broker.host, self.broker.port, keepalive=60)
        except (ssl.SSLError, OSError) as error:
            raise MqttRefused(self._fail(f"TLS or TCP refused: {error!r}")) from error
        self._paho.loop_start()
        self._looping = True
        try:
            connack = self.events.connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(self._fail(f"no CONNACK within {timeout} s")) from None
        if connack is None:
            raise MqttRefused(self._fail("the broker closed the connection before CONNACK"))
        code, session_present = connack
        if code != 0:
            raise MqttRefused(self._fail(f"CONNACK refused with code {code}"))
        return session_present

    def subscribe(self, topic: str, qos: int = 1, timeout: float = WAIT) -> int:
        """SUBSCRIBE one topic; the SUBACK return code (the granted QoS, or 0x80)."""
        result, mid = self._paho.subscribe(topic, qos)
        assert result == 0, self._fail(f"SUBSCRIBE {topic} not sent: {result}")
        try:
            acked, codes = self.events.suback.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(self._fail(f"no SUBACK for {topic} within {timeout} s")) from None
        assert acked == mid and len(codes) == 1, self._fail(f"SUBACK {acked} {codes} for SUBSCRIBE {mid}")
        return codes[0]

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = WAIT) -> None:
        """PUBLISH and, for QoS 1, wait for PUBACK (once it arrives the broker has routed it)."""
        info = self._paho.publish(topic, payload, qos)
        assert info.rc == 0, self._fail(f"PUBLISH {topic} not sent: {info.rc}")
        if qos == 0:
            return
        try:
            acked = self.events.puback.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(self._fail(f"no PUBACK for {topic} within {timeout} s")) from None
        assert acked == info.mid, self._fail(f"PUBACK {acked} for PUBLISH {info.mid}")

    def publish_notify(self, thing: str, token: str, timeout: float = WAIT, **fields) -> bytes:
        """Publish a tunnel notification for `thing` with QoS 1, as the tunneling service does;
        the payload sent. `fields`: mode, region, services (see notify_payload)."""
        payload = notify_payload(token, **fields)
        self.publish(notify_topic(thing), payload, 1, timeout)
        return payload

    def next_message(self, timeout: float = WAIT) -> Received:
        """The next message delivered, waiting up to `timeout`; a failure if none comes."""
        try:
            return self.events.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(self._fail(f"no message within {timeout} s")) from None

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the current connection (`TLSv1.2`, `TLSv1.3`), None if there is none."""
        sock = self._paho.socket()
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    def wait_disconnected(self, timeout: float = WAIT) -> bool:
        return self.events.disconnected.wait(timeout)

    def disconnect(self, timeout: float = WAIT) -> None:
        """Send DISCONNECT and wait until the connection is closed."""
        self._paho.disconnect()
        assert self.events.disconnected.wait(timeout), self._fail("DISCONNECT did not close the connection")

    def close(self) -> None:
        """Drop the connection (if any) and end the network thread."""
        if self._looping:
            self._paho.disconnect()
            self._paho.loop_stop()
            self._looping = False
        else:
            sock = self._paho.socket()
            if sock is not None:
                sock.close()


def tls_handshake(broker: Mosquitto, identity: Identity | None, *, ca: Path | None = None,
                  max_version: ssl.TLSVersion | None = None, timeout: float = WAIT) -> ssl.SSLSocket:
    """A raw TLS connection to the broker (no MQTT), for tests of what TLS itself refuses."""
    context = broker.client_context(identity, ca=ca, max_version=max_version)
    sock = socket.create_connection((broker.host, broker.port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=broker.host)
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def require_mosquitto() -> None:
    """Skip the test when mosquitto is missing; under CI (CI=true) fail instead, since CI must
    run the tests that need it."""
    if mosquitto_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)


@pytest.fixture(scope="session")
def mqtt_pki(tmp_path_factory) -> BrokerPki:
    """The broker's and clients' certificates, made once per test session."""
    return make_broker_pki(tmp_path_factory.mktemp("mqtt_pki"))


@pytest.fixture
def mqtt_broker(mqtt_pki, tmp_path_factory):
    """A running `Mosquitto` for one test; stopped at its end (also on failure), exiting 0."""
    require_mosquitto()
    broker = Mosquitto(mqtt_pki, tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker
    finally:
        code = broker.close()
    assert code in (None, 0), f"mosquitto exited {code}; its log:\n{broker.log()[-6000:]}"


# --------------------------------------------------------------------------------------
# As a program, for `make demo MQTT=1` (scripts/demo.sh)
# --------------------------------------------------------------------------------------


def serve(directory: Path, devices: tuple[str, ...]) -> None:
    """Make the PKI and start the broker as the tests do; print what its clients need, one
    `word value...` line each (`port`, `ca`, `device NAME CERT KEY`, `publisher CERT KEY`,
    then `ready`), and run until SIGTERM or SIGINT."""
    import signal
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    pki = make_broker_pki(directory / "pki", devices)
    broker = Mosquitto(pki, directory / "broker").start()
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    lines = [f"port {broker.port}", f"ca {pki.ca}"]
    lines += [f"device {name} {identity.cert} {identity.key}" for name, identity in pki.devices.items()]
    lines += [f"publisher {pki.publisher.cert} {pki.publisher.key}", "ready"]
    print("\n".join(lines), flush=True)
    while not stop.wait(0.5):
        if not broker.alive:
            sys.stderr.write(f"mosquitto stopped; its log:\n{broker.log()[-3000:]}\n")
            sys.exit(1)
    broker.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A mosquitto broker over mutual TLS, with one identity per device.")
    parser.add_argument("directory", type=Path, help="where the certificates, configuration and state go")
    parser.add_argument("--device", action="append", required=True, help="a thing name (repeat for several)")
    arguments = parser.parse_args()
    serve(arguments.directory, tuple(arguments.device))
