"""Integration tests over real sockets: registration, every command in both dialects, room
isolation, the JSON event shape, history, a telnet session, and ``chat-server`` as a process.

A behaviour both dialects share is one test over the ``dialect`` fixture (tests/harness.py):
it sends commands by name and expects events by kind and fields, which the text dialect
checks as exact lines and the JSON dialect as the fields of the object received. What only
one dialect can say or show is given per dialect, in tables of (text, JSON) rows.

Nothing here sleeps to synchronise: every wait is for a line or an event, with a timeout. To
prove something did *not* arrive, a later marker is sent on a path the observer does see,
and everything the observer received up to the marker is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from chat.cli import default_db_path
from chat.commands import COMMANDS, lookup
from chat.protocol import Event
from chat.server import ChatServer, ServerConfig
from chat.session import Limits
from tests.harness import (
    CHAT_SERVER,
    GREETING,
    JSON,
    PROMPT,
    TEXT,
    WAIT,
    Dialect,
    JsonClient,
    LineClient,
    ServerProcess,
    SpawnServer,
    StartServer,
    User,
)

NO_ACTIVE_ROOM = "You are not in any room; /join #room first."
NOW_IN_LOBBY = "Now talking in #lobby."
IN_NO_ROOM = "You are in no room now; /join #room to talk."
SHUTDOWN_BYE = "*** Closing connection: The server is shutting down."
COMMON_FIELDS = ("type", "id", "ts", "room", "nick", "text")


# --- helpers ----------------------------------------------------------------------------------


def utc_minute(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def says(events: list[Event]) -> list[tuple[str, str | None, str | None, str]]:
    """The chat content (messages, actions, private messages) among ``events``."""
    return [
        (e.type, e.room, e.nick, e.text)
        for e in events
        if e.type in {"message", "action", "private"}
    ]


# A refusal one dialect or both can provoke: (text line, JSON command, code, error text);
# None where a dialect cannot say it. Each is checked in the dialect under test.
Refusal = tuple[str | None, dict[str, Any] | None, str, str]


async def refused(user: User, refusals: list[Refusal], *, prompted: bool = False) -> None:
    """Send each refusal's line in ``user``'s dialect; the very next event is its error (and,
    when ``prompted``, before registration, the prompt for a nickname again)."""
    for text, obj, code, reason in refusals:
        if user.dialect.pick(text=text, json=obj) is None:
            continue
        await user.send_as(text=text, json=obj)
        await user.next_is("error", code=code, text=reason)
        if prompted:
            await user.prompted()


def invalid_room(room: str) -> str:
    return f"Invalid room name '{room}': '#' then 1 to 31 letters, digits, '_' or '-'."


@pytest.fixture
async def chat(start_server: StartServer) -> ChatServer:
    """Default settings, minus flood control and the per-IP limit: these tests send many lines."""
    return await start_server(max_per_ip=0, rate=0)


# --- registration -------------------------------------------------------------------------

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
    await client.next_is(*GREETING)
    await client.close()


@pytest.mark.parametrize(
    ("dialect", "in_hello"),
    [
        pytest.param(TEXT, False, id="text"),
        pytest.param(JSON, True, id="json-hello"),  # the hello names the nickname
        pytest.param(JSON, False, id="json-nick"),  # a nick command after the hello
    ],
)
@pytest.mark.parametrize(("nick", "code", "reason"), REFUSED_NICKS)
async def test_refused_nick_keeps_connection_open(
    chat: ChatServer, dialect: Dialect, *, in_hello: bool, nick: str, code: str, reason: str
) -> None:
    bob = await dialect.user(chat.port, "bob")  # keep a reference: it must stay online
    if in_hello:
        carol = await dialect.connect(chat.port, nick)
    else:
        carol = await dialect.connect(chat.port)
        await carol.offer_nick(nick)
    await carol.next_is("error", code=code, text=reason)
    await carol.prompted()
    await carol.offer_nick("carol")
    await carol.next_is(
        "welcome", nick="carol", text="Welcome, carol! Type /help for the commands."
    )
    await carol.next_is("join", room="#lobby", nick="carol")
    await carol.next_is("who", room="#lobby", members=["bob", "carol"])
    await bob.until("join", room="#lobby", nick="carol")
    await carol.close()
    await bob.close()


async def test_text_empty_nick_lines_are_ignored(chat: ChatServer) -> None:
    carol = await LineClient.connect(chat.port)
    await carol.next_is(*GREETING)
    await carol.send_raw(b"\r\n\n   \r\n\t\r\n")
    await carol.send("  carol  ")
    await carol.next_is("*** Welcome, carol! Type /help for the commands.")
    await carol.close()


async def test_text_too_many_refused_nicks_closes(chat: ChatServer) -> None:
    client = await LineClient.connect(chat.port)
    await client.next_is(*GREETING)
    for _ in range(9):
        await client.send("root")
        await client.next_is("!!! The nickname 'root' is reserved.", PROMPT)
    await client.send("root")
    await client.next_is(
        "!!! The nickname 'root' is reserved.",
        "*** Closing connection: 10 nicknames refused; try again later.",
    )
    assert await client.eof() == []


NOT_BEFORE_REGISTRATION = [  # (text line, JSON command): refused until a nickname is chosen
    ("/say hi", {"type": "say", "text": "hi"}),
    ("/me waves", {"type": "me", "text": "waves"}),
    ("/msg bob hi", {"type": "msg", "nick": "bob", "text": "hi"}),
    ("/join #dev", {"type": "join", "room": "#dev"}),
    ("/part", {"type": "part"}),
    ("/rooms", {"type": "rooms"}),
    ("/list", None),
    ("/who", {"type": "who"}),
    ("/topic", {"type": "topic"}),
]


async def test_commands_before_registration(chat: ChatServer, dialect: Dialect) -> None:
    bob = await dialect.user(chat.port, "bob")
    client = await dialect.connect(chat.port)
    reason = dialect.pick(
        text="Choose a nickname first: type it and press Enter.",
        json="Register first: send a nickname.",
    )
    rows = [(text, obj, "not_registered", reason) for text, obj in NOT_BEFORE_REGISTRATION]
    await refused(client, rows, prompted=True)
    # What does work before registration: help, ping, /nick.
    await client.send("help", command="ping")
    await client.next_is(
        "notice",
        room=None,
        text="/ping [token]: Ask the server for a pong, to check the connection.",
    )
    await client.send("ping", token="early")
    await client.next_is("pong", text="early")
    await client.send("nick", nick="carol")
    await client.next_is(
        "welcome", nick="carol", text="Welcome, carol! Type /help for the commands."
    )
    await client.close()
    await bob.close()


async def test_quit_before_registration(chat: ChatServer, dialect: Dialect) -> None:
    client = await dialect.connect(chat.port)
    await client.send("quit", reason="not today")
    await client.next_is("bye", code="quit", text="Goodbye.", nick=None)
    assert await client.eof() == []


async def test_json_hello_with_nick_registers(chat: ChatServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", chat.port)
    client = JsonClient(reader, writer)
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
    client = await JsonClient.connect(chat.port)
    await client.send({"type": "nick", "nick": "jay"})
    await client.next_is("welcome", nick="jay", text="Welcome, jay! Type /help for the commands.")
    await client.next_is("join", room="#lobby", nick="jay")
    await client.next_is("who", room="#lobby")
    await client.close()


async def test_json_empty_nick_is_refused(chat: ChatServer) -> None:
    client = await JsonClient.connect(chat.port)
    await client.send({"type": "nick", "nick": "  "})
    await client.next_is("error", code="nick_invalid", text="A nickname cannot be empty.")
    await client.send({"type": "nick"})
    await client.next_is("error", code="bad_arguments")
    await client.send({"type": "nick", "nick": "carol"})
    await client.next_is("welcome", nick="carol")
    await client.close()


async def test_json_hello_after_registration_is_refused(chat: ChatServer) -> None:
    client = await JsonClient.connect(chat.port, "jay")
    await client.send({"type": "hello", "nick": "other"})
    await client.next_is("error", code="already_registered")
    await client.send({"type": "hello"})
    await client.next_is("error", code="already_registered")
    await client.send({"type": "ping", "token": "still-here"})
    await client.next_is("pong", text="still-here")
    await client.close()


# --- join ---------------------------------------------------------------------------------

JOIN_REFUSALS: list[Refusal] = [
    ("/join #bad!", {"type": "join", "room": "#bad!"}, "room_invalid", invalid_room("#bad!")),
    (
        "/join #" + "x" * 32,
        {"type": "join", "room": "#" + "x" * 32},
        "room_invalid",
        invalid_room("#" + "x" * 32),
    ),
    ("/join", None, "bad_arguments", "Usage: /join #room"),
    ("/join #a #b", None, "bad_arguments", "Usage: /join #room"),
    (None, {"type": "join"}, "bad_arguments", "Field 'room' is required."),
    (None, {"type": "join", "room": 5}, "bad_arguments", "Field 'room' must be a string."),
]


async def test_join(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.until("join", room="#lobby", nick="bob")

    await alice.send("join", room="#dev")
    await alice.next_is("join", room="#dev", nick="alice")
    await alice.next_is("who", room="#dev", members=["alice"], operators=["alice"])
    await alice.send("say", text="anyone here?")  # the active room is now #dev
    await alice.next_is("message", room="#dev", nick="alice", text="anyone here?")

    # Typed command names are case-insensitive; the '#' is optional.
    await bob.send_as(text="/JOIN dev", json={"type": "join", "room": "dev"})
    await bob.next_is("join", room="#dev", nick="bob")
    await bob.next_is("who", room="#dev", members=["alice", "bob"], operators=["alice"])
    await bob.next_is("message", room="#dev", nick="alice", text="anyone here?", history=True)
    await alice.next_is("join", room="#dev", nick="bob")

    # Joining a room again only switches to it, with a notice, and tells nobody else.
    await alice.send("join", room="#LOBBY")
    await alice.next_is("notice", room="#lobby", text=NOW_IN_LOBBY)
    await bob.send_as(text="/j #Dev", json={"type": "join", "room": "#Dev"})
    await bob.next_is("notice", room="#dev", text="Now talking in #dev.")
    await alice.send("say", text="back in the lobby")
    await alice.next_is("message", room="#lobby", nick="alice", text="back in the lobby")
    seen = await bob.until("message", room="#lobby", nick="alice", text="back in the lobby")
    assert len(seen) == 1, seen

    await refused(alice, JOIN_REFUSALS)
    longest = "#" + "y" * 31
    await alice.send("join", room=longest)
    await alice.next_is("join", room=longest, nick="alice")
    await alice.next_is("who", room=longest, members=["alice"], operators=["alice"])
    await alice.send("ping", token="ok")
    await alice.next_is("pong", text="ok")
    await alice.close()
    await bob.close()


async def test_join_too_many_rooms(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, max_rooms=2)
    alice = await LineClient.connect(server.port, "alice")
    await alice.send("/join #a")
    await alice.until("[#a] *** 1 in #a: @alice")
    await alice.send("/join #b")
    await alice.next_is("!!! You are in 2 rooms already; /part one first.")
    await alice.send("/join #lobby")  # switching to a joined room is no new room
    await alice.next_is("[#lobby] *** Now talking in #lobby.")
    jay = await JsonClient.connect(server.port, "jay")
    await jay.call({"type": "join", "room": "#a"}, "who", room="#a")
    await jay.send({"type": "join", "room": "#b"})
    await jay.next_is("error", code="too_many_rooms")
    await alice.close()
    await jay.close()


async def test_messages_to_several_rooms_keep_their_order(chat: ChatServer) -> None:
    """protocol.md: events reach every client in the order the server produced them."""
    alice = await JsonClient.connect(chat.port, "alice")
    carol = await JsonClient.connect(chat.port, "carol")
    dave = await LineClient.connect(chat.port, "dave")
    for client in (alice, carol):
        for room in ("#a", "#b"):
            await client.call({"type": "join", "room": room}, "who", room=room)
    for room in ("#a", "#b"):
        await dave.send(f"/join {room}")
        await dave.until(f"[{room}] *** 3 in {room}: @alice, carol, dave")
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
    lines = await dave.until("[#b] <alice> four")
    assert lines == [f"[{room}] <alice> {text}" for room, text in said]
    for client in (alice, carol, dave):
        await client.close()


# --- part ---------------------------------------------------------------------------------


async def test_part(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.until("join", room="#lobby", nick="bob")
    await bob.send("join", room="#dev")
    await bob.until("who", room="#dev", members=["bob"], operators=["bob"])
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice", "bob"], operators=["bob"])
    await bob.until("join", room="#dev", nick="alice")

    await alice.send("part", room="#dev", reason="see you later")
    await alice.next_is("part", room="#dev", nick="alice", text="see you later")
    await alice.next_is("notice", room="#lobby", text=NOW_IN_LOBBY)
    await bob.next_is("part", room="#dev", nick="alice", text="see you later")
    await alice.send("say", text="still here")
    await alice.next_is("message", room="#lobby", nick="alice", text="still here")

    await refused(
        alice,
        [
            (
                "/part #dev",
                {"type": "part", "room": "#dev"},
                "not_in_room",
                "You are not in #dev; /join it first.",
            ),
            (
                "/part #bad!",
                {"type": "part", "room": "#bad!"},
                "room_invalid",
                invalid_room("#bad!"),
            ),
        ],
    )
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice", "bob"], operators=["bob"])
    await alice.send("part", room="#dev", reason="r" * 250)  # reasons are cut to 200 characters
    await bob.until("part", room="#dev", nick="alice", text="r" * 200)
    await alice.until("notice", room="#lobby", text=NOW_IN_LOBBY)
    await alice.send("part", room="#nowhere")
    await alice.next_is(
        "error", code="not_in_room", text="You are not in #nowhere; /join it first."
    )

    # Parting a room that is not the active one leaves the active room alone.
    await alice.send("join", room="#a")
    await alice.until("who", room="#a", members=["alice"], operators=["alice"])
    await alice.send("join", room="#b")
    await alice.until("who", room="#b", members=["alice"], operators=["alice"])
    await alice.send("part", room="#a")
    await alice.next_is("part", room="#a", nick="alice", text="")
    await alice.send("say", text="in b")
    await alice.next_is("message", room="#b", nick="alice", text="in b")
    await alice.send("part", room="#b")
    await alice.next_is("part", room="#b", nick="alice", text="")
    await alice.next_is("notice", room="#lobby", text=NOW_IN_LOBBY)

    # Parting the last room: nothing is active any more.
    await alice.send("part")
    await alice.next_is("part", room="#lobby", nick="alice", text="")
    await alice.next_is("notice", room=None, text=IN_NO_ROOM)
    await bob.until("part", room="#lobby", nick="alice", text="")
    for name, args in [
        ("say", {"text": "hello?"}),
        ("me", {"text": "waves"}),
        ("part", {}),
        ("who", {}),
        ("topic", {}),
        ("topic", {"text": "new topic"}),
    ]:
        await alice.send(name, **args)
        await alice.next_is("error", code="no_active_room", text=NO_ACTIVE_ROOM)
    await alice.send("join", room="#lobby")
    await alice.next_is("join", room="#lobby", nick="alice")
    await alice.close()
    await bob.close()


# --- rooms and who ------------------------------------------------------------------------


async def test_rooms(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice"], operators=["alice"])
    await alice.send("topic", text="Dev talk")
    await alice.next_is("topic", room="#dev", nick="alice", text="Dev talk")

    await bob.send("rooms")
    await bob.next_is(
        "rooms",
        rooms=[  # largest first (issue 10)
            {"room": "#lobby", "members": 2, "topic": ""},
            {"room": "#dev", "members": 1, "topic": "Dev talk"},
        ],
        total=2,
        offset=0,
    )
    await bob.send("join", room="#dev")
    await bob.until("who", room="#dev", members=["alice", "bob"], operators=["alice"])
    await bob.send_as(text="/list", json={"type": "rooms"})  # /list is an alias
    await bob.next_is(
        "rooms",
        rooms=[  # as large: by name
            {"room": "#dev", "members": 2, "topic": "Dev talk"},
            {"room": "#lobby", "members": 2, "topic": ""},
        ],
        total=2,
        offset=0,
    )
    # An empty room disappears (the lobby stays, even empty).
    await alice.send("part", room="#dev")
    await bob.send("part", room="#dev")
    await bob.until("notice", room="#lobby", text=NOW_IN_LOBBY)
    await bob.send("part", room="#lobby")
    await bob.until("notice", room=None, text=IN_NO_ROOM)
    await alice.send("part", room="#lobby")
    await alice.until("notice", room=None, text=IN_NO_ROOM)
    await bob.send("rooms")
    await bob.next_is(
        "rooms", rooms=[{"room": "#lobby", "members": 0, "topic": ""}], total=1, offset=0
    )
    await alice.close()
    await bob.close()


async def test_who(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.until("join", room="#lobby", nick="bob")
    await alice.send("who")
    await alice.next_is("who", room="#lobby", members=["alice", "bob"])
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice"], operators=["alice"])
    await bob.send("who", room="#dev")  # a room bob is not in
    await bob.next_is("who", room="#dev", members=["alice"], operators=["alice"])
    await bob.send_as(text="/names #DEV", json={"type": "who", "room": "#DEV"})
    await bob.next_is("who", room="#dev", members=["alice"], operators=["alice"])
    await refused(
        bob,
        [
            (
                "/who #nope",
                {"type": "who", "room": "#nope"},
                "no_such_room",
                "There is no room #nope.",
            ),
            ("/who #bad!", {"type": "who", "room": "#bad!"}, "room_invalid", invalid_room("#bad!")),
            ("/who #a #b", None, "bad_arguments", "Usage: /who [#room]"),
        ],
    )
    await alice.close()
    await bob.close()


# --- topic --------------------------------------------------------------------------------


async def test_topic(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    carol = await dialect.user(chat.port, "carol")
    await alice.send("topic")
    await alice.until("topic", room="#lobby", nick=None, text="")
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice"], operators=["alice"])
    await bob.send("join", room="#dev")
    await bob.until("who", room="#dev", members=["alice", "bob"], operators=["alice"])
    await alice.until("join", room="#dev", nick="bob")

    await alice.send("topic", text="Release on Friday")
    await alice.next_is("topic", room="#dev", nick="alice", text="Release on Friday")
    await bob.next_is("topic", room="#dev", nick="alice", text="Release on Friday")
    await alice.send("topic")
    await alice.next_is("topic", room="#dev", nick=None, text="Release on Friday")
    await carol.send("topic", room="#dev")  # a room carol is not in can be looked at...
    await carol.next_is("topic", room="#dev", nick=None, text="Release on Friday")
    await refused(
        carol,
        [
            (  # ...but not changed
                "/topic #dev hijacked",
                {"type": "topic", "room": "#dev", "text": "hijacked"},
                "not_in_room",
                "You are not in #dev; /join it first.",
            ),
            (
                "/topic #nope",
                {"type": "topic", "room": "#nope"},
                "no_such_room",
                "There is no room #nope.",
            ),
        ],
    )

    # From another active room, naming the room.
    await alice.send("join", room="#lobby")
    await alice.next_is("notice", room="#lobby", text=NOW_IN_LOBBY)
    await alice.send("topic", room="#dev", text="Release on Monday")
    await alice.next_is("topic", room="#dev", nick="alice", text="Release on Monday")
    await bob.next_is("topic", room="#dev", nick="alice", text="Release on Monday")

    await alice.send("topic", room="#dev", text="x" * 301)
    await alice.next_is(
        "error", code="topic_too_long", text="Topic is too long (301 characters, at most 300)."
    )
    await alice.send("topic", room="#dev", text="t" * 300)
    await alice.next_is("topic", room="#dev", nick="alice", text="t" * 300)
    await alice.send("topic", room="#dev", text="Release on Monday")
    await alice.next_is("topic", room="#dev", nick="alice", text="Release on Monday")

    # The topic is shown to whoever joins, between the join and the member list.
    await carol.send("join", room="#dev")
    await carol.next_is("join", room="#dev", nick="carol")
    await carol.next_is("topic", room="#dev", nick=None, text="Release on Monday")
    await carol.next_is("who", room="#dev", members=["alice", "bob", "carol"], operators=["alice"])
    # Members of other rooms only were never told about #dev's topic: carol saw nothing
    # before her own join (checked by next_is above, since she read every event in order).
    await alice.next_is("join", room="#dev", nick="carol")

    # Any member may set it, and clear it (text: -delete; JSON: "").
    await carol.send("topic", text="Release on Tuesday")
    await carol.next_is("topic", room="#dev", nick="carol", text="Release on Tuesday")
    await alice.next_is("topic", room="#dev", nick="carol", text="Release on Tuesday")
    await carol.send("topic", text="")
    await carol.next_is("topic", room="#dev", nick="carol", text="")
    await alice.next_is("topic", room="#dev", nick="carol", text="")
    await alice.send("rooms")
    await alice.next_is(
        "rooms",
        rooms=[
            {"room": "#dev", "members": 3, "topic": ""},
            {"room": "#lobby", "members": 3, "topic": ""},
        ],
        total=2,
        offset=0,
    )
    await alice.close()
    await bob.close()
    await carol.close()


# --- me and msg ---------------------------------------------------------------------------


async def test_me(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.until("join", room="#lobby", nick="bob")
    await alice.send("me", text="waves at everyone")
    await alice.next_is("action", room="#lobby", nick="alice", text="waves at everyone")
    await bob.next_is("action", room="#lobby", nick="alice", text="waves at everyone")
    await refused(
        alice,
        [
            (
                "/me #dev waves",
                {"type": "me", "room": "#dev", "text": "waves"},
                "not_in_room",
                "You are not in #dev; /join it first.",
            ),
            ("/me", None, "bad_arguments", "Usage: /me [#room] action"),
            (None, {"type": "me"}, "bad_arguments", "Field 'text' is required."),
        ],
    )
    await alice.close()
    await bob.close()


async def test_msg(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    await alice.until("join", room="#lobby", nick="bob")
    await alice.send("msg", nick="bob", text="psst, over here")
    await alice.next_is(
        "private", room=None, nick="alice", target="bob", echo=True, text="psst, over here"
    )
    await bob.next_is(
        "private", room=None, nick="alice", target="bob", echo=False, text="psst, over here"
    )
    await alice.send("msg", nick="BOB", text="case does not matter")
    await alice.next_is(
        "private", nick="alice", target="bob", echo=True, text="case does not matter"
    )
    await bob.next_is(
        "private", nick="alice", target="bob", echo=False, text="case does not matter"
    )
    await bob.send_as(  # /query is an alias
        text="/query alice alias works",
        json={"type": "msg", "nick": "alice", "text": "alias works"},
    )
    await alice.next_is("private", nick="bob", target="alice", echo=False, text="alias works")

    await refused(
        alice,
        [
            (
                "/msg zed hello",
                {"type": "msg", "nick": "zed", "text": "hello"},
                "no_such_nick",
                "Nobody called 'zed' is online.",
            ),
            ("/msg bob", None, "bad_arguments", "Usage: /msg nick text"),
            ("/msg", None, "bad_arguments", "Usage: /msg nick text"),
            (
                None,
                {"type": "msg", "nick": "bob", "text": "  "},
                "bad_arguments",
                "Usage: /msg nick text",
            ),
        ],
    )

    # A message to oneself arrives exactly once.
    await alice.send("msg", nick="alice", text="note to self")
    await alice.send("ping", token="after-note")
    await alice.next_is("private", nick="alice", target="alice", echo=False, text="note to self")
    await alice.next_is("pong", text="after-note")
    await alice.close()
    await bob.close()


# --- nick ---------------------------------------------------------------------------------

NICK_REFUSALS: list[Refusal] = [
    (
        f"/nick {nick}",
        {"type": "nick", "nick": nick},
        code,
        reason,
    )
    for nick, code, reason in [
        ("BOB", "nick_taken", "The nickname 'BOB' is already in use; choose another."),
        ("Bob", "nick_taken", "The nickname 'Bob' is already in use; choose another."),
        (
            "b0b",
            "nick_confusable",
            "The nickname 'b0b' looks too much like 'bob', who is online; choose another.",
        ),
        (
            "B0B",
            "nick_confusable",
            "The nickname 'B0B' looks too much like 'bob', who is online; choose another.",
        ),
        ("9lives", "nick_invalid", "A nickname must start with a letter (a-z, A-Z)."),
        ("admin", "nick_reserved", "The nickname 'admin' is reserved."),
        ("root", "nick_reserved", "The nickname 'root' is reserved."),
    ]
] + [
    ("/nick a b", None, "bad_arguments", "Usage: /nick newnick"),
    (
        None,
        {"type": "nick", "nick": "x y"},
        "nick_invalid",
        "Nickname contains ' '; use only letters a-z, digits, '_' and '-'.",
    ),
]


async def test_nick(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    carol = await dialect.user(chat.port, "carol")
    dave = await dialect.user(chat.port, "dave")
    # alice and bob share #lobby and #dev; carol shares only #lobby; dave shares nothing.
    await alice.send("join", room="#dev")
    await alice.until("who", room="#dev", members=["alice"], operators=["alice"])
    await bob.send("join", room="#dev")
    await bob.until("who", room="#dev", members=["alice", "bob"], operators=["alice"])
    await alice.until("join", room="#dev", nick="bob")
    await dave.send("join", room="#other")
    await dave.until("who", room="#other", members=["dave"], operators=["dave"])
    await dave.send("part", room="#lobby")
    await dave.until("part", room="#lobby", nick="dave", text="")
    for client in (alice, bob, carol):
        await client.until("part", room="#lobby", nick="dave", text="")

    # Announced once to each who shares a room with alice, however many rooms they share.
    await alice.send("nick", nick="alicia")
    await alice.send("join", room="#lobby")
    await alice.send("say", text="marker one")
    renamed: dict[str, Any] = {"room": None, "nick": "alice", "new_nick": "alicia"}
    said: dict[str, Any] = {"room": "#lobby", "nick": "alicia", "text": "marker one"}
    await alice.next_is("nick", **renamed)
    await alice.next_is("notice", room="#lobby", text=NOW_IN_LOBBY)
    await alice.next_is("message", **said)
    for client in (bob, carol):
        await client.next_is("nick", **renamed)
        await client.next_is("message", **said)
    await alice.send("join", room="#other")
    await alice.next_is("join", room="#other", nick="alicia")
    await alice.next_is("who", room="#other", members=["alicia", "dave"], operators=["dave"])
    seen = await dave.until("join", room="#other", nick="alicia")
    assert len(seen) == 1, seen  # dave, who shared no room, was not told of the rename

    # Case change of one's own nickname is allowed and announced.
    await alice.send("nick", nick="Alicia")
    await alice.next_is("nick", room=None, nick="alicia", new_nick="Alicia")
    await bob.next_is("nick", room=None, nick="alicia", new_nick="Alicia")
    await bob.send("who", room="#dev")
    await bob.next_is("who", room="#dev", members=["Alicia", "bob"], operators=["Alicia"])

    await refused(alice, NICK_REFUSALS)

    # The old nickname is free again; messages to it go nowhere.
    await bob.send("msg", nick="alice", text="hello?")
    await bob.next_is("error", code="no_such_nick", text="Nobody called 'alice' is online.")
    again = await dialect.user(chat.port, "alice")
    for client in (alice, bob, carol, dave, again):
        await client.close()


# --- quit ---------------------------------------------------------------------------------


async def test_quit(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    bob = await dialect.user(chat.port, "bob")
    carol = await TEXT.user(chat.port, "carol")  # a person watches in both cases
    await alice.send("join", room="#dev")  # alice and bob share two rooms
    await alice.until("who", room="#dev", members=["alice"], operators=["alice"])
    await bob.send("join", room="#dev")
    await bob.until("who", room="#dev", members=["alice", "bob"], operators=["alice"])
    await alice.until("join", room="#dev", nick="bob")
    await alice.send("quit", reason="gone fishing")
    await alice.next_is("bye", code="quit", text="Goodbye.")
    assert await alice.eof() == []
    # Once to bob, though they shared two rooms.
    await bob.next_is("quit", room=None, nick="alice", text="gone fishing")
    await carol.until("quit", room=None, nick="alice", text="gone fishing")
    await carol.send("say", text="marker")
    await bob.next_is("message", room="#lobby", nick="carol", text="marker")
    await bob.send("who")
    await bob.next_is("who", room="#dev", members=["bob"])
    await bob.send("quit")
    await carol.next_is("message", room="#lobby", nick="carol", text="marker")
    await carol.next_is("quit", room=None, nick="bob", text="Quit")
    await bob.next_is("bye", code="quit", text="Goodbye.")
    assert await bob.eof() == []
    await carol.close()


# --- help, ping, unknown commands, literal slash, empty lines --------------------------------

HELP_LAST = "Start a line with // to say something that begins with /."


async def test_help(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    await alice.send("help")
    lines = (await alice.notice(HELP_LAST)).split("\n")
    assert lines[0] == "Commands (a line not starting with / is said in your active room):"
    typed = [spec for spec in COMMANDS if spec.typed]
    assert len(lines) == len(typed) + 2
    for spec, line in zip(typed, lines[1:-1], strict=True):
        assert line.startswith(f"  /{spec.name}"), line
        assert spec.usage in line, line
    for command, answer in [
        ("join", "/join #room: Join a room (created on first use) and make it your active room."),
        ("/MSG", "/msg nick text: Send a private message that only nick sees."),
        ("list", f"/rooms [+N] [text]: {lookup('rooms', typed=True).help}"),
    ]:
        await alice.send("help", command=command)
        await alice.next_is("notice", room=None, text=answer)
    await alice.send("help", command="frob")
    await alice.next_is(
        "error", code="unknown_command", text="No command /frob; type /help for the list."
    )
    await alice.send("ping", token="after-help")
    await alice.next_is("pong", text="after-help")
    await alice.close()


async def test_ping(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    await alice.send("ping", token="abc 123")
    await alice.next_is("pong", text="abc 123")
    await alice.send("ping")
    await alice.next_is("pong", text="")
    # An unsolicited pong (JSON only: people have no /pong) is answered by nothing.
    await alice.send_as(text=None, json={"type": "pong", "token": "unsolicited"})
    await alice.send("ping", token="marker")
    await alice.next_is("pong", text="marker")
    await alice.close()


async def test_json_server_ping_keepalive(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, ping_interval=0.2, ping_timeout=0.4)
    alice = await JsonClient.connect(server.port, "alice")
    text_user_ = await LineClient.connect(server.port, "tex")  # text clients are never pinged
    ping = await alice.expect("ping")
    assert ping.text.isdigit()
    assert set(COMMON_FIELDS) <= set(alice.objects[-1])
    await alice.send({"type": "pong", "token": ping.text})
    await alice.expect("ping")  # answered, so pinged again later instead of dropped
    tail = await alice.eof()  # not answered this time
    assert [(e.type, getattr(e, "code", None)) for e in tail] == [("bye", "ping_timeout")]
    await text_user_.send("/ping alive")
    await text_user_.until("*** pong alive")
    assert not any(line.startswith("*** ping ") for line in text_user_.seen)
    await text_user_.close()


async def test_unknown_command(chat: ChatServer, dialect: Dialect) -> None:
    alice = await dialect.user(chat.port, "alice")
    await refused(
        alice,
        [
            (
                "/frobnicate now",
                None,
                "unknown_command",
                "Unknown command /frobnicate; type /help for the list.",
            ),
            (
                None,
                {"type": "frobnicate"},
                "unknown_command",
                "Unknown command type 'frobnicate'; see protocol.md.",
            ),
        ],
    )
    await alice.send("ping", token="still-open")
    await alice.next_is("pong", text="still-open")
    await alice.close()


async def test_json_bad_json_and_bad_fields(chat: ChatServer) -> None:
    alice = await JsonClient.connect(chat.port, "alice")
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
    alice = await LineClient.connect(chat.port, "alice")
    bob = await LineClient.connect(chat.port, "bob")
    await alice.until("[#lobby] *** bob joined #lobby")
    await alice.send("//shrug")
    await alice.next_is("[#lobby] <alice> /shrug")
    await bob.next_is("[#lobby] <alice> /shrug")
    await alice.send("///etc/passwd is a path")
    await alice.next_is("[#lobby] <alice> //etc/passwd is a path")
    await alice.send_raw(b"\r\n\n   \r\n\t\r\n")
    await alice.send("after the blanks")
    await alice.next_is("[#lobby] <alice> after the blanks")
    await bob.next_is(
        "[#lobby] <alice> //etc/passwd is a path", "[#lobby] <alice> after the blanks"
    )
    await alice.close()
    await bob.close()


# --- isolation ----------------------------------------------------------------------------


async def test_room_message_reaches_exactly_its_members(chat: ChatServer) -> None:
    alice = await JsonClient.connect(chat.port, "alice")  # #lobby, #dev, #other
    bob = await LineClient.connect(chat.port, "bob")  # #lobby, #dev
    carol = await JsonClient.connect(chat.port, "carol")  # #other only
    dave = await LineClient.connect(chat.port, "dave")  # #lobby only
    await carol.call({"type": "join", "room": "#other"}, "who", room="#other")
    await carol.call({"type": "part", "room": "#lobby"}, "part", nick="carol")
    await bob.send("/join #dev")
    await bob.until("[#dev] *** 1 in #dev: @bob")
    await alice.call({"type": "join", "room": "#dev"}, "who", room="#dev")
    await alice.call({"type": "join", "room": "#other"}, "who", room="#other")
    await carol.expect("join", room="#other", nick="alice")
    await dave.until("[#lobby] *** carol left #lobby")

    carol_start = len(carol.events)
    await alice.send({"type": "say", "room": "#dev", "text": "secret plan"})
    await bob.until("[#dev] <alice> secret plan")
    await alice.expect("message", room="#dev", text="secret plan")
    await alice.send({"type": "say", "room": "#other", "text": "marker for carol"})
    await alice.send({"type": "say", "room": "#lobby", "text": "marker for dave"})

    await carol.expect("message", text="marker for carol")
    assert says(carol.events[carol_start:]) == [("message", "#other", "alice", "marker for carol")]
    assert await dave.until("[#lobby] <alice> marker for dave") == [
        "[#lobby] <alice> marker for dave"
    ]
    assert await bob.until("[#lobby] <alice> marker for dave") == [
        "[#lobby] <alice> marker for dave"
    ]
    for client in (alice, bob, carol, dave):
        await client.close()


async def test_private_message_reaches_only_its_target(chat: ChatServer) -> None:
    alice = await LineClient.connect(chat.port, "alice")
    bob = await LineClient.connect(chat.port, "bob")
    carol = await JsonClient.connect(chat.port, "carol")
    dave = await LineClient.connect(chat.port, "dave")
    await alice.until("[#lobby] *** dave joined #lobby")
    await bob.until("[#lobby] *** dave joined #lobby")
    await carol.expect("join", nick="dave")

    carol_start = len(carol.events)
    await alice.send("/msg bob the password is swordfish")
    await bob.next_is("[private] <alice> the password is swordfish")
    await alice.next_is("[private to bob] <alice> the password is swordfish")
    await alice.send("marker")
    await alice.next_is("[#lobby] <alice> marker")
    await bob.next_is("[#lobby] <alice> marker")
    assert await dave.until("[#lobby] <alice> marker") == ["[#lobby] <alice> marker"]
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
    alice = await JsonClient.connect(chat.port, "alice")
    bob = await JsonClient.connect(chat.port, "bob")
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
    alice = await JsonClient.connect(server.port, "alice")
    bob = await LineClient.connect(server.port, "bob")
    await alice.call({"type": "join", "room": "#h"}, "who", room="#h")

    live: dict[str, Event] = {}

    async def say(text: str, kind: str = "say") -> None:
        live[text] = await alice.call(
            {"type": kind, "room": "#h", "text": text}, "message" if kind == "say" else "action"
        )

    await say("m1")
    await bob.send("/join #h")  # join/part noise must not be replayed
    await bob.until("[#h] *** 2 in #h: @alice, bob")
    await say("m2")
    await bob.send("/part #h")
    await bob.until("[#h] *** bob left #h")
    await say("m3", "me")
    await alice.call({"type": "topic", "room": "#h", "text": "History"}, "topic", nick="alice")
    await bob.send("/nick bobby")
    await bob.until("*** bob is now known as bobby")
    await say("m4")

    carol = await JsonClient.connect(server.port, "carol")
    await carol.send({"type": "join", "room": "#h"})
    await carol.next_is("join", room="#h", nick="carol")
    await carol.next_is("topic", room="#h", nick=None, text="History")
    await carol.next_is("who", room="#h", members=("alice", "carol"), operators=("alice",))
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
    dave = await LineClient.connect(server.port, "dave")
    await dave.send("/join #h")
    await dave.next_is(
        "[#h] *** dave joined #h",
        "[#h] *** Topic: History",
        "[#h] *** 3 in #h: @alice, carol, dave",
        f"[#h] (history {utc_minute(live['m3'].ts)}) * alice m3",
        f"[#h] (history {utc_minute(live['m4'].ts)}) <alice> m4",
        f"[#h] (history {utc_minute(live['m5'].ts)}) <alice> m5",
    )
    await say("m6")
    await dave.next_is("[#h] <alice> m6")
    for client in (alice, bob, carol, dave):
        await client.close()


async def test_lobby_history_at_registration(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, history=3)
    alice = await LineClient.connect(server.port, "alice")
    for n in range(1, 5):
        await alice.send(f"lobby {n}")
        await alice.until(f"[#lobby] <alice> lobby {n}")
    bob = await LineClient.connect(server.port)
    await bob.next_is(*GREETING)
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
    await bob.next_is("[#lobby] <alice> live")

    jay = await JsonClient.connect(server.port, nick="jay")
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
    alice = await LineClient.connect(server.port, "alice")
    await alice.send("/join #h")
    await alice.send("in h")
    await alice.send("/join #lobby")
    await alice.send("in lobby")
    await alice.until("[#lobby] <alice> in lobby")
    bob = await LineClient.connect(server.port, "bob")  # registered: #lobby joined, no replay
    await alice.send("marker 1")
    await bob.next_is("[#lobby] <alice> marker 1")
    await bob.send("/join #h")
    await bob.next_is("[#h] *** bob joined #h", "[#h] *** 2 in #h: @alice, bob")
    await alice.send("/join #h")
    await alice.send("marker 2")
    await bob.next_is("[#h] <alice> marker 2")
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
TELNET_DO_NAWS = b"\xff\xfd\x1f"
TTYPE_XTERM = b"\xff\xfa\x18\x00XTERM\xff\xf0"


class TelnetSocket:
    """Bytes in, bytes out: what a telnet client sees, checking every reply line's ending."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()
        self.do_naws = 0  # the one telnet command the server may send, when offered NAWS

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
        if raw.startswith(TELNET_DO_NAWS):  # our WILL NAWS answered: tell us your size
            self.do_naws += 1
            raw = raw.removeprefix(TELNET_DO_NAWS)
        assert IAC not in raw
        return raw[:-2].decode()

    async def expect(self, line: str) -> None:
        async with asyncio.timeout(WAIT):
            while await self.line() != line:
                pass


