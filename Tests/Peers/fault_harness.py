"""What the fault tests (test_faults.py) and the soak (scripts/soak.py) share: checked transfers
through a whole tunnel with a fault proxy (fault_proxy.py) on every leg, the invariants each
connection must keep, and the proxies' memory and descriptor figures.

    client app --FS--> source localproxy --FTs--> emulator <--FTd-- destination localproxy --FD--> server app

FS and FD are keyed by the connection header (below), so a connection's plan on the local legs
follows its identity; FTs and FTd are keyed by accept order (0 is the proxy's first tunnel
connection, 1 its first reconnect...).

A connection is a checked transfer both ways at once. The client sends a 28-byte header
(magic, id, flags, sizes) and then `up` pattern bytes; the server sends `down` pattern bytes;
each side compares what it receives with the pattern as it arrives, so what was received is
known to be a prefix of what was sent, and where it stopped. The protocol has no half-close, so
the server knows from the header how much to read, and closes (FIN) once it has read it all and
sent all of its own; the client reads until its connection ends. Both use plain non-blocking
sockets, so a FIN and a reset are told apart exactly as the kernel reports them (a reset after
data still delivers the data first), and a failed send never hides what was received.

Waits are on events with timeouts. The only polled waits are on /proc figures (descriptor
counts), which nothing notifies about; they never order the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from fault_proxy import CLEAN, DOWN, UP, FaultConnection, FaultProxy, Plan
from local_services import Waitable
from whole_tunnel import WAIT, WholeTunnel

HEADER = struct.Struct("!4sIIQQ")
HEADER_LEN = HEADER.size
MAGIC = b"FLT1"
# Header flags.
SERVER_STALLS = 1      # the server reads the header, then nothing until released
BLOCK = 64 * 1024

# Generous bounds: debug builds on a small shared machine.
RSS_LIMIT_KIB = 64 * 1024


# ---- patterns --------------------------------------------------------------------------


def stream_seed(seed: int, conn_id: int, direction: str) -> int:
    return (seed * 1_000_003 + conn_id * 2 + (0 if direction == UP else 1)) & 0xFFFFFFFF


class Pattern:
    """The deterministic byte stream of one direction: 64 KiB blocks of Random(seed)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.block = b""
        self.block_at = 0   # stream offset of self.block

    def _block_for(self, offset: int) -> None:
        while offset >= self.block_at + len(self.block):
            self.block_at += len(self.block)
            self.block = self.rng.randbytes(BLOCK)

    def take(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset+n) of the stream; offsets must not go backwards by a block."""
        out = bytearray()
        while n > 0:
            self._block_for(offset)
            start = offset - self.block_at
            piece = self.block[start:start + n]
            out += piece
            offset += len(piece)
            n -= len(piece)
        return bytes(out)


class Checker:
    """Compares received bytes with a stream as they arrive."""

    def __init__(self, expected_prefix: bytes, seed: int | None):
        self.prefix = expected_prefix
        self.pattern = Pattern(seed) if seed is not None else None
        self.count = 0
        self.mismatch_at: int | None = None

    def feed(self, data: bytes) -> None:
        if self.mismatch_at is None:
            at = self.count
            view = memoryview(data)
            # The header part, then the pattern part (offsets after the header).
            if at < len(self.prefix):
                n = min(len(self.prefix) - at, len(data))
                if bytes(view[:n]) != self.prefix[at:at + n]:
                    self.mismatch_at = at + _first_difference(bytes(view[:n]), self.prefix[at:at + n])
                view = view[n:]
                at += n
            if view.nbytes and self.mismatch_at is None:
                if self.pattern is None:
                    self.mismatch_at = at
                else:
                    want = self.pattern.take(at - len(self.prefix), view.nbytes)
                    got = bytes(view)
                    if got != want:
                        self.mismatch_at = at + _first_difference(got, want)
        self.count += len(data)


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def header_key(data: bytes):
    """The connection id of a header (FaultProxy key_of), or None."""
    if len(data) < HEADER_LEN or data[:4] != MAGIC:
        return None
    return HEADER.unpack(data[:HEADER_LEN])[1]


# ---- one receiving end -----------------------------------------------------------------


@dataclass
class Received:
    count: int = 0
    mismatch_at: int | None = None
    # "eof" (orderly end), "reset" (ECONNRESET/EPIPE), "complete" (the server read all it
    # expected and did not wait for an end), "timeout", or None while reading.
    end: str | None = None
    error: str = ""

    def show(self) -> str:
        bad = f" MISMATCH@{self.mismatch_at}" if self.mismatch_at is not None else ""
        return f"{self.count}B {self.end}{bad}{(' ' + self.error) if self.error else ''}"


async def _read_all(sock: socket.socket, checker: Checker, received: Received, limit: int | None,
                    deadline: float, on_data=None) -> None:
    """Reads until the end (or `limit` bytes); fills `received`."""
    loop = asyncio.get_running_loop()
    while True:
        if limit is not None and checker.count >= limit:
            received.end = "complete"
            break
        left = deadline - time.monotonic()
        if left <= 0:
            received.end = "timeout"
            break
        want = 1 << 18 if limit is None else min(1 << 18, limit - checker.count)
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, want), left)
        except (TimeoutError, asyncio.TimeoutError):
            received.end = "timeout"
            break
        except (ConnectionResetError, BrokenPipeError) as error:
            received.end = "reset"
            received.error = type(error).__name__
            break
        except OSError as error:
            received.end = "reset"
            received.error = f"{type(error).__name__}: {error}"
            break
        if not chunk:
            received.end = "eof"
            break
        checker.feed(chunk)
        received.count = checker.count
        received.mismatch_at = checker.mismatch_at
        if on_data:
            on_data()


def _reset_seen_on_send(received: Received, progress: dict) -> None:
    """An app that sends and receives at once may meet a reset on either call: the kernel
    reports ECONNRESET once (to whichever comes first) and a later recv() then returns 0. A
    send that failed with ECONNRESET therefore means the app saw the reset, and its EOF is
    not an orderly one. (A reset after a FIN gives EPIPE instead: that EOF was orderly.)"""
    if received.end == "eof" and progress.get("error") == "ConnectionResetError":
        received.end = "reset"
        received.error = "ECONNRESET on send, then recv 0"


async def _send_stream(sock: socket.socket, prefix: bytes, seed: int, total: int, progress: dict) -> None:
    """Sends prefix + `total` pattern bytes; progress['sent'] counts what the kernel took."""
    loop = asyncio.get_running_loop()
    pattern = Pattern(seed)
    try:
        if prefix:
            await loop.sock_sendall(sock, prefix)
            progress["sent"] += len(prefix)
        at = 0
        while at < total:
            n = min(BLOCK, total - at)
            await loop.sock_sendall(sock, pattern.take(at, n))
            at += n
            progress["sent"] += n
    except OSError as error:
        progress["error"] = type(error).__name__


# ---- connection specs, the server app and the client app --------------------------------


@dataclass
class Spec:
    conn_id: int
    up: int          # pattern bytes the client sends (after the header)
    down: int        # pattern bytes the server sends
    flags: int = 0

    @property
    def up_total(self) -> int:
        return HEADER_LEN + self.up

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, self.conn_id, self.flags, self.up, self.down)


def random_size(rng: random.Random, low: int = 1, high: int = 4 << 20) -> int:
    """Log-uniform: as many tiny transfers as large ones."""
    return int(round(2 ** rng.uniform(low.bit_length() - 1, high.bit_length() - 1)))


@dataclass
class ServerConnection:
    number: int
    spec: Spec | None = None
    header: bytes = b""
    recv: Received = field(default_factory=Received)
    sent: dict = field(default_factory=lambda: {"sent": 0, "error": ""})
    closed: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)


class TransferServer(Waitable):
    """The local service behind the destination proxy (the server app)."""

    def __init__(self, seed: int, rcvbuf: int | None = None, deadline_s: float = 60.0):
        super().__init__()
        self.seed = seed
        self.rcvbuf = rcvbuf
        self.deadline_s = deadline_s
        self.connections: list[ServerConnection] = []
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> str:
        return "server: " + "; ".join(
            f"#{c.number} id={c.spec.conn_id if c.spec else '?'} recv={c.recv.show()} sent={c.sent}"
            for c in self.connections[-12:])

    def by_id(self, conn_id: int) -> ServerConnection | None:
        found = [c for c in self.connections if c.spec and c.spec.conn_id == conn_id]
        return found[-1] if found else None

    async def __aenter__(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._tasks.add(asyncio.create_task(self._accept_loop()))
        return self

    async def __aexit__(self, *exc_info):
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener:
            self._listener.close()

    async def _accept_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            sock.setblocking(False)
            conn = ServerConnection(number=len(self.connections) + 1)
            self.connections.append(conn)
            task = asyncio.create_task(self._serve(conn, sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._notify()

    async def _serve(self, conn: ServerConnection, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.deadline_s
        sender = None
        try:
            # The header first: it says what to expect and what to send.
            while len(conn.header) < HEADER_LEN:
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, HEADER_LEN - len(conn.header)),
                                                   max(0.01, deadline - time.monotonic()))
                except (TimeoutError, asyncio.TimeoutError):
                    conn.recv.end = "timeout"
                    return
                except OSError as error:
                    conn.recv.end, conn.recv.error = "reset", type(error).__name__
                    return
                if not chunk:
                    conn.recv.end = "eof"
                    return
                conn.header += chunk
                conn.recv.count = len(conn.header)
                self._notify()
            magic, conn_id, flags, up, down = HEADER.unpack(conn.header)
            if magic != MAGIC:
                conn.recv.mismatch_at = 0
                conn.recv.end = "bad-header"
                return
            conn.spec = Spec(conn_id, up, down, flags)
            self._notify()
            checker = Checker(conn.header, stream_seed(self.seed, conn_id, UP))
            checker.count = HEADER_LEN
            sender = asyncio.create_task(_send_stream(sock, b"", stream_seed(self.seed, conn_id, DOWN), down, conn.sent))
            if flags & SERVER_STALLS:
                # A service that stops reading: nothing more is read until the test releases it.
                await asyncio.wait_for(conn.released.wait(), max(0.01, deadline - time.monotonic()))
            await _read_all(sock, checker, conn.recv, conn.spec.up_total, deadline, self._notify)
            if conn.recv.end == "complete":
                left = max(0.01, deadline - time.monotonic())
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender), left)
        except (TimeoutError, asyncio.TimeoutError):
            if conn.recv.end is None:
                conn.recv.end = "timeout"
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            _reset_seen_on_send(conn.recv, conn.sent)
            # A plain close: a FIN once everything sent is out.
            sock.close()
            conn.closed = True
            self._notify()

    async def wait_connection(self, conn_id: int, timeout: float = WAIT) -> ServerConnection:
        await self.wait_until(lambda: self.by_id(conn_id) is not None, timeout, f"server connection {conn_id}")
        return self.by_id(conn_id)

    async def wait_all_closed(self, timeout: float = WAIT) -> None:
        await self.wait_until(lambda: all(c.closed for c in self.connections), timeout,
                              "every server connection to close")


@dataclass
class ClientResult:
    spec: Spec
    local_port: int = 0
    recv: Received = field(default_factory=Received)
    sent: dict = field(default_factory=lambda: {"sent": 0, "error": ""})
    connect_error: str = ""
    seconds: float = 0.0

    def show(self) -> str:
        return (f"id={self.spec.conn_id} up={self.spec.up} down={self.spec.down} client recv={self.recv.show()} "
                f"sent={self.sent['sent']}{(' ' + self.sent['error']) if self.sent['error'] else ''}"
                f"{(' connect ' + self.connect_error) if self.connect_error else ''}")


async def run_client(port: int, spec: Spec, seed: int, timeout: float = 60.0, rcvbuf: int | None = None,
                     read_after: asyncio.Event | None = None, results: list | None = None) -> ClientResult:
    """One checked transfer: connects, sends header + up bytes while reading until the end.
    With `read_after`, nothing is read until that event is set (a client that stops reading)."""
    loop = asyncio.get_running_loop()
    result = ClientResult(spec)
    if results is not None:
        results.append(result)
    started = time.monotonic()
    deadline = started + timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), WAIT)
        except (OSError, asyncio.TimeoutError) as error:
            result.connect_error = type(error).__name__
            result.recv.end = "reset"
            return result
        result.local_port = sock.getsockname()[1]
        sender = asyncio.create_task(_send_stream(sock, spec.header(), stream_seed(seed, spec.conn_id, UP), spec.up,
                                                  result.sent))
        checker = Checker(b"", stream_seed(seed, spec.conn_id, DOWN))
        try:
            if read_after is not None:
                await asyncio.wait_for(read_after.wait(), max(0.01, deadline - time.monotonic()))
            await _read_all(sock, checker, result.recv, None, deadline)
        except (TimeoutError, asyncio.TimeoutError):
            result.recv.end = "timeout"
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            _reset_seen_on_send(result.recv, result.sent)
    finally:
        sock.close()
        result.seconds = time.monotonic() - started
    return result


# ---- the proxies' figures ----------------------------------------------------------------


def proc_status(pid: int) -> dict:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def wait_fd_count(pid: int, target: int, timeout: float, what: str) -> int:
    """Polls /proc (nothing notifies about descriptor counts) until the count is back to
    `target`; returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        count = fd_count(pid)
        if count <= target or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.05)  # polling /proc, not ordering anything


