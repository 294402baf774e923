"""Every command a client can send, declared once, and the two parsers derived from it.

Theory of operation
-------------------
:data:`COMMANDS` is the command table: one :class:`CommandSpec` per command, naming its
dataclass, aliases, parameters, help text and whether it works before registration. Everything
else is derived from it:

* :func:`parse_text_arguments` reads ``/name args`` (the text dialect, and IRC-less people);
* :func:`parse_json_object` reads ``{"type": name, ...}`` (the JSON dialect);
* :func:`help_text` answers ``/help``; :attr:`CommandSpec.usage` is shown on bad arguments;
* :func:`encode_command` is the client library's request encoding;
* the terminal client completes ``/`` + every name and alias in the table.

Both parsers apply the same :class:`Param` rules, so a command is accepted, refused and
explained identically in every dialect (``tests/test_commands.py`` walks the table to prove
it). Adding a command is one table entry here plus its behaviour in the hub.

Argument rules (protocol.md, "Arguments"): a room may be written without ``#`` where it
cannot be mistaken for text (a required room, or an optional room that is the last
parameter: ``/join python``, ``/who python``); where text may follow an optional room
(``/part``, ``/topic``), the room must start with ``#`` or the word is text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Final

from chat.errors import ErrorCode, ProtocolError
from chat.protocol import (
    DEFAULT_WIDTH,
    MAX_WIDTH,
    MIN_WIDTH,
    REASON_MAX,
    sanitize,
    validate_room,
)

__all__ = [
    "COMMANDS",
    "CONNECTION_COMMANDS",
    "HISTORY_MAX",
    "HISTORY_PAGE",
    "REQUEST_ID_MAX",
    "TOPIC_CLEAR",
    "AwayCommand",
    "BanCommand",
    "BansCommand",
    "ClaimCommand",
    "Command",
    "CommandSpec",
    "DeopCommand",
    "DevoiceCommand",
    "GbanCommand",
    "HelloCommand",
    "HelpCommand",
    "HistoryCommand",
    "IgnoreCommand",
    "IgnoresCommand",
    "InviteCommand",
    "JoinCommand",
    "KickCommand",
    "KillCommand",
    "Kind",
    "LoginCommand",
    "MeCommand",
    "ModeCommand",
    "MsgCommand",
    "MuteCommand",
    "NickCommand",
    "NoticeCommand",
    "OpCommand",
    "Param",
    "PartCommand",
    "PasswordCommand",
    "PingCommand",
    "PongCommand",
    "QuitCommand",
    "RegisterCommand",
    "Request",
    "RoomsCommand",
    "SayCommand",
    "TopicCommand",
    "UnbanCommand",
    "UnclaimCommand",
    "UngbanCommand",
    "UnignoreCommand",
    "UnmuteCommand",
    "UnregisterCommand",
    "VoiceCommand",
    "WhoCommand",
    "WhoisCommand",
    "WidthCommand",
    "carries_secret",
    "encode_command",
    "help_text",
    "lookup",
    "parse_json_object",
    "parse_text_arguments",
    "parse_text_line",
    "spec_of",
    "table",
]

REQUEST_ID_MAX: Final = 64
TOPIC_CLEAR: Final = "-delete"  # "/topic [#room] -delete" clears a topic, as in irssi


# --- the commands -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloCommand:
    """Switch this connection to the JSON dialect, optionally registering at once (with the
    password of a registered nickname)."""

    nick: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class NickCommand:
    nick: str


@dataclass(frozen=True, slots=True)
class SayCommand:
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class MeCommand:
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class MsgCommand:
    nick: str
    text: str


@dataclass(frozen=True, slots=True)
class NoticeCommand:
    """A notice to a room or a nickname: shown like a message, never answered by a bot."""

    target: str
    text: str


@dataclass(frozen=True, slots=True)
class JoinCommand:
    room: str


@dataclass(frozen=True, slots=True)
class PartCommand:
    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RoomsCommand:
    """A page of the room list: rooms matching ``match``, largest first, from ``offset``."""

    offset: int = 0
    match: str | None = None


@dataclass(frozen=True, slots=True)
class WhoCommand:
    room: str | None = None


@dataclass(frozen=True, slots=True)
class TopicCommand:
    """Show a topic (``text`` None), set it, or clear it (``text`` "")."""

    room: str | None = None
    text: str | None = None


# Accounts.


@dataclass(frozen=True, slots=True)
class RegisterCommand:
    password: str


@dataclass(frozen=True, slots=True)
class LoginCommand:
    nick: str
    password: str


@dataclass(frozen=True, slots=True)
class PasswordCommand:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class UnregisterCommand:
    password: str


# Room operators. Each acts on the named room, or the active one.


@dataclass(frozen=True, slots=True)
class ClaimCommand:
    room: str | None = None


@dataclass(frozen=True, slots=True)
class UnclaimCommand:
    room: str | None = None


@dataclass(frozen=True, slots=True)
class OpCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class DeopCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class VoiceCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class DevoiceCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class KickCommand:
    nick: str
    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BanCommand:
    """``mask``: a nickname online, an account, an address, or ``kind:value``."""

    mask: str
    room: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UnbanCommand:
    mask: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class BansCommand:
    room: str | None = None


@dataclass(frozen=True, slots=True)
class MuteCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class UnmuteCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class InviteCommand:
    nick: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class ModeCommand:
    """Show a room's modes (``change`` None) or change them: ``+m``, ``-i``, ``+mt``."""

    room: str | None = None
    change: str | None = None


