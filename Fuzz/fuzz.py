#!/usr/bin/env python3
"""Builds and runs the libFuzzer targets of Fuzz/Targets (make fuzz, make fuzz-replay).

Usage: fuzz.py build [--replay] [TARGET ...]
       fuzz.py run [--seconds N] [TARGET ...]
       fuzz.py replay [TARGET ...]

build   compiles the modules the targets need, then one executable per target, all with
        `swiftc -sanitize=fuzzer,address`, into .build-fuzz/ (only what changed is rebuilt):
        optimised (-O) in .build-fuzz/O/ for fuzzing, or with --replay unoptimised (-Onone) in
        .build-fuzz/Onone/ for replaying, which builds several times faster and runs the same
        checks.
run     builds, writes the seeds (Fuzz/make-seeds.py), then fuzzes each target for N seconds
        (default 60) with its corpus in .build-fuzz/corpus/TARGET, reading the seeds and
        Fuzz/regressions/TARGET too. Prints executions, speed, coverage and the outcome of each
        target. An input that crashes a target is copied to Fuzz/regressions/TARGET/, and the exit
        status is 1.
replay  builds (-Onone), writes the seeds, then runs each target once over every seed and every
        file of Fuzz/regressions/TARGET, without fuzzing. Exit status 1 if any input fails.

With no TARGET, every target. The environment's SWIFTC names the compiler (default: swiftc).
"""
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, ".build-fuzz")
SEEDS_DIR = os.path.join(BUILD, "seeds")
CORPUS_DIR = os.path.join(BUILD, "corpus")
ARTIFACTS_DIR = os.path.join(BUILD, "artifacts")
LOGS_DIR = os.path.join(BUILD, "logs")
FUZZ_DIR = os.path.join(ROOT, "Fuzz")
TARGETS_DIR = os.path.join(FUZZ_DIR, "Targets")
DICT_DIR = os.path.join(FUZZ_DIR, "dict")
REGRESSIONS_DIR = os.path.join(FUZZ_DIR, "regressions")
SUPPORT = os.path.join(TARGETS_DIR, "FuzzSupport.swift")

# Resolved to a full path, so that the recorded build commands (the .flags stamps) do not change
# with the way the compiler was named.
SWIFTC = shutil.which(os.environ.get("SWIFTC") or "swiftc") or "swiftc"

# Modules in dependency order, with the modules each one imports.
MODULES = {
    "TunnelCore": [],
    "TunnelTLS": ["TunnelCore"],
    "TunnelIO": ["TunnelCore"],
    "LocalProxy": ["TunnelCore", "TunnelTLS", "TunnelIO"],
    # The emulator publishes MQTT notifications with LocalProxy's MQTT client.
    "TunnelService": ["TunnelCore", "TunnelTLS", "TunnelIO", "LocalProxy"],
}
CORE = ["TunnelCore"]
PROXY = ["TunnelCore", "TunnelTLS", "TunnelIO", "LocalProxy"]
SERVICE = ["TunnelCore", "TunnelTLS", "TunnelIO", "LocalProxy", "TunnelService"]

# Each target: Fuzz/Targets/NAME.swift and the modules it links.
TARGETS = {
    "websocket-frame": CORE,
    "mqtt-packet": CORE,
    "tunnel-message": CORE,
    "upgrade-response": CORE,
    "web-proxy": CORE,
    "dns-message": CORE,
    "resolver-files": CORE,
    "tunnel-notification": CORE,
    "config-file": PROXY,
    "http-request": SERVICE,
    "json-value": SERVICE,
    "upgrade-request": SERVICE,
}


