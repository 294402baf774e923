"""Hardening (issue 4): whatever one connection does, everybody else keeps chatting.

Every test talks to a real server over real loopback sockets. Nothing sleeps to synchronise:
a test waits for an event with a timeout, or polls a condition until a deadline.

Where a test needs to see exactly what a misbehaving peer receives even though the server
resets the connection (it closes with unread input, which makes the kernel send RST), it uses
:class:`RawClient`, which reads the socket directly: the bytes that arrived before the reset
are still returned, where ``asyncio.StreamReader`` would raise instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import re
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.protocol import Event, FrameError, LineFramer, parse_event, unwrap
from chat.server import ChatServer
from tests.harness import WAIT, JsonClient, LineClient, StartServer, eventually, server_config

# --- small tools ----------------------------------------------------------------------------


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def tcp_states(port: int) -> list[str]:
    """Kernel states (hex codes of /proc/net/tcp) of every TCP socket touching ``port``."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == port or (
                    int(remote.rsplit(":", 1)[1], 16) == port
                ):
                    states.append(state)
    return states


ESTABLISHED, CLOSE_WAIT = "01", "08"  # states in /proc/net/tcp


def lines_of(data: bytes) -> list[bytes]:
    """The complete, non-empty text-dialect lines in ``data``, each rejoined from the rows
    the server wrapped it into (protocol.md, "Wrapping")."""
    lines: list[bytes] = []
    for row in data.split(b"\r\n")[:-1]:
        if row.startswith(b"  ") and lines:
            lines[-1] += row[2:]
        elif row:
            lines.append(row)
    return lines


def json_events(data: bytes) -> list[Event]:
    """The complete JSON-dialect events in ``data`` (text lines before ``hello`` skipped)."""
    return [parse_event(line) for line in data.split(b"\n")[:-1] if line.startswith(b"{")]


def say_line(text: str, room: str | None = None) -> bytes:
    obj: dict[str, Any] = {"type": "say", "text": text}
    if room is not None:
        obj["room"] = room
    return json.dumps(obj).encode() + b"\n"


class RawClient:
    """A bare non-blocking socket: sends bytes, reads bytes, and can vanish in any way."""

    open_clients: ClassVar[set[RawClient]] = set()  # closed at teardown if a test fails

    def __init__(self, sock: socket.socket) -> None:
        self.open_clients.add(self)
        self.sock = sock
        self.local_port: int = sock.getsockname()[1]
        self.data = bytearray()
        self.pos = 0  # read_until searches from here
        self.eof = False
        self.reset = False

    @classmethod
    async def connect(
        cls, port: int, *, rcvbuf: int | None = None, source: str | None = None
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf is not None:  # before connect, so the window is small from the start
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                sock.bind((source, 0))
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> bool:
        """Send everything; False if the server has closed or reset the connection."""
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError:
            return False
        return True

    async def _recv(self) -> None:
        try:
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except OSError:
            self.reset = True
            self.eof = True
            return
        if not chunk:
            self.eof = True
        self.data += chunk

    async def read_until(self, pattern: bytes, within: float = WAIT) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) matches bytes not matched before."""
        regex = re.compile(pattern)
        async with asyncio.timeout(within):
            while True:
                found = regex.search(self.data, self.pos)
                if found:
                    self.pos = found.end()
                    return found
                if self.eof:
                    raise EOFError(f"closed before {pattern!r}; got {bytes(self.data)!r}")
                await self._recv()

    async def read_to_eof(self, within: float = WAIT) -> bytes:
        """Everything until the server closes (FIN or RST)."""
        async with asyncio.timeout(within):
            while not self.eof:
                await self._recv()
        return bytes(self.data)

    async def register(self, nick: str) -> None:
        await self.send(nick.encode() + b"\r\n")
        await self.read_until(rb"\*\*\* \d+ in #lobby:[^\r]*\r\n")

    def rst(self) -> None:
        """Vanish with a reset: SO_LINGER 0, then close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def half_close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
        self.open_clients.discard(self)


class Listener:
    """A registered JSON client whose events are read continuously by a background task."""

    def __init__(self, client: JsonClient, nick: str) -> None:
        self.client = client
        self.nick = nick
        self.events: list[Event] = []
        self.closed = False
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, nick: str) -> Listener:
        return cls(await JsonClient.connect(port, nick=nick), nick)

    async def _read(self) -> None:
        try:
            while raw := await self.client.reader.readline():
                if raw.startswith(b"{"):
                    event = parse_event(raw)
                    self.events.append(event)
                    if event.type == "ping":  # a well-behaved program answers pings
                        await self.client.send({"type": "pong", "token": event.text})
        except OSError:
            pass
        finally:
            self.closed = True

    async def send(self, obj: dict[str, Any]) -> None:
        await self.client.send(obj)

    async def say(self, text: str, room: str = "#lobby") -> None:
        await self.client.send({"type": "say", "room": room, "text": text})

    def of(self, type_: str, **fields: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e.type == type_ and all(getattr(e, k, None) == v for k, v in fields.items())
        ]

    def texts(self, type_: str, **fields: Any) -> list[str]:
        return [e.text for e in self.of(type_, **fields)]

    async def wait(self, type_: str, within: float = WAIT, **fields: Any) -> Event:
        await eventually(
            lambda: bool(self.of(type_, **fields)), f"{self.nick}: {type_} {fields}", within
        )
        return self.of(type_, **fields)[0]

    async def who(self, room: str) -> list[str]:
        """The member list of ``room`` as the server says it now (who, then a ping fence)."""
        token = f"who-fence-{next(_tokens)}"
        start = len(self.events)
        await self.send({"type": "who", "room": room})
        await self.send({"type": "ping", "token": token})
        await self.wait("pong", text=token)
        index = next(i for i, e in enumerate(self.events) if e.type == "pong" and e.text == token)
        (answer,) = [e for e in self.events[start:index] if e.type == "who" and e.room == room]
        return list(getattr(answer, "members", ()))

    async def close(self) -> None:
        await self.client.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture(autouse=True)
def _no_client_outlives_its_test() -> Iterator[None]:
    """A failing test must not leave its raw sockets open for the next one."""
    yield
    for raw in list(RawClient.open_clients):
        raw.close()


_tokens = itertools.count()


