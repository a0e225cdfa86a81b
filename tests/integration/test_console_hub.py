"""The hub on an emulated guest: nothing slow in the loop, commands in order with input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.machine import EmulatedMachine
from gateway.console.bootlog import BootLog, FlushMark
from gateway.console.hub import ConsoleHub, _Typed
from gateway.console.sessions import ConsoleSession, Output, Role
from gateway.testing.timeouts import scaled


class SlowDisk(BootLog):
    """A boot log whose flush hangs until released, as a slow or stalled disk does."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, flush_bytes=1, flush_interval=0)
        self.release = threading.Event()
        self.flushing = threading.Event()

    def flush_to(self, mark: FlushMark) -> None:
        self.flushing.set()
        self.release.wait(30)
        super().flush_to(mark)


@contextlib.asynccontextmanager
async def _booted(log: BootLog, writer: ConsoleSession) -> AsyncIterator[ConsoleHub]:
    """An emulated Linux guest behind a hub on ``log``, booted with ``writer`` attached
    from its first byte; the hub and the log closed on the way out."""
    machine = EmulatedMachine("linux-1", "linux")
    hub = ConsoleHub(machine, log)
    hub.install()
    try:
        async with machine:
            hub.attach(writer)
            await machine.start()
            await _read_until(writer, b"login: ")
            yield hub
    finally:
        hub.close()
        log.close()


def _writer(user: str = "alice") -> ConsoleSession:
    return ConsoleSession(user[0] * 16, user, "linux-1", Role.WRITER)


async def _read_until(session: ConsoleSession, needle: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(scaled(10)):
        while needle not in seen:
            seen += b"".join(i.data for i in await session.take() if isinstance(i, Output))
    return seen


async def test_a_stalled_disk_never_stalls_the_console(tmp_path: Path) -> None:
    """The boot log's fsync runs in a worker thread: while it hangs, the guest's output
    still reaches the console and typing still reaches the guest."""
    log = SlowDisk(tmp_path)
    session = _writer()
    try:
        async with _booted(log, session) as hub:
            assert await asyncio.to_thread(log.flushing.wait, scaled(10))
            hub.submit(session, b"root\r")  # the flush is still hanging
            await _read_until(session, b"Password: ")
            assert not log.release.is_set()
            log.release.set()  # before the log closes: its close waits for the flush
    finally:
        log.release.set()


class BrokenDisk(BootLog):
    """A ring that never takes a byte (a full or failing disk)."""

    def _write_at(self, offset: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failing_boot_log_is_told_once_and_the_console_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write of the boot log fails: the console still shows the boot and takes
    typing, and the lab's log says so once, not once per write."""
    caplog.set_level(logging.ERROR)
    session = _writer()
    async with _booted(BrokenDisk(tmp_path), session) as hub:
        hub.submit(session, b"root\r")
        await _read_until(session, b"Password: ")
    told = [r for r in caplog.records if "boot log" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert "No space left" in told[0].getMessage()


async def test_a_writer_taken_over_types_nothing_more(tmp_path: Path) -> None:
    """What a displaced writer typed that the guest had not read yet never reaches the new
    writer's shell."""
    alice, bob = _writer("alice"), _writer("bob")
    async with _booted(BootLog(tmp_path), alice) as hub:
        hub._queue.append(_Typed(alice, b"typed-by-alice\r"))  # still waiting in the queue
        hub._queued_input += 15
        hub.attach(bob)
        assert hub.queued_input == 0
        hub.submit(bob, b"bob\r")
        seen = await _read_until(bob, b"Password: ")
        assert b"typed-by-alice" not in seen
