"""What every door needs from the lab to serve a console, whatever its protocol.

A door (the websocket now; SSH, RFC 2217 and the browser next) authenticates its client in
its own way, then calls ``ConsoleService``:

- ``attach(target, actor, session_id, resume)``: a ``ConsoleSession`` on the VM's hub, with
  the replay queued (or the bytes from ``resume``), Azure's one-writer rule (a writer takes
  over), the bound on consoles one user may hold, and the audit rows (connect, takeover);
- ``resume(target, session, offset)``: start a live session over from an offset;
- ``detach(target, session)``: forget it, and audit the disconnect with its reason;
- ``policy``: the one ``CommandPolicy`` for SysRq, NMI, reset, restart and break.

With a ``recorder`` (``gateway.console.recording.Recorder``) every session is recorded
from ``attach`` to ``detach``, whatever its door, and a resumed session goes on in the
same recording. The audit rows of a session carry its id.

It raises ``gateway.console.connection.Refused`` with the close code and the user's text,
which each door spells its own way. It does no I/O of a door's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.access import audit
from gateway.console import texts
from gateway.console.bootlog import LogRead
from gateway.console.connection import Refused
from gateway.console.errors import ConsoleError
from gateway.console.frames import CloseCode
from gateway.console.hub import ConsoleHub
from gateway.console.policy import Actor, CommandPolicy, Target
from gateway.console.recording import Recorder
from gateway.console.sessions import DEFAULT_LIMIT, Closing, ConsoleSession, Notice, Resumed

log = logging.getLogger("serial_console_lab.console.service")

MAX_CONSOLES_PER_USER = 64  # open at once, writers and watchers, across every VM


@dataclass(frozen=True, slots=True)
class Attached:
    """A session on a hub: the replay it starts with (``start``..``next``, ``rotated``) and
    the writer it displaced, if any."""

    session: ConsoleSession
    backlog: LogRead
    displaced: ConsoleSession | None


class ConsoleService:
    """Attach, resume, detach and command consoles for every door (see the module docstring).

    ``hubs()`` lists every VM's hub (for the per-user bound); ``session_buffer`` is each
    client's queue bound; ``max_per_user`` the consoles one user may hold open at once;
    ``recorder`` records each session (None: none is).
    """

    def __init__(
        self,
        audit_log: audit.AuditLog,
        policy: CommandPolicy,
        hubs: Callable[[], Iterable[ConsoleHub]],
        *,
        session_buffer: int = DEFAULT_LIMIT,
        max_per_user: int | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.audit_log = audit_log
        self.policy = policy
        self._hubs = hubs
        self.session_buffer = session_buffer
        self.max_per_user = MAX_CONSOLES_PER_USER if max_per_user is None else max_per_user
        self.recorder = recorder

    def open_sessions(self, user: str) -> int:
        """Consoles ``user`` holds open now, on every VM."""
        return sum(1 for hub in self._hubs() for s in hub.sessions if s.user == user)

    def attach(
        self, target: Target, actor: Actor, session_id: str, resume: int | None = None
    ) -> Attached:
        """A new session of ``actor`` on ``target``'s console. Raises Refused: TOO_MANY past
        the per-user bound, GOING_AWAY when the console is shutting down."""
        held = self.open_sessions(actor.user)
        if held >= self.max_per_user:
            raise Refused(
                CloseCode.TOO_MANY,
                f"{actor.user} already has {held} consoles open, the most one user may: "
                "close one, then connect again",
                "too many consoles open for this user",
            )
        session = ConsoleSession(
            session_id, actor.user, target.name, actor.role, self.session_buffer
        )
        try:
            backlog, displaced = target.hub.attach(session, resume)
        except ConsoleError as err:
            raise Refused(CloseCode.GOING_AWAY, str(err)) from None
        self._start_recording(session, target, actor, displaced)
        self.record(actor, target.id, "console.connect", audit.ALLOWED,
                    f"{actor.role} session {session_id[:8]}...", session=session_id)  # fmt: skip
        if displaced is not None:
            self.record(actor, target.id, "console.takeover", audit.SUCCEEDED,
                        f"took the console over from {displaced.user}",
                        session=session_id)  # fmt: skip
        return Attached(session, backlog, displaced)

    def _start_recording(
        self,
        session: ConsoleSession,
        target: Target,
        actor: Actor,
        displaced: ConsoleSession | None,
    ) -> None:
        if self.recorder is None:
            return
        recording = self.recorder.start(session, vm_id=target.id, door=actor.door)
        if recording is None:
            return
        session.recording = recording
        recording.message(texts.BANNER)
        if displaced is not None:
            recording.marker(f"takeover: {actor.user} took the console over from {displaced.user}")
        if recording.records_input:  # the user is told, ahead of the replay
            session.prepend(Notice("recording", texts.INPUT_RECORDED, ok=True))

    def resume(self, target: Target, session: ConsoleSession, offset: int) -> ConsoleSession | None:
        """A fresh session in place of ``session``, replaying from ``offset`` (introduced by
        a ``resumed`` event), so the bytes stay in order; None when ``session`` is already
        closing (taken over, idle, deallocated): it cannot come back."""
        if not session.is_open:
            return None
        hub = target.hub
        hub.detach(session)
        fresh = ConsoleSession(session.id, session.user, session.vm, session.role, session.limit)
        backlog, _ = hub.attach(fresh, offset)  # nobody to displace: this was the writer
        fresh.prepend(Resumed(offset, backlog.start, backlog.rotated))
        fresh.recording, session.recording = session.recording, None  # one recording
        session.close(Closing(CloseCode.NORMAL, "resumed"), drain=False)
        return fresh

    def detach(self, target: Target, actor: Actor, session: ConsoleSession) -> None:
        """Forget ``session`` and audit why it ended."""
        target.hub.detach(session)
        closing = session.closing
        how = closing.reason if closing else "client left"
        if session.recording is not None:
            session.recording.ended(how, closing.message if closing else "")
            session.recording = None
        self.record(actor, target.id, "console.disconnect", audit.SUCCEEDED, how,
                    session=session.id)  # fmt: skip

    def record(
        self, actor: Actor, target: str, action: str, outcome: str, detail: str, session: str = ""
    ) -> None:
        """One audit row (``session``: the console session it is about), written by the
        audit log's own thread: a slow disk never stalls a console, a failing audit log
        never breaks one (``AuditLog.post``)."""
        self.audit_log.post(action, user=actor.user, address=actor.address, target=target,
                            outcome=outcome, detail=detail, session=session)  # fmt: skip
