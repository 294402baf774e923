"""``--log-dir``: every pane appended to a plain text file per pane and day.

Lines are collected as they are shown and written by a thread, a batch at a time: a slow
disk must never stall the screen or the connection. One file per pane and (local) day,
``DIR/#room-2026-12-04.log`` (a private conversation: ``DIR/nick-...``), opened in append
mode for each batch, so that rotating or deleting files under a running client is safe.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

__all__ = ["PaneLog"]


class PaneLog:
    """Appends shown lines to ``directory``; :meth:`aclose` writes what is left."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._pending: list[tuple[str, str]] = []  # (file name, line)
        self._writer: asyncio.Task[None] | None = None
        #: Why writing stopped (a full disk, a directory we may not write), once it has.
        self.failure: str | None = None

    def write(self, pane: str, text: str) -> None:
        """Queue one line of ``pane`` (never blocks; the writer task takes it)."""
        if self.failure is not None:
            return
        day = time.strftime("%Y-%m-%d")
        name = pane.replace("/", "_").replace("\x00", "_") or "_"
        self._pending.append((f"{name}-{day}.log", text))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._append, batch)
            except OSError as exc:  # said once, in the pane on screen; chatting goes on
                self.failure = f"--log-dir stopped: {exc.strerror or exc}"
                self._pending.clear()

    def _append(self, batch: list[tuple[str, str]]) -> None:
        """On the writer thread: each file opened once per batch, lines in order."""
        self.directory.mkdir(parents=True, exist_ok=True)
        by_file: dict[str, list[str]] = {}
        for name, text in batch:
            by_file.setdefault(name, []).append(text + "\n")
        for name, lines in by_file.items():
            with (self.directory / name).open("a", encoding="utf-8") as file:
                file.writelines(lines)

    async def aclose(self) -> None:
        """Write everything queued so far."""
        while self._writer is not None and not self._writer.done():
            await self._writer
