"""Gen2 disk VMs end to end: Debian's UEFI image (OVMF, GPT, shim and Debian's signed GRUB)
as a fixed VHD, the way Azure exports an OS disk, booted with Secure Boot and a vTPM
(Azure's Trusted Launch) by a lab through its doors: OVMF's first bytes, GRUB caught after a
Reset, the older kernel, a GRUB edit to a root shell, SSH through the forwarded port, with
Microsoft's azure-mgmt-compute for ARM. The tests follow each other in file order (each
one's guest is where the last left it), on one xdist worker.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from azure.mgmt.compute import ComputeManagementClient

from gateway.machines.disk import detect_format
from gateway.testing.client import LabClient
from gateway.testing.console import Console
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.e2e.disklab import (
    BOOT,
    CURSOR_MOVED,
    GRUB_MENU,
    GUEST_PASSWORD,
    RG,
    catch_grub,
    client,
    compute,
    editor_rows_to,
    image,
    in_order,
    kernels,
    open_console,
    ssh_port,
    start_lab,
    vm_table,
)

__all__ = ["client", "compute"]  # module fixtures, shared by import

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a systemd boot under TCG, with the lab's start, on a busy machine
    pytest.mark.xdist_group("disk-gen2"),
]


@pytest.fixture(scope="module")
def vhd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Gen2 image as a fixed VHD, made as Azure's docs make one (sparse on this disk)."""
    path = tmp_path_factory.mktemp("vhd") / "gen2-os-disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
         str(image("debian-12-gen2")), str(path)],
        check=True, timeout=scaled(300),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def lab(vhd: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    vms = vm_table("gen2", str(vhd), generation=2, secure_boot=True, tpm=True)
    running = start_lab(tmp_path_factory.mktemp("gen2-lab"), vms)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def gen2(client: LabClient) -> Iterator[Console]:
    console = open_console(client, "gen2")
    yield console
    console.close()


def test_gen2_vhd_is_detected_as_a_vhd(vhd: Path) -> None:
    """qemu-img calls a fixed VHD raw; the lab reads its footer."""
    assert detect_format(vhd) == "vpc"


def test_gen2_boots_from_the_firmware_to_login(gen2: Console) -> None:
    """The boot log starts with OVMF's own output, then GRUB's menu (drawn once), the
    kernel, systemd and the login prompt, all on ttyS0 through the gateway."""
    gen2.wait_for_boot(BOOT)
    log = gen2.read_boot_log()
    in_order(log, "BdsDxe", GRUB_MENU, "Linux version", "systemd", "gen2 login:")
    assert "secureboot: Secure boot enabled" in log  # shim, the signed GRUB and kernel
    assert "Kernel is locked down from EFI Secure Boot" in log
    first_boot = log[: log.find("Linux version")]
    assert first_boot.count(GRUB_MENU) == 1, "GRUB's menu was drawn twice"
    assert not log.lstrip().startswith(GRUB_MENU), "the firmware's bytes must come first"


def test_gen2_instance_view_says_v2(compute: ComputeManagementClient) -> None:
    view = compute.virtual_machines.instance_view(RG, "gen2")
    assert view.hyper_v_generation == "V2"


def test_gen2_login_and_ssh_through_the_forwarded_port(gen2: Console, lab: LabProcess) -> None:
    """Root logs in on the serial console (the vTPM is there); the guest's own sshd answers
    on the loopback port the lab printed for it."""
    gen2.login()
    out, status = gen2.run("ls /dev/tpmrm0 && systemctl is-system-running --wait; hostname")
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


def test_reset_catch_grub_and_boot_the_older_kernel(gen2: Console) -> None:
    """Reset VM keeps the console open; Esc-like key stops GRUB's countdown (drawn through
    OVMF's console), Down and Enter boot the second entry: GRUB loads the older kernel,
    which then starts. (That the guest then runs it, logged in, the portal's Gen1 test
    shows: tests/browser/test_portal_disk.py; the next test resets this one.)"""
    newest, older = kernels()
    out, _ = gen2.run("uname -r")
    assert out.strip() == newest
    gen2.reset()
    catch_grub(gen2, f"with Linux {older}")
    gen2.send("\x1b[B")  # Down
    gen2.send("\r")
    gen2.expect(f"Loading Linux {re.escape(older)}", 60)
    gen2.expect(rf"Linux version {re.escape(older)} ", BOOT)  # the older kernel's first line


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
