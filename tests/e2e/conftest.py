"""Fixtures for tests on real QEMU guests booted from the image in images/build/.

``guest``: a guest of the test's own, for tests about booting or that change the guest
(power, reset, SysRq b/c, stop). ``shared_guest``: one guest per module (``module_guest``,
on the module's event loop), handed to each test at a fresh login prompt, for tests that
only read it or type at its console; they run on the module's loop (``ON_MODULE_LOOP``)
and on one xdist worker (``SHARED_GUEST``), so the module boots it once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.machines.base import MachineBase
from gateway.machines.qemu import IMAGE_DIR, QemuMachine
from gateway.testing.patterns import AT_END
from gateway.testing.timeouts import scaled
from tests.support.console import PortConsole
from tests.support.libvirtd import Libvirtd, LibvirtdUnavailable, shared

GUEST_PASSWORD = "serial-lab"
BOOT = 60.0  # seconds (scaled) from power-on to the login prompt, on a busy machine
# What a module of shared_guest tests is marked with: its loop, and one worker for it.
ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
# The default lab less its disk VMs (see the file): what the suite's whole-lab tests run.
SUITE_LAB = Path(__file__).with_name("lab.toml")


def require_qemu() -> None:
    """Fail, with the command to run, when QEMU or the guest image is missing."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: sudo apt-get install qemu-system-x86")
    if not (IMAGE_DIR / "vmlinux").is_file():
        pytest.fail("the guest image is not built: make images")


@dataclass
class Guest:
    """A QEMU guest and the consoles opened on its serial port, one per launch."""

    vm: QemuMachine  # or a LibvirtMachine: the same interface, the same tests
    consoles: list[PortConsole] = field(default_factory=list)

    @property
    def console(self) -> PortConsole:
        return self.consoles[-1]


async def running(vm: MachineBase) -> AsyncIterator[Guest]:
    """``vm`` started, with a console opened on its serial port each time it gets one
    (before its CPU runs); stopped, consoles closed, on the way out."""
    guest = Guest(vm)  # type: ignore[arg-type]
    observe = getattr(vm, "observe_output", None)  # as the lab's hub does: a warm store's

    async def attach(path: str) -> None:
        guest.consoles.append(await PortConsole.open(path, observe))

    vm.add_port_hook(attach)
    async with vm:
        yield guest
        for console in guest.consoles:
            console.close_port()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module's ``shared_guest`` tests run on one xdist worker, which boots the guest
    once; tests already in a group stay in theirs."""
    for item in items:
        shares = "shared_guest" in getattr(item, "fixturenames", ())
        if shares and item.get_closest_marker("xdist_group") is None:
            module = item.module.__name__ if isinstance(item, pytest.Function) else item.nodeid
            item.add_marker(pytest.mark.xdist_group(f"shared-guest-{module}"))


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[Guest]:
    """A booting guest whose serial port is read from before its CPU runs."""
    require_qemu()
    vm = QemuMachine("guest-1", run_dir=tmp_path / "run", password=GUEST_PASSWORD)
    async for booted in running(vm):
        yield booted


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_guest(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Guest]:
    """One QEMU guest for a module's ``shared_guest`` tests (a module may override it:
    the libvirt tests do)."""
    require_qemu()
    folder = tmp_path_factory.mktemp("shared-guest")
    vm = QemuMachine("guest-1", run_dir=folder / "run", password=GUEST_PASSWORD)
    async for booted in running(vm):
        yield booted


@pytest_asyncio.fixture(loop_scope="module")
async def shared_guest(module_guest: Guest) -> Guest:
    """The module's guest at a fresh login prompt, its console's cursor just before it
    (``expect("login: ")`` finds it), whatever the test before left: a shell, a line
    half typed, a password asked for. Fails if the guest is not running: a test that
    changes the guest's power wants a ``guest`` of its own."""
    await at_login_prompt(module_guest.console)
    return module_guest


async def at_login_prompt(console: PortConsole) -> None:
    """Bring ``console`` to a fresh login prompt and put its cursor at the prompt's line."""
    console.cursor = len(console.data)  # what came before belongs to earlier tests
    await console.send("\x15\r")  # Ctrl+U drops a half-typed line, Enter asks anew
    # busybox ash asks the terminal where its cursor is (ESC [6n) right after its prompt
    prompt = await console.expect(rb"(login: |# |Password: )(?:\x1b\[6n)?" + AT_END.encode(), BOOT)
    if prompt.group(1) == b"# ":
        await console.send("exit\r")  # getty comes back with a new prompt
        prompt = await console.expect(r"login: " + AT_END, BOOT)
    elif prompt.group(1) == b"Password: ":  # the Enter above gave an empty password
        prompt = await console.expect(r"login: " + AT_END, BOOT)
    console.cursor = console.data.rfind(b"\n", 0, prompt.start()) + 1


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """libvirtd on qemu:///system: the running one, or virtlogd + libvirtd started for the
    run and stopped after it (by PID), shared by xdist's workers through a folder of the
    run's (see ``tests.support.libvirtd.shared``)."""
    require_qemu()
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.fail("libvirt-python is missing: pip install -e '.[libvirt]' (make test does)")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder every worker's basetemp is made in
    try:
        with shared(root / "libvirtd-shared", scaled(60)) as daemons:
            yield daemons
    except LibvirtdUnavailable as err:
        pytest.fail(str(err))
