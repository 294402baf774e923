"""Line mode, for pipes and scripts: each input line is sent, each event printed as a line.

Used when stdin or stdout is not a terminal. Events are printed as the server's text
dialect shows them, sanitised; nothing here draws a screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterable
from typing import BinaryIO, TextIO

from chat.client import Connect, Connection
from chat.commands import JoinCommand, PartCommand, QuitCommand, parse_text_line
from chat.errors import ConnectionLost, NickUnavailable, ProtocolError, ServerError
from chat.protocol import Event, room_key, sanitize
from chat.tui.actions import describe, execute, fail

__all__ = ["plain_lines", "run_plain"]


def plain_lines(event: Event) -> list[str]:
    """An event as the server's text dialect shows it, sanitised: one line or a few."""
    return [sanitize(line) for line in event.as_text().split("\r\n")]


def _stdin_lines(stream: BinaryIO) -> asyncio.Queue[str | None]:
    """Lines from a blocking stream (a file, a pipe or a terminal alike), read by a daemon
    thread; None at EOF. The thread waits for each line to be taken, so nothing piles up.

    It reads the file descriptor with ``os.read``: a daemon thread blocked inside a buffered
    ``readline`` holds the buffer's lock and makes the interpreter abort at exit.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
    fd = stream.fileno()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError, asyncio.CancelledError):
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def read() -> None:
        pending = b""
        try:
            while chunk := os.read(fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    put(line.decode("utf-8", "replace"))
        except OSError:
            pass
        if pending:
            put(pending.decode("utf-8", "replace"))
        put(None)

    threading.Thread(target=read, name="chat-client stdin", daemon=True).start()
    return queue


def _emit(out: TextIO, lines: Iterable[str]) -> None:
    """Print lines at once; a reader that went away (``| head``) is not an error."""
    with contextlib.suppress(BrokenPipeError):
        for line in lines:
            print(line, file=out, flush=True)


async def _print_events(conn: Connection, out: TextIO) -> None:
    async for event in conn:
        _emit(out, plain_lines(event))


async def run_plain(connector: Connect, stdin: BinaryIO, out: TextIO) -> int:
    """Line mode: each input line is sent (``/commands`` too), each event printed as a line.

    At end of input, wait until the server has handled every line, quit, print what is
    left and return 0. Returns 1 if the connection fails or is lost.
    """
    try:
        conn = await connector
    except (ConnectionLost, NickUnavailable, ServerError) as exc:
        return fail(f"cannot connect: {describe(exc)}")
    printer = asyncio.create_task(_print_events(conn, out))
    lines = _stdin_lines(stdin)
    room: str | None = conn.joined[-1] if conn.joined else None
    reason = ""
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, printer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                raise ConnectionLost(conn.describe_close())  # noqa: TRY301 - one exit path
            raw = getter.result()
            if raw is None:
                break
            text = sanitize(raw)
            try:
                command = parse_text_line(text, registered=True)
            except ProtocolError as exc:
                _emit(out, [f"!!! {exc.message}"])
                continue
            if command is None:
                continue
            if isinstance(command, QuitCommand):
                reason = command.reason
                break
            try:
                shown = await execute(conn, command, room)
            except (ServerError, NickUnavailable, TimeoutError, ProtocolError) as exc:
                _emit(out, [f"!!! {describe(exc)}"])
                continue
            if isinstance(command, JoinCommand | PartCommand):
                joined = {room_key(r): r for r in conn.joined}
                if isinstance(command, JoinCommand):
                    room = joined.get(room_key(command.room), room)
                elif room is None or room_key(room) not in joined:
                    room = conn.joined[-1] if conn.joined else None
            if shown is not None:
                _emit(out, plain_lines(shown))
        await conn.ping()  # its pong comes after the answers to every line we sent
        await conn.quit(reason)
    except ConnectionLost as exc:
        await conn.quit()
        await printer
        return fail(str(exc))
    except TimeoutError:
        await conn.quit()
        await printer
        return fail("the server did not answer in time")
    await printer
    return 0
