"""The pure protocol layer: framing, sanitising, names, commands, events and both dialects.

Everything here is synchronous and touches no socket. Tables pin the behaviour people see;
hypothesis properties pin the invariants the server relies on (bounded memory, no unsafe
characters, parsers that only ever raise ``ProtocolError``, ``parse_event(render(e)) == e``).
"""

from __future__ import annotations

import calendar
import itertools
import json
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any, TypeVar

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from chat.codecs import JSON
from chat.commands import COMMANDS as COMMAND_TABLE
from chat.commands import (
    Command,
    HelloCommand,
    HelpCommand,
    JoinCommand,
    Kind,
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
    help_text,
    parse_text_line,
)
from chat.errors import ErrorCode, ProtocolError
from chat.protocol import (
    EVENT_TYPES,
    MAX_COMBINING,
    MIN_WIDTH,
    NICK_MAX,
    REASON_MAX,
    ROOM_MAX,
    Action,
    BanInfo,
    BanList,
    Bye,
    Dialect,
    Error,
    Event,
    FrameError,
    Hello,
    Ignores,
    Invite,
    Join,
    Kick,
    LineFramer,
    LoggedIn,
    Message,
    Mode,
    Modes,
    Nick,
    Notice,
    Part,
    Ping,
    Pong,
    Private,
    Quit,
    RoomInfo,
    RoomList,
    Topic,
    Welcome,
    Who,
    Whois,
    char_width,
    decode_line,
    nick_key,
    nick_skeleton,
    parse_event,
    render,
    render_text,
    room_key,
    sanitize,
    sniff_foreign,
    strip_telnet,
    unwrap,
    validate_nick,
    validate_room,
    wrap_line,
)

# name -> (usage, what it does), for every command a person can type.
COMMANDS = {spec.name: (spec.usage, spec.help) for spec in COMMAND_TABLE if spec.typed}


def parse_text_command(line: str) -> Command | None:
    """A registered user's typed line, as the text codec reads it."""
    return parse_text_line(line, registered=True)


def parse_registration_line(line: str) -> Command | None:
    """A line typed before registration, as the text codec reads it."""
    return parse_text_line(line, registered=False)


def parse_json_command(line: str) -> Command | None:
    """A registered program's JSON line, as the JSON codec reads it."""
    request = JSON.decode(line.encode("utf-8", "surrogatepass"), registered=True)
    return None if request is None else request.command


# Deterministic and quick: the same examples on every run, no example database.
# (No "explain" phase: it is slow and imports libcst.)
_PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
PROPERTY = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, phases=_PHASES
)
PER_CLASS = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, phases=_PHASES
)

OVERLONG = FrameError.OVERLONG
NO_NEWLINE = FrameError.NO_NEWLINE

T = TypeVar("T")

# Telnet bytes (RFC 854).
IAC, SE, NOP, AYT, SB, WILL, WONT, DO, DONT = 255, 240, 241, 246, 250, 251, 252, 253, 254


def telnet(*codes: int) -> bytes:
    return bytes(codes)


def protocol_error(func: Callable[..., object], *args: Any) -> ProtocolError:
    """Call ``func`` expecting a ``ProtocolError``; return it for a closer look."""
    with pytest.raises(ProtocolError) as info:
        func(*args)
    return info.value


def outcome(func: Callable[[str], T], arg: str) -> T | ProtocolError:
    """What ``func(arg)`` returns, or the ``ProtocolError`` it raises (anything else escapes)."""
    try:
        return func(arg)
    except ProtocolError as exc:
        return exc


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[bytes | FrameError]:
    out: list[bytes | FrameError] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def reference_frames(
    chunks: list[bytes], max_line: int, max_garbage: int
) -> list[bytes | FrameError]:
    """An obviously correct (and unbounded) model of what LineFramer must report.

    Telnet's CR NUL counts as CR LF. Lines end at ``\\n`` (an optional ``\\r`` before it is
    dropped); a line longer than
    ``max_line`` is OVERLONG; when a chunk ends while the unterminated line so far is longer
    than the garbage budget (at least ``max_line + 1``, room for a final ``\\r``), NO_NEWLINE
    is reported and nothing after it.
    """
    budget = max(max_garbage, max_line + 1)
    # CR NUL -> CR LF keeps every length, so the chunk boundaries stay where they were.
    stream = b"".join(chunks).replace(b"\r\0", b"\r\n")
    offsets = [0]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    chunks = [stream[a:b] for a, b in itertools.pairwise(offsets)]
    out: list[bytes | FrameError] = []
    pending = b""
    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            line, pending = pending + piece, b""
            line = line.removesuffix(b"\r")
            out.append(OVERLONG if len(line) > max_line else strip_telnet(line))
        pending += rest
        if len(pending) > budget:
            out.append(NO_NEWLINE)
            return out
    return out


# --- LineFramer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"hello\n"], [b"hello"]),
        ([b"hello\r\n"], [b"hello"]),
        ([b"a\nb\r\nc\n"], [b"a", b"b", b"c"]),
        ([b"\n"], [b""]),
        ([b"\r\n\r\n"], [b"", b""]),
        ([b"hel", b"lo\r", b"\n"], [b"hello"]),
        ([b"hello\r", b"\nworld\n"], [b"hello", b"world"]),
        ([b"a", b"b", b"c", b"\n"], [b"abc"]),
        ([b"no newline yet"], []),
        ([b"first\nsecond"], [b"first"]),
        ([b"first\nsec", b"ond\n"], [b"first", b"second"]),
        ([b""], []),
        ([b"", b"x\n", b""], [b"x"]),
        ([b"bare\rcr\n"], [b"bare\rcr"]),  # only a final \r is a line ending
        ([b"two\r\r\n"], [b"two\r"]),
    ],
)
def test_framer_splits_lines(chunks: list[bytes], expected: list[bytes]) -> None:
    framer = LineFramer(max_line=100, max_garbage=1000)
    assert feed_all(framer, chunks) == expected


def test_framer_exactly_max_line_is_accepted() -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert framer.feed(b"x" * 10 + b"\n") == [b"x" * 10]
    assert framer.feed(b"y" * 10 + b"\r\n") == [b"y" * 10]


def test_framer_exactly_max_line_is_accepted_across_chunks() -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert feed_all(framer, [b"x" * 5, b"x" * 5, b"\r", b"\n"]) == [b"x" * 10]
    assert feed_all(framer, [b"y" * 10 + b"\r", b"\n"]) == [b"y" * 10]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 11 + b"\n"],
        [b"x" * 11 + b"\r\n"],
        [b"x" * 11, b"\n"],
        [b"x" * 11, b"\r\n"],
        [b"x" * 6, b"x" * 5, b"\n"],
        [b"x" * 11 + b"\r", b"\n"],
    ],
)
def test_framer_max_line_plus_one_is_refused(chunks: list[bytes]) -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert feed_all(framer, chunks) == [OVERLONG]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 50 + b"\nnext\n"],
        [b"x" * 50, b"\nnext\n"],
        [b"x" * 20, b"x" * 20, b"x" * 10, b"\n", b"next\n"],
        [b"x" * 50 + b"\r\nne", b"xt\r\n"],
        [b"x" * 12, b"x" * 12, b"x" * 12, b"x" * 14 + b"\nnext\n"],
    ],
)
def test_framer_overlong_reported_once_then_next_line_delivered(chunks: list[bytes]) -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert feed_all(framer, chunks) == [OVERLONG, b"next"]


def test_framer_two_overlong_lines_are_two_reports() -> None:
    framer = LineFramer(max_line=4, max_garbage=100)
    assert framer.feed(b"123456\nabcdefg\nok\n") == [OVERLONG, OVERLONG, b"ok"]


def test_framer_no_newline_after_max_garbage_then_silence() -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert framer.feed(b"ok\n") == [b"ok"]
    assert framer.feed(b"x" * 100) == []  # exactly the budget: still waiting for a newline
    assert framer.feed(b"x") == [NO_NEWLINE]
    assert framer.feed(b"\nhello\n") == []
    assert framer.feed(b"more\r\n" * 10) == []


def test_framer_no_newline_in_one_big_chunk() -> None:
    framer = LineFramer(max_line=10, max_garbage=100)
    assert framer.feed(b"line\n" + b"z" * 101) == [b"line", NO_NEWLINE]
    assert framer.feed(b"\n") == []


