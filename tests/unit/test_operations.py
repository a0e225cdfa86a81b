"""Long-running operations without a server: status, errors, the bound, cancellation."""

from __future__ import annotations

import asyncio

from gateway.api.operations import CANCELED, FAILED, IN_PROGRESS, SUCCEEDED, Operations


class Refused(Exception):
    pass


def failure(err: BaseException) -> tuple[str, str] | None:
    return ("OperationNotAllowed", str(err)) if isinstance(err, Refused) else None


async def test_an_operation_runs_to_its_status_and_body() -> None:
    clock = iter([100.0, 102.5])
    ops = Operations(clock=lambda: next(clock))
    release = asyncio.Event()

    async def run() -> str:
        await release.wait()
        return "graceful"

    op = ops.start("restart", "/vm", run, failure)
    await asyncio.sleep(0)
    assert (op.status, op.done) == (IN_PROGRESS, False)
    assert op.body() == {"name": op.id, "status": IN_PROGRESS, "startTime": "1970-01-01T00:01:40Z"}
    release.set()
    assert op.task is not None
    await op.task
    assert op.body() == {
        "name": op.id,
        "status": SUCCEEDED,
        "startTime": "1970-01-01T00:01:40Z",
        "endTime": "1970-01-01T00:01:42.500000Z",
        "properties": {"output": "graceful"},
    }
    assert ops.get(op.id.upper()) is op


async def test_failures_carry_arms_error() -> None:
    ops = Operations()

    async def refused() -> str:
        raise Refused("cannot restart VM 'vm' while it is stopped: start it first")

    async def broken() -> str:
        raise OSError("QMP socket closed")

    first = ops.start("restart", "/vm", refused, failure)
    second = ops.start("start", "/vm", broken, failure)
    await asyncio.gather(first.task, second.task)  # type: ignore[arg-type]
    assert (first.status, first.body()["error"]["code"]) == (FAILED, "OperationNotAllowed")
    assert "start it first" in first.body()["error"]["message"]
    assert second.body()["error"] == {
        "code": "InternalExecutionError",
        "message": "QMP socket closed",
    }


async def test_only_the_newest_finished_operations_are_kept() -> None:
    ops = Operations(limit=2)

    async def done() -> str:
        return ""

    started = [ops.start("start", "/vm", done, failure) for _ in range(3)]
    assert ops.get(started[0].id) is not None  # running operations are never forgotten
    await asyncio.gather(*(op.task for op in started))  # type: ignore[misc]
    fourth = ops.start("start", "/vm", done, failure)
    await fourth.task  # type: ignore[misc]
    assert ops.get(started[0].id) is None
    assert ops.get(started[1].id) is None
    assert ops.get(started[2].id) is started[2]
    assert ops.get(fourth.id) is fourth


async def test_close_cancels_what_still_runs() -> None:
    ops = Operations()

    async def forever() -> str:
        await asyncio.Event().wait()
        return ""

    op = ops.start("restart", "/vm", forever, failure)
    await asyncio.sleep(0)
    await ops.close()
    assert op.status == CANCELED
    assert op.body()["error"]["code"] == "OperationCanceled"
    assert op.task is not None
    assert op.task.cancelled()
