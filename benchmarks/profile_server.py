"""Profile chat-server's hot path under a chat-bench load with py-spy; print the top costs.

    pip install py-spy
    python benchmarks/profile_server.py fanout        # or: rate, conns, cluster

For a flame graph instead, run the same load and ``py-spy record -o fanout.svg --pid PID``.

The server runs pinned to CPU 0 with the flags benchmarks/run.py gives it, chat-bench and
py-spy on CPU 1. py-spy samples the server for ``--seconds`` while the load runs, and the
samples are folded into self time (where the interpreter was) and inclusive time (what was
on the stack) per function and line. Loopback only; never run by the test suite.

``cluster`` profiles node A of the two-node cluster ``run.py --cluster`` starts (nothing
pinned), under the flat-out fan-out that cluster sustains without loss (window 2,000).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

# chat-bench arguments, and whether to sample the steady load (once every client is
# connected, and a second more for the joins) or the connects themselves. The load runs
# long enough for any --seconds up to 12.
LOADS = {
    "fanout": (["fanout", "--clients=100", "--duration=15", "--window=20000"], True),
    "rate": (["fanout", "--clients=1000", "--rate=200", "--duration=15"], True),
    "conns": (["conns", "--clients=10000", "--connect-deadline=15", "--settle=0"], False),
    "cluster": (["fanout", "--clients=100", "--duration=15", "--window=2000"], True),
}


def established(port: int) -> int:
    """Connections the server on ``port`` has accepted and still holds (/proc/net/tcp)."""
    local = f":{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if (f := line.split())[1].endswith(local) and f[3] == "01")


def wait_for_clients(port: int, clients: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while established(port) < clients and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)


def fold(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed stack) output as top-N tables, by function and by line."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        own[functions[-1]] += samples
        own_lines[frames[-1]] += samples
        for function in set(functions):
            within[function] += samples
    lines = [f"{total} samples", "", "self time by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in within.most_common(top)]
    lines += ["", "self time by line:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own_lines.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
    parser.add_argument("load", choices=sorted(LOADS))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() and not shutil.which("py-spy"):
        parser.error("needs py-spy: pip install py-spy")
    load, steady = LOADS[args.load]
    run.raise_file_limit()
    log = Path(tempfile.gettempdir()) / "chat-profile-server.log"
    clients = int(next(a for a in load if a.startswith("--clients=")).split("=")[1])
    with contextlib.ExitStack() as stack:
        if args.load == "cluster":
            processes = stack.enter_context(run.running_cluster("fanout", log))
            target, port = processes[0], run.CLUSTER_PORTS[0]
            where = [
                f"--port={','.join(str(p) for p in run.CLUSTER_PORTS)}",
                f"--server-pid={','.join(str(p.pid) for p in processes)}",
            ]
            clients //= len(run.CLUSTER_PORTS)  # node A's share
        else:
            server = run.SERVERS["chat"]
            scenario = "fanout" if args.load == "fanout" else "rate"
            target, port = stack.enter_context(run.running(server, scenario, log)), server.port
            where = [f"--port={port}", f"--server-pid={target.pid}", f"--cpu={run.BENCH_CPU}"]
        bench = subprocess.Popen(
            [run._script("chat-bench"), *run.COMMON, *load, *where],
            stdout=subprocess.PIPE,
            text=True,
        )
        if steady:
            wait_for_clients(port, clients)
        else:
            time.sleep(0.3)
        raw = Path(tempfile.gettempdir()) / f"chat-profile-{args.load}.txt"
        record = [spy, "record", "--pid", str(target.pid), "--duration", str(args.seconds)]
        pin = {run.BENCH_CPU} if args.load != "cluster" else set(os.sched_getaffinity(0))
        subprocess.run(
            [*record, "--format", "raw", "--output", str(raw)],
            check=True,
            capture_output=True,
            preexec_fn=lambda: os.sched_setaffinity(0, pin),
        )
        summary, _ = bench.communicate(timeout=120)
    print(summary.strip())
    print(fold(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
