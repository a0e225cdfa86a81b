"""Microsoft.SerialConsole on ARM's paths: console service, serial ports, connect; plus
the subscription list and the audit log.

Paths and bodies follow the Microsoft.SerialConsole REST API (api-versions 2024-07-01,
2023-01-01 and 2018-05-01; ``armpath`` checks the ``api-version`` and ARM's spelling rules
before these routes see a request): the provider's operations, the console service (get,
enable, disable), serial ports (list per VM and per subscription, get, create with 201,
delete, connect) for VMs and scale-set instances; the subscription and tenant lists.

``connect`` checks in Azure's order: console enabled for the subscription, the caller's
role, the VM provisioned, running, boot diagnostics (for a scale-set instance: in the
model, and the instance on the latest model), the serial port enabled; then it makes a
one-time session (60 s, one use, bound to the caller and the VM) and answers its
websocket URL.

Every write here (console enable/disable, port PUT and DELETE, connect) stores its state
and its audit row in one ``lab.db`` transaction before it answers: on a full disk both
are refused together (507, ``errors.storage_error``) and nothing changes.
"""

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from gateway.access import audit, rbac
from gateway.access.users import User
from gateway.api.auth import (
    instance_scope,
    post,
    record,
    record_before,
    require,
    subscription_scope,
    vm_scope,
)
from gateway.api.context import ApiContext, Caller, context_of
from gateway.api.errors import (
    NO_PERMISSION,
    ArmError,
)
from gateway.console.opening import ConsoleUnavailable, check_console_enabled, check_open
from gateway.lab.inventory import PORT_NAME, PORT_TYPE, VmResource

router = APIRouter()

SUB = "/subscriptions/{subscription_id}"
PROVIDER = SUB + "/providers/Microsoft.SerialConsole"
VM = SUB + "/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachines/{vm_name}"
INSTANCE = (
    SUB + "/resourceGroups/{resource_group}/providers/Microsoft.Compute"
    "/virtualMachineScaleSets/{scale_set}/virtualMachines/{instance_id}"
)
PORTS = "/providers/Microsoft.SerialConsole/serialPorts"


# -- bodies ---------------------------------------------------------------------------------


class SerialPortProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["enabled", "disabled"]


class SerialPortBody(BaseModel):
    """``PUT .../serialPorts/0``: ``{"properties": {"state": "enabled" | "disabled"}}``."""

    model_config = ConfigDict(extra="ignore")
    properties: SerialPortProperties


# -- subscriptions and the console service --------------------------------------------------


async def _authenticated(request: Request) -> User:
    from gateway.api.auth import authenticate, bearer

    return authenticate(context_of(request), await bearer(request))


@router.get("/subscriptions", tags=["subscriptions"], summary="Subscriptions the caller can see")
async def list_subscriptions(request: Request) -> dict[str, Any]:
    # The one route without an action: like ARM, it lists the subscriptions in which the
    # caller holds any role assignment, at any scope.
    user = await _authenticated(request)
    inv = context_of(request).inventory
    scope = rbac.subscription_scope(inv.subscription_id)
    value = [inv.subscription_body()] if rbac.has_any_access(user.roles, scope) else []
    return {"value": value}


@router.get(SUB, tags=["subscriptions"], summary="One subscription")
async def get_subscription(request: Request, subscription_id: str) -> dict[str, Any]:
    """The subscription, for a caller who holds any role in it (404 otherwise, as ARM)."""
    user = await _authenticated(request)
    inv = context_of(request).inventory
    inv.check_subscription(subscription_id)
    if not rbac.has_any_access(user.roles, rbac.subscription_scope(inv.subscription_id)):
        raise ArmError(
            404, "SubscriptionNotFound", f"The subscription '{subscription_id}' could not be found."
        )
    return inv.subscription_body()


