"""Accounts and moderation over real sockets: passwords, room operators, server operators,
away, whois, ignore and /history, in both dialects.

Each behaviour that both dialects share runs once per dialect (the ``dialect`` fixture): a
:class:`Person` sends commands by name and waits for events by kind, checking the JSON
object's fields in JSON and the line's words in text. Errors are checked by their code in
JSON and by their wording in text (the text dialect does not show codes).

Nothing here sleeps to synchronise: every wait is for a line or an event. To prove that
something did *not* arrive, a later marker is sent that the observer does receive, and
everything it received up to the marker is checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest

from chat.server import ChatServer
from chat.session import TELNET_DO_ECHO, TELNET_WILL_ECHO, TELNET_WONT_ECHO
from tests.harness import (
    GREETING,
    JSON,
    PROMPT,
    WAIT,
    Dialect,
    JsonClient,
    LineClient,
    StartServer,
    text_command,
)

PASSWORD = "correct horse battery"  # several words: a last password takes the rest of the line
OTHER_PASSWORD = "tr0ub4dor&3x"
WRONG_PASSWORD = "not-the-password"

# What each error says, for the text dialect (which shows no code): searched in its line.
ERROR_TEXT = {
    "nick_registered": r"is registered",
    "nick_taken": r"already in use",
    "wrong_password": r"Wrong password for ",
    "password_invalid": r"A password is 8 to 128 characters",
    "login_throttled": r"Too many failed logins from this address",
    "no_such_account": r"No account is called ",
    "not_operator": r"not an operator of|Only operators of|Only server operators|you cannot kick",
    "not_in_room": r"is not in #|You are not in #",
    "banned": r"You are banned from",
    "muted": r"You are muted in #",
    "moderated": r"is moderated",
    "invite_only": r"is invite-only",
    "not_logged_in": r"Log in first",
    "not_claimed": r"is not claimed",
    "bad_arguments": r"Ask for 1 to 500 lines|Usage: /history|You cannot ignore yourself",
    "no_such_nick": r"Nobody called 'bob' is online|Nobody called 'nobody' is online|You do not",
    "no_such_ban": r"No server-wide ban on bob",
}


async def serve(start_server: StartServer, **overrides: Any) -> ChatServer:
    """A server without the per-address limit (every client is 127.0.0.1) nor flood control
    (some tests send many commands in a row)."""
    return await start_server(max_per_ip=0, rate=0, **overrides)


class Person:
    """One connection in one dialect, for a test written once for both."""

    def __init__(self, client: LineClient | JsonClient, nick: str) -> None:
        self.client = client
        self.nick = nick

    @property
    def json(self) -> bool:
        return isinstance(self.client, JsonClient)

    @property
    def transcript(self) -> list[str]:
        """Every line received so far (JSON lines as they came)."""
        if isinstance(self.client, JsonClient):
            return [raw.decode() for raw in self.client.raw_lines]
        return list(self.client.seen)

    async def cmd(self, name: str, **args: Any) -> None:
        """Send command ``name``: typed as ``/name values...`` or as a JSON object."""
        if isinstance(self.client, JsonClient):
            await self.client.send({"type": name, **args})
        else:
            await self.client.send(text_command(name, **args))

    async def see(self, kind: str, pattern: str, /, **fields: Any) -> list[str]:
        """Wait for an event of ``kind`` with ``fields`` (JSON), or a line in which ``pattern``
        (a regex) is found (text); return what arrived up to and including it."""
        start = len(self.transcript)
        if isinstance(self.client, JsonClient):
            await self.client.objects_until(
                lambda obj: obj["type"] == kind and all(obj.get(k) == v for k, v in fields.items())
            )
        else:
            await self.client.expect(pattern)
        return self.transcript[start:]

    async def last(self) -> dict[str, Any]:
        """The JSON object received last."""
        assert isinstance(self.client, JsonClient)
        return self.client.objects[-1]

    async def error(self, code: str, command: str | None = None) -> str:
        """The next error this connection receives is ``code``; return its text."""
        if isinstance(self.client, JsonClient):
            await self.client.objects_until(lambda obj: obj["type"] == "error")
            obj = self.client.objects[-1]
            assert obj["code"] == code, obj
            if command is not None:
                assert obj["command"] == command, obj
            text: str = obj["text"]
        else:
            # (after a password prompt, the line starts with the telnet "will echo" bytes)
            found = await self.client.expect(r"^(?:\ufffd\ufffd\x01)?!!! (.*)$")
            text = found.group(1)
        assert re.search(ERROR_TEXT[code], text), (code, text)
        return text

    async def bye(self, code: str, text: str) -> None:
        """The server says goodbye (``code``, ``text`` a regex) and closes the connection."""
        if isinstance(self.client, JsonClient):
            await self.client.objects_until(lambda obj: obj["type"] == "bye")
            obj = self.client.objects[-1]
            assert obj["code"] == code, obj
            assert re.search(text, obj["text"]), obj
        else:
            line = await self.client.expect(r"^\*\*\* Closing connection: ")
            assert re.search(text, line.string), line.string
        await self.client.eof()

    async def register(self, password: str = PASSWORD) -> None:
        """``/register``: this nickname becomes an account."""
        await self.cmd("register", password=password)
        await self.see("account", rf"The nickname {self.nick} is now yours", account=self.nick)

    async def join(self, room: str) -> None:
        await self.cmd("join", room=room)
        await self.see("who", rf"^\[{room}\] \*\*\* \d+ in {room}", room=room)

    async def say(self, room: str, text: str) -> None:
        """Say ``text`` in ``room`` and wait for it to come back."""
        await self.cmd("say", room=room, text=text)
        await self.heard(room, self.nick, text)

    async def heard(self, room: str, nick: str, text: str) -> list[str]:
        """Wait until ``nick`` is heard saying ``text`` in ``room``."""
        line = rf"^\[{re.escape(room)}\] <{nick}> {re.escape(text)}$"
        return await self.see("message", line, room=room, nick=nick, text=text)

    async def sync(self, token: str) -> list[str]:
        """Everything received until the answer to a ping: whatever the hub had sent this
        connection before it read the ping has arrived."""
        await self.cmd("ping", token=token)
        return await self.see("pong", rf"^\*\*\* pong {token}$", text=token)

    async def close(self) -> None:
        await self.client.close()


async def enter(dialect: Dialect, port: int, nick: str, password: str | None = None) -> Person:
    """A connection registered as ``nick`` (logged in with ``password`` if given), past the
    lobby's member list."""
    if dialect is JSON:
        if password is None:
            return Person(await JsonClient.connect(port, nick), nick)
        client = await JsonClient.connect(port)
        await client.send({"type": "hello", "nick": nick, "password": password})
        welcome = await client.expect("welcome")
        assert welcome.account == nick, welcome  # type: ignore[attr-defined]
        await client.expect("who", room="#lobby")
        return Person(client, nick)
    if password is None:
        return Person(await LineClient.connect(port, nick), nick)
    text = await LineClient.connect(port)
    await text.expect(re.escape(PROMPT))
    await text.send(nick)
    await text.expect(rf"{nick} is registered: type its password")
    await text.send(password)
    await text.expect(rf"\*\*\* Welcome back, {nick}: you are logged in")  # after the telnet bytes
    await text.expect(r"\*\*\* \d+ in #lobby:")
    return Person(text, nick)


