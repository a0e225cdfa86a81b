"""One client's console session, served: the loop every door runs, written once.

A door brings three coroutines, each the door's own spelling of bytes:

- the **writer**, the only one that sends to the client while the session is served: it
  takes the session's items in turn (``ConsoleSession.take``), sends them with a bounded
  drain, and ends with the session (its close, or the client gone);
- the **reader**, the client's keys, breaks and requests, in order (optional: SSH keeps one
  reader across the sessions of a connection);
- the **idle watcher** (``watch_idle``), when the lab has an idle timeout.

``serve`` runs the writer until it ends, then cancels and joins the others, and logs a
failure of any of them at ERROR with its traceback, unless it is one the door names as the
client going away. What comes after (detaching the session, the audit row, the close) is
the door's, once ``serve`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.console.idle import watch_idle
from gateway.console.sessions import ConsoleSession

Job = Coroutine[Any, Any, None]


def idle_watch(
    timeout: float | None,
    session: Callable[[], ConsoleSession | None],
    last_input: Callable[[], float],
    activity: asyncio.Event,
) -> Job | None:
    """The idle watcher of a session, or None when the lab has no idle timeout."""
    return watch_idle(session, last_input, activity, timeout) if timeout else None


async def serve(
    writer: Job,
    *helpers: Job | None,
    client_gone: tuple[type[BaseException], ...],
    log: logging.Logger,
    who: str,
) -> bool:
    """Run ``writer`` until it ends, ``helpers`` (the reader, the idle watcher; None for
    one the door has not) beside it; True when the writer ended by itself (the session
    closed), False when it failed (the client is gone, or a fault). Raises nothing but
    CancelledError."""
    loop = asyncio.get_running_loop()
    sender = loop.create_task(writer)
    tasks = [loop.create_task(job) for job in helpers if job is not None]
    try:
        await sender
    except Exception:  # judged below, with the others' outcomes, and logged there
        pass
    finally:
        for task in (sender, *tasks):
            task.cancel()
        outcomes = await asyncio.gather(sender, *tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, client_gone):
                log.error("%s: the gateway failed: %r", who, outcome, exc_info=outcome)
    return not isinstance(outcomes[0], BaseException)
