"""The two ends of the benchmark chain, and the plain forwarder of the no-TLS ceiling.

* `Sink` is the device's application: a TCP server behind the destination proxy.
* `Load` is the laptop's client: it connects through the source proxy's port.
* `Forwarder` relays plain TCP with splice(2), standing in for a proxy or the relay when the
  harness measures the same topology without TLS.

Every connection starts with a 17-byte request from the client: a mode byte, the number of
bytes to move and an offset into the payload pattern. Modes:
  U  client sends N bytes; the sink answers with a 13-byte receipt (b"K", count, CRC-32)
  D  the sink sends N bytes; the client closes after the last one
  B  both at once; the sink's receipt follows the bytes it sent
  E  echo: the sink sends back what it receives until the client closes
Payload bytes are a repeating pattern, so either end knows what the other must send; both ends
keep a CRC-32 of what they sent and received (about 0.4 CPU-ms per MB each) and compare them,
so a transfer that arrives corrupted, short or long fails the run.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import threading
import time
import zlib

HEADER = struct.Struct(">cQQ")
RECEIPT = struct.Struct(">cQI")
CHUNK = 1 << 18
PATTERN_BYTES = 1 << 20


def pattern(kind: str) -> bytes:
    """The repeating payload: `random` (incompressible), `zeros`, or `text` (printable lines)."""
    if kind == "random":
        return random.Random(20261205).randbytes(PATTERN_BYTES)
    if kind == "zeros":
        return bytes(PATTERN_BYTES)
    if kind == "text":
        line = b"localproxy benchmark payload: the quick brown fox jumps over the lazy dog 0123456789\n"
        return (line * (PATTERN_BYTES // len(line) + 1))[:PATTERN_BYTES]
    raise ValueError(f"unknown pattern {kind!r}: use random, zeros or text")


class Payload:
    """Windows of the pattern at any offset, with no copy (the pattern is stored twice)."""

    def __init__(self, kind: str):
        base = pattern(kind)
        self.period = len(base)
        self.view = memoryview(base + base)

    def window(self, offset: int, length: int) -> memoryview:
        start = offset % self.period
        return self.view[start:start + min(length, self.period)]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"the connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def send_stream(sock: socket.socket, payload: Payload, offset: int, count: int, progress=None) -> int:
    """Sends `count` pattern bytes from `offset`; returns their CRC-32."""
    crc = 0
    sent = 0
    while sent < count:
        window = payload.window(offset + sent, min(CHUNK, count - sent))
        sock.sendall(window)
        crc = zlib.crc32(window, crc)
        sent += len(window)
        if progress is not None:
            progress[0] += len(window)
    return crc


def receive_stream(sock: socket.socket, count: int, progress=None) -> tuple[int, int]:
    """Receives up to `count` bytes (fewer if the peer closes); returns (bytes, CRC-32)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    crc = 0
    got = 0
    while got < count:
        n = sock.recv_into(view, min(CHUNK, count - got))
        if n == 0:
            break
        crc = zlib.crc32(view[:n], crc)
        got += n
        if progress is not None:
            progress[0] += n
    return got, crc


def expected_crc(payload: Payload, offset: int, count: int) -> int:
    crc = 0
    done = 0
    while done < count:
        window = payload.window(offset + done, min(CHUNK, count - done))
        crc = zlib.crc32(window, crc)
        done += len(window)
    return crc


class Sink:
    """The application behind the destination proxy."""

    def __init__(self, kind: str, port: int = 0):
        self.payload = Payload(kind)
        self.listener = socket.create_server(("127.0.0.1", port), backlog=128)
        self.port = self.listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            threading.Thread(target=self._serve_one, args=(sock,), daemon=True).start()

    def _serve_one(self, sock: socket.socket) -> None:
        with sock:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                mode, count, offset = HEADER.unpack(recv_exact(sock, HEADER.size))
                if mode == b"E":
                    while True:
                        data = sock.recv(CHUNK)
                        if not data:
                            return
                        sock.sendall(data)
                if mode not in (b"U", b"D", b"B"):
                    print(f"sink: unknown mode {mode!r}", file=sys.stderr, flush=True)
                    return
                sender = None
                if mode in (b"D", b"B"):
                    sender = threading.Thread(target=send_stream, args=(sock, self.payload, offset, count))
                    sender.start()
                if mode in (b"U", b"B"):
                    got, crc = receive_stream(sock, count)
                    if sender:
                        sender.join()
                    sock.sendall(RECEIPT.pack(b"K", got, crc))
                else:
                    sender.join()
                # Wait for the client to finish, so no byte is cut by an early close.
                while sock.recv(4096):
                    pass
            except OSError as error:
                print(f"sink: {error}", file=sys.stderr, flush=True)


