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


def test_a_monitor_socket_in_a_short_temp_folder_goes_with_its_qemu(tmp_path: Path) -> None:
    """A run folder too deep for a Unix socket's path puts QEMU's monitor socket in a short
    folder of its own under the temp folder; when QEMU ends, both go (a suite of labs would
    otherwise leave one per run folder)."""
    from gateway.machines.qemu import _remove_socket, _socket_path

    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    deep.mkdir(parents=True)
    socket_path = _socket_path(deep)
    assert socket_path.parent != deep
    socket_path.write_bytes(b"")  # as QEMU's monitor would leave it
    _remove_socket(socket_path, deep)
    assert not socket_path.parent.exists()
    short = tmp_path / "run"
    short.mkdir()
    kept = _socket_path(short)
    kept.write_bytes(b"")
    _remove_socket(kept, short)
    assert short.is_dir()  # the run folder itself stays
    assert not kept.exists()
