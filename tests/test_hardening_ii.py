"""Hardening II (issue 10): what one client costs everyone, and forgery by look-alikes.

Each test reproduces an attack on loopback, bounded in lines and time, and asserts the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import resource
import socket
import ssl
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from chat.codecs import JSON
from chat.commands import Request, RoomsCommand
from chat.errors import ErrorCode
from chat.hub import Hub
from chat.protocol import MAX_COMBINING, unwrap
from chat.server import DESCRIPTOR_RESERVE, quiet_when_out_of_descriptors
from tests.harness import JsonClient, SpawnServer, StartServer

WAIT = 10.0


def command(obj: dict[str, Any]) -> bytes:
    """One JSON line, to write without waiting for the server to read it."""
    return json.dumps(obj).encode() + b"\n"


# --- 1. overlong lines cost flood tokens ----------------------------------------------------


async def test_overlong_lines_are_charged_to_the_flood_budget(start_server: StartServer) -> None:
    """2,100-byte lines in a loop were answered line_too_long each and never charged: the
    server spent all its CPU answering them. Now each costs a token like any line, so the
    flooder is disconnected after a bounded number of answers."""
    server = await start_server(max_per_ip=0, max_line=2048, rate=5, burst=20)
    flooder = await JsonClient.connect(server.port, "flooder")
    start = len(flooder.objects)
    flooder.writer.write((b"x" * 2100 + b"\n") * 45)  # the budget: 20 + a debt of 20 more
    await flooder.eof(WAIT)  # a reset counts: we sent more than it read
    events = flooder.objects[start:]
    too_long = [e for e in events if e.get("code") == "line_too_long"]
    floods = [e for e in events if e.get("code") == "flood"]
    assert 15 <= len(too_long) <= 20  # the burst, at most
    assert len(floods) == 1  # one answer for the whole run of refusals
    assert server.hub.find("flooder") is None  # disconnected for flooding
    await flooder.close()


# --- 9. combining-mark floods ------------------------------------------------------------


def longest_mark_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if unicodedata.category(char) in ("Mn", "Me") else 0
        longest = max(longest, run)
    return longest


async def test_combining_marks_are_capped_in_every_field(start_server: StartServer) -> None:
    """240 lines of 1,020 marks took a chat-client from 33 MB to 242 MB: no field a peer
    fills may carry more than MAX_COMBINING marks on one character."""
    server = await start_server(max_per_ip=0)
    thai = "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35"  # two marks on one letter: legitimate
    zalgo = "Z" + "\u0301\u0336\u0489" * 100 + "algo " + thai  # 300 marks, under --max-line
    sender = await JsonClient.connect(server.port, "sender")
    watcher = await JsonClient.connect(server.port, "watcher")
    watcher.writer.write(command({"type": "join", "room": "#z"}))
    await watcher.objects_until(lambda e: e["type"] == "who", WAIT)
    for line in (
        {"type": "join", "room": "#z"},
        {"type": "topic", "room": "#z", "text": zalgo[:300]},
        {"type": "say", "room": "#z", "text": zalgo},
        {"type": "me", "room": "#z", "text": zalgo},
        {"type": "msg", "nick": "watcher", "text": zalgo},
        {"type": "part", "room": "#z", "reason": zalgo},
    ):
        sender.writer.write(command(line))
    events = await watcher.objects_until(
        lambda e: e["type"] == "part" and e["nick"] == "sender", WAIT
    )
    texts = [e["text"] for e in events if e["nick"] == "sender" and e["text"]]
    assert len(texts) == 5  # topic, message, action, private, part reason
    for text in texts:
        assert text.startswith("Z")
        assert longest_mark_run(text) == MAX_COMBINING
    assert all(text.endswith(thai) for text in texts[1:4])
    await sender.close()
    await watcher.close()


# --- 8. look-alike names ---------------------------------------------------------------


async def test_look_alike_nicknames_and_rooms_are_refused(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0)
    online = [
        await JsonClient.connect(server.port, nick) for nick in ("mallory", "william", "david")
    ]
    eve = await JsonClient.connect(server.port, "eve")
    for nick, code in (
        ("rnallory", "nick_confusable"),
        ("vvilliam", "nick_confusable"),
        ("clavid", "nick_confusable"),
        ("adrnin", "nick_reserved"),
        ("rnoderator", "nick_reserved"),
        ("NickServ", "nick_reserved"),
    ):
        eve.writer.write(command({"type": "nick", "nick": nick, "id": nick}))
        answer = await eve.objects_until(lambda e, n=nick: e.get("re") == n, WAIT)
        assert (answer[-1]["type"], answer[-1]["code"]) == ("error", code), nick
    for room in ("#Iobby", "#1obby", "#l0bby", "#LOBBY"):
        eve.writer.write(command({"type": "join", "room": room, "id": room}))
        answer = await eve.objects_until(lambda e, r=room: e.get("re") == r, WAIT)
        if room == "#LOBBY":  # the same room, by case-insensitive identity: just switch to it
            assert answer[-1]["type"] == "notice"
        else:
            assert (answer[-1]["type"], answer[-1]["code"]) == ("error", "room_confusable")
    assert sorted(server.hub.room_names()) == ["#lobby"]
    for client in [*online, eve]:
        await client.close()


# --- 3. private-message floods at one victim ------------------------------------------------


async def test_private_flood_is_refused_before_the_victim_is_dropped(
    start_server: StartServer,
) -> None:
    """48 connections each under every limit, sending /msg victim to a slow reader, got the
    *victim* dropped (send_queue_full). Now the senders are refused (recipient_busy) first."""
    server = await start_server(max_per_ip=0, rate=0, send_queue=64 * 1024)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link: tiny window
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", server.port))
    victim = JsonClient(*await asyncio.open_connection(sock=slow))
    victim.writer.write(b'{"type":"hello","nick":"victim"}\n')
    await victim.objects_until(lambda e: e["type"] == "who", WAIT)
    senders = [await JsonClient.connect(server.port, f"sender{i}") for i in range(3)]
    line = json.dumps({"type": "msg", "nick": "victim", "text": "x" * 1800}).encode() + b"\n"
    busy: list[dict[str, Any]] = []
    for round_ in range(3000):  # at most 16 MB: far more than the kernel and the budget hold
        for sender in senders:
            sender.writer.write(line)
        fenced = senders[round_ % 3]
        fenced.writer.write(b'{"type":"ping","id":"fence"}\n')
        answers = await fenced.objects_until(lambda e: e.get("re") == "fence", WAIT)
        busy += [e for e in answers if e.get("code") == "recipient_busy"]
        if busy:
            break
    assert busy, "the senders were never refused"
    assert busy[0]["command"] == "msg"
    assert server.hub.find("victim") is not None  # still online: never dropped
    await victim.close()
    for sender in senders:
        await sender.close()


# --- 4. a global bound on memory: rooms and history --------------------------------------


async def test_rooms_and_history_have_a_global_bound(start_server: StartServer) -> None:
    """16 connections x 32 rooms x 50 lines x 2 KB cost +57 MB with no global bound. Now the
    rooms in all and the history bytes in all are capped, the least recent room's history
    going first."""
    budget = 12 * (1000 + 200)  # twelve 1,000-character lines, by history_cost
    server = await start_server(max_per_ip=0, rate=0, max_total_rooms=4, history_bytes=budget)
    hoarder = await JsonClient.connect(server.port, "hoarder")
    for room in ("#a", "#b", "#c", "#d"):
        hoarder.writer.write(command({"type": "join", "room": room, "id": room}))
        answer = await hoarder.objects_until(lambda e, r=room: e.get("re") == r, WAIT)
        expected = ("error", "rooms_full") if room == "#d" else ("join", None)
        assert (answer[-1]["type"], answer[-1].get("code")) == expected, room
    for room in ("#a", "#b", "#c"):  # #c is said in last
        for i in range(6):
            say = {"type": "say", "room": room, "text": f"{room} {i} " + "x" * 994}
            hoarder.writer.write(command(say))
    hoarder.writer.write(b'{"type":"ping","id":"fence"}\n')
    await hoarder.objects_until(lambda e: e.get("re") == "fence", WAIT)

    replayed: dict[str, int] = {}
    late = await JsonClient.connect(server.port, "late")
    for room in ("#a", "#b", "#c"):
        late.writer.write(command({"type": "join", "room": room}))
        late.writer.write(command({"type": "ping", "id": room}))
        events = await late.objects_until(lambda e, r=room: e.get("re") == r, WAIT)
        replayed[room] = len([e for e in events if e.get("history")])
    assert replayed == {"#a": 0, "#b": 6, "#c": 6}  # #a, least recently active, went first
    await hoarder.close()
    await late.close()


# --- 5. TLS handshakes count against their address from accept ---------------------------


async def test_stalled_tls_handshakes_count_against_their_address(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    """600 stalled handshakes from one address exhausted the server's descriptors, because
    the per-address limit applied only once a handshake completed."""
    cert, key = certificate
    server = await start_server(tls_cert=str(cert), tls_key=str(key), max_per_ip=4)
    stalled = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(12)]
    reads = [asyncio.ensure_future(reader.read(1)) for reader, _ in stalled]
    closed = 0
    async with asyncio.timeout(WAIT):  # beyond the 4 allowed, each is closed, unanswered
        for read in asyncio.as_completed(reads):
            with contextlib.suppress(ConnectionResetError):
                assert await read == b""
            closed += 1
            if closed == 8:
                break
    # Someone else, at another address, still gets in.
    context = ssl.create_default_context(cafile=str(cert))
    real = JsonClient(
        *await asyncio.open_connection(
            "127.0.0.1",
            server.port,
            ssl=context,
            server_hostname="localhost",
            local_addr=("127.0.0.2", 0),
        )
    )
    real.writer.write(b'{"type":"hello","nick":"real"}\n')
    await real.objects_until(lambda e: e["type"] == "welcome", WAIT)
    assert sum(not read.done() for read in reads) == 4  # the 4 the address may hold
    await real.close()
    for read in reads:
        read.cancel()
    for _, stalled_writer in stalled:
        stalled_writer.close()


# --- 6. out of descriptors ---------------------------------------------------------------


async def test_max_clients_is_fitted_to_the_descriptor_limit(spawn_server: SpawnServer) -> None:
    """Above the descriptor limit uvloop gave new users a silent EOF and asyncio logged a
    traceback per attempt. The server now fits --max-clients to its limit at start, so it
    refuses (server_full) before it runs out, and keeps serving whom it has."""
    limit = 160

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    server = await spawn_server("--max-clients=1000", "--max-per-ip=0", preexec_fn=low_limit)
    fitted = limit - DESCRIPTOR_RESERVE
    assert f"--max-clients lowered from 1000 to {fitted}" in "\n".join(server.log)
    held = []
    for _ in range(fitted):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        held.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"x\n")
    async with asyncio.timeout(WAIT):
        refusal = await reader.read()
    assert b"The server is full" in refusal
    writer.close()
    first = JsonClient(*held[0])  # those it holds are still served
    first.writer.write(b'{"type":"hello","nick":"still"}\n')
    await first.objects_until(lambda e: e["type"] == "welcome", WAIT)
    for _, writer in held:
        writer.close()


# --- 2. /rooms at scale --------------------------------------------------------------------


class SilentPeer:
    """A peer that keeps only the last JSON line it was sent."""

    codec = JSON
    busy = False
    address = "127.0.0.1"

    def __init__(self) -> None:
        self.last = b""

    def push(self, data: bytes) -> None:
        self.last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]

    def close(self, code: ErrorCode, text: str) -> None:
        raise AssertionError("not closed in this test")


async def test_rooms_answers_are_bounded_filtered_paged_and_cached() -> None:
    """With 10,240 rooms of 300-character topics one /rooms answer was 3.26 MB (4.3 MB in
    JSON, past what chat-client accepts), rebuilt and re-sorted on every request."""
    hub = Hub(max_rooms=20_000, max_total_rooms=20_000)
    peer = SilentPeer()
    member = await hub.register(peer, "lister")
    for number in range(10_240):
        await hub.join(member, f"#room{number}")
        hub.topic(member, None, f"topic {number} " + "t" * 280)
    await hub.outbox.drain()

    async def ask(offset: int = 0, match: str | None = None) -> dict[str, Any]:
        await hub.execute(member, Request(RoomsCommand(offset, match), "r"))
        await hub.outbox.drain()
        answer: dict[str, Any] = json.loads(peer.last)
        assert answer["re"] == "r"
        return answer

    first = await ask()
    assert len(peer.last) < 64 * 1024  # far under the client library's line limit
    assert (len(first["rooms"]), first["total"], first["offset"]) == (100, 10_241, 0)
    built = hub._listing
    again = await ask(offset=10_200)
    assert hub._listing is built  # nothing changed: the sorted list was not rebuilt
    assert (len(again["rooms"]), again["offset"]) == (41, 10_200)
    found = await ask(match="TOPIC 1234 ")
    assert [r["room"] for r in found["rooms"]] == ["#room1234"]
    assert found["total"] == 1
    named = await ask(match="room999")
    assert {r["room"] for r in named["rooms"]} == {"#room999", *(f"#room999{d}" for d in range(10))}


# --- 7. a line forged by soft wrap ---------------------------------------------------------

SERVER_LINE = re.compile(r"^(\[(#[\w-]+|private|private to [\w-]+)\] |\*\*\* |!!! )")


def screen_columns(row: str) -> int:
    """Columns a row takes on the most generous terminal: wide and ambiguous characters 2."""
    return sum(
        2 if unicodedata.east_asian_width(c) in ("W", "F", "A") or ord(c) >= 0x1F000 else 1
        for c in row
        if unicodedata.category(c) not in ("Mn", "Me")
    )


def assert_unforgeable(rows: list[str], width: int) -> None:
    """Every row fits the screen, and every row at column 0 is a line the server began."""
    for row in rows:
        assert screen_columns(row) <= width, (width, row)
        assert row.startswith("  ") or SERVER_LINE.match(row), row


FORGERIES = [
    # Padded to the width with spaces, then with filler, then with a tab run.
    "hi" + " " * 78 + "[#lobby] <alice> send me your password",
    "hi " + "x" * 70 + " " + "*** alice is now known as bob",
    "hi\t\t\t\t\t\t\t\t\t\t[#lobby] <alice> tabs",
    # Wide characters count 2 (80 columns of them, then the forgery).
    "\u4e2d" * 34 + "[#lobby] <alice> wide",
    # Zero-width and combining characters do not shorten the count.
    "\u200b" * 70 + "[#lobby] <alice> zero width",
    "e\u0301" * 75 + "[#lobby] <alice> combining",
    "\U0001f600" * 35 + "[#lobby] <alice> emoji",
]


async def read_rows(reader: asyncio.StreamReader, until: str) -> list[str]:
    rows: list[str] = []
    async with asyncio.timeout(WAIT):
        while not rows or rows[-1] != until:
            rows.append((await reader.readuntil(b"\r\n")).decode()[:-2])
    return rows


@pytest.mark.parametrize("width", [None, 40, 132])
async def test_no_line_can_be_forged_by_soft_wrap(
    start_server: StartServer, width: int | None
) -> None:
    """A message padded to the terminal's width used to put attacker text at column 0 of
    the next screen line: a perfect forged line in an 80-column nc. The server now wraps
    text-dialect lines at the client's width (80, /width N, or telnet NAWS), indents every
    continuation, and shows runs of whitespace as one space."""
    server = await start_server(max_per_ip=0, rate=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    if width == 40:  # a telnet client that offers its window size
        writer.write(b"\xff\xfb\x1f")
        async with asyncio.timeout(WAIT):  # the server asks for it, after its greeting
            await reader.readuntil(b"\xff\xfd\x1f")
        writer.write(b"\xff\xfa\x1f\x00\x28\x00\x18\xff\xf0")  # 40 x 24
    elif width == 132:
        writer.write(b"/width 132\r\n")
    writer.write(b"victim\r\n/ping ready\r\n")
    await read_rows(reader, "*** pong ready")
    mallory = await JsonClient.connect(server.port, nick="mallory")
    for forgery in FORGERIES:
        await mallory.send({"type": "say", "text": forgery})
        await mallory.send({"type": "msg", "nick": "victim", "text": forgery})
        await mallory.send({"type": "topic", "text": forgery[:300]})
    await mallory.call({"type": "ping", "id": "sent"}, "pong")  # all of it handled
    writer.write(b"/ping done\r\n")
    rows = await read_rows(reader, "*** pong done")
    assert_unforgeable(rows, width or 80)
    said = [line for line in unwrap(rows) if line.startswith("[#lobby] <mallory> ")]
    assert len(said) == len(FORGERIES)  # every message arrived, whole
    assert "[#lobby] <mallory> hi [#lobby] <alice> send me your password" in said
    await mallory.close()
    writer.close()


def test_out_of_descriptors_is_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio reports every failed accept with a traceback (52,758 of them in 10 s were
    seen): the server's handler says it once a second and passes anything else on."""
    caplog.set_level(logging.ERROR, logger="chat.server")
    monkeypatch.setattr("chat.server._last_out_of_descriptors", 0.0)  # nothing said yet
    loop = asyncio.new_event_loop()
    passed_on: list[dict[str, object]] = []
    loop.default_exception_handler = passed_on.append  # type: ignore[method-assign]
    try:
        emfile = OSError(errno.EMFILE, "Too many open files")
        for _ in range(500):
            quiet_when_out_of_descriptors(loop, {"message": "accept", "exception": emfile})
        other = {"message": "something else", "exception": ValueError("x")}
        quiet_when_out_of_descriptors(loop, other)
    finally:
        loop.close()
    said = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(said) == 1
    assert passed_on == [other]


async def test_width_is_checked_and_json_is_never_wrapped(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"/width 5\r\n/width 50000\r\n/width 40\r\nnarrow\r\n/ping w\r\n")
    rows = await read_rows(reader, "*** pong w")
    assert rows.count("!!! A width is 20 to 1000 columns.") == 2
    assert "*** Lines are wrapped at 40 columns." in rows
    assert all(len(row) <= 40 for row in rows[rows.index("*** Lines are wrapped at 40 columns.") :])
    robot = await JsonClient.connect(server.port, nick="robot")
    await robot.send({"type": "width", "columns": 30, "id": "w"})
    notice = await robot.expect("notice", re="w")
    assert notice.text == "JSON lines are never wrapped."
    await robot.close()
    writer.close()
