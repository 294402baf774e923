"""The chat protocol, with no I/O: framing, sanitising, names, events, rendering, limits.

Theory of operation
-------------------
Bytes from a socket go through a :class:`LineFramer`, which cuts them into lines, drops
telnet negotiation and never holds more than one line's worth of memory. A line is
decoded (invalid UTF-8 replaced) and :func:`sanitize`-d by :func:`decode_line`; the
connection's codec (``chat/codecs.py``) then reads it into a command by the rules of the
command table (``chat/commands.py``). Anything the protocol refuses raises
:class:`~chat.errors.ProtocolError` with a stable code; nothing here touches a socket.

What the server says is an *event* (:class:`Event` subclasses, frozen). :func:`render`
turns an event into the bytes of one dialect: JSON Lines, or text for people, which
:func:`render_text` wraps at a screen's width so that no peer can forge a line.
:func:`parse_event` reads a JSON line back into the same event, so
``parse_event(render(e, JSON)) == e`` for every event.

protocol.md is the contract this module implements; keep them in step.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from enum import Enum, StrEnum
from typing import Any, ClassVar, Final

from chat.errors import ErrorCode, ProtocolError

__all__ = [
    "DEFAULT_WIDTH",
    "MAX_COMBINING",
    "MAX_WIDTH",
    "MIN_WIDTH",
    "NICK_MAX",
    "PROTOCOL_VERSION",
    "REASON_MAX",
    "ROOM_MAX",
    "ROOM_MODES",
    "TOPIC_MAX",
    "Action",
    "Away",
    "BanInfo",
    "BanList",
    "Bye",
    "Dialect",
    "Error",
    "Event",
    "FrameError",
    "Hello",
    "Ignores",
    "Invite",
    "Join",
    "Kick",
    "LineFramer",
    "LoggedIn",
    "Message",
    "Mode",
    "Modes",
    "Nick",
    "Notice",
    "Part",
    "Ping",
    "Pong",
    "Private",
    "Quit",
    "RoomInfo",
    "RoomList",
    "Topic",
    "Welcome",
    "Who",
    "Whois",
    "char_width",
    "decode_line",
    "nick_key",
    "nick_skeleton",
    "parse_event",
    "render",
    "render_text",
    "room_key",
    "sanitize",
    "sniff_foreign",
    "strip_telnet",
    "unwrap",
    "validate_nick",
    "validate_room",
    "wrap_line",
]

PROTOCOL_VERSION: Final = 1
NICK_MAX: Final = 16
ROOM_MAX: Final = 32
TOPIC_MAX: Final = 300
REASON_MAX: Final = 200
LOBBY: Final = "#lobby"


class Dialect(StrEnum):
    TEXT = "text"
    JSON = "json"


# --- sanitising -------------------------------------------------------------------------

# C0 controls except TAB, DEL, C1 controls (U+0080..U+009F, U+009B CSI among them), and the
# Unicode controls that reorder or break lines on screen: bidi embeddings, overrides and
# isolates, and the line/paragraph separators. Removing them means no peer can move another
# user's cursor, retitle a terminal, or make text appear to come from someone else.
_UNSAFE_CODEPOINTS: Final = (
    [c for c in range(0x20) if c != 0x09]
    + [0x7F]
    + list(range(0x80, 0xA0))
    + [0x2028, 0x2029, 0x200E, 0x200F, 0x061C]
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)
# Lone surrogates cannot be encoded as UTF-8; JSON's "\ud800" escapes can produce them.
_SURROGATES: Final = range(0xD800, 0xE000)
_SANITIZE_TABLE: Final[dict[int, str | None]] = {
    **dict.fromkeys(_UNSAFE_CODEPOINTS),
    **dict.fromkeys(_SURROGATES, "\ufffd"),
}
_UNSAFE_RE: Final = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in _UNSAFE_CODEPOINTS) + "\ud800-\udfff]"
)


# Combining marks stack on the character before them. A few are legitimate in many scripts
# (Vietnamese, Thai, Hebrew points); hundreds are a "Zalgo" attack that costs every client
# that draws them (prompt_toolkit caches each prefix of a grapheme: 10,000 marks cost one
# client 9.7 s of CPU). Beyond MAX_COMBINING marks on one character the rest are dropped.
MAX_COMBINING: Final = 4


def _mark_pile(planes: Iterable[int]) -> re.Pattern[str]:
    """A regex for a character's combining marks (categories Mn, Me) beyond the cap.

    The marks are listed one by one: for the Basic Multilingual Plane that compiles to
    sre's bitmap charset, about fifty times faster than a list of ranges.
    """
    mark = "[" + "".join(chr(c) for c in planes if unicodedata.category(chr(c)) in MARKS) + "]"
    return re.compile(f"({mark}{{{MAX_COMBINING}}}){mark}+")


MARKS: Final = ("Mn", "Me")
_BMP_MARK_PILE_RE: Final = _mark_pile(range(0x10000))
_ANY_MARK_PILE_RE: Final = _mark_pile(itertools.chain(range(0x30000), range(0xE0000, 0xE1000)))


def sanitize(text: str) -> str:
    """Remove every character that could control a terminal or forge a line, and cap the
    combining marks on any one character at :data:`MAX_COMBINING`.

    Lone surrogates become U+FFFD, as invalid UTF-8 does, so every text can be encoded.
    """
    if _UNSAFE_RE.search(text) is not None:
        text = text.translate(_SANITIZE_TABLE)
    if text.isascii():  # the common case, at C speed: no marks to count
        return text
    pile = _BMP_MARK_PILE_RE if max(text) <= "\uffff" else _ANY_MARK_PILE_RE
    return text if pile.search(text) is None else pile.sub(r"\1", text)


def decode_line(raw: bytes) -> str:
    """Decode one line from the wire: invalid UTF-8 is replaced, never fatal; then sanitise."""
    return sanitize(raw.decode("utf-8", "replace"))


# --- telnet and framing -------------------------------------------------------------------

# IAC (255) starts every telnet command. 0xFF never occurs in UTF-8, so any IAC is telnet:
# IAC WILL/WONT/DO/DONT <option>, IAC SB ... IAC SE, or a two-byte IAC <command>.
_TELNET_RE: Final = re.compile(rb"\xff(?:[\xfb-\xfe].?|\xfa.*?(?:\xff\xf0|$)|.?)", re.DOTALL)


def strip_telnet(line: bytes) -> bytes:
    """Drop telnet option negotiation from a line, so ``telnet host port`` just works."""
    if b"\xff" not in line:
        return line
    return _TELNET_RE.sub(b"", line)


class FrameError(Enum):
    """What :class:`LineFramer` reports instead of a line."""

    OVERLONG = "overlong"  # a line longer than the limit was discarded; the stream goes on
    NO_NEWLINE = "no_newline"  # far too many bytes with no newline: give up on this peer


class LineFramer:
    """Cut a byte stream into lines without ever holding more than ``max_line`` bytes.

    Accepts ``\\n``, ``\\r\\n`` and telnet's ``\\r\\0``. A line longer than ``max_line`` is
    discarded up to its newline and reported once as ``OVERLONG``; if ``max_garbage`` bytes go
    by without any newline, ``NO_NEWLINE`` is reported and the framer stops producing lines.
    """

    __slots__ = (
        "_dead",
        "_discarded",
        "_discarding",
        "_last_was_cr",
        "_max_garbage",
        "_max_line",
        "_partial",
    )

    def __init__(self, max_line: int, max_garbage: int) -> None:
        self._max_line = max_line
        self._max_garbage = max(max_garbage, max_line)
        self._partial = bytearray()
        self._discarding = False
        self._discarded = 0
        self._dead = False
        self._last_was_cr = False

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Lines (without terminator, telnet stripped) completed by ``data``, in order."""
        if self._dead:
            return []
        if b"\r\0" in data:  # telnet sends Enter as CR NUL in character mode
            data = data.replace(b"\r\0", b"\r\n")
        if data[:1] == b"\0" and self._last_was_cr:
            data = b"\n" + data[1:]
        self._last_was_cr = data.endswith(b"\r")
        out: list[bytes | FrameError] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data, start, out)
                return out
            if self._discarding:
                self._discarding = False
                self._discarded = 0
                out.append(FrameError.OVERLONG)
            else:
                if self._partial:
                    self._partial += data[start:end]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = data[start:end]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self._max_line:
                    out.append(FrameError.OVERLONG)
                else:
                    out.append(strip_telnet(line))
            start = end + 1

    def _keep(self, data: bytes, start: int, out: list[bytes | FrameError]) -> None:
        """Hold the unterminated tail of ``data``, or count it as garbage once too long."""
        tail = len(data) - start
        if not tail:
            return
        if not self._discarding:
            if len(self._partial) + tail <= self._max_line + 1:  # +1: room for a final \r
                self._partial += data[start:]
                return
            self._discarding = True
            self._discarded = len(self._partial)
            self._partial.clear()
        self._discarded += tail
        if self._discarded > self._max_garbage:
            self._dead = True
            out.append(FrameError.NO_NEWLINE)


