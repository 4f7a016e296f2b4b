"""Fault injection matrix: whole tunnels (emulator, source and destination localproxy, a client
and a server app) with a fault proxy (fault_proxy.py) on every leg, checked transfers both ways
on several connections at once, and one fault plan per case.

Per connection (fault_harness.connection_breaches):
  (a) what each app received is a prefix of what the other sent (compared as it arrives);
  (b) a receive that the tunnel's loss truncated ends in a reset, never an orderly EOF; a cut
      on a local leg delivers exactly what passed the cut when it was a FIN (truncate,
      half-close), at most that with a reset;
  (c) nothing hangs: every app sees an end before its deadline; afterwards both proxies are
      still running, a clean transfer through the same tunnel works, and only the proxy whose
      tunnel leg was cut reconnected;
  (d) each proxy's peak RSS (VmHWM) stays under 64 MiB and its descriptor count returns to
      what it was before the first transfer.

Every case has a seed, shown in its test id; all fault decisions and transfer sizes come from
it, so `pytest -k <id>` reruns the same plan. LP_FAULT_SEED=N shifts every seed (new ids) to
explore other plans.

Cases that use --stall-timeout-ms or --pong-timeout-ms first check that `localproxy --help`
lists the option, and fail if it does not: a binary without them cannot pass.

Environment: LOCALPROXY, TUNNEL_SERVICE (as for the other peer tests), LP_FAULT_SEED.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from emulator import Emulator, emulator_binary
from fault_harness import (
    HEADER_LEN,
    RSS_LIMIT_KIB,
    SERVER_STALLS,
    FaultyTunnel,
    Spec,
    TransferServer,
    connection_breaches,
    fd_count,
    orphan_breaches,
    server_must_appear,
    settle_server,
    proc_status,
    random_size,
    run_client,
    wait_fd_count,
)
from fault_proxy import DOWN, UP, Cut, Plan, Stall, random_cut_plan, random_transparent_plan

KIB = 1 << 10
MIB = 1 << 20
SEED_SHIFT = int(os.environ.get("LP_FAULT_SEED", "0")) * 1009
# Every proxy runs with these: quick reconnects, and a short linger for half-closed clients
# (the source waits that long for an answer after a client's FIN).
COMMON_ARGS = ("--half-close-linger-ms", "1000")
RECONNECT_MAX_MS = 1000
# Dead-peer detection for the blackhole cases.
PING_MS, PONG_TIMEOUT_MS = 500, 1500
STALL_TIMEOUT_MS = 1000


# ==========================================================================================
# The cases
# ==========================================================================================


@dataclass
class Case:
    name: str
    seed: int
    # (case, tunnel, rng, specs) -> None: sets the plans.
    setup: Callable
    # "transparent", "source-tunnel", "destination-tunnel" (the tunnel leg cut: that proxy
    # reconnects), "local" (a cut on a local leg), "stall-client", "stall-server".
    kind: str
    connections: int = 4
    sizes: tuple[int, int] = (1, 2 * MIB)
    # Size ranges per app direction when they differ (up: client -> server).
    up_sizes: tuple[int, int] | None = None
    down_sizes: tuple[int, int] | None = None
    needs: str | None = None
    proxy_args: tuple[str, ...] = ()
    timeout: float = 45.0
    # For tunnel cuts: the strict check of the far app (see test_far_side_sees_a_reset).
    far_strict: bool = False

    @property
    def seed_value(self) -> int:
        return self.seed + SEED_SHIFT

    @property
    def id(self) -> str:
        return f"{self.name}-seed{self.seed_value}"


def volume(specs: list[Spec], direction: str) -> int:
    """Payload bytes of all connections in an app direction (up: client -> server)."""
    return sum(s.up_total if direction == UP else s.down for s in specs)


def tunnel_direction(leg: str, app_direction: str) -> str:
    """The fault-proxy direction on a tunnel leg that carries an app direction: the source
    proxy sends the client's bytes up to the service, the destination proxy the server's."""
    if leg == "source-tunnel":
        return app_direction
    return DOWN if app_direction == UP else UP


def transparent_tunnel(kind: str):
    def setup(case, t, rng, specs):
        for leg in ("source-tunnel", "destination-tunnel"):
            if kind == "delay":
                plan = Plan(delay_ms=(0.0, 4.0), seed=rng.getrandbits(32))
            elif kind == "split":
                plan = Plan(split=rng.choice([61, 700, 1500]), seed=rng.getrandbits(32))
            elif kind == "split-tiny":
                plan = Plan(split=3, seed=rng.getrandbits(32))
            else:  # stall one way per leg, somewhere in the transfer
                direction = rng.choice([UP, DOWN])
                plan = Plan(stall=Stall(direction, rng.randrange(16 * KIB, max(32 * KIB, volume(specs, UP) // 2)),
                                        rng.randrange(300, 900)), seed=rng.getrandbits(32))
            t.plans[leg][0] = plan
    return setup


def transparent_local(which: str):
    def setup(case, t, rng, specs):
        for spec in specs:
            for leg in ("source-local", "destination-local"):
                plan = random_transparent_plan(rng, max(spec.up_total, spec.down))
                if which == "stall" and plan.stall is None:
                    plan = Plan(stall=Stall(rng.choice([UP, DOWN]), rng.randrange(0, max(1, spec.down)),
                                            rng.randrange(200, 800)), seed=plan.seed)
                t.plans[leg][spec.conn_id] = plan
        if which == "all":
            transparent_tunnel(rng.choice(["delay", "split", "stall"]))(case, t, rng, specs)
    return setup


def tunnel_cut(leg: str, kind: str, app_direction: str):
    def setup(case, t, rng, specs):
        total = volume(specs, app_direction)
        at = rng.randrange(32 * KIB, max(48 * KIB, total // 2))
        t.plans[leg][0] = Plan(cut=Cut(kind, tunnel_direction(leg, app_direction), at), seed=rng.getrandbits(32))
    return setup


def tunnel_case(name: str, seed: int, leg: str, kind: str, app_direction: str, far_strict: bool = False,
                **extra) -> Case:
    """A tunnel leg cut. The apps whose receives must end in a reset (the near ones: the client
    for the source leg, the server for the destination leg; the far ones with `far_strict`)
    get the larger transfers, so that they are still receiving when the cut comes at most
    halfway through the cut direction's bytes."""
    near_receives = DOWN if leg == "source-tunnel" else UP
    watched = near_receives if not far_strict else (UP if near_receives == DOWN else DOWN)
    large, small = (MIB, 3 * MIB), (256 * KIB, MIB)
    sizes = {"up_sizes": large if watched == UP else small, "down_sizes": large if watched == DOWN else small}
    return Case(name, seed, tunnel_cut(leg, kind, app_direction), leg, far_strict=far_strict, **sizes, **extra)


