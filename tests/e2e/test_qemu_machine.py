"""Real QEMU guests under QMP control: what a person at the serial console sees.

The project's guest image under QEMU (TCG here, KVM where it works) with a reader on ttyS0
attached before the CPU runs, exactly as the gateway attaches its hub. Tests that only read
the guest or type at its console share the module's guest (``shared_guest``, at a fresh
login prompt each); those about booting or that change the guest boot one of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.machines import (
    EventKind,
    MachineCommandError,
    MachineError,
    MachineStateError,
    PowerState,
    RestartOutcome,
)
from gateway.machines.qemu import PASSWORD_FILE, QemuMachine
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import BOOT, GUEST_PASSWORD, ON_MODULE_LOOP, Guest, require_qemu
from tests.support.console import PortConsole

pytestmark = pytest.mark.qemu

# The machine contract: what every backend does alike, collected again by the libvirt
# and emulated machines' modules (``from tests.e2e.test_qemu_machine import *``).
__all__ = [
    "test_a_reset_during_a_restart_is_refused",
    "test_graceful_restart_powers_off_then_boots",
    "test_hard_reset_reboots_while_the_reader_stays",
    "test_login_with_the_password_and_run_a_command",
    "test_nmi_prints_the_kernel_nmi_line",
    "test_stop_then_start_boots_again_on_the_same_port",
    "test_sysrq_after_a_flood_of_typed_input_gets_its_own_key",
    "test_sysrq_c_panics_and_reset_brings_it_back",
    "test_sysrq_h_prints_the_kernel_help",
    "test_sysrq_sequence_reisub_syncs_and_reboots",
    "test_wait_input_taken_needs_a_running_guest",
    "test_wrong_password_is_refused",
]


@ON_MODULE_LOOP
async def test_boot_is_seen_from_the_first_byte_to_login(shared_guest: Guest) -> None:
    """The console shows the kernel's very first line, then the guest's login prompt."""
    await shared_guest.console.expect(r"guest-1 login: ", BOOT)
    assert shared_guest.console.data.startswith(b"[    0.000000] Linux version ")
    assert b"Run /init as init process" in shared_guest.console.data
    assert shared_guest.vm.power_state is PowerState.RUNNING
    # The accelerator the machine reports is the one QEMU really runs the guest under.
    kvm: Any = await shared_guest.vm._command("query-kvm")
    assert shared_guest.vm.accel == ("kvm" if kvm["enabled"] else "tcg")


@ON_MODULE_LOOP
async def test_login_with_the_password_and_run_a_command(shared_guest: Guest) -> None:
    """root logs in with the lab password; a command's output appears on the console."""
    console = shared_guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    assert (await console.run("hostname")).strip() == "guest-1"
    assert (await console.run("sysctl kernel.sysrq")).strip() == "kernel.sysrq = 1"
    assert "lab.hostname=guest-1" in await console.run("cat /proc/cmdline")


@ON_MODULE_LOOP
async def test_wrong_password_is_refused(shared_guest: Guest) -> None:
    """A wrong password gets the login program's refusal and a new prompt."""
    console = shared_guest.console
    await console.expect(r"login: ", BOOT)
    await console.send("root\r")
    await console.expect(r"Password: ")
    await console.send("not-the-password\r")
    await console.expect(r"Login incorrect", 30)
    await console.expect(r"login: ", 30)


@ON_MODULE_LOOP
async def test_sysrq_h_prints_the_kernel_help(shared_guest: Guest) -> None:
    """A serial BREAK then `h` makes the kernel print its SysRq help on the console."""
    await shared_guest.console.expect(r"login: ", BOOT)
    await shared_guest.vm.send_break()
    await shared_guest.console.send("h")
    await shared_guest.console.expect(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\) crash\(c\)", 15)


