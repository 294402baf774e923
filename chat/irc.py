"""The IRC dialect's wire format: parsing IRC lines and rendering events as IRC lines.

Pure, like the other codecs: no sockets and no hub. An IRC connection has state the others
do not (its nickname appears in every numeric, the capabilities it negotiated decide which
tags it gets, history replays are wrapped in batches), so :class:`IrcCodec` is made per
connection. Its :meth:`~IrcCodec.encode` is stateless, because the hub renders a room's
events once per :attr:`~IrcCodec.key` and shares the bytes; what depends on this
connection's state goes through :meth:`~IrcCodec.encode_one`, which the hub uses for what is
sent to this connection alone. The IRC commands themselves are carried out by
:mod:`chat.ircd`, at the session layer, because most need the hub.

References: RFC 1459/2812 and https://modern.ircdocs.horse for the lines and numerics;
https://ircv3.net for tags, ``batch``, ``server-time``, ``echo-message``, ``labeled-response``.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from chat.errors import ErrorCode, ProtocolError
from chat.protocol import (
    Action,
    Away,
    BanList,
    Bye,
    Error,
    Event,
    Hello,
    Invite,
    Join,
    Kick,
    LoggedIn,
    Message,
    Mode,
    Modes,
    Nick,
    Notice,
    Part,
    Ping,
    Pong,
    Private,
    Quit,
    RoomList,
    Topic,
    Welcome,
    Who,
    Whois,
    sanitize,
)

__all__ = [
    "CAPABILITIES",
    "ERROR_NUMERICS",
    "IRC_LINE_MAX",
    "USER_HOST",
    "USER_MAX",
    "IrcCodec",
    "IrcMessage",
    "escape_tag",
    "format_message",
    "looks_like_irc",
    "parse_message",
    "strip_formatting",
]

IRC_LINE_MAX: Final = 512  # bytes of a line without its tags, CR LF included (RFC 1459)
TAGS_MAX: Final = 8191  # bytes of a client's tags, '@' and the space included (IRCv3)
# What we offer in CAP LS. ``sasl`` only does PLAIN, over the connection as it is (TLS when
# the listener has a certificate).
CAPABILITIES: Final[dict[str, str]] = {
    "away-notify": "",
    "batch": "",
    "draft/chathistory": "",
    "echo-message": "",
    "labeled-response": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "PLAIN",
    "server-time": "",
    "userhost-in-names": "",
}
# The first line of an IRC client: every client sends one of these first (CAP LS to
# negotiate, or NICK / USER / PASS to register at once), in capitals.
_FIRST_LINE_RE: Final = re.compile(rb"^(?:@\S+ )?(?:CAP|NICK|USER|PASS) \S")
# IRC formatting: bold, colour (with its digits), hex colour, italics, strike, underline,
# monospace, reverse, reset. Removed, not passed on: see protocol.md, "IRC".
_FORMATTING_RE: Final = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
# The text dialect's marks at the start of a line ("[#room] *** "), not repeated in a NOTICE.
_PREFIX_RE: Final = re.compile(r"^(?:\[#\S+\] )?(?:\*\*\*|!!!) ?")
_TAG_ESCAPES: Final = {"\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES: Final = {"\\": "\\", ":": ";", "s": " ", "r": "\r", "n": "\n"}
_TAG_ESCAPE_RE: Final = re.compile(r"[\\; \r\n]")
_TAG_UNESCAPE_RE: Final = re.compile(r"\\(.?)")


def looks_like_irc(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes are an IRC client registering."""
    return _FIRST_LINE_RE.match(first_bytes) is not None


def strip_formatting(text: str) -> str:
    """Remove IRC formatting codes (with a colour's digits, which would otherwise stay)."""
    return _FORMATTING_RE.sub("", text)


# --- lines ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IrcMessage:
    """One IRC line: ``@tags :source COMMAND params``; the command is upper-cased."""

    command: str
    params: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None


def _unescape(value: str) -> str:
    return _TAG_UNESCAPE_RE.sub(lambda m: _TAG_UNESCAPES.get(m.group(1), m.group(1)), value)