def local_cut(leg: str, kind: str, direction: str):
    """One connection (the first) is cut; the others run clean beside it."""
    def setup(case, t, rng, specs):
        spec = specs[0]
        size = spec.up_total if direction == UP else spec.down
        low = HEADER_LEN if direction == UP else 0
        t.plans[leg][spec.conn_id] = random_cut_plan(rng, kind, direction, size, low=low)
    return setup


def mixed_local_cuts(case, t, rng, specs):
    """Every connection gets a random local-leg plan: half cut (one leg), half transparent."""
    for spec in specs:
        if rng.random() < 0.5:
            leg = rng.choice(["source-local", "destination-local"])
            kind = rng.choice(["reset", "truncate", "half-close"])
            direction = rng.choice([UP, DOWN])
            size = spec.up_total if direction == UP else spec.down
            low = HEADER_LEN if direction == UP else 0
            if size <= low:
                direction, size, low = DOWN, spec.down, 0
            t.plans[leg][spec.conn_id] = random_cut_plan(rng, kind, direction, max(size, 1), low=low)
        else:
            for leg in ("source-local", "destination-local"):
                t.plans[leg][spec.conn_id] = random_transparent_plan(rng, max(spec.up_total, spec.down))


def no_plans(case, t, rng, specs):
    pass


BIG = (256 * KIB, 2 * MIB)
PONG_ARGS = ("--ping-interval-ms", str(PING_MS), "--pong-timeout-ms", str(PONG_TIMEOUT_MS))

