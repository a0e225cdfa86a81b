"""The portal on a real QEMU guest: the console route from its first byte, a login and a
command, then Azure's toolbar (SysRq from the dialog, NMI, Reset VM) seen live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.console import texts
from tests.browser.conftest import AT_END, ON_SESSION_LOOP, PortalFactory
from tests.e2e.conftest import require_qemu
from tests.support.lab import QEMU_VM, SUBSCRIPTION, LabHandle, running_lab

pytestmark = [pytest.mark.browser, pytest.mark.qemu, ON_SESSION_LOOP]

LINUX = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg"
    "/providers/Microsoft.Compute/virtualMachines/linux-1"
)


@pytest_asyncio.fixture(loop_scope="session")
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    require_qemu()
    async with running_lab(tmp_path, vms=QEMU_VM) as handle:
        yield handle


async def test_a_qemu_guest_in_the_pane_login_command_sysrq_nmi_and_reset(
    lab: LabHandle, portal: PortalFactory
) -> None:
    person = await portal(lab.url)
    await person.console_as(LINUX, "alice")
    await person.screen(r"Connected to the serial port of the VM\.")
    await person.screen(r"login: " + AT_END, 90)
    await person.login()
    await person.type("uname -n; echo $((6 * 7))\n")
    await person.screen(r"\nlinux-1\n42\n")
    page = person.page

    await person.sysrq("h")
    await person.screen(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\)")
    await person.status(texts.SUCCESS["sysrq"])

    await person.nmi()
    await person.screen(r"Uhhuh\. NMI received for unknown reason")
    await person.status(texts.SUCCESS["nmi"])

    await person.menu("Power", "Reset VM")
    await page.get_by_role("dialog").get_by_role("button", name="Reset").click()
    await person.status(texts.SUCCESS["reset"], 60)  # behind the NMI's turn, on a busy machine
    # The same pane shows the new boot from its first line to the login prompt.
    await person.screen(
        r"NMI received[\s\S]*\[    0\.000000\] Linux version[\s\S]*login: " + AT_END, 90
    )
    assert await page.locator("#power-state").inner_text() == "VM running"