class Config:
    """One build of every target: its optimisation level and its directories. Modules go to
    modules/ and their code to obj/: an unoptimised build with debug information also writes a
    MODULE.o of its own next to the module (the module wrapped for the debugger)."""

    def __init__(self, optimisation):
        self.optimisation = optimisation
        self.root = os.path.join(BUILD, optimisation.lstrip("-"))
        self.modules = os.path.join(self.root, "modules")
        self.obj = os.path.join(self.root, "obj")
        self.bin = os.path.join(self.root, "bin")
        # -enable-testing: the targets reach internal functions through @testable import.
        common = ["-sanitize=fuzzer,address", optimisation, "-g",
                  "-module-cache-path", os.path.join(BUILD, "ModuleCache"),
                  "-I", self.modules, "-I", os.path.join(ROOT, "Sources", "CMbedTLS"),
                  "-I", os.path.join(ROOT, "Sources", "CLibC"), "-I", os.path.join(ROOT, "Sources", "CLibUV")]
        self.module_flags = common + ["-enable-testing", "-parse-as-library", "-wmo"]
        self.link_flags = common + ["-parse-as-library", "-use-ld=lld"]


# Fuzzing wants speed (-O runs about four times as many inputs per second); replaying wants a
# quick build (-Onone compiles TunnelCore in 3 s instead of 30 s, all the modules in about a
# quarter of the time).
FUZZ_BUILD = Config("-O")
REPLAY_BUILD = Config("-Onone")

C_LIBRARIES = ["-luv", "-lmbedtls", "-lmbedx509", "-lmbedcrypto"]

# Options of every libFuzzer run: a slow input (10 s) counts as a failure like a crash.
FUZZER_FLAGS = ["-timeout=10", "-print_final_stats=1"]
# The directory config-file names as --config-dir (holding one empty file), made here rather than
# by the target so that a crashing run leaves nothing behind in /tmp.
CONFIG_DIR = os.path.join(BUILD, "config-dir")
# SWIFT_BACKTRACE: the Swift runtime's own crash backtracer would run inside a process that
# AddressSanitizer watches (which then reports the backtracer's reads of the stack) and is slow;
# libFuzzer and AddressSanitizer print the stack instead.
FUZZER_ENV = dict(os.environ, SWIFT_BACKTRACE="enable=no", FUZZ_CONFIG_DIR=CONFIG_DIR)


def say(text):
    print(text, flush=True)


def swift_sources(module):
    directory = os.path.join(ROOT, "Sources", module)
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".swift"))


def newest(paths):
    return max((os.path.getmtime(p) for p in paths), default=0)


def stale(output, inputs, stamp_text):
    """Whether `output` must be rebuilt: missing, older than an input, or built with other flags."""
    stamp = output + ".flags"
    if not os.path.exists(output) or not os.path.exists(stamp):
        return True
    with open(stamp) as f:
        if f.read() != stamp_text:
            return True
    return os.path.getmtime(output) < newest(inputs)


def write_stamp(output, stamp_text):
    with open(output + ".flags", "w") as f:
        f.write(stamp_text)


def compile_step(command, output, label):
    # swiftc has been seen to leave an existing object in place instead of replacing it (see the
    # Makefile's embedded target), so the old output goes first.
    if os.path.exists(output):
        os.remove(output)
    say(f"fuzz build: {label}")
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"fuzz build: {label} failed (exit status {result.returncode})")
    say(f"fuzz build: {label} done in {time.monotonic() - started:.0f} s")


def build(targets, config):
    for directory in (config.modules, config.obj, config.bin):
        os.makedirs(directory, exist_ok=True)
    needed = [m for m in MODULES if any(m in TARGETS[t] for t in targets)]
    label = config.optimisation
    for module in needed:
        obj = os.path.join(config.obj, module + ".o")
        sources = swift_sources(module)
        deps = [os.path.join(config.obj, d + ".o") for d in MODULES[module]]
        command = [SWIFTC] + config.module_flags + ["-module-name", module, "-emit-module",
                                                    "-emit-module-path", os.path.join(config.modules, module + ".swiftmodule"),
                                                    "-c", "-o", obj] + sources
        stamp = " ".join(command)
        if stale(obj, sources + deps, stamp):
            compile_step(command, obj, f"module {module} ({label})")
            write_stamp(obj, stamp)
    for target in targets:
        exe = os.path.join(config.bin, target)
        entry = os.path.join(TARGETS_DIR, target + ".swift")
        objects = [os.path.join(config.obj, m + ".o") for m in TARGETS[target]]
        module_name = "fuzz_" + target.replace("-", "_")
        command = [SWIFTC] + config.link_flags + ["-module-name", module_name, SUPPORT, entry] + objects + C_LIBRARIES + ["-o", exe]
        stamp = " ".join(command)
        if stale(exe, [SUPPORT, entry] + objects, stamp):
            compile_step(command, exe, f"target {target} ({label})")
            write_stamp(exe, stamp)


