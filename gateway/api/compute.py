"""Microsoft.Compute on ARM's paths: VMs, scale sets and their instances; power actions;
``retrieveBootDiagnosticsData``.

Power actions are ARM's long-running operations (``operations``): 202 with
``Azure-AsyncOperation``, ``Location`` and ``Retry-After``; the status resource is
``.../providers/Microsoft.Compute/locations/{location}/operations/{id}``. The power
state shows in the instance view as ``PowerState/<state>`` (``$expand=instanceView`` or
``.../instanceView``).

A power action is audited before it acts (``allowed``, then its outcome): when the audit
log cannot take that first row (a full disk) the action answers 507 and the machine is
not touched, so no restart is ever done without its record.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.access import audit, rbac
from gateway.api.auth import (
    authenticate,
    bearer,
    group_scope,
    instance_scope,
    post,
    record_before,
    require,
    scale_set_scope,
    vm_scope,
)
from gateway.api.auth import subscription_scope as sub_scope
from gateway.api.bootdiag import log_path, screenshot_path
from gateway.api.context import ApiContext, Caller, context_of
from gateway.api.errors import ArmError, error_response
from gateway.api.operations import FAILED, SUCCEEDED, Outcome
from gateway.lab.inventory import VMSS_TYPE, ScaleSetResource, VmResource, vm_size
from gateway.machines.agent import AgentError
from gateway.machines.base import Machine, MachineError, MachineStateError, PowerState
from gateway.machines.disk import ScriptResult

router = APIRouter()

SUB = "/subscriptions/{subscription_id}"
GROUP = SUB + "/resourceGroups/{resource_group}"
COMPUTE = GROUP + "/providers/Microsoft.Compute"
VM = COMPUTE + "/virtualMachines/{vm_name}"
VMSS = COMPUTE + "/virtualMachineScaleSets/{scale_set}"
INSTANCE = VMSS + "/virtualMachines/{instance_id}"
LOCATIONS = "/providers/Microsoft.Compute/locations"
RETRY_AFTER = 1  # seconds between polls: the lab's machines take seconds, not minutes

Expand = Annotated[str | None, Query(alias="$expand", max_length=64)]

_DISPLAY = {
    PowerState.DEALLOCATED: "VM deallocated",
    PowerState.STARTING: "VM starting",
    PowerState.RUNNING: "VM running",
    PowerState.STOPPING: "VM stopping",
    PowerState.STOPPED: "VM stopped",
    PowerState.PANICKED: "VM panicked",
}


# -- bodies ---------------------------------------------------------------------------------


def _provisioning_status(vm: VmResource) -> dict[str, Any]:
    """The instance view's provisioning status; a failure carries Azure's code and text."""
    state = vm.provisioning_state.lower()
    error = vm.provisioning.error if vm.provisioning is not None else None
    if state == "failed" and error is not None:
        return {
            "code": f"ProvisioningState/failed/{error['code']}",
            "level": "Error",
            "displayStatus": "Provisioning failed",
            "message": error["message"],
        }
    return {
        "code": f"ProvisioningState/{state}",
        "level": "Info",
        "displayStatus": f"Provisioning {state}",
    }


def instance_view(vm: VmResource) -> dict[str, Any]:
    state = vm.machine.power_state
    view: dict[str, Any] = {
        "computerName": vm.hostname,
        "osName": vm.os_type,
        "bootDiagnostics": {"status": None} if vm.boot_diagnostics else None,
        "statuses": [
            _provisioning_status(vm),
            {
                "code": f"PowerState/{state.value}",
                "level": "Info",
                "displayStatus": _DISPLAY[state],
            },
        ],
    }
    generation = getattr(vm.machine, "generation", None)
    if generation is not None:  # a disk VM: its firmware, as Azure names it
        view["hyperVGeneration"] = f"V{generation}"
    return view


def vm_body(vm: VmResource, expand: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "vmId": vm.vm_id,
        "hardwareProfile": {"vmSize": vm.vm_size},
        "storageProfile": {"osDisk": {"osType": vm.os_type.capitalize()}},
        "osProfile": (
            vm.provisioning.profile.arm()
            if vm.provisioning is not None
            else {"computerName": vm.hostname, "adminUsername": "root"}
        ),
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": vm.boot_diagnostics}},
        "provisioningState": vm.provisioning_state,
    }
    if vm.is_instance:
        properties["latestModelApplied"] = vm.latest_model
    if expand is not None and expand.lower() == "instanceview":
        properties["instanceView"] = instance_view(vm)
    body: dict[str, Any] = {
        "id": vm.id,
        "name": vm.name,
        "type": vm.type,
        "location": vm.location,
        "properties": properties,
    }
    if vm.is_instance:
        body["instanceId"] = vm.instance_id
    return body


def scale_set_body(vmss: ScaleSetResource) -> dict[str, Any]:
    return {
        "id": vmss.id,
        "name": vmss.name,
        "type": VMSS_TYPE,
        "location": vmss.location,
        "sku": {"name": vm_size(vmss.memory_mb), "tier": "Standard", "capacity": vmss.capacity},
        "properties": {
            "provisioningState": vmss.provisioning_state,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {"osDisk": {"osType": vmss.os_type.capitalize()}},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": vmss.boot_diagnostics}},
            },
        },
    }


# -- reads ----------------------------------------------------------------------------------


@router.get(SUB + "/providers/Microsoft.Compute/virtualMachines", tags=["virtual machines"])
async def list_vms_in_subscription(
    request: Request,
    token: Annotated[str | None, Depends(bearer)],
    expand: Expand = None,
) -> dict[str, Any]:
    """Every VM of the subscription that the caller may read (ARM lists what you can see)."""
    ctx = context_of(request)
    user = authenticate(ctx, token)
    sub_scope(ctx, request.path_params)
    visible = [
        vm for vm in ctx.inventory.vms.values() if rbac.is_allowed(user.roles, rbac.VM_READ, vm.id)
    ]
    return {"value": [vm_body(vm, expand) for vm in visible]}


@router.get(SUB + "/providers/Microsoft.Compute/virtualMachineScaleSets", tags=["scale sets"])
async def list_scale_sets_in_subscription(
    request: Request, token: Annotated[str | None, Depends(bearer)]
) -> dict[str, Any]:
    """Every scale set of the subscription that the caller may read (ARM's ListAll)."""
    ctx = context_of(request)
    user = authenticate(ctx, token)
    sub_scope(ctx, request.path_params)
    visible = [
        s
        for s in ctx.inventory.scale_sets.values()
        if rbac.is_allowed(user.roles, rbac.VMSS_READ, s.id)
    ]
    return {"value": [scale_set_body(s) for s in visible]}


@router.get(GROUP, tags=["resource groups"])
async def get_group(
    request: Request, caller: Annotated[Caller, require(rbac.RESOURCE_GROUP_READ, group_scope)]
) -> dict[str, Any]:
    info = context_of(request).inventory.group(request.path_params["resource_group"])
    return {
        "id": info.id,
        "name": info.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": info.location,
        "properties": {"provisioningState": "Succeeded"},
    }


@router.get(COMPUTE + "/virtualMachines", tags=["virtual machines"])
async def list_vms(
    request: Request,
    caller: Annotated[Caller, require(rbac.VM_READ, group_scope)],
    expand: Expand = None,
) -> dict[str, Any]:
    inv = context_of(request).inventory
    group = inv.group(request.path_params["resource_group"]).name
    return {"value": [vm_body(vm, expand) for vm in inv.vms.values() if vm.resource_group == group]}


@router.get(VM, tags=["virtual machines"])
async def get_vm(
    request: Request,
    vm_name: str,
    caller: Annotated[Caller, require(rbac.VM_READ, vm_scope)],
    expand: Expand = None,
) -> dict[str, Any]:
    """A VM; ``$expand=instanceView`` adds its power state (``PowerState/running``...)."""
    return vm_body(vm_of(request), expand)


@router.get(VM + "/instanceView", tags=["virtual machines"])
async def get_vm_instance_view(
    request: Request, vm_name: str, caller: Annotated[Caller, require(rbac.VM_READ, vm_scope)]
) -> dict[str, Any]:
    return instance_view(vm_of(request))


@router.get(COMPUTE + "/virtualMachineScaleSets", tags=["scale sets"])
async def list_scale_sets(
    request: Request, caller: Annotated[Caller, require(rbac.VMSS_READ, group_scope)]
) -> dict[str, Any]:
    inv = context_of(request).inventory
    group = inv.group(request.path_params["resource_group"]).name
    return {
        "value": [scale_set_body(s) for s in inv.scale_sets.values() if s.resource_group == group]
    }


@router.get(VMSS, tags=["scale sets"])
async def get_scale_set(
    request: Request, caller: Annotated[Caller, require(rbac.VMSS_READ, scale_set_scope)]
) -> dict[str, Any]:
    p = request.path_params
    return scale_set_body(
        context_of(request).inventory.scale_set(p["resource_group"], p["scale_set"])
    )


@router.get(VMSS + "/virtualMachines", tags=["scale sets"])
async def list_instances(
    request: Request,
    caller: Annotated[Caller, require(rbac.VMSS_VM_READ, scale_set_scope)],
    expand: Expand = None,
) -> dict[str, Any]:
    p = request.path_params
    vmss = context_of(request).inventory.scale_set(p["resource_group"], p["scale_set"])
    return {"value": [vm_body(vm, expand) for vm in vmss.instances.values()]}


@router.get(INSTANCE, tags=["scale sets"])
async def get_instance(
    request: Request,
    caller: Annotated[Caller, require(rbac.VMSS_VM_READ, instance_scope)],
    expand: Expand = None,
) -> dict[str, Any]:
    return vm_body(_instance(request), expand)


@router.get(INSTANCE + "/instanceView", tags=["scale sets"])
async def get_instance_view(
    request: Request, caller: Annotated[Caller, require(rbac.VMSS_VM_READ, instance_scope)]
) -> dict[str, Any]:
    return instance_view(_instance(request))


def vm_of(request: Request) -> VmResource:
    """The VM of the request's path (ArmError 404 when there is none)."""
    p = request.path_params
    return context_of(request).inventory.vm(p["resource_group"], p["vm_name"])


def _instance(request: Request) -> VmResource:
    p = request.path_params
    return context_of(request).inventory.instance(
        p["resource_group"], p["scale_set"], p["instance_id"]
    )


# -- power actions --------------------------------------------------------------------------


async def _power(
    request: Request,
    caller: Caller,
    vm: VmResource,
    action: str,
    run: Callable[[Machine], Awaitable[object]],
) -> Response:
    """Start ``run`` on ``vm``'s machine as a long-running operation: 202 and ARM's headers.

    A machine refuses an action in the wrong state before it does anything: that refusal
    is answered at once (409 ``OperationNotAllowed``), as ARM does. The action is audited
    before it starts; a full disk refuses it (StorageFull: 507) with the machine untouched.
    """
    ctx = context_of(request)
    await record_before(ctx, caller, action, audit.ALLOWED, "started", target=vm.id)
    if vm.hub is not None:  # the VM's open consoles' recordings say who did it
        vm.hub.mark(f"power: {action.rsplit('/', 2)[-2]} by {caller.user.name} (REST)")

    async def outcome() -> str | dict[str, Any]:
        try:
            result = await run(vm.machine)
        except MachineError as err:
            _record_outcome(ctx, caller, action, audit.FAILED, str(err), vm.id)
            raise
        if isinstance(result, dict):  # a result body (Run Command's): not for the audit log
            _record_outcome(ctx, caller, action, audit.SUCCEEDED, "", vm.id)
            return result
        detail = f"{result}" if result is not None else ""
        _record_outcome(ctx, caller, action, audit.SUCCEEDED, detail, vm.id)
        return detail

    return Response(status_code=202, headers=await start_operation(request, vm, action, outcome))


async def start_operation(
    request: Request, vm: VmResource, action: str, outcome: Outcome
) -> dict[str, str]:
    """Run ``outcome`` as ``vm``'s long-running operation; ARM's headers for it
    (``Azure-AsyncOperation``, ``Location``, ``Retry-After``). A machine refuses an action
    in the wrong state before it does anything: that refusal is raised at once (409
    ``OperationNotAllowed``), as ARM answers it."""
    op = context_of(request).operations.start(action, vm.id, outcome, _failure)
    await asyncio.sleep(0)  # one turn of the loop: the machine's own state check runs
    if op.status == FAILED and op.error is not None and op.error[0] == "OperationNotAllowed":
        raise ArmError(409, *op.error)
    return _operation_headers(request, vm.location, op.id)


def _operation_headers(request: Request, location: str, operation_id: str) -> dict[str, str]:
    """ARM's headers of a long-running operation: where to poll, and how often."""
    status = _operation_url(request, location, operation_id)
    version = request.query_params.get("api-version", "")
    return {
        "Azure-AsyncOperation": f"{status}?api-version={version}",
        "Location": f"{status}?monitor=true&api-version={version}",
        "Retry-After": str(RETRY_AFTER),
    }


def _record_outcome(
    ctx: ApiContext, caller: Caller, action: str, outcome: str, detail: str, target: str
) -> None:
    """How a started action ended; its start is already recorded, so a disk that filled
    meanwhile loses this row (the store says so in its log), not the action's result."""
    post(ctx, caller, action, outcome, detail, target=target)


def _failure(err: BaseException) -> tuple[str, str] | None:
    if isinstance(err, MachineStateError):
        return "OperationNotAllowed", str(err)
    if isinstance(err, AgentError):
        return "VMAgentStatusCommunicationError", AGENT_SILENT.format(err=err)
    if isinstance(err, MachineError):
        return "InternalExecutionError", str(err)
    return None


def _operation_url(request: Request, location: str, operation_id: str) -> str:
    sub = context_of(request).inventory.subscription_id
    base = str(request.base_url).rstrip("/")
    return f"{base}/subscriptions/{sub}{LOCATIONS}/{location}/operations/{operation_id}"


@router.get(
    SUB + LOCATIONS + "/{location}/operations/{operation_id}",
    tags=["operations"],
    summary="A long-running operation's status (Azure-AsyncOperation and Location URLs)",
)
async def get_operation(
    request: Request,
    location: str,
    operation_id: str,
    token: Annotated[str | None, Depends(bearer)],
    monitor: bool = False,
) -> Response:
    """The status resource (``InProgress``, ``Succeeded``, ``Failed`` with ARM's error);
    with ``monitor=true``, as the ``Location`` URL answers: 202 while the operation runs,
    200 once it succeeded, its error once it failed."""
    ctx = context_of(request)
    authenticate(ctx, token)
    sub_scope(ctx, request.path_params)
    op = ctx.operations.get(operation_id)
    if op is None:
        raise ArmError(
            404,
            "OperationNotFound",
            f"The operation '{operation_id[:64]}' was not found: the lab keeps its newest "
            f"{ctx.operations.limit} operations while it runs.",
        )
    if not monitor:
        # Pollers wait Retry-After between polls (azure-core: 30 s without it).
        retry = {} if op.done else {"Retry-After": str(RETRY_AFTER)}
        return JSONResponse(op.body(), headers=retry)
    if not op.done:
        return Response(
            status_code=202,
            headers={"Location": str(request.url), "Retry-After": str(RETRY_AFTER)},
        )
    if op.status == SUCCEEDED:
        return JSONResponse(op.result) if op.result is not None else Response(status_code=200)
    code, message = op.error or ("OperationCanceled", "The operation was canceled.")
    return error_response(ArmError(409 if code == "OperationNotAllowed" else 500, code, message))


_ACTIONS: dict[str, tuple[str, str, Callable[[Machine], Awaitable[object]]]] = {
    "start": (rbac.VM_START, rbac.VMSS_VM_START, lambda m: m.start()),
    "powerOff": (rbac.VM_POWER_OFF, rbac.VMSS_VM_POWER_OFF, lambda m: m.stop()),
    "restart": (rbac.VM_RESTART, rbac.VMSS_VM_RESTART, lambda m: m.restart()),
    "deallocate": (rbac.VM_DEALLOCATE, rbac.VMSS_VM_DEALLOCATE, lambda m: m.deallocate()),
    "reimage": (rbac.VM_REIMAGE, rbac.VMSS_VM_REIMAGE, lambda m: _reimage(m)),
}


async def _reimage(machine: Machine) -> None:
    """Azure's reimage: the OS disk as its image has it (a disk VM's overlay thrown away)."""
    reimage = getattr(machine, "reimage", None)
    if reimage is None:
        raise MachineStateError(
            "This VM has no OS disk to reimage: only disk VMs ([vms.image] disk) can be reimaged"
        )
    await reimage()


def _power_routes(name: str, vm_action: str, vmss_action: str, run: Any) -> None:
    @router.post(VM + f"/{name}", tags=["virtual machines"], name=f"VM {name}", status_code=202)
    async def vm_power(
        request: Request,
        caller: Annotated[Caller, require(vm_action, vm_scope, audit_as=vm_action)],
    ) -> Response:
        return await _power(request, caller, vm_of(request), vm_action, run)

    @router.post(
        INSTANCE + f"/{name}", tags=["scale sets"], name=f"instance {name}", status_code=202
    )
    async def instance_power(
        request: Request,
        caller: Annotated[Caller, require(vmss_action, instance_scope, audit_as=vmss_action)],
    ) -> Response:
        return await _power(request, caller, _instance(request), vmss_action, run)

    vm_power.__doc__ = (
        f"``{name}`` the VM: 202, then poll the Azure-AsyncOperation URL until the status "
        "is Succeeded or Failed."
    )
    instance_power.__doc__ = f"``{name}`` the scale-set instance (202, as for a VM)."


for _name, (_vm_action, _vmss_action, _run) in _ACTIONS.items():
    _power_routes(_name, _vm_action, _vmss_action, _run)


# -- scale-set actions: on some instances, or all ---------------------------------------------

_SCALE_SET_ACTIONS = {
    "start": rbac.VMSS_START,
    "powerOff": rbac.VMSS_POWER_OFF,
    "restart": rbac.VMSS_RESTART,
    "deallocate": rbac.VMSS_DEALLOCATE,
    "reimage": rbac.VMSS_REIMAGE,
}


async def _instance_ids(request: Request, vmss: ScaleSetResource) -> list[VmResource]:
    """The instances a scale-set action names in ``instanceIds`` (all when it names none),
    as ARM reads the body of ``start``, ``restart``...; 400 for an id the set does not have."""
    body = await request.body()
    ids: object = None
    if body.strip():
        try:
            ids = json.loads(body).get("instanceIds")
        except (ValueError, AttributeError):
            raise ArmError(
                400, "InvalidRequestContent", "The request content was invalid JSON."
            ) from None
    if ids is None or ids == ["*"]:
        return list(vmss.instances.values())
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArmError(400, "InvalidParameter", "instanceIds must be an array of strings.")
    chosen = []
    for instance_id in ids:
        vm = vmss.instances.get(instance_id)
        if vm is None:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The provided instanceId {instance_id[:16]} is not an active Virtual Machine "
                f"Scale Set VM instanceId. The set's are: {', '.join(vmss.instances)}.",
            )
        chosen.append(vm)
    return chosen


