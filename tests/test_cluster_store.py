"""The cluster's store (``chat.cluster.store.RedisStore``) against a real ``redis-server``.

Two stores on one Redis stand for two nodes: what one commits, the other reads. History is
written the way the backend writes it, by its SAY script with the entry encoding of
``chat.cluster.messages``. Every test has its own key prefix. Nothing sleeps: concurrency
is made of tasks that await Redis, and each check follows the await it depends on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from chat.cluster.keys import SAY, Keys
from chat.cluster.messages import entry_fields, stream_frame
from chat.cluster.store import BEFORE_SLACK, RedisStore
from chat.protocol import Action, Message
from chat.storage import Account, Ban, Line, RoomState, Store
from tests.test_cluster import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed: the cluster tests need a real Redis",
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None
    server = RedisServer(REDIS_SERVER, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


class Node:
    """What one node has: its own client, and a store on it."""

    def __init__(self, url: str, keys: Keys) -> None:
        self.client = aioredis.Redis.from_url(url, decode_responses=True)
        self.store = RedisStore(self.client, keys)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"test-{uuid.uuid4().hex[:8]}:")


@pytest.fixture
async def nodes(redis_server: RedisServer, keys: Keys) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node(redis_server.url, keys), Node(redis_server.url, keys)
    yield a, b
    for node in (a, b):
        await node.store.close()
        await node.client.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of nobody's, to look at what is in Redis."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def test_is_a_store() -> None:
    store: Store = RedisStore(aioredis.Redis(decode_responses=True), Keys("x:"))  # mypy checks
    assert not store.dirty


# --- accounts ------------------------------------------------------------------------------


async def test_account_round_trip(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    ann = Account("Ann", "$argon2id$v=19$one", 1_700_000_000.125)
    assert await a.store.create_account(ann)
    assert await b.store.account("ANN") == ann  # any case; the name as first written
    assert not await b.store.create_account(Account("aNN", "other", 1.0))
    assert await a.store.account("ann") == ann
    assert await a.store.account("bob") is None

    b.store.set_password("aNn", "$argon2id$v=19$two")
    await b.store.commit()
    assert await a.store.account("ann") == Account("Ann", "$argon2id$v=19$two", ann.created)


async def test_set_password_of_no_account_creates_nothing(
    nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys
) -> None:
    a, _ = nodes
    a.store.set_password("ghost", "hash")
    await a.store.commit()
    assert await raw.exists(keys.account("ghost")) == 0
    assert await a.store.create_account(Account("ghost", "h", 2.0))


async def test_concurrent_create_account_exactly_one_wins(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    tries = [
        Account(name, f"hash-{i}", float(i))
        for i, name in enumerate(["Zed", "zed", "ZED", "zEd"] * 5)
    ]
    results = await asyncio.gather(
        *((a if i % 2 else b).store.create_account(acc) for i, acc in enumerate(tries))
    )
    assert results.count(True) == 1
    winner = tries[results.index(True)]
    assert await a.store.account("zed") == winner
    assert await b.store.account("zed") == winner


async def test_reads_see_queued_writes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert await a.store.create_account(Account("Ann", "h", 1.0))
    a.store.delete_account("ann")
    # Queued, not committed: the same store's reads commit it first.
    assert await a.store.create_account(Account("ANN", "new", 2.0))
    assert await b.store.account("ann") == Account("ANN", "new", 2.0)

    a.store.save_room(RoomState("#Den", topic="t"))
    assert await a.store.load_room("#den") == RoomState("#Den", topic="t")
    a.store.add_global_ban(Ban("address:10.0.0.1"))
    assert await a.store.global_bans() == [Ban("address:10.0.0.1")]
    a.store.set_ignores("ann", ["bob"])
    assert await a.store.ignores("ann") == ["bob"]
    a.store.save_room(RoomState("#Own", owner="ann"))
    assert [r.name for r in await a.store.claimed_rooms()] == ["#Own"]
    a.store.set_password("ann", "newer")
    found = await a.store.account("ann")
    assert found is not None
    assert found.password_hash == "newer"


# --- rooms ---------------------------------------------------------------------------------


ROOM = RoomState(
    name="#Lobby",
    topic="welcome, \u00e9t\u00e9 \U0001f600",
    modes="imt",
    owner="ann",
    roles=(("ann", "o"), ("bob", "v"), ("cy", "o")),
    bans=(
        Ban("nick:eve", "spam", "ann", 100.5),
        Ban("address:10.0.0.9", "", "bob", 200.0),
        Ban("account:mal", "troll", "ann", 300.25),
    ),
    mutes=(Ban("nick:loud", "caps", "cy", 50.0),),
)


async def test_room_round_trip_between_nodes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert await b.store.load_room("#lobby") is None
    a.store.save_room(ROOM)
    a.store.save_room(RoomState("#Quiet", topic="shh"))  # kept, not claimed
    await a.store.commit()
    assert await b.store.load_room("#LOBBY") == ROOM
    assert await b.store.load_room("#quiet") == RoomState("#Quiet", topic="shh")
    assert await b.store.claimed_rooms() == [ROOM]


async def test_save_room_replaces_everything(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a.store.save_room(ROOM)
    await a.store.commit()
    smaller = RoomState(
        name="#lobby",
        topic="",
        modes="t",
        owner="bob",
        roles=(("bob", "o"),),
        bans=(Ban("nick:eve", "spam again", "bob", 400.0), Ban("nick:new", "", "bob", 500.0)),
    )
    b.store.save_room(smaller)
    await b.store.commit()
    assert await a.store.load_room("#Lobby") == smaller
    b.store.save_room(RoomState("#lobby"))  # unclaimed now: out of claimed_rooms
    assert await a.store.claimed_rooms() == [smaller]  # queued on b, not committed yet
    await b.store.commit()
    assert await a.store.claimed_rooms() == []
    assert await a.store.load_room("#lobby") == RoomState("#lobby")


async def test_delete_room_keeps_history(
    nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys
) -> None:
    a, b = nodes
    a.store.save_room(ROOM)
    await a.store.commit()
    await say(raw, keys, Message(room="#lobby", nick="ann", text="still here"))
    b.store.delete_room("#LOBBY")
    assert await b.store.load_room("#lobby") is None
    assert await a.store.claimed_rooms() == []
    assert [line.text for line in await a.store.recent("#lobby", 10)] == ["still here"]
    left = [k async for k in raw.scan_iter(match=f"{keys.prefix}*")]
    assert left == [keys.log("#lobby")]


# --- accounts' reach into rooms ------------------------------------------------------------


async def test_delete_account(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert await a.store.create_account(Account("Ann", "h", 1.0))
    assert await a.store.create_account(Account("Bob", "h", 1.0))
    a.store.set_ignores("Ann", ["eve", "mal"])
    a.store.set_ignores("bob", ["eve"])
    owned = RoomState("#Ann", owner="ann", roles=(("ann", "o"), ("bob", "v")))
    elsewhere = RoomState("#Bob", owner="bob", roles=(("ann", "o"), ("bob", "o")))
    unclaimed = RoomState("#Free", topic="x", roles=(("ann", "v"),))
    for state in (owned, elsewhere, unclaimed):
        a.store.save_room(state)
    await a.store.commit()

    b.store.delete_account("ANN")
    assert b.store.dirty
    await b.store.commit()
    assert await a.store.account("ann") is None
    assert await a.store.ignores("ann") == []
    assert await a.store.ignores("bob") == ["eve"]
    assert await a.store.load_room("#ann") == RoomState("#Ann", roles=(("bob", "v"),))
    assert await a.store.load_room("#bob") == RoomState("#Bob", owner="bob", roles=(("bob", "o"),))
    assert await a.store.load_room("#free") == RoomState("#Free", topic="x")
    assert [r.name for r in await a.store.claimed_rooms()] == ["#Bob"]
    assert await a.store.account("bob") == Account("Bob", "h", 1.0)
    # The name is free again, and the new Ann inherits nothing.
    assert await b.store.create_account(Account("ann", "h2", 3.0))
    assert await a.store.ignores("ann") == []


# --- global bans and ignores ---------------------------------------------------------------


async def test_global_bans_and_ignores(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert await b.store.global_bans() == []
    a.store.add_global_ban(Ban("address:10.1.1.1", "flood", "root", 20.0))
    a.store.add_global_ban(Ban("account:mal", "abuse", "root", 10.0))
    a.store.add_global_ban(Ban("nick:x", "", "", 30.0))
    a.store.remove_global_ban("nick:x")
    a.store.add_global_ban(Ban("address:10.1.1.1", "flood, again", "op", 40.0))  # replaces
    a.store.set_ignores("Ann", ["zed", "bob"])
    a.store.set_ignores("bob", ["ann"])
    a.store.set_ignores("bob", [])
    await a.store.commit()
    assert await b.store.global_bans() == [
        Ban("account:mal", "abuse", "root", 10.0),
        Ban("address:10.1.1.1", "flood, again", "op", 40.0),
    ]
    assert await b.store.ignores("ANN") == ["bob", "zed"]
    assert await b.store.ignores("bob") == []


# --- durability ----------------------------------------------------------------------------


async def test_dirty_flips(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    store = a.store
    assert not store.dirty
    store.append(Message(room="#r", nick="ann", text="hi"))  # the backend keeps history
    assert not store.dirty
    store.add_global_ban(Ban("nick:x"))
    assert store.dirty
    commit = asyncio.create_task(store.commit())
    await asyncio.wait({commit}, timeout=0)  # let it start: it is in flight, not done
    assert not commit.done()
    assert store._flight is not None
    assert store.dirty
    await commit
    assert not store.dirty
    await store.commit()  # nothing queued: returns at once
    store.remove_global_ban("nick:x")
    assert store.dirty
    assert await store.global_bans() == []  # a read commits
    assert not store.dirty


async def test_concurrent_commits_each_wait_for_their_writes(
    nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys
) -> None:
    """Writers queue while others' transactions are in flight: each commit returns once
    its own writes, and everything queued before them, are in Redis."""
    a, _ = nodes
    flights = 0
    send = a.store._send

    async def counted() -> None:
        nonlocal flights
        flights += 1
        await send()

    a.store._send = counted  # type: ignore[method-assign]
    queued: list[str] = []

    async def writer(w: int) -> None:
        for n in range(5):
            mask = f"nick:w{w}n{n}"
            a.store.add_global_ban(Ban(mask, ts=float(len(queued))))
            queued.append(mask)
            before_me = list(queued)
            await a.store.commit()
            assert set(before_me) <= set(await raw.hkeys(keys.global_bans))

    await asyncio.gather(*(writer(w) for w in range(10)))
    assert not a.store.dirty
    assert len(await a.store.global_bans()) == 50
    assert 1 < flights < 50  # transactions were shared, and writes queued during them


async def test_a_third_commit_waits_for_a_report_while_two_are_under_way(
    nodes: tuple[Node, Node],
) -> None:
    """commit_waiting, as the outbox reads it: the second commit sends everything queued by
    the time the first is over, so a third could only wait behind it."""
    a, _ = nodes
    store = a.store
    both = asyncio.get_running_loop().create_future()
    reports: list[BaseException | None] = []

    def done(error: BaseException | None) -> None:
        reports.append(error)
        if len(reports) == 2:
            both.set_result(None)

    store.add_global_ban(Ban("nick:one"))
    store.commit_then(done)
    assert not store.commit_waiting
    store.add_global_ban(Ban("nick:two"))
    store.commit_then(done)
    assert store.commit_waiting
    await both
    assert (reports, store.commit_waiting, store.dirty) == ([None, None], False, False)


async def test_close_commits_and_refuses_later_writes(
    nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys
) -> None:
    a, _ = nodes
    a.store.set_ignores("ann", ["bob"])
    await a.store.close()
    await a.store.close()  # idempotent
    assert await raw.smembers(keys.ignores("ann")) == {"bob"}
    assert await a.client.ping()  # the client is the caller's, still open
    with pytest.raises(RuntimeError):
        a.store.set_ignores("ann", [])


async def test_failed_commit_keeps_writes_queued(nodes: tuple[Node, Node]) -> None:
    """A commit that cannot reach Redis raises, and its writes wait for the next one."""
    a, b = nodes
    broken = aioredis.Redis(
        host="127.0.0.1", port=1, decode_responses=True, retry=Retry(NoBackoff(), 0)
    )
    store = RedisStore(broken, a.store._keys)
    store.set_ignores("ann", ["bob"])
    with pytest.raises(RedisConnectionError):
        await store.commit()
    assert store.dirty
    store._redis = a.client  # the link is back
    await store.commit()
    assert not store.dirty
    assert await b.store.ignores("ann") == ["bob"]
    await broken.aclose()


# --- history -------------------------------------------------------------------------------


async def say(client: aioredis.Redis, keys: Keys, event: Message | Action) -> str:
    """Append ``event`` to its room's stream as the backend does: its SAY script, its
    encoding. Returns the stream id."""
    assert event.room is not None
    before, after = stream_frame("node-1", event)
    fields = entry_fields("node-1", event)
    script = client.register_script(SAY)
    entry_id = await script(
        keys=[keys.log(event.room), keys.events],
        args=[1000, before, after, *(part for pair in fields.items() for part in pair)],
    )
    return str(entry_id)


async def test_recent(nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys) -> None:
    a, b = nodes
    assert await a.store.recent("#r", 5) == []
    said: list[Line] = []
    for i in range(8):
        kind = Action if i % 3 == 0 else Message
        said.append(kind(room="#R", nick="ann", text=f"line {i}", ts=1000.0 + i))
        await say(raw, keys, said[-1])
    await raw.xadd(keys.log("#r"), {"n": "node-2", "e": "not json"})  # skipped, not fatal
    await say(raw, keys, Message(room="#other", nick="bob", text="elsewhere"))
    assert await b.store.recent("#r", 3) == said[-2:]
    assert await b.store.recent("#r", 4) == said[-3:]
    assert await a.store.recent("#R", 100) == said
    assert await a.store.recent("#r", 0) == []


async def test_before(nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys) -> None:
    a, _ = nodes
    base = time.time() - 10  # lines said a moment ago, as stream ids are Redis's clock now
    said = [Message(room="#r", nick="ann", text=f"{i}", ts=base + i) for i in range(10)]
    for line in said:
        await say(raw, keys, line)
    assert await a.store.before("#r", base + 5, 3) == said[2:5]
    assert await a.store.before("#r", base + 5, 100) == said[:5]
    assert await a.store.before("#r", base + 5.5, 2) == said[4:6]
    assert await a.store.before("#r", base, 5) == []
    assert await a.store.before("#r", base + 100, 1) == said[-1:]
    assert await a.store.before("#r", float("inf"), 2) == said[-2:]
    assert await a.store.before("#r", base + 5, 0) == []
    assert await a.store.before("#nowhere", base + 5, 5) == []

    # Paging back with the ts of the oldest line seen reads everything once.
    pages: list[Line] = []
    ts = base + 100
    while page := await a.store.before("#r", ts, 3):
        pages = page + pages
        ts = page[0].ts
    assert pages == said


async def test_before_filters_by_the_lines_own_time(
    nodes: tuple[Node, Node], raw: aioredis.Redis, keys: Keys
) -> None:
    """A node whose clock is behind or ahead of Redis's: its lines are placed by their
    ``ts``, not by where they are in the stream; ones older than BEFORE_SLACK are found even
    though the stream has many newer entries (read in pages)."""
    a, _ = nodes
    now = time.time()
    late = Message(room="#r", nick="slow", text="late", ts=now - 30)  # clock 30 s behind
    early = Message(room="#r", nick="fast", text="early", ts=now + 30)  # 30 s ahead
    await say(raw, keys, Message(room="#r", nick="ann", text="old", ts=now - 3 * BEFORE_SLACK))
    for i in range(250):
        await say(raw, keys, Message(room="#r", nick="ann", text=f"n{i}", ts=now + i / 1000))
    await say(raw, keys, late)
    await say(raw, keys, early)
    assert [line.text for line in await a.store.before("#r", now - 1, 5)] == ["old", "late"]
    found = await a.store.before("#r", now + 1, 300)
    assert len(found) == 252
    assert "early" not in [line.text for line in found]
    assert [line.text for line in await a.store.before("#r", now + 31, 2)] == ["late", "early"]
