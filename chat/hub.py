"""Rooms, nicknames, history and fan-out. The hub knows nothing about sockets.

A connection hands the hub a :class:`Peer`: something with a dialect and a ``push`` that
queues bytes without ever blocking. The hub renders each event once per dialect and pushes
the same bytes to every recipient, so a broadcast costs one render and one ``push`` per
member and never waits on anybody's socket.

The nickname registry changes only under ``Hub.lock``; every check-then-claim sequence
holds it, so a backend that must await (a cluster claiming a nickname remotely) cannot
interleave two registrations of one nickname.
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

__all__ = ["DEFAULT_MAX_ROOMS", "Hub", "Member", "Peer", "Room"]

DEFAULT_MAX_ROOMS = 32


class Peer(Protocol):
    """What the hub needs from a connection."""

    @property
    def dialect(self) -> Dialect: ...

    def push(self, data: bytes) -> None:
        """Queue bytes for the client; must not block, may drop a client that is too slow."""


@dataclass(eq=False, slots=True)
class Member:
    """A registered user: their nickname, their rooms in join order, and their active room."""

    nick: str
    peer: Peer
    rooms: dict[str, Room] = field(default_factory=dict)
    active: Room | None = None


@dataclass(eq=False, slots=True)
class Room:
    name: str
    history: deque[Message | Action]
    topic: str = ""
    members: dict[Member, None] = field(default_factory=dict)  # an ordered set


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

    def __init__(self, *, history: int = 50, max_rooms: int = DEFAULT_MAX_ROOMS) -> None:
        self.lock = asyncio.Lock()
        self._pending: list[tuple[Room, Event]] = []
        self._flush_scheduled = False
        self.history_length = history
        self.max_rooms = max_rooms
        self._by_key: dict[str, Member] = {}
        self._by_skeleton: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        self._room(LOBBY)

    # --- the registry ---------------------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        return list(self._by_key.values())

    def find(self, nick: str) -> Member | None:
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
            del self._by_key[nick_key(old)]
            del self._by_skeleton[nick_skeleton(old)]
            member.nick = nick
            self._by_key[nick_key(nick)] = member
            self._by_skeleton[nick_skeleton(nick)] = member
        deliver(self._neighbours(member, include_self=True), Nick(nick=old, new_nick=nick))

    async def remove(self, member: Member, reason: str) -> None:
        """Forget a member that disconnected, and tell everyone who shared a room with it."""
        self.flush()
        async with self.lock:
            if self._by_key.get(nick_key(member.nick)) is not member:
                return
            del self._by_key[nick_key(member.nick)]
            del self._by_skeleton[nick_skeleton(member.nick)]
        neighbours = self._neighbours(member, include_self=False)
        for room in list(member.rooms.values()):
            self._leave(member, room)
        deliver(neighbours, Quit(nick=member.nick, text=reason))

    def _neighbours(self, member: Member, *, include_self: bool) -> list[Member]:
        """Everyone who shares a room with ``member``, once each."""
        seen: dict[Member, None] = {member: None} if include_self else {}
        for room in member.rooms.values():
            seen.update(room.members)
        if not include_self:
            seen.pop(member, None)
        return list(seen)

    # --- rooms ----------------------------------------------------------------------------

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

    def _leave(self, member: Member, room: Room) -> None:
        del member.rooms[room_key(room.name)]
        del room.members[member]
        if not room.members and room_key(room.name) != LOBBY:
            del self._rooms[room_key(room.name)]

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
        deliver(room.members, Join(room=room.name, nick=member.nick))
        if room.topic:
            send(member, Topic(room=room.name, text=room.topic))
        send(member, self._who(room))
        for past in room.history:
            send(member, replace(past, history=True))

    def part(self, member: Member, name: str | None, reason: str) -> None:
        self.flush()
        room = self._member_room(member, name)
        deliver(room.members, Part(room=room.name, nick=member.nick, text=reason))
        self._leave(member, room)
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
            RoomList(rooms=tuple(RoomInfo(r.name, len(r.members), r.topic) for r in listing)),
        )

    def _who(self, room: Room) -> Who:
        nicks = sorted((m.nick for m in room.members), key=nick_key)
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
        deliver(room.members, Topic(room=room.name, nick=member.nick, text=text))

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

    def act(self, member: Member, name: str | None, text: str) -> None:
        room = self._member_room(member, name)
        event = Action(room=room.name, nick=member.nick, text=text)
        room.history.append(event)
        self._post(room, event)

    def private(self, member: Member, nick: str, text: str) -> None:
        self.flush()
        target = self.find(nick)
        if target is None:
            raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
        event = Private(nick=member.nick, target=target.nick, text=text)
        send(target, event)
        if target is not member:
            send(member, replace(event, echo=True))