def _scale_set_route(name: str, action: str) -> None:
    run = _ACTIONS[name][2]

    @router.post(VMSS + f"/{name}", tags=["scale sets"], name=f"scale set {name}", status_code=202)
    async def scale_set_power(
        request: Request,
        caller: Annotated[Caller, require(action, scale_set_scope, audit_as=action)],
    ) -> Response:
        ctx = context_of(request)
        p = request.path_params
        vmss = ctx.inventory.scale_set(p["resource_group"], p["scale_set"])
        chosen = await _instance_ids(request, vmss)
        ids = ", ".join(vm.instance_id or "" for vm in chosen)
        await record_before(ctx, caller, action, audit.ALLOWED, f"instances {ids}", target=vmss.id)
        for vm in chosen:
            if vm.hub is not None:
                vm.hub.mark(f"power: {name} of the scale set by {caller.user.name} (REST)")

        async def outcome() -> str:
            results = await asyncio.gather(*(run(vm.machine) for vm in chosen),
                                           return_exceptions=True)  # fmt: skip
            failed = [(vm, r) for vm, r in zip(chosen, results, strict=True)
                      if isinstance(r, BaseException)]  # fmt: skip
            if failed:
                vm, err = failed[0]
                detail = f"instance {vm.instance_id}: {err}"
                _record_outcome(ctx, caller, action, audit.FAILED, detail, vmss.id)
                if isinstance(err, MachineError):
                    raise type(err)(detail) from err
                raise err
            _record_outcome(ctx, caller, action, audit.SUCCEEDED, f"instances {ids}", vmss.id)
            return ""

        op = ctx.operations.start(action, vmss.id, outcome, _failure)
        return Response(status_code=202, headers=_operation_headers(request, vmss.location, op.id))

    scale_set_power.__doc__ = (
        f"``{name}`` the scale set's instances named in ``instanceIds`` (all without it): "
        "202, one long-running operation for them all."
    )


