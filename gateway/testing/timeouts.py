"""Waits scaled for the machine the tests run on: the one place a timeout is scaled.

``LAB_TIMEOUT_SCALE`` (default 1) multiplies every wait of the plugin and of the project's
own tests: raise it on a slow or busy machine instead of editing timeouts. A value that is
not a positive number is refused with a message naming the variable (a scale of 0 would
make every wait fail at once; a typo silently read as 1 would hide the setting).
"""

from __future__ import annotations

import os

VARIABLE = "LAB_TIMEOUT_SCALE"


def scale() -> float:
    """The factor of ``LAB_TIMEOUT_SCALE``: 1 when unset or empty.

    Raises ValueError, naming the variable and its value, when it is set to anything but a
    positive number."""
    text = os.environ.get(VARIABLE, "").strip()
    if not text:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{VARIABLE}={text!r}: expected a positive number such as 1 or 2.5")
    return value


def scaled(seconds: float) -> float:
    """A wait of ``seconds`` on a reference machine, scaled for this one."""
    return seconds * scale()
