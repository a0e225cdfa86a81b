"""The command policy: Azure's checks in Azure's order, the same for every door, audited."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.access.audit import AuditLog
from gateway.access.errors import StorageFull
from gateway.access.rbac import RoleAssignment
from gateway.access.store import LabDatabase
from gateway.console import texts
from gateway.console.policy import (
    Actor,
    CommandFailed,
    CommandPolicy,
    CommandRefused,
    Refusal,
    Target,
)
from gateway.console.sessions import Role
from gateway.machines.base import MachineCommandError, MachineStateError

SUB = "/subscriptions/5e71a1c0-0000-4000-8000-0000000000aa"
VM = f"{SUB}/resourceGroups/lab-rg/providers/Microsoft.Compute/virtualMachines/linux-1"
CONTRIBUTOR = (RoleAssignment("Virtual Machine Contributor", f"{SUB}/resourceGroups/lab-rg"),)
READER = (RoleAssignment("Reader", SUB),)


@dataclass
class FakeMachine:
    os_type: str = "linux"


@dataclass
class FakeHub:
    """Stands in for the hub: the policy only decides and records; the hub carries out."""

    machine: FakeMachine = field(default_factory=FakeMachine)
    fail: Exception | None = None
    done: list[tuple[str, list[str]]] = field(default_factory=list)
    writer: None = None  # no console open: the audit rows name no session
    sessions: frozenset[object] = frozenset()
    marks: list[str] = field(default_factory=list)  # what the consoles' recordings were told

    def mark(self, label: str) -> None:
        self.marks.append(label)

    @property
    def log(self) -> object:
        import logging

        return logging.getLogger("test")

    async def command(self, name: str, keys: list[str]) -> str:
        if self.fail is not None:
            raise self.fail
        self.done.append((name, keys))
        return texts.SUCCESS[name]


@dataclass
class Switches:
    disabled: bool = False
    port: bool = True


@pytest.fixture
def audit() -> Iterator[AuditLog]:
    db = LabDatabase(":memory:")
    yield AuditLog(db)
    db.close()


def _policy(audit: AuditLog, switches: Switches) -> CommandPolicy:
    return CommandPolicy(
        audit, console_disabled=lambda: switches.disabled, port_enabled=lambda _vm: switches.port
    )


def _target(hub: FakeHub) -> Target:
    return Target(VM, "linux-1", hub)  # type: ignore[arg-type]


ALICE = Actor("alice", CONTRIBUTOR, "127.0.0.1:5000", "websocket")


async def test_an_allowed_command_is_done_and_audited(audit: AuditLog) -> None:
    hub = FakeHub()
    message = await _policy(audit, Switches()).run(ALICE, _target(hub), "sysrq", ["h"])
    assert message == "Successfully sent SysRq command"
    assert hub.done == [("sysrq", ["h"])]
    allowed, done = audit.query()
    assert (done.action, done.user, done.target, done.outcome) == (
        "console.sysrq", "alice", VM, "succeeded"
    )  # fmt: skip
    assert done.detail == "websocket: h"
    assert allowed.outcome == "allowed"  # recorded before it acted


@pytest.mark.parametrize(
    ("switches", "actor", "os", "refusal", "text"),
    [
        (Switches(disabled=True, port=False), ALICE, "linux", Refusal.CONSOLE_DISABLED,
         texts.CONSOLE_DISABLED),
        (Switches(port=False), Actor("bob", READER, "", "ssh"), "linux", Refusal.PORT_DISABLED,
         texts.PORT_DISABLED),
        (Switches(), Actor("bob", READER, "", "ssh"), "linux", Refusal.FORBIDDEN,
         texts.NO_PERMISSION),
        (Switches(), Actor("alice", CONTRIBUTOR, "", "websocket", Role.WATCHER), "windows",
         Refusal.READ_ONLY, texts.READ_ONLY),
        (Switches(), ALICE, "windows", Refusal.NOT_SUPPORTED, texts.SYSRQ_LINUX_ONLY),
    ],
    ids=["console-off-first", "port-off-before-role", "role", "watcher", "sysrq-windows"],
)  # fmt: skip
async def test_refusals_come_in_azures_order_and_are_audited(
    audit: AuditLog, switches: Switches, actor: Actor, os: str, refusal: Refusal, text: str
) -> None:
    hub = FakeHub(FakeMachine(os))
    with pytest.raises(CommandRefused) as refused:
        await _policy(audit, switches).run(actor, _target(hub), "sysrq", ["b"])
    assert refused.value.refusal is refusal
    assert str(refused.value) == text
    assert hub.done == []
    (row,) = audit.query()
    assert row.outcome == "denied"


async def test_the_switches_are_read_at_each_command(audit: AuditLog) -> None:
    """A console disabled after the policy was made refuses the next command."""
    switches = Switches()
    policy = _policy(audit, switches)
    hub = FakeHub()
    await policy.run(ALICE, _target(hub), "nmi")
    switches.disabled = True
    with pytest.raises(CommandRefused):
        await policy.run(ALICE, _target(hub), "nmi")
    assert hub.done == [("nmi", [])]


async def test_a_wrong_power_state_is_a_refusal_and_a_monitor_failure_a_failure(
    audit: AuditLog,
) -> None:
    hub = FakeHub(fail=MachineStateError("VM 'linux-1' is stopped: start it first"))
    with pytest.raises(CommandRefused) as refused:
        await _policy(audit, Switches()).run(ALICE, _target(hub), "nmi")
    assert refused.value.refusal is Refusal.WRONG_STATE
    assert "start it first" in str(refused.value)
    hub.fail = MachineCommandError("the monitor did not answer in 5 s")
    with pytest.raises(CommandFailed, match="did not answer"):
        await _policy(audit, Switches()).run(ALICE, _target(hub), "nmi")
    assert [r.outcome for r in audit.query()] == ["allowed", "denied", "allowed", "failed"]


async def test_a_command_the_lab_cannot_record_is_not_done(audit: AuditLog) -> None:
    """The state folder's disk is full: the command is refused (507) and never reaches the
    guest, so no reset happens without its audit row."""
    hub = FakeHub()

    def full(*_args: object, **_kw: object) -> int:
        raise StorageFull("database or disk is full", folder="/lab")

    audit.record = full  # type: ignore[method-assign]
    with pytest.raises(CommandRefused) as refused:
        await _policy(audit, Switches()).run(ALICE, _target(hub), "reset")
    assert refused.value.refusal is Refusal.STORAGE_FULL
    assert refused.value.refusal.status == 507
    assert hub.done == []


async def test_an_unknown_command_is_refused(audit: AuditLog) -> None:
    with pytest.raises(CommandRefused) as refused:
        await _policy(audit, Switches()).run(ALICE, _target(FakeHub()), "format-disk")
    assert refused.value.refusal is Refusal.UNKNOWN


async def test_a_session_taken_over_cannot_act_while_it_drains(audit: AuditLog) -> None:
    hub = FakeHub()
    gone = Actor("alice", CONTRIBUTOR, "", "websocket", Role.WRITER, active=False)
    with pytest.raises(CommandRefused) as refused:
        await _policy(audit, Switches()).run(gone, _target(hub), "reset")
    assert refused.value.refusal is Refusal.SESSION_CLOSED
    assert hub.done == []
