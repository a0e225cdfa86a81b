"""Emulated Linux guests running the image's userland, beside personality-only guests.

Measured, each guest an ``EmulatedMachine`` whose port is read as the gateway reads it:

- start to ``login:`` on the port, median of 10 starts one at a time, for a guest with the
  image's userland (namespaces, busybox init, getty) and for a personality-only guest;
- memory per userland guest: the proportional set size (PSS, ``smaps_rollup``: shared
  pages such as busybox's text counted once across the guests) of its process tree at the
  login prompt, median of 10, and with a root shell logged in;
- a lab of COUNT (200) userland guests started together: time until every port shows
  ``login:``, processes and memory per guest (their trees' PSS, this process's resident
  growth, and the host's MemAvailable drop, which counts the kernel's share: namespaces,
  page tables, tmpfs), and the CPU the idle lab burns over IDLE seconds, in this process
  and in the guests' processes (``/proc/<pid>/stat``).

QEMU's figures for the same image are ``bench_qemu_boot``'s. Where this machine cannot
make the namespaces, the benchmark says why and measures nothing.

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_emulator_userland [COUNT] [IDLE_SECONDS]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
import tty
from pathlib import Path

from emulator.machine import EmulatedMachine
from emulator.sandbox import UserlandImage, userland_unavailable
from emulator.userland import userland_for_lab

SAMPLES = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


class _Port:
    """A guest's serial port read as the gateway reads it (the slave, raw, non-blocking)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.data = bytearray()
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(OSError):
            self.data += os.read(self.fd, 65536)
        self._changed.set()

    async def expect(self, text: bytes, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.data:
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            todo += [
                int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
    return found


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def _available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _guest_root(vm: EmulatedMachine) -> int:
    sandbox = vm.guest.sandbox  # type: ignore[attr-defined]
    assert sandbox is not None
    assert sandbox.pid is not None
    return int(sandbox.pid)


async def _one(
    name: str, image: UserlandImage | None, *, login: bool = False
) -> tuple[float, int, int]:
    """Start one guest to ``login:``: seconds, its tree's PSS (KiB) there, and after a root
    login (0 without the userland)."""
    vm = EmulatedMachine(name, "linux", userland=image)
    started = time.perf_counter()
    await vm.start()
    assert vm.serial_port is not None
    port = _Port(vm.serial_port)
    try:
        await port.expect(b"login: ")
        took = time.perf_counter() - started
        pss = shell = 0
        if image is not None:
            pss = _pss_kib(_tree(_guest_root(vm)))
            if login:
                os.write(port.fd, b"root\r")
                await port.expect(b"Password: ")
                os.write(port.fd, b"serial-lab\r")
                await port.expect(b"# ")
                shell = _pss_kib(_tree(_guest_root(vm)))
        return took, pss, shell
    finally:
        port.close()
        await vm.deallocate()


async def measure(count: int, idle_seconds: float) -> list[tuple[str, str]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="bench-userland-") as state:
        image = userland_for_lab(Path(state))
        assert image is not None
        await _one("warm-up", image)
        userland = [await _one(f"ul-{n}", image, login=True) for n in range(SAMPLES)]
        personality = [await _one(f"p-{n}", None) for n in range(SAMPLES)]

        machines = [EmulatedMachine(f"lab-{n:03d}", "linux", userland=image) for n in range(count)]
        rss_before, available_before = _rss_kib(), _available_kib()
        started = time.perf_counter()
        ports: list[_Port] = []
        try:
            await asyncio.gather(*(vm.start() for vm in machines))
            ports = [_Port(vm.serial_port or "") for vm in machines]
            await asyncio.gather(*(p.expect(b"login: ", 300) for p in ports))
            lab_start = time.perf_counter() - started
            trees = [_tree(_guest_root(vm)) for vm in machines]
            pids = [pid for tree in trees for pid in tree]
            pss = _pss_kib(pids)
            rss_after, available_after = _rss_kib(), _available_kib()
            await asyncio.sleep(1.0)  # let the boots' last writes settle
            own_before, guests_before = os.times(), _cpu_seconds(pids)
            wall_before = time.perf_counter()
            await asyncio.sleep(idle_seconds)  # the measurement itself: nothing to wait for
            wall = time.perf_counter() - wall_before
            own_after, guests_after = os.times(), _cpu_seconds(pids)
        finally:
            for port in ports:
                port.close()
            await asyncio.gather(*(vm.deallocate() for vm in machines))
    own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    guests = guests_after - guests_before
    ms = [t * 1000 for t, _, _ in userland]
    return [
        ("userland guest: start to login:, median of 10", f"{statistics.median(ms):.0f} ms"
         f" (min {min(ms):.0f}, max {max(ms):.0f})"),
        ("personality-only guest: start to login:, median of 10",
         f"{statistics.median(t * 1000 for t, _, _ in personality):.1f} ms"),
        ("userland guest: PSS of its processes at login:, median of 10",
         f"{statistics.median(p for _, p, _ in userland) / 1024:.2f} MiB"),
        ("userland guest: PSS with root's shell logged in, median of 10",
         f"{statistics.median(s for _, _, s in userland) / 1024:.2f} MiB"),
        (f"lab of {count} userland guests: start of all to login:", f"{lab_start:.2f} s"),
        (f"lab of {count}: processes per guest", f"{len(pids) / count:.1f}"),
        (f"lab of {count}: PSS per guest (its processes)", f"{pss / count / 1024:.2f} MiB"),
        (f"lab of {count}: host memory taken per guest (MemAvailable, kernel's included)",
         f"{(available_before - available_after) / count / 1024:.2f} MiB"),
        (f"lab of {count}: this process's resident growth per guest",
         f"{(rss_after - rss_before) / count:.0f} KiB"),
        (f"lab of {count}: idle CPU over {wall:.0f} s, this process",
         f"{own * 1000:.0f} ms ({100 * own / wall:.2f} %)"),
        (f"lab of {count}: idle CPU over {wall:.0f} s, the guests' processes",
         f"{guests * 1000:.0f} ms ({100 * guests / wall:.2f} %)"),
    ]  # fmt: skip


def main(count: int = 200, idle_seconds: float = 10.0) -> None:
    print(f"Emulated Linux guests with the image's userland ({count} in one lab)")
    reason = userland_unavailable()
    if reason is not None:
        print(f"  not measured: {reason}")
        return
    rows = asyncio.run(measure(count, idle_seconds))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 200,
        float(sys.argv[2]) if len(sys.argv) > 2 else 10.0,
    )
