"""The ``serial-console`` CLI as a user runs it: a real process against a real lab.

One lab per test (``tests.support.lab.running_lab``: emulated Linux and Windows guests and a
scale set, the gateway on 127.0.0.1 port 0). Plain commands run as subprocesses; ``connect``
runs under pexpect on a pseudo-terminal, so raw mode, the Ctrl+] menu and the terminal's
restoration are the real thing. Each test's credentials live in its own config folder.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pexpect
import pytest

from gateway.console.sessions import TAKEOVER_TEXT
from tests.support.cli import Cli, expect, finished
from tests.support.lab import EMULATED_VMS, SUBSCRIPTION, running_lab, scale_set

SCALE_SET = scale_set()
CONNECT_LINUX = ["connect", "-g", "lab-rg", "-n", "linux-1"]
# az's two-line Ctrl+] menu, as the terminal shows it.
MENU_LINUX = re.escape(
    "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
    "| q to quit Console | CTRL + ] to forward input |"
)
MENU_WINDOWS = re.escape(
    "| Press n for NMI | r to Reset VM |\r\n| q to quit Console | CTRL + ] to forward input |"
)


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    async with running_lab(tmp_path, vms=EMULATED_VMS + SCALE_SET) as lab:
        yield Cli.at(lab.url, tmp_path / "config")


async def test_login_keeps_an_owner_only_token_and_logout_forgets_it(cli: Cli) -> None:
    """Without a login, commands say to run login; a wrong password fails with the lab's
    reason; a login writes a 0600 token in a 0700 folder; logout removes it."""
    result = await cli.run("vm", "list")
    assert result.code == 1
    url = cli.env["SERIAL_CONSOLE_URL"]
    assert f"run serial-console login --url {url} --username NAME" in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = await cli.run("login", "--username", "alice", "--password", "wrong")
    assert result.code == 1
    assert "invalid username or password" in result.err
    await cli.login("alice")
    token_file = cli.config / "serial-console" / "credentials.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert (await cli.run("logout")).code == 0
    assert "run serial-console login" in (await cli.run("vm", "list", "-g", "lab-rg")).err


async def test_vm_list_and_power_actions(cli: Cli) -> None:
    """vm list shows a table with power states; vm stop/start change them; json output."""
    await cli.login("carol")
    result = await cli.run("vm", "list")
    assert result.code == 0, result.err
    lines = result.text.splitlines()
    assert lines[0].split() == ["Name", "ResourceGroup", "Location", "PowerState", "OsType"]
    assert any(line.split()[:4] == ["win-1", "lab-rg", "local", "running"] for line in lines)
    result = await cli.run("vm", "stop", "-g", "lab-rg", "-n", "win-1", "--output", "json")
    assert result.code == 0, result.err
    assert '"status": "Succeeded"' in result.text
    rows = [line.split() for line in (await cli.run("vm", "list")).text.splitlines()]
    assert ["win-1", "lab-rg", "local", "stopped", "Windows"] in rows
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "win-1")
    assert (result.code, result.err.splitlines()) == (1, [
        "serial-console: error: Azure Serial Console requires a virtual machine to be running.",
        'Use "serial-console vm start -g lab-rg -n win-1" to start the Virtual Machine.',
    ])  # fmt: skip
    assert (await cli.run("vm", "start", "-g", "lab-rg", "-n", "win-1")).code == 0


async def test_send_commands_print_azs_texts(cli: Cli) -> None:
    """send sysrq/nmi print az's success texts and reach the guest (seen in the boot log);
    SysRq to Windows is refused with Azure's text."""
    await cli.login("alice")
    result = await cli.run("send", "sysrq", "-g", "lab-rg", "-n", "linux-1", "--input", "h")
    assert (result.code, result.text.strip()) == (0, "Successfully sent SysRq command")
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "linux-1")
    assert (result.code, result.text.strip()) == (0, "NMI sent successfully")
    log = (await cli.run("boot-log", "-g", "lab-rg", "-n", "linux-1")).text
    assert "sysrq: HELP" in log
    assert "NMI received" in log
    result = await cli.run("send", "sysrq", "-g", "lab-rg", "-n", "win-1", "--input", "h")
    assert (result.code, result.err) == (
        1, "serial-console: error: You can only send a SysRq to a Linux VM.\n"
    )  # fmt: skip


