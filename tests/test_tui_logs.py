"""--log-dir: every live line of a pane appended to a file per pane and day, by a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from chat.protocol import Join, Message, Private
from chat.tui.logs import PaneLog
from chat.tui.state import ChatState


def logged(directory: Path, pattern: str) -> list[str]:
    """The lines of the one file in ``directory`` matching ``pattern``."""
    (found,) = directory.glob(pattern)
    return found.read_text().splitlines()


async def test_lines_go_to_one_file_per_pane_and_day(tmp_path: Path) -> None:
    log = PaneLog(tmp_path / "logs")
    state = ChatState("alice")
    state.log = log.write
    state.apply(Join(room="#dev", nick="alice"))
    state.apply(Message(room="#dev", nick="bob", text="first"))
    state.apply(Message(room="#dev", nick="bob", text="second", history=True))  # replayed
    state.apply(Private(nick="carol", target="alice", text="psst"))
    await log.aclose()
    day = time.strftime("%Y-%m-%d")
    dev = (tmp_path / "logs" / f"#dev-{day}.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in dev] == ["--> alice joined #dev", "<bob> first"]
    query = (tmp_path / "logs" / f"carol-{day}.log").read_text()
    assert "[msg] <carol> psst" in query


async def test_the_writing_happens_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PaneLog(tmp_path)
    writers: list[str] = []
    append = PaneLog._append

    def recording(self: PaneLog, batch: list[tuple[str, str]]) -> None:
        writers.append(threading.current_thread().name)
        append(self, batch)

    monkeypatch.setattr(PaneLog, "_append", recording)
    for n in range(100):
        log.write("#dev", f"line {n}")
    await log.aclose()
    assert writers
    assert threading.main_thread().name not in writers
    lines = logged(tmp_path, "#dev-*.log")
    assert lines == [f"line {n}" for n in range(100)]  # in order, across batches


async def test_a_directory_that_cannot_be_written_stops_logging_and_says_why(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = PaneLog(blocker / "logs")
    log.write("#dev", "lost")
    await log.aclose()
    assert log.failure is not None
    assert log.failure.startswith("--log-dir stopped:")
    log.write("#dev", "not even queued")
    await log.aclose()
