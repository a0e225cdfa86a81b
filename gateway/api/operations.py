"""Long-running operations as ARM runs them: a 202 now, a status resource to poll.

A power action (``start``, ``powerOff``, ``restart``, ``deallocate``) answers ``202
Accepted`` at once with ARM's headers: ``Azure-AsyncOperation`` (the status resource:
``{"name", "status": "InProgress" | "Succeeded" | "Failed", "startTime", "endTime",
"error"}``), ``Location`` (the same operation with ``monitor=true``: 202 while it runs,
200 when done) and ``Retry-After``. This is what azure-core's ARM poller follows, so
``begin_start(...).result()`` returns once the VM is running.

``Operations`` keeps the newest ``limit`` operations of the lab, each run by an asyncio
task it holds; ``close()`` cancels the ones still running. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("serial_console_lab.api.operations")

IN_PROGRESS = "InProgress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELED = "Canceled"


@dataclass(eq=False)
class Operation:
    """One long-running operation and where it stands."""

    id: str
    action: str
    target: str
    started: float
    status: str = IN_PROGRESS
    ended: float | None = None
    error: tuple[str, str] | None = None  # ARM's (code, message) when it failed
    output: str = ""
    result: dict[str, Any] | None = None  # what the Location URL answers once it succeeded
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status != IN_PROGRESS

    def body(self) -> dict[str, Any]:
        """The status resource, as ARM's ``Azure-AsyncOperation`` URL answers it."""
        body: dict[str, Any] = {
            "name": self.id,
            "status": self.status,
            "startTime": iso(self.started),
        }
        if self.ended is not None:
            body["endTime"] = iso(self.ended)
        if self.error is not None:
            body["error"] = {"code": self.error[0], "message": self.error[1]}
        if self.output:
            body["properties"] = {"output": self.output}
        return body


Outcome = Callable[[], Awaitable[str | dict[str, Any]]]
Failure = Callable[[BaseException], tuple[str, str] | None]


class Operations:
    """The lab's long-running operations, newest ``limit`` kept, looked up by id."""

    def __init__(self, limit: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._ops: OrderedDict[str, Operation] = OrderedDict()

    def start(self, action: str, target: str, run: Outcome, failure: Failure) -> Operation:
        """Run ``run()`` as a new operation. Its return value becomes the output (a text),
        or the result the ``Location`` URL answers with (a JSON object); an
        exception for which ``failure`` gives (code, message) fails the operation with
        that error, any other fails it with ``InternalExecutionError``."""
        op = Operation(str(uuid.uuid4()), action, target, self.clock())
        op.task = asyncio.get_running_loop().create_task(
            self._run(op, run, failure), name=f"operation {action} {op.id[:8]}"
        )
        self._ops[op.id] = op
        while len(self._ops) > self.limit:
            oldest_id = next(iter(self._ops))
            if not self._ops[oldest_id].done:
                break  # never forget a running operation
            del self._ops[oldest_id]
        return op

    def get(self, operation_id: str) -> Operation | None:
        return self._ops.get(operation_id.lower())

    async def close(self) -> None:
        """Cancel the operations still running and wait for them."""
        tasks = [op.task for op in self._ops.values() if op.task and not op.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, op: Operation, run: Outcome, failure: Failure) -> None:
        try:
            value = await run()
            if isinstance(value, dict):
                op.result = value
            else:
                op.output = value
            op.status = SUCCEEDED
        except asyncio.CancelledError:
            op.status, op.error = CANCELED, ("OperationCanceled", "The lab is stopping.")
            raise
        except Exception as err:
            op.status = FAILED
            op.error = failure(err) or ("InternalExecutionError", str(err) or type(err).__name__)
            log.info("%s on %s failed: %s", op.action, op.target, op.error[1])
        finally:
            op.ended = self.clock()


def iso(when: float) -> str:
    """ARM's timestamps: ISO 8601 in UTC with a ``Z``."""
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
