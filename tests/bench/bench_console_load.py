"""The lab under load: 200 console clients on one VM while its guest writes flat out.

One writer and 199 watchers (raw websocket clients that only walk frame headers, so the
figures are the gateway's, see ``bench_console.Probe``) on the bench guest of
``console_peers``; the guest blasts ``BLAST`` bytes; each client must receive all of them
(every client is counted to the blast's end marker). Reported: the time, the throughput
per client and in total, how many clients fell behind (4002, told where to resume), and
the lab process's peak resident memory and CPU time over the load, read from /proc.

``python -m tests.bench`` runs it with the others; alone: ``python -m
tests.bench.bench_console_load [CLIENTS] [MIB]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.bench_console import (
    STEP_TIMEOUT,
    Sink,
    child,
    fan_out,
    gateway_session,
    measure_blast,
    open_ws,
)

CLIENTS = 200
MIB = 1 << 20


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def _rss_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(clients: int, size: int) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        async with (
            child(work / "lab.log", "lab", str(work / "lab")) as ready,
            httpx.AsyncClient(base_url=ready["url"], timeout=STEP_TIMEOUT) as http,
        ):
            pid = int(ready["pid"])
            idle_rss = _rss_mib(pid, "VmRSS")

            async def opener(n: int) -> Sink:
                url = await gateway_session(http, "alice" if n == 0 else "carol")
                return await open_ws(url + ("&watch=1" if n else ""))

            async with fan_out(opener, clients) as sinks:
                rss_open = _rss_mib(pid, "VmRSS")
                cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
                slowest, total, note = await measure_blast(sinks[0], sinks, size)
                cpu = _cpu_seconds(pid) - cpu0
                took = time.perf_counter() - t0
                cut = [s.closed.result() for s in sinks if s.closed.done()]
            peak = _rss_mib(pid, "VmHWM")
    return [
        ("clients (1 writer, the rest watchers)", f"{clients}"),
        ("bytes each client receives", f"{size / MIB:.0f} MiB"),
        ("time for every client to get them", f"{took:.2f} s"),
        ("slowest client", f"{slowest:.1f} MiB/s"),
        ("all clients together", f"{total:.0f} MiB/s"),
        ("clients that fell behind (4002)", f"{len(cut)}" + (f" ({note})" if note else "")),
        (
            "lab resident memory: idle / 200 open / peak",
            f"{idle_rss:.0f} / {rss_open:.0f} / {peak:.0f} MiB",
        ),
        ("lab CPU time during the load", f"{cpu:.2f} s ({100 * cpu / took:.0f}% of a core)"),
    ]


def main(clients: int = CLIENTS, mib: int = 4) -> None:
    rows = asyncio.run(measure(clients, mib * MIB))
    print(f"The lab under load: {clients} console clients on one VM, its guest writing flat out")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS,
        int(sys.argv[2]) if len(sys.argv) > 2 else 4,
    )