async def text_who(client: LineClient, room: str) -> set[str]:
    """Ask a text client's server for ``room``'s members."""
    await client.send(f"/who {room}")
    await client.send("/ping who-end")
    rows = await client.lines_until(r"^\*\*\* pong who-end$")
    pattern = re.compile(rf"\*\*\* \d+ in {re.escape(room)}: ?(.*)$")
    found = next(m for line in unwrap(rows) if (m := pattern.search(line)))
    return {n for n in found.group(1).split(", ") if n}


async def text_who_eventually(
    client: LineClient, room: str, expected: set[str], within: float = WAIT
) -> None:
    """Poll ``/who room`` until it lists exactly ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        members = await text_who(client, room)
        if members == expected:
            return
        if loop.time() > deadline:
            raise AssertionError(f"/who {room} lists {sorted(members)}, not {sorted(expected)}")
        await asyncio.sleep(0.05)


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- 1. long lines ------------------------------------------------------------------------


async def test_overlong_line_is_refused_discarded_and_the_connection_stays(
    start_server: StartServer,
) -> None:
    server = await start_server(max_line=100, max_per_ip=0)
    observer = await LineClient.connect(server.port)
    await observer.send("/width 1000")  # the 100-byte lines below, unwrapped
    await observer.register("observer")
    talker = await JsonClient.connect(server.port, nick="talker")
    texter = await LineClient.connect(server.port)
    await texter.register("texter")

    # JSON dialect: the error carries its code. The overlong line's tail looks like a command;
    # it must be thrown away with the rest of the line, not parsed as a line of its own.
    tail = json.dumps({"type": "say", "text": "TAIL-FROM-OVERLONG"}).encode()
    talker.writer.write(b"x" * 150 + tail + b"\n")
    await talker.writer.drain()
    error = await talker.expect("error")
    assert getattr(error, "code", None) == "line_too_long"
    await talker.send({"type": "say", "text": "json after overlong"})
    await observer.expect(r"^\[#lobby\] <talker> json after overlong$")

    # Text dialect, sent in several writes: the discarding spans reads.
    for part in (b"y" * 60, b"y" * 60, b"y" * 60 + b" TEXT-TAIL-FROM-OVERLONG\r\n"):
        await texter.send_raw(part)
    await texter.expect(r"^!!! Line too long \(more than 100 bytes\); it was discarded\.$")
    # The limit is inclusive: exactly max_line bytes is a line, one more is not.
    exact = "e" * 100
    await texter.send(exact)
    await observer.expect(rf"^\[#lobby\] <texter> {exact}$")
    await texter.send("f" * 101)
    await texter.expect(r"^!!! Line too long")
    await texter.send("text after overlong")
    await observer.expect(r"^\[#lobby\] <texter> text after overlong$")

    assert not [line for line in observer.seen if "TAIL" in line or "fff" in line]
    assert server.session_count == 3


async def test_megabyte_without_newline_ends_with_bye_while_others_chat(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(max_per_ip=0, rate=0)  # max_line 2048: 64 KiB of garbage
    alice = await Listener.connect(server.port, "alice")
    bob = await Listener.connect(server.port, "bob")
    garbage = random.Random(4).randbytes(1 << 20).replace(b"\n", b".")
    assert garbage[:2] != b"\x16\x03"

    json_peer = await RawClient.connect(server.port)
    await json_peer.send(b'{"type":"hello"}\n')
    await json_peer.read_until(rb'"type":"hello"')
    text_peer = await RawClient.connect(server.port)

    async def chat() -> None:
        for i in range(20):
            await alice.say(f"during garbage {i}")
            await bob.wait("message", nick="alice", text=f"during garbage {i}")

    async def spew(peer: RawClient) -> bytes:
        sender = asyncio.create_task(peer.send(garbage))
        try:
            return await peer.read_to_eof()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    started = time.monotonic()
    json_got, text_got, _ = await asyncio.gather(spew(json_peer), spew(text_peer), chat())
    assert time.monotonic() - started < WAIT

    await eventually(lambda: server.session_count == 2, "the garbage sessions to end")
    await alice.say("after garbage")
    await bob.wait("message", nick="alice", text="after garbage")
    json_peer.close()
    text_peer.close()
    await alice.close()
    await bob.close()
    # The offenders are told why, and each disconnect is logged with its reason.
    assert lines_of(text_got)[-1].startswith(b"*** Closing connection: No end of line")
    bye = json_events(json_got)[-1]
    assert (bye.type, getattr(bye, "code", None)) == ("bye", "no_newline")
    for peer in (json_peer, text_peer):
        logged = [
            r.getMessage()
            for r in caplog.records
            if re.match(
                rf"disconnect conn=\d+ peer=127\.0\.0\.1:{peer.local_port} ", r.getMessage()
            )
        ]
        assert len(logged) == 1
        assert "No end of line" in logged[0]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("payload", "looks_like"),
    [
        pytest.param(tls_client_hello(), "a TLS handshake", id="tls-client-hello"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", "an SSH client", id="ssh"),
    ],
)
async def test_foreign_protocol_gets_a_clear_bye_and_disconnect(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, payload: bytes, looks_like: str
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_per_ip=0)
    peer = await RawClient.connect(server.port)
    await peer.send(payload)
    got = await peer.read_to_eof()
    last = lines_of(got)[-1].decode()
    assert last.startswith("*** Closing connection: This is a chat server")
    assert looks_like in last
    await eventually(lambda: server.session_count == 0, "the foreign session to end")
    assert [r for r in caplog.records if r.getMessage().startswith("refused conn=")]
    peer.close()


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    lines=st.lists(
        # No NUL: telnet's CR NUL ends a line, as CR LF does.
        st.binary(max_size=40).map(
            lambda b: b.replace(b"\n", b"").replace(b"\xff", b"").replace(b"\x00", b"")
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_framer_never_holds_more_than_one_line(lines: list[bytes], cuts: list[int]) -> None:
    """Reader side of item 1: however the stream is cut, lines come out whole, bounded."""
    max_line = 16
    stream = b"".join(line + b"\n" for line in lines)
    framer = LineFramer(max_line, 10_000)
    out: list[bytes | FrameError] = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        out += framer.feed(stream[start:end])
        assert len(framer._partial) <= max_line + 1
    expected: list[bytes | FrameError] = []
    for line in lines:
        bare = line[:-1] if line.endswith(b"\r") else line
        expected.append(FrameError.OVERLONG if len(bare) > max_line else bare)
    assert out == expected


# --- 2. encoding and escapes --------------------------------------------------------------

# ESC sequences (clear screen, retitle terminal), C1 CSI, NUL, DEL, a bare CR, a bidi override
# and a bidi isolate; the tab stays.
HOSTILE = "A\x1b[2J\x1b]0;pwned\x07B\u009bC\x00D\x7fE\rF\u202eG\u2066H\tI"
CLEANED = "A[2J]0;pwnedBCDEFGH\tI"
# On a screen a tab could push words to where a line starts: the text dialect shows any run of
# whitespace in a peer's text as one space (issue 10.7).
ON_SCREEN = CLEANED.replace("\t", " ")
UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)


def assert_terminal_safe(data: bytes) -> None:
    """What a text-dialect client received cannot drive its terminal or forge a line."""
    for byte in set(data):
        assert byte >= 0x20 or byte in b"\t\r\n", f"control byte {byte:#x} in {data!r}"
    assert b"\x7f" not in data
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"), "bare CR or LF"
    text = data.decode("utf-8")  # strict: what the server sends is valid UTF-8
    for line in text.split("\r\n"):
        assert UNSAFE_CHARS.search(line) is None, f"unsafe character in {line!r}"


def hostile_commands(dialect: str, marker: str) -> list[bytes]:
    """The same hostile text in every user-controlled field, marked m1..m6 by field."""
    if dialect == "text":
        return [
            f"/join #side\r\n{marker}1 {HOSTILE}\r\n".encode(),
            f"/me {marker}2 {HOSTILE}\r\n".encode(),
            f"/topic {marker}3 {HOSTILE}\r\n".encode(),
            f"/msg observer {marker}4 {HOSTILE}\r\n".encode(),
            f"/part #side {marker}5 {HOSTILE}\r\n".encode(),
            f"/quit {marker}6 {HOSTILE}\r\n".encode(),
        ]
    objects: list[dict[str, Any]] = [
        {"type": "join", "room": "#side"},
        {"type": "say", "room": "#side", "text": f"{marker}1 {HOSTILE}"},
        {"type": "me", "room": "#side", "text": f"{marker}2 {HOSTILE}"},
        {"type": "topic", "room": "#side", "text": f"{marker}3 {HOSTILE}"},
        {"type": "msg", "nick": "observer", "text": f"{marker}4 {HOSTILE}"},
        {"type": "part", "room": "#side", "reason": f"{marker}5 {HOSTILE}"},
        {"type": "say", "room": "#lobby", "text": f"{marker}0 one line\r\n<observer> forged"},
        {"type": "quit", "reason": f"{marker}6 {HOSTILE}"},
    ]
    return [json.dumps(obj).encode() + b"\n" for obj in objects]


@pytest.mark.parametrize("dialect", ["text", "json"])
async def test_control_characters_never_reach_other_clients(
    start_server: StartServer, dialect: str
) -> None:
    server = await start_server(max_per_ip=0, rate=0)
    observer = await RawClient.connect(server.port)  # text dialect, every byte kept
    await observer.register("observer")
    await observer.send(b"/join #side\r\n")
    await observer.read_until(rb"\d+ in #side:")
    watcher = await Listener.connect(server.port, "watcher")  # JSON dialect
    await watcher.send({"type": "join", "room": "#side"})
    await watcher.wait("who", room="#side")

    attacker = await RawClient.connect(server.port)
    if dialect == "json":
        await attacker.send(b'{"type":"hello","nick":"mallory"}\n')
    else:
        await attacker.send(b"mallory\r\n")
    await attacker.read_until(rb'"type":"who"' if dialect == "json" else rb"in #lobby")
    for command in hostile_commands(dialect, "m"):
        await attacker.send(command)
    await observer.read_until(rb"\*\*\* mallory quit[^\r]*\r\n")
    await watcher.wait("quit", nick="mallory")

    # A late joiner gets the stored topic and the history: sanitised as well.
    late = await RawClient.connect(server.port)
    await late.register("late")
    await late.send(b"/join #side\r\n/ping done\r\n")
    await late.read_until(rb"\*\*\* pong done\r\n")

    lines = lines_of(observer.data)
    expected = [
        f"[#side] <mallory> m1 {ON_SCREEN}",
        f"[#side] * mallory m2 {ON_SCREEN}",
        f"[#side] *** mallory set the topic: m3 {ON_SCREEN}",
        f"[private] <mallory> m4 {ON_SCREEN}",
        f"[#side] *** mallory left #side (m5 {ON_SCREEN})",
        f"*** mallory quit (m6 {ON_SCREEN})",
    ]
    for line in expected:
        assert line.encode() in lines, f"{line!r} not among {lines!r}"
    if dialect == "json":
        assert b"[#lobby] <mallory> m0 one line<observer> forged" in lines
        assert not [line for line in lines if line.startswith(b"<observer>")]
    assert_terminal_safe(bytes(observer.data))
    assert_terminal_safe(bytes(late.data))
    late_lines = lines_of(late.data)
    assert f"[#side] *** Topic: m3 {ON_SCREEN}".encode() in late_lines
    assert any(line.endswith(f"<mallory> m1 {ON_SCREEN}".encode()) for line in late_lines)

    assert watcher.texts("message", nick="mallory", room="#side") == [f"m1 {CLEANED}"]
    assert watcher.texts("action", nick="mallory") == [f"m2 {CLEANED}"]
    assert watcher.texts("topic", nick="mallory") == [f"m3 {CLEANED}"]
    assert watcher.texts("part", nick="mallory") == [f"m5 {CLEANED}"]
    assert watcher.texts("quit", nick="mallory") == [f"m6 {CLEANED}"]
    for event in watcher.events:
        assert UNSAFE_CHARS.search(json.dumps(event.as_dict(), ensure_ascii=False)) is None
    for peer in (observer, attacker, late):
        peer.close()
    await watcher.close()


async def test_invalid_utf8_is_replaced_and_relayed(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0)
    observer = await RawClient.connect(server.port)
    await observer.register("observer")
    sender = await RawClient.connect(server.port)
    await sender.send(b"s\xe9nder\r\n")  # not even the nickname line is fatal
    await sender.read_until(rb"!!! ")
    await sender.register("sender")
    await sender.send(b"bad \xc3\x28 lone \x80 cut \xe2\x82 end\r\n")
    await observer.read_until(rb"<sender> [^\r]*end\r\n")
    assert "[#lobby] <sender> bad \ufffd( lone \ufffd cut \ufffd end".encode() in lines_of(
        observer.data
    )
    assert_terminal_safe(bytes(observer.data))
    await sender.send(b"/ping still-here\r\n")
    await sender.read_until(rb"\*\*\* pong still-here")
    observer.close()
    sender.close()


async def test_json_lone_surrogate_is_replaced_not_fatal(start_server: StartServer) -> None:
    r"""JSON's counterpart of invalid UTF-8: "\ud800" decodes to a lone surrogate.

    It must be replaced like invalid UTF-8 is, relayed, and cost nobody anything: not the
    sender, not the people in the room, not whoever registers later (history replay).
    """
    server = await start_server(max_per_ip=0)
    watcher = await Listener.connect(server.port, "watcher")
    sender = await RawClient.connect(server.port)
    await sender.send(b'{"type":"hello","nick":"sender"}\n')
    await sender.read_until(rb'"type":"who"')
    await sender.send(b'{"type":"say","room":"#lobby","text":"x \\ud800 y"}\n')
    await sender.send(b'{"type":"ping","token":"after-surrogate"}\n')
    await watcher.say("innocent bystander")
    await sender.read_until(rb'"text":"after-surrogate"')
    relayed = await watcher.wait("message", nick="sender")
    assert relayed.text in ("x \ufffd y", "x  y")
    await watcher.wait("message", nick="watcher", text="innocent bystander")
    late = await LineClient.connect(server.port)
    await late.register("late")
    await late.send("/ping alive")
    await late.expect(r"^\*\*\* pong alive$")
    assert {m.nick for m in server.hub.members} == {"watcher", "sender", "late"}
    sender.close()
    await late.close()
    await watcher.close()


# --- 3. flood control ---------------------------------------------------------------------


async def test_lines_over_the_flood_budget_are_refused(start_server: StartServer) -> None:
    server = await start_server(rate=1, burst=5, max_per_ip=0)
    observer = await Listener.connect(server.port, "observer")
    other = await Listener.connect(server.port, "other")
    flooder = await RawClient.connect(server.port)
    await flooder.send(b'{"type":"hello","nick":"flooder"}\n')
    await flooder.read_until(rb'"type":"who"')

    sent = [f"paste {i}" for i in range(7)]  # 4 tokens left after registering
    await flooder.send(b"".join(say_line(text) for text in sent))
    await other.say("meanwhile")  # another user is not held up
    await observer.wait("message", nick="other", text="meanwhile")

    def outcomes() -> list[Event]:
        return [
            e
            for e in json_events(bytes(flooder.data))
            if (e.type == "message" and e.nick == "flooder") or e.type == "error"
        ]

    # Lines are answered in order, so the first refusal comes after every accepted line;
    # the refusals after it are answered once per run (issue 10: no flood of errors).
    while not any(e.type == "error" for e in outcomes()):
        await flooder.read_until(rb"\n")
    accepted = [e.text for e in outcomes() if e.type == "message"]
    refused = [e for e in outcomes() if e.type == "error"]
    assert {getattr(e, "code", None) for e in refused} == {"flood"}
    assert 1 <= len(refused) <= len(sent) - 4
    assert accepted == sent[: len(accepted)]

    await other.say("fence")
    await observer.wait("message", nick="other", text="fence")
    assert observer.texts("message", nick="flooder") == accepted
    assert server.hub.find("flooder") is not None  # refused, not disconnected
    flooder.close()
    await observer.close()
    await other.close()


async def _flood(peer: RawClient, style: str) -> None:
    if style == "burst":  # 200 lines in one write
        await peer.send(b"".join(say_line(f"flood {i}") for i in range(200)))
        return
    for n in range(2000):  # a bot that keeps going until the server hangs up
        block = b"".join(say_line(f"flood {n}.{i}") for i in range(50))
        if not await peer.send(block):
            return
        await asyncio.sleep(0)


@pytest.mark.parametrize("style", ["burst", "stream"])
async def test_sustained_flood_disconnects_with_reason(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, style: str
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(rate=1, burst=5, max_per_ip=0)
    observer = await Listener.connect(server.port, "observer")
    other = await Listener.connect(server.port, "other")
    flooder = await RawClient.connect(server.port)
    await flooder.send(b'{"type":"hello","nick":"flooder"}\n')
    await flooder.read_until(rb'"type":"who"')

    flooding = asyncio.create_task(_flood(flooder, style))
    await other.say("during the flood")
    got = await flooder.read_to_eof()
    flooding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flooding
    flooder.close()

    # Everybody else is unaffected.
    quit_event = await observer.wait("quit", nick="flooder")
    assert "flood" in quit_event.text.lower()
    await observer.wait("message", nick="other", text="during the flood")
    assert len(observer.texts("message", nick="flooder")) <= 5
    await other.say("after the flood")
    await observer.wait("message", nick="other", text="after the flood")
    await eventually(lambda: server.session_count == 2, "the flooder's session to end")
    await observer.close()
    await other.close()
    # The flooder is told why; its disconnect is logged with the reason; nothing crashed.
    bye = json_events(got)[-1]
    assert (bye.type, getattr(bye, "code", None)) == ("bye", "flooding")
    disconnects = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("disconnect ") and "nick=flooder " in r.getMessage()
    ]
    assert len(disconnects) == 1
    assert "flood" in disconnects[0].lower()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- 4. slow readers ----------------------------------------------------------------------


async def test_reader_that_stops_reading_is_dropped_and_nobody_waits(
    start_server: StartServer,
) -> None:
    send_queue = 256 * 1024
    server = await start_server(send_queue=send_queue, rate=0, max_line=4096, max_per_ip=0)
    slow = await RawClient.connect(server.port, rcvbuf=4096)
    await slow.send(b"slow\r\n")  # registers, and never reads a byte
    await eventually(lambda: server.hub.find("slow") is not None, "slow to register")
    healthy = await Listener.connect(server.port, "healthy")
    sender = await Listener.connect(server.port, "sender")

    body = "z" * 2000
    batch = 50  # 100 KB a round: well inside the queue of a client that does read
    sent = 0
    started = time.monotonic()
    while server.hub.find("slow") is not None:
        # Far more than the kernel's buffers and the send queue together can hold.
        assert sent < 10_000, "the slow reader was never dropped"
        for _ in range(batch):
            await sender.say(f"{sent:05d} {body}")
            sent += 1
        # Nobody waits on the slow reader: the healthy client gets each round promptly.
        await eventually(
            lambda n=sent: len(healthy.of("message", nick="sender")) == n,
            f"healthy to receive {sent} messages",
        )
    quit_event = await healthy.wait("quit", nick="slow")
    assert quit_event.text == f"Send queue exceeded {send_queue} bytes (you are not reading)."
    for _ in range(batch):
        await sender.say(f"{sent:05d} {body}")
        sent += 1
    await eventually(lambda: len(healthy.of("message", nick="sender")) == sent, "the last messages")
    texts = healthy.texts("message", nick="sender")
    assert texts == [f"{i:05d} {body}" for i in range(sent)]  # all, once each, in order
    assert time.monotonic() - started < 10
    await eventually(lambda: server.session_count == 2, "the slow session to go away")
    assert {m.nick for m in server.hub.members} == {"healthy", "sender"}
    slow.close()
    await healthy.close()
    await sender.close()


# --- 5. timeouts --------------------------------------------------------------------------


async def test_connection_that_never_registers_is_closed(start_server: StartServer) -> None:
    server = await start_server(register_timeout=0.5, max_per_ip=0)
    text = await RawClient.connect(server.port)
    json_peer = await RawClient.connect(server.port)
    await json_peer.send(b'{"type":"hello"}\n')
    trickler = await RawClient.connect(server.port)  # talks, but never registers

    async def trickle() -> None:
        for n in itertools.count():
            if not await trickler.send(f"/ping {n}\r\n".encode()):
                return
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    text_got, json_got, trickler_got = await asyncio.gather(
        text.read_to_eof(), json_peer.read_to_eof(), trickler.read_to_eof()
    )
    trickling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await trickling
    assert lines_of(text_got)[-1].startswith(b"*** Closing connection: No nickname within")
    assert lines_of(trickler_got)[-1] == lines_of(text_got)[-1]
    bye = json_events(json_got)[-1]
    assert (bye.type, getattr(bye, "code", None)) == ("bye", "register_timeout")
    await eventually(lambda: server.session_count == 0, "the sessions to end")
    for peer in (text, json_peer, trickler):
        peer.close()


async def test_json_client_that_ignores_pings_is_dropped(start_server: StartServer) -> None:
    server = await start_server(ping_interval=0.3, ping_timeout=0.3, max_per_ip=0)
    watcher = await Listener.connect(server.port, "watcher")
    silent = await RawClient.connect(server.port)
    await silent.send(b'{"type":"hello","nick":"silent"}\n')
    got = await silent.read_to_eof()
    events = json_events(got)
    assert "ping" in [e.type for e in events]
    assert (events[-1].type, getattr(events[-1], "code", None)) == ("bye", "ping_timeout")
    quit_event = await watcher.wait("quit", nick="silent")
    assert "ping" in quit_event.text
    await eventually(lambda: server.hub.find("silent") is None, "silent to leave the hub")
    silent.close()
    await watcher.close()


async def test_pinged_json_client_that_answers_stays_and_idle_text_client_stays(
    start_server: StartServer,
) -> None:
    server = await start_server(ping_interval=0.3, ping_timeout=0.3, max_per_ip=0)
    idle = await LineClient.connect(server.port)
    await idle.register("idle")
    answering = await JsonClient.connect(server.port, nick="answering")
    for _ in range(4):  # at least 4 ping intervals pass; the text client says nothing
        ping = await answering.expect("ping")
        await answering.send({"type": "pong", "token": ping.text})
    await answering.send({"type": "say", "text": "still here"})
    await answering.expect("message", nick="answering", text="still here")
    assert "bye" not in [e.type for e in answering.events]

    await idle.send("/ping idle")
    await idle.expect(r"^\*\*\* pong idle$")
    assert not [line for line in idle.seen if "Closing connection" in line or "ping " in line]
    await idle.send("me too")
    await answering.expect("message", nick="idle", text="me too")
    assert server.session_count == 2
    await idle.close()
    await answering.close()


async def test_tcp_keepalive_is_enabled_on_accepted_sockets(start_server: StartServer) -> None:
    server = await start_server(keepalive_idle=42, max_per_ip=0)
    client = await LineClient.connect(server.port)
    await client.register("kept")
    await eventually(lambda: server.session_count == 1, "the session")
    (session,) = server._sessions
    sock = session._writer.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
    await client.close()


# --- 6. connection limits -----------------------------------------------------------------


async def test_over_max_clients_gets_one_line_then_room_frees_up(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_clients=3, max_per_ip=0)
    admitted = []
    for _ in range(3):
        peer = await RawClient.connect(server.port)
        await peer.read_until(rb"Choose a nickname")
        admitted.append(peer)
    await admitted[0].register("first")
    await eventually(lambda: server.session_count == 3, "three sessions")

    refused = await RawClient.connect(server.port)
    said = await refused.read_to_eof()
    refused.close()
    assert said.count(b"\n") == 1  # one line: no greeting, no registration
    assert said.startswith(b"*** Closing connection: The server is full")
    assert server.session_count == 3
    assert [r for r in caplog.records if re.match(r"refused .*server_full", r.getMessage())]

    admitted.pop().close()
    await eventually(lambda: server.session_count == 2, "a free slot")
    newcomer = await RawClient.connect(server.port)
    await newcomer.register("newcomer")
    assert server.hub.find("newcomer") is not None
    for peer in [*admitted, newcomer]:
        peer.close()


@pytest.mark.parametrize("limit", ["max_clients", "max_per_ip"])
async def test_a_program_is_refused_in_json(start_server: StartServer, limit: str) -> None:
    """A program that opens with its JSON hello gets a refusal it can parse (issue 9),
    rather than the text line people get."""
    server = await start_server(**{"max_clients": 1000, "max_per_ip": 0, limit: 1})
    held = await RawClient.connect(server.port)
    await held.register("held")
    refused = await RawClient.connect(server.port)
    await refused.send(b'{"type":"hello","nick":"bot","id":"h1"}\n')
    said = await refused.read_to_eof()
    refused.close()
    assert said.count(b"\n") == 1
    bye = json.loads(said)
    expected = "server_full" if limit == "max_clients" else "too_many_connections"
    assert (bye["type"], bye["code"]) == ("bye", expected)
    held.close()


async def test_over_max_per_ip_gets_one_line_then_room_frees_up(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_per_ip=2)
    first = await RawClient.connect(server.port)
    await first.register("first")
    second = await RawClient.connect(server.port)
    await second.read_until(rb"Choose a nickname")
    await eventually(lambda: server.session_count == 2, "two sessions")

    refused = await RawClient.connect(server.port)
    said = await refused.read_to_eof()
    refused.close()
    assert said.count(b"\n") == 1
    assert said.startswith(b"*** Closing connection: Too many connections from your address")
    assert [
        r for r in caplog.records if re.match(r"refused .*too_many_connections", r.getMessage())
    ]
    # The limit is per address: another address is welcome.
    elsewhere = await RawClient.connect(server.port, source="127.0.0.2")
    await elsewhere.register("elsewhere")

    second.close()
    await eventually(lambda: server.session_count == 2, "second to go")
    third = await RawClient.connect(server.port)
    await third.register("third")
    for peer in (first, elsewhere, third):
        peer.close()


# --- 7. faults ----------------------------------------------------------------------------


async def _vanish(server: ChatServer, peer: RawClient, how: str, chatter: Listener) -> None:
    match how:
        case "reset-mid-write":
            # Talk in #haunt until the server holds a backlog for the ghost (which never
            # reads) beyond what the kernel takes; then the ghost resets.
            (session,) = [s for s in server._sessions if s.member and s.member.nick == "ghost"]
            said = 0
            while session._transport.get_write_buffer_size() == 0:
                assert said < 8000, "no write backlog for the ghost"
                for _ in range(100):
                    await chatter.say(f"{said} " + "w" * 1000, room="#haunt")
                    said += 1
                await eventually(
                    lambda n=said: len(chatter.of("message", room="#haunt")) == n, "the echoes"
                )
            peer.rst()
        case "reset-mid-line":
            await peer.send(b"half a li")
            peer.rst()
        case "half-close":
            peer.half_close()
            await peer.read_to_eof()
            peer.close()
        case "vanish-mid-line":
            await peer.send(b"half a li")
            peer.close()


@pytest.mark.parametrize(
    "how", ["reset-mid-write", "reset-mid-line", "half-close", "vanish-mid-line"]
)
async def test_vanishing_peer_leaves_no_ghost(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_per_ip=0, rate=0, send_queue=8 << 20)
    watcher = await LineClient.connect(server.port)
    await watcher.register("watcher")
    chatter = await Listener.connect(server.port, "chatter")
    await chatter.send({"type": "join", "room": "#haunt"})
    ghost = await RawClient.connect(server.port, rcvbuf=4096)
    await ghost.register("ghost")
    await ghost.send(b"/join #haunt\r\n")
    await chatter.wait("join", nick="ghost", room="#haunt")

    await _vanish(server, ghost, how, chatter)
    await chatter.say("written to a dead peer?", room="#haunt")  # must not matter
    await watcher.expect(r"^\*\*\* ghost quit")
    assert server.hub.find("ghost") is None
    assert await text_who(watcher, "#lobby") == {"watcher", "chatter"}
    assert sorted(await chatter.who("#haunt")) == ["chatter"]
    again = await LineClient.connect(server.port)
    await again.register("ghost")  # the nickname is free at once
    await again.send("I am the new ghost")
    await chatter.wait("message", nick="ghost", text="I am the new ghost")
    await eventually(lambda: server.session_count == 3, "the old session to end")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    ghost_disconnects = [
        r
        for r in caplog.records
        if r.getMessage().startswith("disconnect ") and "nick=ghost " in r.getMessage()
    ]
    assert len(ghost_disconnects) == 1
    await again.close()
    await watcher.close()
    await chatter.close()


async def test_exception_in_one_handler_is_logged_once_and_harms_nobody_else(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_per_ip=0)
    say = server.hub.say

    def failing_say(member: Any, room: str | None, text: str) -> None:
        if member.nick == "boom":
            raise RuntimeError("injected failure")
        say(member, room, text)

    monkeypatch.setattr(server.hub, "say", failing_say)
    alice = await Listener.connect(server.port, "alice")
    bob = await Listener.connect(server.port, "bob")
    boom = await LineClient.connect(server.port)
    await boom.register("boom")

    await boom.send("this line trips a bug")
    await alice.say("unaffected")
    await bob.wait("message", nick="alice", text="unaffected")
    await boom.eof()
    await bob.wait("quit", nick="boom")
    await eventually(lambda: server.session_count == 2, "boom's session to end")
    assert server.hub.find("boom") is None
    await bob.say("still chatting")
    await alice.wait("message", nick="bob", text="still chatting")
    assert sorted(await alice.who("#lobby")) == ["alice", "bob"]

    failures = [
        r
        for r in caplog.records
        if r.exc_info and "injected failure" in "".join(map(str, _leaves(r.exc_info[1])))
    ]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].levelno == logging.ERROR
    again = await LineClient.connect(server.port)
    await again.register("boom")
    await again.close()
    await alice.close()
    await bob.close()


async def test_peers_resetting_as_the_server_closes_them_cost_no_grace_period(
    start_server: StartServer,
) -> None:
    """The server closes sessions (here: shutdown) just as their peers reset.

    Which of "the server says bye" and "the reset is noticed" comes first depends on how
    the loop interleaves them, so sweep the window: let the loop run 0..5 iterations
    between the resets and ``close()``. Nothing is left to flush to a peer that reset, so
    every session must end at once, not after the close grace period.
    """
    took = {}
    for spins in range(6):
        server = await start_server(max_per_ip=0)
        peers = []
        for i in range(3):
            peer = await RawClient.connect(server.port)
            await peer.register(f"p{i}")
            peers.append(peer)
        await eventually(lambda s=server: s.session_count == 3, "three sessions")
        for peer in peers:
            peer.rst()
        for _ in range(spins):
            await asyncio.sleep(0)  # not a synchronisation: it places close() in the race
        started = time.monotonic()
        await server.close()
        took[spins] = round(time.monotonic() - started, 2)
    assert max(took.values()) < 1.0, f"server.close() seconds by loop iterations: {took}"


def _leaves(exc: BaseException | None) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    elif exc is not None:
        yield exc


# --- 8. TLS -------------------------------------------------------------------------------


@pytest.fixture
def tls_files(certificate: tuple[Path, Path]) -> tuple[str, str]:
    """The harness's self-signed certificate for localhost and 127.0.0.1, as strings."""
    cert, key = certificate
    return str(cert), str(key)