def test_framer_no_newline_counts_bytes_held_before_discarding() -> None:
    framer = LineFramer(max_line=10, max_garbage=30)
    assert framer.feed(b"y" * 11) == []  # held: fits max_line + 1
    assert framer.feed(b"y" * 19) == []  # 30 bytes so far, now discarding
    assert framer.feed(b"y") == [NO_NEWLINE]


def test_framer_garbage_budget_resets_at_each_newline() -> None:
    framer = LineFramer(max_line=10, max_garbage=30)
    out = feed_all(framer, [b"y" * 25, b"\n", b"y" * 25, b"\n", b"fine\n"])
    assert out == [OVERLONG, OVERLONG, b"fine"]


def test_framer_garbage_budget_is_at_least_max_line() -> None:
    framer = LineFramer(max_line=10, max_garbage=0)
    assert feed_all(framer, [b"x" * 10, b"\n"]) == [b"x" * 10]
    assert feed_all(framer, [b"x" * 11, b"\n"]) == [OVERLONG]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (telnet(IAC, WILL, 1) + b"alice", b"alice"),
        (telnet(IAC, WONT, 1) + b"alice", b"alice"),
        (telnet(IAC, DO, 3) + b"alice", b"alice"),
        (telnet(IAC, DONT, 34) + b"alice", b"alice"),
        (b"al" + telnet(IAC, DO, 1) + b"ice", b"alice"),
        (telnet(IAC, DO, 1, IAC, WILL, 3, IAC, DONT, 34) + b"bob", b"bob"),
        (telnet(IAC, SB, 24, 0) + b"xterm" + telnet(IAC, SE) + b"carol", b"carol"),
        (b"a" + telnet(IAC, SB, 31, 0, 80, 0, 24, IAC, SE) + b"b", b"ab"),
        (telnet(IAC, NOP) + b"dave", b"dave"),
        (telnet(IAC, AYT) + b"dave", b"dave"),
        (b"da" + telnet(IAC, 244) + b"ve", b"dave"),  # IAC IP
        (b"eve" + telnet(IAC), b"eve"),  # IAC at the very end
        (b"eve" + telnet(IAC, WILL), b"eve"),  # truncated negotiation at the end
        (b"eve" + telnet(IAC, SB, 24, 0), b"eve"),  # unterminated subnegotiation
        (b"x" + telnet(IAC, IAC) + b"y", b"xy"),  # escaped 0xFF is not text either
        (b"no telnet here", b"no telnet here"),
    ],
)
def test_framer_strips_telnet(raw: bytes, expected: bytes) -> None:
    assert strip_telnet(raw) == expected
    for ending in (b"\n", b"\r\n"):
        framer = LineFramer(max_line=100, max_garbage=1000)
        assert framer.feed(raw + ending) == [expected]
        framer = LineFramer(max_line=100, max_garbage=1000)
        assert feed_all(framer, [bytes([b]) for b in raw + ending]) == [expected]


def test_framer_iac_before_crlf() -> None:
    framer = LineFramer(max_line=100, max_garbage=1000)
    assert framer.feed(b"frank" + telnet(IAC) + b"\r\n") == [b"frank"]
    assert framer.feed(b"frank" + telnet(IAC, DO, 1) + b"\r\n") == [b"frank"]


def test_framer_telnet_only_line_is_empty() -> None:
    framer = LineFramer(max_line=100, max_garbage=1000)
    assert framer.feed(telnet(IAC, DO, 1, IAC, WILL, 3) + b"\r\n") == [b""]


def test_framer_returns_bytes_not_bytearray() -> None:
    framer = LineFramer(max_line=100, max_garbage=1000)
    lines = feed_all(framer, [b"ab", b"cd\n"])
    assert lines == [b"abcd"]
    assert type(lines[0]) is bytes


# Streams made of lines, CRs, telnet commands and long runs: the interesting cases.
stream_pieces = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"a", b"hello", b"x" * 7, b"y" * 13, b"\xff", b"\xff\xfb\x01"]
)
streams = st.lists(stream_pieces | st.binary(max_size=12), max_size=40).map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@PROPERTY
@given(data=streams, cuts=cut_lists, max_line=st.integers(min_value=0, max_value=16))
def test_framer_any_split_equals_whole(data: bytes, cuts: list[int], max_line: int) -> None:
    """With a garbage budget larger than the stream, chunking never changes the lines."""
    whole = LineFramer(max_line, max_garbage=len(data) + 1).feed(data)
    pieces = feed_all(LineFramer(max_line, max_garbage=len(data) + 1), split_at(data, cuts))
    assert pieces == whole
    assert whole == reference_frames([data], max_line, len(data) + 1)
    assert NO_NEWLINE not in whole


@PROPERTY
@given(
    data=streams,
    cuts=cut_lists,
    max_line=st.integers(min_value=0, max_value=16),
    max_garbage=st.integers(min_value=0, max_value=40),
)
def test_framer_matches_reference_model(
    data: bytes, cuts: list[int], max_line: int, max_garbage: int
) -> None:
    chunks = split_at(data, cuts)
    framer = LineFramer(max_line, max_garbage)
    assert feed_all(framer, chunks) == reference_frames(chunks, max_line, max_garbage)


@PROPERTY
@given(
    chunks=st.lists(st.binary(max_size=64) | stream_pieces, max_size=30),
    max_line=st.integers(min_value=0, max_value=32),
    max_garbage=st.integers(min_value=0, max_value=200),
)
def test_framer_memory_is_bounded(chunks: list[bytes], max_line: int, max_garbage: int) -> None:
    framer = LineFramer(max_line, max_garbage)
    seen_no_newline = False
    for chunk in chunks:
        out = framer.feed(chunk)
        assert len(framer._partial) <= max_line + 1
        if seen_no_newline:
            assert out == []
        if NO_NEWLINE in out:
            assert out[-1] is NO_NEWLINE
            assert out.count(NO_NEWLINE) == 1
            seen_no_newline = True
        for item in out:
            if isinstance(item, bytes):
                assert len(item) <= max_line
                assert b"\n" not in item
                assert b"\xff" not in item


# --- sanitize and decode_line -------------------------------------------------------------------

UNSAFE: frozenset[int] = frozenset(
    [c for c in range(0x20) if c != 0x09]
    + [0x7F]
    + list(range(0x80, 0xA0))  # C1, U+009B (CSI) among them
    + [0x061C, 0x200E, 0x200F]  # ALM, LRM, RLM
    + list(range(0x202A, 0x202F))  # LRE RLE PDF LRO RLO
    + list(range(0x2066, 0x206A))  # LRI RLI FSI PDI
    + [0x2028, 0x2029]  # line and paragraph separators
)


def has_unsafe(text: str) -> bool:
    return any(ord(c) in UNSAFE for c in text)


