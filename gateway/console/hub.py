"""ConsoleHub: owns one machine's serial port for the machine's whole life.

``install()`` registers a port hook on the machine, so each time the machine makes a new
serial port (every start from deallocated), and before the guest's CPU runs, the hub opens
it and reads it continuously into the boot log: the boot is logged from its first byte,
whether or not anyone is connected. Guest output never waits for a client.

Every byte read gets the absolute offset the boot log gives it and is pushed to each open
session (``gateway.console.sessions``): one writer, any number of watchers. ``attach``
registers a session and hands back the recent output to replay (or the bytes from a resume
offset), atomically with respect to new output, so a client sees every byte once, in order.

The hub also carries the commands beside the byte stream that every door shares: input
(``write``, with backpressure), SysRq, NMI, hard reset and graceful restart. Machine events
reach framed clients as ``power`` events; a deallocate closes the sessions with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.console.bootlog import BootLog, BootLogError, LogRead
from gateway.console.frames import CloseCode, encode_event
from gateway.console.port import SerialPort, SerialPortError
from gateway.console.sessions import TAKEOVER_TEXT, Closing, ConsoleSession, Role
from gateway.console.sysrq import send_sysrq
from gateway.machines.base import (
    EventKind,
    Machine,
    MachineEvent,
    MachineLaunchError,
    PowerState,
    RestartOutcome,
)

log = logging.getLogger("serial_console_lab.console.hub")

DEFAULT_REPLAY = 16 * 1024
COMMAND_WRITE_TIMEOUT = 5.0  # a SysRq key a guest does not take is reported, not waited on


class ConsoleError(Exception):
    """A console operation that cannot be done now; the message says why and what to do."""


class SysRqNotSupported(ConsoleError):
    """SysRq to a VM that is not Linux; the message is Azure's."""


SYSRQ_LINUX_ONLY = "You can only send a SysRq to a Linux VM."
COMMANDS = ("sysrq", "nmi", "reset", "restart", "break")


