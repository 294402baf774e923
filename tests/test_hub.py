"""The hub alone: fake peers that record what they are pushed; no sockets, no server.

Every test drives :class:`chat.hub.Hub` directly and reads what each fake peer received,
decoded back into typed events with :func:`chat.protocol.parse_event`. The hub delivers
through its :class:`~chat.hub.Outbox`, which delivers once per event-loop iteration; the
tests call :func:`flush` (through :meth:`User.take`) where a server would reach the next
iteration, so whatever a test does between two takes happens within one iteration. The
hub's store is the default :class:`~chat.storage.MemoryStore`, never dirty, so nothing
waits for a commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import pytest

from chat import hub as hub_module
from chat.codecs import JSON, TEXT, Codec
from chat.commands import (
    Command,
    JoinCommand,
    MeCommand,
    MsgCommand,
    NickCommand,
    PartCommand,
    Request,
    RoomsCommand,
    SayCommand,
    TopicCommand,
    WhoCommand,
)
from chat.errors import ErrorCode, ProtocolError
from chat.hub import Hub, LocalBackend, Member, Outbox
from chat.protocol import (
    LOBBY,
    TOPIC_MAX,
    Action,
    Error,
    Event,
    Join,
    Message,
    Nick,
    Notice,
    Part,
    Private,
    Quit,
    RoomList,
    Topic,
    Who,
    Whois,
    parse_event,
)
from chat.storage import Committed, MemoryStore

# --- fakes and helpers ----------------------------------------------------------------------


class FakePeer:
    """A connection as the hub sees it: a codec, and a ``push`` that records the bytes."""

    def __init__(self, codec: Codec = JSON) -> None:
        self.codec = codec
        self.address = "127.0.0.1"
        self.busy = False  # set to play a client that is falling behind
        self.pushes: list[bytes] = []
        self.closed: list[tuple[ErrorCode, str]] = []
        self._taken = 0

    def push(self, data: bytes) -> None:
        self.pushes.append(data)

    def close(self, code: ErrorCode, text: str) -> None:
        self.closed.append((code, text))

    def drain(self) -> list[bytes]:
        """The pushes received since the last drain (no flushing: what has arrived)."""
        new, self._taken = self.pushes[self._taken :], len(self.pushes)
        return new


def decode(pushes: Sequence[bytes]) -> list[Event]:
    """JSON-dialect pushes as typed events, one per line."""
    return [parse_event(line) for line in b"".join(pushes).splitlines()]


@dataclass(eq=False)
class User:
    """A registered member and its fake peer."""

    hub: Hub
    member: Member
    peer: FakePeer

    def take(self) -> list[Event]:
        """Flush the hub's outbox; the events this user received since the last take."""
        return decode(self.take_pushes())

    def take_pushes(self) -> list[bytes]:
        """Flush the hub's outbox; the pushes this user received since the last take."""
        flush(self.hub)
        return self.peer.drain()

    async def do(self, command: Command, request: str | None = None) -> None:
        await self.hub.execute(self.member, Request(command, request))


async def connect(
    hub: Hub, nick: str, *rooms: str, codec: Codec = JSON, lobby: bool = True
) -> User:
    """Register ``nick``, join ``rooms`` (and part the lobby unless ``lobby``), then
    :func:`settle`: no one has anything left to read."""
    peer = FakePeer(codec)
    user = User(hub, await hub.register(peer, nick), peer)
    for room in rooms:
        await hub.join(user.member, room)
    if not lobby:
        hub.part(user.member, LOBBY, "")
    settle(hub)
    return user


def flush(hub: Hub) -> None:
    """Deliver everything pending, as the next loop iteration does."""
    hub.outbox.flush()


def settle(hub: Hub) -> None:
    """Flush the outbox and forget what every member has received so far."""
    flush(hub)
    for member in hub.members:
        assert isinstance(member.peer, FakePeer)
        member.peer.drain()


def line(event: Event) -> str:
    """An event as people read it, with a replay marked ``(history)`` instead of its date."""
    if isinstance(event, Message | Action) and event.history:
        return "(history) " + replace(event, history=False).as_text()
    return event.as_text()


def replayed(event: Event) -> Message | Action:
    """A live room message as a joiner's history replay shows it: same id, same ts."""
    assert isinstance(event, Message | Action)
    assert not event.history
    return replace(event, history=True)


def lines(events: Sequence[Event]) -> list[str]:
    return [line(event) for event in events]


def replies(events: Sequence[Event]) -> list[tuple[str, str | None]]:
    """Each event's type and the request it answers."""
    return [(event.type, event.re) for event in events]


def who(user: User, room: str | None = None) -> tuple[str, ...]:
    """The member list ``user`` is given for ``room`` (the active room if None)."""
    user.hub.who(user.member, room)
    [answer] = user.take()
    assert isinstance(answer, Who)
    return answer.members


def listing(user: User) -> dict[str, tuple[int, str]]:
    """``/rooms`` as ``user`` sees it: room -> (population, topic)."""
    user.hub.rooms(user.member)
    [answer] = user.take()
    assert isinstance(answer, RoomList)
    return {info.room: (info.members, info.topic) for info in answer.rooms}


