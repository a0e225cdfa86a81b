"""The index of recordings: the ``recordings`` table of ``lab.db``, one row per session.

A row is written when its session starts, its ``bytes`` kept current while it runs (once a
second) and its end (``ended``, ``how``) written when it ends. ``recover()`` closes the
rows a lab that stopped without ending them left open. The writer thread writes; the API
reads (``LabDatabase`` serialises both).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.access.store import LabDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id       TEXT PRIMARY KEY,
    vm_id    TEXT NOT NULL,
    vm       TEXT NOT NULL,
    user     TEXT NOT NULL,
    door     TEXT NOT NULL,
    role     TEXT NOT NULL,
    started  REAL NOT NULL,
    ended    REAL,
    bytes    INTEGER NOT NULL DEFAULT 0,
    how      TEXT NOT NULL DEFAULT '',
    path     TEXT NOT NULL,
    input    INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recordings_vm ON recordings (vm_id, started);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started);
"""
_COLUMNS = "id, vm_id, vm, user, door, role, started, ended, bytes, how, path, input, truncated"
SESSION_TYPE = "Microsoft.SerialConsole/serialPorts/sessions"


def _time(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One session's recording. ``vm_id`` is the VM's ARM id in lower case; ``path`` the
    file, relative to the recordings folder; ``ended`` None while the session runs."""

    id: str
    vm_id: str
    vm: str
    user: str
    door: str
    role: str
    started: float
    ended: float | None
    bytes: int
    how: str
    path: str
    input: bool
    truncated: bool

    def as_resource(self, port_id: str) -> dict[str, Any]:
        """The session as an ARM resource under the VM's serial port ``port_id``."""
        return {
            "id": f"{port_id}/sessions/{self.id}",
            "name": self.id,
            "type": SESSION_TYPE,
            "properties": {
                "user": self.user,
                "door": self.door,
                "role": self.role,
                "state": "active" if self.ended is None else "ended",
                "startTime": _time(self.started),
                "endTime": _time(self.ended),
                "bytes": self.bytes,
                "endReason": self.how,
                "inputRecorded": self.input,
                "truncated": self.truncated,
            },
        }


def _row(values: tuple[Any, ...]) -> RecordingRow:
    v = list(values)
    v[11], v[12] = bool(v[11]), bool(v[12])
    return RecordingRow(*v)


class RecordingIndex:
    """The ``recordings`` table (created if missing). Raises the store's errors."""

    def __init__(self, db: LabDatabase) -> None:
        self.db = db
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)

    def add(self, row: RecordingRow) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO recordings ({_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.vm_id.lower(),
                row.vm,
                row.user,
                row.door,
                row.role,
                row.started,
                row.ended,
                row.bytes,
                row.how,
                row.path,
                int(row.input),
                int(row.truncated),
            ),
        )

    def grew(self, session_id: str, size: int, truncated: bool = False) -> None:
        self.db.execute(
            "UPDATE recordings SET bytes = ?, truncated = ? WHERE id = ?",
            (size, int(truncated), session_id),
        )

    def end(self, session_id: str, at: float, size: int, how: str, truncated: bool) -> None:
        self.db.execute(
            "UPDATE recordings SET ended = ?, bytes = ?, how = ?, truncated = ? WHERE id = ?",
            (at, size, how, int(truncated), session_id),
        )

    def get(self, vm_id: str, session_id: str) -> RecordingRow | None:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM recordings WHERE vm_id = ? AND id = ?",
            (vm_id.lower(), session_id),
        )
        return _row(rows[0]) if rows else None

    def of_vm(self, vm_id: str) -> list[RecordingRow]:
        """The VM's recordings, oldest first."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM recordings WHERE vm_id = ? ORDER BY started, id",
            (vm_id.lower(),),
        )
        return [_row(r) for r in rows]

    def finished_oldest_first(self) -> list[RecordingRow]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM recordings WHERE ended IS NOT NULL ORDER BY started, id"
        )
        return [_row(r) for r in rows]

    def total_bytes(self) -> int:
        rows = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM recordings")
        return int(rows[0][0])

    def remove(self, session_id: str) -> None:
        self.db.execute("DELETE FROM recordings WHERE id = ?", (session_id,))

    def unfinished(self) -> list[RecordingRow]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM recordings WHERE ended IS NULL")
        return [_row(r) for r in rows]
