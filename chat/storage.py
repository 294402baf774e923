"""What the chat keeps across restarts, and the small interface every store offers the hub.

The hub keeps its working state in memory and tells a :class:`Store` what changed; the store
writes behind it. Writes are plain calls that queue (``append``, ``save_room``...): the hub
never awaits on the hot path. They become durable together at the next commit, which the
hub's outbox starts with :meth:`Store.commit_then` and waits for before it delivers anything
that happened after them, so what a client has seen acknowledged is on disk (protocol.md,
"Persistence"). Reads are awaited and
see every write queued before them.

Two stores implement this: :class:`chat.sqlite_store.SqliteStore` (the default, one file) and
:class:`chat.cluster.store.RedisStore` (cluster mode, shared by every node).

Keys: an account's and a room's key is :func:`chat.protocol.nick_key` /
:func:`chat.protocol.room_key` of its name; records keep the name as first written.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from chat.protocol import Action, Message, nick_key, room_key

__all__ = ["Account", "Ban", "Committed", "Line", "MemoryStore", "RoomState", "Store"]

Line = Message | Action  # what room history is made of
Committed = Callable[[BaseException | None], None]  # told a commit's outcome: None if durable


@dataclass(frozen=True, slots=True)
class Account:
    """A registered nickname. ``password_hash`` is an argon2 hash, never shown to anyone."""

    name: str
    password_hash: str
    created: float


@dataclass(frozen=True, slots=True)
class Ban:
    """A ban or a mute. ``mask`` is ``account:NAME``, ``nick:NAME`` (both as nick_key) or
    ``address:IP``; ``by`` is who set it, ``ts`` when."""

    mask: str
    reason: str = ""
    by: str = ""
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class RoomState:
    """A room's settings, as kept. ``modes`` is a sorted subset of ``"imt"``; ``owner`` the
    account key that claimed it; ``roles`` maps account keys to ``"o"`` (operator) or
    ``"v"`` (voice), and holds only in claimed rooms."""

    name: str
    topic: str = ""
    modes: str = ""
    owner: str | None = None
    roles: tuple[tuple[str, str], ...] = ()
    bans: tuple[Ban, ...] = ()
    mutes: tuple[Ban, ...] = ()


class Store(Protocol):
    """Where the hub's state outlives the process. One instance per server process."""

    # --- reads: awaited, ordered after every write queued before them -------------------

    async def load_room(self, name: str) -> RoomState | None:
        """A room's kept settings, or None if nothing is kept for it."""

    async def claimed_rooms(self) -> list[RoomState]:
        """Every room with an owner (they exist while empty), in no particular order."""

    async def recent(self, room: str, limit: int) -> list[Line]:
        """The last ``limit`` lines said in ``room``, oldest first."""

    async def before(self, room: str, ts: float, limit: int) -> list[Line]:
        """The last ``limit`` lines said in ``room`` strictly before ``ts``, oldest first."""

    async def account(self, name: str) -> Account | None:
        """The account of nickname ``name`` (any case), or None."""

    async def create_account(self, account: Account) -> bool:
        """Register ``account``; False if its name (as a nick_key) is taken. Of concurrent
        creations of one name, exactly one returns True."""

    async def global_bans(self) -> list[Ban]:
        """The server-wide bans (``/gban``)."""

    async def ignores(self, account: str) -> list[str]:
        """The nick keys an account ignores."""

    # --- writes: queued, never awaited; durable after the next commit ----------------------

    def append(self, line: Line) -> None:
        """Keep one line of ``line.room``'s history."""

    def save_room(self, state: RoomState) -> None:
        """Replace everything kept about ``state.name`` (history aside) with ``state``."""

    def delete_room(self, name: str) -> None:
        """Forget a room's settings and topic; its history stays."""

    def set_password(self, name: str, password_hash: str) -> None:
        """Change an existing account's password hash."""

    def delete_account(self, name: str) -> None:
        """Forget an account, its ignores, its roles in rooms and its claims (the rooms it
        owned stay, unowned)."""

    def add_global_ban(self, ban: Ban) -> None: ...

    def remove_global_ban(self, mask: str) -> None: ...

    def set_ignores(self, account: str, nicks: Sequence[str]) -> None:
        """Replace the nick keys ``account`` ignores."""

    # --- durability ---------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True while writes are queued that :meth:`commit` has not made durable."""

    async def commit(self) -> None:
        """Make every write queued so far durable, in one transaction. Concurrent calls are
        fine: each returns once the writes queued before it are durable."""

    def commit_then(self, done: Committed) -> None:
        """Start a :meth:`commit` now and call ``done`` on the event loop once it is over.

        The outbox's way in, for what waits on every chat message: a call rather than an
        awaitable, so that a store can start the commit before returning and report on the
        very next turn of the loop. Each task or future between the two costs a turn, and a
        turn of a busy loop is every line read in one go: every turn waited is latency
        added to every message and, to a client that waits for its echoes, throughput lost.

        Several may be under way at once: their ``done`` calls must come in the order the
        commits were started."""

    @property
    def commit_waiting(self) -> bool:
        """True while a commit started with :meth:`commit_then` would only queue behind one
        that has not begun: the outbox then waits for the next report instead, so that a
        slow store gets one bigger commit rather than a queue of small ones."""

    @property
    def early_commits(self) -> bool:
        """Whether a commit started in the middle of a turn of the loop gets on before the
        turn is over (a thread's commit does; a task's waits for the next turn), so that the
        outbox should start one as soon as many entries wait rather than at the turn's end."""

    async def close(self) -> None:
        """Commit what is queued and release the store. Idempotent."""


