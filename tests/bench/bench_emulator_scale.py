"""Emulated guests at scale: 500 machines in one process, each with a reader on its PTY.

Measures the boot of all of them to ``login:``, resident memory per machine (VmRSS of this
process before and after, readers included) and the CPU the idle lab burns over 10 s
(``os.times``: an idle guest waits in epoll, so this should be near zero).

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_emulator_scale [COUNT] [IDLE_SECONDS]``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from pathlib import Path

from emulator.machine import EmulatedMachine
from gateway.console.port import SerialPort

FDS_PER_MACHINE = 3  # PTY master and slave (kept by the guest), the reader's slave fd


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _raise_fd_limit(count: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; fail clearly if that is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = count * FDS_PER_MACHINE + 64
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(
            f"{count} emulated machines need about {need} file descriptors; the hard limit "
            f"is {hard}: raise it (ulimit -Hn) or run fewer"
        )
    return hard


class _LoginWatch:
    """A reader on one PTY that resolves ``ready`` when ``login: `` has been read."""

    def __init__(self) -> None:
        self.ready = asyncio.get_running_loop().create_future()
        self.bytes = 0
        self.port: SerialPort | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        self._tail = (self._tail + chunk)[-64:]
        if not self.ready.done() and self._tail.endswith(b"login: "):
            self.ready.set_result(time.perf_counter())

    async def hook(self, path: str) -> None:
        self.port = await SerialPort.open(path, on_data=self.feed)


async def measure(count: int, idle_seconds: float) -> list[tuple[str, str]]:
    limit = _raise_fd_limit(count)
    rss_before = _rss_kib()
    machines: list[EmulatedMachine] = []
    watches: list[_LoginWatch] = []
    for n in range(count):
        vm = EmulatedMachine(f"scale-{n:03d}")
        watch = _LoginWatch()
        vm.add_port_hook(watch.hook)
        machines.append(vm)
        watches.append(watch)
    try:
        started = time.perf_counter()
        await asyncio.gather(*(vm.start() for vm in machines))
        async with asyncio.timeout(120):
            done = await asyncio.gather(*(w.ready for w in watches))
        boot_all = max(done) - started
        rss_after = _rss_kib()
        cpu_before, wall_before = os.times(), time.perf_counter()
        await asyncio.sleep(idle_seconds)  # the measurement itself: nothing to wait for
        cpu_after, wall = os.times(), time.perf_counter() - wall_before
        cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        total_bytes = sum(w.bytes for w in watches)
    finally:
        for vm in machines:
            await vm.deallocate()
        for watch in watches:
            if watch.port is not None:
                watch.port.close()
    return [
        ("machines (each with a reader)", f"{count}"),
        ("file-descriptor limit", f"{limit}"),
        (f"boot of all {count} to login:", f"{boot_all * 1000:.0f} ms"),
        ("boot output read", f"{total_bytes / 1024:.0f} KiB"),
        ("resident memory before", f"{rss_before / 1024:.1f} MiB"),
        ("resident memory after", f"{rss_after / 1024:.1f} MiB"),
        ("resident memory per machine", f"{(rss_after - rss_before) / count:.1f} KiB"),
        (f"idle CPU over {wall:.0f} s", f"{cpu * 1000:.0f} ms ({100 * cpu / wall:.2f} %)"),
    ]


def main(count: int = 500, idle_seconds: float = 10.0) -> None:
    rows = asyncio.run(measure(count, idle_seconds))
    width = max(len(label) for label, _ in rows)
    print(f"Emulated machines at scale ({count} in one process)")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 500,
        float(sys.argv[2]) if len(sys.argv) > 2 else 10.0,
    )
