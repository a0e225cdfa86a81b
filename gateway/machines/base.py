"""The Machine protocol: one VM (or scale-set instance) whose first serial port the gateway serves.

Two kinds stand behind it, and the gateway cannot tell them apart:
``gateway.machines.qemu.QemuMachine`` (a real guest under QEMU) and the emulator's
machines (``emulator.machine``), whose guest is a personality on a PTY.

Power states (Azure's, plus ``panicked``)::

    deallocated --start--> starting --(CPU runs)--> running
    running --stop/restart--> stopping --(guest powered off)--> stopped
    stopped --start--> starting --> running
    running --(guest panic)--> panicked --reset--> running
    any allocated state --deallocate--> deallocated

One operation at a time: ``start``, ``stop``, ``restart`` and ``reset`` are power operations;
one called while another is in progress (a start during a start joins it instead) is
refused at once with ``MachineStateError``
("cannot reset VM 'x' while it is restarting: wait until that has finished"), as Azure
refuses a conflicting operation (409 OperationNotAllowed); it never waits behind it, so it
never acts on a state its caller did not see. ``deallocate`` is the exception: it is always
allowed, fails the operation in progress at once and takes over. ``send_break``,
``inject_nmi`` and ``wait_input_taken`` are not power operations: they only need the guest's
CPU to run. Every wait inside an operation (for the guest to power off, say) is timed, and
fails at once with ``MachineError`` when the machine dies or is deallocated meanwhile.

The serial port exists from ``starting`` on. Before the guest's CPU runs, every port hook
(``add_port_hook``) is awaited with the port's path, so a reader attached there sees the
boot from its first byte. After ``deallocate`` the port is gone; the next ``start`` makes a
new one (a new path) and runs the hooks again.

Exceptions::

    MachineError                 base of everything this package raises
     +-- MachineStateError       the call does not fit the power state (message says what to do)
     +-- MachineLaunchError      the guest could not be started (message carries the cause)
     |    +-- DiskError          a disk VM's image or overlay cannot be used (disk.py)
     +-- MachineCommandError     the monitor refused or failed a command
     +-- AgentError              the guest agent did not answer or refused (agent.py)
     +-- HostError               a libvirt host cannot be reached or used (libvirt_host.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

log = logging.getLogger("serial_console_lab.machines")


class MachineError(Exception):
    """Base of the machines' exceptions; the message is what a user should read."""


class MachineStateError(MachineError):
    """The operation does not fit the machine's power state."""


class MachineLaunchError(MachineError):
    """The guest could not be started."""


class MachineCommandError(MachineError):
    """The machine's monitor refused or failed a command."""


class PowerState(enum.StrEnum):
    """Power states, named as Azure's instance view names them (``PowerState/<value>``)."""

    DEALLOCATED = "deallocated"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    PANICKED = "panicked"

    @property
    def allocated(self) -> bool:
        """True while the machine has a process and a serial port."""
        return self is not PowerState.DEALLOCATED


class EventKind(enum.StrEnum):
    """What happened to a machine. ``state`` events carry every power-state change."""

    STATE = "state"  # power state changed (event.state is the new one)
    PORT = "port"  # a new serial port exists (event.detail is its path)
    RESET = "reset"  # the guest was reset (hard reset or guest reboot); the port stays
    POWERDOWN = "powerdown"  # an ACPI power-button press was sent to the guest
    SHUTDOWN = "shutdown"  # the guest powered itself off
    PANICKED = "panicked"  # the guest reported a panic (pvpanic / bugcheck)
    EXITED = "exited"  # the machine's process ended without being asked to


class RestartOutcome(enum.StrEnum):
    """How a graceful restart ended."""

    GRACEFUL = "graceful"  # the guest shut down when asked, then booted again
    FORCED = "forced"  # the guest did not shut down in time: it was hard-reset instead


@dataclass(frozen=True, slots=True)
class MachineEvent:
    """One thing that happened to a machine, in the order it happened."""

    kind: EventKind
    state: PowerState
    detail: str = ""
    at: float = field(default_factory=time.time)


PortHook = Callable[[str], Awaitable[None]]
T = TypeVar("T")


