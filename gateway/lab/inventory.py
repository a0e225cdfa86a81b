"""The lab's resources as the control plane sees them: subscription, groups, VMs, scale sets.

``Inventory`` is built once by the lab runtime (``gateway.lab.runtime``) from the lab file
and the live machines; the routes look resources up in it by the names in the path
(case-insensitively, as ARM does), after ``check_name`` rejected hostile names.
``ConsoleState`` keeps what ``enableConsole``/``disableConsole`` and serial port PUTs
change, in ``lab.db``, so it survives a restart.

Each VM and each scale-set instance is a ``VmResource``: what Azure's prerequisite checks
look at (provisioning state, boot diagnostics, latest model), its ``Machine``, its
``BootLog`` and its ``ConsoleHub``. The websocket door finds the hub of a claimed session
with ``inventory.by_id(grant.vm_id).hub``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.access import rbac
from gateway.access.store import LabDatabase
from gateway.console.bootlog import BootLog
from gateway.console.hub import ConsoleHub
from gateway.lab.errors import ArmError, not_found
from gateway.machines.base import Machine
from gateway.machines.provision import Provisioning

VM_TYPE = "Microsoft.Compute/virtualMachines"
VMSS_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
VMSS_VM_TYPE = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
PORT_TYPE = "Microsoft.SerialConsole/serialPorts"
PORT_NAME = "0"
# The lab's directory (tenant) unless the lab file names one: ``[subscription] tenant_id``
# (gateway.lab.config has the same default).
DEFAULT_TENANT = "5e71a1c0-0000-4000-8000-00000000ad00"

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.()-]{0,88}[A-Za-z0-9_()])?")
_SUBSCRIPTION = re.compile(r"[A-Za-z0-9-]{1,64}")
_INSTANCE = re.compile(r"[0-9]{1,9}")


def check_name(kind: str, value: str) -> str:
    """``value`` if it can be a resource name; ArmError 400 ``InvalidResourceName`` if not.

    Rejects what could escape a path or a log line: ``..``, ``/``, control characters,
    names over 90 characters.
    """
    if _NAME.fullmatch(value):
        return value
    shown = value if len(value) <= 100 else value[:100] + "..."
    raise ArmError(
        400,
        "InvalidResourceName",
        f"The {kind} name {shown!r} is invalid. A name has 1 to 90 characters: letters, "
        "digits, '_', '-', '.', '(' and ')'; it starts with a letter or digit and does not "
        "end with '.' or '-'.",
    )


def check_subscription(value: str) -> str:
    if _SUBSCRIPTION.fullmatch(value):
        return value
    shown = value if len(value) <= 100 else value[:100] + "..."
    raise ArmError(
        400,
        "InvalidSubscriptionId",
        f"The provided subscription identifier {shown!r} is malformed or invalid.",
    )


def check_instance(value: str) -> str:
    if _INSTANCE.fullmatch(value):
        return value
    shown = value if len(value) <= 100 else value[:100] + "..."
    raise ArmError(
        400,
        "InvalidParameter",
        f"The scale-set instance id {shown!r} is invalid: instance ids are numbers (0, 1, ...).",
    )


@dataclass(frozen=True, slots=True)
class ResourceGroupInfo:
    name: str
    location: str
    id: str


def vm_size(memory_mb: int) -> str:
    """The lab's stand-in for a VM size: its memory (``Lab_512MB``)."""
    return f"Lab_{memory_mb}MB"


@dataclass(eq=False)
class VmResource:
    """A VM or a scale-set instance, with the flags Azure checks before a connect."""

    id: str  # ARM id, as ARM spells it
    name: str  # VM name, or '{set}_{n}' for an instance
    resource_group: str
    location: str
    os_type: str  # linux | windows
    hostname: str
    memory_mb: int
    provisioning_state: str
    boot_diagnostics: bool  # for an instance: in the scale set's model
    port_enabled_default: bool
    machine: Machine
    bootlog: BootLog | None = None
    hub: ConsoleHub | None = None
    scale_set: str | None = None
    instance_id: str | None = None
    latest_model: bool = True
    provisioning: Provisioning | None = None  # an osProfile's VM: its cloud-init reports

    @property
    def vm_size(self) -> str:
        return vm_size(self.memory_mb)

    @property
    def is_instance(self) -> bool:
        return self.scale_set is not None

    @property
    def type(self) -> str:
        return VMSS_VM_TYPE if self.is_instance else VM_TYPE

    @property
    def port_id(self) -> str:
        return f"{self.id}/providers/{PORT_TYPE}/{PORT_NAME}"

    @property
    def vm_id(self) -> str:
        """Azure's vmId: a UUID that stays the same for this resource."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, self.id.lower()))

    @property
    def container(self) -> str:
        """The ``{container}`` of this VM's console URLs: stable, opaque."""
        return hashlib.sha256(self.id.lower().encode()).hexdigest()[:16]


@dataclass(eq=False)
class ScaleSetResource:
    id: str
    name: str
    resource_group: str
    location: str
    capacity: int
    memory_mb: int
    os_type: str
    provisioning_state: str
    boot_diagnostics: bool
    instances: dict[str, VmResource] = field(default_factory=dict)


