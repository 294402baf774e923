"""``chat-bench``: a load generator for chat servers over loopback.

It speaks this project's text dialect (``--protocol chat``), IRC (``--protocol irc``, for
ngIRCd and other C servers) or the JSON dialect over a WebSocket (``--protocol ws``: what
browsers speak, ``GET /ws`` on the same port), so every server is measured by the same
program. Each message carries a marker and the monotonic send time in nanoseconds.

The generator must not be the bottleneck, so its receive path is cheap per delivery: every
connection is a raw non-blocking socket read by a loop callback with ``recv_into`` into one
shared buffer (no allocation per read), deliveries are counted with ``bytearray.count`` on
the marker (C speed; a marker cut between two reads is caught by a two-byte carry), and only
a few *probe* clients parse send times, from the first ``--probe-bytes`` of each read. Flat
out, each sender writes ``--batch`` lines in one ``send``.

Over a WebSocket the read path is the same: the server's frames are not masked, so each
event's JSON text (with the marker and the send time in it) lies verbatim in the bytes read.
Only the handshake is the ``websockets`` library's (its sans-I/O client protocol), and the
clients' frames, which must be masked, are built by its ``Frame``; nothing is framed here.

Scenarios (one JSON summary line per run on stdout):

- ``fanout``: C clients in one room, S of them sending, at a total rate R or flat out, for T
  seconds: sent, expected and received deliveries, loss, deliveries/s, latency p50/p99/max.
- ``conns``: N registered idle clients: time to connect and register them all, and the
  server's memory per connection (with ``--server-pid``). ``--join`` also joins the room.
- ``slow``: like fanout (give it a ``--rate``), but K clients stop reading: the healthy
  clients' latency and loss, the server's memory over time, whether and when the slow ones
  were dropped.

With ``--server-pid`` the summary also says how busy each side's core was
(``cores_busy``, from /proc/stat, so kernel softirq time and other processes count) and how
much CPU each process used, which tells whether the server, the generator or neither was
the limit.

Several servers at once (a cluster's nodes): ``--port 9001,9002`` spreads the clients over
the ports round robin (client i connects to the (i mod n)-th port), and ``--server-pid``
takes a comma-separated list too (memory and CPU are summed, and ``server_cpu_each`` says
how much each used). With more than one port, the probes also split their latencies into
deliveries from a sender on their own node and from one on another node.
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
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["main"]

MARKER: Final = b"~B~"
# A stamp counts only when the space after it arrived too, so a number cut at the end of a
# read is never taken for a (wrong) time.
_STAMP_RE: Final = re.compile(rb"~B~ (\d+) ")
# The same, with the sender's index (``~B~ <ns> <index>``), when nodes are told apart.
_STAMP_FROM_RE: Final = re.compile(rb"~B~ (\d+) (\d+)[ \r\n\"]")  # " ends a JSON string
ROOM: Final = "#bench"
WS_PATH: Final = "/ws"
TCP_CLOSE: Final = 7
TCP_CLOSE_WAIT: Final = 8
DROPPED_STATES: Final = (TCP_CLOSE, TCP_CLOSE_WAIT)
READ_SIZE: Final = 1 << 18
_BUFFER: Final = bytearray(READ_SIZE)  # shared: each read is processed before the next


def raise_file_limit(wanted: int = 1 << 17) -> int:
    """Allow enough sockets for 20,000 clients; root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling),) * 2)
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