@pytest.mark.parametrize("codepoint", sorted(UNSAFE), ids=lambda c: f"U+{c:04X}")
def test_sanitize_removes_unsafe_codepoint(codepoint: int) -> None:
    assert sanitize(f"a{chr(codepoint)}b") == "ab"
    assert sanitize(chr(codepoint) * 3) == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\x1b[2J\x1b[Hhi", "[2J[Hhi"),
        ("\x1b]0;owned\x07title", "]0;ownedtitle"),
        ("\x9b31mred", "31mred"),
        ("fake\r\n<admin> hi", "fake<admin> hi"),
        ("one\u2028two\u2029three", "onetwothree"),
        ("\u202egnp.exe", "gnp.exe"),
        ("\u2066isolated\u2069", "isolated"),
        ("a\x00b\x7fc\x85d", "abcd"),
    ],
)
def test_sanitize_examples(raw: str, expected: str) -> None:
    assert sanitize(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "tab\tseparated\tcolumns",
        "caf\u00e9 na\u00efve",
        "\u65e5\u672c\u8a9e",
        "\u0645\u0631\u062d\u0628\u0627",  # Arabic letters are fine; only the bidi marks go
        "\U0001f642 \U0001f44d\U0001f3fd",
        "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # ZWJ joins emoji; it stays
        "e\u0301",  # combining accent
        "non\u00a0breaking \u00a9 \u20ac",
        "<>&\"'\\ {}[]",
    ],
)
def test_sanitize_keeps_ordinary_text(text: str) -> None:
    assert sanitize(text) == text


@PROPERTY
@given(text=st.text())
def test_sanitize_removes_exactly_the_unsafe_codepoints(text: str) -> None:
    cleaned = sanitize(text)
    assert not has_unsafe(cleaned)
    assert cleaned == cap_marks("".join(c for c in text if ord(c) not in UNSAFE))
    assert sanitize(cleaned) == cleaned


def cap_marks(text: str) -> str:
    """The reference for the combining-mark cap: at most MAX_COMBINING in a row."""
    kept: list[str] = []
    run = 0
    for char in text:
        run = run + 1 if unicodedata.category(char) in ("Mn", "Me") else 0
        if run <= MAX_COMBINING:
            kept.append(char)
    return "".join(kept)


@PROPERTY
@given(
    text=st.text(
        alphabet=st.sampled_from(["a", "\u0301", "\u0489", "\ufe0f", "\U000e0100", "\u00e9"])
    )
)
def test_sanitize_caps_combining_marks(text: str) -> None:
    assert sanitize(text) == cap_marks(text)


@PROPERTY
@given(text=st.text(alphabet=st.sampled_from([*map(chr, sorted(UNSAFE)), "a", "\t", "\u00e9"])))
def test_sanitize_on_dense_control_text(text: str) -> None:
    cleaned = sanitize(text)
    assert not has_unsafe(cleaned)
    assert sanitize(cleaned) == cleaned


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"hello", "hello"),
        (b"caf\xc3\xa9", "caf\u00e9"),
        (b"\xff\xfehi", "\ufffd\ufffdhi"),
        (b"bad \xc3 utf8", "bad \ufffd utf8"),
        (b"\xe2\x82", "\ufffd"),
        (b"\x1b[2Jclear", "[2Jclear"),
        (b"\xc2\x9b31m", "31m"),  # U+009B encoded in UTF-8
        (b"\xe2\x80\xaeevil", "evil"),  # U+202E encoded in UTF-8
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # an encoded surrogate is invalid UTF-8
        (b"", ""),
    ],
)
def test_decode_line(raw: bytes, expected: str) -> None:
    assert decode_line(raw) == expected


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_decode_line_never_raises_and_is_safe(raw: bytes) -> None:
    text = decode_line(raw)
    assert not has_unsafe(text)
    text.encode("utf-8")  # always encodable again


# --- sniff_foreign ------------------------------------------------------------------------------

# Record type 22 (handshake), version 3.1, length; handshake type 1 (ClientHello), ...
TLS_CLIENT_HELLO = bytes.fromhex("16 03 01 02 00 01 00 01 fc 03 03") + bytes(32)


@pytest.mark.parametrize(
    ("first", "what"),
    [
        (TLS_CLIENT_HELLO, "a TLS handshake"),
        (b"\x16\x03\x03\x00\xa5\x01", "a TLS handshake"),
        (b"\x16\x03\x01", "a TLS handshake"),
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", "an HTTP request"),
        (b"POST /api HTTP/1.0\r\n", "an HTTP request"),
        (b"HEAD /index.html HTTP/1.1\r\n", "an HTTP request"),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", "an HTTP request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "an HTTP request"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "an SSH client"),
        (b"SSH-1.99-Cisco\r\n", "an SSH client"),
    ],
)
def test_sniff_foreign_recognises(first: bytes, what: str) -> None:
    assert sniff_foreign(first) == what


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"alice\r\n",
        b"alice\n",
        b"Bob_99\r\n",
        b"GET\r\n",
        b"get / http/1.1\r\n",
        b"GETTY\r\n",
        b"/help\r\n",
        b'{"type":"hello"}\n',
        b"\x16",
        b"\x16hello\n",
        b"ssh-2.0\r\n",
        b"SSH\r\n",
        telnet(IAC, DO, 1) + b"alice\r\n",
    ],
)
def test_sniff_foreign_lets_chat_through(first: bytes) -> None:
    assert sniff_foreign(first) is None


@PROPERTY
@given(raw=st.binary(max_size=64))
def test_sniff_foreign_total(raw: bytes) -> None:
    assert sniff_foreign(raw) in {None, "a TLS handshake", "an SSH client", "an HTTP request"}


# --- nicknames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "Alice"),
        ("a", "a"),
        ("Z", "Z"),
        ("bob_99", "bob_99"),
        ("x-ray", "x-ray"),
        ("a1_-b2", "a1_-b2"),
        ("  carol  ", "carol"),
        ("\tdave\t", "dave"),
        ("a" * NICK_MAX, "a" * NICK_MAX),
        ("admin2", "admin2"),  # look-alike of nothing reserved
        ("serv3r", "serv3r"),  # only 0/o and 1/l/i are folded
        ("rooted", "rooted"),
        ("helpful", "helpful"),
    ],
)
def test_valid_nicks(raw: str, expected: str) -> None:
    assert validate_nick(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "a" * (NICK_MAX + 1),
        "  " + "b" * (NICK_MAX + 1) + "  ",
        "1alice",
        "_alice",
        "-alice",
        "#alice",
        "/alice",
        "al ice",
        "al.ice",
        "al!ce",
        "al\tice",
        "al@ice",
        "ali\u00e7e",
        "\u00e9lise",
        "\u0430lice",  # Cyrillic a
        "ali\u0441e",  # Cyrillic es
        "\uff41lice",  # fullwidth a
        "\u212aevin",  # Kelvin sign, lower-cases to k
        "al\u200dice",
        "bob\x00",
    ],
)
def test_invalid_nicks(raw: str) -> None:
    error = protocol_error(validate_nick, raw)
    assert error.code is ErrorCode.NICK_INVALID
    assert error.message


def test_nick_too_long_says_the_limit() -> None:
    error = protocol_error(validate_nick, "n" * (NICK_MAX + 4))
    assert str(NICK_MAX) in error.message
    assert str(NICK_MAX + 4) in error.message


def test_nick_must_start_with_letter_message() -> None:
    assert "start with a letter" in protocol_error(validate_nick, "9lives").message


def test_nick_bad_character_is_named() -> None:
    assert "'!'" in protocol_error(validate_nick, "bang!").message


@pytest.mark.parametrize(
    "raw",
    [
        "admin",
        "Admin",
        "ADMIN",
        "Adm1n",
        "adm1n",
        "AdmIn",
        "admln",
        "administrator",
        "Adm1n1strator",
        "all",
        "a11",
        "ALL",
        "aII",
        "anonymous",
        "an0nym0us",
        "chat",
        "everyone",
        "EVERY0NE",
        "help",
        "he1p",
        "HeIp",
        "moderator",
        "m0derat0r",
        "nobody",
        "n0b0dy",
        "operator",
        "0perator",  # must start with a letter: invalid before it is reserved
        "root",
        "r00t",
        "R0OT",
        "server",
        "SERVER",
        "Server",
        "services",
        "serv1ces",
        "system",
        "SYSTEM",
        "sysop",
        "sys0p",
        "  root  ",
        # Issue 10.8: multi-letter look-alikes and services names.
        "adrnin",
        "rnoderator",
        "NickServ",
        "ChanServ",
        "nickserv",
    ],
)
def test_reserved_nicks(raw: str) -> None:
    error = protocol_error(validate_nick, raw)
    if raw.strip()[0].isdigit():
        assert error.code is ErrorCode.NICK_INVALID
    else:
        assert error.code is ErrorCode.NICK_RESERVED
        assert "reserved" in error.message


@pytest.mark.parametrize(
    ("a", "b"),
    [("alice", "ALICE"), ("Bob", "bOB"), ("x-Y_z", "X-y_Z")],
)
def test_nick_key_is_case_insensitive(a: str, b: str) -> None:
    assert nick_key(a) == nick_key(b)


@pytest.mark.parametrize(("a", "b"), [("alice", "alicf"), ("bob", "b0b"), ("l", "1")])
def test_nick_key_does_not_fold_look_alikes(a: str, b: str) -> None:
    assert nick_key(a) != nick_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("bob", "b0b"),
        ("BOB", "B0b"),
        ("oo", "00"),
        ("lil", "1I1"),
        ("Ill", "l1i"),
        ("alice", "a1ice"),
        ("alice", "aIice"),
        ("mod", "M0D"),
        # Issue 10.8: letters that look like two (Unicode TR 39 confusables).
        ("mallory", "rnallory"),
        ("william", "vvilliam"),
        ("david", "clavid"),
        ("david", "cIavid"),
        ("moderator", "rnoclerator"),
    ],
)
def test_nick_skeleton_folds_look_alikes(a: str, b: str) -> None:
    assert nick_skeleton(a) == nick_skeleton(b)


