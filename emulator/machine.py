"""EmulatedMachine: a fake VM whose first serial port is a real PTY, behind the Machine protocol.

The gateway cannot tell it from ``QemuMachine``: same power states and transitions, same
events, a PTY path it opens with pyserial, the port hooks awaited before the guest prints
its first byte. The guest is a sans-I/O personality (``emulator.linux.LinuxGuest`` or
``emulator.sac.SacGuest``) bound to the PTY by ``emulator.pty.Uart``, all in the running
event loop: hundreds fit in one process and an idle one costs no CPU.

What the power actions do to the guest::

    start       deallocated: new PTY, port hooks, boot      stopped: boot again (RESET)
    stop        ACPI power button; halted by force after ``timeout`` -> stopped (SHUTDOWN)
    restart     ACPI power-off, then boot (GRACEFUL); hard reset after ``timeout`` (FORCED)
    reset       the guest boots again at once on the same PTY (RESET); panicked -> running
    deallocate  the PTY is closed (the gateway's reader sees EIO); the next start makes a new one

Errors are those of ``gateway.machines.base``: ``MachineStateError`` for a call in a power
state that does not fit it, ``MachineLaunchError`` when no PTY can be made. A bad
constructor argument raises ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

from emulator.guest import GuestEvent, Personality
from emulator.linux import LinuxGuest
from emulator.pty import PtyPair, PtyUnavailable, Uart
from emulator.sac import SacGuest
from emulator.sandbox import UserlandImage
from emulator.userland import UserlandLinuxGuest
from gateway.machines.base import (
    EventKind,
    MachineBase,
    MachineError,
    MachineLaunchError,
    MachineStateError,
    PowerState,
    RestartOutcome,
)

PERSONALITIES = ("linux", "windows")
_CPU_RUNS = (PowerState.STARTING, PowerState.RUNNING, PowerState.STOPPING)


class EmulatedMachine(MachineBase):
    """An emulated VM: ``personality`` is ``linux`` (ttyS0, getty, sh) or ``windows`` (COM1, SAC).

    ``hostname`` defaults to ``name``; ``password`` is the guest's root (or Windows) password;
    ``boot_delay`` is how long the boot takes to reach its login prompt; ``output_rate``
    paces output in bytes/s like a real line (None: as fast as the reader takes it);
    ``nmi_crash_dump`` (Windows) makes an NMI bugcheck, as NMICrashDump does;
    ``userland`` (Linux): the unpacked guest image whose init, getty, login and busybox
    run under the emulated kernel (``emulator.userland``) instead of the emulated shell;
    ``run_dir``: the machine's run folder (what the userland's kernel log is kept in).
    """

    def __init__(
        self,
        name: str,
        personality: str = "linux",
        *,
        hostname: str | None = None,
        password: str = "serial-lab",
        boot_delay: float = 0.0,
        output_rate: int | None = None,
        nmi_crash_dump: bool = True,
        userland: UserlandImage | None = None,
        run_dir: Path | None = None,
    ) -> None:
        if personality not in PERSONALITIES:
            raise ValueError(f"personality must be one of {PERSONALITIES}, not {personality!r}")
        if boot_delay < 0:
            raise ValueError(f"boot_delay must be >= 0 seconds, not {boot_delay}")
        if output_rate is not None and output_rate <= 0:
            raise ValueError(f"output_rate must be a positive number of bytes/s, not {output_rate}")
        super().__init__(name)
        host = hostname or name
        self.guest: Personality
        if personality == "linux" and userland is not None:
            self.guest = UserlandLinuxGuest(
                host, password, userland, boot_delay=boot_delay, run_dir=run_dir
            )
        elif personality == "linux":
            self.guest = LinuxGuest(host, password, boot_delay=boot_delay)
        else:
            self.guest = SacGuest(
                host, password, boot_delay=boot_delay, nmi_crash_dump=nmi_crash_dump
            )
        self.os_type = self.guest.os_type
        self.output_rate = output_rate
        self._uart: Uart | None = None

    def __repr__(self) -> str:
        return f"<EmulatedMachine {self.name} {self.os_type} {self._state}>"

    @property
    def serial_port(self) -> str | None:
        return self._uart.pty.path if self._uart is not None else None

    async def __aenter__(self) -> EmulatedMachine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.deallocate()

    # -- power ----------------------------------------------------------------------------
    # One power operation at a time, as for every machine (``MachineBase``): a call during
    # another is refused with MachineStateError; deallocate takes over at any time.

    async def start(self) -> None:
        """Power on. Deallocated: a new PTY, the port hooks, then the boot. Stopped: boot again.

        Idempotent when running; a start during a start waits for it. MachineStateError
        while another operation is in progress, or while panicked; MachineLaunchError when
        no PTY can be made (the message names the limit that ran out; the machine stays
        deallocated).
        """
        if await self._join_start():
            return
        async with self._power_operation(
            "start", "starting", PowerState.DEALLOCATED, PowerState.STOPPED
        ):
            fresh = self._state is PowerState.DEALLOCATED
            self._set_state(PowerState.STARTING)
            if fresh:
                await self._allocate()
            self._set_state(PowerState.RUNNING)
            if not fresh:
                self._publish(EventKind.RESET, "power on")
            self._live().boot()

    async def _allocate(self) -> None:
        try:
            pty = PtyPair()
        except PtyUnavailable as err:
            self._set_state(PowerState.DEALLOCATED, "no PTY")
            raise MachineLaunchError(f"cannot start VM '{self.name}': {err}") from err
        uart = Uart(
            self.guest,
            pty,
            on_event=self._on_guest_event,
            output_rate=self.output_rate,
            log=self.log,
        )
        self._uart = uart
        try:
            await self._run_port_hooks(pty.path)
        except BaseException:
            self._release("a port hook failed")
            raise
        if self._uart is not uart or self._state is not PowerState.STARTING:
            raise MachineStateError(f"VM '{self.name}' was deallocated while it started")

    async def stop(self, timeout: float = 30.0) -> None:
        """Graceful power-off (ACPI power button); halted by force after ``timeout`` s.

        The PTY stays. Idempotent when stopped; MachineStateError unless running or
        panicked, or while another operation is in progress.
        """
        if self._state is PowerState.STOPPED:
            return
        async with self._power_operation(
            "stop", "stopping", PowerState.RUNNING, PowerState.PANICKED
        ):
            if self._state is PowerState.PANICKED:
                self._force_off("panicked: halted")  # a crashed kernel answers no power button
                return
            if not await self._power_down(timeout):
                self._force_off(f"did not power off within {timeout} s: halted")

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        """ACPI power-off then boot again (GRACEFUL); a hard reset after ``timeout`` s (FORCED).

        MachineStateError unless running (a panicked machine needs ``reset``), or while
        another operation is in progress; at once if the machine is deallocated meanwhile.
        """
        async with self._power_operation("restart", "restarting", PowerState.RUNNING):
            if await self._power_down(timeout):
                self._set_state(PowerState.STARTING)
                self._set_state(PowerState.RUNNING)
                self._publish(EventKind.RESET, "restart")
                self._live().boot()
                return RestartOutcome.GRACEFUL
            self.log.warning("the guest did not power off within %s s: hard reset", timeout)
            self._set_state(PowerState.STARTING, RestartOutcome.FORCED.value)
            self._hard_reset("restart forced: the guest did not power off")
            return RestartOutcome.FORCED

    async def reset(self) -> None:
        """Hard reset: the guest boots again at once on the same PTY; readers keep the port.

        MachineStateError unless running or panicked, or while another operation is in
        progress.
        """
        async with self._power_operation(
            "reset", "resetting", PowerState.RUNNING, PowerState.PANICKED
        ):
            self._hard_reset("hard reset")

    async def deallocate(self, timeout: float = 10.0) -> None:
        """Close the PTY (its readers see EIO) and forget the guest. Idempotent; allowed
        during another operation, which then fails at once."""
        # At once, not after the operation in progress: each step of those re-checks the
        # machine after an await (a port hook that never returns cannot hold this).
        async with self._taking_over(
            f"VM '{self.name}' was deallocated", "start it again", wait=False
        ):
            if self._state is not PowerState.DEALLOCATED:
                self._release("deallocated")

    async def send_break(self) -> None:
        """A serial BREAK (Linux: arms SysRq for the next byte; Windows: ignored).

        MachineStateError unless the guest's CPU runs (starting, running or stopping).
        """
        self._require(*_CPU_RUNS, action="send a break to")
        self._live().send_break()

    async def inject_nmi(self) -> None:
        """A non-maskable interrupt; the guest decides (message, panic, bugcheck).

        MachineStateError unless the guest's CPU runs (starting, running or stopping).
        """
        self._require(*_CPU_RUNS, action="send an NMI to")
        self._live().nmi()

    async def wait_input_taken(self, timeout: float) -> None:
        """Return once the personality has read every byte written to the port so far.

        The guest reads in this process (``Uart``), so this is exact and awaits its reads:
        no polling. MachineStateError unless the guest's CPU runs; MachineError after
        ``timeout`` s (the guest stopped reading: its output is not being read), or at once
        when the machine is deallocated meanwhile.
        """
        self._require(*_CPU_RUNS, action="wait for typed input on")
        uart = self._live()
        try:
            await self._wait(uart.wait_input_taken(), timeout)
        except TimeoutError:
            raise MachineError(
                f"VM '{self.name}' has not read {uart.unread_input()} typed byte(s) on its "
                f"serial port in {timeout:.1f} s: nobody reads its output, so it waits; read "
                "its console, or reset the VM"
            ) from None

    # -- inside ---------------------------------------------------------------------------

    def _live(self) -> Uart:
        if self._uart is None:
            raise MachineStateError(f"VM '{self.name}' has no serial port: start it first")
        return self._uart

    async def _power_down(self, timeout: float) -> bool:
        """Press the power button and wait; True once the guest powered itself off.
        Fails at once (MachineStateError) when the machine is deallocated meanwhile."""
        uart = self._live()
        with self.events() as events:
            self._set_state(PowerState.STOPPING)
            self._publish(EventKind.POWERDOWN)
            uart.power_button()
            try:
                await self._wait(
                    events.wait_for(lambda e: e.kind is EventKind.SHUTDOWN, timeout), timeout
                )
            except TimeoutError:
                return False
        return True

    def _force_off(self, detail: str) -> None:
        self._live().halt()
        self._set_state(PowerState.STOPPED, detail)
        self._publish(EventKind.SHUTDOWN, detail)

    def _hard_reset(self, detail: str) -> None:
        uart = self._live()
        self._set_state(PowerState.RUNNING, detail)
        self._publish(EventKind.RESET, detail)
        uart.boot()

    def _release(self, detail: str) -> None:
        if self._uart is not None:
            self._uart.close()
            self._uart = None
        self.guest.halt()
        self._set_state(PowerState.DEALLOCATED, detail)

    def _on_guest_event(self, event: GuestEvent) -> None:
        """What the guest did, once everything it printed before is in the PTY."""
        if event is GuestEvent.REBOOTED:
            self._publish(EventKind.RESET, "guest reboot")
        elif event is GuestEvent.POWERED_OFF:
            self._set_state(PowerState.STOPPED, "guest powered off")
            self._publish(EventKind.SHUTDOWN, "guest powered off")
        elif event is GuestEvent.PANICKED:
            self._set_state(PowerState.PANICKED, "guest panic")
            self._publish(EventKind.PANICKED, "guest panic")
