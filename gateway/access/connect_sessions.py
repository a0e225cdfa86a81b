"""One-time connect sessions: what ``POST .../serialPorts/0/connect`` hands out.

``connect`` (the control plane) calls ``create(vm_id, user, container)`` after every check
passed, and returns a URL with the session's id. The websocket door calls
``claim(session_id, user)`` when the client arrives: it returns the ``ConnectGrant`` (which
VM, for whom) once, and never again. A session is bound to the user it was made for and
expires ``lifetime`` seconds (60) after its creation unless it was claimed; a claimed
session's URL stays good for admin commands (``lookup``) for as long as its console is
open, until the door calls ``release``. Session ids are GUIDs, as Azure's are (a client
that rewrites ``ws`` in the URL to ``http`` must not find either inside an id).

Claim errors (all ``ConnectSessionError``, messages for the user)::

    UnknownSession     no such id (never made, or forgotten long after its expiry)
    SessionExpired     not claimed within the lifetime
    SessionUsed        already claimed
    SessionWrongUser   made for another user (the session stays claimable by its owner)

In memory only: a gateway restart forgets the pending sessions, as their clients must ask
``connect`` again anyway.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
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
MAX_PER_USER = 100  # a user's own oldest waiting session gives way past this


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
    open: bool = False  # claimed and its console not released yet
    released: float | None = None


class ConnectSessions:
    """The registry of pending one-time sessions. ``clock`` can be replaced in tests."""

    def __init__(
        self,
        lifetime: float = SESSION_LIFETIME,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
        max_per_user: int = MAX_PER_USER,
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, vm_id: str, user: str, container: str) -> ConnectGrant:
        """A new session for ``user`` on ``vm_id``; its ``session_id`` goes into the URL.

        Bounded, fairly: past ``max_per_user`` sessions waiting to be opened, the user's own
        oldest gives way, so no user can expire another's URL; past ``max_sessions`` in all,
        the oldest waiting session of whoever holds the most does. Open consoles keep their
        admin URL.
        """
        self._purge()
        waiting = [sid for sid, e in self._entries.items() if not e.used]  # oldest first
        mine = [sid for sid in waiting if self._entries[sid].grant.user == user]
        if len(mine) >= self.max_per_user:
            self._entries.pop(mine[0])
        elif len(self._entries) >= self.max_sessions and waiting:
            counts = Counter(self._entries[sid].grant.user for sid in waiting)
            greedy = counts.most_common(1)[0][0]
            self._entries.pop(next(s for s in waiting if self._entries[s].grant.user == greedy))
        grant = ConnectGrant(str(uuid.uuid4()), vm_id, user, container, self.clock())
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
        entry.used = entry.open = True
        return entry.grant

    def release(self, session_id: str) -> None:
        """The console of ``session_id`` closed: its URL now ends as an unclaimed one would."""
        entry = self._entries.get(session_id)
        if entry is not None and entry.open:
            entry.open = False
            entry.released = self.clock()

    def lookup(self, session_id: str, user: str) -> ConnectGrant:
        """The grant of ``session_id`` for ``user``, claimed or not, without using it up.

        For the admin commands, which go to a session's URL beside (or instead of) its
        websocket: good within the session's lifetime, and for as long as its console is
        open (az's Ctrl+] menu posts there while the console runs). Raises UnknownSession,
        SessionExpired or SessionWrongUser.
        """
        entry = self._entries.get(session_id)
        if entry is None:
            raise UnknownSession("This console session does not exist. Call connect again.")
        if entry.released is not None:
            raise SessionExpired(
                "This console session ended when its console closed. Call connect again."
            )
        if not entry.open and self.clock() - entry.grant.created >= self.lifetime:
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
        stale = [
            sid
            for sid, e in self._entries.items()
            if not e.open and max(e.grant.created, e.released or 0.0) < horizon
        ]
        for sid in stale:
            del self._entries[sid]
