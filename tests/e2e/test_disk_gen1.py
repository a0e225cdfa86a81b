"""Gen1 disk VMs end to end: Debian's BIOS image (SeaBIOS with its serial console, MBR,
GRUB) booted by a lab: SeaBIOS's first bytes, the base image left alone, SysRq REISUB as a
systemd guest takes it, the boot diagnostics screenshot, an NMI panic and reimage, with
Microsoft's azure-mgmt-compute for ARM. The tests follow each other in file order, on one
xdist worker.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Iterator

import httpx
import pytest
from azure.mgmt.compute import ComputeManagementClient

from gateway.testing.client import LabClient
from gateway.testing.console import Console, strip_ansi
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.e2e.disklab import (
    BOOT,
    GRUB_MENU,
    RG,
    client,
    compute,
    image,
    in_order,
    open_console,
    reset_password,
    sha256,
    start_lab,
    vm_table,
)

__all__ = ["client", "compute"]  # module fixtures, shared by import

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a systemd boot under TCG, with the lab's start, on a busy machine
    pytest.mark.xdist_group("disk-gen1"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    running = start_lab(tmp_path_factory.mktemp("gen1-lab"), vm_table("gen1", "debian-12-gen1"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def gen1(client: LabClient) -> Iterator[Console]:
    console = open_console(client, "gen1")
    yield console
    console.close()


def test_gen1_instance_view_says_v1(compute: ComputeManagementClient) -> None:
    assert compute.virtual_machines.instance_view(RG, "gen1").hyper_v_generation == "V1"


def test_gen1_boots_from_seabios_to_login(gen1: Console) -> None:
    gen1.wait_for_boot(BOOT)
    log = strip_ansi(gen1.read_boot_log())
    in_order(log, "SeaBIOS", "Booting from Hard Disk", GRUB_MENU, "Linux version", "gen1 login:")
    assert log[: log.find("Linux version")].count(GRUB_MENU) == 1


def test_base_image_is_never_written(gen1: Console, lab: LabProcess) -> None:
    """The guest writes to its overlay in the state folder; the built image stays as built."""
    base = image("debian-12-gen1")
    before = sha256(base)
    gen1.login()
    out, status = gen1.run("dd if=/dev/urandom of=~/blob bs=1M count=16 && sync && echo ok")
    assert status == 0, out
    overlay = lab.state_dir / "disks" / "gen1" / "os.qcow2"
    assert overlay.stat().st_size > 16 << 20
    assert sha256(base) == before


def test_run_command_runs_a_script_in_the_guest_even_with_its_network_down(
    compute: ComputeManagementClient,
) -> None:
    """Microsoft's ``begin_run_command``, unchanged: the script runs as root through the
    VM agent (qemu-guest-agent), its parameters positional, stdout and stderr apart in
    Azure's message; with every NIC of the guest down it still runs (no network on the way),
    as the serial console does. (The next test's reboot brings the network back.)"""

    def run(*lines: str, params: tuple[str, ...] = ()) -> str:
        parameters = [{"name": f"p{i}", "value": v} for i, v in enumerate(params)]
        body = {"commandId": "RunShellScript", "script": list(lines), "parameters": parameters}
        result = compute.virtual_machines.begin_run_command(RG, "gen1", body).result()
        (status,) = result.value
        assert status.code == "ProvisioningState/succeeded"
        return str(status.message)

    message = run("echo out-$1; id -un; hostname", "echo err-$2 >&2", params=("a", "b"))
    assert message.startswith("Enable succeeded: \n[stdout]\nout-a\nroot\ngen1\n")
    assert "[stderr]\nerr-b\n" in message
    down = "for nic in /sys/class/net/e*; do ip link set dev ${nic##*/} down; done"
    assert "still-here" in run(down, "ip -brief link | grep -c UP || true; echo still-here")


def test_the_vm_access_extension_gives_a_user_who_logs_in_on_the_serial_console(
    compute: ComputeManagementClient, gen1: Console
) -> None:
    """Azure's fix for "I cannot log in": azure-mgmt-compute's ``begin_create_or_update`` of
    VMAccessForLinux creates a user with a password, inside the guest through its agent;
    that user then logs in on the serial console, and no GET shows the password."""
    password = "Vm-Access-Pw-42"
    assert reset_password(compute, "gen1", "azureuser", password) == "Succeeded"
    shown = compute.virtual_machine_extensions.get(
        RG, "gen1", "enablevmaccess", expand="instanceView"
    )
    assert password not in str(shown.as_dict())
    gen1.sendline("exit")  # leave root's shell: a login prompt comes back
    gen1.login("azureuser", password)
    out, status = gen1.run("id -un; id -Gn")
    assert status == 0
    assert out.split()[:2] == ["azureuser", "azureuser"]
    assert "sudo" in out.split()
    gen1.sendline("exit")
    gen1.expect("gen1 login: ", BOOT)  # the getty is back: the port is read again


def test_sysrq_reisub_syncs_remounts_and_reboots(gen1: Console) -> None:
    """REISUB by serial BREAK, as it works on a systemd guest: E and I end every process,
    the serial getty too, which closes ttyS0 (the kernel stops reading a closed port), so
    each is sent once the getty is back (its login prompt); S, U and B go as one sequence.
    The synced file survives the reboot."""
    gen1.sysrq("r")
    gen1.expect("sysrq: Keyboard mode set", 120)
    for keys, said in (("e", "Terminate All Tasks"), ("i", "Kill All Tasks")):
        gen1.drain()
        gen1.sysrq(keys)
        gen1.expect(f"sysrq: {said}", 120)
        gen1.expect("gen1 login: ", BOOT)  # systemd started the getty again
    gen1.sysrq("SUB")
    for line in ("sysrq: Emergency Sync", "sysrq: Emergency Remount R/O", "sysrq: Resetting"):
        gen1.expect(line, 120)
    gen1.expect("Linux version", BOOT)  # the new boot (the guest reset itself: no power event)
    gen1.wait_for_boot(BOOT)
    gen1.login()
    out, status = gen1.run("ls -l ~/blob | wc -l")
    assert (out.strip(), status) == ("1", 0), "the synced file was lost"


def test_screenshot_is_a_png_of_the_display(
    compute: ComputeManagementClient, lab: LabProcess
) -> None:
    """retrieveBootDiagnosticsData gives a screenshot URL; it downloads a PNG of the VGA
    display in its text mode (720x400 at the login prompt on tty1)."""
    data = compute.virtual_machines.retrieve_boot_diagnostics_data(RG, "gen1")
    assert data.console_screenshot_blob_uri
    trust = ssl.create_default_context(cafile=str(lab.ca_path))
    reply = httpx.get(data.console_screenshot_blob_uri, verify=trust, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    png = reply.content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (720, 400)


def test_nmi_panics_the_guest(gen1: Console) -> None:
    """kernel.panic_on_unrecovered_nmi=1 (as Azure's page sets it): Send NMI panics the
    kernel; the panic is in the boot log and the VM shows the panicked state."""
    gen1.nmi()
    gen1.expect("Kernel panic - not syncing: NMI", 120)
    gen1.wait_for_power("panicked", 60)
    assert "Kernel panic - not syncing: NMI" in gen1.read_boot_log()


def test_reimage_throws_the_overlay_away(
    compute: ComputeManagementClient, lab: LabProcess, gen1: Console
) -> None:
    """azure-mgmt-compute's begin_reimage: the VM is deallocated (its console closes, as
    Azure's does), its overlay (with the 16 MiB the guest wrote) thrown away, and it starts
    again from its image as built. (What the guest then sees of its disk, a scale-set
    instance's reimage test shows, logged in: tests/e2e/test_disk_scale_set.py.)"""
    overlay = lab.state_dir / "disks" / "gen1" / "os.qcow2"
    assert overlay.stat().st_size > 16 << 20
    compute.virtual_machines.begin_reimage(RG, "gen1").result(timeout=scaled(300))
    view = compute.virtual_machines.instance_view(RG, "gen1")
    assert "PowerState/running" in [s.code for s in view.statuses or []]
    assert overlay.stat().st_size < 16 << 20  # a new overlay on the image
    compute.virtual_machines.begin_deallocate(RG, "gen1").result()  # the module's last test
