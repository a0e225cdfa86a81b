"""What every personality shares: the sans-I/O contract, guest events, ordered output, line editing.

A personality is the guest's side of the serial port with no I/O at all, in the manner of
the websockets library's protocol objects: the machine feeds it bytes (``receive_data``),
line conditions (``receive_break``), interrupts (``receive_nmi``), the ACPI power button
(``power_button``) and timer expiries (``handle_timer``), each with the current time, and
takes back, in order, the bytes to write to the UART and the guest events
(``pop_output``). Tests drive a personality with bytes and a fake clock alone.

Output is one ordered stream of bytes and ``GuestEvent`` markers: an event takes effect only
once every byte queued before it has reached the port (a guest prints its panic, then
panics). Long outputs (``seq 1000000``) are produced lazily, line by line, as the port
takes them, so the queue stays small and Ctrl+C can still interrupt them.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol


class GuestEvent(enum.StrEnum):
    """What a guest did to its own machine; the machine turns these into power states."""

    REBOOTED = "rebooted"  # the guest restarted itself (reboot, SysRq b, SAC restart)
    POWERED_OFF = "powered_off"  # the guest turned itself off (poweroff, ACPI, SysRq o)
    PANICKED = "panicked"  # the guest crashed (kernel panic, bugcheck) and stays crashed


OutputItem = bytes | GuestEvent


class Personality(Protocol):
    """The sans-I/O guest behind an emulated serial port.

    ``now`` is a monotonic time in seconds (the event loop's clock). After every call,
    the caller drains ``pop_output`` and re-arms its timer from ``get_timer``.
    """

    os_type: str

    def boot(self, now: float) -> None:
        """Power on (or hard reset): forget everything and start booting from the first byte."""

    def halt(self) -> None:
        """Stop the CPU at once (forced power-off): no more output, input is ignored."""

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes typed at the console."""

    def receive_break(self, now: float) -> None:
        """A serial BREAK condition on the line."""

    def receive_nmi(self, now: float) -> None:
        """A non-maskable interrupt."""

    def power_button(self, now: float) -> None:
        """An ACPI power-button press: a running guest shuts down, others ignore it."""

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or None."""

    def handle_timer(self, now: float) -> None:
        """The time returned by ``get_timer`` has come."""

    def pop_output(self, limit: int) -> OutputItem | None:
        """The next output item: at most ``limit`` bytes, or an event; None when idle."""

    def output_buffered(self) -> int:
        """Bytes queued and not yet popped, not counting output still to be produced lazily."""


class OutputQueue:
    """An ordered stream of bytes and events, with an optional lazy producer at its tail.

    ``producer`` is an iterator of byte chunks pulled only when the queue runs dry; when it
    ends, ``on_produced`` (if set) is called so the guest can print its next prompt.
    """

    def __init__(self) -> None:
        self._items: deque[OutputItem] = deque()
        self._size = 0
        self._producer: Iterator[bytes] | None = None
        self._on_produced: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._items and isinstance(self._items[-1], bytes):
            self._items[-1] += data
        else:
            self._items.append(data)

    def emit(self, event: GuestEvent) -> None:
        self._items.append(event)

    def clear(self) -> None:
        self._items.clear()
        self._size = 0
        self._producer = None
        self._on_produced = None

    @property
    def producing(self) -> bool:
        return self._producer is not None

    def produce(self, producer: Iterator[bytes], on_done: Callable[[], None]) -> None:
        """Stream ``producer``'s chunks after what is queued, then call ``on_done``."""
        self._producer = producer
        self._on_produced = on_done

    def interrupt(self) -> None:
        """Stop the lazy producer (Ctrl+C) without calling its ``on_done``."""
        self._producer = None
        self._on_produced = None

    def pop(self, limit: int) -> OutputItem | None:
        while not self._items and self._producer is not None:
            chunk = next(self._producer, None)
            if chunk is None:
                done = self._on_produced
                self._producer = None
                self._on_produced = None
                if done is not None:
                    done()
            else:
                self.write(chunk)
        if not self._items:
            return None
        head = self._items[0]
        if isinstance(head, GuestEvent):
            return self._items.popleft()
        if len(head) <= limit:
            self._size -= len(head)
            return self._items.popleft()
        self._items[0] = head[limit:]
        self._size -= limit
        return head[:limit]

    def __len__(self) -> int:
        """Bytes queued (events count as nothing), not counting what is still to be produced."""
        return self._size


class Key(enum.Enum):
    """Keys the line editor reports beside plain lines."""

    INTERRUPT = "interrupt"  # Ctrl+C
    EOF = "eof"  # Ctrl+D on an empty line


class LineEditor:
    """A terminal's cooked mode: echo, backspace, Ctrl+C/Ctrl+D/Ctrl+U, CR or LF as Enter.

    ``feed(byte)`` returns ``(echo, result)``: the bytes to echo and either a completed
    line (str), a ``Key``, or None. CR LF typed together count as one Enter. Escape
    sequences (arrow keys) are swallowed. With ``echo`` off (passwords) nothing is echoed
    but Enter still answers CRLF.
    """

    def __init__(self, max_line: int = 4096) -> None:
        self.echo = True
        self._buffer = bytearray()
        self._max_line = max_line
        self._after_cr = False
        self._escape = 0  # 0: none, 1: after ESC, 2: inside CSI

    def reset(self) -> None:
        self._buffer.clear()
        self._escape = 0

    @property
    def pending(self) -> str:
        return self._buffer.decode("utf-8", "replace")

    def feed(self, byte: int) -> tuple[bytes, str | Key | None]:
        after_cr, self._after_cr = self._after_cr, byte == 0x0D
        if self._escape == 1:
            self._escape = 2 if byte in (0x5B, 0x4F) else 0
            return b"", None
        if self._escape == 2:
            if 0x40 <= byte <= 0x7E:
                self._escape = 0
            return b"", None
        if byte == 0x1B:
            self._escape = 1
            return b"", None
        if byte == 0x0A and after_cr:
            return b"", None
        if byte in (0x0D, 0x0A):
            line = self._buffer.decode("utf-8", "replace")
            self._buffer.clear()
            return b"\r\n", line
        if byte == 0x03:
            self._buffer.clear()
            return b"^C\r\n", Key.INTERRUPT
        if byte == 0x04:
            return (b"", Key.EOF) if not self._buffer else (b"", None)
        if byte in (0x7F, 0x08):
            if not self._buffer:
                return b"", None
            del self._buffer[-1]
            return (b"\b \b" if self.echo else b""), None
        if byte == 0x15:  # Ctrl+U: kill the line
            erase = b"\b \b" * len(self._buffer) if self.echo else b""
            self._buffer.clear()
            return erase, None
        if byte < 0x20 and byte != 0x09:
            return b"", None
        if len(self._buffer) >= self._max_line:
            return b"\x07", None
        self._buffer.append(byte)
        return (bytes([byte]) if self.echo else b""), None


def crlf(text: str) -> bytes:
    """``text`` with every line ending as a serial console sends it (CR LF)."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
