"""The audit log: who did what, when, from which address, on what, and how it ended.

Every token issued or refused, connect allowed or refused, power action, console
enable/disable and serial port change lands here, in the ``audit`` table of ``lab.db``.
Rows are never updated; ``id`` grows, so ``since_id`` pages through them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.access.store import LabDatabase

# Outcomes: an allowed/denied decision, or how a performed action ended.
MAX_ROWS = 100_000  # the newest rows kept
PRUNE_EVERY = 1000
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
        console session it is about, if any."""
        row = self.db.insert(
            "INSERT INTO audit (at, user, address, action, target, outcome, detail, session) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.clock(), user, address or "", action, target, outcome, detail[:2000], session),
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
        """Rows with ``id > since_id``, oldest first, at most ``limit``, optionally filtered."""
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
