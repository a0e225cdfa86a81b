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


# The longest chains of the suite: groups whose tests share one slow guest (a disk VM under
# TCG) and run one after another on one worker. xdist hands groups to workers in the order
# it collects them, so these go first: a chain that starts last ends last.
LONGEST_FIRST = (
    "disk-provision",
    "disk-gen2",
    "disk-gen1",
    "disk-vmss",
    "disk-doors",
    "libvirt-disk",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the longest chains first (a stable sort: every worker gets the same order;
    after the groups are given, before xdist reads them)."""

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("xdist_group")
        name = (marker.args[0] if marker and marker.args else None) or ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
