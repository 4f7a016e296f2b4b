#!/usr/bin/env python3
"""localproxy throughput harness (`make bench`).

Measures whole chains on this machine, one process per box:

    load ──TCP──▶ source proxy ──TLS/WS──▶ relay ──TLS/WS──▶ destination proxy ──TCP──▶ sink

`load` and `sink` move checksummed bytes (traffic.py); the relay is an opaque TLS WebSocket
relay in C with OpenSSL that never parses tunnel frames (wsrelay.c), so it costs the same for
every proxy under test and little next to them. For each proxy binary, direction and connection count it reports chain MB/s, CPU-ms per
MB of every process (from /proc over the transfer window), each proxy's peak RSS, 64-byte
round-trip latency, connection setup time and the negotiated TLS suite; medians over N runs
with min/max. In the same run it measures two ceilings: the same topology with plain TCP
forwarders (splice) instead of proxies and relay, and the record cipher alone (the
aead-ceiling tool, built against the same mbedTLS as the proxy). MB is 10^6 bytes.

Before each run it waits until the machine is quiet; a run during which other processes used
more than a small share of the CPU is marked disturbed and repeated.

    bench.py run --proxy ours-host=.build/release/localproxy [--proxy NAME=PATH ...]
                 [--bytes 256MiB] [--directions up,down] [--connections 1,8,64] [--runs 3]
                 [--pattern random|zeros|text] [--aead NAME=TOOL] [--emulated NAME] [--out DIR]
                 --relay PATH-TO-wsrelay

The other subcommands (sink, load, forward) are the chain's processes, started by `run`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import traffic  # noqa: E402
from report import render_svg, render_table  # noqa: E402

MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A run during which processes other than the chain's used more than this many cores on
# average is disturbed.
DISTURBED_CORES = 0.15
# Before a run, the machine counts as quiet below this many busy cores.
QUIET_CORES = 0.20
WAIT = 30.0


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*(|k|K|KiB|M|MiB|G|GiB)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use a number with KiB, MiB or GiB")
    scale = {"": 1, "k": 1 << 10, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
             "G": 1 << 30, "GiB": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


# ---------------------------------------------------------------------------------------------
# /proc readings

def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def listening(port: int) -> bool:
    """Whether a TCP socket listens on `port` (read from /proc/net, without connecting)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_quiet(limit: float = 60.0) -> float:
    """Waits (up to `limit` s) until the machine is quiet; returns the seconds waited."""
    start = time.monotonic()
    while True:
        busy0, total0 = machine_ticks()
        time.sleep(0.5)
        busy1, total1 = machine_ticks()
        cores = os.cpu_count() or 1
        used = (busy1 - busy0) / max(total1 - total0, 1) * cores
        if used < QUIET_CORES or time.monotonic() - start > limit:
            return time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# Child processes

class Child:
    """A process of the chain whose stdout lines are queued as they come."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None,
                 stdin: bool = False):
        self.name = name
        self.log = log
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.stderr = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     env=env, text=True, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float = WAIT, alive: tuple["Child", ...] = ()) -> str:
        """The next stdout line starting with `prefix`; fails if the process ends first, or if
        one of `alive` (the processes that should make it speak) exits meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            for other in alive:
                if other.proc.poll() is not None:
                    raise RuntimeError(f"{other.name} exited ({other.proc.returncode}) while {self.name} "
                                       f"waited for it: {other.tail()}")
            try:
                line = self.lines.get(timeout=0.1 if alive else max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                raise RuntimeError(f"{self.name} did not say {prefix!r} within {timeout:.0f} s; "
                                   f"see {self.log}") from None
            if line is None:
                self.proc.wait()
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before saying {prefix!r}; "
                                   f"see {self.log}")
            if line.startswith(prefix):
                return line

    def tail(self, lines: int = 3) -> str:
        """The last lines the process wrote to stderr, and where the rest is."""
        self.stderr.flush()
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            text = []
        return " | ".join(text) + f" (log: {self.log})"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


class Processes:
    """Every child the harness started, so that any exit (Ctrl-C included) stops them all."""

    def __init__(self):
        self.children: list[Child] = []

    def start(self, *args, **kwargs) -> Child:
        child = Child(*args, **kwargs)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def role_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / "bench.py"), role, *args]