_HTTP_REQUEST_RE: Final = re.compile(
    rb"^(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) \S+ HTTP/\d"
)


def sniff_foreign(first_bytes: bytes) -> str | None:
    """Name the protocol if the first bytes of a connection are clearly not chat."""
    if first_bytes[:1] == b"\x16" and first_bytes[1:2] == b"\x03":
        return "a TLS handshake"
    if first_bytes[:4] == b"SSH-":
        return "an SSH client"
    if _HTTP_REQUEST_RE.match(first_bytes):
        return "an HTTP request"
    return None


# --- names --------------------------------------------------------------------------------

_NICK_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_NICK_CHARS_RE: Final = re.compile(r"[^A-Za-z0-9_-]")
_ROOM_RE: Final = re.compile(rf"#[A-Za-z0-9_-]{{1,{ROOM_MAX - 1}}}")
# What looks alike on screen, folded together after lower-casing (Unicode TR 39's
# confusables for the characters a name may hold). Case-insensitive identity already merges
# I and i; 'I' looks like 'l' in most fonts, so i/l/1 are one shape; and three letters look
# like two: m like "rn", w like "vv", d like "cl" (TR 39 maps each that way).
_SKELETON_TABLE: Final = str.maketrans(
    {"0": "o", "1": "l", "i": "l", "m": "rn", "w": "vv", "d": "cl"}
)
RESERVED_NICKS: Final = frozenset(
    {
        "admin",
        "administrator",
        "all",
        "anonymous",
        "botserv",
        "chanserv",
        "chat",
        "everyone",
        "help",
        "hostserv",
        "memoserv",
        "moderator",
        "nickserv",
        "nobody",
        "operator",
        "operserv",
        "root",
        "server",
        "services",
        "system",
        "sysop",
    }
)


