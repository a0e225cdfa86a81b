"""Azure RBAC, the part the lab needs: built-in roles, actions, scopes and their inheritance.

A role assignment gives one role at one scope. A scope is an ARM resource id
(``/subscriptions/{sub}``, ``.../resourceGroups/{rg}``, ``.../virtualMachines/{vm}``,
``.../virtualMachineScaleSets/{set}``, ``.../virtualMachineScaleSets/{set}/virtualMachines/{n}``)
and covers everything below it, so assignments inherit: subscription -> resource group ->
VM or scale set -> scale-set instance. Scopes and actions compare case-insensitively, as
in ARM.

A role allows an action when one of its ``actions`` patterns matches it and none of its
``not_actions`` does; ``*`` in a pattern matches any run of characters (Azure's wildcard).
The action sets are Azure's built-in ones, cut down to the providers the lab serves.

Pure functions and frozen data: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from gateway.access.errors import AuthorizationError

# The actions the gateway checks. Routes name these constants, never literal strings.
CONNECT = "Microsoft.SerialConsole/serialPorts/connect/action"
SERIAL_PORT_READ = "Microsoft.SerialConsole/serialPorts/read"
SERIAL_PORT_WRITE = "Microsoft.SerialConsole/serialPorts/write"
SERIAL_PORT_DELETE = "Microsoft.SerialConsole/serialPorts/delete"
CONSOLE_SERVICE_READ = "Microsoft.SerialConsole/consoleServices/read"
CONSOLE_SERVICE_WRITE = "Microsoft.SerialConsole/consoleServices/write"
AUDIT_READ = "Microsoft.SerialConsole/auditLogs/list/action"  # not a */read: Readers lack it
SUBSCRIPTION_READ = "Microsoft.Resources/subscriptions/read"
RESOURCE_GROUP_READ = "Microsoft.Resources/subscriptions/resourceGroups/read"
VM_READ = "Microsoft.Compute/virtualMachines/read"
VM_START = "Microsoft.Compute/virtualMachines/start/action"
VM_POWER_OFF = "Microsoft.Compute/virtualMachines/powerOff/action"
VM_RESTART = "Microsoft.Compute/virtualMachines/restart/action"
VM_DEALLOCATE = "Microsoft.Compute/virtualMachines/deallocate/action"
VM_REIMAGE = "Microsoft.Compute/virtualMachines/reimage/action"
VM_BOOT_DIAGNOSTICS = "Microsoft.Compute/virtualMachines/retrieveBootDiagnosticsData/action"
VM_RUN_COMMAND = "Microsoft.Compute/virtualMachines/runCommand/action"
VM_EXTENSION_READ = "Microsoft.Compute/virtualMachines/extensions/read"
VM_EXTENSION_WRITE = "Microsoft.Compute/virtualMachines/extensions/write"
VM_REDEPLOY = "Microsoft.Compute/virtualMachines/redeploy/action"
VM_REAPPLY = "Microsoft.Compute/virtualMachines/reapply/action"
VM_SIZES_READ = "Microsoft.Compute/virtualMachines/vmSizes/read"
VMSS_READ = "Microsoft.Compute/virtualMachineScaleSets/read"
VMSS_START = "Microsoft.Compute/virtualMachineScaleSets/start/action"
VMSS_POWER_OFF = "Microsoft.Compute/virtualMachineScaleSets/powerOff/action"
VMSS_RESTART = "Microsoft.Compute/virtualMachineScaleSets/restart/action"
VMSS_DEALLOCATE = "Microsoft.Compute/virtualMachineScaleSets/deallocate/action"
VMSS_REIMAGE = "Microsoft.Compute/virtualMachineScaleSets/reimage/action"
VMSS_SKUS_READ = "Microsoft.Compute/virtualMachineScaleSets/skus/read"
VMSS_VM_READ = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read"
VMSS_VM_START = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/start/action"
VMSS_VM_POWER_OFF = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/powerOff/action"
VMSS_VM_RESTART = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/restart/action"
VMSS_VM_DEALLOCATE = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/deallocate/action"
VMSS_VM_REIMAGE = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action"
VMSS_VM_RUN_COMMAND = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommand/action"
VMSS_VM_BOOT_DIAGNOSTICS = (
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/retrieveBootDiagnosticsData/action"
)


@dataclass(frozen=True, slots=True)
class RoleDefinition:
    """A built-in role: the actions it allows and the ones carved out of them."""

    name: str
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] = ()

    def allows(self, action: str) -> bool:
        """True when an ``actions`` pattern matches ``action`` and no ``not_actions`` one does."""
        return any(_matches(p, action) for p in self.actions) and not any(
            _matches(p, action) for p in self.not_actions
        )


ROLES: dict[str, RoleDefinition] = {
    role.name.lower(): role
    for role in (
        RoleDefinition("Owner", ("*",)),
        RoleDefinition(
            "Contributor",
            ("*",),
            (
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
            ),
        ),
        RoleDefinition(
            "Virtual Machine Contributor",
            (
                "Microsoft.Authorization/*/read",
                "Microsoft.Compute/availabilitySets/*",
                "Microsoft.Compute/locations/*",
                "Microsoft.Compute/virtualMachines/*",
                "Microsoft.Compute/virtualMachineScaleSets/*",
                "Microsoft.Compute/disks/read",
                "Microsoft.Insights/alertRules/*",
                "Microsoft.Resources/deployments/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                CONNECT,  # its only Microsoft.SerialConsole action: no serialPorts/read
                "Microsoft.Storage/storageAccounts/listKeys/action",
                "Microsoft.Storage/storageAccounts/read",
            ),
        ),
        RoleDefinition("Reader", ("*/read",)),
    )
}


def role_named(name: str) -> RoleDefinition:
    """The built-in role called ``name`` (any case); KeyError names the known roles."""
    try:
        return ROLES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(r.name for r in ROLES.values()))
        raise KeyError(f"unknown role {name!r}: expected one of {known}") from None


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    """``role`` (a built-in role's name) granted at ``scope`` (an ARM resource id)."""

    role: str
    scope: str

    def covers(self, scope: str) -> bool:
        """True when ``scope`` is this assignment's scope or lies below it."""
        return scope_contains(self.scope, scope)


def subscription_scope(subscription: str) -> str:
    """``/subscriptions/{subscription}``."""
    return f"/subscriptions/{subscription}"


def resource_group_scope(subscription: str, group: str) -> str:
    """``/subscriptions/{subscription}/resourceGroups/{group}``."""
    return f"{subscription_scope(subscription)}/resourceGroups/{group}"


def vm_scope(subscription: str, group: str, vm: str) -> str:
    """The ARM id of a virtual machine."""
    return (
        f"{resource_group_scope(subscription, group)}"
        f"/providers/Microsoft.Compute/virtualMachines/{vm}"
    )


def scale_set_scope(subscription: str, group: str, scale_set: str) -> str:
    """The ARM id of a virtual machine scale set."""
    return (
        f"{resource_group_scope(subscription, group)}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{scale_set}"
    )


def instance_scope(subscription: str, group: str, scale_set: str, instance: str) -> str:
    """The ARM id of a scale-set instance (``...ScaleSets/{set}/virtualMachines/{n}``)."""
    return f"{scale_set_scope(subscription, group, scale_set)}/virtualMachines/{instance}"


def normalize_scope(scope: str) -> str:
    """``scope`` without trailing slashes, lower-cased: the form scopes compare in."""
    return "/" + scope.strip().strip("/").lower()


def scope_contains(outer: str, inner: str) -> bool:
    """True when ``inner`` equals ``outer`` or is a resource below it (ARM inheritance)."""
    outer_n, inner_n = normalize_scope(outer), normalize_scope(inner)
    return inner_n == outer_n or inner_n.startswith(outer_n.rstrip("/") + "/")


def is_allowed(assignments: Iterable[RoleAssignment], action: str, scope: str) -> bool:
    """True when one of ``assignments`` covers ``scope`` with a role that allows ``action``."""
    return any(a.covers(scope) and role_named(a.role).allows(action) for a in assignments)


def check(user: str, assignments: Iterable[RoleAssignment], action: str, scope: str) -> None:
    """Return when ``user`` may perform ``action`` at ``scope``; else raise AuthorizationError.

    The message is ARM's ``AuthorizationFailed`` text.
    """
    if not is_allowed(assignments, action, scope):
        raise AuthorizationError(
            f"The client '{user}' with object id '{user}' does not have authorization to "
            f"perform action '{action}' over scope '{scope}' or the scope is invalid. If "
            "access was recently granted, please refresh your credentials.",
            user=user,
            action=action,
            scope=scope,
        )


def has_any_access(assignments: Iterable[RoleAssignment], scope: str) -> bool:
    """True when some assignment sits at, above or below ``scope`` (it shows in listings)."""
    return any(
        scope_contains(a.scope, scope) or scope_contains(scope, a.scope) for a in assignments
    )


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE)


def _matches(pattern: str, action: str) -> bool:
    return _pattern(pattern).fullmatch(action) is not None
