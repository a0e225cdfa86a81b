"""Admin commands on Azure's shape, beside the websocket console.

``POST /n/connector/{container}/sessions/{id}/adminCommand/{nmi|reset|sysrq}`` with the
bearer token and ``{"command", "requestId", "commandParameters": {"SysRqCommand": "b"}}``:
the session URL that ``connect`` returned, with ``/client`` replaced. The session may be
open, or not yet opened (``az serial-console send`` never opens the websocket). SysRq takes
one key or a sequence (``REISUB``: one break + key each) and is refused for Windows with
Azure's text. Every command is audited. 200 means done.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from gateway.access.errors import ConnectSessionError
from gateway.api.auth import authenticate, bearer
from gateway.api.context import client_address, context_of, policy_of
from gateway.api.errors import ArmError
from gateway.console.errors import ConsoleError
from gateway.console.policy import Actor, CommandRefused, Target
from gateway.console.sessions import Role
from gateway.console.sysrq import SysRqError, parse_sysrq

router = APIRouter(tags=["Console admin commands"])


class AdminCommand(BaseModel):
    """The body az sends; every field optional but ``SysRqCommand`` for sysrq."""

    command: str | None = None
    requestId: str | None = None
    commandParameters: dict[str, Any] = Field(default_factory=dict)


@router.post("/n/connector/{container}/sessions/{session_id}/adminCommand/{command}")
async def admin_command(
    request: Request,
    container: str,
    session_id: str,
    command: Literal["nmi", "reset", "sysrq"],
    body: AdminCommand,
    token: Annotated[str | None, Depends(bearer)],
) -> dict[str, Any]:
    """Send an NMI, a hard reset or SysRq to the session's VM: the command policy decides
    (console and port enabled, the caller's role on the VM, Linux for SysRq), as for every
    door. A SysRq takes its turn behind the bytes typed on the session's console."""
    ctx = context_of(request)
    user = authenticate(ctx, token)
    try:
        grant = ctx.sessions.lookup(session_id, user.name)
    except ConnectSessionError as err:
        raise ArmError(404, "SessionNotFound", str(err)) from None
    if grant.container != container:
        raise ArmError(404, "SessionNotFound", "This console URL is not valid. Call connect again.")
    vm = ctx.inventory.by_id(grant.vm_id)
    keys: list[str] = []
    if command == "sysrq":
        try:
            keys = parse_sysrq(str(body.commandParameters.get("SysRqCommand", "")))
        except SysRqError as err:
            raise ArmError(400, "InvalidSysRqCommand", str(err)) from None
    if vm.hub is None:
        raise ArmError(409, "ConsoleUnavailable", f"VM '{vm.name}' has no console in this lab")
    # The URL's console, when open, speaks for it: a watcher's URL is read-only, and a
    # session taken over cannot act.
    opened = next((s for s in vm.hub.sessions if s.id == grant.session_id), None)
    role = opened.role if opened is not None else Role.WRITER
    active = opened is None or opened.is_open
    actor = Actor(
        user.name, user.roles, client_address(request), "adminCommand", role, active,
        opened.id if opened is not None else "",
    )  # fmt: skip
    try:
        message = await policy_of(ctx).run(actor, Target(vm.id, vm.name, vm.hub), command, keys)
    except CommandRefused as err:
        raise ArmError(err.refusal.status, err.refusal.code, str(err)) from None
    except ConsoleError as err:
        raise ArmError(409, "OperationNotAllowed", str(err)) from None
    return {"requestId": body.requestId, "command": command, "status": "Succeeded",
            "message": message}  # fmt: skip