async def test_sysrq_sequence_reisub_syncs_and_reboots(guest: Guest) -> None:
    """R-E-I-S-U-B, one break per key: each step's kernel line, then a fresh boot."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    expected = {
        "r": r"sysrq: Keyboard mode set to system default",
        "e": r"sysrq: Terminate All Tasks",
        "i": r"sysrq: Kill All Tasks",
        "s": r"sysrq: Emergency Sync",
        "u": r"sysrq: Emergency Remount R/O",
    }
    for key, line in expected.items():
        await guest.vm.send_break()
        await console.send(key)
        await console.expect(line, 15)
    with guest.vm.events() as events:
        await guest.vm.send_break()
        await console.send("b")
        # `b` restarts at once: its "sysrq: Resetting" line may never leave the UART.
        await events.wait_for(lambda e: e.kind is EventKind.RESET, scaled(15))
    await console.expect(r"Linux version", BOOT)
    await console.expect(r"login: ", BOOT)


@ON_MODULE_LOOP
async def test_nmi_prints_the_kernel_nmi_line(shared_guest: Guest) -> None:
    """An injected NMI shows the kernel's unknown-NMI line and the guest carries on."""
    console = shared_guest.console
    await console.expect(r"login: ", BOOT)
    await shared_guest.vm.inject_nmi()
    await console.expect(r"Uhhuh\. NMI received for unknown reason", 15)
    await console.login(GUEST_PASSWORD)
    assert (await console.run("echo still-alive")).strip() == "still-alive"


async def test_hard_reset_reboots_while_the_reader_stays(guest: Guest) -> None:
    """A hard reset reboots the guest at once; the open reader watches the new boot."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    port = guest.vm.serial_port
    await guest.vm.reset()
    await console.expect(r"\[    0\.000000\] Linux version", BOOT)
    await console.expect(r"login: ", BOOT)
    assert guest.vm.serial_port == port
    assert len(guest.consoles) == 1
    assert console.closed_reason is None
    assert guest.vm.power_state is PowerState.RUNNING


async def test_graceful_restart_powers_off_then_boots(guest: Guest) -> None:
    """Restart presses the ACPI power button; the guest shuts down cleanly and boots again."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    outcome = await guest.vm.restart(timeout=scaled(30))
    assert outcome is RestartOutcome.GRACEFUL
    await console.expect(r"reboot: Power down", 5)
    await console.expect(r"Linux version", BOOT)
    await console.expect(r"login: ", BOOT)
    history = guest.vm.state_history
    assert history[-4:] == [
        PowerState.STOPPING,
        PowerState.STOPPED,
        PowerState.STARTING,
        PowerState.RUNNING,
    ]


async def test_restart_falls_back_to_a_hard_reset_when_the_guest_ignores_acpi(
    guest: Guest,
) -> None:
    """A guest that ignores the power button is hard-reset after the timeout, and says so."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    await console.run("killall acpid")
    outcome = await guest.vm.restart(timeout=scaled(3))
    assert outcome is RestartOutcome.FORCED
    await console.expect(r"Linux version", BOOT)
    await console.expect(r"login: ", BOOT)
    assert guest.vm.power_state is PowerState.RUNNING


async def test_stop_then_start_boots_again_on_the_same_port(guest: Guest) -> None:
    """Stop powers the guest off (process and port kept); start boots it afresh."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await guest.vm.stop(timeout=scaled(30))
    assert guest.vm.power_state is PowerState.STOPPED
    await console.expect(r"reboot: Power down", 5)
    with pytest.raises(MachineStateError, match="start it first"):
        await guest.vm.reset()
    await guest.vm.start()
    await console.expect(r"Linux version", BOOT)
    await console.expect(r"login: ", BOOT)
    assert len(guest.consoles) == 1


async def test_deallocate_then_start_gives_a_new_port(guest: Guest) -> None:
    """Deallocate ends QEMU (the reader sees the port close); start makes a new port."""
    first = guest.console
    await first.expect(r"login: ", BOOT)
    pid = guest.vm.pid
    await guest.vm.deallocate()
    assert guest.vm.power_state is PowerState.DEALLOCATED
    assert guest.vm.serial_port is None
    assert guest.vm.pid is None
    assert await first.wait_closed() == "the guest closed its serial port"
    assert pid is not None
    assert not _alive(pid)
    await guest.vm.start()
    assert len(guest.consoles) == 2
    second = guest.console
    await second.expect(r"login: ", BOOT)
    assert second.data.startswith(b"[    0.000000] Linux version ")


