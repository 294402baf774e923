"""SqliteStore: every record survives a reopen, reads see queued writes, history is pruned,
the schema is versioned, and a commit survives the process being killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from chat.protocol import Action, Message
from chat.sqlite_store import SCHEMA_VERSION, SchemaVersionError, SqliteStore, open_store
from chat.storage import Account, Ban, RoomState

ROOT = Path(__file__).resolve().parent.parent

ROOM = RoomState(
    name="#Den",
    topic="a topic",
    modes="it",
    owner="alice",
    roles=(("bob", "o"), ("carol", "v")),
    bans=(Ban("nick:eve", "spam", "alice", 1.5), Ban("address:10.0.0.1", "", "bob", 2.0)),
    mutes=(Ban("account:mallory", "noise", "alice", 3.0),),
)


def said(n: int, room: str = "#Den") -> list[Message | Action]:
    return [
        (Action if i % 2 else Message)(
            id=f"id-{i}", ts=100.0 + i, room=room, nick="bob", text=str(i)
        )
        for i in range(n)
    ]


async def test_every_record_survives_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "deep" / "dir" / "chat.db")  # parents are made
    lines = said(3)
    async with await open_store(path) as store:
        assert await store.create_account(Account("Alice", "hash-1", 10.0))
        assert await store.create_account(Account("Bob", "hash-2", 11.0))
        store.set_password("ALICE", "hash-3")
        store.save_room(ROOM)
        store.save_room(RoomState(name="#plain"))
        store.add_global_ban(Ban("address:1.2.3.4", "flood", "oper", 5.0))
        store.add_global_ban(Ban("nick:troll", "", "oper", 6.0))
        store.remove_global_ban("nick:troll")
        store.set_ignores("Alice", ["eve", "mallory"])
        for line in lines:
            store.append(line)
    async with SqliteStore(path) as store:
        assert await store.account("alice") == Account("Alice", "hash-3", 10.0)
        assert await store.account("BOB") == Account("Bob", "hash-2", 11.0)
        assert await store.account("nobody") is None
        assert await store.load_room("#DEN") == ROOM
        assert await store.load_room("#plain") == RoomState(name="#plain")
        assert await store.load_room("#none") is None
        assert await store.claimed_rooms() == [ROOM]
        assert await store.global_bans() == [Ban("address:1.2.3.4", "flood", "oper", 5.0)]
        assert await store.ignores("ALICE") == ["eve", "mallory"]
        assert await store.recent("#den", 10) == lines


async def test_reads_see_queued_writes_and_dirty_flips() -> None:
    async with await open_store(":memory:") as store:
        assert not store.dirty
        store.save_room(ROOM)
        store.set_ignores("alice", ["eve"])
        assert store.dirty
        assert await store.load_room("#den") == ROOM  # the read committed them on its way
        assert not store.dirty
        store.set_ignores("alice", [])
        assert store.dirty
        seen: list[bool] = []

        async def meanwhile() -> None:
            # Tasks start in order: the commit has handed its writes to the worker, and
            # cannot have been told it finished, since that goes through this loop.
            seen.append(store.dirty)
            store.delete_room("#den")

        commit = asyncio.ensure_future(store.commit())
        await asyncio.gather(commit, meanwhile())
        assert seen == [True]
        assert store.dirty  # the delete came after that commit
        await store.commit()
        assert not store.dirty
        assert await store.ignores("alice") == []
        assert await store.load_room("#den") is None


async def test_commit_then_reports_on_the_loop_once_the_lines_are_in_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.db"
    lines = said(3)
    async with SqliteStore(str(path)) as store:
        for line in lines:
            store.append(line)
        loop = asyncio.get_running_loop()
        reported: asyncio.Future[tuple[BaseException | None, bool]] = loop.create_future()

        def done(error: BaseException | None) -> None:
            reported.set_result((error, threading.current_thread() is threading.main_thread()))

        store.commit_then(done)
        assert store.dirty  # until the loop hears of it
        assert await reported == (None, True)
        assert not store.dirty
        with closing(sqlite3.connect(path)) as other:  # another connection: it is in the file
            (count,) = other.execute("SELECT sum(count) FROM history_chunks").fetchone()
        assert count == len(lines)


async def test_a_commit_waits_to_begin_while_the_worker_is_busy(tmp_path: Path) -> None:
    """commit_waiting: the outbox asks it before starting another commit (hub.Outbox)."""
    path = tmp_path / "chat.db"
    async with await open_store(str(path)) as store:
        assert not store.commit_waiting
        loop = asyncio.get_running_loop()
        reports: list[BaseException | None] = []
        both: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            reports.append(error)
            if len(reports) == 2:
                both.set_result(None)

        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # the worker's first commit waits for the lock
            store.append(said(1)[0])
            store.commit_then(done)
            store.append(said(2)[1])
            store.commit_then(done)
            assert store.commit_waiting  # the second cannot have begun
            other.execute("COMMIT")
        await both
        assert reports == [None, None]
        assert not store.commit_waiting
        with closing(sqlite3.connect(path)) as reader:
            assert reader.execute("SELECT sum(count) FROM history_chunks").fetchone() == (2,)


async def test_concurrent_commits_each_wait_for_earlier_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.db")
    async with await open_store(path) as store:
        store.append(said(1)[0])
        first = asyncio.ensure_future(store.commit())
        second = asyncio.ensure_future(store.commit())  # nothing new queued: waits for first
        await second
        assert not store.dirty
        with sqlite3.connect(path) as other:  # durable: another connection sees it
            assert other.execute("SELECT sum(count) FROM history_chunks").fetchone() == (1,)
        await first


@pytest.mark.parametrize("racers", [2, 10])
async def test_one_of_concurrent_creations_wins(tmp_path: Path, racers: int) -> None:
    path = str(tmp_path / "chat.db")
    async with await open_store(path) as one, await open_store(path) as two:
        names = ["Name", "NAME", "name"]
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).create_account(Account(names[i % 3], str(i), 1.0))
                for i in range(racers)
            )
        )
        assert results.count(True) == 1
        winner = await one.account("name")
        assert winner is not None


async def test_history_order_and_before() -> None:
    lines = said(10)
    async with await open_store(":memory:") as store:
        for line in lines:
            store.append(line)
        store.append(Message(id="other", ts=104.5, room="#elsewhere", nick="x", text="y"))
        assert await store.recent("#DEN", 3) == lines[-3:]
        assert await store.recent("#den", 100) == lines
        assert await store.recent("#den", 0) == []
        assert await store.before("#den", 105.0, 2) == lines[3:5]  # strictly before
        assert await store.before("#den", 100.0, 5) == []
        assert await store.before("#den", 1e9, 0) == []
        assert all(not line.history for line in await store.recent("#den", 10))
        assert await store.recent("#elsewhere", 5) == [
            Message(id="other", ts=104.5, room="#elsewhere", nick="x", text="y")
        ]


async def test_a_line_without_a_room_is_refused() -> None:
    async with await open_store(":memory:") as store:
        with pytest.raises(ValueError, match="room"):
            store.append(Message(nick="x", text="no room"))
        assert not store.dirty


async def test_history_is_pruned_to_keep(tmp_path: Path) -> None:
    """Whole chunks (one per room per commit) go, oldest first, while keep lines remain."""
    path = str(tmp_path / "chat.db")
    lines = said(40)
    async with await open_store(path, keep=10) as store:
        for line in lines[:11]:  # within keep + keep // 10: left alone
            store.append(line)
            await store.commit()
        assert await store.recent("#den", 100) == lines[:11]
        store.append(lines[11])  # past it: the oldest chunks go, down to keep
        assert await store.recent("#den", 100) == lines[2:12]
        for line in lines[12:]:  # one commit's chunk is never split: all of it stays
            store.append(line)
        await store.commit()
        assert await store.recent("#den", 100) == lines[12:]
        store.append(Message(id="x", ts=1.0, room="#other", nick="n", text="t"))
    async with await open_store(path, keep=10) as store:  # counts are rebuilt on reopen
        for line in said(11, room="#DEN"):
            store.append(line)
            await store.commit()
        assert len(await store.recent("#den", 100)) == 11  # 28 + 11 counted: pruned to 11
        store.append(said(1)[0])
        assert len(await store.recent("#den", 100)) == 10
        assert len(await store.recent("#other", 100)) == 1


async def test_delete_account_forgets_it_everywhere() -> None:
    async with await open_store(":memory:") as store:
        assert await store.create_account(Account("Alice", "h", 1.0))
        store.save_room(ROOM)  # owned by alice
        store.save_room(RoomState(name="#ops", owner="bob", roles=(("alice", "o"), ("eve", "v"))))
        store.set_ignores("alice", ["eve"])
        store.set_ignores("bob", ["eve"])
        store.delete_account("ALICE")
        assert await store.account("alice") is None
        assert await store.ignores("alice") == []
        assert await store.ignores("bob") == ["eve"]
        assert await store.load_room("#den") == RoomState(
            name="#Den", topic=ROOM.topic, modes=ROOM.modes, owner=None, roles=ROOM.roles,
            bans=ROOM.bans, mutes=ROOM.mutes,
        )  # fmt: skip
        ops = await store.load_room("#ops")
        assert ops is not None
        assert ops.roles == (("eve", "v"),)
        assert [room.name for room in await store.claimed_rooms()] == ["#ops"]
        assert await store.create_account(Account("alice", "new", 2.0))  # the name is free


async def test_an_empty_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    sqlite3.connect(path).close()
    async with await open_store(str(path)) as store:
        assert await store.create_account(Account("a", "h", 1.0))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    async with await open_store(str(path)) as store:  # already current: left as is
        assert await store.account("A") == Account("a", "h", 1.0)


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match="newer server"):
        await open_store(str(path))
    with sqlite3.connect(path) as conn:  # untouched
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)


async def test_memory_keeps_nothing_across_stores() -> None:
    async with await open_store(":memory:") as store:
        assert await store.create_account(Account("a", "h", 1.0))
    async with await open_store(":memory:") as store:
        assert await store.account("a") is None


async def test_a_failed_commit_keeps_its_writes_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction that fails (a full disk, say) is rolled back; its lines and writes stay
    queued, the store stays dirty, and the next commit writes them once, in order."""
    import chat.sqlite_store  # noqa: PLC0415 - the room write to fail once

    real = chat.sqlite_store._save_room
    failures = [sqlite3.OperationalError("database or disk is full")]

    def save_room(state: RoomState, conn: sqlite3.Connection) -> None:
        if failures:
            raise failures.pop()
        real(state, conn)

    monkeypatch.setattr(chat.sqlite_store, "_save_room", save_room)
    async with await open_store(":memory:") as store:
        store.append(said(1)[0])
        store.save_room(ROOM)
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await store.commit()
        assert store.dirty
        assert await store.recent("#den", 10) == said(1)  # retried first, by this read
        assert not store.dirty
        assert await store.load_room("#den") == ROOM


