"""``chat-bench``: a load generator for chat servers over loopback.

It speaks this project's text dialect (``--protocol chat``) or IRC (``--protocol irc``, for
ngIRCd and other C servers), so every server is measured by the same program. Each message
carries a marker and the monotonic send time in nanoseconds; receivers count markers with
``bytes.count`` (C speed) and a few *probe* clients parse the times for latency, so the
generator stays cheap per delivery and is not the bottleneck.

Scenarios (one JSON summary line per run on stdout):

- ``fanout``: C clients in one room, S of them sending, at a total rate R or flat out, for T
  seconds: sent, expected and received deliveries, loss, deliveries/s, latency p50/p99/max.
- ``conns``: N registered idle clients: time to connect and register them all, and the
  server's memory per connection (with ``--server-pid``).
- ``slow``: like fanout at a fixed rate, but K clients stop reading: the healthy clients'
  latency and loss, the server's memory over time, whether and when the slow ones were
  dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

__all__ = ["main"]

MARKER: Final = b"~B~"
_STAMP_RE: Final = re.compile(rb"~B~ (\d+)")
ROOM: Final = "#bench"
TCP_CLOSE: Final = 7
TCP_CLOSE_WAIT: Final = 8


def raise_file_limit() -> int:
    """Allow as many sockets as the hard limit permits; 20,000 clients need more than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) used so far by ``pid``, or by this process when None."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


@dataclass(slots=True)
class Client:
    """One benchmark connection and what it has received."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    probe: bool = False
    received: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    tail: bytes = b""
    progress: asyncio.Event | None = None  # set on every read, for the clock client
    reader_task: asyncio.Task[None] | None = None

    @property
    def nick(self) -> str:
        return f"b{self.index}"


class Dialect:
    """How to register and speak in one room, per server protocol."""

    def __init__(self, protocol: str) -> None:
        self.irc = protocol == "irc"

    async def register(self, client: Client) -> None:
        w, r = client.writer, client.reader
        if self.irc:
            w.write(f"NICK {client.nick}\r\nUSER {client.nick} 0 * :bench\r\n".encode())
            await _until(r, w, b" 001 ")
            w.write(f"JOIN {ROOM}\r\n".encode())
            await _until(r, w, b" 366 ")  # end of NAMES: the join is complete
        else:
            w.write(f"{client.nick}\r\n/join {ROOM}\r\n".encode())
            await _until(r, w, f"*** {client.nick} joined {ROOM}".encode())

    def message(self, payload: str) -> bytes:
        if self.irc:
            return f"PRIVMSG {ROOM} :{payload}\r\n".encode()
        return f"{payload}\r\n".encode()

    def recipients(self, clients: int) -> int:
        """Deliveries per message: IRC servers do not echo to the sender, chat does."""
        return clients - 1 if self.irc else clients


async def _until(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, needle: bytes) -> None:
    """Read lines until one contains ``needle``; answer IRC PINGs meanwhile."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"closed while waiting for {needle!r}")
        if line.startswith(b"PING "):
            writer.write(b"PONG " + line[5:])
        if needle in line:
            return


async def open_clients(
    args: argparse.Namespace, count: int, dialect: Dialect, first: int = 0
) -> list[Client]:
    """Connect and register ``count`` clients, ``--parallel`` at a time, from many sources."""
    sources = [f"127.0.0.{2 + i}" for i in range(args.source_addresses)]
    gate = asyncio.Semaphore(args.parallel)
    clients: list[Client | None] = [None] * count

    async def one(i: int) -> None:
        async with gate:
            source = sources[(first + i) % len(sources)] if args.host.startswith("127.") else None
            reader, writer = await asyncio.open_connection(
                args.host,
                args.port,
                local_addr=(source, 0) if source else None,
                limit=1 << 20,
            )
            client = Client(first + i, reader, writer)
            async with asyncio.timeout(args.register_timeout):
                await dialect.register(client)
            clients[i] = client

    async with asyncio.TaskGroup() as group:
        for i in range(count):
            group.create_task(one(i))
    return [c for c in clients if c is not None]


async def receive(client: Client) -> None:
    """Count marked deliveries; probes also record latency. Ends at EOF."""
    reader = client.reader
    probe = client.probe
    while True:
        data = await reader.read(1 << 18)
        if not data:
            return
        if client.tail:
            data = client.tail + data
        client.received += data.count(MARKER)
        # Keep the end of a possibly cut marker line for the next chunk; count nothing twice.
        cut = data.rfind(b"\n")
        client.tail = data[cut + 1 :] if cut >= 0 else data
        if client.tail:
            client.received -= client.tail.count(MARKER)
        if client.progress is not None:
            client.progress.set()
        if probe:
            now = time.monotonic_ns()
            client.latencies_ns.extend(
                now - int(stamp) for stamp in _STAMP_RE.findall(data, 0, cut + 1)
            )
        if b"PING " in data:
            for line in data.split(b"\n"):
                if line.startswith(b"PING "):
                    client.writer.write(b"PONG " + line[5:] + b"\n")


