"""Microsoft's own Python packages against the lab over TLS, unchanged: azure-identity's
ClientSecretCredential, every operation of azure-mgmt-serialconsole, and the
azure-mgmt-compute operations the lab serves (VMs, scale sets, their instances, power
actions as long-running operations, boot diagnostics). Emulated guests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.serialconsole import MicrosoftSerialConsoleClient
from azure.mgmt.serialconsole.models import SerialPort, SerialPortProperties

from tests.clients.conftest import ClientLab

pytestmark = [pytest.mark.clients, pytest.mark.xdist_group("azure-sdks")]  # one lab, one worker

RG = "lab-rg"
COMPUTE = "Microsoft.Compute"
VMS = "virtualMachines"
VMSS = "virtualMachineScaleSets"
SCOPE = "https://management.azure.com/.default"


Credentials = Callable[..., ClientSecretCredential]


@pytest.fixture(scope="module")
def credentials(client_lab: ClientLab) -> Iterator[Credentials]:
    """azure-identity as a user would write it: a lab user is the client, its password the
    secret, the lab the authority. Each credential is closed at the end (its connections
    with it)."""
    made: list[ClientSecretCredential] = []

    def make(user: str = "carol", secret: str | None = None) -> ClientSecretCredential:
        made.append(
            ClientSecretCredential(
                client_lab.tenant_id,
                client_id=user,
                client_secret=secret or user,
                authority=client_lab.url,
                disable_instance_discovery=True,
            )
        )
        return made[-1]

    yield make
    for credential in made:
        credential.close()


@pytest.fixture(scope="module")
def serialconsole(
    client_lab: ClientLab, credentials: Credentials
) -> Iterator[MicrosoftSerialConsoleClient]:
    with MicrosoftSerialConsoleClient(
        credentials(), client_lab.subscription_id, base_url=client_lab.url
    ) as client:
        yield client


@pytest.fixture(scope="module")
def compute(client_lab: ClientLab, credentials: Credentials) -> Iterator[ComputeManagementClient]:
    # The lab's machines take seconds: the pollers follow the lab's Retry-After (1 s).
    with ComputeManagementClient(
        credentials(), client_lab.subscription_id, base_url=client_lab.url
    ) as client:
        yield client


def power_state(compute: ComputeManagementClient, vm: str, instance: str | None = None) -> str:
    if instance is None:
        view = compute.virtual_machines.instance_view(RG, vm)
    else:
        view = compute.virtual_machine_scale_set_vms.get_instance_view(RG, vm, instance)
    codes = [s.code for s in view.statuses or [] if s.code]
    return next(c for c in codes if c.startswith("PowerState/"))


# -- azure-identity -------------------------------------------------------------------------


def test_client_secret_credential_gets_a_token_from_the_lab(credentials: Credentials) -> None:
    """ClientSecretCredential(tenant, user, password, authority=lab) gets a bearer token;
    a wrong secret is the SDK's ClientAuthenticationError with Entra's AADSTS text."""
    token = credentials("alice").get_token(SCOPE)
    assert len(token.token) >= 32
    assert token.expires_on > 0
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credentials("alice", "wrong").get_token(SCOPE)


# -- azure-mgmt-serialconsole ---------------------------------------------------------------


def test_list_operations(serialconsole: MicrosoftSerialConsoleClient) -> None:
    names = [op.name for op in serialconsole.list_operations().value or []]
    assert "Microsoft.SerialConsole/consoleServices/read" in names
    assert "Microsoft.SerialConsole/serialPorts/connect/action" in names


def test_console_service_disable_get_enable(serialconsole: MicrosoftSerialConsoleClient) -> None:
    """disable_console, get_console_status and enable_console; a disabled console refuses
    connect with Azure's text (409: the SDK's ResourceExistsError)."""
    assert serialconsole.get_console_status("default").properties.disabled is False
    try:
        assert serialconsole.disable_console("default").properties.disabled is True
        assert serialconsole.get_console_status("default").properties.disabled is True
        with pytest.raises(ResourceExistsError) as refused:
            serialconsole.serial_ports.connect(RG, COMPUTE, VMS, "linux-1", "0")
        assert refused.value.error is not None
        assert refused.value.error.code == "SerialConsoleDisabled"
        assert "not enabled for this subscription" in refused.value.error.message
    finally:
        assert serialconsole.enable_console("default").properties.disabled is False


def test_console_service_of_an_unknown_subscription(
    client_lab: ClientLab, credentials: Credentials
) -> None:
    """The spec's 404 for the console service: ResourceNotFoundError, SubscriptionNotFound."""
    unknown = "00000000-0000-0000-0000-000000000000"
    with (
        MicrosoftSerialConsoleClient(credentials(), unknown, base_url=client_lab.url) as c,
        pytest.raises(ResourceNotFoundError) as missing,
    ):
        c.get_console_status("default")
    assert missing.value.status_code == 404
    assert "SubscriptionNotFound" in str(missing.value)