async def refused(user: User, command: Command) -> ErrorCode:
    """The code ``command`` is refused with."""
    with pytest.raises(ProtocolError) as caught:
        await user.do(command)
    return caught.value.code


@dataclass
class CountingCodec:
    """A codec that counts the events it renders, to show rendering happens once per key."""

    inner: Codec
    encoded: int = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def key(self) -> Hashable:
        return self.inner.key

    @property
    def echoes(self) -> bool:
        return self.inner.echoes

    @property
    def away_notify(self) -> bool:
        return self.inner.away_notify

    def encode(self, event: Event) -> bytes:
        self.encoded += 1
        return self.inner.encode(event)

    def encode_one(self, event: Event) -> bytes:
        self.encoded += 1
        return self.inner.encode_one(event)


class RecordingBackend(LocalBackend):
    """A single-process backend that records what it would tell the cluster."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.forgotten: list[str] = []

    def publish(self, event: Event) -> None:
        self.published.append(event)

    def forget_room(self, name: str) -> None:
        self.forgotten.append(name)


@pytest.fixture
def hub() -> Hub:
    return Hub()


# --- registration and nicknames -------------------------------------------------------------


@pytest.mark.parametrize("request_id", [None, "r1"])
async def test_register_welcomes_joins_the_lobby_and_lists_who(
    hub: Hub, request_id: str | None
) -> None:
    bob = await connect(hub, "bob")
    peer = FakePeer()
    alice = User(hub, await hub.register(peer, "alice", request_id), peer)

    events = alice.take()
    assert lines(events) == [
        "*** Welcome, alice! Type /help for the commands.",
        "[#lobby] *** alice joined #lobby",
        "[#lobby] *** 2 in #lobby: alice, bob",
    ]
    assert events[0].nick == "alice"
    assert replies(events) == [("welcome", request_id), ("join", None), ("who", None)]
    assert lines(bob.take()) == ["[#lobby] *** alice joined #lobby"]
    assert hub.find("ALICE") is alice.member


NICK_REFUSALS = [
    pytest.param("ALICE", ErrorCode.NICK_TAKEN, id="taken"),
    pytest.param("al1ce", ErrorCode.NICK_CONFUSABLE, id="confusable"),
    pytest.param("AIice", ErrorCode.NICK_CONFUSABLE, id="confusable-capital-i"),
    pytest.param("admin", ErrorCode.NICK_RESERVED, id="reserved"),
    pytest.param("R00t", ErrorCode.NICK_RESERVED, id="reserved-lookalike"),
    pytest.param("9lives", ErrorCode.NICK_INVALID, id="invalid-start"),
    pytest.param("bad nick", ErrorCode.NICK_INVALID, id="invalid-char"),
    pytest.param("x" * 17, ErrorCode.NICK_INVALID, id="invalid-long"),
    pytest.param("  ", ErrorCode.NICK_INVALID, id="invalid-empty"),
]


@pytest.mark.parametrize(("nick", "code"), NICK_REFUSALS)
async def test_register_refusal_leaves_the_registry_unchanged(
    hub: Hub, nick: str, code: ErrorCode
) -> None:
    alice = await connect(hub, "alice")
    peer = FakePeer()

    with pytest.raises(ProtocolError) as caught:
        await hub.register(peer, nick)

    assert caught.value.code is code
    assert hub.members == [alice.member]
    assert alice.take() == []  # no join announced
    assert peer.pushes == []
    assert who(alice, LOBBY) == ("alice",)


@pytest.mark.parametrize(("nick", "code"), NICK_REFUSALS)
async def test_rename_refusal_leaves_the_registry_unchanged(
    hub: Hub, nick: str, code: ErrorCode
) -> None:
    await connect(hub, "alice")
    bob = await connect(hub, "bob")

    assert await refused(bob, NickCommand(nick)) is code

    assert [m.nick for m in hub.members] == ["alice", "bob"]
    assert hub.find("bob") is bob.member
    assert bob.take() == []


@pytest.mark.parametrize("new", ["ALICE", "al1ce"])
async def test_rename_to_a_variant_of_ones_own_nick_is_allowed(hub: Hub, new: str) -> None:
    alice = await connect(hub, "alice")
    bob = await connect(hub, "bob")

    await alice.do(NickCommand(new))

    assert lines(alice.take()) == [f"*** alice is now known as {new}"]
    assert lines(bob.take()) == [f"*** alice is now known as {new}"]
    assert hub.find(new) is alice.member
    assert who(bob, LOBBY) == (new, "bob")


# --- request ids ----------------------------------------------------------------------------

# Each command from alice (in #lobby and #a, active #a) with request id "q1": what alice
# receives, and what bob (in #lobby, #a and #b) receives, as (type, re).
REQUESTS = [
    pytest.param(JoinCommand("#b"), [("join", "q1"), ("who", None)], [("join", None)], id="join"),
    pytest.param(JoinCommand("#a"), [("notice", "q1")], [], id="join-joined"),
    pytest.param(
        PartCommand("#a"), [("part", "q1"), ("notice", "q1")], [("part", None)], id="part"
    ),
    pytest.param(WhoCommand(), [("who", "q1")], [], id="who"),
    pytest.param(WhoCommand("#b"), [("who", "q1")], [], id="who-elsewhere"),
    pytest.param(RoomsCommand(), [("rooms", "q1")], [], id="rooms"),
    pytest.param(TopicCommand(), [("topic", "q1")], [], id="topic-get"),
    pytest.param(TopicCommand(text="news"), [("topic", "q1")], [("topic", None)], id="topic-set"),
    pytest.param(TopicCommand(text=""), [("topic", "q1")], [("topic", None)], id="topic-clear"),
    pytest.param(NickCommand("alicia"), [("nick", "q1")], [("nick", None)], id="nick"),
    pytest.param(NickCommand("alice"), [("notice", "q1")], [], id="nick-unchanged"),
    pytest.param(MsgCommand("bob", "psst"), [("private", "q1")], [("private", None)], id="msg"),
    pytest.param(SayCommand("hi"), [("message", None)], [("message", None)], id="say"),
    pytest.param(MeCommand("waves"), [("action", None)], [("action", None)], id="me"),
]


@pytest.mark.parametrize(("command", "asker", "other"), REQUESTS)
async def test_answers_carry_the_request_id_and_nobody_elses_copy_does(
    hub: Hub,
    command: Command,
    asker: list[tuple[str, str | None]],
    other: list[tuple[str, str | None]],
) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a", "#b")
    hub.topic(bob.member, "#a", "old news")
    settle(hub)

    await alice.do(command, "q1")

    answers, seen = alice.take(), bob.take()
    assert replies(answers) == asker
    assert replies(seen) == other
    if seen:  # the same event, not a second one
        assert seen[0].id == answers[0].id


async def test_topic_shows_sets_and_clears(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")

    await alice.do(TopicCommand())
    [shown] = alice.take()
    assert isinstance(shown, Topic)
    assert (shown.nick, line(shown)) == (None, "[#a] *** No topic is set")

    await alice.do(TopicCommand(text="  news  "))
    assert lines(bob.take()) == ["[#a] *** alice set the topic: news"]
    assert lines(alice.take()) == ["[#a] *** alice set the topic: news"]
    assert listing(bob)["#a"] == (2, "news")
    await bob.do(TopicCommand("#a"))
    assert lines(bob.take()) == ["[#a] *** Topic: news"]

    await alice.do(TopicCommand(text=""))
    [cleared] = bob.take()
    assert isinstance(cleared, Topic)
    assert (cleared.nick, cleared.text) == ("alice", "")
    assert listing(bob)["#a"] == (2, "")


async def test_a_joiner_gets_join_topic_who_then_history(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    hub.topic(alice.member, None, "cats")
    hub.say(alice.member, None, "meow")
    bob = await connect(hub, "bob")

    await hub.join(bob.member, "#a")

    assert lines(bob.take()) == [
        "[#a] *** bob joined #a",
        "[#a] *** Topic: cats",
        "[#a] *** 2 in #a: @alice, bob",  # alice came to the empty room first: its operator
        "(history) [#a] <alice> meow",
    ]


# --- order: the point of the Outbox ---------------------------------------------------------


async def test_a_joiner_receives_exactly_what_is_said_after_its_join(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    carol = await connect(hub, "carol", "#a")
    bob = await connect(hub, "bob")

    hub.say(alice.member, "#a", "before")
    await hub.join(bob.member, "#a")
    hub.say(alice.member, "#a", "after")

    assert lines(bob.take()) == [
        "[#a] *** bob joined #a",
        "[#a] *** 3 in #a: @alice, bob, carol",
        "(history) [#a] <alice> before",
        "[#a] <alice> after",
    ]
    for user in (alice, carol):
        assert lines(user.take()) == [
            "[#a] <alice> before",
            "[#a] *** bob joined #a",
            "[#a] <alice> after",
        ]


async def test_a_parter_receives_what_was_said_before_its_part_and_nothing_after(
    hub: Hub,
) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")

    hub.say(alice.member, "#a", "see you")
    hub.part(bob.member, "#a", "bye")
    hub.say(alice.member, "#a", "gone?")

    assert lines(bob.take()) == [
        "[#a] <alice> see you",
        "[#a] *** bob left #a (bye)",
        "[#lobby] *** Now talking in #lobby.",
    ]
    assert lines(alice.take()) == [
        "[#a] <alice> see you",
        "[#a] *** bob left #a (bye)",
        "[#a] <alice> gone?",
    ]


async def test_a_quitter_receives_what_was_said_before_it_left_and_its_quit_follows(
    hub: Hub,
) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")

    hub.say(alice.member, "#a", "last words?")
    await hub.remove(bob.member, "gone")
    hub.say(alice.member, "#a", "gone.")

    assert lines(bob.take()) == ["[#a] <alice> last words?"]
    assert lines(alice.take()) == [
        "[#a] <alice> last words?",
        "*** bob quit (gone)",
        "[#a] <alice> gone.",
    ]


async def test_messages_in_two_rooms_keep_their_global_order(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a", "#b")
    bob = await connect(hub, "bob", "#a", "#b")
    carol = await connect(hub, "carol", "#b")

    for room, text in [("#a", "a1"), ("#b", "b1"), ("#b", "b2"), ("#a", "a2"), ("#b", "b3")]:
        hub.say(alice.member, room, text)

    expected = ["[#a] <alice> a1", "[#b] <alice> b1", "[#b] <alice> b2"]
    expected += ["[#a] <alice> a2", "[#b] <alice> b3"]
    assert lines(bob.take()) == expected
    assert lines(alice.take()) == expected
    assert lines(carol.take()) == ["[#b] <alice> b1", "[#b] <alice> b2", "[#b] <alice> b3"]


async def test_a_private_message_between_room_messages_arrives_between_them(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")

    hub.say(alice.member, "#a", "before")
    await hub.private(alice.member, "bob", "psst")
    hub.say(alice.member, "#a", "after")
    assert bob.peer.drain() == []  # nothing has gone out yet: one iteration

    assert lines(bob.take()) == [
        "[#a] <alice> before",
        "[private] <alice> psst",
        "[#a] <alice> after",
    ]
    assert lines(alice.take()) == [
        "[#a] <alice> before",
        "[private to bob] <alice> psst",
        "[#a] <alice> after",
    ]


async def test_says_in_one_iteration_reach_each_member_in_one_push_rendered_once_per_codec(
    hub: Hub,
) -> None:
    json, text = CountingCodec(JSON), CountingCodec(TEXT)
    alice = await connect(hub, "alice", "#a", codec=json)
    bob = await connect(hub, "bob", "#a", codec=json)
    carol = await connect(hub, "carol", "#a", codec=json)
    tina = await connect(hub, "tina", "#a", codec=text)
    json.encoded = text.encoded = 0

    for said in ("one", "two", "three"):
        hub.say(alice.member, "#a", said)

    said_lines = ["[#a] <alice> one", "[#a] <alice> two", "[#a] <alice> three"]
    for user in (alice, bob, carol):
        [push] = user.take_pushes()
        assert lines(decode([push])) == said_lines
    [push] = tina.take_pushes()
    assert push == "".join(f"{said}\r\n" for said in said_lines).encode()
    assert (json.encoded, text.encoded) == (3, 3)


async def test_the_outbox_flushes_itself_on_the_next_loop_iteration(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")

    hub.say(alice.member, "#a", "hello")
    hub.tell(bob.member, Notice(text="just for bob"))
    assert bob.peer.drain() == []

    await asyncio.sleep(0)  # exactly one iteration: the outbox's documented flush point

    assert lines(decode(bob.peer.drain())) == ["[#a] <alice> hello", "*** just for bob"]
    assert lines(decode(alice.peer.drain())) == ["[#a] <alice> hello"]


async def test_then_runs_after_what_was_queued_before_it_and_before_what_comes_after(
    hub: Hub,
) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")
    seen_by_action: list[bytes] = []

    hub.say(alice.member, "#a", "one")
    hub.tell(bob.member, Notice(text="before"))
    hub.outbox.then(lambda: seen_by_action.extend(bob.peer.drain()))
    hub.say(alice.member, "#a", "two")
    hub.tell(bob.member, Notice(text="after"))
    flush(hub)

    assert lines(decode(seen_by_action)) == ["[#a] <alice> one", "*** before"]
    assert lines(bob.take()) == ["[#a] <alice> two", "*** after"]


async def test_then_between_two_says_splits_the_batch(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#a")
    seen_by_action: list[bytes] = []

    hub.say(alice.member, "#a", "one")
    hub.outbox.then(lambda: seen_by_action.extend(bob.peer.drain()))
    hub.say(alice.member, "#a", "two")
    flush(hub)

    assert lines(decode(seen_by_action)) == ["[#a] <alice> one"]
    assert lines(decode(bob.take_pushes())) == ["[#a] <alice> two"]


# --- the commit gate: what follows a write waits for the store ------------------------------


class GatedStore(MemoryStore):
    """A store whose commits the test runs by hand: the test sets ``dirty``; each
    :meth:`commit_then` is recorded and waits to begin (``commit_waiting``) until
    :meth:`begin`; :meth:`report` ends the oldest one."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[Committed] = []

    def commit_then(self, done: Committed) -> None:
        self.started.append(done)
        self.commit_waiting = True

    def begin(self) -> None:
        self.commit_waiting = False

    def report(self, error: BaseException | None = None) -> None:
        done = self.started.pop(0)
        if not self.started:  # the one reported had begun, and no other waits
            self.commit_waiting = False
        done(error)