async def tls_client(port: int, cafile: str) -> LineClient:
    context = ssl.create_default_context(cafile=cafile)  # verifies chain and host name
    return await LineClient.connect(port, ssl=context, server_hostname="localhost")


async def test_tls_clients_register_and_chat(
    start_server: StartServer, tls_files: tuple[str, str]
) -> None:
    cert, key = tls_files
    server = await start_server(tls_cert=cert, tls_key=key, max_per_ip=0)
    alice = await tls_client(server.port, cert)
    await alice.register("alice")
    bob = await tls_client(server.port, cert)
    await bob.register("bob")
    await alice.send("over TLS")
    await bob.expect(r"^\[#lobby\] <alice> over TLS$")
    await bob.send("/msg alice private over TLS")
    await alice.expect(r"^\[private\] <bob> private over TLS$")
    for session in server._sessions:
        sock = session._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0

    # A client that does not trust the certificate is refused by its own verification.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ssl.create_default_context(), server_hostname="localhost"
        )
    await alice.close()
    await bob.close()


async def test_stalled_tls_handshake_blocks_nobody_and_is_closed(
    start_server: StartServer, tls_files: tuple[str, str]
) -> None:
    cert, key = tls_files
    server = await start_server(
        tls_cert=cert, tls_key=key, tls_handshake_timeout=1.0, max_per_ip=0, max_clients=5
    )
    stalled = [await RawClient.connect(server.port) for _ in range(3)]  # connect, say nothing
    alice = await tls_client(server.port, cert)
    await alice.register("alice")
    bob = await tls_client(server.port, cert)
    await bob.register("bob")
    await alice.send("not blocked")
    await bob.expect(r"<alice> not blocked$")
    # ...while every stalled handshake is still pending: nobody waited for them.
    for peer in stalled:
        with pytest.raises(BlockingIOError):
            peer.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)

    for peer in stalled:
        assert await peer.read_to_eof() == b""  # closed, and no chat byte ever sent in clear
        peer.close()
    await bob.send("still fine")
    await alice.expect(r"<bob> still fine$")
    assert server.session_count == 2
    await alice.close()
    await bob.close()


