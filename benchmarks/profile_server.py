"""Profile chat-server's hot path under a chat-bench load with py-spy; print the top costs.

    pip install py-spy
    python benchmarks/profile_server.py fanout        # or: rate, conns

For a flame graph instead, run the same load and ``py-spy record -o fanout.svg --pid PID``.

The server runs pinned to CPU 0 with the flags benchmarks/run.py gives it, chat-bench and
py-spy on CPU 1. py-spy samples the server for ``--seconds`` while the load runs, and the
samples are folded into self time (where the interpreter was) and inclusive time (what was
on the stack) per function and line. Loopback only; never run by the test suite.
"""

from __future__ import annotations

import argparse
import collections
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

# chat-bench arguments, and the seconds to wait before sampling: past the connects (1,000
# clients joining one room take chat-server about 12 s), into the steady load.
LOADS = {
    "fanout": (["fanout", "--clients=100", "--duration=12", "--window=20000"], 3),
    "rate": (["fanout", "--clients=1000", "--rate=200", "--duration=12"], 16),
    "conns": (["conns", "--clients=10000", "--connect-deadline=15", "--settle=0"], 3),
}


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("load", choices=sorted(LOADS))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() and not shutil.which("py-spy"):
        parser.error("needs py-spy: pip install py-spy")
    load, wait = LOADS[args.load]
    run.raise_file_limit()
    server = run.SERVERS["chat"]
    scenario = "fanout" if args.load == "fanout" else "rate"
    log = Path(tempfile.gettempdir()) / "chat-profile-server.log"
    with run.running(server, scenario, log) as process:
        bench = subprocess.Popen(
            [
                run._script("chat-bench"),
                *run.COMMON,
                *load,
                f"--port={server.port}",
                f"--server-pid={process.pid}",
                f"--cpu={run.BENCH_CPU}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(wait)
        raw = Path(tempfile.gettempdir()) / f"chat-profile-{args.load}.txt"
        record = [spy, "record", "--pid", str(process.pid), "--duration", str(args.seconds)]
        subprocess.run(
            [*record, "--format", "raw", "--output", str(raw)],
            check=True,
            capture_output=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {run.BENCH_CPU}),
        )
        summary, _ = bench.communicate(timeout=120)
    print(summary.strip())
    print(fold(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