async def test_what_follows_a_write_goes_the_moment_its_commit_is_reported() -> None:
    store, peer = GatedStore(), FakePeer()
    outbox = Outbox(store)
    store.dirty = True
    outbox.send_bytes(peer, b"one\n")
    await asyncio.sleep(0)  # the outbox's turn: it starts a commit instead of delivering
    assert (len(store.started), peer.pushes) == (1, [])

    outbox.send_bytes(peer, b"two\n")  # after a write the first commit does not carry
    store.report()
    # Delivered in the report itself, not a task's turn later; the next commit is already
    # on its way for what came after.
    assert (peer.pushes, len(store.started)) == ([b"one\n"], 1)

    store.dirty = False
    store.report()
    assert (peer.pushes, store.started) == ([b"one\n", b"two\n"], [])


async def test_a_commit_starts_while_one_writes_but_never_queues_behind_one_not_begun() -> None:
    store, peer = GatedStore(), FakePeer()
    outbox = Outbox(store)
    store.dirty = True
    outbox.send_bytes(peer, b"one\n")
    await asyncio.sleep(0)
    outbox.send_bytes(peer, b"two\n")
    await asyncio.sleep(0)  # the first has not begun: "two" waits rather than queue
    assert (len(store.started), peer.pushes) == (1, [])

    store.begin()
    outbox.send_bytes(peer, b"three\n")
    await asyncio.sleep(0)  # the first writes: one more commit, for "two" and "three"
    assert (len(store.started), peer.pushes) == (2, [])

    store.report()
    assert (peer.pushes, len(store.started)) == ([b"one\n"], 1)
    store.dirty = False
    store.report()
    assert (peer.pushes, store.started) == ([b"one\n", b"two\n", b"three\n"], [])


