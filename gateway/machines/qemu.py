"""QemuMachine: a real Linux guest under QEMU, driven through its monitor (QMP).

Launch: ``qemu-system-x86_64 -S -no-shutdown`` with ttyS0 on a PTY (``ser0``), QMP on a Unix
socket in the VM's run folder, and a pvpanic device with ``-action panic=none``. The port
hooks run with the PTY's path while the CPU is still held by ``-S``, then ``cont`` lets the
guest run, so a reader attached in a hook sees the boot from its first byte.

The machine makes the PTY itself and hands QEMU its master as the ``stdio`` chardev's
descriptors (``-chardev stdio``, QEMU's standard input and output). QEMU's own ``pty``
chardev would do the same with one flaw: it reads nothing until it has seen the PTY's other
side open, and it looks once a second (``pty_chr_timer``), so what is typed in the first
second after a launch waits for that look; a warm start, whose guest is up 0.4 s after the
launch, would wait on it. On the stdio chardev QEMU reads at once, and the machine holds
the PTY's path, so no monitor query is needed to find it. The machine keeps one descriptor
of the PTY's side open while QEMU runs (with no side open, QEMU's reads would fail and be
retried without end, a core at 100%), and its copy of the master, which counts the typed
bytes QEMU has not read (below); both close when QEMU goes. The ``serial`` chardev on a PTY
would not do: it answers the guest's modem-status reads from ``TIOCMGET``, which a PTY does
not support, so the guest would see carrier and CTS drop.

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

Power state follows the machine's own commands and the guest's QMP events SHUTDOWN (the
guest powered off: stopped) and GUEST_PANICKED (panicked); RESET and POWERDOWN are passed
on as events. STOP and RESUME are deliberately not followed: they only echo a pause or a
``cont`` that already has a meaning of its own (our ``stop``/``cont``, the pause after a
SHUTDOWN under ``-no-shutdown``, and the halt after a panic, whose STOP would turn
``panicked`` into ``stopped``, hiding the crash).

After a panic (GUEST_PANICKED) the guest runs on until its console has been quiet for
``PANIC_QUIET`` s, then its CPU is halted (QMP ``stop``). QEMU's own ``panic=pause`` would
halt it inside the kernel's panic notifiers, before the kernel writes out its panic: a
panic in NMI context (``Send NMI`` with ``kernel.panic_on_unrecovered_nmi``) defers its
console output, and the boot log would show nothing of it. A panicked kernel only spins,
so it is halted rather than left to burn a core under TCG.

One power operation at a time (``MachineBase``); every monitor command is timed
(``command_timeout``): a hung QEMU gives ``MachineCommandError``, not a wait without end.
When QEMU dies, a wait in progress (a restart waiting for the power-off) fails at once.

Typed input and BREAK order (``wait_input_taken``): typed bytes reach the guest in two
steps, and a BREAK sent by ``chardev-send-break`` overtakes both, so the gateway waits for
both to be empty before a BREAK:

1. The PTY. QEMU reads the PTY's master, so the bytes the gateway wrote and QEMU has not
   read yet are counted on the master: the machine reads its copy's unread count
   (``FIONREAD``), after a ``poll`` with no timeout, which makes the kernel push bytes
   still in the tty's flip buffer (``FIONREAD`` alone lags a write by up to a
   millisecond). No event says "QEMU read", so this is a short poll with back-off.
2. The 16550's receive FIFO (QEMU ``hw/char/serial.c``). QEMU reads from the PTY only
   what the FIFO has room for below the guest's trigger level (``serial_can_receive``:
   at most 14 bytes, 8 as Linux sets it), so once the PTY is empty at most that many
   typed bytes wait in the FIFO. A BREAK (``serial_receive_break``) puts a NUL at the
   FIFO's tail but sets the line-status BI flag at once, so Linux's 8250 driver takes the
   FIFO's first byte as the break and the next typed byte as the SysRq key. Nothing
   outside QEMU shows the FIFO without side effects (reading LSR through the monitor
   clears BI), but its drain is bounded: the guest is interrupted at once at the trigger
   level, or after four character times below it (``fifo_timeout_int``), and reads the
   FIFO empty in that one interrupt. So after the PTY is empty the machine waits
   ``FIFO_DRAIN`` (50 ms, over a hundred times that bound) while the CPU runs.

The guest's root password (``password``) never appears in QEMU's command line nor on the
kernel's (which the kernel prints at boot, into the boot log every console replays): it
goes to QEMU as a fw_cfg file, ``-fw_cfg name=opt/serial-console-lab/password,file=PATH``,
and the image's init reads it from the guest's ``qemu_fw_cfg`` sysfs entry (root only).
``PATH`` is ``guest-password`` in the run folder, written mode 0600 just before the launch
and removed as soon as the monitor answers (QEMU has read it into memory by then), so a
local user sees only a path in ``/proc/<pid>/cmdline``, and the secret spends well under a
second on disk, in a file only the lab's user can read. Why fw_cfg rather than an initrd
overlay (the image's initramfs plus a small cpio, made per VM): the same protection on the
host, but no copy of the initramfs per launch, and nothing left in the guest's root file
system; QEMU keeps fw_cfg in memory, so a hard reset or a restart (``system_reset``, same
process) hands the guest the same password again, and a start after a deallocate writes
the file afresh.

QEMU never outlives its owner: ``deallocate`` runs on every exit path of ``async with``; the
process gets SIGKILL when the thread that started it dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the owner takes its guests along; and a QEMU left by a dead run (found by the
pid file in the run folder) is killed before a new one starts there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import select
import shlex
import shutil
import signal
import stat
import struct
import tempfile
import termios
import time
import tty
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from gateway.machines import provision
from gateway.machines.accel import select_accel
from gateway.machines.agent import AgentCommands, GuestAgent
from gateway.machines.base import (
    EventKind,
    MachineCommandError,
    MachineError,
    MachineLaunchError,
    MachineStateError,
    PowerState,
)
from gateway.machines.disk import (
    DiskMachine,
    DiskSet,
    DiskSpec,
    Swtpm,
    forwarded_port,
    network_args,
)
from gateway.machines.image import IMAGE_DIR, INITRD, KERNEL, not_built
from gateway.machines.process import die_with_parent, wait_pid_exit
from gateway.machines.provision import Fabric, Provisioning
from gateway.machines.warm import (
    SavedState,
    TypingPort,
    WarmStarts,
    WarmStore,
    packer_of,
    state_key,
)

QEMU = "qemu-system-x86_64"
LAUNCH_TIMEOUT = 30.0
COMMAND_TIMEOUT = 10.0  # a monitor command QEMU does not answer in this time fails
SERIAL_ID = "ser0"
PASSWORD_FW_CFG = "opt/serial-console-lab/password"  # the image's init reads this entry
HOSTNAME_FW_CFG = "opt/serial-console-lab/hostname"  # disk VMs' lab-identity reads this one
HOSTNAME_FILE = "guest-hostname"  # in the run folder: the host name for fw_cfg
PROVISIONED_BY_FW_CFG = "opt/serial-console-lab/provisioned-by"  # "azure": cloud-init's VM
PROVISIONED_BY_FILE = "provisioned-by"
PROVISIONING_MEDIA = "provisioning.iso"  # in the run folder, while the VM is not provisioned
PROVISIONING_CD = "ovf-cd"  # the CD drive's QEMU id, unplugged once the guest is ready
IDENTITY_SIZE = 256  # bytes of each fw_cfg identity entry of a disk VM (see _identity_bytes)
DISK_TB_SIZE_MB = 64  # TCG's translation cache for a disk VM (QEMU's default is 1 GiB)
PANIC_QUIET = 1.0  # a panicked guest's console quiet this long: its panic is written out
PANIC_HALT_MAX = 15.0  # a panicked guest is halted after this long, quiet or not
PASSWORD_FILE = "guest-password"  # in the run folder, only while QEMU starts
FIFO_DRAIN = 0.05  # after the PTY is empty: the guest has emptied the 16550's FIFO
_POLL_FIRST, _POLL_MAX = 0.001, 0.02  # back-off while QEMU reads the PTY
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture

_live_processes: dict[int, asyncio.subprocess.Process] = {}


def default_image() -> tuple[Path, Path]:
    """The kernel and initramfs built by ``make images`` (see ``gateway.machines.image``);
    raises MachineLaunchError if absent."""
    kernel, initrd = IMAGE_DIR / KERNEL, IMAGE_DIR / INITRD
    if not (kernel.is_file() and initrd.is_file()):
        raise MachineLaunchError(not_built(IMAGE_DIR))
    return kernel, initrd


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live_processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class QemuMachine(WarmStarts, DiskMachine):
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
        cpus: int = 1,
        hostname: str | None = None,
        password: str | None = None,
        append: str = "",
        accel: str | None = None,
        qemu: str = QEMU,
        command_timeout: float = COMMAND_TIMEOUT,
        disk: DiskSpec | None = None,
        disk_dir: Path | None = None,
        warm: WarmStore | None = None,
        provisioning: Provisioning | None = None,
    ) -> None:
        super().__init__(name)
        self.run_dir = Path(run_dir)
        self.disk = disk
        self.disks = DiskSet(disk, Path(disk_dir or self.run_dir / "disks")) if disk else None
        if provisioning is not None and self.disks is None:
            raise ValueError("only a disk VM is provisioned (it needs cloud-init on a disk)")
        self.provisioning = provisioning
        if provisioning is not None and self.disks is not None:
            provisioning.attach(self.disks.folder)
        self._fabric: Fabric | None = None
        self._swtpm: Swtpm | None = None
        self._ssh_port: int | None = None
        self._init_warm(warm)
        self._last_output = 0.0  # when the guest last wrote to its serial port (monotonic)
        self._halt_task: asyncio.Task[None] | None = None
        self._kernel = kernel
        self._initrd = initrd
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.hostname = hostname or name
        self._password = password
        self._append = append
        self._accel = accel
        self._qemu = qemu
        self.command_timeout = command_timeout
        self.accel: str | None = None  # the accelerator of the running process
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._port: str | None = None
        self._pty: _SerialPty | None = None
        self._expect_exit = False
        self._qmp_path: Path | None = None  # the monitor's socket while QEMU runs

    # -- properties ------------------------------------------------------------------------

    @property
    def serial_port(self) -> str | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def kernel_cmdline(self) -> str:
        """The kernel's command line: no secret, the kernel prints it at boot.
        ``no_timer_check``: under TCG on a busy host the kernel's check of its timer
        interrupt can time out, and it panics ("IO-APIC + timer doesn't work!")."""
        parts = ["console=ttyS0,115200", "no_timer_check", f"lab.hostname={self.hostname}"]
        if self._append:
            parts.append(self._append)
        return " ".join(parts)

    async def __aenter__(self) -> QemuMachine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.deallocate())

    # -- power -----------------------------------------------------------------------------

    # The sequence of each operation is MachineBase's; these are QEMU's primitives.

    async def _allocate(self) -> None:
        await self._launch()

    async def _power_on(self) -> None:
        # powered off, QEMU holds the machine paused (-no-shutdown): reset it and run it
        await self._command("system_reset")
        await self._command("cont")

    async def _press_power_button(self) -> None:
        await self._command("system_powerdown")  # QEMU's POWERDOWN event publishes it

    async def _halt(self) -> None:
        if self._halt_task is not None and self._halt_task is not asyncio.current_task():
            self._halt_task.cancel()
        await self._command("stop")

    async def _hard_reset(self, detail: str) -> None:
        await self._command("system_reset")  # QEMU's RESET event publishes it

    async def _resume_after_panic(self) -> None:
        await self._command("cont")  # a panicked guest may have been halted

    async def _release(self, timeout: float) -> None:
        if self._proc is not None:
            await self._terminate(timeout)

    async def _break(self) -> None:
        await self._command("chardev-send-break", {"id": SERIAL_ID})

    async def _nmi(self) -> None:
        await self._command("inject-nmi")

    def _state_after_failure(self, before: PowerState) -> PowerState | None:
        alive = self._proc is not None and _alive(self._proc.pid)
        return before if alive else None  # QEMU is gone: its watcher deallocates

    async def wait_input_taken(self, timeout: float) -> None:
        """Return once the guest has read every byte written to the serial port so far: the
        PTY is empty, then ``FIFO_DRAIN`` for the 16550's FIFO (see the module docstring).

        MachineStateError unless the guest's CPU runs (a stopped guest takes nothing);
        MachineError after ``timeout`` s (the guest is not reading: hung, or its input
        queue is full), or at once when the machine dies meanwhile.
        """
        self._require_guest_running("wait for typed input on")
        probe = self._pty
        if probe is None:
            raise MachineStateError(f"VM '{self.name}' has no serial port now: start it")
        try:
            await self._wait(self._input_drained(probe), timeout)
        except TimeoutError:
            left = probe.unread() if not probe.closed else 0
            raise MachineError(
                f"VM '{self.name}' has not read {left} typed byte(s) on its serial port in "
                f"{timeout:.1f} s (it is {self._state}): the guest is not reading its console; "
                "wait for it, or reset or restart the VM"
            ) from None

    async def _input_drained(self, probe: _SerialPty) -> None:
        pause = _POLL_FIRST
        while not probe.closed and probe.unread():
            await asyncio.sleep(pause)  # nothing signals a read by QEMU: poll, backing off
            pause = min(pause * 2, _POLL_MAX)
        await asyncio.sleep(FIFO_DRAIN)
        if probe.closed:
            raise MachineStateError(f"VM '{self.name}' lost its serial port: start it again")

    # -- process ---------------------------------------------------------------------------

    async def _launch(self) -> None:
        kernel, initrd = self._kernel, self._initrd
        if self.disks is None:
            if kernel is None or initrd is None:
                kernel, initrd = default_image()
            for path in (kernel, initrd):
                if not Path(path).is_file():
                    raise MachineLaunchError(f"VM '{self.name}': {path} does not exist")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await kill_stale(self.run_dir)
        self.accel = self._accel or await _accel_for(kernel, self._qemu)
        qmp_path = self._qmp_path = _socket_path(self.run_dir)
        placeholder = self.run_dir / PASSWORD_FILE if self._password is not None else None
        await self._start_fabric()
        if self.provisioning is not None:
            key = None  # a provisioned VM's first boot is its provisioning: never warm
        elif self.disks is not None:
            key = self._warm_key(self._disk_argv(qmp_path, placeholder, None), qmp_path)
        else:
            argv = self._argv(Path(str(kernel)), Path(str(initrd)), qmp_path, placeholder)
            key = self._warm_key(argv, qmp_path)
        saved = self._warm_saved(key)
        await self._restore_disks(saved)
        self.log.info("launching under %s%s", self.accel.upper(), ", warm" if saved else "")
        with contextlib.suppress(FileNotFoundError):
            qmp_path.unlink()
        password_file = self._write_password_file()
        qmp = QMPClient(self.name)
        try:
            await qmp.start_server(str(qmp_path))
        except BaseException:
            self._remove_password_file()
            await self._stop_fabric()
            raise
        self._set_state(PowerState.STARTING)
        self._expect_exit = False
        log_file = open(self.run_dir / "qemu.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            tpm_socket = await self._start_tpm()
            if self.disks is not None:
                argv = self._disk_argv(qmp_path, password_file, tpm_socket)
            else:
                argv = self._argv(Path(str(kernel)), Path(str(initrd)), qmp_path, password_file)
            if saved is not None:
                argv += self._incoming(saved)
            self._pty = _SerialPty()
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=self._pty.master,
                stdout=self._pty.master,
                stderr=log_file,
                preexec_fn=die_with_parent,
            )
        except (OSError, MachineLaunchError) as err:
            if self._pty is not None:
                self._pty.close()
                self._pty = None
            self._remove_password_file()
            await qmp.disconnect()
            await self._stop_tpm()
            await self._stop_fabric()
            self._set_state(PowerState.DEALLOCATED, "launch failed")
            if isinstance(err, MachineLaunchError):
                raise MachineLaunchError(f"VM '{self.name}': {err}") from err
            raise MachineLaunchError(f"VM '{self.name}': cannot run {self._qemu}: {err}") from err
        finally:
            log_file.close()
        _live_processes[self._proc.pid] = self._proc
        self._qmp = qmp
        if self.provisioning is not None:
            self.provisioning.launched()
        try:
            try:
                await self._connect_monitor(qmp)
            finally:
                self._remove_password_file()  # QEMU read it before its monitor answered
            if saved is not None:
                await self._load_state(saved)
            self._tasks = [
                asyncio.create_task(self._watch_events(qmp), name=f"{self.name}-qmp-events"),
                asyncio.create_task(self._watch_process(self._proc), name=f"{self.name}-proc"),
            ]
            assert self._pty is not None
            self._port = self._pty.path
            if self.disks is not None:
                self._ssh_port = await self._query_ssh_port()
            self.log.info("serial port %s on %s (pid %d)", SERIAL_ID, self._port, self._proc.pid)
            try:
                await self._run_port_hooks(self._port)
            finally:
                self.restored_output = None
            self._watch_boot(saved, key)
            await self._command("cont")
        except BaseException:
            await self._terminate(5.0)
            raise
        self._set_state(PowerState.RUNNING)
        await self._after_start(saved, key)

    def _write_password_file(self) -> Path | None:
        """The password in a fresh file of mode 0600 in the run folder (None without one).

        Created with ``O_EXCL`` after removing any old one, so a file or link planted under
        that name is never written through, and the mode holds whatever the umask."""
        self._remove_password_file()
        if self._password is None:
            return None
        path = self.run_dir / PASSWORD_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(self._identity_bytes(self._password))
        except OSError as err:
            self._remove_password_file()  # a full disk may leave it half written
            raise MachineLaunchError(
                f"VM '{self.name}': cannot write the guest password for QEMU in {self.run_dir}: "
                f"{err.strerror or err}; check that folder's space and permissions"
            ) from err
        return path

    def _identity_bytes(self, value: str) -> bytes:
        """A disk VM's fw_cfg identity entry: the value, a newline, and NULs to a fixed size.
        The guest's fw_cfg driver keeps each entry's size from its boot; a VM restored from
        another's saved boot reads the entries of its own QEMU with those sizes, so every
        VM's entries have the same size, and ``lab-identity`` reads up to the newline."""
        data = value.encode()
        if self.disks is None:
            return data
        if len(data) >= IDENTITY_SIZE or b"\n" in data:
            raise MachineLaunchError(
                f"VM '{self.name}': a password or host name of a disk VM must be one line of "
                f"fewer than {IDENTITY_SIZE} bytes"
            )
        return (data + b"\n").ljust(IDENTITY_SIZE, b"\0")

    def _write_hostname_file(self) -> Path:
        path = self.run_dir / HOSTNAME_FILE
        path.write_bytes(self._identity_bytes(self.hostname))
        return path

    def _remove_password_file(self) -> None:
        path = self.run_dir / PASSWORD_FILE
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            self.log.warning("cannot remove the guest password file %s: %s", path, err)

    def _argv(
        self, kernel: Path, initrd: Path, qmp_path: Path, password_file: Path | None = None
    ) -> list[str]:
        cpu = ["-cpu", "host"] if self.accel == "kvm" else []
        secret: list[str] = []
        if password_file is not None:  # QEMU's option syntax: a comma in a value is doubled
            path = str(password_file).replace(",", ",,")
            secret = ["-fw_cfg", f"name={PASSWORD_FW_CFG},file={path}"]
        return [
            self._qemu,
            "-name", f"{self.name},debug-threads=off",
            "-S", "-no-shutdown", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35", "-accel", self.accel or "tcg", *cpu,
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", self.kernel_cmdline,
            *secret,
            "-chardev", f"stdio,id={SERIAL_ID},signal=off", "-serial", f"chardev:{SERIAL_ID}",
            "-qmp", f"unix:{qmp_path}",
            "-device", "pvpanic-pci", "-action", "panic=none",
            "-pidfile", str(self.run_dir / "qemu.pid"),
        ]  # fmt: skip

    def _disk_argv(
        self, qmp_path: Path, password_file: Path | None, tpm_socket: Path | None
    ) -> list[str]:
        """A disk VM: firmware, disks, a display to take screenshots of, a restricted NIC,
        the guest agent's channel, and the identity in fw_cfg (see ``gateway.machines.disk``)."""
        assert self.disks is not None and self.disk is not None
        accel = self.accel or "tcg"
        if accel == "tcg":
            accel += f",tb-size={DISK_TB_SIZE_MB}"
        identity: list[str] = []
        if self.provisioning is not None:  # cloud-init provisions: see _provisioning_args
            identity = self._provisioning_args()
        else:
            if password_file is not None:
                identity = ["-fw_cfg", f"name={PASSWORD_FW_CFG},file={_q(password_file)}"]
            hostname = self._write_hostname_file()
            identity += ["-fw_cfg", f"name={HOSTNAME_FW_CFG},file={_q(hostname)}"]
        qga = self.run_dir / "qga.sock"
        return [
            self._qemu,
            "-name", f"{self.name},debug-threads=off",
            "-S", "-no-shutdown", "-nodefaults", "-no-user-config", "-display", "none",
            *self.disks.qemu_args(self.run_dir, tpm_socket=tpm_socket),
            "-accel", accel, *(["-cpu", "host"] if self.accel == "kvm" else []),
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-device", "VGA",
            # the guest hands the pages it frees back to the host (virtio_balloon's reporting)
            "-device", "virtio-balloon-pci,free-page-reporting=on",
            *self._network_args(),
            *identity,
            "-chardev", f"stdio,id={SERIAL_ID},signal=off", "-serial", f"chardev:{SERIAL_ID}",
            "-chardev", f"socket,id=qga0,path={_q(qga)},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", f"unix:{qmp_path}",
            "-device", "pvpanic-pci", "-action", "panic=none",
            "-pidfile", str(self.run_dir / "qemu.pid"),
        ]  # fmt: skip

    def _network_args(self) -> list[str]:
        assert self.disk is not None
        if self._fabric is None:
            return network_args(self.disk.ssh_port)
        netdev = provision.network_option(self.disk.ssh_port, self._fabric.port)
        assert self.provisioning is not None
        nic = f"virtio-net-pci,netdev=net0,mac={self.provisioning.identity.mac}"
        return ["-netdev", netdev, "-device", nic]

    def _provisioning_args(self) -> list[str]:
        """Azure's SMBIOS; the provisioning CD while the VM is not provisioned yet; and, for
        the image's ``lab-identity``, word that cloud-init provisions (root stays locked)."""
        assert self.provisioning is not None
        mark = self.run_dir / PROVISIONED_BY_FILE
        mark.write_bytes(self._identity_bytes("azure"))
        args = [*provision.smbios_args(self.provisioning.identity),
                "-fw_cfg", f"name={PROVISIONED_BY_FW_CFG},file={_q(mark)}"]  # fmt: skip
        media = self.run_dir / PROVISIONING_MEDIA
        if self.provisioning.pending:
            args += [
                "-drive", f"if=none,id=ovf,media=cdrom,readonly=on,format=raw,file={_q(media)}",
                "-device", "virtio-scsi-pci,id=scsi0",
                "-device", f"scsi-cd,drive=ovf,bus=scsi0.0,id={PROVISIONING_CD}",
            ]  # fmt: skip
        return args

    async def _start_fabric(self) -> None:
        """A provisioned VM's wireserver and IMDS, and its provisioning CD if it is due."""
        if self.provisioning is None:
            return
        media = self.run_dir / PROVISIONING_MEDIA
        media.unlink(missing_ok=True)
        if self.provisioning.pending:
            try:
                await asyncio.to_thread(provision.write_media, self.provisioning.profile, media)
            except OSError as err:
                raise MachineLaunchError(
                    f"VM '{self.name}': cannot write its provisioning CD in {self.run_dir}: "
                    f"{err.strerror or err}; check that folder's space and permissions"
                ) from err
        if self._fabric is None:
            self._fabric = provision.Fabric(self.provisioning)
            await self._fabric.start()
        self.provisioning.on_ready = self._provisioned

    def _provisioned(self) -> None:
        """The guest reported ready: its provisioning CD goes, as Azure takes it away, so a
        reboot in the same process finds none either."""
        if self._qmp is None or self.provisioning is None:
            return

        async def unplug() -> None:
            try:
                await self._command("device_del", {"id": PROVISIONING_CD})
            except MachineError as err:
                self.log.warning("the provisioning CD stays attached: %s", err)

        self._tasks.append(asyncio.create_task(unplug(), name=f"{self.name}-eject-ovf"))

    async def _stop_fabric(self) -> None:
        fabric, self._fabric = self._fabric, None
        if fabric is not None:
            await fabric.close()
        if self.provisioning is not None:
            self.provisioning.cancel_timer()
            (self.run_dir / PROVISIONING_MEDIA).unlink(missing_ok=True)

    # -- warm starts (gateway.machines.warm.WarmStarts) -------------------------------------

    def _warm_key(self, argv: list[str], qmp_path: Path) -> str | None:
        """The saved-state key of this launch, or None when it cannot start warm: a disk VM
        whose disks were written already (they are its own now), or one with a TPM (its
        state lives in swtpm, not in QEMU's)."""
        if self.warm is None:
            return None
        files = [Path(shutil.which(self._qemu) or self._qemu)]
        own = {"run": str(self.run_dir), "name": self.name, "qmp": str(qmp_path)}
        if self.disks is not None and self.disk is not None:
            if self.disk.tpm or self.disks.os_disk.exists():
                return None
            if any(self.disks.data_disk(i).exists() for i in range(len(self.disk.data_disks))):
                return None
            files += [self.disk.image, *(d.file for d in self.disk.data_disks if d.file)]
            own |= {"disks": str(self.disks.folder), "host": self.hostname}
            if self.disk.ssh_port:
                own["ssh"] = f"127.0.0.1:{self.disk.ssh_port}-:22"
        else:  # no agent to take an identity after a restore: it is part of the key
            files += [Path(str(self._kernel or IMAGE_DIR / KERNEL)),
                      Path(str(self._initrd or IMAGE_DIR / INITRD))]  # fmt: skip
            secret = hashlib.sha256((self._password or "").encode()).hexdigest()
            argv = [*argv, f"hostname={self.hostname}", f"password={secret}"]
            own.pop("name")  # the host name is the VM's name unless the lab file says
        # the firmware's code (read only); each VM's variables are its own copy of a template
        files += [
            Path(a.split("file=", 1)[1]) for a in argv if "if=pflash" in a and "readonly" in a
        ]
        return state_key(argv, own, files)

    def observe_output(self, chunk: bytes) -> None:
        self._last_output = time.monotonic()  # a panicked guest's console: quiet yet?
        super().observe_output(chunk)

    def _incoming(self, saved: SavedState) -> list[str]:
        reader = "zstd -q -dc" if packer_of(saved.folder) == "zstd" else "cat"
        return ["-incoming", f"exec:{reader} {shlex.quote(str(saved.state))}"]

    async def _hand_over_state(self, saved: SavedState) -> None:
        """QEMU reads the state itself (``_incoming``): only wait until it is loaded."""
        await self._wait_incoming()

    async def _migrate_to(self, path: Path) -> str:
        packer = "zstd -q -1 -T0" if shutil.which("zstd") else "cat"
        await self._command("migrate", {"uri": f"exec:{packer} > {shlex.quote(str(path))}"})
        await self._wait_migrated()
        return packer.split()[0]

    def _agent(self, timeout: float) -> contextlib.AbstractAsyncContextManager[AgentCommands]:
        return GuestAgent.connect(self.run_dir / "qga.sock", timeout)

    def _typing_port(self) -> TypingPort | None:
        return self._pty

    async def _start_tpm(self) -> Path | None:
        if self.disk is None or not self.disk.tpm or self.disks is None:
            return None
        self._swtpm = Swtpm(self.disks.tpm_state, self.run_dir)
        return await self._swtpm.start()

    async def _stop_tpm(self) -> None:
        swtpm, self._swtpm = self._swtpm, None
        if swtpm is not None:
            await swtpm.stop()

    async def _query_ssh_port(self) -> int | None:
        usernet: Any = await self._command(
            "human-monitor-command", {"command-line": "info usernet"}
        )
        port = forwarded_port(str(usernet))
        if port is None:
            self.log.warning("QEMU reported no SSH forward: %s", usernet)
        return port

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
        self._ssh_port = None
        await self._stop_tpm()
        await self._stop_fabric()
        _remove_socket(self._qmp_path, self.run_dir)
        self._forget_boot()
        if self._pty is not None:
            self._pty.close()  # after QEMU: readers of the port see it hang up now
            self._pty = None
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
        why = f"VM '{self.name}' went away: its QEMU process exited (status {code})"
        async with self._taking_over(why, "start it again", MachineError):
            if self._proc is proc:
                await self._terminate(1.0)

    async def _watch_events(self, qmp: QMPClient) -> None:
        with qmp.listener() as listener:
            async for event in listener:
                data = event.get("data")
                self._on_event(str(event["event"]), data if isinstance(data, dict) else {})

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
            if self._halt_task is None or self._halt_task.done():
                self._halt_task = asyncio.get_running_loop().create_task(
                    self._halt_after_panic(), name=f"{self.name}-panic-halt"
                )

    async def _halt_after_panic(self) -> None:
        """Halt a panicked guest's CPU once its console has been quiet for ``PANIC_QUIET`` s
        (its panic written out), or after ``PANIC_HALT_MAX`` s (see the module docstring)."""
        began = time.monotonic()
        while self._state is PowerState.PANICKED:
            now = time.monotonic()
            quiet = now - self._last_output
            if quiet >= PANIC_QUIET or now - began >= PANIC_HALT_MAX:
                await self._halt_now()
                return
            await asyncio.sleep(PANIC_QUIET - quiet)  # a debounce: no event says "done"

    async def _halt_now(self) -> None:
        with contextlib.suppress(MachineError):
            await self._halt()

    async def _command(self, cmd: str, args: dict[str, object] | None = None) -> object:
        """Run a monitor command; MachineCommandError if QEMU refuses it, fails, or does
        not answer within ``command_timeout`` s (a late answer is dropped by the client)."""
        qmp = self._qmp
        if qmp is None:
            raise MachineStateError(f"VM '{self.name}' is deallocated: start it first")
        try:
            async with asyncio.timeout(self.command_timeout):
                return await qmp.execute(cmd, args)
        except TimeoutError:
            raise MachineCommandError(
                f"QEMU did not answer {cmd} for VM '{self.name}' within "
                f"{self.command_timeout:.0f} s: its process is hung; deallocate and start it "
                "again"
            ) from None
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


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs: a killed QEMU is a zombie (state Z) until the event
    loop reaps it, and ``returncode`` stays None until then."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def _accel_for(kernel: Path | None, qemu: str) -> str:
    """The accelerator, probed with ``kernel`` (the lab's own kernel for a disk VM, if built:
    the probe needs a kernel that prints on the serial port at once); TCG without one."""
    if kernel is None:
        candidate = IMAGE_DIR / KERNEL
        if not candidate.is_file():
            return os.environ.get("LAB_ACCEL") or "tcg"
        kernel = candidate
    return await select_accel(Path(kernel), qemu)


