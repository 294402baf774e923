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
import collections
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

from chat.accounts import LoginThrottle, Passwords, check_password
from chat.codecs import Codec
from chat.commands import (
    HISTORY_MAX,
    HISTORY_PAGE,
    AwayCommand,
    BanCommand,
    BansCommand,
    ClaimCommand,
    DeopCommand,
    DevoiceCommand,
    GbanCommand,
    HistoryCommand,
    IgnoreCommand,
    IgnoresCommand,
    InviteCommand,
    JoinCommand,
    KickCommand,
    KillCommand,
    LoginCommand,
    MeCommand,
    ModeCommand,
    MsgCommand,
    MuteCommand,
    NickCommand,
    NoticeCommand,
    OpCommand,
    PartCommand,
    PasswordCommand,
    RegisterCommand,
    Request,
    RoomsCommand,
    SayCommand,
    TopicCommand,
    UnbanCommand,
    UnclaimCommand,
    UngbanCommand,
    UnignoreCommand,
    UnmuteCommand,
    UnregisterCommand,
    VoiceCommand,
    WhoCommand,
    WhoisCommand,
)
from chat.errors import ErrorCode, ProtocolError
from chat.protocol import (
    LOBBY,
    ROOM_MODES,
    TOPIC_MAX,
    Action,
    Away,
    BanInfo,
    BanList,
    Error,
    Event,
    Ignores,
    Invite,
    Join,
    Kick,
    LoggedIn,
    Message,
    Mode,
    Modes,
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
    Whois,
    nick_key,
    nick_skeleton,
    room_key,
    validate_nick,
    validate_room,
)
from chat.rooms import Departed, Member, Room, address_mask, masks_of, parse_mask
from chat.storage import Account, Ban, MemoryStore, RoomState, Store

__all__ = [
    "DEFAULT_ANNOUNCE_LIMIT",
    "DEFAULT_MAX_IGNORES",
    "DEFAULT_MAX_ROOMS",
    "Backend",
    "Hub",
    "LocalBackend",
    "Member",
    "Outbox",
    "Peer",
    "Room",
]

log = logging.getLogger("chat.hub")

DEFAULT_MAX_ROOMS = 32
DEFAULT_MAX_IGNORES = 100
DEFAULT_ANNOUNCE_LIMIT = 100
DEFAULT_MAX_TOTAL_ROOMS = 10_000
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
ROOMS_PAGE = 100  # rooms in one answer to /rooms
WHOWAS_KEPT = 1000  # departed users IRC's WHOWAS remembers
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

    @property
    def address(self) -> str:
        """The client's IP address, for bans (never shown but to server operators)."""

    def push(self, data: bytes) -> None:
        """Queue bytes for the client; must not block, may drop a client that is too slow."""

    def close(self, code: ErrorCode, text: str) -> None:
        """Say goodbye with a reason and disconnect (used when the cluster revokes a nick)."""


# --- the one delivery path ---------------------------------------------------------------


@dataclass
class Counters:
    """What the server counts as it goes, for ``--metrics``: plain integers, cheap to bump
    (chat.metrics reads them when Prometheus scrapes)."""

    lines_in: collections.Counter[str] = field(default_factory=collections.Counter)
    registrations: collections.Counter[str] = field(default_factory=collections.Counter)
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)
    loop_lag: float = 0.0  # seconds, the last sample


# Entries pending in one turn of the loop past which the outbox starts a commit before the
# turn ends, where the store commits on its own thread (Store.early_commits). A busy turn
# reads every socket once, tens of thousands of lines; committing them all only after it
# would leave the loop idle while the last commit runs and deliver in one late burst.
# Measured on the flat-out fan-out: 1,000 and 10,000 both cost more than 3,000
# (docs/performance.md); it is an internal batching size, not a bound on clients.
EARLY_COMMIT = 3000
# While the store is out (a full disk, Redis away) every commit fails: the first failure
# is logged whole, then one line at most this often (seconds) until a commit succeeds.
FAILURE_LOG_EVERY = 60.0


class Outbox:
    """Every event on its way to a peer, in the order the hub produced them.

    Three kinds of entry share one list: bytes already rendered for one peer (answers,
    errors, notices), an event posted to a room (rendered at delivery, once per codec key,
    consecutive events of one room batched into one push per member), and an action to run
    in its place (a session closing after its ``bye``). The list is delivered once per
    event-loop iteration.

    Nothing is delivered before the store has made durable what was written before it: when
    the store is dirty, what is pending waits for its commit (started at the end of the
    loop iteration that queued it, or every ``EARLY_COMMIT`` entries within a busy one, and
    reported by plain calls, :meth:`Store.commit_then`), so an acknowledged message survives
    a crash. A room whose membership
    changes meanwhile has its pending events pinned to its members as they were
    (:meth:`settle`), so nobody gets what was said before they came, or misses what was said
    before they left.
    """

    __slots__ = (
        "_commits",
        "_covered",
        "_draining",
        "_early_at",
        "_failure_logged",
        "_failures",
        "_pending",
        "_posted",
        "_scheduled",
        "_store",
        "delivered",
    )

    def __init__(self, store: Store | None = None) -> None:
        self._pending: list[_Entry] = []
        self._posted: set[Room] = set()  # rooms with a post pending
        self._scheduled = False
        self._store: Store = store or MemoryStore()
        self._commits: deque[int] = deque()  # per commit under way, the entries it covers
        self._covered = 0  # their sum
        # The pending length at which to try a commit mid-turn: EARLY_COMMIT entries after
        # the last commit started or the last try.
        self._early_at = EARLY_COMMIT
        self._draining: asyncio.Future[None] | None = None  # drain() waiting on a commit
        self._failures = 0  # commits failed in a row
        self._failure_logged = 0.0  # when the last of them was logged (monotonic)
        self.delivered = 0  # room events pushed, one per member per batch (--metrics)

    def send(self, peer: Peer, event: Event) -> None:
        """One event for one peer, rendered now in the peer's current codec."""
        self._add((peer, peer.codec.encode_one(event)))

    def send_bytes(self, peer: Peer, data: bytes) -> None:
        """Bytes already rendered for one peer, in their place among its events."""
        if data:
            self._add((peer, data))

    def post(self, room: Room, event: Event) -> None:
        """An event for every local member of ``room``."""
        self._posted.add(room)
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

    def settle(self, room: Room) -> None:
        """``room``'s membership is about to change: what was posted to it so far goes to
        its members as they are now."""
        if room not in self._posted:
            return
        self._posted.discard(room)
        members = list(room.members)
        pending = self._pending
        for index, entry in enumerate(pending):
            if type(entry) is tuple and entry[0] is room:
                pending[index] = (members, entry[1])

    def _add(self, entry: _Entry) -> None:
        pending = self._pending
        pending.append(entry)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._release)
        elif len(pending) >= self._early_at:
            self._early_at = len(pending) + EARLY_COMMIT  # the next try, if none starts now
            if self._store.early_commits and self._store.dirty:
                self._cover()

    def _release(self) -> None:
        self._scheduled = False
        if self._commits or self._store.dirty:
            self._cover()  # the commits under way release what is pending as they report
            return
        self._push(len(self._pending))

    def _cover(self) -> None:
        """Start a commit for the pending entries no commit covers yet (they follow writes
        the store has not made durable), unless one already waits to begin: then what is
        pending waits for the next report and goes in one commit, so a slow disk gets bigger
        commits rather than a queue of small ones. A commit begun while another writes means
        a line waits for one commit, not two; with a store that commits on its own thread,
        :meth:`_add` calls this in the middle of a busy turn too (``EARLY_COMMIT``)."""
        uncovered = len(self._pending) - self._covered
        if uncovered and not self._store.commit_waiting:
            self._commits.append(uncovered)
            self._covered += uncovered
            self._early_at = len(self._pending) + EARLY_COMMIT
            self._store.commit_then(self._committed)

    def _committed(self, error: BaseException | None) -> None:
        """Deliver what the oldest commit under way covered."""
        if error is not None:  # a full disk must not stop the chat
            self._failed(error)
        elif self._failures:
            log.warning("store commits succeed again, after %d failed", self._failures)
            self._failures = 0
        count = self._commits.popleft()
        self._covered -= count
        self._push(count)
        self._cover()
        if self._draining is not None and not self._commits:
            self._draining.set_result(None)
            self._draining = None

    def _failed(self, error: BaseException) -> None:
        """Log a failed commit without filling the log (or the disk it may lack)."""
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            log.error("store commit failed; delivering anyway", exc_info=error)
        elif now - self._failure_logged >= FAILURE_LOG_EVERY:
            log.error(
                "store commits still failing, %d in a row (delivering anyway): %r",
                self._failures,
                error,
            )
        else:
            return
        self._failure_logged = now

    async def drain(self) -> None:
        """Return once everything pending has been delivered (shutdown)."""
        while self._pending or self._commits:
            if not self._commits:
                self._release()
                continue
            if self._draining is None:
                self._draining = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._draining)

    def flush(self) -> None:
        """Push everything pending now, in order, whether or not the store has committed
        what it follows: for tests. The commits under way still report, with nothing left
        to deliver."""
        self._commits = deque(0 for _ in self._commits)
        self._covered = 0
        self._push(len(self._pending))

    def _push(self, count: int) -> None:
        """Push the first ``count`` entries pending, in order."""
        pending, self._pending = self._pending[:count], self._pending[count:]
        self._early_at -= count  # as far past the last commit's start as before
        if not self._pending:
            self._posted.clear()
        start = 0
        while start < len(pending):
            entry = pending[start]
            start += 1
            if callable(entry):
                entry()
                continue
            target = entry[0]
            if isinstance(target, Room | list):
                events = [cast(Event, entry[1])]
                while start < len(pending):  # one batch per run of one room's events
                    following = pending[start]
                    if callable(following) or following[0] is not target:
                        break
                    events.append(following[1])
                    start += 1
                members = target.members if isinstance(target, Room) else target
                _fan_out(members, events)
                self.delivered += len(members)
            else:
                target.push(cast(bytes, entry[1]))


