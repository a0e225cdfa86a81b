"""The whole lab end to end, as a user meets it: ``serial-console lab run`` in one process,
the ``serial-console`` CLI in others, on a terminal.

One lab for the module, on one xdist worker: the suite's lab (tests/e2e/lab.toml, the
default lab less its disk VMs: QEMU guests linux-1 and linux-2, emulated win-1, nodiag-1
and scale set web-vmss) with its own state folder and a free port, started
as a subprocess and stopped by its pid with SIGINT, after which it must have exited with
status 0 and left no QEMU behind. Consoles run under pexpect on a pseudo-terminal; each
user keeps credentials in a config folder of this run only.

The emulated machines come first, while the QEMU guests boot; the hard reset comes last,
so no other test sees linux-1 rebooting.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator

import pexpect
import pytest

from gateway.testing.lab import STOPPED, LabProcess
from tests.e2e.conftest import GUEST_PASSWORD, SUITE_LAB, require_qemu
from tests.support.cli import Cli, expect, finished
from tests.support.console import echoed

pytestmark = [pytest.mark.e2e, pytest.mark.qemu, pytest.mark.xdist_group("lab-e2e")]

BOOT = 90.0  # a QEMU guest's boot to its login prompt under TCG on a busy machine
USERS = ("alice", "bob", "carol")
CONNECT_LINUX = ["connect", "-g", "lab-rg", "-n", "linux-1"]
BANNER = "Connected to the serial port of the VM."
PROMPT = "root@linux-1:~# "
MENU = re.escape(
    "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
    "| q to quit Console | CTRL + ] to forward input |"
)
NO_PERMISSION = (
    "You do not have the required permissions to use this VM with the serial console. "
    "Ensure you have at least Virtual Machine Contributor role permissions."
)
TAKEOVER = (
    "The serial console connection was closed. This can occur if there was an error or "
    "another user connected to the console of this virtual machine."
)
SCALE_SET_HINT = (
    "We found that you specified a Virtual Machine Scale Set and not a VM. Use the "
    "--instance-id parameter to select the VMSS instance you want to connect to."
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    """The suite's lab (the default lab less its disk VMs), running with --tls (so every
    console here goes over wss, verified against the lab's CA); on teardown it must stop
    cleanly with no QEMU left."""
    require_qemu()
    running = LabProcess.start(
        tmp_path_factory.mktemp("lab"), lab=SUITE_LAB, tls=True, die_with_parent=True
    )
    assert running.url.startswith("https://127.0.0.1:"), running.output
    try:
        assert len(running.qemu_pids()) == 2, running.output
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.output
    assert STOPPED in running.output
    assert running.qemu_pids() == []


@pytest.fixture(scope="module")
def users(lab: LabProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cli]:
    """The CLI of each lab user, with a config folder of its own in this run; each logs in
    with the lab's CA (--ca-file)."""
    config = tmp_path_factory.mktemp("config")
    return {name: Cli.at(lab.url, config / name, ca_file=lab.ca_path) for name in USERS}


async def logged_in(users: dict[str, Cli], name: str) -> Cli:
    cli = users[name]
    await cli.login(name)
    return cli


async def past_replay(child: pexpect.spawn) -> None:
    """Wait until the console shows live output: a fresh word typed is echoed back (by the
    shell or by the login prompt) only after the replayed output; Ctrl+U erases it."""
    word = f"w{uuid.uuid4().hex[:10]}"
    child.send(word)
    await expect(child, echoed(word))
    child.send("\x15")


async def root_shell(child: pexpect.spawn) -> None:
    """From a console just opened on linux-1, root's shell prompt. The guest is up once a
    login prompt has shown: live, or in the replayed output (this lab prints far less than
    its 64 KiB of replay)."""
    await expect(child, BANNER)
    await expect(child, "login: ", BOOT)
    await to_root_prompt(child)


async def to_root_prompt(child: pexpect.spawn) -> None:
    """Past the replay to root's shell prompt on linux-1, logging in when needed."""
    await past_replay(child)
    child.send("\r")
    if await expect(child, [PROMPT, "login: "]) == 1:
        child.send("root\r")
        await expect(child, "Password: ")
        child.send(GUEST_PASSWORD + "\r")
        await expect(child, PROMPT)


