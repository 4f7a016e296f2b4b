"""The proxy's built-in resolver (`--dns builtin`) against a real nameserver.

The nameserver runs in the test on 127.0.0.1 (UDP, and TCP on the same port number) and builds
its answers with dnspython. The proxy finds it through LOCALPROXY_RESOLV_CONF (a resolv.conf
naming 127.0.0.1) and LOCALPROXY_DNS_PORT (the port of every nameserver), and its hosts file
through LOCALPROXY_HOSTS. The tunnel endpoint and the `-d` host are names only this nameserver
(or that hosts file) knows, so a working tunnel proves the built-in resolver resolved them.

The endpoint name is `tunnel.example.com`: the test service's "wrong-name" certificate is
issued for it, so the proxy verifies the service's certificate against the name it resolved.

Waiting is always on an event (a query reaching the nameserver, a log line, a session) with a
timeout, never on a sleep.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from local_services import EchoServer, Waitable
from test_destination import attach, echo_round_trip, new_service, run, running_proxy
from tunnel_service import WAIT

ENDPOINT_NAME = "tunnel.example.com"
A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA


class Nameserver(Waitable):
    """A recursive nameserver's answers for a few names, on 127.0.0.1.

    records: name -> addresses (IPv4 and IPv6 text); cnames: name -> target. Other names get
    NXDOMAIN. Modes change how UDP queries are answered:
      "answer"   answer them;
      "silent"   never answer (queries are still recorded);
      "forge"    before each answer, send a forged one from another port (right id, address
                 127.0.0.3) and one from the right port with a wrong id (address 127.0.0.4);
      "truncate" answer with the TC bit and no records, so the client must ask over TCP.
    Every query is recorded as (name, type, "udp" | "tcp").
    """

    def __init__(self, records: dict[str, list[str]], cnames: dict[str, str] | None = None, mode: str = "answer"):
        super().__init__()
        self.records = {k.lower(): v for k, v in records.items()}
        self.cnames = {k.lower(): v.lower() for k, v in (cnames or {}).items()}
        self.mode = mode
        self.queries: list[tuple[str, int, str]] = []

    def describe(self) -> str:
        return f"queries so far: {self.queries}"

    def count(self, name: str, transport: str | None = None) -> int:
        return sum(1 for n, _, t in self.queries if n == name and (transport is None or t == transport))

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        server = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                server._udp(self.transport, data, addr)

        # UDP and TCP on one port number: the kernel picks a free UDP port, whose TCP twin may
        # be taken (by any connection's ephemeral port); then try another.
        for _ in range(20):
            self.udp, _ = await loop.create_datagram_endpoint(UDP, local_addr=("127.0.0.1", 0))
            self.port = self.udp.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(self._tcp, "127.0.0.1", self.port)
                break
            except OSError:
                self.udp.close()
        else:
            raise AssertionError("no port number free for both UDP and TCP on 127.0.0.1")
        # The forger: another socket on the same address, so only the port differs.
        self.forger, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc_info):
        self.udp.close()
        self.forger.close()
        self.tcp.close()
        await self.tcp.wait_closed()

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        owner = question.name
        hops = 0
        while name in self.cnames and hops < 8:
            target = dns.name.from_text(self.cnames[name])
            response.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target.to_text()))
            owner, name = target, self.cnames[name]
            hops += 1
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        wanted = [a for a in self.records[name] if (":" in a) == (question.rdtype == AAAA)]
        if wanted:
            response.answer.append(dns.rrset.from_text_list(owner, 60, "IN", question.rdtype, wanted))
        return response

    def _record(self, query: dns.message.Message, transport: str) -> None:
        question = query.question[0]
        self.queries.append((question.name.to_text(omit_final_dot=True).lower(), question.rdtype, transport))
        self._notify()

    def _udp(self, transport, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        self._record(query, "udp")
        if self.mode == "silent":
            return
        response = self.answer(query)
        if self.mode == "truncate":
            response.answer.clear()
            response.flags |= dns.flags.TC
        if self.mode == "forge":
            forged = self.answer(query)
            forged.set_rcode(dns.rcode.NOERROR)
            forged.answer.clear()
            forged.answer.append(dns.rrset.from_text_list(query.question[0].name, 60, "IN", A, ["127.0.0.3"]))
            if query.question[0].rdtype == A:
                self.forger.sendto(forged.to_wire(), addr)
                forged.answer[0] = dns.rrset.from_text_list(query.question[0].name, 60, "IN", A, ["127.0.0.4"])
                forged.id = query.id ^ 0x5555
                transport.sendto(forged.to_wire(), addr)
        transport.sendto(response.to_wire(), addr)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = int.from_bytes(await reader.readexactly(2), "big")
            query = dns.message.from_wire(await reader.readexactly(length))
            self._record(query, "tcp")
            wire = self.answer(query).to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


def resolver_files(directory: Path, hosts: str = "", options: str = "options timeout:1 attempts:2\n") -> tuple[Path, Path]:
    resolv_conf = directory / "resolv.conf"
    resolv_conf.write_text("# the test nameserver; its port comes from LOCALPROXY_DNS_PORT\nnameserver 127.0.0.1\n" + options)
    hosts_file = directory / "hosts"
    hosts_file.write_text(hosts)
    return resolv_conf, hosts_file


def use_builtin_resolver(monkeypatch, nameserver: Nameserver, directory: Path, hosts: str = "") -> None:
    """The proxy started next reads these files and asks this nameserver."""
    resolv_conf, hosts_file = resolver_files(directory, hosts)
    monkeypatch.setenv("LOCALPROXY_RESOLV_CONF", str(resolv_conf))
    monkeypatch.setenv("LOCALPROXY_HOSTS", str(hosts_file))
    monkeypatch.setenv("LOCALPROXY_DNS_PORT", str(nameserver.port))


def named_service(pb, certs, name: str = ENDPOINT_NAME, **kwargs):
    """The test service, reached by the proxy as `name` (its certificate is for tunnel.example.com)."""
    service = new_service(pb, certs, server_cert="wrong-name", **kwargs)
    service.endpoint_host = name
    return service


BUILTIN = ("--dns", "builtin")


def test_endpoint_and_destination_names_resolve_through_the_nameserver(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    """The endpoint behind a CNAME chain; a `-d` host with A and AAAA records (only IPv4 listens)."""

    async def scenario():
        records = {"edge-7.tunnel.test": ["127.0.0.1"], "device-echo.test": ["127.0.0.1", "::1"]}
        cnames = {ENDPOINT_NAME: "alias.tunnel.test", "alias.tunnel.test": "edge-7.tunnel.test"}
        async with Nameserver(records, cnames) as nameserver, EchoServer("device-echo") as echo, \
                named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            async with running_proxy(localproxy, service, f"SSH=device-echo.test:{echo.port}", verbosity=5,
                                     extra_args=BUILTIN) as proxy:
                await proxy.wait_line("host names: built-in resolver")
                peer = await attach(service, proxy)
                assert nameserver.count(ENDPOINT_NAME, "udp") == 2, nameserver.queries
                await proxy.wait_line("TLS established with tunnel.example.com:")
                # The -d name is resolved when the tunnel asks for a connection.
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"resolved by our own resolver\n")
                assert {(n, t) for n, t, _ in nameserver.queries} == {
                    (ENDPOINT_NAME, A), (ENDPOINT_NAME, AAAA), ("device-echo.test", A), ("device-echo.test", AAAA)}
                assert echo.connections[0].data == b"resolved by our own resolver\n"
                service.assert_clean()

    run(scenario())


def test_hosts_file_answers_before_dns(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    async def scenario():
        async with Nameserver({}, mode="silent") as nameserver, EchoServer("echo") as echo, \
                named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path,
                                 hosts=f"# test hosts\n127.0.0.1\tTunnel.Example.COM gw\n127.0.0.1 device.test\n")
            async with running_proxy(localproxy, service, f"SSH=device.test:{echo.port}", extra_args=BUILTIN) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"from the hosts file\n")
                assert nameserver.queries == []

    run(scenario())


def test_nonexistent_names_are_logged_with_the_host(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    async def scenario():
        async with Nameserver({}) as nameserver, named_service(pb, tunnel_certs, name="no-such-endpoint.example.com") as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            async with running_proxy(localproxy, service, "SSH=22", extra_args=BUILTIN) as proxy:
                index = await proxy.wait_line("NXDOMAIN")
                line = proxy.lines[index]
                assert "resolving no-such-endpoint.example.com" in line, line
                assert f"127.0.0.1:{nameserver.port}" in line, line
                # The proxy keeps trying (a name may appear later) and asks again.
                await proxy.wait_line("reconnecting in", start=index)
                await nameserver.wait_until(lambda: nameserver.count("no-such-endpoint.example.com") >= 3, WAIT, "a second lookup")
                assert service.handshakes == []

    run(scenario())


def test_nonexistent_destination_host_resets_the_stream(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    async def scenario():
        async with Nameserver({"edge.tunnel.test": ["127.0.0.1"]}, {ENDPOINT_NAME: "edge.tunnel.test"}) as nameserver, \
                named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            async with running_proxy(localproxy, service, "SSH=gone.device.test:22", extra_args=BUILTIN) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                index = await proxy.wait_line("resetting the tunnel connection")
                assert "gone.device.test" in proxy.lines[index] and "NXDOMAIN" in proxy.lines[index], proxy.lines[index]
                await peer.expect(pb.Message.STREAM_RESET, streamId=1)

    run(scenario())


def test_silent_nameserver_times_out_after_every_try(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    async def scenario():
        async with Nameserver({}, mode="silent") as nameserver, named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)  # timeout:1 attempts:2
            async with running_proxy(localproxy, service, "SSH=22", extra_args=BUILTIN) as proxy:
                await nameserver.wait_until(lambda: len(nameserver.queries) >= 1, WAIT, "the first query")
                started = asyncio.get_running_loop().time()
                index = await proxy.wait_line("no answer from the nameservers after 2 tries")
                elapsed = asyncio.get_running_loop().time() - started
                assert ENDPOINT_NAME in proxy.lines[index], proxy.lines[index]
                # Two tries of one second, each asking for A and AAAA.
                assert 1.5 <= elapsed < 10, elapsed
                assert nameserver.count(ENDPOINT_NAME) >= 4
                assert service.handshakes == []

    run(scenario())


def test_stopping_ends_a_lookup_in_flight(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    """SIGTERM while a silent nameserver is being asked: the proxy exits 0 at once instead of
    waiting out the lookup (two tries of 60 s here), so an init system's stop is not held up."""
    async def scenario():
        async with Nameserver({}, mode="silent") as nameserver, named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            resolver_files(tmp_path, options="options timeout:60 attempts:2\n")
            async with running_proxy(localproxy, service, "SSH=22", extra_args=BUILTIN) as proxy:
                await nameserver.wait_until(lambda: len(nameserver.queries) >= 1, WAIT, "the first query")
                started = asyncio.get_running_loop().time()
                proxy.send_signal(signal.SIGTERM)
                assert await proxy.wait_exit(WAIT) == 0, proxy.describe()
                # WAIT (25 s) already bounds this; the first try alone would have taken 60 s.
                assert asyncio.get_running_loop().time() - started < 60
                assert service.handshakes == []

    run(scenario())


