"""IRC commands on the chat's hub: registration, capabilities, and each command mapped to
the command table's requests (protocol.md, "IRC").

The session hands every line of an IRC connection here. Registration (``CAP``, ``PASS``,
``NICK``, ``USER``, ``AUTHENTICATE``) is IRC's own; after it, each IRC command becomes one
or more of the chat's requests (``JOIN #a,#b`` is two joins), carried out by the hub like
any other dialect's, and a refusal becomes the numeric an IRC client expects, with the
channel or nickname it concerns. A command IRC does not have but the chat does (``CLAIM``,
``MUTE``, ``REGISTER``...) is read as the text dialect reads ``/claim``, so every command
exists in every dialect.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import fnmatch
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from chat import __version__
from chat.commands import (
    CONNECTION_COMMANDS,
    AwayCommand,
    BanCommand,
    BansCommand,
    Command,
    DeopCommand,
    DevoiceCommand,
    HelpCommand,
    InviteCommand,
    JoinCommand,
    KickCommand,
    ModeCommand,
    NickCommand,
    OpCommand,
    PartCommand,
    Request,
    TopicCommand,
    UnbanCommand,
    VoiceCommand,
    WhoCommand,
    WhoisCommand,
    help_text,
    parse_text_line,
)
from chat.errors import ErrorCode, ProtocolError
from chat.irc import (
    CAPABILITIES,
    USER_HOST,
    USER_MAX,
    IrcCodec,
    IrcMessage,
    escape_tag,
    format_message,
    hostmask,
    sanitize_irc,
)
from chat.protocol import (
    NICK_MAX,
    REASON_MAX,
    ROOM_MAX,
    TOPIC_MAX,
    Action,
    Message,
    new_event_id,
    nick_key,
    validate_nick,
)
from chat.rooms import Member, Room

if TYPE_CHECKING:
    from chat.session import Session

__all__ = ["DEFAULT_SERVER_NAME", "IrcHandler"]

log = logging.getLogger("chat.irc")

DEFAULT_SERVER_NAME: Final = "chat.server"  # chat-server --server-name
AWAY_MAX: Final = REASON_MAX  # characters of an away message (AWAYLEN)
MAX_TARGETS: Final = 4  # PRIVMSG / NOTICE targets in one line (TARGMAX)
MAX_MODE_CHANGES: Final = 4  # mode letters carried out from one MODE line (MODES)
_CLIENT_TAG_RE: Final = re.compile(r"\+(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9-]+")
MAX_REGISTRATION_ATTEMPTS: Final = 10
HISTORY_BATCH_MAX: Final = 100  # CHATHISTORY lines in one answer
MOTD: Final = (
    "This is chat: one server, one port, every kind of client.",
    "IRC clients, telnet users and programs speaking JSON share its rooms.",
    "Accounts: log in with SASL PLAIN or PASS; REGISTER <password> claims your nickname.",
)
# A refusal's IRC numeric, when it has one; its parameter is the channel or nickname the
# command was about. Every other refusal is a NOTICE with the chat's text.
_TARGET_NUMERICS: Final[dict[str, str]] = {
    ErrorCode.NO_SUCH_NICK: "401",
    ErrorCode.NO_SUCH_ROOM: "403",
    ErrorCode.ROOM_INVALID: "403",
    ErrorCode.ROOM_CONFUSABLE: "403",
    ErrorCode.NOT_IN_ROOM: "442",
    ErrorCode.TOO_MANY_ROOMS: "405",
    ErrorCode.NOT_OPERATOR: "482",
    ErrorCode.BANNED: "474",
    ErrorCode.INVITE_ONLY: "473",
    ErrorCode.MUTED: "404",
    ErrorCode.MODERATED: "404",
    ErrorCode.NICK_INVALID: "432",
    ErrorCode.NICK_RESERVED: "432",
    ErrorCode.NICK_TAKEN: "433",
    ErrorCode.NICK_CONFUSABLE: "433",
    ErrorCode.NICK_REGISTERED: "433",
}
# HELP for the IRC commands (the chat's own commands have the table's help).
_IRC_HELP: Final = {
    "PRIVMSG": "PRIVMSG <target>[,<target>] :<text>\nSay something in a channel, or to a nickname.",
    "NOTICE": "NOTICE <target>[,<target>] :<text>\nAs PRIVMSG, never answered automatically.",
    "JOIN": "JOIN <#channel>[,<#channel>]\nJoin channels (created on first use); JOIN 0 parts all.",
    "PART": "PART <#channel>[,<#channel>] [:<reason>]\nLeave channels.",
    "TOPIC": "TOPIC <#channel> [:<topic>]\nShow or set a channel's topic.",
    "NAMES": "NAMES <#channel>\nList who is in a channel.",
    "LIST": "LIST [<#mask>[,<#mask>]]\nList the channels.",
    "WHO": "WHO <#channel|nick|mask> [%<fields>[,<token>]]\nList users, with WHOX fields.",
    "WHOIS": "WHOIS <nick>\nWho someone is.",
    "WHOWAS": "WHOWAS <nick> [<count>]\nWho recently left under that name.",
    "MODE": "MODE <#channel> [+|-][imnt|o|v|b] [<arg>]\nShow or change a channel's modes.",
    "KICK": "KICK <#channel> <nick> [:<reason>]\nRemove someone from a channel (operators).",
    "INVITE": "INVITE <nick> <#channel>\nInvite someone to a channel (operators).",
    "AWAY": "AWAY [:<message>]\nMark yourself away; without a message, back.",
    "OPER": "OPER <account> <password>\nBecome a server operator (an --admin account).",
}
_SERVER_OPERATOR_COMMANDS: Final = frozenset({"KILL", "GBAN", "UNGBAN"})
_MODE_COMMANDS: Final[dict[str, Callable[[str, str], Command]]] = {
    "+o": lambda room, arg: OpCommand(arg, room),
    "-o": lambda room, arg: DeopCommand(arg, room),
    "+v": lambda room, arg: VoiceCommand(arg, room),
    "-v": lambda room, arg: DevoiceCommand(arg, room),
    "+b": lambda room, arg: BanCommand(arg, room),
    "-b": lambda room, arg: UnbanCommand(arg, room),
}


class IrcHandler:
    """One IRC connection's commands, from ``CAP LS`` to ``QUIT``."""

    def __init__(self, session: Session, codec: IrcCodec) -> None:
        self.session = session
        self.codec = codec
        self.server = codec.server
        self.hub = session.hub
        self._nick: str | None = None  # asked for before registration
        self._user: str | None = None
        self._realname = ""
        self._password: str | None = None  # PASS
        self._sasl: tuple[str, str] | None = None  # account and password, verified
        self._sasl_buffer: str | None = None  # AUTHENTICATE data so far (None: not started)
        self._negotiating = False  # between CAP LS / REQ and CAP END
        self._failures = 0
        self._ids = itertools.count(1)

    # --- plumbing ---------------------------------------------------------------------------

    def _emit(self, *lines: str) -> None:
        self.hub.outbox.send_bytes(self.session, self.codec.emit(lines))

    def _numeric(self, code: str, *params: str) -> None:
        self._emit(self.codec.numeric(code, *params))

    def _id(self, verb: str) -> str:
        return f"{verb}:{next(self._ids)}"

    async def _run(self, command: Command, verb: str, target: str = "") -> bool:
        """Carry out one of the chat's commands; a refusal becomes a numeric about
        ``target``. True if it was done."""
        member = self.session.member
        assert member is not None
        try:
            pending = self.hub.dispatch(member, Request(command, self._id(verb)))
            if pending is not None:
                await pending
        except ProtocolError as exc:
            self._refuse(exc, verb, target)
            return False
        return True

    def _refuse(self, exc: ProtocolError, verb: str, target: str = "") -> None:
        if verb == "NOTICE":
            return  # never an automatic reply to a NOTICE (RFC 2812, 3.3.2)
        code = exc.code
        numeric = _TARGET_NUMERICS.get(code)
        if code is ErrorCode.NOT_OPERATOR and verb in _SERVER_OPERATOR_COMMANDS:
            self._numeric("481", f"Permission denied: {exc.message}")
            return
        if numeric == "442" and verb in ("PRIVMSG", "NOTICE"):
            numeric = "404"
        if numeric is not None:
            self._numeric(numeric, target or "*", exc.message)
        else:
            self._emit(self.codec.refusal(code, verb, exc.message))

    # --- entry ------------------------------------------------------------------------------

    async def handle(self, raw: bytes) -> None:
        """One line from the client."""
        try:
            message = self.codec.parse(raw)
        except ProtocolError as exc:
            self._refuse(exc, "*")
            return
        if message is None:
            return
        label = message.tags.get("label") if "labeled-response" in self.codec.caps else None
        if label:
            self.codec.begin_label(label)
        try:
            if self.session.member is None:
                await self._unregistered(message)
            else:
                await self._registered(message)
        finally:
            self.hub.outbox.send_bytes(self.session, self.codec.finish())

    # --- registration -------------------------------------------------------------------------

    async def _unregistered(self, message: IrcMessage) -> None:
        verb, params = message.command, message.params
        match verb:
            case "CAP":
                self._cap(params)
            case "PASS":
                if not params:
                    self._numeric("461", "PASS", "Not enough parameters")
                else:
                    self._password = params[0]
            case "NICK":
                if not params or not params[0]:
                    self._numeric("431", "No nickname given")
                    return
                try:
                    self._nick = validate_nick(params[0])
                except ProtocolError as exc:
                    self._refuse(exc, "NICK", params[0])
                    return
            case "USER":
                if len(params) < 4 or not params[0] or not params[3]:
                    self._numeric("461", "USER", "Not enough parameters")
                    return
                self._user = params[0]
                self._realname = sanitize_irc(params[3])[:100]
            case "AUTHENTICATE":
                await self._authenticate(params)
                return
            case "PING":
                await self._ping(params)
                return
            case "PONG":
                return
            case "QUIT":
                self.session.quit(params[0] if params else "")
                return
            case _:
                self._numeric("451", "You have not registered")
                return
        await self._complete()

    def _cap(self, params: tuple[str, ...]) -> None:
        sub = params[0].upper() if params else ""
        target = self.codec.nick
        match sub:
            case "LS":
                if self.session.member is None:
                    self._negotiating = True
                version = _number(params[1]) if len(params) > 1 else None
                modern = version is not None and version >= 302
                caps = " ".join(
                    f"{name}={value}" if value and modern else name
                    for name, value in CAPABILITIES.items()
                )
                self._emit(format_message(self.server, "CAP", target, "LS", caps))
            case "LIST":
                enabled = " ".join(sorted(self.codec.caps))
                self._emit(format_message(self.server, "CAP", target, "LIST", enabled))
            case "REQ":
                if self.session.member is None:
                    self._negotiating = True
                if len(params) < 2 or not params[1].split():
                    self._numeric("410", "REQ", "Invalid CAP command: nothing requested")
                    return
                asked = params[1].split()
                wanted = set(self.codec.caps)
                for name in asked:
                    bare = name.removeprefix("-")
                    if bare not in CAPABILITIES:
                        self._emit(format_message(self.server, "CAP", target, "NAK", params[1]))
                        return
                    if name.startswith("-"):
                        wanted.discard(bare)
                    else:
                        wanted.add(bare)
                self.codec.set_caps(wanted)
                self._emit(format_message(self.server, "CAP", target, "ACK", params[1]))
            case "END":
                self._negotiating = False
            case _:
                self._numeric("410", sub or "*", "Invalid CAP command")

    async def _authenticate(self, params: tuple[str, ...]) -> None:
        """SASL PLAIN (https://ircv3.net/specs/extensions/sasl-3.1)."""
        if "sasl" not in self.codec.caps:
            self._numeric("904", "SASL authentication failed: request the sasl capability")
            return
        if self._sasl is not None:
            self._numeric("907", "You have already authenticated using SASL")
            return
        data = params[0] if params else ""
        if data == "*":
            self._sasl_buffer = None
            self._numeric("906", "SASL authentication aborted")
            return
        if self._sasl_buffer is None:
            if data.upper() != "PLAIN":
                self._numeric("908", "PLAIN", "are available SASL mechanisms")
                self._numeric("904", "SASL authentication failed")
                return
            self._sasl_buffer = ""
            self._emit("AUTHENTICATE +")
            return
        if data != "+":
            self._sasl_buffer += data
        if len(data) == 400 and len(self._sasl_buffer) <= 1200:
            return  # more to come
        payload, self._sasl_buffer = self._sasl_buffer, None
        try:
            _authz, account, password = (
                base64.b64decode(payload, validate=True).decode().split("\0")
            )
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self._numeric("904", "SASL authentication failed: not a PLAIN message")
            return
        try:
            name = await self.hub.authenticate(self.session.address, account, password)
        except ProtocolError as exc:
            self._numeric("904", f"SASL authentication failed: {exc.message}")
            return
        self._sasl = (name, password)
        self._numeric("900", hostmask(self._nick or name), name, f"You are now logged in as {name}")
        self._numeric("903", "SASL authentication successful")

    async def _complete(self) -> None:
        """Register once NICK and USER are in and capability negotiation is over."""
        if self._nick is None or self._user is None or self._negotiating:
            return
        nick, password = self._nick, self._password
        if self._sasl is not None:
            nick, password = self._sasl
        session = self.session
        try:
            try:
                member = await self.hub.register(session, nick, None, password, names_rooms=True)
            except ProtocolError as exc:
                if exc.code is not ErrorCode.NO_SUCH_ACCOUNT or self._sasl is not None:
                    raise
                # PASS for a nickname with no account: a password meant for a server
                # that has one (a bouncer's, say); this one has none, so it is ignored.
                member = await self.hub.register(session, nick, None, None, names_rooms=True)
        except ProtocolError as exc:
            self._failures += 1
            self._nick = None
            if exc.code is ErrorCode.NICK_REGISTERED:
                exc = ProtocolError(
                    exc.code, "Nickname is registered: log in with SASL PLAIN or PASS"
                )
            self._refuse(exc, "NICK", nick)
            if self._failures >= MAX_REGISTRATION_ATTEMPTS:
                session.close(
                    ErrorCode.TOO_MANY_ERRORS,
                    f"{MAX_REGISTRATION_ATTEMPTS} nicknames refused; try again later.",
                )
            return
        member.user = sanitize_irc(self._user or nick).replace(" ", "")[:USER_MAX] or nick
        member.realname = self._realname or nick
        session.registered(member)
        self._password = None
        self._burst()

    def _burst(self) -> None:
        """What follows 001-004: ISUPPORT, LUSERS, MOTD."""
        self._send_isupport()
        self._lusers()
        self._motd()

    def _send_isupport(self) -> None:
        """005 lines, 12 tokens each (a line may carry 13 parameters after the nick)."""
        tokens = self._isupport()
        for start in range(0, len(tokens), 12):
            self._numeric("005", *tokens[start : start + 12], "are supported by this server")

    def _isupport(self) -> list[str]:
        limits = self.session.limits
        return [
            f"AWAYLEN={AWAY_MAX}",
            "CASEMAPPING=ascii",
            f"CHANLIMIT=#:{self.hub.max_rooms}",
            "CHANMODES=b,,,imnt",
            f"CHANNELLEN={ROOM_MAX}",
            "CHANTYPES=#",
            f"CHATHISTORY={HISTORY_BATCH_MAX}",
            "ELIST=",
            f"KICKLEN={REASON_MAX}",
            f"LINELEN={min(512, limits.max_line)}",
            f"MODES={MAX_MODE_CHANGES}",
            "NETWORK=chat",
            f"NICKLEN={NICK_MAX}",
            "PREFIX=(ov)@+",
            "SAFELIST",
            "STATUSMSG=",
            f"TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},JOIN:,PART:,KICK:1,WHOIS:1",
            f"TOPICLEN={TOPIC_MAX}",
            "WHOX",
        ]

    def _lusers(self) -> None:
        members = self.hub.members
        users = len(members)
        invisible = sum(1 for m in members if m.invisible)
        operators = sum(1 for m in members if m.admin)
        peak = self.hub.peak_members
        self._numeric(
            "251", f"There are {users - invisible} users and {invisible} invisible on 1 servers"
        )
        if operators:
            self._numeric("252", str(operators), "operator(s) online")
        self._numeric("254", str(len(self.hub.room_names())), "channels formed")
        self._numeric("255", f"I have {users} clients and 0 servers")
        self._numeric("265", str(users), str(peak), f"Current local users {users}, max {peak}")
        self._numeric("266", str(users), str(peak), f"Current global users {users}, max {peak}")

    def _motd(self) -> None:
        self._numeric("375", f"- {self.server} Message of the day -")
        for line in MOTD:
            self._numeric("372", f"- {line}")
        self._numeric("376", "End of /MOTD command")

    # --- registered -----------------------------------------------------------------------

    async def _registered(self, message: IrcMessage) -> None:
        verb, params = message.command, message.params
        if verb in ("PRIVMSG", "NOTICE"):
            await self._privmsg(params, verb, _client_tags(message))
            return
        if verb == "TAGMSG":
            self._tagmsg(params, _client_tags(message))
            return
        handler = self._commands.get(verb)
        if handler is not None:
            await handler(self, params)
        elif verb in ("USER", "PASS"):
            self._numeric("462", "You may not reregister")
        elif verb == "AUTHENTICATE":
            self._numeric("907", "You have already registered")
        else:
            await self._chat_command(verb, params)

    def _need(self, verb: str, params: tuple[str, ...], count: int) -> bool:
        if len(params) < count or not params[0]:
            self._numeric("461", verb, "Not enough parameters")
            return False
        return True

    async def _privmsg(
        self, params: tuple[str, ...], verb: str = "PRIVMSG", tags: str = ""
    ) -> None:
        if not params or not params[0]:
            if verb == "PRIVMSG":
                self._numeric("411", f"No recipient given ({verb})")
            return
        if len(params) < 2 or not params[1]:
            if verb == "PRIVMSG":
                self._numeric("412", "No text to send")
            return
        text = params[1]
        action = text.startswith("\x01ACTION") and text.endswith("\x01")
        if text.startswith("\x01") and not action:
            return  # CTCP other than ACTION: no other dialect could answer it
        if action:
            text = text[8:-1]
        text = sanitize_irc(text).strip() if action else sanitize_irc(text)
        if not text.strip():
            if verb == "PRIVMSG":
                self._numeric("412", "No text to send")
            return
        notice = verb == "NOTICE"
        member = self.session.member
        assert member is not None
        for target in params[0].split(",")[:MAX_TARGETS]:
            if not target.startswith("#"):
                private = f"* {text}" if action else text
                try:
                    await self.hub.private(
                        member, target, private, self._id(verb), notice=notice, tags=tags
                    )
                except ProtocolError as exc:
                    self._refuse(exc, verb, target)
                continue
            try:
                if action:
                    said: Message | Action = self.hub.act(member, target, text)
                else:
                    said = self.hub.say(member, target, text, notice=notice, tags=tags)
            except ProtocolError as exc:
                if exc.code is ErrorCode.NOT_IN_ROOM and not self.hub.has_room(target):
                    exc = ProtocolError(ErrorCode.NO_SUCH_ROOM, "No such channel")
                self._refuse(exc, verb, target)
                continue
            if self.codec.echo_message:  # the sender's copy, labeled if the line was
                self.hub.outbox.send_bytes(self.session, self.codec.encode_one(said))

    def _tagmsg(self, params: tuple[str, ...], tags: str) -> None:
        """``TAGMSG target``: client-only tags alone (a reaction, a typing notice). Only IRC
        clients that negotiated ``message-tags`` can receive one, so it goes to those in
        the room (or to the nickname), on this node, and no other dialect sees it."""
        if not self._need("TAGMSG", params, 1):
            return
        member = self.session.member
        assert member is not None
        for target in params[0].split(",")[:MAX_TARGETS]:
            recipients: list[Member]
            if target.startswith("#"):
                room = member.rooms.get(target.lower())
                if room is None or not room.may_speak(member):
                    exists = self.hub.has_room(target)
                    self._numeric("404" if exists else "403", target, "Cannot send to channel")
                    continue
                recipients = [m for m in room.members if m is not member]
            else:
                found = self.hub.find(target)
                if found is None:
                    self._numeric("401", target, "No such nick")
                    continue
                recipients = [found] if found is not member else []
            msgid, now = new_event_id(), time.time()
            for other in recipients:
                codec = other.peer.codec
                if (
                    isinstance(codec, IrcCodec)
                    and "message-tags" in codec.caps
                    and nick_key(member.nick) not in other.ignores
                ):
                    line = codec.tagmsg(member.nick, target, tags, msgid, now)
                    self.hub.outbox.send_bytes(other.peer, f"{line}\r\n".encode())
            if self.codec.echo_message and "message-tags" in self.codec.caps:
                self._emit(self.codec.tagmsg(member.nick, target, tags, msgid, now))

    async def _join(self, params: tuple[str, ...]) -> None:
        if not self._need("JOIN", params, 1):
            return
        if params[0] == "0":
            member = self.session.member
            assert member is not None
            for room in list(member.rooms.values()):
                await self._run(PartCommand(room.name), "PART", room.name)
            return
        member = self.session.member
        assert member is not None
        for name in filter(None, params[0].split(",")):
            if not name.startswith("#"):
                self._numeric("403", name, "No such channel")
                continue
            if name.lower() in member.rooms:
                continue  # joined already: IRC says nothing
            await self._run(JoinCommand(name), "JOIN", name)

    async def _part(self, params: tuple[str, ...]) -> None:
        if not self._need("PART", params, 1):
            return
        reason = sanitize_irc(params[1]) if len(params) > 1 else ""
        member = self.session.member
        assert member is not None
        for name in filter(None, params[0].split(",")):
            if name.lower() not in member.rooms:
                known = self.hub.has_room(name)
                self._numeric(
                    "442" if known else "403",
                    name,
                    "You're not on that channel" if known else "No such channel",
                )
                continue
            await self._run(PartCommand(name, reason[:REASON_MAX]), "PART", name)

    async def _topic(self, params: tuple[str, ...]) -> None:
        if not self._need("TOPIC", params, 1):
            return
        text = sanitize_irc(params[1]) if len(params) > 1 else None
        await self._run(TopicCommand(params[0], text), "TOPIC", params[0])

    async def _names(self, params: tuple[str, ...]) -> None:
        if not params or not params[0]:
            self._numeric("366", "*", "End of /NAMES list")
            return
        for name in filter(None, params[0].split(",")):
            if not self.hub.has_room(name):
                self._numeric("366", name, "End of /NAMES list")
                continue
            await self._run(WhoCommand(name), "NAMES", name)

    async def _list(self, params: tuple[str, ...]) -> None:
        """Every room with someone in it, or claimed (the lobby waiting empty is not news),
        whose name matches the masks given, if any."""
        masks = [m.lower() for m in params[0].split(",")] if params and params[0] else []
        self._numeric("321", "Channel", "Users  Name")
        for room in sorted(self.hub.rooms_held(), key=lambda r: (-r.population, r.name.lower())):
            if not room.population and room.owner is None:
                continue
            if masks and not any(fnmatch.fnmatchcase(room.name.lower(), m) for m in masks):
                continue
            self._numeric("322", room.name, str(room.population), room.topic)
        self._numeric("323", "End of /LIST")

    async def _who(self, params: tuple[str, ...]) -> None:
        """WHO #room, WHO nick, WHO mask (``*`` and ``?`` wildcards), with WHOX fields
        (``WHO mask %fields[,token]``): RPL_WHOREPLY 352 or RPL_WHOSPCRPL 354, then 315."""
        member = self.session.member
        assert member is not None
        mask = params[0] if params and params[0] else "*"
        fields, _, token = (
            params[1][1:] if len(params) > 1 and params[1][:1] == "%" else ""
        ).partition(",")
        whox = len(params) > 1 and params[1][:1] == "%"
        rows: list[tuple[str, Member, Room | None]] = []
        if mask.startswith("#"):
            room = self.hub.find_room(mask)
            if room is not None:
                rows = [(room.name, m, room) for m in room.members]
        else:
            exact = self.hub.find(mask)
            if exact is not None:
                rows = [("*", exact, None)]
            elif any(c in mask for c in "*?"):
                pattern = re.compile(fnmatch.translate(mask.lower()))
                mine = set(member.rooms)
                rows = [
                    ("*", m, None)
                    for m in self.hub.members
                    if pattern.match(m.nick.lower())
                    and (not m.invisible or m is member or mine & set(m.rooms))
                ]
        for channel, who, room in rows:
            if whox:
                self._emit(self._whox_line(fields, token, channel, who, room))
            else:
                self._emit(
                    self.codec.numeric(
                        "352",
                        channel,
                        (who.user or who.nick)[:USER_MAX],
                        USER_HOST,
                        self.server,
                        who.nick,
                        self._flags(who, room),
                        f"0 {who.realname or who.nick}",
                    )
                )
        self._numeric("315", mask, "End of /WHO list")

    def _flags(self, who: Member, room: Room | None) -> str:
        flags = ("G" if who.away else "H") + ("*" if who.admin else "")
        if room is not None:
            prefix = ("@" if room.operates(who) else "") + (
                "+" if nick_key(who.nick) in room.voiced else ""
            )
            flags += prefix if "multi-prefix" in self.codec.caps else prefix[:1]
        return flags

    def _whox_line(
        self, fields: str, token: str, channel: str, who: Member, room: Room | None
    ) -> str:
        values = {
            "t": token or "0",
            "c": channel,
            "u": (who.user or who.nick)[:USER_MAX],
            "i": "255.255.255.255",
            "h": USER_HOST,
            "s": self.server,
            "n": who.nick,
            "f": self._flags(who, room),
            "d": "0",
            "l": str(int(time.time() - (who.last_said or who.since))),
            "a": who.account or "0",
            "o": "n/a",
            "r": who.realname or who.nick,
        }
        chosen = [values[f] for f in "tcuihsnfdlaor" if f in fields]
        if "r" in fields:
            return self.codec.numeric("354", *chosen)
        return format_message(self.server, "354", self.codec.nick, *chosen)

    async def _whois(self, params: tuple[str, ...]) -> None:
        if not params or not params[0]:
            self._numeric("431", "No nickname given")
            return
        nick = params[-1]  # WHOIS [server] nick
        if not await self._run(WhoisCommand(nick), "WHOIS", nick):
            self._numeric("318", nick, "End of /WHOIS list")

    async def _nick_change(self, params: tuple[str, ...]) -> None:
        if not params or not params[0]:
            self._numeric("431", "No nickname given")
            return
        member = self.session.member
        assert member is not None
        if params[0] == member.nick:
            return  # no change: IRC says nothing
        if await self._run(NickCommand(params[0]), "NICK", params[0]):
            member = self.session.member
            assert member is not None
            self.codec.nick = member.nick

    async def _quit(self, params: tuple[str, ...]) -> None:
        self.session.quit(sanitize_irc(params[0])[:REASON_MAX] if params else "")

    async def _ping(self, params: tuple[str, ...]) -> None:
        if not params:
            self._numeric("409", "No origin specified")
            return
        self._emit(f":{self.server} PONG {self.server} :{params[0]}")

    async def _pong(self, params: tuple[str, ...]) -> None:
        return

    async def _mode(self, params: tuple[str, ...]) -> None:
        if not self._need("MODE", params, 1):
            return
        target = params[0]
        if not target.startswith("#"):
            self._user_mode(target, params[1:])
            return
        room = self.hub.find_room(target)
        if room is None:
            self._numeric("403", target, "No such channel")
            return
        if len(params) == 1:
            if await self._run(ModeCommand(target), "MODE", target):
                self._numeric("329", room.name, str(int(room.created)))
            return
        changes, args = params[1], list(params[2:])
        budget = MAX_MODE_CHANGES
        sign = "+"
        for letter in changes:
            if letter in "+-":
                sign = letter
                continue
            if not budget:
                break  # MODES=4: the rest of the line is ignored
            budget -= 1
            change = sign + letter
            if letter == "b" and not args:
                await self._run(BansCommand(target), "MODE", target)
            elif letter in "ovb":
                if not args:
                    self._numeric("461", "MODE", "Not enough parameters")
                    return
                arg = args.pop(0)
                if letter == "b":
                    arg = _chat_mask(arg)
                elif not self._present(room, arg):
                    known = self.hub.find(arg) is not None
                    self._numeric(
                        "441" if known else "401",
                        *((arg, room.name) if known else (arg,)),
                        "They aren't on that channel" if known else "No such nick",
                    )
                    continue
                await self._run(_MODE_COMMANDS[change](target, arg), "MODE", target)
            elif letter == "n":
                if sign == "-":  # every room is +n: only members speak in it
                    self._numeric("472", letter, "is always set here: only members speak")
            elif letter in "imt":
                await self._run(ModeCommand(target, change), "MODE", target)
            else:
                self._numeric("472", letter, "is an unknown mode char to me")

    @staticmethod
    def _present(room: Room, nick: str) -> bool:
        key = nick_key(nick)
        return key in room.remote or any(nick_key(m.nick) == key for m in room.members)

    def _user_mode(self, target: str, changes: tuple[str, ...]) -> None:
        member = self.session.member
        assert member is not None
        me = self.codec.nick
        if nick_key(target) != nick_key(me):
            found = self.hub.find(target) is not None
            self._numeric(
                "502" if found else "401",
                *(() if found else (target,)),
                "Cannot change mode for other users" if found else "No such nick",
            )
            return
        if not changes:
            self._numeric("221", "+i" if member.invisible else "+")
            return
        sign, applied = "+", ""
        for letter in changes[0]:
            if letter in "+-":
                sign = letter
            elif letter == "i":
                if member.invisible != (sign == "+"):
                    member.invisible = sign == "+"
                    applied += sign + "i"
            else:
                self._numeric("501", "Unknown MODE flag")
        if applied:
            self._emit(format_message(hostmask(me), "MODE", me, applied))

    async def _away(self, params: tuple[str, ...]) -> None:
        text = sanitize_irc(params[0])[:AWAY_MAX] if params and params[0] else None
        await self._run(AwayCommand(text), "AWAY")

    async def _ison(self, params: tuple[str, ...]) -> None:
        if not self._need("ISON", params, 1):
            return
        nicks = [n for word in params for n in word.split()]
        online = []
        for nick in nicks:
            found = self.hub.find(nick)
            if found is not None:
                online.append(found.nick)
            else:
                remote = await self.hub.backend.locate(nick) if self.hub.backend.linked else None
                if remote is not None:
                    online.append(remote)
        self._numeric("303", " ".join(online))

    async def _userhost(self, params: tuple[str, ...]) -> None:
        if not self._need("USERHOST", params, 1):
            return
        replies = []
        for nick in params[:5]:
            found = self.hub.find(nick)
            if found is not None:
                away = "-" if found.away else "+"
                user = hostmask(found.nick).partition("!")[2]
                replies.append(f"{found.nick}={away}{user}")
        self._numeric("302", " ".join(replies))

    async def _motd_command(self, params: tuple[str, ...]) -> None:
        self._motd()

    async def _lusers_command(self, params: tuple[str, ...]) -> None:
        self._lusers()

    async def _version(self, params: tuple[str, ...]) -> None:
        self._emit(
            format_message(
                self.server,
                "351",
                self.codec.nick,
                f"chat-{__version__}",
                self.server,
                "IRC, JSON Lines and text on one port",
            )
        )
        self._send_isupport()

    async def _time(self, params: tuple[str, ...]) -> None:
        now = time.strftime("%A %B %d %Y -- %H:%M:%S +00:00", time.gmtime())
        self._numeric("391", self.server, now)

    async def _kick(self, params: tuple[str, ...]) -> None:
        if not self._need("KICK", params, 2):
            return
        room = params[0]
        if not self.hub.has_room(room):
            self._numeric("403", room, "No such channel")
            return
        reason = sanitize_irc(params[2])[:REASON_MAX] if len(params) > 2 else ""
        member = self.session.member
        assert member is not None
        joined = member.rooms.get(room.lower())
        for nick in filter(None, params[1].split(",")):
            if joined is not None and joined.operates(member) and not self._present(joined, nick):
                self._numeric("441", nick, room, "They aren't on that channel")
                continue
            await self._run(KickCommand(nick, room, reason), "KICK", room)

    async def _invite(self, params: tuple[str, ...]) -> None:
        if not self._need("INVITE", params, 2):
            return
        nick, room = params[0], params[1]
        if self.hub.find(nick) is None and not self.hub.backend.linked:
            self._numeric("401", nick, "No such nick")
            return
        joined = self.hub.find_room(room)
        if joined is None:
            self._numeric("403", room, "No such channel")
            return
        if self._present(joined, nick):
            self._numeric("443", nick, joined.name, "is already on channel")
            return
        await self._run(InviteCommand(nick, room), "INVITE", room)

    async def _cap_command(self, params: tuple[str, ...]) -> None:
        self._cap(params)

    async def _chathistory(self, params: tuple[str, ...]) -> None:
        """``CHATHISTORY LATEST <channel> * <n>`` and ``BEFORE <channel> timestamp=<t> <n>``:
        the lines the store keeps, oldest first, in a ``chathistory`` batch."""
        if len(params) < 4:
            self._emit(
                format_message(
                    self.server, "FAIL", "CHATHISTORY", "NEED_MORE_PARAMS", "Missing parameters"
                )
            )
            return
        sub, target, point, count = params[0].upper(), params[1], params[2], params[3]
        member = self.session.member
        assert member is not None
        room = member.rooms.get(target.lower())
        if room is None:
            self._emit(
                format_message(
                    self.server,
                    "FAIL",
                    "CHATHISTORY",
                    "INVALID_TARGET",
                    sub,
                    target,
                    "You are not in that channel",
                )
            )
            return
        before = time.time() + 1.0
        if sub == "BEFORE" and point.startswith("timestamp="):
            before = _parse_time(point[10:]) or before
        elif not (sub == "LATEST" and point == "*"):
            self._emit(
                format_message(
                    self.server,
                    "FAIL",
                    "CHATHISTORY",
                    "INVALID_PARAMS",
                    sub,
                    "Only LATEST * and BEFORE timestamp= are supported",
                )
            )
            return
        asked = _number(count)
        limit = HISTORY_BATCH_MAX if asked is None else min(asked, HISTORY_BATCH_MAX)
        lines = await self.hub.store.before(room.name, before, limit) if limit else []
        self._emit(*self.codec.history_batch(room.name, lines))

    async def _chat_command(self, verb: str, params: tuple[str, ...]) -> None:
        """A command of the chat's own that IRC lacks (``CLAIM``, ``MUTE``, ``REGISTER``...),
        read as the text dialect reads it; anything else is an unknown command."""
        line = "/" + verb.lower() + "".join(" " + p for p in params)
        try:
            parsed = parse_text_line(sanitize_irc(line), registered=True)
        except ProtocolError as exc:
            if exc.code is ErrorCode.UNKNOWN_COMMAND:
                self._numeric("421", verb, "Unknown command")
            else:
                self._refuse(exc, verb)
            return
        if type(parsed) is HelpCommand:
            self._help(parsed.command)
            return
        if parsed is None or type(parsed) in CONNECTION_COMMANDS:
            self._numeric("421", verb, "Unknown command")
            return
        await self._run(parsed, verb)

    def _help(self, subject: str | None) -> None:
        """``HELP [subject]``: the chat's help, as IRC's 704/705/706 (524 if unknown)."""
        topic = subject or "*"
        irc = _IRC_HELP.get(topic.upper())
        try:
            text = irc or help_text(subject.lower().lstrip("/") if subject else None)
        except ProtocolError:
            self._numeric("524", topic, "I do not know anything about this")
            return
        first, *rest = text.split("\n")
        self._numeric("704", topic, first)
        for line in rest:
            self._numeric("705", topic, line or " ")
        self._numeric("706", topic, "End of /HELP")

    async def _help_command(self, params: tuple[str, ...]) -> None:
        self._help(params[0] if params else None)

    async def _oper(self, params: tuple[str, ...]) -> None:
        """``OPER account password``: a server operator's account (``--admin``) makes this
        connection a server operator (381); 464 for a wrong password, 491 otherwise."""
        if not self._need("OPER", params, 2):
            return
        member = self.session.member
        assert member is not None
        try:
            await self.hub.oper(member, params[0], params[1])
        except ProtocolError as exc:
            if exc.code is ErrorCode.WRONG_PASSWORD:
                self._numeric("464", "Password incorrect")
            else:
                self._numeric("491", "No O-lines for your host")
            return
        self._numeric("381", "You are now an IRC operator")
        self._emit(format_message(hostmask(member.nick), "MODE", member.nick, "+o"))

    async def _whowas(self, params: tuple[str, ...]) -> None:
        """``WHOWAS nick [count]``: who recently left under that name, newest first."""
        if not self._need("WHOWAS", params, 1):
            return
        nick = params[0]
        count = (_number(params[1]) or 0) if len(params) > 1 else 0
        found = [d for d in self.hub.departed if nick_key(d.nick) == nick_key(nick)]
        if count > 0:
            found = found[:count]
        if not found:
            self._numeric("406", nick, "There was no such nickname")
        for departed in found:
            self._emit(
                self.codec.numeric(
                    "314",
                    departed.nick,
                    departed.user[:USER_MAX],
                    USER_HOST,
                    "*",
                    departed.realname or departed.nick,
                )
            )
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(departed.at))
            self._numeric("312", departed.nick, self.server, stamp)
        self._numeric("369", nick, "End of WHOWAS")

    async def _info(self, params: tuple[str, ...]) -> None:
        for line in (f"chat {__version__}", *MOTD):
            self._numeric("371", line)
        self._numeric("374", "End of INFO list")

    async def _links(self, params: tuple[str, ...]) -> None:
        self._numeric("364", self.server, self.server, "0 One server, one port, every client")
        self._numeric("365", "*", "End of /LINKS list")

    _commands: Final[dict[str, Callable[[IrcHandler, tuple[str, ...]], Awaitable[None]]]] = {
        "JOIN": _join,
        "PART": _part,
        "TOPIC": _topic,
        "NAMES": _names,
        "LIST": _list,
        "WHO": _who,
        "WHOIS": _whois,
        "NICK": _nick_change,
        "QUIT": _quit,
        "PING": _ping,
        "PONG": _pong,
        "MODE": _mode,
        "AWAY": _away,
        "ISON": _ison,
        "USERHOST": _userhost,
        "MOTD": _motd_command,
        "LUSERS": _lusers_command,
        "VERSION": _version,
        "TIME": _time,
        "KICK": _kick,
        "INVITE": _invite,
        "CAP": _cap_command,
        "CHATHISTORY": _chathistory,
        "HELP": _help_command,
        "HELPOP": _help_command,
        "OPER": _oper,
        "WHOWAS": _whowas,
        "INFO": _info,
        "LINKS": _links,
    }