class TransferError(Exception):
    pass


class Load:
    """The client on the laptop side: setup time, latency, then the transfer."""

    def __init__(self, port: int, kind: str):
        self.port = port
        self.payload = Payload(kind)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def echo_round(self, sock: socket.socket, message: bytes) -> None:
        sock.sendall(message)
        back = recv_exact(sock, len(message))
        if back != message:
            raise TransferError("the echo came back different from what was sent")

    def setup_times(self, samples: int) -> list[float]:
        """Seconds from connect() to the first 64-byte echo of a new connection."""
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            with self.connect() as sock:
                sock.sendall(HEADER.pack(b"E", 0, 0))
                self.echo_round(sock, b"s" * 64)
                times.append(time.perf_counter() - start)
        return times

    def latencies(self, samples: int) -> list[float]:
        """Round-trip seconds of 64-byte messages on one connection."""
        times = []
        with self.connect() as sock:
            sock.sendall(HEADER.pack(b"E", 0, 0))
            self.echo_round(sock, b"w" * 64)
            for i in range(samples):
                message = bytes((i & 0xFF,)) * 64
                start = time.perf_counter()
                self.echo_round(sock, message)
                times.append(time.perf_counter() - start)
        return times

    def transfer(self, direction: str, total: int, connections: int, progress: list) -> dict:
        """Moves `total` bytes per direction, split over `connections`; returns the totals."""
        mode = {"up": b"U", "down": b"D", "both": b"B"}[direction]
        shares = [total // connections + (1 if i < total % connections else 0) for i in range(connections)]
        errors: list[str] = []
        counters = [[0] for _ in range(connections)]

        def one(index: int, count: int) -> None:
            offset = index * 7919
            try:
                with self.connect() as sock:
                    sock.sendall(HEADER.pack(mode, count, offset))
                    sender = None
                    sent_crc = [0]
                    if mode in (b"U", b"B"):
                        def send() -> None:
                            try:
                                sent_crc[0] = send_stream(sock, self.payload, offset, count, counters[index])
                            except OSError as error:
                                errors.append(f"connection {index}: sending failed: {error}")
                        sender = threading.Thread(target=send)
                        sender.start()
                    if mode in (b"D", b"B"):
                        got, crc = receive_stream(sock, count, counters[index])
                        if got != count or crc != expected_crc(self.payload, offset, count):
                            raise TransferError(f"connection {index}: received {got} of {count} bytes"
                                                f"{'' if got != count else ' with a wrong CRC-32'}")
                    if sender:
                        sender.join()
                    if mode in (b"U", b"B"):
                        status, got, crc = RECEIPT.unpack(recv_exact(sock, RECEIPT.size))
                        if status != b"K" or got != count or crc != sent_crc[0]:
                            raise TransferError(f"connection {index}: the sink received {got} of {count} "
                                                f"bytes{'' if got != count else ' with a wrong CRC-32'}")
                    sock.shutdown(socket.SHUT_WR)
            except (OSError, TransferError) as error:
                errors.append(f"connection {index}: {error}")

        threads = [threading.Thread(target=one, args=(i, share)) for i, share in enumerate(shares)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            # Joined with a timeout only to refresh the progress figure while bytes move.
            while thread.is_alive():
                progress[0] = sum(c[0] for c in counters)
                thread.join(0.25)
        seconds = time.perf_counter() - start
        moved = total * (2 if direction == "both" else 1)
        return {"seconds": seconds, "bytes": moved, "errors": errors}


class Forwarder:
    """Plain TCP relay with splice(2): the no-TLS stand-in for a proxy or the relay."""

    def __init__(self, target_port: int, port: int = 0):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", port), backlog=128)
        self.port = self.listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            done = threading.Barrier(2, action=lambda c=client, u=upstream: (c.close(), u.close()))
            threading.Thread(target=self._pump, args=(client, upstream, done), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, done), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, done: threading.Barrier) -> None:
        read_end, write_end = os.pipe()
        try:
            while True:
                n = os.splice(source.fileno(), write_end, 1 << 20)
                if n == 0:
                    break
                while n:
                    n -= os.splice(read_end, target.fileno(), n)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            os.close(read_end)
            os.close(write_end)
            try:
                done.wait(timeout=60)
            except threading.BrokenBarrierError:
                pass
