"""Cluster mode: several chat-server processes share one chat through Redis.

Theory of operation
-------------------
Every node keeps a full view of the chat in its own :class:`~chat.hub.Hub`: its local
users, and every other node's users as :class:`~chat.hub.RemoteMember` s. A local event is
delivered to local users at once and then published; other nodes apply it to their view and
deliver it to *their* users. So local chat never waits on the network, and an outage of
Redis costs the cluster link, not the node.

Redis holds (``P`` is the key prefix, ``chat:`` by default):

- ``P nick:<key>`` and ``P skel:<skeleton>``: nickname claims, ``"<node>\\n<nick>"``, set with
  ``NX`` semantics by a script that checks both keys at once, expiring unless the owning node
  refreshes them; released by compare-and-delete. A dead node's nicknames free themselves.
- ``P presence:<node>``: a hash nick -> JSON list of rooms, expiring with the node's
  heartbeat; read when a node (re)joins the cluster.
- ``P log:<room>``: one stream per room with its messages and actions, trimmed to the history
  length (at least ``GAP_WINDOW`` entries, so a node that was cut off can fill the gap).
- ``P topics``: a hash room -> topic.

Channels: ``P events`` carries every event and heartbeat, ``P node:<node>`` private messages.
A room message is appended to its stream and published by one script, so publication order
is stream order, and each published message carries its stream id: a node drops ids it has
already seen, which makes the replay after a gap and the live stream meet with no gap and no
duplicate.

Failure detection is end to end: every node publishes a heartbeat each ``heartbeat``
seconds and must hear its own within ``link_timeout``, or it declares the link down, tells
its users, refuses what cannot be done safely (new nicknames, private messages to other
nodes), and reconnects with exponential backoff and jitter. Back up, it re-claims its
nicknames, rewrites its presence, announces itself, reloads everyone else's presence, and
fills each room's gap from its stream. A node not heard from for ``dead_after`` seconds is
gone: its users quit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chat.errors import ErrorCode, ProtocolError
from chat.hub import Hub, Member
from chat.protocol import (
    Action,
    Dialect,
    Event,
    Join,
    Message,
    Nick,
    Part,
    Private,
    Quit,
    Topic,
    nick_key,
    nick_skeleton,
    parse_event,
    render,
    room_key,
)

__all__ = ["ClusterSettings", "RedisBackend"]

log = logging.getLogger("chat.cluster")

GAP_WINDOW: Final = 1000
PUBLISH_QUEUE: Final = 10_000
PUBLISH_BATCH: Final = 500
T = TypeVar("T")
StreamEntries = list[tuple[str, dict[str, str]]]

# KEYS: nick key, skeleton key. ARGV: owner prefix ("node\n"), value, ttl ms.
# 0 = claimed (or already ours), 1 = nick taken, 2 = a look-alike is taken (returns its value).
_CLAIM = """
local a = redis.call('GET', KEYS[1])
if a and string.sub(a, 1, #ARGV[1]) ~= ARGV[1] then return {1, a} end
local b = redis.call('GET', KEYS[2])
if b and string.sub(b, 1, #ARGV[1]) ~= ARGV[1] then return {2, b} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {0, ''}
"""
# KEYS: keys to refresh. ARGV: owner prefix, ttl ms. Returns the keys no longer ours.
_REFRESH = """
local lost = {}
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, key)
  end
end
return lost
"""
# KEYS: keys to release. ARGV: owner prefix. Compare-and-delete: only a claim of this node
# (one node never holds two claims on one key, and a case-only rename keeps its claim).
_RELEASE = """
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""
# KEYS: room stream, events channel. ARGV: maxlen, node, event json.
_SAY = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', ARGV[2], 'e', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2] .. '\\n' .. id .. '\\n' .. ARGV[3])
return id
"""


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


class LinkDown(Exception):
    """The end-to-end heartbeat stopped: this node cannot trust the cluster link."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    url: str
    node_id: str = ""
    prefix: str = "chat:"
    heartbeat: float = 1.0
    link_timeout: float = 3.0
    dead_after: float = 5.0
    nick_ttl: float = 6.0
    command_timeout: float = 2.0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


def _stream_id(text: str) -> tuple[int, int]:
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


class RedisBackend:
    """The hub's cluster backend over Redis (``redis.asyncio``)."""

    def __init__(self, settings: ClusterSettings, history: int) -> None:
        self.settings = settings
        self.node = settings.node_id or default_node_id()
        self.history = history
        self._p = settings.prefix
        self._owner = self.node + "\n"
        self._hub: Hub | None = None
        self._redis: redis.Redis = redis.Redis.from_url(
            settings.url,
            decode_responses=True,
            socket_timeout=settings.command_timeout * 2,
            # A pooled connection that Redis closed while idle (its `timeout` setting) fails
            # once; retry that on a fresh connection instead of calling the link down.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)
        self._say = self._redis.register_script(_SAY)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(PUBLISH_QUEUE)
        self._linked = False
        self._last_seen: dict[str, float] = {}  # node -> loop time of its last message
        self._last_self_heartbeat = 0.0
        self._last_id: dict[str, tuple[int, int]] = {}  # room key -> newest stream id seen
        # Redis's clock at our last heartbeat: after an outage, anything newer in a room's
        # stream is a gap to deliver, even in a room where we had seen no message yet.
        self._watermark: tuple[int, int] | None = None
        # (node, id prefix, room key) -> number of the last event applied from there
        self._seen: dict[tuple[str, str, str], int] = {}
        self._dropped = 0
        self._runner: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

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
                    keys=[self._nick_key(nick), self._skel_key(nick)],
                    args=[self._owner, self._owner + nick, self._ttl_ms],
                )
            )
        except (RedisError, OSError, TimeoutError):
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN, "The cluster did not answer; try again in a moment."
            ) from None
        held_by = str(holder).partition("\n")[2]
        if int(code) == 1:
            raise ProtocolError(
                ErrorCode.NICK_TAKEN, f"The nickname {nick!r} is already in use; choose another."
            )
        if int(code) == 2:
            raise ProtocolError(
                ErrorCode.NICK_CONFUSABLE,
                f"The nickname {nick!r} looks too much like {held_by!r}, who is online; "
                "choose another.",
            )

    async def release(self, nick: str) -> None:
        if not self._linked:
            return  # the claim expires by itself
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._call(
                self._release(keys=[self._nick_key(nick), self._skel_key(nick)], args=[self._owner])
            )

    def publish(self, event: Event) -> None:
        hub = self._hub
        if not self._linked or hub is None:
            return
        match event:
            case Message(room=str(name)) | Action(room=str(name)):
                self._enqueue("say", (name, event))
            case Join(nick=str(nick)) | Part(nick=str(nick)):
                self._enqueue("event", (event, self._presence_of(nick)))
            case Quit(nick=str(nick)):
                self._enqueue("event", (event, ("gone", nick)))
            case Nick(nick=str(old), new_nick=new):
                self._enqueue("event", (event, ("gone", old)))
                self._enqueue("presence", self._presence_of(new))
            case Topic(room=str(name)):
                self._enqueue("event", (event, ("topic", name, event.text)))

    def send_private(self, node: str, event: Private) -> None:
        self._enqueue("private", (node, event))

    def forget_room(self, name: str) -> None:
        self._enqueue("forget", name)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, hub: Hub, deadline: float = 10.0) -> None:
        """Connect and load the cluster's state before the server accepts anyone."""
        self._hub = hub
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
        if self._linked and self._hub is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.delete(self._presence_key(self.node))
                    for member in self._hub.members:
                        await self._release(
                            keys=[self._nick_key(member.nick), self._skel_key(member.nick)],
                            args=[self._owner],
                            client=pipe,
                        )
                    await self._call(pipe.execute())
        self._linked = False
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
                # the subscription and is applied after it, deduplicated by stream id.
                await self._call(pubsub.subscribe(self._channel, self._private_channel))
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
            except (RedisError, OSError, TimeoutError, LinkDown) as exc:
                log.warning("cluster link down: %s", exc)
            finally:
                await _cancel_until_done(tasks)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
            self._set_linked(False)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 5.0)

    def _set_linked(self, linked: bool) -> None:
        if linked == self._linked:
            return
        self._linked = linked
        hub = self._hub
        assert hub is not None
        if linked:
            hub.notice_all("The cluster link is back: you reach every server again.")
            log.info("cluster link up")
        else:
            while not self._queue.empty():
                self._queue.get_nowait()
            hub.notice_all(
                "The cluster link is down: until it is back you reach only the users on this "
                "server, and new nicknames and private messages to other servers are refused."
            )

    # --- joining and re-joining -----------------------------------------------------------

    async def _sync(self) -> None:
        """Re-claim, re-announce, reload everybody else, fill gaps. Runs on every (re)connect."""
        hub = self._hub
        assert hub is not None
        await self._call(self._redis.ping())
        await self._reclaim(hub)
        await self._write_presence(hub)
        # Other nodes' presence.
        rosters: dict[str, dict[str, list[str]]] = {}
        async for key in self._redis.scan_iter(match=f"{self._p}presence:*", count=500):
            node = key[len(f"{self._p}presence:") :]
            if node != self.node:
                raw = await self._call(self._redis.hgetall(key))
                rosters[node] = self._decode_roster(cast(dict[str, str], raw))
        now = asyncio.get_running_loop().time()
        for node in hub.remote_nodes() - set(rosters):
            # We could not hear anyone while cut off, and a Redis that restarted empty has no
            # presence yet: give each such node dead_after seconds to be heard (its "sync"
            # brings its roster) before the watchdog declares it gone.
            self._last_seen[node] = now
        for node, known in rosters.items():
            self._last_seen[node] = now  # its presence is fresh: it was alive moments ago
            hub.sync_node(node, known)
        # Topics and history, or the gap since we last heard.
        topics = cast(dict[str, str], await self._call(self._redis.hgetall(f"{self._p}topics")))
        for name in hub.room_names():
            await self._catch_up(hub, name, topics.get(room_key(name), ""))
        self._last_self_heartbeat = asyncio.get_running_loop().time()
        await self._call(self._redis.publish(self._channel, f"{self.node}\nsync\n"))
        self._synced.set()

    async def _catch_up(self, hub: Hub, name: str, topic: str) -> None:
        key = room_key(name)
        stream = self._log_key(name)
        last = self._last_id.get(key) or self._watermark
        if last is None:  # first start: what is in the stream is history, not news
            entries = cast(
                StreamEntries,
                await self._call(self._redis.xrevrange(stream, count=max(self.history, 1))),
            )
            events = [e for e in (self._entry_event(f) for _, f in reversed(entries)) if e]
            hub.seed_room(name, topic, events if self.history else [])
            if entries:
                self._last_id[key] = _stream_id(entries[0][0])
            return
        start = f"({last[0]}-{last[1]}"
        entries = cast(
            StreamEntries,
            await self._call(self._redis.xrange(stream, min=start, count=GAP_WINDOW)),
        )
        for stream_id, fields in entries:
            self._last_id[key] = _stream_id(stream_id)
            event = self._entry_event(fields)
            node = fields.get("n", "?")
            if event is not None and node != self.node and self._fresh(node, event):
                hub.apply(node, event)

    async def _reclaim(self, hub: Hub) -> None:
        """Claim our users' nicknames again (Redis may have restarted empty)."""
        for member in hub.members:
            code, _ = await self._call(
                self._claim(
                    keys=[self._nick_key(member.nick), self._skel_key(member.nick)],
                    args=[self._owner, self._owner + member.nick, self._ttl_ms],
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
        key = self._presence_key(self.node)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            for member in hub.members:
                pipe.hset(key, member.nick, json.dumps([r.name for r in member.rooms.values()]))
            pipe.pexpire(key, self._ttl_ms)
            await self._call(pipe.execute())

    # --- the live link --------------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        hub = self._hub
        assert hub is not None
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=self.settings.heartbeat)
            if message is None:
                continue
            node, _, rest = str(message["data"]).partition("\n")
            tag, _, body = rest.partition("\n")
            if node == self.node:
                if tag == "hb":
                    self._last_self_heartbeat = loop.time()
                continue
            self._last_seen[node] = loop.time()
            if tag == "hb":
                continue
            if tag == "sync":
                roster = await self._call(self._redis.hgetall(self._presence_key(node)))
                hub.sync_node(node, self._decode_roster(cast(dict[str, str], roster)))
                continue
            self._receive(hub, node, tag, body)

    def _receive(self, hub: Hub, node: str, tag: str, body: str) -> None:
        try:
            event = parse_event(body)
        except ValueError:
            log.warning("unreadable cluster event from %s", node)
            return
        if tag != "-" and event.room is not None:  # a room message, with its stream id
            key = room_key(event.room)
            stream_id = _stream_id(tag)
            if stream_id <= self._last_id.get(key, (0, 0)):
                return  # already delivered, by the catch-up after a gap
            self._last_id[key] = stream_id
        if self._fresh(node, event):
            hub.apply(node, event)

    def _fresh(self, node: str, event: Event) -> bool:
        """False for an event already applied: a publish retried after a broken connection
        can arrive twice. Event ids count up per process, and one node's events in one room
        (or outside rooms) arrive in the order it published them."""
        origin, _, counter = event.id.rpartition("-")
        if not counter.isdigit():
            return True
        scope = (node, origin, room_key(event.room) if event.room else "")
        number = int(counter)
        if number <= self._seen.get(scope, 0):
            return False
        self._seen[scope] = number
        return True

    async def _publish_loop(self) -> None:
        """One writer, in order: per-sender order in a room is publication order."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < PUBLISH_BATCH:
                batch.append(self._queue.get_nowait())
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, payload in batch:
                    await self._add_to_pipeline(pipe, kind, payload)
                await self._call(pipe.execute())

    async def _add_to_pipeline(self, pipe: Any, kind: str, payload: Any) -> None:
        """Queue one operation on ``pipe`` (awaiting only queues it; execute() sends)."""
        p = self._p
        if kind == "say":
            name, event = payload
            await self._say(
                keys=[self._log_key(name), self._channel],
                args=[max(self.history, GAP_WINDOW), self.node, self._json(event)],
                client=pipe,
            )
        elif kind == "event":
            event, presence = payload
            pipe.publish(self._channel, f"{self.node}\n-\n{self._json(event)}")
            await self._add_to_pipeline(pipe, "presence", presence)
        elif kind == "presence":
            match payload:
                case ("gone", nick):
                    pipe.hdel(self._presence_key(self.node), nick)
                case ("topic", name, text):
                    pipe.hset(f"{p}topics", room_key(name), text)
                case (str(nick), list(rooms)):
                    pipe.hset(self._presence_key(self.node), nick, json.dumps(rooms))
        elif kind == "private":
            node, event = payload
            pipe.publish(f"{p}node:{node}", f"{self.node}\n-\n{self._json(event)}")
        elif kind == "forget":
            pipe.delete(self._log_key(payload))
            pipe.hdel(f"{p}topics", room_key(payload))

    async def _heartbeat_loop(self) -> None:
        hub = self._hub
        assert hub is not None
        while True:
            members = hub.members
            keys = self._claim_keys(members)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.publish(self._channel, f"{self.node}\nhb\n{time.time():.3f}")
                pipe.pexpire(self._presence_key(self.node), self._ttl_ms)
                pipe.time()
                for start in range(0, len(keys), 1000):
                    chunk = keys[start : start + 1000]
                    await self._refresh(keys=chunk, args=[self._owner, self._ttl_ms], client=pipe)
                results = await self._call(pipe.execute())
            seconds, micros = results[2]
            self._watermark = (int(seconds) * 1000 + int(micros) // 1000, 0)
            lost = {k for chunk in results[3:] for k in chunk}
            for member in members:
                if self._nick_key(member.nick) in lost:
                    self._evict(member)
            await asyncio.sleep(self.settings.heartbeat)

    async def _watchdog(self) -> None:
        hub = self._hub
        assert hub is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.heartbeat / 2)
            now = loop.time()
            if now - self._last_self_heartbeat > self.settings.link_timeout:
                raise LinkDown(f"own heartbeat not heard for {self.settings.link_timeout:g} s")
            for node, seen in list(self._last_seen.items()):
                if now - seen > self.settings.dead_after:
                    del self._last_seen[node]
                    log.warning("node %s is gone", node)
                    hub.forget_node(node, "Their server went away")

    # --- helpers --------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(self.settings.command_timeout):
            return await awaitable

    def _enqueue(self, kind: str, payload: Any) -> None:
        try:
            self._queue.put_nowait((kind, payload))
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("cluster publish queue full: %d events dropped", self._dropped)

    def _presence_of(self, nick: str) -> tuple[str, list[str]]:
        hub = self._hub
        assert hub is not None
        member = hub.find(nick)
        rooms = [r.name for r in member.rooms.values()] if member is not None else []
        return (nick, rooms)

    @staticmethod
    def _json(event: Event) -> str:
        return render(event, Dialect.JSON).decode().rstrip("\n")

    @staticmethod
    def _entry_event(fields: dict[str, str]) -> Message | Action | None:
        try:
            event = parse_event(fields["e"])
        except (KeyError, ValueError):
            return None
        return event if isinstance(event, Message | Action) else None

    @staticmethod
    def _decode_roster(raw: dict[str, str]) -> dict[str, list[str]]:
        roster: dict[str, list[str]] = {}
        for nick, rooms in raw.items():
            with contextlib.suppress(ValueError):
                roster[nick] = [str(r) for r in json.loads(rooms)]
        return roster

    def _claim_keys(self, members: list[Member]) -> list[str]:
        keys: list[str] = []
        for member in members:
            keys += [self._nick_key(member.nick), self._skel_key(member.nick)]
        return keys

    @property
    def _ttl_ms(self) -> int:
        return int(self.settings.nick_ttl * 1000)

    @property
    def _channel(self) -> str:
        return f"{self._p}events"

    @property
    def _private_channel(self) -> str:
        return f"{self._p}node:{self.node}"

    def _nick_key(self, nick: str) -> str:
        return f"{self._p}nick:{nick_key(nick)}"

    def _skel_key(self, nick: str) -> str:
        return f"{self._p}skel:{nick_skeleton(nick)}"

    def _presence_key(self, node: str) -> str:
        return f"{self._p}presence:{node}"

    def _log_key(self, name: str) -> str:
        return f"{self._p}log:{room_key(name)}"
