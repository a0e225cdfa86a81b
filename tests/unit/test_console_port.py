"""The serial port adapter on a real PTY: no lost wake-ups, no writer left hanging."""

from __future__ import annotations

import asyncio
import errno
import os
import resource

import pytest

from gateway.console.port import SerialPort, SerialPortError


async def test_a_write_waiting_on_a_full_port_fails_when_the_port_closes() -> None:
    """A guest that stops reading fills the PTY; closing the port ends the waiting write
    with a clear error instead of leaving it (and its caller) hanging forever."""
    master, slave = os.openpty()
    try:
        port = await SerialPort.open(os.ttyname(slave), on_data=lambda chunk: None)
        writer = asyncio.create_task(port.write(b"z" * (1 << 20)))  # far more than a PTY holds
        await asyncio.sleep(0)  # one step: the task writes until the PTY is full, then waits
        assert port.bytes_written > 0
        assert not writer.done()
        port.close()
        with pytest.raises(SerialPortError, match="closed"):
            await asyncio.wait_for(writer, 5)
    finally:
        os.close(master)
        os.close(slave)


async def test_an_open_port_costs_one_descriptor_and_reads_raw_bytes() -> None:
    """One descriptor per open port (no helper pipes), raw: bytes pass both ways as sent."""
    master, slave = os.openpty()
    try:
        got: list[bytes] = []
        arrived = asyncio.Event()

        def on_data(chunk: bytes) -> None:
            got.append(chunk)
            arrived.set()

        before = len(os.listdir("/proc/self/fd"))
        port = await SerialPort.open(os.ttyname(slave), on_data=on_data)
        assert len(os.listdir("/proc/self/fd")) - before == 1
        os.write(master, b"\x03a\r\n\x7f")
        await asyncio.wait_for(arrived.wait(), 5)
        assert b"".join(got) == b"\x03a\r\n\x7f"
        await port.write(b"\r\x04\n")
        assert os.read(master, 16) == b"\r\x04\n"
        port.close()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(master)
        os.close(slave)


async def test_no_descriptor_left_names_the_limit() -> None:
    """Out of descriptors, opening a port says which limit ran out and what to do."""
    master, slave = os.openpty()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        with pytest.raises(SerialPortError) as refused:
            await SerialPort.open(os.ttyname(slave), on_data=lambda chunk: None)
        assert f"no file descriptor left (open-file limit {lowest_free}" in str(refused.value)
        assert "ulimit -n" in str(refused.value)
        assert "/dev/pts/" not in str(refused.value)
        assert isinstance(refused.value.__cause__, OSError)
        assert refused.value.__cause__.errno == errno.EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(master)
        os.close(slave)
