"""Server lifecycle: listen, admit connections, shut down gracefully and in bounded time.

:class:`ChatServer` is an async context manager around :func:`asyncio.start_server`::

    async with ChatServer(ServerConfig(port=0)) as server:
        print(server.port)
        await server.serve_forever()

``close()`` is idempotent: stop accepting, tell every connection the server is going
away, give them ``shutdown_grace`` seconds to flush, then drop whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from chat.accounts import LoginThrottle
from chat.codecs import JSON, TEXT
from chat.errors import ErrorCode
from chat.hub import (
    DEFAULT_ANNOUNCE_LIMIT,
    DEFAULT_HISTORY_BYTES,
    DEFAULT_MAX_IGNORES,
    DEFAULT_MAX_ROOMS,
    DEFAULT_MAX_TOTAL_ROOMS,
    Backend,
    Hub,
)
from chat.ircd import DEFAULT_SERVER_NAME
from chat.metrics import MetricsServer, measure_lag
from chat.protocol import Bye
from chat.session import Limits, Session
from chat.sqlite_store import open_store
from chat.storage import MemoryStore, Store

if TYPE_CHECKING:
    from chat.cluster import RedisBackend

__all__ = ["ChatServer", "ServerConfig"]

log = logging.getLogger("chat.server")

# asyncio's default (100) drops SYNs under a burst of connects, which then retry after a
# full second; the kernel caps this at net.core.somaxconn anyway.
LISTEN_BACKLOG = 4096
# A refused connection waits this long for the client's first line, so a program that opens
# with a JSON hello is refused in JSON, which it can parse; people get the text line.
REFUSAL_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``chat-server`` can be told on its command line."""

    host: str | None = None
    port: int = 9000
    history: int = 50
    max_rooms: int = DEFAULT_MAX_ROOMS
    announce_limit: int = DEFAULT_ANNOUNCE_LIMIT
    max_total_rooms: int = DEFAULT_MAX_TOTAL_ROOMS
    history_bytes: int = DEFAULT_HISTORY_BYTES
    db: str = ":memory:"  # the command line's default is a file (chat.cli.default_db_path)
    history_keep: int = 10_000
    admins: tuple[str, ...] = ()
    login_failures: int = 5
    account_failures: int = 10
    max_ignores: int = DEFAULT_MAX_IGNORES
    limits: Limits = field(default_factory=Limits)
    max_clients: int = 10_000
    max_per_ip: int = 16
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_handshake_timeout: float = 10.0
    shutdown_grace: float = 5.0
    keepalive_idle: int = 60
    reuse_port: bool = False
    redis_url: str | None = None
    node_id: str = ""
    redis_prefix: str = "chat:"
    server_name: str = DEFAULT_SERVER_NAME
    allowed_origins: tuple[str, ...] = ()  # browsers' Origin for /ws; () = the server's host
    metrics: str | None = None  # HOST:PORT of the Prometheus metrics, off by default


# Descriptors a server needs besides its clients: listening sockets, the event loop, logs,
# the cluster's connections, a refused client's moment.
DESCRIPTOR_RESERVE = 64
_last_out_of_descriptors = 0.0


def fit_descriptors(wanted: int) -> int:
    """Raise the soft limit on open files to the hard limit, and return how many clients
    fit in it: ``wanted``, or fewer (with a warning) if the descriptors cannot hold them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY or wanted + DESCRIPTOR_RESERVE <= soft:
        return wanted
    fitted = max(1, soft - DESCRIPTOR_RESERVE)
    log.warning(
        "only %d open files allowed (ulimit -n): --max-clients lowered from %d to %d",
        soft,
        wanted,
        fitted,
    )
    return fitted


def quiet_when_out_of_descriptors(
    loop: asyncio.AbstractEventLoop, context: dict[str, object]
) -> None:
    """Say that descriptors ran out at most once a second (asyncio would log each failed
    accept with a traceback); everything else goes to the default handler."""
    global _last_out_of_descriptors  # noqa: PLW0603 - one process, one log line a second
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        now = time.monotonic()
        if now - _last_out_of_descriptors >= 1.0:
            _last_out_of_descriptors = now
            log.error("out of file descriptors: new connections wait (%s)", exc.strerror)
        return
    loop.default_exception_handler(context)


def _enable_keepalive(sock: socket.socket, idle: int) -> None:
    """Let the kernel notice peers that vanished without a FIN (half-open connections)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 6))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)


class ChatServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.cluster = self._cluster_backend()
        backend: Backend | None = self.cluster
        self.hub = Hub(
            history=config.history,
            max_rooms=config.max_rooms,
            announce_limit=config.announce_limit,
            max_total_rooms=config.max_total_rooms,
            history_bytes=config.history_bytes,
            max_ignores=config.max_ignores,
            backend=backend,
            throttle=LoginThrottle(
                per_address=config.login_failures, per_account=config.account_failures
            ),
            admins=config.admins,
        )
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.max_clients = config.max_clients  # lowered at start if descriptors are short
        self._sessions: set[Session] = set()
        self.metrics: MetricsServer | None = None  # --metrics
        self._lag: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._per_ip: Counter[str] = Counter()
        self._closed = asyncio.Event()
        self._closing = False

    async def __aenter__(self) -> ChatServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _cluster_backend(self) -> RedisBackend | None:
        if not self.config.redis_url:
            return None
        # Imported here so that a single process never needs redis-py.
        from chat.cluster import ClusterSettings, RedisBackend  # noqa: PLC0415

        settings = ClusterSettings(
            url=self.config.redis_url, node_id=self.config.node_id, prefix=self.config.redis_prefix
        )
        return RedisBackend(settings, history=self.config.history, keep=self.config.history_keep)

    async def start(self) -> None:
        self._tls = self._ssl_context()
        self.max_clients = fit_descriptors(self.config.max_clients)
        asyncio.get_running_loop().set_exception_handler(quiet_when_out_of_descriptors)
        await self.hub.start(await self._open_store())
        if self.cluster is not None:
            await self.cluster.start(self.hub)
        self._server = await asyncio.start_server(
            self._handle,
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
            reuse_port=self.config.reuse_port or None,
        )
        log.info(
            "listening on %s%s",
            ", ".join(self.addresses),
            " (TLS)" if self._tls else "",
        )
        if self.config.metrics:
            self.metrics = MetricsServer(
                self.config.metrics, self.hub, self.hub.counters, lambda: self._sessions
            )
            self._lag = asyncio.get_running_loop().create_task(measure_lag(self.hub.counters))
            log.info("metrics on %s", self.config.metrics)

    async def _open_store(self) -> Store:
        """Redis in cluster mode, else the SQLite file (``:memory:``: nothing is kept)."""
        if self.cluster is not None:
            return self.cluster.store()
        if self.config.db == ":memory:":
            return MemoryStore(keep=self.config.history_keep)
        store = await open_store(self.config.db, keep=self.config.history_keep)
        log.info("database %s", self.config.db)
        return store

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    @property
    def addresses(self) -> list[str]:
        """Where the server listens, as ``host:port`` (``[v6]:port``) strings."""
        assert self._server is not None
        found = []
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return found

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` has finished."""
        await self._closed.wait()

    # --- connections ---------------------------------------------------------------------

    def _refusal(self, ip: str) -> tuple[ErrorCode, str] | None:
        if self._closing:
            return ErrorCode.SERVER_SHUTDOWN, "The server is shutting down."
        if len(self._handlers) >= self.max_clients:
            return ErrorCode.SERVER_FULL, (
                f"The server is full ({self.max_clients} connections); try again later."
            )
        if self.config.max_per_ip and self._per_ip[ip] >= self.config.max_per_ip:
            return ErrorCode.TOO_MANY_CONNECTIONS, (
                f"Too many connections from your address (at most {self.config.max_per_ip})."
            )
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by asyncio for each accepted connection, in a task of its own.

        A connection counts against ``--max-clients`` and its address's ``--max-per-ip``
        from accept, before any TLS handshake: stalled handshakes are connections too.
        """
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        refusal = self._refusal(ip)
        if refusal is not None:
            if self._tls is None:
                await self._refuse(reader, writer, ip, *refusal)
            else:  # nothing can be said before a handshake, and a handshake costs
                log.info("refused peer=%s reason=%s (before TLS)", ip, refusal[0])
                writer.transport.abort()
            return
        self._handlers.add(task)
        self._per_ip[ip] += 1
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                _enable_keepalive(sock, self.config.keepalive_idle)
            if self._tls is not None and not await self._handshake(writer, ip):
                return
            banned = await self.hub.refused(ip)
            if banned is not None:
                await self._refuse(reader, writer, ip, ErrorCode.BANNED, banned)
                return
            session = Session(
                reader,
                writer,
                self.hub,
                self.config.limits,
                server_name=self.config.server_name,
                allowed_origins=self.config.allowed_origins,
            )
            self._sessions.add(session)
            try:
                await session.run()
            finally:
                self._sessions.discard(session)
        finally:
            self._handlers.discard(task)
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]

    async def _handshake(self, writer: asyncio.StreamWriter, ip: str) -> bool:
        """Upgrade an accepted connection to TLS, within ``tls_handshake_timeout``."""
        assert self._tls is not None
        try:
            await writer.start_tls(
                self._tls, ssl_handshake_timeout=self.config.tls_handshake_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake failed peer=%s: %s", ip, exc or type(exc).__name__)
            writer.transport.abort()
            return False
        return True

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
        code: ErrorCode,
        text: str,
    ) -> None:
        log.info("refused peer=%s reason=%s", ip, code)
        first = b""
        try:
            async with asyncio.timeout(REFUSAL_WAIT):
                first = await reader.read(64)
        except (TimeoutError, OSError):
            pass
        codec = JSON if first.lstrip().startswith(b"{") else TEXT
        writer.write(codec.encode(Bye(code=code, text=text)))
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (TimeoutError, OSError):
            writer.transport.abort()

    # --- shutdown ------------------------------------------------------------------------

    async def close(self, reason: str = "The server is shutting down.") -> None:
        """Stop accepting, say goodbye to everyone, wait (bounded) for them to go."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        log.info("shutting down: %d connections", len(self._sessions))
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.close(ErrorCode.SERVER_SHUTDOWN, reason)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.config.shutdown_grace)
        self.abort()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=1.0)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()
        await self.hub.outbox.drain()
        await self.hub.store.close()
        if self._lag is not None:
            self._lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        if self.cluster is not None:
            await self.cluster.close()
        self._closed.set()
        log.info("stopped")

    def abort(self) -> None:
        """Drop every connection at once (a second signal, or after the grace period)."""
        for session in list(self._sessions):
            session.abort()
