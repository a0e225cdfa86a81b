"""One command policy for every door: may this person do this to this console, now?

The websocket (raw and framed), adminCommand and every door to come call
``CommandPolicy.run`` for SysRq, NMI, reset, restart and break, and nothing else decides.
In order, as Azure checks them:

1. the subscription's console is enabled (``CONSOLE_DISABLED``);
2. the VM's serial port is enabled (``PORT_DISABLED``);
3. the caller holds ``serialPorts/connect/action`` on the VM (``NO_PERMISSION``);
4. the caller's session is the writer, not a watcher (``READ_ONLY``), and still open: a
   writer taken over cannot act while its last frames drain (``SESSION_CLOSED``);
5. the command fits the VM: SysRq is Linux only (``SYSRQ_LINUX_ONLY``), and the machine's
   power state allows it (its own state error says what to do).

Every outcome is audited: refusals as ``denied``, failures as ``failed``, the rest as
``succeeded`` (each row names the caller's console session when it has one); and an
allowed command is recorded (``allowed``) BEFORE it acts, so a lab
that cannot record (its state folder's disk is full) refuses the command and does
nothing, never a reset without its audit row. Refusals are ``CommandRefused`` with a
``Refusal`` each door maps to its own spelling (a close code, an HTTP status, a line of
text); failures are ``CommandFailed``.

Every recording of the VM's open sessions gets a marker when a command is allowed (who
asked, through which door), and another if it then fails; a refusal is marked in the
caller's own recording only (nobody else saw it).

Exceptions::

    ConsoleError (gateway.console.hub)
     +-- CommandRefused     not allowed: ``refusal`` says which rule, ``str()`` the text
     +-- CommandFailed      allowed, tried, and the guest or its monitor failed
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.access import audit, rbac
from gateway.access.errors import AccessError, AuthorizationError, StorageFull
from gateway.console import texts
from gateway.console.errors import ConsoleError
from gateway.console.hub import COMMANDS, ConsoleHub, SysRqNotSupported
from gateway.console.opening import ArmRule
from gateway.console.sessions import Role
from gateway.machines.base import MachineError, MachineStateError


class Refusal(ArmRule):
    """Why a command was refused: ARM's error code and HTTP status for each rule."""

    CONSOLE_DISABLED = ("SerialConsoleDisabled", 409)
    PORT_DISABLED = ("SerialPortDisabled", 409)
    FORBIDDEN = ("AuthorizationFailed", 403)
    READ_ONLY = ("ReadOnlySession", 403)
    SESSION_CLOSED = ("ConsoleSessionClosed", 409)
    NOT_SUPPORTED = ("SysRqNotSupported", 400)
    UNKNOWN = ("InvalidCommand", 400)
    WRONG_STATE = ("OperationNotAllowed", 409)
    STORAGE_FULL = ("InsufficientStorage", 507)
    STORAGE_FAILED = ("ServiceUnavailable", 503)


class CommandRefused(ConsoleError):
    """The policy refused the command; the message is the user's (Azure's where it has one)."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


class CommandFailed(ConsoleError):
    """The command was allowed and tried, and failed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks, from where, through which door, in which role on the console."""

    user: str
    roles: Sequence[rbac.RoleAssignment]
    address: str
    door: str
    role: Role = Role.WRITER
    active: bool = True  # False once the caller's session is closing (taken over, idle...)
    session: str = ""  # the caller's console session, when the door knows it


@dataclass(frozen=True, slots=True)
class Target:
    """The console a command is for: the VM's ARM id (RBAC scope, audit target) and hub."""

    id: str
    name: str
    hub: ConsoleHub


