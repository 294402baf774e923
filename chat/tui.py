"""``chat-client``: a full-screen prompt_toolkit UI on :mod:`chat.client`, or plain lines in pipes.

Design
------
* **One pane per room**, like irssi or WeeChat windows: a busy room cannot bury a quiet one,
  the status bar can count unread lines per room, and the member list belongs to the pane
  you see. Private messages, errors and server notices appear in the pane you are looking
  at, so they are never hidden. ``/join #room`` on a room you are in switches to it; so do
  Ctrl-N/Ctrl-P and Alt-1..9.
* **Cheap redraws.** The message pane is a :class:`MessagePane` control that wraps and
  renders only the lines that fit on screen, so drawing does not cost more as the
  scrollback (capped at :data:`SCROLLBACK` lines per room) fills, and a burst of messages
  costs one redraw per frame (``min_redraw_interval``), not one per message.
* **One event loop, nothing blocks it.** The socket is read by the client library's task;
  :meth:`ChatUI._pump` only updates in-memory state and invalidates; typed lines go to a
  queue that a sender task works through, so a slow answer never stalls the keyboard.
* **Untrusted text stays text.** Everything from the network goes through
  :func:`chat.protocol.sanitize` and is only ever put into ``(style, text)`` fragments:
  never ``ANSI(...)`` or ``HTML(...)``, so no peer can reach the terminal.

:class:`ChatState` holds what is shown and knows nothing about prompt_toolkit's
application, so tests drive it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, TextIO

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition, has_completions
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import FileHistory, History, InMemoryHistory, ThreadedHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import (
    ConditionalContainer,
    Float,
    FloatContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    UIContent,
    UIControl,
    VSplit,
    Window,
)
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.shortcuts import prompt as ask
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth
from prompt_toolkit.widgets import TextArea

from chat import __version__
from chat.client import Connect, Connection, connect, parse_address
from chat.errors import ConnectionLost, ErrorCode, NickUnavailable, ProtocolError, ServerError
from chat.protocol import (
    COMMANDS,
    Action,
    Bye,
    Command,
    Error,
    Event,
    HelpCommand,
    Join,
    JoinCommand,
    MeCommand,
    Message,
    MsgCommand,
    Nick,
    NickCommand,
    Notice,
    Part,
    PartCommand,
    PingCommand,
    Private,
    Quit,
    QuitCommand,
    RoomList,
    RoomsCommand,
    SayCommand,
    Topic,
    TopicCommand,
    Welcome,
    Who,
    WhoCommand,
    help_text,
    nick_key,
    parse_text_command,
    room_key,
    sanitize,
    validate_nick,
)

__all__ = [
    "SCROLLBACK",
    "ChatCompleter",
    "ChatState",
    "ChatUI",
    "MessagePane",
    "RoomView",
    "build_key_bindings",
    "execute",
    "format_event",
    "history_path",
    "main",
    "nick_style",
    "run_plain",
    "run_tui",
]

SCROLLBACK: Final = 2000  # lines kept per room
MEMBERS_WIDTH: Final = 18
WIDE_ENOUGH: Final = 72  # columns before the member list is worth its space
CONTINUATION_INDENT: Final = 6  # wrapped lines start under the text, after "HH:MM "
NICK_COLOURS: Final = (
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)  # no red: red means an error
LOCAL_COMMANDS: Final = {
    "clear": ("/clear", "Clear this room's pane (the server is not told)."),
    "exit": ("/exit", "Same as /quit."),
}
ROOM_ARGUMENT: Final = frozenset({"/join", "/j", "/part", "/who", "/names", "/topic"})
KEYS_HELP: Final = """Keys:
  Enter                send the line          Up/Down        walk input history
  Tab / Shift-Tab      complete /commands, nicknames, #rooms
  PageUp/PageDown      scroll this room       Ctrl-N/Ctrl-P  next/previous room
  Alt-1..9             go to room 1..9        Ctrl-C/Ctrl-D  quit"""
# Errors that mean "your say/me/msg was refused": it will never be echoed back.
_REFUSALS: Final = frozenset(
    {
        ErrorCode.NOT_IN_ROOM,
        ErrorCode.NO_ACTIVE_ROOM,
        ErrorCode.NO_SUCH_NICK,
        ErrorCode.FLOOD,
        ErrorCode.LINE_TOO_LONG,
        ErrorCode.BAD_ARGUMENTS,
        ErrorCode.ROOM_INVALID,
    }
)

STYLE: Final = Style.from_dict(
    {
        "topbar": "bg:ansiblue ansiwhite",
        "status": "bg:ansiblue ansiwhite",
        "status.up": "bold",
        "status.down": "bg:ansired ansiwhite bold",
        "status.active": "bold reverse",
        "status.unread": "bold ansiyellow",
        "status.more": "bg:ansiyellow ansiblack bold",
        "time": "ansibrightblack",
        "punct": "ansibrightblack",
        "own": "bold reverse",
        "action": "italic",
        "private": "ansimagenta bold",
        "system": "ansibrightblack",
        "error": "ansired bold",
        "history": "ansibrightblack",
        "members.title": "bold underline",
        "separator": "ansibrightblack",
        "prompt": "bold",
        "prompt.room": "ansicyan bold",
    }
)


# --- formatting: events become styled lines ---------------------------------------------------


def clean(text: str | None) -> str:
    """Peer text made safe to draw: no control characters, tabs as spaces."""
    return sanitize(text or "").replace("\t", "    ")


def nick_style(nick: str) -> str:
    """A colour per nickname, the same in every run (crc32, not the salted ``hash``)."""
    return NICK_COLOURS[zlib.crc32(nick_key(nick).encode()) % len(NICK_COLOURS)]


def _stamp(ts: float, *, history: bool = False) -> str:
    when = time.localtime(ts)
    if history and time.strftime("%Y%m%d", when) != time.strftime("%Y%m%d"):
        return time.strftime("%b %d %H:%M ", when)
    return time.strftime("%H:%M ", when)


def format_event(event: Event, me: str) -> list[StyleAndTextTuples]:
    """The lines that show ``event`` to ``me``: timestamp, then nick colours and classes."""
    history = bool(getattr(event, "history", False))
    stamp = ("class:time", _stamp(event.ts, history=history))
    nick = clean(event.nick)
    own = bool(event.nick) and nick_key(nick) == nick_key(me)
    who = ("class:own " if own else "") + nick_style(nick)
    dim = "class:history " if history else ""
    room = clean(event.room)
    text = clean(event.text)

    def system(line: str) -> StyleAndTextTuples:
        return [stamp, ("class:system", line)]

    match event:
        case Message():
            return [
                [
                    stamp,
                    (dim + "class:punct", "<"),
                    (dim + who, nick),
                    (dim + "class:punct", "> "),
                    (dim.strip(), text),
                ]
            ]
        case Action():
            return [[stamp, (dim + "class:action", "* "), (dim + who, nick), (dim, " " + text)]]
        case Private(echo=True):
            target = clean(event.target)
            return [[stamp, ("class:private", f"[msg -> {target}] <{nick}> {text}")]]
        case Private():
            return [[stamp, ("class:private", f"[msg] <{nick}> {text}")]]
        case Join():
            return [system(f"--> {nick} joined {room}")]
        case Part():
            return [system(f"<-- {nick} left {room}" + (f" ({text})" if text else ""))]
        case Quit():
            return [system(f"<-- {nick} quit" + (f" ({text})" if text else ""))]
        case Nick():
            return [system(f"--- {nick} is now known as {clean(event.new_nick)}")]
        case Topic() if event.nick:
            return [system(f"--- {nick} set the topic of {room}: {text}")]
        case Topic():
            return [system(f"--- Topic of {room}: {text}" if text else f"--- {room} has no topic")]
        case Who():
            members = ", ".join(clean(m) for m in event.members)
            return [system(f"--- {len(event.members)} in {room}: {members}")]
        case RoomList():
            lines = [system(f"--- {len(event.rooms)} room(s):")]
            for info in event.rooms:
                topic = f": {clean(info.topic)}" if info.topic else ""
                lines.append(system(f"---   {clean(info.room)} ({info.members}){topic}"))
            return lines
        case Error():
            return [[stamp, ("class:error", f"!!! {text}")]]
        case Bye():
            style = "class:system" if event.code == ErrorCode.QUIT else "class:error"
            return [[stamp, (style, f"!!! Closing connection: {text}")]]
        case Welcome():
            return [system(f"--- {text}")]
    return [system(f"--- {clean(line)}") for line in (event.text or "").split("\n")]


def wrap(line: StyleAndTextTuples, width: int) -> list[StyleAndTextTuples]:
    """Cut one styled line into rows of at most ``width`` cells (wide characters count 2),
    breaking after a space where there is one; continuation rows are indented."""
    chars = [(fragment[0], char) for fragment in line for char in fragment[1]]
    indent = CONTINUATION_INDENT if width > 3 * CONTINUATION_INDENT else 0
    rows: list[StyleAndTextTuples] = []
    start = 0
    while start < len(chars) or not rows:
        room = width - (indent if rows else 0)
        end, column, last_space = start, 0, -1
        while end < len(chars):
            cells = get_cwidth(chars[end][1])
            if column + cells > room and end > start:
                break
            if chars[end][1] == " ":
                last_space = end
            column += cells
            end += 1
        if end < len(chars) and last_space > start:
            end = last_space + 1
        row: StyleAndTextTuples = [("", " " * indent)] if rows and indent else []
        for style, char in chars[start:end]:
            if row and row[-1][0] == style:
                row[-1] = (style, row[-1][1] + char)
            else:
                row.append((style, char))
        rows.append(row)
        start = end
    return rows


def plain_text(fragments: StyleAndTextTuples) -> str:
    return "".join(fragment[1] for fragment in fragments)


# --- state: what the panes show ---------------------------------------------------------------


class RoomView:
    """One pane: a room's capped scrollback, its members and topic, unread count, scroll."""

    def __init__(self, name: str, scrollback: int = SCROLLBACK) -> None:
        self.name = name
        self.scrollback = scrollback
        self.lines: list[StyleAndTextTuples] = []
        self.members: dict[str, str] = {}  # nick_key -> nick
        self.topic = ""
        self.unread = 0
        self.scroll = 0  # lines scrolled back from the newest; 0 follows new lines
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    def add(self, line: StyleAndTextTuples) -> None:
        self.lines.append(line)
        if len(self.lines) > self.scrollback:
            del self.lines[0]
        if self.scroll:  # keep what the reader is looking at still
            self.scroll = min(self.scroll + 1, len(self.lines) - 1)

    def first_sight(self, event_id: str) -> bool:
        """False for a message already shown (history replayed after a reconnection)."""
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > self.scrollback:
            self._seen.discard(self._seen_order.popleft())
        return True

    def sorted_members(self) -> list[str]:
        return sorted(self.members.values(), key=nick_key)


