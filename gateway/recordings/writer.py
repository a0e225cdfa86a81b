"""The thread that writes every recording, so the event loop never waits on a disk.

The loop posts entries (``post``: a length check and a ``deque.append``, no lock, no
wake-up); the thread takes them every ``interval`` seconds, renders them
(``gateway.recordings.cast``), writes each session's file, flushes what it wrote, and
once a second fsyncs the files that grew and updates their size in the index. A process
that dies loses at most the entries of the last ``interval`` (0.2 s); a machine that
dies, at most the last second.

Bounds: at most ``MAX_PENDING`` entries, ``MAX_PENDING_BYTES`` of output, wait (past that
they are dropped and counted: a disk that cannot keep up loses recording, never console
time or the lab's memory); one session's file stops at ``session_bytes`` with a line
saying so, and its recording stops posting output from then on (``full``); past
``total_bytes`` for all recordings, the oldest finished ones are removed first (a running
session is never removed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gateway.access.errors import StoreError
from gateway.recordings import cast
from gateway.recordings.index import RecordingIndex, RecordingRow
from gateway.recordings.settings import RecordingSettings

log = logging.getLogger("serial_console_lab.recordings")

INTERVAL = 0.2  # seconds between two takes of the posted entries
SYNC_EVERY = 1.0  # seconds between two fsyncs of a growing file
MAX_PENDING = 100_000  # entries waiting for the thread; past that, dropped and counted
MAX_PENDING_BYTES = 64 << 20  # output bytes in those entries
YIELD_EVERY = 0.0002  # seconds of work between two offers of the GIL to the event loop

START, ITEMS, TYPED, MARK, MESSAGE, END = "start", "items", "typed", "mark", "message", "end"
Entry = tuple[str, float, str, Any]  # session id, monotonic time, kind, payload


@dataclass(eq=False, slots=True)
class _Open:
    row: RecordingRow
    file: BinaryIO
    owner: Any  # the SessionRecording: told when its file is full
    t0: float
    size: int
    renderer: cast.Renderer = field(default_factory=cast.Renderer)
    last: float = 0.0
    truncated: bool = False
    unsynced: bool = False
    grown: bool = False


class RecordingWriter:
    """Writes the recordings of ``folder`` (see the module docstring). ``start()`` the
    thread, ``post()`` from the loop, ``close()`` at the end (it writes what is pending,
    ends the recordings still open and joins the thread)."""

    def __init__(
        self,
        folder: Path,
        index: RecordingIndex,
        settings: RecordingSettings,
        *,
        interval: float = INTERVAL,
        sync_every: float = SYNC_EVERY,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.index = index
        self.settings = settings
        self.interval = interval
        self.sync_every = sync_every
        self.clock = clock
        self.wall = wall
        self.dropped = 0  # entries lost because the thread fell MAX_PENDING behind
        # Output bytes posted (by the loop) and taken (by the thread): each counter has
        # one writer, so their difference is what waits, without a lock.
        self.posted_bytes = 0
        self.taken_bytes = 0
        self._pending: deque[tuple[str, float, str, Any, int]] = deque()  # Entry + its size
        self._open: dict[str, _Open] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._told_drop = 0

    # -- the loop's side --------------------------------------------------------------------

    def post(self, entry: Entry, size: int = 0) -> None:
        """Queue ``entry`` (carrying ``size`` bytes of output) for the thread; never
        blocks, never raises."""
        if (
            len(self._pending) >= MAX_PENDING
            or self.posted_bytes - self.taken_bytes + size > MAX_PENDING_BYTES
        ):
            self.dropped += 1
            return
        self.posted_bytes += size
        sid, t, kind, payload = entry
        self._pending.append((sid, t, kind, payload, size))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recordings", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, end what is open, stop the thread. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def drain(self) -> None:
        """Write what is pending now, in the caller's thread (tests, and ``close``)."""
        touched: set[_Open] = set()
        worked = time.perf_counter()
        while self._pending:
            sid, t, kind, payload, size = self._pending.popleft()
            self.taken_bytes += size
            try:
                opened = self._handle(sid, t, kind, payload)
            except Exception:  # one bad entry must not stop every recording
                log.exception("recording %s: %s entry not written", sid[:8], kind)
                continue
            if opened is not None:
                touched.add(opened)
            if time.perf_counter() - worked > YIELD_EVERY:
                # Let the event loop's thread have the GIL: it waits for it at most this
                # long, not the interpreter's 5 ms switch interval (a keystroke's p99).
                os.sched_yield()  # releases the GIL; time.sleep(0) costs ~100 us here
                worked = time.perf_counter()
        for opened in touched:
            if not opened.file.closed:
                self._flush(opened)
        if self.dropped > self._told_drop:
            log.warning("recordings: %d events were dropped: the disk did not keep up",
                        self.dropped - self._told_drop)  # fmt: skip
            self._told_drop = self.dropped

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        last_sync = self.clock()
        self._keep_total()
        while True:
            stopping = self._stop.wait(self.interval)
            self.drain()
            now = self.clock()
            if stopping or now - last_sync >= self.sync_every:
                self._sync()
                last_sync = now
            if stopping:
                break
        for sid in list(self._open):
            self._end(sid, self.clock(), ("the lab stopped", ""))

    def _handle(self, sid: str, t: float, kind: str, payload: Any) -> _Open | None:
        if kind == START:
            return self._start(sid, t, payload)
        opened = self._open.get(sid)
        if opened is None:
            return None  # its start was dropped, or it ended already
        if kind == ITEMS:
            self._write(opened, t, opened.renderer.items(payload))
        elif kind == TYPED:
            self._write(opened, t, [(cast.INPUT, payload.decode("utf-8", errors="replace"))])
        elif kind == MARK:
            self._write(opened, t, [(cast.MARKER, payload)])
        elif kind == MESSAGE:
            self._write(opened, t, opened.renderer.message(payload))
        elif kind == END:
            self._end(sid, t, payload)
        return opened

    def _start(self, sid: str, t: float, payload: Any) -> _Open | None:
        row, title, lab, owner = payload
        path = self.folder / row.path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            file = os.fdopen(fd, "ab")
            head = cast.header(started=row.started, title=title, lab=lab,
                               input_recorded=row.input).encode()  # fmt: skip
            file.write(head)
        except OSError as err:
            log.error("recording of session %s not kept: %s", sid[:8], err)
            return None
        opened = _Open(row, file, owner, t, len(head), grown=True, unsynced=True)
        self._open[sid] = opened
        try:
            self.index.add(row)
        except StoreError as err:
            log.error("recording of session %s is not in the index: %s", sid[:8], err)
        return opened

    def _write(self, opened: _Open, t: float, events: list[tuple[str, str]]) -> None:
        if opened.truncated or opened.file.closed or not events:
            return
        seconds = max(t - opened.t0, opened.last)
        opened.last = seconds
        limit = self.settings.session_bytes
        lines = [cast.event(seconds, code, data).encode() for code, data in events]
        size = sum(len(line) for line in lines)
        if opened.size + size > limit:
            opened.truncated = True
            opened.owner.full = True  # its session stops posting output
            text = (f"[the recording stops here: it reached the lab's limit of {limit} bytes "
                    "for one session; the console goes on]")  # fmt: skip
            lines = [
                cast.event(seconds, cast.MARKER, "recording stopped: size limit").encode(),
                cast.event(seconds, cast.OUTPUT, cast.gateway_text(text)).encode(),
            ]
            size = sum(len(line) for line in lines)
        try:
            opened.file.write(b"".join(lines))
        except OSError as err:
            log.error("recording of session %s stopped: %s", opened.row.id[:8], err)
            opened.truncated = True
            return
        opened.size += size
        opened.grown = opened.unsynced = True

    def _flush(self, opened: _Open) -> None:
        try:
            opened.file.flush()
        except OSError as err:
            log.error("recording of session %s: %s", opened.row.id[:8], err)

    def _end(self, sid: str, t: float, payload: tuple[str, str]) -> None:
        opened = self._open.pop(sid, None)
        if opened is None:
            return
        how, message = payload
        if message:
            self._write(opened, t, opened.renderer.message(message))
        with contextlib.suppress(OSError):
            opened.file.flush()
            os.fsync(opened.file.fileno())
        with contextlib.suppress(OSError):
            opened.file.close()
        try:
            self.index.end(sid, self.wall(), opened.size, how, opened.truncated)
        except StoreError as err:
            log.error("end of recording %s not in the index: %s", sid[:8], err)
        self._keep_total()

    def _sync(self) -> None:
        for opened in list(self._open.values()):
            if opened.unsynced:
                with contextlib.suppress(OSError, ValueError):
                    os.fsync(opened.file.fileno())
                opened.unsynced = False
            if opened.grown:
                try:
                    self.index.grew(opened.row.id, opened.size, opened.truncated)
                    opened.grown = False
                except StoreError as err:
                    log.debug("recording size not updated: %s", err)
        self._keep_total()

    def _keep_total(self) -> None:
        """Remove the oldest finished recordings while all of them exceed ``total_bytes``."""
        try:
            total = self.index.total_bytes()
            if total <= self.settings.total_bytes:
                return
            for row in self.index.finished_oldest_first():
                if total <= self.settings.total_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / row.path).unlink()
                self.index.remove(row.id)
                total -= row.bytes
                log.info("recording %s of %s removed (the lab keeps %d bytes of recordings)",
                         row.id[:8], row.vm, self.settings.total_bytes)  # fmt: skip
        except (StoreError, OSError) as err:
            log.error("recordings over their bound not removed: %s", err)
