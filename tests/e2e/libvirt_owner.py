"""A process that owns one libvirt guest: ``python -m tests.e2e.libvirt_owner DIR``.

Prints ``domain NAME QEMU-PID`` once the guest runs, then waits until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.machines.libvirt import LibvirtMachine


async def main(run_dir: Path) -> None:
    async with LibvirtMachine("owned-1", run_dir=run_dir) as vm:
        print(f"domain {vm.domain_name} {vm.pid}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
