"""Emulated machines through their real PTYs, read and typed with the gateway's SerialPort.

The machine contract, written once in ``tests.e2e.test_qemu_machine`` for the QEMU backend
(and run on libvirt by ``tests.e2e.test_libvirt_machine``), runs here on the emulator with
this module's ``guest`` and ``module_guest``: the same power operations, states, events and
console lines, asserted the same way on all three. What follows it is the emulator's own.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pexpect.fdpexpect
import pytest
import pytest_asyncio
import serial

from emulator.machine import EmulatedMachine
from gateway.machines.base import (
    EventKind,
    EventListener,
    Machine,
    MachineError,
    MachineEvent,
    MachineLaunchError,
    MachineStateError,
    PowerState,
    RestartOutcome,
)
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, shared_guest  # noqa: F401 - a fixture
from tests.e2e.test_qemu_machine import *  # noqa: F403 - the machine contract, on the emulator
from tests.support.console import PortConsole

PASSWORD = "serial-lab"


@dataclass
class Lab:
    """A machine with a console attached in its port hook (a new one for each new PTY)."""

    vm: EmulatedMachine
    consoles: list[PortConsole] = field(default_factory=list)

    @property
    def console(self) -> PortConsole:
        return self.consoles[-1]

    async def hook(self, path: str) -> None:
        self.consoles.append(await PortConsole.open(path))


async def _lab(vm: EmulatedMachine, *, start: bool = False) -> AsyncIterator[Lab]:
    """``vm`` with a console attached in its port hook (started with ``start``), then
    deallocated and its consoles closed."""
    lab = Lab(vm)
    vm.add_port_hook(lab.hook)
    try:
        if start:
            await vm.start()
        yield lab
    finally:
        await vm.deallocate()
        for console in lab.consoles:
            if not console.port.closed:
                console.close_port()


@pytest.fixture
async def linux() -> AsyncIterator[Lab]:
    async for lab in _lab(EmulatedMachine("vm-linux")):
        yield lab


@pytest.fixture
async def windows() -> AsyncIterator[Lab]:
    async for lab in _lab(EmulatedMachine("vm-win", "windows")):
        yield lab


@pytest.fixture
async def guest() -> AsyncIterator[Lab]:
    """An emulated guest for the contract's tests that change its power (a ``Lab`` is
    what the contract's ``Guest`` is: a machine and its consoles)."""
    async for booted in _lab(EmulatedMachine("guest-1", password=GUEST_PASSWORD), start=True):
        yield booted


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_guest() -> AsyncIterator[Lab]:
    """The emulated guest the contract's ``shared_guest`` tests share."""
    async for booted in _lab(EmulatedMachine("guest-1", password=GUEST_PASSWORD), start=True):
        yield booted


async def wait_event(events: EventListener, kind: EventKind) -> MachineEvent:
    return await events.wait_for(lambda e: e.kind is kind, scaled(5))


async def test_is_a_machine_and_boot_is_seen_from_its_first_byte(linux: Lab) -> None:
    """A reader attached in the port hook sees the kernel's first line as the first bytes."""
    assert isinstance(linux.vm, Machine)
    assert linux.vm.os_type == "linux"
    assert linux.vm.serial_port is None
    await linux.vm.start()
    assert linux.vm.power_state is PowerState.RUNNING
    assert linux.vm.serial_port == linux.console.port.path
    await linux.console.expect(r"vm-linux login: $", 5)
    assert linux.console.text.startswith("[    0.000000] Linux version 6.1.0-56-cloud-amd64")
    assert linux.vm.state_history == [
        PowerState.DEALLOCATED,
        PowerState.STARTING,
        PowerState.RUNNING,
    ]