@pytest.mark.parametrize(
    ("a", "b"), [("bob", "bab"), ("l", "t"), ("o", "q"), ("alice", "alices"), ("b0b", "bOb0")]
)
def test_nick_skeleton_keeps_different_shapes_apart(a: str, b: str) -> None:
    assert nick_skeleton(a) != nick_skeleton(b)


nick_alphabet = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@PROPERTY
@given(text=st.text() | st.text(alphabet=nick_alphabet, max_size=NICK_MAX + 2))
def test_validate_nick_total(text: str) -> None:
    """Either a valid nickname comes back, or a ProtocolError with a nickname code."""
    nick = outcome(validate_nick, text)
    if isinstance(nick, ProtocolError):
        assert nick.code in {ErrorCode.NICK_INVALID, ErrorCode.NICK_RESERVED}
        return
    assert nick == text.strip()
    assert 1 <= len(nick) <= NICK_MAX
    assert nick[0].isascii()
    assert nick[0].isalpha()
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in nick)
    assert nick_key(nick) == nick_key(nick.swapcase())
    assert nick_skeleton(nick) == nick_skeleton(nick.swapcase())
    assert validate_nick(nick.swapcase()) == nick.swapcase()


# --- rooms --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#lobby", "#lobby"),
        ("lobby", "#lobby"),
        ("#Lobby", "#Lobby"),
        ("  #dev  ", "#dev"),
        ("  dev  ", "#dev"),
        ("#a", "#a"),
        ("a", "#a"),
        ("#1", "#1"),
        ("#-_-", "#-_-"),
        ("#" + "r" * (ROOM_MAX - 1), "#" + "r" * (ROOM_MAX - 1)),
        ("r" * (ROOM_MAX - 1), "#" + "r" * (ROOM_MAX - 1)),
    ],
)
def test_valid_rooms(raw: str, expected: str) -> None:
    assert validate_room(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "#",
        "##",
        "##lobby",
        "#lob by",
        "lob by",
        "#lobby!",
        "#lob.by",
        "#caf\u00e9",
        "#\u0430",
        "#a\tb",
        "#a\x00",
        "#" + "r" * ROOM_MAX,
        "r" * ROOM_MAX,
        "&lobby",
    ],
)
def test_invalid_rooms(raw: str) -> None:
    error = protocol_error(validate_room, raw)
    assert error.code is ErrorCode.ROOM_INVALID
    assert str(ROOM_MAX - 1) in error.message


@pytest.mark.parametrize(("a", "b"), [("#Lobby", "#lobby"), ("#DEV-1", "#dev-1")])
def test_room_key_is_case_insensitive(a: str, b: str) -> None:
    assert room_key(a) == room_key(b)


@PROPERTY
@given(text=st.text(max_size=40))
def test_validate_room_total(text: str) -> None:
    room = outcome(validate_room, text)
    if isinstance(room, ProtocolError):
        assert room.code is ErrorCode.ROOM_INVALID
        return
    assert room.startswith("#")
    assert 2 <= len(room) <= ROOM_MAX
    assert validate_room(room) == room
    assert room_key(room) == room_key(room.upper())


# --- parse_text_command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Plain text and the // escape.
        ("hello", SayCommand("hello")),
        ("  indented text ", SayCommand("  indented text ")),
        ("tab\tinside", SayCommand("tab\tinside")),
        ("//", SayCommand("/")),
        ("//slash", SayCommand("/slash")),
        ("//join #room", SayCommand("/join #room")),
        ("/// triple", SayCommand("// triple")),
        # join and its alias.
        ("/join #dev", JoinCommand("#dev")),
        ("/join dev", JoinCommand("#dev")),
        ("/JOIN #Dev", JoinCommand("#Dev")),
        ("/join   #dev   ", JoinCommand("#dev")),
        ("/j #dev", JoinCommand("#dev")),
        # part.
        ("/part", PartCommand(None, "")),
        ("/part #dev", PartCommand("#dev", "")),
        ("/part #dev see you", PartCommand("#dev", "see you")),
        ("/part #dev    see you   ", PartCommand("#dev", "see you")),
        ("/part see you", PartCommand(None, "see you")),
        # rooms and its alias.
        ("/rooms", RoomsCommand()),
        ("/list", RoomsCommand()),
        ("/LIST", RoomsCommand()),
        # who and its alias.
        ("/who", WhoCommand(None)),
        ("/who #dev", WhoCommand("#dev")),
        ("/who dev", WhoCommand("#dev")),
        ("/names", WhoCommand(None)),
        ("/names #dev", WhoCommand("#dev")),
        # topic.
        ("/topic", TopicCommand(None, None)),
        ("/topic #dev", TopicCommand("#dev", None)),
        ("/topic #dev Release on Friday", TopicCommand("#dev", "Release on Friday")),
        ("/topic Release on Friday", TopicCommand(None, "Release on Friday")),
        # me.
        ("/me waves", MeCommand("waves")),
        ("/me   waves  hello  ", MeCommand("waves  hello")),
        # msg and its alias.
        ("/msg bob hi there", MsgCommand("bob", "hi there")),
        ("/msg bob   hi", MsgCommand("bob", "hi")),
        ("/query bob hi", MsgCommand("bob", "hi")),
        ("/QUERY Bob Hi", MsgCommand("Bob", "Hi")),
        # nick.
        ("/nick alice2", NickCommand("alice2")),
        ("/nick   alice2  ", NickCommand("alice2")),
        # quit.
        ("/quit", QuitCommand("")),
        ("/quit bye all", QuitCommand("bye all")),
        ("/quit    bye   ", QuitCommand("bye")),
        # help.
        ("/help", HelpCommand(None)),
        ("/help join", HelpCommand("join")),
        ("/help /join", HelpCommand("join")),
        ("/help JOIN", HelpCommand("join")),
        ("/help list", HelpCommand("list")),
        ("/help nosuch", HelpCommand("nosuch")),
        # ping.
        ("/ping", PingCommand("")),
        ("/ping abc", PingCommand("abc")),
        ("/ping abc def", PingCommand("abc def")),
    ],
)
def test_parse_text_command(line: str, expected: Command) -> None:
    assert parse_text_command(line) == expected


@pytest.mark.parametrize("line", ["", " ", "   ", "\t", " \t "])
def test_parse_text_command_ignores_blank_lines(line: str) -> None:
    assert parse_text_command(line) is None


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/join", "join"),
        ("/join   ", "join"),
        ("/join #a #b", "join"),
        ("/j", "join"),
        ("/who #a #b", "who"),
        ("/names #a #b", "who"),
        ("/me", "me"),
        ("/me    ", "me"),
        ("/msg", "msg"),
        ("/msg bob", "msg"),
        ("/msg bob    ", "msg"),
        ("/query bob", "msg"),
        ("/nick", "nick"),
        ("/nick two words", "nick"),
    ],
)
def test_parse_text_command_usage_errors(line: str, command: str) -> None:
    error = protocol_error(parse_text_command, line)
    assert error.code is ErrorCode.BAD_ARGUMENTS
    assert error.message == f"Usage: {COMMANDS[command][0]}"


@pytest.mark.parametrize(
    "line",
    ["/join bad!room", "/join #", "/part #bad! reason", "/who #no.dots", "/topic #a.b text"],
)
def test_parse_text_command_invalid_room(line: str) -> None:
    assert protocol_error(parse_text_command, line).code is ErrorCode.ROOM_INVALID


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("/dance", "/dance"),
        ("/DANCE now", "/DANCE"),
        ("/", "/"),
        ("/ join #a", "/"),
        ("/pong", "/pong"),
        ("/hello", "/hello"),
        ("/" + "z" * 40, "/" + "z" * 32 + "..."),
    ],
)
def test_parse_text_command_unknown(line: str, shown: str) -> None:
    error = protocol_error(parse_text_command, line)
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert "/help" in error.message
    assert shown in error.message
    assert "z" * 33 not in error.message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/quit " + "q" * (REASON_MAX + 50), QuitCommand("q" * REASON_MAX)),
        ("/part #a " + "p" * (REASON_MAX + 1), PartCommand("#a", "p" * REASON_MAX)),
        ("/part " + "p" * (REASON_MAX * 3), PartCommand(None, "p" * REASON_MAX)),
        ("/quit " + "q" * REASON_MAX, QuitCommand("q" * REASON_MAX)),
    ],
)
def test_parse_text_command_truncates_reasons(line: str, expected: Command) -> None:
    assert parse_text_command(line) == expected