# Server operators.


@dataclass(frozen=True, slots=True)
class KillCommand:
    nick: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GbanCommand:
    mask: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UngbanCommand:
    mask: str


# People.


@dataclass(frozen=True, slots=True)
class HistoryCommand:
    room: str | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class AwayCommand:
    text: str | None = None


@dataclass(frozen=True, slots=True)
class WhoisCommand:
    nick: str


@dataclass(frozen=True, slots=True)
class IgnoreCommand:
    nick: str


@dataclass(frozen=True, slots=True)
class UnignoreCommand:
    nick: str


@dataclass(frozen=True, slots=True)
class IgnoresCommand:
    pass


@dataclass(frozen=True, slots=True)
class QuitCommand:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HelpCommand:
    command: str | None = None


@dataclass(frozen=True, slots=True)
class WidthCommand:
    """The text dialect wraps lines at this many columns (telnet's NAWS sets it too)."""

    columns: int


@dataclass(frozen=True, slots=True)
class PingCommand:
    token: str = ""


@dataclass(frozen=True, slots=True)
class PongCommand:
    token: str = ""


Command = (
    HelloCommand
    | NickCommand
    | SayCommand
    | MeCommand
    | MsgCommand
    | NoticeCommand
    | JoinCommand
    | PartCommand
    | RoomsCommand
    | WhoCommand
    | TopicCommand
    | QuitCommand
    | HelpCommand
    | WidthCommand
    | PingCommand
    | PongCommand
    | RegisterCommand
    | LoginCommand
    | PasswordCommand
    | UnregisterCommand
    | ClaimCommand
    | UnclaimCommand
    | OpCommand
    | DeopCommand
    | VoiceCommand
    | DevoiceCommand
    | KickCommand
    | BanCommand
    | UnbanCommand
    | BansCommand
    | MuteCommand
    | UnmuteCommand
    | InviteCommand
    | ModeCommand
    | KillCommand
    | GbanCommand
    | UngbanCommand
    | HistoryCommand
    | AwayCommand
    | WhoisCommand
    | IgnoreCommand
    | UnignoreCommand
    | IgnoresCommand
)


@dataclass(slots=True)
class Request:
    """A parsed command and the id its answers carry back (``re``), if the client gave one.

    Not frozen, unlike the commands: one is made for every line a client sends, and a frozen
    dataclass costs twice as much to make. Nothing changes one after the codec made it.
    """

    command: Command
    id: str | None = None

    @property
    def name(self) -> str:
        return spec_of(self.command).name


# --- parameters ---------------------------------------------------------------------------


