"""Where the lab finds the guest images: the kernel and initramfs ``make images`` builds, and
the Debian disk images it builds beside them (``disk/gen1.qcow2``, ``disk/gen2.qcow2``).

QEMU and libvirt guests boot it unless a VM names its own (``[vms.image]``); emulated Linux
guests run its userland. It is ``images/build/linux/`` in the lab's checkout, or the folder
the environment variable ``SERIAL_CONSOLE_LAB_IMAGES`` names (for a lab installed without
its checkout, e.g. ``pip install`` into another project).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

IMAGE_ENV = "SERIAL_CONSOLE_LAB_IMAGES"
KERNEL, INITRD = "vmlinux", "initramfs.cpio"
CHECKOUT_IMAGE_DIR = Path(__file__).resolve().parents[2] / "images" / "build" / "linux"


def image_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder holding the guest image: ``$SERIAL_CONSOLE_LAB_IMAGES``, else the checkout's."""
    named = environ.get(IMAGE_ENV, "").strip()
    return Path(named).expanduser().resolve() if named else CHECKOUT_IMAGE_DIR


def not_built(folder: Path) -> str:
    """What to do when ``folder`` holds no guest image."""
    wanted = f"{KERNEL} and {INITRD}"
    if folder != CHECKOUT_IMAGE_DIR:
        return (
            f"no guest image in {folder} ({IMAGE_ENV}): it needs {wanted}, as `make images` "
            "builds them in images/build/linux/ of the lab's checkout"
        )
    if (CHECKOUT_IMAGE_DIR.parents[2] / "Makefile").is_file():
        return f"no guest image in {folder}: run `make images` in the lab's checkout"
    return (
        f"no guest image: this lab is installed without its checkout; set {IMAGE_ENV} to a "
        f"folder holding {wanted} (`make images` builds them in images/build/linux/ of a "
        "checkout)"
    )


IMAGE_DIR = image_dir()


@dataclass(frozen=True, slots=True)
class BuiltinDisk:
    """A disk image ``make images`` builds, named in a lab file by ``name``."""

    name: str
    path: Path
    generation: int


BUILTIN_DISKS = {"debian-12-gen1": ("gen1.qcow2", 1), "debian-12-gen2": ("gen2.qcow2", 2)}


def disk_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of the built disk images: ``disk/`` beside the guest image's folder."""
    return image_dir(environ).parent / "disk"


def builtin_disk(name: str) -> BuiltinDisk | None:
    """The built disk image called ``name`` (``debian-12-gen1``, ``debian-12-gen2``), or None
    if ``name`` is no such name (then it is a path)."""
    entry = BUILTIN_DISKS.get(name)
    if entry is None:
        return None
    file, generation = entry
    return BuiltinDisk(name, disk_dir() / file, generation)