def nick_key(nick: str) -> str:
    """Identity of a nickname: nicknames are unique case-insensitively."""
    return nick.lower()


def nick_skeleton(nick: str) -> str:
    """What a name looks like on screen; two nicknames (or two rooms) with one skeleton may
    not coexist."""
    return nick.lower().translate(_SKELETON_TABLE)


_RESERVED_SKELETONS: Final = frozenset(nick_skeleton(n) for n in RESERVED_NICKS)


def validate_nick(raw: str) -> str:
    """Return the nickname if it follows the rules in protocol.md, or say exactly why not."""
    nick = raw.strip()
    if not nick:
        raise ProtocolError(ErrorCode.NICK_INVALID, "A nickname cannot be empty.")
    if len(nick) > NICK_MAX:
        raise ProtocolError(
            ErrorCode.NICK_INVALID,
            f"Nickname is too long ({len(nick)} characters, at most {NICK_MAX}).",
        )
    if _NICK_RE.fullmatch(nick) is None:
        if not ("a" <= nick[0].lower() <= "z"):
            raise ProtocolError(
                ErrorCode.NICK_INVALID, "A nickname must start with a letter (a-z, A-Z)."
            )
        bad = _NICK_CHARS_RE.search(nick)
        shown = repr(bad.group()) if bad else "a character"
        raise ProtocolError(
            ErrorCode.NICK_INVALID,
            f"Nickname contains {shown}; use only letters a-z, digits, '_' and '-'.",
        )
    if nick_skeleton(nick) in _RESERVED_SKELETONS:
        raise ProtocolError(ErrorCode.NICK_RESERVED, f"The nickname {nick!r} is reserved.")
    return nick