async def test_close_commits_and_is_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.db")
    store = await open_store(path)
    store.add_global_ban(Ban("nick:x"))
    await asyncio.gather(store.close(), store.close())
    await store.close()
    with pytest.raises(RuntimeError):
        await store.global_bans()
    async with await open_store(path) as again:
        assert await again.global_bans() == [Ban("nick:x")]


async def test_all_sqlite_runs_on_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    connect = sqlite3.connect

    def spy(*args: object, **kwargs: object) -> sqlite3.Connection:
        threads.add(threading.current_thread().name)
        return connect(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(sqlite3, "connect", spy)
    async with await open_store(":memory:") as store:
        assert await store.account("x") is None
    assert len(threads) == 1
    assert threads.pop().startswith("chat-store")


CRASHER = """
import asyncio, sys
from chat.protocol import Message
from chat.sqlite_store import open_store

async def main():
    store = await open_store(sys.argv[1])
    store.append(Message(id="survivor", ts=1.0, room="#den", nick="n", text="still here"))
    await store.commit()
    print("ok", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_commit_survives_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.db")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHER,
        path,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ok\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    async with await open_store(path) as store:
        assert await store.recent("#den", 5) == [
            Message(id="survivor", ts=1.0, room="#den", nick="n", text="still here")
        ]


async def test_a_version_1_database_is_migrated_with_its_history(tmp_path: Path) -> None:
    """Version 1 kept a row per line; version 2 keeps chunks: the lines come through."""
    from chat.sqlite_store import _MIGRATIONS  # noqa: PLC0415 - the schema as it was

    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as old:
        for statement in _MIGRATIONS[0]:
            old.execute(statement)
        old.execute(
            "INSERT INTO history (room, name, id, ts, kind, nick, text)"
            " VALUES ('#den', '#Den', 'a-1', 100.5, 'message', 'bob', 'hello'),"
            " ('#den', '#Den', 'a-2', 101.25, 'action', 'bob', 'waves')"
        )
        old.execute("PRAGMA user_version = 1")
    old.close()
    async with await open_store(path) as store:
        assert await store.recent("#den", 10) == [
            Message(id="a-1", ts=100.5, room="#Den", nick="bob", text="hello"),
            Action(id="a-2", ts=101.25, room="#Den", nick="bob", text="waves"),
        ]
        assert await store.before("#den", 101.0, 10) == [
            Message(id="a-1", ts=100.5, room="#Den", nick="bob", text="hello")
        ]
        # Chunks written now keep their times apart (version 3); both kinds read as one.
        store.append(Message(id="a-3", ts=102.0, room="#Den", nick="carol", text="hi"))
        await store.commit()
        assert [line.id for line in await store.recent("#den", 10)] == ["a-1", "a-2", "a-3"]


async def test_a_line_holding_the_separators_is_kept_with_them_replaced() -> None:
    """The store packs a chunk's lines with control characters the protocol layer never
    lets through; should one arrive anyway, it must not split a line or shift its fields."""
    lines = [
        Message(id="s-1", ts=1.0, room="#Den", nick="bob", text="before"),
        Message(id="s-2", ts=2.0, room="#Den", nick="bob", text="a\x1fb\x1ec"),
        Action(id="s-3", ts=3.0, room="#Den", nick="bob", text="after"),
    ]
    async with await open_store(":memory:") as store:
        for line in lines:
            store.append(line)
        await store.commit()
        assert await store.recent("#den", 10) == [
            lines[0],
            Message(id="s-2", ts=2.0, room="#Den", nick="bob", text="a\ufffdb\ufffdc"),
            lines[2],
        ]