class Inventory:
    """Every resource of the lab's one subscription, looked up case-insensitively."""

    def __init__(
        self, subscription_id: str, subscription_name: str, tenant_id: str = DEFAULT_TENANT
    ) -> None:
        self.subscription_id = subscription_id
        self.subscription_name = subscription_name
        self.tenant_id = tenant_id
        self.groups: dict[str, ResourceGroupInfo] = {}
        self.vms: dict[tuple[str, str], VmResource] = {}
        self.scale_sets: dict[tuple[str, str], ScaleSetResource] = {}
        self._by_id: dict[str, VmResource] = {}
        self._by_name: dict[str, VmResource] = {}

    # -- building --------------------------------------------------------------------------

    def add_group(self, name: str, location: str) -> ResourceGroupInfo:
        info = ResourceGroupInfo(
            name, location, rbac.resource_group_scope(self.subscription_id, name)
        )
        self.groups[name.lower()] = info
        return info

    def add_vm(self, vm: VmResource) -> None:
        if vm.is_instance:
            assert vm.scale_set is not None
            assert vm.instance_id is not None
            self.scale_set(vm.resource_group, vm.scale_set).instances[vm.instance_id] = vm
        else:
            self.vms[(vm.resource_group.lower(), vm.name.lower())] = vm
        self._by_id[vm.id.lower()] = vm
        self._by_name[vm.name] = vm

    def add_scale_set(self, scale_set: ScaleSetResource) -> None:
        self.scale_sets[(scale_set.resource_group.lower(), scale_set.name.lower())] = scale_set

    # -- lookups (ArmError 404 when missing) -----------------------------------------------

    def all_machines(self) -> list[VmResource]:
        """Every VM and scale-set instance."""
        return list(self._by_id.values())

    def by_id(self, resource_id: str) -> VmResource:
        """The VM or instance whose ARM id is ``resource_id`` (any case); KeyError if none."""
        return self._by_id[resource_id.lower()]

    def by_machine_name(self, name: str) -> VmResource | None:
        return self._by_name.get(name)

    def check_subscription(self, subscription: str) -> None:
        check_subscription(subscription)
        if subscription.lower() != self.subscription_id.lower():
            raise ArmError(
                404,
                "SubscriptionNotFound",
                f"The subscription '{subscription}' could not be found.",
            )

    def subscription_body(self) -> dict[str, Any]:
        """The subscription as ``GET /subscriptions`` lists it."""
        return {
            "id": rbac.subscription_scope(self.subscription_id),
            "subscriptionId": self.subscription_id,
            "tenantId": self.tenant_id,
            "displayName": self.subscription_name,
            "state": "Enabled",
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "Lab_2026-01-01",
                "spendingLimit": "Off",
            },
            "authorizationSource": "RoleBased",
        }

    def group(self, name: str) -> ResourceGroupInfo:
        info = self.groups.get(name.lower())
        if info is None:
            raise ArmError(
                404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found."
            )
        return info

    def vm(self, group: str, name: str) -> VmResource:
        info = self.group(group)
        vm = self.vms.get((group.lower(), name.lower()))
        if vm is None:
            raise not_found(VM_TYPE, name, info.name)
        return vm

    def scale_set(self, group: str, name: str) -> ScaleSetResource:
        info = self.group(group)
        found = self.scale_sets.get((group.lower(), name.lower()))
        if found is None:
            raise not_found(VMSS_TYPE, name, info.name)
        return found

    def instance(self, group: str, scale_set: str, instance_id: str) -> VmResource:
        found = self.scale_set(group, scale_set)
        vm = found.instances.get(instance_id)
        if vm is None:
            raise not_found(
                f"{VMSS_TYPE}/{found.name}/virtualMachines", instance_id, found.resource_group
            )
        return vm


class ConsoleState:
    """The console service state of the subscription and of each serial port, in ``lab.db``.

    A port's state starts as the lab file says (``serial_port_enabled``); a PUT changes it
    for good (the database wins over the lab file from then on).
    """

    def __init__(self, db: LabDatabase, subscription_id: str) -> None:
        self.db = db
        self._key = f"console_disabled:{subscription_id.lower()}"

    @property
    def disabled(self) -> bool:
        return self.db.setting(self._key, "0") == "1"

    def set_disabled(self, disabled: bool) -> None:
        self.db.set_setting(self._key, "1" if disabled else "0")

    def port_enabled(self, vm: VmResource) -> bool:
        value = self.db.setting(f"serial_port:{vm.id.lower()}")
        return vm.port_enabled_default if value is None else value == "enabled"

    def set_port_enabled(self, vm: VmResource, enabled: bool) -> None:
        self.db.set_setting(f"serial_port:{vm.id.lower()}", "enabled" if enabled else "disabled")

    def reset_port(self, vm: VmResource) -> bool:
        """Forget the port's PUT: it is as the lab file says again. True if there was one."""
        return self.db.delete_setting(f"serial_port:{vm.id.lower()}")
