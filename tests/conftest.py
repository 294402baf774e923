"""Fixtures for every test module; they live in tests/harness.py, the one test harness."""

from __future__ import annotations

from tests.harness import (
    StartServer,
    certificate,
    dialect,
    private_state,
    server,
    spawn_server,
    start_server,
)

__all__ = [
    "StartServer",
    "certificate",
    "dialect",
    "private_state",
    "server",
    "spawn_server",
    "start_server",
]