async def test_telnet_session(chat: ChatServer) -> None:
    bob = await LineClient.connect(chat.port, "bob")
    tel = await TelnetSocket.connect(chat.port)
    await tel.send(TELNET_OPENING)
    assert [await tel.line(), await tel.line()] == GREETING
    await tel.send(NAWS_80x24 + TTYPE_XTERM + b"tel\xff\xfb\x01net\r\n")
    assert await tel.line() == "*** Welcome, telnet! Type /help for the commands."
    assert await tel.line() == "[#lobby] *** telnet joined #lobby"
    assert await tel.line() == "[#lobby] *** 2 in #lobby: bob, telnet"
    await bob.until("[#lobby] *** telnet joined #lobby")

    # Negotiation inside a line: IAC NOP, IAC DONT ECHO.
    await tel.send(b"hello \xff\xf1wor\xff\xfe\x01ld\r\n")
    assert await tel.line() == "[#lobby] <telnet> hello world"
    await bob.next_is("[#lobby] <telnet> hello world")

    # Character at a time, as telnet does in character mode.
    for byte in b"/who\r\n":
        await tel.send(bytes([byte]))
    assert await tel.line() == "[#lobby] *** 2 in #lobby: bob, telnet"

    # A multi-line reply: every line ends in \r\n.
    await tel.send(b"/help\r\n")
    await tel.expect("*** Start a line with // to say something that begins with /.")

    await tel.send(b"/quit\r\n")
    assert await tel.line() == "*** Closing connection: Goodbye."
    assert tel.do_naws == 1  # answered the offer in TELNET_OPENING once, and nothing else
    async with asyncio.timeout(WAIT):
        assert await tel.reader.read() == b""
    assert tel.received.endswith(b"\r\n")
    tel.writer.close()
    await bob.until("*** telnet quit (Quit)")
    await bob.close()


