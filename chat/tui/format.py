"""Events become styled lines: timestamps, nick colours, style classes, sanitised text.

A line is a list of ``(style, text)`` fragments, the shape prompt_toolkit draws, spelt out
here as :data:`Line` so that this module and :mod:`chat.tui.state` need no prompt_toolkit.
Everything from the network goes through :func:`clean` and only ever becomes fragment
text: never ``ANSI(...)`` or ``HTML(...)``, so no peer can reach the terminal.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Iterable
from typing import Final, TypeAlias

from chat.errors import ErrorCode
from chat.protocol import (
    Action,
    Away,
    BanList,
    Bye,
    Error,
    Event,
    Ignores,
    Invite,
    Join,
    Kick,
    LoggedIn,
    Message,
    Mode,
    Modes,
    Nick,
    Part,
    Private,
    Quit,
    RoomList,
    Topic,
    Welcome,
    Who,
    Whois,
    nick_key,
    sanitize,
)

__all__ = ["NICK_COLOURS", "Line", "clean", "format_event", "nick_style", "plain_text", "stamp"]

Line: TypeAlias = list[tuple[str, str]]  # (style, text) fragments: one line of a pane

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


# Characters that take no cell of their own but change how a terminal draws their
# neighbours: zero-width spaces and joiners (emoji ZWJ sequences), the byte order mark,
# invisible marks and operators, variation selectors and tags. prompt_toolkit counts cells
# character by character, and the terminal would draw a joined emoji or an emoji-style
# variant in fewer or more cells than counted, leaving stale characters on the screen.
_ZERO_WIDTH_RE: Final = re.compile(
    "[\u00ad\u034f\u061c\u180b-\u180f\u200b-\u200f\u2060-\u206f"
    "\ufe00-\ufe0f\ufeff\U000e0000-\U000e0fff]"
)


def clean(text: str | None) -> str:
    """Peer text made safe to draw: no control characters, no zero-width characters that
    would put the screen out of step with prompt_toolkit's idea of it, tabs as spaces."""
    text = sanitize(text or "")
    if not text.isascii():
        text = _ZERO_WIDTH_RE.sub("", text)
    return text.replace("\t", "    ")


def nick_style(nick: str) -> str:
    """A colour per nickname, the same in every run (crc32, not the salted ``hash``)."""
    return NICK_COLOURS[zlib.crc32(nick_key(nick).encode()) % len(NICK_COLOURS)]


def stamp(ts: float, *, history: bool = False) -> str:
    """``HH:MM `` in local time; a line replayed from another day also gets its date."""
    when = time.localtime(ts)
    if history and time.strftime("%Y%m%d", when) != time.strftime("%Y%m%d"):
        return time.strftime("%b %d %H:%M ", when)
    return time.strftime("%H:%M ", when)


def format_event(event: Event, me: str) -> list[Line]:
    """The lines that show ``event`` to ``me``: timestamp, then nick colours and classes."""
    history = bool(getattr(event, "history", False))
    when = ("class:time", stamp(event.ts, history=history))
    nick = clean(event.nick)
    own = bool(event.nick) and nick_key(nick) == nick_key(me)
    who = ("class:own " if own else "") + nick_style(nick)
    dim = "class:history " if history else ""
    room = clean(event.room)
    text = clean(event.text)

    def system(line: str) -> Line:
        return [when, ("class:system", line)]

    match event:
        case Message():
            return [
                [
                    when,
                    (dim + "class:punct", "<"),
                    (dim + who, nick),
                    (dim + "class:punct", "> "),
                    (dim.strip(), text),
                ]
            ]
        case Action():
            return [[when, (dim + "class:action", "* "), (dim + who, nick), (dim, " " + text)]]
        case Private(echo=True):
            target = clean(event.target)
            return [[when, ("class:private", f"[msg -> {target}] <{nick}> {text}")]]
        case Private():
            return [[when, ("class:private", f"[msg] <{nick}> {text}")]]
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
            ops = {nick_key(n) for n in event.operators}
            voiced = {nick_key(n) for n in event.voiced}
            members = ", ".join(
                ("@" if nick_key(m) in ops else "+" if nick_key(m) in voiced else "") + clean(m)
                for m in event.members
            )
            return [system(f"--- {len(event.members)} in {room}: {members}")]
        case Kick():
            target = clean(event.target)
            line = f"<-- {nick} removed {target} from {room}" + (f" ({text})" if text else "")
            mine = nick_key(target) == nick_key(me)
            return [[when, ("class:error" if mine else "class:system", line)]]
        case Mode() | Modes() | Invite() | BanList() | Whois() | Away() | Ignores() | LoggedIn():
            # The server's sentences say it best; without its "[#room] ***" prefix.
            return [
                system("--- " + clean(line).split("*** ", 1)[-1].strip())
                for line in event.as_text().split("\r\n")
            ]
        case RoomList():
            lines = [system(f"--- {len(event.rooms)} room(s):")]
            for info in event.rooms:
                topic = f": {clean(info.topic)}" if info.topic else ""
                lines.append(system(f"---   {clean(info.room)} ({info.members}){topic}"))
            return lines
        case Error():
            return [[when, ("class:error", f"!!! {text}")]]
        case Bye():
            style = "class:system" if event.code == ErrorCode.QUIT else "class:error"
            return [[when, (style, f"!!! Closing connection: {text}")]]
        case Welcome():
            return [system(f"--- {text}")]
    return [system(f"--- {clean(line)}") for line in (event.text or "").split("\n")]


def plain_text(fragments: Iterable[tuple[str, str] | tuple[str, str, object]]) -> str:
    """The text of a line without its styles (prompt_toolkit's mouse-handler triples too)."""
    return "".join(fragment[1] for fragment in fragments)
