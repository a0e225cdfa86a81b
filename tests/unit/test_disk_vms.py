"""Disk VMs' pieces without a guest: the lab file's disk keys, image formats, overlays (with
the real qemu-img), the SSH forward as the monitor reports it, and the warm-state store."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.lab.config import LabConfigError, parse_lab
from gateway.machines.disk import DataDisk, DiskSet, DiskSpec, detect_format, forwarded_port
from gateway.machines.warm import WarmStore, state_key

LAB = """
[[resource_groups]]
name = "rg"
[[vms]]
name = "vm"
resource_group = "rg"
backend = "qemu"
{extra}
[vms.image]
{image}
"""


def lab(tmp_path: Path, image: str, extra: str = "") -> object:
    return parse_lab(LAB.format(image=image, extra=extra), source="lab.toml", base=tmp_path)


def test_a_disk_vm_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "os.vhd").write_bytes(b"\0" * 1024)
    config = lab(tmp_path, 'disk = "os.vhd"\ngeneration = 1', "ssh_port = 2200")
    spec = config.vms[0].machine  # type: ignore[attr-defined]
    assert spec.image.disk == DiskSpec(image=tmp_path / "os.vhd", generation=1, ssh_port=2200)
    assert spec.memory_mb == 512  # a systemd guest's default, not the initramfs guest's 128
    assert spec.cpus == 2  # two vCPUs boot systemd faster under TCG, given two host cores


def test_a_vtpm_is_the_qemu_backends_only(tmp_path: Path) -> None:
    text = LAB.format(image='disk = "debian-12-gen2"\ntpm = true', extra="")
    with pytest.raises(LabConfigError, match=r"backend: expected qemu beside \[image\] tpm"):
        parse_lab(text.replace('"qemu"', '"libvirt"'), source="lab.toml", base=tmp_path)


def test_a_built_image_by_name_implies_its_generation(tmp_path: Path) -> None:
    spec = lab(tmp_path, 'disk = "debian-12-gen1"').vms[0].machine  # type: ignore[attr-defined]
    assert spec.image.disk.generation == 1
    assert spec.image.disk.image.name == "gen1.qcow2"
    with pytest.raises(LabConfigError, match=r"vms\[0\]\.image\.generation: expected 1"):
        lab(tmp_path, 'disk = "debian-12-gen1"\ngeneration = 2')


@pytest.mark.parametrize(
    ("image", "extra", "message"),
    [
        ('disk = "missing.qcow2"', "", r"image\.disk: expected an existing qcow2"),
        ('disk = "debian-12-gen1"\nsecure_boot = true', "", "Secure Boot is UEFI's"),
        ('kernel = "k"\ngeneration = 2', "", r"image\.generation: expected disk beside it"),
        ('disk = "debian-12-gen2"\nappend = "quiet"', "", "either disk or kernel"),
        ("", "ssh_port = 2200", "only a disk VM has disks and a NIC"),
    ],
)
def test_disk_keys_refused_with_the_key_and_what_to_do(
    tmp_path: Path, image: str, extra: str, message: str
) -> None:
    (tmp_path / "k").write_bytes(b"k")
    with pytest.raises(LabConfigError, match=message):
        lab(tmp_path, image, extra)


def test_data_disks_need_a_size_or_a_file(tmp_path: Path) -> None:
    extra = '[[vms.data_disks]]\nsize_gb = 4\n[[vms.data_disks]]\nsize_gb = 1\nfile = "x"'
    text = LAB.format(image="", extra="").replace(
        "[vms.image]\n", '[vms.image]\ndisk = "debian-12-gen2"\n' + extra + "\n"
    )
    with pytest.raises(LabConfigError, match="either size_gb"):
        parse_lab(text, source="lab.toml", base=tmp_path)
    good = text.replace('size_gb = 1\nfile = "x"', "size_gb = 1")
    disk = parse_lab(good, source="lab.toml", base=tmp_path).vms[0].machine.image.disk
    assert disk is not None
    assert disk.data_disks == (DataDisk(size_gb=4), DataDisk(size_gb=1))


def qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing: sudo apt-get install qemu-utils")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_formats_are_read_from_the_file(tmp_path: Path) -> None:
    """qemu-img calls a fixed VHD raw; its footer says conectix."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    qemu_img("convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw),
             str(tmp_path / "fixed.vhd"))  # fmt: skip
    qemu_img("convert", "-O", "qcow2", str(raw), str(tmp_path / "disk.qcow2"))
    assert detect_format(raw) == "raw"
    assert detect_format(tmp_path / "fixed.vhd") == "vpc"
    assert detect_format(tmp_path / "disk.qcow2") == "qcow2"