def test_every_command_is_parsed_by_the_text_dialect() -> None:
    """Each command in COMMANDS (and so in /help) is understood; none is 'unknown'."""
    minimal_args = {
        "join": "#a",
        "me": "x",
        "msg": "bob hi",
        "nick": "bob",
        "say": "x",
        "width": "100",
    }
    # Any other required parameter: one valid word of its kind.
    sample = {Kind.NICK: "bob", Kind.WORD: "bob", Kind.SECRET: "hunter2", Kind.TEXT: "x"}
    for spec in COMMAND_TABLE:
        if not spec.typed:
            continue
        args = minimal_args.get(spec.name)
        if args is None:
            args = " ".join(sample[p.kind] for p in spec.params if p.required)
        line = f"/{spec.name} {args}".rstrip()
        assert parse_text_command(line) is not None, line


# --- parse_registration_line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("alice", NickCommand("alice")),
        ("  alice  ", NickCommand("alice")),
        ("Alice_99", NickCommand("Alice_99")),
        ("not a nick!", NickCommand("not a nick!")),  # validated by the hub, not here
        ("/nick bob", NickCommand("bob")),
        ("/NICK bob", NickCommand("bob")),
        ("  /nick bob", NickCommand("bob")),
        ("/quit", QuitCommand("")),
        ("/quit not today", QuitCommand("not today")),
        ("/help", HelpCommand(None)),
        ("/help join", HelpCommand("join")),
        ("/ping", PingCommand("")),
        ("/ping t1", PingCommand("t1")),
    ],
)
def test_parse_registration_line(line: str, expected: Command) -> None:
    assert parse_registration_line(line) == expected


@pytest.mark.parametrize("line", ["", "  ", "\t"])
def test_parse_registration_line_ignores_blank_lines(line: str) -> None:
    assert parse_registration_line(line) is None


@pytest.mark.parametrize(
    "line",
    [
        "/join #a",
        "/j #a",
        "/part",
        "/part #a bye",
        "/rooms",
        "/list",
        "/who",
        "/names #a",
        "/topic",
        "/topic #a hi",
        "/me waves",
        "/msg bob hi",
        "/query bob hi",
        "//hello",
    ],
)
def test_parse_registration_line_refuses_other_commands(line: str) -> None:
    error = protocol_error(parse_registration_line, line)
    assert error.code is ErrorCode.NOT_REGISTERED
    assert "nickname" in error.message


def test_parse_registration_line_unknown_command() -> None:
    error = protocol_error(parse_registration_line, "/dance")
    assert error.code is ErrorCode.UNKNOWN_COMMAND


@pytest.mark.parametrize("line", ["/join", "/msg", "/me"])
def test_parse_registration_line_malformed_other_command(line: str) -> None:
    error = protocol_error(parse_registration_line, line)
    assert error.code in {ErrorCode.NOT_REGISTERED, ErrorCode.BAD_ARGUMENTS}


# --- parse_json_command -------------------------------------------------------------------------


def j(**obj: Any) -> str:
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (j(type="hello"), HelloCommand(None)),
        (j(type="hello", nick="alice"), HelloCommand("alice")),
        (j(type="hello", nick=None), HelloCommand(None)),
        (j(type="nick", nick="alice"), NickCommand("alice")),
        (j(type="say", text="hi"), SayCommand("hi", None)),
        (j(type="say", text="hi", room="#dev"), SayCommand("hi", "#dev")),
        (j(type="say", text="hi", room="dev"), SayCommand("hi", "#dev")),
        (j(type="say", text="hi", room=""), SayCommand("hi", None)),
        (j(type="say", text="hi", room=None), SayCommand("hi", None)),
        (j(type="say", text="/not a command"), SayCommand("/not a command")),
        (j(type="say", text=" spaced "), SayCommand(" spaced ")),
        (j(type="me", text="waves"), MeCommand("waves", None)),
        (j(type="me", text="waves", room="#dev"), MeCommand("waves", "#dev")),
        (j(type="msg", nick="bob", text="hi"), MsgCommand("bob", "hi")),
        (j(type="join", room="#dev"), JoinCommand("#dev")),
        (j(type="join", room="dev"), JoinCommand("#dev")),
        (j(type="part"), PartCommand(None, "")),
        (j(type="part", room="#dev"), PartCommand("#dev", "")),
        (j(type="part", room="#dev", reason=" bye "), PartCommand("#dev", "bye")),
        (j(type="part", reason="x" * (REASON_MAX + 9)), PartCommand(None, "x" * REASON_MAX)),
        (j(type="rooms"), RoomsCommand()),
        (j(type="who"), WhoCommand(None)),
        (j(type="who", room="#dev"), WhoCommand("#dev")),
        (j(type="topic"), TopicCommand(None, None)),
        (j(type="topic", room="#dev"), TopicCommand("#dev", None)),
        (j(type="topic", room="#dev", text="Friday"), TopicCommand("#dev", "Friday")),
        (j(type="topic", text="Friday"), TopicCommand(None, "Friday")),
        (j(type="quit"), QuitCommand("")),
        (j(type="quit", reason="later"), QuitCommand("later")),
        (j(type="quit", reason="q" * (REASON_MAX + 1)), QuitCommand("q" * REASON_MAX)),
        (j(type="help"), HelpCommand(None)),
        (j(type="help", command="join"), HelpCommand("join")),
        (j(type="help", command="/JOIN"), HelpCommand("join")),
        (j(type="help", command=""), HelpCommand(None)),
        (j(type="ping"), PingCommand("")),
        (j(type="ping", token="t-1"), PingCommand("t-1")),
        (j(type="pong"), PongCommand("")),
        (j(type="pong", token="t-1"), PongCommand("t-1")),
        (j(type="say", text="hi", extra={"ignored": [1, 2]}), SayCommand("hi")),
        ('  {"type": "rooms"}  ', RoomsCommand()),
    ],
)
def test_parse_json_command(line: str, expected: Command) -> None:
    assert parse_json_command(line) == expected


@pytest.mark.parametrize("line", ["", "  "])
def test_parse_json_command_ignores_blank(line: str) -> None:
    assert parse_json_command(line) is None


@pytest.mark.parametrize(
    "line",
    [
        j(type="say", text=""),
        j(type="say", text="   "),
        j(type="me", text="\t"),
        '{"type": "say", "text": "\\u001b"}',  # blank once sanitised
    ],
)
def test_parse_json_command_refuses_blank_text(line: str) -> None:
    """A blank say or me is refused as the text dialect refuses /me with no text (issue 9)."""
    error = protocol_error(parse_json_command, line)
    assert error.code is ErrorCode.BAD_ARGUMENTS
    assert error.command in ("say", "me")


@pytest.mark.parametrize(
    "line",
    [
        j(type="nick"),
        j(type="nick", nick=None),
        j(type="nick", nick=5),
        j(type="nick", nick=["alice"]),
        j(type="hello", nick=7),
        j(type="say"),
        j(type="say", text=None),
        j(type="say", text=1),
        j(type="say", text=True),
        j(type="say", text="hi", room=5),
        j(type="say", text="hi", room=["#a"]),
        j(type="me"),
        j(type="me", text={"a": 1}),
        j(type="msg", text="hi"),
        j(type="msg", nick="bob"),
        j(type="msg", nick="bob", text=""),
        j(type="msg", nick="bob", text="   "),
        j(type="msg", nick=1, text="hi"),
        j(type="join"),
        j(type="join", room=3),
        j(type="part", room=3),
        j(type="part", reason=3),
        j(type="who", room=False),
        j(type="topic", text=3),
        j(type="quit", reason=["x"]),
        j(type="help", command=1),
        j(type="ping", token=1),
        j(type="pong", token={}),
    ],
)
def test_parse_json_command_bad_arguments(line: str) -> None:
    error = protocol_error(parse_json_command, line)
    assert error.code is ErrorCode.BAD_ARGUMENTS
    assert error.message


@pytest.mark.parametrize(
    "line",
    [
        j(type="join", room="bad room"),
        j(type="join", room="#"),
        j(type="join", room=""),
        j(type="say", text="hi", room="#bad!"),
        j(type="who", room="   "),
        j(type="topic", room="#a.b"),
    ],
)
def test_parse_json_command_invalid_room(line: str) -> None:
    assert protocol_error(parse_json_command, line).code is ErrorCode.ROOM_INVALID


