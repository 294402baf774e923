"""The default :class:`~chat.storage.Store`: one SQLite file, written behind the hub.

Theory of operation
-------------------
SQLite calls block, so none runs on the event loop: every one runs on a single worker thread
(a one-thread executor), which also owns the connection. One thread means one order: jobs run
in the order they were queued, which is what makes the store's guarantees cheap.

Writes are plain method calls that put a small item on an in-memory list: a history line as
is on one, anything else as a ready-made function of the connection on another (history is
a table of its own that no other write touches, so the two need no order between them);
nothing is built or checked per chat message beyond that. :meth:`SqliteStore.commit` hands
both lists to the worker, which applies them in one transaction. A read hands them over the
same way before it reads, so it sees every write queued before it.
Because the worker runs jobs in order, a commit that returns has also seen every earlier job
through, which is what concurrent commits need.

History is kept as one row per room per commit (a *chunk*): its lines packed into one text
column, fields separated by U+001F and lines by U+001E, which :func:`chat.protocol.sanitize`
never lets into a nickname or a message, and their timestamps as one little-endian array of
doubles beside it (exact, and one C loop to write, where ``repr`` of a float is a third of
what formatting a line costs). A row per line cost 3.6 µs of the one core the server runs
on, per message said, which on a busy room is a third of what delivering it costs; a chunk
costs one f-string per line (a run of one room's lines in one comprehension, not a call
each) and one insert per room per commit.

The file is in WAL mode with ``synchronous=NORMAL``: a committed transaction survives the
process being killed (not necessarily the machine losing power), and readers in other
processes do not block the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from chat.protocol import Action, Message, nick_key, room_key
from chat.storage import Account, Ban, Committed, Line, RoomState

__all__ = ["SCHEMA_VERSION", "SchemaVersionError", "SqliteStore", "open_store"]

T = TypeVar("T")
_Write = Callable[[sqlite3.Connection], None]
_Batch = tuple[list[Line], list[_Write]]  # what one job writes: history lines, other writes

BUSY_TIMEOUT_MS: Final = 5_000  # another process holding the write lock: wait, don't fail

# The schema, one step per version: _MIGRATIONS[n] takes a database from version n (its
# ``PRAGMA user_version``) to n + 1. Append steps; never change one that has shipped.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE accounts (key TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " password_hash TEXT NOT NULL, created REAL NOT NULL)",
        "CREATE TABLE rooms (key TEXT PRIMARY KEY, name TEXT NOT NULL, topic TEXT NOT NULL,"
        " modes TEXT NOT NULL, owner TEXT)",
        "CREATE INDEX rooms_owner ON rooms (owner)",
        "CREATE TABLE room_roles (room TEXT NOT NULL, account TEXT NOT NULL,"
        " role TEXT NOT NULL, PRIMARY KEY (room, account))",
        "CREATE INDEX room_roles_account ON room_roles (account)",
        "CREATE TABLE room_bans (room TEXT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('ban', 'mute')), mask TEXT NOT NULL,"
        " reason TEXT NOT NULL, set_by TEXT NOT NULL, ts REAL NOT NULL,"
        " PRIMARY KEY (room, kind, mask))",
        "CREATE TABLE global_bans (mask TEXT PRIMARY KEY, reason TEXT NOT NULL,"
        " set_by TEXT NOT NULL, ts REAL NOT NULL)",
        "CREATE TABLE ignores (account TEXT NOT NULL, nick TEXT NOT NULL,"
        " PRIMARY KEY (account, nick))",
        # ``room`` is the key, ``name`` the room's name as the line was said in it.
        "CREATE TABLE history (seq INTEGER PRIMARY KEY, room TEXT NOT NULL,"
        " name TEXT NOT NULL, id TEXT NOT NULL, ts REAL NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('message', 'action')), nick TEXT,"
        " text TEXT NOT NULL)",
        "CREATE INDEX history_room ON history (room, seq)",
    ),
    # 1 -> 2: history in chunks, one row per room per commit (see the module docstring);
    # every line kept so far becomes a chunk of its own.
    (
        "CREATE TABLE history_chunks (seq INTEGER PRIMARY KEY, room TEXT NOT NULL,"
        " name TEXT NOT NULL, first_ts REAL NOT NULL, count INTEGER NOT NULL,"
        " lines TEXT NOT NULL)",
        "CREATE INDEX history_chunks_room ON history_chunks (room, seq)",
        "INSERT INTO history_chunks (room, name, first_ts, count, lines)"
        " SELECT room, name, ts, 1, id || char(31) || ts || char(31) || kind || char(31)"
        " || coalesce(nick, '') || char(31) || text FROM history ORDER BY seq",
        "DROP TABLE history",
    ),
    # 2 -> 3: a chunk's timestamps as one array of doubles (``stamps``) rather than formatted
    # into each line, where formatting a float was a third of what storing a line cost.
    # Chunks written before keep theirs in their lines (``stamps`` is NULL).
    ("ALTER TABLE history_chunks ADD COLUMN stamps BLOB",),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_INSERT_CHUNK: Final = (
    "INSERT INTO history_chunks (room, name, first_ts, count, lines, stamps)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_FIELD: Final = "\x1f"
_LINE: Final = "\x1e"
_SEPARATORS: Final = str.maketrans({_FIELD: "\ufffd", _LINE: "\ufffd"})


class SchemaVersionError(RuntimeError):
    """The file was written by a newer version of the server; we refuse to guess at it."""


async def open_store(path: str, *, keep: int = 10_000) -> SqliteStore:
    """A ready :class:`SqliteStore` on ``path``: parent directories made, schema migrated.

    Opening here, rather than at the first read, makes a bad path or a too-new file fail at
    start-up with its own error.
    """
    store = SqliteStore(path, keep=keep)
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store


class SqliteStore:
    """A :class:`~chat.storage.Store` in one SQLite file (``":memory:"``: in this process only).

    History is pruned to the ``keep`` newest lines of each room, lazily so that it stays
    cheap: when a commit takes a room past ``keep + keep // 10`` lines, the room's oldest
    chunks go, in the same transaction, as long as ``keep`` lines remain. Pruning costs one
    ``DELETE`` per ``keep // 10`` lines said, and a room holds at most ``keep + keep // 10``
    lines plus one chunk's worth. The worker counts each room's lines (one ``sum`` the
    first time it sees a room).
    """

    def __init__(self, path: str, *, keep: int = 10_000) -> None:
        if keep < 0:
            raise ValueError(f"keep must be at least 0, not {keep}")
        self._path = path
        self._keep = keep
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-store")
        # Queued writes, on the event loop's side.
        self._lines: list[Line] = []
        self._writes: list[_Write] = []
        self._committing = 0  # jobs handed to the worker with writes, not yet finished
        self._handed = 0  # jobs handed to the worker (written on the loop's thread only)
        self._started = 0  # jobs the worker has begun (written on the worker thread only)
        self._closing: asyncio.Future[None] | None = None
        # The worker's own state: touched on the worker thread only (``dirty`` reads _failed).
        self._conn: sqlite3.Connection | None = None
        self._failed: _Batch = ([], [])  # a rolled-back batch, retried first
        self._counts: dict[str, int] = {}  # room key -> lines kept, for pruning

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open and migrate the file now (it is otherwise opened by the first job)."""
        await self._run(_nothing)

    # --- reads ------------------------------------------------------------------------

    async def load_room(self, name: str) -> RoomState | None:
        return await self._run(partial(_load_room, room_key(name)))

    async def claimed_rooms(self) -> list[RoomState]:
        return await self._run(_claimed_rooms)

    async def recent(self, room: str, limit: int) -> list[Line]:
        if limit <= 0:
            return []
        return await self._run(partial(_lines, room_key(room), float("inf"), limit))

    async def before(self, room: str, ts: float, limit: int) -> list[Line]:
        if limit <= 0:
            return []
        return await self._run(partial(_lines, room_key(room), ts, limit))

    async def account(self, name: str) -> Account | None:
        return await self._run(partial(_account, nick_key(name)))

    async def create_account(self, account: Account) -> bool:
        """Insert under the primary key, so that the database, not a check before the
        insert, decides between racing creations (even from other processes)."""
        return await self._run(partial(_create_account, account))

    async def global_bans(self) -> list[Ban]:
        return await self._run(_global_bans)

    async def ignores(self, account: str) -> list[str]:
        return await self._run(partial(_ignores, nick_key(account)))

    # --- writes -----------------------------------------------------------------------

    def append(self, line: Line) -> None:
        """Queue the line itself: this runs for every chat message, so it does nothing more
        than refuse a line that belongs to no room (it would fail the whole commit)."""
        if line.room is None:
            raise ValueError(f"a history line needs a room: {line!r}")
        self._lines.append(line)

    def save_room(self, state: RoomState) -> None:
        self._writes.append(partial(_save_room, state))

    def delete_room(self, name: str) -> None:
        self._writes.append(partial(_delete_room, room_key(name)))

    def set_password(self, name: str, password_hash: str) -> None:
        self._writes.append(partial(_set_password, nick_key(name), password_hash))

    def delete_account(self, name: str) -> None:
        self._writes.append(partial(_delete_account, nick_key(name)))

    def add_global_ban(self, ban: Ban) -> None:
        self._writes.append(partial(_add_global_ban, ban))

    def remove_global_ban(self, mask: str) -> None:
        self._writes.append(partial(_remove_global_ban, mask))

    def set_ignores(self, account: str, nicks: Sequence[str]) -> None:
        self._writes.append(partial(_set_ignores, nick_key(account), tuple(nicks)))

    # --- durability -------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._lines or self._writes or any(self._failed)) or self._committing > 0

    async def commit(self) -> None:
        """Hand the queued writes to the worker. With nothing queued but an earlier commit
        still running (or failed), queue an empty job: it finishes after that one."""
        if self.dirty:
            await self._run(_nothing)

    @property
    def commit_waiting(self) -> bool:
        """A job handed to the worker that it has not begun: its batch was fixed when it was
        handed over, so what is queued now would go in a job queued behind it."""
        return self._handed != self._started

    early_commits = True  # the worker thread commits while the loop reads on

    def commit_then(self, done: Committed) -> None:
        self._hand_over(partial(self._job, _nothing), done)

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        last = asyncio.wrap_future(self._hand_over(self._last_job))
        self._executor.shutdown(wait=False)  # refuses new jobs; the queued ones still run
        await last

    # --- the event loop's side of the worker ------------------------------------------

    async def _run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``read`` on the worker after the writes queued so far. Shielded: a cancelled
        caller must not cancel a job that carries writes."""
        return await asyncio.shield(asyncio.wrap_future(self._hand_over(partial(self._job, read))))

    def _hand_over(self, job: Callable[[_Batch], T], done: Committed | None = None) -> Future[T]:
        """Queue ``job`` on the worker with the writes queued so far. When it is over, the
        worker itself schedules the loop's side (``done``, and the count behind ``dirty``):
        one turn of the loop later, where a future awaited in a task would take two."""
        loop = asyncio.get_running_loop()
        batch = (self._lines, self._writes)
        future = self._executor.submit(job, batch)
        self._lines, self._writes = [], []  # only now: if the executor refused, keep them
        self._handed += 1
        carries = bool(batch[0] or batch[1])
        if carries:
            self._committing += 1
        if carries or done is not None:

            def finished(future: Future[T]) -> None:  # on the worker thread
                with suppress(RuntimeError):  # the loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(self._finished, future, carries, done)

            future.add_done_callback(finished)
        return future

    def _finished(self, future: Future[T], carried: bool, done: Committed | None) -> None:
        if carried:
            self._committing -= 1
        if done is not None:
            done(future.exception())

    # --- the worker thread ------------------------------------------------------------

    def _job(self, read: Callable[[sqlite3.Connection], T], batch: _Batch) -> T:
        self._started += 1
        conn = self._connection()
        lines, writes = batch
        failed_lines, failed_writes = self._failed
        if failed_lines or failed_writes:
            lines, writes = failed_lines + lines, failed_writes + writes
        if lines or writes:
            self._write(conn, lines, writes)
        return read(conn)

    def _last_job(self, batch: _Batch) -> None:
        """Commit what is left, then close the connection whatever happened."""
        try:
            self._job(_nothing, batch)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None)  # we BEGIN and COMMIT
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema up to date in one transaction: all steps or none."""
        with _transaction(conn):
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self._path} has schema version {version}, but this server knows only "
                    f"versions up to {SCHEMA_VERSION}: it was written by a newer server. "
                    "Run that one, or point this one at another file."
                )
            for steps in _MIGRATIONS[version:]:
                for sql in steps:
                    conn.execute(sql)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _write(self, conn: sqlite3.Connection, lines: list[Line], writes: list[_Write]) -> None:
        """Apply a batch in one transaction. If it fails, the batch is kept and retried
        first by the next job, so that no write is lost or reordered."""
        self._failed = (lines, writes)
        try:
            with _transaction(conn):
                for write in writes:
                    write(conn)
                if lines:
                    self._append(conn, lines)
        except BaseException:
            self._counts.clear()  # they may count rolled-back lines: count again
            raise
        self._failed = ([], [])

    def _append(self, conn: sqlite3.Connection, lines: list[Line]) -> None:
        """One chunk per room, then the rooms' pruning."""
        chunks: dict[str, _Chunk] = {}  # room key -> its chunk
        keys: dict[str, str] = {}  # room name -> key: one room_key per name, not per run
        for name, group in groupby(lines, _ROOM):
            run = list(group)
            key = keys.get(name)
            if key is None:
                key = keys[name] = room_key(name)
            chunk = chunks.get(key)
            if chunk is None:
                chunk = chunks[key] = _Chunk(name, run[0].ts)
            chunk.runs.append(_pack(run))
            chunk.stamps += [line.ts for line in run]
        conn.executemany(
            _INSERT_CHUNK,
            [
                (
                    key,
                    chunk.name,
                    chunk.first_ts,
                    len(chunk.stamps),
                    _LINE.join(chunk.runs),
                    struct.pack(f"<{len(chunk.stamps)}d", *chunk.stamps),
                )
                for key, chunk in chunks.items()
            ],
        )
        slack = self._keep // 10
        for key, chunk in chunks.items():
            count = self._counts.get(key)
            if count is None:  # first sight of this room: its count includes these lines
                count = conn.execute(
                    "SELECT coalesce(sum(count), 0) FROM history_chunks WHERE room = ?", (key,)
                ).fetchone()[0]
            else:
                count += len(chunk.stamps)
            if count > self._keep + slack:
                count = _prune(conn, key, self._keep)
            self._counts[key] = count


