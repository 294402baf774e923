"""Run every benchmark scenario against every server; print the medians as a markdown table.

    python benchmarks/run.py                      # everything, 3 runs each (about 12 minutes)
    python benchmarks/run.py --reps 1 --servers chat,fast --scenarios fanout,rate

Servers (each started fresh for every run, pinned to CPU 0; chat-bench pinned to CPU 1):

- ``chat``: this project's ``chat-server`` with every feature on; limits raised by flags
  only where a scenario needs it (flood control raised, not disabled; more clients and
  per-IP connections; for the flat-out fan-out a bigger send queue).
- ``ngircd``: ngIRCd from Debian (``apt-get install ngircd``) with benchmarks/ngircd.conf.
- ``textbook``: benchmarks/textbook_server.py, write + drain per recipient.
- ``fast``: benchmarks/fast_baseline.py, the bare uvloop broadcaster.

Scenarios: ``fanout`` (100 clients flat out), ``rate`` (1,000 clients, 200 msg/s),
``slow`` (100 clients at 2,500 msg/s of 400-byte lines, once with nobody slow and once
with 5 that stop reading), ``conns`` (10,000 registered idle clients), ``conns20k`` (20,000
held; once per server, not --reps times). Every chat-bench JSON line is appended to
``--out``; the table goes to stdout and, with ``--markdown``, to a file. Loopback only.
This is never run by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_CPU = 0
BENCH_CPU = 1


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    port: int
    protocol: str
    command: Callable[[str], list[str]]  # scenario -> argv
    needs: str | None = None  # an executable that must be installed


def _chat_command(scenario: str) -> list[str]:
    command = [
        _script("chat-server"),
        "--host=127.0.0.1",
        "--port=9401",
        "--log-level=warning",
        # Flood control stays on, with limits no benchmark client reaches.
        "--rate=1000000",
        "--burst=1000000",
        "--max-per-ip=100000",
        "--max-clients=30000",
    ]
    if scenario == "fanout":
        # Flat out, 20,000 messages in flight reach each client faster than one core can
        # drain them all: up to ~600 KB queued per client, over the 256 KiB default.
        command.append("--send-queue=8388608")
    return command


SERVERS = {
    "chat": Server("chat", "chat-server (this project, uvloop)", 9401, "chat", _chat_command),
    "ngircd": Server(
        "ngircd",
        "ngIRCd 26 (C, Debian)",
        6700,
        "irc",
        lambda _: ["ngircd", "-n", "-f", str(HERE / "ngircd.conf")],
        needs="ngircd",
    ),
    "textbook": Server(
        "textbook",
        "textbook asyncio (write + drain per recipient)",
        9402,
        "chat",
        lambda _: [sys.executable, str(HERE / "textbook_server.py"), "--port=9402"],
    ),
    "fast": Server(
        "fast",
        "bare uvloop broadcaster, no features",
        9403,
        "chat",
        lambda _: [sys.executable, str(HERE / "fast_baseline.py"), "--port=9403"],
    ),
}

# The most sockets one process may hold here: the hard open-file limit, less what a server
# or chat-bench needs for itself (listening socket, epoll, logs). 20,000 where it can.
_FILES = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
BIG = min(20_000, _FILES - 50) if _FILES != resource.RLIM_INFINITY else 20_000

SCENARIOS: dict[str, list[str]] = {
    "fanout": ["fanout", "--clients=100", "--duration=4", "--window=20000", "--drain-timeout=20"],
    "rate": ["fanout", "--clients=1000", "--rate=200", "--duration=5"],
    "slow-base": ["fanout", "--clients=100", "--rate=2500", "--size=400", "--duration=8"],
    "slow": ["slow", "--clients=100", "--slow=5", "--rate=2500", "--size=400", "--duration=8"],
    "conns": ["conns", "--clients=10000", "--connect-deadline=20"],
    "conns20k": ["conns", f"--clients={BIG}", "--connect-deadline=60"],
}
# Every run connects 10 at a time: ngIRCd listens with a backlog of 10, and more connects
# in flight overflow it; the dropped SYNs are retried after 1, 3, 7 s, which would time
# the kernel's retry schedule, not the server.
COMMON = ["--parallel=10", "--drain-timeout=10", "--batch=10"]
GROUPS = {"slow": ["slow-base", "slow"]}
ONCE = {"conns20k"}


def _script(name: str) -> str:
    """A console script installed next to this Python (falls back to PATH)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def raise_file_limit() -> None:
    """Servers and chat-bench inherit this: 20,000 sockets need more than 20,000 files."""
    wanted = 1 << 17
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with contextlib.suppress(ValueError, OSError):
        if hard < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            hard = wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine_busy(seconds: float = 1.0) -> dict[int, float]:
    """How busy each core is right now (other sessions' processes disturb a benchmark)."""

    def snap() -> dict[int, tuple[int, int]]:
        found = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values[:8]]
                found[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
        return found

    before = snap()
    time.sleep(seconds)
    after = snap()
    return {
        core: round(
            (after[core][0] - before[core][0]) / max(1, after[core][1] - before[core][1]), 2
        )
        for core in after
    }


def wait_for_quiet(limit: float) -> dict[int, float]:
    """Wait (up to ``limit`` s) until both cores are nearly idle; return what was seen."""
    deadline = time.monotonic() + limit
    while True:
        busy = machine_busy(0.5)
        if max(busy.values()) < 0.15 or time.monotonic() > deadline:
            return busy


def wait_for_port(port: int, process: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {limit} s")


def _pin_server() -> None:
    os.sched_setaffinity(0, {SERVER_CPU})


@contextlib.contextmanager
def running(server: Server, scenario: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as errors:
        process = subprocess.Popen(
            server.command(scenario),
            stdout=subprocess.DEVNULL,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pin_server,  # noqa: PLW1509 - only sets the CPU affinity
            cwd=ROOT,
        )
    try:
        wait_for_port(server.port, process)
        time.sleep(0.3)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_bench(server: Server, scenario: str, pid: int, timeout: float) -> dict[str, Any]:
    argv = [
        _script("chat-bench"),
        *COMMON,
        *SCENARIOS[scenario],
        f"--port={server.port}",
        f"--protocol={server.protocol}",
        f"--server-pid={pid}",
        f"--cpu={BENCH_CPU}",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"chat-bench did not finish in {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass
class Results:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, server: str, scenario: str, result: dict[str, Any]) -> None:
        self.runs.setdefault((server, scenario), []).append(result)

    def median(self, server: str, scenario: str, key: str) -> float | None:
        values = [
            r[key]
            for r in self.runs.get((server, scenario), [])
            if isinstance(r.get(key), int | float)
        ]
        return statistics.median(values) if values else None

    def most(self, server: str, scenario: str, key: str) -> float | None:
        values = [
            r[key] for r in self.runs.get((server, scenario), []) if isinstance(r.get(key), int)
        ]
        return max(values) if values else None

    def errors(self, server: str, scenario: str) -> list[str]:
        return [r["error"] for r in self.runs.get((server, scenario), []) if "error" in r]


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _bound(results: Results, server: str, scenario: str) -> str:
    """Which core was saturated during the runs (median busy share of each core)."""
    cores: dict[str, list[float]] = {}
    for run in results.runs.get((server, scenario), []):
        for core, busy in (run.get("cores_busy") or {}).items():
            if busy is not None:
                cores.setdefault(core, []).append(busy)
    server_busy = statistics.median(cores.get(str(SERVER_CPU), [0.0]))
    bench_busy = statistics.median(cores.get(str(BENCH_CPU), [0.0]))
    if server_busy >= 0.9 and bench_busy >= 0.9:
        return f"both cores ({server_busy:.0%}/{bench_busy:.0%})"
    if server_busy >= 0.9:
        return f"server core {server_busy:.0%}"
    if bench_busy >= 0.9:
        return f"generator core {bench_busy:.0%}"
    return f"neither ({server_busy:.0%}/{bench_busy:.0%})"


def table(results: Results, servers: list[str]) -> str:
    r = results
    head = (
        "| server | fan-out, 100 clients flat out: deliveries/s, loss "
        "| 1,000 clients at 200 msg/s: p99, loss "
        "| 100 clients, 5 stop reading: healthy p99 (no-slow p99), loss, slow dropped "
        f"| 10,000 idle: connect time, KiB/conn | {BIG:,} held |\n"
        "|---|---|---|---|---|---|\n"
    )
    rows = []
    for name in servers:
        fanout = (
            f"{_fmt(r.median(name, 'fanout', 'deliveries_per_s'), digits=0)}, "
            f"{_fmt(_pct(r.median(name, 'fanout', 'loss')), ' %', 2)}"
        )
        rate = (
            f"{_fmt(r.median(name, 'rate', 'latency_ms_p99'), ' ms')}, "
            f"{_fmt(_pct(r.median(name, 'rate', 'loss')), ' %', 2)}"
        )
        dropped = r.median(name, "slow", "slow_dropped")
        when = [
            min(run["slow_dropped_at_s"])
            for run in r.runs.get((name, "slow"), [])
            if run.get("slow_dropped_at_s")
        ]
        slow = (
            f"{_fmt(r.median(name, 'slow', 'latency_ms_p99'), ' ms')} "
            f"({_fmt(r.median(name, 'slow-base', 'latency_ms_p99'), ' ms')}), "
            f"{_fmt(_pct(r.median(name, 'slow', 'loss')), ' %', 2)}, "
            + (
                f"{dropped:.0f}/5 dropped after {statistics.median(when):.1f} s"
                if dropped and when
                else "kept"
                if dropped == 0
                else "-"
            )
        )
        connected = r.median(name, "conns", "connected")
        conns = (
            f"{_fmt(r.median(name, 'conns', 'connect_s'), ' s', 2)}, "
            f"{_fmt(r.median(name, 'conns', 'server_kib_per_conn'), ' KiB', 2)}"
        )
        if connected is not None and connected < 10_000:
            conns += f" (only {connected:,.0f} registered)"
        held = r.median(name, "conns20k", "held")
        errors = r.most(name, "conns20k", "errors")
        big = "-" if held is None else f"{held:,.0f}, {errors or 0} errors"
        failed = {s for s in SCENARIOS if r.errors(name, s)}
        note = f" (failed: {', '.join(sorted(failed))})" if failed else ""
        rows.append(
            f"| {SERVERS[name].label}{note} | {fanout} | {rate} | {slow} | {conns} | {big} |"
        )
    bounds = ["", "What bounded each figure (median busy share of server core/generator core):", ""]
    for name in servers:
        parts = [
            f"{scenario} {_bound(results, name, scenario)}"
            for scenario in ("fanout", "rate", "slow", "conns")
            if (name, scenario) in results.runs
        ]
        bounds.append(f"- {name}: " + "; ".join(parts))
    return head + "\n".join(rows) + "\n" + "\n".join(bounds) + "\n"


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def environment() -> dict[str, Any]:
    def output(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    uvloop_version = output(sys.executable, "-c", "import uvloop; print(uvloop.__version__)")
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version.strip(),
        "ngircd": output("ngircd", "--version").splitlines()[0:1],
        "commit": output("git", "-C", str(ROOT), "describe", "--always", "--dirty").strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default="fanout,rate,slow,conns,conns20k")
    parser.add_argument("--out", type=Path, default=Path("/tmp/chat-bench-results.jsonl"))
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="s to wait for idle CPUs")
    args = parser.parse_args()
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        parser.error("needs 2 CPUs: the server on CPU 0, chat-bench on CPU 1")
    raise_file_limit()
    servers = [s for s in args.servers.split(",") if s]
    scenarios: list[str] = []
    for name in args.scenarios.split(","):
        scenarios.extend(GROUPS.get(name, [name]))
    unknown = [s for s in servers if s not in SERVERS] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    missing = [s for s in servers if SERVERS[s].needs and not shutil.which(SERVERS[s].needs or "")]
    for name in missing:
        print(f"skipping {name}: {SERVERS[name].needs} is not installed", file=sys.stderr)
    servers = [s for s in servers if s not in missing]

    results = Results()
    env = environment()
    log = Path("/tmp/chat-bench-servers.log")
    started = time.monotonic()
    with args.out.open("a") as out:
        out.write(json.dumps({"environment": env}) + "\n")
        for rep in range(args.reps):
            for scenario in scenarios:
                if rep and scenario in ONCE:
                    continue
                for name in servers:
                    server = SERVERS[name]
                    background = wait_for_quiet(args.quiet_wait)
                    try:
                        with running(server, scenario, log) as process:
                            result = run_bench(server, scenario, process.pid, timeout=240)
                            if process.poll() is not None:
                                result.setdefault("error", "server died during the run")
                    except RuntimeError as exc:
                        result = {"error": str(exc)}
                    result.update(server=name, run=scenario, rep=rep, background=background)
                    results.add(name, scenario, result)
                    out.write(json.dumps(result) + "\n")
                    out.flush()
                    brief = {
                        k: result.get(k)
                        for k in (
                            "deliveries_per_s",
                            "loss",
                            "latency_ms_p99",
                            "slow_dropped",
                            "connected",
                            "connect_s",
                            "server_kib_per_conn",
                            "cores_busy",
                            "error",
                        )
                        if k in result
                    }
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:5.0f}s] {rep} {scenario} {name}: {brief}", file=sys.stderr)
    text = table(results, servers)
    env_line = (
        f"\nMeasured {env['when']} on {env['cpu']}, Linux {env['kernel']}, Python "
        f"{env['python']}, uvloop {env['uvloop']}, commit {env['commit']}; "
        f"median of {args.reps} runs ({', '.join(sorted(ONCE))}: 1). Raw results: {args.out}\n"
    )
    print(text + env_line)
    if args.markdown:
        args.markdown.write_text(text + env_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