def core_times() -> dict[int, tuple[int, int]]:
    """Per core (busy, total) jiffies from /proc/stat; busy includes irq and softirq."""
    found: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values[:8]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                found[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return found


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


class Client:
    """One benchmark connection: a raw non-blocking socket and what it has received."""

    __slots__ = (
        "carry",
        "closed_at",
        "index",
        "latencies_ns",
        "local_latencies_ns",
        "node",
        "nodes",
        "on_progress",
        "pending",
        "probe",
        "received",
        "remote_latencies_ns",
        "sock",
    )

    def __init__(self, index: int, sock: socket.socket, nodes: int = 1) -> None:
        self.index = index
        self.sock = sock
        self.nodes = nodes  # how many servers the clients are spread over
        self.node = index % nodes  # the one this client is connected to
        self.probe = False
        self.received = 0
        self.latencies_ns: list[int] = []
        self.local_latencies_ns: list[int] = []  # with several nodes: from this one
        self.remote_latencies_ns: list[int] = []  # and from senders on another node
        self.carry = b""  # the last two bytes read: a marker may straddle two reads
        self.pending = b""  # unsent output (the kernel buffer was full)
        self.closed_at: float | None = None
        self.on_progress: Callable[[], None] | None = None  # a clock client's wake-up

    @property
    def nick(self) -> str:
        return f"b{self.index}"


class Dialect:
    """How to register and speak in one room, per server protocol."""

    def __init__(self, protocol: str, size: int = 0) -> None:
        self.irc = protocol == "irc"
        self.ws = protocol == "ws"  # the JSON dialect, one object per WebSocket text frame
        # Pad each message's text to about ``size`` bytes (IRC caps a line at 512).
        self.padding = "x" * max(0, size - 28)

    async def register(self, client: Client, *, join: bool) -> None:
        nick = client.nick
        if self.ws:
            await _ws_handshake(client)
            hello = _ws_frame({"type": "hello", "nick": nick})
            if join:
                await _send(client, hello + _ws_frame({"type": "join", "room": ROOM}))
                # The join event, as every member sees it: {"type":"join",...,"nick":"b1",...
                await _until(client, f'"room":"{ROOM}","nick":"{nick}"'.encode(), frames=True)
            else:
                await _send(client, hello)
                await _until(client, b'"type":"welcome"', frames=True)
        elif self.irc:
            await _send(client, f"NICK {nick}\r\nUSER {nick} 0 * :bench\r\n".encode())
            await _until(client, b" 001 ")
            if join:
                await _send(client, f"JOIN {ROOM}\r\n".encode())
                await _until(client, b" 366 ")  # end of NAMES: the join is complete
        elif join:
            await _send(client, f"{nick}\r\n/join {ROOM}\r\n".encode())
            await _until(client, f"*** {nick} joined {ROOM}".encode())
        else:
            await _send(client, f"{nick}\r\n".encode())
            await _until(client, f"Welcome, {nick}!".encode())

    def message(self, payload: str) -> bytes:
        if self.padding:
            payload = f"{payload} {self.padding}"
        if self.ws:
            return _ws_frame({"type": "say", "room": ROOM, "text": payload})
        if self.irc:
            return f"PRIVMSG {ROOM} :{payload}\r\n".encode()
        return f"{payload}\r\n".encode()

    def recipients(self, clients: int) -> int:
        """Deliveries per message: IRC servers do not echo to the sender, chat does (in
        both dialects, so over a WebSocket too)."""
        return clients - 1 if self.irc else clients


async def _send(client: Client, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(client.sock, data)


def _ws_frame(command: dict[str, str]) -> bytes:
    """One JSON command as a client's (masked) WebSocket text frame."""
    data = json.dumps(command, separators=(",", ":")).encode()
    return Frame(Opcode.TEXT, data).serialize(mask=True)


async def _ws_handshake(client: Client) -> None:
    """Upgrade the connection to a WebSocket (``GET /ws``), as the library's client does."""
    loop = asyncio.get_running_loop()
    host, port = client.sock.getpeername()[:2]
    protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}{WS_PATH}"))
    protocol.send_request(protocol.connect())
    await _send(client, b"".join(protocol.data_to_send()))
    while protocol.state is State.CONNECTING:
        # The server says nothing after its 101 until the hello: no frame is read here.
        data = await loop.sock_recv(client.sock, 65536)
        if not data:
            raise ConnectionError("closed during the WebSocket handshake")
        protocol.receive_data(data)
    if protocol.state is not State.OPEN:  # the 101 checked (Sec-WebSocket-Accept too)
        raise ConnectionError(f"WebSocket handshake refused: {protocol.handshake_exc}")


async def _until(client: Client, needle: bytes, *, frames: bool = False) -> None:
    """Read until a line contains ``needle``; answer IRC PINGs meanwhile.

    With ``frames`` (a WebSocket: frames, not lines) anywhere in what was read counts.
    """
    loop = asyncio.get_running_loop()
    buffered = b""
    while True:
        data = await loop.sock_recv(client.sock, 65536)
        if not data:
            raise ConnectionError(f"closed while waiting for {needle!r}")
        buffered += data
        if frames:
            if needle in buffered:
                return
            buffered = buffered[-len(needle) :]
            continue
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if line.startswith(b"PING "):
                await _send(client, b"PONG " + line[5:] + b"\n")
            if needle in line:
                return


def on_readable(client: Client, irc: bool, probe_bytes: int) -> None:
    """Loop callback: one read into the shared buffer, counted where it lies."""
    buf = _BUFFER
    try:
        n = client.sock.recv_into(buf)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        n = 0
    if not n:
        stop_reading(client)
        client.closed_at = time.monotonic()
        return
    count = buf.count(MARKER, 0, n)
    carry = client.carry
    if carry:
        count += (carry + buf[: min(2, n)]).count(MARKER)
    # Reads mostly end with a line; only a cut one can hold the start of a marker.
    if buf[n - 1] == 10:  # b"\n"
        client.carry = b""
    else:
        client.carry = bytes(buf[n - 2 : n] if n >= 2 else (carry + buf[:n])[-2:])
    client.received += count
    if client.probe and count:
        now = time.monotonic_ns()
        if client.nodes == 1:
            client.latencies_ns.extend(
                now - int(stamp) for stamp in _STAMP_RE.findall(buf, 0, min(n, probe_bytes))
            )
        else:
            _split_latencies(client, now, _STAMP_FROM_RE.findall(buf, 0, min(n, probe_bytes)))
    if irc and n < 16384 and buf.find(b"PING ", 0, n) >= 0:
        # Servers ping idle connections, whose reads are small; a flooded one is not idle.
        for line in bytes(buf[:n]).split(b"\n"):
            if line.startswith(b"PING "):
                write(client, b"PONG " + line[5:] + b"\n")
    if client.on_progress is not None:
        client.on_progress()


def _split_latencies(client: Client, now: int, stamps: list[tuple[bytes, bytes]]) -> None:
    """Record latencies, and separately those of senders on another node than ``client``."""
    nodes = client.nodes
    for stamp, sender in stamps:
        latency = now - int(stamp)
        client.latencies_ns.append(latency)
        if int(sender) % nodes == client.node:
            client.local_latencies_ns.append(latency)
        else:
            client.remote_latencies_ns.append(latency)


def start_reading(client: Client, irc: bool, probe_bytes: int) -> None:
    asyncio.get_running_loop().add_reader(client.sock, on_readable, client, irc, probe_bytes)


def stop_reading(client: Client) -> None:
    with contextlib.suppress(ValueError, OSError):
        asyncio.get_running_loop().remove_reader(client.sock)


def write(client: Client, data: bytes) -> None:
    """Send now; what the kernel does not take waits for the socket to become writable."""
    if client.pending:
        client.pending += data
        return
    try:
        sent = client.sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        return  # the server closed it; the loss shows in the counts
    if sent < len(data):
        client.pending = data[sent:]
        asyncio.get_running_loop().add_writer(client.sock, _flush_pending, client)


def _flush_pending(client: Client) -> None:
    try:
        sent = client.sock.send(client.pending)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        sent = len(client.pending)
    client.pending = client.pending[sent:]
    if not client.pending:
        asyncio.get_running_loop().remove_writer(client.sock)


def set_lowat(clients: Sequence[Client], size: int) -> None:
    """Wake for a client only once ``size`` bytes wait (SO_RCVLOWAT; 1 = every byte)."""
    if size >= 1:
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, size))


