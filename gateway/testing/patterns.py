"""Regular expressions for what a Linux guest's serial console shows.

The kernel prints to the same port as the shell at any moment: whole lines, right after a
prompt, or between two characters of an echo. These patterns read around its lines::

    console.expect("login: " + AT_END)     the prompt, maybe followed by kernel lines only
    console.expect(echoed("uname -r"))     the shell's echo of a typed line
    without_kernel_lines(output)           a command's output with the printk lines cut
"""

from __future__ import annotations

import re

KERNEL_LINE = re.compile(rb"\[ *\d+\.\d+\] [^\r\n]*\r?\n")  # one printk line on the console
KERNEL_LINES = r"(?:\[ *\d+\.\d+\] [^\r\n]*\r*\n)*"  # any number of them, as a str regex
AT_END = KERNEL_LINES + "$"  # the end of what the console shows, or only kernel lines after


def echoed(text: str) -> str:
    """A regex for ``text`` as a console echoes it back, kernel lines and all."""
    return KERNEL_LINES.join(re.escape(char) for char in text)


def without_kernel_lines(data: bytes) -> str:
    """``data`` as text, with every whole kernel line taken out."""
    return KERNEL_LINE.sub(b"", data).decode(errors="replace")
