"""Extract the uncompressed ELF ``vmlinux`` from a compressed ``vmlinuz``.

The idea of the kernel's scripts/extract-vmlinux: find a compressed payload's magic in the
bzImage, decompress from there, keep the first result that is an ELF file. QEMU boots the
ELF through its PVH entry, which under TCG boots and, above all, resets much faster than the
bzImage (no decompression in emulated code).

usage: python3 extract_vmlinux.py VMLINUZ OUTPUT
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path


def _with_command(*argv: str) -> Callable[[bytes], bytes]:
    def run(payload: bytes) -> bytes:
        if shutil.which(argv[0]) is None:
            raise RuntimeError(f"'{argv[0]}' is needed to unpack this kernel")
        # These tools complain about the bytes after the payload; the output is still whole.
        done = subprocess.run(argv, input=payload, capture_output=True, check=False)
        return done.stdout

    return run


def _gzip(payload: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(payload)


def _xz(payload: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(payload)


# magic -> decompressor; the order of scripts/extract-vmlinux
FORMATS: list[tuple[bytes, Callable[[bytes], bytes]]] = [
    (b"\x1f\x8b\x08", _gzip),
    (b"\xfd7zXZ\x00", _xz),
    (b"\x02!L\x18", _with_command("lz4", "-d", "-c")),
    (b"(\xb5/\xfd", _with_command("zstd", "-d", "-c")),
]


def extract(image: bytes) -> bytes:
    for magic, decompress in FORMATS:
        start = image.find(magic)
        while start != -1:
            try:
                out = decompress(image[start:])
            except (OSError, EOFError, lzma.LZMAError, zlib.error):
                out = b""
            if out.startswith(b"\x7fELF"):
                return out
            start = image.find(magic, start + 1)
    raise SystemExit("no ELF kernel found inside the compressed image")


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    vmlinux = extract(source.read_bytes())
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(vmlinux)
    tmp.replace(target)


if __name__ == "__main__":
    main()