@pytest.mark.parametrize(
    "line",
    [
        "hello",
        "/join #a",
        "{",
        '{"type": "say",}',
        "{'type': 'say'}",
        "[1, 2]",
        "[]",
        '"say"',
        "42",
        "null",
        "true",
        "{}",
        '{"text": "hi"}',
        '{"type": null}',
        '{"type": 1}',
        '{"type": ["say"]}',
        '{"type": {"name": "say"}}',
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"type": "say", "text": "x", "n": ' + "9" * 5000 + "}",
    ],
)
def test_parse_json_command_bad_json(line: str) -> None:
    assert protocol_error(parse_json_command, line).code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("kind", ["dance", "SAY", "Say", "", "list", "event", "k" * 100])
def test_parse_json_command_unknown_type(kind: str) -> None:
    error = protocol_error(parse_json_command, j(type=kind))
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert "k" * 33 not in error.message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"type": "say", "text": "\\u001b[2Jhi"}', SayCommand("[2Jhi")),
        ('{"type": "say", "text": "a\\r\\n<admin> b"}', SayCommand("a<admin> b")),
        ('{"type": "say", "text": "\\u009b31mred"}', SayCommand("31mred")),
        ('{"type": "say", "text": "\\u202egnp.exe"}', SayCommand("gnp.exe")),
        ('{"type": "say", "text": "\\u2028x"}', SayCommand("x")),
        ('{"type": "me", "text": "\\u0007beeps"}', MeCommand("beeps")),
        ('{"type": "msg", "nick": "b\\u0000ob", "text": "\\u001bhi"}', MsgCommand("bob", "hi")),
        ('{"type": "nick", "nick": "al\\u200fice"}', NickCommand("alice")),
        ('{"type": "hello", "nick": "\\u001bcarol"}', HelloCommand("carol")),
        ('{"type": "topic", "text": "new\\ntopic"}', TopicCommand(None, "newtopic")),
        ('{"type": "part", "reason": "bye\\u001b[0m"}', PartCommand(None, "bye[0m")),
        ('{"type": "quit", "reason": "\\u0085gone"}', QuitCommand("gone")),
        ('{"type": "ping", "token": "t\\u0008"}', PingCommand("t")),
        ('{"type": "help", "command": "\\u001bjoin"}', HelpCommand("join")),
        ('{"type": "join", "room": "#dev\\u0000"}', JoinCommand("#dev")),
        ('{"type": "say", "text": "caf\u00e9 \U0001f642"}', SayCommand("caf\u00e9 \U0001f642")),
    ],
)
def test_parse_json_command_sanitises_strings(line: str, expected: Command | None) -> None:
    assert parse_json_command(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        '{"type": "say", "text": "a\\ud800b"}',
        '{"type": "me", "text": "\\udfffwaves"}',
        '{"type": "msg", "nick": "bob", "text": "hi \\ud83d"}',
        '{"type": "topic", "text": "\\udc00topic"}',
        '{"type": "ping", "token": "\\ud800"}',
        '{"type": "quit", "reason": "bye\\udbff"}',
    ],
)
def test_parse_json_command_output_is_always_encodable(line: str) -> None:
    """A lone surrogate escape is valid JSON but not a character: it must not get through.

    Everything a command carries ends up in an event that render() encodes as UTF-8; a lone
    surrogate makes that raise UnicodeEncodeError for every recipient (and a ``say`` puts it
    in the room history, so later joiners hit it too).
    """
    command = parse_json_command(line)
    assert command is not None
    for value in vars_of(command):
        value.encode("utf-8")
    text = getattr(command, "text", None) or getattr(command, "token", None) or ""
    render(Message(room="#a", nick="alice", text=text), Dialect.JSON)
    render(Message(room="#a", nick="alice", text=text), Dialect.TEXT)


def vars_of(command: Command) -> list[str]:
    return [v for f in fields(command) if isinstance(v := getattr(command, f.name), str)]


# --- parsers never raise anything but ProtocolError ---------------------------------------------

COMMAND_WORDS = [*COMMANDS, "list", "names", "j", "query", "pong", "hello", "", "JOIN", "x"]
JSON_TYPES = [*COMMANDS, "hello", "say", "pong", "rooms", "bogus", "", "SAY"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
command_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(JSON_TYPES) | json_values},
    optional={
        key: st.text(max_size=40) | json_values
        for key in ("nick", "text", "room", "reason", "command", "token")
    },
)
room_ish = st.sampled_from(["#a", "a", "#", "##", "#a b", "#\u00e9", "#" + "r" * 40, ""])
json_ish_lines = (
    command_objects.map(json.dumps)
    | command_objects.map(lambda o: json.dumps(o, ensure_ascii=False))
    | json_values.map(json.dumps)
    | st.text()
)
text_ish_lines = (
    st.text()
    | st.text().map(lambda s: "/" + s)
    | st.tuples(st.sampled_from(COMMAND_WORDS), room_ish, st.text(max_size=30)).map(
        lambda t: f"/{t[0]} {t[1]} {t[2]}"
    )
    | st.tuples(st.sampled_from(COMMAND_WORDS), st.text(max_size=30)).map(
        lambda t: f"/{t[0]}{t[1]}"
    )
)

LINE_PARSERS: list[Callable[[str], Command | None]] = [
    parse_text_command,
    parse_registration_line,
    parse_json_command,
]


def parses_or_refuses(parser: Callable[[str], Command | None], line: str) -> None:
    result = outcome(parser, line)
    if isinstance(result, ProtocolError):
        assert isinstance(result.code, ErrorCode)
        assert result.message
    elif result is not None:
        assert type(result).__name__.endswith("Command")


@PROPERTY
@given(line=text_ish_lines)
def test_parsers_only_raise_protocol_error_on_text(line: str) -> None:
    for parser in LINE_PARSERS:
        parses_or_refuses(parser, line)


@PROPERTY
@given(line=json_ish_lines)
def test_parsers_only_raise_protocol_error_on_json(line: str) -> None:
    for parser in LINE_PARSERS:
        parses_or_refuses(parser, line)


@PROPERTY
@given(line=json_ish_lines | text_ish_lines)
def test_parsed_sanitised_lines_carry_no_unsafe_text(line: str) -> None:
    """What the session does: decode, sanitise, parse. No field may carry a control character."""
    line = sanitize(line)
    for parser in LINE_PARSERS:
        try:
            command = parser(line)
        except ProtocolError:
            continue
        if command is not None:
            for value in vars_of(command):
                assert not has_unsafe(value)


# --- help_text ----------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    text = help_text(None)
    for name, (usage, what) in COMMANDS.items():
        assert f"/{name}" in text
        assert usage in text
        assert what in text
    assert "//" in text
    assert all(line == line.rstrip() for line in text.split("\n"))
    assert "\r" not in text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_for_one_command(name: str) -> None:
    usage, what = COMMANDS[name]
    assert help_text(name) == f"{usage}: {what}"
    assert help_text(name).startswith(f"/{name}")


@pytest.mark.parametrize(
    ("alias", "name"), [("list", "rooms"), ("names", "who"), ("j", "join"), ("query", "msg")]
)
def test_help_for_an_alias(alias: str, name: str) -> None:
    assert help_text(alias) == help_text(name)
    assert parse_text_command(f"/help {alias}") == HelpCommand(alias)


@pytest.mark.parametrize("name", ["dance", "pong", "hello", "x" * 100])
def test_help_for_an_unknown_command(name: str) -> None:
    error = protocol_error(help_text, name)
    assert error.code is ErrorCode.UNKNOWN_COMMAND
    assert "/help" in error.message
    assert "x" * 33 not in error.message


def test_help_round_trip_through_the_parser() -> None:
    for name in COMMANDS:
        command = parse_text_command(f"/help /{name.upper()}")
        assert isinstance(command, HelpCommand)
        assert command.command is not None
        assert help_text(command.command) == help_text(name)


# --- events: strategies -------------------------------------------------------------------------

BASE_FIELDS = {"id", "ts", "room", "nick", "text", "re"}


def event_strategy(
    cls: type[Event],
    text: SearchStrategy[str],
    ts: SearchStrategy[float],
) -> SearchStrategy[Event]:
    """Any instance of ``cls``; extra fields come from EXTRA_FIELDS."""
    maybe = st.none() | text
    extra = extra_fields(text, ts).get(cls, {})
    return st.builds(cls, id=text, ts=ts, room=maybe, nick=maybe, text=text, re=maybe, **extra)


