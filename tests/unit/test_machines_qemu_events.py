"""QemuMachine's power state from QMP events, fed as QEMU sends them (no process)."""

from __future__ import annotations

from pathlib import Path

from gateway.machines import PowerState
from gateway.machines.qemu import QemuMachine


def _running(tmp_path: Path) -> QemuMachine:
    vm = QemuMachine("vm-events", run_dir=tmp_path)
    vm._set_state(PowerState.STARTING)
    vm._set_state(PowerState.RUNNING)
    return vm


async def test_a_panic_stays_panicked_through_the_halt_that_follows(tmp_path: Path) -> None:
    """GUEST_PANICKED, then the STOP of the machine's own halt once the panic is written
    out: the machine reports the crash, not a stopped VM (STOP is not a power state)."""
    vm = _running(tmp_path)
    vm._on_event("GUEST_PANICKED", {"action": "none"})
    vm._on_event("STOP", {})
    assert vm.power_state is PowerState.PANICKED
    assert vm._halt_task is not None
    vm._halt_task.cancel()


def test_a_guest_power_off_is_stopped_and_a_resume_alone_changes_nothing(
    tmp_path: Path,
) -> None:
    """SHUTDOWN (then QEMU's STOP under -no-shutdown) is stopped; RESUME only echoes a
    ``cont`` that the machine's own start or reset already accounts for."""
    vm = _running(tmp_path)
    vm._on_event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    vm._on_event("STOP", {})
    assert vm.power_state is PowerState.STOPPED
    vm._on_event("RESUME", {})
    assert vm.power_state is PowerState.STOPPED
    assert vm.state_history[-2:] == [PowerState.RUNNING, PowerState.STOPPED]
