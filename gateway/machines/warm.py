"""Warm starts: a booted guest saved once, restored in under a second by every VM like it.

A QEMU guest whose image, kernel command line and machine settings are unchanged can start
from a saved booted state instead of booting. The store keeps one saved state per *key*: a
hash of QEMU's command line with everything that is a VM's own taken out (its name, host
name, password, run and disk folders, forwarded port) and of the identity of every file
the guest boots from (QEMU itself, kernel, initrd, disk image, firmware: path, size, time).
Anything the state depends on changes the key, so a changed image is never restored from
an old state; states nobody uses any more are simply left behind with their old key.

One saved state (a folder named by its key)::

    state       QEMU's migration stream (QMP ``migrate`` to ``exec:cat > state``: QEMU 7.2
                has no ``file:`` URI), RAM and device state
    disk.qcow2  for a disk VM: its OS disk's overlay as it was at that moment, frozen; each
                restored VM writes to an overlay of its own on top of it
    boot.log    what the guest wrote on its serial port up to that moment: a restored VM's
                boot log starts with it, then a line saying the state was restored
    identity.json  whose boot it is: the VM's name, host name and a hash of its password

The machine side is ``WarmStarts``, which both QEMU backends (``QemuMachine``, and
``LibvirtMachine`` on this machine's libvirtd) build on. They differ in how the stream
reaches QEMU. The QEMU backend names a program, ``exec:zstd ...`` (saving) and ``-incoming
'exec:zstd -dc ...'`` (restoring). libvirt runs QEMU in a sandbox that may not start
programs, so there the lab hands QEMU's monitor a descriptor (``getfd``, through libvirt's
``qemuMonitorCommandWithFiles``): saving migrates to ``fd:`` (a pipe into ``zstd -1``, or
the file itself without zstd); a restored QEMU starts with ``-incoming defer`` and is handed
the state with ``migrate-incoming``. Both write the same files.

It is made from the first VM of its key that boots cold: once that guest is up (its login
prompt on the serial port; for a systemd guest, ``systemctl is-system-running --wait``
through its agent) the machine pauses it, saves, and lets it run on. A restored disk VM
then takes the host's time through its agent and, when it is not the VM that saved the
boot, its own identity (host name, root password, machine id: the files the guest's
``lab-identity`` writes at boot) and a fresh login prompt. The VM that saved the boot is at
its own login prompt the moment it runs again.

Writes are atomic (a temporary folder renamed into place) and one process saves a key at
a time (an exclusive lock file); a folder without all its files is not a saved state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway.machines.agent import AgentCommands, AgentError
from gateway.machines.base import (
    MachineError,
    MachineLaunchError,
    MachineStateError,
    PowerState,
)
from gateway.machines.disk import DiskSet

T = TypeVar("T")

WARM_ENV = "SERIAL_CONSOLE_LAB_WARM_DIR"  # a folder shared by labs (the test suite's)
STATE, DISK, BOOT_LOG, IDENTITY = "state", "disk.qcow2", "boot.log", "identity.json"
PACKER, UEFI_VARS_SAVED = "packer", "uefi-vars.fd"
FORMAT_VERSION = "3"  # bump when what a saved state holds changes
UP_TIMEOUT = 900.0  # a cold boot that is to be saved: how long it may take to come up
SAVE_OUTPUT_LIMIT = 4 << 20  # a boot printing more than this is not saved (not a login wait)
LOGIN_PROMPT = b"login: "
STREAM_FD = "warm"  # the name QEMU's monitor gives the state's descriptor


def user_cache() -> Path:
    """Saved states kept for this user across labs: ``$XDG_CACHE_HOME/serial-console-lab/warm``
    (``~/.cache/...``). The pytest plugin's labs use it, so a suite's guests start warm from
    its second run on."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "serial-console-lab" / "warm"


@dataclass(frozen=True, slots=True)
class SavedState:
    """A saved booted guest (see the module docstring)."""

    folder: Path

    @property
    def state(self) -> Path:
        return self.folder / STATE

    @property
    def disk(self) -> Path | None:
        path = self.folder / DISK
        return path if path.is_file() else None

    @property
    def boot_log(self) -> bytes:
        with contextlib.suppress(OSError):
            return (self.folder / BOOT_LOG).read_bytes()
        return b""

    @property
    def identity(self) -> dict[str, str]:
        """Whose boot it is (``QemuMachine.identity``), as written when it was saved."""
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((self.folder / IDENTITY).read_text())
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
        return {}

    @property
    def size(self) -> int:
        """Bytes on disk (the files' allocated size: the state and disk are sparse)."""
        return sum(p.stat().st_blocks * 512 for p in self.folder.iterdir() if p.is_file())


