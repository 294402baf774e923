"""The ``chat-client`` command line: arguments, the nickname question, the input history
file, and the choice between the full-screen UI (on a terminal) and line mode (in pipes)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from prompt_toolkit.history import FileHistory, History, InMemoryHistory, ThreadedHistory
from prompt_toolkit.shortcuts import PromptSession
from prompt_toolkit.shortcuts import prompt as ask

from chat import __version__
from chat.client import connect, parse_address
from chat.errors import ProtocolError
from chat.protocol import validate_nick
from chat.tui.actions import fail
from chat.tui.app import run_tui
from chat.tui.linemode import run_plain

__all__ = ["ask_another_nick", "ask_nick", "build_parser", "history_path", "main", "open_history"]


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


async def ask_another_nick(refused: str, why: str, *, password: bool = False) -> str | None:
    """The server refused ``refused``: say why and ask for another, on the terminal before
    the full-screen UI starts (an :data:`~chat.tui.app.AskNick`); None if the user gives up.
    For a registered nickname, ask for its password instead, without echoing it."""
    print(f"chat-client: {why}")
    session: PromptSession[str] = PromptSession()
    if password:
        try:
            answer = await session.prompt_async(f"Password for {refused}: ", is_password=True)
        except (EOFError, KeyboardInterrupt):
            return None
        return answer.strip() or None
    default = refused
    while True:
        try:
            answer = await session.prompt_async("Another nickname: ", default=default)
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
    parser.add_argument(
        "--highlight",
        metavar="WORD",
        action="append",
        default=[],
        help="also treat lines with this word as mentions (repeatable)",
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="append every pane to a plain text file per pane and day in DIR (default: off)",
    )
    parser.add_argument("--version", action="version", version=f"chat-client {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``chat-client`` console script."""
    args = build_parser().parse_args(argv)
    try:
        parse_address(args.address)
    except ValueError as exc:
        return fail(str(exc), 2)
    if args.ca_file is not None and not os.path.isfile(args.ca_file):
        return fail(f"no such CA file: {args.ca_file}", 2)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    nick: str | None = args.nick
    if nick is None:
        user = os.environ.get("USER", "")
        nick = ask_nick(user) if interactive else user
        if not nick:
            return fail("no nickname: use --nick NAME", 2)
    try:
        validate_nick(nick)
    except ProtocolError as exc:
        return fail(f"invalid nickname {nick!r}: {exc.message}", 2)
    connector = connect(args.address, nick=nick, tls=args.tls, ca_file=args.ca_file)
    try:
        if interactive:
            return asyncio.run(
                run_tui(connector, open_history, args.highlight, ask_another_nick, args.log_dir)
            )
        return asyncio.run(run_plain(connector, sys.stdin.buffer, sys.stdout))
    except KeyboardInterrupt:
        return 130