async def expect_all(child: pexpect.spawn, patterns: list[str]) -> None:
    """Wait for every one of ``patterns``, in whatever order they come."""
    pending = list(patterns)
    while pending:
        pending.pop(await expect(child, pending))


async def quit_console(child: pexpect.spawn) -> None:
    child.send("\x1d")
    await expect(child, MENU)
    child.send("q")
    assert await finished(child) == 0


# -- refusals and emulated guests (while the QEMU guests boot) -----------------------------


async def test_reader_is_refused_with_azures_text(users: dict[str, Cli]) -> None:
    """bob (Reader) runs connect: he reads Azure's permission text and the command exits
    with a non-zero status, without leaving a console waiting for Enter."""
    bob = await logged_in(users, "bob")
    child = bob.spawn(*CONNECT_LINUX)
    await expect(child, re.escape(NO_PERMISSION))
    status = await finished(child)
    assert status not in (0, None), child.before


async def test_vm_without_boot_diagnostics_is_refused(users: dict[str, Cli]) -> None:
    """connect to nodiag-1 (boot diagnostics off) shows Azure's prerequisite text, then
    what to change in the lab file (where az names its own command), and exits with a
    non-zero status."""
    alice = await logged_in(users, "alice")
    child = alice.spawn("connect", "-g", "lab-rg", "-n", "nodiag-1")
    await expect(child, re.escape("Azure Serial Console requires boot diagnostics to be enabled."))
    await expect(
        child,
        re.escape(
            "Set boot_diagnostics = true in the lab file's [[vms]] entry of nodiag-1, then "
            "restart the lab."
        ),
    )
    assert await finished(child) not in (0, None)


async def test_scale_set_needs_an_instance_id(users: dict[str, Cli]) -> None:
    """connect to web-vmss without --instance-id prints Azure's scale-set hint and fails;
    with --instance-id 0 it opens instance 0's console."""
    alice = await logged_in(users, "alice")
    child = alice.spawn("connect", "-g", "lab-rg", "-n", "web-vmss")
    await expect(child, re.escape(SCALE_SET_HINT))
    assert await finished(child) == 1
    child = alice.spawn("connect", "-g", "lab-rg", "-n", "web-vmss", "--instance-id", "0")
    await expect(child, BANNER)
    await past_replay(child)
    child.send("\r")
    await expect(child, "login: ")
    await quit_console(child)


async def test_windows_sac_cmd_channel_and_login(users: dict[str, Cli]) -> None:
    """On win-1, SAC's cmd creates a channel, ch -si N switches to it and asks Username,
    Domain and Password; the guest password opens C:\\Windows\\system32>."""
    alice = await logged_in(users, "alice")
    child = alice.spawn("connect", "-g", "lab-rg", "-n", "win-1")
    await expect(child, BANNER)
    word = f"w{uuid.uuid4().hex[:10]}"
    child.send(word + "\r")  # SAC echoes it after the replay, then answers with SAC>
    await expect(child, word)
    await expect(child, "SAC>")
    child.send("cmd\r")
    await expect(child, "A new channel has been created")
    await expect(child, r"Channel: Cmd(\d+)")
    number = int(child.match.group(1))
    await expect(child, "SAC>")
    child.send(f"ch -si {number}\r")
    await expect(child, "Use any other key to view this channel.")
    child.send("\r")
    await expect(child, "Username: ")
    child.send("Administrator\r")
    await expect(child, "Domain  : ")
    child.send("\r")
    await expect(child, "Password: ")
    child.send(GUEST_PASSWORD + "\r")
    await expect(child, re.escape("C:\\Windows\\system32>"))
    child.send("\x1d")
    await expect(
        child,
        re.escape(
            "| Press n for NMI | r to Reset VM |\r\n"
            "| q to quit Console | CTRL + ] to forward input |"
        ),
    )
    child.send("q")
    assert await finished(child) == 0


# -- the QEMU guest linux-1 -----------------------------------------------------------------