async def test_a_busy_turn_starts_commits_before_it_ends_with_a_threaded_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "EARLY_COMMIT", 3)
    store, peer = GatedStore(), FakePeer()
    store.early_commits = True
    outbox = Outbox(store)
    store.dirty = True
    lines = [f"{i}\n".encode() for i in range(8)]
    for line in lines[:3]:  # one turn of the loop: no await between them
        outbox.send_bytes(peer, line)
    assert len(store.started) == 1  # the third started a commit for all three
    store.begin()
    for line in lines[3:]:
        outbox.send_bytes(peer, line)
    assert len(store.started) == 2  # the sixth: one for the next three
    assert peer.pushes == []

    await asyncio.sleep(0)  # the turn's end: the second has not begun, the rest wait
    assert len(store.started) == 2
    store.report()
    assert peer.pushes == lines[:3]
    store.report()  # delivers its three, then covers the last two
    assert (peer.pushes, len(store.started)) == (lines[:6], 1)
    store.dirty = False
    store.report()
    assert peer.pushes == lines


async def test_a_store_committing_in_a_task_is_not_asked_before_the_turn_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "EARLY_COMMIT", 3)
    store, peer = GatedStore(), FakePeer()  # early_commits is False, as for Redis
    outbox = Outbox(store)
    store.dirty = True
    for i in range(8):
        outbox.send_bytes(peer, f"{i}\n".encode())
    assert store.started == []
    await asyncio.sleep(0)
    assert len(store.started) == 1


