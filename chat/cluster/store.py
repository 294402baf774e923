"""The :class:`~chat.storage.Store` of cluster mode: accounts, rooms and bans in Redis.

Every node of a cluster keeps its lasting state in the one Redis they share, so an account
registered on one node logs in on another, and a room claimed on one is claimed on all.

Layout (``P`` is the key prefix; :class:`~chat.cluster.keys.Keys` spells it):

- ``P account:<nick key>``: a hash ``name``, ``password_hash``, ``created``.
- ``P ignores:<nick key>``: a set of the nick keys that account ignores.
- ``P room:<room key>``: a hash ``name``, ``topic``, ``modes`` and, when claimed, ``owner``;
  ``P room:<room key>:roles`` a hash account key -> ``o``/``v``; ``P room:<room key>:bans``
  and ``...:mutes`` hashes mask -> JSON ``{"reason", "by", "ts"}``.
- ``P rooms``: a set of every room key with kept settings; ``P claimed``: those with an owner.
- ``P gbans``: a hash mask -> JSON ban, the server-wide bans.
- History is the room's stream ``P log:<room key>``, which the backend writes.

Writes queue closures and :meth:`RedisStore.commit` sends all of them in one MULTI/EXEC,
so what one commit changes, every node sees at once or not at all. Every write is a
replacement or a deletion, so a commit that failed half-way (a connection lost before its
EXEC was answered) is simply sent again with the next one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Final, ParamSpec, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from chat.cluster.keys import Keys
from chat.cluster.messages import MalformedMessage, decode_entry
from chat.errors import ErrorCode, ProtocolError
from chat.protocol import Action, Message, nick_key, room_key
from chat.storage import Account, Ban, Committed, Line, RoomState

__all__ = ["BEFORE_SLACK", "RedisStore"]

log = logging.getLogger("chat.cluster.store")

BEFORE_SLACK: Final = 60.0
"""Seconds by which a line may reach its stream after its own ``ts`` (see :meth:`before`)."""
_PAGE: Final = 100  # stream entries read per round trip when skipping lines

# KEYS: account hash. ARGV: name, password hash, created. 1 = created, 0 = the name is taken.
_CREATE_ACCOUNT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'password_hash', ARGV[2], 'created', ARGV[3])
return 1
"""
# KEYS: account hash. ARGV: password hash. Only an existing account: never half a record.
_SET_PASSWORD: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'password_hash', ARGV[1])
end
return 0
"""
# KEYS: account hash, its ignores, the set of kept rooms, the set of claimed rooms.
# ARGV: account key, what a room's settings key starts with, what its roles key adds.
# Walks every kept room (the room keys are data, so the script spells their keys): account
# deletion is rare, and keeping a per-account index up to date would cost every save_room.
_DELETE_ACCOUNT: Final = """
redis.call('DEL', KEYS[1], KEYS[2])
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local settings = ARGV[2] .. room
  redis.call('HDEL', settings .. ARGV[3], ARGV[1])
  if redis.call('HGET', settings, 'owner') == ARGV[1] then
    redis.call('HDEL', settings, 'owner')
    redis.call('SREM', KEYS[4], room)
  end