class ChatState:
    """Everything the UI shows, updated by :meth:`apply`; no application needed."""

    def __init__(self, nick: str, scrollback: int = SCROLLBACK) -> None:
        self.nick = nick
        self.scrollback = scrollback
        self.views: dict[str, RoomView] = {}  # room_key -> view, in join order
        self.active = ""  # key of the view on screen; "" when in no room
        self.nowhere = RoomView("(no room)", scrollback)
        self.known_rooms: dict[str, str] = {}
        self.switch_to: set[str] = set()  # rooms the user asked to join: show them on arrival
        # Chat lines sent but not yet echoed back: (kind, room or nick key, text).
        self.pending: list[tuple[str, str, str]] = []

    @property
    def view(self) -> RoomView:
        return self.views.get(self.active, self.nowhere)

    @property
    def room(self) -> str | None:
        """The active room's name, or None when in no room."""
        view = self.views.get(self.active)
        return view.name if view else None

    def _own(self, nick: str | None) -> bool:
        return nick is not None and nick_key(nick) == nick_key(self.nick)

    # --- showing ---------------------------------------------------------------------------

    def show(self, event: Event, view: RoomView | None = None, *, unread: bool = False) -> None:
        target = view or self.view
        for line in format_event(event, self.nick):
            target.add(line)
            if unread and target is not self.view:
                target.unread += 1

    def note(self, text: str, style: str = "class:system") -> None:
        """A line from the client itself, in the pane on screen."""
        self.view.add([("class:time", _stamp(time.time())), (style, text)])

    def error(self, text: str) -> None:
        self.note(f"!!! {text}", "class:error")

    # --- switching -------------------------------------------------------------------------

    def switch(self, key: str) -> None:
        if key in self.views:
            self.active = key
            self.views[key].unread = 0

    def cycle(self, step: int) -> None:
        keys = list(self.views)
        if keys:
            index = keys.index(self.active) if self.active in keys else 0
            self.switch(keys[(index + step) % len(keys)])

    def switch_number(self, number: int) -> None:
        keys = list(self.views)
        if 1 <= number <= len(keys):
            self.switch(keys[number - 1])

    # --- completion sources ----------------------------------------------------------------

    def nicks(self) -> list[str]:
        """Nicknames to complete: the active room's first, then everyone else we have seen."""
        found = dict(self.view.members)
        for view in self.views.values():
            for key, nick in view.members.items():
                found.setdefault(key, nick)
        found.pop(nick_key(self.nick), None)
        return list(found.values())

    def rooms(self) -> list[str]:
        found = {key: view.name for key, view in self.views.items()}
        for key, name in self.known_rooms.items():
            found.setdefault(key, name)
        return list(found.values())

    # --- delivery confirmation -------------------------------------------------------------

    def sent(self, kind: str, where: str, text: str) -> None:
        self.pending.append((kind, where, text))

    def confirm(self, kind: str, where: str, text: str) -> None:
        """The server echoed (or refused) this line: it is no longer in doubt."""
        with contextlib.suppress(ValueError):
            self.pending.remove((kind, where, text))

    def connection_lost(self, why: str) -> None:
        """Say plainly that we are down, and which of our lines may not have arrived."""
        self.error(f"{why.rstrip('.')}. Reconnecting; lines you type meanwhile are not sent.")
        for _, _, text in self.pending:
            self.error(f"Not confirmed by the server before the connection dropped: {text}")
        self.pending.clear()

    # --- events ----------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Update the state for one event and show it in the right pane."""
        own = self._own(event.nick)
        view = self.views.get(room_key(event.room)) if event.room else None
        match event:
            case Message() | Action():
                target = view or self.view
                if not target.first_sight(event.id):
                    return
                if own and not event.history:
                    kind = "say" if isinstance(event, Message) else "me"
                    self.confirm(kind, room_key(event.room or ""), event.text)
                self.show(event, target, unread=not event.history)
            case Private():
                if event.echo:
                    self.confirm("msg", nick_key(event.target), event.text)
                self.show(event)
            case Join(room=str(room), nick=str(nick)):
                key = room_key(room)
                if own:
                    view = self.views.setdefault(key, view or RoomView(room, self.scrollback))
                    self.known_rooms[key] = room
                    if key in self.switch_to or not self.active:
                        self.switch_to.discard(key)
                        self.switch(key)
                if view is not None:
                    view.members[nick_key(nick)] = nick
                self.show(event, view)
            case Part(room=str(room), nick=str(nick)):
                if own and view is not None:
                    del self.views[room_key(room)]
                    if self.active == room_key(room):
                        self.active = next(reversed(self.views), "")
                    self.show(event)
                else:
                    if view is not None:
                        view.members.pop(nick_key(nick), None)
                    self.show(event, view)
            case Quit(nick=str(nick)):
                for each in self.views.values():
                    if each.members.pop(nick_key(nick), None) is not None:
                        self.show(event, each)
            case Nick(nick=str(nick), new_nick=new):
                if own:
                    self.nick = new
                shown = own
                for each in self.views.values():
                    if each.members.pop(nick_key(nick), None) is not None:
                        each.members[nick_key(new)] = new
                        self.show(event, each)
                        shown = shown or each is self.view
                if own and not shown:
                    self.show(event)
            case Topic():
                if view is not None:
                    view.topic = clean(event.text)
                self.show(event, view)
            case Who():
                if view is not None:
                    view.members = {nick_key(m): m for m in event.members}
                self.show(event, view)
            case RoomList():
                self.known_rooms.update((room_key(i.room), i.room) for i in event.rooms)
                self.show(event)
            case Error():
                if event.code in _REFUSALS and self.pending:
                    self.pending.pop(0)
                self.show(event)
            case Welcome():
                self.nick = event.nick or self.nick
                self.show(event)
            case _:
                self.show(event, view)