async def test_login_connect_and_run_a_command(users: dict[str, Cli]) -> None:
    """alice logs in to the lab with its CA, connects to linux-1 over wss, sees Azure's
    banner, presses Enter, logs in on the guest as root and runs hostname: linux-1."""
    alice = users["alice"]
    assert alice.ca_file is not None
    ca = ["--ca-file", str(alice.ca_file)]
    result = await alice.run("login", "--username", "alice", "--password", "alice", *ca)
    assert result.code == 0, result.err
    assert f"Logged in to {alice.env['SERIAL_CONSOLE_URL']} as alice" in result.text
    child = alice.spawn(*CONNECT_LINUX)
    await expect(child, BANNER)
    await expect(child, "If no login prompt is displayed, press ENTER.")
    await expect(child, "login: ", BOOT)  # the guest may still be booting
    await to_root_prompt(child)
    child.send("hostname\r")
    await expect(child, "\r\nlinux-1\r\n")  # the output alone: kernel lines may split the echo
    await expect(child, PROMPT)
    await quit_console(child)


async def test_sysrq_h_through_the_menu(users: dict[str, Cli]) -> None:
    """Ctrl+] then s then h: the menu asks which SysRq, and the kernel prints its help."""
    alice = await logged_in(users, "alice")
    child = alice.spawn(*CONNECT_LINUX)
    await root_shell(child)
    child.send("\x1d")
    await expect(child, MENU)
    child.send("s")
    await expect(child, re.escape("Which SysRq command would you like to send? Press h for help: "))
    child.send("h")
    await expect_all(
        child, ["Successfully sent SysRq command", re.escape("sysrq: HELP : loglevel(0-9)")]
    )
    await quit_console(child)


async def test_send_nmi_shows_on_the_open_console(users: dict[str, Cli]) -> None:
    """While alice's console is open, send nmi prints "NMI sent successfully" and the
    console shows the kernel's unknown-NMI line; the console stays connected."""
    alice = await logged_in(users, "alice")
    child = alice.spawn(*CONNECT_LINUX)
    await root_shell(child)
    result = await alice.run("send", "nmi", "-g", "lab-rg", "-n", "linux-1")
    assert (result.code, result.text.strip()) == (0, "NMI sent successfully"), result.err
    await expect(child, "NMI received for unknown reason")
    child.send("hostname\r")  # still the same console, still typing into the guest
    await expect(child, "\r\nlinux-1\r\n")
    await quit_console(child)


async def test_second_user_takes_the_console_over(users: dict[str, Cli]) -> None:
    """carol connects to linux-1 while alice is on it: alice reads Azure's takeover text and
    is told Enter reconnects; carol lands in the guest where root is still logged in."""
    alice = await logged_in(users, "alice")
    carol = await logged_in(users, "carol")
    first = alice.spawn(*CONNECT_LINUX)
    await root_shell(first)
    second = carol.spawn(*CONNECT_LINUX)
    await expect(second, BANNER)
    await expect(first, re.escape(TAKEOVER))
    await expect(first, re.escape('To reconnect, press "Enter".'))
    await past_replay(second)
    second.send("\r")
    await expect(second, PROMPT)  # the guest login was not logged out
    first.send("q")
    assert await finished(first) == 0
    await quit_console(second)


async def test_send_reset_reboots_under_the_open_console(users: dict[str, Cli]) -> None:
    """send reset prints "Successfully Hard Reset VM"; the open console, never
    reconnected, shows the new boot from the kernel's first line to the login prompt."""
    alice = await logged_in(users, "alice")
    child = alice.spawn(*CONNECT_LINUX)
    await root_shell(child)
    child.logfile_read = seen = io.BytesIO()
    result = await alice.run("send", "reset", "-g", "lab-rg", "-n", "linux-1", timeout=60)
    assert (result.code, result.text.strip()) == (0, "Successfully Hard Reset VM"), result.err
    await expect(child, "Linux version", BOOT)
    await expect(child, "login: ", BOOT)
    shown = seen.getvalue().decode(errors="replace")
    assert BANNER not in shown
    assert "Connection Closed" not in shown
    await to_root_prompt(child)
    await quit_console(child)
