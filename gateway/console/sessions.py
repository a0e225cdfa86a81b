"""Console sessions: one client's bounded view of a console, and who may write.

Azure's rule: one writer per VM. A new writer takes over; the previous one is closed with
Azure's text (``TAKEOVER_TEXT``). Watchers read only and displace nobody.

Each session holds a bounded queue of output (bytes with their absolute offsets) and
events. The hub pushes into it and never waits; a door (websocket, SSH) takes from it at
the client's pace. A client that falls ``limit`` bytes behind is closed with the offset to
resume from, so it loses nothing and never slows the guest or the other clients.

States: ``open`` -> ``taken_over`` | ``closed`` (both final).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from dataclasses import dataclass

from gateway.console.frames import CloseCode

log = logging.getLogger("serial_console_lab.console.sessions")

DEFAULT_LIMIT = 1 << 20
PRELOAD_CHUNK = 64 * 1024  # replay goes out in frames of this size at most
MAX_EVENTS = 256

TAKEOVER_TEXT = (
    "The serial console connection was closed. This can occur if there was an error or "
    "another user connected to the console of this virtual machine. "
    'To reconnect, press "Enter".'
)
BANNER_TEXT = (
    "Connected to the serial port of the VM.\r\nIf no login prompt is displayed, press ENTER."
)


class SessionState(enum.StrEnum):
    OPEN = "open"
    TAKEN_OVER = "taken_over"
    CLOSED = "closed"


class Role(enum.StrEnum):
    WRITER = "writer"
    WATCHER = "watcher"


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a session ends: the close code, a short reason (fits a close frame) and the
    text to show the user."""

    code: CloseCode
    reason: str
    message: str = ""
    resume_offset: int | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """Serial bytes starting at absolute offset ``offset``."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """A gateway event for framed clients: its JSON text."""

    text: str


class ConsoleSession:
    """One client on one console. The hub pushes; the client's door awaits ``take()``.

    ``push_output`` and ``push_event`` never block: past ``limit`` queued bytes (or
    ``MAX_EVENTS`` events) the session closes itself with ``FELL_BEHIND`` and the offset of
    the first byte the client did not get.
    """

    def __init__(
        self, session_id: str, user: str, vm: str, role: Role, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.id = session_id
        self.user = user
        self.vm = vm
        self.role = role
        self.limit = limit
        self.state = SessionState.OPEN
        self.closing: Closing | None = None
        self.next_offset = 0  # offset of the next byte the hub will push
        self.log = log.getChild(f"{vm}.{session_id[:8]}")
        self._items: deque[Output | Event] = deque()
        self._queued_bytes = 0
        self._queued_events = 0
        self._drain_on_close = True
        self._wake = asyncio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    def preload(self, offset: int, data: bytes) -> None:
        """Queue the replay given at attach ahead of live output, in frames of at most
        ``PRELOAD_CHUNK`` bytes. It does not count against ``limit``, which is for what
        arrives live: a resumed client is not cut off again for the backlog it asked for."""
        view = memoryview(data)
        replay = [
            Output(offset + start, bytes(view[start : start + PRELOAD_CHUNK]))
            for start in range(0, len(data), PRELOAD_CHUNK)
        ]
        self._items.extendleft(reversed(replay))
        if replay:
            self._wake.set()

    def push_output(self, offset: int, data: bytes) -> None:
        if not self.is_open:
            return
        if self._queued_bytes + len(data) > self.limit:
            self._fall_behind(offset, f"{self._queued_bytes + len(data)} bytes were waiting")
            return
        self._items.append(Output(offset, data))
        self._queued_bytes += len(data)
        self.next_offset = offset + len(data)
        self._wake.set()

    def push_event(self, text: str) -> None:
        if not self.is_open:
            return
        if self._queued_events >= MAX_EVENTS:
            self._fall_behind(self.next_offset, f"{self._queued_events} events were waiting")
            return
        self._items.append(Event(text))
        self._queued_events += 1
        self._wake.set()

    def _fall_behind(self, next_offset: int, waiting: str) -> None:
        """Close, dropping the queue, with the offset of the first byte not delivered."""
        first = next((i.offset for i in self._items if isinstance(i, Output)), next_offset)
        self.close(
            Closing(
                CloseCode.FELL_BEHIND,
                f"client fell behind; resume from offset {first}",
                f"The console closed because this client read too slowly: {waiting}. "
                f"Reconnect and resume from byte offset {first}; nothing is lost.",
                resume_offset=first,
            ),
            drain=False,
        )

    def close(self, closing: Closing, *, drain: bool = True) -> None:
        """End the session. With ``drain`` the client still gets what is queued first."""
        if not self.is_open:
            return
        self.closing = closing
        self.state = (
            SessionState.TAKEN_OVER if closing.code is CloseCode.TAKEN_OVER else SessionState.CLOSED
        )
        self._drain_on_close = drain
        if not drain:
            self._items.clear()
            self._queued_bytes = self._queued_events = 0
        self.log.info("%s session of %s closing: %s", self.role, self.user, closing.reason)
        self._wake.set()

    async def take(self) -> list[Output | Event]:
        """Everything queued, waiting while nothing is. An empty list: the session is over
        (``closing`` says why) and nothing is left to deliver."""
        while not self._items:
            if self.closing is not None:
                return []
            self._wake.clear()
            await self._wake.wait()
        items = list(self._items)
        self._items.clear()
        self._queued_bytes = self._queued_events = 0
        return items

    def prepend_event(self, text: str) -> None:
        """Queue an event ahead of everything queued (it introduces a replay)."""
        self._items.appendleft(Event(text))
        self._wake.set()