def room_key(room: str) -> str:
    """Identity of a room name: room names are case-insensitive."""
    return room.lower()


def validate_room(raw: str) -> str:
    """Return a valid room name; a name given without '#' gets one."""
    name = raw.strip()
    if not name.startswith("#"):
        name = "#" + name
    if _ROOM_RE.fullmatch(name) is None:
        raise ProtocolError(
            ErrorCode.ROOM_INVALID,
            f"Invalid room name {name!r}: '#' then 1 to {ROOM_MAX - 1} letters, digits, "
            "'_' or '-'.",
        )
    return name


# --- events (server to client) ------------------------------------------------------------

# Ids are unique per process; the random prefix keeps them unique across restarts and nodes.
_ID_PREFIX: Final = os.urandom(4).hex()
_id_counter = itertools.count(1)


def new_event_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something the server tells a client. Every event has these five fields and a type.

    ``re`` is set only on an answer: the id of the request it answers (protocol.md,
    "Request ids"); it is left out of the JSON of every other event.
    """

    type: ClassVar[str] = "event"
    id: str = field(default_factory=new_event_id)
    ts: float = field(default_factory=time.time)
    room: str | None = None
    nick: str | None = None
    text: str = ""
    re: str | None = None

    def as_text(self) -> str:
        """The event as human-readable text (without the final line ending)."""
        return self.text

    def as_dict(self) -> dict[str, Any]:
        """The event as the JSON object the JSON dialect sends."""
        data: dict[str, Any] = {"type": self.type}
        for f in _fields_of(type(self)):
            data[f] = getattr(self, f)
        if self.re is None:
            del data["re"]
        return data


_FIELDS_CACHE: dict[type[Event], tuple[str, ...]] = {}


def _fields_of(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELDS_CACHE.get(cls)
    if names is None:
        names = _FIELDS_CACHE[cls] = tuple(f.name for f in fields(cls))
    return names


def _without_unset(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """``data`` without the fields among ``names`` left at their empty default, so that
    JSON clients see them only where they mean something."""
    for name in names:
        if not data[name]:
            del data[name]
    return data


def _where(room: str | None) -> str:
    return f"[{room}] " if room else ""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Event):
    """Answer to a JSON ``hello``: from here on the connection speaks JSON Lines."""

    type: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    server: str = ""

    def as_text(self) -> str:
        return f"*** {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Event):
    """Registration succeeded; ``nick`` is the registered nickname, ``account`` the account
    logged in with (null for a guest)."""

    type: ClassVar[str] = "welcome"
    account: str | None = None

    def as_text(self) -> str:
        return f"*** {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(Event):
    """A line said in a room. ``history`` marks a replay, with its original ``ts``."""

    type: ClassVar[str] = "message"
    history: bool = False
    notice: bool = False  # a notice: automatic replies (bots) must never answer one
    tags: str = ""  # IRC client-only tags ("+draft/reply=id"), relayed to IRC clients only

    def as_text(self) -> str:
        when = f"(history {_when(self.ts)}) " if self.history else ""
        if self.notice:
            return f"{_where(self.room)}{when}-{self.nick}- {self.text}"
        return f"{_where(self.room)}{when}<{self.nick}> {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return _without_unset(Event.as_dict(self), "notice", "tags")  # only notices say so


@dataclass(frozen=True, slots=True, kw_only=True)
class Action(Event):
    """A ``/me`` action in a room."""

    type: ClassVar[str] = "action"
    history: bool = False

    def as_text(self) -> str:
        when = f"(history {_when(self.ts)}) " if self.history else ""
        return f"{_where(self.room)}{when}* {self.nick} {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Private(Event):
    """A private message from ``nick`` to ``target``; ``echo`` marks the sender's copy."""

    type: ClassVar[str] = "private"
    target: str = ""
    echo: bool = False
    notice: bool = False  # as Message.notice
    tags: str = ""  # as Message.tags

    def as_text(self) -> str:
        who = f"-{self.nick}-" if self.notice else f"<{self.nick}>"
        if self.echo:
            return f"[private to {self.target}] {who} {self.text}"
        return f"[private] {who} {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return _without_unset(Event.as_dict(self), "notice", "tags")  # only notices say so


