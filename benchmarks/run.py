"""Run every benchmark scenario against every server; print the medians as a markdown table.

    python benchmarks/run.py                      # everything, 3 runs each (about 12 minutes)
    python benchmarks/run.py --reps 1 --servers chat,fast --scenarios fanout,rate

Servers (each started fresh for every run, pinned to CPU 0; chat-bench pinned to CPU 1):

- ``chat``: this project's ``chat-server`` with every feature on; limits raised by flags
  only where a scenario needs it (flood control raised, not disabled; more clients and
  per-IP connections; for the flat-out fan-out a bigger send queue); ``--db :memory:``.
- ``chat-irc``: ``chat`` measured with IRC clients (``chat-bench --protocol irc``: ``NICK``,
  ``USER``, ``JOIN``, ``PRIVMSG``), as ngIRCd is.
- ``chat-db``: the same with its SQLite store on (a fresh ``--db`` file per run): every
  line is committed before it is delivered.
- ``ngircd``: ngIRCd from Debian (``apt-get install ngircd``) with benchmarks/ngircd.conf.
- ``textbook``: benchmarks/textbook_server.py, write + drain per recipient.
- ``fast``: benchmarks/fast_baseline.py, the bare uvloop broadcaster.

Scenarios: ``fanout`` (100 clients flat out), ``rate`` (1,000 clients, 200 msg/s),
``slow`` (100 clients at 2,500 msg/s of 400-byte lines, once with nobody slow and once
with 5 that stop reading), ``conns`` (10,000 registered idle clients), ``conns20k`` (20,000
held; once per server, not --reps times). Every chat-bench JSON line is appended to
``--out``; the table goes to stdout and, with ``--markdown``, to a file. Loopback only.
This is never run by the test suite.

``--cluster`` adds the cluster scenarios (``--cluster=only``: nothing else): 100 clients in
one room, spread round robin over two ``chat-server --redis`` nodes that share one
``redis-server`` (50 per node), flat out and at 1,000 msg/s, each also run against one
node for comparison. redis-server, both nodes and chat-bench share the two cores unpinned
(needs ``redis-server`` on the PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
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
import tempfile
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


def _chat_command(scenario: str, db: str = ":memory:") -> list[str]:
    command = [
        _script("chat-server"),
        "--host=127.0.0.1",
        "--port=9401",
        "--log-level=warning",
        f"--db={db}",
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


def _chat_db_command(scenario: str) -> list[str]:
    """chat-server with its store on: a fresh SQLite file for every run."""
    path = Path(tempfile.gettempdir()) / "chat-bench-store" / "chat.db"
    shutil.rmtree(path.parent, ignore_errors=True)
    return _chat_command(scenario, db=str(path))


SERVERS = {
    "chat": Server(
        "chat", "chat-server (this project, uvloop; --db :memory:)", 9401, "chat", _chat_command
    ),
    "chat-db": Server(
        "chat-db", "chat-server with its SQLite store (--db FILE)", 9401, "chat", _chat_db_command
    ),
    "chat-irc": Server(
        "chat-irc", "chat-server, IRC clients (--db :memory:)", 9401, "irc", _chat_command
    ),
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


# The cluster: two nodes sharing one Redis, the same flags as the single node (the bench
# room's 100 members are not above the default --announce-limit of 100: joins announced).
CLUSTER_PORTS = (9411, 9412)
CLUSTER_NODES = ("A", "B")
CLUSTER_SCENARIOS: dict[str, tuple[str, list[str]]] = {
    # name -> (chat-server flags as for this single-node scenario, chat-bench arguments)
    "cluster-fanout": ("fanout", SCENARIOS["fanout"]),
    "cluster-fanout-w2000": (
        "fanout",
        ["fanout", "--clients=100", "--duration=4", "--window=2000", "--drain-timeout=20"],
    ),
    "cluster-rate": ("rate", ["fanout", "--clients=100", "--rate=1000", "--duration=5"]),
}


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


class OtherLoad:
    """CPU used by processes outside this runner's tree (another session's test suite).

    The machine's user + system time (/proc/stat; interrupt time left out, as it is not
    charged to processes) less what this runner and its children used (its own times and
    its reaped children's: the servers and chat-bench of a run are reaped before the run
    ends) and what kernel threads used (ksoftirqd carrying our own loopback traffic). Which
    processes used it is a hint only: live processes' own times, so a child that came and
    went unseen counts in the total but under no name.
    """

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._started = time.monotonic()
        self._start = self._read()

    def _read(self) -> tuple[int, int, int, dict[int, tuple[int, str]]]:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        machine = sum(int(v) for v in first[1:4])  # user, nice, system
        stats: dict[int, tuple[int, bool, int, int, str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                head, _, rest = (entry / "stat").read_text().rpartition(")")
            except OSError:
                continue
            f = rest.split()
            kthread = bool(int(f[6]) & 0x00200000)  # PF_KTHREAD
            own, reaped = int(f[11]) + int(f[12]), int(f[13]) + int(f[14])
            stats[int(entry.name)] = (int(f[1]), kthread, own, reaped, head.partition("(")[2])
        me = os.getpid()
        ours = {me}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, *_) in stats.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        mine = sum(stats[pid][2] for pid in ours if pid in stats) + stats[me][3]
        kernel = sum(own for _, kthread, own, _, _ in stats.values() if kthread)
        others = {
            pid: (own, name)
            for pid, (_, kthread, own, _, name) in stats.items()
            if pid not in ours and not kthread
        }
        return machine, mine, kernel, others

    def summary(self) -> dict[str, Any]:
        """Cores' worth of CPU the others used since this meter started, and by whom."""
        machine, mine, kernel, others = self._read()
        machine0, mine0, kernel0, others0 = self._start
        wall = max(1e-3, time.monotonic() - self._started) * self._tick
        by_name: dict[str, int] = {}
        for pid, (own, name) in others.items():
            used = own - others0.get(pid, (0, name))[0]
            if used > 0:
                by_name[name] = by_name.get(name, 0) + used
        top = sorted(by_name.items(), key=lambda item: -item[1])[:3]
        total = (machine - machine0) - (mine - mine0) - (kernel - kernel0)
        return {
            "cores": round(max(0, total) / wall, 3),
            "top": {name: round(used / wall, 3) for name, used in top},
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
        _stop(process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_cluster(flags: str, log: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """redis-server and two chat-server nodes using it, unpinned; yields [A, B, redis]."""
    redis_port = _free_port()
    started: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as errors:

        def start(argv: list[str]) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                argv, stdout=errors, stderr=errors, stdin=subprocess.DEVNULL, cwd=ROOT
            )
            started.append(process)
            return process

        try:
            redis = start(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]
            )
            wait_for_port(redis_port, redis)
            nodes = []
            for node, port in zip(CLUSTER_NODES, CLUSTER_PORTS, strict=True):
                command = [a for a in _chat_command(flags) if not a.startswith("--port=")]
                nodes.append(
                    start(
                        [
                            *command,
                            f"--port={port}",
                            f"--redis=redis://127.0.0.1:{redis_port}/0",
                            f"--node-id={node}",
                        ]
                    )
                )
            for node_process, port in zip(nodes, CLUSTER_PORTS, strict=True):
                wait_for_port(port, node_process)
            time.sleep(1.0)  # both nodes have joined the cluster and heard each other
            yield [*nodes, redis]
        finally:
            for process in reversed(started):  # the nodes first, then Redis
                _stop(process)


def bench(arguments: list[str], timeout: float) -> dict[str, Any]:
    """Run chat-bench with ``COMMON`` and ``arguments``; its JSON summary, or an error."""
    argv = [_script("chat-bench"), *COMMON, *arguments]
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


def cluster_table(results: Results) -> str:
    """The cluster scenarios, one node (pinned as above) against two nodes and Redis."""
    r = results

    def flat(name: str, scenario: str) -> str:
        return (
            f"{_fmt(r.median(name, scenario, 'deliveries_per_s'), digits=0)}, "
            f"{_fmt(_pct(r.median(name, scenario, 'loss')), ' %', 2)}, "
            f"p99 {_fmt(r.median(name, scenario, 'latency_ms_p99'), ' ms')}"
        )

    rows = [
        "| deployment | flat out, window 20,000: deliveries/s, loss, p99 "
        "| flat out, window 2,000: deliveries/s, loss, p99 "
        "| 1,000 msg/s: p50, p99 (same node / other node), loss | CPU at 1,000 msg/s |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("chat", "one node"), ("cluster", "two nodes + Redis")):
        split = (
            f" ({_fmt(r.median(name, 'cluster-rate', 'latency_ms_p99_same_node'), ' ms')} / "
            f"{_fmt(r.median(name, 'cluster-rate', 'latency_ms_p99_cross_node'), ' ms')})"
            if name == "cluster"
            else ""
        )
        rate = (
            f"{_fmt(r.median(name, 'cluster-rate', 'latency_ms_p50'), ' ms')}, "
            f"{_fmt(r.median(name, 'cluster-rate', 'latency_ms_p99'), ' ms')}{split}, "
            f"{_fmt(_pct(r.median(name, 'cluster-rate', 'loss')), ' %', 2)}"
        )
        cpu = (
            f"server processes {_fmt(r.median(name, 'cluster-rate', 'server_cpu'), digits=2)}, "
            f"generator {_fmt(r.median(name, 'cluster-rate', 'generator_cpu'), digits=2)}"
        )
        failed = {s for s in CLUSTER_SCENARIOS if r.errors(name, s)}
        note = f" (failed: {', '.join(sorted(failed))})" if failed else ""
        rows.append(
            f"| {label}{note} | {flat(name, 'cluster-fanout')} "
            f"| {flat(name, 'cluster-fanout-w2000')} | {rate} | {cpu} |"
        )
    return "\n".join(rows) + "\n"


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
        "nice": os.nice(0),
    }


BRIEF = (
    "deliveries_per_s",
    "loss",
    "latency_ms_p99",
    "latency_ms_p99_cross_node",
    "slow_dropped",
    "connected",
    "connect_s",
    "server_kib_per_conn",
    "server_cpu_each",
    "cores_busy",
    "others_during",
    "error",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default="fanout,rate,slow,conns,conns20k")
    parser.add_argument(
        "--cluster",
        nargs="?",
        const="also",
        choices=["also", "only"],
        help="also (or only) the cluster scenarios: two nodes sharing one redis-server",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/chat-bench-results.jsonl"))
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="s to wait for idle CPUs")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run (and so every server and chat-bench) at this niceness, e.g. -10 as root, "
        "so that other work on a shared machine disturbs the measurement less",
    )
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        parser.error("needs 2 CPUs: the server on CPU 0, chat-bench on CPU 1")
    if args.cluster and not shutil.which("redis-server"):
        parser.error("--cluster needs redis-server (apt-get install redis-server)")
    raise_file_limit()
    servers = [s for s in args.servers.split(",") if s] if args.cluster != "only" else []
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

    def record(
        out: Any, name: str, scenario: str, rep: int, measure: Callable[[], dict[str, Any]]
    ) -> None:
        background = wait_for_quiet(args.quiet_wait)
        others = OtherLoad()
        try:
            result = measure()
        except RuntimeError as exc:
            result = {"error": str(exc)}
        result.update(
            server=name,
            run=scenario,
            rep=rep,
            background=background,
            others_during=others.summary(),
        )
        results.add(name, scenario, result)
        out.write(json.dumps(result) + "\n")
        out.flush()
        brief = {k: result[k] for k in BRIEF if k in result}
        elapsed = time.monotonic() - started
        print(f"[{elapsed:5.0f}s] {rep} {scenario} {name}: {brief}", file=sys.stderr)

    def single(server: Server, flags: str, arguments: list[str]) -> dict[str, Any]:
        with running(server, flags, log) as process:
            result = bench(
                [
                    *arguments,
                    f"--port={server.port}",
                    f"--protocol={server.protocol}",
                    f"--server-pid={process.pid}",
                    f"--cpu={BENCH_CPU}",
                ],
                timeout=240,
            )
            if process.poll() is not None:
                result.setdefault("error", "server died during the run")
        return result

    def cluster(flags: str, arguments: list[str]) -> dict[str, Any]:
        with running_cluster(flags, log) as processes:
            result = bench(
                [
                    *arguments,
                    f"--port={','.join(str(p) for p in CLUSTER_PORTS)}",
                    f"--server-pid={','.join(str(p.pid) for p in processes)}",
                ],
                timeout=240,
            )
            if any(p.poll() is not None for p in processes):
                result.setdefault("error", "a node or Redis died during the run")
        return result

    with args.out.open("a") as out:
        out.write(json.dumps({"environment": env}) + "\n")
        for rep in range(args.reps):
            for scenario in scenarios:
                if rep and scenario in ONCE:
                    continue
                for name in servers:
                    server = SERVERS[name]
                    measure = functools.partial(single, server, scenario, SCENARIOS[scenario])
                    record(out, name, scenario, rep, measure)
        for rep in range(args.reps if args.cluster else 0):
            for scenario, (flags, arguments) in CLUSTER_SCENARIOS.items():
                one = functools.partial(single, SERVERS["chat"], flags, arguments)
                record(out, "chat", scenario, rep, one)
                record(out, "cluster", scenario, rep, functools.partial(cluster, flags, arguments))
    text = table(results, servers) if servers else ""
    if args.cluster:
        text += "\n" + cluster_table(results)
    env_line = (
        f"\nMeasured {env['when']} on {env['cpu']}, Linux {env['kernel']}, Python "
        f"{env['python']}, uvloop {env['uvloop']}, commit {env['commit']}, nice {env['nice']}; "
        f"median of {args.reps} runs ({', '.join(sorted(ONCE))}: 1). Raw results: {args.out}\n"
    )
    print(text + env_line)
    if args.markdown:
        args.markdown.write_text(text + env_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