for _name, _action in _SCALE_SET_ACTIONS.items():
    _scale_set_route(_name, _action)


@router.get(VMSS + "/instanceView", tags=["scale sets"])
async def get_scale_set_instance_view(
    request: Request, caller: Annotated[Caller, require(rbac.VMSS_READ, scale_set_scope)]
) -> dict[str, Any]:
    """The scale set's instance view: its provisioning state and how many instances are
    in each power state (``virtualMachine.statusesSummary``)."""
    p = request.path_params
    vmss = context_of(request).inventory.scale_set(p["resource_group"], p["scale_set"])
    counts: dict[str, int] = {}
    for vm in vmss.instances.values():
        code = f"PowerState/{vm.machine.power_state.value}"
        counts[code] = counts.get(code, 0) + 1
    state = vmss.provisioning_state.lower()
    return {
        "virtualMachine": {
            "statusesSummary": [{"code": c, "count": n} for c, n in sorted(counts.items())]
        },
        "statuses": [
            {
                "code": f"ProvisioningState/{state}",
                "level": "Info",
                "displayStatus": f"Provisioning {state}",
            }
        ],
    }


def _size(memory_mb: int) -> dict[str, Any]:
    """The lab's one size for a VM of ``memory_mb``, as Azure lists a VM size."""
    return {
        "name": vm_size(memory_mb),
        "numberOfCores": 1,
        "osDiskSizeInMB": 1047552,
        "resourceDiskSizeInMB": 0,
        "memoryInMB": memory_mb,
        "maxDataDiskCount": 8,
    }


