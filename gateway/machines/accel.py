"""Which accelerator runs guests here: KVM where it really runs one, else TCG.

``/dev/kvm`` can exist and still not run a guest: a nested hypervisor may hang or fail with
"emulation failure". So we check, not assume: boot the guest kernel under KVM for a moment
and see whether it prints its first line on the serial port. On a working KVM host that
takes well under a second; where it does not come within ``PROBE_SECONDS``, TCG it is.

The answer is kept for the process, and on disk per boot of the host (keyed by the host's
boot id, the QEMU binary and the kernel), so that only the first run after a reboot pays
for the probe. ``LAB_ACCEL=kvm|tcg`` in the environment skips the probe. Concurrent calls
in one event loop share one probe (a lock per event loop: an asyncio lock belongs to the
first loop that waits on it, and a process may run several loops, one after another or
in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

from gateway.machines.process import die_with_parent

log = logging.getLogger("serial_console_lab.machines.accel")

PROBE_SECONDS = 3.0
_cache: dict[str, str] = {}
last_choice: tuple[str, str] | None = None  # (accelerator, why), for the lab's banner
_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
_locks_guard = threading.Lock()


def _loop_lock() -> asyncio.Lock:
    """This event loop's probe lock; locks of closed loops are dropped."""
    loop = asyncio.get_running_loop()
    with _locks_guard:
        for old in [old for old in _locks if old.is_closed()]:
            del _locks[old]
        return _locks.setdefault(loop, asyncio.Lock())


def _cache_file(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "serial-console-lab" / f"accel-{key}"


def _key(qemu: str, kernel: Path) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    stat = kernel.stat()
    raw = f"{boot_id} {shutil.which(qemu)} {kernel.resolve()} {stat.st_size} {stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def select_accel(kernel: Path, qemu: str = "qemu-system-x86_64") -> str:
    """``"kvm"`` if KVM really boots ``kernel`` on this host, else ``"tcg"``; logged once."""
    global last_choice
    forced = os.environ.get("LAB_ACCEL")
    if forced in ("kvm", "tcg"):
        last_choice = (forced, "LAB_ACCEL")
        return forced
    async with _loop_lock():
        key = _key(qemu, kernel)
        if key in _cache:
            return _cache[key]
        cached = _cache_file(key)
        with contextlib.suppress(OSError):
            accel, _, why = cached.read_text().strip().partition("\n")
            if accel in ("kvm", "tcg"):
                _cache[key] = accel
                why = f"{why or 'checked earlier'}; checked once per boot of the host"
                log.info("accelerator: %s (%s)", accel, why)
                last_choice = (accel, why)
                return accel
        accel, why = await _probe(kernel, qemu)
        log.info("accelerator: %s (%s)", accel, why)
        last_choice = (accel, why)
        _cache[key] = accel
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(f"{accel}\n{why}\n")
        return accel


async def _probe(kernel: Path, qemu: str) -> tuple[str, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is missing or not accessible"
    proc = await asyncio.create_subprocess_exec(
        qemu,
        "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-nodefaults", "-no-user-config",
        "-display", "none", "-m", "64", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
        "-serial", "stdio",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            line = await proc.stdout.readline()
        if b"Linux version" in line:
            return "kvm", "KVM booted the guest kernel"
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    err = await proc.stderr.read()
        detail = err.decode(errors="replace").strip().splitlines()
        return "tcg", f"KVM did not boot a guest: {detail[-1] if detail else 'no output'}"
    except TimeoutError:
        return "tcg", f"KVM printed nothing in {PROBE_SECONDS:.0f} s: /dev/kvm does not run guests"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
