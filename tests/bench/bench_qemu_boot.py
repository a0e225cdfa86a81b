"""Real guest figures, on the QEMU backend and on the libvirt backend beside it: launch to
``login:``, hard reset to ``login:``, memory, image size, how long the guest takes to take
2,000 typed bytes (``wait_input_taken``: what a SysRq after typed input waits before its
BREAK), and a keystroke's round trip at the shell prompt (a byte typed on the serial port
until the guest's echo of it is read back: for libvirt, through its console stream).

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_qemu_boot [RUNS]``. Prints a table of medians over RUNS boots.
The libvirt rows use the libvirtd running on ``qemu:///system``, or one started for the
benchmark (``tests.support.libvirtd``) and stopped after; without libvirt they say why.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.machines.base import MachineBase
from gateway.machines.qemu import IMAGE_DIR, QemuMachine
from tests.support.console import PortConsole

PASSWORD = "serial-lab"
KEYSTROKES = 40

MachineMaker = Callable[[Path], MachineBase]


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _keystrokes(console: PortConsole) -> list[float]:
    """Seconds from typing one byte at the shell prompt to reading its echo, KEYSTROKES times
    (on a comment line, so the Enter at the end runs nothing)."""
    await console.send("#")
    await console.expect(r"#", 10)
    times = []
    for i in range(KEYSTROKES):
        key = "abcdefghij"[i % 10]
        started = time.perf_counter()
        await console.send(key)
        await console.expect(re.escape(key), 10)
        times.append(time.perf_counter() - started)
    await console.send("\r")
    await console.expect(r"# ", 10)
    return times


async def _one(make: MachineMaker, run_dir: Path) -> dict[str, float | str]:
    consoles: list[PortConsole] = []

    async def attach(path: str) -> None:
        consoles.append(await PortConsole.open(path))

    vm = make(run_dir)
    vm.add_port_hook(attach)
    started = time.perf_counter()
    async with vm:  # type: ignore[attr-defined]
        console = consoles[0]
        await console.expect(r"login: ", 120)
        boot = time.perf_counter() - started
        rss = _rss_mib(vm.pid)  # type: ignore[attr-defined]
        await console.login(PASSWORD)
        keys = await _keystrokes(console)
        await console.send("5" * 2000)
        started = time.perf_counter()
        await vm.wait_input_taken(60)
        taken = time.perf_counter() - started
        started = time.perf_counter()
        await vm.reset()
        await console.expect(r"Linux version", 120)
        await console.expect(r"login: ", 120)
        reset = time.perf_counter() - started
        accel = vm.accel or "?"  # type: ignore[attr-defined]
        console.close_port()
    return {
        "boot": boot,
        "reset": reset,
        "rss": rss,
        "taken": taken,
        "key": statistics.median(keys),
        "accel": accel,
    }


async def measure(make: MachineMaker, runs: int) -> list[dict[str, float | str]]:
    with tempfile.TemporaryDirectory() as tmp:
        return [await _one(make, Path(tmp) / str(i)) for i in range(runs)]


def _median(results: list[dict[str, float | str]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


def _libvirt(runs: int) -> list[dict[str, float | str]] | str:
    """The libvirt backend's results, or why there are none."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is missing (pip install -e '.[libvirt]')"
    from gateway.machines.libvirt import LibvirtMachine
    from tests.support.libvirtd import Libvirtd, LibvirtdUnavailable

    try:
        daemons = Libvirtd.ensure()
    except LibvirtdUnavailable as err:
        return str(err)
    try:
        return asyncio.run(measure(lambda d: LibvirtMachine("bench-1", run_dir=d), runs))
    finally:
        daemons.stop()


def main(runs: int = 3) -> None:
    qemu = asyncio.run(measure(lambda d: QemuMachine("bench-1", run_dir=d), runs))
    libvirt = _libvirt(runs)
    image = sum(p.stat().st_size for p in (IMAGE_DIR / "vmlinux", IMAGE_DIR / "initramfs.cpio"))
    rows: list[tuple[str, Callable[[list[dict[str, float | str]]], str]]] = [
        ("accelerator", lambda r: ", ".join(sorted({str(x["accel"]) for x in r}))),
        (f"launch to login: (median of {runs})", lambda r: f"{_median(r, 'boot'):.2f} s"),
        (f"hard reset to login: (median of {runs})", lambda r: f"{_median(r, 'reset'):.2f} s"),
        ("resident memory of QEMU per guest (128 MiB)", lambda r: f"{_median(r, 'rss'):.0f} MiB"),
        (
            f"2,000 typed bytes taken by the guest (median of {runs})",
            lambda r: f"{_median(r, 'taken') * 1000:.0f} ms",
        ),
        (
            f"keystroke to its echo at the prompt (median of {runs}x{KEYSTROKES})",
            lambda r: f"{_median(r, 'key') * 1000:.2f} ms",
        ),
    ]
    table = [("figure", "QEMU", "libvirt")]
    for name, show in rows:
        table.append((name, show(qemu), show(libvirt) if isinstance(libvirt, list) else "-"))
    table.append(("image size (vmlinux + initramfs)", f"{image / 2**20:.1f} MiB", ""))
    width = max(len(row[0]) for row in table)
    print("\nReal guests: the QEMU backend and the libvirt backend (qemu:///system)")
    for name, one, two in table:
        print(f"{name:<{width}}  {one:<10}  {two}")
    if isinstance(libvirt, str):
        print(f"libvirt: not measured: {libvirt}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
