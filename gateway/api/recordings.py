"""Recorded console sessions on ARM's paths, beside ``connect``: list, get, download.

For a VM (``.../virtualMachines/{vm}``) and a scale-set instance
(``.../virtualMachineScaleSets/{set}/virtualMachines/{n}``), under
``/providers/Microsoft.SerialConsole/serialPorts/0``:

- ``GET .../sessions``: the port's recorded sessions as ARM resources, oldest first
  (``name`` = the session id; ``properties``: user, door, role, state, startTime, endTime,
  bytes, endReason, inputRecorded, truncated);
- ``GET .../sessions/{id}``: one of them;
- ``GET .../sessions/{id}/recording``: its asciicast v2 file (``application/x-asciicast``,
  ``Range`` and ``If-Range`` honoured, so a browser's player can fetch it or seek).

The roles that may connect may read the recordings (``serialPorts/connect/action`` on the
VM); a Reader is refused with Azure's text, as ``connect`` refuses it. Downloads and
refusals are audited (``recording.read``) with the session they are about.

Evaluated annotations (no ``from __future__ import annotations``): FastAPI reads the
``require`` dependency of each route from them.
"""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from gateway.access import audit, rbac
from gateway.access.errors import StoreError
from gateway.api.auth import instance_scope, require, vm_scope
from gateway.api.context import ApiContext, Caller, context_of
from gateway.api.errors import NO_PERMISSION, ArmError
from gateway.lab.inventory import PORT_NAME, VmResource
from gateway.recordings import RecordingNotFound
from gateway.recordings.cast import CONTENT_TYPE
from gateway.recordings.index import RecordingRow
from gateway.recordings.recorder import Recorder

router = APIRouter()

SUB = "/subscriptions/{subscription_id}"
VM = SUB + "/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachines/{vm_name}"
INSTANCE = (
    SUB + "/resourceGroups/{resource_group}/providers/Microsoft.Compute"
    "/virtualMachineScaleSets/{scale_set}/virtualMachines/{instance_id}"
)
SESSIONS = "/providers/Microsoft.SerialConsole/serialPorts/{port}/sessions"
ACTION = "recording.read"


def _vm(ctx: ApiContext, params: dict[str, str]) -> VmResource:
    if params["port"] != PORT_NAME:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The serial port '{params['port'][:64]}' was not found: virtual machines in this "
            f"lab have one serial port, '{PORT_NAME}'.",
        )
    if "scale_set" in params:
        return ctx.inventory.instance(
            params["resource_group"], params["scale_set"], params["instance_id"]
        )
    return ctx.inventory.vm(params["resource_group"], params["vm_name"])


def _recorder(ctx: ApiContext) -> Recorder:
    if ctx.recorder is None:
        raise ArmError(
            404,
            "RecordingsNotKept",
            "This lab keeps no session recordings: turn them on in the lab file "
            "([recordings] enabled = true) and run it again.",
        )
    return ctx.recorder


def _find(ctx: ApiContext, vm: VmResource, session_id: str) -> tuple[RecordingRow, Any]:
    try:
        return _recorder(ctx).find(vm.id, session_id)
    except RecordingNotFound as err:
        raise ArmError(404, "SessionNotFound", str(err)) from None
    except StoreError as err:
        raise ArmError(503, "ServiceUnavailable", f"The lab cannot read its index: {err}") from None


def _sessions_routes(prefix: str, scope_of: Callable[..., str], tag: str) -> None:
    allowed = require(rbac.CONNECT, scope_of, audit_as=ACTION, denied_message=NO_PERMISSION)

    @router.get(prefix + SESSIONS, tags=[tag], name=f"list recorded sessions ({tag})")
    async def list_sessions(request: Request, caller: Annotated[Caller, allowed]) -> dict[str, Any]:
        """The serial port's recorded console sessions, oldest first."""
        ctx = context_of(request)
        vm = _vm(ctx, dict(request.path_params))
        try:
            rows = _recorder(ctx).sessions(vm.id)
        except StoreError as err:
            raise ArmError(
                503, "ServiceUnavailable", f"The lab cannot read its index: {err}"
            ) from None
        return {"value": [row.as_resource(vm.port_id) for row in rows]}

    @router.get(prefix + SESSIONS + "/{session_id}", tags=[tag], name=f"get session ({tag})")
    async def get_session(
        request: Request, session_id: str, caller: Annotated[Caller, allowed]
    ) -> dict[str, Any]:
        """One recorded session."""
        ctx = context_of(request)
        vm = _vm(ctx, dict(request.path_params))
        row, _ = _find(ctx, vm, session_id)
        return row.as_resource(vm.port_id)

    @router.get(
        prefix + SESSIONS + "/{session_id}/recording",
        tags=[tag],
        name=f"download recording ({tag})",
        response_class=FileResponse,
        responses={200: {"content": {CONTENT_TYPE: {}}}, 206: {"description": "A range"}},
    )
    async def get_recording(
        request: Request, session_id: str, caller: Annotated[Caller, allowed]
    ) -> FileResponse:
        """The session's asciicast v2 recording (``Range`` requests answered with 206)."""
        ctx = context_of(request)
        vm = _vm(ctx, dict(request.path_params))
        row, path = _find(ctx, vm, session_id)
        await asyncio.to_thread(  # audited before it is served: off the loop
            ctx.audit.record_in_turn, ACTION, user=caller.user.name, address=caller.address,
            target=vm.id, outcome=audit.ALLOWED, detail=request.headers.get("range", "")[:100],
            session=row.id,
        )  # fmt: skip
        return FileResponse(
            path,
            media_type=CONTENT_TYPE,
            filename=f"{vm.name}-{row.id}.cast",
            content_disposition_type="inline",
        )


_sessions_routes(VM, vm_scope, "recorded sessions (VM)")
_sessions_routes(INSTANCE, instance_scope, "recorded sessions (scale-set instance)")
