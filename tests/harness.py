"""The test harness: servers and raw clients, with a timeout on every wait.

Every test module starts servers and talks to them through this one module:

- ``start_server`` (fixture): a :class:`ChatServer` in this process, on a port the kernel
  picks, with config overrides (``Limits`` fields accepted too); closed at teardown.
  ``server`` is one with default settings. :func:`server_config` builds the same config for
  a test that runs its own event loop.
- ``spawn_server`` (fixture): ``chat-server`` as a subprocess (:class:`ServerProcess`), its
  port read from its "listening on" log line and its log collected; killed at teardown.
  :func:`server_process` does the same for synchronous tests and module-scoped fixtures.
- :class:`LineClient` and :class:`JsonClient`: what telnet, netcat or a bot would do over a
  real socket, one per dialect, every read bounded by ``WAIT`` seconds.
- ``dialect`` (fixture: :data:`TEXT`, then :data:`JSON`): one test for both dialects. A
  :class:`Dialect` opens :class:`User` connections, which send commands by name and expect
  events by kind and fields: exact lines in text (from protocol.md's table, not from the
  server's renderer), the JSON object's fields in JSON.
- :func:`make_certificate` and the ``certificate`` fixture: a self-signed certificate.
- :func:`eventually`: poll a condition with a deadline, where there is no event to wait for.

tests/conftest.py exposes the fixtures to every test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chat.protocol import DEFAULT_WIDTH, Event, nick_key, parse_event, unwrap, wrap_line
from chat.server import ChatServer, ServerConfig
from chat.session import Limits

__all__ = [
    "CHAT_SERVER",
    "GREETING",
    "JSON",
    "PROMPT",
    "TEXT",
    "WAIT",
    "Dialect",
    "JsonClient",
    "JsonUser",
    "LineClient",
    "ServerProcess",
    "SpawnServer",
    "StartServer",
    "SyncServerProcess",
    "TextUser",
    "User",
    "certificate",
    "dialect",
    "eventually",
    "make_certificate",
    "program",
    "server",
    "server_config",
    "server_process",
    "spawn_server",
    "start_server",
    "text_command",
    "text_lines",
]

WAIT = 5.0  # seconds any single expectation may take before the test fails
T = TypeVar("T")


# --- servers in this process ----------------------------------------------------------------

StartServer = Callable[..., Awaitable[ChatServer]]


def server_config(**overrides: Any) -> ServerConfig:
    """A loopback, kernel-chosen-port config with ``overrides``; ``Limits`` fields go to
    ``limits``, everything else to :class:`ServerConfig` (``port`` to reuse a port)."""
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    limits = Limits(**{k: overrides.pop(k) for k in list(overrides) if k in limit_names})
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, **overrides}
    return ServerConfig(limits=limits, **settings)


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers with config overrides (``limits`` fields too, and ``port`` to restart one
    on the port it had); every one is closed at teardown."""
    servers: list[ChatServer] = []

    async def start(**overrides: Any) -> ChatServer:
        server = ChatServer(server_config(**overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: StartServer) -> ChatServer:
    """A server with default settings, except no per-IP limit (every test client is 127.0.0.1)."""
    return await start_server(max_per_ip=0)


# --- chat-server as a process ---------------------------------------------------------------


def program(name: str, module: str) -> list[str]:
    """The installed console script next to this Python, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


CHAT_SERVER = program("chat-server", "chat")
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class ServerProcess:
    """A ``chat-server`` in its own session; stderr (its children's too) collected by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self.ports: list[int] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return self.ports[0]

    async def wait_listening(self, count: int = 1, timeout: float = 20.0) -> None:
        """Read stderr until ``count`` "listening on" lines (one per worker) have come."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while len(self.ports) < count:
                raw = await self.proc.stderr.readline()
                if not raw:
                    pytest.fail(f"chat-server exited before listening: {self.log}")
                self.log.append(raw.decode(errors="replace").rstrip())
                found = LISTENING.search(self.log[-1])
                if found:
                    self.ports.append(int(found.group(1)))
        self._drain = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.log.append(raw.decode(errors="replace").rstrip())

    async def wait(self, seconds: float) -> int:
        """The exit code, which must come within ``seconds``."""
        async with asyncio.timeout(seconds):
            code = await self.proc.wait()
            if self._drain is not None:
                await self._drain
        return code

    def kill_group(self) -> None:
        """SIGKILL this process and every child it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


SpawnServer = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test's ``chat-server`` and ``chat-client`` processes keep their state (the
    default database, the input history) in a directory of the test's own: never in the
    user's ``~/.local/state``, and never shared with another test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture
async def spawn_server() -> AsyncIterator[SpawnServer]:
    """Start ``chat-server --host 127.0.0.1 --port 0 *args``; ``listeners`` is how many
    "listening on" lines to wait for (one per worker), ``options`` go to
    ``asyncio.create_subprocess_exec`` (e.g. ``preexec_fn``). Every one is killed at teardown."""
    started: list[ServerProcess] = []

    async def spawn(*args: str, listeners: int = 1, **options: Any) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            *CHAT_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **options,
        )
        server = ServerProcess(proc)
        started.append(server)
        await server.wait_listening(listeners)
        return server

    yield spawn
    for server in started:
        server.kill_group()
        if server.proc.returncode is None:
            await server.proc.wait()
        if server._drain is not None:
            server._drain.cancel()


