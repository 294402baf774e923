"""Hardening II (issue 10): what one client costs everyone, and forgery by look-alikes.

Each test reproduces an attack on loopback, bounded in lines and time, and asserts the fix.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from chat.server import ChatServer
from tests.conftest import StartServer

WAIT = 10.0


async def open_json(server: ChatServer, nick: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(json.dumps({"type": "hello", "nick": nick, "id": "reg"}).encode() + b"\n")
    await until(reader, lambda e: e["type"] == "who")
    return reader, writer


async def until(reader: asyncio.StreamReader, wanted: Any) -> list[dict[str, Any]]:
    """Every JSON event up to and including the first for which ``wanted`` is true."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while True:
            raw = await reader.readline()
            if not raw:
                raise EOFError(f"closed; saw {seen[-3:]}")
            if raw.startswith(b"{"):
                seen.append(json.loads(raw))
                if wanted(seen[-1]):
                    return seen


async def all_until_eof(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Every JSON event until the server closes (a reset counts: we sent more than it read)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        try:
            while raw := await reader.readline():
                if raw.startswith(b"{"):
                    seen.append(json.loads(raw))
        except ConnectionResetError:
            pass
    return seen


# --- 1. overlong lines cost flood tokens ----------------------------------------------------


async def test_overlong_lines_are_charged_to_the_flood_budget(start_server: StartServer) -> None:
    """2,100-byte lines in a loop were answered line_too_long each and never charged: the
    server spent all its CPU answering them. Now each costs a token like any line, so the
    flooder is disconnected after a bounded number of answers."""
    server = await start_server(max_per_ip=0, max_line=2048, rate=5, burst=20)
    reader, writer = await open_json(server, "flooder")
    writer.write((b"x" * 2100 + b"\n") * 45)  # the budget: 20 + a debt of 20 more
    events = await all_until_eof(reader)
    too_long = [e for e in events if e.get("code") == "line_too_long"]
    floods = [e for e in events if e.get("code") == "flood"]
    assert 15 <= len(too_long) <= 20  # the burst, at most
    assert len(floods) == 1  # one answer for the whole run of refusals
    assert server.hub.find("flooder") is None  # disconnected for flooding
    writer.close()
