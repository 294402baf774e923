"""What the nodes of a cluster say to each other, and what they keep in Redis, as values.

Every byte one node writes for another is encoded here and decoded here, and nowhere else:
the rest of the cluster code handles the frozen dataclasses below. A pub/sub message is
three fields on three lines::

    <node>\\n<tag>\\n<body>

========================  ====================  ===============================================
message                   tag                   body
========================  ====================  ===============================================
:class:`Heartbeat`        ``hb``                when it was sent (Unix time, for a person
                                                reading ``MONITOR``)
:class:`Sync`             ``sync``              empty: "I have (re)joined, read my presence"
:class:`Relayed`          ``-`` or a stream id  a room or user event, JSON as clients get it;
                                                a room message carries its stream id
:class:`Direct`           ``pm``                a private message for a user of the node
                                                whose channel it is published on
:class:`Kill`             ``kill``              ``{"nick": ..., "text": ...}``: disconnect
                                                that user of the node whose channel it is
                                                published on (a server operator's ``/kill``)
:class:`AskWhois`         ``whois``             ``{"asker": ..., "nick": ..., "admin": ...,
                                                "re": ...}``: answer ``asker`` (of the
                                                sending node) with a whois of ``nick``
:class:`Answer`           ``re``                the user it is for, a newline, and the
                                                event (``away``, ``whois`` or ``error``),
                                                JSON as clients get it
:class:`Ghost`            ``ghost``             ``{"nick": ..., "account": ...}``: its owner
                                                is logging in on the sending node; disconnect
                                                that user if logged in to ``account``, give
                                                the nickname back, and say :class:`Released`
:class:`Released`         ``free``              the nickname a :class:`Ghost` asked for
========================  ====================  ===============================================

A room message is appended to its stream and published by one Lua script, which is the
only thing that knows its stream id; :func:`stream_frame` gives the script the text to
put on either side of the id, so that its output is what :func:`encode` would write.

Other nodes are trusted to run this code, not to be free of bugs or of a version skew:
:func:`decode` checks everything it returns, and refuses anything else with
:class:`MalformedMessage` (a :class:`ValueError`), never with another exception.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

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
    Whois,
    parse_event,
    render,
)

__all__ = [
    "Answer",
    "AskWhois",
    "Claim",
    "ClusterMessage",
    "Direct",
    "Heartbeat",
    "Kill",
    "MalformedMessage",
    "Relayed",
    "RelayedEvent",
    "StreamId",
    "Sync",
    "decode",
    "decode_entry",
    "decode_roster",
    "encode",
    "encode_rooms",
    "entry_fields",
    "origin",
    "stream_frame",
]


class MalformedMessage(ValueError):
    """Bytes from Redis that are not a message or record this version understands."""


RelayedEvent = Message | Action | Join | Part | Quit | Nick | Topic | Mode | Kick | Invite
"""The events one node makes known to every other: what happens in rooms and to users."""

_RELAYED: Final = (Message, Action, Join, Part, Quit, Nick, Topic, Mode, Kick, Invite)
_STREAMED: Final = (Message, Action)
# The fields each kind of event must have, as non-empty strings, to be applied at all.
_REQUIRED: Final[dict[type[Event], tuple[str, ...]]] = {
    Message: ("room", "nick"),
    Action: ("room", "nick"),
    Join: ("room", "nick"),
    Part: ("room", "nick"),
    Topic: ("room", "nick"),
    Quit: ("nick",),
    Nick: ("nick", "new_nick"),
    Private: ("nick", "target"),
    Mode: ("room", "change"),  # nick is null when the server itself changed the mode
    Kick: ("room", "nick", "target"),
    Invite: ("room", "nick", "target"),
}

HEARTBEAT: Final = "hb"
SYNC: Final = "sync"
NO_STREAM_ID: Final = "-"
DIRECT: Final = "pm"
KILL: Final = "kill"
ASK_WHOIS: Final = "whois"
ANSWER: Final = "re"
GHOST: Final = "ghost"
RELEASED: Final = "free"
_MAX_TIME: Final = 2**53  # seconds; beyond this a float cannot tell one from the next
_STREAM_ID: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


@dataclass(frozen=True, slots=True, order=True)
class StreamId:
    """A Redis stream entry id, ``<milliseconds>-<sequence>``; ids order as tuples do."""

    millis: int
    seq: int = 0

    @classmethod
    def parse(cls, text: str) -> StreamId:
        found = _STREAM_ID.fullmatch(text)
        if found is None:
            raise MalformedMessage(f"not a stream id: {text[:40]!r}")
        return cls(int(found[1]), int(found[2]))

    def __str__(self) -> str:
        return f"{self.millis}-{self.seq}"


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Published every ``heartbeat`` seconds: "this node is alive", and, heard by the node
    itself, "this node's link to the cluster works end to end"."""

    node: str
    sent: float


