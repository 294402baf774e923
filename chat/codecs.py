"""Dialects as codecs: one object per dialect turns a line into a request and an event into bytes.

A connection starts with :data:`TEXT` and keeps the codec it chooses on its first line
(:func:`decoder_for`): a JSON object there (``{"type":"hello"}``) switches it to :data:`JSON`.
The session never looks inside a line; the hub renders each event once per
:attr:`Codec.key` and pushes the same bytes to every member that shares it.

:class:`Codec` is what the hub needs to render: the text and JSON codecs also decode lines
into the command table's requests (``decode``, told whether the connection is registered).
IRC (:mod:`chat.irc`) reads its own lines, whose verbs :mod:`chat.ircd` maps onto the table,
and keeps per-connection state, so its codec is made per connection: ``encode`` is shared by
every connection with its ``key`` and must not show that state, ``encode_one`` renders what
goes to one connection alone. WebSocket (:mod:`chat.web`) is the JSON codec's objects in
frames; the websockets library parses and frames, the codec only renders.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Protocol

from chat.commands import (
    Request,
    parse_json_arguments,
    parse_json_object,
    parse_text_line,
    request_id,
)
from chat.errors import ErrorCode, ProtocolError
from chat.protocol import DEFAULT_WIDTH, Dialect, Event, decode_line, render, render_text

__all__ = ["JSON", "TEXT", "Codec", "JsonCodec", "TextCodec", "decoder_for"]


class Codec(Protocol):
    """What a session needs from a dialect."""

    @property
    def name(self) -> str:
        """The dialect's name, as logged and documented."""

    @property
    def key(self) -> Hashable:
        """Connections whose codecs share a key receive the same bytes for the same event."""

    @property
    def echoes(self) -> bool:
        """Whether a member's own room messages come back to them (IRC: only with
        ``echo-message``)."""

    @property
    def away_notify(self) -> bool:
        """Whether this connection is told when people it shares a room with go away or
        come back (IRC's ``away-notify``); the other dialects ask with ``/whois``."""

    def encode(self, event: Event) -> bytes:
        """The bytes that carry ``event``, line ending included; the same for every
        connection with this :attr:`key`, so no per-connection state may show in them."""

    def encode_one(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to this connection alone (answers, history):
        where a codec's per-connection state may show."""


class TextCodec:
    """The dialect people type: ``/command args`` or a line to say; ``\\r\\n`` lines back,
    wrapped at the connection's screen ``width`` (protocol.md, "The text dialect")."""

    name: Final = "text"
    echoes: Final = True
    away_notify: Final = False

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        self.width = width
        self.key = (Dialect.TEXT, width)

    def decode(self, raw: bytes, *, registered: bool) -> Request | None:
        command = parse_text_line(decode_line(raw), registered=registered)
        return None if command is None else Request(command)

    def encode(self, event: Event) -> bytes:
        return render_text(event, self.width)

    encode_one = encode


class JsonCodec:
    """JSON Lines for programs: ``{"type": ..., "id": ...}`` in, one event object per line out."""

    name: str = "json"
    key: Hashable = Dialect.JSON  # a subclass frames the same objects differently (web.py)
    echoes: Final = True
    away_notify: Final = False

    def decode(self, raw: bytes, *, registered: bool) -> Request | None:
        line = decode_line(raw)
        if not line.strip():
            return None
        obj, spec = parse_json_object(line)
        ident = request_id(obj)
        if not registered and not spec.before_registration:
            raise ProtocolError(
                ErrorCode.NOT_REGISTERED,
                "Register first: send a nickname.",
                command=spec.name,
                request=ident,
            )
        try:
            return Request(parse_json_arguments(spec, obj), ident)
        except ProtocolError as exc:
            exc.command = exc.command or spec.name
            exc.request = ident
            raise

    def encode(self, event: Event) -> bytes:
        return render(event, Dialect.JSON)

    encode_one = encode


TEXT: Final = TextCodec()
JSON: Final = JsonCodec()


def decoder_for(
    current: TextCodec | JsonCodec, raw: bytes, *, registered: bool
) -> TextCodec | JsonCodec:
    """The codec that reads ``raw``: before registration a JSON object is read as JSON
    whatever the connection speaks, so a program's first line is understood; only its
    ``hello`` switches what the connection receives."""
    if not registered and isinstance(current, TextCodec) and raw.lstrip().startswith(b"{"):
        return JSON
    return current
