"""Integration tests over real sockets: registration, every command in both dialects, room
isolation, the JSON event shape, history, a telnet session, and ``chat-server`` as a process.

Nothing here sleeps to synchronise: every wait is for a line or an event, with a timeout. To
prove something did *not* arrive, a later marker is sent on a path the observer does see,
and everything the observer received up to the marker is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chat.commands import COMMANDS, lookup
from chat.protocol import Event, parse_event
from chat.server import ChatServer, ServerConfig
from chat.session import Limits
from tests.conftest import StartServer
from tests.helpers import WAIT, JsonClient, LineClient

GREETING = [
    "*** Welcome to chat! Programs: send a JSON hello (see protocol.md).",
    "*** Choose a nickname (letters, digits, _ or -, starting with a letter):",
]
PROMPT = GREETING[1]
NOT_REGISTERED = "!!! Choose a nickname first: type it and press Enter."
NO_ACTIVE_ROOM = "!!! You are not in any room; /join #room first."
SHUTDOWN_BYE = "*** Closing connection: The server is shutting down."
COMMON_FIELDS = ("type", "id", "ts", "room", "nick", "text")


# --- clients and helpers --------------------------------------------------------------------


class RawJsonClient(JsonClient):
    """A JsonClient that also keeps every JSON line as bytes and as the decoded object."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.raw_lines: list[bytes] = []
        self.objects: list[dict[str, Any]] = []

    async def event(self, timeout: float = WAIT) -> Event:
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

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

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

    async def eof(self) -> list[Event]:
        """Read events until the server closes the connection."""
        start = len(self.events)
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    await self.event()
                except (EOFError, ConnectionResetError):
                    return self.events[start:]


async def text_user(port: int, nick: str) -> LineClient:
    client = await LineClient.connect(port)
    await client.register(nick)
    return client


async def json_user(port: int, nick: str) -> RawJsonClient:
    client = await RawJsonClient.connect(port, nick=nick)
    assert isinstance(client, RawJsonClient)
    return client


async def next_is(client: LineClient, *lines: str) -> None:
    """The next lines the client receives are exactly ``lines``."""
    for expected in lines:
        assert await client.line() == expected


async def wait_for(client: LineClient, line: str) -> list[str]:
    """Lines up to and including ``line`` (matched exactly)."""
    return await client.lines_until("^" + re.escape(line) + "$")


async def roundtrip(client: LineClient, token: str) -> None:
    """Prove the connection is open and everything before it was answered: /ping -> pong."""
    await client.send(f"/ping {token}")
    await wait_for(client, f"*** pong {token}")