async def test_a_refused_send_says_azs_failure_then_why(cli: Cli) -> None:
    """A SysRq the gateway refuses: az's "Failed to send SysRq command..." line, then the
    gateway's reason."""
    await cli.login("alice")
    result = await cli.run("send", "sysrq", "-g", "lab-rg", "-n", "linux-1", "--input", "h\x01")
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == (
        "serial-console: error: Failed to send SysRq command. Make sure the input only "
        "contains numbers and letters."
    )
    assert len(lines) == 2
    assert lines[1]  # the gateway's own reason


async def test_scale_set_without_instance_is_told_to_use_instance_id(cli: Cli) -> None:
    """Naming a scale set without --instance-id gives Azure's CLI hint; with it, it works."""
    await cli.login("alice")
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "web-vmss")
    assert result.code == 1
    error, hint = result.err.splitlines()
    assert error.startswith("serial-console: error: The Resource ")  # ARM's "not found"
    assert "'Microsoft.Compute/virtualMachines/web-vmss'" in error
    assert hint == (
        "We found that you specified a Virtual Machine Scale Set and not a VM. Use the "
        "--instance-id parameter to select the VMSS instance you want to connect to."
    )
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "web-vmss", "--instance-id", "0")
    assert (result.code, result.text.strip()) == (0, "NMI sent successfully")


async def test_enable_disable_print_the_state_and_need_the_role(cli: Cli) -> None:
    """disable/enable print the console service's state as JSON; a VM Contributor is refused."""
    await cli.login("carol")
    result = await cli.run("disable")
    assert (result.code, result.text.split()) == (0, ["{", '"properties":', "{",
                                                      '"disabled":', "true", "}", "}"])  # fmt: skip
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "linux-1")
    assert "is not enabled for this subscription" in result.err
    assert result.err.splitlines()[1] == 'Enable Serial Console with "serial-console enable".'
    assert '"disabled": false' in (await cli.run("enable")).text
    await cli.login("alice")
    result = await cli.run("disable")
    assert result.code == 1
    assert "does not have authorization" in result.err


async def test_boot_log_prints_bytes_from_an_offset(cli: Cli) -> None:
    """boot-log prints the serial log; --start N prints the same bytes from offset N."""
    await cli.login("alice")
    whole = (await cli.run("boot-log", "-g", "lab-rg", "-n", "linux-1")).out
    assert b"login: " in whole
    tail = (await cli.run("boot-log", "-g", "lab-rg", "-n", "linux-1", "--start", "100")).out
    assert tail.startswith(whole[100:])


async def test_connect_logs_in_uses_the_menu_and_quits(cli: Cli) -> None:
    """connect shows Azure's banner, types into the guest, Ctrl+] s h sends SysRq (its
    help shows), n needs a capital Y, and Ctrl+] q quits with status 0."""
    await cli.login("alice")
    child = cli.spawn(*CONNECT_LINUX)
    await expect(child, "Connected to the serial port of the VM.")
    await expect(child, "If no login prompt is displayed, press ENTER.")
    child.send("\r")
    await expect(child, "login: ")
    child.send("root\r")
    await expect(child, "Password: ")
    child.send("serial-lab\r")
    await expect(child, "# ")
    child.send("\x1d")
    await expect(child, MENU_LINUX)
    child.send("s")
    await expect(child, "Which SysRq command would you like to send\\? Press h for help: ")
    child.send("h")
    # The kernel's answer and the command's result come in either order.
    pending = ["Successfully sent SysRq command", "sysrq: HELP"]
    while pending:
        pending.pop(await expect(child, pending))
    child.send("\x1dn")
    await expect(child, r"Are you sure you want to send an NMI\? \(Y/n\): ")
    child.send("Y")
    await expect(child, "NMI sent successfully")
    child.send("\x1dq")
    assert await finished(child) == 0


