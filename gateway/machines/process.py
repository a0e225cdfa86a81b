"""Child processes that never outlive their owner, and waits on processes that are not ours.

``die_with_parent`` runs in a child before exec: the kernel sends it SIGKILL when the
thread that started it dies (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the lab takes
its QEMUs along. ``wait_pid_exit`` awaits any process's end through a pidfd: an event,
not a poll.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it dies; and a
    process group of its own, so the terminal's Ctrl+C reaches the lab, which then stops
    its children in order."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)


async def wait_pid_exit(pid: int, timeout: float) -> None:
    """Wait until ``pid`` (not necessarily our child) has exited; TimeoutError after ``timeout``.

    A pidfd becomes readable when its process exits: an event to await, not a poll.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _resolve, exited)
    try:
        async with asyncio.timeout(timeout):
            await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