CASES = [
    # -- transparent faults: every byte arrives, nobody reconnects --------------------------
    Case("tunnel-delay", 101, transparent_tunnel("delay"), "transparent", sizes=(1, 3 * MIB)),
    Case("tunnel-split", 102, transparent_tunnel("split"), "transparent", sizes=(1, 2 * MIB)),
    Case("tunnel-split-tiny", 103, transparent_tunnel("split-tiny"), "transparent", connections=3, sizes=(1, 24 * KIB)),
    Case("tunnel-stall", 104, transparent_tunnel("stall"), "transparent", sizes=BIG),
    Case("local-delay-split", 105, transparent_local("delay-split"), "transparent", connections=6, sizes=(1, 2 * MIB)),
    Case("local-stall", 106, transparent_local("stall"), "transparent", connections=4, sizes=(1, MIB)),
    Case("all-legs-transparent", 107, transparent_local("all"), "transparent", connections=8, sizes=(1, 4 * MIB)),
    # -- a tunnel leg cut: that proxy reconnects; its apps' truncated receives end in a reset -
    # (-up/-down: the app direction whose bytes trigger the cut; toward-proxy/-service: who
    # gets the FIN of a half-close on the tunnel leg.)
    tunnel_case("source-tunnel-reset-down", 201, "source-tunnel", "reset", DOWN),
    tunnel_case("source-tunnel-reset-up", 202, "source-tunnel", "reset", UP),
    tunnel_case("source-tunnel-truncate-down", 203, "source-tunnel", "truncate", DOWN),
    tunnel_case("source-tunnel-truncate-up", 204, "source-tunnel", "truncate", UP),
    tunnel_case("source-tunnel-half-close-toward-proxy", 205, "source-tunnel", "half-close", DOWN),
    tunnel_case("source-tunnel-half-close-toward-service", 206, "source-tunnel", "half-close", UP),
    tunnel_case("destination-tunnel-reset-up", 211, "destination-tunnel", "reset", UP),
    tunnel_case("destination-tunnel-truncate-down", 212, "destination-tunnel", "truncate", DOWN),
    tunnel_case("destination-tunnel-half-close-toward-proxy", 213, "destination-tunnel", "half-close", UP),
    tunnel_case("destination-tunnel-half-close-toward-service", 214, "destination-tunnel", "half-close", DOWN),
    # A path that silently stops forwarding both ways: only dead-peer detection notices.
    tunnel_case("source-tunnel-blackhole", 221, "source-tunnel", "blackhole", DOWN,
                needs="--pong-timeout-ms", proxy_args=PONG_ARGS),
    tunnel_case("destination-tunnel-blackhole", 222, "destination-tunnel", "blackhole", UP,
                needs="--pong-timeout-ms", proxy_args=PONG_ARGS),
    # -- a local leg cut: that connection ends, the others are untouched ----------------------
    Case("client-leg-reset", 301, local_cut("source-local", "reset", DOWN), "local", sizes=BIG),
    Case("client-leg-truncate", 302, local_cut("source-local", "truncate", UP), "local", sizes=BIG),
    Case("client-half-closes", 303, local_cut("source-local", "half-close", UP), "local", sizes=BIG),
    Case("client-leg-half-close-toward-client", 304, local_cut("source-local", "half-close", DOWN), "local", sizes=BIG),
    Case("service-leg-reset", 311, local_cut("destination-local", "reset", UP), "local", sizes=BIG),
    Case("service-leg-truncate", 312, local_cut("destination-local", "truncate", DOWN), "local", sizes=BIG),
    Case("service-half-closes", 313, local_cut("destination-local", "half-close", DOWN), "local", sizes=BIG),
    Case("service-leg-half-close-toward-service", 314, local_cut("destination-local", "half-close", UP), "local",
         sizes=BIG),
    Case("local-cuts-mixed", 321, mixed_local_cuts, "local", connections=10, sizes=(1, 2 * MIB)),
    # -- one app stops reading: with --stall-timeout-ms its connection is reset, others flow ---
    Case("stall-timeout-client-stops-reading", 401, no_plans, "stall-client", connections=2,
         needs="--stall-timeout-ms", proxy_args=("--stall-timeout-ms", str(STALL_TIMEOUT_MS))),
    Case("stall-timeout-service-stops-reading", 402, no_plans, "stall-server", connections=2,
         needs="--stall-timeout-ms", proxy_args=("--stall-timeout-ms", str(STALL_TIMEOUT_MS))),
]

