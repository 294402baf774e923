"""Command-line entry points: ``chat-server``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Sequence

from chat import __version__
from chat.errors import ProtocolError
from chat.ircd import DEFAULT_SERVER_NAME
from chat.protocol import validate_nick
from chat.server import ChatServer, ServerConfig
from chat.session import Limits
from chat.sqlite_store import SchemaVersionError

__all__ = ["build_server_parser", "server_main"]

log = logging.getLogger("chat.cli")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show every option's default, in words where a bare value would mislead (None, "")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def default_db_path() -> str:
    """Where a server started from a shell keeps its database: the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "chat", "chat.db")


def build_server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    limits = Limits()
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="A chat server for telnet, netcat and programs. Protocol: protocol.md.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--version", action="version", version=f"chat-server {__version__}")
    add("--host", default=None, help="address to listen on (default: all interfaces)")
    add("--port", type=_count, default=defaults.port, help="TCP port; 0 picks a free one")
    add(
        "--history",
        type=_count,
        default=defaults.history,
        help="messages replayed when joining a room; 0 turns history off",
    )
    add(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop; auto uses uvloop when it is installed",
    )
    add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr",
    )
    group = parser.add_argument_group("limits (see protocol.md, Limits)")
    add = group.add_argument
    add(
        "--max-line",
        type=_positive,
        default=limits.max_line,
        metavar="BYTES",
        help="longest accepted line; longer lines are refused and discarded",
    )
    add(
        "--send-queue",
        type=_positive,
        default=limits.send_queue,
        metavar="BYTES",
        help="output a client may leave unread before it is disconnected",
    )
    add(
        "--rate",
        type=_seconds,
        default=limits.rate,
        metavar="LINES_PER_SECOND",
        help="sustained lines per second per connection; 0 disables flood control",
    )
    add(
        "--burst",
        type=_positive,
        default=limits.burst,
        metavar="LINES",
        help="lines a connection may send at once before the rate applies",
    )
    add(
        "--register-timeout",
        type=_seconds,
        default=limits.register_timeout,
        metavar="SECONDS",
        help="time a new connection has to choose a nickname",
    )
    add(
        "--ping-interval",
        type=_seconds,
        default=limits.ping_interval,
        metavar="SECONDS",
        help="idle time before a JSON or IRC client is pinged; 0 disables pings",
    )
    add(
        "--ping-timeout",
        type=_seconds,
        default=limits.ping_timeout,
        metavar="SECONDS",
        help="time a pinged JSON or IRC client has to answer",
    )
    add(
        "--greet-delay",
        type=_seconds,
        default=limits.greet_delay,
        metavar="SECONDS",
        help="silence after which a new connection is greeted as a person (IRC clients "
        "speak first and are never greeted)",
    )
    add(
        "--max-clients",
        type=_positive,
        default=defaults.max_clients,
        metavar="N",
        help="connections the server holds at once",
    )
    add(
        "--max-per-ip",
        type=_count,
        default=defaults.max_per_ip,
        metavar="N",
        help="connections from one IP address; 0 means no limit",
    )
    add(
        "--max-rooms",
        type=_positive,
        default=defaults.max_rooms,
        metavar="N",
        help="rooms one user may be in at once",
    )
    add(
        "--max-total-rooms",
        type=_positive,
        default=defaults.max_total_rooms,
        metavar="N",
        help="rooms the server holds at once; creating one more is refused (rooms_full)",
    )
    add(
        "--history-bytes",
        type=_count,
        default=defaults.history_bytes,
        metavar="BYTES",
        help="history kept in all rooms together; the least recently active room's goes first",
    )
    add(
        "--announce-limit",
        type=_positive,
        default=defaults.announce_limit,
        metavar="MEMBERS",
        help="rooms with more members do not announce joins, parts and quits, and list "
        "their members only on /who",
    )
    group = parser.add_argument_group("accounts, persistence and moderation (see README)")
    add = group.add_argument
    add(
        "--db",
        default=default_db_path(),
        metavar="PATH",
        help="SQLite database of history, topics, accounts, claimed rooms and bans; "
        ":memory: keeps nothing (with --redis, Redis keeps all of it instead)",
    )
    add(
        "--history-keep",
        type=_positive,
        default=defaults.history_keep,
        metavar="LINES",
        help="lines of each room's history kept in the database, for /history",
    )
    add(
        "--admin",
        action="append",
        default=[],
        metavar="ACCOUNT",
        help="an account that operates every room and may /kill and /gban; repeatable "
        "(default: none)",
    )
    add(
        "--login-failures",
        type=_positive,
        default=defaults.login_failures,
        metavar="N",
        help="failed logins an address may make per minute",
    )
    add(
        "--account-failures",
        type=_positive,
        default=defaults.account_failures,
        metavar="N",
        help="failed logins to one account, from anywhere, per minute",
    )
    add(
        "--max-ignores",
        type=_positive,
        default=defaults.max_ignores,
        metavar="N",
        help="people one user may /ignore",
    )
    group = parser.add_argument_group("TLS")
    add = group.add_argument
    add("--tls-cert", metavar="PATH", help="serve TLS with this certificate chain (PEM)")
    add("--tls-key", metavar="PATH", help="private key for --tls-cert (PEM)")
    group = parser.add_argument_group("cluster (see README, Cluster mode)")
    add = group.add_argument
    add(
        "--redis",
        metavar="URL",
        help="join the cluster that shares this Redis, e.g. "
        "redis://127.0.0.1:6379/0 (default: no cluster, this process is the whole chat)",
    )
    add(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="run N processes on one port (SO_REUSEPORT); needs --redis",
    )
    add(
        "--node-id",
        default="",
        metavar="NAME",
        help="this node's name in the cluster (default: host-pid-random)",
    )
    add(
        "--redis-prefix",
        default="chat:",
        metavar="PREFIX",
        help="prefix of every Redis key and channel, to share one Redis between chats",
    )
    add(
        "--server-name",
        default=DEFAULT_SERVER_NAME,
        metavar="NAME",
        help="the name IRC clients know this server by (in numerics, PONG, WHOIS)",
    )
    add(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an Origin browsers may open the WebSocket (/ws) from, e.g. "
        "https://chat.example.org; repeatable (default: the server's own host)",
    )
    add(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on this address, never the chat port (default: off)",
    )
    add("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    return parser


def _have_redis() -> bool:
    try:
        import redis  # noqa: F401, PLC0415 - only asking whether the cluster extra is there
    except ImportError:
        return False
    return True


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        history=args.history,
        max_rooms=args.max_rooms,
        announce_limit=args.announce_limit,
        max_total_rooms=args.max_total_rooms,
        history_bytes=args.history_bytes,
        db=args.db,
        history_keep=args.history_keep,
        admins=tuple(args.admin),
        login_failures=args.login_failures,
        account_failures=args.account_failures,
        max_ignores=args.max_ignores,
        max_clients=args.max_clients,
        max_per_ip=args.max_per_ip,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        redis_url=args.redis,
        node_id=args.node_id,
        redis_prefix=args.redis_prefix,
        server_name=args.server_name,
        allowed_origins=tuple(args.allowed_origin),
        metrics=args.metrics,
        reuse_port=args.reuse_port,
        limits=Limits(
            max_line=args.max_line,
            send_queue=args.send_queue,
            rate=args.rate,
            burst=args.burst,
            register_timeout=args.register_timeout,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_timeout,
            greet_delay=args.greet_delay,
        ),
    )


