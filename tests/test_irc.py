"""The IRC dialect on the shared port, over real sockets: registration (CAP, PASS, SASL),
the commands, IRCv3 (server-time, echo-message, labeled-response, batch, chathistory), and
the same room shared with text and JSON clients.

What an IRC client must receive is written here from RFC 2812, https://modern.ircdocs.horse
and https://ircv3.net, not from the server's renderer: :class:`IrcClient` parses each line
it receives on its own into tags, source, command and parameters.

Nothing sleeps to synchronise: every wait is for a line, bounded by ``WAIT``. To show that
something did *not* arrive, a ``PING`` marker is sent and everything received up to its
``PONG`` is checked.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chat.server import ChatServer
from tests.harness import WAIT, JsonClient, LineClient, StartServer, StreamClient

SERVER = "chat.server"
PASSWORD = "correct-horse-battery"
_markers = itertools.count(1)


# --- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """One received IRC line: ``@tags :source COMMAND params``."""

    raw: str
    command: str
    params: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    @property
    def nick(self) -> str | None:
        """The nickname of the source (``nick!user@host``), or None for no source."""
        return self.source.split("!", 1)[0] if self.source else None


_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def parse(raw: str) -> Msg:
    """Parse one line as modern.ircdocs.horse describes it (the test's own reading)."""
    rest = raw
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        head, _, rest = rest[1:].partition(" ")
        for item in head.split(";"):
            key, _, value = item.partition("=")
            tags[key] = re.sub(r"\\(.?)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value)
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
    params: list[str] = []
    while rest:
        if rest.startswith(":"):
            params.append(rest[1:])
            break
        word, _, rest = rest.partition(" ")
        if word:
            params.append(word)
    assert params, f"no command in {raw!r}"
    return Msg(raw, params[0], tuple(params[1:]), tags, source)


class IrcClient(StreamClient):
    """An IRC client over a real socket; every read has a timeout and is recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.seen: list[Msg] = []
        self.raw: list[bytes] = []
        self.nick = "*"

    @classmethod
    async def connect(cls, port: int) -> IrcClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, line: str) -> None:
        await self.send_raw(line.encode() + b"\r\n")

    async def line(self, timeout: float = WAIT) -> Msg:
        """The next line, parsed; raises EOFError at the end of the stream."""
        async with asyncio.timeout(timeout):
            data = await self.reader.readline()
        if not data:
            raise EOFError(f"connection closed; last lines: {[m.raw for m in self.seen[-5:]]}")
        self.raw.append(data)
        assert data.endswith(b"\r\n"), data
        msg = parse(data[:-2].decode())
        self.seen.append(msg)
        return msg

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (searched in the raw line)."""
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = regex.search((await self.line(timeout)).raw)
                    if found:
                        return found
        except TimeoutError:
            recent = [m.raw for m in self.seen[-8:]]
            raise AssertionError(f"no line matched {pattern!r}; last lines: {recent}") from None

    async def until(self, pattern: str, timeout: float = WAIT) -> list[Msg]:
        """Every line up to and including the first that matches ``pattern``."""
        start = len(self.seen)
        await self.expect(pattern, timeout)
        return self.seen[start:]

    async def get(self, command: str, *params: str, timeout: float = WAIT) -> Msg:
        """Read up to the first line of ``command`` whose parameters start with ``params``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.line(timeout)
                    if msg.command == command and msg.params[: len(params)] == params:
                        return msg
        except TimeoutError:
            recent = [m.raw for m in self.seen[-8:]]
            raise AssertionError(f"no {command} {params}; last lines: {recent}") from None

    async def sync(self) -> list[Msg]:
        """Everything received before the answer to a fresh ``PING`` marker (not included)."""
        token = f"marker{next(_markers)}"
        await self.send(f"PING {token}")
        lines = await self.until(rf"PONG \S+ :?{token}$")
        return lines[:-1]

    async def register(self, nick: str, caps: Iterable[str] = ()) -> list[Msg]:
        """CAP LS 302, CAP REQ, NICK, USER, CAP END; every line up to the MOTD's end."""
        wanted = " ".join(caps)
        await self.send("CAP LS 302")
        await self.get("CAP", "*", "LS")
        if wanted:
            await self.send(f"CAP REQ :{wanted}")
            ack = await self.get("CAP", "*")
            assert ack.params[1:] == ("ACK", wanted), ack
        await self.send(f"NICK {nick}")
        await self.send(f"USER {nick} 0 * :{nick} in a test")
        await self.send("CAP END")
        lines = await self.until(r"^(@\S+ )?:\S+ (376|422) ")
        self.nick = nick
        return lines

    async def join(self, room: str) -> list[Msg]:
        """JOIN ``room``; every line up to the end of its NAMES."""
        await self.send(f"JOIN {room}")
        return await self.until(rf" 366 \S+ {re.escape(room)} ")

    async def eof(self, timeout: float = WAIT) -> list[Msg]:
        """Every line until the server closes the connection."""
        start = len(self.seen)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.line(timeout)
                except (EOFError, ConnectionResetError):
                    return self.seen[start:]


async def irc_user(
    port: int, nick: str, caps: Iterable[str] = (), rooms: Iterable[str] = ()
) -> IrcClient:
    """A registered IRC client in ``rooms``, past each room's NAMES."""
    client = await IrcClient.connect(port)
    await client.register(nick, caps)
    for room in rooms:
        await client.join(room)
    return client


def commands(lines: Iterable[Msg]) -> list[str]:
    return [m.command for m in lines]


def texts(lines: Iterable[Msg], command: str = "PRIVMSG") -> list[str]:
    """The last parameter of every ``command`` line."""
    return [m.params[-1] for m in lines if m.command == command]


def sasl_plain(account: str, password: str) -> str:
    return base64.b64encode(f"\0{account}\0{password}".encode()).decode()


TIME_TAG = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
async def port(start_server: StartServer) -> int:
    """A server without flood control or a per-IP limit: tests send many lines at once."""
    server: ChatServer = await start_server(max_per_ip=0, rate=0)
    return server.port


async def registered_text_user(port: int, nick: str) -> None:
    """Give ``nick`` an account (a text user's ``/register``), then disconnect it."""
    text = await LineClient.connect(port, nick)
    await text.send(f"/register {PASSWORD}")
    await text.expect(rf"The nickname {nick} is now yours")
    await text.send("/quit")
    await text.eof()


# --- registration -----------------------------------------------------------------------


async def test_a_client_speaking_first_gets_irc_lines_and_no_greeting(
    start_server: StartServer,
) -> None:
    server = await start_server(max_per_ip=0, rate=0, greet_delay=0.01)
    client = await IrcClient.connect(server.port)
    await client.send("CAP LS 302")
    first = await client.line()
    assert client.raw[0].startswith(b":chat.server CAP * LS "), client.raw[0]
    assert first.command == "CAP"
    lines = await client.register("alice")
    lines += await client.sync()
    for raw in client.raw:
        assert raw.startswith((b":", b"@")), raw
        assert b"***" not in raw, raw
        assert b"Welcome to chat" not in raw, raw


async def test_welcome_numerics_isupport_lusers_and_motd(port: int) -> None:
    client = await IrcClient.connect(port)
    lines = await client.register("alice")
    numerics = [m for m in lines if m.command.isdigit()]
    assert [m.command for m in numerics[:4]] == ["001", "002", "003", "004"]
    for m in numerics:
        assert m.source == SERVER, m.raw
        assert m.params[0] == "alice", m.raw
    assert "alice" in numerics[0].params[-1]
    assert numerics[3].params[1] == SERVER
    tokens = [t for m in lines if m.command == "005" for t in m.params[1:-1]]
    for m in lines:
        if m.command == "005":
            assert m.params[-1] == "are supported by this server", m.raw
    assert {"CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=16", "CHANNELLEN=32"} <= set(tokens)
    assert "TOPICLEN=300" in tokens
    assert any(re.fullmatch(r"CHANLIMIT=#:\d+", t) for t in tokens), tokens
    assert "251" in commands(lines)
    motd = [m.command for m in lines if m.command in ("375", "372", "376")]
    assert motd[0] == "375", motd
    assert motd[-1] == "376", motd
    assert "372" in motd, motd
    assert commands(lines).index("251") < commands(lines).index("375")


async def test_registration_waits_for_cap_end(port: int) -> None:
    client = await IrcClient.connect(port)
    await client.send("CAP LS 302")
    await client.get("CAP", "*", "LS")
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    before = await client.sync()  # PING works before registration
    assert "001" not in commands(before), before
    await client.send("CAP END")
    welcome = await client.get("001")
    assert welcome.params[0] == "alice"


async def test_cap_ls_302_lists_the_capabilities_with_values(port: int) -> None:
    client = await IrcClient.connect(port)
    await client.send("CAP LS 302")
    reply = await client.get("CAP", "*", "LS")
    offered = reply.params[-1].split()
    for cap in ("sasl=PLAIN", "server-time", "echo-message", "labeled-response", "batch"):
        assert cap in offered, offered
    assert "message-tags" in offered, offered
    old = await IrcClient.connect(port)
    await old.send("CAP LS")
    offered = (await old.get("CAP", "*", "LS")).params[-1].split()
    assert "sasl" in offered, offered
    assert "sasl=PLAIN" not in offered, offered  # values: 302 only


async def test_cap_req_after_registration(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    await irc.send("CAP REQ :server-time")
    ack = await irc.get("CAP")
    assert ack.params == ("ivy", "ACK", "server-time"), ack.raw
    text = await LineClient.connect(port, "tom")
    await text.send("tagged now")
    said = await irc.get("PRIVMSG")
    assert TIME_TAG.fullmatch(said.tags.get("time", "")), said.raw


async def test_cap_req_of_an_unknown_cap_is_refused_whole(port: int) -> None:
    client = await IrcClient.connect(port)
    await client.send("CAP LS 302")
    await client.get("CAP", "*", "LS")
    await client.send("CAP REQ :server-time no-such-cap")
    nak = await client.get("CAP", "*")
    assert nak.params[1:] == ("NAK", "server-time no-such-cap"), nak.raw
    await client.send("CAP LIST")
    listed = await client.get("CAP", "*", "LIST")
    assert listed.params[-1].split() == [], listed.raw
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    await client.send("CAP END")
    await client.get("376")
    await client.send("JOIN #lobby")
    joined = await client.get("JOIN")
    assert joined.tags == {}, joined.raw  # server-time was not enabled


async def test_nick_in_use_or_looking_alike_gets_433(port: int) -> None:
    text = await LineClient.connect(port, "alice")  # a text user
    other = await irc_user(port, "tom")  # an IRC user
    client = await IrcClient.connect(port)
    await client.send("USER someone 0 * :Someone")
    for taken in ("alice", "ALICE", "a1ice", "tom", "t0m"):
        await client.send(f"NICK {taken}")
        refused = await client.get("433")
        assert refused.params[:2] == ("*", taken), refused.raw
    await client.send("NICK zoe")
    welcome = await client.get("001")
    assert welcome.params[0] == "zoe"
    await text.close()
    await other.close()


async def test_invalid_or_missing_nick_gets_432_or_431(port: int) -> None:
    client = await IrcClient.connect(port)
    for bad in ("9lives", "a.b", "x" * 17, "admin"):
        await client.send(f"NICK {bad}")
        refused = await client.get("432")
        assert refused.params[:2] == ("*", bad), refused.raw
    await client.send("NICK")
    missing = await client.get("431")
    assert missing.params[0] == "*", missing.raw


async def test_a_command_before_registration_gets_451(port: int) -> None:
    client = await IrcClient.connect(port)
    await client.send("NICK alice")
    await client.send("JOIN #lobby")
    refused = await client.get("451")
    assert refused.params[0] == "*", refused.raw
    await client.send("PRIVMSG #lobby :hello")
    await client.get("451")


async def test_user_after_registration_gets_462(port: int) -> None:
    client = await irc_user(port, "alice")
    await client.send("USER alice 0 * :Alice again")
    refused = await client.get("462")
    assert refused.params[0] == "alice", refused.raw
    await client.send("PASS whatever")
    await client.get("462")


async def test_pass_logs_in_to_an_account_a_text_user_registered(port: int) -> None:
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send(f"PASS {PASSWORD}")
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    welcome = await client.get("001")
    assert welcome.params[0] == "alice"
    await client.send("WHOIS alice")
    account = await client.get("330")
    assert account.params[1:3] == ("alice", "alice"), account.raw


async def test_pass_with_a_wrong_password_is_refused(port: int) -> None:
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send("PASS not-the-password")
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    refused = await client.get("464")
    assert refused.params[0] == "*", refused.raw
    assert "001" not in commands(await client.sync())


async def test_a_registered_nick_without_password_gets_433(port: int) -> None:
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    refused = await client.get("433")
    assert refused.params[:2] == ("*", "alice"), refused.raw
    await client.send("NICK bob")
    await client.get("001")


async def test_sasl_plain_logs_in(port: int) -> None:
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send("CAP LS 302")
    await client.get("CAP", "*", "LS")
    await client.send("CAP REQ :sasl")
    await client.get("CAP", "*", "ACK")
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    await client.send("AUTHENTICATE PLAIN")
    go_on = await client.get("AUTHENTICATE")
    assert go_on.params == ("+",), go_on.raw
    await client.send(f"AUTHENTICATE {sasl_plain('alice', PASSWORD)}")
    logged_in = await client.get("900")
    assert logged_in.params[2] == "alice", logged_in.raw
    await client.get("903")
    assert "001" not in commands(await client.sync())  # still negotiating
    await client.send("CAP END")
    welcome = await client.get("001")
    assert welcome.params[0] == "alice"


async def test_sasl_plain_with_a_wrong_password_gets_904(port: int) -> None:
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send("CAP REQ :sasl")
    await client.get("CAP", "*", "ACK")
    await client.send("AUTHENTICATE PLAIN")
    await client.get("AUTHENTICATE", "+")
    await client.send(f"AUTHENTICATE {sasl_plain('alice', 'not-the-password')}")
    failed = await client.get("904")
    assert failed.params[0] == "*", failed.raw
    assert "900" not in commands(client.seen)
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    await client.send("CAP END")
    await client.get("433")


# --- commands ---------------------------------------------------------------------------


async def test_join_several_channels_then_join_0_parts_them_all(port: int) -> None:
    client = await irc_user(port, "alice")
    await client.send("JOIN #one,#two")
    lines = await client.until(r" 366 alice #two ")
    joins = [m for m in lines if m.command == "JOIN"]
    assert [(m.source, m.params[0]) for m in joins] == [
        ("alice!alice@chat", "#one"),
        ("alice!alice@chat", "#two"),
    ]
    # Each JOIN comes before its own NAMES (RFC 2812 3.2.1).
    order = [(m.command, m.params[1] if m.command == "366" else m.params[0]) for m in lines]
    assert (
        order.index(("JOIN", "#one")) < order.index(("366", "#one")) < order.index(("JOIN", "#two"))
    )
    await client.send("JOIN 0")
    parted = [m for m in await client.sync() if m.command == "PART"]
    assert sorted(m.params[0] for m in parted) == ["#one", "#two"], parted
    assert all(m.nick == "alice" for m in parted)
    await client.send("PRIVMSG #one :still there?")
    refused = await client.get("403")  # empty, so gone: an unclaimed room is not kept
    assert refused.params[:2] == ("alice", "#one")
    assert not [m for m in client.seen if m.command == "NOTICE"]  # no "active room" notices


async def test_part_with_a_reason_is_seen_by_the_others(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    text = await LineClient.connect(port, "tom")
    await text.send("/join #room")
    await text.expect(r"\*\*\* 3 in #room")
    await alice.get("JOIN", "#room")  # tom
    await alice.send("PART #room :gone fishing")
    seen = await bob.get("PART")
    assert seen.source == "alice!alice@chat"
    assert seen.params == ("#room", "gone fishing")
    own = await alice.get("PART")
    assert own.params == ("#room", "gone fishing")
    await text.expect(r"^\[#room\] \*\*\* alice left #room \(gone fishing\)$")


async def test_privmsg_to_a_channel_and_to_a_nick(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#lobby"])
    bob = await irc_user(port, "bob", rooms=["#lobby"])
    await alice.send("PRIVMSG #lobby :hello room")
    said = await bob.get("PRIVMSG")
    assert said.source == "alice!alice@chat"
    assert said.params == ("#lobby", "hello room")
    await alice.send("PRIVMSG bob :hello bob")
    private = await bob.get("PRIVMSG")
    assert private.source == "alice!alice@chat"
    assert private.params == ("bob", "hello bob")
    # Without echo-message, the sender never gets its own lines back.
    assert "PRIVMSG" not in commands(await alice.sync())


async def test_notice_is_delivered_and_never_answered_with_an_error(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#lobby"])
    bob = await irc_user(port, "bob", rooms=["#lobby"])
    text = await LineClient.connect(port, "carol")
    await alice.send("NOTICE bob :psst")
    got = await bob.get("NOTICE", "bob")  # a notice stays a notice, for bots' sake
    assert got.params[-1] == "psst"
    assert got.nick == "alice"
    await alice.send("NOTICE #lobby :to everyone")
    assert (await bob.get("NOTICE", "#lobby")).params[-1] == "to everyone"
    await text.expect(r"^\[#lobby\] -alice- to everyone$")  # and shows as one elsewhere
    await text.close()
    for line in ("NOTICE nobody :hi", "NOTICE #nowhere :hi", "NOTICE", "NOTICE bob", "NOTICE #x"):
        await alice.send(line)
    answers = [m for m in await alice.sync() if m.source == SERVER]
    assert answers == [], [m.raw for m in answers]


async def test_errors_name_the_channel_nick_or_command(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#lobby"])
    bob = await irc_user(port, "bob", rooms=["#other"])
    checks = [
        ("PRIVMSG nobody :hi", "401", ("alice", "nobody")),
        ("PART #nowhere", "403", ("alice", "#nowhere")),
        ("JOIN nohash", "403", ("alice", "nohash")),
        ("PRIVMSG #other :hi", "404", ("alice", "#other")),
        ("PART #other", "442", ("alice", "#other")),
        ("TOPIC #other :mine now", "442", ("alice", "#other")),
        ("JOIN", "461", ("alice", "JOIN")),
        ("KICK #lobby", "461", ("alice", "KICK")),
        ("PRIVMSG", "411", ("alice",)),
        ("PRIVMSG #lobby", "412", ("alice",)),
        ("PRIVMSG #lobby :", "412", ("alice",)),
        ("FROBNICATE now", "421", ("alice", "FROBNICATE")),
    ]
    for line, numeric, params in checks:
        await alice.send(line)
        answer = [m for m in await alice.sync() if m.command.isdigit()]
        assert [m.command for m in answer] == [numeric], (line, [m.raw for m in answer])
        assert answer[0].params[: len(params)] == params, (line, answer[0].raw)
        assert answer[0].source == SERVER
    await bob.close()


async def test_privmsg_to_a_channel_that_does_not_exist_gets_401_or_403(port: int) -> None:
    # 404 ERR_CANNOTSENDTOCHAN is for a channel that exists; for one that does not, RFC 2812
    # and most servers answer 401 "No such nick/channel", others (and protocol.md's list
    # for PRIVMSG) 403 ERR_NOSUCHCHANNEL.
    alice = await irc_user(port, "alice")
    await alice.send("PRIVMSG #nowhere :anyone?")
    answer = [m for m in await alice.sync() if m.command.isdigit()]
    assert [m.command for m in answer] in (["401"], ["403"]), [m.raw for m in answer]
    assert answer[0].params[:2] == ("alice", "#nowhere"), answer[0].raw


async def test_topic_set_and_query(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    await alice.send("TOPIC #room")
    none = await alice.get("331")
    assert none.params[:2] == ("alice", "#room"), none.raw
    await alice.send("TOPIC #room :all about tests")
    changed = await bob.get("TOPIC")
    assert changed.source == "alice!alice@chat"
    assert changed.params == ("#room", "all about tests")
    await alice.get("TOPIC")
    await bob.send("TOPIC #room")
    topic = await bob.get("332")
    assert topic.params == ("bob", "#room", "all about tests")
    carol = await IrcClient.connect(port)
    await carol.register("carol")
    lines = await carol.join("#room")
    assert ("332", ("carol", "#room", "all about tests")) in [(m.command, m.params) for m in lines]


async def test_names_marks_the_creator_as_operator(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await IrcClient.connect(port)
    await bob.register("bob")
    joined = await bob.join("#room")
    assert commands(joined)[0] == "JOIN"
    listed = [m for m in joined if m.command == "353"]
    assert len(listed) == 1, listed
    assert listed[0].params[:3] == ("bob", "=", "#room"), listed
    assert sorted(listed[0].params[3].split()) == ["@alice", "bob"]
    end = joined[-1]
    assert end.command == "366"
    assert end.params[:2] == ("bob", "#room")
    await alice.send("NAMES #room")
    names = await alice.get("353")
    assert sorted(names.params[3].split()) == ["@alice", "bob"]


async def test_list_shows_channels_with_counts_and_topics(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    await alice.send("TOPIC #room :the topic")
    await bob.send("LIST")
    lines = await bob.until(r" 323 ")
    rooms = {m.params[1]: m.params[2:] for m in lines if m.command == "322"}
    assert rooms["#room"] == ("2", "the topic"), rooms
    assert lines[-1].params[0] == "bob"


async def test_who_lists_a_channel(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    await bob.send("WHO #room")
    lines = await bob.until(r" 315 ")
    who = {m.params[5]: m for m in lines if m.command == "352"}
    assert sorted(who) == ["alice", "bob"]
    assert who["alice"].params[:2] == ("bob", "#room")
    assert who["alice"].params[6] == "H@", who["alice"].raw
    assert who["bob"].params[6] == "H", who["bob"].raw
    assert re.fullmatch(r"0 \S.*", who["alice"].params[7]), who["alice"].raw  # hopcount realname
    assert lines[-1].params[:2] == ("bob", "#room")
    await alice.close()


async def test_whois(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob")
    await bob.send("WHOIS alice")
    lines = await bob.until(r" 318 ")
    by = {m.command: m for m in lines}
    assert by["311"].params[:2] == ("bob", "alice")
    assert by["311"].params[4] == "*"
    assert by["319"].params[:2] == ("bob", "alice")
    assert by["319"].params[2].split() in (["#room"], ["@#room"]), by["319"].raw
    assert by["312"].params[:3] == ("bob", "alice", SERVER)
    assert by["317"].params[:2] == ("bob", "alice")
    assert by["317"].params[2].isdigit()
    assert by["318"].params[:2] == ("bob", "alice")
    await bob.send("WHOIS nobody")
    lines = await bob.until(r" 318 ")
    assert [m.command for m in lines] == ["401", "318"], [m.raw for m in lines]
    assert lines[0].params[:2] == ("bob", "nobody")
    await alice.close()


async def test_nick_change_is_seen_by_the_others(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#lobby"])
    bob = await irc_user(port, "bob", rooms=["#lobby"])
    await alice.send("NICK alicia")
    seen = await bob.get("NICK")
    assert seen.source == "alice!alice@chat", seen.raw
    assert seen.params == ("alicia",), seen.raw
    own = await alice.get("NICK")
    assert own.source == "alice!alice@chat"
    assert own.params == ("alicia",)
    await alice.send("FROBNICATE")
    assert (await alice.get("421")).params[0] == "alicia"  # numerics follow the new nick
    await alice.send("NICK bob")
    refused = await alice.get("433")
    assert refused.params[:2] == ("alicia", "bob")


async def test_quit_is_seen_by_the_others(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#lobby"])
    bob = await irc_user(port, "bob", rooms=["#lobby"])
    await alice.send("QUIT :see you")
    last = await alice.eof()
    assert commands(last)[-1:] == ["ERROR"], [m.raw for m in last]
    seen = await bob.get("QUIT")
    assert seen.source == "alice!alice@chat", seen.raw
    assert "see you" in seen.params[0], seen.raw


async def test_ping_gets_pong(port: int) -> None:
    alice = await irc_user(port, "alice")
    await alice.send("PING :some token")
    pong = await alice.get("PONG")
    assert pong.source == SERVER, pong.raw
    assert pong.params == (SERVER, "some token"), pong.raw
    await alice.send("PING")
    assert (await alice.get("409")).params[0] == "alice"


async def test_mode_query_and_moderated_channel(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    await alice.send("MODE #room +m")
    change = await bob.get("MODE")
    assert change.source == "alice!alice@chat", change.raw
    assert change.params == ("#room", "+m"), change.raw
    await bob.send("MODE #room")
    modes = await bob.get("324")
    assert modes.params[:2] == ("bob", "#room"), modes.raw
    assert "m" in modes.params[2], modes.raw
    await bob.send("PRIVMSG #room :may I?")
    refused = await bob.get("404")
    assert refused.params[:2] == ("bob", "#room")
    assert "PRIVMSG" not in commands(await alice.sync())
    await alice.send("MODE #room +v bob")
    voiced = await bob.get("MODE")
    assert voiced.params == ("#room", "+v", "bob"), voiced.raw
    await bob.send("PRIVMSG #room :thanks")
    said = await alice.get("PRIVMSG")
    assert said.params == ("#room", "thanks")


async def test_mode_plus_o_gives_operator(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    await bob.send("MODE #room +m")
    refused = await bob.get("482")
    assert refused.params[:2] == ("bob", "#room"), refused.raw
    await alice.send("MODE #room +o bob")
    opped = await bob.get("MODE")
    assert opped.source == "alice!alice@chat"
    assert opped.params == ("#room", "+o", "bob")
    await bob.send("NAMES #room")
    names = await bob.get("353")
    assert sorted(names.params[3].split()) == ["@alice", "@bob"]
    await bob.send("MODE #room +t")
    assert (await alice.get("MODE", "#room", "+t")).nick == "bob"


async def test_a_banned_nick_cannot_join(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob")
    await alice.send("MODE #room +b bob")
    banned = await alice.get("MODE")
    assert banned.params[:2] == ("#room", "+b"), banned.raw
    await bob.send("JOIN #room")
    refused = await bob.get("474")
    assert refused.params[:2] == ("bob", "#room"), refused.raw
    await alice.send("MODE #room +b")
    lines = await alice.until(r" 368 ")
    bans = [m for m in lines if m.command == "367"]
    assert bans, lines
    assert all(m.params[:2] == ("alice", "#room") for m in bans), lines
    assert any("bob" in m.params[2] for m in bans), [m.raw for m in bans]
    assert lines[-1].params[:2] == ("alice", "#room")


async def test_kick_is_seen_by_everyone_and_the_kicked_user_is_out(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob", rooms=["#room"])
    carol = await irc_user(port, "carol", rooms=["#room"])
    text = await LineClient.connect(port, "tom")
    await text.send("/join #room")
    await text.expect(r"\*\*\* 4 in #room")
    await alice.send("KICK #room bob :behave")
    for client in (alice, bob, carol):
        kick = await client.get("KICK")
        assert kick.source == "alice!alice@chat", kick.raw
        assert kick.params == ("#room", "bob", "behave"), kick.raw
    await text.expect(r"^\[#room\] .*bob.*behave")
    await alice.send("PRIVMSG #room :after the kick")
    assert (await carol.get("PRIVMSG")).params == ("#room", "after the kick")
    assert "PRIVMSG" not in commands(await bob.sync())
    await bob.send("PRIVMSG #room :let me in")
    assert (await bob.get("404")).params[:2] == ("bob", "#room")


async def test_invite_into_an_invite_only_channel(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#club"])
    bob = await irc_user(port, "bob")
    await alice.send("MODE #club +i")
    await alice.get("MODE", "#club", "+i")
    await bob.send("JOIN #club")
    refused = await bob.get("473")
    assert refused.params[:2] == ("bob", "#club"), refused.raw
    await alice.send("INVITE bob #club")
    confirmed = await alice.get("341")
    assert confirmed.params == ("alice", "bob", "#club"), confirmed.raw
    invited = await bob.get("INVITE")
    assert invited.source == "alice!alice@chat"
    assert invited.params == ("bob", "#club")
    lines = await bob.join("#club")
    assert lines[0].command == "JOIN", lines[0].raw
    assert lines[0].params == ("#club",), lines[0].raw


async def test_away(port: int) -> None:
    alice = await irc_user(port, "alice")
    bob = await irc_user(port, "bob")
    await bob.send("AWAY :out for lunch")
    marked = await bob.get("306")
    assert marked.params[0] == "bob"
    await alice.send("PRIVMSG bob :are you there?")
    away = await alice.get("301")
    assert away.params == ("alice", "bob", "out for lunch"), away.raw
    assert (await bob.get("PRIVMSG")).params == ("bob", "are you there?")
    await alice.send("USERHOST bob")
    assert (await alice.get("302")).params[1] == "bob=-bob@chat"
    await bob.send("AWAY")
    assert (await bob.get("305")).params[0] == "bob"


async def test_ison_and_userhost(port: int) -> None:
    alice = await irc_user(port, "alice")
    text = await LineClient.connect(port, "tom")
    await alice.send("ISON tom nobody ALICE")
    online = await alice.get("303")
    assert online.params[0] == "alice"
    assert online.params[1].split() == ["tom", "alice"]
    await alice.send("USERHOST tom nobody")
    host = await alice.get("302")
    assert host.params == ("alice", "tom=+tom@chat"), host.raw
    await text.close()


async def test_motd_version_time_and_lusers(port: int) -> None:
    alice = await irc_user(port, "alice")
    await alice.send("MOTD")
    motd = await alice.until(r" 376 ")
    assert motd[0].command == "375"
    assert "372" in commands(motd)
    await alice.send("VERSION")
    version = await alice.get("351")
    assert version.params[0] == "alice", version.raw
    assert version.params[2] == SERVER, version.raw
    await alice.send("TIME")
    now = await alice.get("391")
    assert now.params[:2] == ("alice", SERVER), now.raw
    await alice.send("LUSERS")
    users = await alice.get("251")
    assert users.params[0] == "alice"
    assert "1 users" in users.params[1]


async def test_a_chat_command_through_the_fallback(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    await alice.send("IGNORES")
    ignores = await alice.get("NOTICE")
    assert ignores.params[0] == "alice", ignores.raw
    assert "nobody" in ignores.params[1], ignores.raw
    await alice.send("CLAIM #room")
    refused = await alice.get("NOTICE")
    assert "Log in" in refused.params[1], refused.raw
    await alice.send(f"REGISTER {PASSWORD}")
    registered = await alice.get("900")  # RPL_LOGGEDIN
    assert registered.params[:3] == ("alice", "alice!alice@chat", "alice"), registered.raw
    await alice.send("CLAIM #room")
    claimed = await alice.until(r"(?i)claim")
    assert all(m.command in ("NOTICE", "MODE") for m in claimed), [m.raw for m in claimed]
    await alice.send("NOSUCHTHING at all")
    unknown = await alice.get("421")
    assert unknown.params[:2] == ("alice", "NOSUCHTHING")


# --- CTCP ACTION, formatting, line lengths ------------------------------------------------


async def test_ctcp_action_crosses_to_text_and_back(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    text = await LineClient.connect(port, "tom")
    await irc.get("JOIN", "#lobby")  # tom
    await irc.send("PRIVMSG #lobby :\x01ACTION waves\x01")
    await text.expect(r"^\[#lobby\] \* ivy waves$")
    await text.send("/me waves back")
    action = await irc.get("PRIVMSG")
    assert action.source == "tom!tom@chat"
    assert action.params == ("#lobby", "\x01ACTION waves back\x01"), action.raw


async def test_a_private_action_reaches_a_nick_as_a_star_message(port: int) -> None:
    # protocol.md: a CTCP ACTION to a nickname is a private "* text" (the chat has no
    # private action), which every dialect shows alike.
    ivy = await irc_user(port, "ivy")
    bob = await irc_user(port, "bob")
    text = await LineClient.connect(port, "tom")
    await ivy.send("PRIVMSG bob :\x01ACTION waves\x01")
    got = await bob.get("PRIVMSG")
    assert got.params == ("bob", "* waves"), got.raw
    await ivy.send("PRIVMSG tom :\x01ACTION waves too\x01")
    await text.expect(r"^\[private\] <ivy> \* waves too$")
    await ivy.send("PRIVMSG bob :\x01VERSION\x01")  # other CTCP is dropped
    assert "PRIVMSG" not in commands(await bob.sync())


async def test_formatting_codes_are_removed_before_a_text_client_sees_them(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    text = await LineClient.connect(port, "tom")
    await irc.get("JOIN", "#lobby")
    await irc.send("PRIVMSG #lobby :\x02bold\x02 and \x0304,05red\x03 and \x1ditalic\x0f!")
    line = await text.expect(r"^\[#lobby\] <ivy> .*$")
    assert line.group() == "[#lobby] <ivy> bold and red and italic!"


async def test_a_line_over_512_bytes_gets_417_and_the_connection_stays(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    text = await LineClient.connect(port, "tom")
    await irc.get("JOIN", "#lobby")
    await irc.send("PRIVMSG #lobby :" + "x" * 600)
    refused = await irc.get("417")
    assert refused.params[0] == "ivy", refused.raw
    await irc.send("PRIVMSG #lobby :short enough")
    said = await text.expect(r"^\[#lobby\] <ivy> (.*)$")
    assert said.group(1) == "short enough"  # the long line never reached anybody


async def test_a_long_text_line_reaches_irc_as_several_privmsgs(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    text = await LineClient.connect(port, "tom")
    await irc.get("JOIN", "#lobby")
    words = [f"word{i}-é€" for i in range(120)]
    long = " ".join(words)
    assert 1400 < len(long.encode()) < 2000
    await text.send(long)
    await text.send("/say the end")
    lines = await irc.until(r"PRIVMSG #lobby :the end$")
    pieces = [m for m in lines if m.command == "PRIVMSG"][:-1]
    assert len(pieces) >= 3, [m.raw for m in pieces]
    for m in pieces:
        assert m.source == "tom!tom@chat"
        assert m.params[0] == "#lobby"
    for raw in irc.raw[-len(lines) :]:
        assert len(raw) <= 512, len(raw)
    assert "".join(m.params[1] for m in pieces) == long


# --- IRCv3 --------------------------------------------------------------------------------


async def test_server_time_tags(port: int) -> None:
    irc = await irc_user(port, "ivy", caps=["server-time"])
    await irc.send("JOIN #lobby")
    joined = await irc.get("JOIN")
    assert TIME_TAG.fullmatch(joined.tags["time"]), joined.raw
    text = await LineClient.connect(port, "tom")
    await text.send("hello")
    said = await irc.get("PRIVMSG")
    assert TIME_TAG.fullmatch(said.tags["time"]), said.raw
    plain = await irc_user(port, "bob", rooms=["#lobby"])
    await text.send("again")
    assert (await plain.get("PRIVMSG")).tags == {}  # only with the capability


async def test_echo_message_only_with_the_capability(port: int) -> None:
    echo = await irc_user(port, "ivy", caps=["echo-message"], rooms=["#lobby"])
    plain = await irc_user(port, "bob", rooms=["#lobby"])
    await echo.send("PRIVMSG #lobby :my own words")
    mine = await echo.get("PRIVMSG")
    assert mine.source == "ivy!ivy@chat"
    assert mine.params == ("#lobby", "my own words")
    await echo.send("PRIVMSG bob :just you")
    private = await echo.get("PRIVMSG")
    assert private.source == "ivy!ivy@chat"
    assert private.params == ("bob", "just you")
    await plain.send("PRIVMSG #lobby :not echoed")
    await plain.send("PRIVMSG ivy :nor this")
    assert texts(await plain.sync()) == ["my own words", "just you"]
    assert texts(await echo.sync()) == ["not echoed", "nor this"]


async def test_client_tags_reach_irc_clients_that_asked_for_message_tags(port: int) -> None:
    tagged = await irc_user(port, "ivy", caps=["message-tags"], rooms=["#lobby"])
    plain = await irc_user(port, "bob", rooms=["#lobby"])
    sender = await irc_user(port, "amy", caps=["message-tags"], rooms=["#lobby"])
    await sender.send("@+draft/react=\\:)\\s;+x PRIVMSG #lobby :tagged")
    got = await tagged.get("PRIVMSG", "#lobby")
    assert got.tags.get("+draft/react") == ";) ", got.raw
    assert "+x" in got.tags, got.raw
    assert got.tags.get("msgid")
    untagged = await plain.get("PRIVMSG", "#lobby")
    assert not untagged.tags, untagged.raw  # no message-tags: no tags at all
    await sender.send("@+draft/reply=abc PRIVMSG ivy :answer")
    assert (await tagged.get("PRIVMSG", "ivy")).tags.get("+draft/reply") == "abc"
    await sender.send("@+typing=active TAGMSG #lobby")  # tags alone: IRC with message-tags only
    typing = await tagged.get("TAGMSG", "#lobby")
    assert (typing.nick, typing.tags.get("+typing")) == ("amy", "active"), typing.raw
    assert "TAGMSG" not in [m.command for m in await plain.sync()]


async def test_a_notice_from_json_or_text_reaches_every_dialect_as_a_notice(port: int) -> None:
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    watcher = await JsonClient.connect(port, nick="watcher")
    bot = await JsonClient.connect(port, nick="bot")
    await bot.send({"type": "notice", "target": "#lobby", "text": "build passed"})
    seen = await watcher.expect("message", nick="bot")
    assert seen.text == "build passed"
    assert seen.as_dict()["notice"] is True
    notice = await irc.get("NOTICE", "#lobby")
    assert (notice.nick, notice.params[-1]) == ("bot", "build passed")
    await bot.send({"type": "say", "text": "plain"})
    plain = await watcher.expect("message", nick="bot")
    assert "notice" not in plain.as_dict()  # only notices say so
    text = await LineClient.connect(port, "tom")
    await text.send("/notice ivy a word")
    private = await irc.get("NOTICE", "ivy")
    assert (private.nick, private.params[-1]) == ("tom", "a word")
    await text.close()
    await watcher.close()
    await bot.close()


async def test_labeled_response(port: int) -> None:
    irc = await irc_user(port, "ivy", caps=["labeled-response", "batch"], rooms=["#lobby"])
    await irc.send("@label=one PING :token")
    pong = await irc.get("PONG")
    assert pong.tags.get("label") == "one", pong.raw
    assert pong.params == (SERVER, "token"), pong.raw
    await irc.send("@label=two PONG :nothing to say")
    ack = await irc.get("ACK")
    assert ack.tags.get("label") == "two", ack.raw
    assert ack.source == SERVER, ack.raw
    await irc.send("@label=three WHOIS ivy")
    lines = await irc.until(r"^(@\S+ )?:\S+ BATCH -")
    opening, *inside, closing = lines
    assert opening.command == "BATCH", opening.raw
    assert opening.tags.get("label") == "three", opening.raw
    ref = opening.params[0].removeprefix("+")
    assert opening.params[0] == f"+{ref}"
    assert opening.params[1:] == ("labeled-response",)
    assert closing.params == (f"-{ref}",), closing.raw
    assert next(m.command for m in inside) == "311"
    assert inside[-1].command == "318"
    for m in inside:
        assert m.tags.get("batch") == ref, m.raw
        assert "label" not in m.tags, m.raw


async def test_a_labeled_privmsg_is_answered_by_its_labeled_echo(port: int) -> None:
    # ircv3.net labeled-response: with echo-message, the echo is the response and carries
    # the label; an ACK is only for a command that has no response at all.
    caps = ["echo-message", "labeled-response", "batch"]
    irc = await irc_user(port, "ivy", caps=caps, rooms=["#lobby"])
    await irc.send("@label=said PRIVMSG #lobby :labeled words")
    lines = await irc.sync()
    assert [(m.tags.get("label"), m.command, m.params) for m in lines] == [
        ("said", "PRIVMSG", ("#lobby", "labeled words"))
    ], [m.raw for m in lines]


async def test_history_on_join_comes_in_a_chathistory_batch(port: int) -> None:
    text = await LineClient.connect(port, "tom")
    for said in ("first", "second", "third"):
        await text.send(said)
        await text.expect(rf"<tom> {said}$")
    irc = await IrcClient.connect(port)
    await irc.register("ivy", ["batch", "server-time"])
    await irc.send("JOIN #lobby")
    lines = await irc.until(r"^(@\S+ )?:\S+ BATCH -")
    start = next(i for i, m in enumerate(lines) if m.command == "BATCH")
    opening, *inside, closing = lines[start:]
    ref = opening.params[0].removeprefix("+")
    assert opening.params == (f"+{ref}", "chathistory", "#lobby"), opening.raw
    assert closing.params == (f"-{ref}",)
    assert texts(inside) == ["first", "second", "third"]
    for m in inside:
        assert m.tags.get("batch") == ref, m.raw
        assert TIME_TAG.fullmatch(m.tags["time"]), m.raw
        assert m.source == "tom!tom@chat"
        assert m.params[0] == "#lobby"


async def test_history_on_join_without_batch_is_plain_privmsgs(port: int) -> None:
    text = await LineClient.connect(port, "tom")
    await text.send("remember me")
    await text.expect(r"<tom> remember me$")
    irc = await irc_user(port, "ivy")
    await irc.send("JOIN #lobby")
    lines = await irc.sync()
    assert "BATCH" not in commands(lines)
    assert texts(lines) == ["remember me"]


async def test_chathistory_latest(port: int) -> None:
    irc = await irc_user(port, "ivy", caps=["batch", "server-time"], rooms=["#lobby"])
    text = await LineClient.connect(port, "tom")
    for said in ("one", "two", "three"):
        await text.send(said)
        await irc.get("PRIVMSG")
    await irc.send("CHATHISTORY LATEST #lobby * 2")
    lines = await irc.until(r"^(@\S+ )?:\S+ BATCH -")
    opening, *inside, _closing = lines
    assert opening.params[1:] == ("chathistory", "#lobby"), opening.raw
    assert texts(inside) == ["two", "three"]
    assert all(TIME_TAG.fullmatch(m.tags["time"]) for m in inside)


# --- the three dialects in one room -------------------------------------------------------


@dataclass
class Trio:
    """tom (text), jay (JSON) and ivy (IRC), all in #lobby and past each other's joins."""

    text: LineClient
    json: JsonClient
    irc: IrcClient


@pytest.fixture
async def trio(port: int) -> Trio:
    text = await LineClient.connect(port, "tom")
    json = await JsonClient.connect(port, "jay")
    irc = await irc_user(port, "ivy", rooms=["#lobby"])
    await text.expect(r"^\[#lobby\] \*\*\* ivy joined #lobby$")
    await json.expect("join", room="#lobby", nick="ivy")
    return Trio(text, json, irc)


async def test_messages_and_actions_cross_every_way(trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    await text.send("from text")
    await json.expect("message", room="#lobby", nick="tom", text="from text")
    assert (await irc.get("PRIVMSG")).raw == ":tom!tom@chat PRIVMSG #lobby :from text"
    await json.send({"type": "say", "room": "#lobby", "text": "from json"})
    await text.expect(r"^\[#lobby\] <jay> from json$")
    assert (await irc.get("PRIVMSG")).raw == ":jay!jay@chat PRIVMSG #lobby :from json"
    await irc.send("PRIVMSG #lobby :from irc")
    await text.expect(r"^\[#lobby\] <ivy> from irc$")
    await json.expect("message", room="#lobby", nick="ivy", text="from irc")
    await text.send("/me acts in text")
    await json.expect("action", room="#lobby", nick="tom", text="acts in text")
    assert (await irc.get("PRIVMSG")).params == ("#lobby", "\x01ACTION acts in text\x01")
    await json.send({"type": "me", "room": "#lobby", "text": "acts in json"})
    await text.expect(r"^\[#lobby\] \* jay acts in json$")
    action = await irc.get("PRIVMSG")
    assert action.nick == "jay"
    assert action.params == ("#lobby", "\x01ACTION acts in json\x01")
    await irc.send("PRIVMSG #lobby :\x01ACTION acts in irc\x01")
    await text.expect(r"^\[#lobby\] \* ivy acts in irc$")
    await json.expect("action", room="#lobby", nick="ivy", text="acts in irc")


async def test_private_messages_cross_every_way(trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    await text.send("/msg jay text to json")
    await json.expect("private", nick="tom", text="text to json")
    await text.send("/msg ivy text to irc")
    assert (await irc.get("PRIVMSG")).raw == ":tom!tom@chat PRIVMSG ivy :text to irc"
    await json.send({"type": "msg", "nick": "tom", "text": "json to text"})
    await text.expect(r"^\[private\] <jay> json to text$")
    await json.send({"type": "msg", "nick": "ivy", "text": "json to irc"})
    assert (await irc.get("PRIVMSG")).raw == ":jay!jay@chat PRIVMSG ivy :json to irc"
    await irc.send("PRIVMSG tom :irc to text")
    await text.expect(r"^\[private\] <ivy> irc to text$")
    await irc.send("PRIVMSG jay :irc to json")
    await json.expect("private", nick="ivy", text="irc to json")


async def test_joins_and_parts_cross_every_way(trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    await irc.join("#side")
    await text.send("/join #side")
    await text.expect(r"\*\*\* 2 in #side")
    seen = await irc.get("JOIN", "#side")
    assert seen.source == "tom!tom@chat"
    await json.send({"type": "join", "room": "#side"})
    await json.expect("who", room="#side")
    await text.expect(r"^\[#side\] \*\*\* jay joined #side$")
    assert (await irc.get("JOIN", "#side")).nick == "jay"
    await json.send({"type": "part", "room": "#side", "reason": "json leaves"})
    await text.expect(r"^\[#side\] \*\*\* jay left #side \(json leaves\)$")
    part = await irc.get("PART")
    assert part.nick == "jay"
    assert part.params == ("#side", "json leaves")
    await json.send({"type": "join", "room": "#side"})
    await json.expect("who", room="#side")
    await text.send("/part #side text leaves")
    await json.expect("part", room="#side", nick="tom", text="text leaves")
    part = await irc.get("PART")
    assert part.nick == "tom"
    assert part.params == ("#side", "text leaves")
    await text.send("/join #side")
    await text.expect(r"\*\*\* 3 in #side")
    await irc.send("PART #side :irc leaves")
    await text.expect(r"^\[#side\] \*\*\* ivy left #side \(irc leaves\)$")
    await json.expect("part", room="#side", nick="ivy", text="irc leaves")


async def test_topics_cross_every_way(trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    await text.send("/topic #lobby set in text")
    await json.expect("topic", room="#lobby", nick="tom", text="set in text")
    assert (await irc.get("TOPIC")).raw == ":tom!tom@chat TOPIC #lobby :set in text"
    await json.send({"type": "topic", "room": "#lobby", "text": "set in json"})
    await text.expect(r"^\[#lobby\] \*\*\* jay set the topic: set in json$")
    assert (await irc.get("TOPIC")).params == ("#lobby", "set in json")
    await irc.send("TOPIC #lobby :set in irc")
    await text.expect(r"^\[#lobby\] \*\*\* ivy set the topic: set in irc$")
    await json.expect("topic", room="#lobby", nick="ivy", text="set in irc")


async def test_nick_changes_cross_every_way(trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    await text.send("/nick tommy")
    await json.expect("nick", nick="tom", new_nick="tommy")
    assert (await irc.get("NICK")).raw == ":tom!tom@chat NICK tommy"
    await json.send({"type": "nick", "nick": "jayjay"})
    await text.expect(r"^\*\*\* jay is now known as jayjay$")
    assert (await irc.get("NICK")).raw == ":jay!jay@chat NICK jayjay"
    await irc.send("NICK ivo")
    await text.expect(r"^\*\*\* ivy is now known as ivo$")
    await json.expect("nick", nick="ivy", new_nick="ivo")


async def test_quits_cross_every_way(port: int, trio: Trio) -> None:
    text, json, irc = trio.text, trio.json, trio.irc
    other = await irc_user(port, "oz", rooms=["#lobby"])
    await text.send("/quit text quits")
    await json.expect("quit", nick="tom", text="text quits")
    quit_ = await irc.get("QUIT")
    assert quit_.nick == "tom", quit_.raw
    assert "text quits" in quit_.params[0], quit_.raw
    await json.send({"type": "quit", "reason": "json quits"})
    quit_ = await irc.get("QUIT")
    assert quit_.nick == "jay", quit_.raw
    assert "json quits" in quit_.params[0], quit_.raw
    watcher = await LineClient.connect(port, "wes")
    await irc.get("JOIN", "#lobby")
    await irc.send("QUIT :irc quits")
    await watcher.expect(r"^\*\*\* ivy quit \(irc quits\)$")
    quit_ = (await other.until(r"^:ivy!ivy@chat QUIT "))[-1]
    assert "irc quits" in quit_.params[0], quit_.raw


async def test_names_and_who_list_all_three_dialects(trio: Trio) -> None:
    text, irc = trio.text, trio.irc
    await irc.send("NAMES #lobby")
    names = await irc.get("353")
    assert sorted(names.params[3].split()) == ["ivy", "jay", "tom"], names.raw
    await text.send("/who")
    listed = await text.expect(r"^\[#lobby\] \*\*\* 3 in #lobby: (.*)$")
    assert sorted(listed.group(1).split(", ")) == ["ivy", "jay", "tom"]


# --- limits -------------------------------------------------------------------------------


async def test_flood_control_refuses_irc_lines_with_a_notice(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=1, burst=10)
    text = await LineClient.connect(server.port, "tom")
    irc = await irc_user(server.port, "ivy", rooms=["#lobby"])  # 5 lines of the burst
    lines = "".join(f"PRIVMSG #lobby :line {i}\r\n" for i in range(12))
    await irc.send_raw(lines.encode())
    told = await irc.get("NOTICE")
    assert told.source == SERVER, told.raw
    assert told.params[0] == "ivy", told.raw
    assert "Too fast" in told.params[1], told.raw
    await text.send("the end")
    got = await text.lines_until(r"^\[#lobby\] <tom> the end$")
    said = [line for line in got if "<ivy>" in line]
    assert 1 <= len(said) < 12, got
    assert said == [f"[#lobby] <ivy> line {i}" for i in range(len(said))]


async def test_an_idle_irc_client_is_pinged_and_dropped_without_pong(
    start_server: StartServer,
) -> None:
    server = await start_server(max_per_ip=0, rate=0, ping_interval=0.2, ping_timeout=0.2)
    irc = await irc_user(server.port, "ivy")
    ping = await irc.get("PING")
    assert ping.source is None or ping.source == SERVER, ping.raw
    assert ping.params, ping.raw
    assert ping.params[0], ping.raw
    last = await irc.eof()
    assert commands(last) == ["ERROR"], [m.raw for m in last]
    assert "ping" in last[0].params[0].lower(), last[0].raw


async def test_an_irc_client_answering_pings_stays(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, ping_interval=0.2, ping_timeout=0.2)
    irc = await irc_user(server.port, "ivy")
    for _ in range(3):
        ping = await irc.get("PING")
        await irc.send(f"PONG :{ping.params[0]}")
    assert "ERROR" not in commands(await irc.sync())


# --- more commands: WHOWAS, OPER, WHO, NAMES, MODE, HELP, INFO, LINKS, LIST, PASS ----------

OPER_PASSWORD = "sekret-pass"
UNIX_TIME = re.compile(r"\d{9,11}")


async def irc_user_as(port: int, nick: str, user: str, realname: str) -> IrcClient:
    """A registered IRC client whose ``USER`` line gives ``user`` and ``realname``."""
    client = await IrcClient.connect(port)
    await client.send(f"NICK {nick}")
    await client.send(f"USER {user} 0 * :{realname}")
    await client.until(r"^(@\S+ )?:\S+ (376|422) ")
    client.nick = nick
    return client


def numerics(lines: Iterable[Msg]) -> list[tuple[str, tuple[str, ...]]]:
    """Every numeric among ``lines``, as (numeric, parameters)."""
    return [(m.command, m.params) for m in lines if m.command.isdigit()]


async def test_whowas_after_a_quit_then_406_and_461(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, server_name="irc.example.test")
    alice = await irc_user_as(server.port, "alice", "alfred", "Alice Liddell")
    await alice.join("#room")
    bob = await irc_user(server.port, "bob", rooms=["#room"])
    await alice.send("QUIT :bye")
    await bob.get("QUIT")  # the departure is remembered before the others are told
    await bob.send("WHOWAS ALICE")
    lines = await bob.until(r" 369 ")
    got = numerics(lines)
    assert [code for code, _ in got] == ["314", "312", "369"], [m.raw for m in lines]
    assert got[0][1] == ("bob", "alice", "alfred", "chat", "*", "Alice Liddell")
    assert got[1][1][:3] == ("bob", "alice", "irc.example.test")
    assert got[2][1][:2] == ("bob", "ALICE")
    assert all(m.source == "irc.example.test" for m in lines if m.command.isdigit())
    await bob.send("WHOWAS nobody")
    lines = await bob.until(r" 369 ")
    assert [(code, params[:2]) for code, params in numerics(lines)] == [
        ("406", ("bob", "nobody")),
        ("369", ("bob", "nobody")),
    ], [m.raw for m in lines]
    await bob.send("WHOWAS")
    answer = numerics(await bob.sync())
    assert [(code, params[:2]) for code, params in answer] == [("461", ("bob", "WHOWAS"))]


async def test_oper_whois_who_and_kill(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, admins=("boss",))
    port = server.port
    text = await LineClient.connect(port, "boss")
    await text.send(f"/register {OPER_PASSWORD}")
    await text.expect(r"now yours")
    await text.close()
    chief = await irc_user(port, "chief", rooms=["#ops"])
    victim = await irc_user(port, "victim")
    await victim.send("KILL chief :x")  # not a server operator
    refused = numerics(await victim.sync())
    assert [(code, params[0]) for code, params in refused] == [("481", "victim")], refused
    assert refused[0][1][1].startswith("Permission denied"), refused
    await chief.send("OPER boss wrong")
    assert numerics(await chief.sync()) == [("464", ("chief", "Password incorrect"))]
    await chief.send("OPER nobody x")
    assert numerics(await chief.sync()) == [("491", ("chief", "No O-lines for your host"))]
    await chief.send(f"OPER boss {OPER_PASSWORD}")
    lines = await chief.sync()
    assert [(m.command, m.params) for m in lines] == [
        ("381", ("chief", "You are now an IRC operator")),
        ("MODE", ("chief", "+o")),
    ], [m.raw for m in lines]
    assert lines[1].source == "chief!chief@chat", lines[1].raw
    await victim.send("WHOIS chief")
    whois = await victim.until(r" 318 ")
    assert ("313", ("victim", "chief", "is a server operator")) in numerics(whois)
    await victim.send("WHO chief")
    who = await victim.until(r" 315 ")
    assert numerics(who) == [
        ("352", ("victim", "*", "chief", "chat", SERVER, "chief", "H*", "0 chief in a test")),
        ("315", ("victim", "chief", "End of /WHO list")),
    ], [m.raw for m in who]
    await victim.send("WHO #ops")
    flags = next(m for m in await victim.until(r" 315 ") if m.command == "352").params[6]
    assert flags == "H*@", flags
    await chief.send("KILL victim :x")
    last = await victim.eof()
    assert commands(last)[-1:] == ["ERROR"], [m.raw for m in last]
    assert "Killed by chief" in last[-1].params[0], last[-1].raw


async def test_who_masks_nick_realname_away_invisible_and_whox(port: int) -> None:
    alice = await irc_user_as(port, "alice", "alfred", "Alice Liddell")
    alan = await irc_user(port, "alan")
    bob = await irc_user(port, "bob")
    await alice.send("WHO AL*")
    lines = await alice.until(r" 315 ")
    assert sorted(p[5] for code, p in numerics(lines) if code == "352") == ["alan", "alice"]
    assert lines[-1].params[:2] == ("alice", "AL*")
    await bob.send("WHO alice")
    lines = await bob.until(r" 315 ")
    assert numerics(lines)[0] == (
        "352",
        ("bob", "*", "alfred", "chat", SERVER, "alice", "H", "0 Alice Liddell"),
    ), [m.raw for m in lines]
    await alice.send("AWAY :busy")
    await alice.get("306")
    await bob.send("WHO alice")
    assert numerics(await bob.until(r" 315 "))[0][1][6] == "G"
    # +i: hidden from a mask to someone sharing no channel, not from the exact nick
    await alan.send("MODE alan +i")
    changed = await alan.get("MODE")
    assert changed.params == ("alan", "+i"), changed.raw
    await bob.send("WHO al?n")
    assert numerics(await bob.until(r" 315 ")) == [("315", ("bob", "al?n", "End of /WHO list"))]
    await bob.send("WHO alan")
    assert [code for code, _ in numerics(await bob.until(r" 315 "))] == ["352", "315"]
    await alan.join("#common")
    await bob.join("#common")
    await bob.send("WHO al?n")
    assert [(c, p[5] if c == "352" else p[1]) for c, p in numerics(await bob.until(r" 315 "))] == [
        ("352", "alan"),
        ("315", "al?n"),
    ]
    # WHOX: the fields in the order tcuihsnfdlaor, with the token first
    await registered_text_user(port, "carol")
    carol = await IrcClient.connect(port)
    await carol.send(f"PASS {PASSWORD}")
    await carol.send("NICK carol")
    await carol.send("USER cuser 0 * :Carol Lewis")
    await carol.get("376")
    await carol.send("JOIN #common")
    await carol.get("366")
    await bob.send("WHO #common %tcuhnfar,42")
    lines = await bob.until(r" 315 ")
    rows = sorted((p for code, p in numerics(lines) if code == "354"), key=lambda p: p[5])
    assert rows == [
        ("bob", "42", "#common", "alan", "chat", "alan", "H@", "0", "alan in a test"),
        ("bob", "42", "#common", "bob", "chat", "bob", "H", "0", "bob in a test"),
        ("bob", "42", "#common", "cuser", "chat", "carol", "H", "carol", "Carol Lewis"),
    ], [m.raw for m in lines]
    assert lines[-1].params[:2] == ("bob", "#common")


async def test_names_with_and_without_userhost_in_names(port: int) -> None:
    full = await irc_user(port, "bartholomew1", caps=["userhost-in-names"], rooms=["#room"])
    plain = await irc_user(port, "bob", rooms=["#room"])
    await full.get("JOIN", "#room")  # bob
    await full.send("NAMES #room")
    names = await full.get("353")
    assert names.params[:3] == ("bartholomew1", "=", "#room"), names.raw
    assert sorted(names.params[3].split()) == ["@bartholomew1!bartholome@chat", "bob!bob@chat"]
    await plain.send("NAMES #room")
    names = await plain.get("353")
    assert sorted(names.params[3].split()) == ["@bartholomew1", "bob"], names.raw


async def test_topic_on_join_gives_332_and_333_and_mode_gives_324_and_329(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    await alice.send("TOPIC #room :what we talk about")
    await alice.get("TOPIC")
    bob = await IrcClient.connect(port)
    await bob.register("bob")
    got = [(c, p) for c, p in numerics(await bob.join("#room")) if c in ("332", "333")]
    assert [c for c, _ in got] == ["332", "333"], got
    assert got[0][1] == ("bob", "#room", "what we talk about")
    assert got[1][1][:3] == ("bob", "#room", "alice")
    assert UNIX_TIME.fullmatch(got[1][1][3]), got
    await bob.send("MODE #room")
    lines = await bob.until(r" 329 ")
    got = [(c, p) for c, p in numerics(lines) if c in ("324", "329")]
    assert [c for c, _ in got] == ["324", "329"], [m.raw for m in lines]
    assert got[0][1][:2] == ("bob", "#room")
    assert got[0][1][2].startswith("+"), got
    assert "n" in got[0][1][2], got
    assert got[1][1][:2] == ("bob", "#room")
    assert UNIX_TIME.fullmatch(got[1][1][2]), got
    await alice.send("MODE #room -n")
    refused = numerics(await alice.sync())
    assert [(c, p[:2]) for c, p in refused] == [("472", ("alice", "n"))], refused


async def test_ban_mask_listed_enforced_and_lifted(port: int) -> None:
    alice = await irc_user(port, "alice", rooms=["#room"])
    bob = await irc_user(port, "bob")
    await alice.send("MODE #room +b bob!*@*")
    banned = await alice.get("MODE")
    assert banned.params == ("#room", "+b", "bob!*@*"), banned.raw
    await alice.send("MODE #room +b")
    lines = await alice.until(r" 368 ")
    got = numerics(lines)
    assert [(c, p[:4]) for c, p in got] == [
        ("367", ("alice", "#room", "bob!*@*", "alice")),
        ("368", ("alice", "#room", "End of channel ban list")),
    ], [m.raw for m in lines]
    assert UNIX_TIME.fullmatch(got[0][1][4]), got
    await bob.send("JOIN #room")
    refused = await bob.get("474")
    assert refused.params[:2] == ("bob", "#room"), refused.raw
    await alice.send("MODE #room -b bob!*@*")
    lifted = await alice.get("MODE")
    assert lifted.params == ("#room", "-b", "bob!*@*"), lifted.raw
    joined = await bob.join("#room")
    assert (joined[0].command, joined[0].params) == ("JOIN", ("#room",)), joined[0].raw


async def test_help_with_and_without_a_subject(port: int) -> None:
    alice = await irc_user(port, "alice")
    await alice.send("HELP PRIVMSG")
    assert numerics(await alice.until(r" 706 ")) == [
        ("704", ("alice", "PRIVMSG", "PRIVMSG <target>[,<target>] :<text>")),
        ("705", ("alice", "PRIVMSG", "Say something in a channel, or to a nickname.")),
        ("706", ("alice", "PRIVMSG", "End of /HELP")),
    ]
    await alice.send("HELP nosuchthing")
    answer = numerics(await alice.sync())
    assert [(c, p[:2]) for c, p in answer] == [("524", ("alice", "nosuchthing"))], answer
    await alice.send("HELP")
    got = numerics(await alice.until(r" 706 "))
    assert got[0][0] == "704", got
    assert got[-1] == ("706", ("alice", "*", "End of /HELP")), got
    assert got[0][1][:2] == ("alice", "*")
    middle = [p for c, p in got[1:-1]]
    assert middle, got
    assert all(c == "705" for c, _ in got[1:-1]), got
    assert all(p[:2] == ("alice", "*") for p in middle)
    listed = " ".join(p[2] for p in middle)
    for command in ("/join", "/part", "/msg", "/register"):
        assert command in listed, listed


async def test_info_and_links(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, server_name="irc.example.test")
    alice = await irc_user(server.port, "alice")
    await alice.send("INFO")
    got = numerics(await alice.until(r" 374 "))
    assert len(got) > 1, got
    assert [c for c, _ in got[:-1]] == ["371"] * (len(got) - 1), got
    assert all(len(p) == 2 for _, p in got), got
    assert all(p[0] == "alice" for _, p in got), got
    assert got[-1] == ("374", ("alice", "End of INFO list"))
    await alice.send("LINKS")
    lines = await alice.until(r" 365 ")
    got = numerics(lines)
    assert [(c, p[:3]) for c, p in got] == [
        ("364", ("alice", "irc.example.test", "irc.example.test")),
        ("365", ("alice", "*", "End of /LINKS list")),
    ], [m.raw for m in lines]
    assert got[0][1][3].startswith("0 "), got  # hopcount 0, then the description


async def test_list_skips_empty_rooms_and_filters_by_mask(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0)
    port = server.port
    alice = await irc_user(port, "alice", rooms=["#alpha", "#beta"])
    await alice.send("TOPIC #alpha :first letter")
    await alice.get("TOPIC")
    bob = await irc_user(port, "bob", rooms=["#apple"])
    lobby = server.hub.find_room("#lobby")  # kept while empty: no IRC client is put in it
    assert lobby is not None
    assert not lobby.population
    await bob.send("LIST")
    got = numerics(await bob.until(r" 323 "))
    assert got[0] == ("321", ("bob", "Channel", "Users  Name"))
    assert got[-1] == ("323", ("bob", "End of /LIST"))
    assert sorted(p for c, p in got if c == "322") == [
        ("bob", "#alpha", "1", "first letter"),
        ("bob", "#apple", "1", ""),
        ("bob", "#beta", "1", ""),
    ], got
    await bob.send("LIST #A*")
    got = numerics(await bob.until(r" 323 "))
    assert sorted(p for c, p in got if c == "322") == [
        ("bob", "#alpha", "1", "first letter"),
        ("bob", "#apple", "1", ""),
    ], got
    await bob.send("LIST #beta,#none*")
    got = numerics(await bob.until(r" 323 "))
    assert [p for c, p in got if c == "322"] == [("bob", "#beta", "1", "")], got


async def test_pass_is_ignored_without_an_account_and_refused_when_wrong(port: int) -> None:
    guest = await IrcClient.connect(port)
    await guest.send("PASS meant-for-a-bouncer")
    await guest.send("NICK guest")
    await guest.send("USER guest 0 * :Guest")
    welcome = await guest.get("001")
    assert welcome.params[0] == "guest", welcome.raw
    await registered_text_user(port, "alice")
    client = await IrcClient.connect(port)
    await client.send("PASS not-the-password")
    await client.send("NICK alice")
    await client.send("USER alice 0 * :Alice")
    answer = await client.sync()
    assert [(m.command, m.params) for m in answer] == [
        ("464", ("*", "Wrong password for alice."))
    ], [m.raw for m in answer]
    await client.send(f"PASS {PASSWORD}")  # the nickname may be tried again
    await client.send("NICK alice")
    assert (await client.get("001")).params[0] == "alice"


async def test_away_notify_tells_who_shares_a_room(port: int) -> None:
    watcher = await irc_user(port, "ivy", caps=["away-notify"], rooms=["#room"])
    plain = await irc_user(port, "bob", rooms=["#room"])
    text = await LineClient.connect(port, "tom")
    await text.send("/join #room")
    await text.send("/away at lunch")
    away = await watcher.get("AWAY")
    assert (away.nick, away.params) == ("tom", ("at lunch",))
    await text.send("/away")
    back = await watcher.get("AWAY")
    assert (back.nick, back.params) == ("tom", ())
    assert "AWAY" not in [m.command for m in await plain.sync()]  # not asked for
    await text.send("/away still eating")
    await text.send("/join #later")
    await watcher.send("JOIN #later")
    await watcher.get("366", "ivy", "#later")
    await text.send("/part #later")
    await text.send("/join #later")  # joins while away: the arrival says so
    await watcher.get("JOIN", "#later")
    away = await watcher.get("AWAY")
    assert (away.nick, away.params) == ("tom", ("still eating",))
    await text.close()


async def test_irc_over_tls_on_the_same_port(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = await start_server(tls_cert=str(cert), tls_key=str(key), max_per_ip=0, rate=0)
    context = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(
        "localhost", server.port, ssl=context, server_hostname="localhost"
    )
    writer.write(b"NICK secure\r\nUSER secure 0 * :S\r\n")
    async with asyncio.timeout(WAIT):
        first = await reader.readline()
    assert b" 001 secure " in first  # IRC from the first byte, over TLS too
    writer.close()


async def test_odd_parameters_get_answers_never_a_dropped_connection(port: int) -> None:
    """Found by review: each of these once ended the session with an internal error."""
    irc = await irc_user(port, "ivy", rooms=["#h"])
    await irc.send("CAP REQ")
    assert (await irc.get("410")).params[1] == "REQ"
    for line in ("WHOWAS bob \u00b2", "WHOWAS bob --5", "CHATHISTORY LATEST #h * \u00b3"):
        await irc.send(line)
    assert (await irc.get("369")).params[1] == "bob"
    await irc.send("PING :still here")
    assert (await irc.get("PONG")).params[-1] == "still here"


async def test_a_client_tag_key_cannot_smuggle_a_line(port: int) -> None:
    tagged = await irc_user(port, "ivy", caps=["message-tags"], rooms=["#h"])
    sender = await irc_user(port, "amy", caps=["message-tags"], rooms=["#h"])
    await sender.send("@+x\r@account=root;+ok=1 PRIVMSG #h :hi")
    got = await tagged.get("PRIVMSG", "#h")
    assert got.tags.get("+ok") == "1"
    assert not any("\r" in key or key == "account" for key in got.tags), got.raw


async def test_one_mode_line_makes_at_most_four_changes(port: int) -> None:
    op = await irc_user(port, "ivy", rooms=["#h"])
    await op.send("MODE #h " + "+i-i" * 30)
    changes = [m for m in await op.sync() if m.command == "MODE"]
    assert [m.params[1] for m in changes] == ["+i", "-i", "+i", "-i"]


async def test_history_in_a_labeled_join_is_in_one_batch_each(port: int) -> None:
    said = await irc_user(port, "amy", rooms=["#h"])
    await said.send("PRIVMSG #h :old line")
    await said.sync()
    irc = await irc_user(port, "ivy", caps=["batch", "labeled-response", "server-time"])
    await irc.send("@label=L1 JOIN #h")
    history = await irc.get("PRIVMSG", "#h")
    assert history.params[-1] == "old line"
    tags = history.raw.partition(" ")[0].lstrip("@").split(";")
    assert [t for t in tags if t.startswith("batch=")] == ["batch=h1"], history.raw


async def test_chathistory_before_a_timestamp(port: int) -> None:
    said = await irc_user(port, "amy", rooms=["#h"])
    for n in range(3):
        await said.send(f"PRIVMSG #h :line {n}")
    await said.sync()
    irc = await irc_user(port, "ivy", caps=["batch"], rooms=["#h"])
    await irc.sync()  # past the history replayed on join

    def stamp(offset: float) -> str:  # an IRCv3 timestamp, in UTC, ``offset`` s from now
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + offset))

    await irc.send(f"CHATHISTORY BEFORE #h timestamp={stamp(3600)} 10")
    lines = [m.params[-1] for m in await irc.sync() if m.command == "PRIVMSG"]
    assert lines == ["line 0", "line 1", "line 2"]
    await irc.send(f"CHATHISTORY BEFORE #h timestamp={stamp(-3600)} 10")
    assert "PRIVMSG" not in [m.command for m in await irc.sync()]  # all said since
