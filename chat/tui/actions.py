"""What the full-screen UI and the line mode share: running a typed command on a connection,
and saying in one line what went wrong."""

from __future__ import annotations

import sys

from chat.client import Connection
from chat.commands import (
    Command,
    HelpCommand,
    JoinCommand,
    MeCommand,
    MsgCommand,
    NickCommand,
    PartCommand,
    PingCommand,
    RoomsCommand,
    SayCommand,
    TopicCommand,
    WhoCommand,
    help_text,
)
from chat.errors import NickUnavailable, ServerError
from chat.protocol import Event, Notice, RoomList, Topic, Who

__all__ = ["describe", "execute", "fail"]


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
            rtt = await conn.ping(token)
            return Notice(text=f"pong from the server in {rtt * 1000:.1f} ms")
        case HelpCommand(command=name):
            return Notice(text=help_text(name))
        case _:
            await conn.send(command)
    return None


def describe(exc: Exception) -> str:
    """An exception from the client library as one line for people."""
    if isinstance(exc, NickUnavailable):
        return f"nickname {exc.nick!r} unavailable: {exc.reason}"
    if isinstance(exc, ServerError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "no answer from the server in time"
    return str(exc)


def fail(message: str, status: int = 1) -> int:
    """Say ``chat-client: message`` on stderr; return the exit status."""
    print(f"chat-client: {message}", file=sys.stderr)
    return status
