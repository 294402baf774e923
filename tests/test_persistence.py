"""Persistence across restarts: real ``chat-server`` processes on one ``--db`` file.

Every test starts ``chat-server`` as a subprocess (``spawn_server``: port 0, its port read
from its log), talks to it over real sockets, stops it (SIGTERM, or SIGKILL after the
clients have received their own lines back) and starts another on the same database.
Nothing waits by sleeping: every wait is for a line, the "listening on" log line or the
process's exit.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    CHAT_SERVER,
    PROMPT,
    WAIT,
    JsonClient,
    LineClient,
    ServerProcess,
    SpawnServer,
)

PASSWORD = "correct-horse-1"
HISTORY_MARK = r"\(history \d{4}-\d\d-\d\d \d\d:\d\d UTC\) "


# --- helpers --------------------------------------------------------------------------------


async def stop(server: ServerProcess, signum: signal.Signals = signal.SIGTERM) -> int:
    """Send ``signum`` to the server and wait for it to exit; its exit code."""
    server.proc.send_signal(signum)
    return await server.wait(WAIT * 2)


async def json_user(port: int, nick: str, password: str | None = None) -> JsonClient:
    """A JSON client registered as ``nick`` (logged in with ``password``), read up to the
    lobby's member list."""
    client = await JsonClient.connect(port)
    hello: dict[str, Any] = {"type": "nick", "nick": nick}
    if password is not None:
        hello = {"type": "login", "nick": nick, "password": password}
    await client.send(hello)
    await client.expect("welcome")
    await client.expect("who", room="#lobby")
    return client


async def answer(client: JsonClient, command: dict[str, Any], type_: str) -> dict[str, Any]:
    """Send ``command`` with a request id; the JSON object of the first answer of ``type_``
    (an error answering it fails the test)."""
    request = f"r{len(client.objects)}"
    await client.send({**command, "id": request})
    while True:
        event = await client.event()
        obj = client.objects[-1]
        if obj.get("re") != request:
            continue
        assert obj["type"] != "error" or type_ == "error", obj
        if event.type == type_:
            return obj


async def say_acknowledged(client: JsonClient, room: str, text: str) -> dict[str, Any]:
    """Say ``text`` in ``room`` and wait until the client receives it back."""
    await client.send({"type": "say", "room": room, "text": text})
    while True:
        await client.event()
        obj = client.objects[-1]
        assert obj["type"] != "error", obj
        if obj["type"] == "message" and obj["room"] == room and obj["text"] == text:
            assert obj["history"] is False
            return obj


async def join(client: JsonClient, room: str) -> list[dict[str, Any]]:
    """Join ``room``; every object received up to the join's member list."""
    start = len(client.objects)
    await answer(client, {"type": "join", "room": room}, "join")
    await client.expect("who", room=room)
    return client.objects[start:]


async def replay_after_join(client: JsonClient, room: str, count: int) -> list[dict[str, Any]]:
    """Join ``room`` and read the ``count`` history lines replayed after its member list."""
    return await replayed_after(client, await join(client, room), room, count)


async def replayed_after(
    client: JsonClient, joined: list[dict[str, Any]], room: str, count: int
) -> list[dict[str, Any]]:
    """The ``count`` history lines replayed after a join whose objects so far are ``joined``;
    each must be marked as history."""
    replayed = [obj for obj in joined if obj["type"] in ("message", "action")]
    while len(replayed) < count:
        await client.event()
        obj = client.objects[-1]
        if obj["type"] in ("message", "action"):
            replayed.append(obj)
    for obj in replayed:
        assert obj["room"] == room
        assert obj["history"] is True, obj
    return replayed


async def history(client: JsonClient, room: str, count: int) -> list[dict[str, Any]]:
    """``/history room count``: the lines it sends, up to the notice that ends them."""
    request = f"h{len(client.objects)}"
    await client.send({"type": "history", "room": room, "count": count, "id": request})
    lines: list[dict[str, Any]] = []
    while True:
        await client.event()
        obj = client.objects[-1]
        if obj.get("re") != request:
            continue
        assert obj["type"] != "error", obj
        if obj["type"] == "notice":
            return lines
        lines.append(obj)


def files_in(path: Path) -> list[Path]:
    return list(path.iterdir())


