"""The lab's services, as every door reaches them: ``LabContext``.

The lab runtime builds one (the HTTP door's ``gateway.api.context.ApiContext`` is a
``LabContext`` with what only HTTP keeps) and hands it to each door. ``service_of(ctx)`` and
``policy_of(ctx)`` give every door (websocket, adminCommand, SSH, RFC 2217) the same
console service and command policy. Nothing here knows a door's protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.access.audit import AuditLog
from gateway.access.connect_sessions import ConnectSessions
from gateway.access.signing import UrlSigner
from gateway.access.tokens import TokenService
from gateway.access.users import Directory
from gateway.console.policy import CommandPolicy
from gateway.console.service import ConsoleService
from gateway.lab.inventory import ConsoleState, Inventory
from gateway.recordings.recorder import Recorder


@dataclass(eq=False)
class LabContext:
    """The lab's state and services, one per lab."""

    inventory: Inventory
    directory: Directory
    tokens: TokenService
    audit: AuditLog
    sessions: ConnectSessions
    console: ConsoleState
    signer: UrlSigner
    idle_timeout: float = 0.0  # 0: off
    replay_bytes: int = 65536
    session_buffer: int = 1 << 20  # output queued per console client before it is cut off
    recorder: Recorder | None = None  # every console session's recording (None: not kept)


def policy_of(ctx: LabContext) -> CommandPolicy:
    """The lab's command policy, with its switches read at each command."""
    return CommandPolicy(
        ctx.audit,
        console_disabled=lambda: ctx.console.disabled,
        port_enabled=lambda vm_id: ctx.console.port_enabled(ctx.inventory.by_id(vm_id)),
    )


def service_of(ctx: LabContext) -> ConsoleService:
    """The lab's console service, for any door."""
    return ConsoleService(
        ctx.audit,
        policy_of(ctx),
        lambda: (vm.hub for vm in ctx.inventory.all_machines() if vm.hub is not None),
        session_buffer=ctx.session_buffer,
        recorder=ctx.recorder,
    )
