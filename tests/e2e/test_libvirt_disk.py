"""Disk VMs on the libvirt backend: the same Gen1 (SeaBIOS, GRUB, systemd) and Gen2 (OVMF)
disks as the QEMU backend's, booted by libvirt from the firmware's first byte to systemd's
login prompt on the console, with their own overlay (the image is never written), the
guest's SSH forwarded to a loopback port, a screenshot of the display, and a reimage."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pexpect
import pytest
import pytest_asyncio

from gateway.machines import EventKind, PowerState
from gateway.machines.disk import DiskSpec
from gateway.machines.libvirt import LibvirtMachine
from gateway.machines.warm import WarmStore
from tests.e2e.conftest import Guest, running
from tests.e2e.disklab import BOOT, image
from tests.support.libvirtd import Libvirtd
from tests.support.sshd import sshd_answers

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.xdist_group("libvirt-disk"),  # its VMs one after another
    pytest.mark.timeout(900),
]
ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
PASSWORD = "libvirt-disk-pw"


def gen1_spec() -> DiskSpec:
    return DiskSpec(image=image("debian-12-gen1"), generation=1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gen1(
    libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Guest]:
    """A Gen1 disk VM on libvirt, its console read from before its CPU runs."""
    folder = tmp_path_factory.mktemp("libvirt-gen1")
    vm = LibvirtMachine(
        "disk-1", run_dir=folder / "run", memory_mb=512, cpus=1, password=PASSWORD,
        hostname="libvirt-gen1", disk=gen1_spec(), disk_dir=folder / "disks",
        warm=WarmStore(folder / "warm"),  # its cold boot is saved once it is up
    )  # fmt: skip
    async for guest in running(vm):
        yield guest


async def booted(guest: Guest) -> None:
    """Until the guest has shown its login prompt (now or before); the console's cursor
    then at the end of what it printed."""
    console = guest.console
    console.cursor = 0
    await console.expect(r"libvirt-gen1 login: ", BOOT)
    console.cursor = len(console.data)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@ON_MODULE_LOOP
async def test_a_gen1_disk_vm_boots_from_seabios_to_systemd(gen1: Guest) -> None:
    await booted(gen1)
    data = bytes(gen1.console.data)
    assert data.index(b"SeaBIOS") < data.index(b"GNU GRUB") < data.index(b"Linux version")
    assert gen1.vm.generation == 1
    assert gen1.vm.power_state is PowerState.RUNNING


def _ssh_hostname(port: int) -> str:
    """``hostname`` run over SSH by OpenSSH with root's password: what it printed."""
    ssh = pexpect.spawn(
        "ssh", ["-p", str(port), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
                "root@127.0.0.1", "hostname"],
        encoding="utf-8", timeout=BOOT,
    )  # fmt: skip
    try:
        ssh.expect("[Pp]assword:")
        ssh.sendline(PASSWORD)
        ssh.expect(pexpect.EOF)
        return ssh.before or ""
    finally:
        ssh.close()


@ON_MODULE_LOOP
async def test_its_ssh_is_forwarded_to_a_loopback_port(gen1: Guest) -> None:
    await booted(gen1)
    port = gen1.vm.ssh_port  # type: ignore[attr-defined]
    assert port
    assert (await sshd_answers(port, BOOT)).startswith("SSH-2.0-OpenSSH")
    assert "libvirt-gen1" in await asyncio.to_thread(_ssh_hostname, port)


@ON_MODULE_LOOP
async def test_a_screenshot_is_a_png_of_the_vga_display(gen1: Guest, tmp_path: Path) -> None:
    path = await gen1.vm.screendump(tmp_path / "screen.png")  # type: ignore[attr-defined]
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (720, 400), "VGA text mode"