async def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        if client.reader_task is not None:
            client.reader_task.cancel()
        client.writer.transport.abort()
    tasks = [c.reader_task for c in clients if c.reader_task is not None]
    if tasks:
        await asyncio.wait(tasks)


async def send_load(
    args: argparse.Namespace,
    senders: Sequence[Client],
    clock: Client,
    dialect: Dialect,
    stop_at: float,
) -> int:
    """Send from ``senders`` until ``stop_at``; at ``--rate`` msg/s in total, or flat out."""
    loop = asyncio.get_running_loop()
    sent = 0
    if args.rate > 0:
        start = loop.time()
        turn = 0
        while (now := loop.time()) < stop_at:
            due = int((now - start) * args.rate) - sent
            for _ in range(due):
                sender = senders[turn % len(senders)]
                turn += 1
                stamp = time.monotonic_ns()
                payload = f"~B~ {stamp} {sender.index}"
                sender.writer.write(dialect.message(payload))
                sent += 1
            await asyncio.sleep(0.001)
        return sent

    # Flat out, but closed-loop: keep at most --window messages in flight, measured by the
    # clock client (which receives every message), so the generator never just fills buffers.
    assert clock.progress is not None
    turn = 0
    while loop.time() < stop_at:
        if sent - clock.received > args.window:
            clock.progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await clock.progress.wait()
            continue
        stamp = time.monotonic_ns()
        for _ in range(args.batch):
            sender = senders[turn % len(senders)]
            turn += 1
            sender.writer.write(dialect.message(f"~B~ {stamp} {sender.index}"))
        sent += args.batch
    return sent


async def wait_quiet(clients: Sequence[Client], expected: int, limit: float) -> None:
    """Wait until everything expected arrived, or nothing more arrives for a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = -1
    last_change = loop.time()
    while loop.time() < deadline:
        total = sum(c.received for c in clients)
        if total >= expected:
            return
        if total != last:
            last, last_change = total, loop.time()
        elif loop.time() - last_change > 1.0:
            return
        await asyncio.sleep(0.05)


def latency_summary(clients: Sequence[Client]) -> dict[str, float | None]:
    values = sorted(v for c in clients for v in c.latencies_ns)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v / 1e6, 3)

    return {
        "latency_ms_p50": ms(percentile(values, 0.50)),
        "latency_ms_p99": ms(percentile(values, 0.99)),
        "latency_ms_max": ms(values[-1] if values else None),
        "latency_samples": len(values),
    }


def cpu_summary(
    before: tuple[float | None, float | None], after: tuple[float | None, float | None], wall: float
) -> dict[str, float]:
    """Share of one core each side used while sending: which one was the bottleneck."""
    names = ("generator_cpu", "server_cpu")
    return {
        name: round((b - a) / wall, 3)
        for name, a, b in zip(names, before, after, strict=True)
        if a is not None and b is not None
    }


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state; CLOSE_WAIT means the server closed, even with unread data."""
    state: int = struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
    return state


