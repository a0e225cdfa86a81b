"""Azure RBAC as the lab applies it: built-in roles' actions, scope inheritance, messages."""

from __future__ import annotations

import pytest

from gateway.access import rbac
from gateway.access.errors import AuthorizationError
from gateway.access.rbac import RoleAssignment

SUB = "5e71a1c0-0000-4000-8000-000000000001"
SUB_SCOPE = rbac.subscription_scope(SUB)
RG = rbac.resource_group_scope(SUB, "lab-rg")
VM = rbac.vm_scope(SUB, "lab-rg", "linux-1")
VMSS = rbac.scale_set_scope(SUB, "lab-rg", "web-vmss")
INSTANCE = rbac.instance_scope(SUB, "lab-rg", "web-vmss", "0")


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        ("Owner", rbac.CONNECT, True),
        ("Owner", rbac.CONSOLE_SERVICE_WRITE, True),
        ("Owner", "Microsoft.Authorization/roleAssignments/write", True),
        ("Contributor", rbac.CONNECT, True),
        ("Contributor", rbac.CONSOLE_SERVICE_WRITE, True),
        ("Contributor", rbac.AUDIT_READ, True),
        ("Contributor", "Microsoft.Authorization/roleAssignments/write", False),
        ("Virtual Machine Contributor", rbac.CONNECT, True),
        ("Virtual Machine Contributor", rbac.VM_START, True),
        ("Virtual Machine Contributor", rbac.VMSS_VM_RESTART, True),
        ("Virtual Machine Contributor", rbac.VM_BOOT_DIAGNOSTICS, True),
        ("Virtual Machine Contributor", rbac.CONSOLE_SERVICE_WRITE, False),
        ("Virtual Machine Contributor", rbac.SERIAL_PORT_WRITE, False),
        ("Virtual Machine Contributor", rbac.AUDIT_READ, False),
        ("Reader", rbac.VM_READ, True),
        ("Reader", rbac.CONSOLE_SERVICE_READ, True),
        ("Reader", rbac.CONNECT, False),
        ("Reader", rbac.VM_START, False),
        ("Reader", rbac.CONSOLE_SERVICE_WRITE, False),
        ("Reader", rbac.AUDIT_READ, False),
    ],
)
def test_built_in_roles_carry_azures_actions(role: str, action: str, allowed: bool) -> None:
    """Connect needs VM Contributor or above; console enable/disable needs write; Readers read."""
    assert rbac.role_named(role).allows(action) is allowed


def test_actions_and_role_names_compare_case_insensitively() -> None:
    """ARM compares actions and role names without regard to case."""
    assert rbac.role_named("virtual machine contributor").allows(rbac.CONNECT.upper())
    with pytest.raises(KeyError, match="expected one of Contributor, Owner"):
        rbac.role_named("Admin")


@pytest.mark.parametrize(
    ("assigned", "target", "covered"),
    [
        (SUB_SCOPE, RG, True),
        (SUB_SCOPE, INSTANCE, True),
        (RG, VM, True),
        (RG, INSTANCE, True),
        (VMSS, INSTANCE, True),
        (VM, VM + "/providers/Microsoft.SerialConsole/serialPorts/0", True),
        (VM, RG, False),
        (VM, rbac.vm_scope(SUB, "lab-rg", "linux-10"), False),
        (rbac.scale_set_scope(SUB, "lab-rg", "web"), INSTANCE, False),
        (RG, rbac.resource_group_scope(SUB, "lab-rg-2"), False),
        (RG.upper(), VM, True),
        (RG + "/", VM, True),
    ],
)
def test_scopes_inherit_downwards_only(assigned: str, target: str, covered: bool) -> None:
    """Subscription -> group -> VM or scale set -> instance; never sideways or upwards."""
    assert RoleAssignment("Reader", assigned).covers(target) is covered


def test_check_names_user_action_and_scope_in_arms_words() -> None:
    """A refusal reads as ARM's AuthorizationFailed, naming who, what and where."""
    roles = [RoleAssignment("Virtual Machine Contributor", RG)]
    rbac.check("alice", roles, rbac.CONNECT, INSTANCE)
    with pytest.raises(AuthorizationError) as caught:
        rbac.check("alice", roles, rbac.CONSOLE_SERVICE_WRITE, SUB_SCOPE)
    assert str(caught.value).startswith("The client 'alice' with object id 'alice' does not")
    assert f"perform action '{rbac.CONSOLE_SERVICE_WRITE}' over scope '{SUB_SCOPE}'" in str(
        caught.value
    )


def test_assignments_combine() -> None:
    """A user with two assignments may do what either allows, where it applies."""
    roles = [RoleAssignment("Reader", SUB_SCOPE), RoleAssignment("Virtual Machine Contributor", VM)]
    assert rbac.is_allowed(roles, rbac.CONNECT, VM)
    assert not rbac.is_allowed(roles, rbac.CONNECT, rbac.vm_scope(SUB, "lab-rg", "linux-2"))
    assert rbac.is_allowed(roles, rbac.VM_READ, rbac.vm_scope(SUB, "lab-rg", "linux-2"))


def test_listing_visibility_counts_assignments_below() -> None:
    """A user with a role on one VM still sees its subscription in listings."""
    assert rbac.has_any_access([RoleAssignment("Reader", VM)], SUB_SCOPE)
    assert not rbac.has_any_access([], SUB_SCOPE)