class CommandPolicy:
    """Checks, carries out and audits console commands for every door.

    ``console_disabled()`` and ``port_enabled(vm_id)`` read the lab's switches at the
    moment of the command (they may have changed since the console opened).
    """

    def __init__(
        self,
        audit_log: audit.AuditLog,
        *,
        console_disabled: Callable[[], bool],
        port_enabled: Callable[[str], bool],
    ) -> None:
        self.audit_log = audit_log
        self._console_disabled = console_disabled
        self._port_enabled = port_enabled

    def check(self, actor: Actor, target: Target, command: str) -> None:
        """Raise CommandRefused (audited) unless ``actor`` may send ``command`` now."""
        refusal = self._refusal(actor, target, command)
        if refusal is not None:
            kind, message = refusal
            self.record(actor, target, command, audit.DENIED, message)
            raise CommandRefused(kind, message)

    def _refusal(self, actor: Actor, target: Target, command: str) -> tuple[Refusal, str] | None:
        if command not in COMMANDS:
            return Refusal.UNKNOWN, f"unknown command {command!r}; expected one of " + ", ".join(
                COMMANDS
            )
        if self._console_disabled():
            return Refusal.CONSOLE_DISABLED, texts.CONSOLE_DISABLED
        if not self._port_enabled(target.id):
            return Refusal.PORT_DISABLED, texts.PORT_DISABLED
        try:
            rbac.check(actor.user, actor.roles, rbac.CONNECT, target.id)
        except AuthorizationError:
            return Refusal.FORBIDDEN, texts.NO_PERMISSION
        if actor.role is not Role.WRITER:
            return Refusal.READ_ONLY, texts.READ_ONLY
        if not actor.active:
            return Refusal.SESSION_CLOSED, texts.SESSION_CLOSED
        if command == "sysrq" and target.hub.machine.os_type != "linux":
            return Refusal.NOT_SUPPORTED, texts.SYSRQ_LINUX_ONLY
        return None

    async def run(
        self, actor: Actor, target: Target, command: str, keys: Iterable[str] = ()
    ) -> str:
        """Check, then do ``command`` on the target's console; the success text (az's).

        Raises CommandRefused (a rule said no) or CommandFailed (the guest, its port or its
        monitor failed, or the power state does not allow it now).
        """
        keys = list(keys)
        try:
            self.check(actor, target, command)
        except CommandRefused as err:
            self._mark(actor, target, f"{_label(command, keys)} by {actor.user} refused: {err}",
                       everyone=False)  # fmt: skip
            raise
        try:  # recorded before it acts: a command the lab cannot record is not done
            await asyncio.to_thread(  # a worker thread waits on the disk, not the loop
                self._record, actor, target, command, audit.ALLOWED, "".join(keys), True
            )
        except StorageFull as err:
            raise CommandRefused(Refusal.STORAGE_FULL, str(err)) from None
        except AccessError as err:
            raise CommandRefused(
                Refusal.STORAGE_FAILED,
                f"The lab cannot record this command, so it did nothing: {err}. Check the "
                "state folder (its disk, its permissions), then try again.",
            ) from None
        label = _label(command, keys)
        self._mark(actor, target, f"{label} by {actor.user} ({actor.door})")
        try:
            message = await target.hub.command(command, keys)
        except SysRqNotSupported as err:
            self.record(actor, target, command, audit.DENIED, str(err))
            self._mark(actor, target, f"{label} by {actor.user} refused: {err}")
            raise CommandRefused(Refusal.NOT_SUPPORTED, str(err)) from None
        except MachineStateError as err:
            self.record(actor, target, command, audit.DENIED, str(err))
            self._mark(actor, target, f"{label} by {actor.user} refused: {err}")
            raise CommandRefused(Refusal.WRONG_STATE, str(err)) from None
        except (ConsoleError, MachineError) as err:
            self.record(actor, target, command, audit.FAILED, str(err))
            self._mark(actor, target, f"{label} by {actor.user} failed: {err}")
            raise CommandFailed(str(err)) from None
        self.record(actor, target, command, audit.SUCCEEDED, "".join(keys))
        return message

    def record(self, actor: Actor, target: Target, command: str, outcome: str, detail: str) -> None:
        """One audit row for ``command``, written by the audit log's thread: a slow disk
        never stalls the console, a failing audit log never breaks it."""
        self._record(actor, target, command, outcome, detail, False)

    def _record(self, actor: Actor, target: Target, command: str, outcome: str, detail: str,
                now: bool) -> None:  # fmt: skip
        """``now``: written before this returns (StoreError if it cannot be), after the
        rows posted before it; else posted."""
        write = self.audit_log.record_in_turn if now else self.audit_log.post
        write(
            f"console.{command}",
            user=actor.user,
            address=actor.address,
            target=target.id,
            outcome=outcome,
            detail=f"{actor.door}: {detail}" if detail else actor.door,
            session=actor.session,  # as its door knows it: never guessed from a name
        )

    def _mark(self, actor: Actor, target: Target, label: str, *, everyone: bool = True) -> None:
        """A marker in the recordings of the VM's open sessions (``everyone``), or in the
        caller's own session's only."""
        if everyone:
            target.hub.mark(label)
            return
        own = actor.session
        for session in target.hub.sessions:
            if session.recording is not None and session.id == own:
                session.recording.marker(label)


def _label(command: str, keys: Sequence[str]) -> str:
    names = {"sysrq": "SysRq", "nmi": "NMI", "reset": "hard reset", "restart": "restart"}
    name = names.get(command, command)
    return f"{name} {''.join(keys)}" if keys else name