@dataclass(frozen=True, slots=True, kw_only=True)
class Join(Event):
    type: ClassVar[str] = "join"

    def as_text(self) -> str:
        return f"{_where(self.room)}*** {self.nick} joined {self.room}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Part(Event):
    """``nick`` left ``room``; ``text`` is the reason, maybe empty."""

    type: ClassVar[str] = "part"

    def as_text(self) -> str:
        why = f" ({self.text})" if self.text else ""
        return f"{_where(self.room)}*** {self.nick} left {self.room}{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Event):
    """``nick`` left the chat; sent once to everyone who shared a room with them."""

    type: ClassVar[str] = "quit"

    def as_text(self) -> str:
        why = f" ({self.text})" if self.text else ""
        return f"*** {self.nick} quit{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Nick(Event):
    """``nick`` is now called ``new_nick``."""

    type: ClassVar[str] = "nick"
    new_nick: str = ""

    def as_text(self) -> str:
        return f"*** {self.nick} is now known as {self.new_nick}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topic(Event):
    """A room's topic: set by ``nick``, or (``nick`` null) shown on request or on join."""

    type: ClassVar[str] = "topic"
    by: str | None = None  # who set the topic shown (on join or request), if known
    at: float = 0.0  # and when

    def as_text(self) -> str:
        if self.nick:
            return f"{_where(self.room)}*** {self.nick} set the topic: {self.text}"
        if self.text:
            return f"{_where(self.room)}*** Topic: {self.text}"
        return f"{_where(self.room)}*** No topic is set"


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str
    members: int
    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomList(Event):
    """Answer to ``/rooms``: one page of the matching rooms, largest first.

    ``total`` rooms matched; this page holds ``rooms`` from the ``offset``-th on.
    """

    type: ClassVar[str] = "rooms"
    rooms: tuple[RoomInfo, ...] = ()
    total: int = 0
    offset: int = 0

    def as_text(self) -> str:
        total = max(self.total, self.offset + len(self.rooms))
        count = f"{total} room{'s' if total != 1 else ''}"
        if self.offset == 0 and len(self.rooms) == total:
            lines = [f"*** {count}:"]
        else:
            last = self.offset + len(self.rooms)
            lines = [f"*** {count}, largest first; {self.offset + 1}-{last} here:"]
        for info in self.rooms:
            topic = f": {info.topic}" if info.topic else ""
            people = "member" if info.members == 1 else "members"
            lines.append(f"***   {info.room} ({info.members} {people}){topic}")
        next_page = self.offset + len(self.rooms)
        if next_page < total:
            lines.append(f"*** {total - next_page} more: /rooms +{next_page} [text]")
        return "\r\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = Event.as_dict(self)
        data["rooms"] = [
            {"room": i.room, "members": i.members, "topic": i.topic} for i in self.rooms
        ]
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Who(Event):
    """Answer to ``/who``: the members of ``room``; ``operators`` and ``voiced`` are those of
    them who operate the room or may speak while it is moderated (text: ``@alice +bob``)."""

    type: ClassVar[str] = "who"
    members: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    voiced: tuple[str, ...] = ()

    def as_text(self) -> str:
        ops = {nick_key(n) for n in self.operators}
        voiced = {nick_key(n) for n in self.voiced}
        shown = [
            ("@" if nick_key(n) in ops else "+" if nick_key(n) in voiced else "") + n
            for n in self.members
        ]
        names = ": " + ", ".join(shown) if shown else ""
        return f"{_where(self.room)}*** {len(self.members)} in {self.room}{names}"

    def as_dict(self) -> dict[str, Any]:
        data = Event.as_dict(self)
        data["members"] = list(self.members)
        data["operators"] = list(self.operators)
        data["voiced"] = list(self.voiced)
        return data


# What each room mode change reads as, in text: (+ sentence, - sentence).
_MODE_TEXT: Final = {
    "o": ("made {target} an operator of {room}", "took operator status in {room} from {target}"),
    "v": ("let {target} speak in {room}", "took {target}'s voice in {room}"),
    "b": ("banned {target} from {room}", "lifted the ban on {target} in {room}"),
    "q": ("muted {target} in {room}", "unmuted {target} in {room}"),
    "i": ("made {room} invite-only", "opened {room} to everyone"),
    "m": ("moderated {room}: only operators and voiced members speak", "unmoderated {room}"),
    "t": ("let only operators set the topic of {room}", "let everyone set the topic of {room}"),
    "r": ("claimed {room} for the account {target}", "unclaimed {room}"),
}
ROOM_MODES: Final = "imt"  # the modes /mode sets; o v b q r change through their commands