class Kind(Enum):
    """How one parameter is read, in both dialects."""

    ROOM = "room"  # a room name; '#' may be left out where no text can follow
    NICK = "nick"  # one word, checked by the hub (it knows who is online)
    NAME = "name"  # a command name; a leading '/' and case are ignored
    TEXT = "text"  # the rest of the line; must not be blank when required
    REASON = "reason"  # the rest of the line, optional, cut to REASON_MAX
    TOPIC = "topic"  # the rest of the line; TOPIC_CLEAR (text) or "" (JSON) clears
    OFFSET = "offset"  # where a page starts: "+N" typed, a number (or "+N") in JSON
    NUMBER = "number"  # a whole number: digits typed, a number (or digits) in JSON
    WORD = "word"  # one word (a mask, a mode change), checked by the hub
    SECRET = "secret"  # a password: one word, or the rest of the line if last; never shown


@dataclass(frozen=True, slots=True)
class Param:
    name: str  # the dataclass field and the JSON key
    kind: Kind
    required: bool = True
    label: str = ""  # what usage lines call it, where the kind's name would not say

    @property
    def usage(self) -> str:
        shown = self.label or {
            Kind.ROOM: "#room",
            Kind.NICK: "nick",
            Kind.TEXT: "text",
            Kind.REASON: "reason",
            Kind.TOPIC: "text",
            Kind.OFFSET: "+N",
            Kind.NUMBER: "N",
            Kind.SECRET: "password",
        }.get(self.kind, self.name)
        return shown if self.required else f"[{shown}]"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command: everything every dialect, ``/help`` and the clients need to know."""

    name: str
    cls: type[Command]
    help: str
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()
    before_registration: bool = False  # allowed before a nickname is chosen
    typed: bool = True  # a person can type it as /name (hello and pong are for programs)
    usage_hint: str = ""  # replaces the derived usage where that would mislead

    @property
    def usage(self) -> str:
        if self.usage_hint:
            return self.usage_hint
        return " ".join([f"/{self.name}", *(p.usage for p in self.params)])


_ROOM_OPT: Final = Param("room", Kind.ROOM, required=False)
_NICK: Final = Param("nick", Kind.NICK)
_ON_NICK: Final = (_ROOM_OPT, _NICK)
_REASON: Final = Param("reason", Kind.REASON, required=False)
_SECRET: Final = Param("password", Kind.SECRET)
HISTORY_PAGE: Final = 50
HISTORY_MAX: Final = 500

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    CommandSpec(
        "join",
        JoinCommand,
        "Join a room (created on first use) and make it your active room.",
        (Param("room", Kind.ROOM),),
        aliases=("j",),
    ),
    CommandSpec(
        "part",
        PartCommand,
        "Leave a room; your active room if none is named.",
        (_ROOM_OPT, Param("reason", Kind.REASON, required=False)),
    ),
    CommandSpec(
        "rooms",
        RoomsCommand,
        "List the rooms, largest first, with member counts and topics: those whose name or "
        "topic contains text, from the N-th on.",
        (Param("offset", Kind.OFFSET, required=False), Param("match", Kind.TEXT, required=False)),
        aliases=("list",),
    ),
    CommandSpec(
        "who",
        WhoCommand,
        "List the members of a room; your active room if none is named.",
        (_ROOM_OPT,),
        aliases=("names",),
    ),
    CommandSpec(
        "topic",
        TopicCommand,
        f"Show a room's topic, set it when text is given, or clear it with {TOPIC_CLEAR}.",
        (_ROOM_OPT, Param("text", Kind.TOPIC, required=False)),
        usage_hint=f"/topic [#room] [text|{TOPIC_CLEAR}]",
    ),
    CommandSpec(
        "say",
        SayCommand,
        "Say something in a room (a line that does not start with / does this).",
        (_ROOM_OPT, Param("text", Kind.TEXT)),
    ),
    CommandSpec(
        "me",
        MeCommand,
        "Describe what you do: '/me waves' shows '* alice waves'.",
        (_ROOM_OPT, Param("text", Kind.TEXT, label="action")),
    ),
    CommandSpec(
        "msg",
        MsgCommand,
        "Send a private message that only nick sees.",
        (Param("nick", Kind.NICK), Param("text", Kind.TEXT)),
        aliases=("query",),
    ),
    CommandSpec(
        "notice",
        NoticeCommand,
        "Send a notice to a room you are in or to a nick: shown as -you- text; bots never "
        "answer one.",
        (Param("target", Kind.WORD, label="#room|nick"), Param("text", Kind.TEXT)),
    ),
    CommandSpec(
        "nick",
        NickCommand,
        "Change your nickname; your rooms see the change.",
        (Param("nick", Kind.NICK, label="newnick"),),
        before_registration=True,
    ),
    CommandSpec(
        "history",
        HistoryCommand,
        f"Show up to N older lines of a room you are in (default {HISTORY_PAGE}, at most "
        f"{HISTORY_MAX}); again for the lines before those.",
        (_ROOM_OPT, Param("count", Kind.NUMBER, required=False)),
    ),
    CommandSpec(
        "away",
        AwayCommand,
        "Say you are away; whoever messages you privately is told, once. Without a "
        "message: you are back.",
        (Param("text", Kind.REASON, required=False, label="message"),),
    ),
    CommandSpec(
        "whois",
        WhoisCommand,
        "Who someone is: account, rooms, idle time, away message.",
        (Param("nick", Kind.NICK),),
    ),
    CommandSpec(
        "ignore",
        IgnoreCommand,
        "Stop receiving nick's messages, actions and private messages.",
        (Param("nick", Kind.NICK),),
    ),
    CommandSpec(
        "unignore", UnignoreCommand, "Receive nick's messages again.", (Param("nick", Kind.NICK),)
    ),
    CommandSpec("ignores", IgnoresCommand, "List whom you ignore."),
    CommandSpec(
        "register",
        RegisterCommand,
        "Tie your nickname to an account with this password: from then on only you can use it.",
        (_SECRET,),
    ),
    CommandSpec(
        "login",
        LoginCommand,
        "Log in to the account of nick (and take that nickname).",
        (Param("nick", Kind.NICK), _SECRET),
        before_registration=True,
    ),
    CommandSpec(
        "password",
        PasswordCommand,
        "Change your account's password.",
        (Param("old", Kind.SECRET, label="old"), Param("new", Kind.SECRET, label="new")),
    ),
    CommandSpec(
        "unregister",
        UnregisterCommand,
        "Delete your account: your nickname is anyone's again.",
        (_SECRET,),
    ),
    CommandSpec(
        "claim",
        ClaimCommand,
        "Make a room you operate belong to your account: it keeps its topic, modes, "
        "operators and bans while empty.",
        (_ROOM_OPT,),
    ),
    CommandSpec("unclaim", UnclaimCommand, "Give up a room you own.", (_ROOM_OPT,)),
    CommandSpec(
        "op", OpCommand, "Make nick an operator of the room (operators).", (_ROOM_OPT, _NICK)
    ),
    CommandSpec("deop", DeopCommand, "Take operator status from nick (operators).", _ON_NICK),
    CommandSpec(
        "voice", VoiceCommand, "Let nick speak while the room is moderated (operators).", _ON_NICK
    ),
    CommandSpec("devoice", DevoiceCommand, "Take nick's voice (operators).", _ON_NICK),
    CommandSpec(
        "kick",
        KickCommand,
        "Remove nick from the room, with a reason (operators).",
        (*_ON_NICK, _REASON),
    ),
    CommandSpec(
        "ban",
        BanCommand,
        "Keep someone out of the room: a nickname online bans their account, or their "
        "nickname and address; also account:NAME, nick:NAME, address:IP (operators).",
        (_ROOM_OPT, Param("mask", Kind.WORD, label="nick|account|address"), _REASON),
    ),
    CommandSpec(
        "unban",
        UnbanCommand,
        "Lift a ban, as /bans lists it (operators).",
        (_ROOM_OPT, Param("mask", Kind.WORD)),
    ),
    CommandSpec("bans", BansCommand, "List a room's bans and mutes.", (_ROOM_OPT,)),
    CommandSpec(
        "mute",
        MuteCommand,
        "Refuse nick's lines in the room; nick is told (operators).",
        _ON_NICK,
    ),
    CommandSpec("unmute", UnmuteCommand, "Let nick speak again (operators).", _ON_NICK),
    CommandSpec(
        "invite",
        InviteCommand,
        "Invite nick to the room, even while it is invite-only (operators).",
        _ON_NICK,
    ),
    CommandSpec(
        "mode",
        ModeCommand,
        "Show the room's modes, or change them (operators): i invite-only, m moderated, "
        "t only operators set the topic.",
        (_ROOM_OPT, Param("change", Kind.WORD, required=False, label="+|-imt")),
    ),
    CommandSpec(
        "kill",
        KillCommand,
        "Disconnect nick from the server (server operators).",
        (_NICK, _REASON),
    ),
    CommandSpec(
        "gban",
        GbanCommand,
        "Ban an account or address from the whole server (server operators).",
        (Param("mask", Kind.WORD, label="account|address"), _REASON),
    ),
    CommandSpec(
        "ungban",
        UngbanCommand,
        "Lift a server-wide ban (server operators).",
        (Param("mask", Kind.WORD),),
    ),
    CommandSpec(
        "quit",
        QuitCommand,
        "Leave the chat; your rooms see the reason.",
        (Param("reason", Kind.REASON, required=False),),
        before_registration=True,
    ),
    CommandSpec(
        "help",
        HelpCommand,
        "List the commands, or explain one.",
        (Param("command", Kind.NAME, required=False),),
        before_registration=True,
    ),
    CommandSpec(
        "width",
        WidthCommand,
        f"Wrap the lines you receive at N columns ({MIN_WIDTH} to {MAX_WIDTH}; telnet "
        f"tells the server by itself, else {DEFAULT_WIDTH}).",
        (Param("columns", Kind.NUMBER),),
        before_registration=True,
    ),
    CommandSpec(
        "ping",
        PingCommand,
        "Ask the server for a pong, to check the connection.",
        (Param("token", Kind.TEXT, required=False, label="token"),),
        before_registration=True,
    ),
    CommandSpec(
        "pong",
        PongCommand,
        "Answer the server's keepalive ping.",
        (Param("token", Kind.TEXT, required=False),),
        before_registration=True,
        typed=False,
    ),
    CommandSpec(
        "hello",
        HelloCommand,
        "Switch to the JSON Lines dialect, optionally registering a nickname at once.",
        (Param("nick", Kind.NICK, required=False), Param("password", Kind.SECRET, required=False)),
        before_registration=True,
        typed=False,
    ),
)

_BY_NAME: Final = {spec.name: spec for spec in COMMANDS}
_BY_ALIAS: Final = {alias: spec for spec in COMMANDS for alias in spec.aliases}
_BY_CLASS: Final[dict[type[Any], CommandSpec]] = {spec.cls: spec for spec in COMMANDS}


def spec_of(command: Command) -> CommandSpec:
    return _BY_CLASS[type(command)]


def _shown(word: str) -> str:
    return word if len(word) <= 32 else word[:32] + "..."


def lookup(name: str, *, typed: bool) -> CommandSpec:
    """The spec of a command name (or alias, for typed commands), or ``unknown_command``."""
    key = name.lower() if typed else name  # a JSON type is exact; people's typing is not
    spec = _BY_NAME.get(key) or (_BY_ALIAS.get(key) if typed else None)
    if spec is None or (typed and not spec.typed):
        if typed:
            message = f"Unknown command /{_shown(name)}; type /help for the list."
        else:
            message = f"Unknown command type {_shown(name)!r}; see protocol.md."
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, message)
    return spec


def carries_secret(line: str) -> bool:
    """Whether a typed line is a command with a password in it (never kept in a history)."""
    if not line.startswith("/") or line.startswith("//"):
        return False
    spec = _BY_NAME.get(line[1:].split(" ", 1)[0].lower()) or _BY_ALIAS.get(
        line[1:].split(" ", 1)[0].lower()
    )
    return spec is not None and any(p.kind is Kind.SECRET for p in spec.params)


# Commands about the connection itself, which a session answers (chat.session); every
# other is the hub's. IRC's fallback to the table (chat.ircd) does not reach them.
CONNECTION_COMMANDS: Final = frozenset(
    {PongCommand, QuitCommand, HelpCommand, PingCommand, WidthCommand, HelloCommand}
)


def table() -> list[dict[str, Any]]:
    """The typed commands as data, for clients that parse ``/command`` lines themselves
    (the browser client fetches it as ``/commands.json``): one table, never a copy."""
    return [
        {
            "name": spec.name,
            "aliases": list(spec.aliases),
            "params": [
                {
                    "name": p.name,
                    "kind": p.kind.value,
                    "required": p.required,
                    "label": p.usage.strip("[]"),
                }
                for p in spec.params
            ],
        }
        for spec in COMMANDS
        if spec.typed
    ]


def help_text(command: str | None) -> str:
    """What ``/help`` answers: every typed command, or one command's usage."""
    if command is None:
        shown = [spec for spec in COMMANDS if spec.typed]
        width = max(len(spec.usage) for spec in shown)
        lines = ["Commands (a line not starting with / is said in your active room):"]
        lines += [f"  {spec.usage:<{width}}  {spec.help}" for spec in shown]
        lines.append("Start a line with // to say something that begins with /.")
        return "\n".join(lines)
    spec = _BY_NAME.get(command) or _BY_ALIAS.get(command)
    if spec is None or not spec.typed:
        raise ProtocolError(
            ErrorCode.UNKNOWN_COMMAND, f"No command /{_shown(command)}; type /help for the list."
        )
    return f"{spec.usage}: {spec.help}"


