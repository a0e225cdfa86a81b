"""ARM as Azure's own clients expect it, against a real server: Entra's token endpoints,
the lab's tenant, ARM's routing rules (case, api-version, unknown types), the provider's
operations and the console service's SubscriptionNotFound."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.lab.config import LabConfigError, parse_lab
from tests.integration.armapi import (
    API_VERSION,
    PORT,
    RG,
    SC,
    SUB,
    VMS,
    assert_arm_error,
    connect_path,
    sending_api_version,
)
from tests.integration.conftest import (
    CONTROL_PLANE_LAB,
    SUBSCRIPTION,
    RunningLab,
    running_lab,
)
from tests.support import lab as support_lab


@pytest.fixture
async def lab(lab: RunningLab) -> RunningLab:
    """The control-plane lab, its client sending ``api-version`` as ARM requires (unless a
    request names its own)."""
    return sending_api_version(lab)


# -- Entra's token endpoints (what azure-identity asks) ---------------------------------------


async def test_openid_configuration_names_the_token_endpoint(lab: RunningLab) -> None:
    """MSAL's discovery: the tenant's v2.0 configuration points at its token endpoint; an
    unknown tenant is Entra's AADSTS90002."""
    tenant = lab.runtime.context.inventory.tenant_id  # type: ignore[union-attr]
    reply = await lab.client.get(f"/{tenant}/v2.0/.well-known/openid-configuration")
    assert reply.status_code == 200
    config = reply.json()
    assert config["token_endpoint"] == f"{lab.runtime.url}/{tenant}/oauth2/v2.0/token"
    assert config["authorization_endpoint"].startswith(f"{lab.runtime.url}/{tenant}/")
    assert config["issuer"] == f"{lab.runtime.url}/{tenant}/v2.0"
    wrong = await lab.client.get("/not-our-tenant/v2.0/.well-known/openid-configuration")
    assert wrong.status_code == 400
    assert wrong.json()["error_description"].startswith("AADSTS90002: Tenant 'not-our-tenant'")


