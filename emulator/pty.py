"""The emulated UART: a PTY pair in the event loop, between the gateway and a personality.

The gateway opens the SLAVE path with pyserial, exactly as it opens a QEMU guest's port;
the guest side is the MASTER fd, watched with ``loop.add_reader``/``add_writer`` (no
polling: an idle guest costs no CPU). This is a thin adapter: it parses nothing, it moves
bytes, applies backpressure and runs the personality's timer.

- Like QEMU, the slave is put in raw mode at once (no echo, no CR/LF translation), and
  this process keeps its own slave fd open for the PTY's whole life, so the master never
  reads a hang-up while no reader is attached (an epoll busy loop otherwise). Closing the
  pair is what the gateway sees as the guest going away (EIO on its reader).
- Output: the personality's bytes are written as the master takes them; while it does
  not (nobody reads the slave), the guest waits, like a UART with flow control. If the
  personality's queue grows past ``HIGH_WATER`` (or a guest with a process behind it
  says it has no ``input_room``) the guest stops reading input too, so the queue stays
  bounded; nothing is ever dropped. ``output_rate`` (bytes/s) paces writes
  like a real line (11520 B/s is 115200 baud 8N1).
- Guest events reach ``on_event`` in order with the bytes: once everything printed
  before them is in the PTY.
- Typed input the guest has not read yet is the master's unread count (``FIONREAD``,
  after a ``poll`` with no timeout that makes the kernel push its flip buffer, which
  ``FIONREAD`` alone lags by up to a millisecond); ``wait_input_taken`` is woken by the
  guest's own reads.
- Three descriptors per guest in all: the master and the slave kept here, and the one
  the gateway opens. A PTY that cannot be made raises ``PtyUnavailable`` naming the
  limit that ran out (the kernel's PTY count, or this process's descriptors).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import struct
import termios
import tty
from collections.abc import Callable

from emulator.guest import GuestEvent, Personality
from gateway.machines.base import limit_message

READ_SIZE = 4096
WRITE_CHUNK = 4096
HIGH_WATER = 64 * 1024  # bytes queued in the personality before it stops reading input
PUMP_BUDGET = 64 * 1024  # bytes written per event-loop turn before yielding to others


class PtyUnavailable(OSError):
    """No PTY can be made; the message names the limit that ran out and what to do."""


class PtyPair:
    """A raw PTY: ``master`` (non-blocking) for the guest, ``path`` of the slave for the gateway.

    Raises PtyUnavailable (the limit that ran out, in the message) when none can be made.
    """

    def __init__(self) -> None:
        try:
            self.master, self._slave = os.openpty()
        except OSError as err:
            raise PtyUnavailable(limit_message(err, "no PTY")) from err
        try:
            tty.setraw(self._slave)
            os.set_blocking(self.master, False)
            self.path = os.ttyname(self._slave)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Uart:
    """Binds a personality to a PTY pair in the running event loop.

    Call ``boot``/``send_break``/``nmi``/``power_button``/``halt`` to act on the guest; each
    one lets the personality answer and keeps the output flowing. ``close`` releases the
    PTY; the object is then dead.
    """

    def __init__(
        self,
        guest: Personality,
        pty: PtyPair,
        *,
        on_event: Callable[[GuestEvent], None],
        output_rate: int | None = None,
        log: logging.Logger,
    ) -> None:
        self.guest = guest
        self.pty = pty
        self._on_event = on_event
        self._rate = output_rate
        self._chunk = (
            WRITE_CHUNK if not output_rate else max(1, min(WRITE_CHUNK, output_rate // 100))
        )
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._fd = pty.master
        self._pending = memoryview(b"")
        self._next_send = 0.0
        self._pump_handle: asyncio.Handle | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._reading = False
        self._waiting_writable = False
        self._closed = False
        self._input_waiters: list[asyncio.Future[None]] = []
        self.bytes_in = 0
        self.bytes_out = 0
        # A guest with a process behind it (emulator.userland) prints on its own and may
        # have no room for more input: it wakes the UART, which then asks it.
        bind = getattr(guest, "bind_port", None)
        if bind is not None:
            bind(self._service)
        self._input_room: Callable[[], bool] = getattr(guest, "input_room", lambda: True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        """True when every byte the guest printed so far is in the PTY."""
        return not self._pending and self.guest.output_buffered() == 0

    def unread_input(self) -> int:
        """Bytes written to the port that the guest has not read yet (0 once closed)."""
        if self._closed:
            return 0
        poller = select.poll()  # poll(2): no descriptor of its own
        poller.register(self._fd, select.POLLIN)
        poller.poll(0)  # pushes the tty's flip buffer, which FIONREAD alone would miss
        raw = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    async def wait_input_taken(self) -> None:
        """Return once the guest has read every byte written so far (or the port closed).
        Woken by the guest's reads; waits as long as the guest does not read."""
        while self.unread_input():
            taken: asyncio.Future[None] = self._loop.create_future()
            self._input_waiters.append(taken)
            try:
                await taken
            finally:
                with contextlib.suppress(ValueError):
                    self._input_waiters.remove(taken)

    def _wake_input_waiters(self) -> None:
        for taken in self._input_waiters:
            if not taken.done():
                taken.set_result(None)
        self._input_waiters.clear()

    # -- acting on the guest ----------------------------------------------------------

    def boot(self) -> None:
        self.guest.boot(self._loop.time())
        self._service()

    def send_break(self) -> None:
        self._read_available()  # what was typed before the break reaches the guest first
        self.guest.receive_break(self._loop.time())
        self._service()

    def nmi(self) -> None:
        self.guest.receive_nmi(self._loop.time())
        self._service()

    def power_button(self) -> None:
        self.guest.power_button(self._loop.time())
        self._service()

    def halt(self) -> None:
        self.guest.halt()
        self._service()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._waiting_writable:
            self._loop.remove_writer(self._fd)
        for handle in (self._pump_handle, self._timer_handle):
            if handle is not None:
                handle.cancel()
        if self._pending:
            self._log.debug("%d bytes of output were never read", len(self._pending))
        self.pty.close()
        self._wake_input_waiters()

    # -- the loop's callbacks -----------------------------------------------------------

    def _service(self) -> None:
        """After the guest was told something: re-arm its timer, move output, gate input."""
        if self._closed:
            return
        self._arm_timer()
        self._pump()

    def _arm_timer(self) -> None:
        when = self.guest.get_timer()
        if when == self._timer_at:
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
        self._timer_at = when
        if when is not None:
            self._timer_handle = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        self._timer_at = None
        self.guest.handle_timer(self._loop.time())
        self._service()

    def _read_available(self) -> None:
        while not self._closed:
            try:
                data = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._log.debug("reading the guest's input: %s", err)
                return
            if not data:
                return
            self.bytes_in += len(data)
            self.guest.receive_data(data, self._loop.time())
            if self._input_waiters:
                self._wake_input_waiters()
            if len(data) < READ_SIZE:
                return

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._log.debug("reading the guest's input: %s", err)
            return
        if data:
            self.bytes_in += len(data)
            self.guest.receive_data(data, self._loop.time())
        if self._input_waiters:
            self._wake_input_waiters()
        self._service()

    def _gate_input(self) -> None:
        want = self.guest.output_buffered() < HIGH_WATER and self._input_room()
        if want and not self._reading:
            self._loop.add_reader(self._fd, self._readable)
        elif self._reading and not want:
            self._loop.remove_reader(self._fd)
        self._reading = want

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._waiting_writable = False
        self._pump()

    def _on_pump(self) -> None:
        self._pump_handle = None
        self._pump()

    def _pump(self) -> None:
        """Write what the guest printed until the PTY is full, the pace says wait, or it is done."""
        if self._waiting_writable or self._pump_handle is not None:
            self._gate_input()
            return
        budget = PUMP_BUDGET
        while not self._closed:
            if not self._pending:
                item = self.guest.pop_output(self._chunk)
                if item is None:
                    break
                if isinstance(item, GuestEvent):
                    self._on_event(item)
                    continue
                self._pending = memoryview(item)
            now = self._loop.time()
            if self._rate and self._next_send > now:
                self._pump_handle = self._loop.call_at(self._next_send, self._on_pump)
                break
            if budget <= 0:
                self._pump_handle = self._loop.call_soon(self._on_pump)
                break
            try:
                sent = os.write(self._fd, self._pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                self._log.warning("the guest's serial port failed: %s", err)
                return
            if sent == 0:
                self._waiting_writable = True
                self._loop.add_writer(self._fd, self._on_writable)
                break
            self._pending = self._pending[sent:]
            self.bytes_out += sent
            budget -= sent
            if self._rate:
                self._next_send = max(self._next_send, now) + sent / self._rate
        if not self._closed:
            self._gate_input()
            self._arm_timer()
