"""Rooms, nicknames, history and fan-out. The hub knows nothing about sockets.

A connection hands the hub a :class:`Peer`: something with a dialect and a ``push`` that
queues bytes without ever blocking. The hub renders each event once per dialect and pushes
the same bytes to every recipient, so a broadcast costs one render and one ``push`` per
member and never waits on anybody's socket.

The nickname registry changes only under ``Hub.lock``; every check-then-claim sequence
holds it, so a backend that must await (a cluster claiming a nickname remotely) cannot
interleave two registrations of one nickname.

A :class:`Backend` carries what happens here to other server processes and back. The
default, :class:`LocalBackend`, carries nothing: one process is the whole chat. The Redis
backend (``chat/cluster.py``) publishes every local event and calls :meth:`Hub.apply` with
the events of other nodes; their users appear here as :class:`RemoteMember` s, so ``/who``,
``/rooms`` and private messages work across nodes while local delivery never waits on the
network. Nothing above the hub knows which backend runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from chat.errors import ErrorCode, ProtocolError
from chat.protocol import (
    LOBBY,
    TOPIC_MAX,
    Action,
    Dialect,
    Event,
    Join,
    Message,
    Nick,
    Notice,
    Part,
    Private,
    Quit,
    RoomInfo,
    RoomList,
    Topic,
    Welcome,
    Who,
    nick_key,
    nick_skeleton,
    render,
    room_key,
    validate_nick,
    validate_room,
)

__all__ = [
    "DEFAULT_ANNOUNCE_LIMIT",
    "DEFAULT_MAX_ROOMS",
    "Backend",
    "Hub",
    "LocalBackend",
    "Member",
    "Peer",
    "RemoteMember",
    "Room",
]

DEFAULT_MAX_ROOMS = 32
DEFAULT_ANNOUNCE_LIMIT = 100


class Peer(Protocol):
    """What the hub needs from a connection."""

    @property
    def dialect(self) -> Dialect: ...

    def push(self, data: bytes) -> None:
        """Queue bytes for the client; must not block, may drop a client that is too slow."""

    def close(self, code: ErrorCode, text: str) -> None:
        """Say goodbye with a reason and disconnect (used when the cluster revokes a nick)."""


@dataclass(eq=False, slots=True)
class Member:
    """A registered user: their nickname, their rooms in join order, and their active room."""

    nick: str
    peer: Peer
    rooms: dict[str, Room] = field(default_factory=dict)
    active: Room | None = None


@dataclass(eq=False, slots=True)
class RemoteMember:
    """A user connected to another node of the cluster, as this node knows them."""

    nick: str
    node: str
    rooms: dict[str, Room] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Room:
    name: str
    history: deque[Message | Action]
    topic: str = ""
    members: dict[Member, None] = field(default_factory=dict)  # local, an ordered set
    remote: dict[RemoteMember, None] = field(default_factory=dict)  # on other nodes

    @property
    def population(self) -> int:
        return len(self.members) + len(self.remote)


class Backend(Protocol):
    """What the hub tells the rest of the cluster, and asks of it. Never blocks a broadcast."""

    @property
    def linked(self) -> bool:
        """False while this node cannot reach the cluster: only local chat works then."""

    async def claim(self, nick: str) -> None:
        """Reserve a nickname cluster-wide, or raise :class:`ProtocolError` saying why not."""

    async def release(self, nick: str) -> None:
        """Give a nickname back."""

    def publish(self, event: Event) -> None:
        """Make a local room or user event known to the other nodes (queued, never awaited)."""

    def send_private(self, node: str, event: Private) -> None:
        """Deliver a private message to a user on ``node``."""

    def forget_room(self, name: str) -> None:
        """The last member left ``name``: its history and topic may go."""


class LocalBackend:
    """The default backend: this process is the whole chat, so there is nothing to tell."""

    linked = True

    async def claim(self, nick: str) -> None:
        return None

    async def release(self, nick: str) -> None:
        return None

    def publish(self, event: Event) -> None:
        return None

    def send_private(self, node: str, event: Private) -> None:
        raise AssertionError("a single process has no other node")

    def forget_room(self, name: str) -> None:
        return None


def send(member: Member, event: Event) -> None:
    """Deliver one event to one member."""
    member.peer.push(render(event, member.peer.dialect))


def deliver(recipients: Iterable[Member], event: Event) -> None:
    """Render ``event`` once per dialect and push the same bytes to every recipient."""
    rendered: dict[Dialect, bytes] = {}
    for member in recipients:
        peer = member.peer
        dialect = peer.dialect
        data = rendered.get(dialect)
        if data is None:
            data = rendered[dialect] = render(event, dialect)
        peer.push(data)


def deliver_batch(recipients: Iterable[Member], events: list[Event]) -> None:
    """Like :func:`deliver` for several events: one render each, one push per recipient."""
    rendered: dict[Dialect, bytes] = {}
    for member in recipients:
        peer = member.peer
        dialect = peer.dialect
        data = rendered.get(dialect)
        if data is None:
            data = rendered[dialect] = b"".join(render(event, dialect) for event in events)
        peer.push(data)


class Hub:
    """All chat state of one server process."""

    def __init__(
        self,
        *,
        history: int = 50,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        announce_limit: int = DEFAULT_ANNOUNCE_LIMIT,
        backend: Backend | None = None,
    ) -> None:
        self.lock = asyncio.Lock()
        self.backend: Backend = backend or LocalBackend()
        self._pending: list[tuple[Room, Event]] = []
        self._flush_scheduled = False
        self.history_length = history
        self.max_rooms = max_rooms
        # Rooms larger than this stop announcing joins, parts and quits and list their
        # members only on /who: otherwise filling a room costs O(members^2) lines.
        self.announce_limit = announce_limit
        self._by_key: dict[str, Member | RemoteMember] = {}
        self._by_skeleton: dict[str, Member | RemoteMember] = {}
        self._rooms: dict[str, Room] = {}
        self._room(LOBBY)

    # --- the registry ---------------------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        """The users connected to this process."""
        return [m for m in self._by_key.values() if isinstance(m, Member)]

    def find(self, nick: str) -> Member | RemoteMember | None:
        return self._by_key.get(nick_key(nick))

    def _check_available(self, nick: str, owner: Member | None = None) -> None:
        holder = self._by_key.get(nick_key(nick))
        if holder is not None and holder is not owner:
            raise ProtocolError(
                ErrorCode.NICK_TAKEN, f"The nickname {nick!r} is already in use; choose another."
            )
        lookalike = self._by_skeleton.get(nick_skeleton(nick))
        if lookalike is not None and lookalike is not owner:
            raise ProtocolError(
                ErrorCode.NICK_CONFUSABLE,
                f"The nickname {nick!r} looks too much like {lookalike.nick!r}, who is online; "
                "choose another.",
            )

    async def register(self, peer: Peer, raw_nick: str) -> Member:
        """Claim a nickname for ``peer``, welcome it and put it in the lobby."""
        self.flush()
        nick = validate_nick(raw_nick)
        async with self.lock:
            self._check_available(nick)
            await self.backend.claim(nick)
            member = Member(nick, peer)
            self._by_key[nick_key(nick)] = member
            self._by_skeleton[nick_skeleton(nick)] = member
        send(
            member,
            Welcome(nick=nick, text=f"Welcome, {nick}! Type /help for the commands."),
        )
        self.join(member, LOBBY)
        return member

    async def rename(self, member: Member, raw_nick: str) -> None:
        self.flush()
        nick = validate_nick(raw_nick)
        async with self.lock:
            self._check_available(nick, owner=member)
            old = member.nick
            if nick == old:
                send(member, Notice(text=f"You are already called {nick}."))
                return
            if nick_key(nick) != nick_key(old):
                await self.backend.claim(nick)
            self._unregister(member)
            member.nick = nick
            self._by_key[nick_key(nick)] = member
            self._by_skeleton[nick_skeleton(nick)] = member
            if nick_key(nick) != nick_key(old):
                await self.backend.release(old)
        event = Nick(nick=old, new_nick=nick)
        deliver(self._neighbours(member, include_self=True), event)
        self.backend.publish(event)

    def _unregister(self, member: Member | RemoteMember) -> None:
        del self._by_key[nick_key(member.nick)]
        if self._by_skeleton.get(nick_skeleton(member.nick)) is member:
            del self._by_skeleton[nick_skeleton(member.nick)]

    async def remove(self, member: Member, reason: str) -> None:
        """Forget a member that disconnected, and tell everyone who shared a room with it."""
        self.flush()
        async with self.lock:
            if self._by_key.get(nick_key(member.nick)) is not member:
                return
            self._unregister(member)
            await self.backend.release(member.nick)
        neighbours = self._neighbours(member, include_self=False, quiet_too=False)
        for room in list(member.rooms.values()):
            self._leave(member, room)
        event = Quit(nick=member.nick, text=reason)
        deliver(neighbours, event)
        self.backend.publish(event)

    def _neighbours(
        self, member: Member | RemoteMember, *, include_self: bool, quiet_too: bool = True
    ) -> list[Member]:
        """Everyone who shares a room with ``member``, once each; without the members of
        rooms too large to announce comings and goings unless ``quiet_too``."""
        seen: dict[Member, None] = {}
        if include_self and isinstance(member, Member):
            seen[member] = None
        for room in member.rooms.values():
            if quiet_too or not self._quiet(room):
                seen.update(room.members)
        if not include_self and isinstance(member, Member):
            seen.pop(member, None)
        return list(seen)

    # --- rooms ----------------------------------------------------------------------------

    def _quiet(self, room: Room) -> bool:
        return room.population > self.announce_limit

    def _room(self, name: str) -> Room:
        key = room_key(name)
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = Room(name, deque(maxlen=self.history_length))
        return room

    def _existing_room(self, name: str) -> Room:
        room = self._rooms.get(room_key(validate_room(name)))
        if room is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"There is no room {name}.")
        return room

    def _member_room(self, member: Member, name: str | None) -> Room:
        """The room a command addresses: the named one (which must be joined) or the active."""
        if name is None:
            if member.active is None:
                raise ProtocolError(
                    ErrorCode.NO_ACTIVE_ROOM, "You are not in any room; /join #room first."
                )
            return member.active
        room = member.rooms.get(room_key(validate_room(name)))
        if room is None:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"You are not in {name}; /join it first.")
        return room

    def _leave(self, member: Member | RemoteMember, room: Room) -> None:
        del member.rooms[room_key(room.name)]
        if isinstance(member, Member):
            del room.members[member]
        else:
            del room.remote[member]
        if not room.population and room_key(room.name) != LOBBY:
            del self._rooms[room_key(room.name)]
            if isinstance(member, Member):
                self.backend.forget_room(room.name)

    def join(self, member: Member, name: str) -> None:
        """Join ``name`` (creating it) and make it active; if already joined, just switch."""
        self.flush()
        key = room_key(validate_room(name))
        joined = member.rooms.get(key)
        if joined is not None:
            member.active = joined
            send(member, Notice(room=joined.name, text=f"Now talking in {joined.name}."))
            return
        if len(member.rooms) >= self.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"You are in {self.max_rooms} rooms already; /part one first.",
            )
        room = self._room(validate_room(name))
        room.members[member] = None
        member.rooms[key] = room
        member.active = room
        event = Join(room=room.name, nick=member.nick)
        if self._quiet(room):
            send(member, event)
        else:
            deliver(room.members, event)
        self.backend.publish(event)
        if room.topic:
            send(member, Topic(room=room.name, text=room.topic))
        if self._quiet(room):
            send(
                member,
                Notice(
                    room=room.name,
                    text=f"{room.population} in {room.name}: too many to list here, and "
                    f"joins and parts are not announced; /who {room.name} lists them.",
                ),
            )
        else:
            send(member, self._who(room))
        for past in room.history:
            send(member, replace(past, history=True))

    def part(self, member: Member, name: str | None, reason: str) -> None:
        self.flush()
        room = self._member_room(member, name)
        event = Part(room=room.name, nick=member.nick, text=reason)
        if self._quiet(room):
            send(member, event)
        else:
            deliver(room.members, event)
        self._leave(member, room)
        self.backend.publish(event)
        if member.active is room:
            member.active = next(reversed(member.rooms.values()), None)
            if member.active is None:
                send(member, Notice(text="You are in no room now; /join #room to talk."))
            else:
                send(
                    member,
                    Notice(room=member.active.name, text=f"Now talking in {member.active.name}."),
                )

    def rooms(self, member: Member) -> None:
        self.flush()
        listing = sorted(self._rooms.values(), key=lambda r: room_key(r.name))
        send(
            member,
            RoomList(rooms=tuple(RoomInfo(r.name, r.population, r.topic) for r in listing)),
        )

    def _who(self, room: Room) -> Who:
        nicks = sorted([m.nick for m in room.members] + [m.nick for m in room.remote], key=nick_key)
        return Who(room=room.name, members=tuple(nicks))

    def who(self, member: Member, name: str | None) -> None:
        self.flush()
        room = self._member_room(member, None) if name is None else self._existing_room(name)
        send(member, self._who(room))

    def topic(self, member: Member, name: str | None, text: str | None) -> None:
        self.flush()
        if text is None:
            room = self._member_room(member, None) if name is None else self._existing_room(name)
            send(member, Topic(room=room.name, text=room.topic))
            return
        room = self._member_room(member, name)
        text = text.strip()
        if len(text) > TOPIC_MAX:
            raise ProtocolError(
                ErrorCode.TOPIC_TOO_LONG,
                f"Topic is too long ({len(text)} characters, at most {TOPIC_MAX}).",
            )
        room.topic = text
        event = Topic(room=room.name, nick=member.nick, text=text)
        deliver(room.members, event)
        self.backend.publish(event)

    # --- messages -------------------------------------------------------------------------
    #
    # Room messages are the hot path: they are batched per room and flushed once per event
    # loop iteration, so a member gets one push with everything said in that iteration
    # instead of one push per message. Every other entry point (and every direct send by a
    # session) flushes first, so each recipient still sees events in the order they happened.

    def _post(self, room: Room, event: Event) -> None:
        self._pending.append((room, event))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Deliver the room messages batched so far, in order. Cheap when there are none."""
        self._flush_scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        start = 0
        while start < len(pending):  # one batch per run of consecutive events in one room
            room = pending[start][0]
            end = start + 1
            while end < len(pending) and pending[end][0] is room:
                end += 1
            if end - start == 1:
                deliver(room.members, pending[start][1])
            else:
                deliver_batch(room.members, [event for _, event in pending[start:end]])
            start = end

    def say(self, member: Member, name: str | None, text: str) -> None:
        room = self._member_room(member, name)
        event = Message(room=room.name, nick=member.nick, text=text)
        room.history.append(event)
        self._post(room, event)
        self.backend.publish(event)

    def act(self, member: Member, name: str | None, text: str) -> None:
        room = self._member_room(member, name)
        event = Action(room=room.name, nick=member.nick, text=text)
        room.history.append(event)
        self._post(room, event)
        self.backend.publish(event)

    def private(self, member: Member, nick: str, text: str) -> None:
        self.flush()
        target = self.find(nick)
        if target is None:
            raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
        event = Private(nick=member.nick, target=target.nick, text=text)
        if isinstance(target, RemoteMember):
            if not self.backend.linked:
                raise ProtocolError(
                    ErrorCode.CLUSTER_DOWN,
                    f"{target.nick} is on another server, which cannot be reached right now.",
                )
            self.backend.send_private(target.node, event)
        else:
            send(target, event)
        if target is not member:
            send(member, replace(event, echo=True))

    # --- events from other nodes ----------------------------------------------------------
    #
    # The cluster backend calls these with what happened elsewhere. They update this node's
    # view of remote users and rooms, and deliver to local members only: the node where an
    # event happened has already delivered it to its own users.

    def apply(self, node: str, event: Event) -> None:
        """Apply one event that happened on ``node``."""
        match event:
            case Message(room=str(name)) | Action(room=str(name)):
                said_in = self._rooms.get(room_key(name))
                if said_in is not None:  # the sender's join always arrives first
                    said_in.history.append(event)
                    self._post(said_in, event)
            case Join(room=str(name), nick=str(nick)):
                self.flush()
                remote = self._remote(node, nick)
                if remote is None or room_key(name) in remote.rooms:
                    return
                room = self._room(name)
                room.remote[remote] = None
                remote.rooms[room_key(name)] = room
                if not self._quiet(room):
                    deliver(room.members, event)
            case Part(room=str(name), nick=str(nick)):
                self.flush()
                remote = self._remote(node, nick, create=False)
                left = remote.rooms.get(room_key(name)) if remote is not None else None
                if remote is None or left is None:
                    return
                if not self._quiet(left):
                    deliver(left.members, event)
                self._leave(remote, left)
            case Quit(nick=str(nick)):
                self.flush()
                remote = self._remote(node, nick, create=False)
                if remote is not None:
                    self._drop_remote(remote, event)
            case Nick(nick=str(old), new_nick=new):
                self.flush()
                remote = self._remote(node, old, create=False)
                if remote is None or self._by_key.get(nick_key(new)) not in (None, remote):
                    return
                self._unregister(remote)
                remote.nick = new
                self._by_key[nick_key(new)] = remote
                self._by_skeleton.setdefault(nick_skeleton(new), remote)
                deliver(self._neighbours(remote, include_self=False), event)
            case Topic(room=str(name)):
                self.flush()
                titled = self._rooms.get(room_key(name))
                if titled is not None:
                    titled.topic = event.text
                    deliver(titled.members, event)
            case Private(target=target):
                self.flush()
                member = self._by_key.get(nick_key(target))
                if isinstance(member, Member):
                    send(member, event)

    def _remote(self, node: str, nick: str, *, create: bool = True) -> RemoteMember | None:
        """The remote user ``nick`` on ``node``; None if that name belongs to someone else."""
        known = self._by_key.get(nick_key(nick))
        if isinstance(known, RemoteMember) and known.node == node:
            return known
        if known is not None or not create:
            return None  # a local user holds it: the cluster's claim makes this a stale event
        remote = RemoteMember(nick, node)
        self._by_key[nick_key(nick)] = remote
        self._by_skeleton.setdefault(nick_skeleton(nick), remote)
        return remote

    def _drop_remote(self, remote: RemoteMember, quit_event: Quit) -> None:
        neighbours = self._neighbours(remote, include_self=False, quiet_too=False)
        for room in list(remote.rooms.values()):
            self._leave(remote, room)
        self._unregister(remote)
        deliver(neighbours, quit_event)

    def notice_all(self, text: str) -> None:
        """Tell every local user something about the server itself."""
        self.flush()
        deliver(self.members, Notice(text=text))

    def remote_nodes(self) -> set[str]:
        return {m.node for m in self._by_key.values() if isinstance(m, RemoteMember)}

    def forget_node(self, node: str, reason: str) -> None:
        """``node`` is gone: its users quit, as far as this node's users can tell."""
        self.flush()
        for remote in [m for m in self._by_key.values() if isinstance(m, RemoteMember)]:
            if remote.node == node:
                self._drop_remote(remote, Quit(nick=remote.nick, text=reason))

    def sync_node(self, node: str, roster: dict[str, list[str]]) -> None:
        """Make this node's view of ``node`` equal ``roster`` (nick -> rooms), with events."""
        self.flush()
        current = {
            nick_key(m.nick): m
            for m in self._by_key.values()
            if isinstance(m, RemoteMember) and m.node == node
        }
        wanted = {nick_key(nick): nick for nick in roster}
        for key, remote in current.items():
            if key not in wanted:
                self._drop_remote(remote, Quit(nick=remote.nick, text="Left while out of reach"))
        for nick, rooms in roster.items():
            user = self._remote(node, nick)
            if user is None:
                continue
            names = {room_key(r): r for r in rooms}
            for key, room in list(user.rooms.items()):
                if key not in names:
                    self.apply(node, Part(room=room.name, nick=user.nick))
            for name in names.values():
                self.apply(node, Join(room=name, nick=user.nick))

    def room_names(self) -> list[str]:
        return [room.name for room in self._rooms.values()]

    def seed_room(self, name: str, topic: str, history: Iterable[Message | Action]) -> None:
        """Fill a known room's topic and history from the cluster's store (at start-up)."""
        room = self._rooms.get(room_key(name))
        if room is None:
            return
        room.topic = room.topic or topic
        known = {event.id for event in room.history}
        merged = [event for event in history if event.id not in known] + list(room.history)
        room.history.clear()
        room.history.extend(sorted(merged, key=lambda event: event.ts))
