"""The keys the client adds to prompt_toolkit's Emacs defaults, and their help text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prompt_toolkit.filters import Condition, has_completions
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.widgets import TextArea

from chat.tui.state import ChatState
from chat.tui.widgets import MessagePane

__all__ = ["KEYS_HELP", "build_key_bindings"]

KEYS_HELP: Final = """Keys:
  Enter                      send the line
  Up / Down                  walk the input history
  Tab / Shift-Tab            complete /commands, #rooms and nicknames
  PageUp / PageDown          scroll this pane a screen back / forward
  Ctrl-N / Ctrl-P            next / previous pane
  Alt-Right / Alt-Left       next / previous pane
  Alt-1 .. Alt-9             go to pane 1..9, numbered as in the status bar
  Ctrl-C                     quit
  Ctrl-D                     quit, on an empty line (else delete a character)
  y / n or Esc               after a paste of over 5 lines: send them, or not
  Ctrl-A, Ctrl-E, Ctrl-W     and the other Emacs keys edit the input line"""


def build_key_bindings(
    state: ChatState,
    pane: MessagePane,
    entry: TextArea,
    leave: Callable[[], None],
    *,
    paste: Callable[[str], None],
    answer_paste: Callable[..., None],
) -> KeyBindings:
    """Keys added to prompt_toolkit's Emacs defaults, which already give line editing,
    Up/Down through history and Tab/Shift-Tab completion. ``entry`` is the input line
    (Ctrl-D quits only when it is empty); ``leave`` quits the client; ``paste`` takes a
    bracketed paste of several lines and ``answer_paste(yes=...)`` the y/n to a long one."""
    bindings = KeyBindings()
    input_empty = Condition(lambda: not entry.text)
    asking = Condition(lambda: state.paste_waiting is not None)

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        """A paste of one line goes into the input line; of several, one message per line."""
        text = event.data.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" in text.strip("\n"):
            paste(text)
        else:
            entry.buffer.insert_text(text.strip("\n"))

    @bindings.add("y", filter=asking)
    @bindings.add("Y", filter=asking)
    def _send_paste(event: KeyPressEvent) -> None:
        """Send the long paste asked about."""
        answer_paste(yes=True)

    @bindings.add("n", filter=asking)
    @bindings.add("N", filter=asking)
    @bindings.add("escape", filter=asking, eager=True)
    def _drop_paste(event: KeyPressEvent) -> None:
        """Do not send it (the pane says so)."""
        answer_paste(yes=False)

    @bindings.add(Keys.Any, filter=asking)
    @bindings.add("enter", filter=asking)
    def _still_asking(event: KeyPressEvent) -> None:
        """Other keys wait for y or n."""

    @bindings.add("pageup")
    def _older(event: KeyPressEvent) -> None:
        """Scroll the message pane a screen back (the status bar says when you are)."""
        pane.page(+1)

    @bindings.add("pagedown")
    def _newer(event: KeyPressEvent) -> None:
        """Scroll a screen forward; at the bottom, new lines follow again."""
        pane.page(-1)

    @bindings.add("c-n", filter=~has_completions)
    @bindings.add("escape", "right")
    def _next_room(event: KeyPressEvent) -> None:
        """Show the next room's pane (the completion menu keeps Ctrl-N while open)."""
        state.cycle(+1)

    @bindings.add("c-p", filter=~has_completions)
    @bindings.add("escape", "left")
    def _previous_room(event: KeyPressEvent) -> None:
        """Show the previous room's pane."""
        state.cycle(-1)

    def _go_to(number: int) -> None:
        @bindings.add("escape", str(number))
        def _room_n(event: KeyPressEvent) -> None:
            """Alt-N shows room N, numbered as in the status bar."""
            state.switch_number(number)

    for number in range(1, 10):
        _go_to(number)

    @bindings.add("c-c")
    @bindings.add("c-d", filter=input_empty)
    def _quit(event: KeyPressEvent) -> None:
        """Quit cleanly: leave the chat, restore the terminal (Ctrl-D only on an empty line)."""
        leave()

    return bindings