class MemoryStore:
    """A store that keeps everything in this process's memory: for ``--db :memory:`` and
    tests, and the reference for what the other stores do. Nothing is ever dirty."""

    def __init__(self, *, keep: int = 10_000) -> None:
        self.keep = keep
        self._rooms: dict[str, RoomState] = {}
        self._history: dict[str, deque[Line]] = {}
        self._accounts: dict[str, Account] = {}
        self._global_bans: dict[str, Ban] = {}
        self._ignores: dict[str, list[str]] = {}

    async def load_room(self, name: str) -> RoomState | None:
        return self._rooms.get(room_key(name))

    async def claimed_rooms(self) -> list[RoomState]:
        return [state for state in self._rooms.values() if state.owner is not None]

    async def recent(self, room: str, limit: int) -> list[Line]:
        lines = self._history.get(room_key(room), ())
        return list(lines)[-limit:] if limit > 0 else []

    async def before(self, room: str, ts: float, limit: int) -> list[Line]:
        lines = [line for line in self._history.get(room_key(room), ()) if line.ts < ts]
        return lines[-limit:] if limit > 0 else []

    async def account(self, name: str) -> Account | None:
        return self._accounts.get(nick_key(name))

    async def create_account(self, account: Account) -> bool:
        return self._accounts.setdefault(nick_key(account.name), account) is account

    async def global_bans(self) -> list[Ban]:
        return list(self._global_bans.values())

    async def ignores(self, account: str) -> list[str]:
        return list(self._ignores.get(nick_key(account), ()))

    def append(self, line: Line) -> None:
        key = room_key(line.room or "")
        lines = self._history.get(key)
        if lines is None:
            lines = self._history[key] = deque(maxlen=self.keep)
        lines.append(line)

    def save_room(self, state: RoomState) -> None:
        self._rooms[room_key(state.name)] = state

    def delete_room(self, name: str) -> None:
        self._rooms.pop(room_key(name), None)

    def set_password(self, name: str, password_hash: str) -> None:
        account = self._accounts.get(nick_key(name))
        if account is not None:
            self._accounts[nick_key(name)] = replace(account, password_hash=password_hash)

    def delete_account(self, name: str) -> None:
        key = nick_key(name)
        self._accounts.pop(key, None)
        self._ignores.pop(key, None)
        for room, state in self._rooms.items():
            roles = tuple(role for role in state.roles if role[0] != key)
            owner = (
                None if state.owner is not None and nick_key(state.owner) == key else state.owner
            )
            self._rooms[room] = replace(state, roles=roles, owner=owner)

    def add_global_ban(self, ban: Ban) -> None:
        self._global_bans[ban.mask] = ban

    def remove_global_ban(self, mask: str) -> None:
        self._global_bans.pop(mask, None)

    def set_ignores(self, account: str, nicks: Sequence[str]) -> None:
        self._ignores[nick_key(account)] = list(nicks)

    dirty = False

    async def commit(self) -> None:
        return None

    commit_waiting = False
    early_commits = False

    def commit_then(self, done: Committed) -> None:
        asyncio.get_running_loop().call_soon(done, None)

    async def close(self) -> None:
        return None