async def test_telnet_cr_nul_ends_a_line(chat: ChatServer) -> None:
    """Telnet in character mode sends Return as CR NUL (RFC 854); that ends a line too."""
    bob = await LineClient.connect(chat.port, "bob")
    tel = await TelnetSocket.connect(chat.port)
    await tel.send(TELNET_OPENING)
    assert [await tel.line(), await tel.line()] == GREETING
    await tel.send(b"telnet\r\n")
    assert await tel.line() == "*** Welcome, telnet! Type /help for the commands."
    await bob.until("[#lobby] *** telnet joined #lobby")
    await tel.send(b"first\r\0")
    await tel.send(b"second\r\n")
    await bob.next_is("[#lobby] <telnet> first", "[#lobby] <telnet> second")
    tel.writer.close()
    await bob.close()


# --- chat-server as a process ---------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_chat_server_shuts_down_gracefully(
    spawn_server: SpawnServer, signum: signal.Signals
) -> None:
    server = await spawn_server()
    alice = await LineClient.connect(server.port, "alice")
    bob = await LineClient.connect(server.port, "bob")
    jay = await JsonClient.connect(server.port, "jay")
    await alice.until("[#lobby] *** jay joined #lobby")

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
    flooder = await LineClient.connect(server.port, "flooder")
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
        [*CHAT_SERVER, "--help"],
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
        "--greet-delay": str(limits.greet_delay),
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
        "--server-name": config.server_name,
        "--allowed-origin": "the server's own host",  # repeatable
        "--metrics": "off",
        "--db": default_db_path(),  # a file in the XDG state directory (ServerConfig: :memory:)
        "--history-keep": str(config.history_keep),
        "--admin": "none",  # --admin is repeatable
        "--login-failures": str(config.login_failures),
        "--account-failures": str(config.account_failures),
        "--max-ignores": str(config.max_ignores),
    }
    assert config.admins == ()
    blocks = help_blocks()
    assert set(expected) | {"-h", "--version", "--tls-cert", "--tls-key"} == set(blocks)
    for option, default in expected.items():  # spaces ignored: argparse wraps long paths
        wanted = "".join(f"(default: {default})".split())
        assert wanted in "".join(blocks[option].split()), blocks[option]


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
