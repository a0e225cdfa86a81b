"""A test's view of a serial console: everything read so far, and waits on what comes next.

``Transcript`` is the one ``expect`` loop of the project's async tests: bytes come in
(``feed``, or ``_more`` for a transcript that reads its own source: a websocket, an RFC
2217 port) and ``expect`` waits, with a bound, for a pattern after the last match: no
sleeps, no polling. ``PortConsole`` reads a guest's serial port through the gateway's
``SerialPort`` (the same non-blocking adapter the gateway uses). The patterns for kernel
lines are the plugin's (``gateway.testing.patterns``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from gateway.console.port import SerialPort
from gateway.testing.patterns import AT_END, KERNEL_LINES, echoed, without_kernel_lines
from gateway.testing.timeouts import scaled

__all__ = ["AT_END", "KERNEL_LINES", "ExpectTimeout", "PortConsole", "Transcript", "echoed"]


class ExpectTimeout(AssertionError):
    """The pattern did not appear in time; the message shows what the console did show."""


class Transcript:
    """Bytes from a console, with ``expect`` moving a cursor forward through them."""

    default_timeout = 30.0  # seconds (scaled) that ``expect`` waits unless told

    def __init__(self) -> None:
        self.data = bytearray()
        self.cursor = 0
        self.closed_reason: str | None = None
        self._changed = asyncio.Event()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        self._changed.set()

    def ended(self, reason: str) -> None:
        """The source closed, for ``reason``: waits fail at once, showing it."""
        self.closed_reason = reason
        self._changed.set()

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def since(self, offset: int) -> str:
        return self.data[offset:].decode(errors="replace")

    async def _more(self) -> None:
        """Wait until more bytes came or the source closed. A fed transcript waits for
        ``feed``/``ended``; one that reads its own source reads from it here."""
        self._changed.clear()
        await self._changed.wait()

    async def expect(self, pattern: str | bytes, timeout: float | None = None) -> re.Match[bytes]:
        """Wait for ``pattern`` (a regex) after the cursor; move the cursor past the match.

        Raises ExpectTimeout (an AssertionError showing the console's last output) when it
        does not come within ``timeout`` seconds (scaled; ``default_timeout`` when None) or
        the source closes first."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        timeout = self.default_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    match = regex.search(self.data, self.cursor)
                    if match:
                        self.cursor = match.end()
                        return match
                    if self.closed_reason is not None:
                        raise ExpectTimeout(
                            f"console closed ({self.closed_reason}) before {regex.pattern!r}; "
                            f"last output: {self._tail()!r}"
                        )
                    await self._more()
        except TimeoutError:
            raise ExpectTimeout(
                f"{regex.pattern!r} did not appear within {scaled(timeout):.0f} s; "
                f"last output: {self._tail()!r}"
            ) from None

    async def wait_closed(self, timeout: float = 10.0) -> str:
        """Wait until the console's port closes; the reason it gave."""
        async with asyncio.timeout(scaled(timeout)):
            while self.closed_reason is None:
                await self._more()
        return self.closed_reason

    def _tail(self) -> str:
        return self.since(max(self.cursor, len(self.data) - 600))


class PortConsole(Transcript):
    """A transcript fed by a guest's serial port; ``send`` types into it."""

    port: SerialPort

    @classmethod
    async def open(cls, path: str, observe: Callable[[bytes], None] | None = None) -> PortConsole:
        """The console of the port at ``path``; ``observe`` is handed every byte read, as
        the lab's console hub hands them to the machine (which keeps a boot to save)."""
        console = cls()

        def feed(data: bytes) -> None:
            console.feed(data)
            if observe is not None:
                observe(data)

        console.port = await SerialPort.open(path, on_data=feed, on_close=console.ended)
        return console

    async def send(self, text: str | bytes) -> None:
        await self.port.write(text.encode() if isinstance(text, str) else text)

    async def login(self, password: str, user: str = "root") -> None:
        """From a ``login:`` prompt (press Enter for a fresh one) to a shell prompt."""
        await self.send("\r")
        await self.expect(r"login: " + AT_END)
        await self.send(f"{user}\r")
        await self.expect(r"Password: ")  # not the line's end: kernel lines may follow it
        await self.send(f"{password}\r")
        await self.expect(r"# ")

    async def run(self, command: str, timeout: float = 30.0) -> str:
        """Type ``command`` at the shell prompt; its output, once the next prompt is back.

        The end marker is printed by ``printf`` from two halves, so the shell's echo of the
        command line never matches it; waiting for the next prompt keeps the next command from
        being typed before the shell is ready to edit a line.
        """
        token = f"{abs(hash(command)) % 10**6}"
        start = len(self.data)
        await self.send(f"{command}; printf '%s_%s\\n' __done {token}\r")
        await self.expect(f"__done_{token}\r*\n", timeout)
        await self.expect(r"# ", timeout)
        # The kernel prints to the same console at any moment, even inside the echo of the
        # typed line: read around its lines.
        text = without_kernel_lines(bytes(self.data[start:]))
        echo = text.index(f"__done {token}") + len(f"__done {token}")
        return text[echo:].lstrip("\r\n").split(f"__done_{token}")[0]

    def close_port(self) -> None:
        self.port.close()