# --- 9. logging ---------------------------------------------------------------------------


async def test_one_log_line_per_connect_register_disconnect_and_refusal(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    server = await start_server(max_clients=2, max_per_ip=0)
    alice = await LineClient.connect(server.port)
    await alice.register("alice")
    bob = await LineClient.connect(server.port)
    await bob.register("bob")
    for line in (
        "SECRET-SAID",
        "/me SECRET-ACTED",
        "/msg bob SECRET-PRIVATE",
        "/topic SECRET-TOPIC",
        "/join #SECRET-ROOMLESS",
    ):
        await alice.send(line)
    await bob.expect(r"SECRET-PRIVATE")
    await bob.expect(r"SECRET-TOPIC")
    refused = await RawClient.connect(server.port)
    await refused.read_to_eof()
    refused.close()
    alice_port = alice.writer.get_extra_info("sockname")[1]
    await alice.send("/quit gone fishing")
    await alice.eof()
    await alice.close()
    await bob.close()
    await eventually(lambda: server.session_count == 0, "both sessions to end")

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("chat")]

    def matching(pattern: str) -> list[str]:
        return [m for m in messages if re.search(pattern, m)]

    (connect,) = matching(rf"^connect conn=\d+ peer=127\.0\.0\.1:{alice_port}$")
    conn = re.search(r"conn=(\d+)", connect).group(1)  # type: ignore[union-attr]
    assert len(matching(rf"^register conn={conn} .*nick=alice")) == 1
    (disconnect,) = matching(rf"^disconnect conn={conn} ")
    assert "nick=alice" in disconnect
    assert "reason='gone fishing'" in disconnect
    assert len(matching(r"^connect conn=")) == 2  # the refused one is not admitted
    assert len(matching(r"^register conn=")) == 2
    assert len(matching(r"^disconnect conn=")) == 2
    assert len(matching(r"^refused .*server_full")) == 1
    leaked = [
        r.getMessage()
        for r in caplog.records
        if r.levelno <= logging.INFO and "SECRET" in r.getMessage()
    ]
    assert not leaked


