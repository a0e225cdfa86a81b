"""VM extensions on ARM's paths: the VM access extension, which resets a password.

Azure's answer to "I cannot log in on the serial console" is the VM access extension
(``Microsoft.OSTCExtensions``/``VMAccessForLinux``): ``PUT {vm}/extensions/{name}`` with
protected settings ``username``, ``password``, ``ssh_key``, ``reset_ssh``, ``remove_user``.
The lab carries it out inside the guest through its agent (``DiskMachine.reset_access``),
as a long-running operation: ``201`` (``200`` for an extension already there) with the
extension's body (``provisioningState`` ``Creating`` or ``Updating``) and ARM's
``Azure-AsyncOperation`` header; the poller then ``GET``s the extension (``Succeeded`` or
``Failed``, with its instance view). This is what azure-mgmt-compute's
``virtual_machine_extensions.begin_create_or_update`` follows.

Protected settings are never shown (no ``GET`` returns them), stored or logged; the audit
row names the user acted on, nothing more.

Evaluated annotations (no ``from __future__ import annotations``): FastAPI reads them.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.access import audit, rbac
from gateway.api.auth import post, record_before, require, vm_scope
from gateway.api.compute import VM, start_operation, vm_of
from gateway.api.context import Caller, Extension, context_of
from gateway.api.errors import ArmError
from gateway.lab.inventory import VmResource
from gateway.machines.base import MachineError

router = APIRouter()

EXTENSION = VM + "/extensions/{name}"
VM_ACCESS = ("Microsoft.OSTCExtensions", "VMAccessForLinux")
EXTENSION_TYPE = "Microsoft.Compute/virtualMachines/extensions"


class ExtensionProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    publisher: str
    type: str
    typeHandlerVersion: str = "1.5"
    autoUpgradeMinorVersion: bool = True
    settings: dict[str, Any] = Field(default_factory=dict)
    protectedSettings: dict[str, Any] = Field(default_factory=dict, repr=False)


class ExtensionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    location: str = ""
    properties: ExtensionProperties


def body_of(vm: VmResource, ext: Extension) -> dict[str, Any]:
    ok = ext.state == "Succeeded"
    status = {
        "code": f"ProvisioningState/{ext.state.lower()}",
        "level": "Info" if ok or ext.state in ("Creating", "Updating") else "Error",
        "displayStatus": f"Provisioning {ext.state.lower()}",
        "message": ext.message,
    }
    return {
        "id": f"{vm.id}/extensions/{ext.name}",
        "name": ext.name,
        "type": EXTENSION_TYPE,
        "location": vm.location,
        "properties": {
            "publisher": ext.publisher,
            "type": ext.type,
            "typeHandlerVersion": ext.version,
            "autoUpgradeMinorVersion": ext.auto_upgrade,
            "settings": ext.settings,
            "provisioningState": ext.state,
            "instanceView": {
                "name": ext.name,
                "type": ext.type,
                "typeHandlerVersion": ext.version,
                "statuses": [status],
            },
        },
    }


def _access(settings: dict[str, Any]) -> dict[str, Any]:
    """VMAccessForLinux's protected settings, checked: what ``reset_access`` takes."""

    def text(key: str) -> str:
        value = settings.get(key, "")
        if not isinstance(value, str):
            raise ArmError(400, "InvalidParameter", f"protectedSettings.{key} must be a string.")
        return value

    def flag(key: str) -> bool:
        value = settings.get(key, False)
        return value is True or (isinstance(value, str) and value.lower() == "true")

    user, password, key = text("username"), text("password"), text("ssh_key")
    if not (user or flag("reset_ssh")):
        raise ArmError(
            400,
            "InvalidParameter",
            "VMAccessForLinux needs protectedSettings.username (with a password, an ssh_key or "
            "remove_user), or reset_ssh.",
        )
    if user and not (password or key or flag("remove_user")):
        raise ArmError(
            400,
            "InvalidParameter",
            f"Nothing to do for user '{user[:64]}': give a password, an ssh_key or remove_user.",
        )
    return {"user": user, "password": password, "ssh_key": key,
            "reset_ssh": flag("reset_ssh"), "remove_user": flag("remove_user")}  # fmt: skip


