"""The portal in real Chromium on a lab of emulated guests: sign-in, the VM list, the
console pane and its toolbar, sessions as people live them (takeover, watching, a
gateway restart), Windows' SAC, boot diagnostics, and the browser's security rules."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from gateway.console import texts
from gateway.lab.config import parse_lab
from gateway.testing.timeouts import scaled
from tests.browser.conftest import ON_SESSION_LOOP, Portal, PortalFactory, page_server
from tests.support.lab import (
    EMULATED_VMS,
    SUBSCRIPTION,
    LabHandle,
    lab_toml,
    running_lab,
    scale_set,
    serve_lab,
)

pytestmark = [pytest.mark.browser, ON_SESSION_LOOP]

LINUX = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg"
    "/providers/Microsoft.Compute/virtualMachines/linux-1"
)
WINDOWS = LINUX.replace("linux-1", "win-1")
# The role badge once the session is open (has_text alone would match "Not connected").
CONNECTED = re.compile(r"^Connected$")
# Keeps in window.powerStates each text the power badge shows, in order: one state may
# last less than a poll of Playwright's (an emulated guest stops in milliseconds).
POWER_STATES_SEEN = """() => {
    window.powerStates = [];
    const note = () => {
        const text = document.querySelector("#power-state")?.textContent;
        if (text && window.powerStates.at(-1) !== text) window.powerStates.push(text);
    };
    new MutationObserver(note).observe(document.body, {
        subtree: true, childList: true, characterData: true,
    });
}"""


@pytest_asyncio.fixture(loop_scope="session")
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path) as handle:
        yield handle


async def test_sign_in_shows_the_vms_and_only_the_actions_a_role_allows(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.open()
    page = person.page
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").filter(has_text="password").wait_for()
    await person.sign_in("alice")

    table = page.get_by_role("table", name="Virtual machines")
    row = table.get_by_role("row").filter(has_text="linux-1")
    await row.get_by_role("link", name="Serial console of linux-1").wait_for()
    cells = await row.get_by_role("cell").all_inner_texts()
    assert cells[:5] == ["lab-rg", "Virtual machine", "Linux", "VM running", "Enabled"]
    assert await row.get_by_role("button", name="Restart linux-1").is_enabled()
    assert not await row.get_by_role("button", name="Start linux-1", exact=True).is_enabled()

    # Stop, then start, from the list: each waits for ARM's long-running operation.
    await row.get_by_role("button", name="Stop linux-1").click()
    dialog = page.get_by_role("dialog")
    assert "asked to shut down" in await dialog.inner_text()
    await dialog.get_by_role("button", name="Stop").click()
    await page.locator("#resources-status").filter(has_text="Stop: linux-1 done.").wait_for()
    await row.filter(has_text="VM stopped").wait_for()
    await row.get_by_role("button", name="Start linux-1", exact=True).click()
    await row.filter(has_text="VM running").wait_for(timeout=20_000)

    # A Reader sees the same VMs and no power action.
    reader = await portal(lab.url)
    await reader.open()
    await reader.sign_in("bob")
    bob_row = reader.page.get_by_role("row").filter(has_text="linux-1")
    await bob_row.get_by_text("Your role allows no power actions").wait_for()


SCALE_SET = scale_set(2)


async def test_a_scale_set_instance_is_listed_and_its_console_route_opens(
    tmp_path: Path, portal: PortalFactory
) -> None:
    async with running_lab(tmp_path, vms=EMULATED_VMS + SCALE_SET) as lab:
        person = await portal(lab.url)
        await person.open()
        await person.sign_in("alice")
        row = person.page.get_by_role("row").filter(has_text="web-vmss / 1")
        assert "Scale set instance" in await row.inner_text()
        await row.get_by_role("link", name="Serial console of web-vmss / 1").click()
        await person.screen(r"login: ")
        route = person.page.url.split("#", 1)[1]
        assert route == (
            f"/resource/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg/providers"
            "/Microsoft.Compute/virtualMachineScaleSets/web-vmss/virtualMachines/1/serialConsole"
        )
        assert await person.page.title() == "web-vmss / 1 | Serial console"


async def test_signing_out_forgets_and_revokes_the_token(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.open()
    await person.sign_in("alice")
    stored = await person.page.evaluate("sessionStorage.getItem('serial-console-lab.session')")
    token = re.search(r'"token":"([^"]+)"', stored).group(1)  # type: ignore[union-attr]
    assert "token" not in await person.page.evaluate("JSON.stringify(localStorage)")
    assert await person.page.context.cookies() == []
    headers = {"Authorization": f"Bearer {token}"}
    subscriptions = "/subscriptions?api-version=2022-12-01"
    assert (await lab.http.get(subscriptions, headers=headers)).status_code == 200

    await person.page.get_by_role("button", name="Sign out").click()
    await person.page.get_by_role("button", name="Sign in").wait_for()
    assert await person.page.evaluate("sessionStorage.length") == 0
    assert (await lab.http.get(subscriptions, headers=headers)).status_code == 401


async def test_a_shared_console_link_signs_in_first_and_survives_a_reload(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.screen(r"Connected to the serial port of the VM\.")
    await person.screen(r"login: ")
    assert await person.page.title() == "linux-1 | Serial console"
    await person.login()
    await person.type("echo before-reload\n")
    await person.screen(r"\nbefore-reload\n")

    await person.page.reload()
    text = await person.screen(r"\nbefore-reload\n")  # the replay, still signed in
    assert "Sign in" not in await person.page.locator("main").inner_text()
    await person.type("echo after-reload\n")
    await person.screen(r"\nafter-reload\n")
    assert text.count("Connected to the serial port of the VM.") == 1


async def test_a_reader_is_refused_with_azures_text_and_what_to_do(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "bob")
    text = await person.notice("You do not have the required permissions")
    assert texts.NO_PERMISSION in text
    assert "Virtual Machine Contributor role, then select Reconnect" in text
    assert await person.page.get_by_role("button", name="Reconnect").is_visible()


async def carol_takes_over(lab: LabHandle, portal: PortalFactory) -> tuple[Portal, Portal]:
    """Alice logged in at linux-1's console, then Carol opening the same console (Azure
    gives it to her): their two portals."""
    alice = await portal(lab.url)
    await alice.console_as(LINUX, "alice")
    await alice.login()
    carol = await portal(lab.url)
    await carol.console_as(LINUX, "carol")
    return alice, carol


async def test_a_takeover_is_told_and_taken_back_and_a_watcher_cannot_type(
    lab: LabHandle, portal: PortalFactory
) -> None:
    alice, carol = await carol_takes_over(lab, portal)
    await carol.screen(r"login: |# ")
    notice = await alice.notice("another user connected")
    assert texts.TAKEOVER in notice
    await carol.type("echo carol-was-here\n")  # the same shell: Azure keeps the login
    await carol.screen(r"\ncarol-was-here\n")

    await alice.page.get_by_role("button", name="Take it back").click()
    await carol.notice("another user connected")
    await alice.type("echo alice-again\n")
    await alice.screen(r"\nalice-again\n")

    # Carol watches: she sees what Alice does, and cannot type.
    await carol.page.get_by_role("button", name="Watch", exact=True).click()
    await carol.page.locator("#console-role").filter(has_text="Watching").wait_for()
    await alice.type("echo seen-by-carol\n")
    await carol.screen(r"\nseen-by-carol\n")
    await carol.type("x")
    await carol.status("You are watching: read only")
    await alice.screen(r"\nseen-by-carol\n")  # her pane has a socket of its own
    assert await alice.count("seen-by-carol") == 2  # the command line and its output


async def test_the_pane_reconnects_after_a_gateway_restart_losing_and_doubling_nothing(
    tmp_path: Path, portal: PortalFactory
) -> None:
    config = parse_lab(lab_toml(tmp_path / "state"), source="lab.toml", base=tmp_path)
    async with serve_lab(config) as first:
        url = first.url
        person = await portal(url)
        await person.console_as(LINUX, "alice")
        await person.login()
        await person.type("echo before-restart\n")
        before = await person.screen(r"\nbefore-restart\n")
    await person.status(r"Reconnecting")

    port = int(url.rsplit(":", 1)[1])
    async with serve_lab(config.with_overrides(port=port)):
        await person.status(r"Reconnected: the console goes on where it stopped", 60)
        after = await person.screen(r"login: $", 60)
        await person.login()
        await person.type("echo after-restart\n")
        after = await person.screen(r"\nafter-restart\n")
    assert after.startswith(before.rstrip())
    assert after.count("echo before-restart") == 1
    # The new boot follows the old session once: its first line once, after the marker.
    new_boot = after.split("before-restart", 2)[2]
    assert new_boot.count("[    0.000000] Linux version") == 1
    assert after.count("Connected to the serial port of the VM.") == 1
    assert await person.page.evaluate("window.portal.console.metrics.lostBytes") == 0


async def test_windows_sac_session_and_sysrq_refused(lab: LabHandle, portal: PortalFactory) -> None:
    person = await portal(lab.url)
    await person.console_as(WINDOWS, "alice")
    await person.type("\n")
    await person.screen(r"SAC>$")
    assert await person.page.get_by_role("button", name="Sync size").is_disabled()
    await person.type("cmd\n")
    await person.screen(r"Channel: Cmd0001")
    await person.type("ch -si 1\n")
    await person.screen(r"Use any other key to view this channel\.")
    await person.type("\n")
    await person.screen(r"Username: $")
    await person.type("azureuser\n")
    await person.screen(r"Domain  : $")
    await person.type("\n")
    await person.screen(r"Password: $")
    await person.type("serial-lab\n")
    await person.screen(r"C:\\Windows\\system32>$")
    await person.type("hostname\n")
    await person.screen(r"\nWIN-1\n")

    await person.sysrq("h")
    await person.status(re.escape(texts.SYSRQ_LINUX_ONLY))


async def test_paste_copy_find_font_size_screen_reader_and_sync_size(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url, permissions=["clipboard-read", "clipboard-write"])
    await person.console_as(LINUX, "alice")
    await person.login()
    page = person.page

    # Paste (Ctrl+Shift+V) is capped at 2048 characters, and the pane says so.
    await person.type("cat > /tmp/pasted\n")
    await page.evaluate("(t) => navigator.clipboard.writeText(t)", "echo " + "x" * 3000)
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.press("Control+Shift+V")
    await person.status("Only the first 2048 characters were pasted")
    await person.type("\n")
    await page.keyboard.press("Control+D")  # ends cat's input
    await person.screen(r"# $")
    await person.type("wc -c < /tmp/pasted\n")
    await person.screen(r"\n2049\n")  # 2048 characters ("echo " and 2043 x), and Enter

    # Copy (Ctrl+Shift+C) puts the selection on the clipboard.
    await page.evaluate("window.portal.console.term.selectAll()")
    await page.keyboard.press("Control+Shift+C")
    await person.status("Copied")
    assert "Connected to the serial port" in await page.evaluate("navigator.clipboard.readText()")

    # Find in the scrollback.
    await page.get_by_label("Find in scrollback").fill("Linux version")
    await page.get_by_label("Find in scrollback").press("Enter")
    await person.status('Found "Linux version"')
    await page.get_by_label("Find in scrollback").fill("no-such-words")
    await page.get_by_label("Find in scrollback").press("Enter")
    await person.status("is not in the scrollback")

    # Font size, screen-reader mode.
    size_before = await page.locator("#console-size").inner_text()
    await page.get_by_role("button", name="Larger font").click()
    await person.status("Font size 15")
    assert await page.locator("#console-size").inner_text() != size_before
    await page.get_by_label("Screen reader mode").check()
    await page.locator(".xterm-accessibility-tree").wait_for(state="attached")

    # Sync size types stty with the pane's size.
    term = "window.portal.console.term"
    rows, cols = await page.evaluate(f"[{term}.rows, {term}.cols]")
    await page.get_by_role("button", name="Sync size").click()
    await person.screen(rf"stty rows {rows} cols {cols}")
    await person.type("stty size\n")
    await person.screen(rf"\n{rows} {cols}\n")


async def test_sysrq_nmi_restart_and_reset_from_the_toolbar(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.screen(r"login: ")
    page = person.page

    await person.sysrq("h")
    await person.screen(r"sysrq: HELP : ")
    await person.status(texts.SUCCESS["sysrq"])

    await person.nmi()
    await person.screen(r"NMI received for unknown reason")
    await person.status(texts.SUCCESS["nmi"])

    boots = await person.count(r"Linux version")
    await person.menu("Power", "Reset VM")
    dialog = page.get_by_role("dialog")
    assert "forceful power cycle" in await dialog.inner_text()
    await dialog.get_by_role("button", name="Cancel").click()
    await person.menu("Power", "Reset VM")
    await page.get_by_role("dialog").get_by_role("button", name="Reset").click()
    await person.status(texts.SUCCESS["reset"])
    await person.screen(r"Linux version[\s\S]*" * (boots + 1) + "login: ", 30)

    # Every state the badge shows, kept as it changes: "stopping" may last a few ms.
    await page.evaluate(POWER_STATES_SEEN)
    await person.menu("Power", "Restart VM")
    await page.get_by_role("dialog").get_by_role("button", name="Restart").click()
    await person.status(texts.SUCCESS["restart"], 60)
    await page.wait_for_function(
        "() => /VM stopping\\|.*VM running$/.test(window.powerStates.join('|'))",
        timeout=scaled(30) * 1000,
    )
    await person.screen(r"Linux version[\s\S]*" * (boots + 2) + "login: ", 30)


async def test_boot_diagnostics_shows_and_downloads_the_serial_log(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url, accept_downloads=True)
    await person.console_as(LINUX, "alice")
    await person.screen(r"login: ")
    await person.page.get_by_role("link", name="Boot diagnostics").click()
    log = person.page.get_by_label("Serial log")
    await log.filter(has_text="login:").wait_for()
    shown = await log.inner_text()
    assert "Linux version" in shown
    async with person.page.expect_download() as waiting:
        await person.page.get_by_role("link", name="Download serial log").click()
    download = await waiting.value
    assert download.suggested_filename == "linux-1.serialconsole.log"
    saved = Path(await download.path()).read_text(errors="replace")
    assert "Linux version" in saved
    assert "login:" in saved


async def test_a_page_of_another_site_cannot_open_a_console(
    lab: LabHandle, portal: PortalFactory
) -> None:
    """The websocket's Origin check holds in a real browser: a page served from another
    origin, given a valid session URL and token, is refused with 4008."""
    url, token = await lab.session_url("alice")
    # Another site on this machine: a page served by another server on 127.0.0.1.
    with page_server() as elsewhere:
        other = await portal(elsewhere)
        await other.open()
        code = await other.page.evaluate(
            """([url, token]) => new Promise((resolve) => {
                const ws = new WebSocket(url, "serial-console.v1");
                ws.onopen = () => ws.send(JSON.stringify({type: "authorize", token}));
                ws.onclose = (e) => resolve(e.code);
                setTimeout(() => resolve("no close within 10 s"), 10000);
            })""",
            [url, token],
        )
    assert code == 4008
    # The portal's own answers forbid framing and scripts from elsewhere.
    async with httpx.AsyncClient(base_url=lab.url) as http:
        page = await http.get("/")
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy


async def test_a_recorded_session_plays_in_the_page_and_downloads(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url, accept_downloads=True)
    await person.console_as(LINUX, "alice")
    await person.login()
    await person.type("echo recorded-words\n")
    await person.screen(r"\nrecorded-words\n")
    await person.page.get_by_role("link", name="Recorded sessions").click()
    sessions = person.page.get_by_role("table", name="Recorded sessions")
    row = sessions.get_by_role("row").filter(has_text="alice").first
    await row.wait_for()
    assert "websocket" in await row.inner_text()
    # The player plays at the recorded pace (as long as the login took on a busy machine)
    # what the file held when Play was pressed: the session is still open, and its
    # recording is written every 0.2 s, so on a busy machine the echo may be in the next
    # write. Then Refresh and Play again, as a person would.
    played = person.page.locator("#player").filter(has_text="recorded-words")
    for attempt in range(2):
        await row.get_by_role("button", name="Play").click()
        try:
            await played.wait_for(timeout=scaled(60) * 1000)
            break
        except PlaywrightTimeoutError:
            if attempt:
                raise
            await person.page.get_by_role("button", name="Refresh").click()
    async with person.page.expect_download() as waiting:
        await row.get_by_role("button", name="Download").click()
    download = await waiting.value
    assert download.suggested_filename.endswith(".cast")
    lines = Path(await download.path()).read_text().splitlines()
    assert '"version": 2' in lines[0]
    assert any("recorded-words" in line for line in lines[1:])

    reader = await portal(lab.url)
    await reader.page.goto(f"{lab.url}/#/resource{LINUX}/recordings")
    await reader.sign_in("bob")
    await (
        reader.page.locator("#recordings-status")
        .filter(has_text="You do not have the required permissions")
        .wait_for()
    )


async def test_a_crafted_link_calls_nothing_but_the_vm_it_names(
    lab: LabHandle, portal: PortalFactory
) -> None:
    """A name smuggling another path (``linux-1%2FpowerOff?...``) is no VM: the page says
    so and calls nothing, and the gateway refuses such a path itself."""
    person = await portal(lab.url)
    await person.open()
    await person.sign_in("alice")
    crafted = LINUX + "%2FpowerOff?api-version=2026-04-01&x="
    await person.page.goto(f"{lab.url}/#/resource{crafted}/serialConsole")
    await person.page.get_by_role("heading", name="This link names no VM").wait_for()
    view = await lab.http.get(
        f"{LINUX}/instanceView?api-version=2026-04-01",
        headers={"Authorization": f"Bearer {await lab.token('alice')}"},
    )
    assert view.json()["statuses"][1]["code"] == "PowerState/running"


async def test_a_dropped_connection_resumes_with_every_byte_once(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.login()
    page = person.page
    # Drop the socket (as a network would) once 10,000 bytes of the output have come.
    await page.evaluate(
        """() => {
            const socket = window.portal.console.socket;
            let seen = 0;
            socket.addEventListener("message", (event) => {
                if (typeof event.data === "string") return;
                seen += event.data.byteLength;
                if (seen > 10000 && socket.readyState === WebSocket.OPEN) socket.close(3000);
            });
        }"""
    )
    await person.type("seq 1 6000; echo seq-done\n")  # 28 KiB, within the scrollback
    await person.status("Reconnected: the console goes on where it stopped", 30)
    text = await person.screen(r"\nseq-done\n", 60)
    numbers = [line for line in text.split("echo seq-done", 1)[1].split("\n") if line.isdigit()]
    assert numbers == [str(n) for n in range(1, 6001)]
    assert await page.evaluate("window.portal.console.metrics.lostBytes") == 0


async def test_keys_leave_the_terminal_with_alt_f10_and_menus_close_with_escape(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.screen(r"login: ")
    page = person.page
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.press("Tab")  # a key for the VM: focus stays
    assert await page.evaluate("document.activeElement.className") == "xterm-helper-textarea"
    await page.keyboard.press("Alt+F10")
    assert await page.evaluate("document.activeElement.textContent") == "Keyboard"
    await page.keyboard.press("Enter")  # opens the Keyboard menu
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == (
        "Send Non-Maskable Interrupt (NMI)"
    )
    await page.keyboard.press("Escape")
    assert not await page.locator("details.menu[open]").count()
    assert await page.evaluate("document.activeElement.textContent") == "Keyboard"


async def test_an_expired_sign_in_goes_back_to_the_sign_in_page_then_to_the_console(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.screen(r"login: ")
    await person.page.evaluate(
        """() => {
            const key = "serial-console-lab.session";
            const s = JSON.parse(sessionStorage.getItem(key));
            sessionStorage.setItem(key, JSON.stringify({...s, expiresAt: Date.now() - 1}));
            window.portal.console.socket.close(3000);  // a network blip
        }"""
    )
    await person.page.get_by_role("alert").filter(has_text="Your sign-in expired").wait_for()
    await person.sign_in("alice")
    await person.screen(r"login: ")
    assert await person.page.title() == "linux-1 | Serial console"


async def test_enter_takes_the_console_back_and_a_double_click_opens_one_session(
    lab: LabHandle, portal: PortalFactory
) -> None:
    alice, carol = await carol_takes_over(lab, portal)
    await alice.notice("another user connected")
    await alice.type("\n")  # Azure's text: to reconnect, press "Enter"
    await carol.notice("another user connected")
    await alice.page.locator("#console-role").filter(has_text=CONNECTED).wait_for()

    # Two quick clicks on Watch only / Take over: one session at a time, no byte twice.
    await alice.page.get_by_role("button", name="Watch only").dblclick()
    await alice.page.locator("#console-role").filter(has_text=CONNECTED).wait_for()
    await alice.type("echo once-only\n")
    text = await alice.screen(r"\nonce-only\n")
    assert text.count("once-only") == 2  # the command line and its output
