"""What the client shows, as plain data: one pane per room, members, unread counts, the link.

:class:`ChatState` takes events from :mod:`chat.protocol` (:meth:`ChatState.apply`) and
decides which pane each line goes to, who is in which room and what is unread; it formats
with :mod:`chat.tui.format` and imports nothing from prompt_toolkit, so tests drive it
directly, without a terminal or a socket.

One pane per room, like irssi or WeeChat windows: a busy room cannot bury a quiet one, the
status bar can count unread lines per room, and the member list belongs to the pane you
see. A private conversation has a pane of its own too (a *query*, as irssi calls it),
opened by the first private message either way or by ``/query nick``; its key is the nick's,
which cannot clash with a room's (rooms start with '#', nicknames with a letter). Errors and
server notices appear in the pane you are looking at, so they are never hidden. A line that
mentions you (your nickname or a ``--highlight`` word, as a whole word in any case) or a
private message to you is a *mention*: highlighted, it rings the bell
(:attr:`ChatState.bell`) and marks its pane with ``!`` in the status bar. ``/join #room``
on a room you are in switches to it; so do Ctrl-N/Ctrl-P and Alt-1..9.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from chat.errors import ErrorCode
from chat.protocol import (
    Action,
    Error,
    Event,
    Join,
    Kick,
    Message,
    Nick,
    Part,
    Private,
    Quit,
    RoomList,
    Topic,
    Welcome,
    Who,
    nick_key,
    room_key,
)
from chat.tui.format import Line, clean, format_event, plain_text, stamp

__all__ = ["PASTE_ASK_OVER", "SCROLLBACK", "UNREAD_MARKER", "ChatState", "Link", "RoomView"]

SCROLLBACK: Final = 2000  # lines kept per room
PASTE_ASK_OVER: Final = 5  # a paste of more lines than this asks before sending
UNREAD_MARKER: Final = "-------- new since you last looked --------"
URLS_SHOWN: Final = 20  # /urls lists the latest links of the pane, at most this many
_URL_RE: Final = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.IGNORECASE)
# Lines refused before the server knew which command they held (the error names none).
_UNREAD_LINE: Final = frozenset({ErrorCode.FLOOD, ErrorCode.LINE_TOO_LONG})


@dataclass
class Link:
    """The connection as the status bar shows it: where to, whether it is up, the retries."""

    address: str
    status: str = "connected"  # "connected", "reconnecting" or "disconnected"
    retry_at: float = 0.0  # time.monotonic() of the next attempt while reconnecting
    attempt: int = 0
    why: str = ""  # why the previous attempt failed; "" before the second


class RoomView:
    """One pane: a room's capped scrollback, its members and topic, unread count, scroll."""

    def __init__(self, name: str, scrollback: int = SCROLLBACK, *, query: bool = False) -> None:
        self.name = name
        self.query = query  # a private conversation with the nick ``name``, not a room
        self.scrollback = scrollback
        self.lines: list[Line] = []
        self.members: dict[str, str] = {}  # nick_key -> nick
        self.topic = ""
        self.unread = 0
        self.mentions = 0  # of the unread lines, those that mention you
        self._scroll = 0  # lines scrolled back from the newest; 0 follows new lines
        self.below = 0  # lines that arrived below while scrolled back (the status bar says)
        self._marker: Line | None = None  # the "new since you last looked" line, if any
        # Where history replayed after our join goes: before the join's own lines, so that
        # times run forwards. None once live chat has started.
        self.replay_at: int | None = None
        self._divided = False  # the divider above the replayed lines is there
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    def mark_unread(self) -> None:
        """The first line since you last looked at this pane is next: a marker line goes
        above it (the one marker of the pane: an older one is taken out)."""
        if self._marker is not None:
            with contextlib.suppress(ValueError):  # scrolled out of the scrollback already
                self.lines.remove(self._marker)
        self._marker = [("class:marker", UNREAD_MARKER)]
        self.lines.append(self._marker)

    @property
    def scroll(self) -> int:
        return self._scroll

    @scroll.setter
    def scroll(self, lines: int) -> None:
        self._scroll = lines
        if not lines:  # back at the bottom: everything below has been seen
            self.below = 0

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self._trim()
        if self.scroll:  # keep what the reader is looking at still
            self.below += 1
            self.scroll = min(self.scroll + 1, len(self.lines) - 1)

    def joined(self) -> None:
        """We (re)joined: the history the server replays next goes above the join."""
        self.replay_at = len(self.lines)
        self._divided = False

    def replay(self, line: Line) -> None:
        """A line of replayed history: above our join, under a divider, or else at the end."""
        if self.replay_at is None:
            self.add(line)
            return
        if not self._divided:
            self._divided = True
            divider = [("class:history", f"--- Earlier in {self.name}:")]
            self.lines.insert(self.replay_at, divider)
            self.replay_at += 1
        self.lines.insert(self.replay_at, line)
        self.replay_at += 1
        self._trim()

    def _trim(self) -> None:
        while len(self.lines) > self.scrollback:
            del self.lines[0]
            if self.replay_at is not None:
                self.replay_at = max(0, self.replay_at - 1)

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

    def __init__(
        self,
        nick: str,
        scrollback: int = SCROLLBACK,
        *,
        highlights: Iterable[str] = (),
        bell: Callable[[], None] | None = None,
    ) -> None:
        self.nick = nick
        self.highlights = tuple(word for word in highlights if word.strip())
        self.bell = bell  # rung once per live mention; the UI passes the terminal's bell
        #: Called with (pane name, line text) for every live line shown (``--log-dir``).
        self.log: Callable[[str, str], None] | None = None
        self.scrollback = scrollback
        self.views: dict[str, RoomView] = {}  # room_key -> view, in join order
        self.active = ""  # key of the view on screen; "" when in no room
        self.nowhere = RoomView("(no room)", scrollback)
        self.known_rooms: dict[str, str] = {}
        self.switch_to: set[str] = set()  # rooms the user asked to join: show them on arrival
        # Chat lines sent but not yet echoed back: (kind, room or nick key, text).
        self.pending: list[tuple[str, str, str]] = []
        self.last_private: str | None = None  # who last wrote to you privately: /reply
        # A paste of more than PASTE_ASK_OVER lines, waiting for y/n; the pane it goes to.
        self.paste_waiting: list[str] | None = None
        self.paste_to = self.nowhere

    @property
    def view(self) -> RoomView:
        return self.views.get(self.active, self.nowhere)

    @property
    def room(self) -> str | None:
        """The active room's name, or None when in no room (or in a query pane)."""
        view = self.views.get(self.active)
        return view.name if view and not view.query else None

    @property
    def query(self) -> str | None:
        """The nick of the private conversation on screen, or None in a room."""
        view = self.views.get(self.active)
        return view.name if view and view.query else None

    def open_query(self, nick: str, *, switch: bool = False) -> RoomView:
        """The pane of the private conversation with ``nick``, opened if need be."""
        key = nick_key(nick)
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = RoomView(clean(nick), self.scrollback, query=True)
        if switch or not self.active:
            self.switch(key)
        return view

    def close(self) -> str | None:
        """Close the query pane on screen; otherwise say why not (an error to show)."""
        view = self.views.get(self.active)
        if view is None or not view.query:
            where = f"leave {view.name}" if view else "leave a room"
            return f"/close only closes private conversations; use /part to {where}."
        del self.views[self.active]
        self.active = next(reversed(self.views), "")
        return None

    def room_names(self) -> list[str]:
        """The rooms we are in, in join order (no query panes)."""
        return [view.name for view in self.views.values() if not view.query]

    def _own(self, nick: str | None) -> bool:
        return nick is not None and nick_key(nick) == nick_key(self.nick)

    def mentions(self, text: str) -> bool:
        """Whether ``text`` names you or a highlight word, as a whole word, in any case."""
        words = "|".join(re.escape(word) for word in (self.nick, *self.highlights))
        return re.search(rf"(?<!\w)(?:{words})(?!\w)", text, re.IGNORECASE) is not None

    def is_mention(self, event: Event) -> bool:
        """A line of someone else's that mentions you, or a private message to you."""
        match event:
            case Private():
                return not event.echo and not self._own(event.nick)
            case Message() | Action():
                return not self._own(event.nick) and self.mentions(clean(event.text))
        return False

    # --- showing ---------------------------------------------------------------------------

    def show(self, event: Event, view: RoomView | None = None, *, unread: bool = False) -> None:
        """Add ``event``'s lines to ``view`` (else the pane on screen); a mention is
        highlighted and, live, rings the bell once and marks its pane if it is not on screen."""
        target = view or self.view
        history = bool(getattr(event, "history", False))
        mention = self.is_mention(event)
        for plain in format_event(event, self.nick):
            line = (
                [plain[0], *(("class:mention " + s, t) for s, t in plain[1:])] if mention else plain
            )
            counted = (unread or mention) and not history and target is not self.view
            if counted and not target.unread:
                target.mark_unread()
            if history:
                target.replay(line)
            else:
                target.add(line)
                if self.log is not None:
                    self.log(target.name, plain_text(line))
            if counted:
                target.unread += 1
                target.mentions += mention
        if mention and not history and self.bell is not None:
            self.bell()

    def note(self, text: str, style: str = "class:system", view: RoomView | None = None) -> None:
        """A line from the client itself, in ``view`` or else the pane on screen."""
        (view or self.view).add([("class:time", stamp(time.time())), (style, text)])

    def lastlog(self, text: str) -> int:
        """``/lastlog text``: the lines of the pane on screen that contain ``text`` (any
        case), shown again at its end under a header; how many there were."""
        view = self.view
        wanted = text.lower()
        found = [list(line) for line in view.lines if wanted in plain_text(line).lower()]
        self.note(f"--- lastlog {text}: {len(found)} line(s)", view=view)
        for line in found:
            view.add(line)
        return len(found)

    def urls(self) -> list[str]:
        """``/urls``: the links in the pane on screen, each once, the latest last, each then
        shown on a row of its own without time or indentation, to copy in one piece."""
        found: dict[str, None] = {}
        for line in self.view.lines:
            if line and line[0][0] == "class:copy":
                continue  # a row an earlier /urls added
            for match in _URL_RE.findall(plain_text(line)):
                url = match.rstrip(".,;:!?)]'\"")
                found.pop(url, None)  # ordered by where each was last seen
                found[url] = None
        shown = list(found)[-URLS_SHOWN:]
        self.note(f"--- {len(shown)} link(s) in this pane:" if shown else "--- No links here.")
        for url in shown:
            self.view.add([("class:copy", url)])
        return shown

    def error(self, text: str, view: RoomView | None = None) -> None:
        self.note(f"!!! {text}", "class:error", view)

    def still_open(self, view: RoomView) -> RoomView:
        """``view`` if it is still a pane, else the pane on screen (it was left meanwhile)."""
        return view if view is self.nowhere or view in self.views.values() else self.view

    def answer(self, event: Event, asked_in: RoomView) -> None:
        """The answer to a query (who, topic, rooms, ping) typed in the pane ``asked_in``:
        keep what it says, and show it where it was asked, not in the room it is about."""
        view = self.views.get(room_key(event.room)) if event.room else None
        match event:
            case Who() if view is not None:
                view.members = {nick_key(m): m for m in event.members}
            case Topic() if view is not None:
                view.topic = clean(event.text)
            case RoomList():
                self.known_rooms.update((room_key(i.room), i.room) for i in event.rooms)
        self.show(event, self.still_open(asked_in))

    # --- switching -------------------------------------------------------------------------

    def switch(self, key: str) -> None:
        if key in self.views:
            self.active = key
            self.views[key].unread = 0
            self.views[key].mentions = 0

    def cycle(self, step: int) -> None:
        keys = list(self.views)
        if keys:
            index = keys.index(self.active) if self.active in keys else 0
            self.switch(keys[(index + step) % len(keys)])

    def switch_number(self, number: int) -> None:
        keys = list(self.views)
        if 1 <= number <= len(keys):
            self.switch(keys[number - 1])

    # --- pasting ---------------------------------------------------------------------------

    def paste(self, text: str) -> list[str]:
        """A bracketed paste of several lines: the lines to send now, one message each, in
        order (blank ones left out). More than :data:`PASTE_ASK_OVER` are held, and the
        question :meth:`paste_question` asks first; :meth:`answer_paste` settles it."""
        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        lines = [line.replace("\r", " ") for line in lines]
        if len(lines) <= PASTE_ASK_OVER:
            return lines
        if self.paste_waiting is not None:
            self.answer_paste(yes=False)  # a second paste replaces the first, not silently
        self.paste_waiting = lines
        self.paste_to = self.view
        self.note(self.paste_question())
        return []

    def paste_question(self) -> str:
        """What the input line asks while a long paste waits: "send 25 lines to #dev? y/n"."""
        count = len(self.paste_waiting or ())
        return f"send {count} lines to {self.paste_to.name}? y/n"

    def answer_paste(self, *, yes: bool) -> list[str]:
        """y: the held lines, to send; n (or Esc): none, and the pane says they were not sent."""
        lines, self.paste_waiting = self.paste_waiting or [], None
        if yes:
            return lines
        if lines:
            self.note(f"--- Pasted {len(lines)} lines: not sent.")
        return []

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
        found = {key: view.name for key, view in self.views.items() if not view.query}
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

    def _refused(self, error: Error) -> None:
        """A say, me or msg of ours that was refused will never be echoed: it is no longer
        pending. The error names the command it refused; one that names none refused the
        oldest line in flight."""
        if error.command is None:
            if error.code in _UNREAD_LINE and self.pending:
                self.pending.pop(0)
            return
        for entry in self.pending:
            if entry[0] == error.command:
                self.pending.remove(entry)
                return

    def connection_lost(self, why: str) -> None:
        """Say plainly that we are down, and which of our lines may not have arrived."""
        self.error(f"{why.rstrip('.')}. Reconnecting; lines you type meanwhile are not sent.")
        for _, _, text in self.pending:
            self.error(f"Not confirmed by the server before the connection dropped: {text}")
        self.pending.clear()

    def _rename_query(self, old: str, new: str) -> None:
        """The conversation with ``old`` goes on with ``new``, in the same place."""
        key, new_key = nick_key(old), nick_key(new)
        view = self.views.get(key)
        if view is None or not view.query or (new_key != key and new_key in self.views):
            return
        view.name = clean(new)
        self.views = {(new_key if k == key else k): v for k, v in self.views.items()}
        if self.active == key:
            self.active = new_key
        if self.last_private is not None and nick_key(self.last_private) == key:
            self.last_private = new

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
                if not event.history:
                    target.replay_at = None  # live chat: the replay is over
                if own and not event.history:
                    kind = "say" if isinstance(event, Message) else "me"
                    self.confirm(kind, room_key(event.room or ""), event.text)
                self.show(event, target, unread=not event.history)
            case Private(nick=str(nick)):
                if event.echo:
                    self.confirm("msg", nick_key(event.target), event.text)
                    pane = self.open_query(event.target)
                    if pane is not self.view:  # where it was typed, too: it went
                        self.show(event)
                else:
                    self.last_private = nick
                    pane = self.open_query(nick)
                self.show(event, pane, unread=not event.echo)
            case Join(room=str(room), nick=str(nick)):
                key = room_key(room)
                if own:
                    view = self.views.setdefault(key, view or RoomView(room, self.scrollback))
                    # Joined again (after a reconnection): what we knew may be stale. The
                    # server follows a join with the topic, if there is one, and who is in.
                    view.topic = ""
                    view.members.clear()
                    view.joined()
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
            case Kick(room=str(room), target=target) if nick_key(target) == nick_key(self.nick):
                self.views.pop(room_key(room), None)
                if self.active == room_key(room):
                    self.active = next(reversed(self.views), "")
                self.show(event)
            case Kick(target=target):
                if view is not None:
                    view.members.pop(nick_key(target), None)
                self.show(event, view)
            case Quit(nick=str(nick)):
                for each in self.views.values():
                    if each.members.pop(nick_key(nick), None) is not None or (
                        each.query and nick_key(each.name) == nick_key(nick)
                    ):
                        self.show(event, each)
            case Nick(nick=str(nick), new_nick=new):
                if own:
                    self.nick = new
                shown = False  # on screen already, in a room where the nick was
                for each in self.views.values():
                    if each.members.pop(nick_key(nick), None) is not None:
                        each.members[nick_key(new)] = new
                        self.show(event, each)
                        shown = shown or each is self.view
                if own and not shown:
                    self.show(event)
                self._rename_query(nick, new)
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
                self._refused(event)
                self.show(event)
            case Welcome():
                self.nick = event.nick or self.nick
                self.show(event)
            case _:
                self.show(event, view)