# --- validation shared by both parsers -------------------------------------------------------


def _usage_error(spec: CommandSpec) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_ARGUMENTS, f"Usage: {spec.usage}", command=spec.name)


def _check(spec: CommandSpec, param: Param, value: str | None) -> str | None:
    """One parameter's value, normalised, or the refusal every dialect gives."""
    # Blank free text counts as absent. A blank name is refused by what checks names (a
    # room: room_invalid; a nickname, by the hub: nick_invalid); a blank topic clears it.
    blankable = (Kind.TEXT, Kind.REASON, Kind.NAME, Kind.WORD, Kind.SECRET)
    if value is None or (not value.strip() and param.kind in blankable):
        if param.required:
            raise _usage_error(spec)
        return None
    match param.kind:
        case Kind.ROOM:  # an empty optional room is no room; anything else must be valid
            return validate_room(value) if value or param.required else None
        case Kind.NICK | Kind.WORD | Kind.SECRET:
            return value.strip()
        case Kind.NAME:
            return value.strip().lstrip("/").lower()
        case Kind.TEXT:
            return value
        case Kind.REASON:
            return value.strip()[:REASON_MAX]
        case Kind.TOPIC:
            return value.strip()
        case Kind.OFFSET | Kind.NUMBER:
            number = value.strip()
            if param.kind is Kind.OFFSET:
                number = number.removeprefix("+")
            if not (number.isascii() and number.isdigit() and len(number) <= 9):
                raise _usage_error(spec)
            return number
    raise AssertionError(param.kind)