def prepare_inputs():
    """Writes the seeds, and makes the directory config-file names as --config-dir."""
    os.makedirs(CONFIG_DIR, exist_ok=True)
    open(os.path.join(CONFIG_DIR, "services.conf"), "a").close()
    result = subprocess.run([sys.executable, os.path.join(FUZZ_DIR, "make-seeds.py"), SEEDS_DIR], cwd=ROOT)
    if result.returncode != 0:
        sys.exit("fuzz: Fuzz/make-seeds.py failed")


def files_in(directory):
    if not os.path.isdir(directory):
        return []
    out = []
    for base, _dirs, names in os.walk(directory):
        out.extend(os.path.join(base, n) for n in names if not n.startswith("."))
    return sorted(out)


def dictionary_flags(target):
    path = os.path.join(DICT_DIR, target + ".dict")
    return ["-dict=" + path] if os.path.exists(path) else []


def final_stats(log):
    """Executions, executions per second, cov and ft from a libFuzzer log."""
    execs = rate = cov = ft = None
    for line in log.splitlines():
        m = re.match(r"^#(\d+)\s.*\bcov: (\d+) ft: (\d+)", line)
        if m:
            cov, ft = int(m.group(2)), int(m.group(3))
        m = re.match(r"^stat::number_of_executed_units:\s*(\d+)", line)
        if m:
            execs = int(m.group(1))
        m = re.match(r"^stat::average_exec_per_sec:\s*(\d+)", line)
        if m:
            rate = int(m.group(1))
    return execs, rate, cov, ft


def failure_summary(log):
    """The lines of a libFuzzer log that say what went wrong, for the terminal."""
    keep = []
    for line in log.splitlines():
        if ("fuzz property broken" in line or "Fatal error" in line or "ERROR: AddressSanitizer" in line
                or "ERROR: libFuzzer" in line or "SUMMARY:" in line or "ERROR: LeakSanitizer" in line
                or re.match(r"^\s+#\d+ 0x[0-9a-f]+ in .*(/Sources/|/Fuzz/)", line)):
            keep.append(line)
    return "\n".join(keep[:40])


