"""The IRC dialect on the shared port, over real sockets: registration (CAP, PASS, SASL),
the commands, IRCv3 (server-time, echo-message, labeled-response, batch, chathistory), and
the same room shared with text and JSON clients.

What an IRC client must receive is written here from RFC 2812, https://modern.ircdocs.horse
and https://ircv3.net, not from the server's renderer: :class:`IrcClient` parses each line
it receives on its own into tags, source, command and parameters.

Nothing sleeps to synchronise: every wait is for a line, bounded by ``WAIT``. To show that
something did *not* arrive, a ``PING`` marker is sent and everything received up to its
``PONG`` is checked.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from chat.server import ChatServer
from tests.harness import WAIT, JsonClient, LineClient, StartServer

SERVER = "chat.server"
PASSWORD = "correct-horse-battery"
_markers = itertools.count(1)


# --- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """One received IRC line: ``@tags :source COMMAND params``."""

    raw: str
    command: str
    params: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    @property
    def nick(self) -> str | None:
        """The nickname of the source (``nick!user@host``), or None for no source."""
        return self.source.split("!", 1)[0] if self.source else None


_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def parse(raw: str) -> Msg:
    """Parse one line as modern.ircdocs.horse describes it (the test's own reading)."""
    rest = raw
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        head, _, rest = rest[1:].partition(" ")
        for item in head.split(";"):
            key, _, value = item.partition("=")
            tags[key] = re.sub(r"\\(.?)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value)
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
    params: list[str] = []
    while rest:
        if rest.startswith(":"):
            params.append(rest[1:])
            break
        word, _, rest = rest.partition(" ")
        if word:
            params.append(word)
    assert params, f"no command in {raw!r}"
    return Msg(raw, params[0], tuple(params[1:]), tags, source)


class IrcClient:
    """An IRC client over a real socket; every read has a timeout and is recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[Msg] = []
        self.raw: list[bytes] = []
        self.nick = "*"

    @classmethod
    async def connect(cls, port: int) -> IrcClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, line: str) -> None:
        await self.send_raw(line.encode() + b"\r\n")

    async def line(self, timeout: float = WAIT) -> Msg:
        """The next line, parsed; raises EOFError at the end of the stream."""
        async with asyncio.timeout(timeout):
            data = await self.reader.readline()
        if not data:
            raise EOFError(f"connection closed; last lines: {[m.raw for m in self.seen[-5:]]}")
        self.raw.append(data)
        assert data.endswith(b"\r\n"), data
        msg = parse(data[:-2].decode())
        self.seen.append(msg)
        return msg

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (searched in the raw line)."""
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = regex.search((await self.line(timeout)).raw)
                    if found:
                        return found
        except TimeoutError:
            recent = [m.raw for m in self.seen[-8:]]
            raise AssertionError(f"no line matched {pattern!r}; last lines: {recent}") from None

    async def until(self, pattern: str, timeout: float = WAIT) -> list[Msg]:
        """Every line up to and including the first that matches ``pattern``."""
        start = len(self.seen)
        await self.expect(pattern, timeout)
        return self.seen[start:]

    async def get(self, command: str, *params: str, timeout: float = WAIT) -> Msg:
        """Read up to the first line of ``command`` whose parameters start with ``params``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.line(timeout)
                    if msg.command == command and msg.params[: len(params)] == params:
                        return msg
        except TimeoutError:
            recent = [m.raw for m in self.seen[-8:]]
            raise AssertionError(f"no {command} {params}; last lines: {recent}") from None

    async def sync(self) -> list[Msg]:
        """Everything received before the answer to a fresh ``PING`` marker (not included)."""
        token = f"marker{next(_markers)}"
        await self.send(f"PING {token}")
        lines = await self.until(rf"PONG \S+ :?{token}$")
        return lines[:-1]

    async def register(self, nick: str, caps: Iterable[str] = ()) -> list[Msg]:
        """CAP LS 302, CAP REQ, NICK, USER, CAP END; every line up to the MOTD's end."""
        wanted = " ".join(caps)
        await self.send("CAP LS 302")
        await self.get("CAP", "*", "LS")
        if wanted:
            await self.send(f"CAP REQ :{wanted}")
            ack = await self.get("CAP", "*")
            assert ack.params[1:] == ("ACK", wanted), ack
        await self.send(f"NICK {nick}")
        await self.send(f"USER {nick} 0 * :{nick} in a test")
        await self.send("CAP END")
        lines = await self.until(r"^(@\S+ )?:\S+ (376|422) ")
        self.nick = nick
        return lines

    async def join(self, room: str) -> list[Msg]:
        """JOIN ``room``; every line up to the end of its NAMES."""
        await self.send(f"JOIN {room}")
        return await self.until(rf" 366 \S+ {re.escape(room)} ")

    async def eof(self, timeout: float = WAIT) -> list[Msg]:
        """Every line until the server closes the connection."""
        start = len(self.seen)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.line(timeout)
                except (EOFError, ConnectionResetError):
                    return self.seen[start:]

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass


async def irc_user(
    port: int, nick: str, caps: Iterable[str] = (), rooms: Iterable[str] = ()
) -> IrcClient:
    """A registered IRC client in ``rooms``, past each room's NAMES."""
    client = await IrcClient.connect(port)
    await client.register(nick, caps)
    for room in rooms:
        await client.join(room)
    return client


def commands(lines: Iterable[Msg]) -> list[str]:
    return [m.command for m in lines]
