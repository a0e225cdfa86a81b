"""Shared test settings.

Timeouts scale with LAB_TIMEOUT_SCALE (default 1): raise it on a slow machine instead of
editing waits. Tests marked ``qemu`` need qemu-system-x86_64 and the built guest image
(``make images``); without them they fail with the command to run, never skip silently.
"""

from __future__ import annotations

import os

TIMEOUT_SCALE = float(os.environ.get("LAB_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    """A wait of ``seconds`` on a reference machine, scaled for this one."""
    return seconds * TIMEOUT_SCALE
