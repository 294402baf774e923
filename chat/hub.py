"""Rooms, nicknames, history and fan-out. The hub knows nothing about sockets or Redis.

A connection hands the hub a :class:`Peer`: something with a codec and a ``push`` that queues
bytes without ever blocking. Every event any peer receives goes through the hub's
:class:`Outbox`, the one ordered delivery path: it renders each event once per codec key,
pushes the same bytes to every recipient, batches what is posted to rooms per event-loop
iteration, and keeps, for every recipient, the order in which events happened. No caller
has a rule to remember: the only thing that could reorder a batch, a room's membership
changing under it, flushes the outbox itself (:meth:`Hub._enter`, :meth:`Hub._leave`).

The nickname registry changes only under ``Hub.lock``; every check-then-claim sequence
holds it, so a backend that must await (a cluster claiming a nickname remotely) cannot
interleave two registrations of one nickname.

A :class:`Backend` carries what happens here to other server processes. The default,
:class:`LocalBackend`, carries nothing: one process is the whole chat. The cluster
(``chat/cluster/``) publishes every local event and calls :meth:`Hub.relay` with the events
of other nodes; the hub knows another node's users only as names in its rooms
(``Room.remote``), and asks the backend to :meth:`~Backend.locate` one by nickname.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from chat.codecs import Codec
from chat.commands import (
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
from chat.protocol import (
    LOBBY,
    TOPIC_MAX,
    Action,
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
    "Outbox",
    "Peer",
    "Room",
]

DEFAULT_MAX_ROOMS = 32
DEFAULT_ANNOUNCE_LIMIT = 100
DEFAULT_MAX_TOTAL_ROOMS = 10_000
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
ROOMS_PAGE = 100  # rooms in one answer to /rooms
# Above this many rooms, the sorted room list is rebuilt at most once a second: a client
# asking for /rooms in a loop while rooms churn cannot make the server sort all day.
LISTING_CHEAP = 1000
# What one line of history costs beyond its text: the event object, its id and its strings.
LINE_OVERHEAD = 200


def history_cost(event: Message | Action) -> int:
    """The bytes one remembered line is counted as, against ``--history-bytes``."""
    return len(event.text) + LINE_OVERHEAD


class Peer(Protocol):
    """What the hub needs from a connection."""

    @property
    def codec(self) -> Codec: ...

    @property
    def busy(self) -> bool:
        """True while the client is falling behind (see Hub.private)."""

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
class Room:
    name: str
    history: deque[Message | Action]
    topic: str = ""
    members: dict[Member, None] = field(default_factory=dict)  # local, an ordered set
    remote: dict[str, str] = field(default_factory=dict)  # on other nodes: nick key -> nick

    @property
    def population(self) -> int:
        return len(self.members) + len(self.remote)


# --- the one delivery path ---------------------------------------------------------------


class Outbox:
    """Every event on its way to a peer, in the order the hub produced them.

    Three kinds of entry share one list: bytes already rendered for one peer (answers,
    errors, notices), an event posted to a room (rendered at flush time, once per codec key,
    consecutive events of one room batched into one push per member), and an action to run
    in its place (a session closing after its ``bye``). The list is flushed once per
    event-loop iteration, or earlier by :meth:`flush`.
    """

    __slots__ = ("_pending", "_scheduled")

    def __init__(self) -> None:
        self._pending: list[tuple[Peer, bytes] | tuple[Room, Event] | Callable[[], None]] = []
        self._scheduled = False

    def send(self, peer: Peer, event: Event) -> None:
        """One event for one peer, rendered now in the peer's current codec."""
        self._add((peer, peer.codec.encode(event)))

    def post(self, room: Room, event: Event) -> None:
        """An event for every local member of ``room``."""
        self._add((room, event))

    def deliver(self, members: Iterable[Member], event: Event) -> None:
        """An event for each of ``members``: rendered once per codec key, in place."""
        rendered: dict[object, bytes] = {}
        for member in members:
            peer = member.peer
            codec = peer.codec
            data = rendered.get(codec.key)
            if data is None:
                data = rendered[codec.key] = codec.encode(event)
            self._add((peer, data))

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything queued before it has been pushed."""
        self._add(action)

    def _add(self, entry: tuple[Peer, bytes] | tuple[Room, Event] | Callable[[], None]) -> None:
        self._pending.append(entry)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Push everything pending, in order. Cheap when there is nothing."""
        self._scheduled = False
        while self._pending:
            pending, self._pending = self._pending, []
            start = 0
            while start < len(pending):
                entry = pending[start]
                start += 1
                if callable(entry):
                    entry()
                elif isinstance(entry[0], Room):
                    room = entry[0]
                    events = [entry[1]]
                    while start < len(pending):  # one batch per run of one room's events
                        following = pending[start]
                        if callable(following) or following[0] is not room:
                            break
                        events.append(following[1])
                        start += 1
                    _fan_out(room.members, events)
                else:
                    peer, data = entry
                    peer.push(data)