def close_all(clients: Sequence[Client]) -> None:
    """Drop every connection at once (RST), so the next run starts clean."""
    loop = asyncio.get_running_loop()
    linger = struct.pack("ii", 1, 0)
    for client in clients:
        stop_reading(client)
        if client.pending:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_writer(client.sock)
        with contextlib.suppress(OSError):
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        client.sock.close()


async def open_clients(
    args: argparse.Namespace, count: int, dialect: Dialect, *, join: bool, silent: int = 0
) -> tuple[list[Client], Counter[str]]:
    """Connect and register ``count`` clients, ``--parallel`` at a time, from many sources.

    Each client starts reading as soon as it is registered (servers keep talking: joins,
    member lists), except the first ``silent`` ones (the slow readers). Failures are counted
    by kind, not raised; what has not registered by ``--connect-deadline`` counts as
    ``deadline``.
    """
    loop = asyncio.get_running_loop()
    local = args.host.startswith("127.")
    ports: tuple[int, ...] = args.port
    sources = [f"127.0.0.{2 + i}" for i in range(args.source_addresses)]
    gate = asyncio.Semaphore(args.parallel)
    clients: list[Client | None] = [None] * count
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        async with gate:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:  # EMFILE: the open-file limit
                errors[type(exc).__name__] += 1
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if local:
                    sock.bind((sources[i % len(sources)], 0))
                client = Client(i, sock, len(ports))
                async with asyncio.timeout(args.register_timeout):
                    await loop.sock_connect(sock, (args.host, ports[client.node]))
                    await dialect.register(client, join=join)
            except (OSError, TimeoutError) as exc:
                sock.close()
                errors[type(exc).__name__] += 1
                return
            except BaseException:
                sock.close()
                raise
            clients[i] = client
            if i >= silent:
                start_reading(client, dialect.irc, args.probe_bytes)

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    done, late = await asyncio.wait(tasks, timeout=args.connect_deadline)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
        errors["deadline"] += len(late)
    for task in done:
        if task.exception() is not None:
            errors[type(task.exception()).__name__] += 1
    return [c for c in clients if c is not None], errors


