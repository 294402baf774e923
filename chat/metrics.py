"""Prometheus metrics (``--metrics HOST:PORT``), on an address of their own.

Nothing on the hot path touches ``prometheus_client``: the server keeps plain integers
(:class:`Counters`, one increment per line read, per batch delivered, per connection) and
this collector reads them, and the sessions, when Prometheus scrapes. The scrape runs on
``prometheus_client``'s HTTP thread; it only reads, and copies the set of sessions in one
C-level step, so it never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from chat.hub import Counters, Hub
    from chat.session import Session

__all__ = ["MetricsServer", "measure_lag"]

LAG_INTERVAL: Final = 0.5  # seconds between two event-loop lag samples


class _Collector(Collector):
    def __init__(self, hub: Hub, counters: Counters, sessions: Callable[[], Iterable[Session]]):
        self.hub = hub
        self.counters = counters
        self.sessions = sessions

    def collect(self) -> Iterable[Metric]:
        sessions = list(self.sessions())
        connections = GaugeMetricFamily(
            "chat_connections", "Open connections, by dialect.", labels=["dialect"]
        )
        by_dialect = collections.Counter(s.codec.name for s in sessions)
        for dialect, count in sorted(by_dialect.items()):
            connections.add_metric([dialect], count)
        yield connections
        yield GaugeMetricFamily("chat_users", "Registered users.", value=len(self.hub.members))
        yield GaugeMetricFamily("chat_rooms", "Rooms in memory.", value=len(self.hub.room_names()))
        yield _counter(
            "chat_registrations",
            "Registrations, by dialect.",
            "dialect",
            self.counters.registrations,
        )
        yield _counter(
            "chat_lines_in",
            "Lines (and frames) read, by dialect.",
            "dialect",
            self.counters.lines_in,
        )
        said = CounterMetricFamily("chat_messages", "Room messages and actions said.")
        said.add_metric([], self.hub.said)
        yield said
        delivered = CounterMetricFamily(
            "chat_deliveries", "Room events pushed to members (one per member per batch)."
        )
        delivered.add_metric([], self.hub.outbox.delivered)
        yield delivered
        yield _counter(
            "chat_disconnects",
            "Connections closed, by reason (slow readers: send_queue_full).",
            "reason",
            self.counters.disconnects,
        )
        yield GaugeMetricFamily(
            "chat_queue_bytes",
            "Bytes waiting to be sent, queued or in transport buffers, all clients.",
            value=sum(s.backlog for s in sessions),
        )
        yield GaugeMetricFamily(
            "chat_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL} s timer fired, the last time.",
            value=self.counters.loop_lag,
        )


def _counter(
    name: str, doc: str, label: str, counts: collections.Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
    return family


class MetricsServer:
    """``prometheus_client``'s HTTP server on its own address and thread, stopped with the
    chat server."""

    def __init__(
        self, address: str, hub: Hub, counters: Counters, sessions: Callable[[], Iterable[Session]]
    ) -> None:
        host, _, port = address.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(hub, counters, sessions))
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


async def measure_lag(counters: Counters) -> None:
    """Sample how late the event loop runs a timer: a busy or blocked loop shows here."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL)
        counters.loop_lag = max(0.0, loop.time() - start - LAG_INTERVAL)