class ConsoleHub:
    """The gateway's side of one machine's serial port: boot log, sessions, commands.

    Call ``install()`` once, in the event loop, before the machine's first ``start``;
    ``close()`` when the lab ends (it closes the port and every session). The boot log
    stays the caller's to close.
    """

    def __init__(self, machine: Machine, bootlog: BootLog, replay: int = DEFAULT_REPLAY) -> None:
        self.machine = machine
        self.bootlog = bootlog
        self.replay = replay
        self.log = log.getChild(machine.name)
        self._port: SerialPort | None = None
        self._installed = False
        self._closed = False
        self._log_failed = False
        self._sessions: set[ConsoleSession] = set()
        self._writer: ConsoleSession | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._exited = ""

    # -- the port --------------------------------------------------------------------------

    @property
    def port(self) -> SerialPort | None:
        """The open serial port, or None while the machine has none (deallocated)."""
        if self._port is not None and self._port.closed:
            return None
        return self._port

    def install(self) -> None:
        """Attach to the machine: every new serial port is opened and read from here on."""
        if self._installed:
            return
        self.machine.add_port_hook(self._attach)
        self._installed = True
        with contextlib.suppress(RuntimeError):  # no running loop: events are not followed
            self._events_task = asyncio.get_running_loop().create_task(
                self._follow_events(), name=f"{self.machine.name}-hub-events"
            )

    async def _attach(self, path: str) -> None:
        """Port hook: open ``path`` and start logging. MachineLaunchError fails the start."""
        if self._closed:
            return
        if self._port is not None:
            self._port.close()
        self._exited = ""
        try:
            self._port = await SerialPort.open(path, on_data=self._on_data, on_close=self._on_close)
        except SerialPortError as err:
            raise MachineLaunchError(f"VM '{self.machine.name}': {err}") from err
        self.log.debug("reading serial port %s", path)

    def _on_data(self, chunk: bytes) -> None:
        offset = self.bootlog.end  # append moves it on, even when the disk fails
        try:
            self.bootlog.append(chunk)
        except BootLogError as err:
            # Keep reading: the guest must never block on the log. Say it once.
            if not self._log_failed:
                self.log.error("boot log stopped: %s", err)
                self._log_failed = True
        else:
            self._log_failed = False
        for session in list(self._sessions):
            session.push_output(offset, chunk)
            if not session.is_open:
                self._forget(session)

    def _on_close(self, reason: str) -> None:
        self.log.debug("serial port closed: %s", reason)

    # -- sessions --------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def writer(self) -> ConsoleSession | None:
        return self._writer

    @property
    def sessions(self) -> frozenset[ConsoleSession]:
        return frozenset(self._sessions)

    def attach(
        self, session: ConsoleSession, resume_from: int | None = None
    ) -> tuple[LogRead, ConsoleSession | None]:
        """Register ``session`` with its replay queued first; return the replay (what was
        queued: ``start``, ``next``, ``rotated``) and the writer it displaced, if any.

        Without ``resume_from`` the replay is the last ``replay`` bytes; with it, every byte
        from that offset (``rotated`` says if some were already gone). A writer takes over
        from the previous writer, who is closed with Azure's text. Raises ConsoleError once
        the hub is closed.
        """
        if self._closed:
            raise ConsoleError(f"the console of VM '{self.machine.name}' is shut down")
        end = self.bootlog.end
        start = max(end - self.replay, 0) if resume_from is None else min(resume_from, end)
        backlog = self.bootlog.read(start, end - start)
        session.next_offset = end
        session.preload(backlog.start, backlog.contents)
        displaced = None
        if session.role is Role.WRITER:
            displaced = self._writer
            if displaced is not None and displaced.is_open:
                displaced.push_event(encode_event("taken_over", by=session.user))
                displaced.close(
                    Closing(
                        CloseCode.TAKEN_OVER,
                        f"another user ({session.user}) connected to this console",
                        TAKEOVER_TEXT,
                    ),
                    drain=True,
                )
                self._forget(displaced)
            self._writer = session
        self._sessions.add(session)
        self.log.info(
            "%s %s connected (%d sessions)", session.role, session.user, len(self._sessions)
        )
        return backlog, displaced

    def detach(self, session: ConsoleSession) -> None:
        """Forget ``session`` (its client went away). Idempotent."""
        if session in self._sessions:
            self._forget(session)
            self.log.info("%s %s disconnected", session.role, session.user)

    def _forget(self, session: ConsoleSession) -> None:
        self._sessions.discard(session)
        if self._writer is session:
            self._writer = None

    def _broadcast(self, text: str) -> None:
        for session in list(self._sessions):
            session.push_event(text)

    def _close_all(self, closing: Closing) -> None:
        for session in list(self._sessions):
            session.close(closing, drain=True)
            self._forget(session)

    async def _follow_events(self) -> None:
        with self.machine.events() as events:
            async for event in events:
                self._on_machine_event(event)

    def _on_machine_event(self, event: MachineEvent) -> None:
        if event.kind is EventKind.EXITED:
            self._exited = event.detail
        if event.kind not in (EventKind.STATE, EventKind.RESET, EventKind.PANICKED):
            return
        state, kind = event.state.value, event.kind.value
        self._broadcast(encode_event("power", state=state, event=kind, detail=event.detail))
        if event.kind is EventKind.STATE and event.state is PowerState.DEALLOCATED:
            if self._exited:
                closing = Closing(
                    CloseCode.PORT_LOST,
                    "the VM's serial port went away",
                    f"The VM's serial port went away ({self._exited}). Start the VM and reconnect.",
                )
            else:
                closing = Closing(
                    CloseCode.DEALLOCATED,
                    "the VM was deallocated",
                    "The VM was deallocated, so its serial port is gone. Start it and reconnect.",
                )
            self._close_all(closing)

    # -- commands beside the byte stream --------------------------------------------------

    async def write(self, session: ConsoleSession, data: bytes) -> None:
        """Type ``data`` into the guest for ``session``, in order, waiting while the port is
        full. Raises ConsoleError for a watcher, a closed session or a VM without a port."""
        if session.role is not Role.WRITER:
            raise ConsoleError("this console is read-only: connect as a writer to type")
        if not session.is_open:
            raise ConsoleError("this console session is closed: reconnect to type")
        await self._write(data)

    async def _write(self, data: bytes, timeout: float | None = None) -> None:
        port = self.port
        if port is None:
            raise ConsoleError(
                f"VM '{self.machine.name}' has no serial port now (it is "
                f"{self.machine.power_state}): start it, then type again"
            )
        try:
            async with asyncio.timeout(timeout):
                await port.write(data)
        except SerialPortError as err:
            raise ConsoleError(f"the guest's serial port failed: {err}") from err
        except TimeoutError:
            raise ConsoleError(
                f"the guest is not reading its serial port (it is {self.machine.power_state}): "
                "reset or restart the VM"
            ) from None

    async def sysrq(self, keys: list[str]) -> None:
        """Send each key as BREAK + key. Raises SysRqNotSupported for a Windows VM."""
        if self.machine.os_type != "linux":
            raise SysRqNotSupported(SYSRQ_LINUX_ONLY)
        await send_sysrq(self.machine, keys, lambda key: self._write(key, COMMAND_WRITE_TIMEOUT))

    async def command(self, name: str, keys: list[str] | None = None) -> str:
        """Do one of ``COMMANDS`` on the VM, for any door; the success text (az's where az
        has one). Raises ConsoleError or MachineError with what went wrong."""
        if name == "sysrq":
            await self.sysrq(keys or [])
            return "Successfully sent SysRq command"
        if name == "nmi":
            await self.machine.inject_nmi()
            return "NMI sent successfully"
        if name == "reset":
            await self.machine.reset()
            return "Successfully Hard Reset VM"
        if name == "restart":
            if await self.machine.restart() is RestartOutcome.GRACEFUL:
                return "Successfully restarted VM"
            return "Successfully restarted VM (the guest did not shut down: it was hard-reset)"
        if name == "break":
            await self.machine.send_break()
            return "Break sent"
        raise ConsoleError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")

    def close_sessions(self) -> None:
        """Close every session (the gateway is going away); the port is still read."""
        going = "the gateway is shutting down"
        self._close_all(Closing(CloseCode.GOING_AWAY, going, "The gateway is shutting down."))

    def close(self) -> None:
        """Close every session, the port, and stop attaching to new ones. Idempotent."""
        self._closed = True
        self.close_sessions()
        if self._events_task is not None:
            self._events_task.cancel()
        if self._port is not None:
            self._port.close()
            self._port = None