@router.get("/tenants", tags=["subscriptions"], summary="The directory (tenant) of the lab")
async def list_tenants(request: Request) -> dict[str, Any]:
    await _authenticated(request)
    tenant = context_of(request).inventory.tenant_id
    return {
        "value": [
            {
                "id": f"/tenants/{tenant}",
                "tenantId": tenant,
                "tenantCategory": "Home",
                "displayName": "Serial Console Lab",
                "defaultDomain": "serialconsole.lab",
                "domains": ["serialconsole.lab"],
            }
        ]
    }


# -- the provider's operations --------------------------------------------------------------

_OPERATIONS = [
    ("consoleServices/read", "Serial Console instance", "Default",
     "Retrieves the current subscription state"),
    ("consoleServices/disableConsole/action", "Serial Console instance", "Disable Console",
     "Disable Serial Console for a subscription"),
    ("consoleServices/enableConsole/action", "Serial Console instance", "Enable Console",
     "Enable Serial Console for a subscription"),
    ("serialPorts/read", "Serial Port for a Virtual Machine", "Read",
     "Retrieves the serial port settings"),
    ("serialPorts/write", "Serial Port for a Virtual Machine", "Write",
     "Creates or updates the serial port settings"),
    ("serialPorts/delete", "Serial Port for a Virtual Machine", "Delete",
     "Deletes the serial port settings"),
    ("serialPorts/connect/action", "Serial Port for a Virtual Machine", "Connect",
     "Connect to a serial port"),
]  # fmt: skip


@router.get("/providers/Microsoft.SerialConsole/operations", tags=["console service"])
async def list_operations(request: Request) -> dict[str, Any]:
    """The operations of Microsoft.SerialConsole (any signed-in caller may list them)."""
    await _authenticated(request)
    return {
        "value": [
            {
                "name": f"Microsoft.SerialConsole/{name}",
                "isDataAction": "false",
                "display": {
                    "provider": "Microsoft.SerialConsole",
                    "resource": resource,
                    "operation": operation,
                    "description": description,
                },
            }
            for name, resource, operation, description in _OPERATIONS
        ]
    }


def _console_body(ctx: ApiContext) -> dict[str, Any]:
    return {
        "id": f"{rbac.subscription_scope(ctx.inventory.subscription_id)}"
        "/providers/Microsoft.SerialConsole/consoleServices/default",
        "name": "default",
        "type": "Microsoft.SerialConsole/consoleServices",
        "properties": {"disabled": ctx.console.disabled},
    }


def console_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    """The subscription's scope; its ``SubscriptionNotFound`` in the console service's
    shape (``{"code", "message"}``, as its spec shows)."""
    try:
        return subscription_scope(ctx, params)
    except ArmError as err:
        if err.code == "SubscriptionNotFound":
            raise ArmError(err.status, err.code, err.message, flat=True) from err
        raise


@router.get(PROVIDER + "/consoleServices/default", tags=["console service"])
async def get_console_service(
    request: Request,
    caller: Annotated[Caller, require(rbac.CONSOLE_SERVICE_READ, console_scope)],
) -> dict[str, Any]:
    """Whether the serial console is disabled for the subscription."""
    return _console_body(context_of(request))


async def _set_console(request: Request, caller: Caller, disabled: bool) -> dict[str, Any]:
    ctx = context_of(request)
    action = "disableConsole" if disabled else "enableConsole"

    def write() -> None:  # the switch and its audit row in one go, in a worker thread
        with ctx.audit.db.transaction():
            ctx.console.set_disabled(disabled)
            record(ctx, caller, action, audit.SUCCEEDED)

    await asyncio.to_thread(write)
    return {"properties": {"disabled": disabled}}


@router.post(PROVIDER + "/consoleServices/default/disableConsole", tags=["console service"])
async def disable_console(
    request: Request,
    caller: Annotated[
        Caller,
        require(rbac.CONSOLE_SERVICE_WRITE, console_scope, audit_as="disableConsole"),
    ],
) -> dict[str, Any]:
    """Disable the serial console for the whole subscription (needs write there)."""
    return await _set_console(request, caller, True)


