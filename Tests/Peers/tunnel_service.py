"""A test double of the AWS IoT Secure Tunneling data plane, plus a scripted source peer.

`TunnelService` is a TLS WebSocket server that admits one destination client at a time the
way the service does (docs/PROTOCOL.md sections 3, 10.1 and 14): it checks the request, records
every handshake, takes the access token from the `access-token` header or the
`awsiot-tunnel-token` cookie, emulates single-use access tokens bound to a client token (a
newer connection with the bound client token displaces the live one), answers with the
highest tunnel subprotocol the client offered and a `channel-id`, and sends SERVICE_IDS first
(to V2 and V3 clients).

Each accepted WebSocket becomes a `SourcePeer`, through which a test plays the source side of
the tunnel: it sends tunnel messages in V1, V2 or V3 format with a chosen WebSocket framing
(one message per frame, coalesced up to the 131,076-byte frame limit, or cut at arbitrary
byte boundaries), and it receives what the destination sends, decoded with the reference
protobuf runtime and sorted into DATA per (serviceId, streamId, connectionId) and control
messages.

Anything the destination does that the real service would refuse (wrong request, a message
type a destination may not send, an oversized frame or payload, a text frame) is recorded in
`TunnelService.violations`; tests assert that list is empty. Breaches the service answers by
disconnecting (text frames, frames over 131,076 bytes, STREAM_START / CONNECTION_START from a
destination, SESSION_RESET / SERVICE_IDS from any client: sections 4, 6.2 and 14.4) also close
the WebSocket, with 1003, 1009 and 1008 respectively, before any later frame is answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import ssl
import subprocess
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from local_services import Waitable

SUBPROTOCOL = "aws.iot.securetunneling-3.0"
SUBPROTOCOL_V2 = "aws.iot.securetunneling-2.0"
SUBPROTOCOL_V1 = "aws.iot.securetunneling-1.0"
# The tunnel subprotocols the service accepts, most preferred (highest) first; the 101 echoes
# the first of these the client offered (docs/PROTOCOL.md sections 3.1, 3.2 and 14.1).
SUBPROTOCOLS = (SUBPROTOCOL, SUBPROTOCOL_V2, SUBPROTOCOL_V1)
# The cookie a client may carry the access token in instead of the header (section 3.1).
TOKEN_COOKIE = "awsiot-tunnel-token"
# The service neither sends nor accepts WebSocket frames with more payload than this
# (docs/PROTOCOL.md section 4), and never puts more than this into one DATA payload (section 5).
MAX_WS_FRAME = 131_076
MAX_PAYLOAD = 64_512
# The service's observed answer to a reused single-use token (docs/PROTOCOL.md section 3.3).
REUSED_TOKEN_MESSAGE = "Invalid access token: The access token was previously used and can not be used again."
INVALID_CLIENT_TOKEN_MESSAGE = (
    "Invalid client token: The provided client token does not match the client token that was previously set."
)
CLIENT_TOKEN_RE = re.compile(r"[A-Za-z0-9-]{32,128}")
# How the service closes a connection whose client token was bound and used again: the newer
# connection takes the tunnel's slot (sections 10.1 and 14.2). Same code and reason as the
# emulator (DataPlaneClose.replaced).
REPLACED_CODE = 1000
REPLACED_REASON = "replaced by a newer connection"
# Messages the service lets a destination send (docs/PROTOCOL.md section 8.5).
DESTINATION_TYPES = {"DATA", "STREAM_RESET", "CONNECTION_RESET"}
# Type numbers (section 6) of the messages the service disconnects a destination for sending
# (sections 6.2 and 14.4): the source-only STREAM_START and CONNECTION_START, and the
# service-only SESSION_RESET and SERVICE_IDS.
REFUSED_FROM_DESTINATION = {2: "STREAM_START", 6: "CONNECTION_START", 4: "SESSION_RESET", 5: "SERVICE_IDS"}

# Default time a test waits for anything the proxy should do promptly. The machines running
# these tests are small and busy, so this is generous: it only bounds how long a hang takes
# to be reported.
WAIT = 25.0


# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertBundle:
    """A CA and a server certificate it signed, plus an unrelated CA with its own server cert."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    other_server_cert: Path
    other_server_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    # basicConstraints CA:TRUE is required: strict verifiers (mbedTLS among them) refuse to
    # accept a self-signed certificate as an issuer without it.
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "30", "-subj", f"/CN={name} test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return cert, key


def _make_server_cert(directory: Path, name: str, ca: Path, ca_key: Path,
                      san: str = "DNS:localhost,IP:127.0.0.1") -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    # The proxy checks the name it connected to (127.0.0.1) against the certificate, so both
    # the IP address and the DNS name the tests might use are listed.
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={san}\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", "/CN=localhost", cwd=directory,
    )
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", ca.name, "-CAkey", ca_key.name, "-CAcreateserial",
        "-out", cert.name, "-days", "30", "-extfile", ext.name, cwd=directory,
    )
    return cert, key


