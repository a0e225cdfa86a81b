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

    # Its operations re-check the machine after every await: deallocate takes over at once.
    _deallocate_waits = False

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

    # The sequence of each operation is MachineBase's; these are the emulator's primitives.

    async def _allocate(self) -> None:
        self._set_state(PowerState.STARTING)
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
            self._let_go("a port hook failed")
            raise
        if self._uart is not uart or self._state is not PowerState.STARTING:
            raise MachineStateError(f"VM '{self.name}' was deallocated while it started")
        self._set_state(PowerState.RUNNING)
        uart.boot()

    async def _power_on(self) -> None:
        uart = self._live()
        self._set_state(PowerState.RUNNING)  # the CPU runs before its first byte, as a reset
        self._publish(EventKind.RESET, "power on")
        uart.boot()

    async def _press_power_button(self) -> None:
        uart = self._live()
        self._publish(EventKind.POWERDOWN)
        uart.power_button()

    async def _halt(self) -> None:
        self._live().halt()

    async def _hard_reset(self, detail: str) -> None:
        uart = self._live()
        self._set_state(PowerState.RUNNING, detail)
        self._publish(EventKind.RESET, detail)
        uart.boot()

    async def _resume_after_panic(self) -> None:
        pass  # the hard reset booted it: nothing was halted

    async def _release(self, timeout: float) -> None:
        self._let_go("deallocated")

    async def _break(self) -> None:
        self._live().send_break()

    async def _nmi(self) -> None:
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

    def _let_go(self, detail: str) -> None:
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
