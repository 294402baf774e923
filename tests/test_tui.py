"""The terminal UI, headless: prompt_toolkit's pipe input and DummyOutput, a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.utils import get_cwidth

from chat.client import Backoff, Connection, connect
from chat.commands import RegisterCommand
from chat.errors import NickUnavailable
from chat.protocol import (
    Action,
    Bye,
    Error,
    Event,
    Join,
    LoggedIn,
    Message,
    Nick,
    Notice,
    Part,
    Private,
    Quit,
    Topic,
    Who,
)
from chat.server import ChatServer, ServerConfig
from chat.tui.app import ChatUI, open_first, run_tui
from chat.tui.cli import ask_another_nick, build_parser, history_path
from chat.tui.format import format_event, nick_style, plain_text
from chat.tui.keys import KEYS_HELP, build_key_bindings
from chat.tui.state import ChatState, Link, RoomView
from chat.tui.widgets import (
    ChatCompleter,
    MessagePane,
    input_line,
    prompt_line,
    status_bar,
    top_bar,
    wrap,
)
from tests.harness import WAIT, JsonClient, StartServer


async def eventually(check: Callable[[], bool]) -> None:
    """Poll UI state until ``check()`` holds; fail after WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 - polling state with a deadline
            await asyncio.sleep(0.01)


class Terminal:
    """A running ChatUI with a keyboard (pipe input) and no screen (DummyOutput)."""

    def __init__(self, ui: ChatUI, keys: PipeInput, task: asyncio.Task[int]) -> None:
        self.ui = ui
        self.keys = keys
        self.task = task

    def type(self, text: str) -> None:
        self.keys.send_text(text)

    def text(self) -> str:
        """The active pane's lines, unwrapped."""
        return "\n".join(plain_text(line) for line in self.ui.state.view.lines)

    async def shows(self, text: str) -> None:
        await eventually(lambda: text in self.text())

    async def exited(self) -> int:
        async with asyncio.timeout(WAIT):
            return await self.task


@contextlib.asynccontextmanager
async def terminal(
    conn: Connection,
    more: AsyncGenerator[Connection, None] | None = None,
    history: History | None = None,
) -> AsyncIterator[Terminal]:
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        ui = ChatUI(conn, more, history=history)
        task = asyncio.create_task(ui.run())
        try:
            yield Terminal(ui, keys, task)
        finally:
            if not task.done():
                ui.exit()
            async with asyncio.timeout(WAIT):
                await task


def address(server: ChatServer) -> str:
    return f"127.0.0.1:{server.port}"


# --- the UI against a real server --------------------------------------------------------------