@dataclass(frozen=True, slots=True)
class Sync:
    """A node has (re)joined the cluster and written its presence: read it now."""

    node: str


@dataclass(frozen=True, slots=True)
class Relayed:
    """An event that happened on ``node``, for every other node to apply.

    ``stream_id`` is set on a room message (:class:`Message` or :class:`Action`): where it
    is in its room's stream, so that a replay of the stream and the live channel can meet
    without a gap or a duplicate.
    """

    node: str
    event: RelayedEvent
    stream_id: StreamId | None = None

    def __post_init__(self) -> None:
        if self.stream_id is not None and not isinstance(self.event, _STREAMED):
            raise ValueError(f"a {self.event.type} event is not in a room stream")


@dataclass(frozen=True, slots=True)
class Direct:
    """A private message from a user of ``node`` to a user of the node that receives it."""

    node: str
    event: Private


@dataclass(frozen=True, slots=True)
class Kill:
    """A server operator of ``node`` disconnects ``nick``, a user of the node that receives
    it, saying ``text`` (``/kill``)."""

    node: str
    nick: str
    text: str


@dataclass(frozen=True, slots=True)
class AskWhois:
    """``asker``, a user of ``node`` (a server operator if ``admin``), asks ``/whois nick``
    of a user of the node that receives it, which knows their account, idle time and away
    message: it answers with an :class:`Answer` (``re`` is the request id to answer)."""

    node: str
    asker: str
    nick: str
    admin: bool = False
    re: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """An event for ``to``, a user of the node that receives it, from ``node``: the away
    message of someone they sent a private message to, or the answer to their whois."""

    node: str
    to: str
    event: Away | Whois | Error


@dataclass(frozen=True, slots=True)
class Ghost:
    """The owner of the account ``account`` is logging in on ``node`` as ``nick``, which a
    user of the node that receives it holds: if that user is logged in to the account (a
    stale connection), it is disconnected and the nickname given back; either way the
    receiving node answers with :class:`Released`, so the login does not wait in vain."""

    node: str
    nick: str
    account: str


@dataclass(frozen=True, slots=True)
class Released:
    """``node`` has done what a :class:`Ghost` for ``nick`` asked: the login can claim it."""

    node: str
    nick: str


ClusterMessage = Heartbeat | Sync | Relayed | Direct | Kill | AskWhois | Answer | Ghost | Released


def encode(message: ClusterMessage) -> str:
    """The text published for ``message``."""
    match message:
        case Heartbeat(node=node, sent=sent):
            return _frame(node, HEARTBEAT, f"{sent:.3f}")
        case Sync(node=node):
            return _frame(node, SYNC, "")
        case Relayed(node=node, event=Message() | Action() as said, stream_id=StreamId() as at):
            before, after = stream_frame(node, said)
            return f"{before}{at}{after}"
        case Relayed(node=node, event=event):
            return _frame(node, NO_STREAM_ID, _json(event))
        case Direct(node=node, event=event):
            return _frame(node, DIRECT, _json(event))
        case Kill(node=node, nick=nick, text=text):
            body = json.dumps({"nick": nick, "text": text}, ensure_ascii=False)
            return _frame(node, KILL, body)
        case AskWhois(node=node, asker=asker, nick=nick, admin=admin, re=re):
            fields = {"asker": asker, "nick": nick, "admin": admin, "re": re}
            return _frame(node, ASK_WHOIS, json.dumps(fields, ensure_ascii=False))
        case Answer(node=node, to=to, event=event):
            return _frame(node, ANSWER, f"{to}\n{_json(event)}")
        case Ghost(node=node, nick=nick, account=account):
            body = json.dumps({"nick": nick, "account": account}, ensure_ascii=False)
            return _frame(node, GHOST, body)
        case Released(node=node, nick=nick):
            return _frame(node, RELEASED, nick)


def stream_frame(node: str, event: Message | Action) -> tuple[str, str]:
    """The text published for a room message, cut where Redis puts its stream id."""
    return _checked_node(node) + "\n", "\n" + _json(event)