def test_serial_ports_list_by_subscriptions(serialconsole: MicrosoftSerialConsoleClient) -> None:
    ids = [port.id for port in serialconsole.serial_ports.list_by_subscriptions().value or []]
    assert any(
        i.endswith("/virtualMachines/linux-1/providers/Microsoft.SerialConsole/serialPorts/0")
        for i in ids
    )
    assert any("/virtualMachineScaleSets/web-vmss/virtualMachines/1/" in i for i in ids)


@pytest.mark.parametrize(
    ("parent_type", "parent"),
    [(VMS, "linux-1"), (VMSS, "web-vmss/virtualMachines/1")],
    ids=["vm", "scale-set-instance"],
)
def test_serial_port_get_list_create_connect(
    serialconsole: MicrosoftSerialConsoleClient, parent_type: str, parent: str
) -> None:
    """get, list, create (the SDK accepts only 201) to disable and enable, connect: a
    disabled port refuses, an enabled one gives a one-time wss:// URL."""
    ports = serialconsole.serial_ports
    port = ports.get(RG, COMPUTE, parent_type, parent, "0")
    assert (port.name, port.type) == ("0", "Microsoft.SerialConsole/serialPorts")
    assert port.properties.state == "enabled"
    listed = ports.list(RG, COMPUTE, parent_type, parent).value or []
    assert [p.id for p in listed] == [port.id]
    disabled = SerialPort(properties=SerialPortProperties(state="disabled"))
    try:
        assert ports.create(RG, COMPUTE, parent_type, parent, "0", disabled).properties.state == (
            "disabled"
        )
        with pytest.raises(ResourceExistsError):
            ports.connect(RG, COMPUTE, parent_type, parent, "0")
    finally:
        enabled = SerialPort(properties=SerialPortProperties(state="enabled"))
        assert ports.create(RG, COMPUTE, parent_type, parent, "0", enabled).properties.state == (
            "enabled"
        )
    url = ports.connect(RG, COMPUTE, parent_type, parent, "0").connection_string
    assert url.startswith("wss://127.0.0.1:")
    assert url.endswith("/client")


def test_connect_needs_the_role(client_lab: ClientLab, credentials: Credentials) -> None:
    """bob is a Reader: connect is refused with Azure's text (403)."""
    with (
        MicrosoftSerialConsoleClient(
            credentials("bob"), client_lab.subscription_id, base_url=client_lab.url
        ) as bob,
        pytest.raises(HttpResponseError) as refused,
    ):
        bob.serial_ports.connect(RG, COMPUTE, VMS, "linux-1", "0")
    assert refused.value.status_code == 403
    assert refused.value.error is not None
    assert "Virtual Machine Contributor" in refused.value.error.message


# -- azure-mgmt-compute ---------------------------------------------------------------------


def test_virtual_machines_reads(compute: ComputeManagementClient) -> None:
    """get (with the instance view), list, list_all, instance_view."""
    vm = compute.virtual_machines.get(RG, "linux-1", expand="instanceView")
    assert (vm.name, vm.type) == ("linux-1", "Microsoft.Compute/virtualMachines")
    assert vm.diagnostics_profile.boot_diagnostics.enabled is True
    assert vm.instance_view is not None
    assert sorted(v.name for v in compute.virtual_machines.list(RG)) == ["linux-1", "win-1"]
    assert sorted(v.name for v in compute.virtual_machines.list_all()) == ["linux-1", "win-1"]
    assert power_state(compute, "linux-1") == "PowerState/running"


