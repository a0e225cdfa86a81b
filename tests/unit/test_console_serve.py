"""The serve loop every door runs: the writer decides when it ends, the others are
cancelled and joined, and a fault in any is logged at ERROR unless it is the client going."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.console.serve import serve

log = logging.getLogger("test.serve")


async def test_the_loop_ends_with_its_writer_and_cancels_the_reader() -> None:
    done = asyncio.Event()
    reader_cancelled = False

    async def writer() -> None:
        await done.wait()

    async def reader() -> None:
        nonlocal reader_cancelled
        try:
            await asyncio.Event().wait()  # a client that never sends
        except asyncio.CancelledError:
            reader_cancelled = True
            raise

    loop = asyncio.create_task(serve(writer(), reader(), None, client_gone=(), log=log, who="t"))
    await asyncio.sleep(0)
    assert not loop.done()
    done.set()
    assert await loop is True
    assert reader_cancelled


async def test_a_client_gone_is_not_a_fault_and_a_bug_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def gone() -> None:
        raise ConnectionResetError("peer reset")

    async def buggy() -> None:
        raise KeyError("a bug")

    with caplog.at_level(logging.ERROR, logger="test.serve"):
        assert await serve(gone(), client_gone=(ConnectionError,), log=log, who="t") is False
        assert caplog.records == []
        blocked = asyncio.Event()

        async def writer() -> None:
            await blocked.wait()

        loop = asyncio.create_task(serve(writer(), buggy(), client_gone=(), log=log, who="t"))
        await asyncio.sleep(0.01)
        blocked.set()
        assert await loop is True
    (record,) = caplog.records
    assert "the gateway failed" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
