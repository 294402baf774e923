"""The full-screen application: :class:`ChatUI` ties the state, the screen and the keys to a
:class:`~chat.client.Connection`, and :func:`run_tui` connects and runs it.

One event loop, and nothing blocks it. The socket is read by the client library's task;
:meth:`ChatUI._pump` only updates in-memory state and invalidates, and a burst of messages
costs one redraw per frame (``min_redraw_interval``), not one per message. Typed lines go to
a queue that a sender task works through, so a slow answer never stalls the keyboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Final

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.history import History, InMemoryHistory

from chat.client import Connect, Connection
from chat.commands import (
    Command,
    HelpCommand,
    JoinCommand,
    MeCommand,
    MsgCommand,
    PartCommand,
    QuitCommand,
    SayCommand,
    carries_secret,
    help_text,
    parse_text_line,
)
from chat.errors import ConnectionLost, ErrorCode, NickUnavailable, ProtocolError, ServerError
from chat.protocol import nick_key, room_key, sanitize, validate_nick
from chat.tui.actions import describe, execute, fail
from chat.tui.keys import KEYS_HELP, build_key_bindings
from chat.tui.logs import PaneLog
from chat.tui.state import ChatState, Link, RoomView
from chat.tui.widgets import STYLE, MessagePane, build_layout, input_line

__all__ = ["LOCAL_HELP", "AskNick", "ChatUI", "open_first", "run_tui"]

LOCAL_HELP: Final = """The client's own commands:
  /query nick [text]   open a private conversation with nick (and say text)
  /reply text, /r      answer the last person who wrote to you privately
  /close               close the private conversation on screen (rooms: /part)
  /clear               empty the pane on screen
  /lastlog text        show again the lines of the pane on screen that contain text
  /urls                list the links in the pane on screen, each on a row, to copy
  /exit                quit"""


class ChatUI:
    """The application: layout, keys, and the tasks that connect it to a :class:`Connection`.

    ``more`` yields replacement connections after a loss (``aiter(connect(...))``); without it
    a lost connection just stays down. ``highlights`` are words that count as mentions
    besides your nickname; ``bell`` is rung once per mention (by default the terminal's).
    """

    def __init__(
        self,
        first: Connection,
        more: AsyncGenerator[Connection, None] | None = None,
        *,
        history: History | None = None,
        highlights: Iterable[str] = (),
        bell: Callable[[], None] | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.state = ChatState(first.nickname, highlights=highlights, bell=bell or self._bell)
        self.pane_log = PaneLog(log_dir) if log_dir is not None else None
        if self.pane_log is not None:
            self.state.log = self._log
        self.link = Link(first.address)
        self.conn: Connection | None = first
        self._more = more
        # Typed lines, and pasted ones as the commands they became: (command, text).
        self._lines: asyncio.Queue[str | tuple[Command, str]] = asyncio.Queue()
        self._quit_reason = ""
        self._exiting = False
        self.pane = MessagePane(self.state)
        self.input = input_line(
            self.state,
            SecretlessHistory(history if history is not None else InMemoryHistory()),
            self._accept,
        )
        self.app: Application[int] = Application(
            layout=build_layout(self.state, self.link, self.pane, self.input),
            key_bindings=build_key_bindings(
                self.state,
                self.pane,
                self.input,
                self.exit,
                paste=self.paste,
                answer_paste=self.answer_paste,
            ),
            style=STYLE,
            full_screen=True,
            min_redraw_interval=0.02,
        )

    def _bell(self) -> None:
        self.app.output.bell()

    def _log(self, pane: str, text: str) -> None:
        """``--log-dir``: queue the line; if writing has failed, say why once and stop."""
        assert self.pane_log is not None
        if self.pane_log.failure is not None:
            self.state.log = None
            self.state.error(self.pane_log.failure)
            return
        self.pane_log.write(pane, text)

    # --- input -----------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        if buffer.text.strip():
            self._lines.put_nowait(buffer.text)
        return False  # clear the line; prompt_toolkit has added it to the history

    def paste(self, text: str) -> None:
        """A bracketed paste of several lines: one message per line, to the pane on screen;
        more than five ask first (:meth:`ChatState.paste`). Pasted lines are always chat, never
        commands: a pasted ``/quit`` is said, not obeyed."""
        self._queue_paste(self.state.view, self.state.paste(text))

    def answer_paste(self, *, yes: bool) -> None:
        """y or n to "send 25 lines to #dev?"."""
        view = self.state.paste_to
        self._queue_paste(view, self.state.answer_paste(yes=yes))

    def _queue_paste(self, view: RoomView, lines: list[str]) -> None:
        if lines and view is self.state.nowhere:
            self.state.error(f"Pasted {len(lines)} lines: not sent (not in a room).")
            return
        for line in lines:
            text = sanitize(line)
            command: Command = (
                MsgCommand(nick=view.name, text=text)
                if view.query
                else SayCommand(text=text, room=view.name)
            )
            self._lines.put_nowait((command, text))
        self.app.invalidate()

    async def _send_loop(self) -> None:
        """Run typed lines one at a time, in order, off the keyboard's path."""
        while True:
            item = await self._lines.get()
            if isinstance(item, str):
                await self.submit(item)
            else:
                await self._send(*item)
            self.app.invalidate()

    async def submit(self, line: str) -> None:
        """What Enter does with a line: a local command, or a command for the server."""
        text = sanitize(line)
        word = text.split(" ", 1)[0].lower()
        if word == "/clear":
            self.state.view.lines.clear()
            self.state.view.scroll = 0
            return
        if word == "/urls":
            self.state.urls()
            return
        if word == "/lastlog":
            wanted = text[len(word) :].strip()
            if wanted:
                self.state.lastlog(wanted)
            else:
                self.state.error("Usage: /lastlog text")
            return
        if word == "/exit":
            text = "/quit" + text[len(word) :]
        if word in ("/query", "/close", "/reply", "/r"):
            text = self._private(word, text[len(word) :].strip())
            if not text:
                return
        try:
            command = parse_text_line(text, registered=True)
        except ProtocolError as exc:
            self.state.error(exc.message)
            return
        match command:
            case None:
                return
            case QuitCommand(reason=reason):
                self.exit(reason)
                return
            case HelpCommand(command=name):
                try:
                    help_lines = (
                        help_text(name)
                        if name
                        else "\n".join((help_text(None), LOCAL_HELP, KEYS_HELP))
                    )
                except ProtocolError as exc:
                    self.state.error(exc.message)
                    return
                for help_line in help_lines.split("\n"):
                    self.state.note(help_line)
                return
            case JoinCommand(room=room) if room_key(room) in self.state.views:
                self.state.switch(room_key(room))
                return
            case SayCommand(text=said, room=None) if self.state.query:
                command = MsgCommand(nick=self.state.query, text=said)
            case PartCommand(room=None) if self.state.query:
                self.state.error("This is a private conversation: /close closes it.")
                return
            case MeCommand(room=None) if self.state.query:
                self.state.error("/me works in rooms only; this is a private conversation.")
                return
        await self._send(command, text)

    def _private(self, word: str, rest: str) -> str:
        """/query, /close and /reply: the pane to open or close here; the /msg line to send
        to the server, or "" when there is nothing to send."""
        state = self.state
        if word == "/close":
            why = state.close()
            if why:
                state.error(why)
            return ""
        if word == "/query":
            nick, _, said = rest.partition(" ")
            try:
                nick = validate_nick(nick)
            except ProtocolError as exc:
                state.error(f"/query nick [text]: {exc.message}")
                return ""
            state.open_query(nick, switch=True)
            return f"/msg {nick} {said}" if said.strip() else ""
        if state.last_private is None:
            state.error("No one has written to you privately yet: nobody to /reply to.")
            return ""
        if not rest:
            state.error("/reply text: say what to answer.")
            return ""
        return f"/msg {state.last_private} {rest}"

    async def _send(self, command: Command, text: str) -> None:
        state = self.state
        conn = self.conn
        if conn is None or conn.closed:
            state.error(f"Not sent (not connected): {text}")
            return
        room = state.room
        asked_in = state.view  # answers and refusals go to the pane the line was typed in
        mine: tuple[str, str, str] | None = None
        match command:
            case SayCommand(text=said, room=where):
                mine = ("say", room_key(where or room or ""), said)
            case MeCommand(text=said, room=where):
                mine = ("me", room_key(where or room or ""), said)
            case MsgCommand(nick=nick, text=said):
                mine = ("msg", nick_key(nick), said)
            case JoinCommand(room=where):
                state.switch_to.add(room_key(where))
        if mine is not None:
            state.sent(*mine)
        try:
            shown = await execute(conn, command, room)
        except ConnectionLost:
            if mine is not None:
                state.confirm(*mine)
            state.error(f"Not sent (connection lost): {text}", state.still_open(asked_in))
        except (ServerError, NickUnavailable, TimeoutError) as exc:
            state.error(describe(exc), state.still_open(asked_in))
        else:
            if shown is not None:
                state.answer(shown, asked_in)

    def exit(self, reason: str = "") -> None:
        """Leave: the connection is quit with ``reason`` after the UI has closed."""
        if self._exiting:
            return
        self._exiting = True
        self._quit_reason = reason
        if self.app.is_running:
            self.app.exit(result=0)

    # --- the connection --------------------------------------------------------------------

    def on_retry(self, attempt: int, delay: float, why: Exception) -> None:
        """Called by :class:`~chat.client.Connect` before each wait between attempts."""
        self.link.status = "reconnecting"
        self.link.retry_at = time.monotonic() + delay
        self.link.attempt = attempt
        self.link.why = str(why).split(": ")[-1] if attempt > 1 else ""
        self.app.invalidate()

    async def _tick(self) -> None:
        """Redraw the status bar's countdown while reconnecting."""
        while True:
            await asyncio.sleep(0.5)
            self.app.invalidate()

    async def _learn_rooms(self, conn: Connection) -> None:
        """Fetch the room list quietly, so Tab can complete rooms we are not in yet."""
        with contextlib.suppress(ConnectionLost, ServerError, TimeoutError):
            rooms = await conn.rooms()
            self.state.known_rooms.update((room_key(i.room), i.room) for i in rooms)

    async def _pump(self) -> None:
        """Move events into the state; after a loss, wait for the next connection."""
        conn = self.conn
        while conn is not None:
            self.conn = conn
            self.link.status = "connected"
            self.state.nick = conn.nickname
            self.app.invalidate()
            learn = asyncio.create_task(self._learn_rooms(conn))
            count = 0
            async for event in conn:
                self.state.apply(event)
                self.app.invalidate()
                count += 1
                if count % 64 == 0:
                    await asyncio.sleep(0)  # in a burst, let keystrokes through
            self.conn = None
            learn.cancel()
            if not conn.lost or self._more is None:
                self.link.status = "disconnected"
                if conn.lost:
                    self.state.error(conn.describe_close())
                break
            self.link.status = "reconnecting"
            self.state.connection_lost(conn.describe_close())
            self.app.invalidate()
            ticker = asyncio.create_task(self._tick())
            try:
                conn = await anext(self._more)
            except StopAsyncIteration:
                conn = None
            except (ConnectionLost, NickUnavailable, ServerError) as exc:
                self.state.error(f"Gave up reconnecting: {describe(exc)}")
                conn = None
            else:
                rooms = ", ".join(self.state.room_names()) or "no room"
                self.state.note(f"--- Reconnected as {conn.nickname}; rejoining {rooms}.")
            finally:
                ticker.cancel()
        if self.link.status != "connected":
            self.link.status = "disconnected"
        self.app.invalidate()

    async def run(self) -> int:
        """Run until the user quits; then quit the connection and restore the terminal."""
        pump = asyncio.create_task(self._pump())
        sender = asyncio.create_task(self._send_loop())
        try:
            return 0 if self._exiting else await self.app.run_async()
        finally:
            for task in (sender, pump):
                task.cancel()
            await asyncio.gather(sender, pump, return_exceptions=True)
            if self.conn is not None:
                await self.conn.quit(self._quit_reason)
            if self._more is not None:
                await self._more.aclose()
            if self.pane_log is not None:
                await self.pane_log.aclose()


class SecretlessHistory(History):
    """The input history, without the lines that carry a password (``/login``,
    ``/register``...): they are neither recalled with Up nor written to the history file."""

    def __init__(self, inner: History) -> None:
        super().__init__()
        self._inner = inner

    def load_history_strings(self) -> Iterable[str]:
        return (line for line in self._inner.load_history_strings() if not carries_secret(line))

    def store_string(self, string: str) -> None:
        self._inner.store_string(string)

    def append_string(self, string: str) -> None:
        if not carries_secret(string):
            super().append_string(string)


#: Asks for another nickname after the server refused one: ``(refused, why)``, where
#: ``why`` is the refusal as one line; returns the new nickname, or None to give up. Asked
#: with ``password=True`` when the nickname is registered: the answer is its password.
AskNick = Callable[..., Awaitable[str | None]]
#: Refusals answered by asking for the nickname's password.
_ASK_PASSWORD = frozenset({ErrorCode.NICK_REGISTERED, ErrorCode.WRONG_PASSWORD})


async def open_first(
    connector: Connect, ask: AskNick | None = None
) -> tuple[Connection, AsyncGenerator[Connection, None]]:
    """The first connection, and the generator of the ones after a loss.

    A nickname the server refuses (taken, confusable, reserved, invalid) is asked again with
    ``ask`` and the connection tried again with the answer, as often as it takes; a
    registered nickname is asked its password the same way. Without ``ask``, or if ``ask``
    gives up, the refusal is raised, as every other failure is.
    """
    while True:
        more = aiter(connector)
        try:
            return await anext(more), more
        except NickUnavailable as exc:
            if ask is None:
                raise
            if exc.code in _ASK_PASSWORD:
                password = await ask(exc.nick, describe(exc), password=True)
                if password is None:
                    raise
                connector.login = (exc.nick, password)
                continue
            nick = await ask(exc.nick, describe(exc))
            if nick is None:
                raise
            connector.nick = nick


async def run_tui(
    connector: Connect,
    open_history: Callable[[], History] = InMemoryHistory,
    highlights: Iterable[str] = (),
    ask: AskNick | None = None,
    log_dir: str | None = None,
) -> int:
    """Connect (a failure is one line on stderr), then run the UI until the user quits.

    ``open_history`` makes the input history once connected (the command line passes the
    persistent one, :func:`chat.tui.cli.open_history`); ``highlights`` are the words, besides
    your nickname, that count as mentions; ``ask`` asks for another nickname when the server
    refuses one, before the screen is taken over (:func:`open_first`).
    """
    try:
        first, more = await open_first(connector, ask)
    except (ConnectionLost, NickUnavailable, ServerError) as exc:
        return fail(f"cannot connect: {describe(exc)}")
    ui = ChatUI(first, more, history=open_history(), highlights=highlights, log_dir=log_dir)
    connector.on_retry = ui.on_retry
    return await ui.run()