async def test_graceful_restart(linux: Lab) -> None:
    """restart: ACPI power-off (``reboot: Power down``), boot again, GRACEFUL, same port."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    with linux.vm.events() as events:
        outcome = await linux.vm.restart(timeout=scaled(5))
        for kind in (EventKind.POWERDOWN, EventKind.SHUTDOWN, EventKind.RESET):
            await wait_event(events, kind)  # in this order
    assert outcome is RestartOutcome.GRACEFUL
    await linux.console.expect(r"(?s)reboot: Power down.*Linux version.*login: $", 5)
    assert linux.vm.state_history[-4:] == [
        PowerState.STOPPING,
        PowerState.STOPPED,
        PowerState.STARTING,
        PowerState.RUNNING,
    ]


async def test_deallocate_closes_the_port_and_start_makes_a_new_one(linux: Lab) -> None:
    """deallocate: the reader sees the port go; start: a new PTY, hooks again, a new boot."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    first = linux.console
    await linux.vm.deallocate()
    assert linux.vm.power_state is PowerState.DEALLOCATED
    assert linux.vm.serial_port is None
    assert "closed" in await first.wait_closed(5)
    await linux.vm.start()
    assert len(linux.consoles) == 2
    await linux.console.expect(r"(?s)^\[    0\.000000\] Linux version.*login: $", 5)
    await linux.console.login(PASSWORD)


async def test_guest_poweroff_command_stops_the_machine(linux: Lab) -> None:
    """``poweroff`` typed in the guest ends in ``stopped`` with a SHUTDOWN event."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    await linux.console.login(PASSWORD)
    with linux.vm.events() as events:
        await linux.console.send("poweroff\r")
        await wait_event(events, EventKind.SHUTDOWN)
    assert linux.vm.power_state is PowerState.STOPPED
    await linux.console.expect(r"reboot: Power down", 5)


async def test_output_rate_paces_the_boot() -> None:
    """With output_rate, the boot arrives no faster than the line's rate in bytes/s."""
    rate = 40_000
    async for lab in _lab(EmulatedMachine("vm-slow", output_rate=rate)):
        started = time.perf_counter()
        await lab.vm.start()
        await lab.console.expect(r"login: $", 10)
        elapsed = time.perf_counter() - started
        assert elapsed >= 0.9 * len(lab.console.data) / rate


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds; the guest gets there within a few turns
    (its callbacks run in this loop: there is no event to await from outside)."""
    try:
        async with asyncio.timeout(scaled(5)):
            while not condition():  # noqa: ASYNC110 - one loop turn at a time, no delay
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def _stall(lab: Lab) -> Callable[[], None]:
    """Stop reading the console and fill the PTY with ``seq`` output until the guest waits
    on it; returns what resumes reading."""
    uart = lab.vm._uart
    assert uart is not None
    fd = lab.console.port._fd
    loop = asyncio.get_running_loop()
    loop.remove_reader(fd)  # the reader falls silent, as a stuck client would
    await lab.console.send("seq 200000\r")
    await _until(lambda: uart._waiting_writable, "the guest waits on a full PTY")
    return lambda: loop.add_reader(fd, lab.console.port._readable)


async def test_guest_waits_while_nobody_reads(linux: Lab) -> None:
    """While the reader stops reading, the guest's output fills the PTY and the guest waits
    there: it writes nothing more (and drops nothing) while it still takes typed input;
    once read, every line is there, in order."""
    await linux.vm.start()
    console = linux.console
    await console.expect(r"login: $", 5)
    await console.login(PASSWORD)
    resume = await _stall(linux)
    uart = linux.vm._uart
    assert uart is not None
    held = uart.bytes_out
    assert held < len("\r\n".join(str(n) for n in range(1, 200001)))
    await console.send("x")  # typed meanwhile: taken, like a tty's input while output waits
    await linux.vm.wait_input_taken(scaled(2))
    # Still waiting on the full PTY: at most the kernel's buffer slack (its flip buffer is
    # pushed asynchronously and may free a little room) went out meanwhile.
    assert uart._waiting_writable
    assert uart.bytes_out - held < 64 * 1024
    assert not uart.idle
    resume()
    await console.expect(r"\r\n199999\r\n200000\r\nroot@vm-linux:~# x$", 10)
    numbers = console.text.split("seq 200000\r\n", 1)[1].split("\r\n")[:-1]
    assert numbers == [str(n) for n in range(1, 200001)]


async def test_wait_input_taken_times_out_while_the_guest_takes_nothing(linux: Lab) -> None:
    """A guest whose echo nobody reads stops taking input past its high-water mark (as a
    UART with flow control would): the wait says so after its timeout, with what to do."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    uart = linux.vm._uart
    assert uart is not None
    fd = linux.console.port._fd
    loop = asyncio.get_running_loop()
    loop.remove_reader(fd)
    typing = asyncio.create_task(linux.console.send(b"a" * 300_000))
    await _until(lambda: not uart._reading, "the guest stopped taking input")
    with pytest.raises(MachineError, match=r"has not read \d+ typed byte\(s\) .* read its"):
        await linux.vm.wait_input_taken(0.2)
    loop.add_reader(fd, linux.console.port._readable)
    await asyncio.wait_for(typing, scaled(10))
    await linux.vm.wait_input_taken(scaled(5))