async def test_a_failed_commit_delivers_anyway_and_does_not_retry_in_a_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, peer = GatedStore(), FakePeer()
    outbox = Outbox(store)
    store.dirty = True  # and it stays so: the failed writes wait for the next commit
    outbox.send_bytes(peer, b"one\n")
    await asyncio.sleep(0)
    store.report(OSError("disk full"))

    assert peer.pushes == [b"one\n"]
    assert store.started == []  # nothing waits: the next entry starts the next commit
    assert "store commit failed" in caplog.text
    outbox.send_bytes(peer, b"two\n")
    await asyncio.sleep(0)
    assert (len(store.started), peer.pushes) == (1, [b"one\n"])


async def test_a_store_that_stays_out_is_logged_once_then_now_and_then_then_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, peer = GatedStore(), FakePeer()
    outbox = Outbox(store)
    store.dirty = True

    async def commit_one(error: BaseException | None) -> None:
        outbox.send_bytes(peer, b"line\n")
        await asyncio.sleep(0)
        store.report(error)

    for _ in range(5):
        await commit_one(ConnectionError("Redis is away"))
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["store commit failed; delivering anyway"]
    assert failed[0].exc_info is not None  # the first one whole, with its traceback

    monkeypatch.setattr(hub_module, "FAILURE_LOG_EVERY", 0.0)  # as if a minute went by
    await commit_one(ConnectionError("Redis is away"))
    await commit_one(None)
    assert [r.getMessage() for r in caplog.records][1:] == [
        "store commits still failing, 6 in a row (delivering anyway): "
        "ConnectionError('Redis is away')",
        "store commits succeed again, after 6 failed",
    ]
    assert len(peer.pushes) == 7  # and every line went out


async def test_drain_returns_once_the_commit_is_over_and_all_went_out() -> None:
    store, peer = GatedStore(), FakePeer()
    outbox = Outbox(store)
    store.dirty = True
    outbox.send_bytes(peer, b"last words\n")
    drained = asyncio.ensure_future(outbox.drain())
    await asyncio.sleep(0)
    assert len(store.started) == 1
    assert not drained.done()

    store.dirty = False
    store.report()
    await drained
    assert peer.pushes == [b"last words\n"]


# --- quiet rooms ----------------------------------------------------------------------------