def decode(raw: str | bytes) -> ClusterMessage:
    """The message published as ``raw``; :class:`MalformedMessage` if it is not one."""
    text = _text(raw)
    node, tag, body = _split(text)
    if tag == HEARTBEAT:
        try:
            sent = float(body)
        except ValueError:
            raise MalformedMessage(f"heartbeat from {node!r}: bad time {body[:40]!r}") from None
        if not math.isfinite(sent):
            raise MalformedMessage(f"heartbeat from {node!r}: bad time {body[:40]!r}")
        return Heartbeat(node, sent)
    if tag == SYNC:
        return Sync(node)
    if tag == DIRECT:
        event = _event(body, node)
        if not isinstance(event, Private):
            raise MalformedMessage(f"private message from {node!r} carries a {event.type}")
        return Direct(node, event)
    if tag == KILL:
        return _kill(body, node)
    if tag == ASK_WHOIS:
        return _ask_whois(body, node)
    if tag == ANSWER:
        return _answer(body, node)
    if tag == GHOST:
        nick, account = _strings(body, node, "ghost", "nick", "account")
        if not nick or not account:
            raise MalformedMessage(f"a ghost from {node!r} without a nick or an account")
        return Ghost(node, nick, account)
    if tag == RELEASED:
        if not body or not _sendable(body):
            raise MalformedMessage(f"a release from {node!r} of no nickname")
        return Released(node, body)
    stream_id = None if tag == NO_STREAM_ID else _tag_stream_id(tag, node)
    return Relayed(node, _relayed_event(body, node, streamed=stream_id is not None), stream_id)


def _kill(body: str, node: str) -> Kill:
    nick, text = _strings(body, node, "kill", "nick", "text")
    if not nick:
        raise MalformedMessage(f"a kill from {node!r} without a nick")
    return Kill(node, nick, text)


def _object(body: str, node: str, what: str) -> dict[str, object]:
    """The JSON object ``body`` of a message ``what`` from ``node``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedMessage(f"unreadable {what} from {node!r}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"a {what} from {node!r} that is not an object")
    return data


def _strings(body: str, node: str, what: str, *names: str) -> list[str]:
    """The string fields ``names`` of a JSON object ``body``, each one sendable."""
    data = _object(body, node, what)
    found = []
    for name in names:
        value = data.get(name)
        if not isinstance(value, str):
            raise MalformedMessage(f"a {what} from {node!r} without {name!r}")
        if not _sendable(value):
            raise MalformedMessage(f"a {what} from {node!r} with a bad {name!r}")
        found.append(value)
    return found


def _ask_whois(body: str, node: str) -> AskWhois:
    data = _object(body, node, "whois")
    asker, nick, admin, re = (data.get(key) for key in ("asker", "nick", "admin", "re"))
    if not (isinstance(asker, str) and asker and _sendable(asker)):
        raise MalformedMessage(f"a whois from {node!r} with a bad asker")
    if not (isinstance(nick, str) and nick and _sendable(nick)):
        raise MalformedMessage(f"a whois from {node!r} with a bad nick")
    if not isinstance(admin, bool) or not (re is None or (isinstance(re, str) and _sendable(re))):
        raise MalformedMessage(f"a whois from {node!r} with a bad admin flag or request id")
    return AskWhois(node, asker, nick, admin, re)


def _answer(body: str, node: str) -> Answer:
    to, _, text = body.partition("\n")
    if not to or not _sendable(to):
        raise MalformedMessage(f"an answer from {node!r} for nobody")
    event = _event(text, node)
    if not isinstance(event, Away | Whois | Error):
        raise MalformedMessage(f"an answer from {node!r} carries a {event.type}")
    if isinstance(event, Whois) and not _whois_fields_ok(event):
        raise MalformedMessage(f"a whois answer from {node!r} with a bad field")
    return Answer(node, to, event)


def _whois_fields_ok(event: Whois) -> bool:
    strings = (event.away, event.user, event.realname, *event.rooms, *event.operator_in)
    maybe = [value for value in (event.account, event.address) if value is not None]
    return (
        all(isinstance(value, str) and _sendable(value) for value in (*strings, *maybe))
        and isinstance(event.idle, int)
        and not isinstance(event.idle, bool)
        and _is_time(event.since)
        and isinstance(event.operator, bool)
    )


def origin(raw: str | bytes) -> tuple[str, bool]:
    """Who published ``raw``, and whether it is a heartbeat, without decoding the rest: a
    node skips its own publications, which come back to it on the shared channel, cheaply
    (under load they are most of what it hears)."""
    node, tag, _ = _split(_text(raw))
    return node, tag == HEARTBEAT


def _tag_stream_id(tag: str, node: str) -> StreamId:
    try:
        return StreamId.parse(tag)
    except MalformedMessage:
        raise MalformedMessage(f"message from {node!r}: unknown tag {tag[:40]!r}") from None


# --- records in Redis ----------------------------------------------------------------------
#
# A room's stream entry has two fields, ``n`` (the node) and ``e`` (the event); a claim on a
# nickname is ``<node>\n<nick>``; a node's presence is a hash nick -> JSON list of rooms.

_NODE_FIELD: Final = "n"
_EVENT_FIELD: Final = "e"


def entry_fields(node: str, event: Message | Action) -> dict[str, str]:
    """The fields of the stream entry that records a room message."""
    return {_NODE_FIELD: _checked_node(node), _EVENT_FIELD: _json(event)}


def decode_entry(entry_id: str, fields: Mapping[str, str]) -> Relayed:
    """A room stream entry as the message that published it."""
    stream_id = StreamId.parse(entry_id)
    node = fields.get(_NODE_FIELD)
    body = fields.get(_EVENT_FIELD)
    if not isinstance(node, str) or not node or not isinstance(body, str):
        raise MalformedMessage(f"stream entry {entry_id}: no node or no event")
    return Relayed(node, _relayed_event(body, node, streamed=True), stream_id)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a nickname (or its look-alike skeleton) cluster-wide."""

    node: str
    nick: str

    @staticmethod
    def owner_prefix(node: str) -> str:
        """What every claim of ``node`` starts with (the Lua scripts compare it)."""
        return _checked_node(node) + "\n"

    def encode(self) -> str:
        return self.owner_prefix(self.node) + self.nick

    @classmethod
    def decode(cls, raw: str | bytes) -> Claim:
        node, newline, nick = _text(raw).partition("\n")
        if not newline or not node or not nick:
            raise MalformedMessage(f"not a nickname claim: {_text(raw)[:60]!r}")
        return cls(node, nick)