@router.get(VM + "/vmSizes", tags=["virtual machines"])
async def list_available_sizes(
    request: Request, caller: Annotated[Caller, require(rbac.VM_SIZES_READ, vm_scope)]
) -> dict[str, Any]:
    """The sizes the VM can be resized to: in the lab, its own."""
    return {"value": [_size(vm_of(request).memory_mb)]}


@router.get(VMSS + "/skus", tags=["scale sets"])
async def list_scale_set_skus(
    request: Request, caller: Annotated[Caller, require(rbac.VMSS_SKUS_READ, scale_set_scope)]
) -> dict[str, Any]:
    """The SKUs the scale set can take: in the lab, its own, with its capacity."""
    p = request.path_params
    vmss = context_of(request).inventory.scale_set(p["resource_group"], p["scale_set"])
    return {
        "value": [
            {
                "resourceType": "Microsoft.Compute/virtualMachineScaleSets",
                "sku": {"name": vm_size(vmss.memory_mb), "tier": "Standard"},
                "capacity": {
                    "minimum": 0,
                    "maximum": 1000,
                    "defaultCapacity": vmss.capacity,
                    "scaleType": "None",
                },
            }
        ]
    }


async def _redeploy(machine: Machine) -> None:
    """Azure's redeploy: the VM moves to a new host, so it is deallocated and started."""
    await machine.deallocate()
    await machine.start()


