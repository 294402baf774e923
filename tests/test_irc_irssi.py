"""A real IRC client, Debian's irssi, against the IRC dialect on the shared port.

Unit tests of the dialect check our reading of the RFCs; only a client people actually use
shows that our reading is also what such a client expects. So irssi runs in tmux with its
defaults (a private home directory: no user configuration, no scripts), joins #lobby, and
talks with a text-dialect client both ways: messages, actions, and its quit.

irssi's screen is read with ``capture-pane``, polled against a deadline; nothing waits for a
fixed time. Skipped where irssi or tmux is missing (CI installs both).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.harness import WAIT, LineClient, SpawnServer

pytestmark = pytest.mark.skipif(
    shutil.which("irssi") is None or shutil.which("tmux") is None,
    reason="needs irssi and tmux (Debian packages; CI installs both)",
)

# irssi's default flood protection: after its first burst (the connect, with CAP
# negotiation, already spends it) it sends one queued command every 2.2 seconds or so
# (cmd_queue_speed), so its JOIN leaves about 5 s after the welcome and each line typed
# later about 2.5 s after the previous. Waits on what irssi sends get this long.
PACED = 4 * WAIT

# Only identity settings, so that no user name or real name comes from the machine, and
# nothing written back; everything about talking IRC stays irssi's default.
CONFIG = """\
settings = {
  core = {
    real_name = "irssi in a test";
    user_name = "%(nick)s";
    nick = "%(nick)s";
    settings_autosave = "no";
  };
};
"""


class Irssi:
    """irssi in a 150x40 pane of a private tmux server (own socket, no user tmux config)."""

    def __init__(self, folder: Path, nick: str) -> None:
        self.folder = folder
        self.nick = nick
        self.home = folder / "irssi"
        self.home.mkdir()
        (self.home / "config").write_text(CONFIG % {"nick": nick})
        self.socket = str(folder / "tmux.sock")
        self.tmux_config = folder / "tmux.conf"
        self.tmux_config.write_text("set -g status off\n")

    async def tmux(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            *("tmux", "-S", self.socket, "-f", str(self.tmux_config), *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT):
            out, err = await process.communicate()
        assert process.returncode == 0, (args, err.decode())
        return out.decode()

    async def start(self, host: str, port: int) -> None:
        """Connect to ``host:port`` from the command line; when irssi ends, the pane shows
        its exit status and stays open (tmux may lose the last output of a dead pane)."""
        irssi = ["irssi", f"--home={self.home}", f"--config={self.home / 'config'}"]
        irssi += ["-n", self.nick, "-c", host, "-p", str(port)]
        command = shlex.join(irssi) + '; echo "exited with status $?"; exec cat'
        await self.tmux("new-session", "-d", "-s", "irssi", "-x", "150", "-y", "40", command)

    async def screen(self) -> str:
        return await self.tmux("capture-pane", "-p", "-t", "irssi")

    async def wait_for(self, pattern: str, timeout: float = 2 * WAIT) -> re.Match[str]:
        """Poll the pane until ``pattern`` (a regex) is on it; fail with the screen."""
        regex = re.compile(pattern, re.MULTILINE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            screen = await self.screen()
            found = regex.search(screen)
            if found:
                return found
            if loop.time() > deadline:
                pytest.fail(f"{pattern!r} never appeared on irssi's screen:\n{screen}")
            await asyncio.sleep(0.05)

    async def type(self, line: str) -> None:
        """Type ``line`` and Enter, as a person would."""
        await self.tmux("send-keys", "-t", "irssi", "-l", line)
        await self.tmux("send-keys", "-t", "irssi", "Enter")

    async def kill(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *("tmux", "-S", self.socket, "kill-server"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()


async def receives(client: LineClient, line: str) -> None:
    """Wait until ``client`` receives exactly ``line``, at irssi's pace (``PACED``)."""
    await client.expect("^" + re.escape(line) + "$", timeout=PACED)


async def test_irssi_talks_with_a_text_client_in_the_lobby(
    spawn_server: SpawnServer, tmp_path: Path
) -> None:
    server = await spawn_server("--db", ":memory:")
    telnet = await LineClient.connect(server.port, "telnetuser")  # in #lobby from the start
    irssi = Irssi(tmp_path, "irssiuser")
    try:
        await irssi.start("127.0.0.1", server.port)
        await irssi.wait_for(r"(?i)welcome\b.*\birssiuser\b")  # the 001 reply
        await irssi.type("/join #lobby")
        await irssi.wait_for(r"\birssiuser .*has joined #lobby", timeout=PACED)
        await receives(telnet, "[#lobby] *** irssiuser joined #lobby")

        await irssi.type("hello from irssi")
        await receives(telnet, "[#lobby] <irssiuser> hello from irssi")
        await telnet.send("hello from telnet")
        await irssi.wait_for(r"<[ @%+]?telnetuser> hello from telnet$")

        await irssi.type("/me waves")
        await receives(telnet, "[#lobby] * irssiuser waves")
        await telnet.send("/me waves back")
        await irssi.wait_for(r"\* telnetuser waves back$")

        await irssi.type("/quit see you")
        await telnet.expect(r"^\*\*\* irssiuser quit \(.*see you.*\)$", timeout=PACED)
        await irssi.wait_for(r"^exited with status 0$")
    finally:
        await irssi.kill()
        await telnet.close()