@dataclass(slots=True)
class _Chunk:
    """A room's lines in one commit: packed runs, and every line's timestamp."""

    name: str  # the room's name as its first line was said in it
    first_ts: float
    runs: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)


_ROOM: Final = attrgetter("room")


def _pack(run: list[Line]) -> str:
    """Lines said in one room, packed: one f-string each in one comprehension, at a third of
    the cost of a call per line. A separator inside a nickname or a text would shift every
    field after it; sanitize() never lets one in, and two scans of the result make sure."""
    packed = _LINE.join(
        [
            f"{line.id}\x1f"
            f"{'notice' if line.__class__ is Message and line.notice else line.type}"
            f"\x1f{line.nick or ''}\x1f{line.text}"
            for line in run
        ]
    )
    if packed.count(_FIELD) == 3 * len(run) and packed.count(_LINE) == len(run) - 1:
        return packed
    return _LINE.join(_pack_one(line) for line in run)


def _pack_one(line: Line) -> str:
    """One line packed with any separator in its nickname or text replaced."""
    nick = (line.nick or "").translate(_SEPARATORS)
    kind = "notice" if isinstance(line, Message) and line.notice else line.type
    return _FIELD.join((line.id, kind, nick, line.text.translate(_SEPARATORS)))


def _prune(conn: sqlite3.Connection, key: str, keep: int) -> int:
    """Drop a room's oldest chunks while ``keep`` lines remain; the lines left."""
    kept = 0
    rows = conn.execute(
        "SELECT seq, count FROM history_chunks WHERE room = ? ORDER BY seq DESC", (key,)
    )
    for seq, count in rows:
        if kept >= keep:
            conn.execute("DELETE FROM history_chunks WHERE room = ? AND seq <= ?", (key, seq))
            break
        kept += count
    return kept


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception. Immediate takes
    the write lock at once, so a busy file is waited for (busy_timeout) at the start rather
    than failing in the middle."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