@router.post(VM + "/redeploy", tags=["virtual machines"], status_code=202)
async def redeploy(
    request: Request,
    caller: Annotated[Caller, require(rbac.VM_REDEPLOY, vm_scope, audit_as=rbac.VM_REDEPLOY)],
) -> Response:
    """Redeploy the VM (deallocated, then started on its "new host"): 202, as ``start``."""
    return await _power(request, caller, vm_of(request), rbac.VM_REDEPLOY, _redeploy)


@router.post(VM + "/reapply", tags=["virtual machines"], status_code=202)
async def reapply(
    request: Request,
    caller: Annotated[Caller, require(rbac.VM_REAPPLY, vm_scope, audit_as=rbac.VM_REAPPLY)],
) -> Response:
    """Reapply the VM's state (what Azure's "VM in failed state" page suggests): the lab's
    VM already runs its one model, so the operation succeeds and changes nothing."""
    vm = vm_of(request)

    async def nothing(machine: Machine) -> None:
        vm.latest_model = True

    return await _power(request, caller, vm, rbac.VM_REAPPLY, nothing)


# -- Run Command ----------------------------------------------------------------------------

# Azure's text when the VM agent does not answer (the lab's reason follows it)
AGENT_SILENT = (
    "VM has reported a failure when processing extension 'RunCommandLinux'. The VM agent "
    "did not answer: verify that the OS is up and healthy and that the VM has a running VM "
    "agent (on a disk VM, qemu-guest-agent). ({err})"
)
OUTPUT_KEPT = 4096  # Azure returns the last 4,096 bytes of each of stdout and stderr
# Linux command ids as Azure lists them: the script each runs (None: the caller's)
LINUX_COMMANDS: dict[str, str | None] = {
    "RunShellScript": None,
    "ifconfig": "ifconfig -a 2>/dev/null || ip address show",
}