async def test_takeover_shows_azures_text_and_enter_reconnects(cli: Cli) -> None:
    """A second writer takes the console over: the first sees Azure's text, and Enter
    reconnects it with a new session (taking the console back)."""
    await cli.login("alice")
    first = cli.spawn(*CONNECT_LINUX)
    await expect(first, "press ENTER")
    second = cli.spawn(*CONNECT_LINUX)
    await expect(second, "press ENTER")
    await expect(first, TAKEOVER_TEXT.split(".")[0])
    await expect(first, 'To reconnect, press "Enter".')
    first.send("\r")
    await expect(first, "Connected to the serial port of the VM.")
    await expect(second, "another user connected")
    second.send("q")
    assert await finished(second) == 0
    first.send("\x1dq")
    assert await finished(first) == 0


async def test_watch_is_read_only_and_kicks_nobody(cli: Cli) -> None:
    """--watch shows the console without taking it over; its typing goes nowhere; the
    Windows menu has no SysRq."""
    await cli.login("alice")
    writer = cli.spawn("connect", "-g", "lab-rg", "-n", "win-1")
    await expect(writer, "press ENTER")
    watcher = cli.spawn("connect", "-g", "lab-rg", "-n", "win-1", "--watch")
    await expect(watcher, "Watching read-only")
    watcher.send("x")
    await expect(watcher, "typing goes nowhere")
    writer.send("\x1d")
    await expect(writer, MENU_WINDOWS)
    writer.send("q")
    assert await finished(writer) == 0
    watcher.send("\x1dq")
    assert await finished(watcher) == 0


async def test_stopped_vm_says_why_and_q_quits(cli: Cli) -> None:
    """Connecting to a stopped VM shows Azure's reason and the could-not-connect text."""
    await cli.login("carol")
    assert (await cli.run("vm", "stop", "-g", "lab-rg", "-n", "win-1")).code == 0
    child = cli.spawn("connect", "-g", "lab-rg", "-n", "win-1")
    await expect(child, "requires a virtual machine to be running")
    await expect(
        child, re.escape('Use "serial-console vm start -g lab-rg -n win-1" to start the Virtual')
    )
    await expect(child, "Could not establish connection to VM or VMSS.")
    child.send("q")
    assert await finished(child) == 0


async def test_terminal_is_restored_on_sigterm(cli: Cli) -> None:
    """SIGTERM during a session leaves the terminal as it was (echo back on)."""
    await cli.login("alice")
    child = cli.spawn(*CONNECT_LINUX)
    master = os.dup(child.child_fd)  # pexpect closes its own at EOF
    try:
        before = termios.tcgetattr(master)
        await expect(child, "press ENTER")
        assert not termios.tcgetattr(master)[3] & termios.ECHO  # raw while connected
        child.kill(signal.SIGTERM)
        await expect(child, pexpect.EOF)
        assert termios.tcgetattr(master) == before
    finally:
        os.close(master)
    child.close()
    assert child.exitstatus == 128 + signal.SIGTERM


# -- a lab served over TLS ------------------------------------------------------------------


async def test_login_with_the_lab_ca_then_rest_and_wss_are_verified(tmp_path: Path) -> None:
    """Against a TLS lab: login without its CA is refused with what to do; login with
    --ca-file keeps the CA, and later commands (REST, and the console over wss://) trust it
    without being told again."""
    async with running_lab(tmp_path, tls=True) as lab:
        assert lab.ca_path is not None
        cli = Cli.at(lab.url, tmp_path / "config")
        result = await cli.run("login", "--username", "alice", "--password", "alice")
        assert result.code == 1
        assert result.err.strip() == (
            f"serial-console: error: The lab at {lab.url} presents a certificate this CLI does "
            "not trust: log in with --ca-file and the lab's CA (serial-console lab run "
            "--tls prints its path, <state-dir>/tls/ca.pem)"
        )
        result = await cli.run(
            "login", "--username", "alice", "--password", "alice", "--ca-file", str(lab.ca_path)
        )
        assert result.code == 0, result.err
        result = await cli.run("vm", "list", "-g", "lab-rg")
        assert result.code == 0, result.err
        assert "linux-1" in result.text
        child = cli.spawn(*CONNECT_LINUX)
        await expect(child, "Connected to the serial port of the VM.")
        child.send("\r")
        await expect(child, "login: ")
        child.send("\x1dq")
        assert await finished(child) == 0


