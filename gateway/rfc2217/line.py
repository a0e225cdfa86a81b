"""The serial line an RFC 2217 client believes it drives: settings kept, never applied.

pyserial's ``serial.rfc2217.PortManager`` (the server side of RFC 2217) reads and sets the
line's settings on a serial object. A guest's console here is a PTY, not a UART: there is
no baud rate to set. ``RecordedLine`` is that object: it checks and keeps what the client
sets (so the client reads back what it set, and a bad value is refused as a real port
would refuse it), reports a line with its modem lines up, and turns a BREAK (the break
condition set, then cleared) into a call of ``on_break``: the door sends the console's
``break`` command through the command policy.
"""

from __future__ import annotations

from collections.abc import Callable

BYTESIZES = (5, 6, 7, 8)
PARITIES = ("N", "E", "O", "M", "S")
STOPBITS = (1, 1.5, 2)


class RecordedLine:
    """Line settings as an RFC 2217 client set them; ``on_break()`` at the end of a BREAK.

    Setters raise ValueError for a value no serial port takes (``PortManager`` then answers
    the client with the setting kept before).
    """

    def __init__(self, on_break: Callable[[], None]) -> None:
        self._on_break = on_break
        self._baudrate = 115200
        self._bytesize = 8
        self._parity = "N"
        self._stopbits: float = 1
        self._break = False
        self.xonxoff = False
        self.rtscts = False
        self.dtr = True
        self.rts = True
        self.breaks = 0  # BREAKs sent on by this line

    # What the client reads: a line that is up (a PTY has no modem lines to drop).
    cts = True
    dsr = True
    cd = True
    ri = False

    @property
    def baudrate(self) -> int:
        return self._baudrate

    @baudrate.setter
    def baudrate(self, value: int) -> None:
        if not isinstance(value, int) or not 0 < value <= 4_000_000:
            raise ValueError(f"not a baud rate: {value!r}")
        self._baudrate = value

    @property
    def bytesize(self) -> int:
        return self._bytesize

    @bytesize.setter
    def bytesize(self, value: int) -> None:
        if value not in BYTESIZES:
            raise ValueError(f"not a data size: {value!r}")
        self._bytesize = value

    @property
    def parity(self) -> str:
        return self._parity

    @parity.setter
    def parity(self, value: str) -> None:
        if value not in PARITIES:
            raise ValueError(f"not a parity: {value!r}")
        self._parity = value

    @property
    def stopbits(self) -> float:
        return self._stopbits

    @stopbits.setter
    def stopbits(self, value: float) -> None:
        if value not in STOPBITS:
            raise ValueError(f"not a number of stop bits: {value!r}")
        self._stopbits = value

    @property
    def break_condition(self) -> bool:
        return self._break

    @break_condition.setter
    def break_condition(self, value: bool) -> None:
        ending = self._break and not value
        self._break = bool(value)
        if ending:
            self.breaks += 1
            self._on_break()

    def reset_input_buffer(self) -> None:
        """Nothing to purge: the gateway keeps no receive buffer of its own for a client."""

    def reset_output_buffer(self) -> None:
        """Nothing to purge: typed bytes go to the console's queue as they arrive."""

    def describe(self) -> str:
        """The settings as one says them: ``115200 8N1``."""
        stop = f"{self._stopbits:g}"
        return f"{self._baudrate} {self._bytesize}{self._parity}{stop}"
