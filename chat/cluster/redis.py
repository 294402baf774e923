"""The hub's cluster backend over Redis: claims, presence, streams, heartbeats, pub/sub.

:class:`RedisBackend` is the only code that talks to Redis (through ``redis.asyncio``). What
it reads and writes is encoded by :mod:`chat.cluster.messages`; what other nodes' users do
reaches the hub through the :class:`~chat.cluster.directory.Directory`; what was already
applied is in the :class:`~chat.cluster.ledger.Ledger`. The package docstring
(``chat/cluster/__init__.py``) explains how the pieces work together.

:meth:`RedisBackend.publish` only queues, and one task writes the queue out in order, in
pipelines. The hub's outbox delivers a room line once that task has written it (it is then
durable, as with the single-process store: see :meth:`RedisBackend.store`), one pipeline
round trip after it was said, shared by everything said meanwhile; while the link is down
nothing waits, and local chat goes on. When that backlog grows past a high-water
mark the backend says it is ``congested``, and sessions stop reading their clients until
it is down to a low-water mark: senders slow down instead of lines being dropped. Only
what must be decided cluster-wide awaits Redis: claiming a nickname, and finding a user
this node has not heard of yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chat.cluster.directory import Directory
from chat.cluster.keys import CLAIM, REFRESH, RELEASE, SAY, Keys
from chat.cluster.ledger import Ledger
from chat.cluster.messages import (
    Answer,
    AskWhois,
    Claim,
    ClusterMessage,
    Direct,
    Ghost,
    Heartbeat,
    Kill,
    MalformedMessage,
    Relayed,
    RelayedEvent,
    Released,
    StreamId,
    Sync,
    decode,
    decode_entry,
    decode_roster,
    encode,
    encode_rooms,
    entry_fields,
    origin,
    stream_frame,
)
from chat.cluster.settings import ClusterSettings, default_node_id
from chat.cluster.store import RedisStore
from chat.errors import ErrorCode, ProtocolError
from chat.hub import Hub, Member
from chat.protocol import (
    Action,
    Away,
    Event,
    Invite,
    Join,
    Kick,
    Message,
    Mode,
    Nick,
    Part,
    Private,
    Quit,
    Topic,
    nick_key,
    room_key,
)

__all__ = ["GAP_WINDOW", "RedisBackend"]

log = logging.getLogger("chat.cluster")

GAP_WINDOW: Final = 1000  # a room's stream keeps at least this many entries, to fill a gap
HISTORY_KEEP: Final = 10_000  # lines a room's stream keeps by default (history_keep)
# Backpressure, not loss: past the high-water mark sessions stop reading their clients until
# the backlog is down to the low-water mark. Nothing accepted is ever dropped, so the queue
# has no hard cap; it is bounded all the same, by the mark plus what each session had read
# already when it stopped (one read, 64 KiB of lines, per connection), and it is emptied when
# the link goes down.
PUBLISH_QUEUE: Final = 10_000
CONGESTED_AT: Final = PUBLISH_QUEUE // 2
FLOWING_AT: Final = PUBLISH_QUEUE // 10
PUBLISH_BATCH: Final = 500  # writes per pipeline
LOCATED_MAX: Final = 1024  # users found through their claim, waiting for their message
GONE: Final = "Their server went away"
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
T = TypeVar("T")


class LinkDown(Exception):
    """The end-to-end heartbeat stopped: this node cannot trust the cluster link."""


# --- what the publish loop writes ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Say:
    """Append a room message to its stream and publish it, with its stream id."""

    event: Message | Action


@dataclass(frozen=True, slots=True)
class _Announce:
    """Publish a join, part, quit, rename or topic on the events channel."""

    event: RelayedEvent


@dataclass(frozen=True, slots=True)
class _Present:
    """A local user is in ``rooms``: our presence hash says so."""

    nick: str
    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Absent:
    """A local user is gone: our presence hash forgets them."""

    nick: str


@dataclass(frozen=True, slots=True)
class _Titled:
    """A room's topic, for the nodes that start later."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class _Inbox:
    """A message for ``node`` alone, on its inbox: a private message, a ``/kill``, a whois
    asked of one of its users or the answer to one of theirs, a login's ghost or its
    answer."""

    node: str
    message: Direct | Kill | AskWhois | Answer | Ghost | Released


