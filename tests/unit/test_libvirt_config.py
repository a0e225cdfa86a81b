"""The lab file's libvirt keys: ``backend = "libvirt"`` with ``uri``, and their refusals;
the runtime makes a LibvirtMachine of them, named for the lab's state folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.lab.config import LabConfigError, parse_lab
from gateway.lab.runtime import default_machine_factory
from gateway.machines.libvirt import LibvirtMachine, domain_prefix

LAB = """
[[resource_groups]]
name = "rg"

[[vms]]
name = "vm1"
resource_group = "rg"
{extra}
"""


def parse(extra: str) -> object:
    return parse_lab(LAB.format(extra=extra), source="lab.toml", base=Path("/labs"))


def test_libvirt_defaults_to_the_local_system_daemon() -> None:
    (vm,) = parse('backend = "libvirt"').vms  # type: ignore[attr-defined]
    assert (vm.machine.backend, vm.machine.uri) == ("libvirt", "qemu:///system")


def test_a_remote_host_takes_its_own_image_paths_unchecked() -> None:
    """Paths on another host cannot be checked here; on this one they are."""
    extra = (
        'backend = "libvirt"\nuri = "qemu+ssh://root@host2/system"\n'
        '[vms.image]\nkernel = "/srv/lab/vmlinux"\ninitrd = "/srv/lab/initramfs.cpio"'
    )
    (vm,) = parse(extra).vms  # type: ignore[attr-defined]
    assert vm.machine.uri == "qemu+ssh://root@host2/system"
    assert vm.machine.image.kernel == Path("/srv/lab/vmlinux")
    local = extra.replace('uri = "qemu+ssh://root@host2/system"', 'uri = "qemu:///system"')
    with pytest.raises(LabConfigError, match=r"vms\[0\]\.image\.kernel: expected an existing"):
        parse(local)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('uri = "qemu:///system"', r'vms\[0\]\.uri: expected backend = "libvirt" beside it'),
        (
            'backend = "libvirt"\nuri = "xen:///system"',
            r"vms\[0\]\.uri: expected a libvirt QEMU URI such as qemu:///system or "
            r"qemu\+ssh://user@host/system, got 'xen:///system'",
        ),
        (
            'backend = "libvirt"\nos = "windows"',
            r"vms\[0\]\.backend: expected emulated for a windows VM .*got 'libvirt'",
        ),
        ('backend = "virtualbox"', r"vms\[0\]\.backend: expected one of qemu, libvirt, emulated"),
    ],
)
def test_libvirt_keys_are_checked(extra: str, message: str) -> None:
    with pytest.raises(LabConfigError, match=message):
        parse(extra)


def test_the_runtime_makes_a_libvirt_machine_named_for_the_state_folder(tmp_path: Path) -> None:
    """Two labs (two state folders) never share a domain name; one lab's VMs share a prefix."""
    (vm,) = parse('backend = "libvirt"\nuri = "qemu+ssh://h/system"').vms  # type: ignore[attr-defined]
    one = default_machine_factory(vm.machine, tmp_path / "a" / "run" / "vm1")
    two = default_machine_factory(vm.machine, tmp_path / "b" / "run" / "vm1")
    assert isinstance(one, LibvirtMachine)
    assert isinstance(two, LibvirtMachine)
    assert one.uri == "qemu+ssh://h/system"
    assert one.domain_name == f"{domain_prefix(tmp_path / 'a')}-vm1"
    assert one.domain_name != two.domain_name
