"""The browser client (chat/webui) in a real browser: Chromium driven by Playwright.

tests/test_web.py checks the wire (HTTP, the WebSocket, the JSON dialect in frames) with a
WebSocket library; only a browser shows what a person gets from the page itself: that
messages cross between browser pages and a telnet-style text client every way, that hostile
text (markup, ``</script>``, bidirectional controls) is shown as text and runs nothing even
though it reaches the page intact, that a reloaded page joins again, that a private message
opens its own tab, that replayed history is marked, and that the page fits a phone.

The server runs in this process (the ``server`` fixture) and Playwright's async API shares
its event loop, so the text client (:class:`LineClient`) and the pages are driven side by
side. Every wait is one of Playwright's auto-waiting expectations or a ``LineClient`` read,
bounded by ``WAIT``; nothing sleeps.

The browser is the system's Chromium (Debian's ``chromium`` package; CI installs it), never
one Playwright downloads: ``playwright install`` is not needed. Without it (set
``CHAT_CHROMIUM`` to another binary) the module is skipped. ``CHAT_SCREENSHOT=docs/web-client.png``
makes :func:`test_desktop_screenshot` save the picture of the page that the README shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Error,
    Locator,
    Page,
    async_playwright,
    expect,
)

from chat.protocol import sanitize
from chat.server import ChatServer
from tests.harness import WAIT, LineClient

CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHAT_CHROMIUM)",
)

expect.set_options(timeout=WAIT * 1000)

DESKTOP = {"width": 1100, "height": 700}
PHONE = {"width": 375, "height": 667}


@dataclass
class Tab:
    """One browser page (in a context of its own: its own cookies and storage) and what it
    did that nobody asked for: dialogs opened, uncaught errors, console errors."""

    page: Page
    context: BrowserContext
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self) -> None:
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("console", self._console)

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def register(self, nick: str) -> None:
        """Fill in the nickname form and wait until the page shows #lobby."""
        form = self.page.locator("#nick-form")
        await expect(form).to_be_visible()
        await form.locator("input[name=nick]").fill(nick)
        await form.locator("input[name=nick]").press("Enter")
        await expect(self.page.locator("#chat")).to_be_visible()
        await expect(self.page.locator('#tabs [data-tab="#lobby"]')).to_be_visible()
        await expect(self.page.locator("#status")).to_contain_text(nick)

    async def say(self, text: str) -> None:
        """Type ``text`` in the input and press Enter; the input empties once it is sent."""
        box = self.page.locator("#send-form #input")
        await box.fill(text)
        await box.press("Enter")
        await expect(box).to_have_value("")

    def lines(self, text: str | re.Pattern[str] = "") -> Locator:
        """The active log's message lines containing ``text``."""
        return self.page.locator("#log .line[data-type=message]", has_text=text)

    async def members(self) -> list[str]:
        nicks: list[str] = await self.page.locator("#members li[data-nick]").evaluate_all(
            "items => items.map(item => item.dataset.nick)"
        )
        return nicks


@dataclass
class Web:
    """Opens pages on the server in one browser; every page is checked at the end."""

    browser: Browser
    port: int
    tabs: list[Tab] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def open(self, nick: str | None = None, **context: Any) -> Tab:
        """A page of its own context (``context``: viewport, is_mobile, ...), registered as
        ``nick`` if given."""
        ctx = await self.browser.new_context(viewport=context.pop("viewport", DESKTOP), **context)
        tab = Tab(await ctx.new_page(), ctx)
        tab.watch()
        self.tabs.append(tab)
        await tab.page.goto(self.url)
        if nick is not None:
            await tab.register(nick)
        return tab


@pytest.fixture
async def web(server: ChatServer) -> AsyncIterator[Web]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        web = Web(browser, server.port)
        try:
            yield web
        finally:
            for tab in web.tabs:
                await tab.context.close()
            await browser.close()
        for tab in web.tabs:
            assert tab.dialogs == [], "a page opened a dialog"
            assert tab.errors == [], "a page logged errors"


@pytest.fixture
async def alice(server: ChatServer) -> AsyncIterator[LineClient]:
    """A telnet-style text client in #lobby."""
    client = await LineClient.connect(server.port, "alice")
    yield client
    await client.close()