class RunCommandParameter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = ""
    value: str = ""


class RunCommandInput(BaseModel):
    """Azure's ``RunCommandInput``: a command id, the script's lines, its parameters."""

    model_config = ConfigDict(extra="ignore")
    commandId: str
    script: list[str] = Field(default_factory=list)
    parameters: list[RunCommandParameter] = Field(default_factory=list)


def run_command_result(result: ScriptResult) -> dict[str, Any]:
    """Azure's ``RunCommandResult`` for a script that ran (whatever its exit code)."""
    message = (
        f"Enable succeeded: \n[stdout]\n{result.stdout[-OUTPUT_KEPT:]}\n"
        f"[stderr]\n{result.stderr[-OUTPUT_KEPT:]}\n"
    )
    return {"value": [{"code": "ProvisioningState/succeeded", "level": "Info",
                       "displayStatus": "Provisioning succeeded", "message": message}]}  # fmt: skip


def _script_of(body: RunCommandInput) -> tuple[str, list[str]]:
    if body.commandId not in LINUX_COMMANDS:
        raise ArmError(
            400,
            "InvalidParameter",
            f"The command id '{body.commandId[:64]}' is not one this VM runs: use "
            + " or ".join(LINUX_COMMANDS)
            + ".",
        )
    fixed = LINUX_COMMANDS[body.commandId]
    script = fixed if fixed is not None else "\n".join(body.script)
    if not script.strip():
        raise ArmError(400, "InvalidParameter", "RunShellScript needs a script: give its lines.")
    return script, [p.value for p in body.parameters]


