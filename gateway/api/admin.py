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

from gateway.access import audit, rbac
from gateway.access.errors import AuthorizationError, ConnectSessionError
from gateway.api.auth import authenticate, bearer, record
from gateway.api.context import Caller, client_address, context_of
from gateway.api.errors import CONSOLE_DISABLED, NO_PERMISSION, PORT_DISABLED, ArmError
from gateway.console.hub import ConsoleError, SysRqNotSupported
from gateway.console.sysrq import SysRqError, parse_sysrq
from gateway.machines.base import MachineError

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
    """Send an NMI, a hard reset or SysRq to the session's VM."""
    ctx = context_of(request)
    user = authenticate(ctx, token)
    try:
        grant = ctx.sessions.lookup(session_id, user.name)
    except ConnectSessionError as err:
        raise ArmError(404, "SessionNotFound", str(err)) from None
    if grant.container != container:
        raise ArmError(404, "SessionNotFound", "This console URL is not valid. Call connect again.")
    vm = ctx.inventory.by_id(grant.vm_id)
    caller = Caller(user, client_address(request), vm.id)
    action = f"console.{command}"
    if ctx.console.disabled:  # switched off since connect: it counts now
        raise ArmError(409, "SerialConsoleDisabled", CONSOLE_DISABLED)
    if not ctx.console.port_enabled(vm):
        raise ArmError(409, "SerialPortDisabled", PORT_DISABLED)
    try:
        rbac.check(user.name, user.roles, rbac.CONNECT, vm.id)
    except AuthorizationError:
        record(ctx, caller, action, audit.DENIED, NO_PERMISSION)
        raise ArmError(403, "AuthorizationFailed", NO_PERMISSION) from None
    keys: list[str] = []
    if command == "sysrq":
        try:
            keys = parse_sysrq(str(body.commandParameters.get("SysRqCommand", "")))
        except SysRqError as err:
            raise ArmError(400, "InvalidSysRqCommand", str(err)) from None
    if vm.hub is None:
        raise ArmError(409, "ConsoleUnavailable", f"VM '{vm.name}' has no console in this lab")
    try:
        message = await vm.hub.command(command, keys)
    except SysRqNotSupported as err:
        record(ctx, caller, action, audit.DENIED, str(err))
        raise ArmError(400, "SysRqNotSupported", str(err)) from None
    except (ConsoleError, MachineError) as err:
        record(ctx, caller, action, audit.FAILED, str(err))
        raise ArmError(409, "OperationNotAllowed", str(err)) from None
    record(ctx, caller, action, audit.SUCCEEDED, "".join(keys))
    return {"requestId": body.requestId, "command": command, "status": "Succeeded",
            "message": message}  # fmt: skip