# --- prompt_toolkit pieces ------------------------------------------------------------------------


class MessagePane(UIControl):
    """The active room's lines, bottom-aligned, rendering only what fits on screen."""

    def __init__(self, state: ChatState) -> None:
        self.state = state
        self.height = 20  # of the last render: PageUp/PageDown move by about this much

    def is_focusable(self) -> bool:
        return False

    def rows(self, width: int, height: int) -> list[StyleAndTextTuples]:
        """The rows on screen: the newest lines at the bottom, or, scrolled back to the
        oldest line, that line at the top."""
        view = self.state.view
        rows: list[StyleAndTextTuples] = []
        bottom = len(view.lines) - 1 - view.scroll
        index = bottom
        while index >= 0 and len(rows) < height:
            rows[:0] = wrap(view.lines[index], width)
            index -= 1
        if index < 0 and view.scroll:
            below = bottom + 1
            while len(rows) < height and below < len(view.lines):
                rows += wrap(view.lines[below], width)
                below += 1
            rows = rows[:height]
        rows = rows[len(rows) - height :] if height > 0 else []
        return [[] for _ in range(height - len(rows))] + rows

    def create_content(self, width: int, height: int) -> UIContent:
        self.height = height
        rows = self.rows(width, height)
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows), show_cursor=False)

    def page(self, direction: int) -> None:
        """Scroll by a screen: +1 towards older lines, -1 towards newer."""
        view = self.state.view
        step = max(1, self.height - 2) * direction
        view.scroll = max(0, min(len(view.lines) - self.height, view.scroll + step))


