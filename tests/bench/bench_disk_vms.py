"""Disk VMs beside the initramfs guest: launch to the firmware's first serial byte, to
GRUB's menu and to ``login:``, cold; a warm start to ``login:`` (from a state saved by a
first cold boot); QEMU's resident memory at the login prompt; the saved state's and the
images' sizes. Medians of RUNS launches each.

``python -m tests.bench`` runs it with the others; alone:
``python -m tests.bench.bench_disk_vms [RUNS]``. A warm VM's ``login:`` is the prompt its
serial getty prints once it has taken its own identity; the saved prompt before it already
takes typing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.machines.disk import DiskSpec
from gateway.machines.image import IMAGE_DIR, builtin_disk, disk_dir
from gateway.machines.qemu import QemuMachine
from gateway.machines.warm import WarmStore
from tests.bench.bench_qemu_boot import _rss_mib

MARKS = {"first byte": b"", "GRUB": b"GNU GRUB", "login:": b"login: "}
TIMEOUT = 300.0


class Watch:
    """Reads a VM's serial port from before its CPU runs, hands the bytes to the machine
    (as the console hub does: a cold boot to be saved needs them) and notes when each mark
    first appears."""

    def __init__(self, vm: QemuMachine) -> None:
        self.vm = vm
        self.data = bytearray()
        self.started = 0.0
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.fd = -1

    async def attach(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            self.data += chunk
            self.vm.observe_output(chunk)
            now = time.perf_counter() - self.started
            for name, mark in MARKS.items():
                if name not in self.seen and mark in self.data:
                    self.seen[name] = now
            self.changed.set()

    async def wait(self, name: str) -> float:
        async with asyncio.timeout(TIMEOUT):
            while name not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[name]

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


async def one(vm: QemuMachine, marks: list[str]) -> dict[str, float]:
    watch = Watch(vm)
    vm.add_port_hook(watch.attach)
    watch.started = time.perf_counter()
    try:
        await vm.start()
        started = time.perf_counter() - watch.started  # a warm VM: restored and itself
        out = {name: await watch.wait(name) for name in marks}
        out["started"] = started
        if not marks:  # the VM that saved the boot: its prompt was restored with it
            out["login:"] = started
        out["rss"] = _rss_mib(vm.pid)
        return out
    finally:
        await vm.deallocate()
        watch.close()


async def save_first_boot(saver: QemuMachine) -> None:
    """A first cold boot, read as the console hub reads it, until it is saved."""
    watch = Watch(saver)
    saver.add_port_hook(watch.attach)
    await saver.start()
    async with asyncio.timeout(TIMEOUT * 2):
        await saver.warm_saved.wait()
    await saver.deallocate()
    watch.close()


def disk_vm(name: str, folder: Path, spec: DiskSpec, warm: WarmStore | None = None) -> QemuMachine:
    return QemuMachine(name, run_dir=folder, memory_mb=512, cpus=2, disk=spec,
                       disk_dir=folder / "disks", warm=warm)  # fmt: skip


async def measure(runs: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for gen in (1, 2):
            disk = builtin_disk(f"debian-12-gen{gen}")
            assert disk is not None
            spec = DiskSpec(image=disk.path, generation=gen)
            results[f"Gen{gen} cold"] = [
                await one(
                    disk_vm(f"gen{gen}", root / f"g{gen}-{i}", spec),
                    ["first byte", "GRUB", "login:"],
                )
                for i in range(runs)
            ]
        results["initramfs cold"] = [
            await one(QemuMachine("initramfs", run_dir=root / f"i-{i}"), ["first byte", "login:"])
            for i in range(runs)
        ]
        # warm: a first cold boot saves its state, then every start restores it
        store = WarmStore(root / "warm")
        disk = builtin_disk("debian-12-gen2")
        assert disk is not None
        spec = DiskSpec(image=disk.path, generation=2)
        await save_first_boot(disk_vm("saver", root / "saver", spec, store))
        results["Gen2 warm"] = [
            await one(
                disk_vm(f"warm{i}", root / f"w-{i}", spec, store),
                ["login:"],
            )
            for i in range(runs)
        ]
        results["Gen2 warm, saver"] = [
            await one(disk_vm("saver", root / f"s-{i}", spec, store), []) for i in range(runs)
        ]
        states = [p for p in store.folder.iterdir() if p.is_dir()]
        results["_state"] = [{"size": sum(f.stat().st_blocks * 512 for f in states[0].iterdir())}]
        results.update(await _libvirt_warm(root, spec, runs))
    return results


async def _libvirt_warm(root: Path, spec: DiskSpec, runs: int) -> dict[str, list[dict[str, float]]]:
    """The same warm starts on the libvirt backend (this machine's libvirtd, or one started
    for the benchmark); nothing when libvirt cannot be had."""
    try:
        import libvirt  # noqa: F401

        from gateway.machines.libvirt import LibvirtMachine
        from tests.support.libvirtd import Libvirtd, LibvirtdUnavailable
    except ImportError as err:
        print(f"libvirt warm starts: not measured: {err}")
        return {}
    try:
        daemons = Libvirtd.ensure()
    except LibvirtdUnavailable as err:
        print(f"libvirt warm starts: not measured: {err}")
        return {}
    store = WarmStore(root / "libvirt-warm")

    def vm(name: str, folder: Path) -> LibvirtMachine:
        return LibvirtMachine(name, run_dir=folder, memory_mb=512, cpus=2, disk=spec,
                              disk_dir=folder / "disks", warm=store)  # fmt: skip

    try:
        await save_first_boot(vm("saver", root / "lv-saver"))  # type: ignore[arg-type]
        return {
            "libvirt warm": [
                await one(vm(f"warm{i}", root / f"lw-{i}"), ["login:"])  # type: ignore[arg-type]
                for i in range(runs)
            ],
            "libvirt saver": [
                await one(vm("saver", root / f"ls-{i}"), [])  # type: ignore[arg-type]
                for i in range(runs)
            ],
        }
    finally:
        daemons.stop()


def main(runs: int = 3) -> None:
    started = time.perf_counter()
    results = asyncio.run(measure(runs))
    print(
        f"\nDisk VMs under QEMU (TCG; 2 vCPUs, the initramfs guest 1), medians of {runs} "
        "launches, seconds from launch"
    )
    header = ("", "first byte", "GRUB menu", "login:", "RSS at login", "start()")
    rows = [header]
    for name, runs_of in results.items():
        if name.startswith("_"):
            continue

        def med(key: str, runs_of: list[dict[str, float]] = runs_of) -> str:
            values = [r[key] for r in runs_of if key in r]
            return f"{statistics.median(values):.2f}" if values else "-"

        rss = statistics.median(r["rss"] for r in runs_of)
        rows.append(
            (name, med("first byte"), med("GRUB"), med("login:"), f"{rss:.0f} MiB", med("started"))
        )
    for row in rows:
        print(f"  {row[0]:<16} {row[1]:>10} {row[2]:>10} {row[3]:>8} {row[4]:>13} {row[5]:>8}")
    print(
        "  (start(): until the machine's start returned. Gen2 warm: another VM restored, its"
        " identity\n   taken, then its getty prints a login prompt with its own name; saver: the"
        " VM that saved\n   the boot, at its restored prompt once it runs; libvirt: the same"
        " on libvirt's QEMU)"
    )
    size = results["_state"][0]["size"]
    images = {p.name: p.stat().st_size for p in disk_dir().glob("*.qcow2")}
    kernel = sum(p.stat().st_size for p in IMAGE_DIR.iterdir() if p.is_file())
    print(f"  saved state of a Gen2 VM on disk: {size / 2**20:.0f} MiB")
    print("  images: " + ", ".join(f"{n} {s / 2**20:.0f} MiB" for n, s in sorted(images.items()))
          + f", initramfs guest {kernel / 2**20:.0f} MiB")  # fmt: skip
    build = (disk_dir() / "disk.env").read_text().split("BUILD_SECONDS=")[-1].strip()
    took = time.perf_counter() - started
    print(f"  disk images' last build: {build} s; this benchmark: {took:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
