"""Shared test settings.

Timeouts scale with LAB_TIMEOUT_SCALE (default 1), in one place for the plugin and for this
suite: ``gateway.testing.timeouts.scaled``. Tests marked ``qemu`` need qemu-system-x86_64
and the built guest image (``make images``); without them they fail with the command to
run, never skip silently.
"""
