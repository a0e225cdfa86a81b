"""The lab's state folder is private, and a crashed VM powers off at once."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from gateway.lab.runtime import LabRuntime, LabRuntimeError
from gateway.machines import EventKind, PowerState
from gateway.testing.timeouts import scaled
from tests.support.lab import running_lab


async def test_the_state_folder_and_database_are_the_owners_alone(tmp_path: Path) -> None:
    """lab.db holds the audit log and the key that signs log URLs: no one else reads it."""
    async with running_lab(tmp_path) as lab:
        state = lab.runtime.state_dir
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("lab.db", "lab.db-wal"):
            assert stat.S_IMODE((state / name).stat().st_mode) & 0o077 == 0, name


async def test_power_off_of_a_panicked_vm_does_not_wait_for_acpi(tmp_path: Path) -> None:
    """A crashed kernel answers no power button: powerOff halts it at once."""
    async with running_lab(tmp_path) as lab:
        vm = lab.runtime.machines["linux-1"]
        hub = lab.runtime.hubs["linux-1"]
        with vm.events() as events:
            await hub.command("sysrq", ["c"])
            await events.wait_for(lambda e: e.kind is EventKind.PANICKED, scaled(10))
        began = time.monotonic()
        await vm.stop(timeout=30)
        assert vm.power_state is PowerState.STOPPED
        assert time.monotonic() - began < 5


async def test_a_second_lab_on_the_same_state_folder_is_refused(tmp_path: Path) -> None:
    """Two labs on one state folder would kill each other's guests: the second is refused,
    naming the first, and the first keeps running."""
    async with running_lab(tmp_path) as first:
        config = first.runtime.config
        with pytest.raises(LabRuntimeError, match=r"in use by another lab \(pid \d+\)"):
            async with LabRuntime(config.with_overrides(port=0)):
                pass
        assert first.runtime.machines["linux-1"].power_state is PowerState.RUNNING