def escape_tag(value: str) -> str:
    """A tag's value as it is written on the wire (IRCv3 message-tags escaping)."""
    return _TAG_ESCAPE_RE.sub(lambda m: _TAG_ESCAPES[m.group()], value)


def parse_message(line: str) -> IrcMessage | None:
    """Parse one line (without its line ending); ``None`` for an empty line."""
    tags: dict[str, str] = {}
    rest = line.lstrip(" ")
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        for item in raw_tags.split(";"):
            if item:
                key, _, value = item.partition("=")
                tags[key] = _unescape(value)
        rest = rest.lstrip(" ")
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    if " :" in rest:
        rest, _, trailing = rest.partition(" :")
    elif rest.startswith(":"):
        rest, trailing = "", rest[1:]
    words = rest.split()
    if not words:
        return None
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return IrcMessage(words[0].upper(), tuple(params), tags, source)


def format_message(source: str | None, command: str, *params: str) -> str:
    """One IRC line without its line ending (tags are added by :func:`_tagged`); the last
    parameter is made trailing only if it has to be (empty, a space, a leading colon)."""
    parts: list[str] = []
    if source:
        parts.append(":" + source)
    parts.append(command)
    if params:
        *middle, last = params
        parts.extend(middle)
        parts.append(":" + last if not last or " " in last or last[0] == ":" else last)
    return " ".join(parts)


def _line(source: str | None, command: str, *params: str) -> str:
    """As :func:`format_message`, with the last parameter always trailing (free text)."""
    if not params:
        return format_message(source, command)
    return f"{format_message(source, command, *params[:-1])} :{params[-1]}"


def server_time(ts: float) -> str:
    """The ``time`` tag of ``server-time``: ISO 8601 in UTC, to the millisecond."""
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


USER_HOST: Final = "chat"  # every user's host: addresses are never shown
USER_MAX: Final = 10  # characters of a user name, as RFC 2812 servers cut it


def hostmask(nick: str) -> str:
    """The ``nick!user@host`` every user is seen as in prefixes: we never show addresses,
    so the user is the nickname and the host is the dialect-neutral ``chat``."""
    return f"{nick}!{nick[:USER_MAX]}@{USER_HOST}"


def split_text(text: str, room: int) -> list[str]:
    """``text`` in pieces of at most ``room`` UTF-8 bytes, cut between characters, so a
    long line from a text user reaches IRC whole, over several lines."""
    data = text.encode()
    if len(data) <= room:
        return [text]
    pieces: list[str] = []
    while data:
        cut = min(room, len(data))
        while cut < len(data) and cut > 0 and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        pieces.append(data[:cut].decode())
        data = data[cut:]
    return pieces


# --- numerics and errors ------------------------------------------------------------------

# Refusals whose IRC numeric needs no channel or nickname (421 and 461 name the command);
# chat.ircd maps the others, which concern a channel or a nickname.
ERROR_NUMERICS: Final[dict[str, str]] = {
    ErrorCode.UNKNOWN_COMMAND: "421",
    ErrorCode.BAD_ARGUMENTS: "461",
    ErrorCode.NOT_REGISTERED: "451",
    ErrorCode.ALREADY_REGISTERED: "462",
    ErrorCode.LINE_TOO_LONG: "417",
    ErrorCode.WRONG_PASSWORD: "464",
}


# --- the codec ------------------------------------------------------------------------------


