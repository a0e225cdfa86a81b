"""A process that owns one QEMU guest: ``python -m tests.e2e.qemu_owner DIR``.

Prints ``qemu-pid N`` once the guest runs, then waits until it is interrupted or killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.machines.qemu import QemuMachine


async def main(run_dir: Path) -> None:
    async with QemuMachine("owned-1", run_dir=run_dir) as vm:
        print(f"qemu-pid {vm.pid}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main(Path(sys.argv[1])))
    except KeyboardInterrupt:
        print("interrupted: guest deallocated", flush=True)