_Entry = tuple["Peer", bytes] | tuple[Room, Event] | tuple[list[Member], Event] | Callable[[], None]


def _fan_out(members: Iterable[Member], events: list[Event]) -> None:
    """Render ``events`` once per codec key and push the same bytes to every member. A
    member who ignores someone, or whose dialect does not echo their own lines (IRC
    without ``echo-message``), gets that rendering with those lines cut out."""
    rendered: dict[object, bytes] = {}
    offsets: dict[object, list[int]] = {}  # where each event's bytes start, and the end
    senders: dict[str, list[int]] | None = None  # nick key -> indices of their lines
    for member in members:
        peer = member.peer
        codec = peer.codec
        key = codec.key
        data = rendered.get(key)
        if data is None:
            parts = [codec.encode(event) for event in events]
            data = rendered[key] = b"".join(parts)
            offsets[key] = [0, *itertools.accumulate(len(part) for part in parts)]
        if member.ignores or not codec.echoes:
            if senders is None:
                senders = _senders(events)
            hide: list[int] = []
            if not codec.echoes:
                hide += senders.get(nick_key(member.nick), ())
            for nick in senders.keys() & member.ignores:
                hide += senders[nick]
            if hide:
                data = _without(data, offsets[key], sorted(hide))
                if not data:
                    continue
        peer.push(data)


def _senders(events: list[Event]) -> dict[str, list[int]]:
    """Who said which of ``events`` (messages and actions), by nick key."""
    found: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        if type(event) in (Message, Action):
            found.setdefault(nick_key(event.nick or ""), []).append(index)
    return found


def _without(data: bytes, offsets: list[int], hide: list[int]) -> bytes:
    """``data`` less the rendered events at the (sorted) indices ``hide``."""
    pieces = []
    start = 0
    for index in hide:
        pieces.append(data[start : offsets[index]])
        start = offsets[index + 1]
    pieces.append(data[start:])
    return b"".join(pieces)


def _ignored(member: Member, event: Event) -> bool:
    """Whether ``member`` ignores who said ``event`` (messages and actions only)."""
    return type(event) in (Message, Action) and nick_key(event.nick or "") in member.ignores


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

    def kill(self, nick: str, text: str) -> None:
        """Disconnect ``nick``, a user on another node, saying ``text`` (``/kill``)."""

    def ask_whois(self, asker: Member, nick: str, request: str | None) -> None:
        """Have the node holding ``nick`` answer ``asker`` with their whois (it knows their
        account, idle time and away message), or raise :class:`ProtocolError`."""

    def answer(self, nick: str, event: Away) -> None:
        """Tell ``nick``, a user on another node who sent a private message to one of ours,
        that they are away (if ``nick`` is still there)."""

    async def ghost(self, nick: str, account: str) -> None:
        """The owner of ``account`` logs in here as ``nick``, which a user on another node
        holds: have that node disconnect them if they are logged in to ``account`` (see
        :meth:`Hub.ghost`), and return once it has given the nickname back, or has had
        as long as a node may stay silent."""

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

    def kill(self, nick: str, text: str) -> None:
        raise AssertionError("a single process has no other node")

    def ask_whois(self, asker: Member, nick: str, request: str | None) -> None:
        raise AssertionError("a single process has no other node")

    def answer(self, nick: str, event: Away) -> None:
        raise AssertionError("a single process has no other node")

    async def ghost(self, nick: str, account: str) -> None:
        raise AssertionError("a single process has no other node")

    congested = False

    async def uncongested(self) -> None:
        return None