class IrcCodec:
    """IRC lines in, IRC lines out; one per connection (see the module's docstring)."""

    name: Final = "irc"
    # A room never echoes to an IRC connection: with echo-message, chat.ircd sends the
    # sender's copy itself, in its place among the command's answers (labeled-response).
    echoes: Final = False

    def __init__(self, server: str) -> None:
        self.server = server
        self.nick = "*"  # the target of numerics: "*" until registered
        self.caps: frozenset[str] = frozenset()
        self.echo_message = False  # this connection gets its own messages back
        self.away_notify = False
        self.key: tuple[str, bool, bool] = ("irc", False, False)
        self._batches = itertools.count(1)
        self._history: tuple[str, str] | None = None  # (batch id, room) of an open replay
        self._captured: list[str] | None = None  # a labeled request's answer, held
        self._label = ""

    def set_caps(self, caps: Iterable[str]) -> None:
        self.caps = frozenset(caps)
        self.echo_message = "echo-message" in self.caps
        self.away_notify = "away-notify" in self.caps
        self.key = ("irc", "server-time" in self.caps, "message-tags" in self.caps)

    # --- in ---------------------------------------------------------------------------

    def parse(self, raw: bytes) -> IrcMessage | None:
        """One line from the client (``None`` if empty); a line over IRC's limits is
        refused with ``line_too_long``."""
        tags_end = raw.find(b" ") + 1 if raw.startswith(b"@") else 0
        if tags_end > TAGS_MAX or len(raw) - tags_end + 2 > IRC_LINE_MAX:
            raise ProtocolError(
                ErrorCode.LINE_TOO_LONG,
                f"Input line too long (an IRC line is at most {IRC_LINE_MAX} bytes).",
            )
        return parse_message(raw.decode("utf-8", "replace"))

    # --- out: shared by every connection with this key ----------------------------------

    def encode(self, event: Event) -> bytes:
        lines = self._render(event, shared=True)
        return "".join(f"{line}\r\n" for line in lines).encode()

    def _tags(self, event: Event) -> dict[str, str]:
        tags: dict[str, str] = {}
        if "server-time" in self.caps:
            tags["time"] = server_time(event.ts)
        if "message-tags" in self.caps and isinstance(event, Message | Action | Private):
            tags["msgid"] = event.id
            if not isinstance(event, Action):
                tags.update(_client_tags(event.tags))
        return tags

    def _render(self, event: Event, *, shared: bool) -> list[str]:
        """The lines for ``event``; ``shared`` rendering must not depend on who reads it."""
        tags = self._tags(event)
        nick = event.nick or ""
        match event:
            case Message(room=str(room), text=text, notice=notice):
                return self._privmsg(hostmask(nick), room, text, tags, notice=notice)
            case Action(room=str(room), text=text):
                return self._privmsg(hostmask(nick), room, text, tags, action=True)
            case Join(room=str(room)):
                return [_tagged(format_message(hostmask(nick), "JOIN", room), tags)]
            case Part(room=str(room), text=text):
                if text:
                    return [_tagged(_line(hostmask(nick), "PART", room, text), tags)]
                return [_tagged(format_message(hostmask(nick), "PART", room), tags)]
            case Quit(text=text):
                return [_tagged(_line(hostmask(nick), "QUIT", text or "Quit"), tags)]
            case Nick(new_nick=new):
                return [_tagged(format_message(hostmask(nick), "NICK", new), tags)]
            case Topic(room=str(room), text=text) if event.nick:
                return [_tagged(_line(hostmask(nick), "TOPIC", room, text), tags)]
            case Kick(room=str(room), target=target, text=text):
                return [_tagged(_line(hostmask(nick), "KICK", room, target, text or nick), tags)]
            case Mode(room=str(room), change=change, target=target):
                return self._mode(event, room, change, target, tags)
            case Away(text=text) if shared:  # away-notify
                if text:
                    return [_tagged(_line(hostmask(nick), "AWAY", text), tags)]
                return [_tagged(format_message(hostmask(nick), "AWAY"), tags)]
            case Invite() if shared:
                return []  # IRC tells only the inviter (341) and the invited (INVITE)
        if shared:  # not this connection's nick: the bytes go to others as well
            return [
                self._server_notice(event.room or "*", _PREFIX_RE.sub("", line))
                for line in event.as_text().split("\r\n")
            ]
        return self._answer(event, tags)

    def _privmsg(
        self,
        source: str,
        target: str,
        text: str,
        tags: dict[str, str],
        *,
        action: bool = False,
        notice: bool = False,
    ) -> list[str]:
        head = f":{source} {'NOTICE' if notice else 'PRIVMSG'} {target} :"
        wrap = ("\x01ACTION ", "\x01") if action else ("", "")
        room = IRC_LINE_MAX - 2 - len(head.encode()) - len(wrap[0]) - len(wrap[1])
        prefix = _tagged("", tags)
        return [f"{prefix}{head}{wrap[0]}{piece}{wrap[1]}" for piece in split_text(text, room)]

    def _mode(
        self, event: Mode, room: str, change: str, target: str, tags: dict[str, str]
    ) -> list[str]:
        source = hostmask(event.nick) if event.nick else self.server
        letter = change[1:]
        if letter in "imt":
            return [_tagged(format_message(source, "MODE", room, change), tags)]
        if letter in "ovb":
            shown = irc_mask(target) if letter == "b" else target
            return [_tagged(format_message(source, "MODE", room, change, shown), tags)]
        return [self._server_notice(room, event.as_text())]  # q (mute), r (claim): no IRC mode

    def tagmsg(self, nick: str, target: str, client_tags: str, msgid: str, ts: float) -> str:
        """A ``TAGMSG`` as this connection sees it (it negotiated ``message-tags``)."""
        tags = {"msgid": msgid}
        if "server-time" in self.caps:
            tags["time"] = server_time(ts)
        tags.update(_client_tags(client_tags))
        return _tagged(format_message(hostmask(nick), "TAGMSG", target), tags)

    def _server_notice(self, target: str, text: str) -> str:
        return _line(self.server, "NOTICE", target, text or " ")

    # --- out: to this connection alone ----------------------------------------------------

    def encode_one(self, event: Event) -> bytes:
        """Render an event for this connection only: answers, history, errors."""
        lines: list[str] = []
        history = isinstance(event, Message | Action) and event.history
        if self._history is not None and (not history or self._history[1] != event.room):
            lines.append(self.end_history())
        if history and "batch" in self.caps:
            if self._history is None:
                ident = f"h{next(self._batches)}"
                self._history = (ident, event.room or "")
                lines.append(
                    format_message(
                        self.server, "BATCH", f"+{ident}", "chathistory", event.room or ""
                    )
                )
            rendered = self._render(event, shared=False)
            lines.extend(_add_tag(line, "batch", self._history[0]) for line in rendered)
        else:
            lines.extend(self._render(event, shared=False))
        return self.emit(lines)

    def emit(self, lines: Iterable[str]) -> bytes:
        """The bytes of ``lines`` for this connection; held instead while a labeled
        request runs (:meth:`begin_label`)."""
        if self._captured is not None:
            self._captured.extend(lines)
            return b""
        return "".join(f"{line}\r\n" for line in lines).encode()

    def history_batch(self, room: str, events: Iterable[Event]) -> list[str]:
        """Lines of history (``CHATHISTORY``), in a ``chathistory`` batch if negotiated."""
        lines = [line for event in events for line in self._render(event, shared=False)]
        if "batch" not in self.caps:
            return lines
        return self._batch(f"h{next(self._batches)}", ("chathistory", room), lines)

    def _batch(self, ident: str, kind: tuple[str, ...], lines: list[str]) -> list[str]:
        """``lines`` in the batch ``ident`` of ``kind``, from its opening line to its end;
        a line already in a batch of its own (history in a labeled answer) stays there."""
        return [
            format_message(self.server, "BATCH", f"+{ident}", *kind),
            *(_in_batch(line, ident) for line in lines),
            format_message(self.server, "BATCH", f"-{ident}"),
        ]

    def end_history(self) -> str:
        assert self._history is not None
        ident, self._history = self._history[0], None
        return format_message(self.server, "BATCH", f"-{ident}")

    def begin_label(self, label: str) -> None:
        """Hold this connection's answers until :meth:`finish`: they carry ``label``."""
        self._captured = []
        self._label = label

    def finish(self) -> bytes:
        """After a request: close an open history batch and release a labeled answer
        (one line tagged, several in a ``labeled-response`` batch, none as ``ACK``)."""
        lines: list[str] = []
        if self._history is not None:
            lines.append(self.end_history())
        captured, self._captured = self._captured, None
        if captured is not None:
            lines = captured + lines
            label = self._label
            if not lines:
                lines = [_add_tag(format_message(self.server, "ACK"), "label", label)]
            elif len(lines) == 1:
                lines = [_add_tag(lines[0], "label", label)]
            else:
                opening, *rest = self._batch(
                    f"l{next(self._batches)}", ("labeled-response",), lines
                )
                lines = [_add_tag(opening, "label", label), *rest]
        return "".join(f"{line}\r\n" for line in lines).encode()

    def numeric(self, code: str, *params: str) -> str:
        """A numeric reply to this connection; the last parameter is free text."""
        return _line(self.server, code, self.nick, *params)

    def refusal(self, code: str, command: str | None, text: str) -> str:
        """A refusal that concerns no channel or nickname: its numeric (421 and 461 name
        the command), else a NOTICE with the chat's sentence."""
        numeric = ERROR_NUMERICS.get(code)
        if numeric is None:
            return _line(self.server, "NOTICE", self.nick, text)
        if numeric in ("421", "461"):
            return self.numeric(numeric, (command or "*").upper(), text)
        return self.numeric(numeric, text)

    def _answer(self, event: Event, tags: dict[str, str]) -> list[str]:
        nick = event.nick or ""
        num = self.numeric
        match event:
            case Private(target=target, text=text, echo=echo, notice=notice):
                if echo and not self.echo_message:
                    return []
                return self._privmsg(
                    hostmask(nick), target if echo else self.nick, text, tags, notice=notice
                )
            case Welcome():
                self.nick = nick
                return [
                    num("001", f"Welcome to the chat network, {hostmask(nick)}"),
                    num("002", f"Your host is {self.server}, running chat"),
                    num("003", "This server speaks IRC, JSON Lines and plain text on one port"),
                    format_message(
                        self.server, "004", self.nick, self.server, "chat", "io", "bimnotv", "bov"
                    ),
                ]
            case Topic(room=str(room), text=text, by=by, at=at):
                if not text:
                    return [num("331", room, "No topic is set")]
                if not by:
                    return [num("332", room, text)]
                topic_time = format_message(self.server, "333", self.nick, room, by, str(int(at)))
                return [num("332", room, text), topic_time]
            case Who(room=str(room)):
                return self._names(event, room)
            case Whois():
                return self._whois(event)
            case Modes(room=str(room), modes=modes):
                shown = "".join(sorted(set(modes) | {"n"}))  # every room is +n
                return [format_message(self.server, "324", self.nick, room, "+" + shown)]
            case BanList(room=str(room), bans=bans):
                lines = [
                    format_message(
                        self.server,
                        "367",
                        self.nick,
                        room,
                        irc_mask(ban.mask),
                        ban.by,
                        str(int(ban.ts)),
                    )
                    for ban in bans
                    if ban.kind == "ban"
                ]
                return [*lines, num("368", room, "End of channel ban list")]
            case RoomList(rooms=rooms):
                lines = [num("321", "Channel", "Users  Name")]
                lines += [num("322", info.room, str(info.members), info.topic) for info in rooms]
                return [*lines, num("323", "End of /LIST")]
            case Away(text=text) if nick == self.nick:
                if text:
                    return [num("306", "You have been marked as being away")]
                return [num("305", "You are no longer marked as being away")]
            case Away(text=text):
                return [num("301", nick, text)]
            case Invite(room=str(room), target=target) if target == self.nick:
                return [format_message(hostmask(nick), "INVITE", target, room)]
            case Invite(room=str(room), target=target) if event.re is not None:
                return [format_message(self.server, "341", self.nick, target, room)]
            case LoggedIn(account=account):
                if account is None:
                    return [num("901", hostmask(self.nick), "You are now logged out")]
                return [
                    num("900", hostmask(self.nick), account, f"You are now logged in as {account}")
                ]
            case Error(code=code, command=command, text=text):
                return [self.refusal(code, command, text)]
            case Ping(text=text):
                return [_line(None, "PING", text or self.server)]
            case Pong(text=text):
                return [_line(self.server, "PONG", self.server, text or self.server)]
            case Bye(text=text):
                return [_line(None, "ERROR", f"Closing link: {text}")]
            case Hello():
                return []
            case Notice(text=text):
                return [
                    _line(self.server, "NOTICE", self.nick, line or " ")
                    for line in text.split("\n")
                ]
        # Anything else for this connection alone: the text dialect's sentences, as notices.
        return [
            self._server_notice(event.room or self.nick, _PREFIX_RE.sub("", line))
            for line in event.as_text().split("\r\n")
        ]

    def _names(self, event: Who, room: str) -> list[str]:
        ops = {n.lower() for n in event.operators}
        voiced = {n.lower() for n in event.voiced}
        both = "multi-prefix" in self.caps
        full = "userhost-in-names" in self.caps
        names: list[str] = []
        for nick in event.members:
            key = nick.lower()
            prefix = ("@" if key in ops else "") + ("+" if key in voiced else "")
            names.append((prefix if both else prefix[:1]) + (hostmask(nick) if full else nick))
        lines: list[str] = []
        head = len(self.numeric("353", "=", room, "").encode())
        batch: list[str] = []
        for name in names:  # as many names a line as fit in 512 bytes
            if batch and head + len(" ".join([*batch, name])) > IRC_LINE_MAX - 2:
                lines.append(self.numeric("353", "=", room, " ".join(batch)))
                batch = []
            batch.append(name)
        if batch:
            lines.append(self.numeric("353", "=", room, " ".join(batch)))
        return [*lines, self.numeric("366", room, "End of /NAMES list")]

    def _whois(self, event: Whois) -> list[str]:
        nick = event.nick or ""
        num = self.numeric
        user, realname = event.user or nick[:USER_MAX], event.realname or nick
        lines = [_line(self.server, "311", self.nick, nick, user, USER_HOST, "*", realname)]
        if event.rooms:
            ops = set(event.operator_in)
            shown = (("@" if room in ops else "") + room for room in event.rooms)
            lines.append(num("319", nick, " ".join(shown)))
        lines.append(num("312", nick, self.server, "chat"))
        if event.operator:
            lines.append(num("313", nick, "is a server operator"))
        if event.away:
            lines.append(num("301", nick, event.away))
        if event.account:
            lines.append(num("330", nick, event.account, "is logged in as"))
        if event.address:
            lines.append(num("338", nick, event.address, "is actually using host"))
        if event.since:
            lines.append(
                num(
                    "317", nick, str(event.idle), str(int(event.since)), "seconds idle, signon time"
                )
            )
        return [*lines, num("318", nick, "End of /WHOIS list")]