def _q(path: Path) -> str:
    """A path in a QEMU option value: a comma is doubled."""
    return str(path).replace(",", ",,")


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


def _remove_socket(path: Path | None, run_dir: Path) -> None:
    """QEMU ended: its monitor socket goes, and the short temp folder that held it (one
    made by ``_socket_path``, not the run folder)."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    if path.parent != run_dir:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


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


class _InputProbe:
    """A PTY master that QEMU reads: how many typed bytes QEMU has not read yet."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def unread(self) -> int:
        """Bytes written to the port that QEMU has not read. The poll (no timeout) first
        makes the kernel push its flip buffer, which FIONREAD alone would miss."""
        self._poll.poll(0)
        raw = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def _grab_input_probe(pid: int, slave_path: str) -> tuple[_InputProbe | None, str]:
    """QEMU's master of the PTY ``slave_path`` (``/dev/pts/N``), copied with pidfd_getfd;
    (None, why) when it cannot be had."""
    index = slave_path.rsplit("/", 1)[-1]
    try:
        entries = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError as err:
        return None, f"cannot list QEMU's descriptors: {err}"
    for entry in entries:
        try:
            info = Path(f"/proc/{pid}/fdinfo/{entry}").read_text()
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        if target in ("/dev/ptmx", "/dev/pts/ptmx") and f"tty-index:\t{index}\n" in info:
            try:
                return _InputProbe(_pidfd_getfd(pid, int(entry))), ""
            except OSError as err:
                return None, f"cannot copy QEMU's PTY master (pidfd_getfd): {err}"
    return None, f"QEMU holds no PTY master for {slave_path}"


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return int(copy)
    finally:
        os.close(pidfd)


class _SerialPty(_InputProbe):
    """The PTY that carries ttyS0 (see the module docstring): ``master`` goes to QEMU as its
    standard input and output, ``path`` is the side the gateway opens."""

    def __init__(self) -> None:
        master, self._side = os.openpty()
        tty.setraw(self._side)  # QEMU makes it raw as well, but only once it has started
        self.path = os.ttyname(self._side)
        super().__init__(master)

    @property
    def master(self) -> int:
        return self.fd

    def type(self, data: bytes) -> None:
        """Write to the port as a user would type."""
        os.write(self._side, data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._side)
        super().close()
