"""A libvirt domain definition, built as an element tree: every value escaped by the XML
writer, none pasted into markup.

``Domain`` is one transient domain of the lab: the skeleton every lab domain shares (the
first serial port on a ``pty``, ACPI, no USB, no libvirt balloon, libvirt's own
``on_poweroff=destroy`` so a powered-off guest ends its domain), then what a machine adds
(``boot_kernel`` or ``boot_disk``, fw_cfg entries, disks, QEMU arguments that libvirt's
XML cannot say). ``xml()`` writes it, one element per line, which is also what a warm
start's key is computed from (``gateway.machines.warm.state_key``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from xml.etree import ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
OWNER_NS = "urn:serial-console-lab:owner:1"

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("lab", OWNER_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


class Domain:
    """One domain's definition; ``kind`` is libvirt's domain type (``kvm`` or ``qemu``)."""

    def __init__(self, name: str, kind: str, memory_mb: int, cpus: int) -> None:
        self.root = ET.Element("domain", type=kind)
        _sub(self.root, "name", name)
        _sub(self.root, "memory", str(memory_mb), unit="MiB")
        _sub(self.root, "vcpu", str(cpus))
        self._os = _sub(self.root, "os")
        self._sysinfo: ET.Element | None = None
        if kind == "kvm":
            _sub(self.root, "cpu", mode="host-passthrough")
        self._features = _sub(self.root, "features")
        _sub(self._features, "acpi")
        _sub(self.root, "on_poweroff", "destroy")
        _sub(self.root, "on_reboot", "restart")
        _sub(self.root, "on_crash", "preserve")
        self._devices = _sub(self.root, "devices")
        serial = _sub(self._devices, "serial", type="pty")
        _sub(serial, "target", port="0")
        _sub(self._devices, "controller", type="usb", model="none")
        _sub(self._devices, "memballoon", model="none")
        self._qemu_args: ET.Element | None = None

    def owner(self, values: Mapping[str, str]) -> None:
        """The lab's mark in ``<metadata>``: which lab made this domain."""
        metadata = ET.Element("metadata")
        self.root.insert(1, metadata)  # after the name
        _sub(metadata, f"{{{OWNER_NS}}}owner", **dict(values))

    def boot_kernel(self, kernel: Path, initrd: Path, cmdline: str) -> None:
        """A q35 machine that boots ``kernel`` and ``initrd`` directly (no firmware's disk)."""
        _sub(self._os, "type", "hvm", arch="x86_64", machine="q35")
        _sub(self._os, "kernel", str(kernel))
        _sub(self._os, "initrd", str(initrd))
        _sub(self._os, "cmdline", cmdline)

    def boot_disk(self, machine: str, loader: Path | None = None, nvram: Path | None = None,
                  secure: bool = False) -> None:  # fmt: skip
        """A machine (``pc`` or ``q35``) that boots its first disk through its firmware:
        SeaBIOS, or the UEFI ``loader`` with its variables in ``nvram``."""
        _sub(self._os, "type", "hvm", arch="x86_64", machine=machine)
        if loader is not None:
            secure_boot = "yes" if secure else "no"
            _sub(self._os, "loader", str(loader), readonly="yes", secure=secure_boot,
                 type="pflash")  # fmt: skip
        if nvram is not None:
            _sub(self._os, "nvram", str(nvram))
        _sub(self._os, "boot", dev="hd")

    def fw_cfg(self, name: str, *, text: str | None = None, file: Path | None = None) -> None:
        """A fw_cfg entry the guest reads under ``name``: ``text``, or the host's ``file``."""
        if self._sysinfo is None:
            self._sysinfo = ET.Element("sysinfo", type="fwcfg")
            self.root.insert(list(self.root).index(self._os) + 1, self._sysinfo)
        if file is not None:
            _sub(self._sysinfo, "entry", name=name, file=str(file))
        else:
            _sub(self._sysinfo, "entry", text, name=name)

    def feature(self, tag: str, **attrs: str) -> ET.Element:
        """A machine feature (``smm``, ``tcg``...) beside ACPI."""
        return _sub(self._features, tag, **attrs)

    def tcg_cache(self, megabytes: int) -> None:
        """TCG's translation cache size (QEMU's ``tb-size``)."""
        _sub(self.feature("tcg"), "tb-cache", str(megabytes), unit="MiB")

    def isa_panic(self) -> None:
        """libvirt's own panic device (ISA), for a host whose QEMU arguments cannot be given."""
        _sub(self._devices, "panic", model="isa")

    def disk(self, path: Path, target: str) -> None:
        """A qcow2 overlay as a virtio disk (``discard`` passes the guest's TRIM on)."""
        disk = _sub(self._devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
        _sub(disk, "source", file=str(path))
        _sub(disk, "target", dev=target, bus="virtio")

    def vga(self) -> None:
        _sub(_sub(self._devices, "video"), "model", type="vga")

    def agent_channel(self) -> None:
        """The QEMU guest agent's virtio-serial channel (libvirt connects it)."""
        channel = _sub(self._devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")

    def run_as(self, uid: int, gid: int) -> None:
        """QEMU runs as this user and group, and libvirt relabels nothing."""
        label = _sub(self.root, "seclabel", type="static", model="dac", relabel="no")
        _sub(label, "label", f"+{uid}:+{gid}")

    def qemu_args(self, args: Iterable[str]) -> None:
        """Arguments for QEMU's command line (libvirt's ``qemu:commandline``), for what the
        domain XML cannot say."""
        for arg in args:
            if self._qemu_args is None:
                self._qemu_args = _sub(self.root, f"{{{QEMU_NS}}}commandline")
            _sub(self._qemu_args, f"{{{QEMU_NS}}}arg", value=arg)

    def xml(self) -> str:
        """The definition, one element per line."""
        ET.indent(self.root)
        return ET.tostring(self.root, encoding="unicode")