class ChatCompleter(Completer):
    """Tab completion: /commands at the start of a line, #rooms where a room is expected or a
    word starts with '#', nicknames elsewhere (with ': ' when addressing someone)."""

    def __init__(self, state: ChatState) -> None:
        self.state = state

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        before = document.text_before_cursor
        word = before.rsplit(" ", 1)[-1]
        words = before.split()
        command = words[0].lower() if before.startswith("/") and words else ""
        commands = {**{name: usage for name, (usage, _) in COMMANDS.items()}}
        commands.update((name, usage) for name, (usage, _) in LOCAL_COMMANDS.items())
        if command and " " not in before:
            yield from self._matching(word, ("/" + n for n in sorted(commands)), suffix=" ")
        elif command == "/help" and len(words) + before.endswith(" ") == 2:
            yield from self._matching(word, sorted(commands))
        elif word.startswith("#") or (
            command in ROOM_ARGUMENT and len(words) + before.endswith(" ") == 2
        ):
            yield from self._matching(word, self.state.rooms(), suffix=" ")
        else:
            suffix = ": " if word == before else " "
            yield from self._matching(word, self.state.nicks(), suffix=suffix)

    @staticmethod
    def _matching(word: str, names: Iterable[str], suffix: str = "") -> Iterator[Completion]:
        prefix = word.lower()
        for name in names:
            if name.lower().startswith(prefix):
                yield Completion(name + suffix, start_position=-len(word), display=name)