@runtime_checkable
class Machine(Protocol):
    """A VM whose first serial port (ttyS0 / COM1) is a local PTY.

    Every method is a coroutine to await in the machine's event loop. A method called in a
    power state it does not fit raises ``MachineStateError``; one the monitor fails raises
    ``MachineCommandError``.
    """

    name: str

    @property
    def power_state(self) -> PowerState: ...

    @property
    def serial_port(self) -> str | None:
        """Path of the serial port's PTY while the machine is allocated, else None."""

    @property
    def os_type(self) -> str:
        """``linux`` or ``windows``: what runs on the serial port."""

    def add_port_hook(self, hook: PortHook) -> None:
        """Await ``hook(path)`` each time a new serial port exists, before the CPU runs."""

    def events(self, maxsize: int = 256) -> EventListener:
        """A new listener of this machine's events (see ``EventListener``)."""

    async def start(self) -> None:
        """Power on: launch (deallocated) or boot again (stopped). Idempotent when running;
        a start during a start waits for it to end."""

    async def stop(self, timeout: float = 30.0) -> None:
        """Graceful power-off (ACPI); halted by force after ``timeout``. Keeps the port."""

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        """Graceful restart: ACPI power-off, then boot again; hard reset after ``timeout``."""

    async def reset(self) -> None:
        """Hard reset: the guest reboots at once; same process, same port, sessions stay."""

    async def deallocate(self, timeout: float = 10.0) -> None:
        """Release everything: the process ends, the port is gone. Idempotent."""

    async def send_break(self) -> None:
        """Send a serial BREAK to the guest (the first half of a SysRq)."""

    async def inject_nmi(self) -> None:
        """Inject a non-maskable interrupt."""

    async def wait_input_taken(self, timeout: float) -> None:
        """Return once the guest has taken every byte written to the serial port so far.

        Call it between typed input and a ``send_break``: a BREAK is out of band and would
        otherwise overtake bytes still queued on the way to the guest (then the next typed
        byte, not the intended key, becomes the SysRq key). Raises ``MachineError`` (what to
        do in the message) after ``timeout`` s, or at once when the machine has no port.
        """


class EventListener:
    """A bounded queue of one listener's machine events.

    Use as ``with machine.events() as events: async for event in events: ...`` or call
    ``await events.get()``. A listener that does not keep up loses the oldest events,
    and the loss is logged: a slow listener never blocks the machine.
    """

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[MachineEvent] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: MachineEvent) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("%s: a slow event listener lost an event", self._hub.name)
        self._queue.put_nowait(event)

    async def get(self) -> MachineEvent:
        return await self._queue.get()

    async def wait_for(
        self, predicate: Callable[[MachineEvent], bool], timeout: float
    ) -> MachineEvent:
        """The first event that satisfies ``predicate``; TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._queue.get()
                if predicate(event):
                    return event

    def close(self) -> None:
        self._hub.discard(self)

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[MachineEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MachineEvent]:
        while True:
            yield await self._queue.get()


class EventHub:
    """Fans a machine's events out to its listeners; shared by both machine kinds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: set[EventListener] = set()

    def listen(self, maxsize: int = 256) -> EventListener:
        listener = EventListener(self, maxsize)
        self._listeners.add(listener)
        return listener

    def discard(self, listener: EventListener) -> None:
        self._listeners.discard(listener)

    def publish(self, event: MachineEvent) -> None:
        for listener in list(self._listeners):
            listener.put(event)


