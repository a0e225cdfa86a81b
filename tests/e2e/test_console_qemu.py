"""The websocket console on a real QEMU guest, through the lab's own pytest plugin.

The session's lab (the plugin's ``serial_lab``: the default lab, QEMU guests linux-1 and
linux-2) serves every test here; ``console`` opens linux-1's console in framed mode as the
project's clients do. The reset comes last, so no other test here sees linux-1 reboot.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.testing import Console

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

ConsoleFactory = Callable[..., Console]


@pytest.fixture
def linux(console: ConsoleFactory) -> Console:
    """linux-1's console, booted, root logged in."""
    opened = console("linux-1")
    opened.wait_for_boot()
    opened.login()
    return opened


def test_the_boot_log_holds_the_boot_from_its_first_byte(console: ConsoleFactory) -> None:
    """The boot-diagnostics log starts with the kernel's very first line and holds the
    guest's login prompt: the hub read the port before the CPU ran."""
    log = console("linux-1").read_boot_log()
    assert log.startswith("[    0.000000] Linux version "), log[:200]
    assert "linux-1 login: " in log


def test_login_command_sysrq_and_nmi(linux: Console) -> None:
    """root logs in, runs a command, and sees the kernel answer SysRq h and an NMI."""
    assert linux.run("uname -n") == ("linux-1\n", 0)
    assert linux.sysrq("h") == "Successfully sent SysRq command"
    linux.expect(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\)")
    assert linux.nmi() == "NMI sent successfully"
    linux.expect(r"Uhhuh\. NMI received for unknown reason")


@pytest.mark.parametrize("typed", [2_000, 20_000], ids=["2000-keys", "20000-byte-paste"])
def test_sysrq_after_typed_input_fires_the_key_asked_for(linux: Console, typed: int) -> None:
    """A writer types a burst of 5s (or pastes 20,000 bytes) and then asks for SysRq h: the
    BREAK waits until the guest has taken every typed byte, so the kernel shows its help and
    no typed 5 becomes the key ("Loglevel set to 5")."""
    linux.send("5" * typed)
    linux.sysrq("h", timeout=120)
    linux.expect(r"sysrq: HELP : loglevel\(0-9\)", 60)
    assert "Loglevel set to" not in linux.live_text
    linux.sendcontrol("c")  # the shell drops the line of 5s
    linux.expect(linux.prompt)


def test_a_hard_reset_is_watched_live_on_the_same_connection(linux: Console) -> None:
    """Reset VM (Hard): the open console shows the new boot from its first line, with no
    reconnect, and its login prompt."""
    assert linux.reset() == "Successfully Hard Reset VM"
    linux.expect(r"\[    0\.000000\] Linux version", 90)
    linux.wait_for_boot()
    assert not linux.closed
    linux.login()
    assert linux.run("hostname") == ("linux-1\n", 0)
