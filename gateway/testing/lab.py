"""``serial-console lab run`` as a child process: started, waited for, stopped with no QEMU left.

``LabProcess.start(folder)`` runs the shipped default lab (or ``lab=`` a lab file) with its
state folder in ``folder/state``, a free port and the SSH door off, and waits, bounded, for
the banner's ``Serial Console Lab is up at URL``. ``stop()`` sends SIGINT (what Ctrl+C
sends) to the lab's pid, as a person would, and returns its exit status. ``qemu_pids()``
lists the QEMU processes whose pid files lie in the lab's state folder, so a caller can
check that none outlives the lab.

With ``die_with_parent`` the lab gets SIGTERM (a graceful stop) when the thread that
started it dies: a test run killed with ``kill -9`` still takes its lab, and the lab its
QEMUs, along. Only for a lab started from a thread that lives as long as the run (the
main thread): the kernel ties the signal to the thread, not the process.

Exceptions::

    LabStartError    the lab did not come up; the message carries what it printed
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gateway.machines.warm import WARM_ENV, user_cache
from gateway.testing.timeouts import scaled

UP = re.compile(r"Serial Console Lab is up at (https?://\S+)")
STOPPED = "Lab stopped: every machine is deallocated."
FAILED_MACHINE = re.compile(r"^\s+(\S+)\s+failed to start: (.*)$", re.M)
_PR_SET_PDEATHSIG = 1


class LabStartError(AssertionError):
    """The lab did not come up; the message says why, with what the lab printed."""


def lab_file(state_dir: Path, port: int = 0, replay_bytes: int | None = None) -> str:
    """The default lab's text with ``state_dir`` and ``port`` in place of its own, the SSH
    door off (and ``replay_bytes``, when given)."""
    text = resources.files("gateway.lab").joinpath("default.toml").read_text(encoding="utf-8")
    text, dirs = re.subn(r'(?m)^state_dir = ".*"$', f'state_dir = "{state_dir}"', text)
    text, ports = re.subn(r"(?m)^port = \d+", f"port = {port}", text)
    text = re.sub(r"(?m)^ssh_port = \d+", "ssh_port = 0", text)  # no fixed port: runs overlap
    replays = 1
    if replay_bytes is not None:
        text, replays = re.subn(r"(?m)^replay_bytes = \d+", f"replay_bytes = {replay_bytes}", text)
    if (dirs, ports, replays) != (1, 1, 1):
        raise ValueError("the default lab changed shape: update lab_file()")
    return text


def qemu_pids(state_dir: Path) -> list[int]:
    """Live QEMU processes of the lab whose state folder is ``state_dir`` (their
    ``-pidfile`` lies in it)."""
    marker = os.fsencode(state_dir.resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            alive = stat[0] not in "ZX"
            if alive and b"-pidfile" in args and any(a.startswith(marker) for a in args):
                pids.append(int(proc.name))
    return pids


def _terminate_with_parent() -> None:
    """In the lab's process, before exec: SIGTERM when the starting thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class LabProcess:
    """A running ``serial-console lab run`` and what it printed so far."""

    process: subprocess.Popen[str]
    state_dir: Path
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _up: threading.Event = field(default_factory=threading.Event)
    _printed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        folder: Path,
        port: int = 0,
        replay_bytes: int | None = None,
        timeout: float = 60,
        emulated: bool = False,
        tls: bool = False,
        *,
        lab: Path | None = None,
        die_with_parent: bool = False,
        ssh_port: int = 0,
        stop_timeout: float | None = None,
    ) -> LabProcess:
        """Run the default lab, or the lab file ``lab`` (state in ``folder/state``, port
        ``port``, the SSH door on ``ssh_port``, off when 0; every guest emulated with
        ``emulated``; https and wss from the lab's CA with ``tls``, see ``ca_path``; its
        guests halted at once when it stops with ``stop_timeout=0``), and wait until it
        serves.

        Raises LabStartError (after stopping it) when it does not come up in ``timeout``
        seconds (scaled) or exits first."""
        folder.mkdir(parents=True, exist_ok=True)
        state_dir = folder / "state"
        if lab is None:
            lab = folder / "lab.toml"
            lab.write_text(lab_file(state_dir, port, replay_bytes))
        elif replay_bytes is not None:
            raise ValueError("replay_bytes applies to the default lab only")
        command = [
            sys.executable, "-m", "gateway.cli.main", "lab", "run", "--lab", str(lab),
            "--state-dir", str(state_dir), "--port", str(port), "--ssh-port", str(ssh_port),
            *(["--emulated"] if emulated else []), *(["--tls"] if tls else []),
            *(["--stop-timeout", str(stop_timeout)] if stop_timeout is not None else []),
        ]  # fmt: skip
        # A session of its own: the terminal's Ctrl+C reaches the test run, whose clean-up
        # then stops the lab once, gracefully (a second SIGINT would force it).
        # Saved boots outlive the run's temporary state folder: the next run starts warm.
        env = {WARM_ENV: str(user_cache()), **os.environ}
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=_terminate_with_parent if die_with_parent else None,
        )  # fmt: skip
        running = cls(process, state_dir)
        # A thread drains the output (the lab must never block on a full pipe) and
        # signals the banner; the wait for it is bounded.
        running._reader = threading.Thread(target=running._read, daemon=True, name="lab-output")
        running._reader.start()
        try:
            up = running._up.wait(scaled(timeout)) and bool(running.url)
        except BaseException:  # Ctrl+C while it starts: it stops (deallocating) too
            running.stop()
            raise
        if not up:
            running.stop()
            raise LabStartError(f"the lab did not come up ({' '.join(command)}):\n{running.output}")
        return running

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            for line in self.process.stdout:
                with self._printed:
                    self.lines.append(line)
                    self._printed.notify_all()
                match = UP.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    self._up.set()
        self._up.set()  # the lab ended before its banner
        with self._printed:  # and no more lines will come
            self._printed.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first line the lab printed that matches ``pattern`` (a regex), waiting up to
        ``timeout`` s (scaled) for it; AssertionError with what it printed if none came."""
        regex = re.compile(pattern)

        def first() -> re.Match[str] | None:
            return next(filter(None, map(regex.search, self.lines)), None)

        with self._printed:
            self._printed.wait_for(
                lambda: first() is not None or self.process.poll() is not None, scaled(timeout)
            )
            match = first()
        if match is None:
            raise AssertionError(f"the lab printed no line like {pattern!r}:\n{self.output}")
        return match

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        """Everything the lab printed so far."""
        return "".join(self.lines)

    @property
    def start_failures(self) -> dict[str, str]:
        """Machines the lab reported it could not start, with the reason it gave."""
        return dict(FAILED_MACHINE.findall(self.output))

    @property
    def ca_path(self) -> Path:
        """The lab CA's certificate a ``tls`` lab serves with (``<state>/tls/ca.pem``)."""
        return self.state_dir / "tls" / "ca.pem"

    def qemu_pids(self) -> list[int]:
        """Live QEMU processes started by this lab."""
        return qemu_pids(self.state_dir)

    def stop(self, timeout: float = 60) -> int:
        """SIGINT (Ctrl+C) to the lab's pid, then its exit status (SIGKILL if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._reader is not None:
            self._reader.join(scaled(10))
        return code