async def send_load(
    args: argparse.Namespace,
    senders: Sequence[Client],
    clocks: Sequence[Client],
    dialect: Dialect,
    stop_at: float,
) -> int:
    """Send from ``senders`` until ``stop_at``; at ``--rate`` msg/s in total, or flat out."""
    loop = asyncio.get_running_loop()
    sent = 0
    turn = 0
    if args.rate > 0:
        start = loop.time()
        while (now := loop.time()) < stop_at:
            due = int((now - start) * args.rate) - sent
            for _ in range(due):
                sender = senders[turn % len(senders)]
                turn += 1
                write(sender, dialect.message(f"~B~ {time.monotonic_ns()} {sender.index}"))
            sent += max(0, due)
            await asyncio.sleep(0.001)
        return sent

    # Flat out, but closed-loop: keep at most --window messages in flight, measured by the
    # clock clients (which receive every message; one per server, so that with several
    # nodes no direction between them runs ahead), so the generator never just fills
    # buffers. Each step one sender writes --batch lines in one send.
    progress = asyncio.Event()
    for clock in clocks:
        clock.on_progress = progress.set
    batch = max(1, args.batch)
    while loop.time() < stop_at:
        if sent - min(clock.received for clock in clocks) > args.window:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await progress.wait()
            continue
        sender = senders[turn % len(senders)]
        turn += 1
        write(sender, dialect.message(f"~B~ {time.monotonic_ns()} {sender.index}") * batch)
        sent += batch
        if turn % len(senders) == 0:
            await asyncio.sleep(0)  # let the reads in
    for clock in clocks:
        clock.on_progress = None
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

    found = {
        "latency_ms_p50": ms(percentile(values, 0.50)),
        "latency_ms_p99": ms(percentile(values, 0.99)),
        "latency_ms_max": ms(values[-1] if values else None),
        "latency_samples": len(values),
    }
    if any(c.nodes > 1 for c in clients):
        remote = sorted(v for c in clients for v in c.remote_latencies_ns)
        same = sorted(v for c in clients for v in c.local_latencies_ns)
        found |= {
            "latency_ms_p50_same_node": ms(percentile(same, 0.50)),
            "latency_ms_p99_same_node": ms(percentile(same, 0.99)),
            "latency_ms_p50_cross_node": ms(percentile(remote, 0.50)),
            "latency_ms_p99_cross_node": ms(percentile(remote, 0.99)),
            "latency_samples_cross_node": len(remote),
        }
    return found