def build_key_bindings(ui: ChatUI) -> KeyBindings:
    """Keys added to prompt_toolkit's Emacs defaults, which already give line editing,
    Up/Down through history and Tab/Shift-Tab completion."""
    bindings = KeyBindings()
    input_empty = Condition(lambda: not ui.input.text)

    @bindings.add("pageup")
    def _older(event: KeyPressEvent) -> None:
        """Scroll the message pane a screen back (the status bar says when you are)."""
        ui.pane.page(+1)

    @bindings.add("pagedown")
    def _newer(event: KeyPressEvent) -> None:
        """Scroll a screen forward; at the bottom, new lines follow again."""
        ui.pane.page(-1)

    @bindings.add("c-n", filter=~has_completions)
    @bindings.add("escape", "right")
    def _next_room(event: KeyPressEvent) -> None:
        """Show the next room's pane (the completion menu keeps Ctrl-N while open)."""
        ui.state.cycle(+1)

    @bindings.add("c-p", filter=~has_completions)
    @bindings.add("escape", "left")
    def _previous_room(event: KeyPressEvent) -> None:
        """Show the previous room's pane."""
        ui.state.cycle(-1)

    def _go_to(number: int) -> None:
        @bindings.add("escape", str(number))
        def _room_n(event: KeyPressEvent) -> None:
            """Alt-N shows room N, numbered as in the status bar."""
            ui.state.switch_number(number)

    for number in range(1, 10):
        _go_to(number)

    @bindings.add("c-c")
    @bindings.add("c-d", filter=input_empty)
    def _quit(event: KeyPressEvent) -> None:
        """Quit cleanly: leave the chat, restore the terminal (Ctrl-D only on an empty line)."""
        ui.exit()

    return bindings


# --- running commands (shared by the UI and the line mode) ---------------------------------------


async def execute(conn: Connection, command: Command, room: str | None) -> Event | None:
    """Carry out one parsed command on ``conn``; ``room`` fills in an omitted room.

    Returns an event to show for queries (who, rooms, topic, ping), None otherwise. Raises
    what the client library raises (ServerError, NickUnavailable, ConnectionLost, TimeoutError).
    """
    match command:
        case SayCommand(text=text, room=where):
            await conn.say(text, where or room)
        case MeCommand(text=text, room=where):
            await conn.me(text, where or room)
        case MsgCommand(nick=nick, text=text):
            await conn.msg(nick, text)
        case JoinCommand(room=where):
            await conn.join(where)
        case PartCommand(room=where, reason=reason):
            await conn.part(where or room, reason)
        case RoomsCommand():
            return RoomList(rooms=await conn.rooms())
        case WhoCommand(room=where):
            members = await conn.who(where or room)
            return Who(room=where or room, members=members)
        case TopicCommand(room=where, text=None):
            return Topic(room=where or room, text=await conn.topic(where or room))
        case TopicCommand(room=where, text=str(text)):
            await conn.topic(where or room, text)
        case NickCommand(nick=nick):
            await conn.nick(nick)
        case PingCommand(token=token):
            rtt = await conn.ping(token or None)
            return Notice(text=f"pong from the server in {rtt * 1000:.1f} ms")
        case HelpCommand(command=name):
            return Notice(text=help_text(name))
        case _:
            await conn.send(command)
    return None