def extra_fields(
    text: SearchStrategy[str], ts: SearchStrategy[float]
) -> dict[type[Event], dict[str, SearchStrategy[Any]]]:
    codes = st.sampled_from(list(ErrorCode)) | text
    maybe = st.none() | text
    names = st.lists(text, max_size=8).map(tuple)
    return {
        Hello: {"version": st.integers(min_value=0, max_value=10**6), "server": text},
        Welcome: {"account": maybe},
        Message: {"history": st.booleans(), "notice": st.booleans(), "tags": text},
        Action: {"history": st.booleans()},
        Private: {"target": text, "echo": st.booleans(), "notice": st.booleans(), "tags": text},
        Topic: {"by": maybe, "at": ts},
        Nick: {"new_nick": text},
        RoomList: {
            "rooms": st.lists(
                st.builds(
                    RoomInfo,
                    room=text,
                    members=st.integers(min_value=0, max_value=10**6),
                    topic=text,
                ),
                max_size=5,
            ).map(tuple),
            "total": st.integers(min_value=0, max_value=10**6),
            "offset": st.integers(min_value=0, max_value=10**6),
        },
        Who: {"members": names, "operators": names, "voiced": names},
        Mode: {"change": text, "target": text},
        Modes: {"modes": text, "owner": maybe},
        Kick: {"target": text},
        Invite: {"target": text},
        BanList: {
            "bans": st.lists(
                st.builds(BanInfo, mask=text, kind=text, reason=text, by=text, ts=ts),
                max_size=5,
            ).map(tuple)
        },
        Whois: {
            "account": maybe,
            "rooms": names,
            "idle": st.integers(min_value=0, max_value=10**9),
            "away": text,
            "since": ts,
            "operator": st.booleans(),
            "address": maybe,
            "user": text,
            "realname": text,
            "operator_in": names,
        },
        Ignores: {"nicks": names},
        LoggedIn: {"account": maybe},
        Error: {"code": codes, "command": st.none() | text},
        Bye: {"code": codes},
    }


ANY_TEXT = st.text(max_size=40)
SAFE_TEXT = ANY_TEXT.map(sanitize)
ANY_TS = st.floats(allow_nan=False, allow_infinity=False)
SANE_TS = st.floats(min_value=0, max_value=4_102_444_800)  # up to 2100
EVENT_CLASSES = list(EVENT_TYPES.values())
JSON_EVENTS = {cls: event_strategy(cls, ANY_TEXT, ANY_TS) for cls in EVENT_CLASSES}
TEXT_EVENTS = {cls: event_strategy(cls, SAFE_TEXT, SANE_TS) for cls in EVENT_CLASSES}


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENT_TYPES))
def test_event_strategies_cover_every_field(cls: type[Event]) -> None:
    """A new event field without a strategy would silently go untested: catch it here."""
    declared = {f.name for f in fields(cls)}
    assert declared >= BASE_FIELDS
    assert declared - BASE_FIELDS == set(extra_fields(ANY_TEXT, ANY_TS).get(cls, {}))
    assert EVENT_TYPES[cls.type] is cls


def test_event_types_are_all_listed() -> None:
    assert set(EVENT_TYPES) == {
        "hello", "welcome", "message", "action", "private", "join", "part", "quit", "nick",
        "topic", "rooms", "who", "notice", "error", "ping", "pong", "bye",
        "mode", "modes", "kick", "invite", "bans", "whois", "away", "ignores", "account",
    }  # fmt: skip


# --- events: JSON dialect -----------------------------------------------------------------------


def assert_json_round_trip(event: Event) -> dict[str, Any]:
    data = render(event, Dialect.JSON)
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert b"\r" not in data
    obj = json.loads(data)
    assert isinstance(obj, dict)
    assert obj["type"] == event.type
    assert {"type", "id", "ts", "room", "nick", "text"} <= set(obj)
    assert parse_event(data) == event
    assert parse_event(data.decode()) == event
    assert type(parse_event(data)) is type(event)
    return obj


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENT_TYPES))
def test_json_round_trip_defaults(cls: type[Event]) -> None:
    obj = assert_json_round_trip(cls())
    assert obj["room"] is None
    assert obj["nick"] is None
    assert obj["text"] == ""


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENT_TYPES))
@PER_CLASS
@given(data=st.data())
def test_json_round_trip_any_event(cls: type[Event], data: st.DataObject) -> None:
    """Each event survives alone, and JSON Lines back to back split on b'\\n' into the same."""
    events = data.draw(st.lists(JSON_EVENTS[cls], min_size=1, max_size=3))
    for event in events:
        assert_json_round_trip(event)
    stream = b"".join(render(e, Dialect.JSON) for e in events)
    assert [parse_event(line) for line in stream.splitlines()] == events


def test_json_exact_bytes() -> None:
    event = Message(id="x-1", ts=1.5, room="#a", nick="alice", text="caf\u00e9")
    assert (
        render(event, Dialect.JSON)
        == (
            '{"type":"message","id":"x-1","ts":1.5,"room":"#a","nick":"alice",'
            '"text":"caf\u00e9","history":false}\n'
        ).encode()
    )


def test_json_rooms_and_members_are_lists() -> None:
    rooms = RoomList(rooms=(RoomInfo("#a", 2, "t"),))
    assert json.loads(render(rooms, Dialect.JSON))["rooms"] == [
        {"room": "#a", "members": 2, "topic": "t"}
    ]
    who = Who(room="#a", members=("alice", "bob"))
    assert json.loads(render(who, Dialect.JSON))["members"] == ["alice", "bob"]


def test_json_error_code_is_the_plain_code() -> None:
    obj = json.loads(render(Error(code=ErrorCode.FLOOD, text="slow down"), Dialect.JSON))
    assert obj["code"] == "flood"


def test_events_get_unique_ids_and_a_timestamp() -> None:
    before = time.time()
    events = [Message(text=str(i)) for i in range(100)]
    assert len({e.id for e in events}) == 100
    assert all(before - 1 <= e.ts <= time.time() + 1 for e in events)


# --- parse_event --------------------------------------------------------------------------------


def test_parse_event_ignores_unknown_fields() -> None:
    line = '{"type":"join","id":"i","ts":2,"room":"#a","nick":"bob","text":"","future":[1]}'
    assert parse_event(line) == Join(id="i", ts=2, room="#a", nick="bob")