def servers_rss_kib(pids: Sequence[int]) -> int | None:
    """The resident memory of all ``pids`` together, in KiB (None if one is unreadable)."""
    sizes = [rss_kib(pid) for pid in pids]
    if not sizes or None in sizes:
        return None
    return sum(size for size in sizes if size is not None)


class CpuMeter:
    """CPU used by the generator, the servers, and the cores they run on, over an interval."""

    def __init__(self, server_pids: Sequence[int], generator_cores: set[int]) -> None:
        self.server_pids = tuple(server_pids)
        cores = set(generator_cores)
        for pid in self.server_pids:
            with contextlib.suppress(OSError):
                cores |= os.sched_getaffinity(pid)
        self.cores = sorted(cores) if len(cores) <= 4 else []
        self._start = self._read()

    def _read(self) -> tuple[float | None, list[float | None], dict[int, tuple[int, int]]]:
        servers = [cpu_seconds(pid) for pid in self.server_pids]
        return cpu_seconds(), servers, core_times() if self.cores else {}

    def summary(self, wall: float) -> dict[str, Any]:
        gen_end, servers_end, cores_end = self._read()
        gen_start, servers_start, cores_start = self._start
        found: dict[str, Any] = {}
        if gen_start is not None and gen_end is not None:
            found["generator_cpu"] = round((gen_end - gen_start) / wall, 3)
        each = {
            str(pid): round((end - start) / wall, 3)
            for pid, start, end in zip(self.server_pids, servers_start, servers_end, strict=True)
            if start is not None and end is not None
        }
        if each and len(each) == len(self.server_pids):
            found["server_cpu"] = round(sum(each.values()), 3)
            if len(each) > 1:
                found["server_cpu_each"] = each
        busy = {}
        for core in self.cores:
            if core in cores_start and core in cores_end:
                work = cores_end[core][0] - cores_start[core][0]
                total = cores_end[core][1] - cores_start[core][1]
                busy[str(core)] = round(work / total, 3) if total else None
        if busy:
            found["cores_busy"] = busy
        return found


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state; CLOSE_WAIT means the server closed, even with unread data."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return TCP_CLOSE
    state: int = struct.unpack("B", info)[0]
    return state


def _proc_net_address(address: tuple[str, int]) -> str:
    """``("127.0.0.1", 9000)`` as /proc/net/tcp writes it: ``0100007F:2328``."""
    packed = socket.inet_aton(address[0])
    return f"{int.from_bytes(packed, 'little'):08X}:{address[1]:04X}"


def server_closed(clients: Sequence[Client]) -> set[int]:
    """Indexes of ``clients`` whose server side has closed the connection.

    A client that stops reading cannot see the server's FIN, which waits behind megabytes
    of unread data, so the server's own socket is looked up in /proc/net/tcp: gone (reset)
    or no longer ESTABLISHED means the server dropped the client. Loopback only.
    """
    wanted: dict[tuple[str, str], int] = {}
    closed: set[int] = set()
    for client in clients:
        try:
            here = _proc_net_address(client.sock.getsockname())
            there = _proc_net_address(client.sock.getpeername())
        except OSError:
            closed.add(client.index)
            continue
        wanted[(there, here)] = client.index
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return closed
    established: set[int] = set()
    for line in table:
        fields = line.split(None, 4)
        index = wanted.get((fields[1], fields[2]))
        if index is not None and fields[3] == "01":
            established.add(index)
    closed.update(index for index in wanted.values() if index not in established)
    return closed


def generator_cores(args: argparse.Namespace) -> set[int]:
    return {args.cpu} if args.cpu is not None else set(os.sched_getaffinity(0))


async def run_fanout(args: argparse.Namespace, *, slow: int = 0) -> dict[str, Any]:
    dialect = Dialect(args.protocol, args.size)
    rss_before = servers_rss_kib(args.server_pid)
    clients, errors = await open_clients(args, args.clients, dialect, join=True, silent=slow)
    try:
        return await _fanout(
            args, dialect, clients=clients, errors=errors, slow=slow, rss_before=rss_before
        )
    finally:
        close_all(clients)