class SyncServerProcess:
    """A ``chat-server`` for code without an event loop; a thread collects its log."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.log: list[str] = []
        self.port = 0
        self._listening = threading.Event()
        # Read the log to its end, so that a full pipe never blocks the server.
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            found = LISTENING.search(line)
            if found and not self.port:
                self.port = int(found.group(1))
                self._listening.set()
        self._listening.set()  # the end of the log: exited before listening

    def wait_listening(self, timeout: float) -> None:
        if not self._listening.wait(timeout) or not self.port:
            pytest.fail(f"chat-server did not say where it listens: {self.log}")

    def stop(self) -> None:
        """Terminate it (kill it if it will not stop), then read the rest of its log."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=WAIT)  # EOF now that the server has exited
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@contextlib.contextmanager
def server_process(*args: str, timeout: float = 20.0) -> Iterator[SyncServerProcess]:
    """``chat-server --host 127.0.0.1 --port 0 *args`` for synchronous tests and
    module-scoped fixtures; its port is read from its log; stopped on exit. Without a
    ``--db`` it keeps nothing (``--db :memory:``): a module-scoped server starts before any
    test's private state directory exists."""
    keep = [] if any(arg.startswith("--db") for arg in args) else ["--db", ":memory:"]
    proc = subprocess.Popen(
        [*CHAT_SERVER, "--host", "127.0.0.1", "--port", "0", *keep, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = SyncServerProcess(proc)
    try:
        server.wait_listening(timeout)
        yield server
    finally:
        server.stop()


# --- raw clients --------------------------------------------------------------------------


class StreamClient:
    """A client on a real socket: what every dialect's test client shares."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass


class LineClient(StreamClient):
    """A text-dialect client over a real socket; every read has a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.seen: list[str] = []

    @classmethod
    async def connect(
        cls, port: int, nick: str | None = None, *, host: str = "127.0.0.1", **options: Any
    ) -> LineClient:
        """Connect (``options`` go to ``asyncio.open_connection``, e.g. ``ssl``); with
        ``nick``, register and read up to the lobby's member list."""
        reader, writer = await asyncio.open_connection(host, port, **options)
        client = cls(reader, writer)
        if nick is not None:
            await client.register(nick)
        return client

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, line: str) -> None:
        await self.send_raw(line.encode() + b"\r\n")

    async def line(self, timeout: float = WAIT) -> str:
        """The next line, without its line ending; raises EOFError at end of stream."""
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            raise EOFError("connection closed")
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        self.seen.append(text)
        return text

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (a regex searched in the line)."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                found = regex.search(await self.line(timeout))
                if found:
                    return found

    async def lines_until(self, pattern: str, timeout: float = WAIT) -> list[str]:
        """All lines up to and including the first that matches ``pattern``."""
        start = len(self.seen)
        await self.expect(pattern, timeout)
        return self.seen[start:]

    async def next_is(self, *lines: str) -> None:
        """The next lines the client receives are exactly ``lines`` (each as the server
        wraps it on an 80-column screen: protocol.md, "Wrapping")."""
        for expected in screen_rows(lines):
            assert await self.line() == expected

    async def until(self, line: str) -> list[str]:
        """Rows up to and including ``line`` (matched exactly, as wrapped)."""
        first, *rest = wrap_line(line, DEFAULT_WIDTH)
        seen = await self.lines_until("^" + re.escape(first) + "$")
        await self.next_is(*(row for row in rest))
        return seen + rest

    async def eof(self, timeout: float = WAIT) -> list[str]:
        """Read until the server closes the connection; return the lines read."""
        start = len(self.seen)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.line(timeout)
                except EOFError:
                    return self.seen[start:]
                except ConnectionResetError:
                    return self.seen[start:]

    async def register(self, nick: str) -> None:
        # Typed at once, as nc users do: the greeting comes as the line arrives, without
        # the wait (--greet-delay) for a silent peer.
        await self.send(nick)
        await self.expect(r"Choose a nickname")
        await self.expect(rf"Welcome, {re.escape(nick)}!")
        await self.expect(r"\*\*\* \d+ in #lobby:")


class JsonClient(StreamClient):
    """A JSON-Lines-dialect client over a real socket; every read has a timeout.

    Every JSON line received is kept three ways: as bytes (``raw_lines``), as the decoded
    object (``objects``) and as the event (``events``).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.events: list[Event] = []
        self.raw_lines: list[bytes] = []
        self.objects: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls, port: int, nick: str | None = None, *, host: str = "127.0.0.1", **options: Any
    ) -> JsonClient:
        """Connect and say hello (``options`` go to ``asyncio.open_connection``); with
        ``nick``, register and read up to the lobby's member list."""
        reader, writer = await asyncio.open_connection(host, port, **options)
        client = cls(reader, writer)
        await client.send({"type": "hello"})
        await client.expect("hello")
        if nick is not None:
            await client.send({"type": "nick", "nick": nick})
            await client.expect("welcome")
            await client.expect("who", room="#lobby")
        return client

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def event(self, timeout: float = WAIT) -> Event:
        """The next JSON event; text-dialect lines sent before the handshake are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise EOFError("connection closed")
                if raw.startswith(b"{"):
                    self.raw_lines.append(raw)
                    self.objects.append(json.loads(raw))
                    event = parse_event(raw)
                    self.events.append(event)
                    return event

    async def expect(self, type_: str, timeout: float = WAIT, **fields: Any) -> Event:
        """Read events until one of ``type_`` whose attributes equal ``fields``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event(timeout)
                if event.type == type_ and all(
                    getattr(event, k, None) == v for k, v in fields.items()
                ):
                    return event

    async def call(self, obj: dict[str, Any], type_: str, **fields: Any) -> Event:
        """Send a command and wait for the event of ``type_`` (with ``fields``) it causes."""
        await self.send(obj)
        return await self.expect(type_, **fields)

    async def next_is(self, type_: str, **fields: Any) -> Event:
        """The very next event must be of ``type_`` with ``fields``."""
        event = await self.event()
        assert event.type == type_, event
        for key, value in fields.items():
            assert getattr(event, key) == value, (key, event)
        return event

    async def until(self, type_: str, **fields: Any) -> list[Event]:
        """Every event up to and including the first of ``type_`` with ``fields``."""
        start = len(self.events)
        await self.expect(type_, **fields)
        return self.events[start:]

    async def objects_until(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Every JSON object up to and including the first for which ``wanted`` is true."""
        start = len(self.objects)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.event(timeout)
                except EOFError:
                    raise EOFError(f"closed; saw {self.objects[start:][-3:]}") from None
                if wanted(self.objects[-1]):
                    return self.objects[start:]

    async def eof(self, timeout: float = WAIT) -> list[Event]:
        """Read events until the server closes the connection."""
        start = len(self.events)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.event(timeout)
                except (EOFError, ConnectionResetError):
                    return self.events[start:]


# --- one test, both dialects ---------------------------------------------------------------

GREETING = [
    "*** Welcome to chat! Programs: send a JSON hello (see protocol.md).",
    "*** Choose a nickname (letters, digits, _ or -, starting with a letter):",
]
PROMPT = GREETING[1]
HISTORY_MARK = r"\(history \d{4}-\d\d-\d\d \d\d:\d\d UTC\) "
Expected = str | re.Pattern[str]


def text_command(name: str, **args: Any) -> str:
    """A command as a person types it: ``/name`` then the values in the order given; ``say``
    without a room is a plain line, and an empty topic is ``-delete``."""
    if name == "say" and "room" not in args:
        return str(args["text"])
    if name == "topic" and args.get("text") == "":
        args = {**args, "text": "-delete"}
    return " ".join([f"/{name}", *(str(value) for value in args.values())])


def screen_rows(lines: Iterable[Expected]) -> list[Expected]:
    """Expected lines as an 80-column client receives them: the server wraps long lines
    (protocol.md, "Wrapping"; the wrapping itself is tested in test_protocol.py)."""
    return [
        row
        for line in lines
        for row in (wrap_line(line, DEFAULT_WIDTH) if isinstance(line, str) else [line])
    ]


def text_lines(kind: str, **fields: Any) -> list[Expected]:
    """The lines the text dialect shows for an event of ``kind`` with ``fields``, written out
    from protocol.md ("The text dialect"), not by the server's renderer. A history mark's
    time is matched as a pattern. ``code``, ``command`` and ``re`` are not shown in text,
    nor is ``target`` on the recipient's copy of a private message; any other field the text
    does not show must be None, so no other expectation is dropped silently."""
    f = {k: v for k, v in fields.items() if k not in ("code", "command", "re")}
    room = f.pop("room", None)
    where = f"[{room}] " if room else ""
    lines: list[Expected]
    match kind:
        case "message" | "action":
            nick, text = f.pop("nick"), f.pop("text")
            said = f"<{nick}> {text}" if kind == "message" else f"* {nick} {text}"
            if f.pop("history", False):
                lines = [re.compile(re.escape(where) + HISTORY_MARK + re.escape(said))]
            else:
                lines = [where + said]
        case "private":
            nick, text, target = f.pop("nick"), f.pop("text"), f.pop("target", None)
            if f.pop("echo"):
                lines = [f"[private to {target}] <{nick}> {text}"]
            else:
                lines = [f"[private] <{nick}> {text}"]
        case "join":
            lines = [f"{where}*** {f.pop('nick')} joined {room}"]
        case "part":
            reason = f.pop("text")
            why = f" ({reason})" if reason else ""
            lines = [f"{where}*** {f.pop('nick')} left {room}{why}"]
        case "quit":
            reason = f.pop("text")
            why = f" ({reason})" if reason else ""
            lines = [f"*** {f.pop('nick')} quit{why}"]
        case "nick":
            lines = [f"*** {f.pop('nick')} is now known as {f.pop('new_nick')}"]
        case "topic":
            nick, text = f.pop("nick"), f.pop("text")
            if nick:
                lines = [f"{where}*** {nick} set the topic: {text}"]
            elif text:
                lines = [f"{where}*** Topic: {text}"]
            else:
                lines = [f"{where}*** No topic is set"]
        case "who":
            members = f.pop("members")
            ops = {nick_key(n) for n in f.pop("operators", ())}
            voiced = {nick_key(n) for n in f.pop("voiced", ())}
            shown = [
                ("@" if nick_key(n) in ops else "+" if nick_key(n) in voiced else "") + n
                for n in members
            ]
            names = ": " + ", ".join(shown) if shown else ""
            lines = [f"{where}*** {len(members)} in {room}{names}"]
        case "rooms":  # one page: rooms[offset:] of total
            rooms, offset = f.pop("rooms"), f.pop("offset", 0)
            total = f.pop("total", offset + len(rooms))
            count = f"{total} room{'s' if total != 1 else ''}"
            if offset == 0 and len(rooms) == total:
                lines = [f"*** {count}:"]
            else:
                lines = [f"*** {count}, largest first; {offset + 1}-{offset + len(rooms)} here:"]
            for info in rooms:
                people = "member" if info["members"] == 1 else "members"
                topic = f": {info['topic']}" if info["topic"] else ""
                lines.append(f"***   {info['room']} ({info['members']} {people}){topic}")
            if offset + len(rooms) < total:
                more = offset + len(rooms)
                lines.append(f"*** {total - more} more: /rooms +{more} [text]")
        case "notice":
            lines = [f"{where}*** {line}" for line in f.pop("text").split("\n")]
        case "welcome":
            text = f.pop("text")
            assert text.startswith(f"Welcome, {f.pop('nick')}!"), text  # the nick is in the text
            lines = [f"*** {text}"]
        case "error":
            lines = [f"!!! {f.pop('text')}"]
        case "pong":
            lines = [f"*** pong {f.pop('text')}".rstrip()]
        case "bye":
            lines = [f"*** Closing connection: {f.pop('text')}"]
        case _:
            raise ValueError(f"no text form for {kind!r} events")
    unseen = {k: v for k, v in f.items() if v is not None}
    assert not unseen, f"the text dialect does not show {unseen} of a {kind} event"
    assert kind not in ("private", "quit", "nick", "rooms", "error", "bye") or room is None
    return lines


def _is_event(obj: dict[str, Any], kind: str, fields: dict[str, Any]) -> bool:
    """Whether JSON object ``obj`` is of ``kind`` and has every one of ``fields``, equal."""
    return obj["type"] == kind and all(k in obj and obj[k] == v for k, v in fields.items())


def _matches(line: str, expected: Expected) -> bool:
    if isinstance(expected, str):
        return line == expected
    return expected.fullmatch(line) is not None


class User:
    """One connection in one dialect, for a test written once for both: commands go by name
    (:meth:`send`), expectations are events (``kind`` and fields) that :class:`TextUser`
    turns into exact lines and :class:`JsonUser` compares with the JSON object received."""

    dialect: Dialect

    async def send(self, name: str, **args: Any) -> None:
        """Send command ``name`` with ``args`` in this user's dialect."""
        raise NotImplementedError

    async def send_as(self, *, text: str | None, json: dict[str, Any] | None) -> None:
        """Send what only one dialect can say, or says its own way: ``text`` as a typed line,
        ``json`` as a JSON command; None sends nothing in that dialect."""
        raise NotImplementedError

    async def offer_nick(self, nick: str) -> None:
        """Before registration: ask for ``nick`` (text: the bare name; JSON: a nick command)."""
        raise NotImplementedError

    async def next_is(self, kind: str, **fields: Any) -> None:
        """The very next event is of ``kind`` with ``fields``."""
        raise NotImplementedError

    async def until(self, kind: str, **fields: Any) -> list[Any]:
        """What arrived up to and including the first event of ``kind`` with ``fields``
        (lines or JSON objects: compare their number, not their form)."""
        raise NotImplementedError

    async def prompted(self) -> None:
        """After a refusal before registration: the text dialect asks for a nickname again;
        the JSON dialect says nothing more."""

    async def notice(self, last: str) -> str:
        """The text of the next notice, whose last line is ``last``."""
        raise NotImplementedError

    async def eof(self) -> list[Any]:
        """What arrived until the server closed the connection."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class TextUser(User):
    def __init__(self, client: LineClient) -> None:
        self.client = client
        self.dialect = TEXT

    async def send(self, name: str, **args: Any) -> None:
        await self.client.send(text_command(name, **args))

    async def send_as(self, *, text: str | None, json: dict[str, Any] | None) -> None:
        if text is not None:
            await self.client.send(text)

    async def offer_nick(self, nick: str) -> None:
        await self.client.send(nick)

    async def next_is(self, kind: str, **fields: Any) -> None:
        for expected in screen_rows(text_lines(kind, **fields)):
            line = await self.client.line()
            assert _matches(line, expected), (line, expected)

    async def until(self, kind: str, **fields: Any) -> list[Any]:
        first, *rest = screen_rows(text_lines(kind, **fields))
        start = len(self.client.seen)
        async with asyncio.timeout(WAIT):
            while not _matches(await self.client.line(), first):
                pass
        for expected in rest:
            line = await self.client.line()
            assert _matches(line, expected), (line, expected)
        return self.client.seen[start:]

    async def prompted(self) -> None:
        await self.client.next_is(PROMPT)

    async def notice(self, last: str) -> str:
        lines = unwrap(await self.client.until(f"*** {last}"))
        for line in lines:
            assert line.startswith("*** "), line
        return "\n".join(line.removeprefix("*** ") for line in lines)

    async def eof(self) -> list[Any]:
        return await self.client.eof()

    async def close(self) -> None:
        await self.client.close()


class JsonUser(User):
    def __init__(self, client: JsonClient) -> None:
        self.client = client
        self.dialect = JSON

    async def send(self, name: str, **args: Any) -> None:
        await self.client.send({"type": name, **args})

    async def send_as(self, *, text: str | None, json: dict[str, Any] | None) -> None:
        if json is not None:
            await self.client.send(json)

    async def offer_nick(self, nick: str) -> None:
        await self.client.send({"type": "nick", "nick": nick})

    async def next_is(self, kind: str, **fields: Any) -> None:
        await self.client.event()
        obj = self.client.objects[-1]
        assert _is_event(obj, kind, fields), (obj, fields)

    async def until(self, kind: str, **fields: Any) -> list[Any]:
        start = len(self.client.objects)
        async with asyncio.timeout(WAIT):
            while True:
                await self.client.event()
                if _is_event(self.client.objects[-1], kind, fields):
                    return self.client.objects[start:]

    async def notice(self, last: str) -> str:
        await self.next_is("notice")
        text: str = self.client.objects[-1]["text"]
        assert text.endswith("\n" + last), text
        return text

    async def eof(self) -> list[Any]:
        return await self.client.eof()

    async def close(self) -> None:
        await self.client.close()


class Dialect:
    """How a dialect connects; ``TEXT`` and ``JSON`` are the two."""

    name: str

    async def connect(self, port: int, nick: str | None = None) -> User:
        """A connection that has not registered yet, past the greeting (text) or the hello
        (JSON, naming ``nick`` if given)."""
        raise NotImplementedError

    async def user(self, port: int, nick: str) -> User:
        """A connection registered as ``nick``, past the lobby's member list."""
        raise NotImplementedError

    def pick(self, *, text: T, json: T) -> T:
        """What this dialect says its own way: ``text`` or ``json``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TextDialect(Dialect):
    name = "text"

    async def connect(self, port: int, nick: str | None = None) -> User:
        assert nick is None, "the text dialect has no hello to name a nickname in"
        client = await LineClient.connect(port)
        await client.next_is(*GREETING)
        return TextUser(client)

    async def user(self, port: int, nick: str) -> User:
        return TextUser(await LineClient.connect(port, nick))

    def pick(self, *, text: T, json: T) -> T:
        return text


class JsonDialect(Dialect):
    name = "json"

    async def connect(self, port: int, nick: str | None = None) -> User:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = JsonClient(reader, writer)
        await client.send({"type": "hello"} if nick is None else {"type": "hello", "nick": nick})
        await client.next_is("hello")
        return JsonUser(client)

    async def user(self, port: int, nick: str) -> User:
        return JsonUser(await JsonClient.connect(port, nick))

    def pick(self, *, text: T, json: T) -> T:
        return json


TEXT = TextDialect()
JSON = JsonDialect()


@pytest.fixture(params=[TEXT, JSON], ids=["text", "json"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    """Each dialect in turn, for a test written once for both."""
    result: Dialect = request.param
    return result


# --- waiting without an event ---------------------------------------------------------------


async def eventually(
    condition: Callable[[], bool],
    what: str | Callable[[], str] = "a condition",
    within: float = WAIT,
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if condition():
            return
        if loop.time() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {within}s waiting for {said}")
        await asyncio.sleep(interval)


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key for localhost and 127.0.0.1 (made once)."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: cryptography, else openssl."""
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509  # noqa: PLC0415 - optional: openssl is the fallback
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
                *("-nodes", "-days", "1", "-subj", "/CN=chat test"),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                *("-keyout", str(key_file), "-out", str(cert_file)),
            ],
            check=True,
            capture_output=True,
        )
        return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