def said(objs: list[dict[str, Any]]) -> list[tuple[str, str, str, float]]:
    """What identifies a line across a restart: its id, speaker, text and time."""
    return [(obj["id"], obj["nick"], obj["text"], obj["ts"]) for obj in objs]


# --- 1. SIGTERM restart keeps everything ------------------------------------------------------


async def test_sigterm_restart_keeps_history_topic_accounts_claims_and_ignores(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await spawn_server("--db", db, "--rate", "0")
    alice = await json_user(server.port, "alice")
    await answer(alice, {"type": "register", "password": PASSWORD}, "account")
    await join(alice, "#dev")
    lines = [await say_acknowledged(alice, "#dev", f"line {n}: hello") for n in range(1, 6)]
    topic = await answer(
        alice, {"type": "topic", "room": "#dev", "text": "kept across restarts"}, "topic"
    )
    assert topic["nick"] == "alice"
    await answer(alice, {"type": "claim", "room": "#dev"}, "mode")
    await answer(alice, {"type": "mode", "room": "#dev", "change": "+m"}, "mode")
    ban = await answer(
        alice, {"type": "ban", "room": "#dev", "mask": "mallory", "reason": "spam"}, "mode"
    )
    assert ban["change"] == "+b"
    mute = await answer(alice, {"type": "mute", "room": "#dev", "nick": "bob"}, "mode")
    assert mute["change"] == "+q"
    ignores = await answer(alice, {"type": "ignore", "nick": "bob"}, "ignores")
    assert ignores["nicks"] == ["bob"]
    modes = await answer(alice, {"type": "mode", "room": "#dev"}, "modes")
    assert set(modes["modes"]) >= {"m", "t"}
    bans_before = await answer(alice, {"type": "bans", "room": "#dev"}, "bans")
    await alice.close()
    assert await stop(server) == 0

    server = await spawn_server("--db", db, "--rate", "0")
    port = server.port

    # The claimed room is listed while empty, with its topic.
    carol = await json_user(port, "carol")
    rooms = await answer(carol, {"type": "rooms"}, "rooms")
    listed = {info["room"]: info for info in rooms["rooms"]}
    assert "#dev" in listed, rooms
    assert listed["#dev"]["members"] == 0
    assert listed["#dev"]["topic"] == "kept across restarts"

    # The nickname is refused without the password: a text client is asked for it.
    text = await LineClient.connect(port)
    await text.expect(re.escape(PROMPT))
    await text.send("alice")
    # The prompt is wrapped at 80 columns (protocol.md, "Wrapping").
    await text.next_is(
        "*** alice is registered: type its password (or just Enter to choose another nickname)."
    )
    await text.send("")
    await text.expect(re.escape(PROMPT))
    await text.send("alice")
    await text.expect(r"alice is registered: type its password")
    await text.send("not-the-password")
    await text.expect(r"!!! Wrong password for alice\.")
    await text.close()
    refused = await JsonClient.connect(port)
    await refused.send({"type": "nick", "nick": "alice"})
    error = await refused.expect("error")
    assert refused.objects[-1]["code"] == "nick_registered", error
    await refused.close()

    # With the password, alice logs in; her ignore list is back.
    alice = await json_user(port, "alice", PASSWORD)
    assert alice.objects[-1]["type"] == "who"
    welcome = next(obj for obj in alice.objects if obj["type"] == "welcome")
    assert welcome["account"] == "alice"
    ignores = await answer(alice, {"type": "ignores"}, "ignores")
    assert ignores["nicks"] == ["bob"]

    # Joining replays the same lines, marked as history, in order; the topic is back and
    # the owner operates the room.
    joined = await join(alice, "#dev")
    topics = [obj for obj in joined if obj["type"] == "topic"]
    assert [obj["text"] for obj in topics] == ["kept across restarts"]
    who = joined[-1]
    assert who["members"] == ["alice"]
    assert who["operators"] == ["alice"]
    replayed = await replayed_after(alice, joined, "#dev", len(lines))
    assert said(replayed) == said(lines)

    # +m, the ban and the mute hold.
    modes = await answer(alice, {"type": "mode", "room": "#dev"}, "modes")
    assert set(modes["modes"]) >= {"m", "t"}
    assert modes["owner"] == "alice"
    bans = await answer(alice, {"type": "bans", "room": "#dev"}, "bans")
    assert sorted((b["mask"], b["kind"]) for b in bans["bans"]) == sorted(
        (b["mask"], b["kind"]) for b in bans_before["bans"]
    )
    assert {b["kind"] for b in bans["bans"]} == {"ban", "mute"}

    mallory = await json_user(port, "mallory")
    error = await answer(mallory, {"type": "join", "room": "#dev"}, "error")
    assert error["code"] == "banned", error
    bob = await json_user(port, "bob")
    await join(bob, "#dev")
    await bob.send({"type": "say", "room": "#dev", "text": "can anyone hear me?"})
    error_event = await bob.expect("error")
    assert bob.objects[-1]["code"] == "muted", error_event
    await join(carol, "#dev")
    await carol.send({"type": "say", "room": "#dev", "text": "or me?"})
    error_event = await carol.expect("error")
    assert carol.objects[-1]["code"] == "moderated", error_event
    # The owner still speaks, and nobody's refused line reached the room.
    mine = await say_acknowledged(alice, "#dev", "the owner speaks")
    assert mine["nick"] == "alice"
    seen = [obj["text"] for obj in alice.objects if obj["type"] == "message"]
    assert "can anyone hear me?" not in seen
    assert "or me?" not in seen
    for client in (alice, bob, carol, mallory):
        await client.close()
    assert await stop(server) == 0


async def test_text_client_sees_replay_marked_as_history(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await spawn_server("--db", db)
    alice = await LineClient.connect(server.port, "alice")
    await alice.send("/join #dev")
    await alice.expect(r"^\[#dev\] \*\*\* 1 in #dev")
    for text in ("first", "second", "third"):
        await alice.send(text)
        await alice.expect(rf"^\[#dev\] <alice> {text}$")
    await alice.close()
    assert await stop(server) == 0

    server = await spawn_server("--db", db)
    bob = await LineClient.connect(server.port, "bob")
    await bob.send("/join #dev")
    shown = await bob.lines_until(rf"^\[#dev\] {HISTORY_MARK}<alice> third$")
    replayed = [line for line in shown if "<alice>" in line]
    assert len(replayed) == 3
    for line, text in zip(replayed, ("first", "second", "third"), strict=True):
        assert re.fullmatch(rf"\[#dev\] {HISTORY_MARK}<alice> {text}", line), line
    await bob.close()


# --- 2. SIGKILL after acknowledgement ---------------------------------------------------------


async def test_acknowledged_line_survives_sigkill(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    server = await spawn_server("--db", db)
    alice = await json_user(server.port, "alice")
    await join(alice, "#dev")
    line = await say_acknowledged(alice, "#dev", "written before the crash")
    assert await stop(server, signal.SIGKILL) == -signal.SIGKILL
    await alice.close()

    server = await spawn_server("--db", db)
    bob = await json_user(server.port, "bob")
    replayed = await replay_after_join(bob, "#dev", 1)
    assert said(replayed) == said([line])
    await bob.close()


async def test_acknowledged_burst_survives_sigkill(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    args = ("--db", db, "--rate", "0", "--history", "20")
    server = await spawn_server(*args)
    alice = await json_user(server.port, "alice")
    await join(alice, "#burst")
    lines = [await say_acknowledged(alice, "#burst", f"burst {n:02}") for n in range(50)]
    server.proc.send_signal(signal.SIGKILL)  # right after the last echo
    assert await server.wait(WAIT * 2) == -signal.SIGKILL
    await alice.close()

    server = await spawn_server(*args)
    bob = await json_user(server.port, "bob")
    replayed = await replay_after_join(bob, "#burst", 20)
    assert said(replayed) == said(lines[30:])
    older = await history(bob, "#burst", 30)
    for obj in older:
        assert obj["history"] is True, obj
    assert said(older) == said(lines[:30])
    await bob.close()


# --- 3. --db :memory: keeps nothing ---------------------------------------------------------


async def test_memory_db_keeps_nothing(spawn_server: SpawnServer, tmp_path: Path) -> None:
    server = await spawn_server("--db", ":memory:")
    alice = await json_user(server.port, "alice")
    account = await answer(alice, {"type": "register", "password": PASSWORD}, "account")
    assert account["account"] == "alice"
    await join(alice, "#dev")
    await answer(alice, {"type": "topic", "room": "#dev", "text": "forgotten"}, "topic")
    await say_acknowledged(alice, "#dev", "gone after the restart")
    await alice.close()
    assert await stop(server) == 0
    assert files_in(tmp_path) == []

    server = await spawn_server("--db", ":memory:")
    guest = await JsonClient.connect(server.port)
    await guest.send({"type": "nick", "nick": "alice"})
    welcome = await guest.expect("welcome")
    assert welcome.nick == "alice"
    assert guest.objects[-1]["account"] is None
    joined = await join(guest, "#dev")
    assert [obj["type"] for obj in joined if obj["type"] in ("topic", "message")] == []
    assert await history(guest, "#dev", 50) == []
    await guest.close()


# --- 4. /history reaches past the replay after a restart ----------------------------------------


async def test_history_after_restart_reaches_older_lines(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    args = ("--db", db, "--history", "5", "--rate", "0")
    server = await spawn_server(*args)
    alice = await json_user(server.port, "alice")
    await join(alice, "#dev")
    lines = [await say_acknowledged(alice, "#dev", f"old line {n:02}") for n in range(1, 21)]
    await alice.close()
    assert await stop(server) == 0

    server = await spawn_server(*args)
    bob = await json_user(server.port, "bob")
    replayed = await replay_after_join(bob, "#dev", 5)
    assert said(replayed) == said(lines[15:])
    older = await history(bob, "#dev", 10)
    for obj in older:
        assert obj["history"] is True, obj
        assert obj["room"] == "#dev"
    assert said(older) == said(lines[5:15])
    assert [obj["text"] for obj in older] == [f"old line {n:02}" for n in range(6, 16)]
    # And the text dialect shows them marked as history, oldest first.
    carol = await LineClient.connect(server.port, "carol")
    await carol.send("/join #dev")
    await carol.expect(rf"^\[#dev\] {HISTORY_MARK}<alice> old line 20$")
    await carol.send("/history #dev 10")
    shown = await carol.lines_until(rf"^\[#dev\] {HISTORY_MARK}<alice> old line 15$")
    rows = [line for line in shown if "<alice>" in line]
    assert len(rows) == 10
    for row, n in zip(rows, range(6, 16), strict=True):
        assert re.fullmatch(rf"\[#dev\] {HISTORY_MARK}<alice> old line {n:02}", row), row
    await carol.close()
    await bob.close()


# --- 5. a newer schema is refused ---------------------------------------------------------------


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    done = subprocess.run(
        [*CHAT_SERVER, "--host", "127.0.0.1", "--port", "0", "--db", str(db)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "listening on" not in done.stderr
    assert "schema version 999" in done.stderr, done.stderr
    assert "newer server" in done.stderr, done.stderr
    # A clear error, not a crash: one message, no traceback.
    assert "Traceback" not in done.stderr, done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999
    conn.close()


# --- 6. the default path ------------------------------------------------------------------------


def state_env(state: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "200"}


def test_help_shows_default_db_under_xdg_state_home(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run(
        [*CHAT_SERVER, "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=state_env(state),
    )
    # argparse wraps the help, also after the hyphens in a path: compare without whitespace.
    flat = "".join(done.stdout.split())
    assert "--dbPATH" in flat
    assert f"(default:{state / 'chat' / 'chat.db'})" in flat, done.stdout
    assert not state.exists()  # --help creates nothing


async def test_default_db_is_created_under_xdg_state_home(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    server = await spawn_server(env=state_env(state))
    db = state / "chat" / "chat.db"
    assert db.is_file()
    alice = await json_user(server.port, "alice")
    await join(alice, "#dev")
    line = await say_acknowledged(alice, "#dev", "kept in the default file")
    await alice.close()
    assert await stop(server) == 0

    server = await spawn_server(env=state_env(state))
    bob = await json_user(server.port, "bob")
    assert said(await replay_after_join(bob, "#dev", 1)) == said([line])
    await bob.close()


@pytest.fixture(autouse=True)
def _no_stray_default_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A test that forgets ``--db`` writes under its own tmp dir, never the user's state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "default-state"))


def test_an_admin_no_account_can_have_is_refused_at_start() -> None:
    """``--admin root`` names a reserved nickname: nobody could ever log in as it."""
    result = subprocess.run(
        [*CHAT_SERVER, "--admin", "root", "--port", "0", "--db", ":memory:"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "--admin root: no account can have that name" in result.stderr, result.stderr