def _away_once(target: Member, said: Private) -> Away | None:
    """``target``'s away message for the sender of ``said``, the first time they send
    ``target`` a private message (not a notice) while ``target`` is away."""
    sender = nick_key(said.nick or "")
    if not target.away or said.notice or sender in target.told_away:
        return None
    target.told_away.add(sender)
    return Away(nick=target.nick, text=target.away)


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
        max_ignores: int = DEFAULT_MAX_IGNORES,
        backend: Backend | None = None,
        store: Store | None = None,
        passwords: Passwords | None = None,
        throttle: LoginThrottle | None = None,
        admins: Iterable[str] = (),
    ) -> None:
        self.lock = asyncio.Lock()
        self.backend: Backend = backend or LocalBackend()
        self.store: Store = store or MemoryStore()
        self.passwords = passwords or Passwords()
        self.throttle = throttle or LoginThrottle()
        self.admins = frozenset(nick_key(name) for name in admins)
        self.outbox = Outbox(self.store)
        self.history_length = history
        self.max_rooms = max_rooms
        self.max_ignores = max_ignores
        self.peak_members = 0  # the most registered at once, for IRC's LUSERS
        self.said = 0  # room messages and actions (--metrics)
        self.counters = Counters()
        self.departed: deque[Departed] = deque(maxlen=WHOWAS_KEPT)  # most recent first
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
        self._loading: dict[str, asyncio.Task[Room]] = {}  # room key -> its load from the store
        self._listing: list[RoomInfo] = []  # every room, largest first (see _room_list)
        self._listing_at = float("-inf")  # loop time it was built
        self._listing_dirty = True
        self._matches: dict[str, list[RoomInfo]] = {}  # filter -> its rooms, of _listing
        self._room_skeletons: dict[str, Room] = {}  # what each room's name looks like
        self._room(LOBBY)

    async def start(self, store: Store | None = None) -> None:
        """Use ``store`` from now on (before any client), and take back what it kept: the
        lobby, and every claimed room."""
        if store is not None:
            self.store = store
            self.outbox = Outbox(store)
        for state in await self.store.claimed_rooms():
            self._room(state.name).restore(state)
        lobby = self._rooms[LOBBY]
        kept = await self.store.load_room(LOBBY)
        if kept is not None:
            lobby.restore(kept)
        for line in await self.store.recent(LOBBY, self.history_length):
            self._remember(lobby, line)
        for room in self._rooms.values():
            if room is not lobby:
                for line in await self.store.recent(room.name, self.history_length):
                    self._remember(room, line)
        self._listing_dirty = True

    # --- commands ---------------------------------------------------------------------------

    async def execute(self, member: Member, request: Request) -> None:
        """Carry out one registered member's command; refusals raise ProtocolError."""
        pending = self.dispatch(member, request)
        if pending is not None:
            await pending

    def dispatch(self, member: Member, request: Request) -> Awaitable[None] | None:
        """:meth:`execute` without a coroutine of its own for the commands that need none:
        most are done when this returns; those that must wait (for the store, a password
        hash, or the cluster) return what to await. A session calls this for every line, so
        the common case stays cheap."""
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
            case NoticeCommand(target=target, text=text):
                return self.notice(member, target, text, re)
            case JoinCommand(room=room):
                return self.join(member, room, re)
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
            case HistoryCommand(room=room, count=count):
                return self.history(member, room, count, re)
            case AwayCommand(text=text):
                self.set_away(member, text or "", re)
            case WhoisCommand(nick=nick):
                return self.whois(member, nick, re)
            case IgnoreCommand(nick=nick):
                self.ignore(member, nick, True, re)
            case UnignoreCommand(nick=nick):
                self.ignore(member, nick, False, re)
            case IgnoresCommand():
                self.tell(member, Ignores(nicks=self._ignored_nicks(member)), re)
            case RegisterCommand(password=password):
                return self.register_account(member, password, re)
            case LoginCommand(nick=nick, password=password):
                return self.login(member, nick, password, re)
            case PasswordCommand(old=old, new=new):
                return self.change_password(member, old, new, re)
            case UnregisterCommand(password=password):
                return self.unregister(member, password, re)
            case ClaimCommand(room=room):
                self.claim(member, room, re)
            case UnclaimCommand(room=room):
                self.unclaim(member, room, re)
            case OpCommand(room=room, nick=nick):
                self.set_status(member, room, nick, "+o", re)
            case DeopCommand(room=room, nick=nick):
                self.set_status(member, room, nick, "-o", re)
            case VoiceCommand(room=room, nick=nick):
                self.set_status(member, room, nick, "+v", re)
            case DevoiceCommand(room=room, nick=nick):
                self.set_status(member, room, nick, "-v", re)
            case KickCommand(room=room, nick=nick, reason=reason):
                self.kick(member, room, nick, reason, re)
            case BanCommand(room=room, mask=mask, reason=reason):
                return self.ban(member, room, mask, reason, re)
            case UnbanCommand(room=room, mask=mask):
                self.unban(member, room, mask, re)
            case BansCommand(room=room):
                self.bans(member, room, re)
            case MuteCommand(room=room, nick=nick):
                self.mute(member, room, nick, True, re)
            case UnmuteCommand(room=room, nick=nick):
                self.mute(member, room, nick, False, re)
            case InviteCommand(room=room, nick=nick):
                return self.invite(member, room, nick, re)
            case ModeCommand(room=room, change=change):
                self.mode(member, room, change, re)
            case KillCommand(nick=nick, reason=reason):
                return self.kill(member, nick, reason, re)
            case GbanCommand(mask=mask, reason=reason):
                return self.gban(member, mask, reason, re)
            case UngbanCommand(mask=mask):
                return self.ungban(member, mask, re)
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

    async def register(
        self,
        peer: Peer,
        raw_nick: str,
        request: str | None = None,
        password: str | None = None,
        *,
        names_rooms: bool = False,
    ) -> Member:
        """Claim a nickname for ``peer`` (logging in to its account if it has one), welcome
        it and put it in the lobby. A registered nickname without its password is refused
        with ``nick_registered``: the session asks for the password.

        ``names_rooms``: the client names the room of every line (IRC): it chooses its
        rooms itself, so it is not put in the lobby, and has no active room to be told of."""
        nick = validate_nick(raw_nick)
        account = await self._authenticate(peer.address, nick, password)
        if account is not None:
            await self._ghost_elsewhere(nick, account.name)
        async with self.lock:
            if account is not None:
                self._ghost(nick, account.name)
            self._check_available(nick)
            await self.backend.claim(nick)
            member = Member(nick, peer, since=time.time(), names_rooms=names_rooms)
            self._by_key[nick_key(nick)] = member
            self._by_skeleton[nick_skeleton(nick)] = member
            self.peak_members = max(self.peak_members, len(self._by_key))
        if account is not None:
            await self._logged_in(member, account.name)
        text = f"Welcome, {nick}! Type /help for the commands."
        if account is not None:
            text = f"Welcome back, {nick}: you are logged in. Type /help for the commands."
        welcome = Welcome(nick=nick, account=member.account, text=text)
        self.tell(member, welcome, request)
        if names_rooms:
            return member
        try:
            await self.join(member, LOBBY)
        except ProtocolError as exc:  # banned from the lobby: still welcome elsewhere
            self.tell(member, Error(code=exc.code, text=exc.message, command="join"))
        return member

    async def authenticate(self, address: str, account: str, password: str) -> str:
        """Check a password without registering (IRC's SASL, before the nickname is
        chosen): the account's name, or the refusal."""
        record = await self._authenticate(address, account, password)
        assert record is not None  # a password was given: no account is a refusal
        return record.name

    async def _authenticate(self, address: str, nick: str, password: str | None) -> Account | None:
        """The account ``nick`` logs in to, None for a guest nickname; or the refusal."""
        await self._check_gban([address_mask(address)])
        record = await self.store.account(nick)
        if record is None:
            if password is not None:
                raise ProtocolError(
                    ErrorCode.NO_SUCH_ACCOUNT,
                    f"No account is called {nick}; connect without a password, then /register.",
                )
            return None
        if password is None:
            raise ProtocolError(
                ErrorCode.NICK_REGISTERED,
                f"The nickname {record.name} is registered: log in with its password.",
            )
        await self._verify(address, record, password)
        await self._check_gban([f"account:{nick_key(record.name)}"])
        return record

    async def _verify(self, address: str, record: Account, password: str) -> None:
        """Check a password, within the failed-login budget of the address and account."""
        key = nick_key(record.name)
        self.throttle.check(address, key)
        if not await self.passwords.verify(record.password_hash, password):
            self.throttle.failed(address, key)
            log.info("login failed account=%s address=%s", record.name, address)
            raise ProtocolError(ErrorCode.WRONG_PASSWORD, f"Wrong password for {record.name}.")
        self.throttle.succeeded(address, key)

    async def _logged_in(self, member: Member, account: str) -> None:
        member.account = account
        member.admin = nick_key(account) in self.admins
        member.ignores |= set(await self.store.ignores(account))
        log.info("login nick=%s account=%s admin=%s", member.nick, account, member.admin)

    def _ghost(self, nick: str, account: str) -> Member | None:
        """Whoever holds ``nick`` logged in to ``account`` elsewhere (a stale connection) is
        disconnected: the owner logging in again takes it over. Holds the lock. The member
        disconnected, if any; their nickname's claim is still this node's."""
        holder = self._by_key.get(nick_key(nick))
        if holder is None or holder.account is None:
            return None
        if nick_key(holder.account) != nick_key(account):
            return None
        self._unregister(holder)
        holder.peer.close(ErrorCode.GHOSTED, "You logged in from another connection.")
        self._drop(holder, "Logged in from another connection")
        return holder

    async def _ghost_elsewhere(self, nick: str, account: str) -> None:
        """The owner takes ``nick`` over from a stale connection on another node too."""
        if self.find(nick) is None and await self.backend.locate(nick) is not None:
            await self.backend.ghost(nick, account)

    async def ghost(self, nick: str, account: str) -> None:
        """Another node's login to ``account`` as ``nick``: disconnect whoever holds it here
        logged in to that account, and give the nickname back for that node to claim."""
        async with self.lock:
            holder = self._ghost(nick, account)
            if holder is not None:
                await self.backend.release(holder.nick)

    async def rename(self, member: Member, raw_nick: str, request: str | None = None) -> None:
        nick = validate_nick(raw_nick)
        if nick_key(nick) != nick_key(member.nick):
            record = await self.store.account(nick)
            if record is not None and not _owns(member, record.name):
                raise ProtocolError(
                    ErrorCode.NICK_REGISTERED,
                    f"The nickname {record.name} is registered: /login {record.name} PASSWORD "
                    "if it is yours.",
                )
        await self._rename(member, nick, request)

    async def _rename(self, member: Member, nick: str, request: str | None) -> None:
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
        for room in member.rooms.values():
            _rekey(room, old, nick)
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
        self.departed.appendleft(
            Departed(member.nick, member.user or member.nick, member.realname, time.time())
        )
        self._drop(member, reason)

    def _drop(self, member: Member, reason: str) -> None:
        """Take an unregistered member out of its rooms and tell who shared them."""
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
            self._listing_dirty = True
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

    async def _load(self, name: str) -> Room:
        """The room ``name``, made from what the store kept of it; joins of one room that
        arrive while it loads wait for the same load."""
        key = room_key(name)
        loading = self._loading.get(key)
        if loading is None:
            self._check_new_room(name)
            loading = asyncio.get_running_loop().create_task(self._fetch(name))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _fetch(self, name: str) -> Room:
        state = await self.store.load_room(name)
        lines = await self.store.recent(name, self.history_length)
        room = self._rooms.get(room_key(name))
        if room is None:
            room = self._room(name)
            if state is not None:
                room.restore(state)
            for line in lines:
                self._remember(room, line)
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

    def _enter(self, member: Member, room: Room) -> None:
        """Add a member to a room. Events already posted to the room were addressed to
        its members as they were."""
        self.outbox.settle(room)
        room.members[member] = None
        member.rooms[room_key(room.name)] = room
        self._listing_dirty = True

    def _leave(self, member: Member, room: Room) -> None:
        self.outbox.settle(room)  # as in _enter: what was posted before reaches who was there
        del member.rooms[room_key(room.name)]
        del room.members[member]
        key = nick_key(member.nick)
        room.ops.discard(key)
        room.voiced.discard(key)
        self._listing_dirty = True
        if self._drop_if_empty(room):
            self.backend.forget_room(room.name)

    def _drop_if_empty(self, room: Room) -> bool:
        """An empty room goes, unless it is the lobby or claimed; what the store keeps of
        an unclaimed room is its topic (and its history)."""
        if room.population or room_key(room.name) == LOBBY or room.owner is not None:
            return False
        del self._rooms[room_key(room.name)]
        self._forget_history(room)
        if self._room_skeletons.get(nick_skeleton(room.name)) is room:
            del self._room_skeletons[nick_skeleton(room.name)]
        if room.topic:
            self.store.save_room(RoomState(room.name, topic=room.topic))
        elif room.modes or room.bans or room.mutes:
            self.store.delete_room(room.name)
        return True

    async def join(self, member: Member, name: str, request: str | None = None) -> None:
        """Join ``name`` (creating it) and make it active; if already joined, just switch."""
        name = validate_room(name)
        key = room_key(name)
        if key not in member.rooms and len(member.rooms) >= self.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"You are in {self.max_rooms} rooms already; /part one first.",
            )
        room = self._rooms.get(key)
        if room is None:
            room = await self._load(name)
            if self._by_key.get(nick_key(member.nick)) is not member:
                return  # disconnected while the room loaded
        joined = member.rooms.get(key)
        if joined is not None:
            member.active = joined
            notice = Notice(room=joined.name, text=f"Now talking in {joined.name}.")
            self.tell(member, notice, request)
            return
        self._check_entry(member, room)
        creator = not room.population and room.owner is None and key != LOBBY
        self._enter(member, room)
        room.invites.difference_update(masks_of(member))
        if creator or (room.operates(member) and not member.admin):
            room.ops.add(nick_key(member.nick))
        member.active = room
        event = Join(room=room.name, nick=member.nick)
        if not self._quiet(room):
            others = [m for m in room.members if m is not member]
            self.outbox.deliver(others, event)
            if member.away:  # away-notify: an away user's arrival says so
                away = Away(nick=member.nick, text=member.away)
                self.outbox.deliver([m for m in others if m.peer.codec.away_notify], away)
        self.tell(member, event, request)
        self.backend.publish(event)
        if room.topic:
            self.tell(member, self._topic(room))
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
        oldest = time.time()
        for past in room.history:
            oldest = min(oldest, past.ts)
            if not (member.ignores and _ignored(member, past)):
                self.tell(member, replace(past, history=True))
        member.history_from[key] = oldest

    def _check_entry(self, member: Member, room: Room) -> None:
        """Bans and invite-only keep people out; operators of the room always get in."""
        if room.operates(member):
            return
        ban = room.ban_of(member)
        if ban is not None:
            why = f" ({ban.reason})" if ban.reason else ""
            raise ProtocolError(ErrorCode.BANNED, f"You are banned from {room.name}{why}.")
        if "i" in room.modes and not room.invited(member):
            raise ProtocolError(
                ErrorCode.INVITE_ONLY,
                f"{room.name} is invite-only; ask one of its operators for an /invite.",
            )

    def part(
        self, member: Member, name: str | None, reason: str, request: str | None = None
    ) -> None:
        room = self._member_room(member, name)
        event = Part(room=room.name, nick=member.nick, text=reason)
        if not self._quiet(room):
            self.outbox.deliver([m for m in room.members if m is not member], event)
        self.tell(member, event, request)
        self._gone(member, room, request)
        self.backend.publish(event)

    def _gone(self, member: Member, room: Room, request: str | None = None) -> None:
        """``member`` is no longer in ``room`` (parted, kicked or banned)."""
        self._leave(member, room)
        member.history_from.pop(room_key(room.name), None)
        if member.active is room:
            member.active = next(reversed(member.rooms.values()), None)
            if member.names_rooms:
                return
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
        ops = [m.nick for m in room.members if room.operates(m)]
        ops += [nick for key, nick in room.remote.items() if key in room.ops]
        voiced = [n for n in nicks if nick_key(n) in room.voiced]
        return Who(
            room=room.name,
            members=tuple(nicks),
            operators=tuple(sorted(ops, key=nick_key)),
            voiced=tuple(voiced),
        )

    def _topic(self, room: Room) -> Topic:
        return Topic(room=room.name, text=room.topic, by=room.topic_by or None, at=room.topic_at)

    def who(self, member: Member, name: str | None, request: str | None = None) -> None:
        room = self._member_room(member, None) if name is None else self._existing_room(name)
        self.tell(member, self._who(room), request)

    def topic(
        self, member: Member, name: str | None, text: str | None, request: str | None = None
    ) -> None:
        if text is None:
            room = self._member_room(member, None) if name is None else self._existing_room(name)
            self.tell(member, self._topic(room), request)
            return
        room = self._member_room(member, name)
        if "t" in room.modes and not room.operates(member):
            raise ProtocolError(
                ErrorCode.NOT_OPERATOR, f"Only operators of {room.name} set its topic (+t)."
            )
        text = text.strip()
        if len(text) > TOPIC_MAX:
            raise ProtocolError(
                ErrorCode.TOPIC_TOO_LONG,
                f"Topic is too long ({len(text)} characters, at most {TOPIC_MAX}).",
            )
        room.topic = text
        self._listing_dirty = True
        self.store.save_room(room.state())
        room.topic_by, room.topic_at = member.nick, time.time()
        event = Topic(room=room.name, nick=member.nick, text=text)
        self.outbox.deliver([m for m in room.members if m is not member], event)
        self.tell(member, event, request)
        self.backend.publish(event)

    # --- messages -------------------------------------------------------------------------
    #
    # Room messages are the hot path: posted to the room, they are rendered and pushed once
    # per event-loop iteration, so a member gets one push with everything said in that
    # iteration instead of one push per message.

    def say(
        self, member: Member, name: str | None, text: str, *, notice: bool = False, tags: str = ""
    ) -> Message:
        room = self._member_room(member, name)
        if room.modes or room.mutes:
            self._check_voice(member, room)
        event = Message(room=room.name, nick=member.nick, text=text, notice=notice, tags=tags)
        self._said(member, room, event)
        return event

    def act(self, member: Member, name: str | None, text: str) -> Action:
        room = self._member_room(member, name)
        if room.modes or room.mutes:
            self._check_voice(member, room)
        event = Action(room=room.name, nick=member.nick, text=text)
        self._said(member, room, event)
        return event

    def _check_voice(self, member: Member, room: Room) -> None:
        if room.may_speak(member):
            return
        if any(mask in room.mutes for mask in masks_of(member)):
            raise ProtocolError(
                ErrorCode.MUTED,
                f"You are muted in {room.name}: your line reached nobody.",
            )
        raise ProtocolError(
            ErrorCode.MODERATED,
            f"{room.name} is moderated: only operators and voiced members speak; your line "
            "reached nobody.",
        )

    def _said(self, member: Member, room: Room, event: Message | Action) -> None:
        member.last_said = event.ts
        self.said += 1
        self._remember(room, event)
        self.store.append(event)
        self.outbox.post(room, event)
        self.backend.publish(event)

    async def notice(
        self, member: Member, target: str, text: str, request: str | None = None
    ) -> None:
        """A notice to a room (said there) or to a nickname (private)."""
        if target.startswith("#"):
            self.say(member, target, text, notice=True)
        else:
            await self.private(member, target, text, request, notice=True)

    async def private(
        self,
        member: Member,
        nick: str,
        text: str,
        request: str | None = None,
        *,
        notice: bool = False,
        tags: str = "",
    ) -> None:
        target = self.find(nick)
        if target is not None:
            event = Private(
                nick=member.nick, target=target.nick, text=text, notice=notice, tags=tags
            )
            if target is member:
                self.tell(member, event, request)
                return
            if target.peer.busy:  # a flood of private messages must not get them dropped
                raise ProtocolError(
                    ErrorCode.RECIPIENT_BUSY,
                    f"{target.nick} is not keeping up with what is sent to them; try again later.",
                )
            if nick_key(member.nick) not in target.ignores:  # the sender is not told
                self.tell(target, event)
            member.last_said = event.ts
            away = _away_once(target, event)
            if away is not None:
                self.tell(member, away)
        else:
            remote = await self.backend.locate(nick)
            if remote is None:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
            event = Private(nick=member.nick, target=remote, text=text, notice=notice, tags=tags)
            self.backend.send_private(event)
        self.tell(member, replace(event, echo=True), request)

    # --- history, away, whois, ignore -------------------------------------------------------

    async def history(
        self, member: Member, name: str | None, count: int | None, request: str | None = None
    ) -> None:
        """Up to ``count`` lines of a joined room older than any this member was sent."""
        room = self._member_room(member, name)
        key = room_key(room.name)
        if count is not None and not 1 <= count <= HISTORY_MAX:
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS,
                f"Ask for 1 to {HISTORY_MAX} lines.",
                command="history",
            )
        before = member.history_from.get(key, time.time())
        lines = await self.store.before(room.name, before, count or HISTORY_PAGE)
        if key not in member.rooms:
            return  # parted meanwhile
        for line in lines:
            if not (member.ignores and _ignored(member, line)):
                self.tell(member, replace(line, history=True), request)
        if lines:
            member.history_from[key] = lines[0].ts
            text = f"{len(lines)} older lines of {room.name}; /history for more."
        else:
            text = f"No older lines in {room.name}."
        self.tell(member, Notice(room=room.name, text=text), request)

    def set_away(self, member: Member, text: str, request: str | None = None) -> None:
        member.away = text
        member.told_away.clear()
        event = Away(nick=member.nick, text=text)
        sharing = self._sharing(member.rooms.values(), member, quiet_too=False)
        self.outbox.deliver([m for m in sharing if m.peer.codec.away_notify], event)
        self.tell(member, event, request)

    async def whois(self, member: Member, nick: str, request: str | None = None) -> None:
        target = self.find(nick)
        if target is None:
            remote = await self.backend.locate(nick)
            if remote is None:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
            self.backend.ask_whois(member, remote, request)  # its node answers
            return
        shares = member.rooms.values()
        self.tell(member, self._whois(target, lambda room: room in shares, member.admin), request)

    def whois_for(
        self, asker: str, nick: str, *, admin: bool, request: str | None = None
    ) -> Whois | Error:
        """The answer to ``asker``, a user of another node, asking ``/whois nick`` of a
        user of this one (in request ``request``)."""
        target = self.find(nick)
        if target is None:
            text = f"Nobody called {nick!r} is online."
            return Error(code=ErrorCode.NO_SUCH_NICK, text=text, command="whois", re=request)
        whois = self._whois(target, lambda room: nick_key(asker) in room.remote, admin)
        return replace(whois, re=request)

    def _whois(self, target: Member, shares: Callable[[Room], bool], admin: bool) -> Whois:
        """``target``'s whois for someone who ``shares`` some rooms with them: those and
        the rooms anyone may see are listed, and a server operator sees the address."""
        shown = [
            room.name
            for room in target.rooms.values()
            if "i" not in room.modes or admin or shares(room)
        ]
        return Whois(
            nick=target.nick,
            account=target.account,
            rooms=tuple(shown),
            idle=int(time.time() - (target.last_said or target.since)),
            away=target.away,
            since=target.since,
            operator=target.admin,
            address=target.address if admin else None,
            user=target.user or target.nick,
            realname=target.realname or target.nick,
            operator_in=tuple(
                room.name
                for room in target.rooms.values()
                if room.name in shown and room.operates(target)
            ),
        )

    def ignore(self, member: Member, nick: str, on: bool, request: str | None = None) -> None:
        key = nick_key(validate_nick(nick))
        if on:
            if key == nick_key(member.nick):
                raise ProtocolError(ErrorCode.BAD_ARGUMENTS, "You cannot ignore yourself.")
            if key not in member.ignores and len(member.ignores) >= self.max_ignores:
                raise ProtocolError(
                    ErrorCode.BAD_ARGUMENTS,
                    f"You ignore {self.max_ignores} people already; /unignore someone first.",
                )
            member.ignores.add(key)
        else:
            if key not in member.ignores:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"You do not ignore {nick}.")
            member.ignores.discard(key)
        if member.account is not None:
            self.store.set_ignores(member.account, sorted(member.ignores))
        self.tell(member, Ignores(nicks=self._ignored_nicks(member)), request)

    def _ignored_nicks(self, member: Member) -> tuple[str, ...]:
        return tuple(sorted(member.ignores))

    # --- accounts -------------------------------------------------------------------------

    async def register_account(
        self, member: Member, password: str, request: str | None = None
    ) -> None:
        """``/register``: the member's nickname becomes an account with this password."""
        if member.account is not None:
            raise ProtocolError(
                ErrorCode.ACCOUNT_EXISTS, f"You are logged in as {member.account} already."
            )
        password = check_password(password)
        nick = member.nick
        password_hash = await self.passwords.hash(password)
        if not await self.store.create_account(Account(nick, password_hash, time.time())):
            raise ProtocolError(ErrorCode.ACCOUNT_EXISTS, f"{nick} is registered already.")
        await self._logged_in(member, nick)
        if member.ignores:
            self.store.set_ignores(nick, sorted(member.ignores))
        text = (
            f"The nickname {nick} is now yours: next time, log in with its password "
            f"(/login {nick} PASSWORD)."
        )
        self.tell(member, LoggedIn(nick=member.nick, account=nick, text=text), request)

    async def login(
        self, member: Member, nick: str, password: str, request: str | None = None
    ) -> None:
        """``/login`` once registered: log in to the account ``nick`` and take that name."""
        record = await self.store.account(nick)
        if record is None:
            raise ProtocolError(ErrorCode.NO_SUCH_ACCOUNT, f"No account is called {nick}.")
        await self._verify(member.address, record, password)
        await self._check_gban([f"account:{nick_key(record.name)}"])
        if nick_key(member.nick) != nick_key(record.name):
            await self._ghost_elsewhere(record.name, record.name)
            async with self.lock:
                self._ghost(record.name, record.name)
            await self._rename(member, record.name, None)
        await self._logged_in(member, record.name)
        text = f"You are logged in as {record.name}."
        self.tell(member, LoggedIn(nick=member.nick, account=record.name, text=text), request)

    async def change_password(
        self, member: Member, old: str, new: str, request: str | None = None
    ) -> None:
        record = await self._own_account(member)
        new = check_password(new)
        await self._verify(member.address, record, old)
        self.store.set_password(record.name, await self.passwords.hash(new))
        self.tell(member, Notice(text="Your password is changed."), request)

    async def unregister(self, member: Member, password: str, request: str | None = None) -> None:
        record = await self._own_account(member)
        await self._verify(member.address, record, password)
        key = nick_key(record.name)
        self.store.delete_account(record.name)
        for room in self._rooms.values():
            room.roles.pop(key, None)
            if room.owner is not None and nick_key(room.owner) == key:
                room.owner = None
                event = Mode(room=room.name, nick=member.nick, change="-r", target=record.name)
                self.outbox.post(room, event)
                self.backend.publish(event)
        member.account = None
        member.admin = False
        text = f"The account {record.name} is deleted: the nickname is anyone's again."
        self.tell(member, LoggedIn(nick=member.nick, account=None, text=text), request)

    async def _own_account(self, member: Member) -> Account:
        record = None if member.account is None else await self.store.account(member.account)
        if record is None:
            raise ProtocolError(
                ErrorCode.NOT_LOGGED_IN, "You are not logged in; /register or /login first."
            )
        return record

    # --- room operators -----------------------------------------------------------------------

    def _operated(self, member: Member, name: str | None) -> Room:
        """The room a moderation command addresses, which ``member`` must operate."""
        room = self._member_room(member, name)
        if not room.operates(member):
            raise ProtocolError(ErrorCode.NOT_OPERATOR, f"You are not an operator of {room.name}.")
        return room

    def _in_room(self, room: Room, nick: str) -> Member | str:
        """The member of ``room`` called ``nick``: local, or the name of a remote one."""
        key = nick_key(nick)
        target = self._by_key.get(key)
        if target is not None and target in room.members:
            return target
        remote = room.remote.get(key)
        if remote is not None:
            return remote
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"{nick} is not in {room.name}.")

    def _announce(self, room: Room, event: Event, actor: Member, request: str | None) -> None:
        """A moderation event: everyone in the room sees it, the actor as the answer; the
        cluster hears of it; the log keeps it."""
        self.outbox.deliver([m for m in room.members if m is not actor], event)
        self.tell(actor, event, request)
        self.backend.publish(event)
        log.info(
            "moderation room=%s by=%s event=%s target=%s text=%r",
            room.name,
            actor.nick,
            event.type if not isinstance(event, Mode) else event.change,
            getattr(event, "target", ""),
            event.text,
        )

    def _save(self, room: Room) -> None:
        self.store.save_room(room.state())

    def set_status(
        self, member: Member, name: str | None, nick: str, change: str, request: str | None
    ) -> None:
        """``/op``, ``/deop``, ``/voice``, ``/devoice``."""
        room = self._operated(member, name)
        target = self._in_room(room, nick)
        shown = target.nick if isinstance(target, Member) else target
        key = nick_key(shown)
        flag, adding = change[1], change[0] == "+"
        group = room.ops if flag == "o" else room.voiced
        account = target.account if isinstance(target, Member) else None
        if not adding and flag == "o" and account and _owns_room(room, account):
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS, f"{shown} owns {room.name} and stays its operator."
            )
        if adding:
            group.add(key)
        else:
            group.discard(key)
        if room.owner is not None and account is not None:
            role_key = nick_key(account)
            if adding:
                room.roles[role_key] = flag
            elif room.roles.get(role_key) == flag:
                del room.roles[role_key]
        self._save(room)
        self._announce(
            room,
            Mode(room=room.name, nick=member.nick, change=change, target=shown),
            member,
            request,
        )

    def kick(
        self, member: Member, name: str | None, nick: str, reason: str, request: str | None
    ) -> None:
        room = self._operated(member, name)
        target = self._in_room(room, nick)
        if isinstance(target, Member) and target.admin and not member.admin:
            raise ProtocolError(
                ErrorCode.NOT_OPERATOR, f"{target.nick} is a server operator; you cannot kick them."
            )
        self._remove_from(room, target, member, reason, request)

    def _remove_from(
        self, room: Room, target: Member | str, actor: Member, reason: str, request: str | None
    ) -> None:
        """Kick ``target`` out of ``room``: everyone there sees it, ``target`` included."""
        shown = target.nick if isinstance(target, Member) else target
        event = Kick(room=room.name, nick=actor.nick, target=shown, text=reason)
        self._announce(room, event, actor, request)
        if isinstance(target, Member):
            self._gone(target, room)
        else:
            self.outbox.settle(room)
            room.remote.pop(nick_key(shown), None)
            room.ops.discard(nick_key(shown))
            room.voiced.discard(nick_key(shown))
            self._listing_dirty = True

    async def ban(
        self, member: Member, name: str | None, word: str, reason: str, request: str | None
    ) -> None:
        room = self._operated(member, name)
        masks = await self._masks_for(word, room)
        now = time.time()
        for mask in masks:
            room.bans[mask] = Ban(mask, reason, member.nick, now)
            room.invites.discard(mask)
        self._save(room)
        for mask in masks:
            event = Mode(room=room.name, nick=member.nick, change="+b", target=mask, text=reason)
            self._announce(room, event, member, request)
        for present in list(room.members):
            if present is not member and not room.operates(present) and room.ban_of(present):
                self._remove_from(room, present, member, reason or "banned", None)
        for key, nick in list(room.remote.items()):
            if f"nick:{key}" in masks:
                self._remove_from(room, nick, member, reason or "banned", None)

    async def _masks_for(self, word: str, room: Room) -> list[str]:
        """What ``/ban word`` bans: a written-out mask; a nickname online (its account, or
        its nickname and address); an account; else a nickname."""
        mask = parse_mask(word)
        if mask is not None:
            return [mask]
        target = self.find(word)
        if target is not None:
            if target.account is not None:
                return [f"account:{nick_key(target.account)}"]
            return [f"nick:{nick_key(target.nick)}", address_mask(target.address)]
        if nick_key(word) in room.remote:
            return [f"nick:{nick_key(word)}"]
        if await self.store.account(word) is not None:
            return [f"account:{nick_key(word)}"]
        return [f"nick:{nick_key(validate_nick(word))}"]

    def unban(self, member: Member, name: str | None, word: str, request: str | None) -> None:
        room = self._operated(member, name)
        wanted = {parse_mask(word) or word.lower()}
        wanted |= {f"account:{nick_key(word)}", f"nick:{nick_key(word)}"}
        lifted = [mask for mask in room.bans if mask in wanted]
        if not lifted:
            raise ProtocolError(
                ErrorCode.NO_SUCH_BAN, f"No ban in {room.name} matches {word}; see /bans."
            )
        for mask in lifted:
            del room.bans[mask]
        self._save(room)
        for mask in lifted:
            event = Mode(room=room.name, nick=member.nick, change="-b", target=mask)
            self._announce(room, event, member, request)

    def bans(self, member: Member, name: str | None, request: str | None) -> None:
        room = self._operated(member, name)
        listed = [BanInfo(b.mask, "ban", b.reason, b.by, b.ts) for b in room.bans.values()]
        listed += [BanInfo(b.mask, "mute", b.reason, b.by, b.ts) for b in room.mutes.values()]
        self.tell(member, BanList(room=room.name, bans=tuple(listed)), request)

    def mute(
        self, member: Member, name: str | None, nick: str, on: bool, request: str | None
    ) -> None:
        room = self._operated(member, name)
        target = self.find(nick)
        if target is not None and target.account is not None:
            masks = [f"account:{nick_key(target.account)}", f"nick:{nick_key(target.nick)}"]
        else:
            masks = [f"nick:{nick_key(validate_nick(nick))}"]
        shown = target.nick if target is not None else nick
        if on:
            changed = masks[:1]
            room.mutes[masks[0]] = Ban(masks[0], "", member.nick, time.time())
        else:
            changed = [mask for mask in masks if mask in room.mutes]
            if not changed:
                raise ProtocolError(ErrorCode.NO_SUCH_BAN, f"{shown} is not muted in {room.name}.")
            for mask in changed:
                del room.mutes[mask]
        self._save(room)
        for mask in changed:  # the mask, as for bans: what /bans lists and other nodes keep
            event = Mode(room=room.name, nick=member.nick, change="+q" if on else "-q", target=mask)
            self._announce(room, event, member, request)

    async def invite(
        self, member: Member, name: str | None, nick: str, request: str | None
    ) -> None:
        room = self._operated(member, name)
        target = self.find(nick)
        if target is None:
            remote = await self.backend.locate(nick)
            if remote is None:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
            room.invites.add(f"nick:{nick_key(remote)}")
            shown = remote
        else:
            room.invites.update(masks_of(target)[:1] + masks_of(target)[2:])  # not the address
            shown = target.nick
        event = Invite(room=room.name, nick=member.nick, target=shown)
        self._announce(room, event, member, request)
        if target is not None and target not in room.members:
            self.tell(target, event)

    def mode(
        self, member: Member, name: str | None, change: str | None, request: str | None
    ) -> None:
        if change is None:  # every room's modes are public
            room = self._member_room(member, None) if name is None else self._existing_room(name)
            modes = "".join(sorted(room.modes))
            self.tell(member, Modes(room=room.name, modes=modes, owner=room.owner), request)
            return
        room = self._operated(member, name)
        sign, letters = change[:1], change[1:]
        if sign not in ("+", "-") or not letters or set(letters) - set(ROOM_MODES):
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS,
                f"A mode change is + or - and some of {ROOM_MODES}: /mode +m, /mode -it.",
                command="mode",
            )
        changed = [
            letter for letter in dict.fromkeys(letters) if (letter in room.modes) != (sign == "+")
        ]
        for letter in changed:
            if sign == "+":
                room.modes.add(letter)
            else:
                room.modes.discard(letter)
        if not changed:
            modes = "".join(sorted(room.modes))
            self.tell(member, Modes(room=room.name, modes=modes, owner=room.owner), request)
            return
        self._save(room)
        for letter in changed:
            event = Mode(room=room.name, nick=member.nick, change=sign + letter)
            self._announce(room, event, member, request)

    def claim(self, member: Member, name: str | None, request: str | None) -> None:
        room = self._operated(member, name)
        if member.account is None:
            raise ProtocolError(
                ErrorCode.NOT_LOGGED_IN, "Log in first (/register or /login) to claim a room."
            )
        if room.owner is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_CLAIMED, f"{room.name} belongs to {room.owner} already."
            )
        room.owner = member.account
        locked = "t" not in room.modes
        room.modes.add("t")  # in a claimed room only operators set the topic, by default
        self._save(room)
        event = Mode(room=room.name, nick=member.nick, change="+r", target=member.account)
        self._announce(room, event, member, request)
        if locked:
            self._announce(
                room, Mode(room=room.name, nick=member.nick, change="+t"), member, request
            )

    def unclaim(self, member: Member, name: str | None, request: str | None) -> None:
        room = self._member_room(member, name)
        if room.owner is None:
            raise ProtocolError(ErrorCode.NOT_CLAIMED, f"{room.name} is not claimed.")
        if not member.admin and not (member.account and _owns_room(room, member.account)):
            raise ProtocolError(
                ErrorCode.NOT_OPERATOR, f"{room.name} belongs to {room.owner}, not to you."
            )
        owner, room.owner = room.owner, None
        room.roles.clear()
        self._save(room)
        event = Mode(room=room.name, nick=member.nick, change="-r", target=owner)
        self._announce(room, event, member, request)

    # --- server operators ---------------------------------------------------------------------

    def _admin(self, member: Member, command: str) -> None:
        if not member.admin:
            raise ProtocolError(
                ErrorCode.NOT_OPERATOR, f"Only server operators can /{command}.", command=command
            )

    async def kill(self, member: Member, nick: str, reason: str, request: str | None) -> None:
        self._admin(member, "kill")
        text = f"Killed by {member.nick}" + (f": {reason}" if reason else "")
        target = self.find(nick)
        if target is not None:
            target.peer.close(ErrorCode.KILLED, text)
            shown = target.nick
        else:
            remote = await self.backend.locate(nick)
            if remote is None:
                raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
            self.backend.kill(remote, text)
            shown = remote
        log.info("kill nick=%s by=%s reason=%r", shown, member.nick, reason)
        self.tell(member, Notice(text=f"{shown} is disconnected ({text})."), request)

    async def gban(self, member: Member, word: str, reason: str, request: str | None) -> None:
        self._admin(member, "gban")
        mask = parse_mask(word) or f"account:{nick_key(validate_nick(word))}"
        if mask.startswith("nick:"):
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS,
                "A server-wide ban is for an account or an address.",
                command="gban",
            )
        ban = Ban(mask, reason, member.nick, time.time())
        self.store.add_global_ban(ban)
        log.info("gban mask=%s by=%s reason=%r", mask, member.nick, reason)
        text = f"Banned from this server by {member.nick}" + (f": {reason}" if reason else "")
        for target in self.members:
            if mask in masks_of(target) and not target.admin:
                target.peer.close(ErrorCode.BANNED, text)
        self.tell(member, Notice(text=f"{mask} is banned from the server."), request)

    async def ungban(self, member: Member, word: str, request: str | None) -> None:
        self._admin(member, "ungban")
        mask = parse_mask(word) or f"account:{nick_key(word)}"
        if mask not in {ban.mask for ban in await self.store.global_bans()}:
            raise ProtocolError(ErrorCode.NO_SUCH_BAN, f"No server-wide ban on {word}.")
        self.store.remove_global_ban(mask)
        log.info("ungban mask=%s by=%s", mask, member.nick)
        self.tell(member, Notice(text=f"{mask} may connect again."), request)

    async def _check_gban(self, masks: list[str]) -> None:
        """Refuse a connection or a login that a server-wide ban matches."""
        bans = {ban.mask: ban for ban in await self.store.global_bans()}
        for mask in masks:
            ban = bans.get(mask)
            if ban is not None:
                why = f": {ban.reason}" if ban.reason else ""
                raise ProtocolError(ErrorCode.BANNED, f"You are banned from this server{why}.")

    async def refused(self, address: str) -> str | None:
        """Why a connection from ``address`` is refused at once, or None."""
        try:
            await self._check_gban([address_mask(address)])
        except ProtocolError as exc:
            return exc.message
        return None

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
                self.outbox.settle(room)  # the room's population changes: see _enter
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
                self.outbox.settle(left)
                del left.remote[nick_key(nick)]
                left.ops.discard(nick_key(nick))
                left.voiced.discard(nick_key(nick))
                self._listing_dirty = True
                self._drop_if_empty(left)
            case Quit(nick=str(nick)):
                known = [r for r in self._known(rooms) if nick_key(nick) in r.remote]
                self.outbox.deliver(self._sharing(known, None, quiet_too=False), event)
                for room in known:
                    self.outbox.settle(room)
                    del room.remote[nick_key(nick)]
                    room.ops.discard(nick_key(nick))
                    room.voiced.discard(nick_key(nick))
                    self._drop_if_empty(room)
                self._listing_dirty = True
            case Nick(nick=str(old), new_nick=new):
                known = [r for r in self._known(rooms) if nick_key(old) in r.remote]
                for room in known:
                    del room.remote[nick_key(old)]
                    room.remote[nick_key(new)] = new
                    _rekey(room, old, new)
                self.outbox.deliver(self._sharing(known, None), event)
            case Topic(room=str(name)):
                titled = self._rooms.get(room_key(name))
                if titled is not None:
                    titled.topic = event.text
                    self._listing_dirty = True
                    self.outbox.deliver(titled.members, event)
            case Private(target=target, nick=str(sender)):
                member = self._by_key.get(nick_key(target))
                if member is not None:
                    if nick_key(sender) not in member.ignores:
                        self.tell(member, event)
                    away = _away_once(member, event)
                    if away is not None:
                        self.backend.answer(sender, away)
            case Mode(room=str(name), change=change, target=target):
                # Applied as the event says. Approximations, until a relayed mode reloads
                # the room from the store: a mute is kept as the target's nickname mask
                # (the acting node may have muted their account), and an operator or voice
                # given to another node's user gives no role in a claimed room here.
                changed = self._rooms.get(room_key(name))
                if changed is None or len(change) != 2 or change[0] not in "+-":
                    return
                adding, letter, key = change[0] == "+", change[1], nick_key(target)
                local = self._by_key.get(key)
                account = local.account if local is not None else None
                if letter in "ov":
                    group = changed.ops if letter == "o" else changed.voiced
                    if adding:
                        group.add(key)
                    else:
                        group.discard(key)
                    if changed.owner is not None and account is not None:
                        if adding:
                            changed.roles[nick_key(account)] = letter
                        elif changed.roles.get(nick_key(account)) == letter:
                            del changed.roles[nick_key(account)]
                elif letter == "b":
                    if adding:
                        ban = Ban(target, event.text, event.nick or "", event.ts)
                        changed.bans[target] = ban
                        changed.invites.discard(target)
                    else:
                        changed.bans.pop(target, None)
                elif letter == "q":
                    if adding:
                        ban = Ban(target, event.text, event.nick or "", event.ts)
                        changed.mutes[target] = ban
                    else:
                        changed.mutes.pop(target, None)
                elif letter == "r":
                    changed.owner = target if adding else None
                    if not adding:
                        changed.roles.clear()
                elif letter in ROOM_MODES:
                    if adding:
                        changed.modes.add(letter)
                    else:
                        changed.modes.discard(letter)
                self.outbox.deliver(changed.members, event)
                if letter == "b" and adding:
                    self._banned_out(changed, event)
                if letter == "r" and not adding:
                    self._drop_if_empty(changed)
            case Kick(room=str(name), target=target):
                kicked_from = self._rooms.get(room_key(name))
                if kicked_from is None:
                    return
                key = nick_key(target)
                local = self._by_key.get(key)
                if local is not None and local in kicked_from.members:
                    self.outbox.deliver(kicked_from.members, event)  # the target included
                    self._gone(local, kicked_from)
                elif key in kicked_from.remote:
                    self.outbox.deliver(kicked_from.members, event)
                    self.outbox.settle(kicked_from)
                    del kicked_from.remote[key]
                    kicked_from.ops.discard(key)
                    kicked_from.voiced.discard(key)
                    self._listing_dirty = True
                    self._drop_if_empty(kicked_from)
            case Invite(room=str(name), target=target):
                invited_to = self._rooms.get(room_key(name))
                local = self._by_key.get(nick_key(target))
                if invited_to is not None:
                    invited_to.invites.add(f"nick:{nick_key(target)}")
                    self.outbox.deliver(invited_to.members, event)
                if local is not None and (invited_to is None or local not in invited_to.members):
                    self.tell(local, event)

    def _banned_out(self, room: Room, ban: Mode) -> None:
        """A ban made on another node: the local members it matches leave the room, as
        they would have on that node (only it knew their nickname, not their account or
        address), and the other nodes hear of it."""
        for present in list(room.members):
            if not room.operates(present) and room.ban_of(present) is not None:
                kick = Kick(
                    room=room.name,
                    nick=ban.nick,
                    target=present.nick,
                    text=ban.text or "banned",
                )
                self.outbox.deliver(room.members, kick)
                self._gone(present, room)
                self.backend.publish(kick)

    def _known(self, names: Iterable[str]) -> list[Room]:
        return [room for name in names if (room := self._rooms.get(room_key(name)))]

    def notice_all(self, text: str) -> None:
        """Tell every local user something about the server itself."""
        self.outbox.deliver(self.members, Notice(text=text))

    def has_room(self, name: str) -> bool:
        """Whether a room of that name exists (in memory: joined, claimed or the lobby)."""
        return room_key(name) in self._rooms

    def find_room(self, name: str) -> Room | None:
        return self._rooms.get(room_key(name))

    def rooms_held(self) -> list[Room]:
        """Every room in memory, for listings that need more than names (IRC's LIST)."""
        return list(self._rooms.values())

    async def oper(self, member: Member, name: str, password: str) -> None:
        """IRC's OPER: a server operator (an ``--admin`` account) takes operator status on
        this connection with the account's password."""
        account = await self.authenticate(member.address, name, password)
        if nick_key(account) not in self.admins:
            raise ProtocolError(ErrorCode.NOT_OPERATOR, f"{account} is not a server operator.")
        member.admin = True
        log.info("oper nick=%s account=%s", member.nick, account)

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


def _owns(member: Member, account: str) -> bool:
    return member.account is not None and nick_key(member.account) == nick_key(account)


def _owns_room(room: Room, account: str) -> bool:
    return room.owner is not None and nick_key(room.owner) == nick_key(account)


def _rekey(room: Room, old: str, new: str) -> None:
    """A member of ``room`` renamed: their standing follows their new nickname."""
    for group in (room.ops, room.voiced):
        if nick_key(old) in group:
            group.discard(nick_key(old))
            group.add(nick_key(new))
