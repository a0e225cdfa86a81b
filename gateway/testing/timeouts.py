"""Waits scaled for the machine the tests run on.

``LAB_TIMEOUT_SCALE`` (default 1) multiplies every wait of the plugin, as it does the
project's own tests: raise it on a slow or busy machine instead of editing timeouts.
"""

from __future__ import annotations

import os


def scale() -> float:
    """The factor of ``LAB_TIMEOUT_SCALE``; 1 when unset or not a positive number."""
    try:
        value = float(os.environ.get("LAB_TIMEOUT_SCALE", "1"))
    except ValueError:
        return 1.0
    return value if value > 0 else 1.0


def scaled(seconds: float) -> float:
    """A wait of ``seconds`` on a reference machine, scaled for this one."""
    return seconds * scale()
