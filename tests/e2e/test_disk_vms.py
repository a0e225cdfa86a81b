"""Disk VMs end to end: Debian's Gen1 (SeaBIOS, MBR, grub-pc) and Gen2 (OVMF, GPT, shim and
GRUB) images from `make images`, booted by a lab through its doors, as a person works them
on Azure's serial console: the firmware's first bytes, GRUB caught after a Reset, the older
kernel, a GRUB edit to a root shell, SysRq REISUB, an NMI panic, SSH through the forwarded
port, reimage, and the boot diagnostics screenshot, with Microsoft's own azure-mgmt-compute
for the ARM calls.

The Gen2 VM boots a fixed VHD made from the Gen2 image (as Azure exports an OS disk), so
the VHD path is proven too. Tests of one VM follow each other in file order (each one's
guest is where the last left it), so the module runs on one xdist worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

from gateway.machines.disk import detect_format
from gateway.machines.image import builtin_disk, disk_dir
from gateway.testing.client import LabClient
from gateway.testing.console import Console, strip_ansi
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.xdist_group("disk-vms"),
]

RG = "disk-rg"
USER, PASSWORD = "carol", "carol-disk-lab"
GUEST_PASSWORD = "disk-guest-pw"
BOOT = 300.0  # a systemd disk VM under TCG on a machine busy with other tests
GRUB_MENU = "GNU GRUB"
# GRUB's countdown line, drawn once a second while the menu waits
COUNTDOWN = r"will be\s+(booted|executed) automatically in \d+s"
CURSOR_MOVED = r"\x1b\[\d+;\d+H"  # the terminal's cursor placed, as GRUB's editor does


def kernels() -> tuple[str, str]:
    """(newest, older) kernel release in the built images, from their build record."""
    text = (disk_dir() / "disk.env").read_text()
    match = re.search(r'^KERNELS="(\S+) (\S+)"$', text, re.M)
    assert match, f"disk.env names no two kernels: {text}"
    return match.group(1), match.group(2)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lab_text(state: Path, gen2_disk: Path) -> str:
    return f"""
