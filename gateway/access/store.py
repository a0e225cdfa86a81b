"""The lab database: ``lab.db`` in the state folder (SQLite, WAL), shared by access services.

Tables: ``tokens`` (bearer tokens, hashed), ``audit`` (the audit log), ``settings`` (small
key/value state that must survive a restart: console service state per subscription,
serial port states, the boot-diagnostics signing key).

One connection, used from the event loop's thread and FastAPI's worker threads under one
lock; statements are small and local, so they do not block the loop for long. WAL lets
another process (``sqlite3 lab.db``) read while the lab runs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gateway.access.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    hash     TEXT PRIMARY KEY,
    user     TEXT NOT NULL,
    issued   REAL NOT NULL,
    expires  REAL NOT NULL,
    credential TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_expires ON tokens (expires);
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    user     TEXT NOT NULL,
    address  TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user);
CREATE TABLE IF NOT EXISTS settings (
    key      TEXT PRIMARY KEY,
    value    TEXT NOT NULL
);
"""


class LabDatabase:
    """``lab.db``: open with ``LabDatabase(path)`` (``":memory:"`` for tests), then ``close()``."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            old_umask = os.umask(0o077)  # lab.db and its -wal/-shm files: owner only
            try:
                self._conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=5.0
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
            finally:
                os.umask(old_umask)
            if self.path != ":memory:":
                os.chmod(self.path, 0o600)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open the lab database {self.path}: {err}") from err

    def _migrate(self) -> None:
        """Bring a ``lab.db`` of an earlier version up to this schema."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(tokens)")}
        if "credential" not in columns:
            # Tokens of before carry no credential mark: they stop working (log in again).
            self._conn.execute("ALTER TABLE tokens ADD COLUMN credential TEXT NOT NULL DEFAULT ''")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for writes). Raises StoreError."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"lab database {self.path}: {err}") from err

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT; the new row's id."""
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
            except sqlite3.Error as err:
                raise StoreError(f"lab database {self.path}: {err}") from err
            return int(cursor.lastrowid or 0)

    def setting(self, key: str, default: str | None = None) -> str | None:
        """The value stored under ``key``, or ``default``."""
        rows = self.execute("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_setting(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete_setting(self, key: str) -> bool:
        """Forget ``key``; True if it was stored."""
        existed = self.setting(key) is not None
        self.execute("DELETE FROM settings WHERE key = ?", (key,))
        return existed

    def settings_with_prefix(self, prefix: str) -> Iterable[tuple[str, str]]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.execute(
            "SELECT key, value FROM settings WHERE key LIKE ? ESCAPE '\\'", (escaped + "%",)
        )
        return [(str(k), str(v)) for k, v in rows]

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._conn.close()