def _runner(script: str, args: list[str]) -> Callable[[Machine], Awaitable[object]]:
    async def run(machine: Machine) -> dict[str, Any]:
        run_command = getattr(machine, "run_command", None)
        if run_command is None:
            raise MachineStateError(
                "This VM has no VM agent to run a command: only disk VMs ([vms.image] disk, "
                "with qemu-guest-agent) run Run Command"
            )
        return run_command_result(await run_command(script, args))

    return run


@router.post(VM + "/runCommand", tags=["virtual machines"], status_code=202)
async def vm_run_command(
    request: Request,
    body: RunCommandInput,
    caller: Annotated[Caller, require(rbac.VM_RUN_COMMAND, vm_scope, audit_as=rbac.VM_RUN_COMMAND)],
) -> Response:
    """Run Command: the script runs as root in the guest, through its VM agent (202, then
    the ``Location`` URL answers Azure's ``RunCommandResult``)."""
    script, args = _script_of(body)
    return await _power(request, caller, vm_of(request), rbac.VM_RUN_COMMAND, _runner(script, args))


@router.post(INSTANCE + "/runCommand", tags=["scale sets"], status_code=202)
async def instance_run_command(
    request: Request,
    body: RunCommandInput,
    caller: Annotated[
        Caller, require(rbac.VMSS_VM_RUN_COMMAND, instance_scope, audit_as=rbac.VMSS_VM_RUN_COMMAND)
    ],
) -> Response:
    """Run Command on a scale-set instance (as for a VM)."""
    script, args = _script_of(body)
    vm = _instance(request)
    return await _power(request, caller, vm, rbac.VMSS_VM_RUN_COMMAND, _runner(script, args))


