"""Where the lab finds the guest image: the kernel and initramfs ``make images`` builds.

QEMU and libvirt guests boot it unless a VM names its own (``[vms.image]``); emulated Linux
guests run its userland. It is ``images/build/linux/`` in the lab's checkout, or the folder
the environment variable ``SERIAL_CONSOLE_LAB_IMAGES`` names (for a lab installed without
its checkout, e.g. ``pip install`` into another project).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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
