"""Fixtures for tests on real QEMU guests booted from the image in images/build/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.machines.qemu import IMAGE_DIR, QemuMachine
from gateway.testing.timeouts import scaled
from tests.support.console import PortConsole
from tests.support.libvirtd import Libvirtd, LibvirtdUnavailable

GUEST_PASSWORD = "serial-lab"


def require_qemu() -> None:
    """Fail, with the command to run, when QEMU or the guest image is missing."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: sudo apt-get install qemu-system-x86")
    if not (IMAGE_DIR / "vmlinux").is_file():
        pytest.fail("the guest image is not built: make images")


@dataclass
class Guest:
    """A QEMU guest and the consoles opened on its serial port, one per launch."""

    vm: QemuMachine
    consoles: list[PortConsole] = field(default_factory=list)

    @property
    def console(self) -> PortConsole:
        return self.consoles[-1]


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[Guest]:
    """A booting guest whose serial port is read from before its CPU runs."""
    require_qemu()
    vm = QemuMachine("guest-1", run_dir=tmp_path / "run", password=GUEST_PASSWORD)
    guest = Guest(vm)

    async def attach(path: str) -> None:
        guest.consoles.append(await PortConsole.open(path))

    vm.add_port_hook(attach)
    async with vm:
        yield guest
        for console in guest.consoles:
            console.close_port()


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    """libvirtd on qemu:///system: the running one, or virtlogd + libvirtd started for the
    session and stopped after it (by PID; see ``tests.support.libvirtd``)."""
    require_qemu()
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.fail("libvirt-python is missing: pip install -e '.[libvirt]' (make test does)")
    try:
        daemons = Libvirtd.ensure(scaled(60))
    except LibvirtdUnavailable as err:
        pytest.fail(str(err))
    yield daemons
    daemons.stop()
