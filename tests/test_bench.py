"""chat-bench runs end to end against a real chat-server and prints a well-formed summary.

Tiny loads only, and no timing assertions: the figures themselves are measured by
benchmarks/run.py and published in docs/performance.md, never by the test suite.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import SyncServerProcess, program, server_process

WAIT = 30.0

FANOUT_KEYS = {
    "scenario",
    "protocol",
    "clients",
    "connected",
    "senders",
    "rate",
    "duration_s",
    "sent",
    "expected",
    "received",
    "received_in_window",
    "loss",
    "deliveries_per_s",
    "latency_ms_p50",
    "latency_ms_p99",
    "latency_ms_max",
    "latency_samples",
    "generator_cpu",
    "server_cpu",
    "server_rss_kib_before",
    "server_rss_kib_max",
    "generator_loop",
}


@pytest.fixture(scope="module")
def chat_server() -> Iterator[SyncServerProcess]:
    yield from _start_server()


@pytest.fixture(scope="module")
def second_server() -> Iterator[SyncServerProcess]:
    yield from _start_server()


def _start_server() -> Iterator[SyncServerProcess]:
    """``chat-server --port 0`` in a subprocess; the port is read from its log line."""
    with server_process(
        "--log-level=info",
        "--rate=0",  # chat-bench sends flat out; flood control would refuse lines
        "--max-per-ip=0",
        timeout=WAIT,
    ) as server:
        yield server


def bench(
    server: SyncServerProcess, *args: str, also: SyncServerProcess | None = None
) -> dict[str, Any]:
    """Run chat-bench against ``server`` (and ``also``: the clients alternate between them)."""
    servers = [server] if also is None else [server, also]
    done = subprocess.run(
        [
            *program("chat-bench", "chat.bench"),
            *args,
            f"--port={','.join(str(s.port) for s in servers)}",
            f"--server-pid={','.join(str(s.proc.pid) for s in servers)}",
            "--register-timeout=10",
            "--drain-timeout=10",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # one JSON summary line per run
    summary: dict[str, Any] = json.loads(lines[0])
    assert "error" not in summary, summary
    return summary


def test_fanout_summary(chat_server: SyncServerProcess) -> None:
    summary = bench(chat_server, "fanout", "--clients=5", "--duration=1", "--window=200")
    assert summary.keys() >= FANOUT_KEYS
    assert summary["scenario"] == "fanout"
    assert summary["connected"] == 5
    assert summary["sent"] > 0
    # The chat dialect echoes to the sender: every message reaches all 5.
    assert summary["expected"] == summary["sent"] * 5
    assert summary["received"] == summary["expected"]
    assert summary["loss"] == 0
    assert summary["latency_samples"] > 0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    assert summary["latency_ms_p99"] <= summary["latency_ms_max"]
    assert summary["server_rss_kib_before"] > 0


def test_fanout_at_a_rate(chat_server: SyncServerProcess) -> None:
    summary = bench(chat_server, "fanout", "--clients=5", "--duration=1", "--rate=50")
    assert summary["rate"] == 50
    assert 0 < summary["sent"] <= 60  # paced: about 50 in 1 s, never more
    assert summary["loss"] == 0


@pytest.mark.parametrize("protocol", ["ws", "irc"])
def test_fanout_over_websocket_and_irc(chat_server: SyncServerProcess, protocol: str) -> None:
    """The browser dialect (JSON over WebSocket, echoed) and IRC (not echoed) on the same
    port, counted like the text dialect."""
    summary = bench(
        chat_server,
        "fanout",
        f"--protocol={protocol}",
        "--clients=5",
        "--duration=1",
        "--window=200",
    )
    assert (summary["protocol"], summary["connected"]) == (protocol, 5)
    assert summary["sent"] > 0
    recipients = 5 if protocol == "ws" else 4  # IRC clients never get their own lines
    assert summary["expected"] == summary["sent"] * recipients
    assert summary["received"] == summary["expected"]
    assert summary["latency_samples"] > 0


def test_conns_summary(chat_server: SyncServerProcess) -> None:
    summary = bench(chat_server, "conns", "--clients=20", "--settle=0.1")
    assert summary["scenario"] == "conns"
    assert summary["connected"] == summary["held"] == 20
    assert summary["errors"] == 0
    assert summary["error_kinds"] == {}
    assert summary["connect_s"] > 0
    assert {"server_rss_kib_before", "server_rss_kib_after", "server_kib_per_conn"} <= set(summary)


def test_slow_summary(chat_server: SyncServerProcess) -> None:
    summary = bench(
        chat_server, "slow", "--clients=6", "--slow=1", "--rate=50", "--duration=1", "--size=100"
    )
    assert summary["scenario"] == "slow"
    assert summary["slow_clients"] == 1
    assert summary["senders"] == 5  # the slow one does not send
    assert summary["expected"] == summary["sent"] * 5  # nor count as a recipient
    assert summary["loss"] == 0
    assert summary["slow_dropped"] in (0, 1)  # 1 s is too little to fill its buffers
    assert isinstance(summary["slow_dropped_at_s"], list)
    assert isinstance(summary["server_rss_kib_over_time"], list)


def test_ports_and_pids_take_lists() -> None:
    from chat.bench import build_parser  # noqa: PLC0415

    args = build_parser().parse_args(["conns", "--port=9001,9002", "--server-pid=12,34"])
    assert args.port == (9001, 9002)
    assert args.server_pid == (12, 34)
    args = build_parser().parse_args(["conns", "--port=9001"])
    assert args.port == (9001,)
    assert args.server_pid == ()  # the default, 0, means none


def test_clients_alternate_between_ports(
    chat_server: SyncServerProcess, second_server: SyncServerProcess
) -> None:
    summary = bench(chat_server, "conns", "--clients=6", "--settle=0.1", also=second_server)
    assert summary["ports"] == [chat_server.port, second_server.port]
    assert summary["connected"] == summary["held"] == 6
    assert summary["errors"] == 0
    assert set(summary["server_cpu_each"]) == {
        str(chat_server.proc.pid),
        str(second_server.proc.pid),
    }


def test_fanout_over_two_ports_splits_latency(chat_server: SyncServerProcess) -> None:
    # The same server twice: one room, so every message still reaches everyone, and the
    # probes tell "same port" from "other port" senders apart.
    summary = bench(
        chat_server, "fanout", "--clients=6", "--duration=1", "--rate=50", also=chat_server
    )
    assert summary["ports"] == [chat_server.port] * 2
    assert summary["loss"] == 0
    assert summary["latency_samples_cross_node"] > 0
    assert summary["latency_ms_p99_same_node"] is not None
    assert summary["latency_ms_p99_cross_node"] is not None
