"""HTTP and WebSocket on the chat port: the browser client, its WebSocket, and ``/health``.

A connection whose first bytes are an HTTP request is handed here by the session. The
request is parsed by the ``websockets`` library's sans-I/O :class:`ServerProtocol` (which
also frames the WebSocket afterwards: no framing is written here), and answered:

* ``GET /`` (and ``/app.js``, ``/style.css``): the browser client, shipped in the package;
* ``GET /health``: ``{"status":"up","clients":N,"rooms":M}``;
* ``GET /commands.json``: the command table, which the page reads typed lines with;
* ``GET /ws`` with an ``Upgrade: websocket``: the JSON dialect, one object per text frame,
  once the ``Origin`` is one the server allows (``--allowed-origin``; by default the
  server's own host, as the browser reached it);
* anything else: 404, and the connection closes.

Bytes the session reads go to :meth:`WebHandler.feed`; each text frame is then one line for
:meth:`Session.handle_line`, so flood control, ``--max-line`` (per frame), timeouts and
the slow-reader drop are the session's, exactly as for a line of JSON over TCP. What the hub
sends is rendered as frames by :class:`WebSocketCodec`, once per event for every browser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from chat.codecs import JsonCodec
from chat.commands import table
from chat.protocol import Bye, Event, Ping, render
from chat.protocol import Dialect as WireDialect

if TYPE_CHECKING:
    from chat.session import Session

__all__ = ["STATIC", "WebHandler", "WebSocketCodec"]

log = logging.getLogger("chat.web")

WS_PATH: Final = "/ws"


def _page_file(name: str) -> bytes:
    return resources.files("chat.webui").joinpath(name).read_bytes()


# The browser client: path -> (body, content type), read once at import, never on the loop.
STATIC: Final = {
    path: (_page_file(name), kind)
    for path, name, kind in (
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "style.css", "text/css; charset=utf-8"),
    )
}
# Peer text is inserted as text by the page; this keeps anything else from running even if
# a bug slipped one through: only the page's own script and style, and its own WebSocket.
SECURITY_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


class WebSocketCodec(JsonCodec):
    """The JSON dialect in WebSocket frames: each event one text frame, rendered once and
    shared by every browser (server frames are not masked, so they are the same bytes for
    everyone). A ping is a WebSocket ping, which browsers answer by themselves."""

    name = "websocket"
    key = "websocket"

    def encode(self, event: Event) -> bytes:
        if type(event) is Ping:
            return Frame(Opcode.PING, event.text.encode()).serialize(mask=False)
        data = render(event, WireDialect.JSON).rstrip(b"\n")
        frame = Frame(Opcode.TEXT, data).serialize(mask=False)
        if type(event) is Bye:  # the last frame: then a close, saying why in a word
            close = Close(CloseCode.NORMAL_CLOSURE, str(event.code)[:100])
            frame += Frame(Opcode.CLOSE, close.serialize()).serialize(mask=False)
        return frame

    encode_one = encode


WEBSOCKET: Final = WebSocketCodec()
COMMAND_TABLE: Final = json.dumps(table(), separators=(",", ":")).encode()


class WebHandler:
    """One HTTP connection: a request answered, or a WebSocket carrying the JSON dialect."""

    def __init__(self, session: Session, allowed_origins: Sequence[str]) -> None:
        self.session = session
        self.allowed = [origin.rstrip("/").lower() for origin in allowed_origins]
        self.protocol = ServerProtocol(max_size=session.limits.max_line, logger=log)
        self.open = False  # the WebSocket is up
        self._answered = False
        self._method = b""
        self._fragments: list[bytes | bytearray | memoryview] = []  # a text message so far

    def _send(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            self.session.push(data)

    async def feed(self, data: bytes) -> bool:
        """Bytes from the peer; False once the connection is to close."""
        if not self._method:
            self._method = data.split(b" ", 1)[0]
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self._answer(event)
                if not self.open:
                    return False  # answered: whatever followed the request is not read
            elif isinstance(event, Frame) and self.open:
                await self._frame(event)
        if self.protocol.handshake_exc is not None and not self._answered:
            # Not a request the library reads (a POST, a malformed line): say so, as HTTP.
            if self._method == b"GET":
                self._respond(400, "Bad Request", b"", "text/plain")
            else:
                self._respond(405, "Method Not Allowed", b"", "text/plain", ("Allow", "GET"))
            return False
        self._send()
        if self.protocol.close_expected() or self.protocol.state is State.CLOSED:
            return False
        return self.protocol.parser_exc is None

    async def _frame(self, frame: Frame) -> None:
        """A text message is one line, however many frames carry it; every frame, control
        frames included, is charged to the flood budget."""
        if not self.session.charge():
            return
        match frame.opcode:
            case Opcode.TEXT | Opcode.CONT if not frame.fin:
                self._fragments.append(frame.data)
            case Opcode.TEXT:
                await self.session.handle_line(bytes(frame.data))
            case Opcode.CONT:
                self._fragments.append(frame.data)
                line, self._fragments = b"".join(self._fragments), []
                await self.session.handle_line(line)
            case Opcode.BINARY:
                self.protocol.fail(CloseCode.UNSUPPORTED_DATA, "text frames only")

    def _answer(self, request: Request) -> None:
        path = urlsplit(request.path).path
        if path == WS_PATH and "websocket" in request.headers.get("Upgrade", "").lower():
            self._upgrade(request)
            return
        if path in STATIC:
            self._respond(200, "OK", *STATIC[path])
        elif path == "/commands.json":  # the command table the page parses lines with
            self._respond(200, "OK", COMMAND_TABLE, "application/json")
        elif path == "/health":
            hub = self.session.hub
            status = {"status": "up", "clients": len(hub.members), "rooms": len(hub.room_names())}
            self._respond(200, "OK", json.dumps(status).encode(), "application/json")
        else:
            self._respond(404, "Not Found", b"Not found: this is a chat server.\n", "text/plain")

    def _respond(
        self, status: int, reason: str, body: bytes, kind: str, *extra: tuple[str, str]
    ) -> None:
        headers = Headers(
            [
                ("Content-Type", kind),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                *extra,
                *SECURITY_HEADERS,
            ]
        )
        # Written as it is, not through the protocol, which may have ended its side already
        # (bytes after the request): the answer must go out whatever followed it.
        self.session.push(Response(status, reason, headers, body).serialize())
        self._answered = True
        log.info("http conn=%d %d", self.session.id, status)

    def _upgrade(self, request: Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not self._allowed(origin, request.headers.get("Host", "")):
            self._respond(403, "Forbidden", b"Origin not allowed.\n", "text/plain")
            log.info("refused websocket conn=%d origin=%r", self.session.id, origin)
            return
        response = self.protocol.accept(request)
        self.protocol.send_response(response)
        self._answered = True
        if response.status_code == 101:
            self.open = True
            self.session.codec = WEBSOCKET
            log.info("websocket conn=%d origin=%r", self.session.id, origin)

    def _allowed(self, origin: str, host: str) -> bool:
        """``--allowed-origin`` if given; else the page's own origin: the host it asked."""
        origin = origin.rstrip("/").lower()
        if self.allowed:
            return origin in self.allowed
        return urlsplit(origin).netloc == host.lower()