class WarmStore:
    """Saved states in ``folder``: the lab's ``<state>/warm``, or a folder several labs
    share, ``$SERIAL_CONSOLE_LAB_WARM_DIR``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_lab(cls, state_dir: Path) -> WarmStore:
        shared = os.environ.get(WARM_ENV, "").strip()
        return cls(Path(shared).expanduser() if shared else Path(state_dir) / "warm")

    def lookup(self, key: str) -> SavedState | None:
        """The saved state of ``key``, or None when there is none yet."""
        folder = self.folder / key
        if (folder / STATE).is_file() and (folder / BOOT_LOG).is_file():
            return SavedState(folder)
        return None

    @contextlib.contextmanager
    def saving(self, key: str) -> Iterator[Path | None]:
        """A temporary folder to write ``key``'s files in, renamed into place when the block
        ends without an error; None when another process is saving ``key`` or it is saved."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / f"{key}.lock"
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if time.time() - _mtime(lock) < 600:  # a live saver; an older lock is a dead one's
                yield None
                return
            lock.unlink(missing_ok=True)
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        tmp = self.folder / f"{key}.tmp"
        try:
            if self.lookup(key) is not None:
                yield None
                return
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            tmp.rename(self.folder / key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            lock.unlink(missing_ok=True)


def state_key(argv: Iterable[str], own: dict[str, str], files: Iterable[Path]) -> str:
    """The key of a guest started with ``argv``: each ``own`` value (a VM's own, such as its
    run folder) replaced by its name, and the identity of ``files`` added."""
    words = []
    for arg in argv:
        for name, value in sorted(own.items(), key=lambda item: -len(item[1])):
            if value:
                arg = arg.replace(value, f"<{name}>")
        words.append(arg)
    identities = []
    for path in files:
        try:
            info = path.stat()
            identities.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
        except OSError:
            identities.append([str(path), None, None])
    raw = json.dumps([FORMAT_VERSION, words, identities])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class TypingPort(Protocol):
    def type(self, data: bytes) -> None: ...


class WarmStarts:
    """Warm starts on a machine whose QEMU the lab drives (see the module docstring).

    The machine gives: ``_command`` (a QMP command), ``_send_fd`` (a descriptor for QEMU's
    monitor, as ``getfd`` names it), ``_agent`` (its guest agent), ``_typing_port`` (its
    serial port, to press Enter on), and its ``disks`` (None for the initramfs guest), host name
    and password. It calls ``_init_warm`` in its constructor; at a launch, ``_warm_saved``
    for the state to restore, ``_restore_disks`` before QEMU starts (with ``-incoming
    defer`` when restoring), ``_load_state`` once the monitor answers, ``_watch_boot``
    before a cold boot's CPU runs, ``_after_start`` once it runs, and ``_forget_boot``
    when QEMU goes."""

    name: str
    hostname: str
    log: logging.Logger
    disks: DiskSet | None
    _password: str | None
    _state: PowerState
    _operation: str | None
    _op_lock: asyncio.Lock

    def _init_warm(self, warm: WarmStore | None) -> None:
        self.warm = warm
        self.started_warm = False  # this allocation was restored from a saved state
        self.restored_output: bytes | None = None  # for the port hooks of a restored VM
        self.warm_saved = asyncio.Event()  # set once this VM saved a boot for warm starts
        self._boot_output: bytearray | None = None  # a cold boot's output, while it is saved
        self._typed = False  # someone typed on the console of the boot being saved
        self._up: asyncio.Event | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None

    # -- what the machine gives -------------------------------------------------------------

    if TYPE_CHECKING:  # the machine's base (DiskMachine, MachineBase) has these

        async def _command(self, cmd: str, args: dict[str, object] | None = None) -> object: ...

        async def _wait(self, what: Awaitable[T], timeout: float) -> T: ...

    async def _send_fd(self, fd: int, name: str) -> None:
        raise NotImplementedError

    def _agent(self, timeout: float) -> contextlib.AbstractAsyncContextManager[AgentCommands]:
        raise NotImplementedError

    def _typing_port(self) -> TypingPort | None:
        """The serial port as a user types on it (None: it has none now)."""
        raise NotImplementedError

    def _press_enter(self) -> None:
        """Enter on the serial port (the guest's getty prints a fresh prompt)."""
        port = self._typing_port()
        if port is None:
            return
        try:
            port.type(b"\r")
        except OSError as err:
            self.log.warning("no fresh login prompt after the restore: %s", err)

    # -- what the console hub calls ---------------------------------------------------------

    async def save_settled(self) -> bool:
        """Until this boot's save for warm starts has ended (at once when none is under
        way): whether this VM has saved a boot."""
        task = self._save_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return self.warm_saved.is_set()

    def observe_input(self, data: bytes) -> None:
        """The console hub hands every byte typed here before it is sent: a boot that
        someone typed on (a login begun, a command run) is not saved for other VMs."""
        if self._boot_output is not None and data:
            self._typed = True

    def observe_output(self, chunk: bytes) -> None:
        """The console hub hands every byte the guest writes here: a cold boot that is to be
        saved is kept until the guest is up (its login prompt)."""
        kept = self._boot_output
        if kept is None or self._up is None:
            return
        kept += chunk
        if len(kept) > SAVE_OUTPUT_LIMIT:
            self._boot_output = None
            self.log.info("not saving this boot: it printed over %d bytes", SAVE_OUTPUT_LIMIT)
        elif LOGIN_PROMPT in kept[-len(chunk) - len(LOGIN_PROMPT) :]:
            self._up.set()

    @property
    def identity(self) -> dict[str, str]:
        """Whose boot a saved state is: this VM's name, host name and a hash of its password."""
        secret = hashlib.sha256((self._password or "").encode()).hexdigest()
        return {"name": self.name, "hostname": self.hostname, "password": secret}

    # -- a launch ---------------------------------------------------------------------------

    def _warm_saved(self, key: str | None) -> SavedState | None:
        return self.warm.lookup(key) if self.warm is not None and key is not None else None

    async def _restore_disks(self, saved: SavedState | None) -> None:
        """A disk VM's overlays (on the saved disk when restoring) and UEFI variables."""
        if self.disks is None:
            return
        try:
            await self.disks.prepare(os_backing=saved.disk if saved else None)
            if saved is not None and (saved.folder / UEFI_VARS_SAVED).is_file():
                shutil.copyfile(saved.folder / UEFI_VARS_SAVED, self.disks.uefi_vars)
        except (MachineLaunchError, OSError) as err:
            raise MachineLaunchError(f"VM '{self.name}': {err}") from err

    async def _load_state(self, saved: SavedState) -> None:
        """Hand QEMU the saved state and wait until it is loaded; ``restored_output`` is then
        what the port hooks show first. Raises MachineLaunchError if it cannot be loaded."""
        await self._hand_over_state(saved)
        note = (
            f"\r\n[Serial Console Lab: VM '{self.name}' was restored from a saved boot "
            "(a warm start); what follows is live]\r\n"
        )
        self.restored_output = saved.boot_log + note.encode()

    async def _hand_over_state(self, saved: SavedState) -> None:
        """To a QEMU started with ``-incoming defer``: the state as a descriptor (a pipe
        from ``zstd -dc``, or the file), then ``migrate-incoming``; returns once it is
        loaded (the descriptor's reader ends with the stream)."""
        reader: asyncio.subprocess.Process | None = None
        try:
            if packer_of(saved.folder) == "zstd":
                reader, fd = await _zstd_pipe("-dc", str(saved.state), into_qemu=True)
            else:
                fd = os.open(saved.state, os.O_RDONLY | os.O_CLOEXEC)
            try:
                await self._send_fd(fd, STREAM_FD)
            finally:
                os.close(fd)
            await self._command("migrate-incoming", {"uri": f"fd:{STREAM_FD}"})
            await self._wait_incoming()
        except OSError as err:
            raise MachineLaunchError(
                f"VM '{self.name}': cannot read its saved boot in {saved.folder}: {err}; "
                "start it with a cold boot (--cold)"
            ) from err
        finally:
            await _ended(reader)

    async def _wait_incoming(self) -> None:
        """Until QEMU has loaded the saved state: its run state leaves ``inmigrate``.
        MachineLaunchError if the state could not be loaded."""
        pause = 0.005
        while True:
            status: Any = await self._command("query-status")
            if status.get("status") != "inmigrate":
                break
            await asyncio.sleep(pause)  # QEMU sends no event to a destination without
            pause = min(pause * 2, 0.1)  # migration events on: a short poll
        info: Any = await self._command("query-migrate")
        if info.get("status") == "failed" or status.get("status") == "internal-error":
            raise MachineLaunchError(
                f"the saved state did not load ({info.get('error-desc', status)}): "
                "start the VM with a cold boot (--cold)"
            )

    def _watch_boot(self, saved: SavedState | None, key: str | None) -> None:
        """Before the CPU runs: a cold boot that may be saved is kept from its first byte."""
        self.restored_output = None
        if saved is None and key is not None:
            self._boot_output, self._up = bytearray(), asyncio.Event()
            self._typed = False

    async def _after_start(self, saved: SavedState | None, key: str | None) -> None:
        """Once the CPU runs: a restored VM takes its identity; a cold boot that may be saved
        is saved once it is up (in the background)."""
        self.started_warm = saved is not None
        if saved is not None:
            await self._take_identity(saved)
        elif key is not None:
            self._save_task = asyncio.create_task(
                self._save_when_up(key), name=f"{self.name}-warm-save"
            )

    def _forget_boot(self) -> None:
        """QEMU went: no save of its boot is under way any more."""
        for task in (self._save_task, self._clock_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._save_task = self._clock_task = None
        self._boot_output = self._up = None

    # -- a restored VM's identity -----------------------------------------------------------

    async def _take_identity(self, saved: SavedState) -> None:
        """A restored disk VM takes, unless it is the VM that saved the boot, its own host
        name, machine id and root password (when it differs), then a fresh login prompt
        (Enter on the serial port, as a user would press it: the getty reads the host name
        again); and the host's time. Through its guest agent, writing the files that the
        image's ``lab-identity`` writes at boot.

        Under TCG each program started in a guest that has just been restored costs
        tenths of a second (its translation cache starts empty), so no program is waited
        for but ``chpasswd``, and only when the password differs: not ``lab-identity``,
        nor a getty restart, nor QGA's ``guest-set-time`` (it also runs ``hwclock``)."""
        if self.disks is None:
            return
        theirs, mine = saved.identity, self.identity
        if theirs == mine:  # at its own prompt already: the clock needs no waiting for
            self._clock_task = asyncio.create_task(self._set_clock(), name=f"{self.name}-clock")
            return
        try:
            async with self._agent(30.0) as agent:
                await self._write_identity(agent, theirs.get("password") != mine["password"])
                self._press_enter()
                await agent.start("/bin/date", "--set", f"@{time.time():.6f}")
        except AgentError as err:
            self.log.warning("a restored VM kept the saved guest's identity: %s", err)

    async def _set_clock(self) -> None:
        try:
            async with self._agent(30.0) as agent:
                await agent.start("/bin/date", "--set", f"@{time.time():.6f}")
        except AgentError as err:
            self.log.warning("a restored VM kept the saved guest's clock: %s", err)

    async def _write_identity(self, agent: AgentCommands, password: bool) -> None:
        name = self.hostname
        await agent.write_file("/proc/sys/kernel/hostname", name.encode())
        await agent.write_file("/etc/hostname", f"{name}\n".encode())
        hosts = (await agent.read_file("/etc/hosts")).decode(errors="replace")
        hosts = re.sub(r"(?m)^127\.0\.1\.1\s.*$", f"127.0.1.1\t{name}", hosts)
        await agent.write_file("/etc/hosts", hosts.encode())
        await agent.write_file("/etc/machine-id", f"{uuid.uuid4().hex}\n".encode())
        if password and self._password is not None:
            secret = base64.b64encode(self._password.encode()).decode()
            await agent.execute(
                "guest-set-user-password",
                {"username": "root", "password": secret, "crypted": False},
            )

    # -- saving a cold boot -----------------------------------------------------------------

    async def _save_when_up(self, key: str) -> None:
        """Save this cold boot for warm starts once the guest is up (see the module
        docstring). Logs and gives up on any trouble: a VM that is not saved only boots
        cold next time."""
        assert self.warm is not None and self._up is not None
        try:
            await self._wait(self._up.wait(), UP_TIMEOUT)
            if self.disks is not None:  # systemd has finished starting what it starts
                async with self._agent(120.0) as agent:
                    await agent.run("/bin/systemctl", "is-system-running", "--wait", timeout=300)
            if self._typed:
                self.log.info(
                    "not saving this boot for warm starts: its console was typed on before it "
                    "was up; the next cold boot of a VM like it will be saved"
                )
                return
            with self.warm.saving(key) as folder:
                if folder is not None:
                    await self._save_state(folder)
        except (MachineError, TimeoutError, OSError) as err:
            self.log.warning("this boot was not saved for warm starts: %s", err)
        except Exception:  # a save is a bonus: whatever fails it, the VM runs on
            self.log.exception("this boot was not saved for warm starts")
        finally:
            self._boot_output = None
            self._up = None

    async def _save_state(self, folder: Path) -> None:
        """Pause, save (RAM and devices, the OS disk's overlay, the boot's output), go on.
        Power operations asked for meanwhile wait for it (a few seconds) rather than fail."""
        if self._operation is not None or self._state is not PowerState.RUNNING:
            raise MachineStateError(f"the VM is {self._operation or self._state}")
        async with self._op_lock:
            if self._state is not PowerState.RUNNING or self._boot_output is None:
                raise MachineStateError(f"the VM is {self._state} now")
            if self._typed:  # between the check above and the lock
                raise MachineStateError("its console was typed on before it was saved")
            transcript = bytes(self._boot_output)
            started = time.monotonic()
            await self._command("stop")
            try:
                packer = await self._migrate_to(folder / STATE)
                if self.disks is not None:  # stopped: the overlay is flushed and still
                    await asyncio.to_thread(shutil.copyfile, self.disks.os_disk, folder / DISK)
                    if self.disks.uefi_vars.exists():
                        shutil.copyfile(self.disks.uefi_vars, folder / UEFI_VARS_SAVED)
                (folder / PACKER).write_text(packer)
                (folder / BOOT_LOG).write_bytes(transcript)
                (folder / IDENTITY).write_text(json.dumps(self.identity))
            finally:
                await self._command("cont")
            self.log.info("saved this boot for warm starts in %.1f s", time.monotonic() - started)
            self.warm_saved.set()

    async def _migrate_to(self, path: Path) -> str:
        """The stopped guest's RAM and devices into ``path`` through a descriptor (a pipe into
        ``zstd -1``, or the file); the packer used."""
        writer: asyncio.subprocess.Process | None = None
        if shutil.which("zstd"):
            writer, fd = await _zstd_pipe("-1", "-T0", "-f", "-o", str(path), into_qemu=False)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                await self._send_fd(fd, STREAM_FD)
            finally:
                os.close(fd)  # QEMU holds its own copy and closes it when it is done
            await self._command("migrate", {"uri": f"fd:{STREAM_FD}"})
            await self._wait_migrated()
            if writer is not None and await self._wait(writer.wait(), 60.0) != 0:
                raise MachineError(f"zstd could not write {path} (status {writer.returncode})")
        finally:
            await _ended(writer)
        return "zstd" if writer is not None else "cat"

    async def _wait_migrated(self) -> None:
        pause = 0.01
        while True:
            info: Any = await self._command("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise MachineError(f"saving the state failed: {info.get('error-desc', status)}")
            await asyncio.sleep(pause)  # no migration events asked for: a short poll
            pause = min(pause * 2, 0.2)


async def _zstd_pipe(*args: str, into_qemu: bool) -> tuple[asyncio.subprocess.Process, int]:
    """``zstd -q ARGS`` on one end of a pipe (it writes into QEMU when ``into_qemu``, else
    reads QEMU's stream); the other end, for QEMU's monitor, is the caller's to close."""
    read_end, write_end = os.pipe()
    zstd_end, qemu_end = (write_end, read_end) if into_qemu else (read_end, write_end)
    try:
        if into_qemu:
            process = await asyncio.create_subprocess_exec("zstd", "-q", *args, stdout=zstd_end)
        else:
            process = await asyncio.create_subprocess_exec("zstd", "-q", *args, stdin=zstd_end)
    except BaseException:
        os.close(qemu_end)
        raise
    finally:
        os.close(zstd_end)
    return process, qemu_end


async def _ended(process: asyncio.subprocess.Process | None) -> None:
    """``process`` killed if it still runs, and reaped."""
    if process is None:
        return
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


def packer_of(folder: Path) -> str:
    """The program that packed a saved state: "zstd", or "cat" (none)."""
    with contextlib.suppress(OSError):
        return (folder / PACKER).read_text().strip()
    return "cat"
