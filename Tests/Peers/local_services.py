"""Local TCP (and Unix socket) servers that stand in for the services a device exposes.

The destination proxy connects to these when the tunnel asks it to. Each server records what
it saw so that a test can check, from the device's side, what crossed the tunnel:

* `EchoServer` answers every line with the line prefixed by its own marker, so an echo that
  reaches the source side provably went through the local server (the proxy cannot invent the
  marker) and tells which server answered when several services are mapped.
* `SinkServer` hashes everything it receives, for the source-to-device bulk transfer.
* `PatternServer` sends a fixed number of deterministic pseudo-random bytes on every
  connection and then closes, for the device-to-source bulk transfer.
* `SlowSink` is a sink that reads at a throttled rate until told to speed up, to push
  back-pressure through the proxy.

All of them run on the test's asyncio loop. Waiting is done on conditions with timeouts
(`Waitable.wait_until`), never on sleeps; the only sleeps here pace the slow consumer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from dataclasses import dataclass, field
from typing import Callable

# One mebibyte of pattern per generator step: large enough that generating 256 MiB costs well
# under a second, small enough that a sender never holds much more than one block in memory.
PATTERN_BLOCK = 1 << 20


class Waitable:
    """A tiny condition mechanism: wait until a predicate holds, re-checked on `_notify()`.

    asyncio.Condition would need its lock taken by the notifier, which is awkward from
    protocol callbacks that are not coroutines; here the producer just calls `_notify()` after
    changing state and every waiter whose predicate now holds is woken.
    """

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []

    def _notify(self) -> None:
        still_waiting = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                ready = predicate()
            except Exception as exc:  # a broken predicate must fail the waiter, not the producer
                future.set_exception(exc)
                continue
            if ready:
                future.set_result(None)
            else:
                still_waiting.append((predicate, future))
        self._waiters = still_waiting

    def describe(self) -> str:
        """State worth showing when a wait times out; subclasses say more."""
        return ""

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; {self.describe()}") from None


def pattern_blocks(seed: int, total: int):
    """Yield `total` deterministic pseudo-random bytes in blocks of at most PATTERN_BLOCK.

    Every block differs, so a reordered, duplicated or lost block changes the SHA-256 of the
    stream (a repeating pattern would hide a lost or swapped block of the period's size).
    """
    rng = random.Random(seed)
    left = total
    while left > 0:
        size = min(PATTERN_BLOCK, left)
        yield rng.randbytes(size)
        left -= size


def pattern_digest(seed: int, total: int) -> str:
    digest = hashlib.sha256()
    for block in pattern_blocks(seed, total):
        digest.update(block)
    return digest.hexdigest()


@dataclass
class LocalConnection:
    """One connection that the proxy opened to a local server."""

    number: int
    received: int = 0
    sent: int = 0
    data: bytearray = field(default_factory=bytearray)
    digest: object = field(default_factory=hashlib.sha256)
    eof: bool = False
    # The proxy ended the connection with a TCP reset (ECONNRESET), not a clean end of file.
    reset: bool = False
    closed: bool = False
    writer: asyncio.StreamWriter | None = None


class LocalServer(Waitable):
    """Base class: listens on 127.0.0.1 (or ::1, or a Unix socket) and records connections.

    Subclasses implement `serve(conn, reader, writer)`. The server counts how many
    connections are open at once, so a test can check that simultaneous tunnel connections
    really were simultaneous on the device side.
    """

    name = "local"

    def __init__(self, *, host: str = "127.0.0.1", unix_path: str | None = None, rcvbuf: int | None = None,
                 reader_limit: int = 2**16) -> None:
        super().__init__()
        self.host = host
        self.unix_path = unix_path
        self.rcvbuf = rcvbuf
        self.reader_limit = reader_limit
        self.connections: list[LocalConnection] = []
        self.open_now = 0
        self.max_open = 0
        self.port: int | None = None
        self.server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> str:
        return (f"{self.name}: {len(self.connections)} connection(s) accepted, {self.open_now} open, "
                f"received {[c.received for c in self.connections][:8]}")

    @property
    def endpoint(self) -> str:
        """The `-d` endpoint text that points the proxy at this server."""
        if self.unix_path is not None:
            return self.unix_path
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    async def __aenter__(self):
        if self.unix_path is not None:
            self.server = await asyncio.start_unix_server(self._accept, path=self.unix_path, limit=self.reader_limit)
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.rcvbuf is not None:
                # Set before listen() so that accepted sockets inherit it: a small receive window
                # makes a slow reader push back on the proxy after kilobytes, not megabytes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((self.host, 0))
            sock.listen(128)
            sock.setblocking(False)
            self.server = await asyncio.start_server(self._accept, sock=sock, limit=self.reader_limit)
            self.port = sock.getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.stop_listening()
        for conn in self.connections:
            if conn.writer is not None and not conn.closed:
                conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_listening(self) -> None:
        """Close the listening socket; connections already accepted stay open."""
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = LocalConnection(number=len(self.connections) + 1, writer=writer)
        self.connections.append(conn)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        self._notify()
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self.serve(conn, reader, writer)
        except ConnectionResetError:
            conn.reset = True
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.closed = True
            self.open_now -= 1
            writer.close()
            self._tasks.discard(task)
            self._notify()

    async def serve(self, conn: LocalConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _received(self, conn: LocalConnection, chunk: bytes) -> None:
        conn.received += len(chunk)
        conn.digest.update(chunk)
        self._notify()

    # ---- waits ---------------------------------------------------------------------------

    async def wait_connections(self, count: int, timeout: float) -> None:
        await self.wait_until(lambda: len(self.connections) >= count, timeout, f"{count} connection(s) to {self.name}")

    async def wait_all_closed(self, timeout: float) -> None:
        await self.wait_until(lambda: all(c.closed for c in self.connections), timeout,
                              f"every connection to {self.name} to be closed")

    async def wait_received(self, conn_index: int, nbytes: int, timeout: float) -> None:
        await self.wait_until(
            lambda: len(self.connections) > conn_index and self.connections[conn_index].received >= nbytes,
            timeout, f"{nbytes} bytes received by {self.name} on connection #{conn_index + 1}")


class EchoServer(LocalServer):
    """Answers each line `L\\n` with `[name] L\\n`; the line `QUIT` makes it say bye and close.

    Working per line makes the answer independent of how TCP or the tunnel chunked the
    request, so the expected reply is exact.
    """

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.marker = f"[{name}] ".encode()

    def reply_for(self, data: bytes) -> bytes:
        """The exact bytes this server sends back for `data` (made of complete lines)."""
        return b"".join(self.marker + line for line in data.splitlines(keepends=True))

    async def serve(self, conn, reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                conn.eof = True
                return
            self._received(conn, line)
            conn.data += line
            if line.rstrip(b"\n") == b"QUIT":
                writer.write(self.marker + b"bye\n")
                await writer.drain()
                return
            # A last line without newline (just before EOF) is echoed as it is, so nothing
            # received is swallowed.
            writer.write(self.marker + line)
            conn.sent += len(self.marker) + len(line)
            await writer.drain()


class SinkServer(LocalServer):
    """Reads and hashes everything; never writes."""

    name = "sink"

    async def serve(self, conn, reader, writer):
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                conn.eof = True
                return
            self._received(conn, chunk)


class PatternServer(LocalServer):
    """On each connection sends `total` pattern bytes (seeded by the connection number), then closes."""

    name = "pattern"

    def __init__(self, total: int, seed: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.total = total
        self.seed = seed
        self.digests: dict[int, str] = {}
        self.finished: dict[int, float] = {}

    async def serve(self, conn, reader, writer):
        digest = hashlib.sha256()
        for block in pattern_blocks(self.seed + conn.number, self.total):
            digest.update(block)
            writer.write(block)
            conn.sent += len(block)
            await writer.drain()
        self.digests[conn.number] = digest.hexdigest()
        self.finished[conn.number] = asyncio.get_running_loop().time()
        # A plain close (FIN) after the last byte: the proxy must forward everything it has
        # read before it reports the end of the connection to the tunnel.
        writer.close()
        await writer.wait_closed()
        self._notify()


class StuckSink(LocalServer):
    """Accepts and never reads until `release()`: a local application that has hung.

    The small receive buffer makes the proxy meet a full socket after a few kilobytes. Once
    released it reads everything, and a reset from the proxy is recorded (`conn.reset`).
    """

    name = "stuck-sink"

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("rcvbuf", 16 * 1024)
        kwargs.setdefault("reader_limit", 16 * 1024)
        super().__init__(**kwargs)
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()

    async def serve(self, conn, reader, writer):
        await self.released.wait()
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                conn.eof = True
                return
            self._received(conn, chunk)


class SlowSink(LocalServer):
    """A sink that reads `rate` bytes per second until `speed_up()`, then as fast as it can.

    The small receive buffer and the small StreamReader limit keep the bytes in flight on the
    device side to tens of kilobytes, so what the proxy does with the rest is visible.
    """

    name = "slow-sink"

    def __init__(self, rate: int = 64 * 1024, **kwargs) -> None:
        kwargs.setdefault("rcvbuf", 32 * 1024)
        kwargs.setdefault("reader_limit", 16 * 1024)
        super().__init__(**kwargs)
        self.rate = rate
        self.fast = asyncio.Event()

    def speed_up(self) -> None:
        self.fast.set()

    async def serve(self, conn, reader, writer):
        # Pace in ticks of 1/16 s; each tick may read rate/16 bytes.
        tick = 1 / 16
        quota = max(1, self.rate // 16)
        while not self.fast.is_set():
            started = asyncio.get_running_loop().time()
            budget = quota
            while budget > 0:
                chunk = await reader.read(budget)
                if not chunk:
                    conn.eof = True
                    return
                self._received(conn, chunk)
                budget -= len(chunk)
            spent = asyncio.get_running_loop().time() - started
            if spent < tick:
                try:
                    await asyncio.wait_for(self.fast.wait(), tick - spent)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                conn.eof = True
                return
            self._received(conn, chunk)


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it (for refused-connection tests).

    The port is bound and released; another process could take it in between, but on a test
    machine that is unlikely enough, and the test would then fail loudly rather than pass.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False
