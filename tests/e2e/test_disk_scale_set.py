"""A scale set of disk VMs: its instance boots the Gen1 image from SeaBIOS to systemd on
its own overlay, serves its console by instance number, forwards its SSH, and
azure-mgmt-compute's scale-set instance reimage gives it the image's disk again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.mgmt.compute import ComputeManagementClient

from gateway.testing.client import LabClient
from gateway.testing.console import Console, strip_ansi
from gateway.testing.lab import LabProcess
from tests.e2e.disklab import (
    BOOT,
    GRUB_MENU,
    GUEST_PASSWORD,
    RG,
    client,
    compute,
    in_order,
    start_lab,
)

__all__ = ["client", "compute"]  # module fixtures, shared by import

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # two systemd boots under TCG on a busy machine
    pytest.mark.xdist_group("disk-vmss"),
]

SET = "disks"
SCALE_SET = f"""
[[scale_sets]]
name = "{SET}"
resource_group = "{RG}"
backend = "qemu"
capacity = 1
cpus = 1
ssh_port = 0
warm_start = false
[scale_sets.image]
disk = "debian-12-gen1"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    running = start_lab(tmp_path_factory.mktemp("vmss-lab"), SCALE_SET)
    try:
        yield running
    finally:
        running.stop()


def instance_console(client: LabClient) -> Console:
    console = Console.open(client, SET, 0, group=RG, password=GUEST_PASSWORD, timeout=BOOT)
    console.wait_for_boot(BOOT)
    return console


def test_an_instance_boots_its_disk_and_reimage_gives_the_image_back(
    client: LabClient, compute: ComputeManagementClient
) -> None:
    console = instance_console(client)
    try:
        log = strip_ansi(console.read_boot_log())
        in_order(log, "SeaBIOS", GRUB_MENU, "Linux version", f"{SET}000000 login:")
        console.login()
        out, status = console.run("hostname && echo kept > ~/mark && sync")
        assert (out.strip(), status) == (f"{SET}000000", 0)
    finally:
        console.close()
    compute.virtual_machine_scale_set_vms.begin_reimage(RG, SET, "0").result()
    console = instance_console(client)
    try:
        console.login()
        out, status = console.run("cat ~/mark")
        assert status == 1, "the overlay was thrown away"
        assert "No such file" in out
    finally:
        console.close()