@ON_MODULE_LOOP
async def test_another_vm_starts_warm_from_its_saved_boot_with_its_own_name(
    gen1: Guest, tmp_path: Path
) -> None:
    """The first VM's untouched boot was saved; a VM like it starts from that state on an
    overlay of its own, takes its own host name and password through its agent (libvirt's
    channel), and shows a fresh prompt with its name."""
    vm: LibvirtMachine = gen1.vm  # type: ignore[assignment]
    assert await vm.save_settled(), "the first VM's untouched boot is saved"
    other = LibvirtMachine(
        "disk-2", run_dir=tmp_path / "run", memory_mb=512, cpus=1, password="other-pw-2",
        hostname="libvirt-warm", disk=gen1_spec(), disk_dir=tmp_path / "disks", warm=vm.warm,
    )  # fmt: skip
    guests = running(other)
    guest = await anext(guests)
    try:
        assert other.started_warm
        console = guest.console
        await console.expect(r"libvirt-warm login: ", BOOT)
        await console.send("root\r")
        await console.expect("Password: ", BOOT)
        await console.send("other-pw-2\r")
        await console.expect(r"# ", BOOT)
        # (bash may put its bracketed-paste switch before the output)
        assert (await console.run("hostname")).strip().endswith("libvirt-warm")
    finally:
        await guests.aclose()  # deallocated in this loop


@ON_MODULE_LOOP
async def test_the_guest_writes_its_overlay_and_reimage_discards_it(gen1: Guest) -> None:
    vm: LibvirtMachine = gen1.vm  # type: ignore[assignment]
    base = image("debian-12-gen1")
    before = await asyncio.to_thread(_sha256, base)
    console = gen1.console
    await booted(gen1)
    await console.send("\r")
    await console.expect(r"libvirt-gen1 login: ", BOOT)
    await console.send("root\r")
    await console.expect("Password: ", BOOT)
    await console.send(f"{PASSWORD}\r")
    await console.expect(r"# ", BOOT)
    await console.send("echo written > ~/mark && sync && echo done-$((6*7))\r")
    await console.expect("done-42", BOOT)
    assert await asyncio.to_thread(_sha256, base) == before, "the image is never written"
    info = await asyncio.to_thread(
        subprocess.run, ["qemu-img", "info", "-U", str(vm.disks.os_disk)],  # type: ignore[union-attr]
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(base) in info.stdout, "the OS disk is an overlay on the image"
    await vm.reimage()  # a new disk, so a warm start from the saved boot: a new port
    assert vm.started_warm
    console = gen1.console
    await console.send("\r")  # the restored getty prints its prompt again
    await console.expect(r"libvirt-gen1 login: ", BOOT)
    await console.send("root\r")
    await console.expect("Password: ", BOOT)
    await console.send(f"{PASSWORD}\r")
    await console.expect(r"# ", BOOT)
    await console.send("ls ~/mark; echo rc-$?\r")
    await console.expect(r"rc-[12]", BOOT)


@ON_MODULE_LOOP
async def test_an_nmi_panics_the_guest_and_its_panic_is_on_the_console(gen1: Guest) -> None:
    """kernel.panic_on_unrecovered_nmi=1: the panic, printed in NMI context, reaches the
    console before libvirt keeps the crashed domain (``on_crash = preserve``)."""
    console = gen1.console
    console.cursor = 0
    await console.expect(r"libvirt-gen1 login: ", BOOT)  # this port's boot (after the reimage)
    console.cursor = len(console.data)
    with gen1.vm.events() as events:
        await gen1.vm.inject_nmi()
        await gen1.console.expect("Kernel panic - not syncing: NMI", BOOT)
        await events.wait_for(lambda e: e.kind is EventKind.PANICKED, BOOT)
    assert gen1.vm.power_state is PowerState.PANICKED


async def test_a_gen2_disk_vm_boots_from_ovmf(libvirtd: Libvirtd, tmp_path: Path) -> None:
    """OVMF from libvirt's ``<loader>``, its variables a copy per VM (``<nvram>``), starts
    GRUB from the ESP (the rest of the boot is the Gen1 VM's and the QEMU backend's)."""
    spec = DiskSpec(image=image("debian-12-gen2"), generation=2)
    vm = LibvirtMachine(
        "disk-2", run_dir=tmp_path / "run", memory_mb=512, cpus=1, password=PASSWORD,
        hostname="libvirt-gen2", disk=spec, disk_dir=tmp_path / "disks",
    )  # fmt: skip
    async for guest in running(vm):
        await guest.console.expect(r"Debian GNU/Linux, with Linux", BOOT)  # the menu's 2nd entry
        data = bytes(guest.console.data)
        assert data.index(b"BdsDxe") < data.index(b"GNU GRUB")
        assert (tmp_path / "disks" / "uefi-vars.fd").is_file()
        assert vm.generation == 2