end
return 0
"""

_REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _read(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """A read that cannot reach Redis is refused as the hub refuses what needs the cluster
    (``cluster_down``), instead of failing with a Redis error the hub does not expect."""

    @functools.wraps(method)
    async def read(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except _REDIS_ERRORS as exc:
            log.warning("store read failed: %s", exc)
            raise ProtocolError(
                ErrorCode.CLUSTER_DOWN,
                "The cluster's store cannot be reached right now; try again in a moment.",
            ) from exc

    return read


_Op = Callable[[Pipeline], Awaitable[None]]
_Hash = dict[FieldT, EncodableT]  # what hset(mapping=...) takes


class RedisStore:
    """:class:`~chat.storage.Store` on a Redis shared by every node of a cluster.

    ``client`` must decode responses (``decode_responses=True``, as the backend's does); the
    store borrows it and never closes it.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._create_account = client.register_script(_CREATE_ACCOUNT)
        self._set_password = client.register_script(_SET_PASSWORD)
        self._delete_account = client.register_script(_DELETE_ACCOUNT)
        # The Lua of delete_account builds room keys from room keys; Keys says how.
        self._room_base = keys.room("")
        self._roles_suffix = keys.roles("").removeprefix(self._room_base)
        # Writes stay queued until a commit has sent them, so a failed commit leaves them
        # in order for the next. _queued and _written count writes ever queued / sent.
        self._ops: list[_Op] = []
        self._queued = 0
        self._written = 0
        self._flight: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()  # commit_then's, until they are over
        self._closed = False
        self._global_bans: list[Ban] = []  # as last read

    # --- reads ----------------------------------------------------------------------------

    @_read
    async def load_room(self, name: str) -> RoomState | None:
        await self.commit()
        async with self._redis.pipeline(transaction=True) as pipe:
            self._read_room(pipe, name)
            found = await pipe.execute()
        return _room(*found)

    @_read
    async def claimed_rooms(self) -> list[RoomState]:
        await self.commit()
        names = cast(set[str], await self._redis.smembers(self._keys.claimed))
        if not names:
            return []
        async with self._redis.pipeline(transaction=True) as pipe:
            for name in names:
                self._read_room(pipe, name)
            found = await pipe.execute()
        rooms = (_room(*found[at : at + 4]) for at in range(0, len(found), 4))
        return [room for room in rooms if room is not None]

    @_read
    async def recent(self, room: str, limit: int) -> list[Line]:
        # History reads need no commit: append queues nothing (the backend writes history).
        if limit <= 0:
            return []
        entries = await self._redis.xrevrange(self._keys.log(room), count=limit)
        return _lines(cast(list[tuple[str, dict[str, str]]], entries))[::-1]

    @_read
    async def before(self, room: str, ts: float, limit: int) -> list[Line]:
        """Lines whose own ``ts`` is before ``ts``, the last ``limit`` in stream order.

        A stream id is Redis's clock when the line was appended, not the line's ``ts`` (the
        saying node's clock, a little earlier): lines are filtered by their ``ts``, and the
        stream is read backwards from ``ts + BEFORE_SLACK``, so that paging back does not
        read everything said since. A line that reached Redis more than BEFORE_SLACK after
        its ``ts`` (a node whose clock is that far behind Redis's) is missed at the edge.
        """
        if limit <= 0 or math.isnan(ts):
            return []
        bound = ts + BEFORE_SLACK
        if bound < 0:
            return []
        top = "+" if bound >= 2**53 else str(int(bound * 1000))
        stream = self._keys.log(room)
        found: list[Line] = []
        while len(found) < limit:
            page = max(limit - len(found), _PAGE)
            entries = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrevrange(stream, max=top, min="-", count=page),
            )
            found += (line for line in _lines(entries) if line.ts < ts)
            if len(entries) < page:
                break
            top = f"({entries[-1][0]}"
        return found[:limit][::-1]

    @_read
    async def account(self, name: str) -> Account | None:
        await self.commit()
        raw = cast(dict[str, str], await self._redis.hgetall(self._keys.account(name)))
        if not raw:
            return None
        try:
            return Account(raw["name"], raw["password_hash"], float(raw["created"]))
        except (KeyError, ValueError):
            log.warning("unreadable account %r: %r", nick_key(name), sorted(raw))
            return None

    @_read
    async def create_account(self, account: Account) -> bool:
        await self.commit()
        created = await self._create_account(
            keys=[self._keys.account(account.name)],
            args=[account.name, account.password_hash, repr(account.created)],
        )
        return int(created) == 1

    async def global_bans(self) -> list[Ban]:
        """The server-wide bans; while Redis cannot be reached, the last ones read (every
        new connection is checked against them: refusing everyone would be worse)."""
        try:
            await self.commit()
            raw = await self._redis.hgetall(self._keys.global_bans)
        except _REDIS_ERRORS as exc:
            log.warning("server-wide bans unreadable, using the last ones read: %s", exc)
            return list(self._global_bans)
        self._global_bans = _bans(cast(dict[str, str], raw))
        return list(self._global_bans)

    @_read
    async def ignores(self, account: str) -> list[str]:
        await self.commit()
        return sorted(cast(set[str], await self._redis.smembers(self._keys.ignores(account))))

    # --- writes ---------------------------------------------------------------------------

    def append(self, line: Line) -> None:
        """Nothing to do: the backend's SAY script already appended ``line`` to its room's
        stream when it published it, atomically with the publication; a second write of
        every message would double the traffic and could disagree with the first."""

    def save_room(self, state: RoomState) -> None:
        keys, name = self._keys, state.name
        settings: _Hash = {"name": name, "topic": state.topic, "modes": state.modes}
        if state.owner is not None:
            settings["owner"] = state.owner
        roles: _Hash = dict(state.roles)
        bans: _Hash = {ban.mask: _ban_json(ban) for ban in state.bans}
        mutes: _Hash = {ban.mask: _ban_json(ban) for ban in state.mutes}

        async def op(pipe: Pipeline) -> None:
            pipe.delete(keys.room(name), keys.roles(name), keys.bans(name), keys.mutes(name))
            pipe.hset(keys.room(name), mapping=settings)
            for key, mapping in ((keys.roles, roles), (keys.bans, bans), (keys.mutes, mutes)):
                if mapping:
                    pipe.hset(key(name), mapping=mapping)
            pipe.sadd(keys.rooms, room_key(name))
            if state.owner is None:
                pipe.srem(keys.claimed, room_key(name))
            else:
                pipe.sadd(keys.claimed, room_key(name))

        self._queue(op)

    def delete_room(self, name: str) -> None:
        keys = self._keys

        async def op(pipe: Pipeline) -> None:
            pipe.delete(keys.room(name), keys.roles(name), keys.bans(name), keys.mutes(name))
            pipe.srem(keys.rooms, room_key(name))
            pipe.srem(keys.claimed, room_key(name))

        self._queue(op)

    def set_password(self, name: str, password_hash: str) -> None:
        key = self._keys.account(name)

        async def op(pipe: Pipeline) -> None:
            await self._set_password(keys=[key], args=[password_hash], client=pipe)

        self._queue(op)

    def delete_account(self, name: str) -> None:
        keys = self._keys
        script_keys = [keys.account(name), keys.ignores(name), keys.rooms, keys.claimed]
        args = [nick_key(name), self._room_base, self._roles_suffix]

        async def op(pipe: Pipeline) -> None:
            await self._delete_account(keys=script_keys, args=args, client=pipe)

        self._queue(op)

    def add_global_ban(self, ban: Ban) -> None:
        key, value = self._keys.global_bans, _ban_json(ban)

        async def op(pipe: Pipeline) -> None:
            pipe.hset(key, ban.mask, value)

        self._queue(op)

    def remove_global_ban(self, mask: str) -> None:
        key = self._keys.global_bans

        async def op(pipe: Pipeline) -> None:
            pipe.hdel(key, mask)

        self._queue(op)

    def set_ignores(self, account: str, nicks: Sequence[str]) -> None:
        key, members = self._keys.ignores(account), list(nicks)

        async def op(pipe: Pipeline) -> None:
            pipe.delete(key)
            if members:
                pipe.sadd(key, *members)

        self._queue(op)

    # --- durability -----------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._ops)  # a write leaves the queue only once its commit succeeded

    async def commit(self) -> None:
        """Send every queued write in one MULTI/EXEC. Concurrent calls share the transaction
        in flight; a call with writes that flight does not carry sends them next, so each
        returns once what was queued before it is in Redis. A caller that is cancelled does
        not cancel the transaction others wait on."""
        target = self._queued
        while self._written < target:
            if self._flight is None:
                self._flight = asyncio.create_task(self._send())
                self._flight.add_done_callback(_retrieved)
            await asyncio.shield(self._flight)

    @property
    def commit_waiting(self) -> bool:
        """Two under way: the second sends, in its own transaction, everything queued by
        the time the first is over, so a third could only wait for it."""
        return len(self._commits) >= 2

    early_commits = False  # a task: it starts on the loop's next turn whenever it is made

    def commit_then(self, done: Committed) -> None:
        """:meth:`commit` in a task of the store's: a commit here is a round trip to Redis,
        which the turns of the loop it takes to report do not change much."""

        def finished(task: asyncio.Task[None]) -> None:
            self._commits.discard(task)
            done(asyncio.CancelledError() if task.cancelled() else task.exception())

        task = asyncio.get_running_loop().create_task(self.commit())
        self._commits.add(task)
        task.add_done_callback(finished)

    async def close(self) -> None:
        """Commit what is queued; the client stays open, it is the caller's. Later writes
        are refused (they could never be committed)."""
        await self.commit()
        self._closed = True

    # --- helpers --------------------------------------------------------------------------

    def _queue(self, op: _Op) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        self._ops.append(op)
        self._queued += 1

    async def _send(self) -> None:
        """One transaction of everything queued now. On a lost connection the writes stay
        queued, in order, for the next commit (they are all idempotent); a command Redis
        refused would be refused again, so those are dropped, loudly."""
        ops = list(self._ops)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for op in ops:
                    await op(pipe)
                await pipe.execute()
        except ResponseError:
            log.exception("Redis refused a commit of %d writes; they are dropped", len(ops))
            self._done(len(ops))
            raise
        else:
            self._done(len(ops))
        finally:
            self._flight = None

    def _done(self, count: int) -> None:
        del self._ops[:count]
        self._written += count

    def _read_room(self, pipe: Pipeline, name: str) -> None:
        keys = self._keys
        for key in (keys.room(name), keys.roles(name), keys.bans(name), keys.mutes(name)):
            pipe.hgetall(key)


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a commit's failure as seen: its callers got it, if any were still waiting."""
    if not task.cancelled():
        task.exception()