# ---------------------------------------------------------------------------------------------
# One measured run

class Chain:
    def __init__(self, options, workdir: Path, certs: tuple[Path, Path]):
        self.options = options
        self.workdir = workdir
        self.certs = certs

    def run(self, path: str | None, direction: str, connections: int,
            label: str, progress, attempt: int = 1) -> dict:
        """One run of the proxy binary at `path`; None is the plain-TCP ceiling. Each run keeps
        its own logs."""
        processes = Processes()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        stem = f"{label}-{direction}-{connections}-run{attempt}".replace("/", "_")
        try:
            sink = processes.start("sink", role_argv("sink", "--pattern", self.options.pattern),
                                   logs / f"{stem}-sink.log")
            sink_port = int(sink.expect("listening").split()[1])
            pids: dict[str, int] = {"sink": sink.pid}
            suites: dict[str, str] = {}
            if path is None:
                dst = processes.start("destination", role_argv("forward", "--target", str(sink_port)),
                                      logs / f"{stem}-dst.log")
                dst_port = int(dst.expect("listening").split()[1])
                mid = processes.start("relay", role_argv("forward", "--target", str(dst_port)),
                                      logs / f"{stem}-relay.log")
                mid_port = int(mid.expect("listening").split()[1])
                src = processes.start("source", role_argv("forward", "--target", str(mid_port)),
                                      logs / f"{stem}-src.log")
                src_port = int(src.expect("listening").split()[1])
            else:
                cert, key = self.certs
                mid = processes.start("relay", [self.options.relay, "--cert", str(cert), "--key", str(key)],
                                      logs / f"{stem}-relay.log")
                mid_port = int(mid.expect("listening").split()[1])
                env = dict(os.environ, AWSIOT_TUNNEL_ACCESS_TOKEN="bench" + secrets.token_hex(24))
                common = ["-e", f"127.0.0.1:{mid_port}", "-k", "-v", str(self.options.verbose)]
                dst = processes.start("destination", [path, "-d", f"127.0.0.1:{sink_port}", *common],
                                      logs / f"{stem}-dst.log", env=env)
                suites["destination"] = mid.expect("connected destination", alive=(dst,)).split(" ", 3)[2]
                src_port = free_port()
                src = processes.start("source", [path, "-s", str(src_port), *common],
                                      logs / f"{stem}-src.log", env=env)
                line = mid.expect("connected source", alive=(dst, src))
                suites["source"] = line.split(" ", 3)[2]
                mid.expect("paired", alive=(dst, src))
                deadline = time.monotonic() + WAIT
                while not listening(src_port):
                    if src.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the source proxy is not listening on {src_port}; see {src.log}")
                    time.sleep(0.02)
            pids.update(source=src.pid, relay=mid.pid, destination=dst.pid)
            load = processes.start("load", role_argv(
                "load", "--port", str(src_port), "--pattern", self.options.pattern,
                "--direction", direction, "--bytes", str(self.options.bytes),
                "--connections", str(connections), "--latency-samples", str(self.options.latency_samples),
                "--setup-samples", str(self.options.setup_samples)), logs / f"{stem}-load.log", stdin=True)
            pids["load"] = load.pid
            ready = json.loads(load.expect("{").strip())
            before = {name: cpu_ticks(pid) for name, pid in pids.items()}
            machine_before = machine_ticks()
            load.send("go")
            while True:
                message = json.loads(load.expect("{", timeout=self.options.timeout))
                if message["event"] == "progress":
                    progress(message["bytes"])
                    continue
                break
            after = {name: cpu_ticks(pid) for name, pid in pids.items()}
            machine_after = machine_ticks()
            rss = {name: peak_rss_kib(pids[name]) for name in ("source", "destination")}
            if message["errors"]:
                raise RuntimeError("the transfer failed: " + "; ".join(message["errors"][:4]))
            seconds = message["seconds"]
            megabytes = message["bytes"] / MB
            cpu_ms = {name: (after[name] - before[name]) * 1000 / CLK_TCK for name in pids}
            busy = (machine_after[0] - machine_before[0]) * 1000 / CLK_TCK
            wall_ms = seconds * 1000
            other_cores = max(busy - sum(cpu_ms.values()), 0) / wall_ms
            latency = sorted(ready["latency"])
            setup = sorted(ready["setup"])
            return {
                "mb_per_s": megabytes / seconds,
                "seconds": seconds,
                "bytes": message["bytes"],
                "cpu_ms_per_mb": {name: ms / megabytes for name, ms in cpu_ms.items()},
                "peak_rss_kib": rss,
                "latency_ms": {"p50": percentile(latency, 50) * 1000, "p99": percentile(latency, 99) * 1000},
                "setup_ms": {"p50": percentile(setup, 50) * 1000, "max": setup[-1] * 1000} if setup else None,
                "suites": suites,
                "other_cores": other_cores,
                "disturbed": other_cores > DISTURBED_CORES,
            }
        finally:
            processes.stop_all()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    k = (len(values) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (k - low)


def summarize(runs: list[dict]) -> dict:
    """Median and range over the runs of each figure."""
    def stat(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    names = runs[0]["cpu_ms_per_mb"].keys()
    return {
        "mb_per_s": stat([r["mb_per_s"] for r in runs]),
        "cpu_ms_per_mb": {n: stat([r["cpu_ms_per_mb"][n] for r in runs]) for n in names},
        "peak_rss_kib": {n: max(r["peak_rss_kib"][n] for r in runs) for n in ("source", "destination")},
        "latency_ms": {"p50": statistics.median(r["latency_ms"]["p50"] for r in runs),
                       "p99": statistics.median(r["latency_ms"]["p99"] for r in runs)},
        "setup_ms": (statistics.median(r["setup_ms"]["p50"] for r in runs)
                     if runs[0]["setup_ms"] else None),
        "suites": runs[-1]["suites"],
        "disturbed_runs": sum(1 for r in runs if r["disturbed"]),
    }


def suite_key(name: str) -> str | None:
    """The aead-ceiling suite of an OpenSSL cipher name."""
    upper = name.upper()
    if "CHACHA20" in upper:
        return "chacha20-poly1305"
    if "AES128-GCM" in upper or "AES_128_GCM" in upper:
        return "aes-128-gcm"
    if "AES256-GCM" in upper or "AES_256_GCM" in upper:
        return "aes-256-gcm"
    return None


def make_certs(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "relay-cert.pem", directory / "relay-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def machine_description() -> dict:
    model = ""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "aes": "aes" in flags, "pclmulqdq": "pclmulqdq" in flags, "avx2": "avx2" in flags}


def command_run(options) -> int:
    proxies = []
    for spec in options.proxy:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            print(f"--proxy {spec!r}: write NAME=PATH", file=sys.stderr)
            return 2
        if not os.access(path, os.X_OK):
            print(f"--proxy {name}: {path} is not an executable file; build it first (make bench builds "
                  f"ours) or fix the path", file=sys.stderr)
            return 2
        proxies.append((name, path))
    if proxies and not os.access(options.relay, os.X_OK):
        print(f"--relay {options.relay}: not built; `make bench-tools` builds it", file=sys.stderr)
        return 2
    if not proxies and not options.plain:
        print("nothing to measure: give --proxy NAME=PATH (or --plain)", file=sys.stderr)
        return 2
    out = Path(options.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    certs = make_certs(out)
    chain = Chain(options, out, certs)
    configs = [(d, c) for d in options.directions for c in options.connections]
    targets = ([("plain-tcp", None)] if options.plain else []) + proxies
    total = len(targets) * len(configs)
    results = {"machine": machine_description(), "bytes": options.bytes, "runs": options.runs,
               "pattern": options.pattern, "emulated": options.emulated, "proxies": dict(proxies),
               "rows": [], "aead": {}}
    step = 0
    interrupted = False

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for name, tool in (tuple(spec.split("=", 1)) for spec in options.aead):
            print(f"aead ceiling {name}: {tool} --mib {options.aead_mib}", file=sys.stderr)
            done = subprocess.run([tool, "--json", "--mib", str(options.aead_mib)], check=True,
                                  capture_output=True, text=True)
            results["aead"][name] = json.loads(done.stdout)
        for label, path in targets:
            for direction, connections in configs:
                step += 1
                runs = []
                failures: list[str] = []
                attempts = 0
                while len(runs) < options.runs:
                    attempts += 1
                    waited = wait_quiet() if options.idle_gate else 0.0

                    def progress(moved, label=label, direction=direction, connections=connections):
                        total_bytes = options.bytes * (2 if direction == "both" else 1)
                        print(f"\r[{step}/{total}] {label} {direction} x{connections} run {len(runs) + 1}"
                              f"/{options.runs}: {moved / (1 << 20):7.1f} / {total_bytes / (1 << 20):.0f} MiB",
                              end="", file=sys.stderr, flush=True)

                    progress(0)
                    try:
                        run = chain.run(path, direction, connections, label, progress,
                                        attempts)
                    except RuntimeError as error:
                        # A proxy that loses data or stalls is a result, not a harness crash.
                        print(f"\n  {label} {direction} x{connections} failed: {error}", file=sys.stderr)
                        failures.append(str(error))
                        if len(failures) >= options.runs:
                            break
                        continue
                    run["idle_wait_s"] = waited
                    if run["disturbed"] and attempts < options.runs * 3 and options.idle_gate:
                        print(f"\n  disturbed ({run['other_cores']:.2f} cores used by other processes): "
                              "repeating", file=sys.stderr)
                        continue
                    runs.append(run)
                print(file=sys.stderr)
                row = {"proxy": label, "direction": direction, "connections": connections,
                       "emulated": label in options.emulated, "runs": runs, "failures": failures}
                if runs:
                    row.update(summarize(runs))
                results["rows"].append(row)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: every process the harness started is stopped", file=sys.stderr)
    annotate(results, options)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = render_table(results)
    (out / "table.txt").write_text(table)
    if any(row["runs"] for row in results["rows"]):
        (out / "plot.svg").write_text(render_svg(results))
    print(table)
    print(f"\nresults: {out}/results.json, table.txt, plot.svg")
    if interrupted:
        return 130
    # Runs of a proxy under test that failed fail the harness; the baseline's are its result.
    failed = [row for row in results["rows"] if row["failures"] and row["proxy"] != options.baseline]
    return 3 if failed else 0


def annotate(results: dict, options) -> None:
    """Ratios: each proxy's CPU to its cipher ceiling, and to the baseline in the same run."""
    rows = [row for row in results["rows"] if row["runs"]]
    for row in rows:
        sender, receiver = ("source", "destination") if row["direction"] != "down" else ("destination", "source")
        row["sender"], row["receiver"] = sender, receiver
        aead = results["aead"].get(row["proxy"])
        suite = suite_key(row["suites"].get(sender, "")) if row["suites"] else None
        if aead and suite and aead["suites"].get(suite):
            ceiling = aead["suites"][suite]
            row["ceiling"] = {"suite": suite, "encrypt": ceiling["encrypt_ms_per_mb"],
                              "decrypt": ceiling["decrypt_ms_per_mb"]}
            if row["direction"] != "both":
                row["sender_vs_ceiling"] = row["cpu_ms_per_mb"][sender]["median"] / ceiling["encrypt_ms_per_mb"]
                row["receiver_vs_ceiling"] = (row["cpu_ms_per_mb"][receiver]["median"]
                                              / ceiling["decrypt_ms_per_mb"])
        if options.baseline and row["proxy"] != "plain-tcp":
            base = next((r for r in rows if r["proxy"] == options.baseline
                         and r["direction"] == row["direction"] and r["connections"] == row["connections"]), None)
            if base and base is not row:
                row["vs_baseline"] = {
                    "mb_per_s": row["mb_per_s"]["median"] / base["mb_per_s"]["median"],
                    "sender_cpu": row["cpu_ms_per_mb"][sender]["median"] / base["cpu_ms_per_mb"][sender]["median"],
                    "receiver_cpu": (row["cpu_ms_per_mb"][receiver]["median"]
                                     / base["cpu_ms_per_mb"][receiver]["median"]),
                }
        plain = next((r for r in rows if r["proxy"] == "plain-tcp" and r["direction"] == row["direction"]
                      and r["connections"] == row["connections"]), None)
        if plain and plain is not row:
            row["vs_plain_tcp"] = row["mb_per_s"]["median"] / plain["mb_per_s"]["median"]


# ---------------------------------------------------------------------------------------------
# The chain's processes

def command_sink(options) -> int:
    sink = traffic.Sink(options.pattern, options.port)
    print(f"listening {sink.port}", flush=True)
    sink.serve()
    return 0


def command_forward(options) -> int:
    forwarder = traffic.Forwarder(options.target, options.port)
    print(f"listening {forwarder.port}", flush=True)
    forwarder.serve()
    return 0


def command_load(options) -> int:
    load = traffic.Load(options.port, options.pattern)
    ready = {"event": "ready", "setup": load.setup_times(options.setup_samples),
             "latency": load.latencies(options.latency_samples)}
    print(json.dumps(ready), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    progress = [0]
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        load.transfer(options.direction, options.bytes, options.connections, progress)))
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        print(json.dumps({"event": "progress", "bytes": progress[0]}), flush=True)
    print(json.dumps({"event": "done", **result}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure chains and print the table")
    run.add_argument("--proxy", action="append", default=[], metavar="NAME=PATH",
                     help="a local proxy binary to measure (repeatable)")
    run.add_argument("--baseline", metavar="NAME", help="the --proxy NAME the others are compared with")
    run.add_argument("--emulated", action="append", default=[], metavar="NAME",
                     help="label NAME's figures as emulated (an ARM build under qemu)")
    run.add_argument("--aead", action="append", default=[], metavar="NAME=TOOL",
                     help="the aead-ceiling tool built against NAME's mbedTLS")
    run.add_argument("--aead-mib", type=int, default=64)
    run.add_argument("--bytes", type=parse_size, default=256 << 20)
    run.add_argument("--directions", type=lambda s: s.split(","), default=["up", "down"])
    run.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    run.add_argument("--runs", type=int, default=3)
    run.add_argument("--pattern", default="random", choices=["random", "zeros", "text"])
    run.add_argument("--latency-samples", type=int, default=200)
    run.add_argument("--setup-samples", type=int, default=5)
    run.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                     help="also measure the plain-TCP ceiling (default on)")
    run.add_argument("--idle-gate", action=argparse.BooleanOptionalAction, default=True,
                     help="wait for a quiet machine and repeat disturbed runs (default on)")
    run.add_argument("--verbose", type=int, default=3, help="-v given to every proxy (3: warnings)")
    run.add_argument("--timeout", type=float, default=600, help="longest a transfer may take, s")
    run.add_argument("--out", default="bench-results")
    run.add_argument("--relay", default=str(HERE.parent.parent / ".build-bench" / "wsrelay"),
                     help="the wsrelay binary (make bench builds it)")
    run.set_defaults(handler=command_run)

    sink = commands.add_parser("sink")
    sink.add_argument("--port", type=int, default=0)
    sink.add_argument("--pattern", default="random")
    sink.set_defaults(handler=command_sink)

    forward = commands.add_parser("forward")
    forward.add_argument("--port", type=int, default=0)
    forward.add_argument("--target", type=int, required=True)
    forward.set_defaults(handler=command_forward)

    load = commands.add_parser("load")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--pattern", default="random")
    load.add_argument("--direction", choices=["up", "down", "both"], default="up")
    load.add_argument("--bytes", type=int, required=True)
    load.add_argument("--connections", type=int, default=1)
    load.add_argument("--latency-samples", type=int, default=200)
    load.add_argument("--setup-samples", type=int, default=5)
    load.set_defaults(handler=command_load)

    options = parser.parse_args(argv)
    if options.command == "run":
        for direction in options.directions:
            if direction not in ("up", "down", "both"):
                parser.error(f"--directions: {direction!r} is not up, down or both")
        if options.baseline and options.baseline not in [p.partition("=")[0] for p in options.proxy]:
            parser.error(f"--baseline {options.baseline}: no --proxy of that name")
    return options.handler(options)


if __name__ == "__main__":
    sys.exit(main())
