"""Dialects as codecs: one object per dialect turns a line into a request and an event into bytes.

A connection starts with :data:`TEXT` and keeps the codec it chooses on its first line
(:func:`decoder_for`): a JSON object there (``{"type":"hello"}``) switches it to :data:`JSON`.
The session never looks inside a line; the hub renders each event once per
:attr:`Codec.key` and pushes the same bytes to every member that shares it.

The interface is what the later dialects need too: IRC has its own registration (``CAP``,
``NICK``, ``USER``) and numeric replies, so :meth:`Codec.decode` is told whether the
connection is registered and a codec may keep per-connection state (then it is created per
connection and its ``key`` says which connections may share rendered bytes); WebSocket
carries the JSON codec in frames after an HTTP upgrade, so framing stays outside the codec.
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

    def decode(self, raw: bytes, *, registered: bool) -> Request | None:
        """The request one line carries; ``None`` for a line to ignore.

        Raises :class:`~chat.errors.ProtocolError` (with ``command`` and ``request`` set as
        far as the line was understood) for a line the protocol refuses.
        """

    def encode(self, event: Event) -> bytes:
        """The bytes that carry ``event``, line ending included."""


class TextCodec:
    """The dialect people type: ``/command args`` or a line to say; ``\\r\\n`` lines back,
    wrapped at the connection's screen ``width`` (protocol.md, "The text dialect")."""

    name: Final = "text"

    def __init__(self, width: int = DEFAULT_WIDTH) -> None:
        self.width = width
        self.key = (Dialect.TEXT, width)

    def decode(self, raw: bytes, *, registered: bool) -> Request | None:
        command = parse_text_line(decode_line(raw), registered=registered)
        return None if command is None else Request(command)

    def encode(self, event: Event) -> bytes:
        return render_text(event, self.width)


class JsonCodec:
    """JSON Lines for programs: ``{"type": ..., "id": ...}`` in, one event object per line out."""

    name: Final = "json"
    key: Final = Dialect.JSON

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


TEXT: Final = TextCodec()
JSON: Final = JsonCodec()


def decoder_for(current: Codec, raw: bytes, *, registered: bool) -> Codec:
    """The codec that reads ``raw``: before registration a JSON object is read as JSON
    whatever the connection speaks, so a program's first line is understood; only its
    ``hello`` switches what the connection receives."""
    if not registered and isinstance(current, TextCodec) and raw.lstrip().startswith(b"{"):
        return JSON
    return current