# ---- the whole tunnel with fault proxies on every leg -------------------------------------


class FaultyTunnel(WholeTunnel):
    """A WholeTunnel whose proxies reach the emulator, the service and the clients through
    fault proxies. `plans[leg][key]` is the plan of a connection (CLEAN when absent); legs are
    "source-tunnel", "destination-tunnel", "source-local" and "destination-local"."""

    LEGS = ("source-tunnel", "destination-tunnel", "source-local", "destination-local")

    def __init__(self, emulator, localproxy, workdir, services=("SVC",), thing="fault-thing"):
        super().__init__(emulator, localproxy, workdir, list(services), thing=thing)
        self.plans: dict[str, dict] = {leg: {} for leg in self.LEGS}
        self.default_plan: dict[str, object] = {leg: None for leg in self.LEGS}
        self.faults: dict[str, FaultProxy] = {}

    def plan_function(self, leg: str):
        def plan_for(key) -> Plan:
            if key in self.plans[leg]:
                return self.plans[leg][key]
            default = self.default_plan[leg]
            return default(key) if callable(default) else CLEAN
        return plan_for

    async def start_faults(self, server_port: int, local_buffer: int | None = None) -> None:
        """The tunnel legs and the service's leg; `local_buffer` fixes the kernel buffers of
        the local legs (for cases where a stalled app must stall its proxy soon)."""
        self.local_buffer = local_buffer
        target = (self.emulator.data_host, self.emulator.data_port)
        self.faults["source-tunnel"] = await FaultProxy("source-tunnel", target, self.plan_function("source-tunnel")).start()
        self.faults["destination-tunnel"] = await FaultProxy("destination-tunnel", target,
                                                             self.plan_function("destination-tunnel")).start()
        self.faults["destination-local"] = await FaultProxy(
            "destination-local", ("127.0.0.1", server_port), self.plan_function("destination-local"),
            key_length=HEADER_LEN, key_of=header_key, buffer_size=local_buffer).start()

    async def start_source_local(self) -> FaultProxy:
        port = self.ports[self.services[0]]
        proxy = await FaultProxy("source-local", ("127.0.0.1", port), self.plan_function("source-local"),
                                 key_length=HEADER_LEN, key_of=header_key,
                                 buffer_size=getattr(self, "local_buffer", None)).start()
        self.faults["source-local"] = proxy
        return proxy

    def _argv(self, side, mapping_flag, mapping, extra):
        argv = super()._argv(side, mapping_flag, mapping, extra)
        leg = self.faults.get(f"{side}-tunnel")
        if leg is not None:
            argv[argv.index("-e") + 1] = leg.endpoint
        return argv

    async def close_faults(self) -> None:
        for proxy in self.faults.values():
            await proxy.close()

    @property
    def client_port(self) -> int:
        return self.faults["source-local"].port

    def fault_record(self, leg: str, conn_id: int) -> FaultConnection | None:
        proxy = self.faults.get(leg)
        if proxy is None:
            return None
        found = [c for c in proxy.connections if c.key == conn_id]
        return found[-1] if found else None