async def run_server(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; a second signal drops everyone at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with ChatServer(config) as server:

        def on_signal(signum: int) -> None:
            if not stop.is_set():
                log.info("%s received: shutting down", signal.Signals(signum).name)
                stop.set()
            else:
                log.warning("second %s: closing every connection now", signal.Signals(signum).name)
                server.abort()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        await stop.wait()
    return 0


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on; uvloop roughly doubles throughput where it is available."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, and only the server's main needs it
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("chat-server: --loop uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def server_main(argv: Sequence[str] | None = None) -> int:
    parser = build_server_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.workers > 1 and not args.redis:
        parser.error(
            "--workers above 1 needs --redis: separate processes share one chat only "
            "through a cluster"
        )
    if args.redis and not _have_redis():
        parser.error(
            "--redis needs redis-py, which is not installed: "
            "pip install 'chat[cluster]' (or: pip install 'redis[hiredis]')"
        )
    for admin in args.admin:
        try:
            validate_nick(admin)
        except ProtocolError as exc:
            parser.error(f"--admin {admin}: no account can have that name: {exc.message}")
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    config = config_from_args(args)
    if args.workers > 1:
        return run_workers(config, args.workers, args.loop)
    return _serve(config, args.loop)


def _serve(config: ServerConfig, loop: str) -> int:
    factory = loop_factory(loop)
    log.debug("event loop: %s", "uvloop" if factory else "asyncio")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(run_server(config))
    except (OSError, SchemaVersionError, sqlite3.DatabaseError) as exc:
        log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the whole story
        return 1


def run_workers(config: ServerConfig, workers: int, loop: str) -> int:
    """Start ``workers`` servers on one port and supervise them until a signal.

    Each child is handed its :class:`ServerConfig` (pickled by ``multiprocessing``), never
    an edited command line: what the parent parsed is exactly what every child runs. This
    parent runs no event loop: it only starts children, forwards SIGINT/SIGTERM to them,
    and waits. With ``--port 0`` it reserves a port first (bound with SO_REUSEPORT, never
    listening) so every child binds the same one.
    """
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((config.host or "0.0.0.0", config.port))
    port = reserved.getsockname()[1]
    prefix = config.node_id or socket.gethostname()
    spawn = multiprocessing.get_context("spawn")
    children = [
        spawn.Process(
            target=_worker_main,
            args=(
                dataclasses.replace(
                    config, port=port, reuse_port=True, node_id=f"{prefix}-w{index}"
                ),
                loop,
                logging.getLogger().level,
            ),
            name=f"chat-server-w{index}",
        )
        for index in range(workers)
    ]
    for child in children:
        child.start()
    reserved.close()
    log.info("started %d workers on port %d", len(children), port)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for child in children:
        child.join()
    return 0 if all(child.exitcode == 0 for child in children) else 1


def _worker_main(config: ServerConfig, loop: str, log_level: int) -> None:
    """One ``--workers`` child: its own session (a Ctrl-C at the terminal reaches only the
    parent, which forwards it once; a second signal would make a child abort)."""
    os.setsid()
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    sys.exit(_serve(config, loop))


if __name__ == "__main__":
    sys.exit(server_main())
