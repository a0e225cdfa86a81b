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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.console import texts
from gateway.console.frames import CloseCode

if TYPE_CHECKING:
    from gateway.console.bootlog import LogRead
    from gateway.console.recording import Recording

log = logging.getLogger("serial_console_lab.console.sessions")

DEFAULT_LIMIT = 1 << 20
PRELOAD_CHUNK = 64 * 1024  # replay goes out in frames of this size at most
MAX_EVENTS = 256

TAKEOVER_TEXT = texts.TAKEOVER
BANNER_TEXT = texts.BANNER


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


@dataclass(frozen=True, slots=True)
class Notice:
    """A message for the user about ``command`` (``input`` for typed bytes): framed clients
    get a ``result`` event, raw ones the text on a line of its own."""

    command: str
    text: str
    ok: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``[start, end)`` that are gone from the boot log (rotated out, or lost in a
    crash): the replay goes on from ``end``."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Power:
    """The VM's power state changed (``event`` ``state``), it was reset, or it panicked."""

    state: str
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class TakenOver:
    """Another user (``by``) took this console over; the close follows."""

    by: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resume from ``requested``: the bytes from ``start`` follow (``rotated``: some
    before it were gone)."""

    requested: int
    start: int
    rotated: bool


@dataclass(frozen=True, slots=True)
class IdleWarning:
    """The idle timeout closes this console in ``seconds`` unless the client types."""

    seconds: int


@dataclass(frozen=True, slots=True)
class Shown:
    """Text a door shows its own client as it is (its escape menu's prompts, and the guest
    output the menu held behind a prompt): it goes out in turn with everything else, by
    the door's one writer. Not recorded: the held output was recorded as it came, and a
    prompt is the door's, not the console's."""

    text: str


Happening = Event | Notice | IdleWarning | Power | TakenOver | Resumed | Shown  # not bytes
Item = Output | Gap | Happening
ReadLog = Callable[[int, int], "LogRead"]


class ConsoleSession:
    """One client on one console. The hub pushes; the client's door awaits ``take()``.

    ``push_output``, ``push_event`` and ``push_notice`` never block: past ``limit`` queued
    bytes (or ``MAX_EVENTS`` events) the session closes itself with ``FELL_BEHIND`` and the
    offset of the first byte the client did not get.

    The replay given at attach (``replay``) is not queued: ``take()`` reads it from the
    boot log a page (``PRELOAD_CHUNK``) at a time as the client takes it, ahead of live
    output, so a resume from far back costs one page of memory, not the whole backlog.
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
        self._head: deque[Item] = deque()  # ahead of the replay (a resume's introduction)
        self._items: deque[Item] = deque()
        self._queued_bytes = 0
        self._queued_events = 0
        self._read_log: ReadLog | None = None
        self._replay_next = 0
        self._replay_end = 0
        self._wake = asyncio.Event()
        self.recording: Recording | None = None  # what the client is given is recorded here

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    @property
    def replay_pending(self) -> int:
        """Bytes of the replay not yet taken."""
        return self._replay_end - self._replay_next if self._read_log else 0

    def replay(self, read_log: ReadLog, start: int, end: int) -> None:
        """Deliver the bytes ``[start, end)`` of the boot log first, read a page at a time
        with ``read_log(start, max_bytes)``. They do not count against ``limit``, which is
        for what arrives live: a resumed client is not cut off for the backlog it asked for."""
        self._read_log = read_log
        self._replay_next, self._replay_end = start, end
        if end > start:
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
        self._push_other(Event(text))

    def push_notice(self, command: str, text: str, *, ok: bool = False) -> None:
        """A message for this session's user about ``command`` (``input``: typed bytes)."""
        self._push_other(Notice(command, text, ok))

    def push_idle_warning(self, seconds: int) -> None:
        self._push_other(IdleWarning(seconds))

    def push_item(self, item: Happening) -> None:
        """Queue what happened beside the bytes (a power change, a command's result...);
        each door shows it its own way."""
        self._push_other(item)

    def _push_other(self, item: Happening) -> None:
        if not self.is_open:
            return
        if self._queued_events >= MAX_EVENTS:
            self._fall_behind(self.next_offset, f"{self._queued_events} events were waiting")
            return
        self._items.append(item)
        self._queued_events += 1
        self._wake.set()

    def _fall_behind(self, next_offset: int, waiting: str) -> None:
        """Close, dropping the queue, with the offset of the first byte not delivered."""
        if self.replay_pending:
            first = self._replay_next
        else:
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
        if not drain:
            self._head.clear()
            self._items.clear()
            self._read_log = None
            self._queued_bytes = self._queued_events = 0
        self.log.info("%s session of %s closing: %s", self.role, self.user, closing.reason)
        self._wake.set()

    async def take(self) -> list[Item]:
        """What is queued, waiting while nothing is: first a resume's introduction, then
        the replay a page at a time, then live output and events. An empty list: the
        session is over (``closing`` says why) and nothing is left to deliver. What is
        taken goes to the session's recording, if any, as the client is given it."""
        items = await self._take()
        if items and self.recording is not None:
            self.recording.took(items)
        return items

    async def _take(self) -> list[Item]:
        while not (self._head or self.replay_pending or self._items):
            if self.closing is not None:
                return []
            self._wake.clear()
            await self._wake.wait()
        if self._head:
            items = list(self._head)
            self._head.clear()
            return items
        if self.replay_pending:
            return self._replay_page()
        items = list(self._items)
        self._items.clear()
        self._queued_bytes = self._queued_events = 0
        return items

    def _replay_page(self) -> list[Item]:
        assert self._read_log is not None
        want = min(PRELOAD_CHUNK, self._replay_end - self._replay_next)
        page = self._read_log(self._replay_next, want)
        items: list[Item] = []
        if not page.contents or page.start >= self._replay_end:
            # The rest is gone (rotated out, lost in a crash, or unreadable): say so, and
            # never label live bytes with offsets the replay was meant to cover.
            items.append(Gap(self._replay_next, self._replay_end))
            self._read_log = None
            return items
        if page.start > self._replay_next:  # rotated out while replayed, or lost in a crash
            items.append(Gap(self._replay_next, page.start))
        data = page.contents[: self._replay_end - page.start]
        items.append(Output(page.start, data))
        self._replay_next = page.start + len(data)
        if self._replay_next >= self._replay_end:
            self._read_log = None
        return items

    def prepend(self, item: Happening) -> None:
        """Queue ``item`` ahead of everything queued (it introduces a replay)."""
        self._head.append(item)
        self._wake.set()
