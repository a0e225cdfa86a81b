"""Provisioning as Azure provisions, end to end: Gen1 disk VMs with an ``osProfile``, whose
image's own cloud-init (unchanged, Debian's) finds Azure's chassis tag, reads the
provisioning CD, reaches the lab's wireserver and IMDS through the VM's NIC, creates the
admin user, sets the host name, runs the custom data and reports ready. Microsoft's
azure-mgmt-compute reads the VM; the serial console logs in as the admin. The tests follow
each other in file order, on one xdist worker.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.mgmt.compute import ComputeManagementClient

from gateway.console import texts
from gateway.testing.client import LabClient
from gateway.testing.console import LOGIN_PROMPT, Console, ConsoleError
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.e2e.disklab import (
    BOOT,
    RG,
    client,
    compute,
    image,
    reset_password,
    start_lab,
    vm_table,
)

__all__ = ["client", "compute"]  # module fixtures, shared by import

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.xdist_group("disk-provision"),
]

ADMIN, ADMIN_PASSWORD = "azureuser", "Prov-Lab-Pw-7"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJb1Q9fXyY2m7i0cC2m3b0lG1Tq4f4x5Ue0v1qkqTn5e lab"
CUSTOM_DATA = '#!/bin/sh\necho "custom data ran on $(hostname) as $(id -un)" > /dev/ttyS0\n'
CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished"  # its last word on the console
ROOT_PARTITION = 1 << 20  # the Gen1 image's root file system starts 1 MiB into the disk


def profile(**keys: object) -> str:
    """A ``[vms.os_profile]`` table of ``keys`` (strings quoted as TOML literals)."""
    lines = []
    for key, value in keys.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f"{key} = '''{value}'''")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    return "[vms.os_profile]\n" + "\n".join(lines) + "\n"


def image_without_cloud_init(folder: Path) -> Path:
    """A user's image whose cloud-init is off (``/etc/cloud/cloud-init.disabled``): the
    built Gen1 image as a raw copy, the file written into its root file system by
    ``debugfs`` (no mount). It never reports ready."""
    raw = folder / "no-cloud-init.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(image("debian-12-gen1")), str(raw)], check=True
    )
    script = folder / "debugfs.cmd"
    script.write_text("cd /etc/cloud\nwrite /dev/null cloud-init.disabled\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(script), f"{raw}?offset={ROOT_PARTITION}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    folder = tmp_path_factory.mktemp("provision-lab")
    silent = image_without_cloud_init(folder)
    vms = (
        vm_table("prov", "debian-12-gen1")
        + profile(
            admin_username=ADMIN,
            admin_password=ADMIN_PASSWORD,
            computer_name="prov-web-01",
            custom_data=CUSTOM_DATA,
        )
        + vm_table("keyonly", "debian-12-gen1")
        + profile(admin_username=ADMIN, ssh_public_keys=[KEY])
        + vm_table("silent", str(silent))
        + profile(admin_username=ADMIN, admin_password=ADMIN_PASSWORD, provisioning_timeout=10)
    )
    running = start_lab(folder, vms)
    try:
        yield running
    finally:
        running.stop()


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Ask ARM until ``check()`` holds, as ``az vm wait`` does (ARM has no event to await)."""
    deadline = time.monotonic() + scaled(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def state_of(compute: ComputeManagementClient, vm: str) -> str:
    return str(compute.virtual_machines.get(RG, vm).provisioning_state)


def admin_console(client: LabClient, vm: str) -> Console:
    return Console.open(client, vm, group=RG, password=ADMIN_PASSWORD, timeout=BOOT)


def test_a_new_vm_is_creating_and_its_console_says_so(
    compute: ComputeManagementClient, client: LabClient
) -> None:
    """Until its guest reports ready, the VM is Creating, and connect refuses with Azure's
    text; GET shows the osProfile as Azure does, without the password or custom data."""
    vm = compute.virtual_machines.get(RG, "prov")
    assert vm.provisioning_state == "Creating"
    os_profile = vm.os_profile
    assert (os_profile.admin_username, os_profile.computer_name) == (ADMIN, "prov-web-01")
    assert os_profile.admin_password is None
    assert os_profile.custom_data is None
    assert os_profile.linux_configuration.disable_password_authentication is False
    keyonly = compute.virtual_machines.get(RG, "keyonly").os_profile.linux_configuration
    assert keyonly.disable_password_authentication is True
    assert [k.key_data for k in keyonly.ssh.public_keys] == [KEY]
    assert keyonly.ssh.public_keys[0].path == f"/home/{ADMIN}/.ssh/authorized_keys"
    with pytest.raises(ConsoleError) as refused:
        Console.open(client, "prov", group=RG, timeout=BOOT)
    assert texts.NOT_PROVISIONED in str(refused.value)


def test_a_guest_that_never_reports_ready_ends_failed(compute: ComputeManagementClient) -> None:
    """A guest whose cloud-init is off never reports ready: after the lab file's timeout the
    VM is Failed, with Azure's OSProvisioningTimedOut in its instance view."""
    until(lambda: state_of(compute, "silent") == "Failed", 120, "silent never ended Failed")
    view = compute.virtual_machines.instance_view(RG, "silent")
    (status,) = [s for s in view.statuses if s.code.startswith("ProvisioningState/")]
    assert status.code == "ProvisioningState/failed/OSProvisioningTimedOut"
    assert status.level == "Error"
    assert "did not finish in the allotted time" in status.message
    compute.virtual_machines.begin_deallocate(RG, "silent").result()  # its CPU to the others


def test_cloud_init_provisions_the_admin_the_host_name_and_the_custom_data(
    compute: ComputeManagementClient, client: LabClient
) -> None:
    until(lambda: state_of(compute, "prov") == "Succeeded", 2 * BOOT, "prov never provisioned")
    console = admin_console(client, "prov")
    try:
        console.expect_seen("custom data ran on prov-web-01 as root", BOOT)
        console.expect_seen(CLOUD_INIT_DONE, BOOT)
        console.login(ADMIN, ADMIN_PASSWORD)
        out, status = console.run(
            "hostname; id -un; sudo -n id -u; test -e /dev/sr0 || echo no-cd; "
            "ip -4 -brief address show"
        )
        assert status == 0, out
        # the CD went once the guest reported ready: a reboot finds none to provision from
        assert out.split()[:4] == ["prov-web-01", ADMIN, "0", "no-cd"]
        assert "168.0.0.4/7" in out  # the address IMDS gives as the VM's private IP
    finally:
        console.close()


def test_a_key_only_vm_refuses_every_password_until_the_vm_access_extension_sets_one(
    compute: ComputeManagementClient, client: LabClient
) -> None:
    """The seed's warning: with no password user the serial login cannot succeed, root's
    neither; Reset password (VMAccessForLinux) gives the admin one, and it logs in."""
    until(lambda: state_of(compute, "keyonly") == "Succeeded", 2 * BOOT, "keyonly not provisioned")
    console = admin_console(client, "keyonly")
    try:
        console.expect_seen(CLOUD_INIT_DONE, BOOT)
        console.sendline()
        for user, password in ((ADMIN, ADMIN_PASSWORD), ("root", "serial-lab")):
            console.expect(LOGIN_PROMPT, 60)
            console.sendline(user)
            console.expect(r"Password: ", 30)
            console.sendline(password)
            console.expect("Login incorrect", 60)
        password = "Reset-Pw-Lab-9"
        assert reset_password(compute, "keyonly", ADMIN, password) == "Succeeded"
        console.login(ADMIN, password)
        out, status = console.run("id -un; hostname")
        assert (out.split(), status) == ([ADMIN, "keyonly"], 0)
    finally:
        console.close()