FAR_SIDE_CASES = [
    tunnel_case("far-side-of-source-tunnel-reset", 501, "source-tunnel", "reset", UP, far_strict=True),
    tunnel_case("far-side-of-destination-tunnel-reset", 502, "destination-tunnel", "reset", DOWN, far_strict=True),
]


# ==========================================================================================
# Fixtures
# ==========================================================================================


@pytest.fixture(scope="module")
def fault_emulator(tmp_path_factory):
    """One emulator for the module (each case opens its own tunnel); it must exit 0."""
    emulator = Emulator(emulator_binary(), tmp_path_factory.mktemp("fault-service"), []).start()
    yield emulator
    code = emulator.stop()
    assert code == 0, f"tunnel-service exited {code}; stderr: {emulator.stderr()[-3000:]}"


@pytest.fixture(scope="module")
def proxy_help(localproxy):
    return subprocess.run([localproxy, "--help"], capture_output=True, text=True, timeout=30).stdout


def run(scenario, timeout: float):
    async def bounded():
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


# ==========================================================================================
# One case
# ==========================================================================================


@dataclass
class Outcome:
    breaches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_specs(case: Case, rng: random.Random, first_id: int = 1) -> list[Spec]:
    specs = []
    for i in range(case.connections):
        up = random_size(rng, *(case.up_sizes or case.sizes))
        down = random_size(rng, *(case.down_sizes or case.sizes))
        specs.append(Spec(first_id + i, up, down))
    return specs


def reconnects(proc) -> int:
    return sum(1 for line in proc.lines if "connected to wss://" in line) - 1


async def clean_transfer(t: FaultyTunnel, server: TransferServer, seed: int, first_id: int, out: Outcome,
                         attempts: int = 4) -> None:
    """Two clean connections through the same tunnel must work (invariant c). A connection
    made while a reconnect is still settling (the source has no SERVICE_IDS yet, or a stream
    reset from the service is on its way) may be closed without any data: such an attempt is
    repeated, up to `attempts` times."""
    for attempt in range(attempts):
        specs = [Spec(first_id + 2 * attempt + i, 48 * KIB + i, 40 * KIB + i) for i in range(2)]
        results = await asyncio.gather(*(run_client(t.client_port, s, seed, timeout=20) for s in specs))
        for spec, result in zip(specs, results):
            # A connection refused while the reconnect settles never reaches the server.
            await settle_server(server, spec, result.recv.count > 0, 20)
        problems = []
        for spec, result in zip(specs, results):
            problems += connection_breaches(spec, result, server.by_id(spec.conn_id), None, None)
        if not problems:
            if attempt:
                out.notes.append(f"clean transfer worked at attempt {attempt + 1}")
            return
        untouched = all(r.recv.count == 0 for r in results)
        if not untouched or attempt == attempts - 1:
            out.breaches.append("the clean transfer after the fault failed: " + "; ".join(problems))
            return