async def test_overlays_leave_the_image_alone_and_reimage_drops_them(tmp_path: Path) -> None:
    image = tmp_path / "base.vhd"
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    qemu_img("convert", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw), str(image))
    spec = DiskSpec(image=image, data_disks=(DataDisk(size_gb=1),))
    disks = DiskSet(spec, tmp_path / "vm")
    await disks.prepare()
    info = await asyncio.to_thread(
        subprocess.run,
        ["qemu-img", "info", "--output=json", str(disks.os_disk)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert '"backing-filename-format": "vpc"' in info.stdout
    assert disks.data_disk(0).is_file()
    assert disks.uefi_vars.is_file()  # generation 2: OVMF's variables, a copy of its own
    disks.discard()
    assert not disks.folder.exists()


def test_forwarded_port_from_info_usernet() -> None:
    text = (
        "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port "
        "RecvQ SendQ\r\n  TCP[HOST_FORWARD]  11       127.0.0.1 45869       10.0.2.15    22     0"
        "     0\r\n"
    )
    assert forwarded_port(text) == 45869
    assert forwarded_port("Hub -1 (net0):\r\n") is None


def test_state_key_ignores_what_is_a_vms_own_and_follows_the_files(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"one")
    a = state_key(["-name", "a", "-drive", "file=/s/run/a/os"], {"run": "/s/run/a"}, [image])
    b = state_key(["-name", "a", "-drive", "file=/s/run/b/os"], {"run": "/s/run/b"}, [image])
    assert a == b
    assert a != state_key(["-name", "a", "-m", "1024"], {"run": "/s/run/a"}, [image])
    image.write_bytes(b"two!")  # the image changed: its old saved state is not used
    assert a != state_key(["-name", "a", "-drive", "file=/s/run/a/os"], {"run": "/s/run/a"},
                          [image])  # fmt: skip


def test_a_state_is_saved_once_and_whole(tmp_path: Path) -> None:
    store = WarmStore(tmp_path)
    with store.saving("k") as folder:
        assert folder is not None
        with store.saving("k") as other:
            assert other is None  # another saver holds the lock
        (folder / "state").write_bytes(b"s")
        assert store.lookup("k") is None  # not whole until the block ends
        (folder / "boot.log").write_bytes(b"login: ")
    saved = store.lookup("k")
    assert saved is not None
    assert saved.boot_log == b"login: "

    def failing_save() -> None:
        with store.saving("j") as folder:
            assert folder is not None
            (folder / "state").write_bytes(b"s")
            raise RuntimeError("the save failed")

    with pytest.raises(RuntimeError):
        failing_save()
    assert store.lookup("j") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_vms_like_each_other_share_a_state_key_whatever_their_names_and_folders(
    tmp_path: Path,
) -> None:
    """Two VMs of one image and settings, with other names, host names and state folders
    (long enough that QMP's socket moves to a temporary folder of its own), share a key;
    another memory size does not."""
    from gateway.machines.qemu import QemuMachine, _socket_path

    image = tmp_path / "os.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    store = WarmStore(tmp_path / "warm")

    def key(name: str, memory: int = 512) -> str | None:
        run = tmp_path / ("a-very-long-folder-name-" * 4) / name
        run.mkdir(parents=True)
        vm = QemuMachine(name, run_dir=run, memory_mb=memory, hostname=f"host-{name}",
                         disk=DiskSpec(image=image, generation=1), warm=store)  # fmt: skip
        qmp = _socket_path(run)
        return vm._warm_key(vm._disk_argv(qmp, None, None), qmp)

    first = key("first-vm")
    assert first is not None
    assert key("second-vm") == first
    assert key("third-vm", memory=1024) != first


def test_initramfs_guests_keep_their_names_in_the_key(tmp_path: Path) -> None:
    """The initramfs guest has no agent to take a new identity after a restore: a VM of
    another name (its host name) or password never restores another's boot."""
    from gateway.machines.qemu import QemuMachine, _socket_path

    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initramfs.cpio"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    store = WarmStore(tmp_path / "warm")

    def key(name: str, password: str = "serial-lab") -> str | None:
        run = tmp_path / name
        run.mkdir(exist_ok=True)
        vm = QemuMachine(name, run_dir=run, kernel=kernel, initrd=initrd, password=password,
                         warm=store)  # fmt: skip
        qmp = _socket_path(run)
        return vm._warm_key(vm._argv(kernel, initrd, qmp, None), qmp)

    assert key("linux-1") == key("linux-1")
    assert key("linux-1") != key("linux-2")
    assert key("linux-1") != key("linux-1", password="other")