def _build(spec: CommandSpec, values: dict[str, str | None]) -> Command:
    kwargs: dict[str, Any] = {}  # typed by the table: each Param matches its field
    for param in spec.params:
        value = values.get(param.name)
        if value is not None:
            kwargs[param.name] = int(value) if param.kind in (Kind.OFFSET, Kind.NUMBER) else value
    return spec.cls(**kwargs)


# --- the text dialect ----------------------------------------------------------------------


# Parameters read as one word unless they are the last (a last password takes the line).
_ONE_WORD: Final = frozenset(
    {Kind.ROOM, Kind.NICK, Kind.NAME, Kind.OFFSET, Kind.NUMBER, Kind.WORD, Kind.SECRET}
)


def parse_text_arguments(spec: CommandSpec, args: str) -> Command:
    """Read a typed command's arguments (what follows ``/name``) by the table's rules."""
    rest = args.strip()
    values: dict[str, str | None] = {}
    last = len(spec.params) - 1
    for index, param in enumerate(spec.params):
        if index < last and param.kind in _ONE_WORD:
            if param.kind is Kind.ROOM and not param.required and not rest.startswith("#"):
                continue  # text may follow an optional room: only a '#word' is a room
            if param.kind is Kind.OFFSET and not rest.startswith("+"):
                continue  # likewise an optional offset: only a '+N' word is one
            word, _, rest = rest.partition(" ")
            values[param.name] = _check(spec, param, word or None)
            rest = rest.strip()
        else:  # the last parameter takes the rest of the line
            if param.kind in _ONE_WORD and param.kind is not Kind.SECRET and " " in rest:
                raise _usage_error(spec)  # one word expected, several typed
            if param.kind is Kind.TOPIC and rest == TOPIC_CLEAR:
                rest = " "
            values[param.name] = _check(spec, param, rest or None)
            rest = ""
    if rest:
        raise _usage_error(spec)
    return _build(spec, values)