def run(targets, seconds):
    build(targets, FUZZ_BUILD)
    prepare_inputs()
    os.makedirs(LOGS_DIR, exist_ok=True)
    rows = []
    failed = []
    for target in targets:
        corpus = os.path.join(CORPUS_DIR, target)
        artifacts = os.path.join(ARTIFACTS_DIR, target)
        os.makedirs(corpus, exist_ok=True)
        shutil.rmtree(artifacts, ignore_errors=True)
        os.makedirs(artifacts)
        regressions = os.path.join(REGRESSIONS_DIR, target)
        inputs = [corpus, os.path.join(SEEDS_DIR, target)] + ([regressions] if os.path.isdir(regressions) else [])
        command = ([os.path.join(FUZZ_BUILD.bin, target), f"-max_total_time={seconds}", "-artifact_prefix=" + artifacts + "/"]
                   + FUZZER_FLAGS + dictionary_flags(target) + inputs)
        say(f"fuzz: {target} for {seconds} s")
        log_path = os.path.join(LOGS_DIR, target + ".log")
        with open(log_path, "w") as log_file:
            status = subprocess.run(command, cwd=ROOT, env=FUZZER_ENV, stdout=log_file, stderr=subprocess.STDOUT).returncode
        with open(log_path, errors="replace") as f:
            log = f.read()
        execs, rate, cov, ft = final_stats(log)
        found = files_in(artifacts)
        kept = []
        if found:
            os.makedirs(regressions, exist_ok=True)
            known = {}
            for path in files_in(regressions):
                with open(path, "rb") as f:
                    known[f.read()] = path
            for path in found:
                with open(path, "rb") as f:
                    data = f.read()
                # An input already kept (an unfixed regression fails again at once) is not copied twice.
                destination = known.get(data) or os.path.join(regressions, os.path.basename(path))
                if data not in known:
                    shutil.copyfile(path, destination)
                    known[data] = destination
                kept.append(os.path.relpath(destination, ROOT))
        outcome = "ok" if status == 0 and not found else f"FAILED (exit status {status})"
        if outcome != "ok":
            failed.append(target)
            say(failure_summary(log))
            for k in kept:
                say(f"fuzz: {target}: failing input kept as {k}")
            say(f"fuzz: {target}: whole log in {os.path.relpath(log_path, ROOT)}")
        rows.append((target, execs, rate, cov, ft, len(found), outcome))
    say("")
    say(f"{'target':18} {'execs':>12} {'exec/s':>8} {'cov':>6} {'ft':>7} {'crashes':>7}  outcome")
    for target, execs, rate, cov, ft, crashes, outcome in rows:
        show = lambda v: "?" if v is None else str(v)
        say(f"{target:18} {show(execs):>12} {show(rate):>8} {show(cov):>6} {show(ft):>7} {crashes:>7}  {outcome}")
    if failed:
        say(f"fuzz: failures in {', '.join(failed)}; inputs kept under Fuzz/regressions/ (replay: make fuzz-replay)")
        return 1
    return 0


def replay(targets):
    build(targets, REPLAY_BUILD)
    prepare_inputs()
    os.makedirs(LOGS_DIR, exist_ok=True)
    failed = []
    for target in targets:
        seeds = files_in(os.path.join(SEEDS_DIR, target))
        regressions = files_in(os.path.join(REGRESSIONS_DIR, target))
        if not seeds and not regressions:
            say(f"fuzz-replay: {target}: no inputs")
            continue
        # With files (not directories) as arguments, libFuzzer runs each of them once and exits.
        command = [os.path.join(REPLAY_BUILD.bin, target)] + FUZZER_FLAGS + seeds + regressions
        log_path = os.path.join(LOGS_DIR, target + "-replay.log")
        with open(log_path, "w") as log_file:
            status = subprocess.run(command, cwd=ROOT, env=FUZZER_ENV, stdout=log_file, stderr=subprocess.STDOUT).returncode
        if status == 0:
            say(f"fuzz-replay: {target}: {len(seeds)} seeds, {len(regressions)} regressions ok")
        else:
            failed.append(target)
            with open(log_path, errors="replace") as f:
                log = f.read()
            say(failure_summary(log))
            say(f"fuzz-replay: {target}: FAILED (exit status {status}); whole log in {os.path.relpath(log_path, ROOT)}")
    if failed:
        say(f"fuzz-replay: failures in {', '.join(failed)}")
        return 1
    return 0


def main(argv):
    if not argv or argv[0] not in ("build", "run", "replay"):
        sys.exit(__doc__)
    command, rest = argv[0], argv[1:]
    config = FUZZ_BUILD
    if command == "build" and rest[:1] == ["--replay"]:
        config = REPLAY_BUILD
        rest = rest[1:]
    seconds = 60
    if command == "run" and rest[:1] == ["--seconds"]:
        if len(rest) < 2 or not rest[1].isdigit() or int(rest[1]) < 1:
            sys.exit("fuzz.py run: --seconds needs a whole number of seconds, at least 1")
        seconds = int(rest[1])
        rest = rest[2:]
    unknown = [t for t in rest if t not in TARGETS]
    if unknown:
        sys.exit(f"fuzz.py: unknown target {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    targets = rest or list(TARGETS)
    if command == "build":
        build(targets, config)
        return 0
    if command == "run":
        return run(targets, seconds)
    return replay(targets)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
