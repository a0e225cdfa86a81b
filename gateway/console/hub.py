"""ConsoleHub: owns one machine's serial port for the machine's whole life.

``install()`` registers a port hook on the machine, so each time the machine makes a new
serial port (every start from deallocated), and before the guest's CPU runs, the hub opens
it and reads it continuously into the boot log: the boot is logged from its first byte,
whether or not anyone is connected. Guest output never waits for a client.

Every byte read gets the absolute offset the boot log gives it and is pushed to each open
session (``gateway.console.sessions``): one writer, any number of watchers. ``attach``
registers a session and hands back the recent output to replay (or the bytes from a resume
offset), atomically with respect to new output, so a client sees every byte once, in order.

The hub also carries what every door sends beside reading: typed input and the commands
(SysRq, break, NMI, hard reset, graceful restart). Input and the commands that act on the
guest's view of the line (SysRq, break, NMI) go through one queue per VM, in the order they
were submitted. A BREAK (SysRq, break) also waits until the guest has taken every byte typed
before it (``Machine.wait_input_taken``), so it never overtakes typed bytes and the SysRq
key is the key asked for; an NMI follows the bytes onto the port but does not wait for a
guest that may be hung to read them (an NMI is how one debugs a hung guest). A command
taken up by the queue finishes, even if its caller stopped waiting. A writer that is taken
over loses the typing that had not reached the guest yet. Reset and restart do not queue:
a guest that stopped reading its port must never hold up the reset that unsticks it.
Typed bytes wait in the queue (at most ``INPUT_LIMIT``), never in a door. Machine events
reach framed clients as ``power`` events; a deallocate closes the sessions with its reason.

The boot log is appended in the loop (a write into the page cache) and flushed to disk
(fsync) in a worker thread, one flush at a time, never in the loop that serves every
console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.console import texts
from gateway.console.bootlog import BootLog, BootLogError, LogRead
from gateway.console.errors import ConsoleError
from gateway.console.frames import CloseCode
from gateway.console.port import SerialPort, SerialPortError
from gateway.console.sessions import Closing, ConsoleSession, Power, Role, TakenOver
from gateway.machines.base import (
    EventKind,
    Machine,
    MachineError,
    MachineEvent,
    MachineLaunchError,
    PowerState,
    RestartOutcome,
)

log = logging.getLogger("serial_console_lab.console.hub")

DEFAULT_REPLAY = 16 * 1024
COMMAND_WRITE_TIMEOUT = 5.0  # a SysRq key a guest does not take is reported, not waited on
INPUT_TAKEN_TIMEOUT = 5.0  # typed bytes a guest does not take before a SysRq: say so
QUEUE_TIMEOUT = 10.0  # a command behind input a guest does not read: give up, say why
LOG_TROUBLE_EVERY = 60.0  # seconds between two log lines about a failing boot log
INPUT_LIMIT = 1 << 20  # typed bytes waiting for a guest that does not read its port
ORDERED = frozenset({"sysrq", "break", "nmi"})  # in the queue, after the bytes typed before
IN_BAND = frozenset({"sysrq", "break"})  # a BREAK: the guest must have read those bytes too


class SysRqNotSupported(ConsoleError):
    """SysRq to a VM that is not Linux; the message is Azure's."""


COMMANDS = ("sysrq", "nmi", "reset", "restart", "break")


@dataclass(eq=False, slots=True)
class _Typed:
    session: ConsoleSession
    data: bytes


