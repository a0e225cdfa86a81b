"""What the console core tells a session's recording (``gateway.console.recording``), with
a recording that keeps the calls: every door gets this without code of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.access.audit import AuditLog
from gateway.access.rbac import RoleAssignment
from gateway.access.store import LabDatabase
from gateway.console import texts
from gateway.console.bootlog import LogRead
from gateway.console.frames import CloseCode
from gateway.console.policy import Actor, CommandPolicy, Target
from gateway.console.service import ConsoleService
from gateway.console.sessions import Closing, ConsoleSession, Notice, Output, TakenOver

SUB = "/subscriptions/5e71a1c0-0000-4000-8000-0000000000aa"
VM = f"{SUB}/resourceGroups/lab-rg/providers/Microsoft.Compute/virtualMachines/linux-1"
CONTRIBUTOR = (RoleAssignment("Virtual Machine Contributor", f"{SUB}/resourceGroups/lab-rg"),)


@dataclass
class Kept:
    """A recording that keeps what it is told."""

    records_input: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)

    def took(self, items: list[object]) -> None:
        self.calls.append(("took", list(items)))

    def typed(self, data: bytes) -> None:
        self.calls.append(("typed", data))

    def marker(self, label: str) -> None:
        self.calls.append(("marker", label))

    def message(self, text: str) -> None:
        self.calls.append(("message", text))

    def ended(self, how: str, message: str = "") -> None:
        self.calls.append(("ended", (how, message)))


@dataclass
class KeepingRecorder:
    records_input: bool = False
    started: dict[str, Kept] = field(default_factory=dict)
    doors: dict[str, str] = field(default_factory=dict)

    def start(self, session: ConsoleSession, *, vm_id: str, door: str) -> Kept:
        kept = self.started[session.id] = Kept(self.records_input)
        self.doors[session.id] = door
        return kept


@dataclass
class Machine:
    os_type: str = "linux"


class Hub:
    """The hub's side the service and the policy use: sessions, one writer, commands."""

    def __init__(self) -> None:
        self.machine = Machine()
        self.sessions: set[ConsoleSession] = set()
        self.writer: ConsoleSession | None = None
        import logging

        self.log = logging.getLogger("test")

    def attach(
        self, session: ConsoleSession, resume: int | None
    ) -> tuple[LogRead, ConsoleSession | None]:
        displaced = self.writer
        if displaced is not None:
            displaced.push_item(TakenOver(session.user))
            displaced.close(Closing(CloseCode.TAKEN_OVER, "taken over", texts.TAKEOVER))
            self.sessions.discard(displaced)
        self.writer = session
        self.sessions.add(session)
        return LogRead(b"", 0, 0, False), displaced

    def detach(self, session: ConsoleSession) -> None:
        self.sessions.discard(session)

    def mark(self, label: str) -> None:
        for session in self.sessions:
            if session.recording is not None:
                session.recording.marker(label)

    async def command(self, name: str, keys: list[str]) -> str:
        return texts.SUCCESS[name]


@pytest.fixture
def audit() -> Iterator[AuditLog]:
    db = LabDatabase(":memory:")
    yield AuditLog(db)
    db.close()


def _service(audit: AuditLog, recorder: KeepingRecorder, hub: Hub) -> ConsoleService:
    policy = CommandPolicy(audit, console_disabled=lambda: False, port_enabled=lambda _: True)
    return ConsoleService(audit, policy, lambda: [hub], recorder=recorder)  # type: ignore[list-item]


def _actor(user: str, session: str = "") -> Actor:
    """``user`` at the SSH door; ``session``: the console session its door gives it."""
    return Actor(user, CONTRIBUTOR, "127.0.0.1:1", "ssh", session=session)


async def test_a_session_is_recorded_from_banner_to_end_with_the_takeover(
    audit: AuditLog,
) -> None:
    recorder, hub = KeepingRecorder(), Hub()
    service = _service(audit, recorder, hub)
    target = Target(VM, "linux-1", hub)  # type: ignore[arg-type]
    first = service.attach(target, _actor("alice"), "s-alice").session
    first.push_output(0, b"login: ")
    assert await first.take() == [Output(0, b"login: ")]
    await service.policy.run(_actor("alice", "s-alice"), target, "sysrq", ["h"])
    service.attach(target, _actor("carol"), "s-carol")
    await first.take()  # the door takes what is left: the takeover
    service.detach(target, _actor("alice", "s-alice"), first)

    alice = recorder.started["s-alice"].calls
    assert recorder.doors["s-alice"] == "ssh"
    assert alice[0] == ("message", texts.BANNER)
    assert alice[1] == ("took", [Output(0, b"login: ")])
    assert alice[2] == ("marker", "SysRq h by alice (ssh)")
    assert alice[3] == ("took", [TakenOver("carol")])
    assert alice[4] == ("ended", ("taken over", texts.TAKEOVER))
    carol = recorder.started["s-carol"].calls
    assert ("marker", "takeover: carol took the console over from alice") in carol
    rows = audit.query(limit=100)
    assert {(r.action, r.session) for r in rows} >= {
        ("console.connect", "s-alice"),
        ("console.sysrq", "s-alice"),
        ("console.takeover", "s-carol"),
        ("console.disconnect", "s-alice"),
    }


async def test_a_refused_command_is_marked_in_the_callers_recording_only(
    audit: AuditLog,
) -> None:
    recorder, hub = KeepingRecorder(), Hub()
    service = _service(audit, recorder, hub)
    target = Target(VM, "linux-1", hub)  # type: ignore[arg-type]
    service.attach(target, _actor("alice"), "s-alice")
    reader = Actor("bob", (RoleAssignment("Reader", SUB),), "127.0.0.1:2", "websocket")
    with pytest.raises(Exception, match="required permissions"):
        await service.policy.run(reader, target, "nmi")
    assert not [c for c in recorder.started["s-alice"].calls if c[0] == "marker"]


async def test_the_user_is_told_at_connect_when_typed_bytes_are_recorded(
    audit: AuditLog,
) -> None:
    for records_input in (False, True):
        recorder, hub = KeepingRecorder(records_input), Hub()
        service = _service(audit, recorder, hub)
        target = Target(VM, "linux-1", hub)  # type: ignore[arg-type]
        session = service.attach(target, _actor("alice"), "s1").session
        first = await session.take() if records_input else []
        if records_input:
            assert first == [Notice("recording", texts.INPUT_RECORDED, ok=True)]
        else:
            session.push_output(0, b"x")
            assert await session.take() == [Output(0, b"x")]  # no notice ahead of it
