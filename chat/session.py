"""One client connection: a reader loop, a writer task, flood control and timeouts.

The reader loop runs in the connection's own task: it reads whatever bytes are available,
frames them into lines, and hands each parsed command to the hub. Everything the client
must receive goes through :meth:`Session.push`, which never blocks. While the client keeps
up, bytes go straight to the transport (the kernel takes them at once). The first time it
falls behind, the session gets its bounded queue and its writer task, which from then on
writes everything already queued in a single call before one ``drain()``; an idle or
keeping-up client never pays for them. A client whose queue (plus what waits in the
transport buffer) exceeds ``send_queue`` bytes is told why and disconnected, so a client
that stops reading costs everybody else nothing.

A session ends in one of three ways, all funnelled through :meth:`close` or
:meth:`_overflow`: the peer goes away (EOF, reset), the peer asks (``/quit``), or the server
decides (flood, timeout, shutdown, overflow). In every case the hub forgets the member
first, then queued output is flushed within a grace period, then the socket closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, cast

from chat.codecs import JSON, TEXT, Codec, JsonCodec, TextCodec, decoder_for
from chat.commands import (
    CONNECTION_COMMANDS,
    HelloCommand,
    HelpCommand,
    LoginCommand,
    NickCommand,
    PingCommand,
    PongCommand,
    QuitCommand,
    Request,
    WidthCommand,
    help_text,
)
from chat.errors import ErrorCode, ProtocolError
from chat.hub import Hub, Member
from chat.irc import IrcCodec, looks_like_irc
from chat.ircd import DEFAULT_SERVER_NAME, IrcHandler
from chat.protocol import (
    MAX_WIDTH,
    MIN_WIDTH,
    Bye,
    Error,
    Event,
    FrameError,
    Hello,
    LineFramer,
    Notice,
    Ping,
    Pong,
    decode_line,
    sniff_foreign,
)
from chat.web import WebHandler

__all__ = ["FloodGate", "Limits", "Session", "Verdict"]

log = logging.getLogger("chat.session")

READ_CHUNK: Final = 64 * 1024
CLOSE_GRACE: Final = 2.0
MAX_REGISTRATION_ATTEMPTS: Final = 10
SERVER_NAME: Final = "chat"
NICK_PROMPT: Final = "Choose a nickname (letters, digits, _ or -, starting with a letter):"
_session_ids = itertools.count(1)
TELNET_WILL_NAWS: Final = b"\xff\xfb\x1f"
TELNET_DO_NAWS: Final = b"\xff\xfd\x1f"
# While a password is typed the server says it will echo, so telnet stops echoing locally
# (and the server echoes nothing); "won't echo" afterwards gives telnet its echo back.
TELNET_WILL_ECHO: Final = b"\xff\xfb\x01"
TELNET_WONT_ECHO: Final = b"\xff\xfc\x01"
TELNET_DO_ECHO: Final = b"\xff\xfd\x01"
_NAWS_RE: Final = re.compile(rb"\xff\xfa\x1f((?:\xff\xff|[^\xff]){4})\xff\xf0")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits; every one is a ``chat-server`` flag (see protocol.md, Limits)."""

    max_line: int = 2048
    send_queue: int = 256 * 1024
    rate: float = 5.0
    burst: int = 20
    register_timeout: float = 60.0
    ping_interval: float = 60.0
    ping_timeout: float = 30.0
    greet_delay: float = 0.3

    @property
    def max_garbage(self) -> int:
        """Bytes without any newline after which a peer is not speaking this protocol."""
        return max(64 * 1024, 16 * self.max_line)


class Verdict(Enum):
    ALLOW = auto()
    REFUSE = auto()
    DISCONNECT = auto()


class FloodGate:
    """A token bucket per connection: ``burst`` lines at once, then ``rate`` lines a second.

    A refused line still costs a token, so the debt of a client that keeps flooding grows;
    once it exceeds another ``burst`` the flood is sustained and the client is dropped. A
    person pasting a few lines too many only sees some refused. ``rate <= 0`` disables it.
    """

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> Verdict:
        if self._rate <= 0:
            return Verdict.ALLOW
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate) - 1.0
        self._last = now
        if self._tokens >= 0:
            return Verdict.ALLOW
        if self._tokens < -self._burst:
            return Verdict.DISCONNECT
        return Verdict.REFUSE