class MachineBase:
    """Power-state bookkeeping, events, port hooks, the concurrency contract and the
    sequence of every power operation, common to every machine kind.

    The power operations (``start``, ``stop``, ``restart``, ``reset``, ``deallocate``,
    ``send_break``, ``inject_nmi``) are written here once: which states allow them, the
    state each step enters, the waits and what a failed step leaves. A machine kind
    implements only the primitives they call, each one act on its guest:

    ==========================  ========================================================
    ``_allocate()``             deallocated to running: a new port, the port hooks (before
                                the CPU runs), the guest started (it sets the states)
    ``_power_on()``             stopped to booting: the CPU runs again from its reset
    ``_press_power_button()``   the ACPI power button (the guest decides)
    ``_halt()``                 the CPU stops where it is; the machine stays allocated
    ``_hard_reset(detail)``     the guest boots again at once, on the same port
    ``_resume_after_panic()``   after ``_hard_reset`` of a panicked guest, its CPU runs
    ``_release(timeout)``       everything the machine holds let go (deallocated)
    ``_break()``, ``_nmi()``    a serial BREAK, a non-maskable interrupt
    ==========================  ========================================================

    Subclasses call ``_set_state`` on every transition the guest makes itself (it powered
    off, it panicked) and ``_publish`` for other events, and ``_run_port_hooks`` when a
    new port exists, before the guest's CPU runs. A dead process is handled inside
    ``_taking_over`` (fails the operation in progress at once, then waits for it to let
    go), and every wait on the guest goes through ``_wait`` (timed, and failed at once by
    ``_fail_waits``).
    """

    # Deallocate waits for the operation in progress to let go of the machine. A kind whose
    # operations re-check the machine after every await (the emulator's) takes over at
    # once instead, so that a port hook that never returns cannot hold a deallocate.
    _deallocate_waits: bool = True

    os_type: str = "linux"

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = log.getChild(name)
        self._state = PowerState.DEALLOCATED
        self._events = EventHub(name)
        self._port_hooks: list[PortHook] = []
        self._history: list[PowerState] = [self._state]
        self._operation: str | None = None  # the power operation in progress ("restarting")
        self._operation_done: asyncio.Future[None] | None = None  # resolved when it ends
        self._op_lock = asyncio.Lock()  # held by the operation in progress, or deallocate
        self._waits: set[asyncio.Future[None]] = set()

    @property
    def power_state(self) -> PowerState:
        return self._state

    @property
    def operation(self) -> str | None:
        """The power operation in progress (``starting``, ``restarting``...), or None."""
        return self._operation

    @property
    def state_history(self) -> list[PowerState]:
        """Every power state this object has been in, oldest first."""
        return list(self._history)

    def add_port_hook(self, hook: PortHook) -> None:
        self._port_hooks.append(hook)

    def events(self, maxsize: int = 256) -> EventListener:
        return self._events.listen(maxsize)

    async def wait_input_taken(self, timeout: float) -> None:
        """See ``Machine.wait_input_taken``. A machine kind with a serial port overrides
        this; here there is none to wait on, so MachineStateError at once."""
        raise MachineStateError(
            f"VM '{self.name}' has no serial port to type into (it is {self._state}): "
            "start it first"
        )

    def _set_state(self, state: PowerState, detail: str = "") -> None:
        if state is self._state:
            return
        self.log.info(
            "power state %s -> %s%s", self._state, state, f" ({detail})" if detail else ""
        )
        self._state = state
        self._history.append(state)
        self._publish(EventKind.STATE, detail)

    def _publish(self, kind: EventKind, detail: str = "") -> None:
        self._events.publish(MachineEvent(kind, self._state, detail))

    async def _run_port_hooks(self, path: str) -> None:
        self._publish(EventKind.PORT, path)
        for hook in self._port_hooks:
            await hook(path)

    def _require(self, *states: PowerState, action: str) -> None:
        """Raise MachineStateError unless the machine is in one of ``states``."""
        if self._state not in states:
            raise MachineStateError(_state_advice(self.name, action, self._state))

    def _require_guest_running(self, action: str) -> None:
        """MachineStateError unless the guest's CPU may be running (a break, an NMI, typed
        input need one)."""
        self._require(PowerState.RUNNING, PowerState.STARTING, PowerState.STOPPING, action=action)

    @contextlib.asynccontextmanager
    async def _power_operation(
        self, action: str, doing: str, *states: PowerState
    ) -> AsyncIterator[None]:
        """Run the body as the one power operation in progress.

        Refused at once (MachineStateError) while another operation is in progress, or
        unless the machine is in one of ``states`` once it may go ahead.
        """
        if self._operation is not None:
            raise MachineStateError(
                f"cannot {action} VM '{self.name}' while it is {self._operation}: "
                "wait until that has finished, then try again"
            )
        self._operation = doing
        done = self._operation_done = asyncio.get_running_loop().create_future()
        try:
            async with self._op_lock:  # only a deallocate in progress can hold it here
                self._require(*states, action=action)
                yield
        finally:
            self._operation = self._operation_done = None
            done.set_result(None)

    async def _join_start(self) -> bool:
        """For ``start``: True once the machine runs, joining a start in progress (a second
        start waits for the first, and fails with its state if that one failed)."""
        if self._operation == "starting" and self._operation_done is not None:
            await asyncio.shield(self._operation_done)
            if self._state is not PowerState.RUNNING:
                raise MachineStateError(
                    f"VM '{self.name}' did not start (it is {self._state}): see why in the "
                    "first start's error, then start it again"
                )
            return True
        return self._state is PowerState.RUNNING and self._operation is None

    @contextlib.asynccontextmanager
    async def _taking_over(
        self,
        why: str,
        advice: str,
        kind: type[MachineError] = MachineStateError,
        *,
        wait: bool = True,
    ) -> AsyncIterator[None]:
        """For deallocate and a dead process: fail the operation in progress at once
        (``kind``: "<why> while it was <operation>: <advice>"), then run the body once that
        operation has let go, or at once with ``wait=False`` (for a kind whose operations
        check the state after every await, so that a hook that never returns cannot hold
        a deallocate)."""
        during = f" while it was {self._operation}" if self._operation else ""
        self._fail_waits(kind(f"{why}{during}: {advice}"))
        if not wait:
            yield
            return
        async with self._op_lock:
            yield

    async def _wait(self, waiting: Coroutine[Any, Any, T], timeout: float) -> T:
        """Await ``waiting`` for at most ``timeout`` s (TimeoutError after it), or fail at once
        with the machine's end (see ``_fail_waits``)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(waiting)
        self._waits.add(ended)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            error = ended.exception()
            assert isinstance(error, MachineError)
            raise type(error)(*error.args)
        finally:
            self._waits.discard(ended)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- the power template ----------------------------------------------------------------

    async def start(self) -> None:
        """Power on: a new port and boot when deallocated, boot again when stopped.

        Idempotent when running; a start during a start waits for it and fails with it.
        MachineStateError while another operation is in progress or while panicked;
        MachineLaunchError when the guest cannot be started (the message says why; the
        machine stays deallocated)."""
        if await self._join_start():
            return
        async with self._power_operation(
            "start", "starting", PowerState.DEALLOCATED, PowerState.STOPPED
        ):
            if self._state is PowerState.DEALLOCATED:
                await self._allocate()
                return
            with self._rollback():
                self._set_state(PowerState.STARTING)
                await self._power_on()
            self._set_state(PowerState.RUNNING)

    async def stop(self, timeout: float = 30.0) -> None:
        """Graceful power-off (the ACPI power button), halted by force after ``timeout`` s;
        a panicked guest answers no power button and is halted at once. The port stays.

        Idempotent when stopped; MachineStateError unless running or panicked."""
        if self._state is PowerState.STOPPED:
            return
        async with self._power_operation(
            "stop", "stopping", PowerState.RUNNING, PowerState.PANICKED
        ):
            if self._state is PowerState.PANICKED:
                await self._halt()
                self._set_state(PowerState.STOPPED, "panicked: halted")
                return  # start boots it again
            with self._rollback():
                if not await self._power_down(timeout):
                    await self._halt()
                    self._set_state(PowerState.STOPPED, "forced: the guest did not power off")

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        """ACPI power-off, then boot again (GRACEFUL); a hard reset after ``timeout`` s
        (FORCED). MachineStateError unless running (a panicked guest needs ``reset``)."""
        async with self._power_operation("restart", "restarting", PowerState.RUNNING):
            with self._rollback():
                if await self._power_down(timeout):
                    outcome = RestartOutcome.GRACEFUL
                    self._set_state(PowerState.STARTING, outcome.value)
                    await self._power_on()
                else:
                    outcome = RestartOutcome.FORCED
                    self.log.warning("the guest did not power off in %.0f s: hard reset", timeout)
                    self._set_state(PowerState.STARTING, outcome.value)
                    await self._hard_reset("restart forced: the guest did not power off")
            self._set_state(PowerState.RUNNING)
            return outcome

    async def reset(self) -> None:
        """Hard reset: the guest boots again at once on the same port (its readers keep
        it), a panicked one too. MachineStateError unless running or panicked."""
        async with self._power_operation(
            "reset", "resetting", PowerState.RUNNING, PowerState.PANICKED
        ):
            panicked = self._state is PowerState.PANICKED
            await self._hard_reset("hard reset")
            if panicked:
                await self._resume_after_panic()
                self._set_state(PowerState.RUNNING, "reset after a panic")

    async def deallocate(self, timeout: float = 10.0) -> None:
        """Let go of everything: the guest, its port (readers see it hang up), its process.
        Idempotent; allowed during another operation, which then fails at once."""
        async with self._taking_over(
            f"VM '{self.name}' was deallocated", "start it again", wait=self._deallocate_waits
        ):
            if self._state is not PowerState.DEALLOCATED:
                await self._release(timeout)

    async def send_break(self) -> None:
        """A serial BREAK on the port (Linux: the next key is a SysRq command).
        MachineStateError unless the guest's CPU runs (starting, running or stopping)."""
        self._require_guest_running("send a break to")
        await self._break()

    async def inject_nmi(self) -> None:
        """A non-maskable interrupt; the guest decides what it does (a message, a panic,
        a bugcheck). MachineStateError unless the guest's CPU runs."""
        self._require_guest_running("send an NMI to")
        await self._nmi()

    async def _power_down(self, timeout: float) -> bool:
        """The power button, then True once the guest powered itself off within ``timeout``
        s; False if it did not. Fails at once (MachineError) when the machine dies or is
        deallocated meanwhile."""
        with self.events() as events:
            self._set_state(PowerState.STOPPING)
            await self._press_power_button()
            try:
                await self._wait(
                    events.wait_for(lambda e: e.kind is EventKind.SHUTDOWN, timeout), timeout
                )
            except TimeoutError:
                return False
        return True

    @contextlib.contextmanager
    def _rollback(self) -> Iterator[None]:
        """A step failed mid-transition: go to the state the kind says it is in now
        (``_state_after_failure``), so the machine is not left ``starting`` or ``stopping``
        with nothing going on; the error goes on to the caller."""
        before = self._state
        try:
            yield
        except MachineError:
            after = self._state_after_failure(before)
            if after is not None:
                self._set_state(after, "a step of the operation failed")
            raise

    def _state_after_failure(self, before: PowerState) -> PowerState | None:
        """The state after a failed step of an operation begun in ``before``; None when
        the machine's end is handled elsewhere (deallocated meanwhile, or its process died
        and its watcher deallocates)."""
        return None if self._state is PowerState.DEALLOCATED else before

    # -- the primitives each machine kind implements (see the class docstring) -------------

    async def _allocate(self) -> None:
        raise NotImplementedError

    async def _power_on(self) -> None:
        raise NotImplementedError

    async def _press_power_button(self) -> None:
        raise NotImplementedError

    async def _halt(self) -> None:
        raise NotImplementedError

    async def _hard_reset(self, detail: str) -> None:
        raise NotImplementedError

    async def _resume_after_panic(self) -> None:
        raise NotImplementedError

    async def _release(self, timeout: float) -> None:
        raise NotImplementedError

    async def _break(self) -> None:
        raise NotImplementedError

    async def _nmi(self) -> None:
        raise NotImplementedError

    def _fail_waits(self, error: MachineError) -> None:
        """End every pending ``_wait`` at once with ``error`` (the machine died or went)."""
        for ended in list(self._waits):
            if not ended.done():
                ended.set_exception(error)
                ended.exception()  # retrieved: the waiter raises it itself
        self._waits.clear()


