"""The textbook asyncio chat server: the deliberately naive baseline for docs/performance.md.

This is how most tutorials write it: ``asyncio.start_server``, one coroutine per client
reading lines, and a broadcast that loops over the members doing ``writer.write()`` then
``await writer.drain()`` for each recipient. Every message costs one write and one drain per
member, each renders its own line, and one recipient that stops reading stalls the
broadcast (and so its sender) for everyone.

It speaks just enough of the chat text dialect for ``chat-bench --protocol chat``: the first
line is the nickname (answered with ``*** Welcome, NICK!``), ``/join #room`` puts the client
in the one room (everyone sees ``[#room] *** NICK joined #room``), and a plain line goes to
every member as ``[#room] <NICK> text``. Nothing else: no validation, no limits.

    python benchmarks/textbook_server.py --port 9402
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys

members: dict[asyncio.StreamWriter, str] = {}
room = "#bench"


async def broadcast(text: str) -> None:
    data = text.encode()
    for writer in list(members):
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            members.pop(writer, None)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global room  # noqa: PLW0603 - one room, named by the first /join
    try:
        nick = (await reader.readline()).decode(errors="replace").strip()
        if not nick:
            return
        writer.write(f"*** Welcome, {nick}!\r\n".encode())
        await writer.drain()
        while line := await reader.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            if text.startswith("/join "):
                room = text.split()[1]
                members[writer] = nick
                await broadcast(f"[{room}] *** {nick} joined {room}\r\n")
            elif text and writer in members:
                await broadcast(f"[{room}] <{nick}> {text}\r\n")
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        members.pop(writer, None)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, backlog=1024)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"textbook server listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9402)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
