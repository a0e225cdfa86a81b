"""The serial port adapter on a real PTY: no lost wake-ups, no writer left hanging."""

from __future__ import annotations

import asyncio
import os

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
