"""Entra ID's smart lockout: a user who fails to sign in too often is locked for a while.

After ``threshold`` failed sign-ins of one user name in a row (any grant, any token
endpoint), that name is locked for ``duration`` seconds; every sign-in while it is locked,
even with the right password, is refused with ``AADSTS50053``. Each further lockout of the
same name doubles the time (60 s, 120 s, 240 s...: at most ``ceiling``). A successful
sign-in clears the name's count and its doubling. Names unknown to the lab are counted
like known ones, so a lockout tells nobody which names exist.

The state lives in memory: a restarted lab forgets it (a lockout slows guessing; it is
not a record). At most ``max_names`` names are tracked; when more fail, the oldest that
are not locked are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.access.errors import AccountLocked

DEFAULT_THRESHOLD = 10  # Entra ID's default for the public cloud
DEFAULT_DURATION = 60.0  # seconds: Entra ID's default first lockout
CEILING = 86400.0  # the longest lockout, however often it repeats
MAX_NAMES = 10_000


@dataclass(slots=True)
class _Record:
    failures: int = 0  # failed sign-ins since the last lockout (or success)
    lockouts: int = 0  # lockouts so far: the next lasts duration * 2**lockouts
    until: float = 0.0  # locked until this time (monotonic clock)


class SignInLockout:
    """Counts failed sign-ins per user name and locks names that fail too often.

    Call ``check(name)`` before checking a password (raises AccountLocked while the name
    is locked), then ``failed(name)`` or ``succeeded(name)`` with the outcome. ``clock``
    (monotonic seconds) can be replaced in tests. ``threshold`` 0 turns lockout off.
    """

    def __init__(
        self,
        threshold: int = DEFAULT_THRESHOLD,
        duration: float = DEFAULT_DURATION,
        *,
        ceiling: float = CEILING,
        max_names: int = MAX_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.duration = duration
        self.ceiling = max(ceiling, duration)
        self.max_names = max_names
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def locked_for(self, name: str) -> float:
        """Seconds until ``name`` may sign in again (0: it may now)."""
        record = self._records.get(name)
        return max(0.0, record.until - self.clock()) if record is not None else 0.0

    def check(self, name: str) -> None:
        """Raise AccountLocked (with the seconds left) while ``name`` is locked."""
        left = self.locked_for(name)
        if left > 0:
            raise AccountLocked(
                "Your account is locked because you've tried to sign in too many times with "
                "an incorrect user ID or password.",
                retry_after=left,
            )

    def failed(self, name: str) -> float:
        """Count a failed sign-in of ``name``; the seconds it is now locked for (0: not)."""
        if self.threshold <= 0:
            return 0.0
        record = self._records.pop(name, None) or _Record()
        self._records[name] = record  # newest last: the oldest are forgotten first
        record.failures += 1
        locked = 0.0
        if record.failures >= self.threshold:
            locked = min(self.duration * 2**record.lockouts, self.ceiling)
            record.until = self.clock() + locked
            record.lockouts += 1
            record.failures = 0
        self._forget_oldest()
        return locked

    def succeeded(self, name: str) -> None:
        """``name`` signed in: its count and doubling start over."""
        self._records.pop(name, None)

    def _forget_oldest(self) -> None:
        if len(self._records) <= self.max_names:
            return
        now = self.clock()
        for name in [n for n, r in self._records.items() if r.until <= now]:
            del self._records[name]
            if len(self._records) <= self.max_names:
                return
