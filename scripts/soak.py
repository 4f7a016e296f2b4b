#!/usr/bin/env python3
"""Soak: a whole tunnel on this machine (tunnel-service emulator, destination and source
localproxy) with a fault proxy on every leg (Tests/Peers/fault_proxy.py), run for --minutes.

Workers open and close checked connections without pause: random sizes each way (a few bytes
to a few MiB), most of them clean or with harmless faults (delay, split, stall), some cut on a
local leg (reset, truncate, half-close). Every so often one proxy's tunnel connection is reset
through its fault proxy, which forces a reconnect with the same single-use token. Each
connection is checked as in Tests/Peers/test_faults.py (fault_harness.connection_breaches):
prefixes by pattern comparison, exact counts after FIN-type cuts, resets (never an orderly EOF)
for receives a tunnel loss truncated, no hang. The proxies' RSS and descriptors are sampled
throughout; at the end the descriptor counts must be back at their baseline and the peak RSS
under the bound. A summary is printed; the exit status is 1 on any breach.

    make soak MINUTES=N        (or: LOCALPROXY=... TUNNEL_SERVICE=... .venv/bin/python scripts/soak.py --minutes N)

Waits are on events (log lines, connection ends, fault proxy events) with timeouts; the sampler
and the pacing of forced reconnects are timers, not synchronisation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Tests" / "Peers"))

from emulator import Emulator  # noqa: E402
from fault_harness import (  # noqa: E402
    HEADER_LEN,
    RSS_LIMIT_KIB,
    FaultyTunnel,
    Spec,
    TransferServer,
    connection_breaches,
    fd_count,
    orphan_breaches,
    proc_status,
    server_must_appear,
    settle_server,
    random_size,
    run_client,
    wait_fd_count,
)
from fault_proxy import DOWN, UP, random_cut_plan, random_transparent_plan  # noqa: E402

MIB = 1 << 20
KIB = 1 << 10


def binary(env: str, name: str) -> str:
    path = Path(os.environ.get(env) or REPO / ".build" / "debug" / name)
    if not path.is_absolute():
        path = REPO / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        sys.exit(f"soak: {name} not found at {path} (build it, or set {env})")
    return str(path)


@dataclass
class Figures:
    rss_kib: list = field(default_factory=list)
    hwm_kib: int = 0
    fds: list = field(default_factory=list)

    def sample(self, pid: int) -> None:
        status = proc_status(pid)
        if status:
            self.rss_kib.append(status.get("VmRSS", 0))
            self.hwm_kib = max(self.hwm_kib, status.get("VmHWM", 0))
        count = fd_count(pid)
        if count >= 0:
            self.fds.append(count)


@dataclass
class Totals:
    connections: int = 0
    clean: int = 0
    cut: int = 0
    affected: int = 0
    up_bytes: int = 0
    down_bytes: int = 0
    reconnects: dict = field(default_factory=lambda: {"source": 0, "destination": 0})
    breaches: list = field(default_factory=list)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.seed = args.seed
        self.totals = Totals()
        self.figures = {"source": Figures(), "destination": Figures()}
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight: dict[int, Spec] = {}
        self.affected: dict[int, set] = {}
        self.next_id = 1
        self.stop = False
        self.changed = asyncio.Event()

    def breach(self, text: str) -> None:
        self.totals.breaches.append(text)
        print(f"BREACH: {text}", flush=True)

    # ---- workers -------------------------------------------------------------------------

    def plan_connection(self, spec: Spec) -> str:
        """Chooses the local-leg plans of a connection; returns its kind for the summary."""
        roll = self.rng.random()
        if roll < self.args.cut_share:
            leg = self.rng.choice(["source-local", "destination-local"])
            kind = self.rng.choice(["reset", "truncate", "half-close"])
            direction = self.rng.choice([UP, DOWN])
            size = spec.up_total if direction == UP else spec.down
            low = HEADER_LEN if direction == UP else 0
            if size <= low + 1:
                direction, size, low = DOWN, spec.down, 0
            if size <= low + 1:
                return "clean"
            self.t.plans[leg][spec.conn_id] = random_cut_plan(self.rng, kind, direction, size, low=low)
            return "cut"
        if roll < self.args.cut_share + 0.3:
            for leg in ("source-local", "destination-local"):
                self.t.plans[leg][spec.conn_id] = random_transparent_plan(self.rng, max(spec.up_total, spec.down))
        return "clean"

    async def worker(self) -> None:
        while not self.stop:
            await self.gate.wait()
            if self.stop:
                return
            spec = Spec(self.next_id, random_size(self.rng, 1, self.args.max_size),
                        random_size(self.rng, 1, self.args.max_size))
            self.next_id += 1
            kind = self.plan_connection(spec)
            self.in_flight[spec.conn_id] = spec
            result = await run_client(self.t.client_port, spec, self.seed, timeout=self.args.connection_timeout)
            # The server side ends by itself (it has the header's sizes, or sees the end).
            try:
                await settle_server(self.server, spec, server_must_appear(
                    self.t.fault_record("source-local", spec.conn_id), spec.conn_id in self.affected), 30)
            except AssertionError as error:
                self.breach(str(error))
            del self.in_flight[spec.conn_id]
            self.changed.set()
            near = self.affected.pop(spec.conn_id, set())
            srv = self.server.by_id(spec.conn_id)
            problems = connection_breaches(spec, result, srv, self.t.fault_record("source-local", spec.conn_id),
                                           self.t.fault_record("destination-local", spec.conn_id), near_reset=near)
            for p in problems:
                self.breach(f"{p} [plans: FS={self.t.plans['source-local'].get(spec.conn_id)}, "
                            f"FD={self.t.plans['destination-local'].get(spec.conn_id)}, tunnel loss near {near or '-'}]")
            self.totals.connections += 1
            if near:
                self.totals.affected += 1
            elif kind == "cut":
                self.totals.cut += 1
            else:
                self.totals.clean += 1
            self.totals.up_bytes += srv.recv.count if srv else 0
            self.totals.down_bytes += result.recv.count
            # Forget what the fault proxies and the server keep per connection: the soak runs long.
            for leg in ("source-local", "destination-local"):
                self.t.plans[leg].pop(spec.conn_id, None)
            self.prune()

    def prune(self) -> None:
        for proxy in self.t.faults.values():
            proxy.connections[:] = [c for c in proxy.connections if not c.closed or c.key in self.in_flight]
        # Server connections that never got a whole header stay until a forced reconnect (or
        # the end) has judged them.
        self.server.connections[:] = [c for c in self.server.connections
                                      if not c.closed or c.spec is None or c.spec.conn_id in self.in_flight]

    async def judge_orphans(self, near: set) -> None:
        """Server connections without a whole header: only a tunnel loss makes them, and where
        the server's own proxy lost the tunnel they must end in a reset (fault_harness)."""
        orphans = [c for c in self.server.connections if c.spec is None]
        try:
            await self.server.wait_until(lambda: all(c.closed for c in orphans), 30,
                                         "server connections without a header to end")
        except AssertionError as error:
            self.breach(str(error))
        holder = type("Orphans", (), {"connections": orphans})
        for p in orphan_breaches(holder, near):
            self.breach(p)
        self.server.connections[:] = [c for c in self.server.connections if c not in orphans]

    # ---- forced reconnects ----------------------------------------------------------------

    async def force_reconnect(self, side: str) -> None:
        proc = self.t.source if side == "source" else self.t.destination
        self.gate.clear()
        near = {"client"} if side == "source" else {"server"}
        for conn_id in list(self.in_flight):
            self.affected.setdefault(conn_id, set()).update(near)
        mark = proc.mark()
        count = self.t.faults[f"{side}-tunnel"].reset_all(f"forced reconnect of the {side}")
        self.totals.reconnects[side] += 1
        print(f"[{self.elapsed():6.1f}s] forced reconnect of the {side} ({count} tunnel connection(s) reset, "
              f"{len(self.in_flight)} local connection(s) in flight)", flush=True)
        try:
            await proc.wait_line("connected to wss://", timeout=30, start=mark)
        except AssertionError as error:
            self.breach(f"the {side} did not reconnect: {error}")
            self.stop = True
            self.gate.set()
            return
        # The connections that were in flight end first; new ones start once the tunnel works.
        deadline = time.monotonic() + self.args.connection_timeout + 30
        while self.in_flight and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        if self.in_flight:
            self.breach(f"connections {sorted(self.in_flight)} did not end after the forced reconnect")
        ended_at = self.elapsed()
        await self.judge_orphans(near)
        await self.probe()
        print(f"[{self.elapsed():6.1f}s] the {side} is back: in-flight connections ended at {ended_at:.1f}s, "
              f"a clean probe worked", flush=True)
        self.gate.set()

    async def probe(self) -> None:
        """A small clean transfer must work once the reconnect settled; a connection made while
        it settles (no SERVICE_IDS yet at the source, a stream reset on its way) may be refused
        or cut without data, and is tried again."""
        for attempt in range(6):
            spec = Spec(self.next_id, 16 * KIB, 16 * KIB)
            self.next_id += 1
            result = await run_client(self.t.client_port, spec, self.seed, timeout=20)
            try:
                await settle_server(self.server, spec, result.recv.count > 0, 20)
            except AssertionError as error:
                self.breach(f"probe after a reconnect: {error}")
            problems = connection_breaches(spec, result, self.server.by_id(spec.conn_id), None, None)
            if not problems:
                return
            if result.recv.count or attempt == 5:
                for p in problems:
                    self.breach(f"probe after a reconnect: {p}")
                return

    # ---- sampling ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def sampler(self) -> None:
        last_report = 0.0
        while not self.stop:
            for side, pid in self.pids.items():
                self.figures[side].sample(pid)
                if self.figures[side].hwm_kib > RSS_LIMIT_KIB:
                    self.breach(f"{side} peak RSS {self.figures[side].hwm_kib} KiB over {RSS_LIMIT_KIB} KiB")
                    self.stop = True
            if self.elapsed() - last_report >= 10:
                last_report = self.elapsed()
                print(f"[{self.elapsed():6.1f}s] {self.totals.connections} connections, "
                      f"{(self.totals.up_bytes + self.totals.down_bytes) / MIB:.1f} MiB, "
                      + ", ".join(f"{s} RSS {f.rss_kib[-1] // 1024 if f.rss_kib else 0} MiB fds {f.fds[-1] if f.fds else '?'}"
                                  for s, f in self.figures.items()), flush=True)
            await asyncio.sleep(self.args.sample_seconds)  # a sampling period, not a wait for anything

    async def reconnector(self) -> None:
        while not self.stop:
            pause = self.rng.uniform(self.args.reconnect_every * 0.5, self.args.reconnect_every * 1.5)
            if self.elapsed() + pause > self.duration - 10:
                return
            await asyncio.sleep(pause)  # the pacing of the fault itself
            if self.stop:
                return
            await self.force_reconnect(self.rng.choice(["source", "destination"]))

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        self.duration = args.minutes * 60
        work = Path(tempfile.mkdtemp(prefix="soak-"))
        emulator = Emulator(binary("TUNNEL_SERVICE", "tunnel-service"), work / "service", ["-v", "3"]).start()
        try:
            async with TransferServer(self.seed, deadline_s=args.connection_timeout + 30) as server:
                self.server = server
                self.t = FaultyTunnel(emulator, binary("LOCALPROXY", "localproxy"), work, thing="soak-thing")
                try:
                    await self.t.start_faults(server.port)
                    extra = ("--half-close-linger-ms", "1000")
                    destination = await self.t.start_destination(
                        f"SVC={self.t.faults['destination-local'].endpoint}", *extra)
                    source = await self.t.start_source("SVC=", *extra)
                    await self.t.start_source_local()
                    self.pids = {"source": source.proc.pid, "destination": destination.proc.pid}
                    baseline = {side: fd_count(pid) for side, pid in self.pids.items()}
                    self.started = time.monotonic()
                    print(f"soak: {args.minutes:g} min, seed {self.seed}, {args.workers} workers, sizes up to "
                          f"{args.max_size / MIB:g} MiB, forced reconnect every ~{args.reconnect_every:g} s; "
                          f"baseline fds source {baseline['source']}, destination {baseline['destination']}",
                          flush=True)
                    sampler = asyncio.create_task(self.sampler())
                    reconnector = asyncio.create_task(self.reconnector())
                    workers = [asyncio.create_task(self.worker()) for _ in range(args.workers)]
                    ended = asyncio.create_task(asyncio.sleep(self.duration))  # the soak's length
                    await asyncio.wait([ended, *workers], return_when=asyncio.FIRST_COMPLETED)
                    self.stop = True
                    self.gate.set()
                    print(f"[{self.elapsed():6.1f}s] stopping: waiting for the connections in flight", flush=True)
                    await asyncio.wait_for(asyncio.gather(reconnector, return_exceptions=True),
                                           args.connection_timeout + 120)
                    await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True),
                                           args.connection_timeout + 60)
                    print(f"[{self.elapsed():6.1f}s] every worker stopped", flush=True)
                    ended.cancel()
                    for task in workers:
                        if task.done() and task.exception():
                            self.breach(f"a worker failed: {task.exception()!r}")
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)

                    # Any server connection without a header left now came without a tunnel loss.
                    await self.judge_orphans(set())

                    for side, proc in (("source", source), ("destination", destination)):
                        if proc.returncode is not None:
                            self.breach(f"{side} exited {proc.returncode} during the soak")
                    final = {}
                    for side, pid in self.pids.items():
                        final[side] = await wait_fd_count(pid, baseline[side], 15.0, side)
                        self.figures[side].sample(pid)
                        if final[side] != baseline[side]:
                            self.breach(f"{side} has {final[side]} descriptors at the end, {baseline[side]} at the start")
                        if self.figures[side].hwm_kib > RSS_LIMIT_KIB:
                            self.breach(f"{side} peak RSS {self.figures[side].hwm_kib} KiB over {RSS_LIMIT_KIB} KiB")
                    if not emulator.alive():
                        self.breach("the emulator died")
                    self.summary(baseline, final)
                finally:
                    failed = bool(self.totals.breaches)
                    await self.t.cleanup() if failed else await self.quiet_cleanup()
                    await self.t.close_faults()
        finally:
            code = emulator.stop()
            if code != 0:
                self.breach(f"tunnel-service exited {code}: {emulator.stderr()[-2000:]}")
        if self.totals.breaches:
            print(f"soak: logs and state kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)  # tokens and the emulator's CA
        print("SOAK " + ("FAILED" if self.totals.breaches else "OK"), flush=True)
        return 1 if self.totals.breaches else 0

    async def quiet_cleanup(self) -> None:
        for proc in self.t.processes:
            await proc.kill()

    def summary(self, baseline: dict, final: dict) -> None:
        t = self.totals
        print("==== soak summary")
        print(f"  duration        {self.elapsed():.1f} s, seed {self.seed}")
        print(f"  connections     {t.connections} ({t.clean} clean or with harmless faults, {t.cut} cut on a local "
              f"leg, {t.affected} in flight during a forced reconnect)")
        print(f"  bytes received  {t.up_bytes / MIB:.1f} MiB at the server, {t.down_bytes / MIB:.1f} MiB at the clients")
        print(f"  reconnects      source {t.reconnects['source']}, destination {t.reconnects['destination']} (forced)")
        for side, f in self.figures.items():
            rss = f"{min(f.rss_kib) // 1024}-{max(f.rss_kib) // 1024} MiB" if f.rss_kib else "?"
            fds = f"{min(f.fds)}-{max(f.fds)}" if f.fds else "?"
            print(f"  {side:<15} RSS {rss}, peak (VmHWM) {f.hwm_kib / 1024:.1f} MiB; fds {fds} "
                  f"(baseline {baseline[side]}, end {final[side]})")
        print(f"  breaches        {len(t.breaches)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or random.randrange(1, 1 << 31))
    parser.add_argument("--workers", type=int, default=6, help="connections open at once")
    parser.add_argument("--max-size", type=int, default=4 * MIB, help="largest transfer each way")
    parser.add_argument("--cut-share", type=float, default=0.15, help="share of connections cut on a local leg")
    parser.add_argument("--reconnect-every", type=float, default=20, help="mean seconds between forced reconnects")
    parser.add_argument("--connection-timeout", type=float, default=60)
    parser.add_argument("--sample-seconds", type=float, default=1.0)
    args = parser.parse_args()
    return asyncio.run(Soak(args).run())


if __name__ == "__main__":
    sys.exit(main())
