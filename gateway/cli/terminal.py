"""The local terminal in raw mode for ``serial-console connect``, always given back.

``RawTerminal(fd)`` is a context manager. Entering puts ``fd`` (stdin) in raw mode when it
is a terminal: every key, Ctrl+C and Ctrl+] included, reaches the program as a byte, and
nothing is echoed or translated, so the guest's own echo and line ends show as they are.
Leaving restores the saved settings, however the block ends (return, exception,
cancellation).

Signals that end the program without unwinding the stack politely (SIGTERM, SIGHUP) get a
handler while the terminal is raw: it restores the terminal first, then raises
``TerminalSignal`` so the program unwinds and closes its connection. The previous
handlers are put back on leaving. ``restore()`` is idempotent and safe in any state.

When ``fd`` is not a terminal (a pipe, a file, a test), nothing is changed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class TerminalSignal(SystemExit):
    """SIGTERM or SIGHUP arrived while the terminal was raw (the terminal is restored).

    A ``SystemExit`` so an uncaught one ends the program with status 128 + signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class RawTerminal:
    """``fd`` in raw mode for the ``with`` block (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.is_tty = os.isatty(fd)
        self._saved: list[Any] | None = None
        self._handlers: dict[int, Any] = {}

    @property
    def raw(self) -> bool:
        """True while the terminal is in raw mode."""
        return self._saved is not None

    def __enter__(self) -> RawTerminal:
        if not self.is_tty:
            return self
        self._saved = termios.tcgetattr(self.fd)
        try:
            for signum in SIGNALS:
                self._handlers[signum] = signal.signal(signum, self._on_signal)
            tty.setraw(self.fd, termios.TCSANOW)
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.restore()
        raise TerminalSignal(signum)

    def restore(self) -> None:
        """Give the terminal its settings back and the signals their handlers. Idempotent."""
        saved, self._saved = self._saved, None
        if saved is not None:
            # TCSADRAIN: output already written is shown before the settings change.
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        handlers, self._handlers = self._handlers, {}
        for signum, handler in handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
