"""The emulated UART's PTY pair: what a person reads when no PTY can be made."""

from __future__ import annotations

import errno
import os

import pytest

from emulator.pty import PtyPair, PtyUnavailable


def test_no_pty_left_names_the_kernel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's PTY count ran out (ENOSPC from /dev/ptmx): the message names the limit,
    where it is set, and what to do; not a PTY path."""

    def exhausted() -> tuple[int, int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "openpty", exhausted)
    with pytest.raises(PtyUnavailable) as refused:
        PtyPair()
    text = str(refused.value)
    assert text.startswith("no PTY: the kernel has no PTY left (")
    assert "its limit is" in text
    assert "/proc/sys/kernel/pty/max" in text
    assert "run fewer VMs" in text
    assert "/dev/pts/" not in text


def test_a_pty_pair_holds_two_descriptors_and_gives_them_back() -> None:
    """The guest's side of one port: master and slave, closed again by ``close``."""
    before = len(os.listdir("/proc/self/fd"))
    pty = PtyPair()
    assert len(os.listdir("/proc/self/fd")) - before == 2
    assert pty.path.startswith("/dev/pts/")
    pty.close()
    assert len(os.listdir("/proc/self/fd")) == before
