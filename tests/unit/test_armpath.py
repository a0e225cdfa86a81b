"""ARM's routing rules with no server: canonical spelling of a path's words, its provider,
and the api-version check."""

from __future__ import annotations

import pytest

from gateway.api.armpath import (
    API_VERSIONS,
    COMPUTE,
    RESOURCES,
    SERIAL_CONSOLE,
    canonical_path,
    check_api_version,
    is_arm_path,
    unknown_resource_type,
)

SUB = "/subscriptions/5E71A1C0-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("sent", "routed", "provider"),
    [
        (
            f"{SUB}/resourcegroups/Lab-RG/providers/microsoft.compute/virtualmachines/VM-1",
            f"{SUB}/resourceGroups/Lab-RG/providers/Microsoft.Compute/virtualMachines/VM-1",
            COMPUTE,
        ),
        (  # azure-mgmt-serialconsole's path for a VM's port: the last namespace decides
            f"{SUB}/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            "/providers/Microsoft.SerialConsole/serialPorts/0/CONNECT",
            f"{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            "/providers/Microsoft.SerialConsole/serialPorts/0/connect",
            SERIAL_CONSOLE,
        ),
        (  # names that look like words stay as sent
            f"{SUB}/resourceGroups/start/providers/Microsoft.Compute/virtualMachines/Restart/start",
            f"{SUB}/resourceGroups/start/providers/Microsoft.Compute/virtualMachines/Restart/start",
            COMPUTE,
        ),
        (
            f"{SUB}/providers/MICROSOFT.SERIALCONSOLE/consoleservices/default/enableconsole",
            f"{SUB}/providers/Microsoft.SerialConsole/consoleServices/default/enableConsole",
            SERIAL_CONSOLE,
        ),
        ("/SUBSCRIPTIONS", "/subscriptions", RESOURCES),
        ("/providers/microsoft.serialconsole/Operations", None, SERIAL_CONSOLE),
        (f"{SUB}/providers/Contoso.Widgets/gadgets/g", None, "Contoso.Widgets"),
    ],
)
def test_canonical_path(sent: str, routed: str | None, provider: str) -> None:
    path, found = canonical_path(sent)
    if routed is not None:
        assert path == routed
    assert found == provider


def test_only_arm_paths_follow_arms_rules() -> None:
    assert is_arm_path("/subscriptions/x")
    assert is_arm_path("/Tenants")
    assert is_arm_path("/providers/Microsoft.SerialConsole/operations")
    assert not is_arm_path("/oauth2/token")
    assert not is_arm_path("/bootdiagnostics/vm/serialconsole.log")
    assert not is_arm_path("/n/connector/c/sessions/s/client")


def test_api_version_check() -> None:
    assert check_api_version(SERIAL_CONSOLE, "api-version=2024-07-01") is None
    assert check_api_version(SERIAL_CONSOLE, "API-VERSION=2018-05-01&x=1") is None
    assert check_api_version(COMPUTE, "api-version=2026-04-01") is None
    assert check_api_version(RESOURCES, "api-version=2022-12-01") is None
    assert check_api_version("Contoso.Widgets", "api-version=1999-01-01") is None
    code, message = check_api_version(SERIAL_CONSOLE, "") or ("", "")
    assert code == "MissingApiVersionParameter"
    code, message = check_api_version(SERIAL_CONSOLE, "api-version=") or ("", "")
    assert code == "MissingApiVersionParameter"
    code, message = check_api_version(COMPUTE, "api-version=2024-07-01x") or ("", "")
    assert code == "InvalidApiVersionParameter"
    assert message == (
        "The api-version '2024-07-01x' is invalid. The supported versions are "
        f"'{','.join(API_VERSIONS[COMPUTE])}'."
    )


def test_versions_the_current_clients_send_are_published() -> None:
    """azure-mgmt-serialconsole 2.0.0, az serial-console, azure-mgmt-compute 39."""
    assert {"2024-07-01", "2018-05-01"} <= set(API_VERSIONS[SERIAL_CONSOLE])
    assert {"2026-04-01", "2026-03-03", "2026-03-02", "2025-03-03"} <= set(API_VERSIONS[COMPUTE])


def test_unknown_resource_types_are_named() -> None:
    """ARM's InvalidResourceType text for a type the lab's providers do not serve."""
    disks = f"{SUB}/resourceGroups/rg/providers/microsoft.compute/disks/d"
    assert unknown_resource_type(disks, "2026-04-01") == (
        "The resource type 'disks' could not be found in the namespace 'Microsoft.Compute' "
        "for api version '2026-04-01'."
    )
    vm = f"{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/nothing"
    assert unknown_resource_type(vm, "2026-04-01") is None  # a known type: the route decides
    assert unknown_resource_type(f"{SUB}/providers/Contoso.Widgets/gadgets", "1") is None
    assert unknown_resource_type("/subscriptions", "2022-12-01") is None


def test_versions_are_listed_newest_first_once() -> None:
    """As ARM lists them in InvalidApiVersionParameter."""
    for versions in API_VERSIONS.values():
        dates = [v[:10] for v in versions]
        assert dates == sorted(dates, reverse=True)
        assert len(set(versions)) == len(versions)
