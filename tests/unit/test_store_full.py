"""lab.db on a full disk, on a fake clock: one log line a minute, the write rolled back."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from gateway.access.errors import StorageFull
from gateway.access.store import FullDiskNotice, LabDatabase, is_disk_full


def test_a_full_disk_is_logged_once_a_minute_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    notice = FullDiskNotice("/state", clock=lambda: now[0], every=60.0)
    caplog.set_level(logging.WARNING, logger="serial_console_lab.access.store")
    for _ in range(50):
        notice.refused()
        now[0] += 1.0
    notice.refused()  # 50 s: still quiet
    now[0] = 61.0
    notice.refused()
    notice.cleared()
    notice.cleared()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "is full" in messages[0]
    assert "(50 more writes refused since)" in messages[1]
    assert "can be written again" in messages[2]


def test_sqlite_full_is_storage_full_and_rolls_back() -> None:
    db = LabDatabase(":memory:")
    db.execute("PRAGMA max_page_count = 10")  # a database that cannot grow: SQLITE_FULL
    db.execute("CREATE TABLE t (x BLOB)")

    def setting_and_row() -> None:
        with db.transaction():
            db.set_setting("k", "v")
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))

    with pytest.raises(StorageFull) as caught:
        setting_and_row()
    assert "is full" in str(caught.value)
    assert db.full
    assert db.setting("k") is None  # the whole transaction rolled back
    db.set_setting("k", "v")
    assert not db.full


def test_disk_full_errors_are_recognised() -> None:
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(OSError(13, "Permission denied"))
