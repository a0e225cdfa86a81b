"""A libvirt daemon for tests and benchmarks: the one running, or virtlogd + libvirtd started here.

Where no service manager runs (containers, CI), nothing starts libvirtd; ``Libvirtd.ensure``
starts ``virtlogd`` and ``libvirtd`` in the foreground as its own children and waits for each
to say it is ready (the service-manager notification, ``READY=1`` on ``NOTIFY_SOCKET``: an
event, not a poll). ``stop`` ends only the processes it started, by PID. A daemon already
answering is used as it is and left running.

On such machines ``/dev/kvm`` may also lack the group and mode that udev gives it
(``kvm``, 0660); libvirt then sees KVM when it probes QEMU as root but not for QEMU's own
user, and probes again on every call (a minute per domain start). ``ensure`` sets what udev
would, and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tests.libvirtd")

URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")
INSTALL = "apt-get install libvirt-daemon-system"


class LibvirtdUnavailable(Exception):
    """libvirtd is not installed or cannot run here; the message says what to do."""


@dataclass
class Libvirtd:
    """The daemons this object started (none when one was already running)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path | None = None

    @classmethod
    def ensure(cls, timeout: float = 60.0) -> Libvirtd:
        """A libvirtd answering on ``qemu:///system``; LibvirtdUnavailable if none can be had."""
        daemons = cls()
        _give_kvm_its_group()
        if _answers():
            return daemons
        for name in DAEMONS:
            if shutil.which(name) is None:
                raise LibvirtdUnavailable(f"{name} is missing: {INSTALL}")
        daemons.log_dir = Path(tempfile.mkdtemp(prefix="libvirtd-test-"))
        try:
            for name in DAEMONS:
                daemons._start(name, timeout)
        except LibvirtdUnavailable:
            daemons.stop()
            if _answers():  # another test process started one meanwhile: use it
                return daemons
            raise
        except BaseException:
            daemons.stop()
            raise
        if not _answers():
            daemons.stop()
            raise LibvirtdUnavailable(
                f"libvirtd started but {URI} does not answer: see {daemons.log_dir}"
            )
        return daemons

    def _start(self, name: str, timeout: float) -> None:
        with contextlib.ExitStack() as stack:
            notify = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            address = str(self.log_dir / f"{name}.notify")
            notify.bind(address)
            notify.settimeout(timeout)
            output = stack.enter_context(open(self.log_dir / f"{name}.log", "wb"))
            proc = subprocess.Popen(
                [name],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": address},
                start_new_session=True,
            )
            self.started.append(proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    message = notify.recv(4096)
                except TimeoutError:
                    break
                if b"READY=1" in message.split(b"\n"):
                    log.info("%s started (pid %d)", name, proc.pid)
                    return
        text = (self.log_dir / f"{name}.log").read_text(errors="replace").strip()
        status = proc.poll()
        raise LibvirtdUnavailable(
            f"{name} did not become ready in {timeout:.0f} s"
            f"{'' if status is None else f' (it exited with status {status})'}: {text[-500:]}"
        )

    def stop(self) -> None:
        """End the daemons started here (libvirtd first), by PID; nothing else."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.started.clear()
        if self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = None


@contextlib.contextmanager
def shared(folder: Path, timeout: float = 60.0) -> Iterator[Libvirtd]:
    """A libvirtd for every test process that names the same ``folder`` (pytest-xdist's
    workers, whose libvirt tests then run side by side): the first that needs one starts it
    (``ensure``), the others use it, and the one that started it stops it once every other
    has let go. Each user holds a shared lock on ``folder/users`` while it uses the daemon;
    the starter, leaving, takes that lock exclusively, which the kernel grants once the last
    user has released it (an event, not a poll). ``folder/start`` orders joining and
    stopping: no process joins a daemon that is being stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "start", "a+b") as start, open(folder / "users", "a+b") as users:
        fcntl.flock(start, fcntl.LOCK_EX)
        try:
            daemons = Libvirtd.ensure(timeout)
            fcntl.flock(users, fcntl.LOCK_SH)
        finally:
            fcntl.flock(start, fcntl.LOCK_UN)
        try:
            yield daemons
        finally:
            if not daemons.started:
                fcntl.flock(users, fcntl.LOCK_UN)
            else:
                fcntl.flock(start, fcntl.LOCK_EX)
                try:
                    fcntl.flock(users, fcntl.LOCK_UN)
                    fcntl.flock(users, fcntl.LOCK_EX)  # granted when the last user leaves
                    daemons.stop()
                    fcntl.flock(users, fcntl.LOCK_UN)
                finally:
                    fcntl.flock(start, fcntl.LOCK_UN)


def _answers() -> bool:
    if shutil.which("virsh") is None:
        raise LibvirtdUnavailable(f"virsh is missing: {INSTALL}")
    try:
        done = subprocess.run(
            ["virsh", "-c", URI, "uri"], capture_output=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _give_kvm_its_group() -> None:
    """``/dev/kvm`` root-only (no udev here): group ``kvm``, mode 0660, as udev would set."""
    try:
        info = os.stat("/dev/kvm")
        group = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return
    if info.st_gid == group and info.st_mode & 0o060 == 0o060:
        return
    if os.geteuid() != 0:
        return
    os.chown("/dev/kvm", -1, group)
    os.chmod("/dev/kvm", stat.S_IMODE(info.st_mode) | 0o060)
    log.warning("/dev/kvm: group kvm, mode 0660 (what udev sets; no udev runs here)")