async def test_a_quiet_room_does_not_announce_joins_and_parts() -> None:
    hub = Hub(announce_limit=2)
    alice = await connect(hub, "alice", "#big", lobby=False)
    bob = await connect(hub, "bob", lobby=False)
    await hub.join(bob.member, "#big")
    assert lines(alice.take()) == ["[#big] *** bob joined #big"]  # 2 is not above the limit
    bob.take()
    carol = await connect(hub, "carol", lobby=False)

    await hub.join(carol.member, "#big")

    assert lines(carol.take()) == [
        "[#big] *** carol joined #big",
        "[#big] *** 3 in #big: too many to list here, and joins and parts are not "
        "announced; /who #big lists them.",
    ]
    assert alice.take() == bob.take() == []

    hub.say(carol.member, None, "hi")  # messages still reach everyone
    assert lines(alice.take()) == lines(bob.take()) == ["[#big] <carol> hi"]
    carol.take()

    hub.part(carol.member, None, "")
    assert lines(carol.take()) == [
        "[#big] *** carol left #big",
        "*** You are in no room now; /join #room to talk.",
    ]
    assert alice.take() == bob.take() == []
    assert who(alice) == ("alice", "bob")


async def test_a_quiet_room_does_not_announce_quits() -> None:
    hub = Hub(announce_limit=2)
    alice = await connect(hub, "alice", "#big", lobby=False)
    bob = await connect(hub, "bob", "#big", "#small", lobby=False)
    carol = await connect(hub, "carol", "#big", lobby=False)
    dave = await connect(hub, "dave", "#small", lobby=False)

    await hub.remove(bob.member, "gone")

    assert alice.take() == carol.take() == []
    assert lines(dave.take()) == ["*** bob quit (gone)"]


# --- history --------------------------------------------------------------------------------


@pytest.mark.parametrize("history", [0, 2, 5])
async def test_join_replays_history_with_original_ids_and_times(history: int) -> None:
    hub = Hub(history=history)
    alice = await connect(hub, "alice", "#a")
    hub.say(alice.member, "#a", "one")
    hub.act(alice.member, "#a", "waves")
    hub.say(alice.member, "#a", "three")
    live = alice.take()
    bob = await connect(hub, "bob")

    await hub.join(bob.member, "#a")

    replay = bob.take()[2:]  # after its join and the who list
    kept = live[max(len(live) - history, 0) :] if history else []
    assert replay == [replayed(event) for event in kept]


# --- private messages -----------------------------------------------------------------------


async def test_a_private_message_to_oneself_is_one_copy_answering_the_request(hub: Hub) -> None:
    alice = await connect(hub, "alice")

    await alice.do(MsgCommand("ALICE", "note to self"), "q1")

    [event] = alice.take()
    assert isinstance(event, Private)
    assert (event.nick, event.target, event.text) == ("alice", "alice", "note to self")
    assert (event.echo, event.re) == (False, "q1")


async def test_a_private_message_reaches_its_target_and_echoes_to_the_sender(hub: Hub) -> None:
    alice = await connect(hub, "alice")
    bob = await connect(hub, "bob")
    carol = await connect(hub, "carol")

    await alice.do(MsgCommand("BOB", "psst"), "q1")

    [got] = bob.take()
    [echo] = alice.take()
    assert isinstance(got, Private)
    assert isinstance(echo, Private)
    assert (got.nick, got.target, got.text, got.echo, got.re) == (
        "alice",
        "bob",
        "psst",
        False,
        None,
    )
    assert echo == replace(got, echo=True, re="q1")
    assert carol.take() == []


async def test_a_private_message_to_nobody_is_refused(hub: Hub) -> None:
    alice = await connect(hub, "alice")

    assert await refused(alice, MsgCommand("nobody", "hello?")) is ErrorCode.NO_SUCH_NICK
    assert alice.take() == []


async def test_a_private_message_to_a_busy_recipient_is_refused(hub: Hub) -> None:
    alice = await connect(hub, "alice")
    bob = await connect(hub, "bob")
    bob.peer.busy = True

    assert await refused(alice, MsgCommand("bob", "psst")) is ErrorCode.RECIPIENT_BUSY
    assert alice.take() == bob.take() == []


async def test_a_relayed_private_message_reaches_its_local_target(hub: Hub) -> None:
    alice = await connect(hub, "alice")
    bob = await connect(hub, "bob")
    event = Private(nick="zed", target="BOB", text="from afar")

    hub.relay(event)
    hub.relay(Private(nick="zed", target="nobody", text="lost"))

    assert bob.take() == [event]
    assert alice.take() == []


# --- other nodes' events (relay) ------------------------------------------------------------