def test_scale_sets_and_their_instances_reads(compute: ComputeManagementClient) -> None:
    """virtual_machine_scale_sets get and list; virtual_machine_scale_set_vms get, list,
    get_instance_view."""
    vmss = compute.virtual_machine_scale_sets.get(RG, "web-vmss")
    assert (vmss.name, vmss.sku.capacity) == ("web-vmss", 2)
    assert [s.name for s in compute.virtual_machine_scale_sets.list(RG)] == ["web-vmss"]
    instances = list(compute.virtual_machine_scale_set_vms.list(RG, "web-vmss"))
    assert [i.instance_id for i in instances] == ["0", "1"]
    one = compute.virtual_machine_scale_set_vms.get(RG, "web-vmss", "1")
    assert (one.name, one.instance_id) == ("web-vmss_1", "1")
    assert power_state(compute, "web-vmss", "1") == "PowerState/running"


def test_unknown_vm_and_unpublished_api_version_are_the_sdks_errors(
    compute: ComputeManagementClient,
) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        compute.virtual_machines.get(RG, "no-such-vm")
    assert missing.value.error is not None
    assert missing.value.error.code == "ResourceNotFound"
    with pytest.raises(HttpResponseError) as invalid:
        compute.virtual_machines.get(RG, "linux-1", api_version="2099-01-01")
    assert invalid.value.error is not None
    assert invalid.value.error.code == "InvalidApiVersionParameter"
    assert "2026-04-01" in invalid.value.error.message


@pytest.mark.parametrize("instance", [None, "0"], ids=["vm", "scale-set-instance"])
def test_retrieve_boot_diagnostics_data_gives_a_blob_url(
    compute: ComputeManagementClient, instance: str | None
) -> None:
    """retrieve_boot_diagnostics_data's serialConsoleLogBlobUri answers like a blob: the
    log's bytes as text/plain, ETag, x-ms-blob-type, a Range a 206."""
    if instance is None:
        data = compute.virtual_machines.retrieve_boot_diagnostics_data(
            RG, "linux-1", sas_uri_expiration_time_in_minutes=5
        )
    else:
        data = compute.virtual_machine_scale_set_vms.retrieve_boot_diagnostics_data(
            RG, "web-vmss", instance, sas_uri_expiration_time_in_minutes=5
        )
    url = data.serial_console_log_blob_uri
    assert url is not None
    blob = requests.get(url, timeout=30)
    assert blob.status_code == 200
    assert blob.headers["Content-Type"].startswith("text/plain")
    assert blob.headers["x-ms-blob-type"] == "BlockBlob"
    assert int(blob.headers["Content-Length"]) == len(blob.content) > 0
    assert blob.headers["ETag"]
    part = requests.get(url, headers={"Range": "bytes=0-9"}, timeout=30)
    assert (part.status_code, part.content) == (206, blob.content[:10])
    forged = requests.get(url.replace("sig=", "sig=0"), timeout=30)
    assert forged.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in forged.text


@pytest.mark.parametrize(("vm", "instance"), [("win-1", None), ("web-vmss", "1")],
                         ids=["vm", "scale-set-instance"])  # fmt: skip
def test_power_actions_are_long_running_operations(
    compute: ComputeManagementClient, vm: str, instance: str | None
) -> None:
    """begin_power_off, begin_start, begin_restart, begin_deallocate: .result() returns once
    the machine is in that state (the SDK's poller follows ARM's headers)."""
    ops = compute.virtual_machines if instance is None else compute.virtual_machine_scale_set_vms
    where = (RG, vm) if instance is None else (RG, vm, instance)
    for begin, state in (
        (ops.begin_power_off, "PowerState/stopped"),
        (ops.begin_start, "PowerState/running"),
        (ops.begin_restart, "PowerState/running"),
        (ops.begin_deallocate, "PowerState/deallocated"),
        (ops.begin_start, "PowerState/running"),
    ):
        poller = begin(*where)
        assert poller.result() is None
        assert poller.status() == "Succeeded"
        assert power_state(compute, vm, instance) == state, begin.__name__