def _room(
    settings: Mapping[str, str],
    roles: Mapping[str, str],
    bans: Mapping[str, str],
    mutes: Mapping[str, str],
) -> RoomState | None:
    """A room as kept, roles sorted by account, bans and mutes by when they were set."""
    name = settings.get("name")
    if not name:
        return None
    return RoomState(
        name=name,
        topic=settings.get("topic", ""),
        modes=settings.get("modes", ""),
        owner=settings.get("owner"),
        roles=tuple(sorted(roles.items())),
        bans=tuple(_bans(bans)),
        mutes=tuple(_bans(mutes)),
    )


def _ban_json(ban: Ban) -> str:
    return json.dumps({"reason": ban.reason, "by": ban.by, "ts": ban.ts}, ensure_ascii=False)


def _bans(raw: Mapping[str, str]) -> list[Ban]:
    """Bans from mask -> JSON, oldest first. What cannot be read is kept as a bare mask:
    a ban must not vanish because its reason was mangled."""
    bans = []
    for mask, value in raw.items():
        try:
            data = json.loads(value)
            ban = Ban(mask, str(data["reason"]), str(data["by"]), float(data["ts"]))
        except (TypeError, ValueError, KeyError, RecursionError):
            log.warning("unreadable ban on %r: %r", mask, value[:80])
            ban = Ban(mask)
        bans.append(ban)
    return sorted(bans, key=lambda ban: (ban.ts, ban.mask))


def _lines(entries: Iterable[tuple[str, dict[str, str]]]) -> list[Line]:
    """Room stream entries as lines, in the order given; unreadable ones are left out."""
    lines: list[Line] = []
    for entry_id, fields in entries:
        try:
            event = decode_entry(entry_id, fields).event
        except MalformedMessage as exc:
            log.warning("unreadable stream entry: %s", exc)
            continue
        if isinstance(event, Message | Action):  # decode_entry allows nothing else
            lines.append(event)
    return lines
