"""Fixtures: a real server on a loopback port chosen by the kernel."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat.server import ChatServer, ServerConfig
from chat.session import Limits

StartServer = Callable[..., Awaitable[ChatServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers with config overrides (``limits`` fields too, and ``port`` to restart one
    on the port it had); every one is closed at teardown."""
    servers: list[ChatServer] = []

    async def start(**overrides: Any) -> ChatServer:
        limit_names = {f.name for f in dataclasses.fields(Limits)}
        limits = Limits(**{k: overrides.pop(k) for k in list(overrides) if k in limit_names})
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, **overrides}
        config = ServerConfig(limits=limits, **settings)
        server = ChatServer(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: StartServer) -> ChatServer:
    """A server with default settings, except no per-IP limit (every test client is 127.0.0.1)."""
    return await start_server(max_per_ip=0)