@router.post(PROVIDER + "/consoleServices/default/enableConsole", tags=["console service"])
async def enable_console(
    request: Request,
    caller: Annotated[
        Caller,
        require(rbac.CONSOLE_SERVICE_WRITE, console_scope, audit_as="enableConsole"),
    ],
) -> dict[str, Any]:
    """Enable the serial console for the whole subscription (needs write there)."""
    return await _set_console(request, caller, False)


# -- serial ports ---------------------------------------------------------------------------


def port_body(ctx: ApiContext, vm: VmResource) -> dict[str, Any]:
    active = vm.hub is not None and bool(vm.hub.sessions)
    return {
        "id": vm.port_id,
        "name": PORT_NAME,
        "type": PORT_TYPE,
        "properties": {
            "state": "enabled" if ctx.console.port_enabled(vm) else "disabled",
            "connectionState": "active" if active else "inactive",
        },
    }


def _vm_of(ctx: ApiContext, params: dict[str, str]) -> VmResource:
    if "scale_set" in params:
        return ctx.inventory.instance(
            params["resource_group"], params["scale_set"], params["instance_id"]
        )
    return ctx.inventory.vm(params["resource_group"], params["vm_name"])


def _port_of(ctx: ApiContext, params: dict[str, str], port: str) -> VmResource:
    vm = _vm_of(ctx, params)
    if port != PORT_NAME:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The serial port '{port[:64]}' was not found: virtual machines in this lab have "
            f"one serial port, '{PORT_NAME}'.",
        )
    return vm


@router.get(PROVIDER + "/serialPorts", tags=["serial ports"])
async def list_all_ports(
    request: Request,
    caller: Annotated[Caller, require(rbac.SERIAL_PORT_READ, subscription_scope)],
) -> dict[str, Any]:
    """Every serial port of the subscription (one per VM and scale-set instance)."""
    ctx = context_of(request)
    return {"value": [port_body(ctx, vm) for vm in ctx.inventory.all_machines()]}


def _port_routes(prefix: str, scope_of: Any, tag: str) -> None:
    @router.get(prefix + PORTS, tags=[tag], name=f"list ports ({tag})")
    async def list_ports(
        request: Request, caller: Annotated[Caller, require(rbac.SERIAL_PORT_READ, scope_of)]
    ) -> dict[str, Any]:
        ctx = context_of(request)
        return {"value": [port_body(ctx, _vm_of(ctx, dict(request.path_params)))]}

    @router.get(prefix + PORTS + "/{port}", tags=[tag], name=f"get port ({tag})")
    async def get_port(
        request: Request,
        port: str,
        caller: Annotated[Caller, require(rbac.SERIAL_PORT_READ, scope_of)],
    ) -> dict[str, Any]:
        ctx = context_of(request)
        return port_body(ctx, _port_of(ctx, dict(request.path_params), port))

    @router.put(
        prefix + PORTS + "/{port}",
        tags=[tag],
        name=f"enable or disable port ({tag})",
        status_code=201,
    )
    async def put_port(
        request: Request,
        port: str,
        body: SerialPortBody,
        caller: Annotated[
            Caller, require(rbac.SERIAL_PORT_WRITE, scope_of, audit_as="serialPort.write")
        ],
    ) -> dict[str, Any]:
        """Enable or disable the VM's serial port: a disabled port refuses ``connect``."""
        ctx = context_of(request)
        vm = _port_of(ctx, dict(request.path_params), port)

        def write() -> None:  # the setting and its audit row in one go, in a worker thread
            with ctx.audit.db.transaction():
                ctx.console.set_port_enabled(vm, body.properties.state == "enabled")
                record(ctx, caller, "serialPort.write", audit.SUCCEEDED, body.properties.state,
                       target=vm.port_id)  # fmt: skip

        await asyncio.to_thread(write)
        return port_body(ctx, vm)

    @router.delete(
        prefix + PORTS + "/{port}",
        tags=[tag],
        name=f"delete port settings ({tag})",
        responses={200: {"description": "Deleted"}, 204: {"description": "Nothing to delete"}},
    )
    async def delete_port(
        request: Request,
        port: str,
        caller: Annotated[
            Caller, require(rbac.SERIAL_PORT_DELETE, scope_of, audit_as="serialPort.delete")
        ],
    ) -> Response:
        """Forget the port's settings: it is as the lab file says again (200; 204 when it
        had none of its own)."""
        ctx = context_of(request)
        vm = _port_of(ctx, dict(request.path_params), port)

        def write() -> bool:  # the reset and its audit row in one go, in a worker thread
            with ctx.audit.db.transaction():
                existed = ctx.console.reset_port(vm)
                record(ctx, caller, "serialPort.delete", audit.SUCCEEDED, target=vm.port_id)
            return existed

        existed = await asyncio.to_thread(write)
        return Response(status_code=200 if existed else 204)

    @router.post(prefix + PORTS + "/{port}/connect", tags=[tag], name=f"connect ({tag})")
    async def connect(
        request: Request,
        port: str,
        caller: Annotated[
            Caller,
            require(
                rbac.CONNECT,
                scope_of,
                audit_as="connect",
                before=_console_enabled,
                denied_message=NO_PERMISSION,
            ),
        ],
    ) -> dict[str, str]:
        """A one-time websocket URL to the VM's serial console (60 s, one use, yours only)."""
        ctx = context_of(request)
        try:
            vm = _port_of(ctx, dict(request.path_params), port)
            check_prerequisites(ctx, vm)
        except ArmError as err:
            post(ctx, caller, "connect", audit.DENIED, f"{err.code}: {err.message}")
            raise
        grant = ctx.sessions.create(vm.id, caller.user.name, vm.container)
        scheme = "wss" if request.url.scheme == "https" else "ws"
        url = (
            f"{scheme}://{request.url.netloc}/n/connector/{grant.container}"
            f"/sessions/{grant.session_id}/client"
        )
        # Audited before the URL is handed out: on a full disk this raises (507) and the
        # session, never seen by anyone, expires unclaimed.
        await record_before(ctx, caller, "connect", audit.ALLOWED,
                            f"session {grant.session_id[:8]}...", target=vm.id,
                            session=grant.session_id)  # fmt: skip
        return {"connectionString": url}


