"""Emulated guests at scale: 4,000 in one process, each with its console hub and one open
console session, as a lab with a client on every console has them.

Each guest is an ``EmulatedMachine`` with a ``BootLog`` and a ``ConsoleHub`` installed before
it starts (the hub reads its port from the first byte), and one writer ``ConsoleSession``
attached, whose client (a task here, as the websocket door has one) takes its output.
Measured: the start of all of them to ``login:`` seen by every session, resident memory
per guest (VmRSS of this process before and after), the CPU the idle lab burns over 10 s
(``os.times``, once the boot logs are on disk: an idle guest waits in epoll, so this
should be near zero), and the file
descriptors per guest, split into the guest with its port (the PTY's two ends and the
hub's) and its boot log (one file).

The kernel caps PTYs (``/proc/sys/kernel/pty/max``, 4,096 here), and so one process's
descriptors (``RLIMIT_NOFILE``; the soft limit is raised to the hard one first): the
benchmark refuses, naming the limit, when either cannot hold the guests it was asked for.

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_emulator_scale [COUNT] [IDLE_SECONDS]``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from emulator.machine import EmulatedMachine
from gateway.console.bootlog import BootLog
from gateway.console.hub import ConsoleHub
from gateway.console.sessions import ConsoleSession, Output, Role

FDS_PER_GUEST = 4  # PTY master and slave (kept by the guest), the hub's port, the boot log
BOOTLOG_BYTES = 1 << 20  # the default lab's ring per VM (sparse on disk)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _check_limits(count: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; refuse, naming the limit, when the
    descriptors or the kernel's PTYs cannot hold ``count`` guests. The fd limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = count * FDS_PER_GUEST + _open_fds() + 64
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(
            f"{count} emulated guests need about {need} file descriptors; the hard limit "
            f"(RLIMIT_NOFILE) is {hard}: raise it (ulimit -Hn) or run fewer"
        )
    most = int(Path("/proc/sys/kernel/pty/max").read_text())
    used = int(Path("/proc/sys/kernel/pty/nr").read_text())
    if count > most - used:
        raise RuntimeError(
            f"{count} emulated guests need {count} PTYs; the kernel allows {most} "
            f"(/proc/sys/kernel/pty/max) and {used} are in use: raise it or run fewer"
        )
    return hard


class _Client:
    """The client of one console session: takes its output, notes when ``login: `` came."""

    def __init__(self, session: ConsoleSession) -> None:
        self.session = session
        self.ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.bytes = 0
        self._tail = b""

    async def run(self) -> None:
        while self.session.is_open:
            for item in await self.session.take():
                if isinstance(item, Output):
                    self.bytes += len(item.data)
                    self._tail = (self._tail + item.data)[-64:]
                    if not self.ready.done() and self._tail.endswith(b"login: "):
                        self.ready.set_result(time.perf_counter())


async def measure(count: int, idle_seconds: float) -> list[tuple[str, str]]:
    limit = _check_limits(count)
    fds_before, rss_before = _open_fds(), _rss_kib()
    machines: list[EmulatedMachine] = []
    hubs: list[ConsoleHub] = []
    clients: list[_Client] = []
    tasks: list[asyncio.Task[None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as state:
        try:
            for n in range(count):
                vm = EmulatedMachine(f"scale-{n:04d}")
                hub = ConsoleHub(vm, BootLog(Path(state) / vm.name, BOOTLOG_BYTES))
                hub.install()
                session = ConsoleSession(f"{n:032x}", "bench", vm.name, Role.WRITER)
                hub.attach(session)
                client = _Client(session)
                machines.append(vm)
                hubs.append(hub)
                clients.append(client)
                tasks.append(asyncio.create_task(client.run()))
            fds_logs = _open_fds() - fds_before  # the boot logs are open from here on
            started = time.perf_counter()
            await asyncio.gather(*(vm.start() for vm in machines))
            async with asyncio.timeout(300):
                done = await asyncio.gather(*(c.ready for c in clients))
            boot_all = max(done) - started
            fds_guests = _open_fds() - fds_before - fds_logs
            # The hubs put the boot output on disk (fsync, in worker threads) after the
            # boot: let that finish, so the idle figure is the idle lab's.
            flushing = [hub._flush_task for hub in hubs if hub._flush_task is not None]
            await asyncio.gather(*flushing)
            flushed = time.perf_counter() - started - boot_all
            rss_after = _rss_kib()
            cpu_before, wall_before = os.times(), time.perf_counter()
            await asyncio.sleep(idle_seconds)  # the measurement itself: nothing to wait for
            cpu_after, wall = os.times(), time.perf_counter() - wall_before
            cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            total_bytes = sum(c.bytes for c in clients)
            open_sessions = sum(hub.session_count for hub in hubs)
        finally:
            for task in tasks:
                task.cancel()
            for vm in machines:
                await vm.deallocate()
            for hub in hubs:
                hub.close()
                hub.bootlog.close()
    return [
        ("guests (hub + one open console session each)", f"{count}"),
        ("open console sessions when idle", f"{open_sessions}"),
        ("file-descriptor limit", f"{limit}"),
        (f"start of all {count} to login: at every session", f"{boot_all * 1000:.0f} ms"),
        ("boot output delivered to the sessions", f"{total_bytes / 1024:.0f} KiB"),
        (f"boot logs still flushing after ({len(flushing)})", f"{flushed * 1000:.0f} ms"),
        ("resident memory before", f"{rss_before / 1024:.1f} MiB"),
        ("resident memory after", f"{rss_after / 1024:.1f} MiB"),
        ("resident memory per guest", f"{(rss_after - rss_before) / count:.1f} KiB"),
        (f"idle CPU over {wall:.0f} s", f"{cpu * 1000:.0f} ms ({100 * cpu / wall:.2f} %)"),
        ("descriptors per guest: guest + port", f"{fds_guests / count:.2f}"),
        ("descriptors per guest: boot log", f"{fds_logs / count:.2f}"),
    ]


def main(count: int = 4000, idle_seconds: float = 10.0) -> None:
    rows = asyncio.run(measure(count, idle_seconds))
    width = max(len(label) for label, _ in rows)
    print(f"Emulated guests at scale ({count} in one process)")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
        float(sys.argv[2]) if len(sys.argv) > 2 else 10.0,
    )
