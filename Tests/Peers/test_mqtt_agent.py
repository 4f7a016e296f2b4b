"""Agent mode end to end: tokens delivered over MQTT, as AWS IoT does, with no cloud.

Debian's `mosquitto` stands in for AWS IoT Core (mqtt_broker.py: TLS, required client
certificates from a test CA, an ACL that limits each device to its own notify topic). The
`tunnel-service` emulator publishes each destination token to it with QoS 1, as the service
does, when a tunnel is opened (or rotated) with a thing name. The device side is `localproxy`
in agent mode (`--mqtt-endpoint --thing-name --cert --key`); the laptop side is a source
`localproxy` with the source token in a file. Local echo servers play the device's services.

What is checked, at the ends as a user would see it: the AWS CLI opens a tunnel for thing gw1
with two services and both answer through the tunnel; a rotation makes the agent replace its
session with the new token; a broker restart makes the agent reconnect and subscribe again
without touching the running tunnel, and the next notification still arrives; a malformed
notification is logged and ignored; a redelivered notification does not restart the session;
a notification for services `-d` does not map is refused; a broker whose certificate does not
chain to `-c` makes the agent exit 3; SIGHUP reloads the device certificate (and keeps it when
the new key does not load), SIGUSR1 reports; the token never appears in the log. (What the ACLs allow
each identity is checked against the same broker in test_mqtt_broker.py: mosquitto grants a
subscription outside the ACL and then delivers nothing on it.)

Waits are on log lines and byte counts with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import shutil
import uuid
from pathlib import Path

import pytest

from emulator import start_emulator  # noqa: F401  (a fixture, used by name)
from local_services import EchoServer
from mqtt_broker import mqtt_broker, mqtt_pki, notify_payload, notify_topic  # noqa: F401  (fixtures)
from whole_tunnel import LISTENING_RE, WAIT, LoggedProcess, connect, kill_and_show, write_token

THING = "gw1"


def run(scenario, timeout: float = 180.0):
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


def private_copy(source: Path, directory: Path) -> Path:
    """The device key as the agent demands it: a file only its user can read."""
    target = directory / source.name
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)
    return target


class AgentRig:
    """The emulator publishing to the broker, an agent for one thing, and a source proxy."""

    def __init__(self, start_emulator, broker, localproxy: str, workdir: Path, identity: str = THING,  # noqa: F811
                 thing: str = THING):
        self.broker = broker
        self.localproxy = localproxy
        self.workdir = workdir
        pki = broker.pki
        publisher = pki.publisher
        self.emulator = start_emulator("--mqtt-broker", f"{broker.host}:{broker.port}", "--mqtt-ca", str(pki.ca),
                                       "--mqtt-cert", str(publisher.cert), "--mqtt-key", str(publisher.key))
        device = pki.devices[identity]
        self.device_cert = device.cert
        self.device_key = private_copy(device.key, workdir)
        self.thing = thing
        self.agent: LoggedProcess | None = None
        self.source: LoggedProcess | None = None
        self.processes: list[LoggedProcess] = []
        self.source_token = workdir / "source.token"
        self.tunnel_id = ""
        self.tokens_seen: list[str] = []

    def env(self) -> dict:
        return {k: v for k, v in os.environ.items()
                if not k.startswith("AWSIOT_TUNNEL_") and k.lower() not in ("https_proxy", "no_proxy")}

    async def start_agent(self, mapping: str, *extra: str, wait: bool = True) -> LoggedProcess:
        argv = [self.localproxy, "--mqtt-endpoint", f"{self.broker.host}:{self.broker.port}",
                "--thing-name", self.thing, "--cert", str(self.device_cert), "--key", str(self.device_key),
                "-c", f"{self.emulator.ca},{self.broker.pki.ca}",
                "-e", f"{self.emulator.data_host}:{self.emulator.data_port}",
                "-d", mapping, "--reconnect-delay-max-ms", "1000", "-v", "5", *extra]
        self.agent = LoggedProcess("agent", argv, self.env())
        self.processes.append(self.agent)
        await self.agent.start()
        if wait:
            await self.agent.wait_line(f"subscribed to {notify_topic(self.thing)}")
        return self.agent

    def open_tunnel(self, services: list[str]) -> dict:
        """With the AWS CLI, as a user would: the emulator publishes the destination token."""
        opened = self.emulator.aws("open-tunnel", "--destination-config",
                                   f"thingName={self.thing},services={','.join(services)}")
        self.tunnel_id = opened["tunnelId"]
        self.tokens_seen += [opened["destinationAccessToken"], opened["sourceAccessToken"]]
        write_token(self.source_token, opened["sourceAccessToken"])
        return opened

    def rotate(self, services: list[str]) -> dict:
        rotated = self.emulator.aws("rotate-tunnel-access-token", "--tunnel-id", self.tunnel_id, "--client-mode", "ALL",
                                    "--destination-config", f"thingName={self.thing},services={','.join(services)}")
        self.tokens_seen += [rotated["destinationAccessToken"], rotated["sourceAccessToken"]]
        write_token(self.source_token, rotated["sourceAccessToken"])
        return rotated

    async def start_source(self, services: list[str]) -> dict[str, int]:
        mapping = ",".join(f"{s}=" for s in services)
        argv = [self.localproxy, "-e", f"{self.emulator.data_host}:{self.emulator.data_port}", "-c", self.emulator.ca,
                "-s", mapping, "--access-token-file", str(self.source_token), "-i", str(uuid.uuid4()),
                "--reconnect-delay-max-ms", "1000"]
        self.source = LoggedProcess("source", argv, self.env())
        self.processes.append(self.source)
        await self.source.start()
        ports = {}
        for service in services:
            line = await self.source.wait_line(f"listening for service {service} on ")
            match = LISTENING_RE.search(line)
            assert match and match.group(1) == service, f"unexpected listening line: {line!r}"
            ports[service] = int(match.group(2))
        return ports

    async def cleanup(self) -> None:
        await kill_and_show(self.processes)
        print("==== tunnel-service stderr (tail)")
        print(self.emulator.stderr()[-4000:])
        print("==== mosquitto log (tail)")
        print(self.broker.log()[-4000:])

    def assert_no_token_logged(self) -> None:
        for proc in self.processes:
            text = "\n".join(proc.lines)
            for token in self.tokens_seen:
                assert token not in text, f"{proc.name} logged an access token"


@contextlib.asynccontextmanager
async def rig(start_emulator, broker, localproxy, workdir, **kwargs):  # noqa: F811
    r = AgentRig(start_emulator, broker, localproxy, workdir, **kwargs)
    try:
        yield r
    finally:
        await r.cleanup()


async def exchange(port: int, echo: EchoServer, text: bytes) -> None:
    """A line through the tunnel to `echo` and its exact answer back."""
    reader, writer = await connect(port)
    writer.write(text)
    expected = echo.reply_for(text)
    got = await asyncio.wait_for(reader.readexactly(len(expected)), WAIT)
    assert got == expected
    writer.close()


def publish_raw(broker, thing: str, payload: bytes) -> None:
    """A message on the thing's notify topic as the service's identity, waiting for its PUBACK."""
    client = broker.publisher()
    try:
        client.publish(notify_topic(thing), payload, qos=1)
    finally:
        client.close()


# ==========================================================================================


def test_open_rotate_restart_and_close(start_emulator, mqtt_broker, localproxy, tmp_path):  # noqa: F811
    """The whole flow of issue 12: AWS CLI open-tunnel with thingName and two services, the agent
    connects the destination and both services answer; a rotation replaces the session; the
    broker restarts under a running tunnel; close-tunnel ends the session, the agent goes on."""

    async def scenario():
        async with EchoServer("SSH") as ssh, EchoServer("HTTP") as http, \
                rig(start_emulator, mqtt_broker, localproxy, tmp_path) as r:
            agent = await r.start_agent(f"SSH={ssh.endpoint},HTTP={http.endpoint}")
            assert agent.find("ALPN") is None, "ALPN is for port 443 only"
            r.open_tunnel(["SSH", "HTTP"])
            await agent.wait_line("starting tunnel session 1")
            await agent.wait_line("connected to wss://")
            ports = await r.start_source(["SSH", "HTTP"])
            await exchange(ports["SSH"], ssh, b"hello ssh\n")
            await exchange(ports["HTTP"], http, b"GET / over the tunnel\n")

            # Rotation: the emulator closes the old connections and publishes the new token.
            mark, source_mark = agent.mark(), r.source.mark()
            r.rotate(["SSH", "HTTP"])
            await agent.wait_line("starting tunnel session 2", start=mark)
            await agent.wait_line("connected to wss://", start=mark)
            await r.source.wait_line("new access token", start=source_mark)
            await r.source.wait_line("connected to wss://", start=source_mark)
            await exchange(ports["SSH"], ssh, b"after rotation\n")

            # The broker goes away and comes back on the same port: the agent reconnects and
            # subscribes again; the tunnel itself is not touched.
            mark = agent.mark()
            mqtt_broker.restart()
            await agent.wait_line("MQTT connection ended", start=mark)
            await agent.wait_line(f"subscribed to {notify_topic(THING)}", start=mark)
            assert agent.find("starting tunnel session 3", mark) is None
            await exchange(ports["HTTP"], http, b"after the broker restart\n")
            # ...and notifications still arrive.
            mark, source_mark = agent.mark(), r.source.mark()
            r.rotate(["SSH", "HTTP"])
            await agent.wait_line("starting tunnel session 3", start=mark)
            await agent.wait_line("connected to wss://", start=mark)
            await r.source.wait_line("connected to wss://", start=source_mark)
            await exchange(ports["SSH"], ssh, b"after the second rotation\n")

            # The tunnel closes: the session ends, the agent keeps listening; SIGTERM ends it.
            mark = agent.mark()
            r.emulator.aws("close-tunnel", "--tunnel-id", r.tunnel_id)
            await agent.wait_line("tunnel session 3 ended; waiting for the next notification", start=mark)
            assert await r.source.wait_exit() == 0
            assert agent.returncode is None, "the agent must outlive the tunnel"
            agent.proc.send_signal(signal.SIGTERM)
            assert await agent.wait_exit() == 0
            r.assert_no_token_logged()
            # The service's identity published each token once and the broker delivered it.
            assert r.emulator.stderr().count("the broker acknowledged the notification for thing gw1") == 3

    run(scenario())


def test_bad_duplicate_and_unmapped_notifications(start_emulator, mqtt_broker, localproxy, tmp_path):  # noqa: F811
    """Malformed JSON is logged and ignored; the same token again does not restart a healthy
    session; services that -d does not map are refused without touching the running session."""

    async def scenario():
        async with EchoServer("SSH") as ssh, rig(start_emulator, mqtt_broker, localproxy, tmp_path) as r:
            agent = await r.start_agent(f"SSH={ssh.endpoint}")
            for payload, expected in [
                (b"{not json", "cannot be used"),
                (b'{"clientMode":"destination","region":"us-east-1","services":["SSH"]}', "clientAccessToken"),
                (notify_payload("AQGAAXiSomeToken0123456789", services=["SSH", "SSH"] * 2), "services"),
            ]:
                mark = agent.mark()
                publish_raw(mqtt_broker, THING, payload)
                line = await agent.wait_line("ignoring", start=mark)
                assert expected in line, line
            assert agent.find("starting tunnel session") is None

            opened = r.open_tunnel(["SSH"])
            await agent.wait_line("connected to wss://")
            ports = await r.start_source(["SSH"])
            await exchange(ports["SSH"], ssh, b"one\n")

            # The same notification again (as a QoS 1 redelivery would bring it).
            mark = agent.mark()
            publish_raw(mqtt_broker, THING, notify_payload(opened["destinationAccessToken"], services=["SSH"]))
            await agent.wait_line("nothing to do", start=mark)
            # A tunnel for a service this device does not serve.
            mark = agent.mark()
            publish_raw(mqtt_broker, THING, notify_payload("AQGAAXiAnotherToken0123456789", services=["VNC"]))
            line = await agent.wait_line("ignoring the notification for services [VNC]", start=mark)
            assert "-d" in line
            assert agent.find("starting tunnel session 2") is None
            await exchange(ports["SSH"], ssh, b"still the first session\n")
            r.tokens_seen.append("AQGAAXiAnotherToken0123456789")
            r.assert_no_token_logged()

    run(scenario())


def test_broker_certificate_from_an_unknown_ca_exits_3(start_emulator, mqtt_broker, localproxy, tmp_path):  # noqa: F811
    """A broker whose certificate does not chain to -c is not talked to: exit code 3."""

    async def scenario():
        async with EchoServer("SSH") as ssh, rig(start_emulator, mqtt_broker, localproxy, tmp_path) as r:
            argv = [localproxy, "--mqtt-endpoint", f"{mqtt_broker.host}:{mqtt_broker.port}", "--thing-name", THING,
                    "--cert", str(r.device_cert), "--key", str(r.device_key), "-c", str(mqtt_broker.pki.other_ca),
                    "-d", f"SSH={ssh.endpoint}"]
            agent = LoggedProcess("agent", argv, r.env())
            r.processes.append(agent)
            await agent.start()
            assert await agent.wait_exit() == 3
            assert agent.find("the MQTT broker's TLS certificate was not accepted") is not None

    run(scenario())


def test_signals_reload_the_certificate_and_report(start_emulator, mqtt_broker, localproxy, tmp_path):  # noqa: F811
    """SIGHUP loads --cert/--key again and reconnects to the broker (a renewed certificate); an
    unusable key keeps the current one; SIGUSR1 reports the agent and its session in one line."""

    async def scenario():
        async with EchoServer("SSH") as ssh, rig(start_emulator, mqtt_broker, localproxy, tmp_path) as r:
            agent = await r.start_agent(f"SSH={ssh.endpoint}")
            r.open_tunnel(["SSH"])
            await agent.wait_line("connected to wss://")

            mark = agent.mark()
            agent.proc.send_signal(signal.SIGUSR1)
            line = await agent.wait_line("statistics: agent up", start=mark)
            assert "MQTT broker subscribed; 1 notification(s), 1 tunnel session(s); session 1: up" in line, line
            assert "tunnel connected for" in line, line

            mark = agent.mark()
            agent.proc.send_signal(signal.SIGHUP)
            await agent.wait_line("device certificate and key loaded again: reconnecting", start=mark)
            await agent.wait_line(f"subscribed to {notify_topic(THING)}", start=mark)
            assert agent.find("starting tunnel session 2", mark) is None, "the tunnel is not touched"

            # A key that does not load: the agent says so and keeps what it has.
            good = r.device_key.read_bytes()
            r.device_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
            mark = agent.mark()
            agent.proc.send_signal(signal.SIGHUP)
            line = await agent.wait_line("SIGHUP: cannot load the device certificate and key again", start=mark)
            assert "keeping the current ones" in line, line
            r.device_key.write_bytes(good)

            agent.proc.send_signal(signal.SIGTERM)
            assert await agent.wait_exit() == 0
            r.assert_no_token_logged()

    run(scenario())