# --- 10. fuzz -----------------------------------------------------------------------------

COMMAND_WORDS = [
    "", "/join", "/part", "/rooms", "/who", "/topic", "/me", "/msg", "/msg bob", "/msg alice",
    "/nick", "/help", "/ping", "/quit", "/list", "/names", "/j", "/query", "//", "/bogus",
    "/join #fuzz", "/part #lobby", "/topic #lobby", "/who #fuzz",
]  # fmt: skip
JSON_TYPES = [
    "hello", "nick", "say", "me", "msg", "join", "part", "rooms", "who", "topic", "quit",
    "help", "ping", "pong", "bogus",
]  # fmt: skip
json_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["#lobby", "#fuzz", "alice", "bob", "", "#", "x" * 40]),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
text_lines = st.builds(
    lambda word, arg, end: (word + " " + arg).encode() + end,
    st.sampled_from(COMMAND_WORDS),
    st.text(max_size=30),
    st.sampled_from([b"\n", b"\r\n", b"\r", b""]),
)
json_lines = st.builds(
    lambda obj: json.dumps(obj).encode() + b"\n",
    st.fixed_dictionaries(
        {"type": st.sampled_from(JSON_TYPES)},
        optional={
            key: json_values for key in ("text", "room", "nick", "reason", "token", "command")
        },
    ),
)
CHUNK_KINDS = {
    "text": text_lines,
    "json": json_lines,
    "bytes": st.binary(max_size=200),
    "overlong": st.just(b"Y" * 300 + b"\n"),  # max_line is 256
    "garbage": st.just(b"Z" * 70_000),  # no newline: the server gives up on this peer
}
chunks = st.sampled_from(
    ["text"] * 5 + ["json"] * 5 + ["bytes"] * 3 + ["overlong", "garbage"]
).flatmap(CHUNK_KINDS.__getitem__)