@dataclass(frozen=True, slots=True, kw_only=True)
class Mode(Event):
    """``nick`` changed ``room``: ``change`` is one of ``+o -o +v -v +b -b +q -q +i -i +m -m
    +t -t +r -r`` (operator, voice, ban, mute, invite-only, moderated, topic lock, claimed);
    ``target`` is the nickname, mask or account concerned; ``text`` the reason, if any.
    ``nick`` is null when the server itself did it (an owner's operator status on join)."""

    type: ClassVar[str] = "mode"
    change: str = ""
    target: str = ""

    def as_text(self) -> str:
        plus, minus = _MODE_TEXT.get(self.change[1:], ("changed {room}", "changed {room}"))
        sentence = (plus if self.change.startswith("+") else minus).format(
            target=self.target, room=self.room
        )
        why = f" ({self.text})" if self.text else ""
        return f"{_where(self.room)}*** {self.nick or 'The server'} {sentence}{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Modes(Event):
    """Answer to ``/mode`` without a change: the room's modes and who owns it."""

    type: ClassVar[str] = "modes"
    modes: str = ""
    owner: str | None = None

    def as_text(self) -> str:
        modes = f"+{self.modes}" if self.modes else "no modes"
        owner = f", claimed by {self.owner}" if self.owner else ", not claimed"
        return f"{_where(self.room)}*** {self.room}: {modes}{owner}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Kick(Event):
    """``nick`` removed ``target`` from ``room``; ``text`` is the reason. Everyone in the
    room gets it, ``target`` included, who is no longer in the room."""

    type: ClassVar[str] = "kick"
    target: str = ""

    def as_text(self) -> str:
        why = f" ({self.text})" if self.text else ""
        return f"{_where(self.room)}*** {self.nick} removed {self.target} from {self.room}{why}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite(Event):
    """``nick`` invited ``target`` to ``room``: sent to ``target`` and announced in it."""

    type: ClassVar[str] = "invite"
    target: str = ""

    def as_text(self) -> str:
        return f"{_where(self.room)}*** {self.nick} invited {self.target} to {self.room}"