state_dir = "{state}"
[guest]
password = "{GUEST_PASSWORD}"
[gateway]
host = "127.0.0.1"
port = 0
ssh_port = 0
[[resource_groups]]
name = "{RG}"
[[vms]]
name = "gen2"
resource_group = "{RG}"
backend = "qemu"
ssh_port = 0
warm_start = false  # these tests are about booting: from the firmware, every time
[vms.image]
disk = "{gen2_disk}"
generation = 2
[[vms]]
name = "gen1"
resource_group = "{RG}"
backend = "qemu"
ssh_port = 0
warm_start = false  # these tests are about booting: from the firmware, every time
[vms.image]
disk = "debian-12-gen1"
[[vms]]
name = "trusted"
resource_group = "{RG}"
backend = "qemu"
warm_start = false
[vms.image]
disk = "debian-12-gen2"
secure_boot = true
tpm = true
[[users]]
name = "{USER}"
password = "{PASSWORD}"
roles = [{{ role = "Owner", scope = "subscription" }}]
"""


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    gen1, gen2 = builtin_disk("debian-12-gen1"), builtin_disk("debian-12-gen2")
    assert gen1 is not None
    assert gen2 is not None
    for disk in (gen1, gen2):
        if not disk.path.is_file():
            pytest.fail(f"the disk image {disk.path} is not built: make images")
    return {"gen1": gen1.path, "gen2": gen2.path}


@pytest.fixture(scope="module")
def vhd(images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Gen2 image as a fixed VHD, made as Azure's docs make one (sparse on this disk)."""
    path = tmp_path_factory.mktemp("vhd") / "gen2-os-disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
         str(images["gen2"]), str(path)],
        check=True, timeout=scaled(300),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def lab(vhd: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    folder = tmp_path_factory.mktemp("disk-lab")
    lab_file = folder / "lab.toml"
    lab_file.write_text(lab_text(folder / "state", vhd))
    running = LabProcess.start(folder, lab=lab_file, tls=True, timeout=120, die_with_parent=True)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(lab: LabProcess) -> Iterator[LabClient]:
    client = LabClient(lab.url, USER, PASSWORD, ca_path=lab.ca_path)
    yield client
    client.close()


@pytest.fixture(scope="module")
def compute(lab: LabProcess, client: LabClient) -> Iterator[ComputeManagementClient]:
    """azure-mgmt-compute as a user's script makes it, the lab as ARM and authority."""
    before = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(lab.ca_path)
    credential = ClientSecretCredential(
        "5e71a1c0-0000-4000-8000-00000000ad00", USER, PASSWORD,
        authority=lab.url, disable_instance_discovery=True,
    )  # fmt: skip
    with ComputeManagementClient(credential, client.subscription_id, base_url=lab.url) as arm:
        yield arm
    credential.close()
    if before is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = before


@pytest.fixture(scope="module")
def gen2(client: LabClient) -> Iterator[Console]:
    console = Console.open(client, "gen2", group=RG, password=GUEST_PASSWORD, timeout=BOOT)
    yield console
    console.close()


@pytest.fixture(scope="module")
def gen1(client: LabClient) -> Iterator[Console]:
    console = Console.open(client, "gen1", group=RG, password=GUEST_PASSWORD, timeout=BOOT)
    yield console
    console.close()


def in_order(text: str, *marks: str) -> list[int]:
    """The positions of ``marks`` in ``text``; fails unless each comes after the last."""
    places = []
    start = 0
    for mark in marks:
        place = text.find(mark, start)
        assert place >= 0, f"{mark!r} not found after {text[start - 80 : start]!r}"
        places.append(place)
        start = place + len(mark)
    return places


def editor_rows_to(word: str, screen: str) -> int:
    """How many lines down from the cursor (on the entry's first line, ``setparams``)
    GRUB's editor shows the line that starts with ``word``, read from the editor's drawing
    in ``screen`` (each line placed at its row by a cursor move)."""
    rows = [(int(m.group(1)), m.end()) for m in re.finditer(r"\x1b\[(\d+);\d+H", screen)]

    def row_of(start: str) -> int:
        found = [row for row, end in rows if screen[end:].lstrip().startswith(start)]
        assert found, f"GRUB's editor shows no line starting with {start!r}: {screen!r}"
        return found[-1]

    return row_of(word + " ") - row_of("setparams ")


def catch_grub(console: Console, *entries: str) -> None:
    """After a reset: wait for GRUB's menu (with ``entries`` listed) and stop its countdown
    with a key, as a person does within its 5 s."""
    console.expect(GRUB_MENU, BOOT)
    for entry in entries:
        console.expect_exact(entry, 30)
    console.expect(COUNTDOWN, 60)
    console.send("\x1b[A")  # Up: stops the countdown, the first entry stays highlighted


# -- Gen2 (UEFI), from a fixed VHD ---------------------------------------------------------


def test_gen2_vhd_is_detected_as_a_vhd(vhd: Path) -> None:
    """qemu-img calls a fixed VHD raw; the lab reads its footer."""
    assert detect_format(vhd) == "vpc"


def test_gen2_boots_from_the_firmware_to_login(gen2: Console) -> None:
    """The boot log starts with OVMF's own output, then GRUB's menu (drawn once), the
    kernel, systemd and the login prompt, all on ttyS0 through the gateway."""
    gen2.wait_for_boot(BOOT)
    log = gen2.read_boot_log()
    in_order(log, "BdsDxe", GRUB_MENU, "Linux version", "systemd", "gen2 login:")
    first_boot = log[: log.find("Linux version")]
    assert first_boot.count(GRUB_MENU) == 1, "GRUB's menu was drawn twice"
    assert not log.lstrip().startswith(GRUB_MENU), "the firmware's bytes must come first"


def test_gen2_instance_view_says_v2(compute: ComputeManagementClient) -> None:
    view = compute.virtual_machines.instance_view(RG, "gen2")
    assert view.hyper_v_generation == "V2"
    assert compute.virtual_machines.instance_view(RG, "gen1").hyper_v_generation == "V1"


def test_gen2_login_and_ssh_through_the_forwarded_port(gen2: Console, lab: LabProcess) -> None:
    """Root logs in on the serial console; the guest's own sshd answers on the loopback
    port the lab printed for it."""
    gen2.login()
    out, status = gen2.run("systemctl is-system-running --wait; hostname")
    assert status == 0 or "degraded" in out, out
    assert out.strip().splitlines()[-1] == "gen2"
    port = ssh_port(lab, "gen2")
    child = pexpect.spawn(
        "ssh", ["-p", str(port), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
                "root@127.0.0.1", "cat /etc/hostname; uname -r"],
        encoding="utf-8", timeout=scaled(120),
    )  # fmt: skip
    try:
        child.expect("password:")
        child.sendline(GUEST_PASSWORD)
        child.expect(pexpect.EOF)
        assert "gen2" in child.before
    finally:
        child.close(force=True)


def ssh_port(lab: LabProcess, vm: str) -> int:
    """The SSH port the lab's banner prints for ``vm``."""
    for line in lab.output.splitlines():
        words = line.split()
        if words and words[0] == vm and len(words) >= 7:
            return int(words[5])
    raise AssertionError(f"no SSH port for {vm} in the banner:\n{lab.output}")


def test_reset_catch_grub_and_boot_the_older_kernel(gen2: Console) -> None:
    """Reset VM keeps the console open; Esc-like key stops GRUB's countdown, Down and Enter
    boot the second entry, and the guest runs the older kernel."""
    newest, older = kernels()
    out, _ = gen2.run("uname -r")
    assert out.strip() == newest
    gen2.reset()
    catch_grub(gen2, f"with Linux {older}")
    gen2.send("\x1b[B")  # Down
    gen2.send("\r")
    gen2.expect(f"Loading Linux {re.escape(older)}", 60)
    gen2.wait_for_boot(BOOT)
    gen2.login()
    out, status = gen2.run("uname -r")
    assert (out.strip(), status) == (older, 0)


def test_grub_edit_gives_a_root_shell(gen2: Console) -> None:
    """At GRUB: e, down to the linux line, append ``rw init=/bin/bash``, Ctrl+X: a root
    shell on the serial console with no password, on a writable root."""
    gen2.reset()
    catch_grub(gen2)
    gen2.drain()
    gen2.send("e")
    gen2.expect_exact("initrd", 30)  # the entry's last line: the editor is drawn
    for _ in range(editor_rows_to("linux", str(gen2.before))):
        gen2.drain()
        gen2.sendcontrol("n")
        gen2.expect(CURSOR_MOVED, 10)  # GRUB took the key (it drops keys typed ahead)
    gen2.sendcontrol("e")
    gen2.send(" rw init=/bin/bash")
    gen2.expect_exact("bash", 30)  # the line wraps on the screen: the end came
    gen2.sendcontrol("x")
    gen2.expect(r"root@\(none\):/# ", BOOT)
    gen2.sendline("touch /written-at-grub && echo wrote-$((6*7))")
    gen2.expect("wrote-42", 60)


# -- Gen1 (BIOS) ----------------------------------------------------------------------------


def test_gen1_boots_from_seabios_to_login(gen1: Console) -> None:
    gen1.wait_for_boot(BOOT)
    log = strip_ansi(gen1.read_boot_log())
    in_order(log, "SeaBIOS", "Booting from Hard Disk", GRUB_MENU, "Linux version", "gen1 login:")
    assert log[: log.find("Linux version")].count(GRUB_MENU) == 1


def test_base_image_is_never_written(
    gen1: Console, images: dict[str, Path], lab: LabProcess
) -> None:
    """The guest writes to its overlay in the state folder; the built image stays as built."""
    before = sha256(images["gen1"])
    gen1.login()
    out, status = gen1.run("dd if=/dev/urandom of=/root/blob bs=1M count=16 && sync && echo ok")
    assert status == 0, out
    overlay = lab.state_dir / "disks" / "gen1" / "os.qcow2"
    assert overlay.stat().st_size > 16 << 20
    assert sha256(images["gen1"]) == before


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
    out, status = gen1.run("ls -l /root/blob | wc -l")
    assert (out.strip(), status) == ("1", 0), "the synced file was lost"


def test_screenshot_is_a_png_of_the_display(
    compute: ComputeManagementClient, lab: LabProcess
) -> None:
    """retrieveBootDiagnosticsData gives a screenshot URL; it downloads a PNG of the VGA
    display in its text mode (720x400 at the login prompt on tty1)."""
    data = compute.virtual_machines.retrieve_boot_diagnostics_data(RG, "gen1")
    assert data.console_screenshot_blob_uri
    reply = httpx.get(data.console_screenshot_blob_uri, verify=str(lab.ca_path), timeout=60)
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
    compute: ComputeManagementClient, client: LabClient, gen1: Console
) -> None:
    """azure-mgmt-compute's begin_reimage: the VM is deallocated (its console closes, as
    Azure's does), and starts again from its image as built."""
    compute.virtual_machines.begin_reimage(RG, "gen1").result(timeout=scaled(300))
    view = compute.virtual_machines.instance_view(RG, "gen1")
    assert "PowerState/running" in [s.code for s in view.statuses or []]
    console = Console.open(client, "gen1", group=RG, password=GUEST_PASSWORD, timeout=BOOT)
    try:
        console.wait_for_boot(BOOT)
        console.login()
        out, _ = console.run("ls /root/blob 2>&1")
        assert "No such file" in out
    finally:
        console.close()


# -- Trusted Launch: Secure Boot and a vTPM -------------------------------------------------


def test_secure_boot_and_tpm_boot_to_login(client: LabClient) -> None:
    """OVMF's Secure Boot firmware with Microsoft's keys boots shim, Debian's signed GRUB
    and the signed kernel; the kernel sees Secure Boot on and a TPM 2.0 (swtpm)."""
    console = Console.open(client, "trusted", group=RG, password=GUEST_PASSWORD, timeout=BOOT)
    try:
        console.wait_for_boot(BOOT)
        log = console.read_boot_log()
        assert "secureboot: Secure boot enabled" in log
        assert "Kernel is locked down from EFI Secure Boot" in log
        console.login()
        out, status = console.run("ls /dev/tpm0 /dev/tpmrm0")
        assert status == 0, out
    finally:
        console.close()