@dataclass(frozen=True)
class FuzzScript:
    register: str  # "text", "json" or "none"
    chunks: list[bytes]
    end: str  # how the client goes away


fuzz_scripts = st.builds(
    FuzzScript,
    register=st.sampled_from(["text", "json", "none"]),
    chunks=st.lists(chunks, max_size=10),
    end=st.sampled_from(["close", "rst", "half-close", "mid-line"]),
)


async def run_fuzzer(port: int, nick: str, script: FuzzScript) -> None:
    async with asyncio.timeout(15):
        peer = await RawClient.connect(port)
        try:
            if script.register == "text":
                await peer.send(nick.encode() + b"\n")
            elif script.register == "json":
                await peer.send(json.dumps({"type": "hello", "nick": nick}).encode() + b"\n")
            for chunk in script.chunks:
                if not await peer.send(chunk):
                    break
            match script.end:
                case "rst":
                    peer.rst()
                    return
                case "half-close":
                    with contextlib.suppress(OSError):
                        peer.half_close()
                    await peer.read_to_eof(within=10)
                case "mid-line":
                    await peer.send(b"an unfinished li")
        finally:
            peer.close()


def test_fuzzing_clients_do_not_disturb_a_healthy_conversation() -> None:
    """Random bytes and random commands from many clients; then the invariants hold."""
    config = server_config(max_line=256, rate=200, burst=400, max_per_ip=0)
    with asyncio.Runner() as runner:
        server = ChatServer(config)
        runner.run(server.start())
        alice = runner.run(Listener.connect(server.port, "alice"))
        bob = runner.run(Listener.connect(server.port, "bob"))
        to_bob: list[str] = []
        to_bob_private: list[str] = []
        to_alice: list[str] = []
        examples = itertools.count()

        async def example(scripts: list[FuzzScript], rounds: int) -> None:
            n = next(examples)
            fuzzers = [
                asyncio.create_task(run_fuzzer(server.port, f"fz{n}x{i}", script))
                for i, script in enumerate(scripts)
            ]
            for r in range(rounds):
                await alice.say(f"a{n}.{r}")
                to_bob.append(f"a{n}.{r}")
                await alice.send({"type": "msg", "nick": "bob", "text": f"p{n}.{r}"})
                to_bob_private.append(f"p{n}.{r}")
                await bob.say(f"b{n}.{r}")
                to_alice.append(f"b{n}.{r}")
                await asyncio.sleep(0)  # let the fuzzers interleave
            await asyncio.gather(*fuzzers)

            # The healthy pair got everything addressed to them: all, once, in order.
            await eventually(
                lambda: (
                    bob.texts("message", nick="alice", room="#lobby") == to_bob
                    and bob.texts("private", nick="alice") == to_bob_private
                    and alice.texts("message", nick="bob", room="#lobby") == to_alice
                ),
                "the healthy conversation",
                within=10,
            )
            assert not alice.closed
            assert not bob.closed
            # No ghost: with every fuzzer gone, only the healthy pair remain.
            await eventually(
                lambda: (
                    server.session_count == 2
                    and sorted(m.nick for m in server.hub.members) == ["alice", "bob"]
                ),
                "the fuzzers' sessions to end",
                within=10,
            )
            assert sorted(await alice.who("#lobby")) == ["alice", "bob"]
            # The server is alive: a newcomer registers.
            newcomer = await LineClient.connect(server.port)
            await newcomer.register(f"new{n}")
            await newcomer.send("/quit")
            await newcomer.eof()
            await newcomer.close()

        @settings(
            max_examples=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            scripts=st.lists(fuzz_scripts, min_size=1, max_size=6),
            rounds=st.integers(min_value=1, max_value=5),
        )
        def fuzz(scripts: list[FuzzScript], rounds: int) -> None:
            runner.run(asyncio.wait_for(example(scripts, rounds), 60))

        try:
            fuzz()
            assert next(examples) >= 15
        finally:
            runner.run(alice.close())
            runner.run(bob.close())
            runner.run(server.close())