@dataclass(frozen=True, slots=True)
class BanInfo:
    """One entry of ``/bans``: ``kind`` is ``ban`` or ``mute``."""

    mask: str
    kind: str
    reason: str
    by: str
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BanList(Event):
    """Answer to ``/bans``: a room's bans and mutes (``room`` null: the server's bans)."""

    type: ClassVar[str] = "bans"
    bans: tuple[BanInfo, ...] = ()

    def as_text(self) -> str:
        where = self.room or "the server"
        if not self.bans:
            return f"{_where(self.room)}*** No bans or mutes in {where}"
        lines = [f"{_where(self.room)}*** {len(self.bans)} bans and mutes in {where}:"]
        for ban in self.bans:
            why = f": {ban.reason}" if ban.reason else ""
            lines.append(
                f"{_where(self.room)}***   {ban.kind} {ban.mask} by {ban.by}, {_when(ban.ts)}{why}"
            )
        return "\r\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = Event.as_dict(self)
        data["bans"] = [
            {"mask": b.mask, "kind": b.kind, "reason": b.reason, "by": b.by, "ts": b.ts}
            for b in self.bans
        ]
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Whois(Event):
    """Answer to ``/whois``: ``nick`` is who was asked about. ``rooms`` are the rooms the
    asker shares with them or that anyone may see; ``idle`` is seconds since they last
    said something; ``address`` is shown to server operators only."""

    type: ClassVar[str] = "whois"
    account: str | None = None
    rooms: tuple[str, ...] = ()
    idle: int = 0
    away: str = ""
    since: float = 0.0
    operator: bool = False
    address: str | None = None
    user: str = ""
    realname: str = ""
    operator_in: tuple[str, ...] = ()  # of rooms, those they operate

    def as_text(self) -> str:
        lines = [
            f"*** {self.nick}"
            + (f" is logged in as {self.account}" if self.account else " is not logged in")
        ]
        if self.operator:
            lines.append(f"***   {self.nick} is a server operator")
        lines.append("***   rooms: " + (", ".join(self.rooms) or "none you can see"))
        lines.append(f"***   idle {self.idle} s, connected since {_when(self.since)}")
        if self.away:
            lines.append(f"***   away: {self.away}")
        if self.address:
            lines.append(f"***   address: {self.address}")
        return "\r\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = Event.as_dict(self)
        data["rooms"] = list(self.rooms)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Away(Event):
    """``nick`` is away with message ``text`` (empty: back). Sent as the answer to
    ``/away``, and once to whoever sends an away user a private message."""

    type: ClassVar[str] = "away"

    def as_text(self) -> str:
        if self.text:
            return f"*** {self.nick} is away: {self.text}"
        return f"*** {self.nick} is back"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignores(Event):
    """Answer to ``/ignore``, ``/unignore`` and ``/ignores``: everyone you ignore."""

    type: ClassVar[str] = "ignores"
    nicks: tuple[str, ...] = ()

    def as_text(self) -> str:
        if not self.nicks:
            return "*** You ignore nobody"
        return "*** You ignore: " + ", ".join(self.nicks)

    def as_dict(self) -> dict[str, Any]:
        data = Event.as_dict(self)
        data["nicks"] = list(self.nicks)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedIn(Event):
    """This connection's account: ``account`` is the account now logged in, or null after
    ``/unregister``. ``nick`` is the connection's nickname."""

    type: ClassVar[str] = "account"
    account: str | None = None

    def as_text(self) -> str:
        return f"*** {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Event):
    """Information from the server: help, the active room, refusals that are not errors."""

    type: ClassVar[str] = "notice"

    def as_text(self) -> str:
        return "\r\n".join(f"{_where(self.room)}*** {line}" for line in self.text.split("\n"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Event):
    """A command was refused; ``code`` is stable, ``text`` is for people, ``command`` names
    the command refused (null when the line was not a command at all)."""

    type: ClassVar[str] = "error"
    code: str = ""
    command: str | None = None

    def as_text(self) -> str:
        return f"!!! {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Event):
    """Server keepalive for JSON clients: answer with a ``pong`` carrying ``text``."""

    type: ClassVar[str] = "ping"

    def as_text(self) -> str:
        return f"*** ping {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Event):
    """Answer to a client's ``ping``; ``text`` is the client's token."""

    type: ClassVar[str] = "pong"

    def as_text(self) -> str:
        return f"*** pong {self.text}".rstrip()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(Event):
    """The last line before the server closes a connection; ``code`` says why."""

    type: ClassVar[str] = "bye"
    code: str = ""

    def as_text(self) -> str:
        return f"*** Closing connection: {self.text}"


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.type: cls
    for cls in (
        Hello,
        Welcome,
        Message,
        Action,
        Private,
        Join,
        Part,
        Quit,
        Nick,
        Topic,
        RoomList,
        Who,
        Mode,
        Modes,
        Kick,
        Invite,
        BanList,
        Whois,
        Away,
        Ignores,
        LoggedIn,
        Notice,
        Error,
        Ping,
        Pong,
        Bye,
    )
}