def _fan_out(members: Iterable[Member], events: list[Event]) -> None:
    """Render ``events`` once per codec key and push the same bytes to every member."""
    rendered: dict[object, bytes] = {}
    for member in members:
        peer = member.peer
        codec = peer.codec
        data = rendered.get(codec.key)
        if data is None:
            data = rendered[codec.key] = b"".join(codec.encode(event) for event in events)
        peer.push(data)


# --- the cluster seam --------------------------------------------------------------------


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

    async def locate(self, nick: str) -> str | None:
        """The registered nickname of ``nick`` if they are connected to another node."""

    def send_private(self, event: Private) -> None:
        """Deliver a private message to ``event.target``, a user on another node, or raise
        :class:`ProtocolError` (``cluster_down``) when that cannot be done now."""

    def forget_room(self, name: str) -> None:
        """The last member left ``name``: its history and topic may go."""

    @property
    def congested(self) -> bool:
        """True while more is waiting to be published than the link carries: sessions stop
        reading their clients (as for a slow socket) until :meth:`uncongested`, so an
        accepted message is never dropped on its way to the other nodes."""

    async def uncongested(self) -> None:
        """Return once the backlog is back under its low-water mark."""


class LocalBackend:
    """The default backend: this process is the whole chat, so there is nothing to tell."""

    linked = True

    async def claim(self, nick: str) -> None:
        return None

    async def release(self, nick: str) -> None:
        return None

    def publish(self, event: Event) -> None:
        return None

    async def locate(self, nick: str) -> str | None:
        return None

    def send_private(self, event: Private) -> None:
        raise AssertionError("a single process has no other node")

    def forget_room(self, name: str) -> None:
        return None

    congested = False

    async def uncongested(self) -> None:
        return None


def _answer(event: Event, request: str | None) -> Event:
    """``event`` as the answer to request ``request`` (protocol.md, "Request ids")."""
    return event if request is None else replace(event, re=request)