async def synced(client: LineClient, token: str = "sync") -> None:
    """Everything ``client`` sent before has been handled by the server."""
    await client.send(f"/ping {token}")
    await client.expect(rf"^\*\*\* pong {token}$")


# --- tests ----------------------------------------------------------------------------------


async def test_two_pages_and_a_text_client_talk_every_way(web: Web, alice: LineClient) -> None:
    page_a = await web.open("pagea")
    page_b = await web.open("pageb")

    for page in (page_a, page_b):
        await expect(page.page.locator("#members li[data-nick]")).to_have_count(3)
        assert await page.members() == ["alice", "pagea", "pageb"]

    await page_a.say("hello from A")
    await alice.expect(r"^\[#lobby\] <pagea> hello from A$")
    await expect(page_b.lines("hello from A")).to_have_count(1)
    await expect(page_b.lines("hello from A")).to_contain_text("<pagea> hello from A")

    await alice.send("hello from the terminal")
    for page in (page_a, page_b):
        await expect(page.lines("hello from the terminal")).to_contain_text(
            "<alice> hello from the terminal"
        )

    await page_b.say("hello from B")
    await alice.expect(r"^\[#lobby\] <pageb> hello from B$")
    await expect(page_a.lines("hello from B")).to_contain_text("<pageb> hello from B")
    # Each page shows its own line once (the server's copy), none twice.
    await expect(page_a.lines("hello from A")).to_have_count(1)
    await expect(page_b.lines("hello from B")).to_have_count(1)


HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror=window.__pwned=1>",
    "</script><script>alert(2)</script>",
    "</script><script>window.__pwned=2</script>",
    "<svg onload=alert(3)></svg><b>bold</b>",
    # A right-to-left override turning "exe.txt" around, and an isolate left open.
    "invoice\u202etxt.exe \u2067trailing",
)


async def test_hostile_text_is_shown_as_text_and_runs_nothing(web: Web, alice: LineClient) -> None:
    page = await web.open("webnick")
    for line in HOSTILE:
        await alice.send(line)
    await alice.send("/topic <img src=x onerror=alert(4)>")
    await alice.send("the end")
    log = page.page.locator("#log")
    await expect(page.lines("the end")).to_have_count(1)

    # What the server relays (its sanitiser drops the bidi controls) is on the page as
    # text, character for character: nothing was parsed as markup.
    shown: list[str] = await page.lines().locator(".text").all_text_contents()
    relayed = [sanitize(line) for line in HOSTILE]
    assert relayed[-1] == "invoicetxt.exe trailing"
    assert shown[-len(HOSTILE) - 1 : -1] == relayed
    await expect(log).to_contain_text("<alice> <img src=x onerror=alert(1)>")
    await expect(page.page.locator("#topic")).to_have_text("<img src=x onerror=alert(4)>")

    # Nothing the text became an element, ran, or set a global.
    for tag in ("img", "script", "svg", "b"):
        await expect(log.locator(tag)).to_have_count(0)
        await expect(page.page.locator(f"#topic {tag}")).to_have_count(0)
    assert await page.page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.page.evaluate("document.querySelectorAll('img').length") == 0
    # Peer text is bidi-isolated: a stray override in it cannot reorder the line around it.
    for direction in (
        await page.lines().locator(".text").evaluate_all("spans => spans.map(span => span.dir)")
    ):
        assert direction == "auto"
    # The web fixture asserts at teardown that no dialog opened and no error was logged.


async def test_a_reload_joins_again(web: Web, alice: LineClient) -> None:
    page = await web.open("webnick")
    await alice.expect(r"^\[#lobby\] \*\*\* webnick joined #lobby$")
    await alice.send("before the reload")
    await expect(page.lines("before the reload")).to_have_count(1)

    await page.page.reload()
    # The page keeps nothing across a reload: it asks for the nickname again, and the old
    # connection is gone from the server.
    await expect(page.page.locator("#nick-form")).to_be_visible()
    await expect(page.page.locator("#chat")).to_be_hidden()
    await alice.expect(r"^\*\*\* webnick quit")

    await page.register("webnick")
    await alice.expect(r"^\[#lobby\] \*\*\* webnick joined #lobby$")
    await expect(page.page.locator('#members li[data-nick="alice"]')).to_have_count(1)
    await alice.send("after the reload")
    await expect(page.lines("after the reload")).to_have_count(1)
    await expect(page.lines("after the reload")).not_to_have_class(re.compile(r"\bhistory\b"))
    await page.say("back again")
    await alice.expect(r"^\[#lobby\] <webnick> back again$")


