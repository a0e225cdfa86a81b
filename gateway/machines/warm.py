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

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

WARM_ENV = "SERIAL_CONSOLE_LAB_WARM_DIR"  # a folder shared by labs (the test suite's)
STATE, DISK, BOOT_LOG, IDENTITY = "state", "disk.qcow2", "boot.log", "identity.json"
FORMAT_VERSION = "2"  # bump when what a saved state holds changes


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
