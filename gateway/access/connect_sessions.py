"""One-time connect sessions: what ``POST .../serialPorts/0/connect`` hands out.

``connect`` (the control plane) calls ``create(vm_id, user, container)`` after every check
passed, and returns a URL with the session's id. The websocket door calls
``claim(session_id, user)`` when the client arrives: it returns the ``ConnectGrant`` (which
VM, for whom) once, and never again. A session is bound to the user it was made for and
expires ``lifetime`` seconds (60) after its creation, claimed or not.

Claim errors (all ``ConnectSessionError``, messages for the user)::

    UnknownSession     no such id (never made, or forgotten long after its expiry)
    SessionExpired     not claimed within the lifetime
    SessionUsed        already claimed
    SessionWrongUser   made for another user (the session stays claimable by its owner)

In memory only: a gateway restart forgets the pending sessions, as their clients must ask
``connect`` again anyway.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.access.errors import (
    SessionExpired,
    SessionUsed,
    SessionWrongUser,
    UnknownSession,
)

SESSION_LIFETIME = 60.0
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class ConnectGrant:
    """The right to open one console connection: ``user`` to the VM ``vm_id`` (an ARM id)."""

    session_id: str
    vm_id: str
    user: str
    container: str
    created: float  # the registry's clock (monotonic seconds)


@dataclass(slots=True)
class _Entry:
    grant: ConnectGrant
    used: bool = False


class ConnectSessions:
    """The registry of pending one-time sessions. ``clock`` can be replaced in tests."""

    def __init__(
        self,
        lifetime: float = SESSION_LIFETIME,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.max_sessions = max_sessions
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, vm_id: str, user: str, container: str) -> ConnectGrant:
        """A new session for ``user`` on ``vm_id``; its ``session_id`` goes into the URL."""
        self._purge()
        if len(self._entries) >= self.max_sessions:
            # Bounded: the oldest pending session gives way (dicts keep insertion order).
            self._entries.pop(next(iter(self._entries)))
        grant = ConnectGrant(secrets.token_urlsafe(24), vm_id, user, container, self.clock())
        self._entries[grant.session_id] = _Entry(grant)
        return grant

    def claim(self, session_id: str, user: str) -> ConnectGrant:
        """The grant of ``session_id`` for ``user``, usable once. Raises ConnectSessionError."""
        entry = self._entries.get(session_id)
        if entry is None:
            raise UnknownSession("This console session does not exist. Call connect again.")
        if entry.used:
            raise SessionUsed(
                "This console session was already used: each connect opens one connection. "
                "Call connect again."
            )
        if self.clock() - entry.grant.created >= self.lifetime:
            raise SessionExpired(
                f"This console session expired: it must be opened within "
                f"{self.lifetime:g} seconds of connect. Call connect again."
            )
        if entry.grant.user != user:
            raise SessionWrongUser(
                "This console session belongs to another user. Call connect with your own token."
            )
        entry.used = True
        return entry.grant

    def lookup(self, session_id: str, user: str) -> ConnectGrant:
        """The grant of ``session_id`` for ``user``, claimed or not, without using it up.

        For the admin commands, which go to a session's URL beside (or instead of) its
        websocket, within the session's lifetime. Raises UnknownSession, SessionExpired or
        SessionWrongUser.
        """
        entry = self._entries.get(session_id)
        if entry is None:
            raise UnknownSession("This console session does not exist. Call connect again.")
        if self.clock() - entry.grant.created >= self.lifetime:
            raise SessionExpired(
                f"This console session expired: its URL is valid for {self.lifetime:g} seconds "
                "after connect. Call connect again."
            )
        if entry.grant.user != user:
            raise SessionWrongUser(
                "This console session belongs to another user. Call connect with your own token."
            )
        return entry.grant

    def _purge(self) -> None:
        # Keep expired/used ids for one more lifetime, so late claims hear why, not "unknown".
        horizon = self.clock() - 2 * self.lifetime
        stale = [sid for sid, e in self._entries.items() if e.grant.created < horizon]
        for sid in stale:
            del self._entries[sid]
