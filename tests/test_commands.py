"""The command table, walked: every command is read alike by every dialect.

For each command in :data:`chat.commands.COMMANDS` and every combination of argument values
that both dialects can express, the text dialect's ``/name args`` and the JSON dialect's
``{"type": name, ...}`` must give the same command, or be refused with the same error code
naming the same command. Nothing here is listed per command: a new table entry is covered
the day it is added.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from chat.codecs import JSON, TEXT
from chat.commands import (
    COMMANDS,
    TOPIC_CLEAR,
    Command,
    CommandSpec,
    HelpCommand,
    Kind,
    Param,
    PartCommand,
    Request,
    TopicCommand,
    WhoCommand,
    help_text,
    lookup,
)
from chat.errors import ErrorCode, ProtocolError

# Values each kind of parameter is tried with: valid, invalid, and absent (None).
POOL: dict[Kind, tuple[str | None, ...]] = {
    Kind.ROOM: ("#dev", "dev", "#bad!", None),
    Kind.NICK: ("bob", "b@d", None),
    Kind.NAME: ("join", "/JOIN", None),
    Kind.TEXT: ("hello there", None),
    Kind.REASON: ("gone fishing", None),
    Kind.TOPIC: ("new topic", "", None),
    Kind.OFFSET: ("+100", "+x", None),
    Kind.NUMBER: ("120", "wide", None),
    Kind.WORD: ("+m", "account:bob", None),
    Kind.SECRET: ("hunter2", "correct horse battery", None),
}

# Kinds typed as one word (a last password takes the rest of the line).
ONE_WORD = frozenset(
    {Kind.ROOM, Kind.NICK, Kind.NAME, Kind.OFFSET, Kind.NUMBER, Kind.WORD, Kind.SECRET}
)

Outcome = tuple[str, Any]


def outcome(codec: Any, raw: bytes, *, registered: bool = True) -> Outcome:
    """What a codec makes of one line: the request's command, or the refusal's code and
    command name."""
    try:
        request = codec.decode(raw, registered=registered)
    except ProtocolError as exc:
        return ("refused", (exc.code, exc.command))
    assert isinstance(request, Request)
    return ("command", request.command)


def text_form(spec: CommandSpec, values: dict[str, str | None]) -> str | None:
    """The typed line for ``values``, or None where the text dialect cannot say it."""
    words: list[str] = []
    last = len(spec.params) - 1
    for index, param in enumerate(spec.params):
        value = values[param.name]
        if value is None:
            later = [values[p.name] for p in spec.params[index + 1 :]]
            if param.required and any(v is not None for v in later):
                return None  # the next word would be read as this parameter
            continue
        if param.kind is Kind.ROOM and index < last and not value.startswith("#"):
            return None  # text may follow: a room there needs its '#'
        if param.kind is Kind.TOPIC and not value:
            value = TOPIC_CLEAR
        if (
            param.kind in ONE_WORD
            and " " in value
            and (index < last or param.kind is not Kind.SECRET)
        ):
            return None  # several words where one is read
        words.append(value)
    return " ".join([f"/{spec.name}", *words])


def combinations(spec: CommandSpec) -> Iterator[dict[str, str | None]]:
    pools = [POOL[param.kind] for param in spec.params]
    for chosen in itertools.product(*pools):
        yield {param.name: value for param, value in zip(spec.params, chosen, strict=True)}


TYPED = [spec for spec in COMMANDS if spec.typed]


@pytest.mark.parametrize("spec", TYPED, ids=[spec.name for spec in TYPED])
def test_both_dialects_agree_on_every_argument_combination(spec: CommandSpec) -> None:
    compared = 0
    for values in combinations(spec):
        line = text_form(spec, values)
        if line is None:
            continue
        obj = {"type": spec.name, **{k: v for k, v in values.items() if v is not None}}
        as_text = outcome(TEXT, line.encode())
        as_json = outcome(JSON, json.dumps(obj).encode())
        assert as_text == as_json, (line, obj)
        if as_text[0] == "refused":
            assert as_text[1][1] == spec.name, (line, "a refusal names its command")
        compared += 1
    assert compared >= 1


@pytest.mark.parametrize("spec", COMMANDS, ids=[spec.name for spec in COMMANDS])
def test_registration_rule_is_the_same_in_both_dialects(spec: CommandSpec) -> None:
    """Before a nickname is chosen, only the table's registration commands are read."""
    values = {p.name: POOL[p.kind][0] for p in spec.params}
    obj = {"type": spec.name, **{k: v for k, v in values.items() if v is not None}}
    as_json = outcome(JSON, json.dumps(obj).encode(), registered=False)
    if spec.before_registration:
        assert as_json[0] == "command"
    else:
        assert as_json == ("refused", (ErrorCode.NOT_REGISTERED, spec.name))
    if spec.typed:
        line = text_form(spec, values)
        assert line is not None
        as_text = outcome(TEXT, line.encode(), registered=False)
        assert (as_text[0] == "command") == spec.before_registration, line