async def who(person: Person, room: str, members: list[str], operators: list[str]) -> None:
    """``/who room``: exactly these members, these of them operators (``@nick`` in text)."""
    await person.cmd("who", room=room)
    if person.json:
        await person.see("who", "", room=room)
        obj = await person.last()
        assert obj["members"] == members, obj
        assert obj["operators"] == operators, obj
    else:
        shown = ", ".join(("@" if m in operators else "") + m for m in members)
        line = f"[{room}] *** {len(members)} in {room}: {shown}"
        await person.see("who", "^" + re.escape(line) + "$")


# --- accounts -------------------------------------------------------------------------------


async def test_text_password_prompt_with_telnet_echo(start_server: StartServer) -> None:
    server = await serve(start_server)
    alice = await enter(JSON, server.port, "alice")
    await alice.register()
    await alice.cmd("quit")
    await alice.client.eof()

    text = await LineClient.connect(server.port)
    reader = text.reader
    await text.next_is(*GREETING)
    await text.send("alice")
    asked = await reader.readuntil(TELNET_WILL_ECHO)
    # The prompt, then "will echo" right after its line ending (and nothing else first).
    assert b"alice is registered: type its password" in asked, asked
    assert asked.endswith(b"\r\n" + TELNET_WILL_ECHO), asked
    assert b"!!!" not in asked, asked

    # A wrong password: refused, asked again; no "won't echo" for a client that never
    # answered "do echo".
    await text.send(WRONG_PASSWORD)
    again = await reader.readuntil(TELNET_WILL_ECHO)
    assert b"!!! Wrong password for alice." in again, again
    assert again.index(b"!!! Wrong password") < again.index(b"alice is registered"), again
    assert TELNET_WONT_ECHO not in again, again

    # An empty line goes back to the nickname prompt.
    await text.send("")
    assert await text.line() == PROMPT
    await text.send("alice")
    asked = await reader.readuntil(TELNET_WILL_ECHO)
    assert b"alice is registered: type its password" in asked, asked

    # A telnet client agrees (do echo); after the password it gets its echo back and the
    # line ending it did not echo, then the welcome with the account.
    await text.send_raw(TELNET_DO_ECHO)
    await text.send(PASSWORD)
    async with asyncio.timeout(WAIT):
        after = await reader.readexactly(len(TELNET_WONT_ECHO) + 2)
    assert after == TELNET_WONT_ECHO + b"\r\n"
    assert (await text.line()).startswith("*** Welcome back, alice: you are logged in.")
    await text.expect(r"^\[#lobby\] \*\*\* 1 in #lobby: alice$")
    await text.close()


async def test_json_hello_with_password_and_login_before_registration(
    start_server: StartServer,
) -> None:
    server = await serve(start_server)
    alice = await enter(JSON, server.port, "alice")
    await alice.register()
    obj = await alice.last()
    assert obj["nick"] == "alice", obj
    assert PASSWORD not in json.dumps(obj), obj
    await alice.cmd("quit")
    await alice.client.eof()

    client = await JsonClient.connect(server.port)
    who_tries = Person(client, "alice")
    await client.send({"type": "hello", "nick": "alice"})
    await who_tries.error("nick_registered")
    await client.send({"type": "hello", "nick": "alice", "password": WRONG_PASSWORD})
    await who_tries.error("wrong_password")
    await client.send({"type": "hello", "nick": "nosuchone", "password": PASSWORD})
    await who_tries.error("no_such_account")
    await client.send({"type": "login", "nick": "alice", "password": PASSWORD})
    welcome = await client.expect("welcome")
    assert welcome.nick == "alice", welcome
    assert welcome.account == "alice", welcome  # type: ignore[attr-defined]
    await client.close()

    # And straight in the hello.
    again = await enter(JSON, server.port, "alice", PASSWORD)
    await again.close()


