"""HTTP, WebSocket and metrics on the chat port, from the wire: the page and ``/health``
answered, the JSON dialect in WebSocket frames next to text and IRC users, the Origin
check, the same limits as TCP, TLS, and Prometheus metrics on their own port.

The page itself, in a real browser, is tests/test_web_browser.py."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chat.server import ChatServer
from tests.harness import WAIT, LineClient, StartServer


async def http_get(port: int, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request over a raw socket, as a browser sends it; the whole answer, to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode())
    async with asyncio.timeout(WAIT):
        raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, body


async def ws(port: int, nick: str | None = None, **options: Any) -> ClientConnection:
    """A WebSocket client on /ws, registered as ``nick`` (past the welcome) if given."""
    client = await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT, **options)
    if nick is not None:
        await client.send(json.dumps({"type": "hello", "nick": nick}))
        await until(client, "welcome")
    return client


async def until(client: ClientConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """The next event of ``kind`` (with ``fields``), each frame one JSON object."""
    async with asyncio.timeout(WAIT):
        while True:
            frame = await client.recv()
            assert isinstance(frame, str)
            event = json.loads(frame)  # one object per frame, nothing else in it
            if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return dict(event)


async def drain(client: ClientConnection) -> None:
    """Read until the server closes (raises ConnectionClosed), within WAIT."""
    async with asyncio.timeout(WAIT):
        while True:
            await client.recv()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=WAIT) as answer:
        body: bytes = answer.read()
    return body


async def test_the_page_and_its_files_are_served_with_a_strict_policy(server: ChatServer) -> None:
    status, headers, body = await http_get(server.port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="app.js"' in body or b'<script src="/app.js"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, _, body = await http_get(server.port, "/commands.json")
    specs = {spec["name"]: spec for spec in json.loads(body)}
    assert specs["kick"]["params"][1] == {
        "name": "nick",
        "kind": "nick",
        "required": True,
        "label": "nick",
    }
    assert "j" in specs["join"]["aliases"]
    assert "hello" not in specs  # only what people type
    for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = await http_get(server.port, path)
        assert (status, headers["content-type"].split(";")[0]) == (200, kind)
        assert body


async def test_health_and_404(server: ChatServer) -> None:
    alice = await LineClient.connect(server.port, "alice")
    status, headers, body = await http_get(server.port, "/health")
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {"status": "up", "clients": 1, "rooms": 1}
    status, _, body = await http_get(server.port, "/etc/passwd")
    assert status == 404
    assert b"chat server" in body
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await reader.read(-1)
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET\r\n" in answer
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nnot a header\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await reader.read(-1)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    writer.close()
    await alice.close()


async def test_websocket_speaks_json_with_text_users_one_object_per_frame(
    server: ChatServer,
) -> None:
    browser = await ws(server.port)
    await browser.send(json.dumps({"type": "hello", "nick": "webby", "id": "h1"}))
    hello = await until(browser, "hello")
    assert hello["re"] == "h1"  # no text greeting first: a browser is never greeted
    await until(browser, "welcome", nick="webby")
    await until(browser, "join", room="#lobby", nick="webby")
    text = await LineClient.connect(server.port, "tom")
    await until(browser, "join", nick="tom")
    await browser.send(json.dumps({"type": "say", "text": "hello from a browser"}))
    await text.expect(r"^\[#lobby\] <webby> hello from a browser$")
    await text.send("hello from telnet")
    said = await until(browser, "message", nick="tom")
    assert said["text"] == "hello from telnet"
    await browser.send(json.dumps({"type": "msg", "nick": "tom", "text": "psst"}))
    await text.expect(r"^\[private\] <webby> psst$")
    await browser.close()
    await text.expect(r"^\*\*\* webby quit")
    await text.close()


async def test_an_irc_user_and_a_browser_share_a_room(server: ChatServer) -> None:
    browser = await ws(server.port, "webby")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"NICK ircy\r\nUSER ircy 0 * :I\r\nJOIN #lobby\r\nPRIVMSG #lobby :from irc\r\n")
    said = await until(browser, "message", nick="ircy")
    assert said["text"] == "from irc"
    await browser.send(json.dumps({"type": "say", "text": "from the web"}))
    async with asyncio.timeout(WAIT):
        while b"PRIVMSG #lobby :from the web" not in await reader.readline():
            pass
    writer.close()
    await browser.close()


async def test_a_foreign_origin_is_refused_and_an_allowed_one_accepted(
    start_server: StartServer,
) -> None:
    server = await start_server()
    with pytest.raises(InvalidStatus) as refused:
        await ws(server.port, origin="http://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    same = await ws(server.port, "mine", origin=f"http://127.0.0.1:{server.port}")  # type: ignore[arg-type]
    await same.close()
    listed = await start_server(allowed_origins=("https://chat.example.org",))
    with pytest.raises(InvalidStatus):
        await ws(listed.port, origin=f"http://127.0.0.1:{listed.port}")  # type: ignore[arg-type]
    ok = await ws(listed.port, "listed", origin="https://chat.example.org")  # type: ignore[arg-type]
    await ok.close()


async def test_flood_control_and_the_frame_limit_apply(start_server: StartServer) -> None:
    server = await start_server(rate=1.0, burst=4, max_line=200)
    browser = await ws(server.port, "fast")
    for n in range(6):
        await browser.send(json.dumps({"type": "say", "text": f"line {n}"}))
    refused = await until(browser, "error", code="flood")
    assert "Too fast" in refused["text"]
    await browser.send(json.dumps({"type": "say", "text": "x" * 300}))  # over --max-line
    with pytest.raises(ConnectionClosed) as closed:
        await drain(browser)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big


async def test_wss_on_the_tls_port(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = await start_server(tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    browser = await connect(f"wss://localhost:{server.port}/ws", ssl=context, open_timeout=WAIT)
    await browser.send(json.dumps({"type": "hello", "nick": "secure"}))
    await until(browser, "welcome", nick="secure")
    await browser.close()


async def test_metrics_on_their_own_port(start_server: StartServer) -> None:
    server = await start_server(metrics="127.0.0.1:0")
    assert server.metrics is not None
    browser = await ws(server.port, "webby")
    text = await LineClient.connect(server.port, "tom")
    await text.send("counted")
    await until(browser, "message", nick="tom")
    url = f"http://127.0.0.1:{server.metrics.port}/metrics"
    page = (await asyncio.to_thread(fetch, url)).decode()
    assert 'chat_connections{dialect="websocket"} 1.0' in page
    assert 'chat_connections{dialect="text"} 1.0' in page
    assert 'chat_registrations_total{dialect="websocket"} 1.0' in page
    assert "chat_messages_total 1.0" in page
    assert "chat_deliveries_total" in page
    assert "chat_event_loop_lag_seconds" in page
    assert "chat_queue_bytes" in page
    status, _, _ = await http_get(server.port, "/metrics")  # never on the chat port
    assert status == 404
    await browser.close()
    await text.close()


async def test_bytes_after_a_request_are_never_read_as_frames(server: ChatServer) -> None:
    """Found by review: a trailing CRLF once cost the answer, and frames sent right after a
    refused upgrade were carried out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /health HTTP/1.1\r\n\r\n")
    async with asyncio.timeout(WAIT):
        answer = await reader.read(-1)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"HTTP/1.1") == 1  # one request, one answer, then closed
    writer.close()


async def test_a_fragmented_message_is_one_line(server: ChatServer) -> None:
    browser = await ws(server.port)
    await browser.send(iter(['{"type":"hello",', '"nick":"frag"}']))  # two frames
    await until(browser, "welcome", nick="frag")
    await browser.close()


async def test_pings_cost_flood_tokens_like_lines(start_server: StartServer) -> None:
    """Control frames are charged too: a ping flood is a flood."""
    server = await start_server(rate=1.0, burst=4)
    browser = await ws(server.port, "pinger")
    for _ in range(12):  # the client library sends them; the server answers each with a pong
        await browser.ping()
    bye = await until(browser, "bye")
    assert bye["code"] == "flooding"
