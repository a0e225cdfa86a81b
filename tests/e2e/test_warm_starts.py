"""Warm starts end to end: a Gen2 disk VM's first cold boot is saved once it is up; a VM
like it, in another lab sharing the saved states, starts from that state with its own host
name, password and machine id, the host's time, a fresh login prompt showing its name, and
a boot log that says it was restored; the VM that saved the boot starts from it as itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.machines.warm import WARM_ENV
from gateway.testing.client import LabClient
from gateway.testing.console import Console
from gateway.testing.lab import LabProcess
from tests.e2e.disklab import BOOT, PASSWORD, RG, USER, image, start_lab, vm_table

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # two systemd boots under TCG, with the labs' starts
]


@pytest.fixture
def shared_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of saved states that both labs use, as the plugin's runs share one."""
    image("debian-12-gen2")
    folder = tmp_path / "warm"
    monkeypatch.setenv(WARM_ENV, str(folder))
    return folder


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[list[LabProcess]]:
    started: list[LabProcess] = []
    yield started
    for lab in started:
        lab.stop()


def start(labs: list[LabProcess], folder: Path, vm: str, password: str) -> LabProcess:
    folder.mkdir()
    lab = start_lab(folder, vm_table(vm, "debian-12-gen2", warm=True), password=password)
    labs.append(lab)
    return lab


def logged_in(lab: LabProcess, vm: str, password: str) -> tuple[LabClient, Console]:
    client = LabClient(lab.url, USER, PASSWORD, ca_path=lab.ca_path)
    console = Console.open(client, vm, group=RG, password=password, timeout=BOOT)
    console.wait_for_boot(BOOT)
    console.login()
    return client, console


def test_a_vm_like_one_booted_before_starts_warm_as_itself(
    tmp_path: Path, shared_states: Path, labs: list[LabProcess]
) -> None:
    first = start(labs, tmp_path / "first", "first-vm", "first-password")
    first.wait_for_output(r"first-vm\s+running \([\d.]+ s\)$")  # cold: no saved boot yet
    # saved once up, untouched: a console typed on before the save is not saved
    first.wait_for_output(r"first-vm\s+boot saved", BOOT)
    client, console = logged_in(first, "first-vm", "first-password")
    first_id, _ = console.run("cat /etc/machine-id")
    console.close()
    client.close()
    first.stop()

    second = start(labs, tmp_path / "second", "second-vm", "second-password")
    second.wait_for_output(r"second-vm\s+running \([\d.]+ s from a saved boot\)")
    client, console = logged_in(second, "second-vm", "second-password")
    try:
        log = console.read_boot_log()
        assert "first-vm login:" in log, "the saved boot's output comes first"
        restored = log.index("was restored from a saved boot")
        assert log.index("first-vm login:") < restored
        assert "second-vm login:" in log[restored:], "a fresh prompt with the VM's own name"
        out, status = console.run(
            "hostname; cat /etc/machine-id; systemctl is-system-running; date +%s; "
            "grep -c second-vm /etc/hosts"
        )
        name, machine_id, running, clock, hosts = out.split()
        assert (name, status) == ("second-vm", 0), out
        assert machine_id != first_id.strip()
        assert running == "running"
        assert abs(int(clock) - time.time()) < 30, "the guest took the host's time"
        assert hosts == "1", "127.0.1.1 names the VM in /etc/hosts"
    finally:
        console.close()
        client.close()
    second.stop()

    # the VM that saved the boot starts from it as itself: its own machine id, its prompt
    again = start(labs, tmp_path / "again", "first-vm", "first-password")
    again.wait_for_output(r"first-vm\s+running \([\d.]+ s from a saved boot\)")
    client, console = logged_in(again, "first-vm", "first-password")
    try:
        out, status = console.run("hostname; cat /etc/machine-id")
        assert out.split() == ["first-vm", first_id.strip()], out
    finally:
        console.close()
        client.close()