def test_parse_event_fills_missing_fields() -> None:
    event = parse_event('{"type": "notice", "text": "hi"}')
    assert isinstance(event, Notice)
    assert event.text == "hi"
    assert event.room is None
    assert event.id
    assert isinstance(event.ts, float)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        b"\xff\xfe",
        "[]",
        "42",
        '"message"',
        "null",
        "{}",
        '{"type": "no-such-event"}',
        '{"type": 5}',
        '{"type": null}',
        '{"type": "event"}',
        '{"type": "message", "bogus"',
    ],
)
def test_parse_event_refuses_with_value_error(line: str | bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_event(line)


@pytest.mark.parametrize(
    "line",
    [
        '{"type": ["message"]}',
        '{"type": {"a": 1}}',
        '{"type": "rooms", "rooms": [1]}',
        '{"type": "rooms", "rooms": [{}]}',
        '{"type": "rooms", "rooms": [{"room": "#a"}]}',
        '{"type": "rooms", "rooms": 5}',
        '{"type": "rooms", "rooms": [null]}',
        '{"type": "who", "members": 5}',
        '{"type": "who", "members": null}',
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=[
        "type-is-list",
        "type-is-object",
        "rooms-item-int",
        "rooms-item-empty",
        "rooms-item-missing-keys",
        "rooms-int",
        "rooms-item-null",
        "members-int",
        "members-null",
        "deep-nesting",
    ],
)
def test_parse_event_malformed_raises_value_error_only(line: str) -> None:
    """The documented contract: anything not understood is a ValueError, nothing else."""
    try:
        event = parse_event(line)
    except ValueError:
        return
    assert isinstance(event, Event)


event_objects = st.fixed_dictionaries(
    {"type": st.sampled_from([*EVENT_TYPES, "bogus"]) | json_values},
    optional={
        key: json_values
        for key in (
            "id", "ts", "room", "nick", "text", "rooms", "members", "code", "history",
            "echo", "target", "new_nick", "version", "server",
        )
    },
)  # fmt: skip


@PROPERTY
@given(
    line=st.text()
    | st.binary()
    | json_values.map(json.dumps)
    | event_objects.map(json.dumps)
    | event_objects.map(lambda o: json.dumps(o).encode())
)
def test_parse_event_garbage_raises_value_error_only(line: str | bytes) -> None:
    try:
        event = parse_event(line)
    except ValueError:
        return
    assert isinstance(event, Event)


# --- events: text dialect -----------------------------------------------------------------------

T0 = calendar.timegm((2024, 1, 2, 3, 4, 5))  # 2024-01-02 03:04:05 UTC


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours ahead of UTC, so a local-time rendering would show."""
    monkeypatch.setenv("TZ", "XYZ-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Message(room="#dev", nick="alice", text="hello"), "[#dev] <alice> hello"),
        (Message(nick="alice", text="hello"), "<alice> hello"),
        (Message(room="#dev", nick="alice", text="tab\there"), "[#dev] <alice> tab\there"),
        (Action(room="#dev", nick="alice", text="waves"), "[#dev] * alice waves"),
        (Action(nick="alice", text="waves"), "* alice waves"),
        (Private(nick="alice", target="bob", text="psst"), "[private] <alice> psst"),
        (
            Private(nick="alice", target="bob", text="psst", echo=True),
            "[private to bob] <alice> psst",
        ),
        (Join(room="#dev", nick="bob"), "[#dev] *** bob joined #dev"),
        (Part(room="#dev", nick="bob"), "[#dev] *** bob left #dev"),
        (Part(room="#dev", nick="bob", text="lunch"), "[#dev] *** bob left #dev (lunch)"),
        (Quit(nick="bob"), "*** bob quit"),
        (Quit(nick="bob", text="bye all"), "*** bob quit (bye all)"),
        (Nick(nick="bob", new_nick="robert"), "*** bob is now known as robert"),
        (Topic(room="#dev", nick="alice", text="Friday"), "[#dev] *** alice set the topic: Friday"),
        (Topic(room="#dev", text="Friday"), "[#dev] *** Topic: Friday"),
        (Topic(room="#dev"), "[#dev] *** No topic is set"),
        (RoomList(), "*** 0 rooms:"),
        (RoomList(rooms=(RoomInfo("#a", 1, ""),)), "*** 1 room:\r\n***   #a (1 member)"),
        (
            RoomList(rooms=(RoomInfo("#a", 1, "hello"), RoomInfo("#b", 2, ""))),
            "*** 2 rooms:\r\n***   #a (1 member): hello\r\n***   #b (2 members)",
        ),
        (Who(room="#dev", members=("alice", "bob")), "[#dev] *** 2 in #dev: alice, bob"),
        (Who(room="#dev", members=("alice",)), "[#dev] *** 1 in #dev: alice"),
        (
            Who(
                room="#dev",
                members=("alice", "bob", "carol"),
                operators=("ALICE",),
                voiced=("bob",),
            ),
            "[#dev] *** 3 in #dev: @alice, +bob, carol",
        ),
        (Notice(text="hi"), "*** hi"),
        (Notice(text="one\ntwo"), "*** one\r\n*** two"),
        (Notice(room="#dev", text="one\ntwo"), "[#dev] *** one\r\n[#dev] *** two"),
        (Error(code="flood", text="Too fast"), "!!! Too fast"),
        (Bye(code="quit", text="Goodbye"), "*** Closing connection: Goodbye"),
        (Hello(text="JSON Lines dialect"), "*** JSON Lines dialect"),
        (Welcome(nick="alice", text="Welcome, alice!"), "*** Welcome, alice!"),
        (Ping(text="tok"), "*** ping tok"),
        (Pong(text="tok"), "*** pong tok"),
        (Pong(), "*** pong"),
    ],
)
def test_text_rendering(event: Event, expected: str) -> None:
    assert render(event, Dialect.TEXT) == (expected + "\r\n").encode()


@pytest.mark.usefixtures("far_timezone")
@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            Message(room="#dev", nick="alice", text="earlier", ts=T0, history=True),
            "[#dev] (history 2024-01-02 03:04 UTC) <alice> earlier",
        ),
        (
            Action(room="#dev", nick="alice", text="waved", ts=T0, history=True),
            "[#dev] (history 2024-01-02 03:04 UTC) * alice waved",
        ),
        (
            Message(room="#dev", nick="alice", text="now", ts=T0, history=False),
            "[#dev] <alice> now",
        ),
    ],
)
def test_text_history_marker_is_utc(event: Event, expected: str) -> None:
    assert render(event, Dialect.TEXT) == (expected + "\r\n").encode()


def test_text_rendering_is_utf8() -> None:
    event = Message(room="#a", nick="alice", text="caf\u00e9 \U0001f642")
    assert render(event, Dialect.TEXT) == "[#a] <alice> caf\u00e9 \U0001f642\r\n".encode()


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENT_TYPES))
@PER_CLASS
@given(data=st.data())
def test_text_rendering_is_readable_lines(cls: type[Event], data: st.DataObject) -> None:
    """With sanitised fields, every event is whole \\r\\n lines with nothing unsafe in them."""
    event = data.draw(TEXT_EVENTS[cls])
    raw = render(event, Dialect.TEXT)
    assert raw.endswith(b"\r\n")
    text = raw.decode("utf-8")
    lines = text[:-2].split("\r\n")
    for line in lines:
        assert "\r" not in line
        assert "\n" not in line
        assert not has_unsafe(line)
        assert line.splitlines() == ([line] if line else [])
    if cls not in (RoomList, BanList, Whois):  # the lists and /whois take several lines
        assert len(lines) == 1


@PROPERTY
@given(text=st.text(max_size=60), room=st.none() | SAFE_TEXT)
def test_notice_lines_each_get_a_prefix(text: str, room: str | None) -> None:
    clean = "\n".join(sanitize(part) for part in text.split("\n"))
    raw = render(Notice(room=room, text=clean), Dialect.TEXT).decode()
    lines = raw[:-2].split("\r\n")
    assert len(lines) == clean.count("\n") + 1
    prefix = f"[{room}] *** " if room else "*** "
    assert all(line.startswith(prefix) for line in lines)


# --- the two dialects agree ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=list(EVENT_TYPES))
def test_text_of_parsed_event_equals_text_of_original(cls: type[Event]) -> None:
    """A JSON client rendering what it received shows what a text client sees."""
    event = cls(id="e-1", ts=T0, room="#dev", nick="alice", text="words")
    assert render(parse_event(render(event, Dialect.JSON)), Dialect.TEXT) == render(
        event, Dialect.TEXT
    )


# --- wrapping the text dialect (issue 10.7) --------------------------------------------------


@PROPERTY
@given(
    line=st.text(alphabet=st.sampled_from(["a", " ", "\u4e2d", "\u00e9", "\u0301", "\U0001f600"])),
    width=st.integers(min_value=MIN_WIDTH, max_value=120),
)
def test_wrapped_rows_fit_and_rejoin(line: str, width: int) -> None:
    """Every row fits ``width`` even where terminals count generously; rows after the first
    start with the continuation indent; unwrap gives the line back exactly."""
    line = "[#a] <b> " + line
    rows = wrap_line(line, width)
    assert unwrap(rows) == [line]
    for row in rows:
        assert sum(char_width(c) for c in row) <= width
    assert all(row.startswith("  ") for row in rows[1:])
    assert not rows[0].startswith(" ")


@pytest.mark.parametrize(
    ("char", "columns"),
    [
        ("a", 1),
        ("\u00e9", 2),
        ("\u0435", 2),
        ("\u0105", 1),
        ("\u4e2d", 2),
        ("\uff21", 2),
        ("\u00b1", 2),
        ("\U0001f600", 2),
        ("\u0301", 0),
        ("\u200b", 1),
        ("\u200d", 1),
    ],
)
def test_char_width_never_underestimates(char: str, columns: int) -> None:
    """Wide (W, F), ambiguous (A: e-acute and Cyrillic are 2 columns in CJK terminals) and
    emoji count 2; marks 0; zero-width characters 1; other letters (a-ogonek) 1."""
    assert char_width(char) == columns


def test_text_rendering_collapses_whitespace_in_peer_text_only() -> None:
    said = render_text(Message(room="#a", nick="b", text="x \t\t  y"))
    assert said == b"[#a] <b> x y\r\n"
    notice = render_text(Notice(text="Commands:\n  /join #room   join"))
    assert notice == b"*** Commands:\r\n***   /join #room   join\r\n"