async def run_case(case: Case, emulator: Emulator, localproxy: str, tmp_path) -> Outcome:
    out = Outcome()
    rng = random.Random(case.seed_value)
    seed = case.seed_value
    specs = make_specs(case, rng)
    if case.kind == "stall-server":
        # The server of the first connection stops reading a large upload; the second uploads
        # enough that it cannot finish before the tunnel waits for the first.
        specs = [Spec(1, 32 * MIB, 64 * KIB, SERVER_STALLS), Spec(2, 16 * MIB, 64 * KIB)]
    if case.kind == "stall-client":
        # The same toward the source: the first client stops reading a large download.
        specs = [Spec(1, 64 * KIB, 32 * MIB), Spec(2, 64 * KIB, 16 * MIB)]
    server_rcvbuf = 16 * KIB if case.kind == "stall-server" else None
    async with TransferServer(seed, rcvbuf=server_rcvbuf, deadline_s=case.timeout) as server:
        t = FaultyTunnel(emulator, localproxy, tmp_path)
        try:
            case.setup(case, t, rng, specs)
            stalling = case.kind in ("stall-client", "stall-server")
            # A stalled app must stall its proxy: small fixed buffers on the local legs, else the
            # kernel would absorb megabytes first.
            await t.start_faults(server.port, local_buffer=64 * KIB if stalling else None)
            args = (*COMMON_ARGS, *case.proxy_args)
            destination = await t.start_destination(f"SVC={t.faults['destination-local'].endpoint}", *args)
            source = await t.start_source("SVC=", *args)
            await t.start_source_local()
            pids = {"source": source.proc.pid, "destination": destination.proc.pid}
            baseline = {side: fd_count(pid) for side, pid in pids.items()}
            marks = {"source": source.mark(), "destination": destination.mark()}
            started = time.monotonic()

            release = asyncio.Event()
            results: list = []
            clients = []
            for i, spec in enumerate(specs):
                stalled = case.kind == "stall-client" and i == 0
                clients.append(asyncio.create_task(run_client(
                    t.client_port, spec, seed, timeout=case.timeout, results=results,
                    rcvbuf=16 * KIB if stalled else None, read_after=release if stalled else None)))

            if case.kind in ("stall-client", "stall-server"):
                # The other connection must finish while one app reads nothing: its proxy resets
                # that app's connection after --stall-timeout-ms, and says so.
                others = await asyncio.gather(*clients[1:])
                for spec, result in zip(specs[1:], others):
                    out.breaches += connection_breaches(spec, result, server.by_id(spec.conn_id), None, None)
                out.notes.append(f"{len(others)} other connection(s) done in {time.monotonic() - started:.2f} s "
                                 f"while one app read nothing")
                proc = source if case.kind == "stall-client" else destination
                try:
                    await proc.wait_line("took no data for", timeout=10, start=marks[proc.name])
                except AssertionError as error:
                    out.breaches.append(f"the {proc.name} did not reset the stalled connection: {error}")
                release.set()
                stalled_conn = await server.wait_connection(specs[0].conn_id)
                stalled_conn.released.set()
                first = await clients[0]
                await server.wait_all_closed(case.timeout)
                srv = stalled_conn
                # The app that stopped reading had its connection reset by its proxy.
                if case.kind == "stall-client":
                    if not (first.recv.end == "reset" and first.recv.count < specs[0].down):
                        out.breaches.append(f"the client that stopped reading should have been reset after "
                                            f"--stall-timeout-ms: {first.show()}")
                else:
                    if not (srv.recv.end == "reset" and srv.recv.count < specs[0].up_total):
                        out.breaches.append(f"the service that stopped reading should have been reset after "
                                            f"--stall-timeout-ms: {srv.recv.show()}")
                for rec, total, name in ((first.recv, specs[0].down, "client"), (srv.recv, specs[0].up_total, "server")):
                    if rec.mismatch_at is not None or rec.count > total or rec.end == "timeout":
                        out.breaches.append(f"stalled connection {name}: {rec.show()}")
            else:
                if case.kind in ("source-tunnel", "destination-tunnel"):
                    leg = case.kind
                    side = leg.split("-")[0]
                    proc = source if side == "source" else destination
                    fired = await t.faults[leg].wait_fired(1, case.timeout)
                    fired_at = fired[0].fired_at
                    await proc.wait_line("connected to wss://", timeout=case.timeout, start=marks[side])
                    seen = time.monotonic() - fired_at
                    out.notes.append(f"{fired[0].fired} on {leg}; {side} reconnected {seen:.2f} s later")
                    bound = RECONNECT_MAX_MS / 1000 + 5.0
                    if "blackhole" in case.name:
                        bound += (PING_MS + PONG_TIMEOUT_MS) / 1000
                    if seen > bound:
                        out.breaches.append(f"{side} reconnected only {seen:.1f} s after the fault (bound {bound:.1f} s)")
                await asyncio.gather(*clients)
                tunnel_lost = case.kind in ("source-tunnel", "destination-tunnel")
                for spec in specs:
                    await settle_server(server, spec, server_must_appear(
                        t.fault_record("source-local", spec.conn_id), tunnel_lost), case.timeout)
                await server.wait_all_closed(case.timeout)
                near = set()
                if case.kind == "source-tunnel":
                    near = {"server"} if case.far_strict else {"client"}
                elif case.kind == "destination-tunnel":
                    near = {"client"} if case.far_strict else {"server"}
                for spec in specs:
                    result = next(r for r in results if r.spec is spec)
                    out.breaches += connection_breaches(
                        spec, result, server.by_id(spec.conn_id), t.fault_record("source-local", spec.conn_id),
                        t.fault_record("destination-local", spec.conn_id), near_reset=near)
                out.breaches += orphan_breaches(server, near)
                if near:
                    truncated = []
                    for spec in specs:
                        client = next(r for r in results if r.spec is spec).recv
                        srv = server.by_id(spec.conn_id)
                        if "client" in near and client.count < spec.down:
                            truncated.append(spec.conn_id)
                        if "server" in near and (srv is None or srv.recv.count < spec.up_total):
                            truncated.append(spec.conn_id)
                    if not truncated:
                        out.breaches.append(f"the tunnel fault truncated no receive of the {'/'.join(near)}: "
                                            f"the case tested nothing")
                if case.kind == "local":
                    cut = [c for leg in ("source-local", "destination-local") for c in t.faults[leg].connections
                           if c.plan.cut is not None]
                    out.notes.append("local cuts: " + "; ".join(c.describe() for c in cut))
                    if not any(c.fired for c in cut):
                        out.breaches.append("no local cut fired: the case tested nothing")
            elapsed = time.monotonic() - started
            moved = sum(r.recv.count for r in results) + sum(c.recv.count for c in server.connections)
            out.notes.append(f"{len(specs)} connections, {moved / MIB:.1f} MiB received in {elapsed:.2f} s")

            # Reconnects only where a tunnel leg was cut.
            expected = {"source": 0, "destination": 0}
            if case.kind in ("source-tunnel", "destination-tunnel"):
                expected[case.kind.split("-")[0]] = 1
            for side, proc in (("source", source), ("destination", destination)):
                got = reconnects(proc)
                if got != expected[side]:
                    out.breaches.append(f"{side} reconnected {got} time(s), expected {expected[side]}")

            await clean_transfer(t, server, seed, 1000, out)

            for side, proc in (("source", source), ("destination", destination)):
                if proc.returncode is not None:
                    out.breaches.append(f"{side} exited {proc.returncode}; it should still run")
            for side, pid in pids.items():
                count = await wait_fd_count(pid, baseline[side], 10.0, side)
                if count != baseline[side]:
                    out.breaches.append(f"{side} has {count} descriptors after every connection closed, "
                                        f"{baseline[side]} before (invariant d)")
                status = proc_status(pid)
                out.notes.append(f"{side}: VmHWM {status.get('VmHWM', 0) // 1024} MiB, fds {baseline[side]}->{count}")
                if status.get("VmHWM", 0) > RSS_LIMIT_KIB:
                    out.breaches.append(f"{side} peak RSS {status['VmHWM']} KiB over {RSS_LIMIT_KIB} KiB (invariant d)")
            if not emulator.alive():
                out.breaches.append("the emulator died")
        finally:
            await t.cleanup()
            await t.close_faults()
            if out.breaches:
                for proxy in t.faults.values():
                    print(proxy.describe())
                print(server.describe())
    return out


def check(case: Case, fault_emulator, localproxy, proxy_help, tmp_path):
    if case.needs:
        assert case.needs in proxy_help, f"localproxy --help does not list {case.needs}"
    outcome = run(run_case(case, fault_emulator, localproxy, tmp_path), case.timeout + 60)
    print(f"{case.id}: " + "; ".join(outcome.notes))
    assert not outcome.breaches, f"{case.id}: {len(outcome.breaches)} breach(es):\n  " + "\n  ".join(outcome.breaches)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case, fault_emulator, localproxy, proxy_help, tmp_path):
    check(case, fault_emulator, localproxy, proxy_help, tmp_path)


# When one proxy loses its tunnel, the other proxy's apps learn it only from the service's
# STREAM_RESET once the first reconnects (tunnel-service --on-reconnect stream-reset, the
# default). Their truncated receives must end in a reset too (invariant b). Kept apart from the
# matrix so that a failure here says exactly this.
@pytest.mark.parametrize("case", FAR_SIDE_CASES, ids=[c.id for c in FAR_SIDE_CASES])
def test_far_side_sees_a_reset(case, fault_emulator, localproxy, proxy_help, tmp_path):
    check(case, fault_emulator, localproxy, proxy_help, tmp_path)
