"""The portal in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's Python package drives the distribution's browser through
``executable_path``: nothing is downloaded. One Chromium serves the whole session (each
xdist worker's); Playwright binds it to the event loop it started on, so the browser
tests and their async fixtures run on the session's loop (``ON_SESSION_LOOP``, and
``loop_scope="session"`` on a module's own async fixtures). ``portal(lab)`` opens a new
browser context (its own cookies and sessionStorage: another person) on a lab and returns
a ``Portal``, which does what a person does on the page (sign in, open a console, type, use the
toolbar) and reads what the page shows. When a test fails, every page it opened is saved
as a screenshot under ``build/screenshots/<test>/``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from gateway.portal import DIST
from gateway.testing.timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
GUEST_PASSWORD = "serial-lab"
# The end of the screen, or only kernel lines after it: a guest's kernel prints to the
# console at any moment, right after a prompt too.
AT_END = r"(?:\[ *\d+\.\d+\] [^\n]*\n?)*$"
# What a browser test module marks itself with: it runs on the loop the browser lives on.
ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


def chromium_path() -> str:
    """Debian's Chromium, or a failure that says how to get it (never a silent skip)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is missing: make test installs it (apt-get install chromium)")
    if not (DIST / "index.html").is_file():
        pytest.fail("the portal is not built: run make portal (npm ci and the build in web/)")
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


# Every text the pane's status line (#console-status) shows, in order, from the page's
# load: a page script run before the portal's own.
STATUS_WATCH = """
window.__statusSaid = [];
new MutationObserver(() => {
    const status = document.getElementById("console-status");
    const text = status?.textContent ?? "";
    const said = window.__statusSaid;
    if (text && said[said.length - 1] !== text) said.push(text);
}).observe(document, { childList: true, characterData: true, subtree: true });
"""


class Portal:
    """One person's browser tab on the lab's portal."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url

    async def sign_in(self, user: str, password: str | None = None) -> None:
        """Sign in on the page shown now (the sign-in page)."""
        page = self.page
        await page.get_by_label("Username").fill(user)
        await page.get_by_label("Password").fill(password or user)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Sign out").wait_for(timeout=scaled(10) * 1000)

    async def open(self, route: str = "") -> None:
        await self.page.goto(f"{self.url}/{route}")

    async def open_console(self, resource_id: str) -> None:
        """The console route of ``resource_id`` (a VM or instance id), as a shared link."""
        await self.page.goto(f"{self.url}/#/resource{resource_id}/serialConsole")

    async def console_as(self, resource_id: str, user: str) -> None:
        """Open the console link of ``resource_id`` signed out, and sign in as ``user``:
        what a person given the link does."""
        await self.open_console(resource_id)
        await self.sign_in(user)

    async def text(self) -> str:
        """The terminal's whole buffer, scrollback included."""
        return str(await self.page.evaluate("window.portal?.console?.text() ?? ''"))

    async def screen(self, pattern: str, timeout: float = 10) -> str:
        """Wait until the terminal shows ``pattern`` (a regular expression); its text."""
        try:
            await self.page.wait_for_function(
                "(re) => new RegExp(re).test(window.portal?.console?.text() ?? '')",
                arg=pattern,
                timeout=scaled(timeout) * 1000,
            )
        except Exception as err:
            raise AssertionError(
                f"the terminal never showed {pattern!r}; it shows:\n{await self.text()}"
            ) from err
        return await self.text()

    async def count(self, pattern: str) -> int:
        return len(re.findall(pattern, await self.text()))

    async def type(self, text: str) -> None:
        """Type into the terminal as a person does, key by key (``\\n`` is Enter)."""
        await self.page.locator(".xterm-helper-textarea").focus()
        await self.page.keyboard.type(text)

    async def login(self, password: str = GUEST_PASSWORD) -> None:
        """Log in to a Linux guest as root."""
        await self.type("\n")
        await self.screen(r"login: " + AT_END, 60)
        await self.type("root\n")
        await self.screen(r"Password: " + AT_END)
        await self.type(password + "\n")
        await self.screen(r"# " + AT_END)

    async def menu(self, menu: str, item: str) -> None:
        """Open a toolbar menu (Keyboard, Power) and choose ``item``."""
        toolbar = self.page.get_by_role("toolbar")
        await toolbar.get_by_text(menu, exact=True).click()
        await toolbar.get_by_role("button", name=item, exact=True).click()

    async def sysrq(self, keys: str) -> None:
        """Keyboard -> Send SysRq Command, ``keys`` typed in its dialog, Send."""
        await self.menu("Keyboard", "Send SysRq Command")
        await self.page.get_by_label("SysRq keys").fill(keys)
        await self.page.get_by_role("button", name="Send").click()

    async def nmi(self) -> None:
        """Keyboard -> Send Non-Maskable Interrupt (NMI)."""
        await self.menu("Keyboard", "Send Non-Maskable Interrupt (NMI)")

    async def status(self, pattern: str, timeout: float = 10) -> None:
        """Wait until the pane's status line says ``pattern`` (a regular expression), now
        or since the last status waited for: a status may be replaced by the next one
        (a reset's power notes) sooner than Playwright polls (see ``STATUS_WATCH``)."""
        await self.page.wait_for_function(
            """(re) => {
                const said = window.__statusSaid ?? [];
                const at = said.findIndex((text) => new RegExp(re).test(text));
                if (at < 0) return false;
                said.splice(0, at + 1);
                return true;
            }""",
            arg=pattern,
            timeout=scaled(timeout) * 1000,
        )

    async def notice(self, pattern: str, timeout: float = 10) -> str:
        """Wait until the pane's notice (refusals, takeover) says ``pattern``; its text."""
        notice = self.page.locator("#console-notice")
        await notice.filter(has_text=re.compile(pattern)).wait_for(timeout=scaled(timeout) * 1000)
        return await notice.inner_text()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session; each test gets contexts of its own."""
    path = chromium_path()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=path)
        yield chromium
        await chromium.close()


PortalFactory = Callable[..., Awaitable[Portal]]


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """Another web site on this machine: a server on 127.0.0.1 (a port of its own) whose
    every page is blank. Yields its URL."""

    class Blank(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>elsewhere</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest_asyncio.fixture(loop_scope="session")
async def portal(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[PortalFactory]:
    """``await portal(url)``: a new person (browser context) on the portal at ``url``."""
    contexts: list[BrowserContext] = []

    async def new(url: str, **options: object) -> Portal:
        context = await browser.new_context(viewport={"width": 1280, "height": 800}, **options)
        await context.add_init_script(STATUS_WATCH)
        contexts.append(context)
        return Portal(await context.new_page(), url)

    yield new
    reports = request.node.stash.get(REPORTS, {})
    if any(r.failed for r in reports.values()):
        folder = SCREENSHOTS / re.sub(r"[^\w.-]+", "_", request.node.name)
        folder.mkdir(parents=True, exist_ok=True)
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                await page.screenshot(path=folder / f"person{i}-page{j}.png", full_page=True)
        print(f"screenshots of the failed test's pages: {folder}")
    for context in contexts:
        await context.close()