async def test_one_power_operation_at_a_time(linux: Lab) -> None:
    """A reset or stop during a restart is refused at once, with what to do; the restart
    goes on (here it waits for its power-off messages to be read)."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    await linux.console.login(PASSWORD)
    resume = await _stall(linux)
    with linux.vm.events() as events:
        restart = asyncio.create_task(linux.vm.restart(timeout=scaled(10)))
        await wait_event(events, EventKind.POWERDOWN)
        assert linux.vm.operation == "restarting"
        with pytest.raises(MachineStateError, match="while it is restarting: wait until"):
            await linux.vm.reset()
        with pytest.raises(MachineStateError, match="while it is restarting: wait until"):
            await linux.vm.stop()
        resume()
        assert await restart is RestartOutcome.GRACEFUL
    assert linux.vm.operation is None
    await linux.vm.reset()  # free again


async def test_a_start_during_a_start_returns_once_it_runs() -> None:
    """A second start while the first waits in its port hook returns only once the machine
    runs, as the first does; a reset meanwhile is refused."""
    vm = EmulatedMachine("vm-twice")
    release = asyncio.Event()

    async def slow_hook(path: str) -> None:
        await release.wait()

    vm.add_port_hook(slow_hook)
    try:
        with vm.events() as events:
            first = asyncio.create_task(vm.start())
            await wait_event(events, EventKind.PORT)
            second = asyncio.create_task(vm.start())
            with pytest.raises(MachineStateError, match="while it is starting: wait until"):
                await vm.reset()
            await asyncio.sleep(0)
            assert not second.done()
            release.set()
            await asyncio.wait_for(asyncio.gather(first, second), scaled(5))
        assert vm.power_state is PowerState.RUNNING
    finally:
        await vm.deallocate()


async def test_deallocate_during_a_start_is_not_held_by_its_port_hook() -> None:
    """Deallocate while a port hook still runs: it returns at once (the PTY is closed), and
    the start fails saying so once the hook returns."""
    vm = EmulatedMachine("vm-gone")
    release = asyncio.Event()

    async def slow_hook(path: str) -> None:
        await release.wait()

    vm.add_port_hook(slow_hook)
    with vm.events() as events:
        start = asyncio.create_task(vm.start())
        await wait_event(events, EventKind.PORT)
        await asyncio.wait_for(vm.deallocate(), scaled(1))
    assert vm.power_state is PowerState.DEALLOCATED
    release.set()
    with pytest.raises(MachineStateError, match="deallocated while it started"):
        await asyncio.wait_for(start, scaled(5))
    await vm.start()  # free again
    await vm.deallocate()


async def test_deallocate_during_a_restart_fails_it_at_once(linux: Lab) -> None:
    """Deallocate is always allowed: a restart waiting for the power-off fails at once."""
    await linux.vm.start()
    await linux.console.expect(r"login: $", 5)
    await linux.console.login(PASSWORD)
    await _stall(linux)
    with linux.vm.events() as events:
        restart = asyncio.create_task(linux.vm.restart(timeout=scaled(60)))
        await wait_event(events, EventKind.POWERDOWN)
        await linux.vm.deallocate()
    with pytest.raises(MachineStateError, match="deallocated while it was restarting"):
        async with asyncio.timeout(scaled(1)):
            await restart
    assert linux.vm.power_state is PowerState.DEALLOCATED
    with pytest.raises(MachineStateError, match="start it first"):
        await linux.vm.wait_input_taken(1)


async def test_each_guest_costs_three_descriptors_with_its_reader() -> None:
    """An emulated guest with the gateway's reader on its port holds three descriptors:
    the PTY's master and slave, and the reader's own."""
    machines = [EmulatedMachine(f"vm-fd-{n}") for n in range(20)]
    ports: list[PortConsole] = []

    async def attach(path: str) -> None:
        ports.append(await PortConsole.open(path))

    before = len(os.listdir("/proc/self/fd"))
    try:
        for vm in machines:
            vm.add_port_hook(attach)
            await vm.start()
        assert (len(os.listdir("/proc/self/fd")) - before) / len(machines) == 3
    finally:
        for vm in machines:
            await vm.deallocate()
        for port in ports:
            port.close_port()
    assert len(os.listdir("/proc/self/fd")) == before


async def test_no_descriptor_left_is_a_clear_refusal() -> None:
    """When descriptors run out, start says so and names the limit; the machine stays
    deallocated and starts once there is room again."""
    vm = EmulatedMachine("vm-nofd")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        for _ in range(2):  # the same clear message each time, no PTY path in it
            with pytest.raises(MachineLaunchError) as refused:
                await vm.start()
            assert f"no file descriptor left (open-file limit {lowest_free}" in str(refused.value)
            assert "ulimit -n" in str(refused.value)
            assert "/dev/pts" not in str(refused.value)
            assert vm.power_state is PowerState.DEALLOCATED
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await vm.start()
    await vm.deallocate()


async def test_state_errors_say_what_to_do() -> None:
    """Calls that do not fit the power state raise MachineStateError with advice."""
    vm = EmulatedMachine("vm-idle")
    with pytest.raises(MachineStateError, match="start it first"):
        await vm.send_break()
    with pytest.raises(MachineStateError, match="start it first"):
        await vm.reset()
    await vm.deallocate()  # idempotent
    with pytest.raises(ValueError, match="personality"):
        EmulatedMachine("x", "beos")


async def test_sac_cmd_channel_and_login(windows: Lab) -> None:
    """Windows: SAC banner, ``cmd``, ``ch -si 1``, credentials, then a Command Prompt."""
    assert windows.vm.os_type == "windows"
    await windows.vm.start()
    console = windows.console
    await console.expect(r"Computer is booting, SAC started and initialized\.", 5)
    await console.expect(r"SAC>$", 5)
    await console.send("cmd\r")
    await console.expect(r"Channel: Cmd0001\r\nSAC>$", 5)
    await console.send("ch -si 1\r")
    await console.expect(r"Use any other key to view this channel\.\r\n$", 5)
    await console.send("\r")
    await console.expect(r"Username: $", 5)
    await console.send("azureuser\r")
    await console.expect(r"Domain  : $", 5)
    await console.send("\r")
    await console.expect(r"Password: $", 5)
    await console.send(f"{PASSWORD}\r")
    await console.expect(r"C:\\Windows\\system32>$", 5)
    await console.send("hostname\r")
    await console.expect(r"VM-WIN\r\n", 5)
    await console.send(b"\x1b\t0")
    await console.expect(r"SAC>$", 5)


async def test_sac_break_is_ignored_and_nmi_bugchecks(windows: Lab) -> None:
    """Windows accepts a break and does nothing; an NMI bugchecks and the VM is panicked."""
    await windows.vm.start()
    await windows.console.expect(r"SAC>$", 5)
    await windows.vm.send_break()
    with windows.vm.events() as events:
        await windows.vm.inject_nmi()
        await wait_event(events, EventKind.PANICKED)
    await windows.console.expect(r"NMI_HARDWARE_FAILURE", 5)
    await windows.vm.reset()
    await windows.console.expect(r"SAC started and initialized", 5)


async def test_pexpect_drives_an_emulated_guest_like_a_serial_terminal() -> None:
    """pexpect (the suites' usual expect tool) on the guest's PTY, opened with pyserial as
    the gateway opens it: boot, log in, run a command, wait for the prompt."""
    vm = EmulatedMachine("vm-pexpect", hostname="pex-1")
    ports: list[serial.Serial] = []

    async def attach(path: str) -> None:
        ports.append(serial.Serial(path, baudrate=115200, timeout=0))

    vm.add_port_hook(attach)
    await vm.start()
    try:
        child = pexpect.fdpexpect.fdspawn(ports[0].fileno(), timeout=scaled(10))
        await child.expect(r"pex-1 login: ", async_=True)
        child.send("root\r")
        await child.expect(r"Password: ", async_=True)
        child.send(f"{PASSWORD}\r")
        await child.expect(r"# ", async_=True)
        child.send("uname -n\r")
        await child.expect(r"\r\npex-1\r\n", async_=True)
        await child.expect(r"# ", async_=True)
    finally:
        await vm.deallocate()
        for port in ports:
            port.close()
