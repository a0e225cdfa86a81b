"""Microsoft's ``az`` against the lab over TLS, as a person sets it up from az's own docs:
``az cloud register`` with endpoint discovery (``/metadata/endpoints``), a service
principal login, then the VM and scale-set commands a serial-console user reaches for.
Emulated guests; az from PyPI in ``.venv-az/`` (``tests.support.azcli``).

The serial-console extension is not on PyPI: its websocket flows are replayed as its
source does them in ``tests/support/azflows.py`` (``tests/integration/test_az_flows.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients.conftest import ClientLab
from tests.support.azcli import Az

pytestmark = [pytest.mark.clients, pytest.mark.slow, pytest.mark.xdist_group("azure-sdks")]

RG = "lab-rg"
CLOUD = "SerialConsoleLab"


@pytest.fixture(scope="module")
def az(client_lab: ClientLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Az]:
    """az registered with the lab as a cloud (endpoints discovered from the lab itself) and
    logged in as carol, an Owner, with her password as a service principal's secret."""
    az = Az(tmp_path_factory.mktemp("az-config"), client_lab.ca_path)
    az("cloud", "register", "--name", CLOUD, "--endpoint-resource-manager", client_lab.url + "/")
    az("cloud", "set", "--name", CLOUD)
    # as for Azure Stack: MSAL would ask login.microsoftonline.com about the lab's authority
    az("config", "set", "core.instance_discovery=false")
    az("login", "--service-principal", "--username", "carol", "--password", "carol",
       "--tenant", client_lab.tenant_id)  # fmt: skip
    yield az
    az.run("logout")


def test_the_cloud_az_registered_is_the_lab(az: Az, client_lab: ClientLab) -> None:
    cloud = az("cloud", "show", "--name", CLOUD)
    endpoints = cloud["endpoints"]
    assert endpoints["resourceManager"] == client_lab.url + "/"
    assert endpoints["activeDirectory"].rstrip("/") == client_lab.url
    assert cloud["isActive"] is True
    account = az("account", "show")
    assert account["id"] == client_lab.subscription_id
    assert account["tenantId"] == client_lab.tenant_id


def test_vm_commands(az: Az) -> None:
    names = {vm["name"] for vm in az("vm", "list", "--resource-group", RG)}
    assert {"linux-1", "win-1"} <= names
    az("vm", "restart", "--resource-group", RG, "--name", "linux-1")
    view = az("vm", "get-instance-view", "--resource-group", RG, "--name", "linux-1")
    codes = [s["code"] for s in view["instanceView"]["statuses"]]
    assert "PowerState/running" in codes
    uris = az("vm", "boot-diagnostics", "get-boot-log-uris", "--resource-group", RG,
              "--name", "linux-1")  # fmt: skip
    assert uris["serialConsoleLogBlobUri"].startswith("https://127.0.0.1:")
    # az downloads the log from that SAS-shaped URL itself
    log = az("vm", "boot-diagnostics", "get-boot-log", "--resource-group", RG, "--name", "linux-1")
    assert "linux-1 login:" in str(log)
    sizes = az("vm", "list-vm-resize-options", "--resource-group", RG, "--name", "linux-1")
    assert [s["name"] for s in sizes] == ["Lab_128MB"]
    az("vm", "redeploy", "--resource-group", RG, "--name", "linux-1")
    az("vm", "reapply", "--resource-group", RG, "--name", "linux-1")


def test_scale_set_commands_with_instance_ids(az: Az, client_lab: ClientLab) -> None:
    """``az vmss deallocate|start|restart --instance-ids``, as az serial-console's advice for
    a deallocated instance says ("Use az vmss start")."""

    def states() -> dict[str, str]:
        found = {}
        for n in ("0", "1"):
            view = az("vmss", "get-instance-view", "--resource-group", RG, "--name", "web-vmss",
                      "--instance-id", n)  # fmt: skip
            found[n] = next(s["code"] for s in view["statuses"] if s["code"].startswith("Power"))
        return found

    az("vmss", "deallocate", "--resource-group", RG, "--name", "web-vmss",
       "--instance-ids", "0", "1")  # fmt: skip
    assert states() == {"0": "PowerState/deallocated", "1": "PowerState/deallocated"}
    az("vmss", "start", "--resource-group", RG, "--name", "web-vmss", "--instance-ids", "1")
    assert states() == {"0": "PowerState/deallocated", "1": "PowerState/running"}
    az("vmss", "start", "--resource-group", RG, "--name", "web-vmss")  # all of them
    az("vmss", "restart", "--resource-group", RG, "--name", "web-vmss", "--instance-ids", "0")
    assert states() == {"0": "PowerState/running", "1": "PowerState/running"}