async def _fanout(
    args: argparse.Namespace,
    dialect: Dialect,
    *,
    clients: list[Client],
    errors: Counter[str],
    slow: int,
    rss_before: int | None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    slow_clients = [c for c in clients if c.index < slow]
    healthy = [c for c in clients if c.index >= slow]
    if len(healthy) < 2:
        return {"scenario": "slow" if slow else "fanout", "error": "too few clients connected"}
    # Slow clients never read (the kernel buffers fill, then the server's); the others count.
    for i, client in enumerate(healthy):
        client.probe = i < args.probes or args.probes <= 0
    await asyncio.sleep(0.2)  # let registration chatter (joins, member lists) drain
    for client in healthy:
        client.received = 0
    # The clients that only count wake the generator once per --lowat bytes, not per line
    # (the kernel holds the rest): far fewer reads, the same deliveries.
    # One clock per server: the last healthy client connected to it.
    clocks = list({c.node: c for c in healthy}.values())
    counters = [c for c in healthy if not c.probe and c not in clocks]
    set_lowat(counters, args.lowat)
    # A clock client receives every message (so, on IRC, which does not echo, it must not
    # send); flat-out senders pace themselves on the clocks.
    candidates = [c for c in healthy if c not in clocks] if dialect.irc else healthy
    senders = candidates[: args.senders] if args.senders else candidates
    meter = CpuMeter(args.server_pid, generator_cores(args))
    started = loop.time()
    stop_at = started + args.duration
    memory: list[tuple[float, int | None]] = []
    dropped_at: dict[int, float] = {}
    loopback = args.host.startswith("127.")

    async def watch() -> None:
        while True:
            now = loop.time() - started
            if args.server_pid:
                memory.append((round(now, 2), servers_rss_kib(args.server_pid)))
            watched = [c for c in slow_clients if c.index not in dropped_at]
            if watched:
                gone = {c.index for c in watched if tcp_state(c.sock) in DROPPED_STATES}
                if loopback:
                    gone |= server_closed(watched)
                for index in gone:
                    dropped_at[index] = round(now, 3)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        sent = await send_load(args, senders, clocks, dialect, stop_at)
        elapsed = loop.time() - started
        set_lowat(counters, 1)  # what the kernel held for them was delivered in time
        for client in counters:
            on_readable(client, dialect.irc, args.probe_bytes)
        in_window = sum(c.received for c in healthy)
        cpu = meter.summary(elapsed)
        per_message = dialect.recipients(len(clients)) - slow
        expected = sent * per_message
        await wait_quiet(healthy, expected, args.drain_timeout)
        if slow:  # give the server a moment to notice the last slow readers
            await asyncio.sleep(0.3)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    received = sum(c.received for c in healthy)
    summary: dict[str, Any] = {
        "scenario": "slow" if slow else "fanout",
        "protocol": args.protocol,
        **({"ports": list(args.port)} if len(args.port) > 1 else {}),
        "clients": args.clients,
        "connected": len(clients),
        "connect_errors": sum(errors.values()),
        "senders": len(senders),
        "rate": args.rate or "flat-out",
        "window": None if args.rate else args.window,
        "size": args.size or None,
        "duration_s": round(elapsed, 3),
        "sent": sent,
        "expected": expected,
        "received": received,
        "received_in_window": in_window,
        "loss": round(max(0, expected - received) / expected, 6) if expected else 0.0,
        "deliveries_per_s": round(in_window / elapsed),
        **latency_summary(healthy),
        **cpu,
        "healthy_disconnected": sum(1 for c in healthy if c.closed_at is not None),
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
    return summary


async def run_conns(args: argparse.Namespace) -> dict[str, Any]:
    dialect = Dialect(args.protocol)
    loop = asyncio.get_running_loop()
    rss_before = servers_rss_kib(args.server_pid)
    meter = CpuMeter(args.server_pid, generator_cores(args))
    started = loop.time()
    clients, errors = await open_clients(args, args.clients, dialect, join=args.join)
    elapsed = loop.time() - started
    cpu = meter.summary(elapsed)
    try:
        await asyncio.sleep(args.settle)  # let the server's allocator settle before measuring
        rss_after = servers_rss_kib(args.server_pid)
        held = sum(1 for c in clients if c.closed_at is None)
        summary: dict[str, Any] = {
            "scenario": "conns",
            "protocol": args.protocol,
            **({"ports": list(args.port)} if len(args.port) > 1 else {}),
            "clients": args.clients,
            "joined_room": args.join,
            "connected": len(clients),
            "held": held,
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "connect_s": round(elapsed, 3),
            "connects_per_s": round(len(clients) / elapsed) if elapsed else None,
            **cpu,
        }
        if rss_before is not None and rss_after is not None:
            summary["server_rss_kib_before"] = rss_before
            summary["server_rss_kib_after"] = rss_after
            summary["server_kib_per_conn"] = round(
                (rss_after - rss_before) / max(1, len(clients)), 2
            )
    finally:
        close_all(clients)
    return summary


def _numbers(text: str) -> tuple[int, ...]:
    """``"9001"`` or ``"9001,9002"`` as a tuple of non-negative ints."""
    try:
        numbers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if any(n < 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"negative number in {text!r}")
    return numbers


def _ports(text: str) -> tuple[int, ...]:
    ports = _numbers(text)
    if not ports or not all(0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"not a port or a comma-separated list of ports: {text!r}")
    return ports


def _pids(text: str) -> tuple[int, ...]:
    """Process ids, each once; ``0`` (the default) means none."""
    return tuple(dict.fromkeys(pid for pid in _numbers(text) if pid))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-bench",
        description="Load generator for chat servers (this one, or IRC servers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("scenario", choices=["fanout", "conns", "slow"])
    add("--host", default="127.0.0.1")
    add(
        "--port",
        type=_ports,
        default=(9000,),
        metavar="PORT[,PORT...]",
        help="TCP port; several spread the clients over them round robin (a cluster's nodes)",
    )
    add(
        "--protocol",
        choices=["chat", "irc", "ws"],
        default="chat",
        help="text dialect, IRC, or the JSON dialect over a WebSocket (GET /ws)",
    )
    add("--clients", type=int, default=100, help="connections (in the room, but for conns)")
    add("--senders", type=int, default=0, help="how many send; 0 means all")
    add("--rate", type=float, default=0, help="messages/s in total; 0 = flat out")
    add("--duration", type=float, default=10.0, help="seconds of sending")
    add("--size", type=int, default=0, help="pad message text to about this many bytes")
    add("--slow", type=int, default=5, help="clients that stop reading (slow)")
    add("--probes", type=int, default=10, help="clients that time deliveries")
    add("--probe-bytes", type=int, default=8192, help="probes parse this much of each read")
    add("--lowat", type=int, default=16384, help="non-probe clients read this much at once")
    add("--batch", type=int, default=10, help="flat out: lines per send")
    add("--window", type=int, default=5000, help="flat out: messages in flight")
    add("--join", action="store_true", help="conns: also join the room")
    add("--parallel", type=int, default=200, help="connects in flight at once")
    add("--source-addresses", type=int, default=16, help="127.0.0.x sources")
    add("--register-timeout", type=float, default=60.0, help="per connection")
    add("--connect-deadline", type=float, default=120.0, help="for all connections")
    add("--drain-timeout", type=float, default=15.0)
    add("--settle", type=float, default=1.0, help="conns: pause before RSS")
    add(
        "--server-pid",
        type=_pids,
        default=(),
        metavar="PID[,PID...]",
        help="measure these processes' RSS and CPU (summed); 0 = none",
    )
    add("--server-cpu", type=int, default=None, help="pin the --server-pid processes here")
    add("--cpu", type=int, default=None, help="pin the load generator here")
    add("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.server_cpu is not None:
        for pid in args.server_pid:
            os.sched_setaffinity(pid, {args.server_cpu})
    limit = raise_file_limit(args.clients + 256)
    if limit < args.clients + 16:
        print(f"chat-bench: open-file limit {limit} is too low", file=sys.stderr)
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
