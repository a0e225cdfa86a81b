"""SerialPort: a guest's serial port (a PTY) in the event loop, with no polling.

The port is opened with ``os.open`` and set up with ``termios`` as pyserial would (raw
mode, no echo, 115200 8N1, no flow control, non-blocking): one descriptor per port.
pyserial's ``Serial`` would add two pipes (four descriptors) to abort its blocking reads
and writes, which this adapter never makes: the event loop does the waiting. At 5,000
guests in one process that is the difference between fitting in the open-file limit and
not. pyserial stays the tool for what it is good at (its URL handlers, ``rfc2217://``,
other platforms); a local PTY read by the loop needs none of it.

The event loop's reader callback takes whatever the guest wrote in one ``os.read`` of up
to 64 KiB, and ``write`` hands input over with backpressure: it returns once the kernel has
taken every byte. This is a thin adapter: it moves bytes and reports hang-ups, it parses
nothing.

A PTY whose other side closed (QEMU quit, the emulated guest went away) reads EIO; the
port then reports ``on_close`` once and stops reading. Nothing already read is lost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import termios
import tty
from collections.abc import Callable

from gateway.console.errors import ConsoleError
from gateway.machines.base import limit_message

log = logging.getLogger("serial_console_lab.console.port")

READ_SIZE = 65536


class SerialPortError(ConsoleError):
    """The port could not be opened or written; the message says which and why (and,
    when descriptors ran out, the limit and what to do)."""


class SerialPort:
    """One open serial port, read continuously into ``on_data``.

    ``on_data(chunk)`` is called in the event loop for every read; ``on_close(reason)`` once,
    when the port hangs up or is closed. Open with ``await SerialPort.open(path, ...)``.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        on_data: Callable[[bytes], None],
        on_close: Callable[[str], None] | None,
    ) -> None:
        self.path = path
        self._fd = fd
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
        speed = getattr(termios, f"B{baudrate}", None)
        if speed is None:
            raise SerialPortError(f"cannot open serial port {path}: no such speed {baudrate}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            # Out of descriptors, every port fails alike: the limit is the news, not the path.
            out = err.errno in (errno.EMFILE, errno.ENFILE)
            what = "cannot open a serial port" if out else f"cannot open serial port {path}"
            raise SerialPortError(limit_message(err, what)) from err
        try:
            _configure(fd, speed)
        except (OSError, termios.error) as err:
            os.close(fd)
            raise SerialPortError(f"cannot set up serial port {path}: {err}") from err
        return cls(path, fd, on_data, on_close)

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
                # VMIN=0: a drained port reads b"" rather than EAGAIN. Only an empty first
                # read, right after the loop said "readable", is a hang-up.
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

    def write_now(self, data: bytes) -> int:
        """Send what the PTY takes of ``data`` at once, without waiting: the number of bytes
        sent (0 while another write waits for room, to keep the order). Raises
        SerialPortError when the port is closed or fails. The caller writes the rest."""
        if self._write_lock.locked():
            return 0
        if self._closed:
            raise SerialPortError(f"serial port {self.path} is closed")
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as err:
            self._shutdown(str(err))
            raise SerialPortError(f"cannot write to {self.path}: {err}") from err
        self.bytes_written += sent
        return sent

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._pending = ready
        self._loop.add_writer(self._fd, _resolve, ready)
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
            os.close(self._fd)
        except OSError:
            log.debug("closing %s", self.path, exc_info=True)
        log.info("serial port %s closed: %s", self.path, reason)
        if self._on_close is not None:
            self._on_close(reason)

    def close(self) -> None:
        """Stop reading and close the port; ``on_close`` is told ``closed by the gateway``."""
        self._shutdown("closed by the gateway")


def _configure(fd: int, speed: int) -> None:
    """Raw 8N1 at ``speed``, no flow control, reads that never block: pyserial's settings."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(  # iflag: no CR/NL mapping, no flow control, breaks and parity untouched
        termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IGNBRK | termios.PARMRK
        | termios.IXON | termios.IXOFF | termios.IXANY | termios.INPCK | termios.ISTRIP
    )  # fmt: skip
    attrs[1] &= ~(termios.OPOST | termios.ONLCR | termios.OCRNL)  # oflag
    attrs[2] &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS)  # cflag
    attrs[2] |= termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] &= ~(  # lflag: no echo, no line editing, no signals
        termios.ICANON | termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL
        | termios.ISIG | termios.IEXTEN | termios.ECHOCTL | termios.ECHOKE
    )  # fmt: skip
    attrs[4] = attrs[5] = speed  # ispeed, ospeed
    attrs[6][termios.VMIN] = 0
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
