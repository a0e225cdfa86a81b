"""SerialPort: a guest's serial port (a PTY) in the event loop, with no polling.

pyserial opens and configures the port (raw mode, no echo, 115200 8N1); the event loop's
reader callback then takes whatever the guest wrote in one ``os.read`` of up to 64 KiB, and
``write`` hands input over with backpressure: it returns once the kernel has taken every
byte. This is a thin adapter: it moves bytes and reports hang-ups, it parses nothing.

A PTY whose other side closed (QEMU quit, the emulated guest went away) reads EIO; the
port then reports ``on_close`` once and stops reading. Nothing already read is lost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable

import serial

log = logging.getLogger("serial_console_lab.console.port")

READ_SIZE = 65536


class SerialPortError(Exception):
    """The port could not be opened or written; the message says which and why."""


class SerialPort:
    """One open serial port, read continuously into ``on_data``.

    ``on_data(chunk)`` is called in the event loop for every read; ``on_close(reason)`` once,
    when the port hangs up or is closed. Open with ``await SerialPort.open(path, ...)``.
    """

    def __init__(
        self,
        path: str,
        handle: serial.Serial,
        on_data: Callable[[bytes], None],
        on_close: Callable[[str], None] | None,
    ) -> None:
        self.path = path
        self._serial = handle
        self._fd = handle.fileno()
        self._on_data = on_data
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._write_lock = asyncio.Lock()
        self._pending: asyncio.Future[None] | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        self._loop.add_reader(self._fd, self._readable)

    @classmethod
    async def open(
        cls,
        path: str,
        on_data: Callable[[bytes], None],
        on_close: Callable[[str], None] | None = None,
        baudrate: int = 115200,
    ) -> SerialPort:
        """Open ``path`` and start reading. Raises SerialPortError when it cannot."""
        try:
            handle = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError) as err:
            raise SerialPortError(f"cannot open serial port {path}: {err}") from err
        os.set_blocking(handle.fileno(), False)
        return cls(path, handle, on_data, on_close)

    @property
    def closed(self) -> bool:
        return self._closed

    def _readable(self) -> None:
        # A PTY hands over about 4 KiB a read: drain it (up to READ_SIZE) and pass one chunk
        # on, so a fast guest costs one fan-out per 64 KiB, not one per 4 KiB.
        parts: list[bytes] = []
        size = 0
        failure = ""
        while size < READ_SIZE:
            try:
                part = os.read(self._fd, READ_SIZE - size)
            except BlockingIOError:
                break
            except OSError as err:
                # EIO: the other side of the PTY is gone (the guest's process ended).
                eio = err.errno == errno.EIO
                failure = "the guest closed its serial port" if eio else str(err)
                break
            if not part:
                # pyserial leaves VMIN=0: a drained port reads b"" rather than EAGAIN. Only an
                # empty first read, right after the loop said "readable", is a hang-up.
                if not parts:
                    failure = "the guest closed its serial port"
                break
            parts.append(part)
            size += len(part)
        if parts:
            chunk = parts[0] if len(parts) == 1 else b"".join(parts)
            self.bytes_read += size
            self._on_data(chunk)  # what came before a hang-up is delivered first
        if failure and not self._closed:
            self._shutdown(failure)

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the guest, waiting while the PTY is full. Ordered across callers."""
        view = memoryview(data)
        async with self._write_lock:
            while view:
                if self._closed:
                    raise SerialPortError(f"serial port {self.path} is closed")
                try:
                    sent = os.write(self._fd, view)
                except BlockingIOError:
                    await self._writable()
                    continue
                except OSError as err:
                    self._shutdown(str(err))
                    raise SerialPortError(f"cannot write to {self.path}: {err}") from err
                view = view[sent:]
                self.bytes_written += sent

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._pending = ready
        self._loop.add_writer(self._fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            self._pending = None
            if not self._closed:
                self._loop.remove_writer(self._fd)

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._pending is not None:
            # A writer waiting for room would otherwise wait forever on a closed fd.
            self._loop.remove_writer(self._fd)
            if not self._pending.done():
                self._pending.set_exception(
                    SerialPortError(f"serial port {self.path} closed: {reason}")
                )
        try:
            self._serial.close()
        except (serial.SerialException, OSError):
            log.debug("closing %s", self.path, exc_info=True)
        log.info("serial port %s closed: %s", self.path, reason)
        if self._on_close is not None:
            self._on_close(reason)

    def close(self) -> None:
        """Stop reading and close the port; ``on_close`` is told ``closed by the gateway``."""
        self._shutdown("closed by the gateway")
