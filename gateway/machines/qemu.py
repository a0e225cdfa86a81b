"""QemuMachine: a real Linux guest under QEMU, driven through its monitor (QMP).

Launch: ``qemu-system-x86_64 -S -no-shutdown`` with ttyS0 on a PTY chardev (``ser0``), QMP
on a Unix socket in the VM's run folder, and a pvpanic device with ``-action panic=pause``.
The PTY path comes from ``query-chardev``; the port hooks run with it while the CPU is still
held by ``-S``, then ``cont`` lets the guest run, so a reader attached in a hook sees the
boot from its first byte.

Out-of-band actions, all through QMP (the ``qemu.qmp`` library):

=================  ==========================================================================
send_break         ``chardev-send-break`` on ser0 (a PTY cannot carry a BREAK itself)
inject_nmi         ``inject-nmi``
reset (hard)       ``system_reset`` (+ ``cont`` if the CPU was halted): same process, same PTY
restart            ``system_powerdown``; wait for the guest to power off (``-no-shutdown``
                   keeps the process); ``system_reset`` + ``cont``. A hard reset after the
                   timeout, reported as ``RestartOutcome.FORCED``
stop               ``system_powerdown``; wait for the power-off; after the timeout the CPU is
                   halted (``stop``). The process and the PTY stay
start              launch (deallocated) or ``system_reset`` + ``cont`` (stopped)
deallocate         ``quit``, a timed wait, then SIGKILL. The PTY is gone
=================  ==========================================================================

Power state follows QMP events: RESET, POWERDOWN, SHUTDOWN, STOP, RESUME, GUEST_PANICKED.

QEMU never outlives its owner: ``deallocate`` runs on every exit path of ``async with``; the
process gets SIGKILL when the thread that started it dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the owner takes its guests along; and a QEMU left by a dead run (found by the
pid file in the run folder) is killed before a new one starts there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from gateway.machines.accel import select_accel
from gateway.machines.base import (
    EventKind,
    MachineBase,
    MachineCommandError,
    MachineError,
    MachineLaunchError,
    MachineStateError,
    PowerState,
    RestartOutcome,
)
from gateway.machines.process import die_with_parent, wait_pid_exit

QEMU = "qemu-system-x86_64"
IMAGE_DIR = Path(__file__).resolve().parents[2] / "images" / "build" / "linux"
LAUNCH_TIMEOUT = 30.0
SERIAL_ID = "ser0"

_live_processes: dict[int, asyncio.subprocess.Process] = {}


def default_image() -> tuple[Path, Path]:
    """The kernel and initramfs built by ``make images``; raises MachineLaunchError if absent."""
    kernel, initrd = IMAGE_DIR / "vmlinux", IMAGE_DIR / "initramfs.cpio"
    if not (kernel.is_file() and initrd.is_file()):
        raise MachineLaunchError(f"the guest image is not built ({IMAGE_DIR}): run `make images`")
    return kernel, initrd


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live_processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class QemuMachine(MachineBase):
    """A Linux guest under QEMU whose ttyS0 is a PTY. See the module docstring.

    Use as ``async with QemuMachine(...) as vm:`` (started on entry, deallocated on exit) or
    call ``start`` and ``deallocate`` yourself; ``deallocate`` must run before the event loop
    ends. ``run_dir`` holds the QMP socket, the pid file and QEMU's own log (``qemu.log``).
    """

    os_type = "linux"

    def __init__(
        self,
        name: str,
        *,
        run_dir: Path,
        kernel: Path | None = None,
        initrd: Path | None = None,
        memory_mb: int = 128,
        hostname: str | None = None,
        password: str | None = None,
        append: str = "",
        accel: str | None = None,
        qemu: str = QEMU,
    ) -> None:
        super().__init__(name)
        self.run_dir = Path(run_dir)
        self._kernel = kernel
        self._initrd = initrd
        self.memory_mb = memory_mb
        self.hostname = hostname or name
        self._password = password
        self._append = append
        self._accel = accel
        self._qemu = qemu
        self.accel: str | None = None  # the accelerator of the running process
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._port: str | None = None
        self._op_lock = asyncio.Lock()
        self._expect_exit = False

    # -- properties ------------------------------------------------------------------------

    @property
    def serial_port(self) -> str | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0,115200", f"lab.hostname={self.hostname}"]
        if self._password is not None:
            parts.append(f"lab.password={self._password}")
        if self._append:
            parts.append(self._append)
        return " ".join(parts)

    async def __aenter__(self) -> QemuMachine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.deallocate())

    # -- power -----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._op_lock:
            if self._state in (PowerState.RUNNING, PowerState.STARTING):
                return
            if self._state is PowerState.STOPPED:
                with self._rollback():
                    self._set_state(PowerState.STARTING)
                    await self._command("system_reset")
                    await self._command("cont")
                self._set_state(PowerState.RUNNING)
                return
            self._require(PowerState.DEALLOCATED, action="start")
            await self._launch()

    async def stop(self, timeout: float = 30.0) -> None:
        async with self._op_lock:
            if self._state is PowerState.STOPPED:
                return
            self._require(PowerState.RUNNING, PowerState.PANICKED, action="stop")
            if self._state is PowerState.PANICKED:  # a crashed kernel answers no power button
                self._set_state(PowerState.STOPPED, "panicked: halted")
                return  # the CPU is already paused (panic=pause); start resets it
            with self._rollback():
                if not await self._power_down(timeout):
                    await self._command("stop")
                    self._set_state(PowerState.STOPPED, "forced: the guest did not power off")

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        async with self._op_lock:
            self._require(PowerState.RUNNING, action="restart")
            outcome = RestartOutcome.GRACEFUL
            with self._rollback():
                if not await self._power_down(timeout):
                    outcome = RestartOutcome.FORCED
                    self.log.warning("the guest did not power off in %.0f s: hard reset", timeout)
                self._set_state(PowerState.STARTING, outcome.value)
                await self._command("system_reset")
                await self._command("cont")
            self._set_state(PowerState.RUNNING)
            return outcome

    async def reset(self) -> None:
        async with self._op_lock:
            self._require(PowerState.RUNNING, PowerState.PANICKED, action="reset")
            await self._command("system_reset")
            if self._state is PowerState.PANICKED:
                await self._command("cont")
                self._set_state(PowerState.RUNNING, "reset after a panic")

    async def deallocate(self, timeout: float = 10.0) -> None:
        async with self._op_lock:
            if self._proc is None:
                return
            await self._terminate(timeout)

    async def send_break(self) -> None:
        self._require_guest_running("send a break to")
        await self._command("chardev-send-break", {"id": SERIAL_ID})

    async def inject_nmi(self) -> None:
        self._require_guest_running("send an NMI to")
        await self._command("inject-nmi")

    @contextlib.contextmanager
    def _rollback(self) -> Iterator[None]:
        """A monitor command failed mid-transition: go back to the state before it, so the
        machine is not left 'starting' or 'stopping' with nothing going on."""
        before = self._state
        try:
            yield
        except MachineError:
            if self._proc is not None:
                self._set_state(before, "a monitor command failed")
            raise

    def _require_guest_running(self, action: str) -> None:
        self._require(PowerState.RUNNING, PowerState.STARTING, PowerState.STOPPING, action=action)

    async def _power_down(self, timeout: float) -> bool:
        """ACPI power button; True once the guest powered itself off within ``timeout``."""
        with self.events() as events:
            self._set_state(PowerState.STOPPING)
            await self._command("system_powerdown")
            try:
                await events.wait_for(lambda e: e.kind is EventKind.SHUTDOWN, timeout)
            except TimeoutError:
                return False
        return True

    # -- process ---------------------------------------------------------------------------

    async def _launch(self) -> None:
        kernel, initrd = self._kernel, self._initrd
        if kernel is None or initrd is None:
            kernel, initrd = default_image()
        for path in (kernel, initrd):
            if not Path(path).is_file():
                raise MachineLaunchError(f"VM '{self.name}': {path} does not exist")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await kill_stale(self.run_dir)
        self.accel = self._accel or await select_accel(Path(kernel), self._qemu)
        self.log.info("launching under %s", self.accel.upper())
        qmp_path = _socket_path(self.run_dir)
        with contextlib.suppress(FileNotFoundError):
            qmp_path.unlink()
        qmp = QMPClient(self.name)
        await qmp.start_server(str(qmp_path))
        self._set_state(PowerState.STARTING)
        self._expect_exit = False
        log_file = open(self.run_dir / "qemu.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv(Path(kernel), Path(initrd), qmp_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=die_with_parent,
            )
        except OSError as err:
            await qmp.disconnect()
            self._set_state(PowerState.DEALLOCATED, "launch failed")
            raise MachineLaunchError(f"VM '{self.name}': cannot run {self._qemu}: {err}") from err
        finally:
            log_file.close()
        _live_processes[self._proc.pid] = self._proc
        self._qmp = qmp
        try:
            await self._connect_monitor(qmp)
            self._tasks = [
                asyncio.create_task(self._watch_events(qmp), name=f"{self.name}-qmp-events"),
                asyncio.create_task(self._watch_process(self._proc), name=f"{self.name}-proc"),
            ]
            self._port = await self._query_port()
            self.log.info("serial port %s on %s (pid %d)", SERIAL_ID, self._port, self._proc.pid)
            await self._run_port_hooks(self._port)
            await self._command("cont")
        except BaseException:
            await self._terminate(5.0)
            raise
        self._set_state(PowerState.RUNNING)

    def _argv(self, kernel: Path, initrd: Path, qmp_path: Path) -> list[str]:
        cpu = ["-cpu", "host"] if self.accel == "kvm" else []
        return [
            self._qemu,
            "-name", f"{self.name},debug-threads=off",
            "-S", "-no-shutdown", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35", "-accel", self.accel or "tcg", *cpu,
            "-m", str(self.memory_mb), "-smp", "1",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", self.kernel_cmdline,
            "-chardev", f"pty,id={SERIAL_ID}", "-serial", f"chardev:{SERIAL_ID}",
            "-qmp", f"unix:{qmp_path}",
            "-device", "pvpanic-pci", "-action", "panic=pause",
            "-pidfile", str(self.run_dir / "qemu.pid"),
        ]  # fmt: skip

    async def _connect_monitor(self, qmp: QMPClient) -> None:
        assert self._proc is not None
        accept = asyncio.create_task(qmp.accept())
        exited = asyncio.create_task(self._proc.wait())
        done, _ = await asyncio.wait(
            {accept, exited}, timeout=LAUNCH_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if accept in done:
            exited.cancel()
            try:
                accept.result()
            except (QMPError, OSError, EOFError) as err:
                why = f"the monitor failed ({err}): {self._qemu_log()}"
                raise MachineLaunchError(f"VM '{self.name}' did not start: {why}") from err
            return
        accept.cancel()
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError, QMPError):
            await accept
        why = "QEMU exited" if exited in done else f"no monitor after {LAUNCH_TIMEOUT:.0f} s"
        raise MachineLaunchError(f"VM '{self.name}' did not start: {why}: {self._qemu_log()}")

    async def _query_port(self) -> str:
        chardevs: Any = await self._command("query-chardev")
        for chardev in chardevs:
            if chardev.get("label") == SERIAL_ID:
                filename = str(chardev.get("filename", ""))
                if filename.startswith("pty:"):
                    return filename.removeprefix("pty:")
        raise MachineLaunchError(f"VM '{self.name}': QEMU reported no PTY for {SERIAL_ID}")

    async def _terminate(self, timeout: float) -> None:
        """Quit QEMU (then kill it after ``timeout``) and forget the process."""
        proc, qmp = self._proc, self._qmp
        self._expect_exit = True
        if proc is not None and proc.returncode is None and qmp is not None:
            with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await qmp.execute("quit")
        if proc is not None:
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                self.log.warning("QEMU did not quit in %.0f s: killing it", timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            _live_processes.pop(proc.pid, None)
        if qmp is not None:
            # disconnect() re-raises what ended the session: QEMU quitting is expected here.
            with contextlib.suppress(QMPError, OSError, EOFError):
                await qmp.disconnect()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._tasks = []
        self._proc = self._qmp = None
        self._port = None
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "qemu.pid").unlink()
        self._set_state(PowerState.DEALLOCATED)

    async def _watch_process(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._expect_exit or self._proc is not proc:
            return
        self.log.error("QEMU exited unexpectedly (status %s): %s", code, self._qemu_log())
        _live_processes.pop(proc.pid, None)
        self._publish(EventKind.EXITED, f"QEMU exited with status {code}")
        async with self._op_lock:
            if self._proc is proc:
                await self._terminate(1.0)

    async def _watch_events(self, qmp: QMPClient) -> None:
        with qmp.listener() as listener:
            async for event in listener:
                self._on_event(event["event"], event.get("data", {}))

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        self.log.debug("QMP event %s %s", name, data)
        if name == "RESET":
            self._publish(EventKind.RESET, str(data.get("reason", "")))
        elif name == "POWERDOWN":
            self._publish(EventKind.POWERDOWN)
        elif name == "SHUTDOWN":
            self._set_state(PowerState.STOPPED, str(data.get("reason", "")))
            self._publish(EventKind.SHUTDOWN, str(data.get("reason", "")))
        elif name == "GUEST_PANICKED":
            self._set_state(PowerState.PANICKED, str(data.get("action", "")))
            self._publish(EventKind.PANICKED, str(data.get("info", "")))

    async def _command(self, cmd: str, args: dict[str, object] | None = None) -> object:
        qmp = self._qmp
        if qmp is None:
            raise MachineStateError(f"VM '{self.name}' is deallocated: start it first")
        try:
            return await qmp.execute(cmd, args)
        except ExecuteError as err:
            raise MachineCommandError(f"QEMU refused {cmd} for VM '{self.name}': {err}") from err
        except (QMPError, OSError) as err:
            raise MachineCommandError(
                f"VM '{self.name}' is not answering ({cmd}: {err}); its QEMU process may have "
                "ended: deallocate and start it again"
            ) from err

    def _qemu_log(self) -> str:
        try:
            text = (self.run_dir / "qemu.log").read_text(errors="replace").strip()
        except OSError:
            return "no log"
        return text.splitlines()[-1] if text else "no output"


def _socket_path(run_dir: Path) -> Path:
    """The QMP socket in the run folder, or in a short temp folder when the path is too long."""
    path = run_dir / "qmp.sock"
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha256(os.fsencode(run_dir.resolve())).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"serial-console-lab-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    info = short.lstat()
    # A folder someone else made under this name could hand QEMU a socket of theirs.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise MachineLaunchError(
            f"{short} is not a private folder of this user: remove it, or use a shorter "
            "state folder path"
        )
    return short / "qmp.sock"


async def kill_stale(run_dir: Path) -> bool:
    """Kill a QEMU left running in ``run_dir`` by a run that died; True if one was found."""
    pidfile = run_dir / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        pidfile.unlink(missing_ok=True)
        return False
    if not any(arg == os.fsencode(pidfile) for arg in cmdline):
        pidfile.unlink(missing_ok=True)  # the pid was reused by something else
        return False
    logging.getLogger("serial_console_lab.machines").warning(
        "killing QEMU pid %d left by an earlier run in %s", pid, run_dir
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await wait_pid_exit(pid, 10.0)
    pidfile.unlink(missing_ok=True)
    return True
