"""The idle timeout, for every door: warn a minute before it strikes, then close.

``watch_idle`` runs beside a door's reader for as long as a console is open. Input resets
it (the door sets ``activity`` and records the time in ``last_input()``). The warning is an
``IdleWarning`` item in the session's queue (each door shows it its own way); the close is
``CloseCode.IDLE`` with the text to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.console.frames import CloseCode
from gateway.console.sessions import Closing, ConsoleSession

WARNING = 60.0  # seconds of notice before the idle timeout closes a console


async def watch_idle(
    session: Callable[[], ConsoleSession | None],
    last_input: Callable[[], float],
    activity: asyncio.Event,
    timeout: float,
) -> None:
    """Close ``session()`` after ``timeout`` seconds without input, warning ``WARNING``
    seconds before; returns once it has closed it. Cancel it when the console closes."""
    warned = False
    while (current := session()) is not None:
        left = last_input() + timeout - time.monotonic()
        if left <= 0:
            minutes = timeout / 60
            current.close(Closing(CloseCode.IDLE, f"idle for {minutes:g} minutes",
                                    f"Closed after {minutes:g} minutes without input. "
                                    "Reconnect to go on."), drain=True)  # fmt: skip
            return
        if not warned and left <= WARNING:
            warned = True
            current.push_idle_warning(round(left))
        wait = left - WARNING if left > WARNING else left
        activity.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await activity.wait()
                warned = False