async def test_login_after_registering_as_guest_renames(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    await alice.cmd("quit")
    await alice.client.eof()

    watcher = await enter(dialect, server.port, "watcher")
    guest = await enter(dialect, server.port, "guest")
    await watcher.see("join", r"\*\*\* guest joined #lobby", nick="guest")
    await guest.cmd("login", nick="alice", password=WRONG_PASSWORD)
    await guest.error("wrong_password", "login")
    await guest.cmd("login", nick="alice", password=PASSWORD)
    await guest.see("nick", r"^\*\*\* guest is now known as alice$", nick="guest")
    await guest.see("account", r"^\*\*\* You are logged in as alice\.$", account="alice")
    await watcher.see("nick", r"^\*\*\* guest is now known as alice$", new_nick="alice")
    await watcher.sync("done")
    for line in watcher.transcript:
        assert PASSWORD not in line, line
        assert WRONG_PASSWORD not in line, line


async def test_registered_nick_is_refused_to_others(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    await alice.cmd("quit")
    await alice.client.eof()
    bob = await enter(dialect, server.port, "bob")
    await bob.cmd("nick", nick="alice")
    await bob.error("nick_registered", "nick")
    await bob.cmd("nick", nick="ALICE")  # the same name, however it is written
    await bob.error("nick_registered", "nick")


async def test_password_change(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register(OTHER_PASSWORD)
    await alice.cmd("password", old=WRONG_PASSWORD, new=PASSWORD)
    await alice.error("wrong_password", "password")
    await alice.cmd("password", old=OTHER_PASSWORD, new="short")
    await alice.error("password_invalid", "password")
    await alice.cmd("password", old=OTHER_PASSWORD, new=PASSWORD)
    await alice.see(
        "notice", r"^\*\*\* Your password is changed\.$", text="Your password is changed."
    )
    await alice.cmd("quit")
    await alice.client.eof()

    bob = await enter(dialect, server.port, "bob")
    await bob.cmd("login", nick="alice", password=OTHER_PASSWORD)  # the old one
    await bob.error("wrong_password", "login")
    await bob.cmd("login", nick="alice", password=PASSWORD)
    await bob.see("account", r"You are logged in as alice", account="alice")


async def test_unregister_frees_the_nickname(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    await alice.cmd("unregister", password=WRONG_PASSWORD)
    await alice.error("wrong_password", "unregister")
    await alice.cmd("unregister", password=PASSWORD)
    await alice.see("account", r"The account alice is deleted", account=None)
    await alice.cmd("quit")
    await alice.client.eof()
    # Anyone may be alice now, without a password.
    again = await enter(dialect, server.port, "alice")
    await again.cmd("login", nick="alice", password=PASSWORD)
    await again.error("no_such_account", "login")


async def test_wrong_passwords_share_the_budget_of_refused_nicknames(
    start_server: StartServer,
) -> None:
    server = await serve(start_server, login_failures=100, account_failures=100)
    alice = await enter(JSON, server.port, "alice")
    await alice.register()
    text = await LineClient.connect(server.port)
    reader = text.reader
    await text.next_is(*GREETING)
    for _ in range(4):  # four refused nicknames...
        await text.send("root")
        await text.next_is("!!! The nickname 'root' is reserved.", PROMPT)
    await text.send("alice")
    await reader.readuntil(TELNET_WILL_ECHO)
    for _ in range(5):  # ...and five wrong passwords, each asked again...
        await text.send(WRONG_PASSWORD)
        again = await reader.readuntil(TELNET_WILL_ECHO)
        assert b"!!! Wrong password for alice." in again, again
    await text.send(WRONG_PASSWORD)  # ...and the tenth refusal closes the connection
    await text.expect(r"^!!! Wrong password for alice\.$")
    await text.next_is("*** Closing connection: 10 nicknames refused; try again later.")
    assert await text.eof() == []


async def test_no_password_or_hash_reaches_the_log(
    start_server: StartServer, dialect: Dialect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register(OTHER_PASSWORD)
    await alice.cmd("password", old=WRONG_PASSWORD, new=PASSWORD)
    await alice.error("wrong_password", "password")
    await alice.cmd("password", old=OTHER_PASSWORD, new=PASSWORD)
    await alice.see("notice", r"Your password is changed", text="Your password is changed.")
    again = await enter(dialect, server.port, "alice", PASSWORD)  # ghosts the first
    guest = await enter(dialect, server.port, "guest")
    await guest.cmd("login", nick="alice", password=WRONG_PASSWORD)
    await guest.error("wrong_password", "login")
    await again.cmd("unregister", password=PASSWORD)
    await again.see("account", r"The account alice is deleted", account=None)

    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert any("login failed account=alice" in line for line in logged), logged  # it logs
    for line in logged:
        for secret in (PASSWORD, OTHER_PASSWORD, WRONG_PASSWORD, "$argon2"):
            assert secret not in line, line


async def test_password_too_short(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.cmd("register", password="seven77")
    await alice.error("password_invalid", "register")
    await alice.cmd("register", password="x" * 129)
    await alice.error("password_invalid", "register")
    await alice.register("eight888")  # the shortest that will do


async def test_failed_logins_are_throttled_per_address(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server, login_failures=2)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    bob = await enter(dialect, server.port, "bob")
    for _ in range(2):
        await bob.cmd("login", nick="alice", password=WRONG_PASSWORD)
        await bob.error("wrong_password", "login")
    await bob.cmd("login", nick="alice", password=PASSWORD)  # even the right one, now
    await bob.error("login_throttled", "login")
    # The address is throttled, whichever connection it comes from.
    carol = await enter(dialect, server.port, "carol")
    await carol.cmd("login", nick="alice", password=PASSWORD)
    await carol.error("login_throttled", "login")


async def test_registration_race_has_one_winner(start_server: StartServer) -> None:
    server = await serve(start_server)
    clients = [await JsonClient.connect(server.port) for _ in range(2)]
    await asyncio.gather(*(c.send({"type": "hello", "nick": "alice"}) for c in clients))
    answers = [
        (await c.objects_until(lambda o: o["type"] in ("welcome", "error")))[-1] for c in clients
    ]
    kinds = sorted(obj["type"] for obj in answers)
    assert kinds == ["error", "welcome"], answers
    loser_answer = next(obj for obj in answers if obj["type"] == "error")
    assert loser_answer["code"] == "nick_taken", loser_answer
    winner = Person(clients[[o["type"] for o in answers].index("welcome")], "alice")
    loser = Person(clients[[o["type"] for o in answers].index("error")], "alice")
    await winner.register()
    # The loser cannot have it now even when it is free: it is an account.
    await clients[[o["type"] for o in answers].index("error")].send(
        {"type": "hello", "nick": "alice"}
    )
    await loser.error("nick_registered")


async def test_logging_in_again_ghosts_the_old_connection(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    old = await enter(dialect, server.port, "alice")
    await old.register()
    watcher = await enter(dialect, server.port, "watcher")
    new = await enter(dialect, server.port, "alice", PASSWORD)
    await old.bye("ghosted", "You logged in from another connection")
    await watcher.see("quit", r"^\*\*\* alice quit \(Logged in from another connection\)$")
    await new.cmd("whois", nick="alice")
    await new.see("whois", r"^\*\*\* alice is logged in as alice$", account="alice")
    await watcher.sync("end")
    for line in watcher.transcript:
        assert PASSWORD not in line, line


# --- room operators -------------------------------------------------------------------------


async def test_first_joiner_operates_and_others_do_not(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    for person in (alice, bob, carol):
        await person.join("#r")
    await who(bob, "#r", ["alice", "bob", "carol"], ["alice"])

    refused: list[tuple[str, dict[str, Any]]] = [
        ("op", {"nick": "carol"}),
        ("deop", {"nick": "alice"}),
        ("voice", {"nick": "carol"}),
        ("kick", {"nick": "carol"}),
        ("ban", {"mask": "carol"}),
        ("unban", {"mask": "carol"}),
        ("bans", {}),
        ("mute", {"nick": "carol"}),
        ("unmute", {"nick": "carol"}),
        ("mode", {"change": "+m"}),
        ("invite", {"nick": "carol"}),
    ]
    for name, args in refused:
        await bob.cmd(name, **args)
        await bob.error("not_operator", name)
    # Nothing changed: the modes are still none.
    await bob.cmd("mode")
    await bob.see("modes", r"^\[#r\] \*\*\* #r: no modes, not claimed$", modes="", owner=None)

    await alice.cmd("op", nick="bob")
    line = r"^\[#r\] \*\*\* alice made bob an operator of #r$"
    for person in (alice, bob, carol):
        await person.see("mode", line, room="#r", nick="alice", change="+o", target="bob")
    await who(carol, "#r", ["alice", "bob", "carol"], ["alice", "bob"])
    await bob.cmd("mode", change="+m")  # an operator now
    await carol.see("mode", r"bob moderated #r", change="+m", nick="bob")
    await alice.cmd("deop", nick="bob")
    await bob.see("mode", r"took operator status in #r from bob", change="-o", target="bob")
    await bob.cmd("mode", change="-m")
    await bob.error("not_operator", "mode")


async def test_kick(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    dave = await enter(dialect, server.port, "dave")
    for person in (alice, bob, carol):
        await person.join("#r")
    await alice.cmd("kick", nick="dave")  # in the lobby, not in #r
    await alice.error("not_in_room", "kick")

    await alice.cmd("kick", nick="bob", reason="spam")
    line = r"^\[#r\] \*\*\* alice removed bob from #r \(spam\)$"
    for person in (alice, bob, carol):
        await person.see("kick", line, room="#r", nick="alice", target="bob", text="spam")
    await alice.say("#r", "after the kick")
    await carol.heard("#r", "alice", "after the kick")
    seen = await bob.sync("kicked")
    assert not any("after the kick" in line for line in seen), seen
    await who(carol, "#r", ["alice", "carol"], ["alice"])
    # bob is no longer there: saying something in #r is refused.
    await bob.cmd("say", room="#r", text="hello?")
    await bob.error("not_in_room", "say")
    await dave.close()


async def test_ban_by_account_nickname_and_address(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    await bob.register()
    carol = await enter(dialect, server.port, "carol")
    dave = await enter(dialect, server.port, "dave")
    for person in (alice, bob, carol):
        await person.join("#r")

    # A logged-in user: their account is banned, and they are removed.
    await alice.cmd("ban", mask="bob")
    await carol.see(
        "mode",
        r"^\[#r\] \*\*\* alice banned account:bob from #r$",
        change="+b",
        target="account:bob",
    )
    await bob.see("kick", r"alice removed bob from #r \(banned\)", target="bob", text="banned")
    await bob.cmd("join", room="#r")
    await bob.error("banned", "join")
    await bob.cmd("nick", nick="bobby")  # another name, the same account
    await bob.see("nick", r"bob is now known as bobby", new_nick="bobby")
    await bob.cmd("join", room="#r")
    await bob.error("banned", "join")

    # A guest: their nickname and their address.
    await alice.cmd("ban", mask="carol", reason="trolling")
    await alice.see("mode", r"banned nick:carol from #r \(trolling\)", target="nick:carol")
    await alice.see(
        "mode", r"banned address:127\.0\.0\.1 from #r \(trolling\)", target="address:127.0.0.1"
    )
    await carol.see("kick", r"removed carol from #r \(trolling\)", target="carol")
    await carol.cmd("join", room="#r")
    await carol.error("banned", "join")
    await dave.cmd("join", room="#r")  # another guest from the same address
    await dave.error("banned", "join")

    # /bans lists them all, to operators only.
    await dave.cmd("bans", room="#lobby")
    await dave.error("not_operator", "bans")
    await alice.cmd("bans", room="#r")
    if alice.json:
        await alice.see("bans", "", room="#r")
        masks = sorted(ban["mask"] for ban in (await alice.last())["bans"])
        assert masks == ["account:bob", "address:127.0.0.1", "nick:carol"], masks
    else:
        await alice.see("bans", r"^\[#r\] \*\*\* 3 bans and mutes in #r:$")
        for mask in ("account:bob", "nick:carol", "address:127.0.0.1"):
            await alice.client.expect(rf"^\[#r\] \*\*\*   ban {re.escape(mask)} by alice, ")

    # Lifting the address ban lets dave in; carol stays out by nickname.
    await alice.cmd("unban", mask="address:127.0.0.1")
    await alice.see("mode", r"lifted the ban on address:127\.0\.0\.1 in #r", change="-b")
    await dave.join("#r")
    await carol.cmd("join", room="#r")
    await carol.error("banned", "join")
    await alice.cmd("unban", mask="carol")
    await alice.see("mode", r"lifted the ban on nick:carol in #r", target="nick:carol")
    await carol.join("#r")
    await alice.cmd("unban", mask="bob")
    await alice.see("mode", r"lifted the ban on account:bob in #r", target="account:bob")
    await bob.join("#r")
    await who(alice, "#r", ["alice", "bobby", "carol", "dave"], ["alice"])


async def test_mute_and_unmute(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    for person in (alice, bob, carol):
        await person.join("#r")
    await alice.cmd("mute", nick="bob")
    await carol.see(
        "mode", r"^\[#r\] \*\*\* alice muted nick:bob in #r$", change="+q", target="nick:bob"
    )
    await bob.see("mode", r"alice muted nick:bob in #r", change="+q", target="nick:bob")
    await bob.cmd("say", room="#r", text="can you hear me")
    await bob.error("muted", "say")
    await bob.cmd("me", room="#r", text="waves silently")
    await bob.error("muted", "me")
    await alice.say("#r", "marker one")
    seen = await carol.heard("#r", "alice", "marker one")
    assert not any("can you hear me" in x or "waves silently" in x for x in seen), seen

    await alice.cmd("unmute", nick="bob")
    await carol.see("mode", r"alice unmuted nick:bob in #r", change="-q", target="nick:bob")
    await bob.see("mode", r"alice unmuted nick:bob in #r", change="-q")
    await bob.say("#r", "free again")
    await carol.heard("#r", "bob", "free again")


async def test_moderated_room_and_voice(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    for person in (alice, bob, carol):
        await person.join("#r")
    await alice.cmd("mode", change="+m")
    await bob.see("mode", r"^\[#r\] \*\*\* alice moderated #r: ", change="+m")
    await bob.cmd("say", room="#r", text="not heard")
    await bob.error("moderated", "say")
    await alice.say("#r", "operators speak")  # operators always may
    seen = await carol.heard("#r", "alice", "operators speak")
    assert not any("not heard" in line for line in seen), seen
    await alice.cmd("mode")
    await alice.see("modes", r"^\[#r\] \*\*\* #r: \+m, not claimed$", modes="m")

    await alice.cmd("voice", nick="bob")
    await bob.see("mode", r"alice let bob speak in #r", change="+v", target="bob")
    await bob.say("#r", "voiced now")
    await carol.heard("#r", "bob", "voiced now")
    await carol.cmd("say", room="#r", text="me too")
    await carol.error("moderated", "say")
    await alice.cmd("devoice", nick="bob")
    await bob.see("mode", r"alice took bob's voice in #r", change="-v", target="bob")
    await bob.cmd("say", room="#r", text="and again")
    await bob.error("moderated", "say")
    await alice.cmd("mode", change="-m")
    await carol.see("mode", r"alice unmoderated #r", change="-m")
    await carol.say("#r", "everyone again")
    await bob.heard("#r", "carol", "everyone again")


async def test_invite_only_room(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    dave = await enter(dialect, server.port, "dave")
    await alice.join("#r")
    await bob.join("#r")
    await alice.cmd("mode", change="+i")
    await bob.see("mode", r"^\[#r\] \*\*\* alice made #r invite-only$", change="+i")
    await dave.cmd("join", room="#r")
    await dave.error("invite_only", "join")
    await alice.cmd("invite", nick="dave")
    line = r"^\[#r\] \*\*\* alice invited dave to #r$"
    await dave.see("invite", line, room="#r", nick="alice", target="dave")
    await bob.see("invite", line, room="#r", target="dave")
    await dave.join("#r")
    await who(alice, "#r", ["alice", "bob", "dave"], ["alice"])
    # The invitation was used: after leaving, dave needs another.
    await dave.cmd("part", room="#r")
    await dave.see("part", r"dave left #r", nick="dave")
    await dave.cmd("join", room="#r")
    await dave.error("invite_only", "join")


async def test_topic_lock(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    await alice.join("#r")
    await bob.join("#r")
    await bob.cmd("topic", room="#r", text="anyone may")
    await alice.see("topic", r"bob set the topic: anyone may", nick="bob", text="anyone may")
    await alice.cmd("mode", change="+t")
    await bob.see("mode", r"alice let only operators set the topic of #r", change="+t")
    await bob.cmd("topic", room="#r", text="not any more")
    await bob.error("not_operator", "topic")
    await alice.cmd("topic", room="#r", text="ops only")
    await bob.see("topic", r"^\[#r\] \*\*\* alice set the topic: ops only$", text="ops only")


async def test_claim_and_unclaim(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    bob = await enter(dialect, server.port, "bob")
    await bob.join("#guest")
    await bob.cmd("claim")  # bob operates #guest but has no account
    await bob.error("not_logged_in", "claim")

    await alice.join("#own")
    await bob.join("#own")
    await bob.cmd("claim", room="#own")
    await bob.error("not_operator", "claim")
    await alice.cmd("claim", room="#own")
    await bob.see("mode", r"alice claimed #own for the account alice", change="+r", target="alice")
    await bob.see("mode", r"alice let only operators set the topic of #own", change="+t")
    await bob.cmd("mode", room="#own")
    await bob.see("modes", r"^\[#own\] \*\*\* #own: \+t, claimed by alice$", owner="alice")
    await bob.cmd("topic", room="#own", text="mine")
    await bob.error("not_operator", "topic")

    # The owner is its operator again after leaving, and the room stays while empty.
    await bob.cmd("part", room="#own")
    await bob.see("part", r"bob left #own", nick="bob")
    await alice.cmd("part", room="#own")
    await alice.see("part", r"alice left #own", nick="alice")
    await bob.cmd("rooms", match="own")
    if bob.json:
        await bob.see("rooms", "")
        rooms = (await bob.last())["rooms"]
        assert rooms == [{"room": "#own", "members": 0, "topic": ""}], rooms
    else:
        await bob.client.expect(r"^\*\*\* 1 room:$")
        await bob.client.next_is("***   #own (0 members)")
    await bob.join("#own")  # first in, but not its operator: it has an owner
    await alice.join("#own")
    await who(bob, "#own", ["alice", "bob"], ["alice"])

    # Operators, the owner first, are never kept out, not even by their own address.
    await alice.cmd("ban", room="#own", mask="address:127.0.0.1")
    await bob.see("kick", r"alice removed bob from #own \(banned\)", target="bob")
    await alice.cmd("part", room="#own")
    await alice.see("part", r"alice left #own", nick="alice")
    await alice.join("#own")
    await who(alice, "#own", ["alice"], ["alice"])
    await bob.cmd("join", room="#own")
    await bob.error("banned", "join")

    await bob.cmd("unclaim", room="#guest")
    await bob.error("not_claimed", "unclaim")
    await bob.cmd("unclaim", room="#lobby")
    await bob.error("not_claimed", "unclaim")
    await alice.cmd("unclaim", room="#own")
    await alice.see("mode", r"^\[#own\] \*\*\* alice unclaimed #own$", change="-r", target="alice")
    await alice.cmd("mode", room="#own")
    await alice.see("modes", r"^\[#own\] \*\*\* #own: \+t, not claimed$", owner=None)


# --- server operators -----------------------------------------------------------------------


async def test_server_operator_kills_and_operates_every_room(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server, admins=("boss",))
    boss = await enter(dialect, server.port, "boss")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    # Not an operator until logged in to the account named in --admin (not "root":
    # that nickname is reserved).
    await boss.cmd("kill", nick="bob")
    await boss.error("not_operator", "kill")
    await boss.register()  # the admin flag applies at once

    for name, args in (
        ("kill", {"nick": "carol"}),
        ("gban", {"mask": "carol"}),
        ("ungban", {"mask": "carol"}),
    ):
        await bob.cmd(name, **args)
        await bob.error("not_operator", name)

    # Only a server operator sees an address in /whois.
    await boss.cmd("whois", nick="carol")
    if boss.json:
        await boss.see("whois", "", nick="carol")
        assert (await boss.last())["address"] == "127.0.0.1"
    else:
        await boss.see("whois", r"^\*\*\*   address: 127\.0\.0\.1$")
    await bob.cmd("whois", nick="carol")
    seen = await bob.see("whois", r"^\*\*\* carol is not logged in$", nick="carol", account=None)
    seen += await bob.sync("whois-done")
    assert not any("127.0.0.1" in line for line in seen), seen
    await boss.cmd("whois", nick="boss")
    await boss.see("whois", r"^\*\*\*   boss is a server operator$", operator=True)

    # A server operator operates every room, and cannot be kicked.
    await carol.join("#c")
    await boss.join("#c")
    await who(carol, "#c", ["boss", "carol"], ["boss", "carol"])
    await boss.cmd("mode", room="#c", change="+m")
    await carol.see("mode", r"^\[#c\] \*\*\* boss moderated #c", nick="boss", change="+m")
    await carol.cmd("kick", room="#c", nick="boss")
    await carol.error("not_operator", "kick")

    await boss.cmd("kill", nick="bob", reason="flooding")
    await bob.bye("killed", r"Killed by boss: flooding")
    await carol.see("quit", r"^\*\*\* bob quit \(Killed by boss: flooding\)$", nick="bob")
    await boss.see(
        "notice", r"bob is disconnected", text="bob is disconnected (Killed by boss: flooding)."
    )
    await boss.cmd("kill", nick="bob")
    await boss.error("no_such_nick", "kill")


async def test_server_ban_of_an_account(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server, admins=("boss",))
    boss = await enter(dialect, server.port, "boss")
    await boss.register()
    bob = await enter(dialect, server.port, "bob")
    await bob.register(OTHER_PASSWORD)
    carol = await enter(dialect, server.port, "carol")

    await boss.cmd("gban", mask="bob", reason="abuse")
    await boss.see(
        "notice",
        r"account:bob is banned from the server",
        text="account:bob is banned from the server.",
    )
    await bob.bye("banned", r"Banned from this server by boss: abuse")
    await carol.see("quit", r"^\*\*\* bob quit", nick="bob")

    # The account is refused at login; guests from the same address are not.
    if dialect is JSON:
        client = await JsonClient.connect(server.port)
        again = Person(client, "bob")
        await client.send({"type": "hello", "nick": "bob", "password": OTHER_PASSWORD})
    else:
        text = await LineClient.connect(server.port)
        again = Person(text, "bob")
        await text.expect(re.escape(PROMPT))
        await text.send("bob")
        await text.expect(r"bob is registered: type its password")
        await text.send(OTHER_PASSWORD)
    message = await again.error("banned")
    assert "You are banned from this server: abuse" in message, message
    await carol.cmd("login", nick="bob", password=OTHER_PASSWORD)
    await carol.error("banned", "login")

    await boss.cmd("ungban", mask="bob")
    await boss.see(
        "notice", r"account:bob may connect again", text="account:bob may connect again."
    )
    await boss.cmd("ungban", mask="bob")
    await boss.error("no_such_ban", "ungban")
    back = await enter(dialect, server.port, "bob", OTHER_PASSWORD)
    await back.close()


async def test_server_ban_of_an_address(start_server: StartServer, dialect: Dialect) -> None:
    # Every test client is 127.0.0.1: this bans them all but the server operator.
    server = await serve(start_server, admins=("boss",))
    boss = await enter(dialect, server.port, "boss")
    await boss.register()
    bob = await enter(dialect, server.port, "bob")

    await boss.cmd("gban", mask="127.0.0.1")
    await boss.see(
        "notice",
        r"address:127\.0\.0\.1 is banned from the server",
        text="address:127.0.0.1 is banned from the server.",
    )
    await bob.bye("banned", r"Banned from this server by boss")
    await boss.sync("still-here")  # the server operator is not disconnected

    # New connections from the address are refused at once, in their dialect.
    text = await LineClient.connect(server.port)
    lines = await text.eof()
    assert lines == ["*** Closing connection: You are banned from this server."], lines
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = JsonClient(reader, writer)
    await client.send({"type": "hello"})
    events = await client.eof()
    assert [(e.type, e.code) for e in events] == [("bye", "banned")], events  # type: ignore[attr-defined]
    await client.close()

    await boss.cmd("ungban", mask="127.0.0.1")
    await boss.see("notice", r"may connect again", text="address:127.0.0.1 may connect again.")
    welcome = await enter(dialect, server.port, "bob")
    await welcome.close()


# --- people ---------------------------------------------------------------------------------


async def test_away_is_told_once(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    await carol.cmd("away", text="gone fishing")
    away = r"^\*\*\* carol is away: gone fishing$"
    await carol.see("away", away, nick="carol", text="gone fishing")

    def aways() -> int:
        return sum(1 for line in bob.transcript if re.search(r"carol is away|\"away\"", line))

    async def msg(text: str) -> list[str]:
        await bob.cmd("msg", nick="carol", text=text)
        line = rf"^\[private to carol\] <bob> {text}$"
        seen = await bob.see("private", line, text=text, echo=True)
        await carol.see("private", rf"^\[private\] <bob> {text}$", text=text, echo=False)
        return seen

    await msg("first")
    assert aways() == 1, bob.transcript
    await msg("second")
    await bob.sync("one")
    assert aways() == 1, bob.transcript

    await carol.cmd("away")
    await carol.see("away", r"^\*\*\* carol is back$", nick="carol", text="")
    await msg("third")
    await bob.sync("two")
    assert aways() == 1, bob.transcript

    await carol.cmd("away", text="lunch")
    await carol.see("away", r"carol is away: lunch", text="lunch")
    seen = await msg("fourth")  # a new away message is told again (before the echo)
    assert len(seen) == 2, seen
    if bob.json:
        told = json.loads(seen[0])
        assert (told["type"], told["nick"], told["text"]) == ("away", "carol", "lunch"), told
    else:
        assert seen[0] == "*** carol is away: lunch", seen


async def test_whois(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    await alice.register()
    bob = await enter(dialect, server.port, "bob")
    await alice.join("#r")
    await alice.join("#secret")
    await alice.cmd("mode", room="#secret", change="+i")
    await alice.see("mode", r"made #secret invite-only", change="+i")
    await bob.join("#r")
    await alice.cmd("away", text="brb")
    await alice.see("away", r"alice is away: brb", text="brb")

    await bob.cmd("whois", nick="alice")
    if isinstance(bob.client, JsonClient):
        await bob.see("whois", "", nick="alice")
        obj = await bob.last()
        assert obj["account"] == "alice", obj
        assert obj["rooms"] == ["#lobby", "#r"], obj  # not the invite-only room bob is not in
        assert obj["away"] == "brb", obj
        assert obj["operator"] is False, obj
        assert obj["address"] is None, obj
        assert "127.0.0.1" not in json.dumps(obj), obj
    else:
        await bob.client.next_is(
            "*** alice is logged in as alice",
            "***   rooms: #lobby, #r",
        )
        assert re.fullmatch(r"\*\*\*   idle \d+ s, connected since .+ UTC", await bob.client.line())
        await bob.client.next_is("***   away: brb")
        seen = await bob.sync("after-whois")
        assert seen == ["*** pong after-whois"], seen
    await bob.cmd("whois", nick="nobody")
    await bob.error("no_such_nick", "whois")


async def test_ignore(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    bob = await enter(dialect, server.port, "bob")
    carol = await enter(dialect, server.port, "carol")
    await bob.cmd("ignore", nick="alice")
    await bob.see("ignores", r"^\*\*\* You ignore: alice$", nicks=["alice"])

    await alice.say("#lobby", "you cannot hear this")
    await alice.cmd("me", room="#lobby", text="dances unseen")
    await alice.see("action", r"\* alice dances unseen", text="dances unseen")
    await alice.cmd("msg", nick="bob", text="psst")
    await alice.see("private", r"^\[private to bob\] <alice> psst$", echo=True, text="psst")
    said = await alice.sync("alice-done")
    assert not any("!!!" in line or '"error"' in line for line in said), said  # not told
    await carol.heard("#lobby", "alice", "you cannot hear this")
    await carol.say("#lobby", "marker")
    seen = await bob.heard("#lobby", "carol", "marker")
    for line in seen:
        for word in ("cannot hear", "unseen", "psst"):
            assert word not in line, line

    await carol.cmd("ignore", nick="carol")
    await carol.error("bad_arguments", "ignore")

    await bob.cmd("ignores")
    await bob.see("ignores", r"^\*\*\* You ignore: alice$", nicks=["alice"])
    await bob.cmd("unignore", nick="alice")
    await bob.see("ignores", r"^\*\*\* You ignore nobody$", nicks=[])
    await bob.cmd("unignore", nick="alice")
    await bob.error("no_such_nick", "unignore")
    await alice.say("#lobby", "hear me now")
    await bob.heard("#lobby", "alice", "hear me now")


async def test_ignores_of_an_account_hold_across_reconnect(
    start_server: StartServer, dialect: Dialect
) -> None:
    server = await serve(start_server)
    alice = await enter(dialect, server.port, "alice")
    carol = await enter(dialect, server.port, "carol")
    bob = await enter(dialect, server.port, "bob")
    await bob.cmd("ignore", nick="alice")
    await bob.see("ignores", r"You ignore: alice", nicks=["alice"])
    await bob.register()  # the ignores made as a guest go with the account
    await bob.cmd("quit")
    await bob.client.eof()

    bob = await enter(dialect, server.port, "bob", PASSWORD)
    await bob.cmd("ignores")
    await bob.see("ignores", r"^\*\*\* You ignore: alice$", nicks=["alice"])
    await alice.say("#lobby", "still ignored")
    await carol.say("#lobby", "marker")
    seen = await bob.heard("#lobby", "carol", "marker")
    assert not any("still ignored" in line for line in seen), seen


async def test_history_pages_back(start_server: StartServer, dialect: Dialect) -> None:
    server = await serve(start_server, history=3)
    alice = await enter(dialect, server.port, "alice")
    await alice.join("#h")
    for n in range(1, 8):
        await alice.say("#h", f"line {n}")
    bob = await enter(dialect, server.port, "bob")
    await bob.cmd("join", room="#h")

    def said(lines: list[str]) -> list[str]:
        """The history lines among ``lines``, as (text) "line N"; the others must not be
        history. Checks the history mark on each."""
        found = []
        for line in lines:
            if bob.json:
                obj = json.loads(line)
                if obj["type"] == "message":
                    assert obj["history"] is True, obj
                    assert obj["room"] == "#h", obj
                    found.append(obj["text"])
            else:
                match = re.fullmatch(
                    r"\[#h\] \(history \d{4}-\d\d-\d\d \d\d:\d\d UTC\) <alice> (line \d)", line
                )
                if match:
                    found.append(match.group(1))
                else:
                    assert "<alice>" not in line, line
        return found

    # The replay on joining: the last three.
    joined = await bob.sync("joined")
    assert said(joined) == ["line 5", "line 6", "line 7"], joined

    await bob.cmd("history", count=2)
    page = await bob.see(
        "notice",
        r"^\[#h\] \*\*\* 2 older lines of #h; /history for more\.$",
        text="2 older lines of #h; /history for more.",
    )
    assert said(page) == ["line 3", "line 4"], page
    await bob.cmd("history")
    page = await bob.see(
        "notice", r"2 older lines of #h", text="2 older lines of #h; /history for more."
    )
    assert said(page) == ["line 1", "line 2"], page
    await bob.cmd("history", room="#h")
    page = await bob.see(
        "notice", r"^\[#h\] \*\*\* No older lines in #h\.$", text="No older lines in #h."
    )
    assert said(page) == [], page

    for count in (0, 501):
        await bob.cmd("history", count=count)
        await bob.error("bad_arguments", "history")
    if bob.json:
        await bob.cmd("history", count="many")
    else:
        await bob.cmd("history", room="#h", count="many")
    await bob.error("bad_arguments", "history")