def encode_rooms(rooms: Iterable[str]) -> str:
    """A user's rooms as their node's presence hash stores them."""
    return json.dumps(list(rooms), ensure_ascii=False)


def decode_roster(raw: Mapping[str, str]) -> dict[str, list[str]]:
    """A node's presence hash as nick -> rooms. A field that cannot be read is left out,
    so that one bad entry does not hide the node's other users."""
    roster: dict[str, list[str]] = {}
    for nick, rooms in raw.items():
        try:
            names = json.loads(rooms)
        except (TypeError, ValueError, RecursionError):
            continue
        if isinstance(nick, str) and nick and isinstance(names, list):
            roster[nick] = [name for name in names if isinstance(name, str) and name]
    return roster


# --- helpers -------------------------------------------------------------------------------


def _frame(node: str, tag: str, body: str) -> str:
    return f"{_checked_node(node)}\n{tag}\n{body}"


def _checked_node(node: str) -> str:
    if not node or "\n" in node:
        raise ValueError(f"a node id must be non-empty and on one line: {node!r}")
    return node


def _text(raw: str | bytes) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise MalformedMessage("not UTF-8") from None
    raise MalformedMessage(f"not text: {type(raw).__name__}")


def _split(text: str) -> tuple[str, str, str]:
    node, newline, rest = text.partition("\n")
    tag, second, body = rest.partition("\n")
    if not newline or not second or not node:
        raise MalformedMessage(f"not a cluster message: {text[:60]!r}")
    return node, tag, body


def _json(event: Event) -> str:
    return render(event, Dialect.JSON).decode().rstrip("\n")


def _event(body: str, node: str) -> Event:
    try:
        event = parse_event(body)
    except ValueError as exc:
        raise MalformedMessage(f"unreadable event from {node!r}: {exc}") from None
    _check_fields(event, node)
    return event


def _relayed_event(body: str, node: str, *, streamed: bool) -> RelayedEvent:
    event = _event(body, node)
    if not isinstance(event, _STREAMED if streamed else _RELAYED):
        where = "in a room stream" if streamed else "relayed"
        raise MalformedMessage(f"a {event.type} event cannot be {where} (from {node!r})")
    return event


def _check_fields(event: Event, node: str) -> None:
    """Refuse an event whose fields the hub could not use: a wrong type, a missing name, or
    a string that cannot be sent to a client (a lone surrogate, which JSON can escape)."""
    bad = _bad_field(event)
    if bad is not None:
        raise MalformedMessage(f"a {event.type} event from {node!r} with a bad {bad!r}")


_STRINGS: Final = ("id", "text", "room", "nick", "re", "new_nick", "target", "change")
_MAY_BE_NULL: Final = frozenset({"room", "nick", "re"})
_FLAGS: Final = ("history", "echo")


def _bad_field(event: Event) -> str | None:
    required = _REQUIRED.get(type(event), ())
    for name in _STRINGS:
        value = getattr(event, name, "")
        if value is None and name in _MAY_BE_NULL and name not in required:
            continue
        if not isinstance(value, str) or not _sendable(value):
            return name
        if not value and (name == "id" or name in required):
            return name
    if not _is_time(event.ts):
        return "ts"
    for name in _FLAGS:
        if not isinstance(getattr(event, name, False), bool):
            return name
    return None


def _sendable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_time(value: object) -> bool:
    """A Unix time JSON may carry: a finite number, not a boolean, not a 400-digit int."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < _MAX_TIME if isinstance(value, int) else math.isfinite(value)