async def run_fanout(args: argparse.Namespace, *, slow: int = 0) -> dict[str, Any]:
    dialect = Dialect(args.protocol)
    loop = asyncio.get_running_loop()
    rss_before = rss_kib(args.server_pid) if args.server_pid else None
    clients = await open_clients(args, args.clients, dialect)
    healthy = clients[slow:]
    slow_clients = clients[:slow]
    for client in slow_clients:
        # It stops reading: the kernel buffers fill. (uvloop's transports are not registered
        # as asyncio.ReadTransport subclasses, hence the cast rather than an isinstance.)
        cast(asyncio.Transport, client.writer.transport).pause_reading()
    for i, client in enumerate(healthy):
        client.probe = i < args.probes or args.probes <= 0
        client.reader_task = asyncio.create_task(receive(client))
    # The clock client receives every message (so, on IRC, which does not echo, it must not
    # send); flat-out senders pace themselves on it.
    clock = healthy[-1]
    clock.progress = asyncio.Event()
    candidates = healthy[:-1] if dialect.irc else healthy
    senders = candidates[: args.senders] if args.senders else candidates
    started = loop.time()
    cpu_before = (cpu_seconds(), cpu_seconds(args.server_pid) if args.server_pid else None)
    stop_at = started + args.duration
    memory: list[tuple[float, int | None]] = []
    dropped_at: dict[int, float] = {}

    async def watch() -> None:
        while True:
            now = loop.time() - started
            if args.server_pid:
                memory.append((round(now, 2), rss_kib(args.server_pid)))
            for client in slow_clients:
                sock = client.writer.get_extra_info("socket")
                if client.index not in dropped_at and tcp_state(sock) in (
                    TCP_CLOSE,
                    TCP_CLOSE_WAIT,
                ):
                    dropped_at[client.index] = round(now, 3)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        sent = await send_load(args, senders, clock, dialect, stop_at)
        elapsed = loop.time() - started
        cpu_after = (cpu_seconds(), cpu_seconds(args.server_pid) if args.server_pid else None)
        per_message = dialect.recipients(args.clients) - slow
        expected = sent * per_message
        await wait_quiet(healthy, expected, args.drain_timeout)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    received = sum(c.received for c in healthy)
    summary: dict[str, Any] = {
        "scenario": "slow" if slow else "fanout",
        "protocol": args.protocol,
        "clients": args.clients,
        "senders": len(senders),
        "rate": args.rate or "flat-out",
        "duration_s": round(elapsed, 3),
        "sent": sent,
        "expected": expected,
        "received": received,
        "loss": round(max(0, expected - received) / expected, 6) if expected else 0.0,
        "deliveries_per_s": round(received / elapsed),
        **latency_summary(healthy),
        **cpu_summary(cpu_before, cpu_after, elapsed),
    }
    if slow:
        summary["slow_clients"] = slow
        summary["slow_dropped"] = len(dropped_at)
        summary["slow_dropped_at_s"] = sorted(dropped_at.values())
    if args.server_pid:
        summary["server_rss_kib_before"] = rss_before
        summary["server_rss_kib_max"] = max((m for _, m in memory if m), default=None)
        if slow:
            summary["server_rss_kib_over_time"] = memory[:: max(1, len(memory) // 20)]
    await close_all(clients)
    return summary


async def run_conns(args: argparse.Namespace) -> dict[str, Any]:
    dialect = Dialect(args.protocol)
    loop = asyncio.get_running_loop()
    rss_before = rss_kib(args.server_pid) if args.server_pid else None
    started = loop.time()
    clients = await open_clients(args, args.clients, dialect)
    elapsed = loop.time() - started
    for client in clients:
        client.reader_task = asyncio.create_task(receive(client))
    await asyncio.sleep(args.settle)  # let the server's allocator settle before measuring
    rss_after = rss_kib(args.server_pid) if args.server_pid else None
    summary: dict[str, Any] = {
        "scenario": "conns",
        "protocol": args.protocol,
        "clients": args.clients,
        "connected": len(clients),
        "connect_s": round(elapsed, 3),
        "connects_per_s": round(len(clients) / elapsed) if elapsed else None,
    }
    if rss_before is not None and rss_after is not None:
        summary["server_rss_kib_before"] = rss_before
        summary["server_rss_kib_after"] = rss_after
        summary["server_kib_per_conn"] = round((rss_after - rss_before) / max(1, len(clients)), 2)
    await close_all(clients)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-bench",
        description="Load generator for chat servers (this one, or IRC servers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("scenario", choices=["fanout", "conns", "slow"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--protocol", choices=["chat", "irc"], default="chat")
    parser.add_argument("--clients", type=int, default=100, help="connections in the room")
    parser.add_argument("--senders", type=int, default=0, help="how many send; 0 means all")
    parser.add_argument("--rate", type=float, default=0, help="messages/s in total; 0 = flat out")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--slow", type=int, default=5, help="clients that stop reading (slow)")
    parser.add_argument("--probes", type=int, default=10, help="clients that time deliveries")
    parser.add_argument("--batch", type=int, default=50, help="flat out: lines between checks")
    parser.add_argument("--window", type=int, default=1000, help="flat out: messages in flight")
    parser.add_argument("--parallel", type=int, default=200, help="connects in flight at once")
    parser.add_argument("--source-addresses", type=int, default=16, help="127.0.0.x sources")
    parser.add_argument("--register-timeout", type=float, default=60.0)
    parser.add_argument("--drain-timeout", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=1.0, help="conns: pause before RSS")
    parser.add_argument("--server-pid", type=int, default=0, help="measure this process's RSS")
    parser.add_argument("--server-cpu", type=int, default=None, help="pin --server-pid here")
    parser.add_argument("--cpu", type=int, default=None, help="pin the load generator here")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.server_cpu is not None and args.server_pid:
        os.sched_setaffinity(args.server_pid, {args.server_cpu})
    raise_file_limit()
    from chat.cli import loop_factory  # noqa: PLC0415 - keeps `chat-bench --help` light

    if args.scenario == "conns":
        scenario = run_conns(args)
    else:
        scenario = run_fanout(args, slow=args.slow if args.scenario == "slow" else 0)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        summary = runner.run(scenario)
    summary["generator_loop"] = args.loop
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