@dataclass(eq=False, slots=True)
class _Ordered:
    name: str
    keys: list[str]
    started: bool = False  # the pump has begun it: it finishes, whoever still waits
    done: asyncio.Future[str] = field(default_factory=lambda: _loop().create_future())


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


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
        self._observe: Callable[[bytes], None] | None = None
        self._observe_input: Callable[[bytes], None] | None = None
        self._closed = False
        self._log_told = -LOG_TROUBLE_EVERY  # when the boot log's trouble was last logged
        self._sessions: set[ConsoleSession] = set()
        self._writer: ConsoleSession | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._exited = ""
        self._queue: deque[_Typed | _Ordered] = deque()
        self._queued_input = 0
        self._queue_wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._pumping = False  # the pump is carrying out an item
        self._flush_task: asyncio.Task[None] | None = None

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
        # A machine that watches its guest's output and input (a QEMU VM saving a boot for
        # warm starts) is handed every byte as it is read, and every byte before it is sent.
        self._observe = getattr(self.machine, "observe_output", None)
        self._observe_input = getattr(self.machine, "observe_input", None)
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
        restored = getattr(self.machine, "restored_output", None)
        if restored:  # a warm start: the saved boot's output reads first, then live bytes
            self._on_data(restored)

    def _on_data(self, chunk: bytes) -> None:
        if self._observe is not None:
            self._observe(chunk)
        offset = self.bootlog.end  # append moves it on, even when the disk fails
        try:
            self.bootlog.append(chunk)
        except BootLogError as err:
            self._log_trouble(err)
        else:
            if self.bootlog.flush_due and self._flush_task is None:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
        for session in list(self._sessions):
            session.push_output(offset, chunk)
            if not session.is_open:
                self._forget(session)

    def _log_trouble(self, err: BootLogError) -> None:
        # Keep reading: the guest must never block on the log. Say it once a minute, not
        # once per write or flush: a full disk would otherwise fill the lab's own log.
        now = time.monotonic()
        if now - self._log_told >= LOG_TROUBLE_EVERY:
            self.log.error("boot log: %s (consoles go on; the bytes not kept are reported "
                           "as lost when the disk has room again)", err)  # fmt: skip
            self._log_told = now

    def flush_log(self) -> None:
        """Put the boot log's unflushed bytes on disk soon, in a worker thread (the lab's
        periodic flush calls this; a flush already under way covers it)."""
        if self.bootlog.closed or self._flush_task is not None:
            return
        if self.bootlog.flush_mark().unflushed:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Put the boot log on disk in a worker thread; the loop goes on serving consoles."""
        try:
            mark = self.bootlog.flush_mark()
            await asyncio.to_thread(self.bootlog.flush_to, mark)
            self.bootlog.flushed(mark)
        except BootLogError as err:
            self._log_trouble(err)
        finally:
            self._flush_task = None

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
        kept = self.bootlog.read(start, 0)  # where the kept bytes begin; nothing read yet
        backlog = LogRead(b"", kept.start, end, kept.rotated)
        session.next_offset = end
        session.replay(self._read_log, kept.start, end)
        displaced = None
        if session.role is Role.WRITER:
            displaced = self._writer
            if displaced is not None and displaced.is_open:
                displaced.push_item(TakenOver(session.user))
                displaced.close(
                    Closing(
                        CloseCode.TAKEN_OVER,
                        f"another user ({session.user}) connected to this console",
                        texts.TAKEOVER,
                    ),
                    drain=True,
                )
                self._forget(displaced)
                self._drop_input(displaced)
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

    def mark(self, label: str) -> None:
        """A marker (``label``: what happened, who did it) in the recording of every open
        session: a power action or a command that came from outside the console."""
        for session in self._sessions:
            if session.recording is not None:
                session.recording.marker(label)

    def _broadcast(self, item: Power) -> None:
        for session in list(self._sessions):
            session.push_item(item)

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
        self._broadcast(Power(state, kind, event.detail))
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

    def _read_log(self, start: int, max_bytes: int) -> LogRead:
        """A page of the boot log for a session's replay (a small read from the page cache)."""
        try:
            return self.bootlog.read(start, max_bytes)
        except BootLogError as err:
            self.log.error("replay stopped: %s", err)
            return LogRead(b"", start, start, False)

    # -- input and commands ---------------------------------------------------------------

    @property
    def queued_input(self) -> int:
        """Typed bytes waiting for the guest to read its port."""
        return self._queued_input

    def submit(self, session: ConsoleSession, data: bytes) -> None:
        """Queue ``data``, typed by ``session``, for the guest; it is written in order, at
        the pace the port takes it, behind everything submitted before. Never waits.

        Raises ConsoleError for a watcher, a closed session, or when ``INPUT_LIMIT`` bytes
        already wait for a guest that does not read its port. A failure to write later is
        told to ``session`` (a ``Notice``), once per run of failures.
        """
        if session.role is not Role.WRITER:
            raise ConsoleError(texts.READ_ONLY)
        if not session.is_open:
            raise ConsoleError("this console session is closed: reconnect to type")
        if len(data) > INPUT_LIMIT:
            raise ConsoleError(
                f"{len(data)} bytes in one piece are more than the console takes at once "
                f"({INPUT_LIMIT} bytes): nothing was sent. Send them in smaller pieces."
            )
        if self._queued_input + len(data) > INPUT_LIMIT:
            raise ConsoleError(
                f"{self._queued_input} typed bytes are still waiting for VM "
                f"'{self.machine.name}' to read its serial port (it is "
                f"{self.machine.power_state}), so these {len(data)} were not sent. "
                "Reset or restart the VM if it hangs."
            )
        recording = session.recording
        if recording is not None and recording.records_input:
            recording.typed(data)
        if self._observe_input is not None:
            self._observe_input(data)
        if not self._queue and not self._pumping and (port := self.port) is not None:
            # The common case, a keystroke with nothing ahead of it: straight to the port,
            # one event-loop turn sooner than through the pump.
            try:
                sent = port.write_now(data)
            except SerialPortError:
                sent = 0  # the pump says what went wrong, in order
            data = data[sent:]
            if not data:
                return
        self._queued_input += len(data)
        self._enqueue(_Typed(session, data))

    def _drop_input(self, session: ConsoleSession) -> None:
        """Forget what ``session`` typed that has not reached the guest yet: a writer taken
        over must not type into the new writer's shell."""
        kept: deque[_Typed | _Ordered] = deque()
        for item in self._queue:
            if isinstance(item, _Typed) and item.session is session:
                self._queued_input -= len(item.data)
            else:
                kept.append(item)
        self._queue = kept

    def _enqueue(self, item: _Typed | _Ordered) -> None:
        if self._closed:
            raise ConsoleError(f"the console of VM '{self.machine.name}' is shut down")
        self._queue.append(item)
        self._queue_wake.set()
        if self._pump_task is None:
            self._pump_task = asyncio.get_running_loop().create_task(
                self._pump(), name=f"{self.machine.name}-hub-input"
            )

    async def _pump(self) -> None:
        """The queue -> the guest, one item at a time, in order."""
        failing: set[ConsoleSession] = set()  # sessions told of a failure, not yet of success
        while True:
            while not self._queue:
                self._queue_wake.clear()
                await self._queue_wake.wait()
            item = self._queue.popleft()
            self._pumping = True
            try:
                if isinstance(item, _Ordered):
                    if not item.done.done():  # not given up on while it waited
                        await self._run_ordered(item)
                    continue
                try:
                    await self._write(item.data)
                except ConsoleError as err:
                    if item.session not in failing:
                        failing.add(item.session)
                        item.session.push_notice("input", str(err))
                else:
                    failing.discard(item.session)
                finally:
                    self._queued_input -= len(item.data)
            finally:
                self._pumping = False

    async def _run_ordered(self, item: _Ordered) -> None:
        item.started = True
        try:
            message = await self._do(item.name, item.keys)
        except Exception as err:  # the command's caller reports it; the pump goes on
            if not item.done.done():
                item.done.set_exception(err)
        else:
            if not item.done.done():
                item.done.set_result(message)

    async def _write(self, data: bytes, timeout: float | None = None) -> None:
        port = self.port
        if port is None:
            raise ConsoleError(
                f"VM '{self.machine.name}' has no serial port now (it is "
                f"{self.machine.power_state}): start it, then type again"
            )
        if self._observe_input is not None:
            self._observe_input(data)
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

    async def command(self, name: str, keys: list[str] | None = None) -> str:
        """Do one of ``COMMANDS`` on the VM; the success text (az's where az has one).

        SysRq, break and NMI take their turn behind the input submitted before them; reset
        and restart act at once. This is the hub's mechanism, not its policy: doors call
        ``gateway.console.policy.CommandPolicy.run``, which checks who may. Raises
        SysRqNotSupported, ConsoleError or MachineError with what went wrong.
        """
        keys = list(keys or [])
        if name not in COMMANDS:
            raise ConsoleError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)}")
        if name == "sysrq" and self.machine.os_type != "linux":
            raise SysRqNotSupported(texts.SYSRQ_LINUX_ONLY)
        if name not in ORDERED:
            return await self._do(name, keys)
        item = _Ordered(name, keys)
        self._enqueue(item)
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                return await asyncio.shield(item.done)
        except TimeoutError:
            if item.started:  # under way: its own steps are bounded; never "not sent", then sent
                return await asyncio.shield(item.done)
            item.done.cancel()  # the pump skips it
            raise ConsoleError(
                f"the {name} was not sent: VM '{self.machine.name}' has not read the "
                f"{self._queued_input} bytes typed before it for {QUEUE_TIMEOUT:g} s (it is "
                f"{self.machine.power_state}). Reset or restart the VM if it hangs."
            ) from None

    async def _do(self, name: str, keys: list[str]) -> str:
        if name in IN_BAND:
            await self._input_taken()
        if name == "sysrq":
            if not keys:
                raise ConsoleError("SysRq needs a key: one of 0-9 or a-z, or a sequence")
            for key in keys:  # one BREAK + key each; the key is typed, the next BREAK waits
                await self.machine.send_break()
                await self._write(key.encode(), COMMAND_WRITE_TIMEOUT)
                await self._input_taken()
            return texts.SUCCESS["sysrq"]
        if name == "nmi":
            await self.machine.inject_nmi()
        elif name == "reset":
            await self.machine.reset()
        elif name == "restart":
            if await self.machine.restart() is not RestartOutcome.GRACEFUL:
                return texts.RESTART_FORCED
        elif name == "break":
            await self.machine.send_break()
        return texts.SUCCESS[name]

    async def _input_taken(self) -> None:
        """Wait until the guest has read every byte written to its port so far."""
        if self.port is None:
            raise ConsoleError(
                f"VM '{self.machine.name}' has no serial port now (it is "
                f"{self.machine.power_state}): start it first"
            )
        try:
            await self.machine.wait_input_taken(INPUT_TAKEN_TIMEOUT)
        except MachineError as err:
            raise ConsoleError(str(err)) from err

    def close_sessions(self) -> None:
        """Close every session (the gateway is going away); the port is still read."""
        going = "the gateway is shutting down"
        self._close_all(Closing(CloseCode.GOING_AWAY, going, "The gateway is shutting down."))

    def close(self) -> None:
        """Close every session, the port, and stop attaching to new ones. Idempotent."""
        self._closed = True
        self.close_sessions()
        for task in (self._events_task, self._pump_task):
            if task is not None:
                task.cancel()
        for item in self._queue:
            if isinstance(item, _Ordered) and not item.done.done():
                item.done.set_exception(ConsoleError("the console is shut down"))
        self._queue.clear()
        if self._port is not None:
            self._port.close()
            self._port = None