# -- boot diagnostics -----------------------------------------------------------------------


def _boot_diagnostics(
    ctx: ApiContext, request: Request, vm: VmResource, minutes: int
) -> dict[str, Any]:
    if not vm.boot_diagnostics or vm.bootlog is None:
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Boot diagnostics is not enabled on '{vm.name}': there is no serial log to retrieve.",
        )
    base = str(request.base_url).rstrip("/")
    screenshot = None
    if getattr(vm.machine, "has_display", False):  # a disk VM's display, taken when asked
        screenshot = base + ctx.signer.sign(screenshot_path(vm.name), minutes * 60)
    return {
        "consoleScreenshotBlobUri": screenshot,
        "serialConsoleLogBlobUri": base + ctx.signer.sign(log_path(vm.name), minutes * 60),
    }


Minutes = Annotated[int, Query(alias="sasUriExpirationTimeInMinutes", ge=1, le=1440)]


@router.post(VM + "/retrieveBootDiagnosticsData", tags=["boot diagnostics"])
async def retrieve_vm_boot_diagnostics(
    request: Request,
    caller: Annotated[Caller, require(rbac.VM_BOOT_DIAGNOSTICS, vm_scope)],
    minutes: Minutes = 120,
) -> dict[str, Any]:
    """A signed URL to the VM's serial log, valid ``sasUriExpirationTimeInMinutes``."""
    return _boot_diagnostics(context_of(request), request, vm_of(request), minutes)


@router.post(INSTANCE + "/retrieveBootDiagnosticsData", tags=["boot diagnostics"])
async def retrieve_instance_boot_diagnostics(
    request: Request,
    caller: Annotated[Caller, require(rbac.VMSS_VM_BOOT_DIAGNOSTICS, instance_scope)],
    minutes: Minutes = 120,
) -> dict[str, Any]:
    """A signed URL to the instance's serial log."""
    return _boot_diagnostics(context_of(request), request, _instance(request), minutes)
