"""The lab database: ``lab.db`` in the state folder (SQLite, WAL), shared by access services.

Tables: ``tokens`` (bearer tokens, hashed), ``audit`` (the audit log), ``settings`` (small
key/value state that must survive a restart: console service state per subscription,
serial port states, the boot-diagnostics signing key).

One connection, used from the event loop's thread and FastAPI's worker threads under one
lock; statements are small and local, so they do not block the loop for long. WAL lets
another process (``sqlite3 lab.db``) read while the lab runs.

A full disk: SQLite's "database or disk is full" (``SQLITE_FULL``) and ``ENOSPC``/
``EDQUOT`` are raised as ``StorageFull`` (the write is rolled back: nothing half done),
and logged once a minute with the count of writes refused since, not once per write; the
first write that works again logs that space is back. Reads keep working meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.access.errors import StorageFull, StoreError

log = logging.getLogger("serial_console_lab.access.store")

FULL_NOTICE_EVERY = 60.0  # seconds between two log lines about the same full disk
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

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
    detail   TEXT NOT NULL DEFAULT '',
    session  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user);
CREATE TABLE IF NOT EXISTS settings (
    key      TEXT PRIMARY KEY,
    value    TEXT NOT NULL
);
"""


class LabDatabase:
    """``lab.db``: open with ``LabDatabase(path)`` (``":memory:"`` for tests), then ``close()``."""

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], float] = time.monotonic,
        notice_every: float = FULL_NOTICE_EVERY,
    ) -> None:
        self.path = str(path)
        self.folder = str(Path(self.path).parent) if self.path != ":memory:" else ":memory:"
        self._lock = threading.RLock()  # re-entered by statements inside ``transaction``
        self._full = FullDiskNotice(self.folder, clock, notice_every)
        self._depth = 0  # open transactions (0 or 1: they do not nest)
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
            if is_disk_full(err):
                raise StorageFull(full_message(self.folder), folder=self.folder) from err
            raise StoreError(f"cannot open the lab database {self.path}: {err}") from err

    def _migrate(self) -> None:
        """Bring a ``lab.db`` of an earlier version up to this schema."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(tokens)")}
        if "credential" not in columns:
            # Tokens of before carry no credential mark: they stop working (log in again).
            self._conn.execute("ALTER TABLE tokens ADD COLUMN credential TEXT NOT NULL DEFAULT ''")
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(audit)")}
        if "session" not in columns:  # rows of before name no console session
            self._conn.execute("ALTER TABLE audit ADD COLUMN session TEXT NOT NULL DEFAULT ''")

    @property
    def full(self) -> bool:
        """True from a write refused for a full disk until a write works again."""
        return self._full.since is not None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for writes). Raises StorageFull (disk full,
        nothing written) or StoreError."""
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise self._error(err) from err
            if self._depth == 0 and sql.lstrip()[:6].upper() != "SELECT":
                self._full.cleared()
            return rows

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT; the new row's id. Raises as ``execute``."""
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
            except sqlite3.Error as err:
                raise self._error(err) from err
            if self._depth == 0:
                self._full.cleared()
            return int(cursor.lastrowid or 0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Every statement in the block commits together or not at all: write the audit
        row and the state it describes in one go. Holds the lock (no ``await`` inside).
        Raises as ``execute``; any exception rolls the block back."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise self._error(err) from err
            self._depth += 1
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException as err:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise self._error(err) from err
                raise
            finally:
                self._depth -= 1
            self._full.cleared()

    def _error(self, err: sqlite3.Error) -> StoreError:
        if is_disk_full(err):
            self._full.refused()
            return StorageFull(full_message(self.folder), folder=self.folder)
        return StoreError(f"lab database {self.path}: {err}")

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


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full: SQLite's
    ``SQLITE_FULL``, or an OSError ENOSPC/EDQUOT."""
    if isinstance(err, OSError):
        return err.errno in _FULL_ERRNOS
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        return "database or disk is full" in str(err)
    return False


def full_message(folder: str) -> str:
    """What a user reads when the state folder's disk refused a write."""
    return (
        f"The disk of the lab's state folder {folder} is full: the lab cannot record this "
        "action (lab.db), so it did nothing. Free some space on that disk (df -h "
        f"{folder}), then try again; consoles that are open keep working meanwhile."
    )


class FullDiskNotice:
    """When the disk filled, how many writes it refused, and when that was last logged:
    one log line a minute, not one per write. ``refused()`` on each refused write,
    ``cleared()`` on each write that worked, from any thread (the audit log's, the
    workers', the loop's)."""

    def __init__(
        self,
        folder: str,
        clock: Callable[[], float] = time.monotonic,
        every: float = FULL_NOTICE_EVERY,
        what: str = "lab.db refuses writes",
    ) -> None:
        self.what = what
        self.folder, self.clock, self.every = folder, clock, every
        self.since: float | None = None
        self._said: float | None = None
        self._unsaid = 0
        self._lock = threading.Lock()

    def refused(self) -> None:
        with self._lock:
            self._refused()

    def cleared(self) -> None:
        with self._lock:
            self._cleared()

    def _refused(self) -> None:
        now = self.clock()
        if self.since is None:
            self.since = now
        if self._said is not None and now - self._said < self.every:
            self._unsaid += 1
            return
        more = f" ({self._unsaid} more writes refused since)" if self._unsaid else ""
        log.error(
            "the disk of the state folder %s is full: %s, so tokens, connects, power "
            "actions and settings are refused (507) until space is freed%s",
            self.folder,
            self.what,
            more,
        )
        self._said, self._unsaid = now, 0

    def _cleared(self) -> None:
        if self.since is None:
            return
        log.warning(
            "the state folder %s can be written again after %.0f s: the lab records and acts again",
            self.folder,
            self.clock() - self.since,
        )
        self.since, self._said, self._unsaid = None, None, 0
