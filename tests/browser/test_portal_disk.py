"""The portal on a Gen1 disk VM: after *Reset VM* from the toolbar, the same pane shows
SeaBIOS and GRUB's menu; Esc typed in the pane stops GRUB's countdown, and the arrow keys
and Enter boot the older kernel, as Azure's pages tell people to do."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.console import texts
from gateway.console.sessions import ConsoleSession, Output, Role
from gateway.testing.timeouts import scaled
from tests.browser.conftest import AT_END, ON_SESSION_LOOP, Portal, PortalFactory
from tests.e2e.conftest import require_qemu
from tests.e2e.disklab import COUNTDOWN, image, kernels
from tests.support.lab import SUBSCRIPTION, LabHandle, running_lab

pytestmark = [
    pytest.mark.browser,
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a systemd boot under TCG, then a second boot
    ON_SESSION_LOOP,
]

GEN1_VM = """
[[vms]]
name = "gen1"
resource_group = "lab-rg"
backend = "qemu"
cpus = 1
warm_start = false
[vms.image]
disk = "debian-12-gen1"
"""
GEN1 = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg"
    "/providers/Microsoft.Compute/virtualMachines/gen1"
)
BOOT = 300  # s: a systemd boot under TCG on a machine busy with other tests

# What the pane shows after its last GRUB menu was drawn, as a JavaScript expression
AFTER_LAST_MENU = "(window.portal?.console?.text() ?? '').split('GNU GRUB')"


async def menu_drawn(person: Portal, menus_before: int, pattern: str, shown: bool = True) -> None:
    """Until the pane has drawn more than ``menus_before`` GRUB menus and what follows the
    last one matches ``pattern`` (or, ``shown`` false, no longer does)."""
    await person.page.wait_for_function(
        f"([n, re, shown]) => {{ const parts = {AFTER_LAST_MENU};"
        " return parts.length - 1 > n && new RegExp(re).test(parts[parts.length - 1]) === shown; }",
        arg=[menus_before, pattern, shown],
        timeout=scaled(BOOT) * 1000,
    )


async def test_grub_caught_in_the_pane_after_a_reset_and_the_older_kernel_booted(
    lab: LabHandle, portal: PortalFactory
) -> None:
    _, older = kernels()
    person = await portal(lab.url)
    await person.console_as(GEN1, "alice")
    await person.screen(r"gen1 login: " + AT_END, BOOT)
    menus = await person.count("GNU GRUB")

    await person.menu("Power", "Reset VM")
    await person.page.get_by_role("dialog").get_by_role("button", name="Reset").click()
    await person.status(texts.SUCCESS["reset"])
    await menu_drawn(person, menus, COUNTDOWN)  # the new boot's menu, counting down

    await person.page.locator(".xterm-helper-textarea").focus()
    await person.page.keyboard.press("Escape")
    await menu_drawn(person, menus, COUNTDOWN, shown=False)  # GRUB wiped its countdown
    assert f"with Linux {older}" in (await person.text()).split("GNU GRUB")[-1]

    await press_until_redrawn(person, lab, "ArrowDown")
    await person.page.keyboard.press("Enter")
    # GRUB clears the screen as it boots (its menu's rows erased); the first boot ran the
    # default entry, the newest kernel, so the older one's lines are this boot's
    await person.screen(rf"Loading Linux {older} \.\.\.", 60)
    await person.screen(rf"Linux version {older}", BOOT)


async def press_until_redrawn(person: Portal, lab: LabHandle, key: str, tries: int = 3) -> None:
    """Press ``key`` until GRUB redraws its menu for it, as a person presses an arrow key
    again when the highlight did not move. GRUB reads an arrow's escape sequence with a
    short timeout of its own; on a host this loaded (TCG, other guests booting) its bytes
    may come apart and the key is lost. What GRUB writes back is watched on the VM's console
    (a watcher session on its hub): an event, not a pause."""
    assert lab.runtime.context is not None
    vm = lab.runtime.context.inventory.by_machine_name("gen1")
    assert vm is not None
    hub = vm.hub
    assert hub is not None
    watcher = ConsoleSession(uuid.uuid4().hex, "test", "gen1", Role.WATCHER)
    hub.attach(watcher, resume_from=hub.bootlog.end)  # from now on: no replay
    try:
        for _ in range(tries):
            await person.page.keyboard.press(key)
            if await _taken_within(watcher, 10):
                return
        raise AssertionError(f"GRUB never redrew its menu for {key} ({tries} presses)")
    finally:
        hub.detach(watcher)


async def _taken_within(session: ConsoleSession, seconds: float) -> bool:
    """Whether the guest wrote anything to ``session`` within ``seconds`` (scaled)."""
    try:
        async with asyncio.timeout(scaled(seconds)):
            items = await session.take()
    except TimeoutError:
        return False
    return any(isinstance(item, Output) and item.data for item in items)


@pytest_asyncio.fixture(loop_scope="session")
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    require_qemu()
    image("debian-12-gen1")
    async with running_lab(tmp_path, vms=GEN1_VM) as handle:
        yield handle
