"""QEMU guest figures: launch to ``login:``, hard reset to ``login:``, memory, image size,
and how long the guest takes to take 2,000 typed bytes (``wait_input_taken``: what a SysRq
after typed input waits before its BREAK).

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_qemu_boot [RUNS]``. Prints a table of medians over RUNS boots.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.machines.qemu import IMAGE_DIR, QemuMachine
from tests.support.console import PortConsole


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one(run_dir: Path) -> tuple[float, float, float, float, str]:
    consoles: list[PortConsole] = []

    async def attach(path: str) -> None:
        consoles.append(await PortConsole.open(path))

    vm = QemuMachine("bench-1", run_dir=run_dir)
    vm.add_port_hook(attach)
    started = time.perf_counter()
    async with vm:
        await consoles[0].expect(r"login: ", 120)
        boot = time.perf_counter() - started
        assert vm.pid is not None
        rss = _rss_mib(vm.pid)
        await consoles[0].send("5" * 2000)
        started = time.perf_counter()
        await vm.wait_input_taken(60)
        taken = time.perf_counter() - started
        started = time.perf_counter()
        await vm.reset()
        await consoles[0].expect(r"Linux version", 120)
        await consoles[0].expect(r"login: ", 120)
        reset = time.perf_counter() - started
        accel = vm.accel or "?"
        consoles[0].close_port()
    return boot, reset, rss, taken, accel


async def measure(runs: int) -> list[tuple[str, str]]:
    boots, resets, rsss, takens, accels = [], [], [], [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            boot, reset, rss, taken, accel = await _one(Path(tmp) / str(i))
            boots.append(boot)
            resets.append(reset)
            rsss.append(rss)
            takens.append(taken)
            accels.add(accel)
    image = sum(p.stat().st_size for p in (IMAGE_DIR / "vmlinux", IMAGE_DIR / "initramfs.cpio"))
    return [
        ("accelerator", ", ".join(sorted(accels))),
        (f"launch to login: (median of {runs})", f"{statistics.median(boots):.2f} s"),
        (f"hard reset to login: (median of {runs})", f"{statistics.median(resets):.2f} s"),
        ("resident memory per guest (-m 128)", f"{statistics.median(rsss):.0f} MiB"),
        (
            f"2,000 typed bytes taken by the guest (median of {runs})",
            f"{statistics.median(takens) * 1000:.0f} ms",
        ),
        ("image size (vmlinux + initramfs)", f"{image / 2**20:.1f} MiB"),
    ]


def main(runs: int = 3) -> None:
    rows = asyncio.run(measure(runs))
    width = max(len(k) for k, _ in rows)
    print("\nQEMU guest")
    print(f"{'figure':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