def render(event: Event, dialect: Dialect) -> bytes:
    """The bytes that carry ``event`` in ``dialect``, line ending included."""
    if dialect is Dialect.JSON:
        return (
            json.dumps(event.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        ).encode()
    return (event.as_text() + "\r\n").encode()


# --- the text dialect on a screen ----------------------------------------------------------
#
# A terminal wraps a line longer than its width by itself, so padding a message to the width
# would put the attacker's next words at the start of a screen line, where they could pass
# for a line of the server's ("[#lobby] <alice> ..."). So the server wraps text-dialect
# lines itself, at the connection's width, and indents every continuation: every screen line
# that starts at column 0 was started by the server. Widths are over-estimated, never
# under-estimated (a wide or ambiguous character counts 2), so the server's wrap always
# comes before the terminal's. Peers' runs of whitespace (tabs included) become one space.

DEFAULT_WIDTH: Final = 80
MIN_WIDTH: Final = 20
MAX_WIDTH: Final = 1000
CONTINUATION: Final = "  "
_WHITESPACE_RUN_RE: Final = re.compile(r"\s{2,}|\t")


def char_width(char: str) -> int:
    """Columns ``char`` may take on a terminal, rounded up where terminals disagree."""
    if char.isascii():
        return 1
    if unicodedata.category(char) in MARKS:
        return 0
    if unicodedata.east_asian_width(char) in ("W", "F", "A") or ord(char) >= 0x1F000:
        return 2
    return 1


def wrap_line(line: str, width: int) -> list[str]:
    """``line`` as screen lines of at most ``width`` columns, continuations indented.

    The line is the rows joined, each continuation without its indent (:func:`unwrap`).
    """
    if len(line) <= width and line.isascii():
        return [line]
    rows: list[str] = []
    row: list[str] = []
    used = 0
    limit = width
    for char in line:
        cols = char_width(char)
        if used + cols > limit:
            text = "".join(row)
            cut = text.rfind(" ")
            if cut > len(text) // 2:  # break after a space when one is in the second half
                rows.append(text[: cut + 1])  # the space stays, unseen: rows + "  " rejoin
                row = list(text[cut + 1 :])
            else:
                rows.append(text)
                row = []
            row[:0] = CONTINUATION
            used = sum(char_width(c) for c in row)
            limit = width
        row.append(char)
        used += cols
    rows.append("".join(row))
    return rows


def unwrap(rows: Iterable[str]) -> list[str]:
    """The lines that :func:`wrap_line` cut into ``rows`` (for programs reading the text
    dialect, and tests)."""
    lines: list[str] = []
    for row in rows:
        if row.startswith(CONTINUATION) and lines:
            lines[-1] += row[len(CONTINUATION) :]
        else:
            lines.append(row)
    return lines


def _collapse(text: str) -> str:
    """``text`` with every run of whitespace as one space; the same object if it has none."""
    if text.isascii() and "  " not in text and "\t" not in text:
        return text  # the common case, at C speed
    return _WHITESPACE_RUN_RE.sub(" ", text) if _WHITESPACE_RUN_RE.search(text) else text


_PEER_TEXT: Final[tuple[type[Event], ...]] = (Message, Action, Private, Topic, Part, Quit)


def render_text(event: Event, width: int = DEFAULT_WIDTH) -> bytes:
    """The text-dialect bytes of ``event`` for a screen ``width`` columns wide.

    Rendered once per broadcast, so the common case (one short ASCII line, nothing to
    collapse) costs little more than ``as_text``.
    """
    if isinstance(event, _PEER_TEXT):
        collapsed = _collapse(event.text)
        if collapsed is not event.text:
            event = replace(event, text=collapsed)
    text = event.as_text()
    if len(text) <= width and text.isascii() and "\r\n" not in text:
        return (text + "\r\n").encode()
    rows = [row for line in text.split("\r\n") for row in wrap_line(line, width)]
    return ("\r\n".join(rows) + "\r\n").encode()


def parse_event(line: str | bytes) -> Event:
    """Read one JSON-dialect line back into its event; unknown fields are ignored.

    Raises ``ValueError`` when the line is not a JSON event this version understands.
    """
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("event is not a JSON object")  # noqa: TRY004 - one error type
        kind = obj.get("type")
        cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"unknown event type {kind!r}")
        kwargs = {name: obj[name] for name in _fields_of(cls) if name in obj}
        if cls is RoomList:
            kwargs["rooms"] = tuple(
                RoomInfo(room=i["room"], members=i["members"], topic=i["topic"])
                for i in kwargs.get("rooms", ())
            )
        elif cls is BanList:
            kwargs["bans"] = tuple(
                BanInfo(mask=b["mask"], kind=b["kind"], reason=b["reason"], by=b["by"], ts=b["ts"])
                for b in kwargs.get("bans", ())
            )
        for name, value in kwargs.items():  # JSON arrays are the events' tuples
            if type(value) is list:
                kwargs[name] = tuple(value)
        return cls(**kwargs)
    except (TypeError, KeyError, RecursionError) as exc:
        raise ValueError(f"malformed event: {exc}") from None
