"""``serial-console lab run`` as a user starts it: a real process serving a real lab.

``LabProcess.start(folder)`` writes a lab file equal to the shipped default lab (its two
QEMU guests included) with its own state folder and port 0, runs ``serial-console lab run
--lab`` on it and waits, bounded, for the banner's ``Serial Console Lab is up at URL``.
``stop()`` ends it by its pid with SIGINT (what Ctrl+C sends), as a user would, and
returns its exit status and everything it printed. ``qemu_pids()`` lists the QEMU
processes whose pid files lie in this lab's state folder, so a test can check that none
outlives the lab.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tests.conftest import scaled

ROOT = Path(__file__).resolve().parents[2]
UP = re.compile(r"Serial Console Lab is up at (https?://\S+)")
STOPPED = "Lab stopped: every machine is deallocated."


def lab_file(state_dir: Path, port: int = 0, replay_bytes: int | None = None) -> str:
    """The default lab's text with ``state_dir`` and ``port`` in place of its own (and
    ``replay_bytes``, when given)."""
    text = resources.files("gateway.lab").joinpath("default.toml").read_text(encoding="utf-8")
    text, dirs = re.subn(r'(?m)^state_dir = ".*"$', f'state_dir = "{state_dir}"', text)
    text, ports = re.subn(r"(?m)^port = \d+", f"port = {port}", text)
    text = re.sub(r"(?m)^ssh_port = \d+", "ssh_port = 0", text)  # no fixed port: runs overlap
    replays = 1
    if replay_bytes is not None:
        text, replays = re.subn(r"(?m)^replay_bytes = \d+", f"replay_bytes = {replay_bytes}", text)
    assert (dirs, ports, replays) == (1, 1, 1), "the default lab changed shape: update lab_file()"
    return text


@dataclass
class LabProcess:
    """A running ``serial-console lab run`` and what it printed so far."""

    process: subprocess.Popen[str]
    state_dir: Path
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _up: threading.Event = field(default_factory=threading.Event)
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
    ) -> LabProcess:
        """Run the default lab (state in ``folder/state``; every guest emulated with
        ``emulated``; https and wss from the lab's CA with ``tls``, see ``ca_path``) and
        wait until it serves."""
        state_dir = folder / "state"
        path = folder / "lab.toml"
        path.write_text(lab_file(state_dir, port, replay_bytes))
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "lab", "run", "--lab", str(path),
             *(["--emulated"] if emulated else []), *(["--tls"] if tls else [])],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        lab = cls(process, state_dir)
        # A thread drains the output (the lab must never block on a full pipe) and
        # signals the banner; the wait for it is bounded.
        lab._reader = threading.Thread(target=lab._read, daemon=True)
        lab._reader.start()
        if not lab._up.wait(scaled(timeout)) or not lab.url:
            lab.stop()
            raise AssertionError("the lab did not come up:\n" + lab.output)
        return lab

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = UP.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._up.set()
        self._up.set()  # the lab ended before its banner

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def ca_path(self) -> Path:
        """The lab CA's certificate a ``tls`` lab serves with (``<state>/tls/ca.pem``)."""
        return self.state_dir / "tls" / "ca.pem"

    def qemu_pids(self) -> list[int]:
        """Live QEMU processes started by this lab (their -pidfile is in its state folder)."""
        marker = os.fsencode(self.state_dir.resolve())
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                args = (proc / "cmdline").read_bytes().split(b"\0")
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                alive = stat[0] not in "ZX"
                if alive and b"-pidfile" in args and any(a.startswith(marker) for a in args):
                    pids.append(int(proc.name))
        return pids

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
