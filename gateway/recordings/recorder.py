"""The lab's ``Recorder``: a recording for each console session, kept in the state folder.

``Recorder(folder, db, settings)`` opens the index (closing the rows a lab that stopped
without ending them left open), starts the writer thread, and hands the console core a
``SessionRecording`` per session (``gateway.console.recording``): each call stamps the
moment and posts it to the writer; nothing waits. ``close()`` at the lab's end.

Files: ``<folder>/<vm>/<UTC start>-<session id>.cast`` (owner-only, as the state folder).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.access.store import LabDatabase
from gateway.console.sessions import Output
from gateway.recordings import RecordingNotFound
from gateway.recordings.index import RecordingIndex, RecordingRow
from gateway.recordings.settings import RecordingSettings
from gateway.recordings.writer import END, ITEMS, MARK, MESSAGE, START, TYPED, RecordingWriter

if TYPE_CHECKING:
    from gateway.console.sessions import ConsoleSession, Item

log = logging.getLogger("serial_console_lab.recordings")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
LAB_STOPPED = "the lab stopped before the session ended"


class SessionRecording:
    """One session's recording, as the console core calls it (from the event loop)."""

    __slots__ = ("_clock", "_ended", "_post", "full", "id", "records_input")

    def __init__(
        self, session_id: str, post: Callable[..., None], records_input: bool,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.id = session_id
        self.records_input = records_input
        self._post = post
        self._clock = clock
        self._ended = False
        self.full = False  # set by the writer when the file reached its bound

    def took(self, items: list[Item]) -> None:
        if self.full:
            return
        size = 0
        for item in items:
            if type(item) is Output:
                size += len(item.data)
        self._post((self.id, self._clock(), ITEMS, items), size)

    def typed(self, data: bytes) -> None:
        if self.records_input:
            self._post((self.id, self._clock(), TYPED, data))

    def marker(self, label: str) -> None:
        self._post((self.id, self._clock(), MARK, label))

    def message(self, text: str) -> None:
        self._post((self.id, self._clock(), MESSAGE, text))

    def ended(self, how: str, message: str = "") -> None:
        if not self._ended:
            self._ended = True
            self._post((self.id, self._clock(), END, (how, message)))


class Recorder:
    """Records every console session into ``folder`` (see the module docstring). Raises
    the store's errors if ``lab.db`` cannot be read at start."""

    def __init__(
        self,
        folder: Path,
        db: LabDatabase,
        settings: RecordingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        interval: float | None = None,
    ) -> None:
        self.folder = folder
        self.settings = settings
        self.index = RecordingIndex(db)
        self._clock = clock
        self._wall = wall
        self._recover()
        extra = {} if interval is None else {"interval": interval}
        self.writer = RecordingWriter(folder, self.index, settings, clock=clock, wall=wall,
                                      **extra)  # fmt: skip
        self.writer.start()

    @property
    def records_input(self) -> bool:
        return self.settings.record_input

    def _recover(self) -> None:
        """Rows left open by a lab that stopped without ending them: ended now, with the
        size their file has."""
        for row in self.index.unfinished():
            path = self.folder / row.path
            try:
                stat = path.stat()
                size, at = stat.st_size, stat.st_mtime
            except OSError:
                size, at = 0, row.started
            self.index.end(row.id, at, size, LAB_STOPPED, row.truncated)

    def start(self, session: ConsoleSession, *, vm_id: str, door: str) -> SessionRecording | None:
        if not self.settings.enabled:
            return None
        started = self._wall()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        path = f"{_UNSAFE.sub('_', session.vm)}/{stamp}-{_UNSAFE.sub('_', session.id)}.cast"
        record_input = self.settings.record_input
        row = RecordingRow(session.id, vm_id.lower(), session.vm, session.user, door,
                           session.role.value, started, None, 0, "", path, record_input,
                           False)  # fmt: skip
        title = f"{session.vm}: {session.user} ({door}, {session.role.value})"
        lab = {"session": session.id, "vm": session.vm, "vm_id": vm_id, "user": session.user,
               "door": door, "role": session.role.value}  # fmt: skip
        recording = SessionRecording(session.id, self.writer.post, record_input, self._clock)
        self.writer.post((session.id, self._clock(), START, (row, title, lab, recording)))
        return recording

    def find(self, vm_id: str, session_id: str) -> tuple[RecordingRow, Path]:
        """A session's row and its file. Raises RecordingNotFound (no such session on this
        VM, or its file was removed) or the store's errors."""
        row = self.index.get(vm_id, session_id)
        if row is None:
            raise RecordingNotFound(
                f"The VM has no recorded session '{session_id[:64]}': list them with GET "
                ".../serialPorts/0/sessions (serial-console recording list)."
            )
        path = (self.folder / row.path).resolve()
        if not path.is_relative_to(self.folder.resolve()) or not path.is_file():
            raise RecordingNotFound(
                f"The recording of session '{session_id}' is gone from the state folder."
            )
        return row, path

    def sessions(self, vm_id: str) -> list[RecordingRow]:
        """The VM's recorded sessions, oldest first."""
        return self.index.of_vm(vm_id)

    def close(self) -> None:
        """Write what is pending, end the open recordings (``the lab stopped``), stop."""
        self.writer.close()


__all__ = ["LAB_STOPPED", "Recorder", "SessionRecording"]