def _parse_time(text: str) -> float | None:
    """An IRCv3 timestamp (``2026-12-05T06:40:00.000Z``) as Unix time."""
    try:
        base, _, millis = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000
    except ValueError:
        return None


def _chat_mask(mask: str) -> str:
    """An IRC ban mask as the chat's: ``bob!*@*`` bans the nickname, ``*!*@1.2.3.4`` the
    address, ``$a:bob`` the account; anything else is passed on to be refused."""
    if mask.startswith("$a:"):
        return f"account:{mask[3:]}"
    nick, _, rest = mask.partition("!")
    host = rest.partition("@")[2]
    if nick and "*" not in nick and "?" not in nick:
        return f"nick:{nick}"
    if host and "*" not in host and "?" not in host:
        return f"address:{host}"
    return mask


def _number(text: str) -> int | None:
    """A parameter's whole number (``-`` allowed), or None: only ASCII digits count."""
    return int(text) if re.fullmatch(r"-?[0-9]{1,9}", text) else None


def _client_tags(message: IrcMessage) -> str:
    """A line's client-only tags (``+name=value``), as they are relayed: escaped again.
    A key must be a valid tag name and a value hold no NUL, or neither would reach anyone
    as it was sent (a CR in a key would end the line at some clients)."""
    found = [
        (k, v) for k, v in message.tags.items() if _CLIENT_TAG_RE.fullmatch(k) and "\0" not in v
    ]
    return ";".join(k if not v else f"{k}={escape_tag(v)}" for k, v in found)