def utc_minute(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def says(events: list[Event]) -> list[tuple[str, str | None, str | None, str]]:
    """The chat content (messages, actions, private messages) among ``events``."""
    return [
        (e.type, e.room, e.nick, e.text)
        for e in events
        if e.type in {"message", "action", "private"}
    ]


@pytest.fixture
async def chat(start_server: StartServer) -> ChatServer:
    """Default settings, minus flood control and the per-IP limit: these tests send many lines."""
    return await start_server(max_per_ip=0, rate=0)


# --- registration: text dialect -----------------------------------------------------------

REFUSED_NICKS = [
    pytest.param(
        "abcdefghijklmnopq",
        "nick_invalid",
        "Nickname is too long (17 characters, at most 16).",
        id="too-long",
    ),
    pytest.param(
        "9lives",
        "nick_invalid",
        "A nickname must start with a letter (a-z, A-Z).",
        id="digit-first",
    ),
    pytest.param(
        "_under", "nick_invalid", "A nickname must start with a letter (a-z, A-Z).", id="_-first"
    ),
    pytest.param(
        "al!ce",
        "nick_invalid",
        "Nickname contains '!'; use only letters a-z, digits, '_' and '-'.",
        id="bad-char",
    ),
    pytest.param(
        "sys op",
        "nick_invalid",
        "Nickname contains ' '; use only letters a-z, digits, '_' and '-'.",
        id="space",
    ),
    pytest.param("admin", "nick_reserved", "The nickname 'admin' is reserved.", id="reserved"),
    pytest.param(
        "R00T", "nick_reserved", "The nickname 'R00T' is reserved.", id="reserved-lookalike"
    ),
    pytest.param(
        "BOB",
        "nick_taken",
        "The nickname 'BOB' is already in use; choose another.",
        id="taken-other-case",
    ),
    pytest.param(
        "b0b",
        "nick_confusable",
        "The nickname 'b0b' looks too much like 'bob', who is online; choose another.",
        id="confusable",
    ),
]


async def test_greeting_is_two_text_lines(chat: ChatServer) -> None:
    client = await LineClient.connect(chat.port)
    await next_is(client, *GREETING)
    await client.close()


@pytest.mark.parametrize(("nick", "code", "reason"), REFUSED_NICKS)
async def test_text_refused_nick_keeps_connection_open(
    chat: ChatServer, nick: str, code: str, reason: str
) -> None:
    bob = await text_user(chat.port, "bob")
    carol = await LineClient.connect(chat.port)
    await next_is(carol, *GREETING)
    await carol.send(nick)
    await next_is(carol, f"!!! {reason}", PROMPT)
    await carol.send("carol")
    await next_is(
        carol,
        "*** Welcome, carol! Type /help for the commands.",
        "[#lobby] *** carol joined #lobby",
        "[#lobby] *** 2 in #lobby: bob, carol",
    )
    await wait_for(bob, "[#lobby] *** carol joined #lobby")
    await carol.close()
    await bob.close()


async def test_text_empty_nick_lines_are_ignored(chat: ChatServer) -> None:
    carol = await LineClient.connect(chat.port)
    await next_is(carol, *GREETING)
    await carol.send_raw(b"\r\n\n   \r\n\t\r\n")
    await carol.send("  carol  ")
    await next_is(carol, "*** Welcome, carol! Type /help for the commands.")
    await carol.close()


async def test_text_too_many_refused_nicks_closes(chat: ChatServer) -> None:
    client = await LineClient.connect(chat.port)
    await next_is(client, *GREETING)
    for _ in range(9):
        await client.send("root")
        await next_is(client, "!!! The nickname 'root' is reserved.", PROMPT)
    await client.send("root")
    await next_is(
        client,
        "!!! The nickname 'root' is reserved.",
        "*** Closing connection: 10 nicknames refused; try again later.",
    )
    assert await client.eof() == []


async def test_text_commands_before_registration(chat: ChatServer) -> None:
    bob = await text_user(chat.port, "bob")
    client = await LineClient.connect(chat.port)
    await next_is(client, *GREETING)
    for line in (
        "/join #dev",
        "/part",
        "/rooms",
        "/list",
        "/who",
        "/topic",
        "/me waves",
        "/msg bob hi",
    ):
        await client.send(line)
        await next_is(client, NOT_REGISTERED, PROMPT)
    # What does work before registration: help, ping, /nick.
    await client.send("/help ping")
    await next_is(client, "*** /ping [token]: Ask the server for a pong, to check the connection.")
    await client.send("/ping early")
    await next_is(client, "*** pong early")
    await client.send("/nick carol")
    await next_is(client, "*** Welcome, carol! Type /help for the commands.")
    await client.close()
    await bob.close()


async def test_text_quit_before_registration(chat: ChatServer) -> None:
    client = await LineClient.connect(chat.port)
    await next_is(client, *GREETING)
    await client.send("/quit not today")
    await next_is(client, "*** Closing connection: Goodbye.")
    assert await client.eof() == []


# --- registration: JSON dialect -----------------------------------------------------------


async def test_json_hello_with_nick_registers(chat: ChatServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", chat.port)
    client = RawJsonClient(reader, writer)
    await client.send({"type": "hello", "nick": "jay"})
    hello = await client.next_is("hello")
    assert client.objects[-1]["version"] == 1
    assert client.objects[-1]["server"] == "chat"
    assert hello.text
    await client.next_is("welcome", nick="jay")
    await client.next_is("join", room="#lobby", nick="jay")
    who = await client.next_is("who", room="#lobby")
    assert client.objects[-1]["members"] == ["jay"]
    assert who.text == ""
    await client.close()


async def test_json_hello_then_nick_registers(chat: ChatServer) -> None:
    client = await RawJsonClient.connect(chat.port)
    assert isinstance(client, RawJsonClient)
    await client.send({"type": "nick", "nick": "jay"})
    await client.next_is("welcome", nick="jay", text="Welcome, jay! Type /help for the commands.")
    await client.next_is("join", room="#lobby", nick="jay")
    await client.next_is("who", room="#lobby")
    await client.close()


@pytest.mark.parametrize("via", ["hello", "nick"])
@pytest.mark.parametrize(("nick", "code", "reason"), REFUSED_NICKS)
async def test_json_refused_nick_keeps_connection_open(
    chat: ChatServer, via: str, nick: str, code: str, reason: str
) -> None:
    bob = await json_user(chat.port, "bob")  # keep a reference: it must stay online
    reader, writer = await asyncio.open_connection("127.0.0.1", chat.port)
    client = RawJsonClient(reader, writer)
    if via == "hello":
        await client.send({"type": "hello", "nick": nick})
        await client.next_is("hello")
    else:
        await client.send({"type": "hello"})
        await client.next_is("hello")
        await client.send({"type": "nick", "nick": nick})
    await client.next_is("error", code=code, text=reason)
    await client.send({"type": "nick", "nick": "carol"})
    await client.next_is("welcome", nick="carol")
    await client.close()
    await bob.close()


async def test_json_empty_nick_is_refused(chat: ChatServer) -> None:
    client = await RawJsonClient.connect(chat.port)
    assert isinstance(client, RawJsonClient)
    await client.send({"type": "nick", "nick": "  "})
    await client.next_is("error", code="nick_invalid", text="A nickname cannot be empty.")
    await client.send({"type": "nick"})
    await client.next_is("error", code="bad_arguments")
    await client.send({"type": "nick", "nick": "carol"})
    await client.next_is("welcome", nick="carol")
    await client.close()


async def test_json_commands_before_registration(chat: ChatServer) -> None:
    bob = await json_user(chat.port, "bob")
    client = await RawJsonClient.connect(chat.port)
    assert isinstance(client, RawJsonClient)
    for command in (
        {"type": "say", "text": "hi"},
        {"type": "me", "text": "waves"},
        {"type": "msg", "nick": "bob", "text": "hi"},
        {"type": "join", "room": "#dev"},
        {"type": "part"},
        {"type": "rooms"},
        {"type": "who"},
        {"type": "topic"},
    ):
        await client.send(command)
        await client.next_is("error", code="not_registered")
    await client.send({"type": "ping", "token": "early"})
    await client.next_is("pong", text="early")
    await client.send({"type": "help", "command": "ping"})
    await client.next_is("notice", text=f"/ping [token]: {lookup('ping', typed=True).help}")
    await client.send({"type": "nick", "nick": "carol"})
    await client.next_is("welcome", nick="carol")
    await client.close()
    await bob.close()


async def test_json_quit_before_registration(chat: ChatServer) -> None:
    client = await RawJsonClient.connect(chat.port)
    assert isinstance(client, RawJsonClient)
    await client.send({"type": "quit", "reason": "not today"})
    bye = await client.next_is("bye", code="quit", text="Goodbye.")
    assert bye.nick is None
    assert await client.eof() == []


async def test_json_hello_after_registration_is_refused(chat: ChatServer) -> None:
    client = await json_user(chat.port, "jay")
    await client.send({"type": "hello", "nick": "other"})
    await client.next_is("error", code="already_registered")
    await client.send({"type": "hello"})
    await client.next_is("error", code="already_registered")
    await client.send({"type": "ping", "token": "still-here"})
    await client.next_is("pong", text="still-here")
    await client.close()


# --- join ---------------------------------------------------------------------------------


async def test_text_join(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")

    await alice.send("/join #dev")
    await next_is(alice, "[#dev] *** alice joined #dev", "[#dev] *** 1 in #dev: alice")
    await alice.send("anyone here?")  # the active room is now #dev
    await next_is(alice, "[#dev] <alice> anyone here?")

    await bob.send("/JOIN dev")  # command names are case-insensitive; the '#' is optional
    await next_is(bob, "[#dev] *** bob joined #dev", "[#dev] *** 2 in #dev: alice, bob")
    assert re.fullmatch(
        r"\[#dev\] \(history \d{4}-\d\d-\d\d \d\d:\d\d UTC\) <alice> anyone here\?",
        await bob.line(),
    )
    await next_is(alice, "[#dev] *** bob joined #dev")

    # Joining a room again only switches to it, with a notice, and tells nobody else.
    await alice.send("/join #LOBBY")
    await next_is(alice, "[#lobby] *** Now talking in #lobby.")
    await bob.send("/j #Dev")
    await next_is(bob, "[#dev] *** Now talking in #dev.")
    await alice.send("back in the lobby")
    await next_is(alice, "[#lobby] <alice> back in the lobby")
    assert await wait_for(bob, "[#lobby] <alice> back in the lobby") == [
        "[#lobby] <alice> back in the lobby"
    ]

    # Refusals.
    await alice.send("/join #bad!")
    await next_is(
        alice, "!!! Invalid room name '#bad!': '#' then 1 to 31 letters, digits, '_' or '-'."
    )
    await alice.send("/join #" + "x" * 32)
    assert (await alice.line()).startswith("!!! Invalid room name '#xxx")
    await alice.send("/join")
    await next_is(alice, "!!! Usage: /join #room")
    await alice.send("/join #a #b")
    await next_is(alice, "!!! Usage: /join #room")
    longest = "#" + "y" * 31
    await alice.send(f"/join {longest}")
    await next_is(alice, f"[{longest}] *** alice joined {longest}")
    await alice.close()
    await bob.close()


async def test_json_join(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")

    await alice.send({"type": "join", "room": "#dev"})
    await alice.next_is("join", room="#dev", nick="alice")
    await alice.next_is("who", room="#dev", members=("alice",))
    await alice.send({"type": "say", "text": "anyone here?"})
    await alice.next_is("message", room="#dev", nick="alice", text="anyone here?")

    await bob.send({"type": "join", "room": "dev"})
    await bob.next_is("join", room="#dev", nick="bob")
    await bob.next_is("who", room="#dev", members=("alice", "bob"))
    await bob.next_is("message", room="#dev", text="anyone here?", history=True)
    await alice.next_is("join", room="#dev", nick="bob")

    await alice.send({"type": "join", "room": "#LOBBY"})
    await alice.next_is("notice", room="#lobby", text="Now talking in #lobby.")
    await alice.send({"type": "say", "text": "back"})
    await alice.next_is("message", room="#lobby", nick="alice", text="back")
    seen = await bob.until("message", text="back")
    assert [e.type for e in seen] == ["message"]

    await alice.send({"type": "join", "room": "#bad!"})
    await alice.next_is("error", code="room_invalid")
    await alice.send({"type": "join"})
    await alice.next_is("error", code="bad_arguments", text="Field 'room' is required.")
    await alice.send({"type": "join", "room": 5})
    await alice.next_is("error", code="bad_arguments", text="Field 'room' must be a string.")
    await alice.send({"type": "ping", "token": "ok"})
    await alice.next_is("pong", text="ok")
    await alice.close()
    await bob.close()


async def test_join_too_many_rooms(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, max_rooms=2)
    alice = await text_user(server.port, "alice")
    await alice.send("/join #a")
    await wait_for(alice, "[#a] *** 1 in #a: alice")
    await alice.send("/join #b")
    await next_is(alice, "!!! You are in 2 rooms already; /part one first.")
    await alice.send("/join #lobby")  # switching to a joined room is no new room
    await next_is(alice, "[#lobby] *** Now talking in #lobby.")
    jay = await json_user(server.port, "jay")
    await jay.call({"type": "join", "room": "#a"}, "who", room="#a")
    await jay.send({"type": "join", "room": "#b"})
    await jay.next_is("error", code="too_many_rooms")
    await alice.close()
    await jay.close()


async def test_messages_to_several_rooms_keep_their_order(chat: ChatServer) -> None:
    """protocol.md: events reach every client in the order the server produced them."""
    alice = await json_user(chat.port, "alice")
    carol = await json_user(chat.port, "carol")
    dave = await text_user(chat.port, "dave")
    for client in (alice, carol):
        for room in ("#a", "#b"):
            await client.call({"type": "join", "room": room}, "who", room=room)
    for room in ("#a", "#b"):
        await dave.send(f"/join {room}")
        await wait_for(dave, f"[{room}] *** 3 in {room}: alice, carol, dave")
    await alice.expect("join", room="#b", nick="dave")
    await carol.expect("join", room="#b", nick="dave")

    # Three lines in one write: the server reads and handles them in one go.
    said = [("#a", "one"), ("#b", "two"), ("#a", "three"), ("#b", "four")]
    await alice.send_raw(
        b"".join(
            json.dumps({"type": "say", "room": room, "text": text}).encode() + b"\n"
            for room, text in said
        )
    )
    for client in (alice, carol):
        got = [(e.room, e.text) for e in await client.until("message", text="four")]
        assert got == said, client
    lines = await wait_for(dave, "[#b] <alice> four")
    assert lines == [f"[{room}] <alice> {text}" for room, text in said]
    for client in (alice, carol, dave):
        await client.close()


# --- part ---------------------------------------------------------------------------------


async def test_text_part(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 1 in #dev: bob")
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 2 in #dev: alice, bob")
    await wait_for(bob, "[#dev] *** alice joined #dev")

    await alice.send("/part #dev see you later")
    await next_is(
        alice,
        "[#dev] *** alice left #dev (see you later)",
        "[#lobby] *** Now talking in #lobby.",
    )
    await next_is(bob, "[#dev] *** alice left #dev (see you later)")
    await alice.send("still here")
    await next_is(alice, "[#lobby] <alice> still here")

    await alice.send("/part #dev")
    await next_is(alice, "!!! You are not in #dev; /join it first.")
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 2 in #dev: alice, bob")
    await alice.send("/part #dev " + "r" * 250)  # reasons are cut to 200 characters
    await wait_for(bob, "[#dev] *** alice left #dev (" + "r" * 200 + ")")
    await wait_for(alice, "[#lobby] *** Now talking in #lobby.")
    await alice.send("/part #nowhere")
    await next_is(alice, "!!! You are not in #nowhere; /join it first.")

    # Parting a room that is not the active one leaves the active room alone.
    await alice.send("/join #a")
    await wait_for(alice, "[#a] *** 1 in #a: alice")
    await alice.send("/join #b")
    await wait_for(alice, "[#b] *** 1 in #b: alice")
    await alice.send("/part #a")
    await next_is(alice, "[#a] *** alice left #a")
    await alice.send("in b")
    await next_is(alice, "[#b] <alice> in b")
    await alice.send("/part #b")
    await next_is(alice, "[#b] *** alice left #b", "[#lobby] *** Now talking in #lobby.")

    # Parting the last room: nothing is active any more.
    await alice.send("/part")
    await next_is(
        alice, "[#lobby] *** alice left #lobby", "*** You are in no room now; /join #room to talk."
    )
    await wait_for(bob, "[#lobby] *** alice left #lobby")
    for line in ("hello?", "/me waves", "/part", "/who", "/topic", "/topic new topic"):
        await alice.send(line)
        await next_is(alice, NO_ACTIVE_ROOM)
    await alice.send("/join #lobby")
    await next_is(alice, "[#lobby] *** alice joined #lobby")
    await alice.close()
    await bob.close()


async def test_json_part(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await bob.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await bob.expect("join", room="#dev", nick="alice")

    await alice.send({"type": "part", "room": "#dev", "reason": "see you later"})
    await alice.next_is("part", room="#dev", nick="alice", text="see you later")
    await alice.next_is("notice", room="#lobby", text="Now talking in #lobby.")
    await bob.next_is("part", room="#dev", nick="alice", text="see you later")

    await alice.send({"type": "part", "room": "#dev"})
    await alice.next_is("error", code="not_in_room")
    await alice.send({"type": "part", "room": "#bad!"})
    await alice.next_is("error", code="room_invalid")

    await alice.send({"type": "part"})
    await alice.next_is("part", room="#lobby", nick="alice", text="")
    await alice.next_is("notice", room=None)
    for command in (
        {"type": "say", "text": "hello?"},
        {"type": "me", "text": "waves"},
        {"type": "part"},
        {"type": "who"},
        {"type": "topic"},
    ):
        await alice.send(command)
        await alice.next_is("error", code="no_active_room")
    await alice.close()
    await bob.close()


# --- rooms and who ------------------------------------------------------------------------


async def test_text_rooms(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 1 in #dev: alice")
    await alice.send("/topic Dev talk")
    await next_is(alice, "[#dev] *** alice set the topic: Dev talk")

    await bob.send("/rooms")
    await next_is(  # largest first (issue 10)
        bob, "*** 2 rooms:", "***   #lobby (2 members)", "***   #dev (1 member): Dev talk"
    )
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 2 in #dev: alice, bob")
    await bob.send("/list")
    await next_is(
        bob, "*** 2 rooms:", "***   #dev (2 members): Dev talk", "***   #lobby (2 members)"
    )
    # An empty room disappears (the lobby stays, even empty).
    await alice.send("/part #dev")
    await bob.send("/part #dev")
    await wait_for(bob, "[#lobby] *** Now talking in #lobby.")
    await bob.send("/part #lobby")
    await wait_for(bob, "*** You are in no room now; /join #room to talk.")
    await alice.send("/part #lobby")
    await wait_for(alice, "*** You are in no room now; /join #room to talk.")
    await bob.send("/rooms")
    await next_is(bob, "*** 1 room:", "***   #lobby (0 members)")
    await alice.close()
    await bob.close()


async def test_json_rooms(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.call({"type": "topic", "text": "Dev talk"}, "topic", nick="alice")
    await bob.send({"type": "rooms"})
    await bob.expect("rooms")
    assert bob.objects[-1]["rooms"] == [  # largest first (issue 10)
        {"room": "#lobby", "members": 2, "topic": ""},
        {"room": "#dev", "members": 1, "topic": "Dev talk"},
    ]
    assert (bob.objects[-1]["total"], bob.objects[-1]["offset"]) == (2, 0)
    await alice.close()
    await bob.close()


async def test_text_who(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")
    await alice.send("/who")
    await next_is(alice, "[#lobby] *** 2 in #lobby: alice, bob")
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 1 in #dev: alice")
    await bob.send("/who #dev")  # a room bob is not in
    await next_is(bob, "[#dev] *** 1 in #dev: alice")
    await bob.send("/names #DEV")
    await next_is(bob, "[#dev] *** 1 in #dev: alice")
    await bob.send("/who #nope")
    await next_is(bob, "!!! There is no room #nope.")
    await bob.send("/who #bad!")
    assert (await bob.line()).startswith("!!! Invalid room name '#bad!'")
    await bob.send("/who #a #b")
    await next_is(bob, "!!! Usage: /who [#room]")
    await alice.close()
    await bob.close()


async def test_json_who(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await alice.send({"type": "who"})
    await alice.next_is("who", room="#lobby", members=("alice", "bob"))
    assert alice.objects[-1]["members"] == ["alice", "bob"]
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await bob.send({"type": "who", "room": "#dev"})
    await bob.next_is("who", room="#dev", members=("alice",))
    await bob.send({"type": "who", "room": "#nope"})
    await bob.next_is("error", code="no_such_room", text="There is no room #nope.")
    await alice.close()
    await bob.close()


# --- topic --------------------------------------------------------------------------------


async def test_text_topic(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    carol = await text_user(chat.port, "carol")
    await alice.send("/topic")
    await wait_for(alice, "[#lobby] *** No topic is set")
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 1 in #dev: alice")
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 2 in #dev: alice, bob")
    await wait_for(alice, "[#dev] *** bob joined #dev")

    await alice.send("/topic Release on Friday")
    await next_is(alice, "[#dev] *** alice set the topic: Release on Friday")
    await next_is(bob, "[#dev] *** alice set the topic: Release on Friday")
    await alice.send("/topic")
    await next_is(alice, "[#dev] *** Topic: Release on Friday")
    await carol.send("/topic #dev")  # a room carol is not in can be looked at...
    await next_is(carol, "[#dev] *** Topic: Release on Friday")
    await carol.send("/topic #dev hijacked")  # ...but not changed
    await next_is(carol, "!!! You are not in #dev; /join it first.")
    await carol.send("/topic #nope")
    await next_is(carol, "!!! There is no room #nope.")

    # From another active room, naming the room.
    await alice.send("/join #lobby")
    await next_is(alice, "[#lobby] *** Now talking in #lobby.")
    await alice.send("/topic #dev Release on Monday")
    await next_is(alice, "[#dev] *** alice set the topic: Release on Monday")
    await next_is(bob, "[#dev] *** alice set the topic: Release on Monday")

    await alice.send("/topic #dev " + "x" * 301)
    await next_is(alice, "!!! Topic is too long (301 characters, at most 300).")
    await alice.send("/topic #dev " + "t" * 300)
    await next_is(alice, "[#dev] *** alice set the topic: " + "t" * 300)
    await alice.send("/topic #dev Release on Monday")
    await next_is(alice, "[#dev] *** alice set the topic: Release on Monday")

    # The topic is shown to whoever joins, between the join and the member list.
    await carol.send("/join #dev")
    await next_is(
        carol,
        "[#dev] *** carol joined #dev",
        "[#dev] *** Topic: Release on Monday",
        "[#dev] *** 3 in #dev: alice, bob, carol",
    )
    # Members of other rooms only were never told about #dev's topic: carol saw nothing
    # before her own join (checked by next_is above, since she read every line in order).
    await alice.close()
    await bob.close()
    await carol.close()


async def test_json_topic(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.send({"type": "topic"})
    await alice.expect("topic", room="#lobby", nick=None, text="")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.send({"type": "topic", "room": "#dev", "text": "Release on Friday"})
    await alice.next_is("topic", room="#dev", nick="alice", text="Release on Friday")
    await bob.send({"type": "topic", "room": "#dev"})
    await bob.expect("topic", room="#dev", nick=None, text="Release on Friday")
    await bob.send({"type": "topic", "room": "#dev", "text": "hijacked"})
    await bob.next_is("error", code="not_in_room")
    await alice.send({"type": "topic", "text": "y" * 301})
    await alice.next_is("error", code="topic_too_long")
    await bob.send({"type": "join", "room": "#dev"})
    await bob.next_is("join", room="#dev", nick="bob")
    await bob.next_is("topic", room="#dev", nick=None, text="Release on Friday")
    await bob.next_is("who", room="#dev", members=("alice", "bob"))
    await alice.next_is("join", room="#dev", nick="bob")
    await bob.send({"type": "topic", "text": "Release on Monday"})
    await bob.next_is("topic", room="#dev", nick="bob", text="Release on Monday")
    await alice.next_is("topic", room="#dev", nick="bob", text="Release on Monday")
    await bob.send({"type": "topic", "text": ""})  # JSON "text": "" clears the topic
    await bob.next_is("topic", room="#dev", nick="bob", text="")
    await alice.next_is("topic", room="#dev", nick="bob", text="")
    await alice.send({"type": "rooms"})
    await alice.next_is("rooms")
    assert alice.objects[-1]["rooms"][0] == {"room": "#dev", "members": 2, "topic": ""}
    await alice.close()
    await bob.close()


# --- me and msg ---------------------------------------------------------------------------


async def test_text_me(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")
    await alice.send("/me waves at everyone")
    await next_is(alice, "[#lobby] * alice waves at everyone")
    await next_is(bob, "[#lobby] * alice waves at everyone")
    await alice.send("/me")
    await next_is(alice, "!!! Usage: /me [#room] action")
    await alice.close()
    await bob.close()


async def test_json_me(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await alice.send({"type": "me", "text": "waves"})
    await alice.next_is("action", room="#lobby", nick="alice", text="waves")
    await bob.next_is("action", room="#lobby", nick="alice", text="waves")
    await alice.send({"type": "me", "room": "#dev", "text": "waves"})
    await alice.next_is("error", code="not_in_room")
    await alice.send({"type": "me"})
    await alice.next_is("error", code="bad_arguments")
    await alice.close()
    await bob.close()


async def test_text_msg(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")
    await alice.send("/msg bob psst, over here")
    await next_is(alice, "[private to bob] <alice> psst, over here")
    await next_is(bob, "[private] <alice> psst, over here")
    await alice.send("/msg BOB case does not matter")
    await next_is(alice, "[private to bob] <alice> case does not matter")
    await next_is(bob, "[private] <alice> case does not matter")
    await bob.send("/query alice alias works")
    await next_is(alice, "[private] <bob> alias works")

    await alice.send("/msg zed hello")
    await next_is(alice, "!!! Nobody called 'zed' is online.")
    await alice.send("/msg bob")
    await next_is(alice, "!!! Usage: /msg nick text")
    await alice.send("/msg")
    await next_is(alice, "!!! Usage: /msg nick text")

    # A message to oneself arrives exactly once.
    await alice.send("/msg alice note to self")
    await alice.send("/ping after-note")
    await next_is(alice, "[private] <alice> note to self", "*** pong after-note")
    await alice.close()
    await bob.close()


async def test_json_msg(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await alice.send({"type": "msg", "nick": "Bob", "text": "psst"})
    await alice.next_is("private", nick="alice", target="bob", echo=True, text="psst")
    await bob.next_is("private", nick="alice", target="bob", echo=False, text="psst")
    assert bob.objects[-1]["room"] is None
    await alice.send({"type": "msg", "nick": "zed", "text": "hello"})
    await alice.next_is("error", code="no_such_nick")
    await alice.send({"type": "msg", "nick": "bob", "text": "  "})
    await alice.next_is("error", code="bad_arguments")
    await alice.send({"type": "msg", "nick": "alice", "text": "note to self"})
    await alice.send({"type": "ping", "token": "after-note"})
    await alice.next_is("private", nick="alice", target="alice", echo=False, text="note to self")
    await alice.next_is("pong", text="after-note")
    await alice.close()
    await bob.close()


# --- nick ---------------------------------------------------------------------------------


async def test_text_nick(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    carol = await text_user(chat.port, "carol")
    dave = await text_user(chat.port, "dave")
    # alice and bob share #lobby and #dev; carol shares only #lobby; dave shares nothing.
    await alice.send("/join #dev")
    await wait_for(alice, "[#dev] *** 1 in #dev: alice")
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 2 in #dev: alice, bob")
    await dave.send("/join #other")
    await wait_for(dave, "[#other] *** 1 in #other: dave")
    await dave.send("/part #lobby")
    await wait_for(dave, "[#lobby] *** dave left #lobby")
    await wait_for(carol, "[#lobby] *** dave left #lobby")
    await wait_for(bob, "[#lobby] *** dave left #lobby")

    await alice.send("/nick alicia")
    await alice.send("/join #lobby")
    await alice.send("marker one")
    announced = "*** alice is now known as alicia"
    for client in (alice, bob, carol):
        seen = await wait_for(client, "[#lobby] <alicia> marker one")
        assert seen.count(announced) == 1, (client, seen)
    await alice.send("/join #other")
    assert await wait_for(dave, "[#other] *** alicia joined #other") == [
        "[#other] *** alicia joined #other"
    ]

    # Case change of one's own nickname is allowed and announced.
    await alice.send("/nick Alicia")
    await next_is(bob, "*** alicia is now known as Alicia")
    await bob.send("/who #dev")
    await wait_for(bob, "[#dev] *** 2 in #dev: Alicia, bob")

    # Refusals.
    await alice.send("/nick BOB")
    await wait_for(alice, "!!! The nickname 'BOB' is already in use; choose another.")
    await alice.send("/nick b0b")
    await wait_for(
        alice, "!!! The nickname 'b0b' looks too much like 'bob', who is online; choose another."
    )
    await alice.send("/nick 9lives")
    await wait_for(alice, "!!! A nickname must start with a letter (a-z, A-Z).")
    await alice.send("/nick admin")
    await wait_for(alice, "!!! The nickname 'admin' is reserved.")
    await alice.send("/nick a b")
    await wait_for(alice, "!!! Usage: /nick newnick")

    # The old nickname is free again; messages to it go nowhere.
    await bob.send("/msg alice hello?")
    await wait_for(bob, "!!! Nobody called 'alice' is online.")
    again = await text_user(chat.port, "alice")
    for client in (alice, bob, carol, dave, again):
        await client.close()


async def test_json_nick(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await bob.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.expect("join", room="#dev", nick="bob")

    await alice.send({"type": "nick", "nick": "alicia"})
    await alice.send({"type": "say", "room": "#lobby", "text": "marker"})
    for client in (alice, bob):
        seen = await client.until("message", text="marker")
        assert [(e.type, e.nick, getattr(e, "new_nick", None)) for e in seen] == [
            ("nick", "alice", "alicia"),
            ("message", "alicia", None),
        ]
        assert seen[0].room is None
    await alice.send({"type": "nick", "nick": "ALICIA"})
    await alice.next_is("nick", nick="alicia", new_nick="ALICIA")
    await alice.send({"type": "nick", "nick": "Bob"})
    await alice.next_is("error", code="nick_taken")
    await alice.send({"type": "nick", "nick": "B0B"})
    await alice.next_is("error", code="nick_confusable")
    await alice.send({"type": "nick", "nick": "root"})
    await alice.next_is("error", code="nick_reserved")
    await alice.send({"type": "nick", "nick": "x y"})
    await alice.next_is("error", code="nick_invalid")
    await alice.close()
    await bob.close()


# --- quit ---------------------------------------------------------------------------------


async def test_text_quit(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    carol = await text_user(chat.port, "carol")
    await alice.send("/join #dev")  # alice and bob share two rooms
    await wait_for(alice, "[#dev] *** 1 in #dev: alice")
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 2 in #dev: alice, bob")
    await wait_for(alice, "[#dev] *** bob joined #dev")
    await alice.send("/quit gone fishing")
    assert await alice.eof() == ["*** Closing connection: Goodbye."]
    await next_is(bob, "*** alice quit (gone fishing)")  # once, though they shared two rooms
    await wait_for(carol, "*** alice quit (gone fishing)")
    await carol.send("marker")
    await next_is(bob, "[#lobby] <carol> marker")
    await bob.send("/who")
    await next_is(bob, "[#dev] *** 1 in #dev: bob")
    await bob.send("/quit")
    await next_is(carol, "[#lobby] <carol> marker", "*** bob quit (Quit)")
    await carol.close()


async def test_json_quit(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    carol = await text_user(chat.port, "carol")
    await alice.expect("join", nick="carol")
    await alice.send({"type": "quit", "reason": "gone fishing"})
    tail = await alice.eof()
    assert [(e.type, getattr(e, "code", None), e.text) for e in tail] == [
        ("bye", "quit", "Goodbye.")
    ]
    await bob.expect("quit", nick="alice", text="gone fishing", room=None)
    await wait_for(carol, "*** alice quit (gone fishing)")
    await bob.close()
    await carol.close()


# --- help, ping, unknown commands, literal slash, empty lines --------------------------------


async def test_text_help(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    await alice.send("/help")
    lines = await wait_for(alice, "*** Start a line with // to say something that begins with /.")
    assert lines[0] == "*** Commands (a line not starting with / is said in your active room):"
    typed = [spec for spec in COMMANDS if spec.typed]
    assert len(lines) == len(typed) + 2
    for spec, line in zip(typed, lines[1:-1], strict=True):
        assert line.startswith(f"***   /{spec.name}"), line
    await alice.send("/help join")
    await next_is(
        alice, "*** /join #room: Join a room (created on first use) and make it your active room."
    )
    await alice.send("/help /MSG")
    await next_is(alice, "*** /msg nick text: Send a private message that only nick sees.")
    await alice.send("/help list")
    await next_is(alice, f"*** /rooms [+N] [text]: {lookup('rooms', typed=True).help}")
    await alice.send("/help frob")
    await next_is(alice, "!!! No command /frob; type /help for the list.")
    await roundtrip(alice, "after-help")
    await alice.close()


async def test_json_help(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    await alice.send({"type": "help"})
    notice = await alice.next_is("notice", room=None)
    for spec in COMMANDS:
        assert spec.usage in notice.text or not spec.typed
    await alice.send({"type": "help", "command": "join"})
    await alice.next_is("notice", text=f"/join #room: {lookup('join', typed=True).help}")
    await alice.send({"type": "help", "command": "frob"})
    await alice.next_is("error", code="unknown_command")
    await alice.close()


async def test_text_ping(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    await alice.send("/ping abc 123")
    await next_is(alice, "*** pong abc 123")
    await alice.send("/ping")
    await next_is(alice, "*** pong")
    await alice.close()


async def test_json_ping_and_pong(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    await alice.send({"type": "ping", "token": "abc"})
    await alice.next_is("pong", text="abc")
    await alice.send({"type": "ping"})
    await alice.next_is("pong", text="")
    await alice.send({"type": "pong", "token": "unsolicited"})  # answered by nothing
    await alice.send({"type": "ping", "token": "marker"})
    await alice.next_is("pong", text="marker")
    await alice.close()


async def test_json_server_ping_keepalive(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, ping_interval=0.2, ping_timeout=0.4)
    alice = await json_user(server.port, "alice")
    text_user_ = await text_user(server.port, "tex")  # text clients are never pinged
    ping = await alice.expect("ping")
    assert ping.text.isdigit()
    assert set(COMMON_FIELDS) <= set(alice.objects[-1])
    await alice.send({"type": "pong", "token": ping.text})
    await alice.expect("ping")  # answered, so pinged again later instead of dropped
    tail = await alice.eof()  # not answered this time
    assert [(e.type, getattr(e, "code", None)) for e in tail] == [("bye", "ping_timeout")]
    await text_user_.send("/ping alive")
    await wait_for(text_user_, "*** pong alive")
    assert not any(line.startswith("*** ping ") for line in text_user_.seen)
    await text_user_.close()


async def test_text_unknown_command(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    await alice.send("/frobnicate now")
    await next_is(alice, "!!! Unknown command /frobnicate; type /help for the list.")
    await roundtrip(alice, "still-open")
    await alice.close()


async def test_json_unknown_type_and_bad_json(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    await alice.send({"type": "frobnicate"})
    await alice.next_is(
        "error", code="unknown_command", text="Unknown command type 'frobnicate'; see protocol.md."
    )
    await alice.send_raw(b"this is not json\n")
    await alice.next_is("error", code="bad_json", text="Line is not valid JSON.")
    await alice.send_raw(b"[1, 2, 3]\n")
    await alice.next_is("error", code="bad_json", text="Each line must be a JSON object.")
    await alice.send_raw(b'{"text": "no type"}\n')
    await alice.next_is("error", code="bad_json")
    await alice.send_raw(b'{"type": 7}\n')
    await alice.next_is("error", code="bad_json")
    await alice.send({"type": "say", "text": 5})
    await alice.next_is("error", code="bad_arguments", text="Field 'text' must be a string.")
    await alice.send({"type": "say", "room": "#elsewhere", "text": "hi"})
    await alice.next_is(
        "error", code="not_in_room", text="You are not in #elsewhere; /join it first."
    )
    await alice.send({"type": "say", "room": "#bad!", "text": "hi"})
    await alice.next_is("error", code="room_invalid")
    # Blank lines are ignored; a blank say is refused, as a blank /say is (issue 9).
    await alice.send_raw(b"\n   \n")
    await alice.send({"type": "say", "text": "   "})
    await alice.next_is("error", code="bad_arguments", command="say")
    await alice.send({"type": "ping", "token": "still-open"})
    await alice.next_is("pong", text="still-open")
    await alice.close()


async def test_text_literal_slash_and_empty_lines(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    await wait_for(alice, "[#lobby] *** bob joined #lobby")
    await alice.send("//shrug")
    await next_is(alice, "[#lobby] <alice> /shrug")
    await next_is(bob, "[#lobby] <alice> /shrug")
    await alice.send("///etc/passwd is a path")
    await next_is(alice, "[#lobby] <alice> //etc/passwd is a path")
    await alice.send_raw(b"\r\n\n   \r\n\t\r\n")
    await alice.send("after the blanks")
    await next_is(alice, "[#lobby] <alice> after the blanks")
    await next_is(
        bob, "[#lobby] <alice> //etc/passwd is a path", "[#lobby] <alice> after the blanks"
    )
    await alice.close()
    await bob.close()


# --- isolation ----------------------------------------------------------------------------


async def test_room_message_reaches_exactly_its_members(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")  # #lobby, #dev, #other
    bob = await text_user(chat.port, "bob")  # #lobby, #dev
    carol = await json_user(chat.port, "carol")  # #other only
    dave = await text_user(chat.port, "dave")  # #lobby only
    await carol.call({"type": "join", "room": "#other"}, "who", room="#other")
    await carol.call({"type": "part", "room": "#lobby"}, "part", nick="carol")
    await bob.send("/join #dev")
    await wait_for(bob, "[#dev] *** 1 in #dev: bob")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.call({"type": "join", "room": "#other"}, "who", room="#other")
    await carol.expect("join", room="#other", nick="alice")
    await wait_for(dave, "[#lobby] *** carol left #lobby")

    carol_start = len(carol.events)
    await alice.send({"type": "say", "room": "#dev", "text": "secret plan"})
    await wait_for(bob, "[#dev] <alice> secret plan")
    await alice.expect("message", room="#dev", text="secret plan")
    await alice.send({"type": "say", "room": "#other", "text": "marker for carol"})
    await alice.send({"type": "say", "room": "#lobby", "text": "marker for dave"})

    await carol.expect("message", text="marker for carol")
    assert says(carol.events[carol_start:]) == [("message", "#other", "alice", "marker for carol")]
    assert await wait_for(dave, "[#lobby] <alice> marker for dave") == [
        "[#lobby] <alice> marker for dave"
    ]
    assert await wait_for(bob, "[#lobby] <alice> marker for dave") == [
        "[#lobby] <alice> marker for dave"
    ]
    for client in (alice, bob, carol, dave):
        await client.close()


async def test_private_message_reaches_only_its_target(chat: ChatServer) -> None:
    alice = await text_user(chat.port, "alice")
    bob = await text_user(chat.port, "bob")
    carol = await json_user(chat.port, "carol")
    dave = await text_user(chat.port, "dave")
    await wait_for(alice, "[#lobby] *** dave joined #lobby")
    await wait_for(bob, "[#lobby] *** dave joined #lobby")
    await carol.expect("join", nick="dave")

    carol_start = len(carol.events)
    await alice.send("/msg bob the password is swordfish")
    await next_is(bob, "[private] <alice> the password is swordfish")
    await next_is(alice, "[private to bob] <alice> the password is swordfish")
    await alice.send("marker")
    await next_is(alice, "[#lobby] <alice> marker")
    await next_is(bob, "[#lobby] <alice> marker")
    assert await wait_for(dave, "[#lobby] <alice> marker") == ["[#lobby] <alice> marker"]
    await carol.expect("message", text="marker")
    assert says(carol.events[carol_start:]) == [("message", "#lobby", "alice", "marker")]
    for client in (alice, bob, carol, dave):
        await client.close()


# --- the JSON event shape -------------------------------------------------------------------


def check_event_shape(obj: dict[str, Any]) -> None:
    for name in COMMON_FIELDS:
        assert name in obj, (name, obj)
    assert isinstance(obj["type"], str)
    assert isinstance(obj["id"], str)
    assert obj["id"]
    assert isinstance(obj["ts"], float | int)
    assert abs(obj["ts"] - time.time()) < 300
    assert obj["room"] is None or isinstance(obj["room"], str)
    assert obj["nick"] is None or isinstance(obj["nick"], str)
    assert isinstance(obj["text"], str)
    if obj["type"] in {"error", "bye"}:
        assert isinstance(obj.get("code"), str)
        assert obj["code"]


async def test_every_json_event_carries_the_common_fields(chat: ChatServer) -> None:
    alice = await json_user(chat.port, "alice")
    bob = await json_user(chat.port, "bob")
    await alice.expect("join", nick="bob")
    await alice.call({"type": "say", "text": "hi"}, "message")
    await alice.call({"type": "me", "text": "waves"}, "action")
    await alice.call({"type": "msg", "nick": "bob", "text": "psst"}, "private", echo=True)
    await bob.send({"type": "msg", "nick": "alice", "text": "psst back"})
    await alice.expect("private", echo=False)
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.call({"type": "topic", "text": "Dev"}, "topic", nick="alice")
    await alice.call({"type": "topic"}, "topic", nick=None)
    await alice.call({"type": "rooms"}, "rooms")
    await alice.call({"type": "help"}, "notice")
    await alice.call({"type": "frob"}, "error", code="unknown_command")
    await alice.call({"type": "ping", "token": "t"}, "pong")
    await bob.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await bob.send({"type": "part", "room": "#dev", "reason": "bbl"})
    await alice.expect("part", nick="bob")
    await bob.send({"type": "nick", "nick": "robert"})
    await alice.expect("nick", new_nick="robert")
    await bob.send({"type": "quit", "reason": "done"})
    await alice.expect("quit", nick="robert")
    await alice.send({"type": "quit"})
    await alice.eof()

    types = {obj["type"] for obj in alice.objects}
    assert types == {
        "hello", "welcome", "join", "who", "message", "action", "private", "topic", "rooms",
        "notice", "error", "pong", "part", "nick", "quit", "bye",
    }  # fmt: skip
    for obj in alice.objects:
        check_event_shape(obj)
    for raw in alice.raw_lines:
        assert raw.endswith(b"}\n")
        assert b"\r" not in raw
    ids = [obj["id"] for obj in alice.objects]
    assert len(ids) == len(set(ids))


# --- history ------------------------------------------------------------------------------


async def test_history_replays_last_messages_with_original_timestamps(
    start_server: StartServer,
) -> None:
    server = await start_server(max_per_ip=0, rate=0, history=3)
    alice = await json_user(server.port, "alice")
    bob = await text_user(server.port, "bob")
    await alice.call({"type": "join", "room": "#h"}, "who", room="#h")

    live: dict[str, Event] = {}

    async def say(text: str, kind: str = "say") -> None:
        live[text] = await alice.call(
            {"type": kind, "room": "#h", "text": text}, "message" if kind == "say" else "action"
        )

    await say("m1")
    await bob.send("/join #h")  # join/part noise must not be replayed
    await wait_for(bob, "[#h] *** 2 in #h: alice, bob")
    await say("m2")
    await bob.send("/part #h")
    await wait_for(bob, "[#h] *** bob left #h")
    await say("m3", "me")
    await alice.call({"type": "topic", "room": "#h", "text": "History"}, "topic", nick="alice")
    await bob.send("/nick bobby")
    await wait_for(bob, "*** bob is now known as bobby")
    await say("m4")

    carol = await json_user(server.port, "carol")
    await carol.send({"type": "join", "room": "#h"})
    await carol.next_is("join", room="#h", nick="carol")
    await carol.next_is("topic", room="#h", nick=None, text="History")
    await carol.next_is("who", room="#h", members=("alice", "carol"))
    replayed = [await carol.event() for _ in range(3)]
    await say("m5")
    await carol.next_is("message", room="#h", nick="alice", text="m5", history=False)
    assert [(e.type, e.nick, e.text, getattr(e, "history", None)) for e in replayed] == [
        ("message", "alice", "m2", True),
        ("action", "alice", "m3", True),
        ("message", "alice", "m4", True),
    ]
    for event in replayed:
        assert event.ts == live[event.text].ts  # the original time...
        assert event.id == live[event.text].id  # ...and the original id (protocol.md)
        assert event.room == "#h"
    for obj in carol.objects[-4:-1]:
        assert obj["history"] is True
        check_event_shape(obj)

    # The text dialect marks a replay with its original time, in UTC.
    dave = await text_user(server.port, "dave")
    await dave.send("/join #h")
    await next_is(
        dave,
        "[#h] *** dave joined #h",
        "[#h] *** Topic: History",
        "[#h] *** 3 in #h: alice, carol, dave",
        f"[#h] (history {utc_minute(live['m3'].ts)}) * alice m3",
        f"[#h] (history {utc_minute(live['m4'].ts)}) <alice> m4",
        f"[#h] (history {utc_minute(live['m5'].ts)}) <alice> m5",
    )
    await say("m6")
    await next_is(dave, "[#h] <alice> m6")
    for client in (alice, bob, carol, dave):
        await client.close()


async def test_lobby_history_at_registration(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, history=3)
    alice = await text_user(server.port, "alice")
    for n in range(1, 5):
        await alice.send(f"lobby {n}")
        await wait_for(alice, f"[#lobby] <alice> lobby {n}")
    bob = await LineClient.connect(server.port)
    await next_is(bob, *GREETING)
    await bob.send("bob")
    lines = [await bob.line() for _ in range(6)]
    assert lines[:3] == [
        "*** Welcome, bob! Type /help for the commands.",
        "[#lobby] *** bob joined #lobby",
        "[#lobby] *** 2 in #lobby: alice, bob",
    ]
    for n, line in zip((2, 3, 4), lines[3:], strict=True):
        assert re.fullmatch(
            rf"\[#lobby\] \(history \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\) <alice> lobby {n}", line
        ), line
    await alice.send("live")
    await next_is(bob, "[#lobby] <alice> live")

    jay = await RawJsonClient.connect(server.port, nick="jay")
    assert isinstance(jay, RawJsonClient)
    replay = [await jay.event() for _ in range(3)]
    assert [(e.text, getattr(e, "history", None)) for e in replay] == [
        ("lobby 3", True),
        ("lobby 4", True),
        ("live", True),
    ]
    for client in (alice, bob, jay):
        await client.close()


async def test_history_zero_turns_history_off(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, history=0)
    alice = await text_user(server.port, "alice")
    await alice.send("/join #h")
    await alice.send("in h")
    await alice.send("/join #lobby")
    await alice.send("in lobby")
    await wait_for(alice, "[#lobby] <alice> in lobby")
    bob = await text_user(server.port, "bob")  # registered: #lobby joined, no replay
    await alice.send("marker 1")
    await next_is(bob, "[#lobby] <alice> marker 1")
    await bob.send("/join #h")
    await next_is(bob, "[#h] *** bob joined #h", "[#h] *** 2 in #h: alice, bob")
    await alice.send("/join #h")
    await alice.send("marker 2")
    await next_is(bob, "[#h] <alice> marker 2")
    await alice.close()
    await bob.close()


# --- telnet -------------------------------------------------------------------------------

IAC = b"\xff"
# What a telnet client may send unprompted: DO SUPPRESS-GO-AHEAD, WILL TERMINAL-TYPE,
# WILL NAWS, WILL TERMINAL-SPEED, WILL LFLOW, WILL LINEMODE, WILL NEW-ENVIRON, DO STATUS.
TELNET_OPENING = (
    b"\xff\xfd\x03\xff\xfb\x18\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x21\xff\xfb\x22\xff\xfb\x27"
    b"\xff\xfd\x05"
)
NAWS_80x24 = b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0"
TTYPE_XTERM = b"\xff\xfa\x18\x00XTERM\xff\xf0"


class TelnetSocket:
    """Bytes in, bytes out: what a telnet client sees, checking every reply line's ending."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()

    @classmethod
    async def connect(cls, port: int) -> TelnetSocket:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> str:
        async with asyncio.timeout(WAIT):
            raw = await self.reader.readuntil(b"\r\n")
        self.received += raw
        assert raw.count(b"\n") == 1, raw  # no bare \n inside: every line ends in \r\n
        assert IAC not in raw
        return raw[:-2].decode()

    async def expect(self, line: str) -> None:
        async with asyncio.timeout(WAIT):
            while await self.line() != line:
                pass


async def test_telnet_session(chat: ChatServer) -> None:
    bob = await text_user(chat.port, "bob")
    tel = await TelnetSocket.connect(chat.port)
    await tel.send(TELNET_OPENING)
    assert [await tel.line(), await tel.line()] == GREETING
    await tel.send(NAWS_80x24 + TTYPE_XTERM + b"tel\xff\xfb\x01net\r\n")
    assert await tel.line() == "*** Welcome, telnet! Type /help for the commands."
    assert await tel.line() == "[#lobby] *** telnet joined #lobby"
    assert await tel.line() == "[#lobby] *** 2 in #lobby: bob, telnet"
    await wait_for(bob, "[#lobby] *** telnet joined #lobby")

    # Negotiation inside a line: IAC NOP, IAC DONT ECHO.
    await tel.send(b"hello \xff\xf1wor\xff\xfe\x01ld\r\n")
    assert await tel.line() == "[#lobby] <telnet> hello world"
    await next_is(bob, "[#lobby] <telnet> hello world")

    # Character at a time, as telnet does in character mode.
    for byte in b"/who\r\n":
        await tel.send(bytes([byte]))
    assert await tel.line() == "[#lobby] *** 2 in #lobby: bob, telnet"

    # A multi-line reply: every line ends in \r\n.
    await tel.send(b"/help\r\n")
    await tel.expect("*** Start a line with // to say something that begins with /.")

    await tel.send(b"/quit\r\n")
    assert await tel.line() == "*** Closing connection: Goodbye."
    async with asyncio.timeout(WAIT):
        assert await tel.reader.read() == b""
    assert tel.received.endswith(b"\r\n")
    tel.writer.close()
    await wait_for(bob, "*** telnet quit (Quit)")
    await bob.close()


async def test_telnet_cr_nul_ends_a_line(chat: ChatServer) -> None:
    """Telnet in character mode sends Return as CR NUL (RFC 854); that ends a line too."""
    bob = await text_user(chat.port, "bob")
    tel = await TelnetSocket.connect(chat.port)
    await tel.send(TELNET_OPENING)
    assert [await tel.line(), await tel.line()] == GREETING
    await tel.send(b"telnet\r\n")
    assert await tel.line() == "*** Welcome, telnet! Type /help for the commands."
    await wait_for(bob, "[#lobby] *** telnet joined #lobby")
    await tel.send(b"first\r\0")
    await tel.send(b"second\r\n")
    await next_is(bob, "[#lobby] <telnet> first", "[#lobby] <telnet> second")
    tel.writer.close()
    await bob.close()


# --- chat-server as a process ---------------------------------------------------------------


def chat_server_script() -> str:
    script = Path(sys.executable).parent / "chat-server"
    if script.exists():
        return str(script)
    found = shutil.which("chat-server")
    if found is None:
        pytest.fail("the chat-server console script is not installed (pip install -e .)")
    return found


class ServerProcess:
    """A running ``chat-server``; its stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def _wait_listening(self) -> None:
        assert self.proc.stderr is not None
        async with asyncio.timeout(15):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    pytest.fail(f"chat-server exited before listening: {self.log}")
                self.log.append(raw.decode(errors="replace").rstrip())
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log[-1])
                if found:
                    self.port = int(found.group(1))
                    break
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


SpawnServer = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def spawn_server() -> AsyncIterator[SpawnServer]:
    started: list[ServerProcess] = []

    async def spawn(*args: str) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            chat_server_script(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = ServerProcess(proc)
        started.append(server)
        await server._wait_listening()
        return server

    yield spawn
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
        if server._drain is not None:
            server._drain.cancel()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_chat_server_shuts_down_gracefully(
    spawn_server: SpawnServer, signum: signal.Signals
) -> None:
    server = await spawn_server()
    alice = await text_user(server.port, "alice")
    bob = await text_user(server.port, "bob")
    jay = await json_user(server.port, "jay")
    await wait_for(alice, "[#lobby] *** jay joined #lobby")

    server.proc.send_signal(signum)
    for client in (alice, bob):
        lines = await client.eof()
        assert lines[-1:] == [SHUTDOWN_BYE], lines
    tail = await jay.eof()
    assert [(e.type, getattr(e, "code", None)) for e in tail][-1] == ("bye", "server_shutdown")
    assert await server.wait(seconds=5) == 0
    assert any(f"{signum.name} received: shutting down" in line for line in server.log)
    assert any(line.endswith("stopped") for line in server.log)


async def stuck_reader_during_shutdown(server: ServerProcess) -> tuple[LineClient, LineClient]:
    """A client that stops reading while the server still owes it megabytes, and a flooder.

    The stuck client has a tiny receive buffer. The flooder says more than the kernel can
    hold on both sides plus asyncio's high-water mark (tcp_wmem's maximum is 4 MiB on
    Linux) and reads its own echo of all of it, so when this returns the server's writer
    for the stuck client is blocked in drain() and will stay blocked.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    stuck = LineClient(*await asyncio.open_connection(sock=sock))
    await stuck.register("stuck")
    flooder = await text_user(server.port, "flooder")
    chunk = "x" * 60_000

    async def flood() -> None:
        for n in range(8 * 1024 * 1024 // len(chunk)):
            await flooder.send(f"{n} {chunk}")
        await flooder.send("flood done")

    async with asyncio.timeout(30):
        sender = asyncio.create_task(flood())
        await flooder.expect(r"^\[#lobby\] <flooder> flood done$", timeout=30)
        await sender
    return stuck, flooder


STUCK_SERVER_ARGS = ("--rate", "0", "--max-line", "65536", "--send-queue", str(256 * 1024 * 1024))


async def test_chat_server_shutdown_with_a_stuck_reader_is_bounded(
    spawn_server: SpawnServer,
) -> None:
    """README: queued output is flushed for at most 5 seconds (shutdown grace), then exit 0."""
    server = await spawn_server(*STUCK_SERVER_ARGS)
    stuck, flooder = await stuck_reader_during_shutdown(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    server.proc.send_signal(signal.SIGINT)
    assert (await flooder.eof())[-1:] == [SHUTDOWN_BYE]  # a reading client is not held up
    assert await server.wait(seconds=10) == 0
    assert loop.time() - started < ServerConfig().shutdown_grace + 1.0
    stuck.writer.close()


@pytest.mark.parametrize("event_loop_choice", ["auto", "asyncio"])
async def test_chat_server_second_sigint_exits_promptly(
    spawn_server: SpawnServer, event_loop_choice: str
) -> None:
    """README: a second signal drops every connection at once. The stuck client would
    otherwise hold the shutdown for the flush grace (2 s per connection, then 2 s more)."""
    server = await spawn_server(*STUCK_SERVER_ARGS, "--loop", event_loop_choice)
    stuck, flooder = await stuck_reader_during_shutdown(server)
    server.proc.send_signal(signal.SIGINT)
    assert (await flooder.eof())[-1:] == [SHUTDOWN_BYE]  # the shutdown is under way
    loop = asyncio.get_running_loop()
    second = loop.time()
    server.proc.send_signal(signal.SIGINT)
    assert await server.wait(seconds=10) == 0
    elapsed = loop.time() - second
    stuck.writer.close()
    assert any("second SIGINT: closing every connection now" in line for line in server.log)
    assert elapsed < 1.0, f"exited {elapsed:.2f}s after the second SIGINT"


def help_blocks() -> dict[str, str]:
    """``chat-server --help`` cut into one whitespace-normalised block per option."""
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [chat_server_script(), "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
        env=env,
    )
    blocks: dict[str, str] = {}
    current = None
    for line in result.stdout.splitlines():
        found = re.match(r"^  (-[-\w]+)", line)
        if found:
            current = found.group(1)
            blocks[current] = line.strip()
        elif current and line.startswith("   "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {name: " ".join(text.split()) for name, text in blocks.items()}


def test_chat_server_help_lists_every_option_with_its_default() -> None:
    config = ServerConfig()
    limits = Limits()
    expected = {
        "--host": "all interfaces",
        "--port": str(config.port),
        "--history": str(config.history),
        "--loop": "auto",
        "--log-level": "info",
        "--max-line": str(limits.max_line),
        "--send-queue": str(limits.send_queue),
        "--rate": str(limits.rate),
        "--burst": str(limits.burst),
        "--register-timeout": str(limits.register_timeout),
        "--ping-interval": str(limits.ping_interval),
        "--ping-timeout": str(limits.ping_timeout),
        "--max-clients": str(config.max_clients),
        "--max-per-ip": str(config.max_per_ip),
        "--max-rooms": str(config.max_rooms),
        "--announce-limit": str(config.announce_limit),
        "--max-total-rooms": str(config.max_total_rooms),
        "--history-bytes": str(config.history_bytes),
        "--redis": "no cluster, this process is the whole chat",
        "--workers": "1",
        "--node-id": "host-pid-random",
        "--redis-prefix": config.redis_prefix,
    }
    blocks = help_blocks()
    assert set(expected) | {"-h", "--version", "--tls-cert", "--tls-key"} == set(blocks)
    for option, default in expected.items():
        assert f"(default: {default})" in blocks[option], blocks[option]


def test_chat_server_help_states_each_default_once() -> None:
    for option, text in help_blocks().items():
        assert text.count("(default:") <= 1, f"{option}: {text}"


async def test_rooms_above_the_announce_limit_stay_quiet(start_server: StartServer) -> None:
    """Filling a big room must not cost O(members^2) lines: joins, parts and quits are not
    announced above --announce-limit, and the joiner gets a count instead of the list."""
    server = await start_server(max_per_ip=0, announce_limit=2)
    alice = await LineClient.connect(server.port)
    await alice.register("alice")
    bob = await LineClient.connect(server.port)
    await bob.register("bob")
    await alice.expect(r"^\[#lobby\] \*\*\* bob joined #lobby$")  # 2 members: announced
    carol = await LineClient.connect(server.port)
    await carol.expect(r"Choose a nickname")
    await carol.send("carol")
    await carol.expect(r"^\[#lobby\] \*\*\* carol joined #lobby$")  # her own join, always
    await carol.expect(r"^\[#lobby\] \*\*\* 3 in #lobby: too many to list here")
    await carol.send("/who")
    await carol.expect(r"^\[#lobby\] \*\*\* 3 in #lobby: alice, bob, carol$")
    await carol.send("/quit")
    await carol.eof()
    await bob.send("marker")
    lines = await alice.lines_until(r"<bob> marker$")
    assert not any("carol" in line for line in lines), lines
    await alice.close()
    await bob.close()
