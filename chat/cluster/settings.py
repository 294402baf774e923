"""How a node joins its cluster: where Redis is, what it is called, and its timings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["ClusterSettings", "default_node_id"]


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """One node's cluster settings; the timings are seconds.

    A node publishes a heartbeat every ``heartbeat``; it calls its own link down when it has
    not heard its own heartbeat for ``link_timeout``, and another node gone when it has not
    heard from it for ``dead_after``. Nickname claims expire ``nick_ttl`` after the owner's
    last refresh, which must be longer than ``dead_after``: a dead node's users quit before
    their nicknames are free. Every Redis command has ``command_timeout``.
    """

    url: str
    node_id: str = ""
    prefix: str = "chat:"
    heartbeat: float = 1.0
    link_timeout: float = 3.0
    dead_after: float = 5.0
    nick_ttl: float = 6.0
    command_timeout: float = 2.0


def default_node_id() -> str:
    """Unique per process, and readable in logs and in Redis: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