async def test_entra_token_endpoint_grants_and_refusals(lab: RunningLab) -> None:
    """client_credentials (client_id/client_secret = a user's name and password) and the
    password grant give tokens that ARM accepts; a bad secret is Entra's 401 invalid_client,
    a bad password its 400 invalid_grant, an unknown grant unsupported_grant_type."""
    tenant = lab.runtime.context.inventory.tenant_id  # type: ignore[union-attr]
    url = f"/{tenant}/oauth2/v2.0/token"
    scope = "https://management.azure.com/.default"
    reply = await lab.client.post(
        url,
        data={"grant_type": "client_credentials", "client_id": "bob",
              "client_secret": "bob-pw", "scope": scope},
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 600)
    subs = await lab.client.get(
        "/subscriptions", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert subs.json()["value"][0]["tenantId"] == tenant
    reply = await lab.client.post(
        url, data={"grant_type": "password", "username": "carol", "password": "carol-pw"}
    )
    assert reply.status_code == 200
    bad_secret = await lab.client.post(
        url, data={"grant_type": "client_credentials", "client_id": "bob", "client_secret": "x"}
    )
    assert (bad_secret.status_code, bad_secret.json()["error"]) == (401, "invalid_client")
    assert bad_secret.json()["error_codes"] == [7000215]
    bad_password = await lab.client.post(
        url, data={"grant_type": "password", "username": "carol", "password": "x"}
    )
    assert (bad_password.status_code, bad_password.json()["error"]) == (400, "invalid_grant")
    other = await lab.client.post(url, data={"grant_type": "device_code"})
    assert (other.status_code, other.json()["error"]) == (400, "unsupported_grant_type")


async def test_subscriptions_and_tenants_name_the_labs_tenant(lab: RunningLab) -> None:
    """GET /subscriptions, /subscriptions/{id} and /tenants carry the lab's tenant id."""
    bob = await lab.as_user("bob")
    tenant = lab.runtime.context.inventory.tenant_id  # type: ignore[union-attr]
    sub = (await lab.client.get(SUB, headers=bob)).json()
    assert (sub["subscriptionId"], sub["tenantId"], sub["state"]) == (
        SUBSCRIPTION, tenant, "Enabled"
    )  # fmt: skip
    tenants = (await lab.client.get("/tenants", headers=bob)).json()["value"]
    assert [t["tenantId"] for t in tenants] == [tenant]
    gina = await lab.as_user("gina")  # no role anywhere: the subscription is not hers to see
    assert_arm_error(await lab.client.get(SUB, headers=gina), 404, "SubscriptionNotFound")


# -- ARM's routing rules --------------------------------------------------------------------


async def test_arm_paths_match_without_regard_to_case(lab: RunningLab) -> None:
    """resourcegroups, microsoft.compute, VIRTUALMACHINES, a VM's name in capitals: the
    same resource, as ARM (and azure-mgmt-serialconsole's lower-case paths) expect."""
    bob = await lab.as_user("bob")
    exact = (await lab.client.get(f"{VMS}/vm-a", headers=bob)).json()
    odd = f"{SUB}/resourcegroups/LAB-RG/providers/microsoft.compute/VIRTUALMACHINES/VM-A"
    reply = await lab.client.get(odd, headers=bob)
    assert reply.status_code == 200, reply.text
    assert reply.json() == exact
    port = f"{odd}/PROVIDERS/Microsoft.SerialConsole/SERIALPORTS/0"
    assert (await lab.client.get(port, headers=bob)).json()["id"] == f"{VMS}/vm-a/{PORT}"


async def test_api_version_is_required_and_checked_per_provider(lab: RunningLab) -> None:
    """No api-version: ARM's MissingApiVersionParameter. One the provider does not publish:
    InvalidApiVersionParameter naming those it does. az's 2018-05-01 and the SDKs' current
    versions pass."""
    carol = await lab.as_user("carol")
    async with httpx.AsyncClient(base_url=lab.runtime.url) as bare:
        missing = await bare.get(f"{SC}/consoleServices/default", headers=carol)
    assert "(?api-version=) is required" in assert_arm_error(
        missing, 400, "MissingApiVersionParameter"
    )
    wrong = await lab.client.get(
        f"{SC}/consoleServices/default", params={"api-version": "2026-04-01"}, headers=carol
    )
    message = assert_arm_error(wrong, 400, "InvalidApiVersionParameter")
    assert message.startswith("The api-version '2026-04-01' is invalid.")
    assert "The supported versions are '2024-07-01,2023-01-01,2018-07-01-preview,2018-05-01'" in (
        message
    )
    for path, version in (
        (f"{VMS}/vm-a", "2026-04-01"),
        (f"{VMS}/vm-a/instanceView", "2026-04-01"),
        (f"{SC}/consoleServices/default", "2018-05-01"),
        ("/subscriptions", "2022-12-01"),
    ):
        reply = await lab.client.get(path, params={"api-version": version}, headers=carol)
        assert reply.status_code == 200, (path, reply.text)
    connect = await lab.client.post(
        connect_path("vm-a"), params={"api-version": "2018-05-01"}, headers=carol
    )
    assert connect.status_code == 200, connect.text
    compute = await lab.client.get(
        f"{VMS}/vm-a", params={"api-version": "2018-07-01-preview"}, headers=carol
    )
    assert_arm_error(compute, 400, "InvalidApiVersionParameter")


async def test_unknown_resource_types_are_arms_invalid_resource_type(lab: RunningLab) -> None:
    carol = await lab.as_user("carol")
    reply = await lab.client.get(f"{RG}/providers/microsoft.compute/DISKS/d1", headers=carol)
    assert assert_arm_error(reply, 404, "InvalidResourceType") == (
        "The resource type 'DISKS' could not be found in the namespace 'Microsoft.Compute' "
        f"for api version '{API_VERSION}'."
    )


async def test_serial_console_lists_its_operations(lab: RunningLab) -> None:
    """GET /providers/Microsoft.SerialConsole/operations, as the spec's example shows it."""
    reply = await lab.client.get(
        "/providers/Microsoft.SerialConsole/operations", headers=await lab.as_user("bob")
    )
    assert reply.status_code == 200
    names = [op["name"] for op in reply.json()["value"]]
    assert names[:3] == [
        "Microsoft.SerialConsole/consoleServices/read",
        "Microsoft.SerialConsole/consoleServices/disableConsole/action",
        "Microsoft.SerialConsole/consoleServices/enableConsole/action",
    ]
    assert "Microsoft.SerialConsole/serialPorts/connect/action" in names
    assert all(
        op["display"]["provider"] == "Microsoft.SerialConsole" for op in reply.json()["value"]
    )


@pytest.mark.parametrize("verb", ["", "/enableConsole", "/disableConsole"])
async def test_console_service_of_an_unknown_subscription_is_the_specs_404(
    lab: RunningLab, verb: str
) -> None:
    """consoleServices answers SubscriptionNotFound as its spec shows: {"code", "message"}."""
    unknown = "00000000-0000-0000-0000-000000000000"
    path = f"/subscriptions/{unknown}/providers/Microsoft.SerialConsole/consoleServices/default"
    method = "POST" if verb else "GET"
    response = await lab.client.request(method, path + verb, headers=await lab.as_user("carol"))
    assert response.status_code == 404
    assert response.json() == {
        "code": "SubscriptionNotFound",
        "message": f"The subscription '{unknown}' could not be found.",
    }


# -- the lab's tenant -----------------------------------------------------------------------


async def test_the_lab_file_names_the_tenant(tmp_path: Path) -> None:
    """[subscription] tenant_id is the tenant of /tenants, /subscriptions and Entra's paths;
    a tenant id that is not a GUID is a lab-file error that says what is expected."""
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    text = f'[subscription]\nid = "{SUBSCRIPTION}"\ntenant_id = "{tenant}"\n' + CONTROL_PLANE_LAB
    async with running_lab(text, tmp_path) as lab:
        bob = await lab.as_user("bob")
        tenants = await lab.client.get("/tenants?api-version=2022-12-01", headers=bob)
        assert [t["tenantId"] for t in tenants.json()["value"]] == [tenant]
        subs = await lab.client.get("/subscriptions?api-version=2022-12-01", headers=bob)
        assert subs.json()["value"][0]["tenantId"] == tenant
        config = await lab.client.get(f"/{tenant}/v2.0/.well-known/openid-configuration")
        assert config.json()["token_endpoint"].endswith(f"/{tenant}/oauth2/v2.0/token")
    with pytest.raises(LabConfigError, match=r"subscription\.tenant_id: expected a GUID"):
        parse_lab('[subscription]\ntenant_id = "oauth2"\n', source="lab.toml", base=tmp_path)


async def test_a_tls_lab_refusing_a_host_names_its_https_url(tmp_path: Path) -> None:
    """The DNS-rebinding refusal tells a TLS lab's user to use https://, not http://."""
    async with support_lab.running_lab(tmp_path, tls=True) as lab:
        reply = await lab.http.get("/subscriptions", headers={"Host": "evil.example"})
    message = assert_arm_error(reply, 400, "InvalidHost")
    assert "Use https://127.0.0.1:PORT" in message
