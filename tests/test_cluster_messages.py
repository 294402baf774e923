"""What nodes say to each other (``chat.cluster.messages``): every kind round-trips, and
anything else is refused with ``MalformedMessage``, never another exception.

A room message is published by a Lua script that puts its stream id between the two halves
of :func:`stream_frame`; the tests splice the same way, so the script's output is pinned to
what :func:`encode` writes and :func:`decode` reads.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.cluster.messages import (
    Answer,
    AskWhois,
    Claim,
    ClusterMessage,
    Direct,
    Ghost,
    Heartbeat,
    Kill,
    MalformedMessage,
    Relayed,
    Released,
    StreamId,
    Sync,
    decode,
    decode_entry,
    decode_roster,
    encode,
    encode_rooms,
    entry_fields,
    stream_frame,
)
from chat.errors import ErrorCode
from chat.protocol import (
    Action,
    Away,
    Dialect,
    Error,
    Event,
    Invite,
    Join,
    Kick,
    Message,
    Mode,
    Nick,
    Part,
    Private,
    Quit,
    Topic,
    Who,
    Whois,
    render,
)

ROOM_EVENTS: list[Event] = [
    Message(room="#r", nick="ann", text="hello, \u00e9t\u00e9 \U0001f600"),
    Action(room="#r", nick="ann", text="waves"),
    Join(room="#r", nick="ann"),
    Part(room="#r", nick="ann", text="bye"),
    Part(room="#r", nick="ann"),
    Quit(nick="ann", text="gone"),
    Nick(nick="ann", new_nick="Anna"),
    Topic(room="#r", nick="ann", text="line one\nline two"),
    Mode(room="#r", nick="ann", change="+b", target="account:bob", text="spam"),
    Mode(room="#r", change="+o", target="ann"),  # the server gave it: no nick
    Mode(room="#r", nick="ann", change="+m"),
    Kick(room="#r", nick="ann", target="bob", text="out"),
    Invite(room="#r", nick="ann", target="bob"),
]

MESSAGES: list[ClusterMessage] = [
    Heartbeat("node-1", 1_700_000_000.125),
    Sync("node-1"),
    *(Relayed("node-1", event) for event in ROOM_EVENTS),  # type: ignore[arg-type]
    Relayed("node-1", Message(room="#r", nick="ann", text="x"), StreamId(1_700_000_000_000, 7)),
    Relayed("host-42-ab", Action(room="#r", nick="ann", text="y"), StreamId(5)),
    Direct("node-1", Private(nick="ann", target="bob", text="psst")),
    Kill("node-1", "bob", "Killed by ann: enough \u00e9"),
    AskWhois("node-1", "ann", "bob", admin=True, re="q1"),
    AskWhois("node-1", "ann", "bob"),
    Ghost("node-1", "bob", "Bob"),
    Released("node-1", "bob \u00e9"),
    Answer("node-1", "ann", Away(nick="bob", text="lunch \u00e9")),
    Answer(
        "node-1",
        "ann",
        Whois(
            nick="bob",
            account="bob",
            rooms=("#r", "#caf\u00e9"),
            idle=12,
            away="lunch",
            since=1_700_000_000.5,
            address="10.0.0.2",
            user="bob",
            realname="Bob",
            operator_in=("#r",),
            re="q1",
        ),
    ),
    Answer("node-1", "ann", Error(code=ErrorCode.NO_SUCH_NICK, text="gone", re="q1")),
]


def json_of(event: Event) -> str:
    return render(event, Dialect.JSON).decode().rstrip("\n")


def relayed_json(**fields: Any) -> str:
    base: dict[str, Any] = {"type": "join", "id": "ab-1", "ts": 1.5, "room": "#r", "nick": "n"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_kind_round_trips(message: ClusterMessage) -> None:
    text = encode(message)
    assert decode(text) == message
    assert decode(text.encode()) == message  # as bytes too (a client without decoding)
    assert text.split("\n", 1)[0] == message.node


def test_the_wire_format() -> None:
    """The three-line frame, as a person reading MONITOR sees it."""
    assert encode(Heartbeat("A", 12.0)) == "A\nhb\n12.000"
    assert encode(Sync("A")) == "A\nsync\n"
    join = Join(room="#r", nick="n")
    assert encode(Relayed("A", join)) == f"A\n-\n{json_of(join)}"
    said = Message(room="#r", nick="n", text="t")
    assert encode(Relayed("A", said, StreamId(12, 3))) == f"A\n12-3\n{json_of(said)}"
    whisper = Private(nick="n", target="m", text="t")
    assert encode(Direct("A", whisper)) == f"A\npm\n{json_of(whisper)}"
    assert encode(Kill("A", "m", "why")) == 'A\nkill\n{"nick": "m", "text": "why"}'


def test_the_say_script_publishes_what_encode_writes() -> None:
    said = Message(room="#r", nick="ann", text="hi")
    before, after = stream_frame("B", said)
    published = f"{before}{StreamId(1234, 5)}{after}"  # what _SAY's PUBLISH sends
    assert published == encode(Relayed("B", said, StreamId(1234, 5)))
    assert decode(published) == Relayed("B", said, StreamId(1234, 5))


def test_stream_entries_round_trip() -> None:
    said = Action(room="#r", nick="ann", text="waves")
    fields = entry_fields("B", said)
    assert fields == {"n": "B", "e": json_of(said)}  # the layout of the streams in Redis
    assert decode_entry("99-0", fields) == Relayed("B", said, StreamId(99, 0))


def test_claims_round_trip() -> None:
    claim = Claim("B", "Alicia")
    assert claim.encode() == "B\nAlicia"
    assert claim.encode().startswith(Claim.owner_prefix("B"))
    assert Claim.decode(claim.encode()) == claim
    assert Claim.decode(b"B\nAlicia") == claim


def test_presence_round_trips_and_skips_what_it_cannot_read() -> None:
    assert decode_roster({"ann": encode_rooms(["#lobby", "#caf\u00e9"])}) == {
        "ann": ["#lobby", "#caf\u00e9"]
    }
    raw = {
        "ann": '["#a"]',
        "bad-json": "[",
        "not-a-list": '{"#a": 1}',
        "odd-rooms": '["#b", 5, null, ""]',
        "": '["#c"]',
    }
    assert decode_roster(raw) == {"ann": ["#a"], "odd-rooms": ["#b"]}


def test_stream_ids_parse_print_and_order() -> None:
    assert StreamId.parse("1700000000000-12") == StreamId(1_700_000_000_000, 12)
    assert str(StreamId(5, 0)) == "5-0"
    assert StreamId(5, 1) > StreamId(5, 0) > StreamId(4, 99)
    for bad in ("", "5", "5-", "-1", "a-b", "1-2-3", " 1-2", "\u0661-1", "1" * 21 + "-0"):
        with pytest.raises(MalformedMessage):
            StreamId.parse(bad)


def test_a_stream_id_belongs_to_room_messages_only() -> None:
    with pytest.raises(ValueError, match="not in a room stream"):
        Relayed("A", Join(room="#r", nick="n"), StreamId(1, 0))


def test_a_node_id_must_be_one_line() -> None:
    for bad in ("", "a\nb"):
        with pytest.raises(ValueError, match="node id"):
            encode(Sync(bad))
        with pytest.raises(ValueError, match="node id"):
            Claim.owner_prefix(bad)


# --- refusals ------------------------------------------------------------------------------

MALFORMED: list[tuple[str | bytes, str]] = [
    ("", "not a cluster message"),
    ("A", "not a cluster message"),
    ("A\nhb", "not a cluster message"),
    ("\nsync\n", "not a cluster message"),
    (b"A\nsync\n\xff", "not UTF-8"),
    ("A\nhb\nsoon", "bad time"),
    ("A\nhb\nnan", "bad time"),
    ("A\nhb\ninf", "bad time"),
    ("A\nwhat\n{}", "unknown tag"),
    ("A\n12-x\n{}", "unknown tag"),
    ("A\n-\nnot json", "unreadable event"),
    ("A\n-\n[1, 2]", "unreadable event"),
    ("A\n-\n" + "[" * 100_000, "unreadable event"),
    ('A\n-\n{"type": "nope"}', "unreadable event"),
    ('A\n-\n{"type": "rooms", "rooms": [1]}', "unreadable event"),
    ("A\n-\n" + json_of(Who(room="#r", members=("a",))), "who event cannot be relayed"),
    ("A\n-\n" + json_of(Private(nick="a", target="b")), "private event cannot be relayed"),
    ("A\n5-0\n" + json_of(Join(room="#r", nick="a")), "join event cannot be in a room stream"),
    ("A\npm\n" + json_of(Join(room="#r", nick="a")), "carries a join"),
    ("A\n-\n" + relayed_json(nick=5), "bad 'nick'"),
    ("A\n-\n" + relayed_json(nick=""), "bad 'nick'"),
    ("A\n-\n" + relayed_json(room=...), "bad 'room'"),
    ("A\n-\n" + relayed_json(room=["#r"]), "bad 'room'"),
    ("A\n-\n" + relayed_json(id=7), "bad 'id'"),
    ("A\n-\n" + relayed_json(ts="now"), "bad 'ts'"),
    ("A\n-\n" + relayed_json(ts=True), "bad 'ts'"),
    ("A\n-\n" + relayed_json(ts=10**400), "bad 'ts'"),
    ("A\n-\n" + relayed_json(ts=-(2**53)), "bad 'ts'"),
    ("A\n-\n" + relayed_json(text=None), "bad 'text'"),
    ("A\n-\n" + relayed_json(re=1), "bad 're'"),
    ("A\n-\n" + relayed_json(room="#r\ud800"), "bad 'room'"),  # a lone surrogate
    ("A\n-\n" + relayed_json(type="quit", room=None, text="\udfff!"), "bad 'text'"),
    ("A\n-\n" + relayed_json(type="nick", room=None), "bad 'new_nick'"),
    ("A\n-\n" + relayed_json(type="message", history="yes"), "bad 'history'"),
    ("A\npm\n" + relayed_json(type="private", room=None, target=3), "bad 'target'"),
    ("A\npm\n" + relayed_json(type="private", room=None, target="b", echo=1), "bad 'echo'"),
    ("A\npm\n" + relayed_json(type="private", room=None, nick=None, target="b"), "bad 'nick'"),
    ("A\n-\n" + relayed_json(type="mode", change=""), "bad 'change'"),
    ("A\n-\n" + relayed_json(type="mode", change=5), "bad 'change'"),
    ("A\n-\n" + relayed_json(type="mode", room=None, change="+m"), "bad 'room'"),
    ("A\n-\n" + relayed_json(type="kick", target=""), "bad 'target'"),
    ("A\n-\n" + relayed_json(type="invite", nick=None, target="b"), "bad 'nick'"),
    ("A\nkill\nnot json", "unreadable kill"),
    ('A\nkill\n{"nick": "", "text": "t"}', "without a nick"),
    ('A\nkill\n{"nick": "b"}', "without 'text'"),
    ('A\nkill\n["b", "t"]', "not an object"),
    ('A\nkill\n{"nick": "b\\ud800", "text": "t"}', "bad 'nick'"),
    ('A\nkill\n{"nick": "b", "text": "\\ud800"}', "bad 'text'"),
    ("A\nghost\nnot json", "unreadable ghost"),
    ('A\nghost\n{"nick": "bob"}', "without 'account'"),
    ('A\nghost\n{"nick": "", "account": "bob"}', "without a nick or an account"),
    ('A\nghost\n{"nick": "bob", "account": "\\ud800"}', "bad 'account'"),
    ("A\nfree\n", "of no nickname"),
    ("A\nfree\nb\ud800", "of no nickname"),
    ("A\nwhois\nnot json", "unreadable whois"),
    ('A\nwhois\n["ann", "bob"]', "not an object"),
    ('A\nwhois\n{"nick": "bob", "admin": false}', "bad asker"),
    ('A\nwhois\n{"asker": "ann", "nick": "", "admin": false}', "bad nick"),
    ('A\nwhois\n{"asker": "ann", "nick": "bob", "admin": 1}', "bad admin"),
    ('A\nwhois\n{"asker": "ann", "nick": "bob", "admin": false, "re": 5}', "request id"),
    ("A\nre\n\n" + json_of(Away(nick="bob")), "for nobody"),
    ("A\nre\n" + json_of(Away(nick="bob")), "unreadable event"),  # no line for whom
    ("A\nre\nann\n" + json_of(Join(room="#r", nick="a")), "carries a join"),
    ("A\nre\nann\n" + json_of(Whois(nick="bob", rooms=(5,))), "bad field"),  # type: ignore[arg-type]
    ("A\nre\nann\n" + json_of(Whois(nick="bob", idle=True)), "bad field"),
    (
        'A\nre\nann\n{"type": "whois", "id": "w", "ts": 1.5, "nick": "b", "account": "\\ud800"}',
        "bad field",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_malformed_messages_are_refused_with_a_reason(raw: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(raw)


def test_malformed_records_are_refused_with_a_reason() -> None:
    with pytest.raises(MalformedMessage, match="stream id"):
        decode_entry("later", entry_fields("B", Message(room="#r", nick="n")))
    with pytest.raises(MalformedMessage, match="no node or no event"):
        decode_entry("1-0", {"e": json_of(Message(room="#r", nick="n"))})
    with pytest.raises(MalformedMessage, match="cannot be in a room stream"):
        decode_entry("1-0", {"n": "B", "e": json_of(Join(room="#r", nick="n"))})
    for bad in ("B", "B\n", "\nann", b"\xff\nann"):
        with pytest.raises(MalformedMessage):
            Claim.decode(bad)
    with pytest.raises(MalformedMessage, match="not text"):
        decode(42)  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------

FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**52, max_value=10**400),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "a\udfff", "\u00e9"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELD_NAMES = ("type", "id", "ts", "room", "nick", "text", "new_nick", "target", "history")
EVENT_OBJECTS = st.dictionaries(
    st.sampled_from([*FIELD_NAMES, "echo", "re", "members", "rooms"]), FIELD_VALUES
).map(lambda obj: {**obj, "type": obj.get("type", "join")})
TYPES = st.sampled_from(["join", "part", "quit", "nick", "topic", "message", "action"])
TAGS = st.sampled_from(["hb", "sync", "-", "pm", "12-0", "x"]) | st.text(max_size=6)


def check_decoded(message: ClusterMessage) -> None:
    """What decode returns is what the directory and the hub may rely on."""
    assert message.node
    assert "\n" not in message.node
    if isinstance(message, Relayed | Direct):
        event = message.event
        assert isinstance(event.id, str)
        assert isinstance(event.text, str)
        assert isinstance(event.nick, str)
        assert event.nick
        assert event.room is None or isinstance(event.room, str)
        render(event, Dialect.TEXT)  # every string in it can be sent to a client
        assert decode(encode(message)) == message


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_decode_never_raises_anything_else(raw: str | bytes) -> None:
    try:
        message = decode(raw)
    except MalformedMessage:
        return
    check_decoded(message)


@settings(max_examples=500, deadline=None)
@given(
    st.text(min_size=1, max_size=4).filter(lambda s: "\n" not in s),
    TAGS,
    EVENT_OBJECTS,
    TYPES,
)
def test_decode_checks_every_field_of_an_event(
    node: str, tag: str, obj: dict[str, Any], type_: str
) -> None:
    for candidate in (obj, {**obj, "type": type_}):
        try:
            body = json.dumps(candidate)
        except ValueError:
            continue
        try:
            message = decode(f"{node}\n{tag}\n{body}")
        except MalformedMessage:
            continue
        check_decoded(message)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.text(max_size=12)))
def test_decode_roster_never_raises(raw: dict[str, str]) -> None:
    for nick, rooms in decode_roster(raw).items():
        assert nick
        assert all(isinstance(room, str) and room for room in rooms)