@dataclass(frozen=True, slots=True)
class _Forget:
    """A room nobody is in any more: its entry in ``P topics`` goes (the store keeps the
    topic, and the stream, the history, stays: it outlives an empty room)."""

    room: str


_Write = _Say | _Announce | _Present | _Absent | _Titled | _Inbox | _Forget


async def _cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while any is still running.

    A cancellation that lands inside a redis-py command can be swallowed by its clean-up,
    which leaves the task running; one more cancel reaches it at its next await.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(20):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.25)
    log.error("%d cluster tasks ignored cancellation; abandoning them", len(pending))


class RedisBackend:
    """The hub's cluster backend over Redis (``redis.asyncio``)."""

    def __init__(
        self, settings: ClusterSettings, history: int, *, keep: int = HISTORY_KEEP
    ) -> None:
        self.settings = settings
        self.node = settings.node_id or default_node_id()
        self.history = history
        self.keep = keep  # lines of history a room's stream keeps (at least GAP_WINDOW)
        self._owner = Claim.owner_prefix(self.node)  # also checks the node id
        self._keys = Keys(settings.prefix)
        self._hub: Hub | None = None
        self._directory: Directory | None = None
        self.ledger = Ledger()
        self._redis: redis.Redis = redis.Redis.from_url(
            settings.url,
            decode_responses=True,
            socket_timeout=settings.command_timeout * 2,
            # A pooled connection that Redis closed while idle (its `timeout` setting) fails
            # once; retry that on a fresh connection instead of calling the link down.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._claim = self._redis.register_script(CLAIM)
        self._refresh = self._redis.register_script(REFRESH)
        self._release = self._redis.register_script(RELEASE)
        self._say = self._redis.register_script(SAY)
        # One entry per local happening: its writes go out together or not at all.
        self._queue: asyncio.Queue[tuple[_Write, ...]] = asyncio.Queue()  # see CONGESTED_AT
        self._linked = False
        self._last_seen: dict[str, float] = {}  # node -> loop time of its last message
        self._last_self_heartbeat = 0.0
        # Redis's clock at our last heartbeat: after an outage, anything newer in a room's
        # stream is a gap to deliver, even in a room where we had seen no message yet.
        self._watermark: StreamId | None = None
        # nick key -> node, for users found through their claim before this node heard of
        # them: the hub's send_private follows its locate at once and takes the entry.
        self._located: dict[str, str] = {}
        # nick key -> set once the node holding it has answered a Ghost (see ghost()).
        self._ghosting: dict[str, asyncio.Event] = {}
        self._flowing = asyncio.Event()  # clear while congested
        self._flowing.set()
        self._runner: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        # Entries of the queue ever enqueued / written out (or given up with the link); the
        # last enqueued entry that says something in a room. A line is durable once it is
        # written: the store's commit waits for that (see store()).
        self._enqueued = 0
        self._written = 0
        self._last_said = 0
        self._progress = asyncio.Event()  # set (and replaced) whenever _written moves

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("the cluster backend has not been started")
        return self._hub

    @property
    def directory(self) -> Directory:
        """Who is on the other nodes, and in which rooms."""
        if self._directory is None:
            raise RuntimeError("the cluster backend has not been started")
        return self._directory

    # --- the Backend interface ------------------------------------------------------------

    @property
    def linked(self) -> bool:
        return self._linked

    async def claim(self, nick: str) -> None:
        if not self._linked:
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN,
                "This server has lost its cluster link, so new nicknames cannot be checked; "
                "try again in a moment.",
            )
        try:
            code, holder = await self._call(
                self._claim(
                    keys=self._keys.claims(nick),
                    args=[self._owner, Claim(self.node, nick).encode(), self._ttl_ms],
                )
            )
        except REDIS_ERRORS:
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN, "The cluster did not answer; try again in a moment."
            ) from None
        if int(code) == 1:
            raise ProtocolError(
                ErrorCode.NICK_TAKEN, f"The nickname {nick!r} is already in use; choose another."
            )
        if int(code) == 2:
            try:
                held_by = Claim.decode(holder).nick
            except MalformedMessage:
                held_by = "someone"
            raise ProtocolError(
                ErrorCode.NICK_CONFUSABLE,
                f"The nickname {nick!r} looks too much like {held_by!r}, who is online; "
                "choose another.",
            )

    async def release(self, nick: str) -> None:
        if not self._linked:
            return  # the claim expires by itself
        with contextlib.suppress(*REDIS_ERRORS):
            await self._call(self._release(keys=self._keys.claims(nick), args=[self._owner]))

    def publish(self, event: Event) -> None:
        if not self._linked or self._hub is None:
            return
        match event:
            case Message() | Action():
                self._enqueue(_Say(event))
                self._last_said = self._enqueued
            case Join(room=str(name), nick=str(nick)):
                self._enqueue(
                    _Announce(event), self._presence_of(nick), *self._standing(name, nick)
                )
            case Part(nick=str(nick)):
                self._enqueue(_Announce(event), self._presence_of(nick))
            case Quit(nick=str(nick)):
                self._enqueue(_Announce(event), _Absent(nick))
            case Nick(nick=str(old), new_nick=new):
                self._enqueue(_Announce(event), _Absent(old), self._presence_of(new))
            case Topic(room=str(name)):
                self._enqueue(_Announce(event), _Titled(name, event.text))
            case Kick(room=str(name), target=target):
                self.directory.unseat(target, name)  # kicked here, out of another node
                self._enqueue(_Announce(event))
            case Mode(room=str()) | Invite(room=str()):
                self._enqueue(_Announce(event))

    async def locate(self, nick: str) -> str | None:
        """Whom this node knows on another node; else whoever holds the nickname's claim.

        A user whose registration another node has acknowledged holds the claim already,
        though this node may not have heard their first join yet: Redis says where they are.
        """
        user = self.directory.find(nick)
        if user is not None:
            return user.nick
        if not self._linked:
            return None
        try:
            raw = await self._call(self._redis.get(self._keys.nick(nick)))
        except REDIS_ERRORS:
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN, "The cluster did not answer; try again in a moment."
            ) from None
        if raw is None:
            return None
        try:
            claim = Claim.decode(raw)
        except MalformedMessage as exc:
            log.warning("unreadable claim on %r: %s", nick, exc)
            return None
        # Our own claim is a user registering or leaving here; a node not heard from for
        # dead_after is gone, and its claims only wait to expire.
        if claim.node == self.node or claim.node not in self._last_seen:
            return None
        self._located[nick_key(claim.nick)] = claim.node
        while len(self._located) > LOCATED_MAX:
            del self._located[next(iter(self._located))]
        return claim.nick

    def send_private(self, event: Private) -> None:
        self._enqueue(_Inbox(self._node_of(event.target), Direct(self.node, event)))

    def kill(self, nick: str, text: str) -> None:
        """Disconnect ``nick``, a user of another node (``/kill``): the node holding them
        closes their connection with ``killed``."""
        self._enqueue(_Inbox(self._node_of(nick), Kill(self.node, nick, text)))

    def ask_whois(self, asker: Member, nick: str, request: str | None) -> None:
        ask = AskWhois(self.node, asker.nick, nick, asker.admin, request)
        self._enqueue(_Inbox(self._node_of(nick), ask))

    def answer(self, nick: str, event: Away) -> None:
        user = self.directory.find(nick)
        if user is not None and self._linked:  # else they are gone: nobody to tell
            self._enqueue(_Inbox(user.node, Answer(self.node, user.nick, event)))

    async def ghost(self, nick: str, account: str) -> None:
        try:
            node = self._node_of(nick)
        except ProtocolError:
            return  # gone, or out of reach: the claim that follows says which
        key = nick_key(nick)
        answered = self._ghosting.get(key)
        if answered is None:
            answered = self._ghosting[key] = asyncio.Event()
            self._enqueue(_Inbox(node, Ghost(self.node, nick, account)))
        try:
            async with asyncio.timeout(self.settings.dead_after):
                await answered.wait()
        except TimeoutError:
            log.warning("node %s did not give %s back in time", node, nick)
        finally:
            if self._ghosting.get(key) is answered:
                del self._ghosting[key]

    def _node_of(self, nick: str) -> str:
        """The node holding ``nick``, a user of another node (as the directory knows, or
        as :meth:`locate` just found), or :class:`ProtocolError` saying why none can be
        reached."""
        located = self._located.pop(nick_key(nick), None)
        if not self._linked:
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN,
                f"{nick} is on another server, which cannot be reached right now.",
            )
        user = self.directory.find(nick)
        node = user.node if user is not None else located
        if node is None:
            raise ProtocolError(ErrorCode.NO_SUCH_NICK, f"Nobody called {nick!r} is online.")
        return node

    def forget_room(self, name: str) -> None:
        self.ledger.forget_room(name)
        self._enqueue(_Forget(name))

    def store(self) -> RedisStore:
        """The cluster's :class:`~chat.storage.Store`, on this backend's client and keys.

        Usable before :meth:`start`. In cluster mode a room's history is its stream, which
        this backend's publish loop writes: the store counts a line said here as not yet
        durable (``dirty``) until the loop has written it, and its ``commit`` waits for
        that, so what a client has seen acknowledged is in Redis, as in single-process
        mode. While the link is down nothing waits: what was queued is given up.
        """
        return _ClusterStore(self._redis, self._keys, self)

    @property
    def saying(self) -> bool:
        """True while a room line enqueued here is not yet written to its stream."""
        return self._written < self._last_said

    async def said(self) -> None:
        """Return once every room line enqueued so far is written (or given up)."""
        target = self._last_said
        while self._written < target:
            await self._progress.wait()

    @property
    def congested(self) -> bool:
        return not self._flowing.is_set()

    async def uncongested(self) -> None:
        await self._flowing.wait()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, hub: Hub, deadline: float = 10.0) -> None:
        """Connect and load the cluster's state before the server accepts anyone."""
        self._hub = hub
        self._directory = Directory(hub)
        self._runner = asyncio.create_task(self._run(), name=f"cluster-{self.node}")
        waiter = asyncio.create_task(self._synced.wait())
        done, _ = await asyncio.wait(
            {waiter, self._runner}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            await self.close()
            raise ConnectionError(f"cannot join the cluster at {self.settings.url}")
        log.info("joined the cluster as node %s", self.node)

    async def close(self) -> None:
        """Leave the cluster: release nicknames and presence, stop every task."""
        if self._runner is not None:
            await self._stop_runner(self._runner)
            self._runner = None
        self._give_up_queue()
        if self._linked and self._hub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.delete(self._keys.presence(self.node))
                    for member in self._hub.members:
                        await self._release(
                            keys=self._keys.claims(member.nick), args=[self._owner], client=pipe
                        )
                    await self._call(pipe.execute())
        self._linked = False
        self._flow()
        await self._redis.aclose()

    async def _stop_runner(self, runner: asyncio.Task[None]) -> None:
        """Stop the link (the runner cancels its own tasks on the way out), bounded in time."""
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=6.0)  # it cancels its own tasks first
        if not done:
            await _cancel_until_done([runner])

    async def _run(self) -> None:
        """Stay connected: sync, then serve the link until it fails; back off; repeat."""
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            tasks: list[asyncio.Task[None]] = []
            try:
                # Subscribe before loading state: whatever is published meanwhile waits in
                # the subscription and is applied after it, deduplicated by the ledger.
                await self._call(pubsub.subscribe(self._keys.events, self._keys.inbox(self.node)))
                await self._sync()
                self._set_linked(True)
                backoff = 0.1
                tasks = [
                    asyncio.create_task(self._listen(pubsub)),
                    asyncio.create_task(self._publish_loop()),
                    asyncio.create_task(self._heartbeat_loop()),
                    asyncio.create_task(self._watchdog()),
                ]
                # Not a TaskGroup: its exit waits for every child, and a child whose
                # cancellation a library swallowed would hold the link down for good.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            except (*REDIS_ERRORS, LinkDown) as exc:
                log.warning("cluster link down: %s", exc)
            finally:
                await _cancel_until_done(tasks)
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
            self._set_linked(False)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 5.0)

    def _set_linked(self, linked: bool) -> None:
        if linked == self._linked:
            return
        self._linked = linked
        if linked:
            self.hub.notice_all("The cluster link is back: you reach every server again.")
            log.info("cluster link up")
        else:
            self._give_up_queue()
            self._flow()
            self._located.clear()
            self.hub.notice_all(
                "The cluster link is down: until it is back you reach only the users on this "
                "server, and new nicknames and private messages to other servers are refused."
            )

    # --- joining and re-joining -----------------------------------------------------------

    async def _sync(self) -> None:
        """Re-claim, re-announce, reload everybody else, fill gaps. Runs on every (re)connect."""
        hub = self.hub
        await self._call(self._redis.ping())
        await self._reclaim(hub)
        await self._write_presence(hub)
        # Other nodes' presence.
        rosters: dict[str, dict[str, list[str]]] = {}
        async for key in self._redis.scan_iter(match=self._keys.presence("*"), count=500):
            node = self._keys.presence_node(key)
            if node != self.node:
                raw = await self._call(self._redis.hgetall(key))
                rosters[node] = decode_roster(cast(dict[str, str], raw))
        now = asyncio.get_running_loop().time()
        for node in self.directory.nodes() - set(rosters):
            # We could not hear anyone while cut off, and a Redis that restarted empty has no
            # presence yet: give each such node dead_after seconds to be heard (its "sync"
            # brings its roster) before the watchdog declares it gone.
            self._last_seen[node] = now
        for node, roster in rosters.items():
            self._last_seen[node] = now  # its presence is fresh: it was alive moments ago
            self.directory.sync(node, roster)
        # Topics and history, or the gap since we last heard.
        topics = cast(dict[str, str], await self._call(self._redis.hgetall(self._keys.topics)))
        for name in hub.room_names():
            await self._catch_up(hub, name, topics.get(room_key(name), ""))
        self._last_self_heartbeat = asyncio.get_running_loop().time()
        await self._call(self._redis.publish(self._keys.events, encode(Sync(self.node))))
        self._synced.set()

    async def _catch_up(self, hub: Hub, name: str, topic: str) -> None:
        stream = self._keys.log(name)
        last = self.ledger.last_id(name) or self._watermark
        if last is None:  # first start: what is in the stream is history, not news
            entries = cast(
                list[tuple[str, dict[str, str]]],
                await self._call(self._redis.xrevrange(stream, count=max(self.history, 1))),
            )
            said = [r.event for r in self._entries(reversed(entries))]
            hub.seed_room(name, topic, [e for e in said if isinstance(e, Message | Action)])
            if entries:
                self.ledger.advance(name, StreamId.parse(entries[0][0]))
            return
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await self._call(self._redis.xrange(stream, min=f"({last}", count=GAP_WINDOW)),
        )
        for relayed in self._entries(entries):
            assert relayed.stream_id is not None
            self.ledger.advance(name, relayed.stream_id)
            if relayed.node != self.node and self.ledger.fresh(relayed.node, relayed.event):
                self.directory.apply(relayed.node, relayed.event)

    def _entries(self, entries: Iterable[tuple[str, dict[str, str]]]) -> list[Relayed]:
        read = []
        for entry_id, fields in entries:
            try:
                read.append(decode_entry(entry_id, fields))
            except MalformedMessage as exc:
                log.warning("unreadable stream entry: %s", exc)
        return read

    async def _reclaim(self, hub: Hub) -> None:
        """Claim our users' nicknames again (Redis may have restarted empty)."""
        for member in hub.members:
            code, _ = await self._call(
                self._claim(
                    keys=self._keys.claims(member.nick),
                    args=[self._owner, Claim(self.node, member.nick).encode(), self._ttl_ms],
                )
            )
            if int(code) != 0:
                self._evict(member)

    def _evict(self, member: Member) -> None:
        log.warning("nickname %s was claimed elsewhere while we were cut off", member.nick)
        member.peer.close(
            ErrorCode.NICK_TAKEN,
            "Your nickname was taken on another server while this one was cut off.",
        )

    async def _write_presence(self, hub: Hub) -> None:
        key = self._keys.presence(self.node)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            for member in hub.members:
                pipe.hset(key, member.nick, encode_rooms(r.name for r in member.rooms.values()))
            pipe.pexpire(key, self._ttl_ms)
            await self._call(pipe.execute())

    # --- the live link --------------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        while True:
            raw = await pubsub.get_message(timeout=self.settings.heartbeat)
            if raw is None:
                continue
            try:
                node, heartbeat = origin(raw["data"])
                if node == self.node:
                    if heartbeat:
                        self._last_self_heartbeat = loop.time()
                    continue
                message = decode(raw["data"])
            except MalformedMessage as exc:
                log.warning("unreadable cluster message: %s", exc)
                continue
            self._last_seen[message.node] = loop.time()
            await self._receive(message)

    async def _receive(self, message: ClusterMessage) -> None:
        match message:
            case Heartbeat():
                pass
            case Sync(node=node):
                raw = await self._call(self._redis.hgetall(self._keys.presence(node)))
                self.directory.sync(node, decode_roster(cast(dict[str, str], raw)))
            case Relayed(node=node, event=event, stream_id=stream_id):
                room = event.room
                if stream_id is not None and room and not self.ledger.advance(room, stream_id):
                    return  # already delivered, by the catch-up after a gap
                if self.ledger.fresh(node, event):
                    self.directory.apply(node, event)
                    if isinstance(event, Kick) and self.hub.find(event.target) is not None:
                        # A user of ours was kicked elsewhere: our presence says so.
                        self._enqueue(self._presence_of(event.target))
            case Direct(node=node, event=event):
                if self.ledger.fresh(node, event):
                    self.directory.apply(node, event)
            case Kill(nick=nick, text=text):
                member = self.hub.find(nick)
                if member is not None:
                    log.info("kill nick=%s from node %s", member.nick, message.node)
                    member.peer.close(ErrorCode.KILLED, text)
            case AskWhois(node=node, asker=asker, nick=nick, admin=admin, re=re):
                answer = self.hub.whois_for(asker, nick, admin=admin, request=re)
                self._enqueue(_Inbox(node, Answer(self.node, asker, answer)))
            case Answer(to=to, event=event):
                member = self.hub.find(to)
                if member is not None:
                    self.hub.tell(member, event)
            case Ghost(node=node, nick=nick, account=account):
                await self.hub.ghost(nick, account)
                self._enqueue(_Inbox(node, Released(self.node, nick)))
            case Released(nick=nick):
                answered = self._ghosting.get(nick_key(nick))
                if answered is not None:
                    answered.set()

    async def _publish_loop(self) -> None:
        """One writer, in order: per-sender order in a room is publication order."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < PUBLISH_BATCH:
                batch.append(self._queue.get_nowait())
            async with self._redis.pipeline(transaction=False) as pipe:
                for writes in batch:
                    for write in writes:
                        await self._add_to_pipeline(pipe, write)
                await self._call(pipe.execute())
            self._wrote(len(batch))
            if self._queue.qsize() <= FLOWING_AT:
                self._flow()

    async def _add_to_pipeline(self, pipe: Pipeline, write: _Write) -> None:
        """Queue one write on ``pipe`` (awaiting only queues it; execute() sends)."""
        keys = self._keys
        match write:
            case _Say(event=event):
                assert event.room is not None
                before, after = stream_frame(self.node, event)
                fields = entry_fields(self.node, event)
                await self._say(
                    keys=[keys.log(event.room), keys.events],
                    args=[
                        max(self.keep, self.history, GAP_WINDOW),
                        before,
                        after,
                        *(part for pair in fields.items() for part in pair),
                    ],
                    client=pipe,
                )
            case _Announce(event=event):
                pipe.publish(keys.events, encode(Relayed(self.node, event)))
            case _Present(nick=nick, rooms=rooms):
                pipe.hset(keys.presence(self.node), nick, encode_rooms(rooms))
            case _Absent(nick=nick):
                pipe.hdel(keys.presence(self.node), nick)
            case _Titled(room=room, text=text):
                pipe.hset(keys.topics, room_key(room), text)
            case _Inbox(node=node, message=message):
                pipe.publish(keys.inbox(node), encode(message))
            case _Forget(room=room):
                pipe.hdel(keys.topics, room_key(room))

    async def _heartbeat_loop(self) -> None:
        hub = self.hub
        while True:
            members = hub.members
            keys: list[str] = []
            for member in members:
                keys += self._keys.claims(member.nick)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.publish(self._keys.events, encode(Heartbeat(self.node, time.time())))
                pipe.pexpire(self._keys.presence(self.node), self._ttl_ms)
                pipe.time()
                for start in range(0, len(keys), 1000):
                    chunk = keys[start : start + 1000]
                    await self._refresh(keys=chunk, args=[self._owner, self._ttl_ms], client=pipe)
                results = await self._call(pipe.execute())
            seconds, micros = results[2]
            self._watermark = StreamId(int(seconds) * 1000 + int(micros) // 1000, 0)
            lost = {k for chunk in results[3:] for k in chunk}
            for member in members:
                if self._keys.nick(member.nick) in lost:
                    self._evict(member)
            # Rooms that emptied through other nodes' parts and quits went without a word
            # to us: what the ledger keeps for them goes now.
            self.ledger.keep_rooms({room_key(name) for name in hub.room_names()})
            await asyncio.sleep(self.settings.heartbeat)

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.heartbeat / 2)
            now = loop.time()
            if now - self._last_self_heartbeat > self.settings.link_timeout:
                raise LinkDown(f"own heartbeat not heard for {self.settings.link_timeout:g} s")
            for node, seen in list(self._last_seen.items()):
                if now - seen > self.settings.dead_after:
                    log.warning("node %s is gone", node)
                    self._forget_node(node)

    def _forget_node(self, node: str) -> None:
        """``node`` is gone: its users quit, and nothing kept for it stays."""
        self._last_seen.pop(node, None)
        self.directory.forget(node, GONE)
        self.ledger.forget_node(node)
        for key in [key for key, where in self._located.items() if where == node]:
            del self._located[key]

    # --- helpers --------------------------------------------------------------------------

    def footprint(self) -> dict[str, int]:
        """How many entries this node keeps about rooms and other nodes, per kind: what
        must come back down when rooms and nodes go away."""
        counts = {f"ledger.{k}": v for k, v in self.ledger.footprint().items()}
        if self._directory is not None:
            counts.update({f"directory.{k}": v for k, v in self._directory.footprint().items()})
        counts["last_seen"] = len(self._last_seen)
        counts["located"] = len(self._located)
        return counts

    async def _call(self, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(self.settings.command_timeout):
            return await awaitable

    def _enqueue(self, *writes: _Write) -> None:
        self._queue.put_nowait(writes)
        self._enqueued += 1
        if self._queue.qsize() >= CONGESTED_AT and self._flowing.is_set():
            log.info("cluster publish backlog at %d: pausing clients", self._queue.qsize())
            self._flowing.clear()

    def _wrote(self, count: int) -> None:
        """``count`` entries of the queue are written (or given up): wake who waits."""
        self._written += count
        self._progress.set()
        self._progress = asyncio.Event()

    def _give_up_queue(self) -> None:
        """The link is down or closed: what is queued will never be written."""
        while not self._queue.empty():
            self._queue.get_nowait()
        # A batch the publish loop had taken is lost with its task: given up too.
        self._wrote(self._enqueued - self._written)

    def _flow(self) -> None:
        """The backlog is small again (or gone with the link): sessions read on."""
        if not self._flowing.is_set():
            log.info("cluster publish backlog at %d: clients resume", self._queue.qsize())
            self._flowing.set()

    def _standing(self, name: str, nick: str) -> tuple[_Announce, ...]:
        """The operator status a local user got by joining ``name`` (its creator, or an
        operator of a claimed room): the hub gives it without an event, and other nodes
        cannot work it out (they do not know who was first, nor remote users' accounts)."""
        member = self.hub.find(nick)
        room = None if member is None else member.rooms.get(room_key(name))
        if room is None or nick_key(nick) not in room.ops:
            return ()
        return (_Announce(Mode(room=room.name, change="+o", target=nick)),)

    def _presence_of(self, nick: str) -> _Present:
        member = self.hub.find(nick)
        rooms = tuple(r.name for r in member.rooms.values()) if member is not None else ()
        return _Present(nick, rooms)

    @property
    def _ttl_ms(self) -> int:
        return int(self.settings.nick_ttl * 1000)


class _ClusterStore(RedisStore):
    """The cluster's store, whose durability also covers the room lines this node's
    backend has queued but not yet appended to their streams (:meth:`RedisBackend.store`)."""

    def __init__(self, client: redis.Redis, keys: Keys, backend: RedisBackend) -> None:
        super().__init__(client, keys)
        self._backend = backend

    @property
    def dirty(self) -> bool:
        return super().dirty or self._backend.saying

    async def commit(self) -> None:
        await self._backend.said()
        await super().commit()
