"""The screen: message pane, completer, bars, input line, and the layout that holds them.

Cheap redraws: :class:`MessagePane` wraps and renders only the lines that fit on screen, so
drawing does not cost more as the scrollback (capped at :data:`~chat.tui.state.SCROLLBACK`
lines per room) fills. Rows are cut by :func:`wrap`, which lives here rather than in
:mod:`chat.tui.format` because it measures text in terminal cells with prompt_toolkit's
``get_cwidth``, and the formatting and state modules stay free of prompt_toolkit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Final

from prompt_toolkit.application.current import get_app
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.history import History
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
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth
from prompt_toolkit.widgets import TextArea

from chat.commands import COMMANDS
from chat.protocol import nick_key
from chat.tui.format import Line, nick_style
from chat.tui.state import ChatState, Link

__all__ = [
    "STYLE",
    "ChatCompleter",
    "MessagePane",
    "build_layout",
    "input_line",
    "member_list",
    "prompt_line",
    "status_bar",
    "top_bar",
    "wrap",
]

MEMBERS_WIDTH: Final = 18
WIDE_ENOUGH: Final = 72  # columns before the member list is worth its space
CONTINUATION_INDENT: Final = 6  # wrapped lines start under the text, after "HH:MM "
LOCAL_COMMANDS: Final = (
    "clear",
    "close",
    "exit",
    "lastlog",
    "urls",
    "query",
    "r",
    "reply",
)  # the client's own, handled by ChatUI.submit
# What "/" completes: every command a person can type, by name and alias, and the local ones.
COMMAND_NAMES: Final = tuple(
    sorted(
        {name for spec in COMMANDS if spec.typed for name in (spec.name, *spec.aliases)}
        | set(LOCAL_COMMANDS)
    )
)
ROOM_ARGUMENT: Final = frozenset({"/join", "/j", "/part", "/who", "/names", "/topic"})

STYLE: Final = Style.from_dict(
    {
        "topbar": "bg:ansiblue ansiwhite",
        "status": "bg:ansiblue ansiwhite",
        "status.up": "bold",
        "status.down": "bg:ansired ansiwhite bold",
        "status.active": "bold reverse",
        "status.unread": "bold ansiyellow",
        "status.mention": "bg:ansiyellow ansiblack bold",
        "status.more": "bg:ansiyellow ansiblack bold",
        "time": "ansibrightblack",
        "punct": "ansibrightblack",
        "own": "bold reverse",
        "action": "italic",
        "private": "ansimagenta bold",
        "mention": "bg:ansiyellow ansiblack",
        "system": "ansibrightblack",
        "error": "ansired bold",
        "history": "ansibrightblack",
        "marker": "ansired",
        "copy": "underline",
        "members.title": "bold underline",
        "separator": "ansibrightblack",
        "prompt": "bold",
        "prompt.room": "ansicyan bold",
        "prompt.ask": "ansiyellow bold",
    }
)


def wrap(line: Line, width: int) -> list[StyleAndTextTuples]:
    """Cut one styled line into rows of at most ``width`` cells (wide characters count 2),
    breaking after a space where there is one; continuation rows are indented."""
    chars = [(fragment[0], char) for fragment in line for char in fragment[1]]
    indent = CONTINUATION_INDENT if width > 3 * CONTINUATION_INDENT else 0
    if line and line[0][0] == "class:copy":  # a /urls row: nothing added inside a link
        indent = 0
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
        rows = rows[max(0, len(rows) - height) :] if height > 0 else []
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
        if command and " " not in before:
            yield from self._matching(word, ("/" + n for n in COMMAND_NAMES), suffix=" ")
        elif command == "/help" and len(words) + before.endswith(" ") == 2:
            yield from self._matching(word, COMMAND_NAMES)
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


# --- the bars -------------------------------------------------------------------------------


def prompt_line(state: ChatState) -> StyleAndTextTuples:
    """The input line's prompt: the room on screen and your nickname; or the question
    about a long paste while it waits for y/n."""
    if state.paste_waiting is not None:
        return [("class:prompt.ask", state.paste_question() + " ")]
    nick = state.nick
    return [
        ("class:prompt.room", f"{state.view.name} "),
        (nick_style(nick) + " bold", nick),
        ("class:prompt", "> "),
    ]


def top_bar(state: ChatState) -> StyleAndTextTuples:
    """The room on screen and its topic."""
    view = state.view
    return [("", f" {view.name}: {view.topic}" if view.topic else f" {view.name}")]


def member_list(state: ChatState) -> StyleAndTextTuples:
    """Who is in the room on screen, sorted, you in bold."""
    view = state.view
    out: StyleAndTextTuples = [("class:members.title", f" {len(view.members)} here\n")]
    for nick in view.sorted_members():
        own = " bold" if nick_key(nick) == nick_key(state.nick) else ""
        out += [("", " "), (nick_style(nick) + own, nick), ("", "\n")]
    return out


def status_bar(state: ChatState, link: Link, width: int | None = None) -> StyleAndTextTuples:
    """The link (with the countdown to the next attempt while reconnecting), who and where
    you are, the rooms numbered for Alt-N with their unread counts, and while scrolled back
    "more below", or how many lines arrived below since.

    In ``width`` columns, what matters least goes first: why the last attempt failed, the
    address, the nickname, then the words; the rooms and unread counts stay, shortened to
    their numbers (the one on screen keeps its name) if need be."""
    for link_part, who, rooms in (
        (_link(link, short=False, why=True), f" {state.nick}@{link.address} ", False),
        (_link(link, short=False, why=False), f" {state.nick}@{link.address} ", False),
        (_link(link, short=False, why=False), f" {state.nick} ", False),
        (_link(link, short=False, why=False), " ", False),
        (_link(link, short=True, why=False), " ", False),
        (_link(link, short=True, why=False), " ", True),
    ):
        out: StyleAndTextTuples = [("", " "), link_part, ("", who), *_rooms(state, short=rooms)]
        if state.view.scroll:
            below = state.view.below
            if below:
                more = f" {below} new " if rooms else f" {below} new below: PgDn "
            else:
                more = " more " if rooms else " more below: PgDn "
            out += [("", " "), ("class:status.more", more)]
        if width is None or sum(get_cwidth(fragment[1]) for fragment in out) <= width:
            break
    return out


def _link(link: Link, *, short: bool, why: bool) -> tuple[str, str]:
    if link.status == "connected":
        return ("class:status.up", "up" if short else "connected")
    if link.status == "reconnecting":
        wait = link.retry_at - time.monotonic()
        when = f"in {wait:.0f}s" if wait >= 0.5 else "now"
        if short:
            return ("class:status.down", f" retry {when} ")
        because = f": {link.why}" if why and link.why else ""
        return ("class:status.down", f" reconnecting {when} (attempt {link.attempt}{because}) ")
    return ("class:status.down", f" {link.status} ")


def _rooms(state: ChatState, *, short: bool) -> StyleAndTextTuples:
    """The rooms, numbered for Alt-N, with unread counts, ``!`` after the count of a pane
    with a line that mentions you; ``short``: numbers only but for the room on screen."""
    out: StyleAndTextTuples = []
    for number, (key, view) in enumerate(state.views.items(), 1):
        label = f"{number}:{view.name}"
        if key == state.active:
            out += [("", " "), ("class:status.active", label)]
        elif view.unread:
            mark = "!" if view.mentions else ""
            count = f"({view.unread}{mark})"
            style = "class:status.mention" if view.mentions else "class:status.unread"
            out += [("", " "), (style, f"{number}{count}" if short else f"{label}{count}")]
        else:
            out.append(("", f" {number}" if short else f" {label}"))
    return out


# --- putting it together --------------------------------------------------------------------


def input_line(state: ChatState, history: History, accept: Callable[[Buffer], bool]) -> TextArea:
    """The one-line input, with the prompt, Tab completion and ``history`` (Up/Down)."""
    return TextArea(
        height=1,
        multiline=False,
        wrap_lines=False,
        prompt=partial(prompt_line, state),
        completer=ChatCompleter(state),
        complete_while_typing=False,
        history=history,
        accept_handler=accept,
    )


def build_layout(
    state: ChatState,
    link: Link,
    pane: MessagePane,
    entry: TextArea,
) -> Layout:
    """Top bar, the pane (with the member list on a wide enough terminal), status bar and
    input line, with the completion menu floating at the cursor; ``entry`` has the focus."""
    wide = Condition(lambda: get_app().output.get_size().columns >= WIDE_ENOUGH)
    body = HSplit(
        [
            Window(FormattedTextControl(partial(top_bar, state)), height=1, style="class:topbar"),
            VSplit(
                [
                    Window(pane),
                    ConditionalContainer(
                        VSplit(
                            [
                                Window(width=1, char="|", style="class:separator"),
                                Window(
                                    FormattedTextControl(partial(member_list, state)),
                                    width=MEMBERS_WIDTH,
                                ),
                            ]
                        ),
                        filter=wide,
                    ),
                ]
            ),
            Window(
                FormattedTextControl(
                    lambda: status_bar(state, link, get_app().output.get_size().columns)
                ),
                height=1,
                style="class:status",
            ),
            entry,
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
    return Layout(root, focused_element=entry)