async def test_typing_a_line_sends_it(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        term.type("hello bob\r")
        assert (await bob.expect("message", nick="alice")).text == "hello bob"
        await term.shows("<alice> hello bob")
        term.type("/me waves\r")
        assert (await bob.expect("action", nick="alice")).text == "waves"
        term.type("/msg bob psst\r")
        assert (await bob.expect("private", nick="alice")).text == "psst"
        await term.shows("[msg -> bob] <alice> psst")
        await eventually(lambda: not term.ui.state.pending)  # every line was echoed back
    await bob.close()


async def test_an_incoming_message_shows_in_the_pane(server: ChatServer) -> None:
    async with terminal(await connect(address(server), nick="alice")) as term:
        bob = await JsonClient.connect(server.port, nick="bob")
        await term.shows("--> bob joined #lobby")
        await eventually(lambda: "bob" in term.ui.state.view.members.values())
        await bob.send({"type": "say", "text": "hi alice \x1b[2J"})
        await term.shows("<bob> hi alice [2J")  # the escape character never reaches the screen
        await bob.send({"type": "msg", "nick": "alice", "text": "private"})
        await eventually(lambda: "bob" in term.ui.state.views)  # a pane of its own, behind
        term.ui.state.switch("bob")
        await term.shows("[msg] <bob> private")
        term.ui.state.switch("#lobby")
        await bob.close()
        await term.shows("<-- bob quit")
        await eventually(lambda: "bob" not in term.ui.state.view.members.values())


async def test_completion_offers_nicknames_and_commands(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        await eventually(lambda: "bob" in term.ui.state.view.members.values())
        buffer = term.ui.input.buffer
        term.type("/jo\t")
        await eventually(lambda: buffer.text == "/join ")
        term.type("#lo\t")
        await eventually(lambda: buffer.text == "/join #lobby ")
        buffer.reset()
        term.type("b\t")
        await eventually(lambda: buffer.text == "bob: ")
        term.type("see /wh\t")  # commands only at the start of a line
        await eventually(lambda: buffer.text == "bob: see /wh")
        buffer.reset()
        term.type("/p\t")  # several candidates: the menu opens, Tab walks it
        await eventually(lambda: buffer.complete_state is not None)
        names = [c.text for c in buffer.complete_state.completions] if buffer.complete_state else []
        assert names == ["/part ", "/password ", "/ping "]
        buffer.reset()
    await bob.close()


async def test_quit_exits_and_tells_the_room(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    conn = await connect(address(server), nick="alice")
    async with terminal(conn) as term:
        term.type("/quit lunch time\r")
        assert await term.exited() == 0
    assert (await bob.expect("quit", nick="alice")).text == "lunch time"
    assert conn.closed
    assert not conn.lost
    await bob.close()


@pytest.mark.parametrize("key", ["\x03", "\x04"], ids=["ctrl-c", "ctrl-d"])
async def test_ctrl_c_and_ctrl_d_exit(server: ChatServer, key: str) -> None:
    conn = await connect(address(server), nick="alice")
    async with terminal(conn) as term:
        term.type(key)
        assert await term.exited() == 0
    assert conn.closed


async def test_ctrl_d_deletes_when_the_line_is_not_empty(server: ChatServer) -> None:
    async with terminal(await connect(address(server), nick="alice")) as term:
        term.type("ab\x01\x04")  # Ctrl-A to the start, Ctrl-D deletes the 'a'
        await eventually(lambda: term.ui.input.text == "b")
        assert not term.task.done()


async def test_join_opens_a_pane_and_part_closes_it(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0)  # many queries: no flood control
    async with terminal(await connect(address(server), nick="alice", rate=0)) as term:
        state = term.ui.state
        term.type("/join #dev\r")
        await eventually(lambda: state.room == "#dev")
        await term.shows("--> alice joined #dev")
        term.type("/topic shipping today\r")
        await eventually(lambda: state.view.topic == "shipping today")
        assert "#dev: shipping today" in plain_text(top_bar(state))
        term.type("/join #lobby\r")  # already in: just switch panes
        await eventually(lambda: state.room == "#lobby")
        term.type("\x0e")  # Ctrl-N: next room
        await eventually(lambda: state.room == "#dev")
        term.type("/part\r")
        await eventually(lambda: list(state.views) == ["#lobby"])
        assert state.room == "#lobby"
        term.type("/who\r")
        await term.shows("--- 1 in #lobby: alice")
        term.type("/rooms\r")
        await term.shows("#lobby (1)")
        term.type("/nosuch\r")
        await term.shows("!!! Unknown command /nosuch")
        term.type("/msg nobody hello\r")
        await term.shows("!!! Nobody called 'nobody' is online.")
        term.type("/nick root\r")
        await term.shows("nickname 'root' unavailable")
        term.type("/help\r")
        await term.shows("Alt-Right / Alt-Left")


async def test_status_bar_counts_unread_lines_in_other_rooms(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        term.type("/join #dev\r")
        await eventually(lambda: term.ui.state.room == "#dev")
        await bob.send({"type": "say", "room": "#lobby", "text": "one"})
        await bob.send({"type": "say", "room": "#lobby", "text": "two"})
        await eventually(lambda: term.ui.state.views["#lobby"].unread == 2)
        status = plain_text(status_bar(term.ui.state, term.ui.link))
        assert "connected" in status
        assert "1:#lobby(2)" in status
        assert "2:#dev" in status
        term.type("\x1b1")  # Alt-1
        await eventually(lambda: term.ui.state.room == "#lobby")
        assert term.ui.state.views["#lobby"].unread == 0
        assert plain_text(prompt_line(term.ui.state)) == "#lobby alice> "
    await bob.close()


async def test_history_persists_across_runs(server: ChatServer, tmp_path: Path) -> None:
    path = tmp_path / "history"
    async with terminal(
        await connect(address(server), nick="alice"), history=FileHistory(path)
    ) as t:
        t.type("first line\r")
        await t.shows("<alice> first line")
        t.type("/quit\r")
        await t.exited()
    async with terminal(
        await connect(address(server), nick="alice"), history=FileHistory(path)
    ) as t:
        await eventually(lambda: "first line" in t.ui.input.buffer.history.get_strings())
        t.type("\x1b[A")  # Up
        await eventually(lambda: t.ui.input.text == "/quit")
        t.type("\x1b[A")
        await eventually(lambda: t.ui.input.text == "first line")


async def test_a_password_is_never_kept_in_the_input_history(
    server: ChatServer, tmp_path: Path
) -> None:
    path = tmp_path / "history"
    async with terminal(
        await connect(address(server), nick="alice"), history=FileHistory(path)
    ) as t:
        t.type("said before\r")
        await t.shows("<alice> said before")
        t.type("/register correct horse battery\r")
        await t.shows("alice is now yours")
        assert t.ui.input.buffer.history.get_strings() == ["said before"]
        t.type("/quit\r")
        await t.exited()
    assert "horse" not in path.read_text()
    assert "said before" in path.read_text()


async def test_a_registered_nickname_is_asked_its_password_before_the_ui(
    server: ChatServer,
) -> None:
    async with connect(address(server), nick="alice") as conn:
        await conn.send(RegisterCommand("correct horse battery"))
        async for event in conn:
            if isinstance(event, LoggedIn):
                break
    asked: list[tuple[str, bool]] = []

    async def ask(nick: str, why: str, *, password: bool = False) -> str | None:
        asked.append((nick, password))
        return "wrong password!" if len(asked) == 1 else "correct horse battery"

    connector = connect(address(server), nick="alice")
    first, more = await open_first(connector, ask)
    assert asked == [("alice", True), ("alice", True)]
    assert first.nickname == "alice"
    await first.quit()
    await more.aclose()


def test_history_lives_under_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert history_path() == tmp_path / "chat" / "history"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert history_path() == tmp_path / ".local" / "state" / "chat" / "history"


async def test_reconnect_shows_status_and_what_was_not_sent(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, shutdown_grace=1.0)
    port = server.port
    connector = connect(f"127.0.0.1:{port}", nick="alice", backoff=Backoff(0.05, 0.2))
    more = aiter(connector)
    async with terminal(await anext(more), more) as term:
        ui = term.ui
        connector.on_retry = ui.on_retry  # as run_tui does
        term.type("/join #dev\r")
        await eventually(lambda: ui.state.room == "#dev")
        await server.close()
        await eventually(lambda: ui.link.status == "reconnecting")
        await term.shows("Reconnecting; lines you type meanwhile are not sent.")
        await eventually(lambda: "Connection refused" in plain_text(status_bar(ui.state, ui.link)))
        term.type("are you there?\r")
        await term.shows("Not sent (not connected): are you there?")
        restarted = ChatServer(ServerConfig(host="127.0.0.1", port=port, max_per_ip=0))
        await restarted.start()
        try:
            await eventually(lambda: ui.link.status == "connected")
            await term.shows("Reconnected as alice; rejoining #lobby, #dev.")
            await eventually(lambda: "alice" in ui.state.views["#dev"].members.values())
            term.type("back again\r")
            await term.shows("<alice> back again")
            assert ui.state.room == "#dev"
        finally:
            ui.exit()
            await term.exited()
            await restarted.close()


async def test_a_burst_does_not_freeze_typing(start_server: StartServer) -> None:
    server = await start_server(max_per_ip=0, rate=0, send_queue=4 * 1024 * 1024)
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        await eventually(lambda: "bob" in term.ui.state.view.members.values())
        burst = b"".join(
            json.dumps({"type": "say", "text": f"burst {i}"}).encode() + b"\n" for i in range(1000)
        )
        bob.writer.write(burst)
        term.type("typed during the burst\r")
        assert (await bob.expect("message", nick="alice")).text == "typed during the burst"
        await term.shows("<bob> burst 999")
        assert len(term.ui.state.view.lines) <= term.ui.state.scrollback
    await bob.close()


# --- pieces, directly ----------------------------------------------------------------------------


def make_state() -> ChatState:
    state = ChatState("alice")
    state.apply(Join(room="#lobby", nick="alice"))
    state.apply(Who(room="#lobby", members=("alice", "bob", "Bea", "carol")))
    state.apply(Join(room="#dev", nick="alice"))
    state.apply(Join(room="#dev", nick="dave"))
    return state


def completions(state: ChatState, text: str) -> list[str]:
    completer = ChatCompleter(state)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_completer_commands_nicknames_and_rooms() -> None:
    state = make_state()
    assert completions(state, "/jo") == ["/join "]
    assert "/quit " in completions(state, "/")
    assert "/clear " in completions(state, "/cl")  # local commands too
    assert completions(state, "/que") == ["/query "]  # aliases, from chat.commands.COMMANDS
    assert completions(state, "/h") == ["/help ", "/history "]  # not "hello": it is for programs
    assert completions(state, "/help to") == ["topic"]
    assert completions(state, "da") == ["dave: "]  # addressing someone: "nick: "
    assert completions(state, "hi b") == ["bob ", "Bea "]  # case-insensitive
    assert completions(state, "/msg ca") == ["carol "]
    assert completions(state, "/join #l") == ["#lobby "]
    assert completions(state, "/part ") == ["#lobby ", "#dev "]
    assert completions(state, "see #d") == ["#dev "]
    assert completions(state, "al") == []  # not yourself
    state.switch("#dev")
    assert completions(state, "")[0] == "dave: "  # the active room's members first


def test_own_private_system_and_error_lines_look_different() -> None:
    def styles(event: Event) -> str:
        return " ".join(fragment[0] for fragment in format_event(event, "alice")[0])

    assert "class:own" in styles(Message(room="#lobby", nick="alice", text="mine"))
    assert "class:own" not in styles(Message(room="#lobby", nick="bob", text="theirs"))
    assert "class:private" in styles(Private(nick="bob", target="alice", text="psst"))
    assert "class:system" in styles(Join(room="#lobby", nick="bob"))
    assert "class:error" in styles(Error(code="flood", text="slow down"))
    assert "class:history" in styles(Message(room="#l", nick="bob", text="old", history=True))
    assert "class:time" in styles(Message(room="#lobby", nick="bob", text="hi"))
    assert "class:action" in styles(Action(room="#lobby", nick="bob", text="waves"))


def test_timestamps_are_local_time() -> None:
    ts = time.mktime((2024, 5, 1, 13, 7, 0, 0, 0, -1))
    line = format_event(Message(ts=ts, room="#lobby", nick="bob", text="hi"), "alice")[0]
    assert plain_text(line) == "13:07 <bob> hi"
    old = format_event(Message(ts=ts, room="#l", nick="bob", text="hi", history=True), "alice")
    assert plain_text(old[0]).startswith("May 01 13:07 ")  # replayed from another day: dated


def test_nick_colours_are_stable_and_case_insensitive() -> None:
    assert nick_style("Bob") == nick_style("bob")
    assert nick_style("bob") == "ansicyan"  # crc32: the same in every run
    assert len({nick_style(f"user{i}") for i in range(50)}) > 5
    assert all("red" not in nick_style(f"user{i}") for i in range(50))  # red means errors


def test_peer_text_is_sanitised() -> None:
    nasty = "\x1b]0;owned\x07\x1b[2J\u202eevil\r\nforged\x9b31m"
    for event in (
        Message(room="#lobby", nick="bob\x1b[31m", text=nasty),
        Topic(room="#lobby", nick="bob", text=nasty),
        Notice(text=nasty),
        Bye(code="x", text=nasty),
        Nick(nick="bob", new_nick=nasty),
        Quit(nick="bob", text=nasty),
    ):
        for line in format_event(event, "alice"):
            text = plain_text(line)
            assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
            assert "\u202e" not in text


def test_scrollback_is_capped_and_pages() -> None:
    state = ChatState("alice", scrollback=100)
    state.apply(Join(room="#lobby", nick="alice"))
    for i in range(250):
        state.apply(Message(room="#lobby", nick="bob", text=f"line {i}"))
    view = state.view
    assert len(view.lines) == 100
    pane = MessagePane(state)
    pane.create_content(60, 10)
    bottom = [plain_text(r) for r in pane.rows(60, 10)]
    assert bottom[-1].endswith("line 249")
    pane.page(+1)
    assert [plain_text(r) for r in pane.rows(60, 10)][-1].endswith("line 241")
    state.apply(Message(room="#lobby", nick="bob", text="new"))  # the view stays put
    assert [plain_text(r) for r in pane.rows(60, 10)][-1].endswith("line 241")
    for _ in range(50):
        pane.page(+1)
    assert plain_text(pane.rows(60, 10)[0]).endswith("line 151")  # the oldest
    for _ in range(50):
        pane.page(-1)
    assert view.scroll == 0
    assert [plain_text(r) for r in pane.rows(60, 10)][-1].endswith("new")


def test_long_lines_wrap_under_the_text() -> None:
    line = format_event(Message(room="#l", nick="bob", text="word " * 20), "alice")[0]
    rows = [plain_text(r) for r in wrap(line, 30)]
    assert all(len(r) <= 30 for r in rows)
    assert all(r.rstrip().endswith("word") for r in rows)  # broken between words
    assert all(r.startswith(" " * 6 + "word") for r in rows[1:])  # indented under the text
    assert len(rows) == 6
    assert [plain_text(r) for r in wrap([("", "漢字漢字")], 4)] == ["漢字", "漢字"]  # wide: 2 cells


def test_members_follow_joins_parts_quits_and_renames() -> None:
    state = make_state()
    lobby = state.views["#lobby"]
    state.apply(Nick(nick="bob", new_nick="robert"))
    assert "robert" in lobby.members.values()
    assert "bob" not in lobby.members.values()
    state.apply(Part(room="#lobby", nick="carol", text="bye"))
    state.apply(Quit(nick="robert", text="gone"))
    assert lobby.sorted_members() == ["alice", "Bea"]
    assert "<-- robert quit (gone)" in plain_text(lobby.lines[-1])
    state.apply(Nick(nick="alice", new_nick="alicia"))
    assert state.nick == "alicia"


def test_replayed_history_is_not_shown_twice() -> None:
    state = make_state()
    said = Message(room="#lobby", nick="bob", text="once")
    state.apply(said)
    state.apply(Message(id=said.id, room="#lobby", nick="bob", text="once", history=True))
    texts = [plain_text(line) for line in state.views["#lobby"].lines]
    assert sum("once" in t for t in texts) == 1


def test_lines_in_doubt_are_reported_when_the_connection_drops() -> None:
    state = make_state()
    state.sent("say", "#lobby", "confirmed")
    state.sent("say", "#lobby", "refused")
    state.sent("say", "#lobby", "in flight")
    state.apply(Message(room="#lobby", nick="alice", text="confirmed"))
    state.apply(Error(code="flood", text="Too fast"))
    state.connection_lost("connection closed")
    texts = [plain_text(line) for line in state.view.lines[-2:]]
    assert "Reconnecting" in texts[0]
    assert texts[1].endswith("Not confirmed by the server before the connection dropped: in flight")
    assert state.pending == []


def test_room_view_dedup_memory_is_bounded() -> None:
    view = RoomView("#x", scrollback=10)
    for i in range(100):
        assert view.first_sight(str(i))
    assert not view.first_sight("99")
    assert view.first_sight("0")  # long forgotten


def test_a_pane_with_fewer_lines_than_rows_shows_them_all() -> None:
    """Issue 12: a 27-row pane holding 20 lines showed only 7 of them."""
    state = ChatState("alice")
    state.apply(Join(room="#lobby", nick="alice"))
    for i in range(19):
        state.apply(Message(room="#lobby", nick="bob", text=f"line {i}"))
    rows = [plain_text(r) for r in MessagePane(state).rows(80, 27)]
    assert len(rows) == 27
    assert rows[:7] == [""] * 7  # blank rows above, the lines at the bottom
    assert rows[7].endswith("--> alice joined #lobby")
    assert [r.split(" ", 1)[1] for r in rows[8:]] == [f"<bob> line {i}" for i in range(19)]


class ResizableOutput(DummyOutput):
    """DummyOutput whose size the test sets, as a terminal window being resized."""

    def __init__(self, rows: int, columns: int) -> None:
        self.size = Size(rows=rows, columns=columns)

    def get_size(self) -> Size:
        return self.size


def drawn(ui: ChatUI) -> list[str]:
    """The rows of the screen prompt_toolkit drew last, as text."""
    screen = ui.app.renderer._last_screen  # what is on the terminal
    assert screen is not None
    size = ui.app.output.get_size()
    return [
        "".join(screen.data_buffer[y][x].char for x in range(size.columns)).rstrip()
        for y in range(size.rows)
    ]


async def test_the_pane_fills_again_after_the_window_grows(server: ChatServer) -> None:
    """Issue 12: after 70x20 -> 120x30 the pane showed its last two lines under blank rows."""
    output = ResizableOutput(rows=20, columns=70)
    conn = await connect(address(server), nick="alice")
    with create_pipe_input() as keys, create_app_session(input=keys, output=output):
        ui = ChatUI(conn)
        task = asyncio.create_task(ui.run())
        try:
            await eventually(
                lambda: ui.app.is_running and "1 in #lobby" in plain_text(ui.state.view.lines[-1])
            )
            view = ui.state.view
            # 25 lines, that wrap in two rows at 70 columns and fit in one at 120.
            last = 25 - len(view.lines)
            for i in range(last):
                ui.state.note(f"note {i} " + "x" * 70)
            ui.app.invalidate()
            await eventually(lambda: any(f"note {last - 1}" in row for row in drawn(ui)))
            output.size = Size(rows=30, columns=120)
            ui.app._on_resize()  # what SIGWINCH calls
            await eventually(lambda: len(drawn(ui)) == 30 and f"note {last - 1}" in drawn(ui)[-3])
            pane = drawn(ui)[1:-2]  # under the top bar, above the status bar and input line
            assert [row for row in pane if "note" in row] == pane[-last:]
            assert len(pane[-last:]) == last
        finally:
            ui.exit()
            async with asyncio.timeout(WAIT):
                await task


async def test_a_query_is_answered_in_the_pane_it_was_typed_in(start_server: StartServer) -> None:
    """Issue 12: /who #lobby typed in #dev answered, unnoticed, in #lobby's pane."""
    server = await start_server(max_per_ip=0, rate=0)
    async with terminal(await connect(address(server), nick="alice", rate=0)) as term:
        state = term.ui.state
        await eventually(lambda: state.room == "#lobby")
        term.type("/topic the lobby\r")
        await eventually(lambda: state.views["#lobby"].topic == "the lobby")
        term.type("/join #dev\r")
        await eventually(lambda: state.room == "#dev")
        lobby_lines = len(state.views["#lobby"].lines)
        term.type("/who #lobby\r")
        await term.shows("--- 1 in #lobby: alice")
        term.type("/topic #lobby\r")
        await term.shows("--- Topic of #lobby: the lobby")
        term.type("/who #nosuchroom\r")
        await term.shows("!!! ")
        assert len(state.views["#lobby"].lines) == lobby_lines  # nothing landed there
        assert state.room == "#dev"


async def test_lastlog_typed_lists_matching_lines(server: ChatServer) -> None:
    async with terminal(await connect(address(server), nick="alice")) as term:
        term.type("the deploy is done\r")
        await term.shows("<alice> the deploy is done")
        term.type("/lastlog\r")
        await term.shows("!!! Usage: /lastlog text")
        term.type("/lastlog DEPLOY\r")
        await term.shows("--- lastlog DEPLOY: 1 line(s)")


def test_a_listed_link_wraps_without_indentation_inside_it() -> None:
    url = "https://example.com/" + "b" * 100
    rows = wrap([("class:copy", url)], 40)
    assert "".join(text for row in rows for _, text in row) == url  # nothing added
    said = wrap([("class:time", "12:00 "), ("", "see " + url)], 40)
    assert said[1][0][1].startswith(" " * 6)  # other lines keep their continuation indent


def test_the_status_bar_keeps_the_rooms_when_narrow() -> None:
    """Issue 12: at 80 columns while reconnecting (50 connected) the rooms were cut off."""
    state = make_state()
    state.apply(Join(room="#release-engineering", nick="alice"))
    for _ in range(3):
        state.apply(Message(room="#dev", nick="dave", text="hi"))
    link = Link("chat.example.com:9000", status="reconnecting", retry_at=time.monotonic() + 9)
    link.attempt, link.why = 3, "Connection refused"
    wide = plain_text(status_bar(state, link))
    assert "Connection refused" in wide
    assert "3:#release-engineering" in wide
    for width, link.status in ((80, "reconnecting"), (50, "connected"), (40, "reconnecting")):
        bar = plain_text(status_bar(state, link, width))
        assert len(bar) <= width, bar
        assert "1:#lobby" in bar  # the room on screen keeps its name
        assert "2:#dev(3)" in bar or " 2(3)" in bar  # unread counts stay
        assert " 3" in bar


def test_while_scrolled_back_the_status_bar_counts_what_arrived_below() -> None:
    state = make_state()
    for n in range(30):
        state.apply(Message(room="#lobby", nick="bob", text=f"line {n}"))
    state.view.scroll = 10
    assert "more below: PgDn" in plain_text(status_bar(state, Link("x:1")))
    state.apply(Message(room="#lobby", nick="bob", text="new one"))
    state.apply(Message(room="#lobby", nick="bob", text="new two"))
    assert "2 new below: PgDn" in plain_text(status_bar(state, Link("x:1")))
    assert state.view.scroll == 12  # what the reader looks at stays still
    state.view.scroll = 0  # End, or paging down to the bottom
    assert "below" not in plain_text(status_bar(state, Link("x:1")))
    state.view.scroll = 5
    assert "more below" in plain_text(status_bar(state, Link("x:1")))  # counted afresh


def test_the_status_bar_marks_panes_with_mentions() -> None:
    state = make_state()
    state.apply(Message(room="#dev", nick="dave", text="hi"))
    assert "2:#dev(1)" in plain_text(status_bar(state, Link("x:1")))
    state.apply(Message(room="#dev", nick="dave", text="Alice?"))
    bar = status_bar(state, Link("x:1"))
    assert ("class:status.mention", "2:#dev(2!)") in bar
    assert " 2(2!)" in plain_text(status_bar(state, Link("x:1"), 20))


async def test_a_mention_rings_the_bell_once(server: ChatServer) -> None:
    rings: list[str] = []
    bob = await JsonClient.connect(server.port, nick="bob")
    conn = await connect(address(server), nick="alice")
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        ui = ChatUI(conn, highlights=["release"], bell=lambda: rings.append("ding"))
        term = Terminal(ui, keys, asyncio.create_task(ui.run()))
        await eventually(lambda: "bob" in ui.state.view.members.values())
        await bob.send({"type": "say", "text": "no one"})
        await bob.send({"type": "say", "text": "the Release is out"})
        await term.shows("<bob> the Release is out")
        assert rings == ["ding"]
        term.type("alice talks to herself\r")
        await term.shows("<alice> alice talks to herself")
        await bob.send({"type": "msg", "nick": "alice", "text": "psst"})
        await eventually(lambda: rings == ["ding", "ding"])
        assert ui.state.views["bob"].mentions == 1
        ui.exit()
        assert await term.exited() == 0
    await bob.close()


async def test_private_conversations_have_their_own_pane(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    carol = await JsonClient.connect(server.port, nick="carol")
    async with terminal(await connect(address(server), nick="alice")) as term:
        state = term.ui.state
        term.type("/query bob\r")
        await eventually(lambda: state.query == "bob")  # opened; nothing sent
        term.type("hello there\r")  # plain text here is a private message to bob
        assert (await bob.expect("private", nick="alice")).text == "hello there"
        await term.shows("[msg -> bob] <alice> hello there")
        await carol.send({"type": "msg", "nick": "alice", "text": "got a minute?"})
        await eventually(lambda: "carol" in state.views)
        assert state.views["carol"].mentions == 1  # behind, marked
        term.type("/r sure\r")  # answers carol, who wrote last
        assert (await carol.expect("private", nick="alice")).text == "sure"
        term.type("/part\r")  # not the room behind the query pane
        await term.shows("!!! This is a private conversation: /close closes it.")
        assert state.room_names() == ["#lobby"]
        term.type("/close\r")
        await eventually(lambda: "bob" not in state.views)
        term.type("\x1b1")  # Alt-1: #lobby
        await eventually(lambda: state.room == "#lobby")
        term.type("/close\r")
        await term.shows("/close only closes private conversations; use /part to leave #lobby.")
        term.type("/query bob and again\r")
        assert (await bob.expect("private", nick="alice")).text == "and again"
        await eventually(lambda: state.query == "bob")
        term.type("/help\r")
        await term.shows("/reply text, /r")
    await bob.close()
    await carol.close()


def test_highlight_is_a_repeatable_option() -> None:
    args = build_parser().parse_args(["x:1", "--highlight", "deploy", "--highlight", "ops"])
    assert args.highlight == ["deploy", "ops"]


async def test_the_status_bar_is_drawn_to_fit(server: ChatServer) -> None:
    output = ResizableOutput(rows=20, columns=50)
    conn = await connect(address(server), nick="alice", rooms=("#dev", "#release-engineering"))
    with create_pipe_input() as keys, create_app_session(input=keys, output=output):
        ui = ChatUI(conn)
        task = asyncio.create_task(ui.run())
        try:
            await eventually(lambda: ui.app.is_running and len(ui.state.views) == 3)
            ui.app.invalidate()
            await eventually(lambda: " 3" in drawn(ui)[-2] and "1:#lobby" in drawn(ui)[-2])
        finally:
            ui.exit()
            async with asyncio.timeout(WAIT):
                await task


def test_zero_width_characters_are_not_drawn() -> None:
    """Issue 12: U+200B, U+FEFF and ZWJ emoji sequences left stale characters on screen,
    because the terminal and prompt_toolkit counted their cells differently."""
    text = "a\u200bb\ufeffc \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f \u2060d"
    state = ChatState("alice")
    state.apply(Join(room="#lobby", nick="alice"))
    state.apply(Message(room="#lobby", nick="bob", text=text))
    state.apply(Topic(room="#lobby", nick="bob", text=text))
    expected = "abc \U0001f468\U0001f469\U0001f467 \u2764 d"
    for line in (*state.view.lines[-2:], top_bar(state)):
        drawn_text = plain_text(line)
        assert drawn_text.endswith(expected), repr(drawn_text)
        assert all(get_cwidth(char) > 0 for char in drawn_text), repr(drawn_text)
    rows = wrap(state.view.lines[-2], 12)
    assert all(sum(get_cwidth(f[1]) for f in row) <= 12 for row in rows)
    joined = "".join(plain_text(row) for row in rows).replace(" ", "")
    assert joined.endswith(expected.replace(" ", ""))


def bracketed(text: str) -> str:
    """``text`` as a terminal sends a paste in bracketed paste mode."""
    return f"\x1b[200~{text}\x1b[201~"


async def test_a_pasted_block_is_one_message_per_line(server: ChatServer) -> None:
    """Issue 12: a five-line paste showed an empty input line, then went as one glued line."""
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        await eventually(lambda: "bob" in term.ui.state.view.members.values())
        term.type(bracketed("line1\nline2\n\nline3\n"))
        for expected in ("line1", "line2", "line3"):
            assert (await bob.expect("message", nick="alice")).text == expected
        await term.shows("<alice> line3")
        assert term.ui.input.text == ""
        term.type(bracketed("just one line"))  # one line: into the input line, not sent
        await eventually(lambda: term.ui.input.text == "just one line")
        term.type(" more\r")
        assert (await bob.expect("message", nick="alice")).text == "just one line more"
        term.type(bracketed("/quit\n/me is not a command here"))  # pasted lines are said
        assert (await bob.expect("message", nick="alice")).text == "/quit"
        assert (await bob.expect("message", nick="alice")).text == "/me is not a command here"
        assert not term.task.done()
    await bob.close()


async def test_a_long_paste_asks_first(server: ChatServer) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    async with terminal(await connect(address(server), nick="alice")) as term:
        state = term.ui.state
        await eventually(lambda: "bob" in state.view.members.values())
        seven = "\n".join(f"row {i}" for i in range(7))
        term.type(bracketed(seven))
        await term.shows("send 7 lines to #lobby? y/n")
        assert plain_text(prompt_line(state)) == "send 7 lines to #lobby? y/n "
        term.type("x")  # other keys wait for the answer
        term.type("y")
        for i in range(7):
            assert (await bob.expect("message", nick="alice")).text == f"row {i}"
        await term.shows("<alice> row 6")
        assert term.ui.input.text == ""
        assert plain_text(prompt_line(state)) == "#lobby alice> "
        for answer in ("n", "\x1b"):  # n or Esc: not sent, and the pane says so
            term.type(bracketed(seven))
            await eventually(lambda: state.paste_waiting is not None)
            term.type(answer)
            await eventually(lambda: state.paste_waiting is None)
            await term.shows("--- Pasted 7 lines: not sent.")
            state.view.lines.clear()
        term.type("after\r")
        assert (await bob.expect("message", nick="alice")).text == "after"  # no row was sent
    await bob.close()


# --- a nickname refused at start ------------------------------------------------------------


async def test_a_taken_nickname_at_start_is_asked_again(server: ChatServer) -> None:
    """Issue 12: a taken nickname ended the full-screen client; now it asks for another."""
    bob = await JsonClient.connect(server.port, nick="bob")
    asked: list[tuple[str, str]] = []
    answers = iter(["BOB", "robert"])  # the first is bob again, in another case

    async def ask(refused: str, why: str) -> str | None:
        asked.append((refused, why))
        return next(answers)

    connector = connect(address(server), nick="bob")
    conn, more = await open_first(connector, ask)
    assert conn.nickname == "robert"
    assert [nick for nick, _ in asked] == ["bob", "BOB"]
    assert "already in use" in asked[0][1]
    assert (await bob.expect("join", nick="robert")).room == "#lobby"
    await conn.quit()
    await more.aclose()

    async def give_up(refused: str, why: str) -> str | None:
        return None

    with pytest.raises(NickUnavailable):
        await open_first(connect(address(server), nick="bob"), give_up)
    with pytest.raises(NickUnavailable):  # without a way to ask, as line mode is
        await open_first(connect(address(server), nick="bob"))
    await bob.close()


async def test_the_terminal_asks_for_another_nickname_before_the_screen(
    server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bob = await JsonClient.connect(server.port, nick="bob")
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        task = asyncio.create_task(
            run_tui(connect(address(server), nick="bob"), ask=ask_another_nick)
        )
        keys.send_text("\x159lives\r")  # Ctrl-U empties the offered "bob"; 9lives is invalid
        keys.send_text("\x15alice\r")
        assert (await bob.expect("join", nick="alice")).room == "#lobby"
        keys.send_text("/quit\r")  # the full-screen UI, now
        async with asyncio.timeout(WAIT):
            assert await task == 0
        said = capsys.readouterr().out
        assert "chat-client: nickname 'bob' unavailable: " in said
        assert "already in use" in said
        assert "A nickname must start with a letter" in said  # 9lives: asked again
        task = asyncio.create_task(
            run_tui(connect(address(server), nick="bob"), ask=ask_another_nick)
        )
        keys.send_text("\x15\x04")  # Ctrl-D on an empty line: give up
        async with asyncio.timeout(WAIT):
            assert await task == 1
        assert "chat-client: cannot connect: nickname 'bob' unavailable" in capsys.readouterr().err
    await bob.close()


# --- the keys and their help ----------------------------------------------------------------


def test_help_names_every_key_bound_and_the_docs_list_the_same() -> None:
    """Issue 12: /help left out Alt-Left and Alt-Right."""
    state = ChatState("alice")
    bindings = build_key_bindings(
        state,
        MessagePane(state),
        input_line(state, InMemoryHistory(), lambda _: False),
        lambda: None,
        paste=lambda _: None,
        answer_paste=lambda **_: None,
    )
    named = {  # how the help names each key sequence bound
        ("pageup",): "PageUp",
        ("pagedown",): "PageDown",
        ("c-n",): "Ctrl-N",
        ("c-p",): "Ctrl-P",
        ("escape", "right"): "Alt-Right",
        ("escape", "left"): "Alt-Left",
        **{("escape", str(n)): "Alt-1 .. Alt-9" for n in range(1, 10)},
        ("c-c",): "Ctrl-C",
        ("c-d",): "Ctrl-D",
        ("<bracketed-paste>",): "paste",
        ("y",): "y / n or Esc",
        ("Y",): "y / n or Esc",
        ("n",): "y / n or Esc",
        ("N",): "y / n or Esc",
        ("escape",): "y / n or Esc",
        ("<any>",): "y / n or Esc",
        ("c-m",): "y / n or Esc",
    }
    for binding in bindings.bindings:
        keys = tuple(str(getattr(k, "value", k)) for k in binding.keys)
        assert keys in named, f"{keys} is bound but not in the help"
        assert named[keys] in KEYS_HELP
    docs = (Path(__file__).parent.parent / "docs" / "client.md").read_text()
    for row in KEYS_HELP.split("\n")[1:]:
        key = row[:29].strip()
        assert f"| {key} |" in docs, key