def parse_text_line(line: str, *, registered: bool) -> Command | None:
    """What a person typed: ``/command args``, ``//`` to say a line starting with ``/``,
    anything else said in the active room (or, before registration, the nickname).
    ``None`` for a blank line."""
    if not line.strip():
        return None
    if not registered:
        line = line.strip()
    if not line.startswith("/"):
        return SayCommand(line) if registered else NickCommand(line)
    if line.startswith("//"):
        if not registered:
            raise _register_first("say")
        return SayCommand(line[1:])
    word, _, rest = line[1:].partition(" ")
    spec = lookup(word, typed=True)
    if not registered and not spec.before_registration:
        raise _register_first(spec.name)
    try:
        return parse_text_arguments(spec, rest)
    except ProtocolError as exc:
        exc.command = exc.command or spec.name
        raise


def _register_first(command: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.NOT_REGISTERED,
        "Choose a nickname first: type it and press Enter.",
        command=command,
    )


# --- the JSON dialect ----------------------------------------------------------------------


def _string_field(obj: dict[str, Any], key: str, command: str | None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and key in _NUMBER_FIELDS:
        return str(value) if value >= 0 else "-"  # a negative offset fails its check
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.BAD_ARGUMENTS, f"Field {key!r} must be a string.", command=command
        )
    return sanitize(value)