def irc_mask(mask: str) -> str:
    """The chat's ban mask as IRC shows one: ``nick:bob`` is ``bob!*@*``, ``address:IP``
    is ``*!*@IP``, ``account:bob`` is ``$a:bob`` (an extban)."""
    kind, _, value = mask.partition(":")
    if kind == "nick":
        return f"{value}!*@*"
    if kind == "address":
        return f"*!*@{value}"
    if kind == "account":
        return f"$a:{value}"
    return mask


def _client_tags(raw: str) -> dict[str, str]:
    """Client-only tags as kept on an event (escaped, as on the wire), unescaped."""
    found: dict[str, str] = {}
    for item in filter(None, raw.split(";")):
        key, _, value = item.partition("=")
        found[key] = _unescape(value)
    return found


def _tagged(line: str, tags: Mapping[str, str]) -> str:
    """``line`` with ``tags`` in front (a bare prefix when ``line`` is empty)."""
    if not tags:
        return line
    head = "@" + ";".join(f"{k}={escape_tag(v)}" if v else k for k, v in tags.items())
    return f"{head} {line}"


def _in_batch(line: str, ident: str) -> str:
    """``line`` inside the batch ``ident``, unless it is in a batch of its own already
    (history within a labeled answer: its BATCH lines carry the outer batch)."""
    tags = line.partition(" ")[0] if line.startswith("@") else ""
    if "batch=" in tags:
        return line
    return _add_tag(line, "batch", ident)


def _add_tag(line: str, key: str, value: str) -> str:
    """One more tag on a rendered line."""
    tag = f"{key}={escape_tag(value)}"
    if line.startswith("@"):
        return f"@{tag};{line[1:]}"
    return f"@{tag} {line}"


def sanitize_irc(text: str) -> str:
    """What is kept of IRC text: formatting removed, then the chat's own sanitising."""
    return sanitize(strip_formatting(text))
