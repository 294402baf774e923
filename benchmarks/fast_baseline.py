"""A deliberately fast, bare broadcaster: the upper baseline for docs/performance.md.

No features at all (no validation, no history, no flood control, one room), only the
design that makes Python fast at fan-out: ``asyncio.Protocol`` callbacks on uvloop (no
task or stream per connection), lines said during one event-loop iteration joined into one
buffer, and that one buffer handed to every member's transport in one ``write`` per
iteration. A member whose transport holds more than ``--max-buffer`` bytes is dropped.

It exists to show that ``chat-bench`` is not the bottleneck: if the generator can saturate
this server's core, it can saturate any slower one. It speaks the same subset of the text
dialect as ``textbook_server.py``: first line = nickname (``*** Welcome, NICK!``),
``/join #room`` (``[#room] *** NICK joined #room`` to everyone), plain lines as
``[#room] <NICK> text``.

    python benchmarks/fast_baseline.py --port 9403
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
from typing import cast

try:
    import uvloop
except ImportError:  # pragma: no cover - the project depends on it where it exists
    uvloop = None  # type: ignore[assignment]


class Room:
    __slots__ = ("max_buffer", "members", "name", "pending", "scheduled")

    def __init__(self, max_buffer: int) -> None:
        self.name = b"#bench"
        self.members: dict[asyncio.Transport, None] = {}
        self.pending: list[bytes] = []
        self.scheduled = False
        self.max_buffer = max_buffer

    def flush(self) -> None:
        """Everything said this iteration, joined once, written once to each member."""
        self.scheduled = False
        data = b"".join(self.pending)
        self.pending.clear()
        limit = self.max_buffer
        for transport in list(self.members):
            if transport.get_write_buffer_size() > limit:
                del self.members[transport]
                transport.abort()  # a slow reader costs nobody else anything
            else:
                transport.write(data)


class Connection(asyncio.Protocol):
    __slots__ = ("buffer", "joined", "nick", "prefix", "room", "transport")

    def __init__(self, room: Room) -> None:
        self.room = room
        self.nick = b""
        self.prefix = b""
        self.buffer = b""
        self.joined = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        room = self.room
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if self.joined and line and line[0] != 0x2F:  # not a "/" command: say it
                room.pending.append(self.prefix + line + b"\r\n")
            elif not self.nick:
                self.nick = line.strip()
                assert self.transport is not None
                self.transport.write(b"*** Welcome, " + self.nick + b"!\r\n")
            elif line.startswith(b"/join ") and not self.joined:
                room.name = line.split()[1]
                self.joined = True
                self.prefix = b"[" + room.name + b"] <" + self.nick + b"> "
                assert self.transport is not None
                room.members[self.transport] = None
                room.pending.append(
                    b"[" + room.name + b"] *** " + self.nick + b" joined " + room.name + b"\r\n"
                )
        if room.pending and not room.scheduled:
            room.scheduled = True
            asyncio.get_running_loop().call_soon(room.flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.room.members.pop(self.transport, None)


async def serve(host: str, port: int, max_buffer: int) -> None:
    loop = asyncio.get_running_loop()
    room = Room(max_buffer)
    server = await loop.create_server(lambda: Connection(room), host, port, backlog=1024)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"fast baseline listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9403)
    parser.add_argument("--max-buffer", type=int, default=1 << 20, help="bytes per client")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None)
    with contextlib.suppress(KeyboardInterrupt), runner:
        runner.run(serve(args.host, args.port, args.max_buffer))


if __name__ == "__main__":
    main()
