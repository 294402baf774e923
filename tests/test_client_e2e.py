"""``chat-client`` as a program: pipe mode, failures, the example bot, and two clients in tmux."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat.server import ChatServer
from tests.harness import WAIT, JsonClient, StartServer, program, server_process

ROOT = Path(__file__).resolve().parent.parent


CLIENT = program("chat-client", "chat.tui")


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


async def run_client(
    *args: str, stdin: bytes, env: dict[str, str], timeout: float = 3 * WAIT
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLIENT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- pipe mode -----------------------------------------------------------------------------------


async def test_echo_hello_posts_to_the_lobby(server: ChatServer, tmp_path: Path) -> None:
    watcher = await JsonClient.connect(server.port, nick="watcher")
    code, out, err = await run_client(
        f"127.0.0.1:{server.port}", "--nick", "bot", stdin=b"hello\n", env=client_env(tmp_path)
    )
    assert (code, err) == (0, "")
    assert (await watcher.expect("message", nick="bot")).text == "hello"
    assert "[#lobby] <bot> hello" in out.splitlines()
    await watcher.close()


async def test_pipe_mode_runs_commands_and_prints_answers(
    server: ChatServer, tmp_path: Path
) -> None:
    script = "/join #dev\nhi dev\n/who\n/topic release\n/msg nobody x\n/part\nback\n"
    code, out, err = await run_client(
        f"127.0.0.1:{server.port}", "--nick", "bot", stdin=script.encode(), env=client_env(tmp_path)
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    for expected in (
        "[#dev] *** bot joined #dev",
        "[#dev] <bot> hi dev",
        "[#dev] *** 1 in #dev: bot",
        "[#dev] *** bot set the topic: release",
        "!!! Nobody called 'nobody' is online.",
        "[#dev] *** bot left #dev",
        "[#lobby] <bot> back",  # after /part, lines go to the room that is active again
    ):
        assert expected in lines
    assert lines[-1] == "*** Closing connection: Goodbye."


async def test_pipe_mode_without_nick_uses_user(server: ChatServer, tmp_path: Path) -> None:
    code, out, _ = await run_client(
        f"127.0.0.1:{server.port}", stdin=b"hi\n", env=client_env(tmp_path, USER="carol")
    )
    assert code == 0
    assert "[#lobby] <carol> hi" in out.splitlines()


async def test_failures_are_one_line_and_nonzero(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server()
    env = client_env(tmp_path)
    taken = await JsonClient.connect(server.port, nick="alice")
    cases = [
        ([f"127.0.0.1:{server.port}", "--nick", "alice"], 1, "nickname 'alice' unavailable"),
        ([f"127.0.0.1:{server.port}", "--nick", "root"], 2, "is reserved"),
        (["127.0.0.1:99999", "--nick", "bob"], 2, "port must be a number"),
        (["no-such-host.invalid:9000", "--nick", "bob"], 1, "cannot connect"),
        ([f"127.0.0.1:{server.port}", "--nick", "bob", "--ca-file", "/nope"], 2, "no such CA"),
    ]
    for args, status, message in cases:
        code, _, err = await run_client(*args, stdin=b"", env=env)
        assert code == status, (args, err)
        assert message in err
        assert err.count("\n") == 1, err  # one line, never a traceback
        assert err.startswith("chat-client: ")
    await taken.close()
    port = server.port
    await server.close()
    code, _, err = await run_client(f"127.0.0.1:{port}", "--nick", "bob", stdin=b"", env=env)
    assert code == 1
    assert err == f"chat-client: cannot connect: 127.0.0.1:{port}: Connection refused\n"
    code, _, err = await run_client(
        f"127.0.0.1:{port}", stdin=b"", env={k: v for k, v in env.items() if k != "USER"}
    )
    assert (code, err) == (2, "chat-client: no nickname: use --nick NAME\n")


async def test_pipe_mode_reports_a_lost_connection(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(max_per_ip=0, shutdown_grace=1.0)
    watcher = await JsonClient.connect(server.port, nick="watcher")
    process = await asyncio.create_subprocess_exec(
        *CLIENT,
        f"127.0.0.1:{server.port}",
        "--nick",
        "bot",
        stdin=asyncio.subprocess.PIPE,  # kept open: the client waits for input
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=client_env(tmp_path),
    )
    await watcher.expect("join", nick="bot")
    port = server.port
    await server.close()
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode == 1
    assert err.decode() == (
        f"chat-client: 127.0.0.1:{port}: connection closed by the server: "
        "The server is shutting down.\n"
    )
    assert "*** Closing connection: The server is shutting down." in out.decode()
    await watcher.close()


# --- the example bot -----------------------------------------------------------------------------


async def test_dice_bot_answers_in_its_room(server: ChatServer) -> None:
    player = await JsonClient.connect(server.port, nick="player")
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "dicebot.py"), f"127.0.0.1:{server.port}"
    )
    try:
        await player.expect("join", nick="dicebot")
        await player.send({"type": "say", "text": "!roll 20"})
        answer = await player.expect("message", nick="dicebot")
        found = re.fullmatch(r"player rolls (\d+) \(d20\)", answer.text)
        assert found is not None
        assert 1 <= int(found.group(1)) <= 20
        await player.send({"type": "say", "text": "!roll"})
        answer = await player.expect("message", nick="dicebot")
        assert re.fullmatch(r"player rolls [1-6] \(d6\)", answer.text)
    finally:
        bot.terminate()
        async with asyncio.timeout(WAIT):
            await bot.wait()
    await player.close()


# --- two real terminals under tmux ---------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket, no user config) for this test."""

    def __init__(self, folder: Path) -> None:
        self.socket = str(folder / "tmux.sock")
        self.config = folder / "tmux.conf"
        self.config.write_text("set -g status off\n")

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, "-f", str(self.config), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=WAIT,
        )
        return done.stdout

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        """Run ``command`` in a new 100x24 session; when it ends, the pane shows its status.

        A shell reports the status, then keeps the pane open (``exec cat``): tmux may lose
        the last output of a pane that dies, and a tmux server started under pytest was
        seen never to reap its panes at all.
        """
        exports = [f"{k}={v}" for k, v in env.items()]
        report = '; echo "exited with status $?"; exec cat'
        line = shlex.join(["env", *exports, *command]) + report
        self("new-session", "-d", "-s", name, "-x", "100", "-y", "24", line)

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, text: str, timeout: float = 2 * WAIT) -> str:
        """Poll the pane until ``text`` is on it; fail with the screen after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name)
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared on {name}'s screen:\n{screen}")
            time.sleep(0.05)

    def exit_status(self, name: str) -> int:
        """Wait for the program in ``name`` to end; its exit status."""
        found = re.search(r"exited with status (\d+)", self.wait_for(name, "exited with status"))
        assert found is not None
        return int(found.group(1))

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def chat_server() -> Iterator[int]:
    """A real ``chat-server`` process on a free port (read from its log); yields the port."""
    with server_process() as server:
        yield server.port


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")
def test_two_clients_in_tmux(chat_server: int, tmp_path: Path) -> None:
    tmux = Tmux(tmp_path)
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color"}
    address = f"127.0.0.1:{chat_server}"
    try:
        tmux.start("alice", [*CLIENT, address, "--nick", "alice"], env)
        tmux.wait_for("alice", "connected")
        tmux.start("bob", [*CLIENT, address, "--nick", "bob"], env)
        tmux.wait_for("alice", "--> bob joined #lobby")
        tmux("send-keys", "-t", "alice", "-l", "hello from alice")
        tmux("send-keys", "-t", "alice", "Enter")
        tmux.wait_for("bob", "<alice> hello from alice")
        tmux("send-keys", "-t", "bob", "-l", "al")
        tmux("send-keys", "-t", "bob", "Tab")
        tmux.wait_for("bob", "#lobby bob> alice:")  # capture-pane trims the space
        tmux("send-keys", "-t", "bob", "-l", "hi there")
        tmux("send-keys", "-t", "bob", "Enter")
        screen = tmux.wait_for("alice", "<bob> alice: hi there")
        assert "| bob" in screen  # the member list
        assert "#lobby alice>" in screen  # the prompt
        tmux("send-keys", "-t", "alice", "-l", "/quit bye")
        tmux("send-keys", "-t", "alice", "Enter")
        assert tmux.exit_status("alice") == 0
        left = [line for line in tmux.screen("alice").splitlines() if line.strip()]
        assert left == ["exited with status 0"]  # the full-screen UI is gone: terminal restored
        tmux.wait_for("bob", "<-- alice quit (bye)")
        tmux("send-keys", "-t", "bob", "C-c")
        assert tmux.exit_status("bob") == 0
        assert (tmp_path / "state" / "chat" / "history").read_text().count("hello from alice") == 1
    finally:
        tmux.kill()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")
def test_mention_bell_bracketed_paste_and_resize_in_tmux(chat_server: int, tmp_path: Path) -> None:
    """Issue 12 in a real terminal: a mention is highlighted (``capture-pane -e``) and rings
    the bell (a plain line does neither), a bracketed paste of three lines sends three
    messages in order, and after the window grows the newest lines are still at the bottom."""
    tmux = Tmux(tmp_path)
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color"}
    address = f"127.0.0.1:{chat_server}"

    def bell() -> str:
        return tmux("display-message", "-p", "-t", "alice", "#{window_bell_flag}").strip()

    try:
        tmux.start("alice", [*CLIENT, address, "--nick", "alice"], env)
        tmux.wait_for("alice", "connected")
        tmux.start("bob", [*CLIENT, address, "--nick", "bob"], env)
        tmux.wait_for("alice", "--> bob joined #lobby")
        tmux("send-keys", "-t", "bob", "-l", "just chatting")
        tmux("send-keys", "-t", "bob", "Enter")
        tmux.wait_for("alice", "<bob> just chatting")
        assert bell() == "0"  # a line that does not mention alice rings nothing
        tmux("send-keys", "-t", "bob", "-l", "ALICE, lunch?")
        tmux("send-keys", "-t", "bob", "Enter")
        tmux.wait_for("alice", "<bob> ALICE, lunch?")
        styled = tmux("capture-pane", "-e", "-p", "-t", "alice").splitlines()
        (mention,) = [row for row in styled if "ALICE, lunch?" in row]
        (plain,) = [row for row in styled if "just chatting" in row]
        yellow_background = re.compile(r"\x1b\[(?:[0-9]+;)*43(?:;[0-9]+)*m")
        assert yellow_background.search(mention)  # the mention style: a yellow background
        assert not yellow_background.search(plain)
        deadline = time.monotonic() + WAIT
        while bell() != "1":  # the bell reaches tmux with the screen update, or just after
            assert time.monotonic() < deadline, "no bell on a mention"
            time.sleep(0.05)

        tmux("set-buffer", "-b", "paste", "one\ntwo\nthree")
        tmux("paste-buffer", "-p", "-b", "paste", "-t", "bob")  # bracketed, as terminals do
        screen = tmux.wait_for("alice", "<bob> three")
        rows = [line for line in screen.splitlines() if "<bob> " in line]
        said_rows = [row.split("<bob> ")[1].split("|")[0].strip() for row in rows[-3:]]
        assert said_rows == ["one", "two", "three"]  # the member list is right of "|"

        tmux("resize-window", "-t", "alice", "-x", "120", "-y", "30")
        tmux("send-keys", "-t", "bob", "-l", "after the resize")
        tmux("send-keys", "-t", "bob", "Enter")
        screen = tmux.wait_for("alice", "<bob> after the resize")
        lines = screen.splitlines()
        assert len(lines) == 30
        said = [n for n, line in enumerate(lines) if "<bob> after the resize" in line]
        prompt = [n for n, line in enumerate(lines) if "#lobby alice>" in line]
        assert said
        assert prompt
        assert said[0] < prompt[0]  # above the input line, not lost
        assert "<bob> three" in lines[said[0] - 1]  # the lines before it right above it
    finally:
        tmux.kill()
