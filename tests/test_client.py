"""The client library against a real server: methods, exceptions, closing, reconnecting, TLS."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chat.client import Backoff, Connection, connect, parse_address
from chat.codecs import JSON
from chat.commands import (
    Command,
    HelloCommand,
    HelpCommand,
    JoinCommand,
    MeCommand,
    MsgCommand,
    NickCommand,
    PartCommand,
    PingCommand,
    PongCommand,
    QuitCommand,
    RoomsCommand,
    SayCommand,
    TopicCommand,
    WhoCommand,
    encode_command,
)
from chat.errors import ConnectionLost, ErrorCode, NickUnavailable, ServerError
from chat.protocol import (
    Bye,
    Error,
    Event,
    Join,
    Message,
    Nick,
    Part,
    Private,
    RoomInfo,
    Topic,
    Welcome,
    Who,
)
from chat.server import ChatServer
from tests.harness import WAIT, JsonClient, StartServer, eventually

E = TypeVar("E", bound=Event)


def fast() -> Backoff:
    """A backoff of its own for each test: its attempts carry over between connections."""
    return Backoff(initial=0.01, maximum=0.05)


def address(server: ChatServer) -> str:
    return f"127.0.0.1:{server.port}"


async def next_event(conn: Connection, kind: type[E], **fields: Any) -> E:
    """Iterate ``conn`` until an event of ``kind`` whose attributes equal ``fields``."""
    async with asyncio.timeout(WAIT):
        async for event in conn:
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event
    raise AssertionError(f"connection ended before a {kind.__name__} {fields}")


async def drain(conn: Connection) -> list[Event]:
    """Every event until the iterator ends; fails if it does not end in time."""
    async with asyncio.timeout(WAIT):
        return [event async for event in conn]


# --- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:9000", ("localhost", 9000)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:6667", ("::1", 6667)),
        ("example.org", ("example.org", 9000)),
        ("[::1]", ("::1", 9000)),
        ("::1", ("::1", 9000)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", ":9000", "host:", "host:0", "host:65536", "host:x", "[::1"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


@pytest.mark.parametrize(
    "command",
    [
        HelloCommand("alice"),
        NickCommand("bob"),
        SayCommand("hi", "#dev"),
        SayCommand("hi"),
        MeCommand("waves", "#dev"),
        MsgCommand("bob", "psst"),
        JoinCommand("#dev"),
        PartCommand("#dev", "bye"),
        PartCommand(),
        RoomsCommand(),
        WhoCommand("#dev"),
        TopicCommand("#dev", "new"),
        TopicCommand(),
        QuitCommand("gone"),
        HelpCommand("join"),
        PingCommand("t1"),
        PongCommand("t2"),
    ],
)
def test_encode_command_round_trips(command: Command) -> None:
    for ident in (None, "q-1"):
        line = encode_command(command, ident)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        request = JSON.decode(line, registered=True)
        assert request is not None
        assert (request.command, request.id) == (command, ident)


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered: no two the same
    backoff.reset()
    assert backoff.next() <= 1.0


# --- registration and its failures ---------------------------------------------------------------


async def test_connect_registers_and_yields_typed_events(server: ChatServer) -> None:
    async with connect(address(server), nick="alice") as conn:
        assert conn.nickname == "alice"
        welcome = await next_event(conn, Welcome)
        assert welcome.nick == "alice"
        await next_event(conn, Join, nick="alice", room="#lobby")
        who = await next_event(conn, Who, room="#lobby")
        assert who.members == ("alice",)
        assert conn.joined == ("#lobby",)


async def test_taken_nick_raises_nick_unavailable(server: ChatServer) -> None:
    async with connect(address(server), nick="alice"):
        with pytest.raises(NickUnavailable) as caught:
            await connect(address(server), nick="ALICE")
    assert caught.value.code == ErrorCode.NICK_TAKEN
    assert "already in use" in caught.value.reason
    assert caught.value.nick == "ALICE"


@pytest.mark.parametrize(
    ("nick", "code"),
    [
        ("root", ErrorCode.NICK_RESERVED),
        ("9lives", ErrorCode.NICK_INVALID),
        ("x" * 17, ErrorCode.NICK_INVALID),
    ],
)
async def test_refused_nick_raises_with_the_server_code(
    server: ChatServer, nick: str, code: ErrorCode
) -> None:
    with pytest.raises(NickUnavailable) as caught:
        await connect(address(server), nick=nick)
    assert caught.value.code == code


async def test_confusable_nick_raises(server: ChatServer) -> None:
    async with connect(address(server), nick="bill"):
        with pytest.raises(NickUnavailable) as caught:
            await connect(address(server), nick="bi1l")
    assert caught.value.code == ErrorCode.NICK_CONFUSABLE


async def test_refused_connection_raises_connection_lost(start_server: StartServer) -> None:
    server = await start_server()
    port = server.port
    await server.close()
    with pytest.raises(ConnectionLost, match="Connection refused"):
        await connect(f"127.0.0.1:{port}", nick="alice")


async def test_full_server_reason_is_in_connection_lost(start_server: StartServer) -> None:
    server = await start_server(max_clients=1)
    async with connect(address(server), nick="alice"):
        with pytest.raises(ConnectionLost, match="server is full"):
            await connect(address(server), nick="bob")


def test_malformed_address_raises_value_error() -> None:
    with pytest.raises(ValueError, match="port"):
        connect("localhost:http", nick="alice")


# --- commands ------------------------------------------------------------------------------------


async def test_say_me_and_msg_reach_others(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with connect(address(server), nick="alice") as conn:
        await conn.say("hello bob")
        assert (await bob.expect("message", nick="alice")).text == "hello bob"
        await conn.me("waves", room="#lobby")
        assert (await bob.expect("action", nick="alice")).text == "waves"
        await conn.msg("bob", "psst")
        private = await bob.expect("private", nick="alice")
        assert private.text == "psst"
        own = await next_event(conn, Message, nick="alice")
        assert own.text == "hello bob"  # everyone in the room sees a line, its author too
        echo = await next_event(conn, Private, echo=True)
        assert echo.target == "bob"
    await bob.close()


async def test_join_and_part_track_rooms(server: ChatServer) -> None:
    async with connect(address(server), nick="alice") as conn:
        await conn.join("dev")  # the '#' is optional, as in the protocol
        assert conn.joined == ("#lobby", "#dev")
        await next_event(conn, Join, nick="alice", room="#dev")
        await conn.part("#lobby", "busy")
        assert conn.joined == ("#dev",)
        part = await next_event(conn, Part, room="#lobby")
        assert part.text == "busy"
        await conn.part()  # the active room
        assert conn.joined == ()


async def test_join_and_part_raise_server_errors(server: ChatServer) -> None:
    async with connect(address(server), nick="alice") as conn:
        with pytest.raises(ServerError) as caught:
            await conn.join("#bad room!")
        assert caught.value.code == ErrorCode.ROOM_INVALID
        with pytest.raises(ServerError) as caught:
            await conn.part("#elsewhere")
        assert caught.value.code == ErrorCode.NOT_IN_ROOM


async def test_who_rooms_and_topic(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0)  # many queries: no flood control
    bob = await JsonClient.connect(server.port, nick="bob")
    async with connect(address(server), nick="alice", rate=0) as conn:
        assert await conn.who() == ("alice", "bob")
        assert await conn.who("#lobby") == ("alice", "bob")
        await conn.join("#dev")
        assert await conn.rooms() == (  # largest first
            RoomInfo("#lobby", 2, ""),
            RoomInfo("#dev", 1, ""),
        )
        assert await conn.rooms("dev") == (RoomInfo("#dev", 1, ""),)
        assert await conn.rooms(offset=1) == (RoomInfo("#dev", 1, ""),)
        assert await conn.topic("#dev") == ""
        assert await conn.topic("#dev", "  release on Friday ") == "release on Friday"
        assert await conn.topic("#dev") == "release on Friday"
        topic = await next_event(conn, Topic, nick="alice")  # the change is broadcast
        assert topic.text == "release on Friday"
        with pytest.raises(ServerError) as caught:
            await conn.who("#nowhere")
        assert caught.value.code == ErrorCode.NO_SUCH_ROOM
        with pytest.raises(ServerError) as caught:
            await conn.topic("#dev", "x" * 400)
        assert caught.value.code == ErrorCode.TOPIC_TOO_LONG
    await bob.close()


async def test_query_answers_are_not_yielded(server: ChatServer) -> None:
    async with connect(address(server), nick="alice") as conn:
        await next_event(conn, Who, room="#lobby")  # the one sent on joining
        await conn.who()
        await conn.rooms()
        await conn.topic("#lobby")
        await conn.say("marker")
        events = []
        async with asyncio.timeout(WAIT):
            async for event in conn:
                events.append(event)
                if isinstance(event, Message):
                    break
        assert [type(e) for e in events] == [Message]


async def test_an_earlier_refusal_is_not_taken_for_a_query_answer(server: ChatServer) -> None:
    """A say refused by the server, then who(): the error belongs to the say, in the stream."""
    async with connect(address(server), nick="alice") as conn:
        await conn.say("into the void", room="#elsewhere")
        assert await conn.who() == ("alice",)
        error = await next_event(conn, Error)
        assert error.code == ErrorCode.NOT_IN_ROOM


async def test_queries_work_while_others_talk(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0)
    chatter = await JsonClient.connect(server.port, nick="chatter")
    async with connect(address(server), nick="alice") as conn:
        lines = b"".join(
            json.dumps({"type": "say", "text": f"noise {i}"}).encode() + b"\n" for i in range(300)
        )
        chatter.writer.write(lines)
        answers = await asyncio.gather(*(conn.who() for _ in range(5)))
        assert all(a == ("alice", "chatter") for a in answers)
        last = await next_event(conn, Message, text="noise 299")
        assert last.nick == "chatter"
    await chatter.close()


async def test_nick_renames_and_raises_nick_unavailable(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with connect(address(server), nick="alice") as conn:
        await conn.nick("alicia")
        assert conn.nickname == "alicia"
        rename = await next_event(conn, Nick, nick="alice")
        assert rename.new_nick == "alicia"
        await conn.nick("alicia")  # unchanged: no event, no error
        with pytest.raises(NickUnavailable) as caught:
            await conn.nick("Bob")
        assert (caught.value.nick, caught.value.code) == ("Bob", ErrorCode.NICK_TAKEN)
        with pytest.raises(NickUnavailable) as caught:
            await conn.nick("no spaces")
        assert caught.value.code == ErrorCode.NICK_INVALID
        assert conn.nickname == "alicia"
        await conn.say("still here")
        assert (await bob.expect("message", nick="alicia")).text == "still here"
    await bob.close()


async def test_ping_measures_a_round_trip(server: ChatServer) -> None:
    async with connect(address(server), nick="alice") as conn:
        assert 0 <= await conn.ping() < WAIT
        assert 0 <= await conn.ping("mine") < WAIT


async def test_pacing_keeps_a_burst_under_the_flood_limit(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=100.0, burst=5)
    bob = await JsonClient.connect(server.port, nick="bob")
    async with connect(address(server), nick="alice", rate=50.0, burst=5) as conn:
        for i in range(40):
            await conn.say(f"line {i}")
        await bob.expect("message", text="line 39")
    assert not [e for e in bob.events if isinstance(e, Error)]
    await bob.close()


# --- closing -------------------------------------------------------------------------------------


async def test_iterator_ends_after_quit(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    conn = await connect(address(server), nick="alice")
    await conn.quit("off to lunch")
    events = await drain(conn)
    assert isinstance(events[-1], Bye)
    assert events[-1].code == ErrorCode.QUIT
    assert conn.closed
    assert not conn.lost
    assert (await bob.expect("quit", nick="alice")).text == "off to lunch"
    with pytest.raises(ConnectionLost):
        await conn.say("too late")
    await conn.quit()  # idempotent
    await bob.close()


async def test_iterator_ends_when_the_server_shuts_down(start_server: StartServer) -> None:
    server = await start_server(shutdown_grace=1.0)
    conn = await connect(address(server), nick="alice")
    await server.close()
    events = await drain(conn)
    assert isinstance(events[-1], Bye)
    assert (conn.close_code, conn.lost) == (ErrorCode.SERVER_SHUTDOWN, True)
    assert "shutting down" in conn.describe_close()
    with pytest.raises(ConnectionLost, match="shutting down"):
        await conn.who()
    with pytest.raises(ConnectionLost):
        await conn.say("anyone?")


async def fake_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    """A scripted server for what a real one will not do; every connection is closed after."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(run, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def welcome(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server's side of a JSON handshake, as a test double."""
    writer.write(b"*** Welcome to a fake server.\r\n")
    hello = json.loads(await reader.readline())
    assert hello == {"type": "hello", "nick": "alice"}
    writer.write(b'{"type":"hello","version":1}\n{"type":"welcome","nick":"alice"}\n')
    await writer.drain()


