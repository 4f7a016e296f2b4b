"""A TCP fault proxy for the whole-tunnel fault tests (test_faults.py) and the soak
(scripts/soak.py).

It listens on 127.0.0.1 and forwards every accepted connection to one target, applying a plan
per connection. It sits on any leg of a whole tunnel:

* between a localproxy and the emulator's data plane (`-e 127.0.0.1:PORT` of the proxy points at
  the fault proxy, which forwards the TLS bytes untouched to the emulator);
* between the destination localproxy and a local service (`-d SVC=127.0.0.1:PORT`);
* between a local client and the source localproxy's listening port.

"up" is the direction from the side that connected to the fault proxy toward the target, "down"
the other one. A plan combines:

* delay: latency added before each chunk is forwarded (both directions);
* split: each chunk forwarded in random small pieces, each its own send();
* stall: one direction stops being read for N ms once it has forwarded `at` bytes;
* a cut, once `at` bytes of one direction have been forwarded (exactly that many):
    - reset:      RST both sockets (SO_LINGER 0);
    - truncate:   FIN both ways; what either side sends afterwards is read and dropped;
    - half-close: FIN toward the receiver of that direction only, its sender's further bytes
                  are dropped, the other direction goes on until it ends by itself;
    - blackhole:  nothing more is forwarded either way, silently (no FIN, no RST): both sides
                  are still read and what they send is dropped, as on a path that died.

Every decision comes from `random.Random(seed)`: the plan of a connection is made by the caller
from its seed, and the piece sizes and delays of the connection from the plan's own seed, so a
failing run is reproduced by its seed (the tests print it in their ids).

Counts are exact: `forwarded[d]` is what was handed to the receiver's socket in direction d, so a
FIN-type cut delivers exactly `forwarded[d]` bytes to a receiver that reads until the end.
Resets that arrive from either side are passed on as resets (a faithful relay), FINs as FINs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from local_services import Waitable

UP = "up"
DOWN = "down"
DIRECTIONS = (UP, DOWN)

CUT_KINDS = ("reset", "truncate", "half-close", "blackhole")

READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Stall:
    direction: str
    at: int
    ms: int


@dataclass(frozen=True)
class Cut:
    kind: str
    direction: str
    at: int

    def __post_init__(self):
        assert self.kind in CUT_KINDS, self.kind
        assert self.direction in DIRECTIONS, self.direction


@dataclass(frozen=True)
class Plan:
    """What happens to one connection. The default plan forwards faithfully."""

    delay_ms: tuple[float, float] | None = None
    split: int | None = None
    stall: Stall | None = None
    cut: Cut | None = None
    seed: int = 0

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms[0]:g}-{self.delay_ms[1]:g}ms")
        if self.split:
            parts.append(f"split<={self.split}")
        if self.stall:
            parts.append(f"stall {self.stall.direction}@{self.stall.at} {self.stall.ms}ms")
        if self.cut:
            parts.append(f"{self.cut.kind} {self.cut.direction}@{self.cut.at}")
        return ", ".join(parts) or "clean"

    @property
    def transparent(self) -> bool:
        return self.cut is None


CLEAN = Plan()


def random_transparent_plan(rng: random.Random, size: int) -> Plan:
    """Delay, split or stall (or a mix), never a cut: every byte must arrive."""
    kind = rng.choice(["delay", "split", "stall", "delay+split", "split+stall"])
    delay = (0.0, rng.choice([1.0, 3.0, 8.0])) if "delay" in kind else None
    # Pieces small enough to matter, not so many that Python's forwarding crawls.
    split = max(rng.choice([7, 64, 700, 1500]), size // 20000) if "split" in kind else None
    stall = Stall(rng.choice(DIRECTIONS), rng.randrange(0, max(1, size)), rng.randrange(200, 900)) \
        if "stall" in kind else None
    return Plan(delay_ms=delay, split=split, stall=stall, seed=rng.getrandbits(32))


def random_cut_plan(rng: random.Random, kind: str, direction: str, size: int, low: int = 0) -> Plan:
    """A cut of `kind` in `direction` somewhere in [low, size), with a transparent garnish."""
    at = rng.randrange(low, max(low + 1, size))
    split = rng.choice([None, None, 512, 1500])
    return Plan(split=split, cut=Cut(kind, direction, at), seed=rng.getrandbits(32))


@dataclass
class FaultConnection:
    """One connection through the fault proxy and what happened to it."""

    index: int
    peer: tuple
    plan: Plan = CLEAN
    key: object = None
    forwarded: dict = field(default_factory=lambda: {UP: 0, DOWN: 0})
    # How each direction ended toward its receiver: "fin", "rst", "dropped" (cut, nothing more
    # reached the receiver and no FIN either), or None while it is open.
    ended: dict = field(default_factory=lambda: {UP: None, DOWN: None})
    fired: str | None = None
    fired_at: float | None = None
    closed: bool = False
    first_bytes: bytes = b""

    def describe(self) -> str:
        return (f"#{self.index} key={self.key} plan=({self.plan.describe()}) forwarded up={self.forwarded[UP]} "
                f"down={self.forwarded[DOWN]} ended={self.ended} fired={self.fired}")


class _Link:
    """The two sockets of one connection and the state the two pumps share."""

    def __init__(self, conn: FaultConnection, client: socket.socket, server: socket.socket):
        self.conn = conn
        self.sock = {UP: server, DOWN: client}       # the receiver of each direction
        self.source = {UP: client, DOWN: server}     # the sender of each direction
        # Per direction: "forward", then "drop" (read and discard) after a cut.
        self.mode = {UP: "forward", DOWN: "forward"}
        self.tasks: list[asyncio.Task] = []
        # A direction whose pump is inside sendall gets its FIN from that pump once the piece is
        # out, so that `forwarded` stays exact.
        self.sending = {UP: False, DOWN: False}
        self.fin_pending = {UP: False, DOWN: False}
        self.stall_done = False
        self.aborted = False
        self.plan_ready = asyncio.Event()


def _set_linger_zero(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy(Waitable):
    """Listens on 127.0.0.1 and relays each connection to `target` under a plan.

    `plan_for(key)` gives the plan of a connection. The key is the connection's accept index
    (0, 1, ...) by default; with `key_length` and `key_of`, the first `key_length` bytes the
    connecting side sends are read first (they are forwarded like any others) and `key_of(bytes)`
    is the key, so that a plan can follow a connection's identity rather than accept order.
    """

    def __init__(self, name: str, target: tuple[str, int], plan_for: Callable[[object], Plan] = lambda key: CLEAN,
                 key_length: int = 0, key_of: Callable[[bytes], object] | None = None, buffer_size: int | None = None):
        super().__init__()
        self.name = name
        # Fixed kernel buffers for both sockets of every connection (None: the kernel's
        # autotuning, which grows them to megabytes on loopback).
        self.buffer_size = buffer_size
        self.target = target
        self.plan_for = plan_for
        self.key_length = key_length
        self.key_of = key_of
        self.connections: list[FaultConnection] = []
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> str:
        return f"fault proxy {self.name}: " + "; ".join(c.describe() for c in self.connections[-8:])

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_now(self) -> int:
        return sum(1 for c in self.connections if not c.closed)

    def fired(self) -> list[FaultConnection]:
        return [c for c in self.connections if c.fired]

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> "FaultProxy":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._size_buffers(sock)  # accepted sockets inherit them
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept_loop())
        return self

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc_info):
        await self.close()

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for link in list(self._links):
            self._abort(link, "rst")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset_all(self, why: str = "forced reset") -> int:
        """RST every open connection now (the soak's forced reconnects). Returns how many."""
        count = 0
        for link in list(self._links):
            if not link.aborted:
                self._fire(link.conn, why)
                self._abort(link, "rst")
                count += 1
        return count

    def _size_buffers(self, sock: socket.socket) -> None:
        if self.buffer_size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer_size)

    # ---- accepting ---------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, peer = await loop.sock_accept(self._listener)
            client.setblocking(False)
            conn = FaultConnection(index=len(self.connections), peer=peer)
            self.connections.append(conn)
            task = asyncio.create_task(self._serve(conn, client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._notify()

    async def _serve(self, conn: FaultConnection, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setblocking(False)
        self._size_buffers(server)
        try:
            await asyncio.wait_for(loop.sock_connect(server, self.target), 10)
        except (OSError, asyncio.TimeoutError):
            # The target refused: the connecting side sees a reset, as it would from the target.
            server.close()
            _set_linger_zero(client)
            client.close()
            conn.ended = {UP: "rst", DOWN: "rst"}
            conn.closed = True
            self._notify()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(conn, client, server)
        self._links.append(link)
        if not self.key_length:
            conn.plan = self.plan_for(conn.index)
            link.plan_ready.set()
        link.tasks = [asyncio.create_task(self._pump(link, UP)), asyncio.create_task(self._pump(link, DOWN))]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.close()
            if link in self._links:
                self._links.remove(link)
            conn.closed = True
            self._notify()

    # ---- forwarding --------------------------------------------------------------------

    async def _pump(self, link: _Link, direction: str) -> None:
        loop = asyncio.get_running_loop()
        conn = link.conn
        source = link.source[direction]
        pending = b""
        if direction == UP and self.key_length:
            # Read the key bytes before deciding the plan; they are forwarded afterwards.
            reset = False
            while len(pending) < self.key_length:
                try:
                    chunk = await loop.sock_recv(source, self.key_length - len(pending))
                except OSError:
                    chunk, reset = None, True
                if not chunk:
                    break
                pending += chunk
            conn.first_bytes = pending
            conn.key = self.key_of(pending) if self.key_of and len(pending) == self.key_length else None
            conn.plan = self.plan_for(conn.key)
            link.plan_ready.set()
            self._notify()
            if len(pending) < self.key_length:
                # The connecting side ended before its key: forward what came, then its end
                # as it came (FIN or reset).
                await self._forward(link, direction, pending)
                await self._source_ended(link, direction, reset=reset)
                return
        await link.plan_ready.wait()
        rng = random.Random(f"{conn.plan.seed}:{direction}")
        if pending:
            await self._forward(link, direction, pending, rng)
        while True:
            try:
                chunk = await loop.sock_recv(source, READ_SIZE)
            except OSError:
                await self._source_ended(link, direction, reset=True)
                return
            if not chunk:
                await self._source_ended(link, direction, reset=False)
                return
            if link.aborted:
                return
            if link.mode[direction] == "drop":
                continue
            await self._forward(link, direction, chunk, rng)
            if link.aborted:
                return

    async def _forward(self, link: _Link, direction: str, data: bytes, rng: random.Random | None = None) -> None:
        """Forwards `data` under the plan: up to the next stall or cut offset, then acts."""
        conn = link.conn
        plan = conn.plan
        rng = rng or random.Random(plan.seed)
        while data and link.mode[direction] == "forward" and not link.aborted:
            done = conn.forwarded[direction]
            limit = len(data)
            stall = plan.stall
            if stall and not link.stall_done and stall.direction == direction:
                limit = min(limit, max(0, stall.at - done))
            cut = plan.cut
            if cut and not conn.fired and cut.direction == direction:
                limit = min(limit, max(0, cut.at - done))
            piece, data = data[:limit], data[limit:]
            if piece:
                if not await self._send(link, direction, piece, rng):
                    return
            done = conn.forwarded[direction]
            if stall and not link.stall_done and stall.direction == direction and done >= stall.at:
                link.stall_done = True
                # The fault itself: this direction is not read for a while.
                await asyncio.sleep(stall.ms / 1000)
            if cut and not conn.fired and cut.direction == direction and done >= cut.at:
                self._fire(conn, f"{cut.kind} {direction}@{done}")
                await self._cut(link, cut)
                return

    async def _send(self, link: _Link, direction: str, data: bytes, rng: random.Random) -> bool:
        loop = asyncio.get_running_loop()
        plan = link.conn.plan
        if plan.delay_ms:
            # The fault itself: added latency per chunk.
            await asyncio.sleep(rng.uniform(*plan.delay_ms) / 1000)
        pieces = [data]
        if plan.split:
            pieces = []
            at = 0
            while at < len(data):
                n = rng.randint(1, plan.split)
                pieces.append(data[at:at + n])
                at += n
        for piece in pieces:
            if link.mode[direction] != "forward" or link.aborted:
                return False
            link.sending[direction] = True
            try:
                await loop.sock_sendall(link.sock[direction], piece)
            except OSError:
                # The receiver is gone abnormally: pass a reset on to the sender.
                self._abort(link, "rst")
                return False
            finally:
                link.sending[direction] = False
            link.conn.forwarded[direction] += len(piece)
            if link.fin_pending[direction]:
                link.fin_pending[direction] = False
                self._shutdown(link, direction)
                self._notify()
                return False
            if plan.split:
                await asyncio.sleep(0)  # let each piece leave as its own segment
        self._notify()
        return True

    async def _cut(self, link: _Link, cut: Cut) -> None:
        conn = link.conn
        if cut.kind == "reset":
            self._abort(link, "rst")
        elif cut.kind == "truncate":
            for d in DIRECTIONS:
                link.mode[d] = "drop"
                if link.sending[d]:
                    link.fin_pending[d] = True
                else:
                    self._shutdown(link, d)
        elif cut.kind == "half-close":
            link.mode[cut.direction] = "drop"
            self._shutdown(link, cut.direction)
        elif cut.kind == "blackhole":
            for d in DIRECTIONS:
                link.mode[d] = "drop"
                conn.ended[d] = "dropped"
        self._notify()

    def _shutdown(self, link: _Link, direction: str) -> None:
        """FIN toward the receiver of `direction`."""
        if link.conn.ended[direction] is None:
            link.conn.ended[direction] = "fin"
        with contextlib.suppress(OSError):
            link.sock[direction].shutdown(socket.SHUT_WR)

    async def _source_ended(self, link: _Link, direction: str, reset: bool) -> None:
        """The sender of `direction` ended (FIN, or RST when `reset`)."""
        if link.aborted:
            return
        if reset:
            self._abort(link, "rst")
            return
        if link.mode[direction] == "forward":
            # A faithful relay: the FIN goes on.
            self._shutdown(link, direction)
        elif link.conn.ended[direction] == "dropped":
            # Blackholed: the sender went away, the receiver gets a FIN (a dead path sends no
            # RST either); ended[] keeps saying that the data was dropped.
            with contextlib.suppress(OSError):
                link.sock[direction].shutdown(socket.SHUT_WR)
        # Otherwise a cut already sent this direction's FIN.

    def _abort(self, link: _Link, how: str) -> None:
        """RST both sockets: linger 0 now, the close itself once both pumps stopped (closing a
        socket a cancelled pump still has registered could unregister a reused descriptor)."""
        if link.aborted:
            return
        link.aborted = True
        for d in DIRECTIONS:
            if link.conn.ended[d] is None:
                link.conn.ended[d] = how
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        for s in (link.sock[UP], link.sock[DOWN]):
            _set_linger_zero(s)
        self._notify()

    def _fire(self, conn: FaultConnection, what: str) -> None:
        conn.fired = what
        conn.fired_at = time.monotonic()
        self._notify()

    # ---- waits -------------------------------------------------------------------------

    async def wait_fired(self, count: int = 1, timeout: float = 30.0) -> list[FaultConnection]:
        await self.wait_until(lambda: len(self.fired()) >= count, timeout, f"{count} fault(s) to fire on {self.name}")
        return self.fired()

    async def wait_connections(self, count: int, timeout: float = 30.0) -> None:
        await self.wait_until(lambda: len(self.connections) >= count, timeout,
                              f"{count} connection(s) through {self.name}")

    async def wait_all_closed(self, timeout: float = 30.0) -> None:
        await self.wait_until(lambda: all(c.closed for c in self.connections), timeout,
                              f"every connection through {self.name} to close")
