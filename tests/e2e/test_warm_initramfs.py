"""Warm starts of the initramfs guest behind the real console hub: its first cold boot is
saved at its login prompt when nobody typed before it, and the same VM started again (in
another folder) starts from that state at its prompt and takes typing; a boot typed on
before it was up is not saved (a state saved in the middle of a login would be every
later VM's). (libvirt's warm starts are tested with its disk VMs, in test_libvirt_disk.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.console.bootlog import BootLog
from gateway.console.hub import ConsoleHub
from gateway.console.sessions import ConsoleSession, Output, Role
from gateway.machines.qemu import QemuMachine
from gateway.machines.warm import WarmStore
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, require_qemu

pytestmark = [pytest.mark.qemu]


class Watched:
    """A QEMU VM behind a console hub with a writer session, as a lab has it."""

    def __init__(self, folder: Path, store: WarmStore) -> None:
        # one name: an initramfs guest has no agent to take another, so its name is part of
        # its saved state's key
        self.vm = QemuMachine("guest", run_dir=folder / "run", password=GUEST_PASSWORD, warm=store)
        self.log = BootLog(folder / "bootdiag")
        self.hub = ConsoleHub(self.vm, self.log)
        self.session = ConsoleSession("a" * 16, "alice", "guest", Role.WRITER)
        self.seen = b""

    async def start(self) -> None:
        self.hub.install()
        self.hub.attach(self.session)
        await self.vm.start()

    async def read_until(self, needle: bytes) -> None:
        async with asyncio.timeout(scaled(60)):
            while needle not in self.seen:
                items = await self.session.take()
                self.seen += b"".join(i.data for i in items if isinstance(i, Output))

    async def close(self) -> None:
        await self.vm.deallocate()
        self.hub.close()
        self.log.close()


async def test_an_untouched_boot_is_saved_and_a_vm_like_it_starts_from_it(tmp_path: Path) -> None:
    require_qemu()
    store = WarmStore(tmp_path / "warm")
    first = Watched(tmp_path / "first", store)
    try:
        await first.start()
        await first.read_until(b"login: ")
        assert await first.vm.save_settled(), "an untouched boot is saved"
    finally:
        await first.close()
    second = Watched(tmp_path / "second", store)
    try:
        await second.start()
        assert second.vm.started_warm
        await second.read_until(b"was restored from a saved boot")
        second.hub.submit(second.session, b"root\r")
        await second.read_until(b"Password: ")
    finally:
        await second.close()


async def test_a_boot_typed_on_before_it_was_up_is_not_saved(tmp_path: Path) -> None:
    require_qemu()
    store = WarmStore(tmp_path / "warm")
    first = Watched(tmp_path / "first", store)
    try:
        await first.start()
        await first.read_until(b"Linux version")  # booting: no prompt yet
        first.hub.submit(first.session, b"\r")  # typed ahead, as people do
        await first.read_until(b"login: ")
        assert not await first.vm.save_settled()
    finally:
        await first.close()
    assert not any(p.is_dir() for p in store.folder.glob("*")), "nothing was saved"