_NUMBER_FIELDS: Final = frozenset(
    p.name for spec in COMMANDS for p in spec.params if p.kind in (Kind.OFFSET, Kind.NUMBER)
)


def request_id(obj: dict[str, Any]) -> str | None:
    """The ``id`` a JSON command carries, checked: a string of at most 64 characters."""
    value = obj.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= REQUEST_ID_MAX:
        raise ProtocolError(
            ErrorCode.BAD_ARGUMENTS,
            f"Field 'id' must be a string of 1 to {REQUEST_ID_MAX} characters.",
        )
    return sanitize(value)


def parse_json_object(line: str) -> tuple[dict[str, Any], CommandSpec]:
    """A JSON command line's object and the spec its ``type`` names (checked)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "Line is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "Each line must be a JSON object.")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_JSON, "A JSON command needs a string field 'type'.")
    return obj, lookup(kind, typed=False)


def parse_json_arguments(spec: CommandSpec, obj: dict[str, Any]) -> Command:
    """Read a JSON command's fields by the same rules as the text dialect's arguments."""
    values: dict[str, str | None] = {}
    for param in spec.params:
        raw = _string_field(obj, param.name, spec.name)
        if param.required and raw is None:
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS,
                f"Field {param.name!r} is required.",
                command=spec.name,
            )
        values[param.name] = _check(spec, param, raw)
    return _build(spec, values)


def encode_command(command: Command, request: str | None = None) -> bytes:
    """The JSON line that carries ``command`` (and its request id); the server's JSON
    parser reads it back unchanged."""
    obj: dict[str, Any] = {"type": spec_of(command).name}
    obj.update((k, v) for k, v in asdict(command).items() if v is not None)
    if request is not None:
        obj["id"] = request
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
