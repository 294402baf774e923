"""One exception tree and the stable error codes of the protocol.

Every failure a peer can cause carries an :class:`ErrorCode`. The server turns a
:class:`ProtocolError` into an ``error`` event (or a ``bye`` when it is fatal) in one
place, so the parser and the hub only ever raise; they never write to a socket.

Tree::

    ChatError
    ├── ProtocolError          the peer sent something we refuse (carries a code)
    └── ClientError            raised by the client library
        ├── ConnectionLost     the connection ended before we asked it to
        ├── NickUnavailable    registration refused (carries the server's reason)
        └── ServerError        the server answered a request with an error
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ChatError",
    "ClientError",
    "ConnectionLost",
    "ErrorCode",
    "NickUnavailable",
    "ProtocolError",
    "ServerError",
]


class ErrorCode(StrEnum):
    """Stable machine codes; the text next to each is the meaning documented in protocol.md."""

    # Registration and nicknames.
    NICK_INVALID = "nick_invalid"
    NICK_TAKEN = "nick_taken"
    NICK_RESERVED = "nick_reserved"
    NICK_CONFUSABLE = "nick_confusable"
    NOT_REGISTERED = "not_registered"
    ALREADY_REGISTERED = "already_registered"
    # Commands.
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENTS = "bad_arguments"
    BAD_JSON = "bad_json"
    ROOM_INVALID = "room_invalid"
    ROOM_CONFUSABLE = "room_confusable"
    NO_SUCH_ROOM = "no_such_room"
    NO_SUCH_NICK = "no_such_nick"
    RECIPIENT_BUSY = "recipient_busy"
    NOT_IN_ROOM = "not_in_room"
    NO_ACTIVE_ROOM = "no_active_room"
    TOO_MANY_ROOMS = "too_many_rooms"
    ROOMS_FULL = "rooms_full"
    TOPIC_TOO_LONG = "topic_too_long"
    LINE_TOO_LONG = "line_too_long"
    FLOOD = "flood"
    CLUSTER_DOWN = "cluster_down"
    # Accounts.
    NICK_REGISTERED = "nick_registered"
    WRONG_PASSWORD = "wrong_password"
    PASSWORD_INVALID = "password_invalid"
    LOGIN_THROTTLED = "login_throttled"
    NOT_LOGGED_IN = "not_logged_in"
    ACCOUNT_EXISTS = "account_exists"
    NO_SUCH_ACCOUNT = "no_such_account"
    # Moderation.
    NOT_OPERATOR = "not_operator"
    BANNED = "banned"
    MUTED = "muted"
    INVITE_ONLY = "invite_only"
    MODERATED = "moderated"
    NOT_CLAIMED = "not_claimed"
    ALREADY_CLAIMED = "already_claimed"
    NO_SUCH_BAN = "no_such_ban"
    # Reasons a connection is closed (sent in a ``bye`` event).
    QUIT = "quit"
    SERVER_SHUTDOWN = "server_shutdown"
    FLOODING = "flooding"
    SEND_QUEUE_FULL = "send_queue_full"
    REGISTER_TIMEOUT = "register_timeout"
    PING_TIMEOUT = "ping_timeout"
    NO_NEWLINE = "no_newline"
    NOT_CHAT = "not_chat"
    TOO_MANY_ERRORS = "too_many_errors"
    SERVER_FULL = "server_full"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    KILLED = "killed"
    GHOSTED = "ghosted"
    INTERNAL_ERROR = "internal_error"


class ChatError(Exception):
    """Base of every exception this package raises on purpose."""


class ProtocolError(ChatError):
    """The peer sent something the protocol refuses; ``code`` says what, ``message`` says why.

    ``command`` names the command refused (when the parser got that far) and ``request``
    is the id the client gave it, so the ``error`` event can answer that request.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        command: str | None = None,
        request: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command
        self.request = request


class ClientError(ChatError):
    """Raised by :mod:`chat.client`."""


class ConnectionLost(ClientError):
    """The connection closed or broke while the client still wanted it."""


class NickUnavailable(ClientError):
    """The server refused our nickname; ``code`` and ``reason`` are the server's."""

    def __init__(self, nick: str, code: str, reason: str) -> None:
        super().__init__(f"nickname {nick!r} unavailable: {reason}")
        self.nick = nick
        self.code = code
        self.reason = reason


class ServerError(ClientError):
    """The server answered with an ``error`` event; ``code`` is its machine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
