"""The libvirt backend's pieces that need no daemon: the domain it defines, whose it is,
and what a host that is not QEMU says to a SysRq."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from gateway.machines import MachineCommandError, PowerState
from gateway.machines.disk import DiskSpec
from gateway.machines.libvirt import OWNER_NS, LibvirtMachine, _owner_of
from gateway.machines.warm import WarmStore


def _xml(vm: LibvirtMachine, driver: str, secret_dir: Path | None) -> ElementTree.Element:
    host = SimpleNamespace(driver=driver)
    text = vm._domain_xml(host, Path("/img/vmlinux"), Path("/img/initramfs.cpio"), secret_dir)  # type: ignore[arg-type]
    return ElementTree.fromstring(text)


def test_the_domain_is_a_paused_q35_guest_with_a_pty_console_and_pvpanic(tmp_path: Path) -> None:
    vm = LibvirtMachine("vm-1", run_dir=tmp_path, memory_mb=192, append="loglevel=7")
    vm.accel = "tcg"
    root = _xml(vm, "QEMU", None)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == vm.domain_name
    assert root.findtext("memory") == "192"
    assert root.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert root.findtext("os/cmdline") == (
        "console=ttyS0,115200 no_timer_check lab.hostname=vm-1 loglevel=7"
    )
    assert root.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert (root.findtext("on_poweroff"), root.findtext("on_crash")) == ("destroy", "preserve")
    qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = [a.get("value") for a in root.iter(f"{qemu}arg")]
    # the PCI pvpanic; a panic not paused by QEMU (the machine halts it once it is written)
    assert args == ["-device", "pvpanic-pci,bus=pcie.0,addr=0x10", "-action", "panic=none"]
    assert _owner_of(ElementTree.tostring(root, encoding="unicode")) == {
        "gateway": vm._owner["gateway"],
        "state": str(tmp_path.resolve()),
        "vm": "vm-1",
    }
    assert root.find("sysinfo") is None  # no password, no fw_cfg entry


def test_the_password_is_a_file_here_and_text_on_another_host(tmp_path: Path) -> None:
    """On this machine, QEMU reads a file (no secret in the XML); on another host the text
    goes in the definition (the file could not be put there)."""
    secret = "p<a>ss&'"
    here = LibvirtMachine("vm-1", run_dir=tmp_path, password=secret)
    entry = _xml(here, "QEMU", tmp_path / "secret").find("sysinfo/entry")
    assert entry is not None
    assert entry.get("name") == "opt/serial-console-lab/password"
    assert entry.get("file") == str(tmp_path / "secret" / "guest-password")
    assert not entry.text
    there = LibvirtMachine(
        "vm-1", run_dir=tmp_path, uri="qemu+ssh://root@host2/system", password=secret
    )
    assert _xml(there, "QEMU", None).findtext("sysinfo/entry") == secret


def test_a_host_that_is_not_qemu_gets_the_isa_panic_device_and_no_qemu_arguments(
    tmp_path: Path,
) -> None:
    root = _xml(LibvirtMachine("vm-1", run_dir=tmp_path), "Xen", None)
    assert root.find("devices/panic").get("model") == "isa"  # type: ignore[union-attr]
    assert "qemu" not in {el.tag.split("}")[0].strip("{") for el in root.iter() if "}" in el.tag}


def test_a_domain_without_the_labs_owner_is_not_the_labs() -> None:
    assert _owner_of("<domain><name>x</name></domain>") is None
    assert _owner_of("not xml") is None
    other = f"<domain><metadata><o:owner xmlns:o='{OWNER_NS}' vm='x'/></metadata></domain>"
    assert _owner_of(other) == {"vm": "x"}


async def test_sysrq_on_a_host_that_is_not_qemu_says_why_it_cannot(tmp_path: Path) -> None:
    """libvirt has no serial BREAK; only QEMU's monitor has one: elsewhere, say so."""
    vm = LibvirtMachine("vm-1", run_dir=tmp_path)
    vm._host = SimpleNamespace(driver="Xen")  # type: ignore[assignment]
    vm._state = PowerState.RUNNING
    with pytest.raises(MachineCommandError, match=r"runs on a Xen libvirt host.*use NMI"):
        await vm.send_break()


def _gen2(tmp_path: Path, name: str, password: str = "pw") -> LibvirtMachine:
    image = tmp_path / "os.qcow2"
    if not image.exists():
        image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    spec = DiskSpec(image=image, generation=2, secure_boot=True, ssh_port=2222)
    vm = LibvirtMachine(name, run_dir=tmp_path / name / "run", password=password,
                        hostname=f"host-{name}", disk=spec, disk_dir=tmp_path / name / "disks",
                        warm=WarmStore(tmp_path / "warm"))  # fmt: skip
    vm.accel = "tcg"
    return vm


def test_a_gen2_disk_domain_boots_secure_uefi_from_its_overlay_as_the_labs_user(
    tmp_path: Path,
) -> None:
    vm = _gen2(tmp_path, "gen2")
    root = _xml(vm, "QEMU", None)
    os_type = root.find("os/type")
    assert os_type is not None
    assert os_type.get("machine") == "q35"
    loader = root.find("os/loader")
    assert loader is not None
    assert loader.get("secure") == "yes"
    assert root.find("features/smm") is not None
    assert root.findtext("features/tcg/tb-cache") == "64"
    disks = [d.get("file") for d in root.iter("source")]
    assert disks == [str(vm.disks.os_disk)]  # type: ignore[union-attr]
    assert root.findtext("seclabel/label") == f"+{os.getuid()}:+{os.getgid()}"
    entries = {e.get("name"): e.text for e in root.iter("entry")}
    assert entries["opt/serial-console-lab/hostname"] == "host-gen2"
    qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    args = " ".join(str(a.get("value")) for a in root.iter(f"{qemu}arg"))
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in args
    assert "-incoming" not in args


def test_libvirt_vms_like_each_other_share_a_warm_key_and_the_owner_is_not_in_it(
    tmp_path: Path,
) -> None:
    """Two Gen2 VMs of one image with other names, host names and passwords (which their
    agent sets after a restore) share a key; another memory size does not."""
    host = SimpleNamespace(driver="QEMU")
    kernel, initrd = Path("/k"), Path("/i")
    first = _gen2(tmp_path, "first")
    key = first._warm_key(host, kernel, initrd)  # type: ignore[arg-type]
    assert key is not None
    assert _gen2(tmp_path, "second", "other")._warm_key(host, kernel, initrd) == key  # type: ignore[arg-type]
    bigger = _gen2(tmp_path, "third")
    bigger.memory_mb = 1024
    assert bigger._warm_key(host, kernel, initrd) != key  # type: ignore[arg-type]
