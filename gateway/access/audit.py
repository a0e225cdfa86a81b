"""The audit log: who did what, when, from which address, on what, and how it ended.

Every token issued or refused, connect allowed or refused, power action, console
enable/disable and serial port change lands here, in the ``audit`` table of ``lab.db``.
Rows are never updated; ``id`` grows, so ``since_id`` pages through them.

Two ways in. ``record`` writes at once and returns the row's id: for a caller in a worker
thread, or inside a transaction with the state the row describes. ``post`` never blocks:
the console core calls it from the event loop, and a thread of the log's own writes the
row, so a slow disk (or SQLite waiting on its lock) stalls no console. ``query`` first
waits for what was posted before it, so a reader sees every row posted so far.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.access.errors import AccessError
from gateway.access.store import LabDatabase

log = logging.getLogger("serial_console_lab.audit")

# Outcomes: an allowed/denied decision, or how a performed action ended.
MAX_ROWS = 100_000  # the newest rows kept
PRUNE_EVERY = 1000
MAX_POSTED = 10_000  # rows posted and not yet written; past it a row is lost (and logged)
FLUSH_TIMEOUT = 10.0  # a query waits at most this long for the rows posted before it
ALLOWED = "allowed"
DENIED = "denied"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit row. ``at`` is Unix time; ``target`` an ARM id (or the user, for tokens);
    ``session`` the console session it is about (its recording's name), or empty."""

    id: int
    at: float
    user: str
    address: str
    action: str
    target: str
    outcome: str
    detail: str
    session: str = ""

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["time"] = datetime.fromtimestamp(self.at, UTC).isoformat().replace("+00:00", "Z")
        return body


class AuditLog:
    """Appends and reads audit rows. ``clock`` (Unix time) can be replaced in tests."""

    def __init__(
        self,
        db: LabDatabase,
        clock: Callable[[], float] = time.time,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.max_rows = max_rows
        self.lost = 0  # posted rows that were never written (the queue was full, or an error)
        self._posted: deque[dict[str, Any]] = deque()
        self._written = threading.Condition()
        self._posts = self._writes = 0
        self._writer: threading.Thread | None = None
        self._closed = False

    def post(
        self,
        action: str,
        *,
        user: str,
        address: str,
        target: str,
        outcome: str,
        detail: str = "",
        session: str = "",
    ) -> None:
        """Append a row from the event loop: its time is taken now, the row is written by
        the log's own thread. Never blocks and never raises; a row that cannot be written
        is counted in ``lost`` and logged at ERROR."""
        row = dict(at=self.clock(), user=user, address=address, action=action, target=target,
                   outcome=outcome, detail=detail, session=session)  # fmt: skip
        with self._written:
            if self._closed or len(self._posted) >= MAX_POSTED:
                self.lost += 1
                log.error("audit row lost (%s %s on %s): the log is %s", action, outcome,
                          target, "closed" if self._closed else "behind")  # fmt: skip
                return
            self._posted.append(row)
            self._posts += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="audit", daemon=True)
                self._writer.start()
            self._written.notify_all()

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until every row posted so far is written; False after ``timeout`` s."""
        with self._written:
            wanted = self._posts
            return self._written.wait_for(lambda: self._writes >= wanted, timeout)

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write what was posted, then stop the writer; later posts are lost. Idempotent."""
        self.flush(timeout)
        with self._written:
            self._closed = True
            self._written.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)

    def _write(self) -> None:
        while True:
            with self._written:
                self._written.wait_for(lambda: self._posted or self._closed)
                if not self._posted:
                    return
                row = self._posted.popleft()
            lost = False
            try:
                self._insert(**row)
            except AccessError as err:
                lost = True
                log.error("audit row lost (%s %s): %s", row["action"], row["outcome"], err)
            with self._written:  # ``lost`` is counted by the loop's thread too
                self.lost += lost
                self._writes += 1
                self._written.notify_all()

    def record(
        self,
        action: str,
        *,
        user: str,
        address: str,
        target: str,
        outcome: str,
        detail: str = "",
        session: str = "",
    ) -> int:
        """Append a row; its id. ``action`` names what was attempted (``connect``,
        ``token``, ``Microsoft.Compute/virtualMachines/start/action``...); ``session`` the
        console session it is about, if any. Raises StoreError when the database
        refuses it."""
        return self._insert(self.clock(), user, address, action, target, outcome, detail, session)

    def record_in_turn(self, action: str, **fields: str) -> int:
        """``record``, after every row posted before it (so ids keep the order of events):
        for a worker thread, never inside a transaction (the writer needs the database)."""
        self.flush()
        return self.record(action, **fields)

    def _insert(self, at: float, user: str, address: str, action: str, target: str,
                outcome: str, detail: str, session: str) -> int:  # fmt: skip
        row = self.db.insert(
            "INSERT INTO audit (at, user, address, action, target, outcome, detail, session) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (at, user, address or "", action, target, outcome, detail[:2000], session),
        )
        if row % PRUNE_EVERY == 0:
            # Bounded: anyone may cause rows (a refused token is audited), so the oldest go.
            self.db.execute("DELETE FROM audit WHERE id <= ?", (row - self.max_rows,))
        return row

    def query(
        self,
        *,
        since_id: int = 0,
        limit: int = 100,
        user: str | None = None,
        action: str | None = None,
    ) -> list[AuditRecord]:
        """Rows with ``id > since_id``, oldest first, at most ``limit``, optionally filtered;
        the rows posted before the call among them."""
        if not self.flush():
            log.warning("audit query: rows posted before it are not all written yet")
        sql = (
            "SELECT id, at, user, address, action, target, outcome, detail, session FROM audit "
            "WHERE id > ?"
        )
        params: list[Any] = [since_id]
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        if action is not None:
            sql += " AND action = ?"
            params.append(action)
        sql += " ORDER BY id LIMIT ?"
        params.append(max(0, limit))
        return [AuditRecord(*row) for row in self.db.execute(sql, params)]
