"""The bridge between a libvirt console stream and a PTY of the machine's own.

The console goes through libvirt (``virDomainOpenConsole``), not through the host's PTY, so
a guest on another host is served exactly like a local one. The machine makes a PTY pair and
bridges the stream to its master, event-driven both ways: the stream's readable and
writable callbacks run in libvirt's event thread and hand over to the loop, and an asyncio
reader on the master sends typed input to the stream. The slave is the machine's serial
port; it outlives a domain that powers off (``detach``), so a stop, a start and a restart
keep the same port, and only ``close`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import struct
import termios
import time
import tty
from typing import Any

# virStreamEventType
_READABLE, _WRITABLE, _ERROR, _HANGUP = 1, 2, 4, 8


class ConsoleBridge:
    """A PTY pair of the machine's, whose master is bridged to a libvirt console stream.

    Guest output: the stream's readable callback (libvirt's thread) reads what is there and
    hands it to the loop, which writes it to the master (waiting for room with a writer
    callback). Typed input: an asyncio reader on the master sends to the stream; when the
    stream is full, the reader pauses until the stream's writable callback. Without a stream
    (the domain is off), typed bytes wait in the PTY, as they would for a powered-off guest.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._loop = loop
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # until the hub opens it: no echo, no line editing
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.closed = False
        self._stream: Any = None
        self._pending = b""  # read from the master, not yet taken by the stream
        self.sent = 0  # bytes the stream took, in all
        self._out = bytearray()  # guest output the master had no room for yet
        self.last_output = 0.0  # when the guest last wrote (monotonic)
        self._reading = False
        self._writing = False
        self._poll = select.poll()
        self._poll.register(self.master, select.POLLIN)

    def attach(self, stream: Any) -> None:
        self.detach()
        self._stream = stream
        stream.eventAddCallback(_READABLE | _ERROR | _HANGUP, self._on_stream, None)
        self._resume_reading()

    def detach(self) -> None:
        """Let go of the stream (the domain ended or is ending); the PTY stays. Typed input
        stops going to it; what the guest wrote last (``reboot: Power down``) is still
        read, until the stream's end, when its callback lets it go (``_end``)."""
        stream, self._stream = self._stream, None
        self._pending = b""
        self._pause_reading()
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.eventUpdateCallback(_READABLE | _ERROR | _HANGUP)

    def close(self) -> None:
        if self.closed:
            return
        stream = self._stream
        self.detach()
        if stream is not None:  # the machine is going: no last words to wait for
            self._end(stream)
        self.closed = True
        if self._writing:
            self._loop.remove_writer(self.master)
        os.close(self.master)
        os.close(self._slave)

    def type(self, data: bytes) -> None:
        """Write to the port as a user would type."""
        os.write(self._slave, data)

    def unread(self) -> int:
        """Typed bytes not yet taken by the stream (in the PTY, or read but not sent)."""
        if self.closed:
            return 0
        self._poll.poll(0)  # makes the kernel push its flip buffer, which FIONREAD misses
        raw = fcntl.ioctl(self.master, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0]) + len(self._pending)

    # -- guest output (libvirt's thread, then the loop) -----------------------------------

    def _on_stream(self, stream: Any, events: int, opaque: Any) -> None:
        if events & _WRITABLE:
            self._loop.call_soon_threadsafe(self._send_pending, stream)
        if events & _READABLE:
            chunks = []
            ended = False
            while True:
                try:
                    data = stream.recv(65536)
                except Exception:  # the stream broke: the domain is going
                    ended = True
                    break
                if data == -2:  # nothing more for now
                    break
                if not data:  # the end: the domain is gone
                    ended = True
                    break
                chunks.append(data)
            if chunks:
                self._loop.call_soon_threadsafe(self._deliver, stream, b"".join(chunks))
            if ended:
                self._end(stream)
        if events & (_ERROR | _HANGUP):
            self._end(stream)

    def _end(self, stream: Any) -> None:
        """The stream is over (libvirt's thread): stop its callback and free it."""
        with contextlib.suppress(Exception):
            stream.eventRemoveCallback()
        with contextlib.suppress(Exception):
            stream.abort()
        if stream is self._stream:  # the domain ended under the bridge: typing waits
            self._loop.call_soon_threadsafe(self._lost_stream, stream)

    def _lost_stream(self, stream: Any) -> None:
        if stream is self._stream:
            self._stream = None
            self._pending = b""
            self._pause_reading()

    def _deliver(self, stream: Any, data: bytes) -> None:
        if self.closed:
            return
        self.last_output = time.monotonic()
        self._out += data
        self._flush_out()

    def _flush_out(self) -> None:
        while self._out:
            try:
                sent = os.write(self.master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                break
            del self._out[:sent]
        if self._out and not self._writing:
            self._writing = True
            self._loop.add_writer(self.master, self._writable)
        elif not self._out and self._writing:
            self._writing = False
            self._loop.remove_writer(self.master)

    def _writable(self) -> None:
        self._flush_out()

    # -- typed input (the loop) ------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed and self._stream is not None:
            self._reading = True
            self._loop.add_reader(self.master, self._readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.master)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody has the slave open; our own copy keeps it open
            return
        if data:
            self._pending += data
            self._send_pending(self._stream)

    def _send_pending(self, stream: Any) -> None:
        if stream is None or stream is not self._stream:
            return
        while self._pending:
            try:
                sent = stream.send(self._pending)
            except Exception:  # the stream broke: the domain is going; the bytes are lost
                self._pending = b""
                break
            if sent == -2:  # full: wait for the writable callback, stop reading meanwhile
                self._pause_reading()
                with contextlib.suppress(Exception):
                    stream.eventUpdateCallback(_READABLE | _WRITABLE | _ERROR | _HANGUP)
                return
            self._pending = self._pending[sent:]
            self.sent += sent
        with contextlib.suppress(Exception):
            stream.eventUpdateCallback(_READABLE | _ERROR | _HANGUP)
        self._resume_reading()