def test_forged_replies_are_ignored(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    """A reply from another port, and one with another id, come first; only the real one counts."""

    async def scenario():
        async with Nameserver({ENDPOINT_NAME: ["127.0.0.1"]}, mode="forge") as nameserver, EchoServer("echo") as echo, \
                named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            async with running_proxy(localproxy, service, f"SSH={echo.port}", verbosity=5, extra_args=BUILTIN) as proxy:
                peer = await attach(service, proxy)
                await peer.start_stream(1)
                await echo_round_trip(peer, echo, 1, b"only the real answer\n")
                assert not any("127.0.0.3" in line or "127.0.0.4" in line for line in proxy.lines), proxy.stderr
                assert any(f"connecting to 127.0.0.1:{service.port}" in line for line in proxy.lines), proxy.stderr

    run(scenario())


def test_truncated_answer_is_asked_again_over_tcp(localproxy, tunnel_certs, pb, monkeypatch, tmp_path):
    async def scenario():
        async with Nameserver({ENDPOINT_NAME: ["127.0.0.1"]}, mode="truncate") as nameserver, \
                named_service(pb, tunnel_certs) as service:
            use_builtin_resolver(monkeypatch, nameserver, tmp_path)
            async with running_proxy(localproxy, service, "SSH=22", extra_args=BUILTIN) as proxy:
                await attach(service, proxy)
                assert nameserver.count(ENDPOINT_NAME, "udp") == 2, nameserver.queries
                assert nameserver.count(ENDPOINT_NAME, "tcp") == 2, nameserver.queries

    run(scenario())


def test_dns_option_values(localproxy, tmp_path):
    """`--dns` takes system or builtin; anything else is a configuration error (exit 1)."""
    env = {"AWSIOT_TUNNEL_ACCESS_TOKEN": "token", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run([localproxy, "-r", "us-east-1", "-d", "22", "--dns", "nss"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert "--dns must be system or builtin, got 'nss'" in bad.stderr
    help_text = subprocess.run([localproxy, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--dns system|builtin" in help_text
