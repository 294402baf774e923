"""The cluster's bookkeeping without Redis: the directory of other nodes' users, which turns
what happens elsewhere into ``Hub.relay`` calls, and the ledger of what was applied.

A real :class:`~chat.hub.Hub` with one local member (a peer that keeps what it is sent)
shows what a person on this node would see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from chat.cluster.directory import LEFT_UNSEEN, Directory
from chat.cluster.ledger import Ledger
from chat.cluster.messages import StreamId
from chat.codecs import JSON, Codec
from chat.errors import ErrorCode
from chat.hub import Hub, Member
from chat.protocol import (
    Action,
    Event,
    Join,
    Message,
    Nick,
    Part,
    Private,
    Quit,
    RoomList,
    Topic,
    Who,
    parse_event,
)


@dataclass
class Peer:
    received: list[Event] = field(default_factory=list)
    busy: bool = False
    address: str = "127.0.0.1"

    @property
    def codec(self) -> Codec:
        return JSON

    def push(self, data: bytes) -> None:
        self.received += [parse_event(line) for line in data.splitlines()]

    def close(self, code: ErrorCode, text: str) -> None:
        raise AssertionError("nobody is evicted here")


@dataclass
class Node:
    """This node: a hub, its directory, and one local user ``me``."""

    hub: Hub
    directory: Directory
    me: Member
    peer: Peer

    def seen(self) -> list[Event]:
        self.hub.outbox.flush()
        seen, self.peer.received = self.peer.received, []
        return seen

    def who(self, room: str) -> tuple[str, ...]:
        self.seen()
        self.hub.who(self.me, room)
        (answer,) = self.seen()
        assert isinstance(answer, Who)
        return answer.members

    def rooms(self) -> dict[str, int]:
        self.seen()
        self.hub.rooms(self.me)
        (answer,) = self.seen()
        assert isinstance(answer, RoomList)
        return {info.room: info.members for info in answer.rooms}


@pytest.fixture
async def node() -> Node:
    hub = Hub()
    peer = Peer()
    me = await hub.register(peer, "me")
    made = Node(hub, Directory(hub), me, peer)
    made.seen()
    return made


def kinds(events: list[Event]) -> list[tuple[str, str | None, str | None]]:
    return [(e.type, e.nick, e.room) for e in events]


# --- the directory ---------------------------------------------------------------------------


async def test_remote_joins_parts_and_quits_reach_the_hub(node: Node) -> None:
    d = node.directory
    d.apply("B", Join(room="#lobby", nick="bob"))
    d.apply("B", Join(room="#r", nick="bob"))
    assert kinds(node.seen()) == [("join", "bob", "#lobby")]  # me is not in #r
    assert node.who("#lobby") == ("bob", "me")
    assert node.rooms() == {"#lobby": 2, "#r": 1}
    found = d.find("BOB")
    assert found is not None
    assert (found.nick, found.node, list(found.rooms.values())) == ("bob", "B", ["#lobby", "#r"])

    d.apply("B", Part(room="#r", nick="bob"))
    assert node.rooms() == {"#lobby": 2}  # the hub dropped the empty room
    d.apply("B", Message(room="#lobby", nick="bob", text="hi"))
    d.apply("B", Action(room="#lobby", nick="bob", text="waves"))
    d.apply("B", Topic(room="#lobby", nick="bob", text="t"))
    d.apply("B", Private(nick="bob", target="ME", text="psst"))
    assert [(e.type, e.text) for e in node.seen()] == [
        ("message", "hi"),
        ("action", "waves"),
        ("topic", "t"),
        ("private", "psst"),
    ]
    d.apply("B", Quit(nick="bob", text="bye"))
    assert kinds(node.seen()) == [("quit", "bob", None)]
    assert node.who("#lobby") == ("me",)
    assert d.find("bob") is None
    assert d.nodes() == set()
    assert d.footprint() == {"nodes": 0, "users": 0, "memberships": 0}


async def test_an_event_applied_twice_changes_nothing(node: Node) -> None:
    d = node.directory
    for _ in range(2):
        d.apply("B", Join(room="#lobby", nick="bob"))
    assert kinds(node.seen()) == [("join", "bob", "#lobby")]
    d.apply("B", Part(room="#elsewhere", nick="bob"))
    d.apply("B", Part(room="#lobby", nick="nobody"))
    d.apply("B", Quit(nick="nobody"))
    d.apply("B", Nick(nick="nobody", new_nick="somebody"))
    assert node.seen() == []
    for _ in range(2):
        d.apply("B", Part(room="#lobby", nick="bob"))
    assert kinds(node.seen()) == [("part", "bob", "#lobby")]


async def test_stale_events_about_a_nickname_held_elsewhere_are_ignored(node: Node) -> None:
    d = node.directory
    d.apply("B", Join(room="#lobby", nick="ME"))  # a local user holds it
    d.apply("B", Join(room="#lobby", nick="bob"))
    d.apply("C", Join(room="#lobby", nick="Bob"))  # node B's user holds it
    d.apply("C", Quit(nick="bob"))
    assert node.who("#lobby") == ("bob", "me")
    assert d.nodes() == {"B"}


async def test_remote_renames(node: Node) -> None:
    d = node.directory
    d.apply("B", Join(room="#lobby", nick="bob"))
    d.apply("B", Join(room="#lobby", nick="carl"))
    node.seen()
    d.apply("B", Nick(nick="bob", new_nick="Robert"))
    assert kinds(node.seen()) == [("nick", "bob", None)]
    assert node.who("#lobby") == ("carl", "me", "Robert")
    assert d.find("bob") is None
    found = d.find("robert")
    assert found is not None
    assert found.nick == "Robert"
    d.apply("B", Nick(nick="Robert", new_nick="robert"))  # a change of case
    assert node.who("#lobby") == ("carl", "me", "robert")
    d.apply("B", Nick(nick="robert", new_nick="Me"))  # held here: stale
    d.apply("B", Nick(nick="robert", new_nick="CARL"))  # held by another: stale
    assert node.who("#lobby") == ("carl", "me", "robert")


async def test_sync_makes_the_view_of_a_node_equal_its_roster(node: Node) -> None:
    d = node.directory
    d.sync("B", {"bob": ["#lobby", "#x"], "carl": ["#lobby"], "dora": ["#lobby"]})
    assert node.who("#lobby") == ("bob", "carl", "dora", "me")
    node.seen()
    d.sync("B", {"bob": ["#lobby"], "Dora": ["#lobby"], "ed": []})
    events = node.seen()
    assert [(e.type, e.nick, e.text) for e in events if e.type == "quit"] == [
        ("quit", "carl", LEFT_UNSEEN)
    ]
    assert ("nick", "dora", None) in kinds(events)  # a change of case it missed
    assert node.who("#lobby") == ("bob", "Dora", "me")
    assert node.rooms() == {"#lobby": 3}  # bob left #x, which is gone
    assert d.find("ed") is not None  # online, in no room
    d.sync("B", {"bob": ["#lobby"], "Dora": ["#lobby"], "ed": []})
    assert node.seen() == []  # nothing changed, nothing said


async def test_forgetting_a_node_quits_its_users_and_keeps_nothing(node: Node) -> None:
    d = node.directory
    d.sync("B", {"bob": ["#lobby", "#x"], "carl": []})
    d.sync("C", {"cy": ["#lobby"]})
    node.seen()
    d.forget("B", "Their server went away")
    events = node.seen()
    assert [(e.type, e.nick, e.text) for e in events] == [
        ("quit", "bob", "Their server went away")  # carl shared no room with me
    ]
    assert d.nodes() == {"C"}
    assert node.rooms() == {"#lobby": 2}
    d.forget("C", "gone")
    assert d.footprint() == {"nodes": 0, "users": 0, "memberships": 0}


# --- the ledger ------------------------------------------------------------------------------


def test_the_ledger_keeps_the_newest_stream_id_per_room() -> None:
    ledger = Ledger()
    assert ledger.last_id("#r") is None
    assert ledger.advance("#r", StreamId(5, 0))
    assert not ledger.advance("#R", StreamId(5, 0))  # room names ignore case
    assert not ledger.advance("#r", StreamId(4, 9))
    assert ledger.advance("#r", StreamId(5, 1))
    assert ledger.advance("#other", StreamId(1, 0))
    assert ledger.last_id("#r") == StreamId(5, 1)


def test_the_ledger_refuses_an_event_number_already_applied() -> None:
    ledger = Ledger()
    first = Message(id="p1-7", room="#r", nick="n")
    assert ledger.fresh("B", first)
    assert not ledger.fresh("B", first)  # a retried publish
    assert not ledger.fresh("B", Message(id="p1-6", room="#r", nick="n"))
    assert ledger.fresh("C", first)  # another node
    assert ledger.fresh("B", Message(id="p1-7", room="#s", nick="n"))  # another room
    assert ledger.fresh("B", Message(id="p2-1", room="#r", nick="n"))  # another process
    # A replay can run ahead of live room events published meanwhile: separate scopes.
    assert ledger.fresh("B", Topic(id="p1-5", room="#r", nick="n", text="t"))
    assert ledger.fresh("B", Quit(id="p1-3", nick="n"))  # outside rooms
    assert not ledger.fresh("B", Private(id="p1-2", nick="n", target="m"))
    for odd in ("", "plain", "p1-", "p1-\u00b2", "p1-\u0661"):
        assert ledger.fresh("B", Join(id=odd, room="#r", nick="n"))  # nothing to compare


def test_the_ledger_forgets_rooms_and_nodes() -> None:
    ledger = Ledger()
    for room in ("#a", "#b", "#c"):
        ledger.advance(room, StreamId(1, 0))
        ledger.fresh("B", Message(id="p1-1", room=room, nick="n"))
        ledger.fresh("B", Join(id="p1-1", room=room, nick="n"))
    ledger.fresh("B", Quit(id="p1-1", nick="n"))
    ledger.fresh("C", Message(id="q1-1", room="#a", nick="n"))
    assert ledger.footprint() == {"stream_ids": 3, "room_scopes": 7, "nodes": 2, "origins": 2}
    ledger.forget_room("#A")
    assert ledger.footprint() == {"stream_ids": 2, "room_scopes": 4, "nodes": 2, "origins": 2}
    ledger.keep_rooms({"#c"})
    assert ledger.footprint() == {"stream_ids": 1, "room_scopes": 2, "nodes": 2, "origins": 2}
    assert ledger.last_id("#b") is None
    assert ledger.fresh("B", Message(id="p1-1", room="#b", nick="n"))  # forgotten
    ledger.forget_node("B")
    ledger.forget_node("C")
    ledger.keep_rooms(set())
    assert ledger.footprint() == {"stream_ids": 0, "room_scopes": 0, "nodes": 0, "origins": 0}


def test_a_node_restarted_under_its_id_keeps_two_processes_at_most() -> None:
    ledger = Ledger()
    for process in range(5):
        assert ledger.fresh("B", Quit(id=f"p{process}-1", nick="n"))
    assert ledger.footprint()["origins"] == 2
    assert not ledger.fresh("B", Quit(id="p4-1", nick="n"))
    assert not ledger.fresh("B", Quit(id="p3-1", nick="n"))  # the previous one still counts
