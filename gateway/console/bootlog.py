"""The boot-diagnostics log: every byte a guest wrote to its serial port, in a ring on disk.

Bytes carry absolute offsets: the n-th byte the guest ever wrote has offset n, across
gateway restarts (the offsets live in a sidecar file), so a reader can say "from byte
1048000 on" and learn whether those bytes are still kept (``rotated``). The ring keeps the
newest ``capacity`` bytes (default 1 MiB): ``first`` is the oldest offset still kept,
``end`` the offset the next byte will get.

On disk, in the VM's folder (``<state>/bootdiag/<vm>/``)::

    serial.ring     capacity bytes; the byte at offset o sits at position o % capacity
    serial.json     {"version", "capacity", "first", "end", "clean", "hole"}: the offsets
    serial.reserve  an offset no byte has reached yet (see below)

Durability: ``append`` writes into the page cache at once (readers see it at once);
the ring and the sidecar reach the disk (fsync) on ``flush()`` and on ``close()``, never
per byte. ``flush_due`` says when ``flush_interval`` seconds or ``flush_bytes`` bytes have
passed: the caller then flushes, in a worker thread if it serves an event loop
(``flush_mark()`` in the owning thread, ``flush_to(mark)`` in the worker, ``flushed(mark)``
back in the owner); a flush and ``close`` never overlap.

After a crash, offsets are never given twice. Before ``end`` passes the offset in
``serial.reserve``, ``append`` moves it ``reserve_step`` bytes on (``RESERVE``, at most a
quarter of the ring, so a crash skips few offsets and the bytes before them stay): a small
write, no fsync, since it must outlive the process, and the page cache does. Opening a
log that was not closed cleanly starts the new bytes at that reserved offset, so no client
that received bytes before the crash ever sees other bytes under the same offsets; the
offsets between the last flushed ``end`` and the reservation are a *hole*: reads skip it
as rotated (``rotated`` and ``start`` say what is gone), and the bytes before it stay
readable. ``first`` moves up past whatever the unrecorded bytes can have overwritten, so a
read never returns bytes under a wrong offset. A change of ``capacity`` keeps the newest
bytes and their offsets.

Exceptions::

    BootLogError     the log cannot be opened, written or read (the message says which file)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from gateway.console.errors import ConsoleError

log = logging.getLogger("serial_console_lab.console.bootlog")

DEFAULT_CAPACITY = 1 << 20
RING_NAME = "serial.ring"
META_NAME = "serial.json"
RESERVE_NAME = "serial.reserve"
RESERVE = 256 * 1024  # offsets reserved at a time (at most a quarter of the ring)
_VERSION = 1


class BootLogError(ConsoleError):
    """The boot log cannot be opened, written or read."""


class LogRead(NamedTuple):
    """What ``BootLog.read`` returns (GCP's getSerialPortOutput, plus ``rotated``).

    ``contents`` are the bytes from offset ``start`` up to ``next`` (exclusive); pass
    ``next`` as the following call's ``start``. ``rotated`` is True when the caller asked
    for bytes older than ``first``: they are gone, and ``start`` says where the kept
    bytes begin.
    """

    contents: bytes
    start: int
    next: int
    rotated: bool


class FlushMark(NamedTuple):
    """What a flush in a worker thread puts on disk: the offsets as they were when asked."""

    first: int
    end: int
    unflushed: int


class BootLog:
    """One VM's ring of serial output with absolute offsets. Use in one thread (the loop's),
    but for ``flush_to``, which a worker thread may run.

    Opening reads the sidecar to carry the offsets on; ``close()`` flushes and marks the
    log cleanly closed. Methods after ``close()`` raise BootLogError.
    """

    def __init__(
        self,
        directory: Path | str,
        capacity: int = DEFAULT_CAPACITY,
        *,
        flush_interval: float = 1.0,
        flush_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least one byte")
        self.directory = Path(directory)
        self.capacity = capacity
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self._clock = clock
        self._ring_path = self.directory / RING_NAME
        self._meta_path = self.directory / META_NAME
        self._reserve_path = self.directory / RESERVE_NAME
        self._first = 0
        self._end = 0
        self._reserved = 0
        self.reserve_step = max(1, min(RESERVE, capacity // 4))
        self._hole: tuple[int, int] | None = None  # offsets lost in a crash, never read
        self._unflushed = 0
        self._last_flush = clock()
        self._fd = -1
        self._disk = threading.Lock()  # one flush at a time, and never during close
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as err:
            raise BootLogError(f"cannot open the boot log in {self.directory}: {err}") from err

    # -- offsets -------------------------------------------------------------------------

    @property
    def first(self) -> int:
        """Offset of the oldest byte still kept."""
        return self._first

    @property
    def end(self) -> int:
        """Offset the next appended byte will get (the number of bytes ever written)."""
        return self._end

    @property
    def closed(self) -> bool:
        return self._fd < 0

    # -- writing -------------------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Add ``data`` after everything before it. Raises BootLogError if the disk fails."""
        self._check_open()
        size = len(data)
        if not size:
            return
        kept = data[-self.capacity :] if size > self.capacity else data
        try:
            if self._end + size > self._reserved:
                self._reserve(self._end + size + self.reserve_step)
            self._write_at(self._end + size - len(kept), kept)
        except OSError as err:
            # The bytes keep their offsets all the same (clients count on them); what the
            # disk did not take becomes a hole that reads report as lost, and whatever a torn
            # write may have overwritten in the ring is given up. The bytes before stay.
            self._lose(size)
            raise BootLogError(f"cannot write the boot log {self._ring_path}: {err}") from err
        self._end += size
        self._first = max(self._first, self._end - self.capacity)
        if self._hole is not None and self._first >= self._hole[0]:
            self._first = max(self._first, self._hole[1])
            self._hole = None
        self._unflushed += size

    def _lose(self, size: int) -> None:
        """``size`` bytes from ``end`` on could not be written: a hole, not other bytes."""
        lost_from = self._end
        self._end += size
        self._first = max(self._first, self._end - self.capacity)
        if self._hole is not None and self._hole[1] == lost_from:
            self._hole = (self._hole[0], self._end)  # the same outage goes on
        else:
            if self._hole is not None:
                self._first = max(self._first, self._hole[1])  # one hole at a time is kept
            self._hole = (lost_from, self._end)
        if self._first >= self._hole[0]:
            self._first, self._hole = max(self._first, self._hole[1]), None

    @property
    def flush_due(self) -> bool:
        """Unflushed bytes are ``flush_bytes`` or more, or older than ``flush_interval``."""
        return bool(self._unflushed) and (
            self._unflushed >= self.flush_bytes
            or self._clock() - self._last_flush >= self.flush_interval
        )

    def flush(self) -> None:
        """Put the ring and its offsets on disk (fsync) if anything changed since last time."""
        self._check_open()
        mark = self.flush_mark()
        if mark.unflushed:
            self.flush_to(mark)
            self.flushed(mark)

    def flush_mark(self) -> FlushMark:
        """The offsets to flush, taken in the owning thread."""
        return FlushMark(self._first, self._end, self._unflushed)

    def flush_to(self, mark: FlushMark) -> None:
        """fsync the ring and record ``mark``'s offsets; safe in a worker thread. Raises
        BootLogError when the disk fails; does nothing once the log is closed."""
        with self._disk:
            if self._fd < 0:
                return
            try:
                os.fsync(self._fd)
                self._write_meta(clean=False, first=mark.first, end=mark.end)
            except OSError as err:
                raise BootLogError(f"cannot flush the boot log in {self.directory}: {err}") from err

    def flushed(self, mark: FlushMark) -> None:
        """``flush_to(mark)`` succeeded: what was appended since stays to flush."""
        self._unflushed = max(0, self._unflushed - mark.unflushed)
        self._last_flush = self._clock()

    def close(self) -> None:
        """Flush and close; the sidecar records a clean close. Idempotent."""
        with self._disk:
            if self._fd < 0:
                return
            try:
                os.fsync(self._fd)
                self._write_meta(clean=True)
            except OSError:
                log.exception("cannot flush the boot log in %s on close", self.directory)
            finally:
                os.close(self._fd)
                self._fd = -1

    # -- reading -------------------------------------------------------------------------

    def read(self, start: int | None = None, max_bytes: int | None = None) -> LogRead:
        """Bytes from offset ``start`` (None: the oldest kept), at most ``max_bytes`` of them.

        ``start`` before ``first`` reads from ``first`` and sets ``rotated``; ``start`` at or
        beyond ``end`` reads nothing and returns ``start == next == end``.
        A read stops at a hole left by a crash; a read from inside one starts after it, with
        ``rotated`` set.
        """
        self._check_open()
        wanted = self._first if start is None else start
        begin = min(max(wanted, self._first), self._end)
        rotated = wanted < self._first
        stop = self._end
        if self._hole is not None:
            low, high = self._hole
            if low <= begin < high:
                begin, rotated = high, True
            elif begin < low:
                stop = low
        count = stop - begin
        if max_bytes is not None:
            count = min(count, max(0, max_bytes))
        try:
            contents = self._read_at(begin, count)
        except OSError as err:
            raise BootLogError(f"cannot read the boot log {self._ring_path}: {err}") from err
        return LogRead(contents, begin, begin + len(contents), rotated)

    def read_kept(self) -> LogRead:
        """Every byte still kept, oldest first, as one piece (what a blob download gets): a
        crash's hole is left out, and ``rotated`` says one was. ``start`` is ``first``,
        ``next`` is ``end``."""
        before = self.read(None)
        if self._hole is None:
            return before
        after = self.read(self._hole[1])
        return LogRead(before.contents + after.contents, before.start, after.next, True)

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise BootLogError(f"the boot log in {self.directory} is closed")

    def _open(self) -> None:
        meta = self._load_meta()
        old_capacity = self.capacity
        if meta is not None:
            old_capacity = meta["capacity"]
            self._first, self._end = meta["first"], meta["end"]
            self._hole = meta["hole"]
            if not meta["clean"]:
                self._recover(old_capacity)
        elif (reserved := self._load_reserve()) is not None:
            # The sidecar is gone or damaged, the reservation is not: offsets go on past it
            # (what the ring holds cannot be placed, so nothing before is kept).
            self._first = self._end = reserved
            log.warning("boot log %s: no readable %s; new output starts at offset %d",
                        self.directory, META_NAME, reserved)  # fmt: skip
        self._fd = os.open(self._ring_path, os.O_RDWR | os.O_CREAT, 0o640)
        if old_capacity != self.capacity and self._hole is not None:
            self._first, self._hole = max(self._first, self._hole[1]), None
        if old_capacity != self.capacity and self._end > self._first:
            kept = self._read_at(self._first, self._end - self._first, capacity=old_capacity)
            kept = kept[-self.capacity :]
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.capacity)
            self._first = self._end - len(kept)
            self._write_at(self._first, kept)
            log.info(
                "boot log %s resized from %d to %d bytes",
                self.directory,
                old_capacity,
                self.capacity,
            )
        elif os.fstat(self._fd).st_size != self.capacity:
            os.ftruncate(self._fd, self.capacity)
        self._first = max(self._first, self._end - self.capacity)
        if self._hole is not None and self._first >= self._hole[0]:
            self._first, self._hole = max(self._first, self._hole[1]), None
        os.fsync(self._fd)
        self._write_meta(clean=False)
        self._reserve(self._end + self.reserve_step)

    def _recover(self, capacity: int) -> None:
        """After a crash: new bytes start past every offset that may have been handed out;
        what the unrecorded bytes may have overwritten, and the offsets they had, are gone."""
        reserved = self._load_reserve()
        if reserved is None or reserved < self._end:
            # No reservation (a log from before reservations): the unflushed bytes may have
            # overwritten the oldest ones; give those up rather than mislabel them.
            margin = self.flush_bytes + (1 << 16)
            self._first = min(self._end, max(self._first, self._end - capacity + margin))
            return
        if reserved == self._end:
            return  # nothing was handed out past what the sidecar recorded: nothing is lost
        lost_from, self._end = self._end, reserved
        self._first = max(self._first, reserved - capacity)
        if self._hole is not None:  # one hole at a time: an older one goes, with what precedes
            self._first, self._hole = max(self._first, self._hole[1]), None
        if self._first < lost_from:
            self._hole = (lost_from, reserved)
        else:
            self._first = reserved
        log.warning(
            "boot log %s was not closed cleanly: new output starts at offset %d "
            "(offsets %d to %d are lost)", self.directory, reserved, lost_from, reserved,
        )  # fmt: skip

    def _load_reserve(self) -> int | None:
        try:
            text = self._reserve_path.read_bytes().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _reserve(self, offset: int) -> None:
        """Record that offsets up to ``offset`` may be handed out: written in place, at a
        fixed width, so it needs no new disk space (it must work on a full disk) and never
        shares a temporary file with the sidecar; no fsync: it must outlive the process,
        not the machine, whose crash loses the unflushed ring too."""
        fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            os.pwrite(fd, b"%020d\n" % offset, 0)
        finally:
            os.close(fd)
        self._reserved = offset

    def _load_meta(self) -> dict[str, Any] | None:
        try:
            raw = json.loads(self._meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning(
                "boot log %s: unreadable %s (%s): starting empty", self.directory, META_NAME, err
            )
            return None
        ok = (
            isinstance(raw, dict)
            and raw.get("version") == _VERSION
            and all(
                isinstance(raw.get(k), int) and raw[k] >= 0 for k in ("capacity", "first", "end")
            )
            and raw["capacity"] > 0
            and raw["first"] <= raw["end"]
        )
        if not ok:
            log.warning("boot log %s: invalid %s: starting empty", self.directory, META_NAME)
            return None
        hole = raw.get("hole")
        valid_hole = (
            isinstance(hole, list)
            and len(hole) == 2
            and all(isinstance(h, int) for h in hole)
            and raw["first"] <= hole[0] < hole[1] <= raw["end"]
        )
        return {
            "capacity": raw["capacity"],
            "first": raw["first"],
            "end": raw["end"],
            "clean": bool(raw.get("clean")),
            "hole": (hole[0], hole[1]) if valid_hole else None,
        }

    def _write_meta(self, *, clean: bool, first: int | None = None, end: int | None = None) -> None:
        body = {
            "version": _VERSION,
            "capacity": self.capacity,
            "first": self._first if first is None else first,
            "end": self._end if end is None else end,
            "clean": clean,
            "hole": list(self._hole) if self._hole else None,
        }
        tmp = self._meta_path.with_name(META_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._meta_path)

    def _write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            position = offset % self.capacity
            chunk = view[: self.capacity - position]
            written = os.pwrite(self._fd, chunk, position)
            view = view[written:]
            offset += written

    def _read_at(self, offset: int, count: int, capacity: int | None = None) -> bytes:
        capacity = capacity or self.capacity
        parts = []
        while count > 0:
            position = offset % capacity
            chunk = os.pread(self._fd, min(count, capacity - position), position)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            count -= len(chunk)
        return b"".join(parts)