# --- what jobs do on the worker, one function each ------------------------------------------


def _nothing(_: sqlite3.Connection) -> None:
    """The read of a job that only writes."""


def _load_room(key: str, conn: sqlite3.Connection) -> RoomState | None:
    row = conn.execute(
        "SELECT key, name, topic, modes, owner FROM rooms WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else _room_state(conn, row)


def _claimed_rooms(conn: sqlite3.Connection) -> list[RoomState]:
    rows = conn.execute(
        "SELECT key, name, topic, modes, owner FROM rooms WHERE owner IS NOT NULL"
    ).fetchall()
    return [_room_state(conn, row) for row in rows]


def _room_state(conn: sqlite3.Connection, row: tuple[str, str, str, str, str | None]) -> RoomState:
    key, name, topic, modes, owner = row
    roles = conn.execute(
        "SELECT account, role FROM room_roles WHERE room = ? ORDER BY rowid", (key,)
    ).fetchall()
    kept = conn.execute(
        "SELECT kind, mask, reason, set_by, ts FROM room_bans WHERE room = ? ORDER BY rowid",
        (key,),
    ).fetchall()
    return RoomState(
        name=name,
        topic=topic,
        modes=modes,
        owner=owner,
        roles=tuple((account, role) for account, role in roles),
        bans=tuple(Ban(*ban) for kind, *ban in kept if kind == "ban"),
        mutes=tuple(Ban(*ban) for kind, *ban in kept if kind == "mute"),
    )


def _lines(key: str, before: float, limit: int, conn: sqlite3.Connection) -> list[Line]:
    """The last ``limit`` lines of room ``key`` said before ``before``, oldest first: chunks
    are read newest first until there are enough."""
    found: list[Line] = []
    rows = conn.execute(
        "SELECT name, lines, stamps FROM history_chunks WHERE room = ? AND first_ts < ?"
        " ORDER BY seq DESC",
        (key, before),
    )
    for name, packed, stamps in rows:
        chunk: list[Line] = []
        for id_, at, kind, nick, text in _unpack(packed, stamps):
            if at < before:
                who = nick or None
                if kind == "action":
                    chunk.append(Action(id=id_, ts=at, room=name, nick=who, text=text))
                else:
                    notice = kind == "notice"
                    chunk.append(
                        Message(id=id_, ts=at, room=name, nick=who, text=text, notice=notice)
                    )
        found[:0] = chunk
        if len(found) >= limit:
            break
    return found[-limit:]


def _unpack(packed: str, stamps: bytes | None) -> Iterator[tuple[str, float, str, str, str]]:
    """A chunk's lines as (id, ts, kind, nick, text); ``stamps`` is None in chunks written
    by schema 2, whose lines hold their timestamps."""
    lines = packed.split(_LINE)
    if stamps is None:
        for line in lines:
            id_, ts, kind, nick, text = line.split(_FIELD, 4)
            yield id_, float(ts), kind, nick, text
        return
    for line, ts in zip(lines, struct.unpack(f"<{len(lines)}d", stamps), strict=True):
        id_, kind, nick, text = line.split(_FIELD, 3)
        yield id_, ts, kind, nick, text


def _account(key: str, conn: sqlite3.Connection) -> Account | None:
    row = conn.execute(
        "SELECT name, password_hash, created FROM accounts WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else Account(*row)


def _create_account(account: Account, conn: sqlite3.Connection) -> bool:
    try:
        with _transaction(conn):
            conn.execute(
                "INSERT INTO accounts (key, name, password_hash, created) VALUES (?, ?, ?, ?)",
                (nick_key(account.name), account.name, account.password_hash, account.created),
            )
    except sqlite3.IntegrityError:
        return False
    return True


def _global_bans(conn: sqlite3.Connection) -> list[Ban]:
    rows = conn.execute("SELECT mask, reason, set_by, ts FROM global_bans ORDER BY rowid")
    return [Ban(*row) for row in rows]


def _ignores(key: str, conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT nick FROM ignores WHERE account = ? ORDER BY rowid", (key,))
    return [nick for (nick,) in rows]


def _save_room(state: RoomState, conn: sqlite3.Connection) -> None:
    key = room_key(state.name)
    _delete_room(key, conn)
    conn.execute(
        "INSERT INTO rooms (key, name, topic, modes, owner) VALUES (?, ?, ?, ?, ?)",
        (key, state.name, state.topic, state.modes, state.owner),
    )
    # OR REPLACE: a duplicate in the state must not fail the commit it shares with others.
    conn.executemany(
        "INSERT OR REPLACE INTO room_roles (room, account, role) VALUES (?, ?, ?)",
        [(key, account, role) for account, role in state.roles],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO room_bans (room, kind, mask, reason, set_by, ts)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(key, "ban", b.mask, b.reason, b.by, b.ts) for b in state.bans]
        + [(key, "mute", b.mask, b.reason, b.by, b.ts) for b in state.mutes],
    )


def _delete_room(key: str, conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM rooms WHERE key = ?", (key,))
    conn.execute("DELETE FROM room_roles WHERE room = ?", (key,))
    conn.execute("DELETE FROM room_bans WHERE room = ?", (key,))


def _set_password(key: str, password_hash: str, conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE accounts SET password_hash = ? WHERE key = ?", (password_hash, key))


def _delete_account(key: str, conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM accounts WHERE key = ?", (key,))
    conn.execute("DELETE FROM ignores WHERE account = ?", (key,))
    conn.execute("DELETE FROM room_roles WHERE account = ?", (key,))
    conn.execute("UPDATE rooms SET owner = NULL WHERE owner = ?", (key,))


def _add_global_ban(ban: Ban, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO global_bans (mask, reason, set_by, ts) VALUES (?, ?, ?, ?)",
        (ban.mask, ban.reason, ban.by, ban.ts),
    )


def _remove_global_ban(mask: str, conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM global_bans WHERE mask = ?", (mask,))


def _set_ignores(key: str, nicks: tuple[str, ...], conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM ignores WHERE account = ?", (key,))
    conn.executemany(
        "INSERT OR IGNORE INTO ignores (account, nick) VALUES (?, ?)",
        [(key, nick) for nick in nicks],
    )