async def test_sysrq_c_panics_and_reset_brings_it_back(guest: Guest) -> None:
    """SysRq `c` crashes the kernel; the machine reports panicked; a reset boots it again."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    with guest.vm.events() as events:
        await guest.vm.send_break()
        await console.send("c")
        await console.expect(r"Kernel panic - not syncing: sysrq triggered crash", 15)
        await events.wait_for(lambda e: e.kind is EventKind.PANICKED, scaled(15))
    assert guest.vm.power_state is PowerState.PANICKED
    with pytest.raises(MachineStateError, match="reset it first"):
        await guest.vm.restart()  # a crashed kernel answers no power button
    await guest.vm.reset()
    assert guest.vm.power_state is PowerState.RUNNING
    await console.expect(r"Linux version", BOOT)
    await console.expect(r"login: ", BOOT)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@ON_MODULE_LOOP
@pytest.mark.parametrize("logged_in", [False, True], ids=["at-login", "at-shell"])
async def test_sysrq_after_a_flood_of_typed_input_gets_its_own_key(
    shared_guest: Guest, logged_in: bool
) -> None:
    """2,000 typed "5"s then SysRq h: the BREAK waits until the guest has taken every typed
    byte, so the kernel answers "h" with its help, not "5" with "Loglevel set to 5"."""
    console = shared_guest.console
    await console.expect(r"login: ", BOOT)
    if logged_in:
        await console.login(GUEST_PASSWORD)
    await console.send("5" * 2000)
    await shared_guest.vm.wait_input_taken(scaled(30))
    await shared_guest.vm.send_break()
    await console.send("h")
    match = await console.expect(r"sysrq: (HELP|Loglevel set to \d)", 15)
    assert match.group(1) == b"HELP", console.since(match.start())


async def test_wait_input_taken_needs_a_running_guest(guest: Guest) -> None:
    """A stopped guest takes no input: waiting for it is refused at once, with advice."""
    await guest.console.expect(r"login: ", BOOT)
    await guest.vm.stop(timeout=scaled(30))
    with pytest.raises(MachineStateError, match="while it is stopped: start it first"):
        await guest.vm.wait_input_taken(scaled(5))


async def test_a_reset_during_a_restart_is_refused(guest: Guest) -> None:
    """One power operation at a time: a reset while a restart is in progress is refused at
    once with what to do, and the restart completes."""
    await guest.console.expect(r"login: ", BOOT)
    with guest.vm.events() as events:
        restart = asyncio.create_task(guest.vm.restart(timeout=scaled(30)))
        await events.wait_for(lambda e: e.state is PowerState.STOPPING, scaled(10))
        with pytest.raises(MachineStateError, match="while it is restarting: wait until"):
            await guest.vm.reset()
    assert await restart is RestartOutcome.GRACEFUL
    await guest.console.expect(r"login: ", BOOT)


async def test_a_wait_for_power_off_fails_at_once_when_qemu_dies(guest: Guest) -> None:
    """QEMU killed while a stop waits for the guest to power off: the stop fails at once
    with the reason, not after its timeout, and the machine is deallocated."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    await console.run("killall acpid")  # the power button is now ignored
    with guest.vm.events() as events:
        stop = asyncio.create_task(guest.vm.stop(timeout=scaled(120)))
        await events.wait_for(lambda e: e.kind is EventKind.POWERDOWN, scaled(10))
        assert guest.vm.pid is not None
        os.kill(guest.vm.pid, signal.SIGKILL)
        # Killed while the stop waits for the power-off, or (when the kill wins the race)
        # while its monitor command is still answering: either way the stop fails at once.
        with pytest.raises(MachineError, match=r"its QEMU process (exited|may have ended)"):
            async with asyncio.timeout(scaled(10)):
                await stop
        await events.wait_for(lambda e: e.state is PowerState.DEALLOCATED, scaled(10))
    assert PowerState.RUNNING not in guest.vm.state_history[-2:]  # not "running" meanwhile


