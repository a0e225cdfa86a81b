"""Shared test settings.

Timeouts scale with LAB_TIMEOUT_SCALE (default 1), in one place for the plugin and for this
suite: ``gateway.testing.timeouts.scaled``. Tests marked ``qemu`` need qemu-system-x86_64
and the built guest image (``make images``); without them they fail with the command to
run, never skip silently.
"""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background (``&`` in a script, nohup, some CI runners) inherits
    SIGINT ignored, and every child would too, across exec: the tests that press Ctrl+C in
    a child (the CLI, a lab, a user's pytest run) need it delivered, as from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