@pytest.fixture
async def fakes() -> AsyncIterator[list[asyncio.Server]]:
    servers: list[asyncio.Server] = []
    yield servers
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_iterator_ends_at_eof_without_bye(fakes: list[asyncio.Server]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        writer.close()

    fakes.append(await fake_server(handler))
    conn = await connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice")
    events = await drain(conn)
    assert [type(e) for e in events] == [Welcome]
    assert conn.lost
    assert conn.close_code is None
    with pytest.raises(ConnectionLost):
        await conn.ping()


async def test_server_pings_are_answered_automatically(fakes: list[asyncio.Server]) -> None:
    pong: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        writer.write(b'{"type":"ping","text":"1700000000"}\n')
        pong.set_result(json.loads(await reader.readline()))
        writer.write(b'{"type":"message","room":"#lobby","nick":"bob","text":"after"}\n')
        assert json.loads(await reader.readline())["type"] == "quit"
        writer.close()

    fakes.append(await fake_server(handler))
    async with connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice") as conn:
        async with asyncio.timeout(WAIT):
            assert await pong == {"type": "pong", "token": "1700000000"}
        events = []
        async with asyncio.timeout(WAIT):
            async for event in conn:
                events.append(event)
                if isinstance(event, Message):
                    break
        assert [type(e) for e in events] == [Welcome, Message]  # the ping is not yielded


async def test_unanswered_query_times_out(fakes: list[asyncio.Server]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        await reader.read()  # never answers anything

    fakes.append(await fake_server(handler))
    conn = await connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice", request_timeout=0.2)
    with pytest.raises(TimeoutError):
        await conn.who()
    conn.close_timeout = 0.2
    await conn.close()


async def test_unknown_events_and_text_lines_are_skipped(fakes: list[asyncio.Server]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        writer.write(b'{"type":"hologram","text":"from the future"}\nnot json\n{broken\n')
        writer.write(b'{"type":"bye","code":"server_shutdown","text":"Bye now."}\n')
        writer.close()

    fakes.append(await fake_server(handler))
    conn = await connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice")
    events = await drain(conn)
    assert [type(e) for e in events] == [Welcome, Bye]
    assert conn.close_reason == "Bye now."


async def test_silent_server_times_out_registration(fakes: list[asyncio.Server]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    fakes.append(await fake_server(handler))
    with pytest.raises(ConnectionLost, match="no answer to registration"):
        await connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice", open_timeout=0.2)


BIG: int = 2 * 1024 * 1024  # twice the client's limit on an event line


def json_line(**fields: Any) -> bytes:
    return json.dumps(fields).encode() + b"\n"


async def test_an_overlong_line_is_skipped_with_a_warning(fakes: list[asyncio.Server]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        writer.write(json_line(type="message", room="#lobby", nick="bob", text="x" * BIG))
        writer.write(json_line(type="message", room="#lobby", nick="bob", text="after"))
        ping = json.loads(await reader.readline())
        writer.write(json_line(type="pong", re=ping["id"]))
        assert json.loads(await reader.readline())["type"] == "quit"
        writer.write(json_line(type="bye", code="quit", text="Goodbye."))

    fakes.append(await fake_server(handler))
    async with connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice") as conn:
        events = []
        async with asyncio.timeout(WAIT):
            async for event in conn:
                events.append(event)
                if isinstance(event, Message):
                    break
        assert [type(e) for e in events] == [Welcome, Error, Message]
        warning, after = events[1], events[2]
        assert isinstance(warning, Error)
        assert (warning.code, warning.command, warning.re) == ("line_too_long", None, None)
        assert warning.text == "An event from the server was too long (over 1 MiB) and was skipped."
        assert after.text == "after"
        assert await conn.ping() >= 0  # still connected
        assert not conn.closed
    assert not conn.lost


async def test_a_query_whose_answer_was_skipped_times_out_saying_so(
    fakes: list[asyncio.Server],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await welcome(reader, writer)
        request = json.loads(await reader.readline())
        room = {"room": "#big", "members": 1, "topic": "x" * BIG}
        writer.write(json_line(type="rooms", re=request["id"], total=1, rooms=[room]))
        await reader.read()

    fakes.append(await fake_server(handler))
    conn = await connect(f"127.0.0.1:{port_of(fakes[0])}", nick="alice", request_timeout=0.5)
    with pytest.raises(TimeoutError, match="too long and was skipped"):
        await conn.rooms()
    assert not conn.closed
    assert isinstance(await next_event(conn, Error), Error)  # the warning, in the stream
    conn.close_timeout = 0.2
    await conn.close()


# --- reconnecting --------------------------------------------------------------------------------


async def test_reconnects_after_a_restart_with_the_same_nick_and_rooms(
    start_server: StartServer,
) -> None:
    server = await start_server(max_per_ip=0, shutdown_grace=1.0)
    port = server.port
    retries: list[tuple[int, float, Exception]] = []
    connections = aiter(
        connect(
            f"127.0.0.1:{port}",
            nick="alice",
            backoff=fast(),
            on_retry=lambda *why: retries.append(why),
        )
    )
    first = await anext(connections)
    await first.nick("alicia")
    await first.join("#dev")
    await first.join("#ops")
    await first.part("#lobby")
    await server.close()
    await drain(first)
    assert first.lost

    reconnect = asyncio.ensure_future(anext(connections))
    await eventually(lambda: len(retries) >= 2)  # the server is down: attempts are refused
    assert isinstance(retries[-1][2], ConnectionLost)
    assert "refused" in str(retries[-1][2])
    assert [attempt for attempt, _, _ in retries[:2]] == [1, 2]
    await start_server(port=port, max_per_ip=0)  # a restart on the same port
    async with asyncio.timeout(WAIT):
        second = await reconnect
    assert second is not first
    assert second.nickname == "alicia"
    await next_event(second, Part, nick="alicia", room="#lobby")
    assert second.joined == ("#dev", "#ops")
    assert await second.who("#ops") == ("alicia",)
    assert {r.room for r in await second.rooms()} == {"#dev", "#lobby", "#ops"}

    await second.quit()
    with pytest.raises(StopAsyncIteration):  # quitting ends the reconnection loop
        await anext(connections)


async def test_reconnect_loop_raises_if_the_first_attempt_fails(start_server: StartServer) -> None:
    server = await start_server()
    port = server.port
    await server.close()
    connections = aiter(connect(f"127.0.0.1:{port}", nick="alice", backoff=fast()))
    with pytest.raises(ConnectionLost):
        await anext(connections)


async def test_retry_initial_waits_for_the_server(
    start_server: StartServer,
) -> None:
    server = await start_server()
    port = server.port
    await server.close()
    retried = asyncio.Event()
    connections = connect(
        f"127.0.0.1:{port}",
        nick="alice",
        backoff=fast(),
        retry_initial=True,
        on_retry=lambda *_: retried.set(),
    )
    first = asyncio.ensure_future(anext(aiter(connections)))
    async with asyncio.timeout(WAIT):
        await retried.wait()
    await start_server(port=port, max_per_ip=0)  # a restart on the same port
    async with asyncio.timeout(WAIT):
        conn = await first
    assert await conn.who() == ("alice",)
    await conn.quit()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The library's clock for how long a connection stayed up; ``clock[0] += s`` moves it."""
    now = [1000.0]
    monkeypatch.setattr("chat.client._clock", lambda: now[0])
    return now


def dropping_server(stay_up: list[asyncio.Event | None]) -> Callable[..., Awaitable[None]]:
    """Welcome, then close at once; the n-th connection waits for ``stay_up[n]`` if set."""
    connections = iter(stay_up)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold = next(connections, None)
        await welcome(reader, writer)
        if hold is not None:
            await hold.wait()

    return handler


async def test_backoff_keeps_growing_while_connections_drop_at_once(
    fakes: list[asyncio.Server], clock: list[float]
) -> None:
    fakes.append(await fake_server(dropping_server([])))
    backoff = Backoff(initial=0.001, maximum=1.0, rng=random.Random(3))
    retries: list[tuple[int, float, Exception]] = []
    connections = aiter(
        connect(
            f"127.0.0.1:{port_of(fakes[0])}",
            nick="alice",
            backoff=backoff,
            on_retry=lambda *why: retries.append(why),
        )
    )
    for _ in range(5):
        async with asyncio.timeout(WAIT):
            conn = await anext(connections)
        await drain(conn)
        assert conn.lost
    assert [attempt for attempt, _, _ in retries] == [1, 2, 3, 4]  # never back to the start
    delays = [delay for _, delay, _ in retries]
    assert delays == sorted(delays)
    assert delays[-1] > 0.004  # the fourth ceiling is 0.008, drawn from its upper half
    assert backoff.attempts == 4
    await connections.aclose()


async def test_a_connection_that_stayed_up_resets_the_backoff(
    fakes: list[asyncio.Server], clock: list[float]
) -> None:
    hold = asyncio.Event()
    fakes.append(await fake_server(dropping_server([None, None, hold])))
    backoff = Backoff(initial=0.001, maximum=1.0)
    retries: list[int] = []
    connections = aiter(
        connect(
            f"127.0.0.1:{port_of(fakes[0])}",
            nick="alice",
            backoff=backoff,
            stable_after=10.0,
            on_retry=lambda attempt, *_: retries.append(attempt),
        )
    )
    for _ in range(2):  # two connections dropped at once
        async with asyncio.timeout(WAIT):
            await drain(await anext(connections))
    async with asyncio.timeout(WAIT):
        third = await anext(connections)
    assert backoff.attempts == 2
    clock[0] += 9.0
    assert not third.closed
    clock[0] += 1.0  # up for stable_after seconds: a connection that worked
    hold.set()
    await drain(third)
    async with asyncio.timeout(WAIT):
        fourth = await anext(connections)
    assert retries == [1, 2, 1]  # after the third, the backoff started again from the start
    assert backoff.attempts == 1
    await fourth.quit()
    await connections.aclose()


async def test_breaking_out_of_the_loop_closes_the_connection(server: ChatServer) -> None:
    async for conn in connect(address(server), nick="alice", backoff=fast()):
        kept = conn
        break
    await eventually(lambda: kept.closed)
    assert not kept.lost


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(start_server: StartServer, certificate: tuple[Path, Path]) -> ChatServer:
    cert, key = certificate
    return await start_server(max_per_ip=0, tls_cert=str(cert), tls_key=str(key))


async def test_tls_with_a_ca_file(tls_server: ChatServer, certificate: tuple[Path, Path]) -> None:
    async with connect(address(tls_server), nick="alice", ca_file=str(certificate[0])) as conn:
        assert await conn.who() == ("alice",)
    async with connect(
        f"localhost:{tls_server.port}", nick="bob", tls=True, ca_file=str(certificate[0])
    ) as conn:
        assert await conn.who() == ("bob",)


async def test_tls_uses_the_system_trust_store(
    tls_server: ChatServer, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConnectionLost, match="certificate verification failed"):
        await connect(address(tls_server), nick="alice", tls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    async with connect(address(tls_server), nick="alice", tls=True) as conn:
        assert await conn.who() == ("alice",)


async def test_tls_with_a_custom_context(
    tls_server: ChatServer, certificate: tuple[Path, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    async with connect(address(tls_server), nick="alice", tls=context) as conn:
        assert conn.nickname == "alice"


async def test_plain_client_on_a_tls_server_gets_a_hint(tls_server: ChatServer) -> None:
    with pytest.raises(ConnectionLost, match="try --tls"):
        await connect(address(tls_server), nick="alice")


async def test_tls_client_on_a_plain_server_fails_clearly(server: ChatServer) -> None:
    with pytest.raises(ConnectionLost, match="TLS"):
        await connect(address(server), nick="alice", tls=True)


async def test_unreadable_ca_file_raises_connection_lost(
    server: ChatServer, tmp_path: Path
) -> None:
    with pytest.raises(ConnectionLost, match="CA file"):
        await connect(address(server), nick="alice", ca_file=str(tmp_path / "missing.pem"))
