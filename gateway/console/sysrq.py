"""SysRq: which keys there are and how a sequence is read.

A SysRq reaches a Linux guest as a serial BREAK followed by the key, so a sequence such as
``REISUB`` is one break + key per letter (the hub sends them, in order with typed input).
Keys are Azure's: ``0-9`` and ``a-z`` (the kernel's handlers are lower-case; a sequence may
be written in capitals, as the portal shows ``REISUB``).
"""

from __future__ import annotations

import re

from gateway.console.errors import ConsoleError

MAX_SEQUENCE = 32
_KEYS = re.compile(r"[0-9a-z]+")


class SysRqError(ConsoleError, ValueError):
    """The SysRq input is not a key or a sequence of keys; the message says what is."""


def parse_sysrq(text: str) -> list[str]:
    """The keys to send for ``text``: one key (``b``) or a sequence (``REISUB``).

    Raises SysRqError with what is accepted when ``text`` is empty, too long or holds
    anything but letters and digits.
    """
    keys = text.strip().lower()
    if not keys:
        raise SysRqError("SysRq needs a key: one of 0-9 or a-z, or a sequence such as REISUB")
    if len(keys) > MAX_SEQUENCE:
        raise SysRqError(f"a SysRq sequence is at most {MAX_SEQUENCE} keys; got {len(keys)}")
    if not _KEYS.fullmatch(keys):
        raise SysRqError(
            f"SysRq keys are 0-9 and a-z, or a sequence of them such as REISUB; got {text!r}"
        )
    return list(keys)