async def test_login_on_this_machine_finds_the_default_state_folders_ca(tmp_path: Path) -> None:
    """Run where the lab runs (its state folder is .lab/ here), login needs no --ca-file."""
    async with running_lab(tmp_path, tls=True) as lab:
        here = tmp_path / "checkout"
        here.mkdir()
        (here / ".lab").symlink_to(tmp_path / "state")
        cli = Cli.at(lab.url, tmp_path / "config")
        cli.cwd = here
        await cli.login("carol")
        result = await cli.run("vm", "list")
        assert result.code == 0, result.err
        assert "linux-1" in result.text


async def test_login_names_a_ca_file_that_is_not_a_certificate(cli: Cli, tmp_path: Path) -> None:
    """--ca-file pointing at something else is refused, naming the file."""
    (tmp_path / "ca.pem").write_text("hello\n")
    result = await cli.run("login", "-u", "alice", "-p", "alice", "--ca-file", str(tmp_path / "x"))
    assert result.code == 1
    assert f"--ca-file: cannot read {tmp_path / 'x'}: No such file or directory" in result.err
    result = await cli.run(
        "login", "-u", "alice", "-p", "alice", "--ca-file", str(tmp_path / "ca.pem")
    )
    assert result.code == 1
    assert f"--ca-file: {tmp_path / 'ca.pem'} is not a PEM certificate" in result.err


async def test_subscription_is_chosen_by_id_or_name(cli: Cli) -> None:
    """--subscription takes the subscription's ID or display name; another is refused
    with az's text."""
    await cli.login("carol")
    for wanted in (SUBSCRIPTION, "test SUBSCRIPTION"):
        result = await cli.run("vm", "list", "-g", "lab-rg", "--subscription", wanted)
        assert result.code == 0, result.err
        assert "linux-1" in result.text
    result = await cli.run("send", "nmi", "-g", "lab-rg", "-n", "linux-1", "--subscription", "x")
    assert (result.code, result.err) == (1, (
        "serial-console: error: Subscription 'x' not found. Check the spelling and casing and "
        "try again.\n"
    ))  # fmt: skip


async def test_a_lab_that_went_away_gets_azs_network_text(tmp_path: Path) -> None:
    """The lab stops under an open console: az's closed text; Enter finds no lab, and az's
    "check network connection" text says so; q quits."""
    async with running_lab(tmp_path) as lab:
        cli = Cli.at(lab.url, tmp_path / "config")
        await cli.login("alice")
        child = cli.spawn(*CONNECT_LINUX)
        await expect(child, "Connected to the serial port of the VM.")
    await expect(child, re.escape('Connection Closed: Press "Enter" to reconnect...'))
    child.send("\r")
    await expect(
        child,
        re.escape(
            "An unexpected error occurred. Could not establish connection to VM or VMSS. "
            'Check network connection and press "Enter" to try again...'
        ),
    )
    child.send("q")
    assert await finished(child) == 0


@pytest.mark.parametrize("tls", [True, False])
async def test_the_wrong_scheme_is_named_with_the_right_url(tmp_path: Path, tls: bool) -> None:
    """http:// to a --tls lab, or https:// to a plain one: the CLI says which URL it is."""
    async with running_lab(tmp_path, tls=tls) as lab:
        right = lab.url
        wrong = right.replace("https://", "http://") if tls else right.replace("http", "https")
        cli = Cli.at(wrong, tmp_path / "config")
        result = await cli.run("login", "--username", "alice", "--password", "alice")
    assert result.code == 1
    assert f"serial-console: error: The lab at {wrong} does not speak " in result.err
    assert result.err.rstrip().endswith(f"--tls is at {right}"), result.err