@router.put(EXTENSION, tags=["virtual machines"], status_code=201)
async def put_extension(
    request: Request,
    name: str,
    body: ExtensionBody,
    caller: Annotated[
        Caller, require(rbac.VM_EXTENSION_WRITE, vm_scope, audit_as=rbac.VM_EXTENSION_WRITE)
    ],
) -> Response:
    """Create or update an extension: the VM access extension (``VMAccessForLinux``) runs
    in the guest through its agent. 201 (or 200) and ``Azure-AsyncOperation``."""
    ctx = context_of(request)
    vm = vm_of(request)
    props = body.properties
    if (props.publisher, props.type) != VM_ACCESS:
        raise ArmError(
            400,
            "InvalidParameter",
            f"The lab runs the VM access extension only ({'/'.join(VM_ACCESS)}), not "
            f"'{props.publisher[:64]}/{props.type[:64]}'.",
        )
    access = _access(props.protectedSettings)
    reset = getattr(vm.machine, "reset_access", None)
    if reset is None:
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"VM '{vm.name}' has no VM agent to run the VM access extension: only disk VMs "
            "([vms.image] disk, with qemu-guest-agent) run it.",
        )
    existing = context_of(request).extensions.of(vm).get(name.lower())
    ext = Extension(name if existing is None else existing.name, props.publisher, props.type,
                    props.typeHandlerVersion, props.autoUpgradeMinorVersion, props.settings,
                    state="Creating" if existing is None else "Updating")  # fmt: skip
    action = rbac.VM_EXTENSION_WRITE
    acted_on = f"user {access['user']}" if access["user"] else "sshd"
    await record_before(ctx, caller, action, audit.ALLOWED, f"VMAccessForLinux: {acted_on}",
                        target=vm.id)  # fmt: skip

    async def outcome() -> str:
        try:
            result = await reset(**access)
        except (MachineError, ValueError) as err:
            ext.state, ext.message = "Failed", str(err)
            post(ctx, caller, action, audit.FAILED, str(err), target=vm.id)
            raise
        if result.code != 0:
            ext.state = "Failed"
            ext.message = f"Enable failed: {(result.stderr or result.stdout).strip()[-1000:]}"
            post(ctx, caller, action, audit.FAILED, ext.message, target=vm.id)
            raise MachineError(ext.message)
        ext.state, ext.message = "Succeeded", f"Enable succeeded: {result.stdout.strip()}"
        post(ctx, caller, action, audit.SUCCEEDED, acted_on, target=vm.id)
        return ""

    ctx.extensions.of(vm)[name.lower()] = ext
    headers = await start_operation(request, vm, action, outcome)
    del headers["Location"]  # a PUT's poller reads the extension itself once it is done
    return JSONResponse(
        body_of(vm, ext), status_code=201 if existing is None else 200, headers=headers
    )


@router.get(EXTENSION, tags=["virtual machines"])
async def get_extension(
    request: Request,
    name: str,
    caller: Annotated[Caller, require(rbac.VM_EXTENSION_READ, vm_scope)],
) -> dict[str, Any]:
    """An extension of the VM, with its provisioning state (never its protected settings)."""
    vm = vm_of(request)
    ext = context_of(request).extensions.of(vm).get(name.lower())
    if ext is None:
        raise ArmError(
            404,
            "NotFound",
            f"The extension '{name[:64]}' of VM '{vm.name}' was not found: PUT it first.",
        )
    return body_of(vm, ext)


@router.get(VM + "/extensions", tags=["virtual machines"])
async def list_extensions(
    request: Request,
    caller: Annotated[Caller, require(rbac.VM_EXTENSION_READ, vm_scope)],
) -> dict[str, Any]:
    """The VM's extensions."""
    vm = vm_of(request)
    return {"value": [body_of(vm, e) for e in context_of(request).extensions.of(vm).values()]}
