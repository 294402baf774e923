"""``chat-client``: a full-screen prompt_toolkit UI on :mod:`chat.client`, or plain lines in pipes.

Split by job, as ptpython and pgcli are; imports point one way, up this list:

* :mod:`~chat.tui.format`: events become styled ``(style, text)`` lines. No prompt_toolkit.
* :mod:`~chat.tui.state`: the panes, members, unread counts and completion sources that
  :meth:`ChatState.apply <chat.tui.state.ChatState.apply>` keeps from events. No
  prompt_toolkit, so tests drive it directly.
* :mod:`~chat.tui.widgets`: the message pane, completer, bars, input line and layout;
  :mod:`~chat.tui.keys`: the key bindings.
* :mod:`~chat.tui.actions`: running a typed command on a connection, shared by both modes.
* :mod:`~chat.tui.app`: :class:`~chat.tui.app.ChatUI`, the application and its tasks.
* :mod:`~chat.tui.linemode`: the line mode for pipes and scripts (no prompt_toolkit either).
* :mod:`~chat.tui.cli`: the command line, :func:`main`, on top.

So format <- state <- widgets, keys <- app; actions <- app, linemode; cli over all.
Importing this package (or its state) does not load prompt_toolkit: :func:`main` is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat.tui.cli import main

__all__ = ["main"]


def __getattr__(name: str) -> object:
    """``chat.tui.main``, imported when first asked for (the old console scripts use it)."""
    if name == "main":
        from chat.tui.cli import main  # noqa: PLC0415 - keeps "import chat.tui.state" light

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
