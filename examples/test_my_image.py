"""An example suite for your own guest image, on Serial Console Lab's pytest plugin.

Installing serial-console-lab installs the plugin: ``pytest examples/`` starts the default
lab (QEMU guests linux-1 and linux-2 from the image ``make images`` builds, emulated
Windows and scale-set guests), waits until every guest shows its login prompt, runs the
tests on linux-1's serial console, and stops the lab with no QEMU left behind. To test
your image, point a lab file's ``[[vms]] image`` at your kernel and initrd and run
``pytest --lab-file my-lab.toml``; see docs/pytest.md.

The tests run in order on one guest: the reset and the panic come last, and the panic's
test leaves the guest booted again for whatever runs next.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from gateway.testing import Console, SerialLab

VM = "linux-1"
ConsoleFactory = Callable[..., Console]


@pytest.fixture
def shell(console: ConsoleFactory) -> Console:
    """linux-1's console, booted, with root logged in."""
    linux = console(VM)
    linux.wait_for_boot()
    linux.login()  # root and the lab's guest password
    return linux


def test_the_guest_boots_the_kernel_it_announced(shell: Console) -> None:
    """``uname -r`` names the kernel whose banner opened the boot log."""
    banner = re.search(r"Linux version (\S+)", shell.read_boot_log())
    assert banner is not None, "no kernel banner in the boot log"
    release, status = shell.run("uname -r")
    assert (release.strip(), status) == (banner.group(1), 0)


def test_exit_statuses_are_the_commands_own(shell: Console) -> None:
    """A command that fails reports its own status, not the shell's guess."""
    assert shell.run("hostname") == ("linux-1\n", 0)
    output, status = shell.run("cat /no/such/file")
    assert status == 1
    assert "No such file or directory" in output
    assert shell.run("sh -c 'exit 7'")[1] == 7


def test_sysrq_from_the_console(shell: Console) -> None:
    """SysRq h (a serial BREAK, then h) makes the kernel print its help."""
    assert shell.run("cat /proc/sys/kernel/sysrq") == ("1\n", 0)
    shell.sysrq("h")
    shell.expect(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\) crash\(c\)")


def test_a_hard_reset_boots_the_guest_again(shell: Console) -> None:
    """After a hard reset the same console shows the next boot, and what the last boot
    left in its RAM-backed /tmp is gone."""
    assert shell.run("touch /tmp/before-reset")[1] == 0
    shell.reset()
    shell.expect(r"Linux version", timeout=60)
    shell.wait_for_boot()
    shell.login()
    assert shell.run("test -e /tmp/before-reset")[1] == 1


def test_a_panic_shows_as_the_vms_power_state(shell: Console, serial_lab: SerialLab) -> None:
    """SysRq c crashes the kernel: the console shows the panic and the lab reports the VM
    panicked (QEMU's pvpanic device); a reset brings it back."""
    shell.sysrq("c")
    shell.expect(r"Kernel panic - not syncing: sysrq triggered crash")
    shell.wait_for_power("panicked")
    assert serial_lab.power_state(VM) == "panicked"
    shell.reset()
    shell.wait_for_boot()
    assert serial_lab.power_state(VM) == "running"