def test_every_refusal_is_a_protocol_error_with_the_command_and_request() -> None:
    bad = {"type": "join", "room": "#bad!", "id": "r1"}
    with pytest.raises(ProtocolError) as caught:
        JSON.decode(json.dumps(bad).encode(), registered=True)
    assert (caught.value.code, caught.value.command, caught.value.request) == (
        ErrorCode.ROOM_INVALID,
        "join",
        "r1",
    )


@pytest.mark.parametrize("ident", [7, "", "x" * 65, ["a"]])
def test_request_ids_are_short_strings(ident: object) -> None:
    line = json.dumps({"type": "ping", "id": ident}).encode()
    with pytest.raises(ProtocolError) as caught:
        JSON.decode(line, registered=True)
    assert caught.value.code is ErrorCode.BAD_ARGUMENTS
    request = JSON.decode(json.dumps({"type": "ping", "id": "x" * 64}).encode(), registered=True)
    assert request is not None
    assert request.id == "x" * 64


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # A room may be written without '#' where no text can follow it ...
        ("/join python", "#python"),
        ("/who python", WhoCommand("#python")),
        # ... and where text may follow, only a '#word' is a room: the rest is text.
        ("/part python", PartCommand(None, "python")),
        ("/part #python bye", PartCommand("#python", "bye")),
        ("/topic python", TopicCommand(None, "python")),
        ("/topic #python", TopicCommand("#python", None)),
        (f"/topic #python {TOPIC_CLEAR}", TopicCommand("#python", "")),
        (f"/topic {TOPIC_CLEAR}", TopicCommand(None, "")),
    ],
)
def test_argument_rules(line: str, expected: Command | str) -> None:
    request = TEXT.decode(line.encode(), registered=True)
    assert request is not None
    if isinstance(expected, str):
        assert getattr(request.command, "room", None) == expected
    else:
        assert request.command == expected


def test_aliases_and_help_come_from_the_table() -> None:
    listing = help_text(None)
    for spec in COMMANDS:
        assert (spec.usage in listing) == spec.typed, spec.name
        for alias in spec.aliases:
            assert lookup(alias, typed=True) is spec
            assert help_text(alias) == help_text(spec.name)
            line = f"/{alias.upper()} {' '.join(_minimal(spec))}"
            typed = TEXT.decode(line.encode(), registered=True)
            assert typed is not None
            assert type(typed.command) is spec.cls
    assert TEXT.decode(b"/help /JOIN", registered=True) == Request(HelpCommand("join"))


def _minimal(spec: CommandSpec) -> list[str]:
    return [str(POOL[p.kind][0]) for p in spec.params if p.required]


def test_usage_lines_follow_the_parameters() -> None:
    usage = {spec.name: spec.usage for spec in COMMANDS}
    assert usage["join"] == "/join #room"
    assert usage["part"] == "/part [#room] [reason]"
    assert usage["msg"] == "/msg nick text"
    assert usage["me"] == "/me [#room] action"
    assert Param("room", Kind.ROOM, required=False).usage == "[#room]"