async def test_a_relayed_join_adds_a_remote_name_and_announces_it(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    carol = await connect(hub, "carol", "#a")
    outsider = await connect(hub, "outsider")
    joins = [Join(room="#a", nick="Bob"), Join(room="#a", nick="dave")]

    for join in joins:
        hub.relay(join)
    hub.relay(Join(room="#A", nick="BOB"))  # already known: nothing happens

    assert alice.take() == carol.take() == joins
    assert outsider.take() == []
    assert alice.member.rooms["#a"].remote == {"bob": "Bob", "dave": "dave"}
    assert who(alice) == ("alice", "Bob", "carol", "dave")
    assert listing(outsider)["#a"] == (4, "")


async def test_a_relayed_join_to_an_unknown_room_creates_it(hub: Hub) -> None:
    alice = await connect(hub, "alice")

    hub.relay(Join(room="#far", nick="zed"))

    assert alice.take() == []
    assert listing(alice)["#far"] == (1, "")
    assert who(alice, "#far") == ("zed",)


async def test_a_relayed_part_removes_the_remote_name_and_announces_it(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    hub.relay(Join(room="#a", nick="zed"))
    settle(hub)
    part = Part(room="#a", nick="ZED", text="later")

    hub.relay(part)
    hub.relay(part)  # no longer there: nothing happens

    assert alice.take() == [part]
    assert alice.member.rooms["#a"].remote == {}
    assert who(alice) == ("alice",)


async def test_a_relayed_quit_leaves_its_rooms_and_is_told_once_to_each_neighbour(
    hub: Hub,
) -> None:
    alice = await connect(hub, "alice", "#a", "#b")
    bob = await connect(hub, "bob", "#a")
    carol = await connect(hub, "carol")  # shares only #lobby, where zed is not
    for room in ("#a", "#b"):
        hub.relay(Join(room=room, nick="zed"))
    settle(hub)
    quit_ = Quit(nick="zed", text="Their server went away")

    hub.relay(quit_, rooms=["#a", "#b", LOBBY])

    assert alice.take() == bob.take() == [quit_]
    assert carol.take() == []
    assert who(alice, "#a") == ("alice", "bob")
    assert who(alice, "#b") == ("alice",)


async def test_a_relayed_nick_renames_the_remote_name_and_announces_it_once(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a", "#b")
    bob = await connect(hub, "bob", "#a")
    carol = await connect(hub, "carol")
    for room in ("#a", "#b"):
        hub.relay(Join(room=room, nick="zed"))
    settle(hub)
    nick = Nick(nick="zed", new_nick="Zara")

    hub.relay(nick, rooms=["#a", "#b"])

    assert alice.take() == bob.take() == [nick]
    assert carol.take() == []
    assert alice.member.rooms["#b"].remote == {"zara": "Zara"}
    assert who(alice, "#a") == ("alice", "bob", "Zara")


async def test_a_relayed_topic_sets_the_topic_and_announces_it(hub: Hub) -> None:
    alice = await connect(hub, "alice", "#a")
    carol = await connect(hub, "carol")
    topic = Topic(room="#a", nick="zed", text="news from afar")

    hub.relay(topic)

    assert alice.take() == [topic]
    assert carol.take() == []
    assert listing(carol)["#a"] == (1, "news from afar")


@pytest.mark.parametrize("kind", [Message, Action])
async def test_a_relayed_message_reaches_local_members_and_history(
    hub: Hub, kind: type[Message | Action]
) -> None:
    alice = await connect(hub, "alice", "#a")
    carol = await connect(hub, "carol")
    hub.relay(Join(room="#a", nick="zed"))
    settle(hub)
    said = kind(room="#a", nick="zed", text="hello from afar")

    hub.relay(said)
    hub.relay(kind(room="#nowhere", nick="zed", text="lost"))  # no such room here: dropped

    assert alice.take() == [said]
    assert carol.take() == []
    assert "#nowhere" not in listing(carol)
    await hub.join(carol.member, "#a")
    assert carol.take()[-1] == replayed(said)


@pytest.mark.parametrize(
    "leaving",
    [
        pytest.param(
            [(Part(room="#far", nick="zed"), ()), (Part(room=LOBBY, nick="zed"), ())], id="part"
        ),
        pytest.param([(Quit(nick="zed"), ("#far", LOBBY))], id="quit"),
    ],
)
async def test_a_room_emptied_of_its_last_remote_member_disappears_but_the_lobby_stays(
    hub: Hub, leaving: list[tuple[Event, tuple[str, ...]]]
) -> None:
    alice = await connect(hub, "alice", lobby=False)
    hub.relay(Join(room="#far", nick="zed"))
    hub.relay(Join(room=LOBBY, nick="zed"))
    assert listing(alice) == {"#far": (1, ""), LOBBY: (1, "")}

    for event, rooms in leaving:
        hub.relay(event, rooms)

    assert listing(alice) == {LOBBY: (0, "")}


# --- leaving the chat -----------------------------------------------------------------------


async def test_remove_tells_each_neighbour_once_drops_empty_rooms_and_frees_the_nick() -> None:
    backend = RecordingBackend()
    hub = Hub(backend=backend)
    alice = await connect(hub, "alice", "#a", "#solo")
    bob = await connect(hub, "bob", "#a")
    carol = await connect(hub, "carol", "#c", lobby=False)
    backend.published.clear()

    await hub.remove(alice.member, "gone")

    assert lines(bob.take()) == ["*** alice quit (gone)"]
    assert carol.take() == []
    assert backend.forgotten == ["#solo"]
    assert [type(event) for event in backend.published] == [Quit]
    assert listing(bob) == {"#a": (1, ""), "#c": (1, ""), LOBBY: (1, "")}
    assert hub.members == [bob.member, carol.member]

    again = await connect(hub, "ALICE")
    await hub.remove(alice.member, "twice")  # a stale member: nothing happens
    assert hub.find("alice") is again.member
    assert lines(bob.take()) == []


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param(SayCommand("hi", "#b"), ErrorCode.NOT_IN_ROOM, id="say"),
        pytest.param(MeCommand("waves", "#b"), ErrorCode.NOT_IN_ROOM, id="me"),
        pytest.param(PartCommand("#b"), ErrorCode.NOT_IN_ROOM, id="part"),
        pytest.param(TopicCommand("#b", "mine now"), ErrorCode.NOT_IN_ROOM, id="topic-set"),
        pytest.param(WhoCommand("#nowhere"), ErrorCode.NO_SUCH_ROOM, id="who"),
        pytest.param(TopicCommand("#nowhere"), ErrorCode.NO_SUCH_ROOM, id="topic-get"),
        pytest.param(JoinCommand("#no way"), ErrorCode.ROOM_INVALID, id="join-invalid"),
        pytest.param(JoinCommand("#Iobby"), ErrorCode.ROOM_CONFUSABLE, id="join-confusable"),
        pytest.param(
            TopicCommand(text="x" * (TOPIC_MAX + 1)), ErrorCode.TOPIC_TOO_LONG, id="topic-long"
        ),
    ],
)
async def test_refusals_change_nothing(hub: Hub, command: Command, code: ErrorCode) -> None:
    alice = await connect(hub, "alice", "#a")
    bob = await connect(hub, "bob", "#b")
    hub.topic(bob.member, "#b", "bob's")
    hub.topic(alice.member, "#a", "alice's")
    settle(hub)

    assert await refused(alice, command) is code

    assert alice.take() == bob.take() == []
    assert listing(bob) == {"#a": (1, "alice's"), "#b": (1, "bob's"), LOBBY: (2, "")}
    assert list(alice.member.rooms) == [LOBBY, "#a"]


async def test_a_topic_of_the_maximum_length_is_accepted(hub: Hub) -> None:
    alice = await connect(hub, "alice")
    topic = "x" * TOPIC_MAX

    await alice.do(TopicCommand(text=f"  {topic}  "))

    assert lines(alice.take()) == [f"[#lobby] *** alice set the topic: {topic}"]
    assert listing(alice)[LOBBY] == (1, topic)


async def test_too_many_rooms_at_max_rooms() -> None:
    hub = Hub(max_rooms=2)
    alice = await connect(hub, "alice", "#a")

    assert await refused(alice, JoinCommand("#b")) is ErrorCode.TOO_MANY_ROOMS

    assert list(alice.member.rooms) == [LOBBY, "#a"]
    assert "#b" not in listing(alice)
    await alice.do(JoinCommand(LOBBY))  # switching to a joined room is still allowed
    assert lines(alice.take()) == ["[#lobby] *** Now talking in #lobby."]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(SayCommand("hi"), id="say"),
        pytest.param(MeCommand("waves"), id="me"),
        pytest.param(PartCommand(), id="part"),
        pytest.param(WhoCommand(), id="who"),
        pytest.param(TopicCommand(), id="topic-get"),
        pytest.param(TopicCommand(text="new"), id="topic-set"),
    ],
)
async def test_no_active_room_after_parting_every_room(hub: Hub, command: Command) -> None:
    alice = await connect(hub, "alice", "#a")
    hub.part(alice.member, None, "")
    assert lines(alice.take()) == ["[#a] *** alice left #a", "[#lobby] *** Now talking in #lobby."]
    hub.part(alice.member, None, "")
    assert lines(alice.take()) == [
        "[#lobby] *** alice left #lobby",
        "*** You are in no room now; /join #room to talk.",
    ]

    assert await refused(alice, command) is ErrorCode.NO_ACTIVE_ROOM
    assert alice.take() == []


# --- whois asked from another node ----------------------------------------------------------


async def test_whois_for_another_nodes_user_shows_what_they_share_and_no_address(
    hub: Hub,
) -> None:
    bob = await connect(hub, "bob", "#open", "#secret", "#hidden")
    hub.relay(Join(room="#secret", nick="zed"))  # zed, of another node, shares #secret
    for room in ("#secret", "#hidden"):
        hub.mode(bob.member, room, "+i", None)

    seen = hub.whois_for("zed", "BOB", admin=False, request="q1")
    assert isinstance(seen, Whois)
    assert (seen.nick, seen.re) == ("bob", "q1")
    assert set(seen.rooms) == {LOBBY, "#open", "#secret"}
    assert seen.address is None
    by_admin = hub.whois_for("zed", "bob", admin=True)
    assert isinstance(by_admin, Whois)
    assert "#hidden" in by_admin.rooms
    assert by_admin.address == "127.0.0.1"
    gone = hub.whois_for("zed", "nobody", admin=False, request="q2")
    assert isinstance(gone, Error)
    assert (gone.code, gone.command, gone.re) == (ErrorCode.NO_SUCH_NICK, "whois", "q2")
