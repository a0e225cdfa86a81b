"""Sessions: bounded queues that never block the guest, and the one-writer rule."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.console.bootlog import BootLog, LogRead
from gateway.console.frames import CloseCode
from gateway.console.sessions import (
    Closing,
    ConsoleSession,
    Event,
    Gap,
    Output,
    Role,
    SessionState,
)


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


async def test_the_replay_given_at_attach_does_not_count_against_the_limit(
    tmp_path: Path,
) -> None:
    """A client resuming from far back is not cut off again for the backlog it asked for."""
    log = BootLog(tmp_path)
    log.append(b"x" * 100)
    session = _session(limit=10)
    session.replay(log.read, 0, 100)
    session.push_output(100, b"live")
    assert session.is_open
    data = b""
    while len(data) < 104:
        data += b"".join(i.data for i in await session.take() if isinstance(i, Output))
    assert data == b"x" * 100 + b"live"


async def test_a_long_replay_is_read_a_page_at_a_time_with_its_offsets(tmp_path: Path) -> None:
    """Replay frames are at most 64 KiB (no client's frame-size limit is hit), and each is
    read from the boot log only when the client takes it."""
    log = BootLog(tmp_path)
    log.append(b"-" * 1000 + b"y" * (150 * 1024))
    reads: list[tuple[int, int]] = []

    def read(start: int, size: int) -> LogRead:
        reads.append((start, size))
        return log.read(start, size)

    session = _session()
    session.replay(read, 1000, 1000 + 150 * 1024)
    pages = [await session.take() for _ in range(3)]
    assert [(i.offset, len(i.data)) for p in pages for i in p if isinstance(i, Output)] == [
        (1000, 65536),
        (1000 + 65536, 65536),
        (1000 + 131072, 150 * 1024 - 131072),
    ]
    assert len(reads) == 3


async def test_a_replay_overtaken_by_the_ring_says_which_bytes_are_gone(tmp_path: Path) -> None:
    """Bytes that rotate out while a slow client replays are named, not silently skipped."""
    log = BootLog(tmp_path, capacity=100 * 1024)
    log.append(b"a" * (100 * 1024))
    session = _session()
    session.replay(log.read, 0, 100 * 1024)
    first = await session.take()
    assert [(i.offset, len(i.data)) for i in first if isinstance(i, Output)] == [(0, 65536)]
    log.append(b"b" * (80 * 1024))  # the ring now starts at offset 80 KiB
    second = await session.take()
    assert second[0] == Gap(65536, 81920)
    assert [(i.offset, len(i.data)) for i in second if isinstance(i, Output)] == [
        (81920, 100 * 1024 - 81920)
    ]


async def test_a_replay_the_log_cannot_give_is_one_gap_and_live_output_goes_on() -> None:
    """An unreadable boot log, or a ring smaller than the replay, never ends a session nor
    labels live bytes with the replay's offsets: the missing range is one Gap."""
    session = _session(limit=1 << 20)
    session.replay(lambda start, size: LogRead(b"", start, start, False), 1000, 5000)
    session.push_output(5000, b"live")
    assert await session.take() == [Gap(1000, 5000)]
    assert await session.take() == [Output(5000, b"live")]
    ring = _session(limit=1 << 20)
    ring.replay(lambda start, size: LogRead(b"late", 9000, 9004, True), 1000, 5000)
    assert await ring.take() == [Gap(1000, 5000)]
