"""Cluster mode against a real ``redis-server``: several nodes, one chat.

A module-scoped fixture starts ``redis-server`` on a free loopback port (the module is
skipped only when the binary is missing). Every test gets its own key prefix, so tests never
see each other's nicknames, presence, streams or channels. Nodes run in this event loop
(``start_server(redis_url=...)``) or, where a node must die without cleanup or ``--workers``
is under test, as real ``chat-server`` processes.

Nothing sleeps to synchronise: every wait is for an event, with a timeout, or a poll with a
deadline where the cluster converges asynchronously (``/who`` after a node joins). The few
sleeps pace a talker or make an outage last a given time. To prove something did *not*
arrive twice, a later marker is sent on the same path and everything received up to the
marker is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from chat.cluster import ClusterSettings
from chat.protocol import Event
from chat.server import ChatServer
from tests.harness import CHAT_SERVER, WAIT, JsonClient, LineClient, SpawnServer, StartServer

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed: the cluster tests need a real Redis "
    "(apt-get install redis-server; .ci/run installs it)",
)

SETTINGS = ClusterSettings(url="")  # the timing defaults every node runs with
LINK_DOWN_WAIT = SETTINGS.link_timeout + SETTINGS.command_timeout + 2.0
LINK_BACK_WAIT = 15.0  # reconnect backoff is capped at 5 s, plus jitter and the sync
DOWN_NOTICE = "The cluster link is down"
BACK_NOTICE = "The cluster link is back"


# --- redis-server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` on a loopback port; it can die, restart empty, or pause."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _spawn(self) -> bool:
        """Start on ``self.port`` and wait for PING; False if it exited (port taken)."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.02)  # polling a process that is starting, with a deadline
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} in 10 s")

    def start(self) -> None:
        """Start an empty Redis: on a free port the first time, on the same port after."""
        if self.port:
            if not self._spawn():
                raise RuntimeError(f"redis-server could not restart on port {self.port}")
            return
        for _attempt in range(5):
            self.port = free_port()
            if self._spawn():
                return
        raise RuntimeError("redis-server would not start on a free port")

    def kill(self) -> None:
        """SIGKILL: no shutdown, every key and connection gone at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def restart(self) -> None:
        """Kill, then start again on the same port, empty."""
        self.kill()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def ensure_running(self) -> None:
        self.resume()
        if self.proc is None or self.proc.poll() is not None:
            self.start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None
    server = RedisServer(REDIS_SERVER, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.resume()
    server.kill()


# --- clients ------------------------------------------------------------------------------


class User(JsonClient):
    """A JSON-dialect user; ``events`` keeps everything received, so windows can be counted."""

    nick = ""

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def call(
        self, obj: dict[str, Any], type_: str, timeout: float = WAIT, **fields: Any
    ) -> Event:
        await self.send(obj)
        return await self.expect(type_, timeout, **fields)

    async def first(self, pred: Callable[[Event], bool], timeout: float = WAIT) -> Event:
        """Read events until one satisfies ``pred``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event(timeout)
                if pred(event):
                    return event

    async def say(self, room: str, text: str) -> None:
        await self.send({"type": "say", "room": room, "text": text})

    async def join(self, room: str) -> Event:
        """Join ``room``; returns its ``who`` (history, if any, follows it)."""
        return await self.call({"type": "join", "room": room}, "who", room=room)

    async def who(self, room: str) -> tuple[str, ...]:
        """``/who room``; empty while this user's node does not know the room (yet)."""
        await self.send({"type": "who", "room": room})
        event = await self.first(
            lambda e: (e.type == "who" and e.room == room) or e.type == "error"
        )
        if event.type == "error":
            assert event.code == "no_such_room", event  # type: ignore[attr-defined]
            return ()
        return tuple(event.members)  # type: ignore[attr-defined]

    async def until_messages(
        self, wanted: Iterable[tuple[str, str]], since: int = 0, timeout: float = WAIT
    ) -> None:
        """Read until a message with each (nick, text) has arrived (counting from ``since``)."""
        missing = set(wanted) - {(e.nick, e.text) for e in self.events[since:] if is_said(e)}
        try:
            async with asyncio.timeout(timeout):
                while missing:
                    event = await self.event(timeout)
                    if is_said(event):
                        missing.discard((event.nick, event.text))
        except TimeoutError:
            got = [(e.type, e.nick, e.text) for e in self.events[since:]]
            pytest.fail(f"{self.nick}: {sorted(missing)} did not arrive in {timeout} s; got {got}")

    async def missing_messages(
        self, wanted: Iterable[tuple[str, str]], since: int = 0, timeout: float = WAIT
    ) -> list[tuple[str, str]]:
        """Like :meth:`until_messages`, but return what did not arrive instead of failing."""
        missing = set(wanted) - {(e.nick, e.text) for e in self.events[since:] if is_said(e)}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while missing:
                    event = await self.event(timeout)
                    if is_said(event):
                        missing.discard((event.nick, event.text))
        return sorted(missing)

    async def closed(self, timeout: float = WAIT) -> list[Event]:
        """Read until the server closes the connection; the events read."""
        start = len(self.events)
        with contextlib.suppress(EOFError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                while True:
                    await self.event(timeout)
        return self.events[start:]


def is_said(event: Event) -> bool:
    return event.type in ("message", "action")


def count(events: Iterable[Event], type_: str, **fields: Any) -> int:
    return sum(
        1
        for e in events
        if e.type == type_ and all(getattr(e, k, None) == v for k, v in fields.items())
    )


def said(events: Iterable[Event], nick: str, room: str) -> list[str]:
    """Texts of the messages ``nick`` said in ``room``, in arrival order."""
    return [e.text for e in events if e.type == "message" and e.nick == nick and e.room == room]


def own_rename_or_error(user: User) -> Callable[[Event], bool]:
    nick = user.nick
    return lambda event: event.type == "error" or (event.type == "nick" and event.nick == nick)


def answer_to(request: str) -> Callable[[Event], bool]:
    return lambda event: event.re == request


def notice(fragment: str) -> Callable[[Event], bool]:
    return lambda e: e.type == "notice" and fragment in e.text


async def wait_who(user: User, room: str, nicks: Iterable[str], timeout: float = WAIT) -> None:
    """Poll ``/who`` until it lists exactly ``nicks``: the cluster converges asynchronously."""
    wanted = sorted(nicks, key=str.lower)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        members = await user.who(room)
        if list(members) == wanted:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{user.nick}: /who {room} is {members}, expected {wanted}")
        await asyncio.sleep(0.05)


async def settle(users: Iterable[User], room: str) -> None:
    """Every user's node sees every user in ``room``."""
    users = list(users)
    await asyncio.gather(*(wait_who(u, room, [v.nick for v in users]) for u in users))


async def converse(
    speakers: list[User], room: str, tag: str, duration: float
) -> list[tuple[str, str]]:
    """The speakers take turns saying a line in ``room`` for ``duration`` seconds (paced,
    so that it spans heartbeats); returns the (nick, text) said, to wait for."""
    said_lines: list[tuple[str, str]] = []
    steps = 10
    for i in range(steps):
        speaker = speakers[i % len(speakers)]
        text = f"{tag}-{i}"
        await speaker.say(room, text)
        said_lines.append((speaker.nick, text))
        await asyncio.sleep(duration / steps)  # pacing the conversation, not synchronising
    return said_lines


# --- the cluster fixture ------------------------------------------------------------------


@dataclass
class Cluster:
    redis: RedisServer
    start_server: StartServer
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}:")
    clients: list[JsonClient | LineClient] = field(default_factory=list)
    nodes: list[ChatServer] = field(default_factory=list)

    async def node(self, node_id: str, **overrides: Any) -> ChatServer:
        """An in-process node of this test's cluster (no flood control, no per-IP limit)."""
        settings: dict[str, Any] = {"max_per_ip": 0, "rate": 0}
        settings.update(overrides)
        server = await self.start_server(
            redis_url=self.redis.url, node_id=node_id, redis_prefix=self.prefix, **settings
        )
        self.nodes.append(server)
        return server

    async def user(self, node: ChatServer | int, nick: str) -> User:
        port = node if isinstance(node, int) else node.port
        user = await User.connect(port, nick)
        assert isinstance(user, User)
        user.nick = nick
        self.clients.append(user)
        return user

    async def anonymous(self, node: ChatServer | int) -> User:
        """A JSON client that said hello but has no nickname yet."""
        port = node if isinstance(node, int) else node.port
        user = await User.connect(port)
        assert isinstance(user, User)
        self.clients.append(user)
        return user

    async def text_user(self, node: ChatServer, nick: str) -> LineClient:
        client = await LineClient.connect(node.port)
        self.clients.append(client)
        await client.register(nick)
        return client

    def db(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.redis.url, decode_responses=True)

    async def stream(self, room: str) -> list[tuple[str, str]]:
        """(nick, text) of the lines in ``room``'s stream in Redis, in stream order."""
        db = self.db()
        try:
            entries = await db.xrange(f"{self.prefix}log:{room.lower()}")
        finally:
            await db.aclose()
        lines = [json.loads(fields["e"]) for _, fields in entries]
        return [(line["nick"], line["text"]) for line in lines]

    async def hold_commands(self, seconds: float) -> None:
        """CLIENT PAUSE: Redis holds every client's commands for a moment (a slow Redis).

        A node that says something meanwhile holds one pooled connection until Redis answers,
        so its heartbeat, due within the pause, needs a second one.
        """
        db = self.db()
        try:
            await db.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        finally:
            await db.aclose()

    async def claim_of(self, nick: str) -> str | None:
        """The raw value of a nickname's claim in Redis (``"node\\nnick"``), if any."""
        db = self.db()
        try:
            value: str | None = await db.get(f"{self.prefix}nick:{nick.lower()}")
            return value
        finally:
            await db.aclose()