def _console_enabled(ctx: ApiContext, caller: Caller) -> None:
    try:
        check_console_enabled(ctx.console.disabled)
    except ConsoleUnavailable as err:
        raise _arm_error(err) from None


def check_prerequisites(ctx: ApiContext, vm: VmResource) -> None:
    """Azure's checks after the role, in Azure's order (``gateway.console.opening``, which
    every door asks); ArmError 409 with Azure's text."""
    try:
        check_open(vm, port_enabled=ctx.console.port_enabled(vm))
    except ConsoleUnavailable as err:
        raise _arm_error(err) from None


def _arm_error(err: ConsoleUnavailable) -> ArmError:
    return ArmError(err.rule.status, err.rule.code, err.message)


_port_routes(VM, vm_scope, "serial ports (VM)")
_port_routes(INSTANCE, instance_scope, "serial ports (scale-set instance)")


# -- audit ----------------------------------------------------------------------------------


@router.get(PROVIDER + "/auditLogs", tags=["audit"])
async def read_audit(
    request: Request,
    caller: Annotated[Caller, require(rbac.AUDIT_READ, subscription_scope)],
    since_id: Annotated[int, Query(alias="sinceId", ge=0)] = 0,
    top: Annotated[int, Query(alias="$top", ge=1, le=1000)] = 100,
    user: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=256)] = None,
) -> dict[str, Any]:
    """The audit log, oldest first; page with ``sinceId`` = the last row's ``id``.

    Readable by Owner and Contributor (Reader and Virtual Machine Contributor lack the
    ``Microsoft.SerialConsole/auditLogs/list/action`` action).
    """
    ctx = context_of(request)
    rows = ctx.audit.query(since_id=since_id, limit=top, user=user, action=action)
    body: dict[str, Any] = {"value": [row.as_json() for row in rows]}
    if len(rows) == top:
        body["nextLink"] = str(request.url.include_query_params(sinceId=rows[-1].id))
    return body
