"""An asyncio client for the server's JSON Lines dialect, small enough that a bot is 15 lines.

::

    async with connect("localhost:9000", nick="dicebot") as conn:
        async for event in conn:
            if isinstance(event, Message) and event.text == "!roll":
                await conn.say(f"{event.nick} rolled {random.randint(1, 6)}", room=event.room)

How answers and errors reach you
--------------------------------
* ``async for event in conn`` yields every event the server sends, typed (``chat.protocol``),
  except three kinds the library handles itself: the ``hello`` of the handshake, the server's
  keepalive ``ping`` (answered with a ``pong`` automatically), and answers to the queries
  below, which go to whoever asked, exactly once. The iterator ends quietly when the
  connection closes, whoever closed it (a ``bye``, which is yielded last, or plain EOF);
  afterwards :attr:`Connection.close_code` and :attr:`Connection.close_reason` say why.
* :meth:`~Connection.say`, :meth:`~Connection.me` and :meth:`~Connection.msg` are sent without
  waiting: a bot answering a busy room must not wait a round trip per line. If the server
  refuses one (not in that room, nobody by that nick), an :class:`~chat.protocol.Error`
  event arrives in the stream.
* Everything else (join, part, nick, topic, who, rooms, ping) waits for the server's answer,
  returns it, and raises :class:`~chat.errors.ServerError` (:class:`~chat.errors.NickUnavailable`
  for nicknames) if the server refuses, or ``TimeoutError`` after ``request_timeout``.
* An event line longer than :data:`MAX_EVENT_LINE` (1 MiB) is skipped and the connection goes
  on; the iterator yields, in its place, an :class:`~chat.protocol.Error` made by the library
  (``code="line_too_long"``, ``command=None``, no ``re``) that a UI can show. What the line
  was cannot be known, so a query whose answer it was times out after ``request_timeout``
  (the ``TimeoutError`` then says that a line was skipped meanwhile).
* :func:`connect` raises ``NickUnavailable``, or ``ConnectionLost`` when the server cannot
  be reached or closes before welcoming us (its reason, "server full" for instance, is in the
  message). Any command on a closed connection raises ``ConnectionLost``.

Matching answers to questions
-----------------------------
Every query carries a request id (``"id"``); the server stamps each event it sends in answer
with ``"re"`` set to that id, including the ``error`` that refuses it (protocol.md, "Request
ids"). So an answer is matched to its question by id alone; other people's messages
interleave freely and are never mistaken for answers.

Reconnecting
------------
``async for conn in connect(...)`` yields a registered connection, and a new one each time the
previous one is lost, after an exponential backoff with jitter; each reconnection registers
the same nickname and rejoins the same rooms. The loop ends after :meth:`Connection.quit`.
The backoff starts again from its shortest delay only once a connection has stayed up for
``stable_after`` seconds (default 10): a server that accepts and then drops us at once gets
ever longer waits, not a reconnection loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from chat.commands import (
    Command,
    HelloCommand,
    JoinCommand,
    MeCommand,
    MsgCommand,
    NickCommand,
    PartCommand,
    PingCommand,
    PongCommand,
    QuitCommand,
    RoomsCommand,
    SayCommand,
    TopicCommand,
    WhoCommand,
    encode_command,
    spec_of,
)
from chat.errors import ConnectionLost, ErrorCode, NickUnavailable, ServerError
from chat.protocol import (
    LOBBY,
    Bye,
    Error,
    Event,
    FrameError,
    Hello,
    Join,
    LineFramer,
    Nick,
    Part,
    Ping,
    RoomInfo,
    RoomList,
    Topic,
    Welcome,
    Who,
    nick_key,
    parse_event,
    room_key,
)

__all__ = [
    "DEFAULT_PORT",
    "Backoff",
    "Connect",
    "Connection",
    "connect",
    "parse_address",
]

DEFAULT_PORT: Final = 9000
MAX_EVENT_LINE: Final = 1024 * 1024  # a room listing can be long; anything longer is skipped
_SKIPPED_TEXT: Final = (
    f"An event from the server was too long (over {MAX_EVENT_LINE // (1024 * 1024)} MiB) "
    "and was skipped."
)
READ_CHUNK: Final = 64 * 1024
_NICK_CODES: Final = frozenset(
    {
        ErrorCode.NICK_TAKEN,
        ErrorCode.NICK_INVALID,
        ErrorCode.NICK_RESERVED,
        ErrorCode.NICK_CONFUSABLE,
        ErrorCode.NICK_REGISTERED,  # a password is needed (or was wrong): ask for one
        ErrorCode.WRONG_PASSWORD,
        ErrorCode.NO_SUCH_ACCOUNT,
        ErrorCode.LOGIN_THROTTLED,
    }
)
# A nickname refused for these reasons on reconnect may be our own ghost, still registered
# until the server notices the old connection is dead: worth retrying. Others never change.
_TRANSIENT_NICK_CODES: Final = frozenset({ErrorCode.NICK_TAKEN, ErrorCode.NICK_CONFUSABLE})
_connection_ids = itertools.count(1)
_clock: Callable[[], float] = time.monotonic  # how long a connection stayed up (tests replace it)


# --- addresses and commands -----------------------------------------------------------------


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6addr]:port``; the port may be left out) or say what is wrong."""
    text = address.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise ValueError(f"bad address {address!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {address!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address
    if not host:
        raise ValueError(f"bad address {address!r}: no host (expected host:port)")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {address!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _describe_os_error(exc: OSError) -> str:
    """'Connection refused' rather than '[Errno 111] Connect call failed (...)'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


# --- pacing and backoff ---------------------------------------------------------------------


class Backoff:
    """Delays between reconnection attempts: exponential, capped, and jittered.

    The jitter (each delay is drawn from the upper half of its range) spreads out the
    reconnections of everybody a server restart dropped at once.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Call once a connection has proved stable, so the next outage starts again with a
        short delay."""
        self.attempts = 0


class _Pacer:
    """A token bucket on our own output, so a paste or a chatty bot is slowed, not kicked.

    The server drops clients that flood (protocol.md, Limits: 5 lines/s, bursts of 20 by
    default); pacing a little below that keeps us on the right side of it.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    async def take(self, lines: int) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate) - lines
        self._last = now
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


# --- one connection -------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Query:
    """A command waiting for the first answer that carries its request id."""

    consume: bool  # answers meant only for the asker are not yielded by the iterator
    future: asyncio.Future[Event]
    nick: str = ""  # for nick(): the name to blame in NickUnavailable


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Silence 'exception was never retrieved' for an answer nobody waits for any more."""
    if future.done() and not future.cancelled():
        future.exception()


class Connection:
    """A registered connection. Get one from :func:`connect`; iterate it for events.

    Attributes that follow the server: :attr:`nickname` (changes with ``nick``), :attr:`joined`
    (the rooms we are in, in order). After the connection ends, :attr:`close_code` is the
    ``bye`` code (``None`` if the server just went away) and :attr:`close_reason` the text.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        nick: str,
        address: str,
        password: str | None = None,
        rate: float = 4.0,
        burst: int = 16,
        request_timeout: float = 10.0,
        max_queue: int = 4096,
    ) -> None:
        self.address = address
        self.close_timeout = 5.0
        self.close_code: str | None = None
        self.close_reason = ""
        self._reader = reader
        self._writer = writer
        self._nick = nick
        self._password = password  # sent once, in the hello; never logged
        self._rooms: dict[str, str] = {}  # room_key -> name, in join order
        self._request_timeout = request_timeout
        self._max_queue = max_queue
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()  # bounded by _deliver
        self._queue_has_room = asyncio.Event()
        self._queue_has_room.set()
        self._send_lock = asyncio.Lock()
        self._pacer = _Pacer(rate, burst)
        self._queries: dict[str, _Query] = {}  # request id -> the query waiting for it
        self._id_prefix = f"c{next(_connection_ids)}-"
        self._ids = itertools.count(1)
        self._registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._saw_json = False
        self._skipped = 0  # event lines skipped as too long
        self._closed_at: float | None = None  # _clock() when the connection ended
        self._lost_message = ""
        self._quitting = False
        self._closed = False
        self._exhausted = False
        self._background: set[asyncio.Task[None]] = set()
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"chat-client {address}")

    # --- state ---------------------------------------------------------------------------

    @property
    def nickname(self) -> str:
        """Our nickname as the server knows it (updated when a rename succeeds)."""
        return self._nick

    @property
    def joined(self) -> tuple[str, ...]:
        """The rooms we are in, in the order we joined them."""
        return tuple(self._rooms.values())

    @property
    def closed(self) -> bool:
        """True once nothing more can be sent or received."""
        return self._closed

    @property
    def lost(self) -> bool:
        """True if the connection ended without us asking (quit or close): worth reconnecting."""
        return self._closed and not self._quitting

    def describe_close(self) -> str:
        """One line for people: why this connection ended (or is about to)."""
        if self.close_reason:
            return f"{self.address}: connection closed by the server: {self.close_reason}"
        return f"{self.address}: connection closed"

    # --- events --------------------------------------------------------------------------

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Event:
        """The next event; ends (StopAsyncIteration) once the connection has closed."""
        if self._exhausted:
            raise StopAsyncIteration
        event = await self._events.get()
        if self._events.qsize() < self._max_queue:
            self._queue_has_room.set()
        if event is None:
            self._exhausted = True
            self._events.put_nowait(None)  # so that every other consumer ends too
            raise StopAsyncIteration
        return event

    # --- commands that do not wait -------------------------------------------------------

    async def send(self, command: Command) -> None:
        """Send any command without waiting for its answer: the low-level way in."""
        await self._write(encode_command(command))

    async def say(self, text: str, room: str | None = None) -> None:
        """Say ``text`` in ``room`` (the server's active room, the last joined, if None)."""
        await self.send(SayCommand(text, room))

    async def me(self, text: str, room: str | None = None) -> None:
        """An action: ``me("waves")`` shows ``* alice waves``."""
        await self.send(MeCommand(text, room))

    async def msg(self, nick: str, text: str) -> None:
        """A private message only ``nick`` sees; we get an echo (``Private(echo=True)``)."""
        await self.send(MsgCommand(nick, text))

    # --- commands that wait for the server's answer --------------------------------------

    async def join(self, room: str) -> None:
        """Join ``room`` (created on first use) and make it the server's active room.

        Returns once joined; the join, topic, member list and history arrive as events.
        """
        await self._query(JoinCommand(room))

    async def part(self, room: str | None = None, reason: str = "") -> None:
        """Leave ``room`` (the active room if None); the room sees ``reason``."""
        await self._query(PartCommand(room, reason))

    async def nick(self, new: str) -> None:
        """Rename; raises NickUnavailable if ``new`` is taken, reserved or invalid."""
        await self._query(NickCommand(new), nick=new)

    async def who(self, room: str | None = None) -> tuple[str, ...]:
        """The members of ``room`` (the active room if None), sorted."""
        answer = await self._query(WhoCommand(room), consume=True)
        assert isinstance(answer, Who)
        return answer.members

    async def rooms(self, match: str | None = None, offset: int = 0) -> tuple[RoomInfo, ...]:
        """A page of the rooms (at most 100), largest first, with member counts and topics:
        those whose name or topic contains ``match``, from the ``offset``-th on."""
        answer = await self._query(RoomsCommand(offset, match), consume=True)
        assert isinstance(answer, RoomList)
        return answer.rooms

    async def topic(self, room: str | None = None, text: str | None = None) -> str:
        """Get ``room``'s topic, or set it when ``text`` is given ("" clears it).

        Returns the topic as the server now has it.
        """
        answer = await self._query(TopicCommand(room, text), consume=text is None)
        assert isinstance(answer, Topic)
        return answer.text

    async def ping(self, token: str = "") -> float:
        """Round trip to the server and back, in seconds: proof the connection works."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._query(PingCommand(token), consume=True)
        return loop.time() - started

    async def quit(self, reason: str = "") -> None:
        """Leave the chat: your rooms see ``reason``; the server says bye and closes.

        Waits (at most :attr:`close_timeout` seconds) for the close, so iteration ends
        after the ``bye``.
        Idempotent; never raises because the connection is already gone.
        """
        if not self._quitting and not self._closed:
            self._quitting = True
            with contextlib.suppress(ConnectionLost):
                await self._write(encode_command(QuitCommand(reason)), quitting=True)
        self._quitting = True
        await self._wait_closed(self.close_timeout)

    async def close(self) -> None:
        """Quit without a reason if still connected; what ``async with`` does on exit."""
        await self.quit()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals: registration and queries ---------------------------------------------

    async def _register(self, within: float) -> None:
        """Send the JSON hello with our nickname and wait for the welcome (or the refusal)."""
        try:
            await self._write(encode_command(HelloCommand(self._nick, self._password)))
            async with asyncio.timeout(within):
                await self._registered
        except TimeoutError:
            raise ConnectionLost(
                f"{self.address}: no answer to registration within {within:g} seconds "
                "(is this a chat server?)"
            ) from None

    async def _query(
        self,
        command: Command,
        *,
        consume: bool = False,
        nick: str = "",
    ) -> Event:
        """Send ``command`` with a fresh request id; return the answer that carries it."""
        ident = f"{self._id_prefix}{next(self._ids)}"
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queries[ident] = _Query(consume, future, nick)
        skipped = self._skipped
        try:
            await self._write(encode_command(command, ident))
            async with asyncio.timeout(self._request_timeout):
                return await future
        except TimeoutError:
            if self._skipped == skipped:
                raise
            # The answer may have been that line; which event a skipped line was, nobody knows.
            raise TimeoutError(
                f"no answer to {spec_of(command).name} within {self._request_timeout:g} seconds; "
                "meanwhile an event from the server was too long and was skipped "
                "(perhaps the answer)"
            ) from None
        finally:
            self._queries.pop(ident, None)  # answered, never sent, or timed out
            _mark_retrieved(future)

    def _refusal(self, event: Error, nick: str) -> Exception:
        if event.code in _NICK_CODES:
            return NickUnavailable(nick or self._nick, event.code, event.text)
        return ServerError(event.code, event.text)

    def _answer(self, event: Event) -> bool:
        """Give ``event`` to the query it answers; True if it must not be yielded.

        The first answer settles a query: the result (a ``who``, our own ``join``), or a
        ``notice`` where there is nothing to do (a rename to the name we have), or the
        ``error`` that refuses it. Later answers (the notice after a part) are yielded.
        """
        query = self._queries.get(event.re) if event.re is not None else None
        if query is None or query.future.done():
            return False
        if isinstance(event, Error):
            query.future.set_exception(self._refusal(event, query.nick))
            return True
        query.future.set_result(event)
        return query.consume

    # --- internals: reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Frame lines, parse events, answer pings and queries, queue the rest. Owns EOF."""
        framer = LineFramer(MAX_EVENT_LINE, 4 * MAX_EVENT_LINE)
        problem = ""
        try:
            while not self._closed:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                for line in framer.feed(data):
                    if line is FrameError.NO_NEWLINE:
                        problem = "the server sent a line without an end"
                        return
                    if line is FrameError.OVERLONG:
                        await self._skip_line()
                    elif isinstance(line, bytes):
                        await self._handle_line(line)
        except OSError as exc:
            problem = _describe_os_error(exc)
        finally:
            self._finish(problem)

    async def _skip_line(self) -> None:
        """A line over MAX_EVENT_LINE went by, discarded unread: keep going, and say so."""
        self._skipped += 1
        if self._registered.done():  # before the welcome, nothing is yielded anyway
            await self._deliver(Error(code=ErrorCode.LINE_TOO_LONG, text=_SKIPPED_TEXT))

    async def _handle_line(self, line: bytes) -> None:
        if not line.startswith(b"{"):
            return  # the greeting, meant for people
        try:
            event = parse_event(line)
        except ValueError:
            return  # an event from a newer server: skip it, keep going
        self._saw_json = True
        await self._on_event(event)

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, Hello):
            return
        if isinstance(event, Ping):
            self._spawn(self._pong(event.text))
            return
        if isinstance(event, Bye):
            self.close_code = event.code
            self.close_reason = event.text
        if not self._registered.done():
            if isinstance(event, Welcome):
                self._nick = event.nick or self._nick
                self._registered.set_result(None)
            elif isinstance(event, Error):
                self._registered.set_exception(self._refusal(event, self._nick))
                return
            elif not isinstance(event, Bye):
                return
        self._track(event)
        if not self._answer(event):
            await self._deliver(event)

    def _track(self, event: Event) -> None:
        """Follow our own nickname and rooms, so a reconnection can restore them."""
        if event.nick is None or nick_key(event.nick) != nick_key(self._nick):
            return
        if isinstance(event, Join) and event.room:
            self._rooms[room_key(event.room)] = event.room
        elif isinstance(event, Part) and event.room:
            self._rooms.pop(room_key(event.room), None)
        elif isinstance(event, Nick) and event.new_nick:
            self._nick = event.new_nick

    async def _deliver(self, event: Event) -> None:
        """Queue for the iterator; a full queue stops reading (the server then sees a slow
        reader), rather than buffering without limit for a program that never iterates."""
        self._events.put_nowait(event)
        if self._max_queue and self._events.qsize() >= self._max_queue:
            self._queue_has_room.clear()
            await self._queue_has_room.wait()

    async def _pong(self, token: str) -> None:
        with contextlib.suppress(ConnectionLost):
            await self._write(encode_command(PongCommand(token)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _finish(self, problem: str) -> None:
        """The connection is over: fail every waiter, end the iterator, drop the socket."""
        if self._closed:
            return
        self._closed = True
        self._closed_at = _clock()
        if problem and not self.close_reason:
            message = f"{self.address}: connection lost: {problem}"
        elif not self._saw_json and not self.close_reason:
            message = (
                f"{self.address}: the server closed the connection without answering "
                "(is it a TLS server? try --tls)"
            )
        else:
            message = self.describe_close()
        if not self._registered.done():
            self._registered.set_exception(ConnectionLost(message))
            _mark_retrieved(self._registered)  # connect() may have given up waiting already
        for query in self._queries.values():
            if not query.future.done():
                query.future.set_exception(ConnectionLost(message))
        self._queries.clear()
        self._lost_message = message
        self._events.put_nowait(None)
        self._queue_has_room.set()
        self._writer.close()

    # --- internals: writing --------------------------------------------------------------

    async def _write(self, *lines: bytes, quitting: bool = False) -> None:
        """The one path for output: in order, paced, one write and one drain."""
        async with self._send_lock:
            if self._closed or (self._quitting and not quitting):
                raise ConnectionLost(self._lost_message or self.describe_close())
            await self._pacer.take(len(lines))
            if self._closed:
                raise ConnectionLost(self._lost_message or self.describe_close())
            try:
                self._writer.write(b"".join(lines))
                await self._writer.drain()
            except OSError as exc:
                raise ConnectionLost(
                    f"{self.address}: connection lost: {_describe_os_error(exc)}"
                ) from exc

    async def _wait_closed(self, grace: float) -> None:
        """Wait for the server to close; after ``grace`` seconds, drop the connection."""
        done, _ = await asyncio.wait({self._reader_task}, timeout=grace)
        if not done:
            self._writer.transport.abort()
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


# --- connecting -----------------------------------------------------------------------------


RetryCallback = Callable[[int, float, Exception], None]


class Connect:
    """Connect to ``address`` ("host:port") and register ``nick`` over the JSON dialect.

    * ``conn = await connect(...)``: one connection; close it with ``await conn.quit()``.
    * ``async with connect(...) as conn:``: the same, quit on exit.
    * ``async for conn in connect(...):``: a new connection whenever the last one was lost,
      after a backoff; the first failure raises unless ``retry_initial`` is set.

    ``password`` logs in to the account of ``nick`` when it is registered (kept in memory
    only, for reconnections under that nickname). ``rooms`` are joined after the lobby.
    ``tls=True`` verifies the server against the system trust store; ``ca_file`` adds a CA
    (and implies TLS); an ``ssl.SSLContext`` is used as given. ``rate``/``burst`` pace our
    output below the server's flood limit (``rate=0``: no pacing). ``max_queue`` events may
    wait for the iterator before reading stops.
    ``on_retry(attempt, delay, why)`` is called before each wait between attempts. The
    ``backoff`` starts again from its shortest delay only after a connection has stayed up
    ``stable_after`` seconds, so a server that accepts and drops us at once gets ever longer
    waits rather than a reconnection loop. A malformed address raises ValueError at once.
    """

    def __init__(
        self,
        address: str,
        *,
        nick: str,
        password: str | None = None,
        rooms: Sequence[str] = (),
        tls: bool | ssl.SSLContext = False,
        ca_file: str | None = None,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        rate: float = 4.0,
        burst: int = 16,
        max_queue: int = 4096,
        backoff: Backoff | None = None,
        retry_initial: bool = False,
        on_retry: RetryCallback | None = None,
        stable_after: float = 10.0,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.address = (
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        )
        self.nick = nick
        #: The nickname ``password`` belongs to, and the password; None without one.
        self.login: tuple[str, str] | None = None if password is None else (nick, password)
        self.rooms = tuple(rooms)
        self.tls = tls
        self.ca_file = ca_file
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.rate = rate
        self.burst = burst
        self.max_queue = max_queue
        self.backoff = backoff or Backoff()
        self.retry_initial = retry_initial
        #: Called before each wait between attempts: ``(attempt, delay, why)``. A UI shows it.
        self.on_retry = on_retry
        #: Seconds a connection must stay up before the backoff starts again from the start.
        self.stable_after = stable_after
        self._connection: Connection | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The system trust store (so ``SSL_CERT_FILE`` works), plus ``ca_file`` if given."""
        if isinstance(self.tls, ssl.SSLContext):
            return self.tls
        if not self.tls and self.ca_file is None:
            return None
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=self.ca_file)
        return context

    async def _open(self, nick: str, rooms: Sequence[str], leave_lobby: bool) -> Connection:
        """Connect, register ``nick``, then join ``rooms`` (and part the lobby if asked)."""
        try:
            context = self.ssl_context()
        except (OSError, ValueError) as exc:
            raise ConnectionLost(f"cannot load CA file {self.ca_file}: {exc}") from exc
        try:
            async with asyncio.timeout(self.open_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context else None,
                )
        except TimeoutError:
            raise ConnectionLost(
                f"{self.address}: no connection within {self.open_timeout:g} seconds"
            ) from None
        except OSError as exc:
            raise ConnectionLost(f"{self.address}: {_describe_os_error(exc)}") from exc
        password = None
        if self.login is not None and nick_key(self.login[0]) == nick_key(nick):
            password = self.login[1]
        conn = Connection(
            reader,
            writer,
            nick=nick,
            password=password,
            address=self.address,
            rate=self.rate,
            burst=self.burst,
            request_timeout=self.request_timeout,
            max_queue=self.max_queue,
        )
        try:
            await conn._register(self.open_timeout)
            # Sent without waiting: a refusal arrives in the stream like any other error.
            for room in rooms:
                if room_key(room) != LOBBY:
                    await conn.send(JoinCommand(room))
            if leave_lobby:
                await conn.send(PartCommand(LOBBY))
        except BaseException:
            conn._quitting = True
            await conn._wait_closed(0)
            raise
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._open(self.nick, self.rooms, leave_lobby=False).__await__()

    async def __aenter__(self) -> Connection:
        self._connection = await self
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def __aiter__(self) -> AsyncGenerator[Connection, None]:
        """Yield a connection, and another after each loss, until one is quit on purpose."""
        nick, rooms, leave_lobby = self.nick, list(self.rooms), False
        connected = False
        while True:
            try:
                conn = await self._open(nick, rooms, leave_lobby)
            except (ConnectionLost, NickUnavailable) as exc:
                if not (connected or self.retry_initial):
                    raise
                if isinstance(exc, NickUnavailable) and exc.code not in _TRANSIENT_NICK_CODES:
                    raise
                await self._pause(exc)
                continue
            connected = True
            opened = _clock()
            try:
                yield conn
            except GeneratorExit:
                await conn.close()
                raise
            if not conn.closed:  # asked for the next one while this one works: replace it
                await conn.close()
            elif not conn.lost:
                return
            # Only a connection that lasted resets the backoff: one dropped at once (a server
            # that accepts and closes, a line that kills it each time) must not retry in a loop.
            closed_at = conn._closed_at if conn._closed_at is not None else _clock()
            if closed_at - opened >= self.stable_after:
                self.backoff.reset()
            nick = conn.nickname
            rooms = [r for r in conn.joined if room_key(r) != LOBBY]
            leave_lobby = LOBBY not in {room_key(r) for r in conn.joined}
            await self._pause(ConnectionLost(conn.describe_close()))

    async def _pause(self, why: Exception) -> None:
        delay = self.backoff.next()
        if self.on_retry is not None:
            self.on_retry(self.backoff.attempts, delay, why)
        await asyncio.sleep(delay)


connect = Connect
"""``connect(address, *, nick, ...)``: see :class:`Connect`. Named like a function because
that is how it reads: ``async with connect("host:port", nick="alice") as conn``."""