def _state_advice(name: str, action: str, state: PowerState) -> str:
    advice = {
        PowerState.DEALLOCATED: "start it first",
        PowerState.STOPPED: "start it first",
        PowerState.STARTING: "wait until it is running",
        PowerState.STOPPING: "wait until it has stopped",
        PowerState.PANICKED: "reset it first",
        PowerState.RUNNING: "stop it first",
    }[state]
    return f"cannot {action} VM '{name}' while it is {state}: {advice}"


def _pty_limit() -> str:
    try:
        most = int(Path("/proc/sys/kernel/pty/max").read_text())
        used = int(Path("/proc/sys/kernel/pty/nr").read_text())
    except (OSError, ValueError):
        return "the kernel has no PTY left"
    return (
        f"the kernel has no PTY left ({used} in use; its limit is {most}, "
        "/proc/sys/kernel/pty/max): raise it (sysctl -w kernel.pty.max=N) or run fewer VMs"
    )


def limit_message(err: OSError, what: str) -> str:
    """What ran out when ``what`` failed with ``err``, and what to do, for a person."""
    if err.errno in (errno.EMFILE, errno.ENFILE):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        scope = "this process" if err.errno == errno.EMFILE else "the system"
        return (
            f"{what}: {scope} has no file descriptor left (open-file limit {soft}, hard "
            f"limit {hard}): raise it (ulimit -n) or run fewer VMs"
        )
    if err.errno == errno.ENOSPC:
        return f"{what}: {_pty_limit()}"
    return f"{what}: {err.strerror or err}"