# ---- invariants ------------------------------------------------------------------------------


def prefix_breaches(what: str, received: Received, total: int) -> list[str]:
    out = []
    if received.mismatch_at is not None:
        out.append(f"{what}: received bytes differ from what was sent at offset {received.mismatch_at} "
                   f"(not a prefix)")
    if received.count > total:
        out.append(f"{what}: received {received.count} bytes, more than the {total} sent")
    return out


def connection_breaches(spec: Spec, client: ClientResult, server: ServerConnection | None,
                        fs: FaultConnection | None, fd: FaultConnection | None,
                        near_reset: set[str] = frozenset()) -> list[str]:
    """The invariants of one connection, given what the local-leg fault proxies did to it.

    `near_reset` names the apps ("client", "server") whose proxy lost its tunnel while the
    connection was open: a truncated receive there must end in a reset (invariant b)."""
    tag = f"connection {spec.conn_id} (up {spec.up} B, down {spec.down} B"
    for name, rec in (("FS", fs), ("FD", fd)):
        if rec is not None and not rec.plan.transparent:
            tag += f", {name}: {rec.plan.describe()} fired={rec.fired}"
    tag += ")"
    out: list[str] = []
    # A server connection is known by its header; one that never got a whole header cannot be
    # told apart from the others (see orphan_breaches).
    srv = server.recv if server is not None else Received(end="unattributed")
    out += prefix_breaches(f"{tag} server", srv, spec.up_total)
    out += prefix_breaches(f"{tag} client", client.recv, spec.down)
    for name, rec in (("client", client.recv), ("server", srv)):
        if rec.end == "timeout":
            out.append(f"{tag} {name}: no end within the deadline after {rec.count} bytes (hang)")

    # Which local-leg cut fired, if any (at most one leg cuts a connection).
    cut = None
    for leg_name, rec in (("FS", fs), ("FD", fd)):
        if rec is not None and rec.plan.cut is not None and rec.fired:
            cut = (leg_name, rec)
    if near_reset:
        for name, rec, total in (("client", client.recv, spec.down), ("server", srv, spec.up_total)):
            if cut is not None:
                # A local cut that fired may explain an orderly end by itself: a FIN-type cut
                # when exactly what passed it arrived, a reset on the other leg (the protocol
                # ends a connection the same way whether its far app closed or reset).
                leg_name, rec_cut = cut
                passed = rec_cut.forwarded[UP if name == "server" else DOWN]
                adjacent = "client" if leg_name == "FS" else "server"
                kind = rec_cut.plan.cut.kind
                if (kind in ("truncate", "half-close") and rec.count == passed) or \
                        (kind == "reset" and name != adjacent and rec.count <= passed):
                    continue
            if name in near_reset and rec.count < total and rec.end == "eof":
                out.append(f"{tag} {name}: received {rec.count} of {total} bytes and then an orderly EOF after its "
                           f"proxy lost the tunnel: a truncation must be reported as a reset (invariant b)")
        return out
    if cut is None:
        # Nothing cut this connection: everything arrives, and the client sees an orderly end.
        if srv.count != spec.up_total or srv.end != "complete":
            out.append(f"{tag} server: expected all {spec.up_total} bytes, got {srv.show()}")
        if client.recv.count != spec.down or client.recv.end != "eof":
            out.append(f"{tag} client: expected all {spec.down} bytes then EOF, got {client.recv.show()}")
        return out
    leg_name, rec = cut
    kind = rec.plan.cut.kind
    # What passed the fault proxy toward each app (the fault proxies' directions match the apps':
    # up is client -> server on both local legs).
    passed = {"server": rec.forwarded[UP], "client": rec.forwarded[DOWN]}
    adjacent = "client" if leg_name == "FS" else "server"
    for name, got in (("client", client.recv), ("server", srv)):
        if kind in ("truncate", "half-close"):
            # FIN-type cuts: nothing is lost inside the tunnel, and the end is orderly (the cut
            # was an orderly close as far as the proxies can tell).
            if got.count != passed[name]:
                out.append(f"{tag} {name}: expected exactly the {passed[name]} bytes that passed {leg_name}, "
                           f"got {got.show()}")
            if got.end not in ("eof", "complete"):
                out.append(f"{tag} {name}: expected an orderly end after a {kind} at {leg_name}, got {got.show()}")
        elif kind == "reset":
            if got.count > passed[name]:
                out.append(f"{tag} {name}: more bytes ({got.count}) than passed {leg_name} ({passed[name]})")
            total = spec.down if name == "client" else spec.up_total
            if name == adjacent and got.count < total and got.end not in ("reset",):
                out.append(f"{tag} {name}: truncated by a reset at {leg_name} but saw {got.show()}")
            # A reset at FS may end the connection before the server ever got it.
            allowed = ("eof", "reset", "complete") + (("unattributed",) if name == "server" and leg_name == "FS" else ())
            if got.end not in allowed:
                out.append(f"{tag} {name}: unexpected end {got.show()}")
    return out