def make_certs(directory: Path) -> CertBundle:
    """Generate the certificates into `directory` (fresh keys every test session, never committed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _make_ca(directory, "ca")
    server_cert, server_key = _make_server_cert(directory, "server", ca, ca_key)
    other_ca, other_ca_key = _make_ca(directory, "other-ca")
    other_cert, other_key = _make_server_cert(directory, "other-server", other_ca, other_ca_key)
    # Signed by the right CA, but for a name the proxy never connects to.
    wrong_cert, wrong_key = _make_server_cert(directory, "wrong-name", ca, ca_key, san="DNS:tunnel.example.com")
    return CertBundle(ca, server_cert, server_key, other_ca, other_cert, other_key, wrong_cert, wrong_key)


def server_ssl_context(cert: Path, key: Path, ciphers: str | None = None) -> ssl.SSLContext:
    """`ciphers` (OpenSSL's names) pins the TLS 1.2 suites the service accepts, and with them
    TLS 1.2 itself (Python's ssl module cannot choose TLS 1.3 suites)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The service accepts TLS 1.2 and later; the proxy is meant to refuse anything older.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    return context


# --------------------------------------------------------------------------------------
# Framing of what the source side sends
# --------------------------------------------------------------------------------------


def cut(data: bytes, framing: str) -> list[bytes]:
    """Cut a run of tunnel bytes into WebSocket frame payloads according to `framing`.

    * `coalesce`: as few frames as the 131,076-byte limit allows (messages straddle frames,
      as when the service re-aggregates a peer's writes);
    * `bytes:N` / `frag:N`: pieces of N bytes (N=1 cuts at every byte boundary);
    * `random:SEED`: pieces of random sizes between 1 and 3000 bytes, reproducible by seed.
    """
    kind, _, arg = framing.partition(":")
    if kind == "coalesce":
        size = MAX_WS_FRAME
    elif kind in ("bytes", "frag"):
        size = int(arg)
    elif kind == "random":
        rng = random.Random(int(arg or 0))
        pieces, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 3000)
            pieces.append(data[pos : pos + step])
            pos += step
        return pieces
    else:
        raise ValueError(f"unknown framing {framing!r}")
    assert 0 < size <= MAX_WS_FRAME
    return [data[i : i + size] for i in range(0, len(data), size)]


def frame_message(body: bytes) -> bytes:
    """Prefix protobuf bytes with the tunnel's 2-byte big-endian length."""
    assert len(body) <= 0xFFFF, f"a {len(body)}-byte message cannot be length-prefixed"
    return len(body).to_bytes(2, "big") + body


# --------------------------------------------------------------------------------------
# Handshakes
# --------------------------------------------------------------------------------------


@dataclass
class Handshake:
    """One upgrade request as the service received it, and what it answered."""

    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    status: int | None = None
    body: str = ""

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def cookies(self, name: str) -> list[str]:
        """Values of the cookie `name` across all Cookie headers (`a=1; b=2` lists, RFC 6265)."""
        found = []
        for header in self.values("Cookie"):
            for pair in header.split(";"):
                key, eq, value = pair.strip().partition("=")
                if not eq or key != name:
                    continue
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                if value:
                    found.append(value)
        return found

    @property
    def tokens(self) -> list[str]:
        """Every access token the request carries: non-empty `access-token` headers, then
        `awsiot-tunnel-token` cookies. The service wants exactly one in total."""
        return [v for v in self.values("access-token") if v] + self.cookies(TOKEN_COOKIE)

    @property
    def access_token(self) -> str | None:
        tokens = self.tokens
        return tokens[0] if len(tokens) == 1 else None

    @property
    def client_token(self) -> str | None:
        values = self.values("client-token")
        return values[0] if len(values) == 1 else None

    @property
    def subprotocols(self) -> list[str]:
        offered = []
        for value in self.values("Sec-WebSocket-Protocol"):
            offered += [p.strip() for p in value.split(",") if p.strip()]
        return offered


class _FrameCheck:
    """Counts the frames the destination sends, for tests that look at its framing and pings.

    `_CheckedProtocol` calls `saw` for every frame it parses, before acting on it. The rules
    about frames (no text frames, none over 131,076 bytes) are enforced there.
    """

    def __init__(self, on_ping):
        self.on_ping = on_ping
        self.frames = 0
        self.largest = 0
        self.pings = 0

    def saw(self, frame: Frame) -> None:
        self.frames += 1
        self.largest = max(self.largest, len(frame.data))
        if frame.opcode is Opcode.PING:
            # websockets answers pings itself; they are only counted, to check keepalives.
            self.pings += 1
            self.on_ping()


def _varint(data, pos: int) -> tuple[int, int]:
    """A base-128 varint at `pos`: (value, position after it). IndexError if it runs off the end."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _message_type(body) -> int | None:
    """The `type` field (1) of protobuf bytes, without decoding (or copying) anything else.

    Fields may come in any order and a repeated scalar field counts by its last value
    (section 6.1); None when the bytes do not parse, which `SourcePeer` reports on its own.
    """
    mtype, pos, end = 0, 0, len(body)
    try:
        while pos < end:
            key, pos = _varint(body, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(body, pos)
                if field == 1:
                    mtype = value
            elif wire == 2:
                length, pos = _varint(body, pos)
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return None
    except (IndexError, ValueError):
        return None
    return mtype if pos == end else None


class _CheckedProtocol(ServerProtocol):
    """websockets' server protocol with the service's rules for what a client sends.

    A text frame (1003), a frame over 131,076 bytes (1009) or a tunnel message of a type a
    destination may not send (1008) fails the connection at once: the close frame goes out and
    nothing received after the offending frame is processed, so a ping that follows it is not
    answered and the offending frame never reaches the application. Every breach is also
    recorded as a violation, since a destination under test must never commit one.

    Frames are checked here, in the sans-I/O layer, rather than in the session's reader,
    because websockets answers pings as it parses: a check made after reassembly would come
    too late to refuse what follows in the same read.
    """

    service: "TunnelService"
    breach: tuple[int, str] | None
    carry: bytes

    @classmethod
    def adopt(cls, protocol: ServerProtocol, service: "TunnelService") -> "_CheckedProtocol":
        # websockets' serve() builds a plain ServerProtocol and offers no hook to choose the
        # class; this subclass only overrides methods and adds plain attributes, so switching
        # the class of the new instance is safe.
        protocol.__class__ = cls
        protocol.service = service
        protocol.breach = None
        protocol.carry = b""  # tunnel bytes of a message that continues in a later frame
        return protocol

    def recv_frame(self, frame: Frame) -> None:
        self.service.frame_check.saw(frame)
        breach = self._breach(frame)
        if breach is not None:
            self.service.record_violation(breach[1])
            self.breach = breach
            # parse() answers a ProtocolError by failing the connection and stops parsing;
            # fail() below puts this breach's code and reason into the close frame.
            raise ProtocolError(breach[1])
        super().recv_frame(frame)

    def fail(self, code: int, reason: str = "") -> None:
        if self.breach is not None:
            code, reason = self.breach
            self.breach = None
        elif code == CloseCode.MESSAGE_TOO_BIG:
            # websockets refuses a frame over the limit given to serve() before reading it.
            self.service.record_violation(f"destination sent an oversized frame: {reason}")
        super().fail(code, reason)

    def _breach(self, frame: Frame) -> tuple[int, str] | None:
        if frame.opcode is Opcode.TEXT:
            return (CloseCode.UNSUPPORTED_DATA, "destination sent a text frame")
        if len(frame.data) > MAX_WS_FRAME:
            # Unreachable while serve() caps frames at MAX_WS_FRAME (see `fail`); kept so the
            # rule still holds if that cap is ever raised.
            return (CloseCode.MESSAGE_TOO_BIG, f"destination sent a {len(frame.data)}-byte frame (limit {MAX_WS_FRAME})")
        if frame.opcode in (Opcode.BINARY, Opcode.CONT):
            return self._scan(frame.data)
        return None

    def _scan(self, chunk: bytes) -> tuple[int, str] | None:
        """Follows the tunnel byte stream across frames and checks each message's type."""
        data = self.carry + chunk if self.carry else chunk
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= 2:
            length = (data[pos] << 8) | data[pos + 1]
            if end - pos - 2 < length:
                break
            name = REFUSED_FROM_DESTINATION.get(_message_type(view[pos + 2 : pos + 2 + length]))
            if name is not None:
                return (CloseCode.POLICY_VIOLATION, f"destination sent {name}, which only the "
                        f"{'source' if name in ('STREAM_START', 'CONNECTION_START') else 'service'} may send")
            pos += 2 + length
        self.carry = bytes(view[pos:])
        return None


# --------------------------------------------------------------------------------------
# The source peer of one WebSocket session
# --------------------------------------------------------------------------------------


Key = tuple[str, int, int]  # (serviceId, streamId, connectionId) as the destination sent them


class _Collector:
    """DATA payloads received for one key: kept for `read_data`, or hashed for bulk transfers."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.total = 0
        self.messages = 0
        self.largest = 0
        self.hasher = None
        self.last_seq = 0

    def add(self, payload: bytes, seq: int) -> None:
        self.last_seq = seq
        self.total += len(payload)
        self.messages += 1
        self.largest = max(self.largest, len(payload))
        if self.hasher is not None:
            self.hasher.update(payload)
        else:
            self.buffer += payload


class SourcePeer(Waitable):
    """The source side of one WebSocket session with the destination under test.

    `version` (1, 2 or 3) shapes every message this peer sends: V1 drops serviceId and
    connectionId, V2 drops connectionId (docs/PROTOCOL.md section 11). Calls may override it.
    """

    def __init__(self, service: "TunnelService", ws, handshake: Handshake, version: int, framing: str):
        super().__init__()
        self.service = service
        self.pb = service.pb
        self.ws = ws
        self.handshake = handshake
        self.version = version
        self.framing = framing
        self.default_service = service.service_ids[0] if service.service_ids else ""
        self.controls: list = []
        # Arrival order of every message, so that a test can check a reset came after the data.
        self.control_seqs: list[int] = []
        self._consumed: set[int] = set()
        self.data: dict[Key, _Collector] = {}
        self.data_sent: dict[Key, int] = {}
        self.received_messages = 0
        self.closed = False
        self.close_received = None  # the Close frame the destination sent, if any
        self._pending = b""
        self._send_lock = asyncio.Lock()
        self._read_rate: int | None = None
        self._unthrottled: asyncio.Event | None = None

    def describe(self) -> str:
        keys = {k: c.total for k, c in self.data.items()}
        controls = [self._short(m) for m in self.controls[-10:]]
        return (f"session #{self.service.sessions.index(self) + 1 if self in self.service.sessions else '?'}: "
                f"closed={self.closed} close_received={self.close_received}, DATA bytes per "
                f"(service, stream, connection)={keys}, last control messages={controls}, "
                f"violations={self.service.violations}")

    def _short(self, msg) -> str:
        name = self.pb.Message.Type.Name(msg.type) if msg.type in self.pb.Message.Type.values() else str(msg.type)
        return f"{name}(stream={msg.streamId}, service={msg.serviceId!r}, conn={msg.connectionId})"

    # ---- building messages -----------------------------------------------------------

    def message(self, mtype, stream_id: int = 0, service_id: str | None = None, connection_id: int = 0,
                payload: bytes = b"", ignorable: bool = False, ids=(), version: int | None = None):
        version = self.version if version is None else version
        msg = self.pb.Message()
        msg.type = mtype
        msg.streamId = stream_id
        msg.ignorable = ignorable
        msg.payload = payload
        if version >= 2:
            msg.serviceId = self.default_service if service_id is None else service_id
        if version >= 3:
            msg.connectionId = connection_id
        msg.availableServiceIds.extend(ids)
        return msg

    def service_ids(self, ids):
        """SERVICE_IDS as the service sends it: the type and the list, nothing else (section 6.1)."""
        return self.pb.Message(type=self.pb.Message.SERVICE_IDS, availableServiceIds=list(ids))

    def key(self, stream_id: int, connection_id: int = 1, service_id: str | None = None,
            version: int | None = None) -> Key:
        """Where a destination answering in this peer's format files DATA for this connection."""
        version = self.version if version is None else version
        service = (self.default_service if service_id is None else service_id) if version >= 2 else ""
        return (service, stream_id, connection_id if version >= 3 else 0)

    # ---- sending ---------------------------------------------------------------------

    async def send(self, *items, framing: str | None = None) -> None:
        """Send messages (pb Messages, or bytes already length-prefixed) as one batch.

        A batch is cut into frames as a whole, so with `coalesce` its messages share frames
        and with `bytes:N` every boundary inside the batch falls between frames.
        """
        framing = framing or self.framing
        encoded = [frame_message(item.SerializeToString()) if not isinstance(item, (bytes, bytearray)) else bytes(item)
                   for item in items]
        async with self._send_lock:
            if framing == "message":
                for chunk in encoded:
                    for piece in cut(chunk, "coalesce"):
                        await self.ws.send(piece)
                return
            pieces = cut(b"".join(encoded), framing)
            if framing.startswith("frag:"):
                # One WebSocket message in continuation frames, a frame per piece.
                await self.ws.send(pieces)
            else:
                for piece in pieces:
                    await self.ws.send(piece)

    async def start_stream(self, stream_id: int, service_id: str | None = None, connection_id: int = 1, **kw) -> None:
        await self.send(self.message(self.pb.Message.STREAM_START, stream_id, service_id, connection_id), **kw)

    async def connection_start(self, stream_id: int, connection_id: int, service_id: str | None = None, **kw) -> None:
        await self.send(self.message(self.pb.Message.CONNECTION_START, stream_id, service_id, connection_id), **kw)

    def data_messages(self, stream_id: int, payload: bytes, service_id: str | None = None, connection_id: int = 1,
                      version: int | None = None) -> list:
        return [self.message(self.pb.Message.DATA, stream_id, service_id, connection_id,
                             payload[i : i + MAX_PAYLOAD], version=version)
                for i in range(0, len(payload), MAX_PAYLOAD)]

    async def send_data(self, stream_id: int, payload: bytes, service_id: str | None = None,
                        connection_id: int = 1, **kw) -> None:
        """DATA in payloads of at most 64,512 bytes, sent two messages per batch.

        Two full messages fill just under one 131,076-byte frame in coalesced framing, which is
        how the service packs a busy stream.
        """
        key = self.key(stream_id, connection_id, service_id)
        messages = self.data_messages(stream_id, payload, service_id, connection_id)
        for i in range(0, len(messages), 2):
            batch = messages[i : i + 2]
            await self.send(*batch, **kw)
            self.data_sent[key] = self.data_sent.get(key, 0) + sum(len(m.payload) for m in batch)
            self._notify()

    async def send_blocks(self, stream_id: int, blocks, service_id: str | None = None, connection_id: int = 1,
                          **kw) -> str:
        """Send an iterable of byte blocks as DATA; returns the SHA-256 of everything sent."""
        digest = hashlib.sha256()
        for block in blocks:
            digest.update(block)
            await self.send_data(stream_id, block, service_id, connection_id, **kw)
        return digest.hexdigest()

    async def stream_reset(self, stream_id: int, service_id: str | None = None, **kw) -> None:
        await self.send(self.message(self.pb.Message.STREAM_RESET, stream_id, service_id), **kw)

    async def connection_reset(self, stream_id: int, connection_id: int, service_id: str | None = None, **kw) -> None:
        await self.send(self.message(self.pb.Message.CONNECTION_RESET, stream_id, service_id, connection_id), **kw)

    async def session_reset(self, **kw) -> None:
        await self.send(self.message(self.pb.Message.SESSION_RESET), **kw)

    async def send_raw_message(self, body: bytes, **kw) -> None:
        """Send hand-made protobuf bytes (e.g. an unknown message type) behind a length prefix."""
        await self.send(frame_message(body), **kw)

    async def send_raw(self, data: bytes, framing: str = "coalesce") -> None:
        """Put bytes into the tunnel byte stream exactly as given (no length prefix added)."""
        await self.send(bytes(data), framing=framing)

    async def ping(self, payload: bytes = b"svc-ping", timeout: float = WAIT) -> float:
        """Ping the destination and wait for its pong; returns the round-trip time in seconds."""
        started = asyncio.get_running_loop().time()
        waiter = await self.ws.ping(payload)
        try:
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise AssertionError(f"no pong within {timeout:g} s; {self.describe()}") from None
        return asyncio.get_running_loop().time() - started

    def drop_tcp(self) -> None:
        """Abort the TCP connection: no close frame, no TLS close_notify, as when a link dies."""
        self.ws.transport.abort()

    async def close(self, code: int = 1000, reason: str = "tunnel closed") -> None:
        """Close the WebSocket with a close frame, as the service does when the tunnel closes."""
        await self.ws.close(code, reason)

    # ---- receiving -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            # Text frames never get here: _CheckedProtocol closes the connection on the first.
            async for message in self.ws:
                self._feed(message)
                self._notify()
                if self._read_rate is not None:
                    await self._pace(len(message))
        except ConnectionClosed:
            pass
        finally:
            protocol = self.ws.protocol
            rcvd = getattr(protocol, "close_rcvd", None)
            if rcvd is not None:
                self.close_received = (rcvd.code, rcvd.reason)
            if self._pending:
                self.service.record_violation(f"session ended inside a tunnel message ({len(self._pending)} bytes left)")
            self.closed = True
            self._notify()

    def throttle_reading(self, bytes_per_second: int) -> None:
        """Read what the destination sends at about this rate, like a slow source-side client.

        Once websockets' own queue (16 frames) is full it stops reading the socket, so the
        destination meets TCP back-pressure on the WebSocket, as behind a slow link.
        """
        self._read_rate = bytes_per_second
        self._unthrottled = asyncio.Event()

    def unthrottle_reading(self) -> None:
        self._read_rate = None
        if self._unthrottled is not None:
            self._unthrottled.set()

    async def _pace(self, nbytes: int) -> None:
        # The wait ends early when the throttle is lifted, so a test never waits out a pause.
        try:
            await asyncio.wait_for(self._unthrottled.wait(), nbytes / self._read_rate)
        except (TimeoutError, asyncio.TimeoutError):
            pass

    def _feed(self, chunk: bytes) -> None:
        # Only bytes that straddle two WebSocket messages are copied into the accumulator;
        # whole messages are decoded straight from the received buffer.
        data = self._pending + chunk if self._pending else chunk
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= 2:
            length = (data[pos] << 8) | data[pos + 1]
            if end - pos - 2 < length:
                break
            self._dispatch(bytes(view[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        self._pending = bytes(view[pos:])

    def _dispatch(self, body: bytes) -> None:
        pb = self.pb
        self.received_messages += 1
        try:
            msg = pb.Message.FromString(body)
        except Exception as exc:
            self.service.record_violation(f"destination sent an unparsable message {body[:40].hex()}: {exc}")
            return
        name = pb.Message.Type.Name(msg.type) if msg.type in pb.Message.Type.values() else f"type {msg.type}"
        if name not in DESTINATION_TYPES:
            self.service.record_violation(f"destination sent {name}, which only the source or service may send")
        if msg.streamId == 0:
            self.service.record_violation(f"destination sent {name} with stream id 0")
        if len(msg.availableServiceIds):
            self.service.record_violation(f"destination sent availableServiceIds in {name}")
        if msg.type == pb.Message.DATA:
            if len(msg.payload) > MAX_PAYLOAD:
                self.service.record_violation(f"destination sent a {len(msg.payload)}-byte payload (max {MAX_PAYLOAD})")
            key = (msg.serviceId, msg.streamId, msg.connectionId)
            collector = self.data.get(key)
            if collector is None:
                collector = self.data[key] = _Collector()
            collector.add(msg.payload, self.received_messages)
        else:
            if msg.payload:
                self.service.record_violation(f"destination sent {name} with a payload")
            self.controls.append(msg)
            self.control_seqs.append(self.received_messages)

    def _matches(self, msg, mtype, fields: dict) -> bool:
        if msg.type != mtype:
            return False
        return all(getattr(msg, name) == value for name, value in fields.items())

    def find(self, mtype, **fields) -> list:
        """Control messages of this type and fields received so far (consumed or not)."""
        return [m for m in self.controls if self._matches(m, mtype, fields)]

    async def expect(self, mtype, timeout: float = WAIT, **fields):
        """Wait for a control message of this type with these field values, and consume it.

        Field names are the protobuf ones (streamId, serviceId, connectionId). Messages that
        do not match stay available to later `expect` calls, so the order of independent
        resets does not matter.
        """
        found = []

        def ready() -> bool:
            for i, msg in enumerate(self.controls):
                if i not in self._consumed and self._matches(msg, mtype, fields):
                    found.append(i)
                    return True
            return False

        name = self.pb.Message.Type.Name(mtype)
        await self.wait_until(ready, timeout, f"{name} {fields}")
        self._consumed.add(found[0])
        return self.controls[found[0]]

    def seq_of(self, control) -> int:
        """Arrival number (1-based, over all messages) of a control message from `controls`."""
        for msg, seq in zip(self.controls, self.control_seqs):
            if msg is control:
                return seq
        raise ValueError("not a received control message")

    def unconsumed(self) -> list[str]:
        return [self._short(m) for i, m in enumerate(self.controls) if i not in self._consumed]

    async def read_data(self, stream_id: int, nbytes: int, connection_id: int = 1, service_id: str | None = None,
                        timeout: float = WAIT, version: int | None = None) -> bytes:
        """Take exactly `nbytes` DATA bytes received for this connection (in this peer's format)."""
        key = self.key(stream_id, connection_id, service_id, version)

        def enough() -> bool:
            collector = self.data.get(key)
            return collector is not None and len(collector.buffer) >= nbytes

        await self.wait_until(enough, timeout, f"{nbytes} DATA bytes for {key}")
        buffer = self.data[key].buffer
        taken = bytes(buffer[:nbytes])
        del buffer[:nbytes]
        return taken

    def pending_data(self, key: Key) -> bytes:
        collector = self.data.get(key)
        return bytes(collector.buffer) if collector else b""

    def hash_data(self, key: Key) -> None:
        """From now on hash DATA for `key` instead of keeping it (bytes kept so far are hashed first)."""
        collector = self.data.get(key)
        if collector is None:
            collector = self.data[key] = _Collector()
        collector.hasher = hashlib.sha256(collector.buffer)
        collector.buffer = bytearray()

    async def wait_hashed(self, key: Key, nbytes: int, timeout: float) -> str:
        """Wait until `nbytes` DATA bytes for `key` have been hashed; returns the hex digest."""
        await self.wait_until(lambda: key in self.data and self.data[key].total >= nbytes, timeout,
                              f"{nbytes} DATA bytes hashed for {key}")
        collector = self.data[key]
        assert collector.total == nbytes, f"{collector.total} DATA bytes for {key}, expected exactly {nbytes}"
        return collector.hasher.hexdigest()

    async def wait_closed(self, timeout: float = WAIT) -> None:
        await self.wait_until(lambda: self.closed, timeout, "the WebSocket to close")


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


class TunnelService(Waitable):
    """The data plane of one tunnel, for one destination client at a time.

    Keyword arguments:
      service_ids: sent in SERVICE_IDS right after each upgrade ([] for a V1-style tunnel).
      access_token: the token the destination must present.
      version / framing: defaults for the SourcePeer of each session.
      single_use: emulate single-use tokens: after the first upgrade the token only works
        again with the same client token (400 otherwise).
      server_cert: "good", "other-ca" (signed by the unrelated CA) or "wrong-name" (the right CA,
        another host name).
    `reject_next` (a deque of (status, body)) scripts rejections of the next handshakes.

    Whatever `single_use` says, the client token of the first upgrade is bound to the token, and
    an upgrade presenting it while an earlier connection is attached displaces that connection
    (closed with 1000 "replaced by a newer connection").
    """

    def __init__(self, pb, certs: CertBundle, *, service_ids=("SSH",), access_token: str = "test-access-token",
                 version: int = 3, framing: str = "message", single_use: bool = False,
                 server_cert: str = "good", channel_id: str = "0123456789abcdef-00000001-00000002-test-channel",
                 ciphers: str | None = None):
        super().__init__()
        self.ciphers = ciphers
        self.pb = pb
        self.certs = certs
        self.service_ids = list(service_ids)
        self.access_token = access_token
        self.version = version
        self.framing = framing
        self.single_use = single_use
        self.server_cert = server_cert
        self.channel_id = channel_id
        # The service always listens on 127.0.0.1; the name given to the proxy may be the IP
        # address (the default) or "localhost", both of which the certificate lists.
        self.endpoint_host = os.environ.get("LP_E2E_ENDPOINT_HOST", "127.0.0.1")
        self.reject_next: deque[tuple[int, str]] = deque()
        self.handshakes: list[Handshake] = []
        self.sessions: list[SourcePeer] = []
        self.violations: list[str] = []
        self._taken = 0
        self._by_connection: dict[uuid.UUID, Handshake] = {}
        self._token_used = False
        self._bound_client_token: str | None = None
        self._handlers: set[asyncio.Task] = set()
        # Sessions whose handler is running, in order of upgrade (also before SERVICE_IDS is out).
        self._attached: list[SourcePeer] = []
        self.logger = logging.getLogger(f"tunnel-service.{uuid.uuid4().hex}")
        self.logger.propagate = False
        # Nothing websockets logs is wanted (frames are counted by _CheckedProtocol), and
        # without a handler Python would print its warnings to stderr.
        self.logger.setLevel(logging.WARNING)
        self.logger.addHandler(logging.NullHandler())
        self.frame_check = _FrameCheck(self._notify)
        self._closers: set[asyncio.Task] = set()

    def record_violation(self, text: str) -> None:
        self.violations.append(text)
        self._notify()

    def describe(self) -> str:
        return (f"{len(self.handshakes)} handshake(s) with statuses {[h.status for h in self.handshakes]}, "
                f"{len(self.sessions)} session(s), violations={self.violations}")

    @property
    def endpoint(self) -> str:
        """The `-e` value: the name the proxy must also verify in the certificate."""
        return f"{self.endpoint_host}:{self.port}"

    async def __aenter__(self):
        # A (certificate, key) pair of paths may be given instead of a name, for certificates
        # made by one test (e.g. one that is not valid yet).
        cert, key = self.server_cert if isinstance(self.server_cert, tuple) else {
            "good": (self.certs.server_cert, self.certs.server_key),
            "other-ca": (self.certs.other_server_cert, self.certs.other_server_key),
            "wrong-name": (self.certs.wrong_name_cert, self.certs.wrong_name_key),
        }[self.server_cert]
        self._serve = serve(
            self._handle, "127.0.0.1", 0,
            ssl=server_ssl_context(cert, key, self.ciphers),
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=self._select_subprotocol,
            create_connection=self._create_connection,
            logger=self.logger,
            compression=None,
            # The service does not originate pings (docs/PROTOCOL.md section 14.5).
            ping_interval=None,
            # (message, frame) limits: the tunnel byte stream is continuous, so a fragmented
            # message may be of any size, but no frame may carry more than 131,076 bytes;
            # websockets refuses a bigger one with 1009 before reading it (see _CheckedProtocol).
            max_size=(None, MAX_WS_FRAME),
            open_timeout=30,
            close_timeout=5,
        )
        self.server = await self._serve.__aenter__()
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _create_connection(self, protocol: ServerProtocol, server, **kwargs) -> ServerConnection:
        return ServerConnection(_CheckedProtocol.adopt(protocol, self), server, **kwargs)

    async def __aexit__(self, *exc_info):
        for peer in self.sessions:
            if not peer.closed:
                peer.ws.transport.abort()
        await self._serve.__aexit__(*exc_info)

    # ---- admission -------------------------------------------------------------------

    def _reject(self, connection, handshake: Handshake, status: int, body: str, violation: str | None = None):
        handshake.status, handshake.body = status, body
        if violation:
            self.record_violation(violation)
        # process_response runs for rejections too and adds the channel-id header, as the
        # service does on many error responses.
        return connection.respond(status, body + "\n")

    def _process_request(self, connection, request):
        split = urlsplit(request.path)
        handshake = Handshake(path=split.path, query=parse_qs(split.query), headers=list(request.headers.raw_items()))
        self.handshakes.append(handshake)
        self._by_connection[connection.id] = handshake
        token = self.access_token
        # The token must travel only where section 3.1 puts it (the access-token header or the
        # awsiot-tunnel-token cookie): not in the URL, not in any other header or cookie.
        if token in request.path:
            self.record_violation("access token appears in the request target")
        for name, value in handshake.headers:
            if name.lower() == "access-token":
                continue
            if name.lower() == "cookie":
                value = ";".join(pair for pair in value.split(";") if pair.strip().partition("=")[0] != TOKEN_COOKIE)
            if token in value:
                self.record_violation(f"access token appears in header {name}")
        # Request-shape rules first (all 400, as the emulator answers them), then whether the
        # one token is valid (401).
        if split.path != "/tunnel":
            return self._reject(connection, handshake, 400, "Bad request: unknown path", f"path {split.path!r}")
        if handshake.query.get("local-proxy-mode") != ["destination"]:
            return self._reject(connection, handshake, 400, "Bad request: local-proxy-mode",
                                f"query {split.query!r} does not say local-proxy-mode=destination")
        tokens = handshake.tokens
        if len(tokens) != 1:
            # Sections 3.1 and 14.1: exactly one token, as header or cookie.
            return self._reject(connection, handshake, 400,
                                "Invalid access token: exactly one access token (header access-token or "
                                f"cookie {TOKEN_COOKIE}) must be provided, {len(tokens)} found",
                                f"{len(tokens)} access tokens in the request, expected exactly one")
        client_tokens = handshake.values("client-token")
        if len(client_tokens) > 1 or (client_tokens and not CLIENT_TOKEN_RE.fullmatch(client_tokens[0])):
            return self._reject(connection, handshake, 400, "Invalid client token format",
                                f"client-token headers {client_tokens!r}")
        if self._choose_subprotocol(handshake.subprotocols) is None:
            return self._reject(connection, handshake, 400, "Bad request: unsupported protocol",
                                f"subprotocols offered {handshake.subprotocols!r}")
        if tokens[0] != token:
            return self._reject(connection, handshake, 401, "Unauthorized: invalid access token",
                                "the access token is not the configured one")
        if self.reject_next:
            status, body = self.reject_next.popleft()
            return self._reject(connection, handshake, status, body)
        if self.single_use and self._token_used:
            client_token = handshake.client_token
            if self._bound_client_token is None:
                return self._reject(connection, handshake, 400, REUSED_TOKEN_MESSAGE)
            if client_token != self._bound_client_token:
                return self._reject(connection, handshake, 400, INVALID_CLIENT_TOKEN_MESSAGE)
        return None

    @staticmethod
    def _choose_subprotocol(offered) -> str | None:
        """The highest tunnel subprotocol among those offered, or None."""
        return next((p for p in SUBPROTOCOLS if p in offered), None)

    def _select_subprotocol(self, connection, subprotocols):
        return self._choose_subprotocol(subprotocols)

    def _process_response(self, connection, request, response):
        handshake = self._by_connection.get(connection.id)
        if handshake is not None and handshake.status is None:
            handshake.status = response.status_code
        response.headers["channel-id"] = self.channel_id
        self._notify()
        return None

    async def _displace(self, old: SourcePeer) -> None:
        """Close `old` with 1000 "replaced by a newer connection", without waiting for its client.

        The close handshake completes in the background (a client that is not reading could
        hold it for the whole close timeout); this returns once the close frame is written, so
        the old connection is closed before the new one gets anything.
        """
        closer = asyncio.create_task(old.close(REPLACED_CODE, REPLACED_REASON))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)
        while old.ws.protocol.state is State.OPEN and not closer.done():
            await asyncio.sleep(0)

    async def _handle(self, ws) -> None:
        handshake = self._by_connection.pop(ws.id)
        # A connection presenting the client token bound to the access token takes the place
        # of the one still attached with it (sections 10.1 and 14.2).
        client_token = handshake.client_token
        displaced = []
        if self._token_used and client_token is not None and client_token == self._bound_client_token:
            displaced = [old for old in self._attached if not old.closed]
        if not self._token_used:
            self._token_used = True
            self._bound_client_token = client_token
        peer = SourcePeer(self, ws, handshake, self.version, self.framing)
        task = asyncio.current_task()
        self._handlers.add(task)
        self._attached.append(peer)
        try:
            for old in displaced:
                await self._displace(old)
            # SERVICE_IDS goes first, in a frame of its own, before the test can send anything;
            # a client that negotiated V1 would not understand it and gets none (section 14.3).
            if ws.subprotocol != SUBPROTOCOL_V1:
                await peer.send(peer.service_ids(self.service_ids), framing="message")
            self.sessions.append(peer)
            self._notify()
            await peer._run()
        except ConnectionClosed:
            peer.closed = True
            if peer not in self.sessions:
                self.sessions.append(peer)
            peer._notify()
        finally:
            self._attached.remove(peer)
            self._handlers.discard(task)
            self._notify()

    # ---- waits -----------------------------------------------------------------------

    async def next_session(self, timeout: float = WAIT) -> SourcePeer:
        """The next WebSocket session (in order of upgrade) that the test has not taken yet."""
        wanted = self._taken + 1
        await self.wait_until(lambda: len(self.sessions) >= wanted, timeout, f"WebSocket session #{wanted}")
        self._taken = wanted
        return self.sessions[wanted - 1]

    async def wait_handshakes(self, count: int, timeout: float = WAIT) -> None:
        await self.wait_until(lambda: len(self.handshakes) >= count and self.handshakes[count - 1].status is not None,
                              timeout, f"handshake #{count}")

    def assert_clean(self) -> None:
        assert not self.violations, f"the service saw protocol violations: {self.violations}"