def _describe(exc: Exception) -> str:
    if isinstance(exc, NickUnavailable):
        return f"nickname {exc.nick!r} unavailable: {exc.reason}"
    if isinstance(exc, ServerError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "no answer from the server in time"
    return str(exc)


# --- the full-screen UI ---------------------------------------------------------------------------


class ChatUI:
    """The application: layout, keys, and the tasks that connect it to a :class:`Connection`.

    ``more`` yields replacement connections after a loss (``aiter(connect(...))``); without it
    a lost connection just stays down.
    """

    def __init__(
        self,
        first: Connection,
        more: AsyncGenerator[Connection, None] | None = None,
        *,
        history: History | None = None,
    ) -> None:
        self.state = ChatState(first.nickname)
        self.address = first.address
        self.conn: Connection | None = first
        self.link = "connected"
        self._more = more
        self._retry_at = 0.0
        self._retry_attempt = 0
        self._retry_why = ""
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._quit_reason = ""
        self._exiting = False
        self.pane = MessagePane(self.state)
        self.completer = ChatCompleter(self.state)
        self.input = TextArea(
            height=1,
            multiline=False,
            wrap_lines=False,
            prompt=self._prompt,
            completer=self.completer,
            complete_while_typing=False,
            history=history if history is not None else InMemoryHistory(),
            accept_handler=self._accept,
        )
        wide = Condition(lambda: self.app.output.get_size().columns >= WIDE_ENOUGH)
        body = HSplit(
            [
                Window(FormattedTextControl(self._topbar), height=1, style="class:topbar"),
                VSplit(
                    [
                        Window(self.pane),
                        ConditionalContainer(
                            VSplit(
                                [
                                    Window(width=1, char="|", style="class:separator"),
                                    Window(
                                        FormattedTextControl(self._members),
                                        width=MEMBERS_WIDTH,
                                    ),
                                ]
                            ),
                            filter=wide,
                        ),
                    ]
                ),
                Window(FormattedTextControl(self._statusbar), height=1, style="class:status"),
                self.input,
            ]
        )
        root = FloatContainer(
            body,
            floats=[
                Float(
                    xcursor=True,
                    ycursor=True,
                    content=CompletionsMenu(max_height=8, scroll_offset=1),
                )
            ],
        )
        self.app: Application[int] = Application(
            layout=Layout(root, focused_element=self.input),
            key_bindings=build_key_bindings(self),
            style=STYLE,
            full_screen=True,
            min_redraw_interval=0.02,
        )

    # --- drawing ---------------------------------------------------------------------------

    def _prompt(self) -> StyleAndTextTuples:
        nick = self.state.nick
        return [
            ("class:prompt.room", f"{self.state.view.name} "),
            (nick_style(nick) + " bold", nick),
            ("class:prompt", "> "),
        ]

    def _topbar(self) -> StyleAndTextTuples:
        view = self.state.view
        return [("", f" {view.name}: {view.topic}" if view.topic else f" {view.name}")]

    def _members(self) -> StyleAndTextTuples:
        view = self.state.view
        out: StyleAndTextTuples = [("class:members.title", f" {len(view.members)} here\n")]
        for nick in view.sorted_members():
            own = " bold" if nick_key(nick) == nick_key(self.state.nick) else ""
            out += [("", " "), (nick_style(nick) + own, nick), ("", "\n")]
        return out

    def _statusbar(self) -> StyleAndTextTuples:
        out: StyleAndTextTuples = [("", " ")]
        if self.link == "connected":
            out.append(("class:status.up", "connected"))
        elif self.link == "reconnecting":
            wait = self._retry_at - time.monotonic()
            when = f"in {wait:.0f}s" if wait >= 0.5 else "now"
            why = f": {self._retry_why}" if self._retry_why else ""
            text = f" reconnecting {when} (attempt {self._retry_attempt}{why}) "
            out.append(("class:status.down", text))
        else:
            out.append(("class:status.down", f" {self.link} "))
        out.append(("", f" {self.state.nick}@{self.address} "))
        for number, (key, view) in enumerate(self.state.views.items(), 1):
            label = f"{number}:{view.name}"
            if key == self.state.active:
                out += [("", " "), ("class:status.active", label)]
            elif view.unread:
                out += [("", " "), ("class:status.unread", f"{label}({view.unread})")]
            else:
                out.append(("", f" {label}"))
        if self.state.view.scroll:
            out += [("", " "), ("class:status.more", " more below: PgDn ")]
        return out

    # --- input -----------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        if buffer.text.strip():
            self._lines.put_nowait(buffer.text)
        return False  # clear the line; prompt_toolkit has added it to the history

    async def _send_loop(self) -> None:
        """Run typed lines one at a time, in order, off the keyboard's path."""
        while True:
            line = await self._lines.get()
            await self.submit(line)
            self.app.invalidate()

    async def submit(self, line: str) -> None:
        """What Enter does with a line: a local command, or a command for the server."""
        text = sanitize(line)
        word = text.split(" ", 1)[0].lower()
        if word == "/clear":
            self.state.view.lines.clear()
            self.state.view.scroll = 0
            return
        if word == "/exit":
            text = "/quit" + text[len(word) :]
        try:
            command = parse_text_command(text)
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
                    help_lines = help_text(name) if name else help_text(None) + "\n" + KEYS_HELP
                except ProtocolError as exc:
                    self.state.error(exc.message)
                    return
                for help_line in help_lines.split("\n"):
                    self.state.note(help_line)
                return
            case JoinCommand(room=room) if room_key(room) in self.state.views:
                self.state.switch(room_key(room))
                return
        await self._send(command, text)

    async def _send(self, command: Command, text: str) -> None:
        state = self.state
        conn = self.conn
        if conn is None or conn.closed:
            state.error(f"Not sent (not connected): {text}")
            return
        room = state.room
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
            state.error(f"Not sent (connection lost): {text}")
        except (ServerError, NickUnavailable, TimeoutError) as exc:
            state.error(_describe(exc))
        else:
            if shown is not None:
                state.apply(shown)

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
        self.link = "reconnecting"
        self._retry_at = time.monotonic() + delay
        self._retry_attempt = attempt
        self._retry_why = str(why).split(": ")[-1] if attempt > 1 else ""
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
            self.link = "connected"
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
                self.link = "disconnected"
                if conn.lost:
                    self.state.error(conn.describe_close())
                break
            self.link = "reconnecting"
            self.state.connection_lost(conn.describe_close())
            self.app.invalidate()
            ticker = asyncio.create_task(self._tick())
            try:
                conn = await anext(self._more)
            except StopAsyncIteration:
                conn = None
            except (ConnectionLost, NickUnavailable, ServerError) as exc:
                self.state.error(f"Gave up reconnecting: {_describe(exc)}")
                conn = None
            else:
                rooms = ", ".join(v.name for v in self.state.views.values()) or "no room"
                self.state.note(f"--- Reconnected as {conn.nickname}; rejoining {rooms}.")
            finally:
                ticker.cancel()
        if self.link != "connected":
            self.link = "disconnected"
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


# --- plain line mode (pipes and scripts) ----------------------------------------------------------


def plain_lines(event: Event) -> list[str]:
    """An event as the server's text dialect shows it, sanitised: one line or a few."""
    return [sanitize(line) for line in event.as_text().split("\r\n")]


def _stdin_lines(stream: BinaryIO) -> asyncio.Queue[str | None]:
    """Lines from a blocking stream (a file, a pipe or a terminal alike), read by a daemon
    thread; None at EOF. The thread waits for each line to be taken, so nothing piles up.

    It reads the file descriptor with ``os.read``: a daemon thread blocked inside a buffered
    ``readline`` holds the buffer's lock and makes the interpreter abort at exit.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
    fd = stream.fileno()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError, asyncio.CancelledError):
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def read() -> None:
        pending = b""
        try:
            while chunk := os.read(fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    put(line.decode("utf-8", "replace"))
        except OSError:
            pass
        if pending:
            put(pending.decode("utf-8", "replace"))
        put(None)

    threading.Thread(target=read, name="chat-client stdin", daemon=True).start()
    return queue


def _emit(out: TextIO, lines: Iterable[str]) -> None:
    """Print lines at once; a reader that went away (``| head``) is not an error."""
    with contextlib.suppress(BrokenPipeError):
        for line in lines:
            print(line, file=out, flush=True)


async def _print_events(conn: Connection, out: TextIO) -> None:
    async for event in conn:
        _emit(out, plain_lines(event))


async def run_plain(connector: Connect, stdin: BinaryIO, out: TextIO) -> int:
    """Line mode: each input line is sent (``/commands`` too), each event printed as a line.

    At end of input, wait until the server has handled every line, quit, print what is
    left and return 0. Returns 1 if the connection fails or is lost.
    """
    try:
        conn = await connector
    except (ConnectionLost, NickUnavailable, ServerError) as exc:
        return _fail(f"cannot connect: {_describe(exc)}")
    printer = asyncio.create_task(_print_events(conn, out))
    lines = _stdin_lines(stdin)
    room: str | None = conn.joined[-1] if conn.joined else None
    reason = ""
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, printer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                raise ConnectionLost(conn.describe_close())  # noqa: TRY301 - one exit path
            raw = getter.result()
            if raw is None:
                break
            text = sanitize(raw)
            try:
                command = parse_text_command(text)
            except ProtocolError as exc:
                _emit(out, [f"!!! {exc.message}"])
                continue
            if command is None:
                continue
            if isinstance(command, QuitCommand):
                reason = command.reason
                break
            try:
                shown = await execute(conn, command, room)
            except (ServerError, NickUnavailable, TimeoutError, ProtocolError) as exc:
                _emit(out, [f"!!! {_describe(exc)}"])
                continue
            if isinstance(command, JoinCommand | PartCommand):
                joined = {room_key(r): r for r in conn.joined}
                if isinstance(command, JoinCommand):
                    room = joined.get(room_key(command.room), room)
                elif room is None or room_key(room) not in joined:
                    room = conn.joined[-1] if conn.joined else None
            if shown is not None:
                _emit(out, plain_lines(shown))
        await conn.ping()  # its pong comes after the answers to every line we sent
        await conn.quit(reason)
    except ConnectionLost as exc:
        await conn.quit()
        await printer
        return _fail(str(exc))
    except TimeoutError:
        await conn.quit()
        await printer
        return _fail("the server did not answer in time")
    await printer
    return 0


# --- the command line -----------------------------------------------------------------------------


def history_path() -> Path:
    """Where typed lines persist: $XDG_STATE_HOME/chat/history (~/.local/state by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "chat" / "history"


def open_history() -> History:
    """The persistent history, or an in-memory one if the file cannot be written."""
    path = history_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return ThreadedHistory(FileHistory(str(path)))  # loads in a thread, not on the loop


def _fail(message: str, status: int = 1) -> int:
    print(f"chat-client: {message}", file=sys.stderr)
    return status


async def run_tui(connector: Connect, history: History | None = None) -> int:
    """Connect (a failure is one line on stderr), then run the UI until the user quits."""
    more = aiter(connector)
    try:
        first = await anext(more)
    except (ConnectionLost, NickUnavailable, ServerError) as exc:
        return _fail(f"cannot connect: {_describe(exc)}")
    ui = ChatUI(first, more, history=history if history is not None else open_history())
    connector.on_retry = ui.on_retry
    return await ui.run()


def ask_nick(default: str) -> str | None:
    """Ask for a nickname, offering ``default`` ($USER); None if the user gives up."""
    while True:
        try:
            answer = ask("Nickname: ", default=default)
        except (EOFError, KeyboardInterrupt):
            return None
        try:
            return validate_nick(answer)
        except ProtocolError as exc:
            print(exc.message)
            default = answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client",
        description="Terminal chat client. Full-screen on a terminal; line mode in pipes.",
        allow_abbrev=False,
    )
    parser.add_argument("address", metavar="host:port", help="the server, e.g. localhost:9000")
    parser.add_argument("--nick", help="your nickname (default: ask, offering $USER)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")
    parser.add_argument("--ca-file", metavar="PATH", help="also trust this CA (implies --tls)")
    parser.add_argument("--version", action="version", version=f"chat-client {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``chat-client`` console script."""
    args = build_parser().parse_args(argv)
    try:
        parse_address(args.address)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.ca_file is not None and not os.path.isfile(args.ca_file):
        return _fail(f"no such CA file: {args.ca_file}", 2)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    nick: str | None = args.nick
    if nick is None:
        user = os.environ.get("USER", "")
        nick = ask_nick(user) if interactive else user
        if not nick:
            return _fail("no nickname: use --nick NAME", 2)
    try:
        validate_nick(nick)
    except ProtocolError as exc:
        return _fail(f"invalid nickname {nick!r}: {exc.message}", 2)
    connector = connect(args.address, nick=nick, tls=args.tls, ca_file=args.ca_file)
    try:
        if interactive:
            return asyncio.run(run_tui(connector))
        return asyncio.run(run_plain(connector, sys.stdin.buffer, sys.stdout))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