def orphan_breaches(server, near_reset: set[str]) -> list[str]:
    """Server connections that never received a whole header: their client's first bytes were
    cut off by a tunnel loss, or by a reset on the client's leg before the destination had
    connected. They must end (no hang); where the server's own proxy lost the tunnel, with a
    reset (invariant b)."""
    out = []
    for conn in server.connections:
        if conn.spec is not None:
            continue
        if conn.recv.end in (None, "timeout"):
            out.append(f"server connection #{conn.number} ({len(conn.header)} header bytes): no end (hang)")
        elif "server" in near_reset and conn.recv.end == "eof":
            out.append(f"server connection #{conn.number} received {len(conn.header)} bytes and then an orderly "
                       f"EOF after the tunnel was lost: a truncation must be reported as a reset (invariant b)")
    return out


def server_must_appear(fs: FaultConnection | None, tunnel_lost: bool) -> bool:
    """Whether the server app must get a connection for a client connection: unless a tunnel
    was lost, or the client's leg was reset before the whole header had passed (then the
    source may reset the connection while the destination is still connecting, which drops
    what was queued for it)."""
    if tunnel_lost:
        return False
    if fs is None:
        return True
    if fs.forwarded[UP] < HEADER_LEN:
        return False
    return not (fs.plan.cut is not None and fs.plan.cut.kind == "reset" and fs.fired)


async def settle_server(server: TransferServer, spec: Spec, must_appear: bool, timeout: float) -> None:
    """Waits until the server side of `spec` has ended: when it must appear, for it to appear
    first; when it may never appear, for what has appeared."""
    if must_appear:
        await server.wait_connection(spec.conn_id, timeout)
    conn = server.by_id(spec.conn_id)
    if conn is not None:
        await server.wait_until(lambda: conn.closed, timeout, f"the server side of connection {spec.conn_id} to end")