# --- 11. churn ----------------------------------------------------------------------------


async def test_churn_of_hundreds_of_abrupt_clients_leaves_nothing_behind(
    start_server: StartServer,
) -> None:
    server = await start_server(max_per_ip=0, rate=0)

    # What one registered connection costs in tasks and file descriptors (both ends are in
    # this process), measured rather than assumed.
    gc.collect()  # sockets a failed earlier test left to the garbage collector
    base_tasks, base_fds = len(asyncio.all_tasks()), open_fd_count()
    probe = await LineClient.connect(server.port)
    await probe.register("probe")
    tasks_per_client = len(asyncio.all_tasks()) - base_tasks
    fds_per_client = open_fd_count() - base_fds
    await probe.close()
    await eventually(
        lambda: len(asyncio.all_tasks()) == base_tasks and open_fd_count() == base_fds,
        "the probe to be gone",
    )

    modes = ["rst", "half-close", "mid-line", "before-register", "rst-before-register", "live"]
    live: list[LineClient] = []
    gate = asyncio.Semaphore(50)

    async def churn(i: int) -> None:
        mode = modes[i % len(modes)]
        nick = f"c{i}"
        async with gate, asyncio.timeout(30):
            client = await LineClient.connect(server.port)
            if mode == "before-register":
                await client.close()
                return
            if mode == "rst-before-register":
                await client.expect("Choose a nickname")
                _reset(client.writer)
                return
            await client.register(nick)
            await client.send(f"/join #churn\r\nhello from {nick}")
            await client.expect(rf"^\[#churn\] <{nick}> hello from {nick}$")
            match mode:
                case "rst":
                    _reset(client.writer)
                case "half-close":
                    client.writer.write_eof()
                    await client.eof()
                    await client.close()
                case "mid-line":
                    await client.send_raw(b"and then it was g")
                    await client.close()
                case "live":
                    live.append(client)

    await asyncio.gather(*(churn(i) for i in range(300)))
    assert len(live) == 50

    checker = await LineClient.connect(server.port)
    await checker.register("checker")
    live_nicks = {f"c{i}" for i in range(300) if modes[i % len(modes)] == "live"}
    await text_who_eventually(checker, "#lobby", live_nicks | {"checker"}, within=10)
    await text_who_eventually(checker, "#churn", live_nicks)
    await eventually(lambda: server.session_count == len(live) + 1, "sessions == live")
    assert {m.nick for m in server.hub.members} == live_nicks | {"checker"}
    await eventually(
        lambda: len(asyncio.all_tasks()) == base_tasks + tasks_per_client * (len(live) + 1),
        lambda: (
            f"tasks to match the live connections: {len(asyncio.all_tasks())} != "
            f"{base_tasks} + {tasks_per_client} * {len(live) + 1}"
        ),
        within=10,
    )
    await eventually(
        lambda: open_fd_count() == base_fds + fds_per_client * (len(live) + 1),
        lambda: (
            f"file descriptors to match the live connections: {open_fd_count()} != "
            f"{base_fds} + {fds_per_client} * {len(live) + 1}; {tcp_states(server.port)}"
        ),
        within=10,
    )

    for client in [*live, checker]:
        await client.close()
    await eventually(lambda: server.session_count == 0, "every session to end", within=10)
    await eventually(
        lambda: len(asyncio.all_tasks()) == base_tasks, "tasks back to baseline", within=10
    )
    await eventually(lambda: open_fd_count() == base_fds, "no socket left open", within=10)
    await eventually(
        lambda: not [s for s in tcp_states(server.port) if s in (ESTABLISHED, CLOSE_WAIT)],
        "no established or half-closed TCP connection on the port",
        within=10,
    )
    assert server.hub.members == []


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
