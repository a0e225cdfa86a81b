"""Sessions: bounded queues that never block the guest, and the one-writer rule."""

from __future__ import annotations

import asyncio

from gateway.console.frames import CloseCode
from gateway.console.sessions import Closing, ConsoleSession, Event, Output, Role, SessionState


def _session(limit: int = 100) -> ConsoleSession:
    return ConsoleSession("s1" * 8, "alice", "linux-1", Role.WRITER, limit=limit)


async def test_output_is_delivered_in_order_with_offsets() -> None:
    """A client takes every chunk, in order, each with its absolute offset."""
    session = _session()
    session.push_output(10, b"abc")
    session.push_event('{"type":"power"}')
    session.push_output(13, b"de")
    assert await session.take() == [
        Output(10, b"abc"),
        Event('{"type":"power"}'),
        Output(13, b"de"),
    ]
    assert session.next_offset == 15


async def test_take_waits_for_output_without_polling() -> None:
    """A client waiting on an idle console wakes up when the guest writes."""
    session = _session()
    waiter = asyncio.create_task(session.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    session.push_output(0, b"x")
    assert await asyncio.wait_for(waiter, 1) == [Output(0, b"x")]


async def test_a_client_that_falls_behind_is_closed_with_its_resume_offset() -> None:
    """Past the limit the session closes (never blocks) and says where to resume."""
    session = _session(limit=10)
    session.push_output(100, b"12345678")
    session.push_output(108, b"90ab")
    assert session.state is SessionState.CLOSED
    assert session.closing is not None
    assert session.closing.code is CloseCode.FELL_BEHIND
    assert session.closing.resume_offset == 100
    assert "resume from offset 100" in session.closing.reason
    assert await session.take() == []
    session.push_output(112, b"more")  # ignored once closed
    assert await session.take() == []


async def test_a_taken_over_session_still_gets_what_was_queued() -> None:
    """Takeover drains queued output before the close, so the last lines are not lost."""
    session = _session()
    session.push_output(0, b"last words")
    session.close(Closing(CloseCode.TAKEN_OVER, "another user connected"))
    assert session.state is SessionState.TAKEN_OVER
    assert await session.take() == [Output(0, b"last words")]
    assert await session.take() == []


async def test_the_replay_given_at_attach_does_not_count_against_the_limit() -> None:
    """A client resuming from far back is not cut off again for the backlog it asked for."""
    session = _session(limit=10)
    session.preload(0, b"x" * 100)
    session.push_output(100, b"live")
    assert session.is_open
    items = await session.take()
    assert b"".join(i.data for i in items if isinstance(i, Output)) == b"x" * 100 + b"live"


async def test_a_long_replay_goes_out_in_bounded_frames_with_their_offsets() -> None:
    """Replay frames are at most 64 KiB, so no client's frame-size limit is hit."""
    session = _session()
    session.preload(1000, b"y" * (150 * 1024))
    items = await session.take()
    assert [(i.offset, len(i.data)) for i in items if isinstance(i, Output)] == [
        (1000, 65536),
        (1000 + 65536, 65536),
        (1000 + 131072, 150 * 1024 - 131072),
    ]