async def test_a_hung_qemu_fails_a_command_in_time(guest: Guest) -> None:
    """A QEMU that stops answering its monitor fails an NMI after the command timeout, and
    a wait for typed input after its own, each with what to do, instead of leaving the
    caller waiting; once QEMU runs again, both work."""
    await guest.console.expect(r"login: ", BOOT)
    pid = guest.vm.pid
    assert pid is not None
    guest.vm.command_timeout = scaled(1)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(MachineCommandError, match=r"did not answer inject-nmi .* hung"):
            async with asyncio.timeout(scaled(10)):
                await guest.vm.inject_nmi()
        await guest.console.send("x" * 100)  # typed into a guest that reads nothing now
        with pytest.raises(MachineError, match=r"has not read 100 typed byte\(s\) .*reset"):
            await guest.vm.wait_input_taken(scaled(1))
    finally:
        os.kill(pid, signal.SIGCONT)
    await guest.vm.wait_input_taken(scaled(10))
    guest.vm.command_timeout = scaled(10)
    await guest.vm.inject_nmi()  # answered again once QEMU runs
    await guest.console.expect(r"Uhhuh\. NMI received", 15)


async def test_the_password_reaches_the_guest_but_not_argv_nor_the_boot_log(
    tmp_path: Path,
) -> None:
    """A password of the VM's own (not the image's default) logs root in, after the first
    boot, a hard reset, a graceful restart and a deallocate + start; it is never in QEMU's
    argv (what any local user reads in /proc/<pid>/cmdline), on the kernel's command line,
    in the boot log, nor left on disk in the run folder."""
    require_qemu()
    secret = "Fw-cfg-only 7x!"  # a space too: the kernel command line could not carry it
    run_dir = tmp_path / "run"
    vm = QemuMachine("guest-1", run_dir=run_dir, password=secret)
    guest = Guest(vm)

    async def attach(path: str) -> None:
        guest.consoles.append(await PortConsole.open(path))

    def argv() -> bytes:
        assert vm.pid is not None
        return Path(f"/proc/{vm.pid}/cmdline").read_bytes()

    vm.add_port_hook(attach)
    async with vm:
        console = guest.console
        await console.expect(r"Kernel command line: [^\r\n]*lab\.hostname=guest-1", BOOT)
        assert b"-fw_cfg" in argv()
        assert secret.encode() not in argv()
        assert not (run_dir / PASSWORD_FILE).exists()
        await console.expect(r"login: ", BOOT)
        await console.login(secret)
        assert secret not in await console.run("cat /proc/cmdline")
        raw = "/sys/firmware/qemu_fw_cfg/by_name/opt/serial-console-lab/password/raw"
        assert (await console.run(f"stat -c %a {raw}")).strip() == "400"

        await vm.reset()
        await console.expect(r"\[    0\.000000\] Linux version", BOOT)
        await console.expect(r"login: ", BOOT)
        await console.login(secret)

        assert await vm.restart(timeout=scaled(30)) is RestartOutcome.GRACEFUL
        await console.expect(r"reboot: Power down", 5)
        await console.expect(r"login: ", BOOT)
        await console.login(secret)

        await vm.deallocate()
        await vm.start()
        assert len(guest.consoles) == 2
        await guest.console.expect(r"login: ", BOOT)
        await guest.console.login(secret)
        assert secret.encode() not in argv()
        assert not (run_dir / PASSWORD_FILE).exists()
        for each in guest.consoles:
            at = each.data.find(secret.encode())
            assert at < 0, each.data[max(0, at - 400) : at + 100]  # the lines before it
            each.close_port()
    assert not (run_dir / PASSWORD_FILE).exists()