class Hub:
    """All chat state of one server process."""

    def __init__(
        self,
        *,
        history: int = 50,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        announce_limit: int = DEFAULT_ANNOUNCE_LIMIT,
        max_total_rooms: int = DEFAULT_MAX_TOTAL_ROOMS,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        backend: Backend | None = None,
    ) -> None:
        self.lock = asyncio.Lock()
        self.backend: Backend = backend or LocalBackend()
        self.outbox = Outbox()
        self.history_length = history
        self.max_rooms = max_rooms
        # Rooms larger than this stop announcing joins, parts and quits and list their
        # members only on /who: otherwise filling a room costs O(members^2) lines.
        self.announce_limit = announce_limit
        self._by_key: dict[str, Member] = {}
        self._by_skeleton: dict[str, Member] = {}
        # The server's memory has a bound whatever clients do: at most max_total_rooms
        # rooms, and history_bytes of history in all, the least recently active room's
        # history going first.
        self.max_total_rooms = max_total_rooms
        self.history_bytes = history_bytes
        self._remembered = 0  # history bytes held, by history_cost
        self._by_activity: dict[Room, None] = {}  # rooms with history, least recent first
        self._last_active: Room | None = None  # the last of them
        self._rooms: dict[str, Room] = {}
        self._listing: list[RoomInfo] = []  # every room, largest first (see _room_list)
        self._listing_at = float("-inf")  # loop time it was built
        self._listing_dirty = True
        self._matches: dict[str, list[RoomInfo]] = {}  # filter -> its rooms, of _listing
        self._room_skeletons: dict[str, Room] = {}  # what each room's name looks like
        self._room(LOBBY)

    # --- commands ---------------------------------------------------------------------------

    async def execute(self, member: Member, request: Request) -> None:
        """Carry out one registered member's command; refusals raise ProtocolError."""
        pending = self.dispatch(member, request)
        if pending is not None:
            await pending

    def dispatch(self, member: Member, request: Request) -> Awaitable[None] | None:
        """:meth:`execute` without a coroutine of its own for the commands that need none:
        most are done when this returns; the few that must wait (a rename claims its nickname
        cluster-wide, a private message may have to find its recipient) return what to
        await. A session calls this for every line, so the common case stays cheap."""
        command = request.command
        if type(command) is SayCommand:  # most lines; a class pattern costs 3x this test
            self.say(member, command.room, command.text)
            return None
        re = request.id
        match command:
            case MeCommand(text=text, room=room):
                self.act(member, room, text)
            case MsgCommand(nick=nick, text=text):
                return self.private(member, nick, text, re)
            case JoinCommand(room=room):
                self.join(member, room, re)
            case PartCommand(room=room, reason=reason):
                self.part(member, room, reason, re)
            case RoomsCommand(offset=offset, match=match):
                self.rooms(member, offset, match, re)
            case WhoCommand(room=room):
                self.who(member, room, re)
            case TopicCommand(room=room, text=text):
                self.topic(member, room, text, re)
            case NickCommand(nick=nick):
                return self.rename(member, nick, re)
            case other:
                raise AssertionError(f"not a hub command: {other!r}")
        return None

    def tell(self, member: Member, event: Event, request: str | None = None) -> None:
        """Send one event to one member, as the answer to ``request`` if given."""
        self.outbox.send(member.peer, _answer(event, request))

    # --- the registry ---------------------------------------------------------------------

    @property
    def members(self) -> list[Member]:
        """The users connected to this process."""
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

    async def register(self, peer: Peer, raw_nick: str, request: str | None = None) -> Member:
        """Claim a nickname for ``peer``, welcome it and put it in the lobby."""
        nick = validate_nick(raw_nick)
        async with self.lock:
            self._check_available(nick)
            await self.backend.claim(nick)
            member = Member(nick, peer)
            self._by_key[nick_key(nick)] = member
            self._by_skeleton[nick_skeleton(nick)] = member
        welcome = Welcome(nick=nick, text=f"Welcome, {nick}! Type /help for the commands.")
        self.tell(member, welcome, request)
        self.join(member, LOBBY)
        return member

    async def rename(self, member: Member, raw_nick: str, request: str | None = None) -> None:
        nick = validate_nick(raw_nick)
        async with self.lock:
            self._check_available(nick, owner=member)
            old = member.nick
            if nick == old:
                self.tell(member, Notice(text=f"You are already called {nick}."), request)
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
        self.outbox.deliver(self._sharing(member.rooms.values(), member), event)
        self.tell(member, event, request)
        self.backend.publish(event)

    def _unregister(self, member: Member) -> None:
        del self._by_key[nick_key(member.nick)]
        if self._by_skeleton.get(nick_skeleton(member.nick)) is member:
            del self._by_skeleton[nick_skeleton(member.nick)]

    async def remove(self, member: Member, reason: str) -> None:
        """Forget a member that disconnected, and tell everyone who shared a room with it."""
        async with self.lock:
            if self._by_key.get(nick_key(member.nick)) is not member:
                return
            self._unregister(member)
            await self.backend.release(member.nick)
        neighbours = self._sharing(member.rooms.values(), member, quiet_too=False)
        for room in list(member.rooms.values()):
            self._leave(member, room)
        event = Quit(nick=member.nick, text=reason)
        self.outbox.deliver(neighbours, event)
        self.backend.publish(event)

    def _sharing(
        self, rooms: Iterable[Room], without: Member | None, *, quiet_too: bool = True
    ) -> list[Member]:
        """The local members of ``rooms``, once each, but ``without``; without the members
        of rooms too large to announce comings and goings unless ``quiet_too``."""
        seen: dict[Member, None] = {}
        for room in rooms:
            if quiet_too or not self._quiet(room):
                seen.update(room.members)
        if without is not None:
            seen.pop(without, None)
        return list(seen)

    # --- rooms ----------------------------------------------------------------------------

    def _quiet(self, room: Room) -> bool:
        return room.population > self.announce_limit

    def _room(self, name: str) -> Room:
        key = room_key(name)
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = Room(name, deque(maxlen=self.history_length))
            self._room_skeletons.setdefault(nick_skeleton(name), room)
        return room

    def _check_new_room(self, name: str) -> None:
        """A new room may not look like an existing one (#Iobby beside #lobby), nor exceed
        the server's room count."""
        if len(self._rooms) >= self.max_total_rooms:
            raise ProtocolError(
                ErrorCode.ROOMS_FULL,
                f"The server holds {self.max_total_rooms} rooms already; join an existing one.",
            )
        lookalike = self._room_skeletons.get(nick_skeleton(name))
        if lookalike is not None and room_key(lookalike.name) != room_key(name):
            raise ProtocolError(
                ErrorCode.ROOM_CONFUSABLE,
                f"The room name {name} looks too much like {lookalike.name}; join that one "
                "or choose another name.",
            )

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

    def _enter(self, member: Member, room: Room) -> None:
        """Add a member to a room. Events already posted to the room were addressed to
        its members as they were, so they go out first."""
        self.outbox.flush()
        room.members[member] = None
        member.rooms[room_key(room.name)] = room
        self._listing_dirty = True

    def _leave(self, member: Member, room: Room) -> None:
        self.outbox.flush()  # as in _enter: what was posted before reaches who was there
        del member.rooms[room_key(room.name)]
        del room.members[member]
        self._listing_dirty = True
        if self._drop_if_empty(room):
            self.backend.forget_room(room.name)

    def _drop_if_empty(self, room: Room) -> bool:
        if room.population or room_key(room.name) == LOBBY:
            return False
        del self._rooms[room_key(room.name)]
        self._forget_history(room)
        if self._room_skeletons.get(nick_skeleton(room.name)) is room:
            del self._room_skeletons[nick_skeleton(room.name)]
        return True

    def join(self, member: Member, name: str, request: str | None = None) -> None:
        """Join ``name`` (creating it) and make it active; if already joined, just switch."""
        key = room_key(validate_room(name))
        joined = member.rooms.get(key)
        if joined is not None:
            member.active = joined
            notice = Notice(room=joined.name, text=f"Now talking in {joined.name}.")
            self.tell(member, notice, request)
            return
        if len(member.rooms) >= self.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"You are in {self.max_rooms} rooms already; /part one first.",
            )
        name = validate_room(name)
        if key not in self._rooms:
            self._check_new_room(name)
        room = self._room(name)
        self._enter(member, room)
        member.active = room
        event = Join(room=room.name, nick=member.nick)
        if not self._quiet(room):
            self.outbox.deliver([m for m in room.members if m is not member], event)
        self.tell(member, event, request)
        self.backend.publish(event)
        if room.topic:
            self.tell(member, Topic(room=room.name, text=room.topic))
        if self._quiet(room):
            self.tell(
                member,
                Notice(
                    room=room.name,
                    text=f"{room.population} in {room.name}: too many to list here, and "
                    f"joins and parts are not announced; /who {room.name} lists them.",
                ),
            )
        else:
            self.tell(member, self._who(room))
        for past in room.history:
            self.tell(member, replace(past, history=True))

    def part(
        self, member: Member, name: str | None, reason: str, request: str | None = None
    ) -> None:
        room = self._member_room(member, name)
        event = Part(room=room.name, nick=member.nick, text=reason)
        if not self._quiet(room):
            self.outbox.deliver([m for m in room.members if m is not member], event)
        self.tell(member, event, request)
        self._leave(member, room)
        self.backend.publish(event)
        if member.active is room:
            member.active = next(reversed(member.rooms.values()), None)
            if member.active is None:
                notice = Notice(text="You are in no room now; /join #room to talk.")
            else:
                notice = Notice(
                    room=member.active.name, text=f"Now talking in {member.active.name}."
                )
            self.tell(member, notice, request)

    def rooms(
        self,
        member: Member,
        offset: int = 0,
        match: str | None = None,
        request: str | None = None,
    ) -> None:
        """One page of the rooms matching ``match`` (in name or topic), largest first."""
        found = self._room_list(match.strip().lower() if match else "")
        page = tuple(found[offset : offset + ROOMS_PAGE])
        self.tell(member, RoomList(rooms=page, total=len(found), offset=offset), request)

    def _room_list(self, match: str) -> list[RoomInfo]:
        """The sorted room list (and its filtered views), rebuilt only when a room changed,
        and with many rooms at most once a second."""
        now = asyncio.get_running_loop().time()
        if self._listing_dirty and (
            len(self._rooms) <= LISTING_CHEAP or now - self._listing_at >= 1.0
        ):
            self._listing = sorted(
                (RoomInfo(r.name, r.population, r.topic) for r in self._rooms.values()),
                key=lambda info: (-info.members, room_key(info.room)),
            )
            self._listing_at = now
            self._listing_dirty = False
            self._matches.clear()
        if not match:
            return self._listing
        found = self._matches.get(match)
        if found is None:
            if len(self._matches) >= 64:
                self._matches.clear()
            found = self._matches[match] = [
                info
                for info in self._listing
                if match in info.room.lower() or match in info.topic.lower()
            ]
        return found

    def _who(self, room: Room) -> Who:
        nicks = sorted([m.nick for m in room.members] + list(room.remote.values()), key=nick_key)
        return Who(room=room.name, members=tuple(nicks))

    def who(self, member: Member, name: str | None, request: str | None = None) -> None:
        room = self._member_room(member, None) if name is None else self._existing_room(name)
        self.tell(member, self._who(room), request)

    def topic(
        self, member: Member, name: str | None, text: str | None, request: str | None = None
    ) -> None:
        if text is None:
            room = self._member_room(member, None) if name is None else self._existing_room(name)
            self.tell(member, Topic(room=room.name, text=room.topic), request)
            return
        room = self._member_room(member, name)
        text = text.strip()
        if len(text) > TOPIC_MAX:
            raise ProtocolError(
                ErrorCode.TOPIC_TOO_LONG,
                f"Topic is too long ({len(text)} characters, at most {TOPIC_MAX}).",
            )
        room.topic = text
        self._listing_dirty = True
        event = Topic(room=room.name, nick=member.nick, text=text)
        self.outbox.deliver([m for m in room.members if m is not member], event)
        self.tell(member, event, request)
        self.backend.publish(event)

    # --- messages -------------------------------------------------------------------------
    #
    # Room messages are the hot path: posted to the room, they are rendered and pushed once
    # per event-loop iteration, so a member gets one push with everything said in that
    # iteration instead of one push per message.

    def say(self, member: Member, name: str | None, text: str) -> None:
        room = self._member_room(member, name)
        self._said(room, Message(room=room.name, nick=member.nick, text=text))

    def act(self, member: Member, name: str | None, text: str) -> None:
        room = self._member_room(member, name)
        self._said(room, Action(room=room.name, nick=member.nick, text=text))

    def _said(self, room: Room, event: Message | Action) -> None:
        self._remember(room, event)
        self.outbox.post(room, event)
        self.backend.publish(event)

    async def private(
        self, member: Member, nick: str, text: str, request: str | None = None
    ) -> None:
        target = self.find(nick)
        if target is not None:
            event = Private(nick=member.nick, target=target.nick, text=text)
            if target is member:
                self.tell(member, event, request)
                return
            if target.peer.busy:  # a flood of private messages must not get them dropped
                raise ProtocolError(
                    ErrorCode.RECIPIENT_BUSY,
                    f"{target.nick} is not keeping up with what is sent to them; try again later.",
                )
            self.tell(target, event)
        else:
            remote = await self.backend.locate(nick)
            if remote is None:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
            event = Private(nick=member.nick, target=remote, text=text)
            self.backend.send_private(event)
        self.tell(member, replace(event, echo=True), request)

    # --- events from other nodes ----------------------------------------------------------
    #
    # The cluster calls these with what happened elsewhere. They update this node's rooms
    # and deliver to local members only: the node where an event happened has already
    # delivered it to its own users.

    def relay(self, event: Event, rooms: Iterable[str] = ()) -> None:
        """Apply one event that happened on another node.

        ``rooms`` names the rooms a quitting or renamed remote user was in (the cluster
        keeps track of that); every other event names its own room or target.
        """
        match event:
            case Message(room=str(name)) | Action(room=str(name)):
                said_in = self._rooms.get(room_key(name))
                if said_in is not None:  # the sender's join always arrives first
                    self._remember(said_in, event)
                    self.outbox.post(said_in, event)
            case Join(room=str(name), nick=str(nick)):
                room = self._room(name)
                if nick_key(nick) in room.remote:
                    return
                self.outbox.flush()  # the room's population changes: see _enter
                room.remote[nick_key(nick)] = nick
                self._listing_dirty = True
                if not self._quiet(room):
                    self.outbox.deliver(room.members, event)
            case Part(room=str(name), nick=str(nick)):
                left = self._rooms.get(room_key(name))
                if left is None or nick_key(nick) not in left.remote:
                    return
                if not self._quiet(left):
                    self.outbox.deliver(left.members, event)
                self.outbox.flush()
                del left.remote[nick_key(nick)]
                self._listing_dirty = True
                self._drop_if_empty(left)
            case Quit(nick=str(nick)):
                known = [r for r in self._known(rooms) if nick_key(nick) in r.remote]
                self.outbox.deliver(self._sharing(known, None, quiet_too=False), event)
                self.outbox.flush()
                for room in known:
                    del room.remote[nick_key(nick)]
                    self._drop_if_empty(room)
                self._listing_dirty = True
            case Nick(nick=str(old), new_nick=new):
                known = [r for r in self._known(rooms) if nick_key(old) in r.remote]
                for room in known:
                    del room.remote[nick_key(old)]
                    room.remote[nick_key(new)] = new
                self.outbox.deliver(self._sharing(known, None), event)
            case Topic(room=str(name)):
                titled = self._rooms.get(room_key(name))
                if titled is not None:
                    titled.topic = event.text
                    self._listing_dirty = True
                    self.outbox.deliver(titled.members, event)
            case Private(target=target):
                member = self._by_key.get(nick_key(target))
                if member is not None:
                    self.tell(member, event)

    def _known(self, names: Iterable[str]) -> list[Room]:
        return [room for name in names if (room := self._rooms.get(room_key(name)))]

    def notice_all(self, text: str) -> None:
        """Tell every local user something about the server itself."""
        self.outbox.deliver(self.members, Notice(text=text))

    def room_names(self) -> list[str]:
        return [room.name for room in self._rooms.values()]

    def seed_room(self, name: str, topic: str, history: Iterable[Message | Action]) -> None:
        """Fill a known room's topic and history from a store (at start-up)."""
        room = self._rooms.get(room_key(name))
        if room is None:
            return
        room.topic = room.topic or topic
        self._listing_dirty = True
        known = {event.id for event in room.history}
        merged = [event for event in history if event.id not in known] + list(room.history)
        self._forget_history(room)
        for event in sorted(merged, key=lambda event: event.ts):
            self._remember(room, event)

    # --- history within its global bound ------------------------------------------------

    def _remember(self, room: Room, event: Message | Action) -> None:
        """Keep ``event`` in its room's history, within the global bound. Called for every
        message said, so the bookkeeping is a few comparisons in the common case."""
        history = room.history
        maxlen = history.maxlen
        if not maxlen:
            return
        cost = len(event.text) + LINE_OVERHEAD  # history_cost, inlined
        if len(history) == maxlen:
            cost -= history_cost(history[0])  # the deque drops it
        history.append(event)
        self._remembered += cost
        if room is not self._last_active:  # a busy room stays where it is: last
            activity = self._by_activity
            activity.pop(room, None)
            activity[room] = None
            self._last_active = room
        while self._remembered > self.history_bytes:
            oldest = next(iter(self._by_activity))
            if oldest is room:  # the only room with history: trim it from its oldest line
                self._remembered -= history_cost(history.popleft())
                if not history:
                    self._forget_history(room)
            else:
                self._forget_history(oldest)

    def _forget_history(self, room: Room) -> None:
        self._remembered -= sum(history_cost(event) for event in room.history)
        room.history.clear()
        self._by_activity.pop(room, None)
        if self._last_active is room:
            self._last_active = None
