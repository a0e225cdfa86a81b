"""The provisioning pieces alone: ovf-env.xml as cloud-init's Azure datasource reads it, the
CD, and the fabric (wireserver and IMDS) spoken to over loopback HTTP as cloud-init does."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from gateway.lab.config import LabConfigError, parse_lab
from gateway.machines.provision import (
    AZURE_ASSET_TAG,
    CREATING,
    FAILED,
    SUCCEEDED,
    Fabric,
    OsProfile,
    Provisioning,
    VmIdentity,
    network_option,
    ovf_env,
    smbios_args,
    write_media,
)

NS = {"wa": "http://schemas.microsoft.com/windowsazure"}
PROFILE = OsProfile(
    admin_username="azureuser",
    computer_name="web-01",
    admin_password="p<w>&'\"d",
    ssh_public_keys=("ssh-ed25519 AAAA me",),
    custom_data="#!/bin/sh\necho hi\n",
)
IDENTITY = VmIdentity(
    vm_id="0c3b5bd6-3f36-4a8e-9e1f-6d6b6f0b7c11",
    name="web",
    resource_id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web",
    subscription_id="s",
    resource_group="rg",
    location="westeurope",
    vm_size="Lab_512MB",
)
HEALTH = """<?xml version="1.0" encoding="utf-8"?>
<Health><GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>c</ContainerId>
<RoleInstanceList><Role><InstanceId>i</InstanceId><Health><State>{state}</State>{details}
</Health></Role></RoleInstanceList></Container></Health>"""


def test_ovf_env_is_what_cloud_inits_azure_datasource_reads() -> None:
    root = ElementTree.fromstring(ovf_env(PROFILE))
    config = root.find("./wa:ProvisioningSection/wa:LinuxProvisioningConfigurationSet", NS)
    assert config is not None
    assert config.findtext("wa:UserName", namespaces=NS) == "azureuser"
    assert config.findtext("wa:UserPassword", namespaces=NS) == "p<w>&'\"d"
    assert config.findtext("wa:HostName", namespaces=NS) == "web-01"
    custom = config.findtext("wa:CustomData", namespaces=NS) or ""
    assert base64.b64decode(custom).decode() == PROFILE.custom_data
    key = config.find("./wa:SSH/wa:PublicKeys/wa:PublicKey", NS)
    assert key is not None
    assert key.findtext("wa:Value", namespaces=NS) == "ssh-ed25519 AAAA me"
    assert key.findtext("wa:Path", namespaces=NS) == "/home/azureuser/.ssh/authorized_keys"
    assert root.find("./wa:PlatformSettingsSection/wa:PlatformSettings", NS) is not None


def test_a_key_only_profile_has_no_password_on_the_cd_nor_in_arm() -> None:
    key_only = OsProfile("azureuser", "web-01", ssh_public_keys=("ssh-rsa AAAA",),
                         disable_password_authentication=True)  # fmt: skip
    config = ElementTree.fromstring(ovf_env(key_only)).find(
        "./wa:ProvisioningSection/wa:LinuxProvisioningConfigurationSet", NS
    )
    assert config is not None
    assert config.find("wa:UserPassword", NS) is None
    assert config.findtext("wa:DisableSshPasswordAuthentication", namespaces=NS) == "true"
    shown = str(PROFILE.arm())
    assert "p<w>" not in shown
    assert "echo hi" not in shown
    assert "p<w>" not in repr(PROFILE)


def test_the_cd_holds_ovf_env_xml_by_its_rock_ridge_name(tmp_path: Path) -> None:
    import pycdlib

    path = write_media(PROFILE, tmp_path / "ovf.iso")
    assert path.stat().st_mode & 0o777 == 0o600
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    names = [c.rock_ridge.name() for c in iso.list_children(rr_path="/") if c.rock_ridge]
    assert b"ovf-env.xml" in names
    iso.close()


def test_the_qemu_options_carry_azures_tag_and_addresses() -> None:
    assert f"asset={AZURE_ASSET_TAG}" in " ".join(smbios_args(IDENTITY))
    option = network_option(0, 4242)
    assert "restrict=on" in option
    assert "guestfwd=tcp:168.63.129.16:80-cmd:" in option
    assert "guestfwd=tcp:169.254.169.254:80-cmd:" in option
    assert IDENTITY.mac.startswith("00:0d:3a:")


@pytest.fixture
async def fabric(tmp_path: Path):  # type: ignore[no-untyped-def]
    provisioning = Provisioning(PROFILE, IDENTITY)
    provisioning.attach(tmp_path)
    fabric = Fabric(provisioning)
    port = await fabric.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        yield provisioning, http
    provisioning.cancel_timer()
    await fabric.close()


async def test_goal_state_then_ready_makes_it_succeeded_once(fabric, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    provisioning, http = fabric
    states: list[str] = []
    provisioning.on_change = states.append
    provisioning.launched()
    goal = await http.get("/machine/?comp=goalstate", headers={"x-ms-version": "2012-11-30"})
    root = ElementTree.fromstring(goal.content)
    assert root.findtext("./Incarnation") == "1"
    assert root.findtext("./Container/RoleInstanceList/RoleInstance/InstanceId")
    answer = await http.post(
        "/machine?comp=health", content=HEALTH.format(state="Ready", details="")
    )
    assert answer.status_code == 200
    assert states == [CREATING, SUCCEEDED]
    assert (tmp_path / "provisioned.json").exists()
    again = Provisioning(PROFILE, IDENTITY)
    again.attach(tmp_path)
    assert (again.state, again.pending) == (SUCCEEDED, False)


async def test_a_reported_failure_makes_it_failed_with_the_guests_words(fabric) -> None:  # type: ignore[no-untyped-def]
    provisioning, http = fabric
    provisioning.launched()
    details = (
        "<Details><SubStatus>ProvisioningFailed</SubStatus>"
        "<Description>useradd failed</Description></Details>"
    )
    await http.post(
        "/machine?comp=health", content=HEALTH.format(state="NotReady", details=details)
    )
    assert provisioning.state == FAILED
    assert provisioning.error is not None
    assert "useradd failed" in provisioning.error["message"]


async def test_imds_answers_only_with_its_metadata_header(fabric) -> None:  # type: ignore[no-untyped-def]
    _, http = fabric
    url = "/metadata/instance?api-version=2021-08-01&extended=true"
    refused = await http.get(url)
    assert refused.status_code == 400
    assert "metadata header" in refused.json()["error"]
    body = (await http.get(url, headers={"Metadata": "true"})).json()
    assert body["compute"]["vmId"] == IDENTITY.vm_id
    assert body["compute"]["osProfile"]["adminUsername"] == "azureuser"
    assert body["network"]["interface"][0]["macAddress"] == IDENTITY.mac.replace(":", "").upper()
    assert "p<w>" not in str(body)
    assert (await http.get("/nothing")).status_code == 404
    bad = await http.post("/machine?comp=health", content=b"<not-xml")
    assert bad.status_code == 400


async def test_silence_past_the_timeout_is_azures_os_provisioning_timed_out(tmp_path: Path) -> None:
    provisioning = Provisioning(
        OsProfile("azureuser", "web-01", admin_password="x" * 8, timeout=0.05), IDENTITY
    )
    provisioning.attach(tmp_path)
    changed = asyncio.Event()
    provisioning.on_change = lambda state: changed.set() if state == FAILED else None
    provisioning.launched()
    await asyncio.wait_for(changed.wait(), 5)
    assert provisioning.error is not None
    assert provisioning.error["code"] == "OSProvisioningTimedOut"
    provisioning.ready()  # "The VM may still finish provisioning successfully"
    assert provisioning.state == SUCCEEDED


LAB = """
[[resource_groups]]
name = "rg"
[[vms]]
name = "vm-1"
resource_group = "rg"
backend = "{backend}"
{extra}
[vms.image]
{image}
[vms.os_profile]
{profile}
"""


def lab(profile: str, *, backend: str = "qemu", image: str = 'disk = "debian-12-gen1"',
        extra: str = "") -> object:  # fmt: skip
    text = LAB.format(backend=backend, image=image, profile=profile, extra=extra)
    return parse_lab(text, source="lab.toml", base=Path("."))


def test_an_os_profile_in_the_lab_file() -> None:
    config = lab(
        "admin_username = 'azureuser'\nadmin_password = 'Lab-Pw-123'\n"
        "custom_data = '#cloud-config'\nprovisioning_timeout = 300"
    )
    profile = config.vms[0].machine.os_profile  # type: ignore[attr-defined]
    assert profile.admin_username == "azureuser"
    assert profile.computer_name == "vm-1"  # the VM's host name unless computer_name says
    assert profile.admin_password == "Lab-Pw-123"
    assert profile.disable_password_authentication is False
    assert profile.timeout == 300


def test_scale_set_instances_take_the_computer_name_as_a_prefix() -> None:
    text = LAB.replace("[[vms]]", "[[scale_sets]]").replace("vms.", "scale_sets.").format(
        backend="qemu", image='disk = "debian-12-gen1"', extra="capacity = 2",
        profile="admin_username = 'azureuser'\nadmin_password = 'Lab-Pw-123'\n"
        "computer_name = 'web'",
    )  # fmt: skip
    config = parse_lab(text, source="lab.toml", base=Path("."))
    names = [i.machine.os_profile.computer_name for i in config.scale_sets[0].instances]
    assert names == ["web000000", "web000001"]


@pytest.mark.parametrize(
    ("profile", "kwargs", "message"),
    [
        ("admin_username = 'root'\nadmin_password = 'Lab-Pw-123'", {}, "Azure allows"),
        ("admin_username = 'azureuser'", {}, "an admin_password or ssh_public_keys"),
        (
            "admin_username = 'azureuser'\nssh_public_keys = ['ssh-rsa AAAA me']\n"
            "disable_password_authentication = false",
            {},
            "a password when password authentication is enabled",
        ),
        (
            "admin_username = 'azureuser'\nadmin_password = 'Lab-Pw-123'\n"
            "disable_password_authentication = true",
            {},
            "at least one key",
        ),
        ("admin_username = 'azureuser'\nadmin_password = 'x'", {}, "6-72 printable"),
        (
            "admin_username = 'azureuser'\nadmin_password = 'Lab-Pw-123'",
            {"backend": "emulated", "image": ""},
            'backend = "qemu" and an \\[image\\] disk',
        ),
        (
            "admin_username = 'azureuser'\nadmin_password = 'Lab-Pw-123'",
            {"extra": 'provisioning_state = "Creating"'},
            "the guest's cloud-init reports it",
        ),
    ],
)
def test_os_profile_mistakes_are_refused_with_what_to_write(
    profile: str, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(LabConfigError, match=message) as refused:
        lab(profile, **kwargs)
    assert "Lab-Pw-123" not in str(refused.value)  # a refusal never repeats a password


def test_a_provisioned_vm_boots_again_without_the_cd(tmp_path: Path) -> None:
    """The CD is in a VM's QEMU options until its guest reports ready; from then on (the
    marker kept with its disks) no boot gets it, and reimage brings it back."""
    from gateway.machines.disk import DiskSpec
    from gateway.machines.qemu import QemuMachine

    provisioning = Provisioning(PROFILE, IDENTITY)
    vm = QemuMachine("web", run_dir=tmp_path / "run", disk=DiskSpec(image=tmp_path / "os.qcow2"),
                     disk_dir=tmp_path / "disks", provisioning=provisioning)  # fmt: skip
    (tmp_path / "run").mkdir()
    assert "scsi-cd" in " ".join(vm._provisioning_args())
    provisioning.ready()
    assert (provisioning.state, provisioning.pending) == (SUCCEEDED, False)
    options = " ".join(vm._provisioning_args())
    assert "scsi-cd" not in options
    assert f"asset={AZURE_ASSET_TAG}" in options  # still Azure's VM: cloud-init keeps its data
    again = Provisioning(PROFILE, IDENTITY)  # the lab started anew: the marker holds
    QemuMachine("web", run_dir=tmp_path / "run", disk=DiskSpec(image=tmp_path / "os.qcow2"),
                disk_dir=tmp_path / "disks", provisioning=again)  # fmt: skip
    assert again.state == SUCCEEDED
    assert vm.disks is not None
    vm.disks.discard()
    provisioning.reimaged()
    assert provisioning.pending
    assert "scsi-cd" in " ".join(vm._provisioning_args())