async def test_a_private_message_opens_a_marked_tab(web: Web, alice: LineClient) -> None:
    page = await web.open("webnick")
    await alice.send("/msg webnick hi there")

    tab = page.page.locator('#tabs [data-tab="@alice"]')
    await expect(tab).to_be_visible()
    await expect(tab).to_have_class(re.compile(r"\bmention\b"))
    await expect(tab.locator(".unread")).to_have_text("1")
    # #lobby stays the tab shown until the user picks the new one.
    await expect(page.page.locator('#tabs [data-tab="#lobby"]')).to_have_attribute(
        "aria-selected", "true"
    )

    await tab.click()
    await expect(tab).to_have_attribute("aria-selected", "true")
    await expect(tab).not_to_have_class(re.compile(r"\bmention\b"))
    await expect(tab.locator(".unread")).to_be_hidden()
    await expect(page.page.locator("#log .line[data-type=private]")).to_contain_text(
        "<alice> hi there"
    )
    await page.say("hello back")
    await alice.expect(r"^\[private\] <webnick> hello back$")
    await expect(page.page.locator("#log .line[data-type=private]")).to_have_count(2)


async def test_history_is_marked_and_comes_before_live_lines(web: Web, alice: LineClient) -> None:
    await alice.send("first line")
    await alice.send("second line")
    await synced(alice)

    page = await web.open("webnick")
    await expect(page.lines(re.compile("first line|second line"))).to_have_count(2)
    await alice.send("live line")
    await expect(page.lines("live line")).to_have_count(1)

    lines = await page.lines().evaluate_all(
        "lines => lines.map(line => [line.querySelector('.text').textContent,"
        " line.classList.contains('history')])"
    )
    assert lines == [["first line", True], ["second line", True], ["live line", False]]


async def test_a_phone_screen_needs_no_sideways_scrolling(web: Web, alice: LineClient) -> None:
    page = await web.open(
        "webnick", viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    await alice.send("/topic " + "a long topic that goes on and on " * 4)
    await alice.send("x" * 300)  # one word wider than the screen
    await alice.send("a message of many words, " * 12)
    await page.say("typed on the phone")
    await expect(page.lines("typed on the phone")).to_have_count(1)

    for selector in ("#input", "#log", "#tabs", "#send-form button"):
        await expect(page.page.locator(selector)).to_be_in_viewport()
        box = await page.page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"], selector
    width = await page.page.evaluate(
        "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
    )
    assert width <= PHONE["width"]


async def test_desktop_screenshot(web: Web, alice: LineClient) -> None:
    """A desktop page with a topic, two members and a few lines; saved where
    ``CHAT_SCREENSHOT`` says (relative to the repository), and nowhere without it."""
    await alice.send("/topic Release 1.0 on Friday: notes in docs/, questions here")
    await alice.send("morning! the build is green again")
    await synced(alice)

    page = await web.open("bob", viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    await alice.expect(r"^\[#lobby\] \*\*\* bob joined #lobby$")
    await alice.send("bob: can you look at the web client before the release?")
    await expect(page.lines("can you look")).to_have_count(1)
    await page.say("on it: it works on my phone too")
    await alice.expect(r"<bob> on it")
    await alice.send("/me waves")
    await expect(page.page.locator("#log .line[data-type=action]")).to_contain_text("alice waves")

    await expect(page.page.locator("#topic")).to_have_text(
        "Release 1.0 on Friday: notes in docs/, questions here"
    )
    await expect(page.page.locator("#members li[data-nick]")).to_have_count(2)
    await expect(page.page.locator("#status")).to_contain_text("bob")

    target = os.environ.get("CHAT_SCREENSHOT")
    if target:
        path = Path(target) if Path(target).is_absolute() else ROOT / target
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await page.page.screenshot(path=str(path), animations="disabled", caret="hide")
        except Error as error:  # pragma: no cover - only when the screenshot fails
            pytest.fail(f"cannot save the screenshot to {path}: {error}")
        assert path.stat().st_size > 0