class Session:
    """Serve one client from connect to close. Create it, then await :meth:`run`."""

    __slots__ = (
        "_allowed_origins",
        "_client_echo_off",
        "_closing",
        "_ending",
        "_failed_registrations",
        "_flood",
        "_flood_told",
        "_framer",
        "_greeted",
        "_password_for",
        "_ping_outstanding",
        "_queue",
        "_queue_ended",
        "_queued_bytes",
        "_reader",
        "_started",
        "_stopped",
        "_tasks",
        "_transport",
        "_writer",
        "_writer_task",
        "address",
        "close_code",
        "close_reason",
        "codec",
        "hub",
        "id",
        "irc",
        "limits",
        "member",
        "peer_address",
        "server_name",
        "web",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hub: Hub,
        limits: Limits,
        *,
        server_name: str = DEFAULT_SERVER_NAME,
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.id = next(_session_ids)
        self.hub = hub
        self.limits = limits
        self.member: Member | None = None
        self.close_reason = ""
        self.close_code = ""  # why, as an error code (metrics); "" when the peer went
        peer = writer.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = peer[0] if isinstance(peer, tuple) else str(peer)
        self._password_for: str | None = None  # the registered nickname whose password is next
        self._client_echo_off = False  # a telnet client agreed to stop echoing
        self.codec: Codec = TEXT
        self.irc: IrcHandler | None = None  # an IRC client's commands
        self.server_name = server_name  # what IRC clients know this server as
        self.web: WebHandler | None = None  # a browser: HTTP, then maybe a WebSocket
        self._allowed_origins = allowed_origins
        self._greeted = False
        self._reader = reader
        self._writer = writer
        # A stream's transport reads too; the StreamWriter only types it as a WriteTransport.
        self._transport = cast(asyncio.Transport, writer.transport)
        self._framer = LineFramer(limits.max_line, limits.max_garbage)
        self._flood = FloodGate(limits.rate, limits.burst)
        self._flood_told = False  # a flood error was sent for the current run of refusals
        self._queue: asyncio.Queue[bytes | None] | None = None  # made when first needed
        self._queued_bytes = 0
        self._closing = False  # no more output is accepted
        self._ending = False  # no more input is read: the session is on its way out
        self._stopped = asyncio.Event()
        self._queue_ended = False
        self._tasks: asyncio.TaskGroup | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._ping_outstanding = False
        self._failed_registrations = 0
        self._started = asyncio.get_running_loop().time()

    # --- the Peer interface the hub uses -----------------------------------------------------

    def push(self, data: bytes) -> None:
        """Send bytes without ever blocking; overflow disconnects this client.

        While this client keeps up (nothing in its queue, nothing waiting in the transport),
        the bytes go straight to the transport, which hands them to the kernel at once: no
        task switch per recipient. As soon as it falls behind, the queue and the writer task
        take over, in order, and the byte budget applies to both.
        """
        if self._closing:
            return
        transport = self._transport
        backlog = transport.get_write_buffer_size()
        if not backlog and not self._queued_bytes and not transport.is_closing():
            transport.write(data)
            return
        queue = self._queue or self._start_writer()
        buffered = self._queued_bytes + backlog + len(data)
        if buffered > self.limits.send_queue or queue.full():
            self._overflow()
            return
        queue.put_nowait(data)
        self._queued_bytes += len(data)

    @property
    def backlog(self) -> int:
        """Bytes waiting for this client: queued, or in the transport's buffer."""
        return self._queued_bytes + self._transport.get_write_buffer_size()

    @property
    def busy(self) -> bool:
        """More than half of this client's send budget is waiting: it is falling behind, and
        what is addressed to it alone (private messages) is refused to its senders before
        its own queue overflows (``recipient_busy``)."""
        backlog = self._queued_bytes + self._transport.get_write_buffer_size()
        return backlog > self.limits.send_queue // 2

    def _start_writer(self) -> asyncio.Queue[bytes | None]:
        """The first time this client falls behind: its bounded queue and its writer task."""
        assert self._tasks is not None, "push() before run()"
        self._queue = asyncio.Queue(maxsize=max(64, self.limits.send_queue // 32))
        self._writer_task = self._tasks.create_task(self._write_loop(self._queue))
        return self._queue

    def send(self, event: Event) -> None:
        """Send an event of this session's own (a reply, an error, a bye) through the hub's
        outbox, so it reaches the client in its place among everything else."""
        self.hub.outbox.send(self, event)

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        log.info("connect conn=%d peer=%s", self.id, self.peer_address)
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks  # owns the writer task, once there is one
                try:
                    await self._read_loop()
                finally:
                    await self._leave_hub()
                    # After everything the outbox holds for us, the quit notices included.
                    self.hub.outbox.then(lambda: self._stop("Connection closed", flush=True))
                    await self._flush()
        except* Exception as group:
            # _read_loop and _write_loop handle every error a peer can cause; what reaches
            # here is a bug, which must cost this connection only.
            self.close_reason = self.close_reason or "internal error"
            log.error("internal error conn=%d", self.id, exc_info=group.exceptions[0])  # noqa: TRY400
        finally:
            await self._close_transport()
            self.hub.counters.disconnects[self.close_code or "peer_closed"] += 1
            log.info(
                "disconnect conn=%d peer=%s nick=%s reason=%r duration=%.1fs",
                self.id,
                self.peer_address,
                self.member.nick if self.member else "-",
                self.close_reason or "closed",
                asyncio.get_running_loop().time() - self._started,
            )

    def close(self, code: ErrorCode, text: str, request: str | None = None) -> None:
        """Say goodbye with a reason, flush what is queued (bounded in time), disconnect.

        Input stops at once; output stops right after the ``bye``, in its place in the
        outbox, so whatever was sent before it still arrives first.
        """
        if self._ending:
            return
        self._ending = True
        self.close_reason = self.close_reason or text
        self.close_code = self.close_code or code.value
        self.send(Bye(code=code, text=text, re=request))
        self.hub.outbox.then(lambda: self._stop(text, flush=True))

    def abort(self) -> None:
        """Drop the connection now, without flushing (second shutdown signal)."""
        self._stop("server aborted", flush=False)
        self._transport.abort()

    def _overflow(self) -> None:
        """The client is not reading fast enough: tell it why (best effort) and drop it."""
        text = f"Send queue exceeded {self.limits.send_queue} bytes (you are not reading)."
        self.close_code = self.close_code or ErrorCode.SEND_QUEUE_FULL.value
        self._stop(text, flush=False)
        if not self._transport.is_closing():
            bye = Bye(code=ErrorCode.SEND_QUEUE_FULL, text=text)
            self._transport.write(self.codec.encode(bye))
        if self._writer_task is not None:
            self._writer_task.cancel()  # it may be stuck in drain() on this very client
        log.warning("slow reader conn=%d peer=%s dropped", self.id, self.peer_address)

    def _lost(self, reason: str) -> None:
        """The peer vanished: nothing more can be sent."""
        self._stop(reason, flush=False)

    def _stop(self, reason: str, *, flush: bool) -> None:
        """Accept no more output, end the writer's queue, make the reader see EOF. Idempotent."""
        self.close_reason = self.close_reason or reason
        self._closing = self._ending = True
        self._stopped.set()
        queue = self._queue
        if queue is not None:
            if not flush or queue.full():
                while not queue.empty():
                    queue.get_nowait()
                self._queued_bytes = 0
                self._queue_ended = False  # the end marker may have gone with the rest
            if not self._queue_ended:
                self._queue_ended = True
                queue.put_nowait(None)
        # Wake the reader with an EOF; stop the transport first, or the peer's next bytes
        # would be fed to a reader that has already seen its end.
        self._transport.pause_reading()
        self._reader.feed_eof()

    async def _flush(self) -> None:
        """Give the writer a bounded time to send what is queued; a stuck peer gets no more."""
        await self._stopped.wait()  # the outbox runs our _stop in its turn, this iteration
        if self._writer_task is not None:
            await asyncio.wait({self._writer_task}, timeout=CLOSE_GRACE)
            self._writer_task.cancel()

    async def _leave_hub(self) -> None:
        if self.member is not None:
            await self.hub.remove(self.member, self.close_reason or "Connection closed")

    async def _close_transport(self) -> None:
        writer = self._writer
        if not self._transport.is_closing():
            writer.close()
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await writer.wait_closed()
        except TimeoutError:
            self._transport.abort()
        except OSError:
            pass

    # --- writing -------------------------------------------------------------------------

    async def _write_loop(self, queue: asyncio.Queue[bytes | None]) -> None:
        """Write everything already queued in one call, then drain once; None ends it."""
        writer = self._writer
        while True:
            data = await queue.get()
            if data is None:
                return
            parts = [data]
            done = False
            while queue.qsize():
                more = queue.get_nowait()
                if more is None:
                    done = True
                    break
                parts.append(more)
            payload = data if len(parts) == 1 else b"".join(parts)
            self._queued_bytes -= len(payload)
            try:
                writer.write(payload)
                await writer.drain()
            except (OSError, RuntimeError) as exc:  # uvloop raises RuntimeError once reset
                self._lost(f"write failed: {getattr(exc, 'strerror', None) or exc}")
                return
            if done:
                return

    # --- reading -------------------------------------------------------------------------

    def _send_greeting(self) -> None:
        """People's greeting: sent once it is clear the peer is not an IRC client, which
        speaks first (see protocol.md, "Connections and lines")."""
        if self._greeted or self.irc is not None or self.web is not None:
            return
        self._greeted = True
        self.send(
            Notice(
                text=f"Welcome to {SERVER_NAME}! Programs: send a JSON hello (see protocol.md).\n"
                + NICK_PROMPT
            )
        )

    async def _read_chunk(self) -> bytes:
        """The next bytes from the peer, b"" at EOF; enforces registration and ping timeouts."""
        while True:
            try:
                if not self._greeted and self.irc is None and self.web is None:
                    # Silence first: a person at telnet or nc, who is waiting to be greeted.
                    try:
                        async with asyncio.timeout(self.limits.greet_delay):
                            return await self._reader.read(READ_CHUNK)
                    except TimeoutError:
                        self._send_greeting()
                        continue
                if self.member is None:
                    async with asyncio.timeout_at(self._started + self.limits.register_timeout):
                        return await self._reader.read(READ_CHUNK)
                if not isinstance(self.codec, TextCodec) and self.limits.ping_interval > 0:
                    wait = (
                        self.limits.ping_timeout
                        if self._ping_outstanding
                        else self.limits.ping_interval
                    )
                    async with asyncio.timeout(wait):
                        data = await self._reader.read(READ_CHUNK)
                    self._ping_outstanding = False
                    return data
                return await self._reader.read(READ_CHUNK)
            except TimeoutError:
                if self.member is None:
                    self.close(
                        ErrorCode.REGISTER_TIMEOUT,
                        f"No nickname within {self.limits.register_timeout:g} seconds.",
                    )
                    return b""
                if self._ping_outstanding:
                    self.close(
                        ErrorCode.PING_TIMEOUT,
                        f"No answer to ping within {self.limits.ping_timeout:g} seconds.",
                    )
                    return b""
                self._ping_outstanding = True
                self.send(Ping(text=str(int(time.time()))))
            except OSError as exc:
                self._lost(f"read failed: {exc.strerror or exc}")
                return b""

    async def _read_loop(self) -> None:
        first = True
        backend = self.hub.backend
        while not self._ending:
            if backend.congested:  # backpressure from the cluster link: read nothing more
                await backend.uncongested()
            data = await self._read_chunk()
            if not data:
                return
            if first:
                first = False
                foreign = sniff_foreign(data)
                if foreign == "an HTTP request":
                    self.web = WebHandler(self, self._allowed_origins)
                elif foreign is not None:
                    self.close(
                        ErrorCode.NOT_CHAT,
                        f"This is a chat server and that looked like {foreign}; see protocol.md.",
                    )
                    log.info(
                        "refused conn=%d peer=%s reason=%r", self.id, self.peer_address, foreign
                    )
                    return
                if not self._greeted and looks_like_irc(data):
                    codec = IrcCodec(self.server_name)
                    self.codec = codec
                    self.irc = IrcHandler(self, codec)
                else:
                    self._send_greeting()
            if self.web is not None:
                if not await self.web.feed(data):
                    return
                continue
            if b"\xff" in data:  # never in UTF-8: telnet
                self._negotiate(data)
            for line in self._framer.feed(data):
                if self._ending:
                    return
                if line is FrameError.NO_NEWLINE:
                    self.close(
                        ErrorCode.NO_NEWLINE,
                        f"No end of line in {self.limits.max_garbage} bytes.",
                    )
                elif self._admit():
                    if line is FrameError.OVERLONG:
                        self.send(
                            Error(
                                code=ErrorCode.LINE_TOO_LONG,
                                text=f"Line too long (more than {self.limits.max_line} bytes); "
                                "it was discarded.",
                            )
                        )
                    else:
                        assert isinstance(line, bytes)
                        await self.handle_line(line)

    def _admit(self) -> bool:
        """Charge one line, whatever it is (refused or overlong lines cost the same), to the
        flood budget. Refused lines are answered with one ``flood`` error per burst of
        refusals, so the answers cannot become a flood of their own."""
        verdict = self._flood.take()
        if verdict is Verdict.ALLOW:
            if self._flood_told:
                self._flood_told = False
            return True
        if verdict is Verdict.DISCONNECT:
            self.close(ErrorCode.FLOODING, "Excess flood: you sent too many lines too fast.")
        elif not self._flood_told:
            self._flood_told = True
            self.send(
                Error(
                    code=ErrorCode.FLOOD,
                    text=f"Too fast: lines refused (limit {self.limits.rate:g} lines per second, "
                    f"bursts of {self.limits.burst}) until you slow down.",
                )
            )
        return False

    def charge(self) -> bool:
        """One line (a WebSocket frame) from outside the line framer, charged to the flood
        budget: whether it may be handled."""
        return not self._ending and self._admit()

    async def handle_line(self, raw: bytes) -> None:
        """Decode one line and carry it out: the chat's commands in the hub, the
        connection's here. A refusal raised on the way is answered, marked with the
        command and request it refuses."""
        self.hub.counters.lines_in[self.codec.name] += 1
        if self.irc is not None:
            await self.irc.handle(raw)
            return
        if self._password_for is not None:
            await self._password_line(raw)
            return
        registered = self.member is not None
        request: Request | None = None
        codec = self.codec
        assert isinstance(codec, TextCodec | JsonCodec)
        try:
            request = decoder_for(codec, raw, registered=registered).decode(
                raw, registered=registered
            )
            if request is None:
                return
            member = self.member
            if member is not None and type(request.command) not in CONNECTION_COMMANDS:
                pending = self.hub.dispatch(member, request)  # most lines: no coroutine
                if pending is not None:
                    await pending
            else:
                await self._connection_command(request)
        except ProtocolError as exc:
            if request is not None:
                exc.command = exc.command or request.name
                exc.request = request.id
            self._refused(exc)

    def _refused(self, exc: ProtocolError) -> None:
        """Answer a refused line with an error naming the command and request, if known."""
        self.send(Error(code=exc.code, text=exc.message, command=exc.command, re=exc.request))
        if self.member is None and isinstance(self.codec, TextCodec) and not self._ending:
            self.send(Notice(text=NICK_PROMPT))

    def registered(self, member: Member) -> None:
        """Registration succeeded (the IRC handler registers on its own)."""
        self.member = member
        self.hub.counters.registrations[self.codec.name] += 1
        log.info(
            "register conn=%d peer=%s nick=%s account=%s dialect=%s",
            self.id,
            self.peer_address,
            member.nick,
            member.account or "-",
            self.codec.name,
        )

    def quit(self, reason: str, request: str | None = None) -> None:
        """The client says goodbye; ``reason`` is what the others are told."""
        self.close_reason = reason or "Quit"
        self.close(ErrorCode.QUIT, "Goodbye.", request)

    async def _connection_command(self, request: Request) -> None:
        """The commands about the connection itself (and registration)."""
        re = request.id
        match request.command:
            case PongCommand():
                return
            case QuitCommand(reason=reason):
                self.quit(reason, re)
            case HelpCommand(command=name):
                self.send(Notice(text=help_text(name), re=re))
            case PingCommand(token=token):
                self.send(Pong(text=token, re=re))
            case WidthCommand(columns=columns):
                self._set_width(columns, re)
            case HelloCommand(nick=nick, password=password):
                if self.member is not None:
                    raise ProtocolError(
                        ErrorCode.ALREADY_REGISTERED, "You are registered already.", command="hello"
                    )
                if not isinstance(self.codec, JsonCodec):
                    self.codec = JSON
                self.send(
                    Hello(
                        server=SERVER_NAME,
                        text="JSON Lines dialect; register with a nick.",
                        re=re,
                    )
                )
                if nick is not None:
                    await self._register(nick, request, password)
                elif password is not None:
                    raise ProtocolError(
                        ErrorCode.BAD_ARGUMENTS, "A password goes with a nick.", command="hello"
                    )
            case NickCommand(nick=nick):
                await self._register(nick, request)
            case LoginCommand(nick=nick, password=password):
                await self._register(nick, request, password)
            case other:
                raise AssertionError(f"the codec lets only registration commands by: {other}")

    def _set_width(self, columns: int, request: str | None = None) -> None:
        """``/width``: wrap this connection's text lines at ``columns``."""
        if not MIN_WIDTH <= columns <= MAX_WIDTH:
            raise ProtocolError(
                ErrorCode.BAD_ARGUMENTS,
                f"A width is {MIN_WIDTH} to {MAX_WIDTH} columns.",
                command="width",
            )
        if not isinstance(self.codec, TextCodec):
            self.send(Notice(text="JSON lines are never wrapped.", re=request))
            return
        self.codec = TextCodec(columns)
        self.send(Notice(text=f"Lines are wrapped at {columns} columns.", re=request))

    def _negotiate(self, data: bytes) -> None:
        """Telnet: accept a client's offer to tell its window size (``IAC WILL NAWS``), and
        wrap at the width it then tells (``IAC SB NAWS w w h h IAC SE``). Nothing is ever
        offered to a client that did not offer first, so nc sees no telnet bytes."""
        if TELNET_DO_ECHO in data:
            self._client_echo_off = True
        if TELNET_WILL_NAWS in data and isinstance(self.codec, TextCodec):
            self.push(TELNET_DO_NAWS)
        for found in _NAWS_RE.finditer(data):
            size = found.group(1).replace(b"\xff\xff", b"\xff")
            columns = int.from_bytes(size[:2], "big")
            if len(size) == 4 and columns and isinstance(self.codec, TextCodec):
                self.codec = TextCodec(max(MIN_WIDTH, min(MAX_WIDTH, columns)))

    async def _register(self, nick: str, request: Request, password: str | None = None) -> None:
        try:
            member = await self.hub.register(self, nick, request.id, password)
        except ProtocolError as exc:
            asking = isinstance(self.codec, TextCodec) and exc.code in _ASK_PASSWORD
            if exc.code is not ErrorCode.NICK_REGISTERED:
                self._failed_registrations += 1
            if self._failed_registrations >= MAX_REGISTRATION_ATTEMPTS:
                self.send(
                    Error(code=exc.code, text=exc.message, command=request.name, re=request.id)
                )
                self.close(
                    ErrorCode.TOO_MANY_ERRORS,
                    f"{MAX_REGISTRATION_ATTEMPTS} nicknames refused; try again later.",
                )
                return
            if not asking:
                raise
            if exc.code is not ErrorCode.NICK_REGISTERED:
                self.send(Error(code=exc.code, text=exc.message, command=request.name))
            self._ask_password(nick)
            return
        self.registered(member)

    def _ask_password(self, nick: str) -> None:
        """A person typed a registered nickname: the next line is its password, which
        telnet is asked not to echo."""
        self._password_for = nick
        self.send(
            Notice(
                text=f"{nick} is registered: type its password "
                "(or just Enter to choose another nickname)."
            )
        )
        self.hub.outbox.then(lambda: self.push(TELNET_WILL_ECHO))

    async def _password_line(self, raw: bytes) -> None:
        """The line after a registered nickname: its password (never logged or echoed)."""
        nick, self._password_for = self._password_for, None
        assert nick is not None
        if self._client_echo_off:  # telnet: its echo back, and the Enter it did not echo
            self._client_echo_off = False
            self.push(TELNET_WONT_ECHO + b"\r\n")
        password = decode_line(raw).strip()
        if not password:
            self.send(Notice(text=NICK_PROMPT))
            return
        request = Request(LoginCommand(nick, password))
        try:
            await self._register(nick, request, password)
        except ProtocolError as exc:
            exc.command = exc.command or "login"
            self._refused(exc)


# Refusals after which a person at a terminal is asked for a password (again).
_ASK_PASSWORD: Final = frozenset(
    {ErrorCode.NICK_REGISTERED, ErrorCode.WRONG_PASSWORD, ErrorCode.LOGIN_THROTTLED}
)