async def close_node(server: ChatServer, timeout: float) -> bool:
    """Close a node; True if ``close()`` finished within ``timeout``.

    If it did not, ``close()`` is stuck waiting for a cluster task whose cancellation was
    swallowed (what test_node_shutdown_is_bounded_while_users_quit guards against): the
    backend's tasks are cancelled once more so that one such failure cannot hang the suite.
    """
    closing = asyncio.create_task(server.close())
    done, _ = await asyncio.wait({closing}, timeout=timeout)
    if not done:
        for task in asyncio.all_tasks():
            frame = getattr(task.get_coro(), "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is server.cluster:
                task.cancel()
        async with asyncio.timeout(10):
            await closing
    return bool(done)


@pytest.fixture
async def cluster(redis_server: RedisServer, start_server: StartServer) -> AsyncIterator[Cluster]:
    redis_server.ensure_running()
    made = Cluster(redis_server, start_server)
    try:
        yield made
    finally:
        redis_server.ensure_running()
        for client in made.clients:
            await client.close()
        # Closed here, before start_server's own teardown (for which they are closed already).
        for node in made.nodes:
            await close_node(node, timeout=1.5)


# --- one chat across nodes ----------------------------------------------------------------


async def test_room_events_reach_every_node_exactly_once(cluster: Cluster) -> None:
    a, b, c = [await cluster.node(n) for n in "ABC"]
    a1, b1, c1 = (
        await cluster.user(a, "a1"),
        await cluster.user(b, "b1"),
        await cluster.user(c, "c1"),
    )
    a2, b2, c2 = (
        await cluster.user(a, "a2"),
        await cluster.user(b, "b2"),
        await cluster.user(c, "c2"),
    )
    users = [a1, b1, c1, a2, b2, c2]
    await settle(users, "#lobby")
    mark = {u.nick: len(u.events) for u in users}
    order = [u.nick for u in users]

    # Joins one at a time, each known on every node before the next.
    for i, joiner in enumerate(users):
        await joiner.join("#r")
        await asyncio.gather(*(wait_who(u, "#r", order[: i + 1]) for u in users))

    # Each action waits for its own echo, so it happened before that node's marker below.
    await a1.say("#r", "m-a")
    await a1.expect("message", text="m-a")
    await a1.call({"type": "me", "room": "#r", "text": "act-a"}, "action", text="act-a")
    await a1.call({"type": "topic", "room": "#r", "text": "topic-a"}, "topic", text="topic-a")
    await b1.say("#r", "m-b")
    await b1.expect("message", text="m-b")
    await c1.call({"type": "me", "room": "#r", "text": "act-c"}, "action", text="act-c")
    await a2.call({"type": "nick", "nick": "a2new"}, "nick", new_nick="a2new")
    await b1.call({"type": "part", "room": "#r", "reason": "bye-b"}, "part", nick="b1")
    await c1.send({"type": "quit", "reason": "gone-c"})
    await c1.closed()

    # One marker per node, in #lobby, on the same channel as that node's events.
    await a1.say("#lobby", "end-A")
    await b2.say("#lobby", "end-B")
    await c2.say("#lobby", "end-C")
    markers = [("a1", "end-A"), ("b2", "end-B"), ("c2", "end-C")]
    observers = [a1, b1, a2, b2, c2]
    await asyncio.gather(*(u.until_messages(markers, since=mark[u.nick]) for u in observers))

    for observer in observers:
        seen = observer.events[mark[observer.nick] :]
        me = order.index(observer.nick)
        for j, nick in enumerate(order):
            assert count(seen, "join", room="#r", nick=nick) == (1 if j >= me else 0), (
                observer.nick,
                nick,
            )
        for type_, fields in [
            ("message", {"nick": "a1", "room": "#r", "text": "m-a"}),
            ("action", {"nick": "a1", "room": "#r", "text": "act-a"}),
            ("topic", {"nick": "a1", "room": "#r", "text": "topic-a"}),
            ("message", {"nick": "b1", "room": "#r", "text": "m-b"}),
            ("action", {"nick": "c1", "room": "#r", "text": "act-c"}),
            ("nick", {"nick": "a2", "new_nick": "a2new"}),
            ("part", {"nick": "b1", "room": "#r", "text": "bye-b"}),
            ("quit", {"nick": "c1", "text": "gone-c"}),
            ("message", {"nick": "a1", "room": "#lobby", "text": "end-A"}),
            ("message", {"nick": "b2", "room": "#lobby", "text": "end-B"}),
            ("message", {"nick": "c2", "room": "#lobby", "text": "end-C"}),
        ]:
            assert count(seen, type_, **fields) == 1, (observer.nick, type_, fields, seen)
    # b1 left #r before the others' later #r traffic: nothing from #r after its own part.
    b1_seen = b1.events[mark["b1"] :]
    after_part = b1_seen[
        next(i for i, e in enumerate(b1_seen) if e.type == "part" and e.nick == "b1") + 1 :
    ]
    assert not [e for e in after_part if e.room == "#r"], after_part


async def test_who_rooms_and_topics_show_the_whole_cluster(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, b1 = await cluster.user(a, "a1"), await cluster.user(b, "b1")
    await a1.join("#x")
    await a1.call({"type": "topic", "room": "#x", "text": "x marks"}, "topic", text="x marks")
    await b1.join("#x")
    # A node started after the topic was set learns it (and the rooms) from Redis.
    c = await cluster.node("C")
    c1 = await cluster.user(c, "c1")
    await c1.join("#y")
    users = [a1, b1, c1]
    await settle(users, "#lobby")
    for user in users:
        await wait_who(user, "#x", ["a1", "b1"])
        await wait_who(user, "#y", ["c1"])
        rooms = await user.call({"type": "rooms"}, "rooms")
        listing = {(i.room, i.members, i.topic) for i in rooms.rooms}  # type: ignore[attr-defined]
        assert listing == {("#lobby", 3, ""), ("#x", 2, "x marks"), ("#y", 1, "")}, user.nick
        topic = await user.call({"type": "topic", "room": "#x"}, "topic", room="#x")
        assert topic.text == "x marks", user.nick
    # A part and a quit on one node shrink /who and /rooms everywhere.
    await b1.call({"type": "part", "room": "#x"}, "part", nick="b1")
    await c1.send({"type": "quit"})
    await c1.closed()
    for user in (a1, b1):
        await wait_who(user, "#x", ["a1"])
        await wait_who(user, "#lobby", ["a1", "b1"])
        rooms = await user.call({"type": "rooms"}, "rooms")
        listing = {(i.room, i.members) for i in rooms.rooms}  # type: ignore[attr-defined]
        assert listing == {("#lobby", 2), ("#x", 1)}, user.nick


async def test_private_messages_cross_nodes(cluster: Cluster) -> None:
    a, b, c = [await cluster.node(n) for n in "ABC"]
    a1 = await cluster.user(a, "a1")
    b1 = await cluster.text_user(b, "b1")  # the text dialect, to see what a person sees
    c1 = await cluster.user(c, "c1")
    await wait_who(a1, "#lobby", ["a1", "b1", "c1"])
    await wait_who(c1, "#lobby", ["a1", "b1", "c1"])

    echo = await a1.call({"type": "msg", "nick": "b1", "text": "hi b"}, "private")
    assert (echo.nick, echo.target, echo.echo) == ("a1", "b1", True)  # type: ignore[attr-defined]
    await b1.expect(r"^\[private\] <a1> hi b$")
    # Nicknames are case-insensitive wherever the target is.
    await a1.send({"type": "msg", "nick": "C1", "text": "hi c"})
    got = await c1.expect("private", text="hi c")
    assert (got.nick, got.target) == ("a1", "c1")  # type: ignore[attr-defined]
    await c1.send({"type": "msg", "nick": "a1", "text": "back at you"})
    await a1.expect("private", nick="c1", text="back at you")
    await b1.send("/msg c1 from a terminal")
    await c1.expect("private", nick="b1", text="from a terminal")
    # Nobody by that name anywhere.
    error = await a1.call({"type": "msg", "nick": "ghost9", "text": "boo"}, "error")
    assert error.code == "no_such_nick"  # type: ignore[attr-defined]
    # A rename moves the nickname cluster-wide.
    await c1.call({"type": "nick", "nick": "c1x"}, "nick", new_nick="c1x")
    await a1.expect("nick", nick="c1", new_nick="c1x")
    await a1.send({"type": "msg", "nick": "c1x", "text": "renamed"})
    await c1.expect("private", text="renamed")
    error = await a1.call({"type": "msg", "nick": "c1", "text": "old name"}, "error")
    assert error.code == "no_such_nick"  # type: ignore[attr-defined]

    # Markers on the same paths, then count: each private arrived exactly once.
    await a1.send({"type": "msg", "nick": "c1x", "text": "marker-c"})
    await c1.expect("private", text="marker-c")
    await a1.send({"type": "msg", "nick": "b1", "text": "marker-b"})
    await b1.expect(r"^\[private\] <a1> marker-b$")
    for text in ("hi c", "renamed", "from a terminal"):
        assert count(c1.events, "private", text=text) == 1, text
    assert count(c1.events, "private", text="old name") == 0
    assert b1.seen.count("[private] <a1> hi b") == 1
    assert count(a1.events, "private", nick="c1", text="back at you") == 1


async def test_order_of_one_sender_is_kept_on_every_node(cluster: Cluster) -> None:
    a, b, c = [await cluster.node(n) for n in "ABC"]
    s1, s2 = await cluster.user(a, "s1"), await cluster.user(b, "s2")
    ra, rb, rc = (
        await cluster.user(a, "ra"),
        await cluster.user(b, "rb"),
        await cluster.user(c, "rc"),
    )
    users = [s1, s2, ra, rb, rc]
    for user in users:
        await user.join("#o")
    await settle(users, "#o")
    mark = {u.nick: len(u.events) for u in users}

    def burst(nick: str) -> bytes:
        return b"".join(
            json.dumps({"type": "say", "room": "#o", "text": f"{nick}-{i}"}).encode() + b"\n"
            for i in range(200)
        )

    # Two senders on two nodes, 200 lines each, each in one write, at the same time.
    await asyncio.gather(s1.send_raw(burst("s1")), s2.send_raw(burst("s2")))
    last = [("s1", "s1-199"), ("s2", "s2-199")]
    await asyncio.gather(*(u.until_messages(last, mark[u.nick], timeout=15) for u in users))
    await s1.say("#o", "s1-end")
    await s2.say("#o", "s2-end")
    ends = [("s1", "s1-end"), ("s2", "s2-end")]
    await asyncio.gather(*(u.until_messages(ends, mark[u.nick]) for u in users))
    for user in users:
        seen = user.events[mark[user.nick] :]
        for sender in ("s1", "s2"):
            expected = [f"{sender}-{i}" for i in range(200)] + [f"{sender}-end"]
            assert said(seen, sender, "#o") == expected, (user.nick, sender)


async def test_a_publish_backlog_pauses_senders_and_loses_nothing(cluster: Cluster) -> None:
    """A burst larger than a node's publish queue, while Redis is slow to answer: the node
    stops reading its clients while the backlog is high (the backend is ``congested``),
    instead of dropping what does not fit; the other node gets every line, in order."""
    a, b = await cluster.node("A"), await cluster.node("B")
    talker, listener = await cluster.user(a, "talker"), await cluster.user(b, "listener")
    for user in (talker, listener):
        await user.join("#bp")
    await settle([talker, listener], "#bp")
    total = 15_000  # more than PUBLISH_QUEUE
    burst = b"".join(
        json.dumps({"type": "say", "room": "#bp", "text": f"n{i}"}).encode() + b"\n"
        for i in range(total)
    )
    last = [("talker", f"n{total - 1}")]
    echo = asyncio.create_task(talker.until_messages(last, timeout=30))  # read, or be dropped
    try:
        await cluster.hold_commands(1.5)  # shorter than link_timeout: the link stays up
        await talker.send_raw(burst)
        await listener.until_messages(last, timeout=30)
        await echo
    finally:
        echo.cancel()
    got = [e.text for e in listener.events if e.type == "message" and e.room == "#bp"]
    assert got == [f"n{i}" for i in range(total)]


async def test_twenty_senders_flat_out_lose_nothing_across_nodes(cluster: Cluster) -> None:
    """Issue 10.10 as reported: 20 senders on one node, 1,000 lines each as fast as they can
    (flood control off), an observer on the other node. Once 12 % were lost when the
    publish queue overflowed; now the node stops reading its senders instead."""
    # The senders read nothing: A's queues hold what they are sent (they would otherwise
    # parse 400,000 events in this one test process and starve both nodes).
    a = await cluster.node("A", rate=0, send_queue=256 * 1024 * 1024)
    b = await cluster.node("B", rate=0)
    senders = [await cluster.user(a, f"s{i}") for i in range(20)]
    observer = await cluster.user(b, "observer")
    for user in [*senders, observer]:
        await user.join("#flat")
    await settle([*senders, observer], "#flat")
    per_sender = 1_000
    for sender in senders:
        sender.writer.write(
            b"".join(
                json.dumps({"type": "say", "room": "#flat", "text": f"{sender.nick}-{i}"}).encode()
                + b"\n"
                for i in range(per_sender)
            )
        )
    await observer.until_messages(
        [(s.nick, f"{s.nick}-{per_sender - 1}") for s in senders], timeout=60
    )
    got = [e for e in observer.events if e.type == "message" and e.room == "#flat"]
    assert len(got) == 20 * per_sender
    for sender in senders:  # and each sender's lines in the order they were sent
        assert [e.text for e in got if e.nick == sender.nick] == [
            f"{sender.nick}-{i}" for i in range(per_sender)
        ]


async def test_a_user_is_reachable_as_soon_as_their_registration_is_acknowledged(
    cluster: Cluster,
) -> None:
    """Read your writes (issue 10.11): the moment B welcomes a user, A and C can message
    them, though neither may have heard of them yet; their claim in Redis says where.

    A talker keeps B's publications busy, as on a node in use, so that the new user's
    first join reaches A and C some moments after their welcome.
    """
    a, b, c = [await cluster.node(n) for n in "ABC"]
    a1, c1 = await cluster.user(a, "a1"), await cluster.user(c, "c1")
    talker = Talker(await cluster.user(b, "talker"), "#busy", batch=20, pause=0.01)
    await talker.user.join("#busy")
    talker.start()
    try:
        misses = await message_newcomers(b, [a1, c1], 100)
        await talker.stop(after=0)
    finally:
        talker.cancel()
    assert misses == [], f"{len(misses)} of 200 missed: {misses[:5]}"


async def message_newcomers(node: ChatServer, senders: list[User], rounds: int) -> list[Any]:
    """Register a new user on ``node`` each round, and have every sender message them the
    moment they are welcome; the answers that were not the sender's echo."""
    misses: list[tuple[str, str, Event]] = []
    for i in range(rounds):
        nick = f"fresh{i}"
        newcomer = await User.connect(node.port)
        assert isinstance(newcomer, User)
        try:
            await newcomer.call({"type": "nick", "nick": nick}, "welcome", nick=nick)
            asks = {sender.nick: f"{sender.nick}-{i}" for sender in senders}
            await asyncio.gather(
                *(
                    s.send({"type": "msg", "nick": nick, "text": "hi", "id": asks[s.nick]})
                    for s in senders
                )
            )
            answers = await asyncio.gather(*(s.first(answer_to(asks[s.nick])) for s in senders))
            echoed = set()
            for sender, answer in zip(senders, answers, strict=True):
                if answer.type == "private":
                    echoed.add(sender.nick)
                else:
                    misses.append((sender.nick, nick, answer))
            async with asyncio.timeout(WAIT):  # in whatever order they come
                while echoed - {e.nick for e in newcomer.events if e.type == "private"}:
                    await newcomer.event()
        finally:
            await newcomer.close()
    return misses


# --- nicknames ----------------------------------------------------------------------------


async def test_nicknames_are_unique_across_nodes(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice = await cluster.user(a, "alice")
    # Straight after alice's welcome on A: B may not have heard of her yet; Redis has.
    newcomer = await cluster.anonymous(b)
    for nick, code in [
        ("alice", "nick_taken"),
        ("ALICE", "nick_taken"),
        ("a1ice", "nick_confusable"),
        ("AL1CE", "nick_confusable"),
    ]:
        error = await newcomer.call({"type": "nick", "nick": nick}, "error")
        assert error.code == code, nick  # type: ignore[attr-defined]
    bob = await cluster.user(b, "bob")
    for nick, code in [("Alice", "nick_taken"), ("a1ice", "nick_confusable")]:
        error = await bob.call({"type": "nick", "nick": nick}, "error")
        assert error.code == code, nick  # type: ignore[attr-defined]
    # A rename frees the old nickname cluster-wide and takes the new one.
    await alice.call({"type": "nick", "nick": "alicia"}, "nick", new_nick="alicia")
    await bob.expect("nick", nick="alice", new_nick="alicia")
    error = await bob.call({"type": "nick", "nick": "alicia"}, "error")
    assert error.code == "nick_taken"  # type: ignore[attr-defined]
    await newcomer.call({"type": "nick", "nick": "alice"}, "welcome", nick="alice")
    # A quit frees the nickname at once (compare-and-delete), not after its expiry.
    await alice.send({"type": "quit"})
    await alice.closed()
    await bob.expect("quit", nick="alicia")
    await bob.call({"type": "nick", "nick": "Alicia"}, "nick", new_nick="Alicia")
    assert await cluster.claim_of("alicia") == "B\nAlicia"
    # A node started now learns the nicknames as they are, after the renames and the quit.
    c = await cluster.node("C")
    carl = await cluster.user(c, "carl")
    await wait_who(carl, "#lobby", ["alice", "Alicia", "carl"])


async def test_case_only_rename_then_quit_frees_the_nickname(cluster: Cluster) -> None:
    """carol becomes Carol (one nickname, so nothing new to claim), then quits: the
    nickname is free at once for anyone, as after any quit."""
    a, b = await cluster.node("A"), await cluster.node("B")
    carol, dave = await cluster.user(a, "carol"), await cluster.user(b, "dave")
    await settle([carol, dave], "#lobby")
    await carol.call({"type": "nick", "nick": "Carol"}, "nick", new_nick="Carol")
    await dave.expect("nick", nick="carol", new_nick="Carol")
    await carol.send({"type": "quit"})
    await carol.closed()
    await dave.expect("quit", nick="Carol")
    await dave.send({"type": "nick", "nick": "carol"})
    reply = await dave.first(own_rename_or_error(dave))
    assert reply.type == "nick", (reply, await cluster.claim_of("carol"))


async def test_two_nodes_racing_for_one_nickname(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    variants = [
        (lambda i: f"race{i}", lambda i: f"race{i}", "nick_taken"),
        (lambda i: f"case{i}x", lambda i: f"CASE{i}X", "nick_taken"),
        (lambda i: f"lk{i}", lambda i: f"Ik{i}", "nick_confusable"),  # one skeleton
    ]
    wins = {"A": 0, "B": 0}
    for i in range(30):
        first, second, code = variants[i % len(variants)]
        x, y = await cluster.anonymous(a), await cluster.anonymous(b)
        await asyncio.gather(
            x.send({"type": "nick", "nick": first(i)}),
            y.send({"type": "nick", "nick": second(i)}),
        )
        outcome = await asyncio.gather(
            x.first(lambda e: e.type in ("welcome", "error")),
            y.first(lambda e: e.type in ("welcome", "error")),
        )
        kinds = sorted(e.type for e in outcome)
        assert kinds == ["error", "welcome"], (i, outcome)
        loser = next(e for e in outcome if e.type == "error")
        assert loser.code == code, (i, loser)  # type: ignore[attr-defined]
        wins["A" if outcome[0].type == "welcome" else "B"] += 1
        await x.close()
        await y.close()
    # Two registered users renaming to one fresh nickname at once: one rename wins.
    ra, rb = await cluster.user(a, "renA"), await cluster.user(b, "renB")
    await settle([ra, rb], "#lobby")
    for i in range(10):
        target = f"both{i}"
        await asyncio.gather(
            ra.send({"type": "nick", "nick": target}), rb.send({"type": "nick", "nick": target})
        )

        outcome = await asyncio.gather(
            ra.first(own_rename_or_error(ra)), rb.first(own_rename_or_error(rb))
        )
        assert sorted(e.type for e in outcome) == ["error", "nick"], (i, outcome)
        for user, event in zip((ra, rb), outcome, strict=True):
            if event.type == "nick":
                user.nick = target
            else:
                assert event.code == "nick_taken", (i, event)  # type: ignore[attr-defined]
    await settle([ra, rb], "#lobby")  # the two views agree: no nickname twice


# --- history ------------------------------------------------------------------------------


async def test_history_replays_on_other_and_fresh_nodes(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, watcher = await cluster.user(a, "a1"), await cluster.user(b, "watcher")
    await a1.join("#h")
    await watcher.join("#h")
    await wait_who(a1, "#h", ["a1", "watcher"])
    for i in range(5):
        await a1.say("#h", f"h{i}")
    await a1.send({"type": "me", "room": "#h", "text": "acts"})
    for i in range(5, 10):
        await a1.say("#h", f"h{i}")
    await watcher.until_messages([("a1", "h9")])  # B has applied them all, Redis has them
    expected = [("message", f"h{i}") for i in range(5)] + [("action", "acts")]
    expected += [("message", f"h{i}") for i in range(5, 10)]
    nicks = ["a1", "watcher"]

    async def joins_and_replays(user: User) -> None:
        mark = len(user.events)
        await user.join("#h")
        nicks.append(user.nick)
        await wait_who(a1, "#h", nicks)  # A knows the joiner: what a1 says now is live for it
        await a1.say("#h", f"live-{user.nick}")
        await user.until_messages([("a1", f"live-{user.nick}")], since=mark)
        seen = [e for e in user.events[mark:] if is_said(e) and e.room == "#h"]
        got = [(e.type, e.text, e.history) for e in seen]  # type: ignore[attr-defined]
        assert got == [(*x, True) for x in expected] + [("message", f"live-{user.nick}", False)]
        expected.append(("message", f"live-{user.nick}"))

    await joins_and_replays(await cluster.user(b, "b1"))
    # A node started after the messages replays them from the room's stream in Redis.
    c = await cluster.node("C")
    await joins_and_replays(await cluster.user(c, "c1"))


class Talker:
    """One user saying numbered lines into a room non-stop, in small batches, from a task."""

    def __init__(self, user: User, room: str, *, batch: int, pause: float) -> None:
        self.user = user
        self.room = room
        self.batch = batch
        self.pause = pause
        self.sent = 0
        self._stop_at = 1_000_000
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def _talk(self) -> None:
        while self.sent < self._stop_at:
            lines = [
                json.dumps({"type": "say", "room": self.room, "text": f"g{self.sent + k}"})
                for k in range(self.batch)
            ]
            await self.user.send_raw("\n".join(lines).encode() + b"\n")
            self.sent += self.batch
            async with self._progress:
                self._progress.notify_all()
            await asyncio.sleep(self.pause)  # pacing the load, not synchronising

    async def reach(self, count: int) -> None:
        """Wait until ``count`` lines have been sent."""
        async with asyncio.timeout(WAIT), self._progress:
            await self._progress.wait_for(lambda: self.sent >= count)

    def start(self) -> None:
        self._task = asyncio.create_task(self._talk())
        # The talker is in the room too: read its echo, or it would be dropped as too slow.
        self._reader = asyncio.create_task(
            self.user.until_messages([(self.user.nick, "g-end")], timeout=60)
        )

    async def stop(self, after: int) -> int:
        """Say ``after`` more lines, stop, then say "g-end"; returns how many were said."""
        self._stop_at = self.sent + after
        assert self._task is not None
        assert self._reader is not None
        async with asyncio.timeout(WAIT):
            await self._task
        await self.user.say(self.room, "g-end")
        await self._reader
        return self.sent

    def cancel(self) -> None:
        for task in (self._task, self._reader):
            if task is not None:
                task.cancel()


def assert_seamless(user: User, room: str, total: int) -> list[int]:
    """The numbered lines ``user`` got in ``room``: consecutive up to the last, once each,
    history (replay) before live. Returns the numbers."""
    seen = [e for e in user.events if e.type == "message" and e.room == room]
    texts = [e.text for e in seen]
    assert texts, user.nick
    assert texts[-1] == "g-end", user.nick
    numbers = [int(t[1:]) for t in texts[:-1]]
    assert numbers, user.nick
    gaps = sorted(set(range(numbers[0], total)) - set(numbers))
    dups = sorted({n for n in numbers if numbers.count(n) > 1})
    assert (gaps, dups) == ([], []), f"{user.nick}: missing {gaps}, duplicated {dups}"
    assert numbers == list(range(numbers[0], total)), user.nick
    flags = [e.history for e in seen]  # type: ignore[attr-defined]
    assert flags == sorted(flags, reverse=True), f"{user.nick}: history after live"
    return numbers


async def test_no_gap_between_replay_and_live_when_joining(cluster: Cluster) -> None:
    """Join the room on every node while one sender talks non-stop on one of them."""
    a, b, c = [await cluster.node(n) for n in "ABC"]
    talker = Talker(await cluster.user(a, "talker"), "#g", batch=2, pause=0.002)
    await talker.user.join("#g")
    talker.start()
    joiners: list[User] = []
    try:
        await talker.reach(20)
        for node, nick in ((b, "jb"), (c, "jc"), (a, "ja"), (b, "jb2")):
            user = await cluster.user(node, nick)
            await user.join("#g")
            joiners.append(user)
        total = await talker.stop(after=40)  # live traffic after the last join
    finally:
        talker.cancel()
    await asyncio.gather(*(u.until_messages([("talker", "g-end")]) for u in joiners))
    for user in joiners:
        assert_seamless(user, "#g", total)


async def test_no_gap_on_a_node_started_mid_conversation(cluster: Cluster) -> None:
    """A node that starts while a room is busy loads the stream, then follows it live.

    Its users must get every line: nothing may fall between the stream read at start-up and
    the live subscription. Fresh nodes keep a long history so any gap would show.
    """
    a = await cluster.node("A")
    talker = Talker(await cluster.user(a, "talker"), "#g", batch=5, pause=0.001)
    await talker.user.join("#g")
    talker.start()
    joiners: list[User] = []
    try:
        await talker.reach(20)
        for name in ("D", "E", "F"):
            node = await cluster.node(name, history=5000)
            user = await cluster.user(node, f"j{name.lower()}")
            await user.join("#g")
            joiners.append(user)
        total = await talker.stop(after=50)
    finally:
        talker.cancel()
    assert total < 4000, "more lines than the fresh nodes' history"
    await asyncio.gather(*(u.until_messages([("talker", "g-end")]) for u in joiners))
    for user in joiners:
        assert assert_seamless(user, "#g", total)[0] == 0, user.nick  # from the first line


# --- failures -----------------------------------------------------------------------------


async def test_node_killed_without_cleanup(cluster: Cluster, spawn_server: SpawnServer) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, b1 = await cluster.user(a, "a1"), await cluster.user(b, "b1")
    k = await spawn_server(
        "--redis", cluster.redis.url, "--node-id", "K", "--redis-prefix", cluster.prefix
    )
    kim = await cluster.user(k.ports[0], "kim")
    await kim.join("#k")
    for user in (a1, b1):
        await user.join("#k")
    await settle([a1, b1, kim], "#k")
    await settle([a1, b1, kim], "#lobby")
    assert await cluster.claim_of("kim") == "K\nkim"

    k.proc.kill()  # SIGKILL: no quit, no release, no goodbye
    killed = time.monotonic()
    assert await k.wait(5) == -signal.SIGKILL
    for user in (a1, b1):
        gone = await user.expect("quit", timeout=SETTINGS.dead_after + 4, nick="kim")
        assert gone.text == "Their server went away"
    assert time.monotonic() - killed < SETTINGS.dead_after + 2.5
    # Exactly once, though kim shared two rooms with them: a marker from each node.
    await a1.say("#lobby", "after-kill-A")
    await b1.say("#lobby", "after-kill-B")
    markers = [("a1", "after-kill-A"), ("b1", "after-kill-B")]
    for user in (a1, b1):
        await user.until_messages(markers)
        assert count(user.events, "quit", nick="kim") == 1
        await wait_who(user, "#k", ["a1", "b1"])
        await wait_who(user, "#lobby", ["a1", "b1"])

    # The dead node's claim expires by itself: the nickname is free within nick_ttl.
    deadline = killed + SETTINGS.nick_ttl + 3.0
    newcomer = await cluster.anonymous(b)
    while True:
        await newcomer.send({"type": "nick", "nick": "kim"})
        reply = await newcomer.first(lambda e: e.type in ("welcome", "error"))
        if reply.type == "welcome":
            break
        assert reply.code == "nick_taken", reply  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "kim's claim outlived nick_ttl"
        await asyncio.sleep(0.2)  # polling an expiry, with a deadline
    assert time.monotonic() - killed < SETTINGS.nick_ttl + 1.5
    assert await cluster.claim_of("kim") == "B\nkim"
    await a1.expect("join", room="#lobby", nick="kim")


async def test_redis_killed_and_restarted_empty(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, a2 = await cluster.user(a, "a1"), await cluster.user(a, "a2")
    b1, b2 = await cluster.user(b, "b1"), await cluster.user(b, "b2")
    users = [a1, a2, b1, b2]
    await settle(users, "#lobby")
    # Busy nodes: each holds two pooled connections to Redis when it goes away.
    await cluster.hold_commands(SETTINGS.heartbeat + 0.4)
    before = await converse([a1, b1], "#lobby", "before", SETTINGS.heartbeat)
    await asyncio.gather(*(u.until_messages(before) for u in users))

    cluster.redis.kill()
    for user in users:
        await user.first(notice(DOWN_NOTICE), timeout=LINK_DOWN_WAIT)
    # Local chat goes on.
    await a1.say("#lobby", "local-A")
    await a2.until_messages([("a1", "local-A")])
    await b1.say("#lobby", "local-B")
    await b2.until_messages([("b1", "local-B")])
    await a1.send({"type": "msg", "nick": "a2", "text": "still here"})
    await a2.expect("private", nick="a1", text="still here")
    # What cannot be done safely is refused with cluster_down.
    newbie = await cluster.anonymous(a)
    error = await newbie.call({"type": "nick", "nick": "newbie"}, "error")
    assert error.code == "cluster_down"  # type: ignore[attr-defined]
    error = await a1.call({"type": "msg", "nick": "b1", "text": "across"}, "error")
    assert error.code == "cluster_down"  # type: ignore[attr-defined]
    error = await b2.call({"type": "nick", "nick": "b2renamed"}, "error")
    assert error.code == "cluster_down"  # type: ignore[attr-defined]

    await asyncio.to_thread(cluster.redis.start)  # the same port, empty
    mark = {u.nick: len(u.events) for u in users}
    for user in users:
        await user.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
    # Cross-node messages flow again, once each, and the link stays up: a conversation
    # across the two nodes over a few heartbeats, starting while Redis is slow to answer.
    await cluster.hold_commands(SETTINGS.heartbeat + 0.4)
    after = await converse([a1, b1], "#lobby", "after", SETTINGS.heartbeat * 2.5)
    missing = {u.nick: await u.missing_messages(after, mark[u.nick]) for u in users}
    downs = {u.nick: sum(map(notice(DOWN_NOTICE), u.events[mark[u.nick] :])) for u in users}
    problems = {n: (downs[n], missing[n]) for n in downs if downs[n] or missing[n]}
    assert problems == {}, (
        f"link-down notices after the link was back: {downs}; lines lost: {missing}"
    )
    # Everyone is visible everywhere, and the nicknames are claimed in the new Redis.
    await settle(users, "#lobby")
    for user, node in ((a1, "A"), (a2, "A"), (b1, "B"), (b2, "B")):
        assert await cluster.claim_of(user.nick) == f"{node}\n{user.nick}", user.nick
    # So nobody can take them, on either node or on a node that starts now.
    c = await cluster.node("C")
    for node, nick in ((b, "a1"), (a, "B2"), (c, "a2"), (c, "b1")):
        third = await cluster.anonymous(node)
        error = await third.call({"type": "nick", "nick": nick}, "error")
        assert error.code == "nick_taken", (nick, error)  # type: ignore[attr-defined]
    await newbie.call({"type": "nick", "nick": "newbie"}, "welcome")
    await a1.call({"type": "msg", "nick": "b1", "text": "across again"}, "private")
    await b1.expect("private", nick="a1", text="across again")
    # Markers, then count: no duplicates, nobody announced as gone, one nickname each.
    await a1.say("#lobby", "end-A")
    await b1.say("#lobby", "end-B")
    ends = [("a1", "end-A"), ("b1", "end-B")]
    await asyncio.gather(*(u.until_messages(ends, mark[u.nick]) for u in users))
    for user in users:
        seen = user.events[mark[user.nick] :]
        for nick, text in after:
            assert count(seen, "message", nick=nick, text=text) == 1, (user.nick, text)
        quits = [e for e in user.events if e.type == "quit"]
        assert quits == [], (user.nick, quits)
    for user in users:  # one view everywhere, each nickname once
        await wait_who(user, "#lobby", ["a1", "a2", "b1", "b2", "newbie"])


async def test_a_node_back_late_gets_what_was_said_meanwhile(
    cluster: Cluster, spawn_server: SpawnServer
) -> None:
    """Redis restarts; node K stays away (SIGSTOP) while node B is back and b1 talks.

    When K is back it must fill the gap from the streams: kim gets every line of B's that
    Redis holds, once, in order, in a room where K had already had a line from B (#seen)
    and in one where it had not (#lobby).
    """
    b = await cluster.node("B")
    b1 = await cluster.user(b, "b1")
    k = await spawn_server(
        "--redis", cluster.redis.url, "--node-id", "K", "--redis-prefix", cluster.prefix
    )
    kim = await cluster.user(k.ports[0], "kim")
    for user in (b1, kim):
        await user.join("#seen")
    await settle([b1, kim], "#seen")
    await settle([b1, kim], "#lobby")
    await b1.say("#seen", "before")
    await kim.until_messages([("b1", "before")])

    cluster.redis.kill()
    for user in (b1, kim):
        await user.first(notice(DOWN_NOTICE), timeout=LINK_DOWN_WAIT)
    mark = len(kim.events)
    k.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.to_thread(cluster.redis.start)
        await b1.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
        # b1 talks until Redis holds three of its lines in each room (what B says while
        # its own link is down reaches only B, so Redis is the judge of what was said).
        deadline = time.monotonic() + 10
        n = 0
        while True:
            for room in ("#lobby", "#seen"):
                await b1.say(room, f"{room[1:]}-{n}")
            n += 1
            stored = [await cluster.stream(room) for room in ("#lobby", "#seen")]
            if all(len(lines) >= 3 for lines in stored):
                break
            assert time.monotonic() < deadline, f"B's lines do not reach Redis: {stored}"
            await asyncio.sleep(0.1)  # pacing b1, with a deadline
    finally:
        k.proc.send_signal(signal.SIGCONT)
    await kim.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
    await b1.say("#lobby", "lobby-end")
    await b1.say("#seen", "seen-end")
    await kim.until_messages([("b1", "lobby-end"), ("b1", "seen-end")], mark, timeout=10)
    report = {}
    for room in ("#seen", "#lobby"):
        stored = [text for nick, text in await cluster.stream(room) if nick == "b1"]
        got = [
            e.text
            for e in kim.events[mark:]
            if e.type == "message" and e.room == room and e.nick == "b1"
        ]
        report[room] = (got, stored)
    for room, (got, stored) in report.items():
        assert got == stored, f"kim in {room} got {got}, Redis has {stored}; all: {report}"


async def test_cluster_heals_after_an_outage_longer_than_dead_after(cluster: Cluster) -> None:
    """Redis paused for longer than dead_after and nick_ttl: every claim and presence has
    expired when it resumes. The nodes must re-claim, re-announce, and end up with one
    view of everyone, which stays."""
    a, b, c = [await cluster.node(n) for n in "ABC"]
    users = [await cluster.user(node, f"{node.config.node_id.lower()}1") for node in (a, b, c)]
    nicks = [u.nick for u in users]
    await settle(users, "#lobby")

    cluster.redis.pause()
    paused = time.monotonic()
    for user in users:
        await user.first(notice(DOWN_NOTICE), timeout=LINK_DOWN_WAIT)
    # How long the outage lasts is part of the scenario, not a synchronisation.
    await asyncio.sleep(max(0.0, paused + SETTINGS.nick_ttl + 0.5 - time.monotonic()))
    cluster.redis.resume()
    for user in users:
        await user.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
    # Converged, and still so after a few heartbeats and watchdog rounds.
    for user in users:
        await wait_who(user, "#lobby", nicks, timeout=2 * SETTINGS.dead_after)
    stable_until = time.monotonic() + 2 * SETTINGS.heartbeat + 0.5
    while time.monotonic() < stable_until:
        views = {u.nick: await u.who("#lobby") for u in users}
        assert all(list(v) == nicks for v in views.values()), f"views diverged: {views}"
        await asyncio.sleep(0.1)  # polling a steady state, with an end
    for sender in users:
        for target in users:
            if target is not sender:
                await sender.send({"type": "msg", "nick": target.nick, "text": "hi"})
                await target.expect("private", nick=sender.nick, text="hi")
    for user in users:
        assert await cluster.claim_of(user.nick) is not None, user.nick


async def test_node_back_from_a_long_outage_keeps_nodes_that_are_alive(
    spawn_server: SpawnServer, cluster: Cluster
) -> None:
    """Node A is cut off for longer than dead_after; node Y, cut off briefly, is back first.

    When A is back, Y's presence in Redis is fresh and Y has been quiet for about a second
    only (it is paused, as by a long garbage collection, while A reconnects): A must not
    announce Y's users as gone, and must keep seeing them.
    """
    args = ("--redis", cluster.redis.url, "--redis-prefix", cluster.prefix)
    a = await spawn_server(*args, "--node-id", "A")
    y = await spawn_server(*args, "--node-id", "Y")
    a1, yan = await cluster.user(a.ports[0], "a1"), await cluster.user(y.ports[0], "yan")
    await settle([a1, yan], "#lobby")

    cluster.redis.kill()
    killed = time.monotonic()
    for user in (a1, yan):
        await user.first(notice(DOWN_NOTICE), timeout=LINK_DOWN_WAIT)
    mark = len(a1.events)
    a.proc.send_signal(signal.SIGSTOP)  # A stays cut off
    y_paused = False
    try:
        await asyncio.to_thread(cluster.redis.start)
        await yan.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)  # Y is back first
        # A's outage lasts longer than dead_after: a duration of the scenario.
        await asyncio.sleep(max(0.0, killed + SETTINGS.dead_after + 0.5 - time.monotonic()))
        y.proc.send_signal(signal.SIGSTOP)
        y_paused = True
        a.proc.send_signal(signal.SIGCONT)
        await a1.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
        # Y is quiet for a good second while A settles back in: far less than dead_after.
        settled = time.monotonic() + SETTINGS.heartbeat + 0.5
        members = await a1.who("#lobby")
        while time.monotonic() < settled and members == ("a1", "yan"):
            await asyncio.sleep(0.1)  # polling a steady state, with an end
            members = await a1.who("#lobby")
    finally:
        a.proc.send_signal(signal.SIGCONT)
        if y_paused:
            y.proc.send_signal(signal.SIGCONT)
    gone = [(e.nick, e.text) for e in a1.events[mark:] if e.type == "quit"]
    assert (members, gone) == (("a1", "yan"), []), (
        f"a1's /who #lobby became {members} and a1 was told {gone}, though Y was quiet for "
        f"only about {SETTINGS.heartbeat + 0.5:g} s (dead_after is {SETTINGS.dead_after:g} s)"
    )
    await wait_who(a1, "#lobby", ["a1", "yan"])
    await a1.send({"type": "msg", "nick": "yan", "text": "still there?"})
    await yan.expect("private", nick="a1", text="still there?")


async def test_idle_connections_closed_by_redis_do_not_take_the_link_down(
    cluster: Cluster,
) -> None:
    """Redis (its ``timeout`` setting, a proxy, a failover) closes idle client connections.

    Redis itself is fine and every node's subscription stays up, so nobody should be told
    the cluster link is down, and nothing said meanwhile may be lost. The same happens to
    every node's pooled connections when Redis restarts.
    """
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, b1 = await cluster.user(a, "a1"), await cluster.user(b, "b1")
    users = [a1, b1]
    await settle(users, "#lobby")
    mark = {u.nick: len(u.events) for u in users}
    db = cluster.db()
    try:
        killed = await db.execute_command("CLIENT", "KILL", "TYPE", "normal")
    finally:
        await db.aclose()
    assert killed >= 2  # each node's idle pooled connection
    # A conversation across the nodes over a few heartbeats.
    lines = await converse(users, "#lobby", "chat", SETTINGS.heartbeat * 2.5)
    missing = {u.nick: await u.missing_messages(lines, mark[u.nick]) for u in users}
    downs = {
        u.nick: [e.text[:30] for e in u.events[mark[u.nick] :] if notice(DOWN_NOTICE)(e)]
        for u in users
    }
    assert (downs, missing) == ({"a1": [], "b1": []}, {"a1": [], "b1": []}), (
        f"link-down notices: {downs}; lines lost: {missing}"
    )


async def test_redis_paused_and_resumed(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, a2, b1 = (
        await cluster.user(a, "a1"),
        await cluster.user(a, "a2"),
        await cluster.user(b, "b1"),
    )
    users = [a1, a2, b1]
    await settle(users, "#lobby")
    person = await cluster.text_user(b, "person")  # what a person at a terminal reads
    await wait_who(a1, "#lobby", ["a1", "a2", "b1", "person"])

    cluster.redis.pause()  # SIGSTOP: connections stay open, nothing answers
    for user in users:
        await user.first(notice(DOWN_NOTICE), timeout=LINK_DOWN_WAIT)
    await person.expect(rf"^\*\*\* {DOWN_NOTICE}: until it is back you reach only", timeout=1)
    await a1.say("#lobby", "while-paused")
    await a2.until_messages([("a1", "while-paused")])
    error = await a1.call({"type": "msg", "nick": "b1", "text": "across"}, "error")
    assert error.code == "cluster_down"  # type: ignore[attr-defined]

    cluster.redis.resume()  # SIGCONT
    mark = {u.nick: len(u.events) for u in users}
    for user in users:
        await user.first(notice(BACK_NOTICE), timeout=LINK_BACK_WAIT)
    await person.expect(rf"^\*\*\* {BACK_NOTICE}: you reach every server again\.$", timeout=1)
    await a1.say("#lobby", "resumed-A")
    await b1.say("#lobby", "resumed-B")
    after = [("a1", "resumed-A"), ("b1", "resumed-B")]
    await asyncio.gather(*(u.until_messages(after, mark[u.nick]) for u in users))
    for user in users:
        await wait_who(user, "#lobby", ["a1", "a2", "b1", "person"])
    await b1.call({"type": "msg", "nick": "a2", "text": "pm after"}, "private")
    await a2.expect("private", nick="b1", text="pm after")
    await a1.say("#lobby", "end-A")
    await b1.say("#lobby", "end-B")
    ends = [("a1", "end-A"), ("b1", "end-B")]
    await asyncio.gather(*(u.until_messages(ends, mark[u.nick]) for u in users))
    for user in users:
        seen = user.events[mark[user.nick] :]
        assert count(seen, "message", nick="a1", text="resumed-A") == 1, user.nick
        assert count(seen, "message", nick="b1", text="resumed-B") == 1, user.nick
        assert count(user.events, "message", nick="a1", text="while-paused") <= 1
        assert [e for e in user.events if e.type == "quit"] == [], user.nick


async def test_node_shutdown_is_bounded_while_users_quit(cluster: Cluster) -> None:
    """``ChatServer.close()`` (what SIGINT runs) ends in bounded time with users connected.

    Closing says goodbye to every session, whose quits the node publishes to Redis; the
    backend is closed right after, while its publish loop may still be talking to Redis.
    A few fresh nodes, so that the close lands at different moments.
    """
    grace = 1.0
    for attempt in range(5):
        node = await cluster.node(f"S{attempt}", shutdown_grace=grace)
        for k in range(3):
            await cluster.user(node, f"s{attempt}u{k}")
        started = time.monotonic()
        finished = await close_node(node, timeout=grace + SETTINGS.command_timeout + 2)
        assert finished, (
            f"attempt {attempt}: close() still running after {time.monotonic() - started:.1f} s "
            "(RedisBackend.close waits forever for its publish loop)"
        )


# --- what a node keeps about rooms and other nodes ----------------------------------------


def footprint(node: ChatServer) -> dict[str, int]:
    assert node.cluster is not None
    return node.cluster.footprint()


async def wait_footprint(
    node: ChatServer, wanted: dict[str, int], keys: Iterable[str] | None = None
) -> None:
    """Poll until ``node``'s footprint (on ``keys``) is ``wanted``: rooms emptied by other
    nodes are swept at the next heartbeat."""
    names = list(wanted if keys is None else keys)
    deadline = asyncio.get_running_loop().time() + 3 * SETTINGS.heartbeat + 2
    while True:
        got = {k: footprint(node)[k] for k in names}
        if got == {k: wanted[k] for k in names}:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{node.config.node_id} keeps {got}, expected {wanted}")
        await asyncio.sleep(0.05)


async def test_rooms_that_come_and_go_leave_nothing_behind(cluster: Cluster) -> None:
    """A slow leak (issue 10.12): what a node keeps per room (the newest stream id, the
    last event numbers) goes with the room, however the room emptied: its last member
    local or remote, parting before or after the other node's."""
    a, b = await cluster.node("A"), await cluster.node("B")
    a1, b1 = await cluster.user(a, "a1"), await cluster.user(b, "b1")
    await settle([a1, b1], "#lobby")
    await a1.say("#lobby", "warm-up")
    await b1.say("#lobby", "warm-up")
    await a1.until_messages([("b1", "warm-up")])
    await b1.until_messages([("a1", "warm-up")])
    baseline = {node.config.node_id: footprint(node) for node in (a, b)}
    rooms_before = {node.config.node_id: sorted(node.hub.room_names()) for node in (a, b)}
    peak = 0
    for i in range(60):
        room = f"#leak{i}"
        both = i % 2 == 1
        await a1.join(room)
        if both:
            await b1.join(room)
            await wait_who(a1, room, ["a1", "b1"])
        await a1.say(room, f"a-{i}")
        if both:
            await b1.say(room, f"b-{i}")
            await b1.until_messages([("a1", f"a-{i}")])
            await a1.until_messages([("b1", f"b-{i}")])
            peak = max(peak, footprint(b)["ledger.stream_ids"])
        leavers = [a1, b1] if i % 4 == 1 else [b1, a1] if both else [a1]
        for leaver in leavers:
            await leaver.call({"type": "part", "room": room}, "part", nick=leaver.nick)
    assert peak > baseline["B"]["ledger.stream_ids"], "the test saw no per-room bookkeeping"
    for node in (a, b):
        await wait_footprint(node, baseline[node.config.node_id])
        assert sorted(node.hub.room_names()) == rooms_before[node.config.node_id]


async def test_a_node_declared_gone_leaves_nothing_behind(
    cluster: Cluster, spawn_server: SpawnServer
) -> None:
    """Everything a node keeps about another node (when it was last heard, its users, the
    numbers of its events, users found through its claims) goes when it is declared gone."""
    a = await cluster.node("A")
    a1 = await cluster.user(a, "a1")
    baseline = footprint(a)
    k = await spawn_server(
        "--redis", cluster.redis.url, "--node-id", "K", "--redis-prefix", cluster.prefix
    )
    kim = await cluster.user(k.ports[0], "kim")
    await kim.join("#k")
    await a1.join("#k")
    await settle([a1, kim], "#k")
    await kim.say("#k", "from K")
    await a1.until_messages([("kim", "from K")])
    await kim.send({"type": "msg", "nick": "a1", "text": "psst"})
    await a1.expect("private", nick="kim", text="psst")
    during = footprint(a)
    assert during["directory.users"] == 1
    assert during["ledger.nodes"] == during["last_seen"] == 1

    k.kill_group()  # no quit, no goodbye
    await a1.expect("quit", timeout=SETTINGS.dead_after + 4, nick="kim")
    # The room #k is still there (a1 is in it), and so is its newest stream id.
    per_node = [key for key in baseline if key != "ledger.stream_ids"]
    await wait_footprint(a, baseline, per_node)
    await a1.call({"type": "part", "room": "#k"}, "part", nick="a1")
    await wait_footprint(a, baseline)


# --- chat-server --workers ----------------------------------------------------------------


def test_workers_without_redis_is_refused() -> None:
    result = subprocess.run(
        [*CHAT_SERVER, "--workers", "2", "--port", "0", "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode != 0
    assert "--workers above 1 needs --redis" in result.stderr, result.stderr
    assert "listening" not in result.stderr


def test_abbreviated_options_are_refused() -> None:
    """``--work 3`` once reached every child unchanged, and each child started three more."""
    result = subprocess.run(
        [*CHAT_SERVER, "--work", "2", "--redis", "redis://127.0.0.1:1/0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --work 2" in result.stderr, result.stderr


def test_redis_without_redis_py_says_what_to_install() -> None:
    """A single-process install has no redis-py: --redis says exactly what is missing."""
    hide_redis = (
        "import sys; sys.modules['redis'] = None; from chat.cli import server_main; "
        "sys.exit(server_main(['--redis', 'redis://127.0.0.1:1/0', '--port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_redis],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "pip install 'chat[cluster]'" in result.stderr, result.stderr


async def test_workers_share_one_port_and_one_chat(
    cluster: Cluster, spawn_server: SpawnServer
) -> None:
    parent = await spawn_server(
        "--workers",
        "2",
        "--redis",
        cluster.redis.url,
        "--redis-prefix",
        cluster.prefix,
        "--node-id",
        "wk",
        "--rate",
        "0",
        "--max-per-ip",
        "0",
        listeners=2,
    )
    assert parent.ports[0] == parent.ports[1] != 0
    port = parent.ports[0]
    # Connect until both workers have users (the kernel spreads connections over them).
    users: list[User] = []
    node_of: dict[str, str] = {}
    while len(users) < 4 or len(set(node_of.values())) < 2:
        assert len(users) < 40, f"every connection landed on one worker: {node_of}"
        user = await cluster.user(port, f"w{len(users)}")
        users.append(user)
        claim = await cluster.claim_of(user.nick)
        assert claim is not None
        node_of[user.nick] = claim.partition("\n")[0]
    assert set(node_of.values()) == {"wk-w0", "wk-w1"}
    await settle(users, "#lobby")
    for user in users:
        await user.say("#lobby", f"hi from {user.nick}")
    greetings = [(u.nick, f"hi from {u.nick}") for u in users]
    await asyncio.gather(*(u.until_messages(greetings, timeout=10) for u in users))
    for user in users:
        await user.say("#lobby", f"bye from {user.nick}")
    byes = [(u.nick, f"bye from {u.nick}") for u in users]
    await asyncio.gather(*(u.until_messages(byes, timeout=10) for u in users))
    for user in users:
        for nick, text in greetings:
            assert count(user.events, "message", nick=nick, text=text) == 1, (user.nick, nick)
    # A private message between the two workers.
    x = next(u for u in users if node_of[u.nick] == "wk-w0")
    y = next(u for u in users if node_of[u.nick] == "wk-w1")
    await x.send({"type": "msg", "nick": y.nick, "text": "across workers"})
    await y.expect("private", nick=x.nick, text="across workers")

    parent.proc.send_signal(signal.SIGINT)
    for user in users:
        tail = await user.closed(timeout=10)
        assert [(e.type, getattr(e, "code", None)) for e in tail][-1:] == [
            ("bye", "server_shutdown")
        ], (user.nick, tail)
    assert await parent.wait(15) == 0, parent.log
    assert sum("stopped" in line for line in parent.log) == 2, parent.log


# --- accounts and moderation across nodes -------------------------------------------------

PASSWORD = "correct-horse-1"


async def request(user: User, command: dict[str, Any]) -> Event:
    """Send ``command`` with a request id; the first event answering it (maybe an error)."""
    rid = f"r{len(user.events)}-{uuid.uuid4().hex[:6]}"
    await user.send({**command, "id": rid})
    return await user.first(answer_to(rid))


async def ok(user: User, command: dict[str, Any]) -> Event:
    """:func:`request`, which must not be refused."""
    event = await request(user, command)
    assert event.type != "error", event
    return event


async def shared(users: Iterable[User], room: str) -> None:
    """Every user joins ``room``, and every node sees all of them there."""
    users = list(users)
    for user in users:
        await user.join(room)
    await settle(users, room)


async def test_a_ban_on_one_node_keeps_a_user_of_another_out(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await alice.join("#mod")  # the creator operates it
    await ok(alice, {"type": "ban", "room": "#mod", "mask": "bob", "reason": "spam"})
    refused = await request(bob, {"type": "join", "room": "#mod"})
    assert refused.type == "error", refused
    assert refused.code == "banned", refused  # type: ignore[attr-defined]
    # In the room while banned on the other node: kicked out, and kept out.
    carol = await cluster.user(b, "carol")
    await shared([alice, carol], "#mod2")
    await ok(alice, {"type": "ban", "room": "#mod2", "mask": "carol"})
    await carol.expect("kick", room="#mod2", target="carol")
    await wait_who(alice, "#mod2", ["alice"])
    again = await request(carol, {"type": "join", "room": "#mod2"})
    assert again.code == "banned", again  # type: ignore[attr-defined]


async def test_an_operator_given_on_one_node_shows_on_another(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await shared([alice, bob], "#ops")
    await ok(alice, {"type": "op", "room": "#ops", "nick": "bob"})
    await bob.expect("mode", room="#ops", change="+o", target="bob")
    who = await ok(bob, {"type": "who", "room": "#ops"})
    assert who.operators == ("alice", "bob"), who  # type: ignore[attr-defined]
    # bob operates #ops on his own node now: he can set its modes.
    await ok(bob, {"type": "mode", "room": "#ops", "change": "+m"})
    await alice.expect("mode", room="#ops", change="+m", nick="bob")
    await ok(alice, {"type": "deop", "room": "#ops", "nick": "bob"})
    await bob.expect("mode", room="#ops", change="-o", target="bob")
    refused = await request(bob, {"type": "mode", "room": "#ops", "change": "-m"})
    assert refused.code == "not_operator", refused  # type: ignore[attr-defined]
    await ok(bob, {"type": "part", "room": "#ops"})
    await ok(bob, {"type": "join", "room": "#ops"})
    who = await ok(alice, {"type": "who", "room": "#ops"})
    assert who.operators == ("alice",), who  # type: ignore[attr-defined]


async def test_a_kick_on_one_node_removes_a_user_of_another(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice = await cluster.user(a, "alice")
    bob, carol = await cluster.user(b, "bob"), await cluster.user(b, "carol")
    await shared([alice, bob, carol], "#k")
    await ok(alice, {"type": "kick", "room": "#k", "nick": "bob", "reason": "out"})
    await bob.expect("kick", room="#k", nick="alice", target="bob", text="out")
    await carol.expect("kick", room="#k", target="bob")
    for user in (alice, carol):
        await wait_who(user, "#k", ["alice", "carol"])
    mark = len(bob.events)
    await alice.say("#k", "after the kick")
    await carol.until_messages([("alice", "after the kick")])
    # bob hears nothing more of #k (a marker in the lobby, sent after, proves it).
    await alice.say("#lobby", "marker")
    await bob.until_messages([("alice", "marker")], mark)
    assert [e for e in bob.events[mark:] if e.room == "#k"] == []
    refused = await request(bob, {"type": "say", "room": "#k", "text": "still here?"})
    assert refused.code == "not_in_room", refused  # type: ignore[attr-defined]
    # bob may come back (he was kicked, not banned), and every node counts his join.
    await bob.join("#k")
    for user in (alice, bob, carol):
        await wait_who(user, "#k", ["alice", "bob", "carol"])


async def test_a_server_operator_kills_a_user_of_another_node(cluster: Cluster) -> None:
    a = await cluster.node("A", admins=("alice",))
    b = await cluster.node("B", admins=("alice",))
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await ok(alice, {"type": "register", "password": PASSWORD})
    await ok(alice, {"type": "login", "nick": "alice", "password": PASSWORD})
    await wait_who(alice, "#lobby", ["alice", "bob"])
    await ok(alice, {"type": "kill", "nick": "bob", "reason": "enough"})
    closing = await bob.closed()
    byes = [e for e in closing if e.type == "bye"]
    assert len(byes) == 1, closing
    assert byes[0].code == "killed", byes  # type: ignore[attr-defined]
    assert "enough" in byes[0].text
    await alice.expect("quit", nick="bob")
    await wait_who(alice, "#lobby", ["alice"])


async def test_an_account_registered_on_one_node_logs_in_on_another(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice = await cluster.user(a, "alice")
    await ok(alice, {"type": "register", "password": PASSWORD})
    await alice.close()
    cluster.clients.remove(alice)
    # With the login command...
    again = await cluster.anonymous(b)
    await again.send({"type": "login", "nick": "alice", "password": PASSWORD})
    welcome = await again.expect("welcome")
    assert welcome.account == "alice", welcome  # type: ignore[attr-defined]
    # ...the account's nickname without its password is refused on either node...
    for node in (a, b):
        guest = await cluster.anonymous(node)
        refused = await request(guest, {"type": "nick", "nick": "ALICE"})
        assert refused.type == "error", refused
        assert refused.code in ("nick_registered", "nick_taken"), refused  # type: ignore[attr-defined]
    # ...and a wrong password is refused on the node that did not create the account.
    await again.close()
    cluster.clients.remove(again)
    wrong = await cluster.anonymous(b)
    refused = await request(wrong, {"type": "login", "nick": "alice", "password": "wrong-one-1"})
    assert refused.code == "wrong_password", refused  # type: ignore[attr-defined]


async def test_a_claimed_rooms_modes_hold_on_another_node(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await ok(alice, {"type": "register", "password": PASSWORD})
    await alice.join("#club")
    await ok(alice, {"type": "claim", "room": "#club"})
    await ok(alice, {"type": "mode", "room": "#club", "change": "+m"})
    # A node that hears of it live...
    await bob.join("#club")
    await settle([alice, bob], "#club")
    modes = await ok(bob, {"type": "mode", "room": "#club"})
    assert modes.modes == "mt", modes  # type: ignore[attr-defined]
    assert modes.owner == "alice", modes  # type: ignore[attr-defined]
    refused = await request(bob, {"type": "say", "room": "#club", "text": "hi"})
    assert refused.code == "moderated", refused  # type: ignore[attr-defined]
    refused = await request(bob, {"type": "topic", "room": "#club", "text": "mine"})
    assert refused.code == "not_operator", refused  # type: ignore[attr-defined]
    # ...and one that starts later, while the room is empty, both keep them.
    await ok(bob, {"type": "part", "room": "#club"})
    await ok(alice, {"type": "part", "room": "#club"})
    c = await cluster.node("C")
    carol = await cluster.user(c, "carol")
    await carol.join("#club")
    refused = await request(carol, {"type": "say", "room": "#club", "text": "hi"})
    assert refused.code == "moderated", refused  # type: ignore[attr-defined]
    await bob.join("#club")
    refused = await request(bob, {"type": "say", "room": "#club", "text": "hi"})
    assert refused.code == "moderated", refused  # type: ignore[attr-defined]
    who = await ok(carol, {"type": "who", "room": "#club"})
    assert who.operators == (), who  # type: ignore[attr-defined]


async def test_history_outlives_an_empty_room(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await alice.join("#gone")
    await alice.say("#gone", "remember me")
    await alice.until_messages([("alice", "remember me")])
    await ok(alice, {"type": "part", "room": "#gone"})
    await wait_who(bob, "#gone", [])
    assert await cluster.stream("#gone") == [("alice", "remember me")]
    await bob.join("#gone")
    await bob.expect("message", text="remember me", history=True)


async def test_a_mute_on_one_node_silences_a_user_of_another(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await shared([alice, bob], "#quiet")
    await ok(alice, {"type": "mute", "room": "#quiet", "nick": "bob"})
    await bob.expect("mode", room="#quiet", change="+q")
    refused = await request(bob, {"type": "say", "room": "#quiet", "text": "can you hear me"})
    assert refused.code == "muted", refused  # type: ignore[attr-defined]
    await ok(alice, {"type": "unmute", "room": "#quiet", "nick": "bob"})
    await bob.expect("mode", room="#quiet", change="-q")
    await bob.say("#quiet", "now?")  # a line is not answered: alice gets it
    await alice.until_messages([("bob", "now?")])
    assert "can you hear me" not in said(alice.events, "bob", "#quiet")


async def test_whois_of_a_user_of_another_node_comes_from_their_node(cluster: Cluster) -> None:
    a = await cluster.node("A", admins=("alice",))
    b = await cluster.node("B", admins=("alice",))
    alice, carol = await cluster.user(a, "alice"), await cluster.user(a, "carol")
    bob = await cluster.user(b, "bob")
    await ok(alice, {"type": "register", "password": PASSWORD})
    await ok(alice, {"type": "login", "nick": "alice", "password": PASSWORD})
    await ok(bob, {"type": "register", "password": PASSWORD})
    await ok(bob, {"type": "away", "text": "lunch"})
    await shared([bob, carol], "#both")
    await bob.join("#secret")
    await ok(bob, {"type": "mode", "room": "#secret", "change": "+i"})

    whois = await ok(carol, {"type": "whois", "nick": "BOB"})
    assert whois.type == "whois", whois
    assert (whois.nick, whois.account, whois.away) == ("bob", "bob", "lunch"), whois  # type: ignore[attr-defined]
    assert whois.since > 0, whois  # type: ignore[attr-defined]
    assert whois.idle >= 0, whois  # type: ignore[attr-defined]
    assert "#both" in whois.rooms, whois  # type: ignore[attr-defined]
    assert "#secret" not in whois.rooms, whois  # type: ignore[attr-defined]
    assert whois.address is None, whois  # type: ignore[attr-defined]
    # A server operator of any node sees the address, and the invite-only room.
    seen = await ok(alice, {"type": "whois", "nick": "bob"})
    assert seen.address == "127.0.0.1", seen  # type: ignore[attr-defined]
    assert "#secret" in seen.rooms, seen  # type: ignore[attr-defined]


async def test_an_away_user_of_another_node_is_announced_once_to_a_sender(
    cluster: Cluster,
) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    await ok(bob, {"type": "away", "text": "lunch"})
    await ok(alice, {"type": "msg", "nick": "bob", "text": "one"})
    away = await alice.expect("away", nick="bob")
    assert away.text == "lunch"
    await bob.expect("private", nick="alice", text="one")
    mark = len(alice.events)
    await ok(alice, {"type": "msg", "nick": "bob", "text": "two"})
    await bob.expect("private", nick="alice", text="two")
    # bob's node answers in order: his reply comes after any second away notice would have.
    await ok(bob, {"type": "msg", "nick": "alice", "text": "back soon"})
    await alice.expect("private", nick="bob", text="back soon")
    assert count(alice.events[mark:], "away") == 0


async def test_ignoring_a_user_of_another_node(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, carol = await cluster.user(a, "alice"), await cluster.user(a, "carol")
    bob = await cluster.user(b, "bob")
    await shared([alice, bob, carol], "#ig")
    await ok(bob, {"type": "ignore", "nick": "alice"})
    mark = len(bob.events)
    await alice.say("#ig", "in the room")
    await ok(alice, {"type": "msg", "nick": "bob", "text": "in private"})
    # carol's lines follow alice's on the same channels: once they are in, alice's would be.
    await carol.say("#ig", "room marker")
    await ok(carol, {"type": "msg", "nick": "bob", "text": "private marker"})
    await bob.until_messages([("carol", "room marker")], mark)
    await bob.expect("private", nick="carol", text="private marker")
    assert [e for e in bob.events[mark:] if e.nick == "alice"] == []
    await ok(bob, {"type": "unignore", "nick": "alice"})
    await ok(alice, {"type": "msg", "nick": "bob", "text": "again"})
    await bob.expect("private", nick="alice", text="again")


async def test_an_invite_reaches_a_node_that_does_not_have_the_room(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    alice, bob = await cluster.user(a, "alice"), await cluster.user(b, "bob")
    carol = await cluster.user(b, "carol")
    await alice.join("#secret")
    await ok(alice, {"type": "mode", "room": "#secret", "change": "+i"})
    await ok(alice, {"type": "invite", "room": "#secret", "nick": "bob"})
    await bob.expect("invite", room="#secret", nick="alice", target="bob")
    await bob.join("#secret")
    await wait_who(alice, "#secret", ["alice", "bob"])
    # The invite was bob's, and one join used it up.
    refused = await request(carol, {"type": "join", "room": "#secret"})
    assert refused.code == "invite_only", refused  # type: ignore[attr-defined]
    await ok(bob, {"type": "part", "room": "#secret"})
    refused = await request(bob, {"type": "join", "room": "#secret"})
    assert refused.code == "invite_only", refused  # type: ignore[attr-defined]


async def test_logging_in_on_another_node_takes_the_nickname_over(cluster: Cluster) -> None:
    a, b = await cluster.node("A"), await cluster.node("B")
    old, carol = await cluster.user(a, "bob"), await cluster.user(b, "carol")
    await ok(old, {"type": "register", "password": PASSWORD})
    await wait_who(carol, "#lobby", ["bob", "carol"])
    # With hello and the password: the stale connection on A goes, the login on B is welcomed.
    new = await cluster.anonymous(b)
    await new.send({"type": "hello", "nick": "bob", "password": PASSWORD})
    welcome = await new.expect("welcome")
    assert (welcome.nick, welcome.account) == ("bob", "bob"), welcome  # type: ignore[attr-defined]
    byes = [e for e in await old.closed() if e.type == "bye"]
    assert [bye.code for bye in byes] == ["ghosted"], byes  # type: ignore[attr-defined]
    quit_ = await carol.expect("quit", nick="bob")
    assert quit_.text == "Logged in from another connection", quit_
    await carol.expect("join", room="#lobby", nick="bob")  # the quit came first
    await wait_who(carol, "#lobby", ["bob", "carol"])
    # With /login from a guest, back on A.
    guest = await cluster.user(a, "guest1")
    await ok(guest, {"type": "login", "nick": "bob", "password": PASSWORD})
    byes = [e for e in await new.closed() if e.type == "bye"]
    assert [bye.code for bye in byes] == ["ghosted"], byes  # type: ignore[attr-defined]
    await carol.expect("nick", nick="guest1", new_nick="bob")
    await wait_who(carol, "#lobby", ["bob", "carol"])
    # A wrong password ghosts nobody.
    wrong = await cluster.anonymous(b)
    await wrong.send({"type": "hello", "nick": "bob", "password": "wrong-one-1"})
    refused = await wrong.expect("error")
    assert refused.code == "wrong_password", refused  # type: ignore[attr-defined]
    await ok(guest, {"type": "whois", "nick": "bob"})
