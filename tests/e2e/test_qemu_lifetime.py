"""QEMU never outlives the process that owns it: not on Ctrl+C, not on kill -9, not on a crash."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from gateway.machines import PowerState
from gateway.machines.process import wait_pid_exit
from gateway.machines.qemu import QemuMachine, kill_stale
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import require_qemu

pytestmark = pytest.mark.qemu
ROOT = Path(__file__).resolve().parents[2]


async def _start_owner(run_dir: Path) -> tuple[asyncio.subprocess.Process, int]:
    require_qemu()
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.qemu_owner", str(run_dir),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert owner.stdout is not None
    async with asyncio.timeout(scaled(60)):
        line = await owner.stdout.readline()
    assert line.startswith(b"qemu-pid "), line
    return owner, int(line.split()[1])


async def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has exited (raises TimeoutError if it does not)."""
    await wait_pid_exit(pid, scaled(timeout))
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


async def test_ctrl_c_in_the_owner_deallocates_the_guest(tmp_path: Path) -> None:
    """Ctrl+C (SIGINT) in the owning program shuts its guest down before it exits."""
    owner, qemu_pid = await _start_owner(tmp_path)
    owner.send_signal(signal.SIGINT)
    assert owner.stdout is not None
    async with asyncio.timeout(scaled(30)):
        rest = await owner.stdout.read()
        await owner.wait()
    assert b"interrupted: guest deallocated" in rest
    assert await _gone(qemu_pid)
    assert not (tmp_path / "qemu.pid").exists()


async def test_kill_9_of_the_owner_takes_qemu_along(tmp_path: Path) -> None:
    """Even SIGKILL of the owner, which runs no cleanup, ends its QEMU."""
    owner, qemu_pid = await _start_owner(tmp_path)
    owner.kill()
    await owner.wait()
    assert await _gone(qemu_pid)


async def test_a_stale_qemu_from_a_dead_run_is_cleaned_up(tmp_path: Path) -> None:
    """A QEMU left in the run folder by an earlier run is killed before a new one starts."""
    require_qemu()
    # -daemonize: the launcher returns once the orphaned QEMU has written its pid file.
    launcher = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "none",
        "-daemonize", "-pidfile", str(tmp_path / "qemu.pid"), stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await launcher.wait() == 0
    stale_pid = int((tmp_path / "qemu.pid").read_text())
    assert not _zombie(stale_pid)
    async with QemuMachine("fresh-1", run_dir=tmp_path) as vm:
        assert await _gone(stale_pid)
        assert vm.power_state is PowerState.RUNNING
        assert vm.pid != stale_pid
    assert not await kill_stale(tmp_path)
