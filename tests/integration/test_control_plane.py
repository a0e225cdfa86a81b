"""The control plane against a real server: tokens, RBAC, Azure's prerequisites and texts,
one-time sessions, power actions, boot diagnostics, audit, and hostile input."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.errors import SessionExpired, SessionUsed, SessionWrongUser, UnknownSession
from gateway.api import errors as texts
from gateway.lab.config import LabConfigError, MachineSpec, parse_lab
from gateway.machines.base import PowerState, RestartOutcome
from tests.conftest import scaled
from tests.integration.conftest import (
    CONTROL_PLANE_LAB,
    SUBSCRIPTION,
    FakeMachine,
    RunningLab,
    running_lab,
)

SUB = f"/subscriptions/{SUBSCRIPTION}"
RG = f"{SUB}/resourceGroups/lab-rg"
VMS = f"{RG}/providers/Microsoft.Compute/virtualMachines"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets"
SC = f"{SUB}/providers/Microsoft.SerialConsole"
PORT = "providers/Microsoft.SerialConsole/serialPorts/0"
# Published by Microsoft.SerialConsole, Microsoft.Compute and Microsoft.Resources alike.
API_VERSION = "2024-07-01"


async def _with_api_version(request: httpx.Request) -> None:
    arm = request.url.path.startswith(("/subscriptions", "/providers", "/tenants"))
    if arm and "api-version" not in request.url.params:
        request.url = request.url.copy_merge_params({"api-version": API_VERSION})


@pytest.fixture
async def lab(lab: RunningLab) -> RunningLab:
    """The control-plane lab, its client sending ``api-version`` as ARM requires (unless a
    request names its own)."""
    lab.client.event_hooks["request"].append(_with_api_version)
    return lab


def connect_path(vm: str) -> str:
    return f"{VMS}/{vm}/{PORT}/connect"


def instance_connect_path(scale_set: str, n: int | str) -> str:
    return f"{VMSS}/{scale_set}/virtualMachines/{n}/{PORT}/connect"


def assert_arm_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """The response is ARM's error shape with ``status`` (and ``code``); its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


# -- tokens ---------------------------------------------------------------------------------


async def test_token_endpoint_issues_bearer_tokens(lab: RunningLab) -> None:
    """A user trades name and password for a Bearer token with its lifetime."""
    response = await lab.client.post(
        "/oauth2/token",
        data={"grant_type": "password", "username": "alice", "password": "alice-pw"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert len(body["access_token"]) >= 32


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "alice", "password": "nope"}, "invalid_grant"),
        ({"grant_type": "password", "username": "mallory", "password": "x"}, "invalid_grant"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "alice"}, "invalid_request"),
        ({}, "unsupported_grant_type"),
    ],
)
async def test_token_endpoint_refuses_bad_credentials(
    lab: RunningLab, form: dict[str, str], error: str
) -> None:
    """Wrong passwords, unknown users and other grants get OAuth's 400 error, no token."""
    response = await lab.client.post("/oauth2/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "access_token" not in response.json()


async def test_routes_refuse_requests_without_a_valid_token(lab: RunningLab) -> None:
    """Every route but the token endpoint answers 401 in ARM's shape, saying how to get in."""
    paths = [
        ("GET", "/subscriptions"),
        ("GET", f"{SC}/consoleServices/default"),
        ("POST", connect_path("vm-a")),
        ("GET", f"{VMS}/vm-a"),
        ("POST", f"{VMS}/vm-a/start"),
        ("GET", f"{SC}/auditLogs"),
    ]
    for method, path in paths:
        response = await lab.client.request(method, path)
        message = assert_arm_error(response, 401, "AuthenticationFailed")
        assert "POST /oauth2/token" in message
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        bad = await lab.client.request(method, path, headers={"Authorization": "Bearer forged"})
        assert_arm_error(bad, 401, "InvalidAuthenticationToken")


async def test_tokens_expire(lab: RunningLab) -> None:
    """A token stops working once its lifetime is over: 401 ExpiredAuthenticationToken."""
    headers = await lab.as_user("carol")
    assert (await lab.client.get("/subscriptions", headers=headers)).status_code == 200
    tokens = lab.runtime.context.tokens  # type: ignore[union-attr]
    tokens.clock = lambda: time.time() + 601
    message = assert_arm_error(
        await lab.client.get("/subscriptions", headers=headers), 401, "ExpiredAuthenticationToken"
    )
    assert "expiry" in message


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


# -- RBAC: role x action x scope --------------------------------------------------------------

# (method, path, body) -> users allowed; every other user of the lab must get 403.
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina")
MATRIX: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("GET", f"{VMS}/vm-a", None, {"alice", "bob", "carol", "dave", "erin"}),
    ("GET", f"{VMS}/vm-b", None, {"alice", "bob", "carol", "dave"}),
    ("GET", f"{VMS}", None, {"alice", "bob", "carol", "dave"}),
    ("GET", f"{VMSS}/web-vmss/virtualMachines/1", None, {"alice", "bob", "carol", "dave", "frank"}),
    ("POST", connect_path("vm-a"), None, {"alice", "carol", "dave", "erin"}),
    ("POST", connect_path("vm-b"), None, {"alice", "carol", "dave"}),
    ("POST", instance_connect_path("web-vmss", 0), None, {"alice", "carol", "dave", "frank"}),
    ("POST", f"{VMS}/vm-a/restart", None, {"alice", "carol", "dave", "erin"}),
    (
        "POST",
        f"{VMSS}/web-vmss/virtualMachines/1/restart",
        None,
        {"alice", "carol", "dave", "frank"},
    ),
    ("POST", f"{VMS}/vm-a/retrieveBootDiagnosticsData", None, {"alice", "carol", "dave", "erin"}),
    ("GET", f"{VMS}/vm-a/{PORT}", None, {"alice", "bob", "carol", "dave", "erin"}),
    ("PUT", f"{VMS}/vm-a/{PORT}", {"properties": {"state": "enabled"}}, {"carol", "dave"}),
    ("GET", f"{SC}/consoleServices/default", None, {"bob", "carol", "dave"}),
    ("POST", f"{SC}/consoleServices/default/enableConsole", None, {"carol", "dave"}),
    ("GET", f"{SC}/serialPorts", None, {"bob", "carol", "dave"}),
    ("GET", f"{SC}/auditLogs", None, {"carol", "dave"}),
]


async def test_role_action_scope_matrix(lab: RunningLab) -> None:
    """Each role does what Azure's role allows at its scope and below, and nothing else."""
    headers = {user: await lab.as_user(user) for user in USERS}
    wrong = []
    for method, path, body, allowed in MATRIX:
        for user in USERS:
            response = await lab.client.request(method, path, json=body, headers=headers[user])
            success = 202 if path.endswith("/restart") else 201 if method == "PUT" else 200
            expected = success if user in allowed else 403
            if response.status_code != expected:
                wrong.append(f"{user} {method} {path}: {response.status_code} (want {expected})")
            elif expected == 403:
                assert_arm_error(response, 403, "AuthorizationFailed")
    assert not wrong, "\n".join(wrong)


async def test_subscription_vm_list_shows_what_the_caller_may_read(lab: RunningLab) -> None:
    """As in ARM, listing a subscription's VMs shows the ones the caller may read, no more."""
    path = f"{SUB}/providers/Microsoft.Compute/virtualMachines"
    seen = {}
    for user in ("alice", "bob", "erin", "gina"):
        response = await lab.client.get(path, headers=await lab.as_user(user))
        assert response.status_code == 200, response.text
        seen[user] = sorted(vm["name"] for vm in response.json()["value"])
    assert "vm-other" in seen["bob"]
    assert "vm-other" not in seen["alice"]
    assert "vm-a" in seen["alice"]
    assert seen["erin"] == ["vm-a"]
    assert seen["gina"] == []


async def test_subscription_list_shows_where_the_caller_has_a_role(lab: RunningLab) -> None:
    """Users with any role in the subscription see it; a user with none sees nothing."""
    for user, count in (("alice", 1), ("erin", 1), ("carol", 1), ("gina", 0)):
        response = await lab.client.get("/subscriptions", headers=await lab.as_user(user))
        assert response.status_code == 200
        assert len(response.json()["value"]) == count, user


# -- connect: Azure's prerequisites, in Azure's order ----------------------------------------


async def test_connect_returns_a_websocket_url(lab: RunningLab) -> None:
    """connect answers a ws:// URL on this gateway with a one-time session id."""
    response = await lab.client.post(connect_path("vm-a"), headers=await lab.as_user("alice"))
    assert response.status_code == 200, response.text
    url = httpx.URL(response.json()["connectionString"])
    assert url.scheme == "ws"
    assert f"{url.host}:{url.port}" == httpx.URL(lab.runtime.url).netloc.decode()
    parts = url.path.split("/")
    assert parts[1:3] == ["n", "connector"]
    assert parts[4] == "sessions"
    assert parts[6] == "client"


async def test_connect_refused_when_console_disabled_before_role_check(lab: RunningLab) -> None:
    """With the console disabled, everyone (even a Reader) reads Azure's 'not enabled' text."""
    carol = await lab.as_user("carol")
    response = await lab.client.post(f"{SC}/consoleServices/default/disableConsole", headers=carol)
    assert response.json() == {"properties": {"disabled": True}}
    for user in ("alice", "bob"):
        response = await lab.client.post(connect_path("vm-a"), headers=await lab.as_user(user))
        assert assert_arm_error(response, 409) == texts.CONSOLE_DISABLED
    response = await lab.client.get(f"{SC}/consoleServices/default", headers=carol)
    assert response.json()["properties"] == {"disabled": True}
    await lab.client.post(f"{SC}/consoleServices/default/enableConsole", headers=carol)
    response = await lab.client.post(connect_path("vm-a"), headers=carol)
    assert response.status_code == 200


async def test_connect_refused_without_the_role(lab: RunningLab) -> None:
    """A Reader is told Azure's text: at least Virtual Machine Contributor is needed."""
    response = await lab.client.post(connect_path("vm-a"), headers=await lab.as_user("bob"))
    assert assert_arm_error(response, 403, "AuthorizationFailed") == texts.NO_PERMISSION


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (connect_path("creating-1"), texts.NOT_PROVISIONED),  # also no boot diagnostics
        (connect_path("nodiag-1"), texts.BOOT_DIAGNOSTICS_OFF),
        (instance_connect_path("web-vmss", 2), texts.BOOT_DIAGNOSTICS_OFF),  # old model
        (instance_connect_path("nodiag-vmss", 0), texts.BOOT_DIAGNOSTICS_OFF),
        (connect_path("portoff-1"), texts.PORT_DISABLED),
    ],
)
async def test_connect_prerequisites_have_azures_messages(
    lab: RunningLab, path: str, message: str
) -> None:
    """Each unmet prerequisite is refused with Azure's text for it."""
    response = await lab.client.post(path, headers=await lab.as_user("carol"))
    assert assert_arm_error(response, 409) == message


async def test_connect_refused_while_the_vm_is_not_running(lab: RunningLab) -> None:
    """A stopped or deallocated VM: Azure's 'requires a virtual machine to be running'."""
    alice = await lab.as_user("alice")
    assert (await power(lab, f"{VMS}/vm-b/powerOff", alice))["status"] == "Succeeded"
    response = await lab.client.post(connect_path("vm-b"), headers=alice)
    assert assert_arm_error(response, 409, "VMNotRunning") == texts.NOT_RUNNING
    assert (await power(lab, f"{VMS}/vm-b/deallocate", alice))["status"] == "Succeeded"
    response = await lab.client.post(connect_path("vm-b"), headers=alice)
    assert assert_arm_error(response, 409) == texts.NOT_RUNNING
    assert (await power(lab, f"{VMS}/vm-b/start", alice))["status"] == "Succeeded"
    assert (await lab.client.post(connect_path("vm-b"), headers=alice)).status_code == 200


async def test_enabling_a_disabled_port_allows_connect(lab: RunningLab) -> None:
    """PUT serialPorts/0 with state enabled lifts the refusal; the port reads enabled."""
    carol = await lab.as_user("carol")
    port = f"{VMS}/portoff-1/{PORT}"
    assert (await lab.client.get(port, headers=carol)).json()["properties"]["state"] == "disabled"
    body = {"properties": {"state": "enabled"}}
    response = await lab.client.put(port, json=body, headers=carol)
    assert response.status_code == 201  # the spec's one success code for create
    assert response.json()["properties"] == {"state": "enabled", "connectionState": "inactive"}
    assert response.json()["type"] == "Microsoft.SerialConsole/serialPorts"
    assert (await lab.client.post(connect_path("portoff-1"), headers=carol)).status_code == 200


async def test_deleting_a_port_brings_back_the_lab_files_state(lab: RunningLab) -> None:
    """DELETE serialPorts/0 forgets the PUT (200), the port is as the lab file says again;
    a second DELETE has nothing to delete (204). Alice (VM Contributor) may not delete."""
    carol = await lab.as_user("carol")
    port = f"{VMS}/portoff-1/{PORT}"
    body = {"properties": {"state": "enabled"}}
    assert (await lab.client.put(port, json=body, headers=carol)).status_code == 201
    assert (await lab.client.delete(port, headers=carol)).status_code == 200
    assert (await lab.client.get(port, headers=carol)).json()["properties"]["state"] == "disabled"
    assert (await lab.client.delete(port, headers=carol)).status_code == 204
    denied = await lab.client.delete(port, headers=await lab.as_user("alice"))
    assert_arm_error(denied, 403, "AuthorizationFailed")


# -- one-time sessions ----------------------------------------------------------------------


async def _session(lab: RunningLab, user: str, path: str) -> str:
    response = await lab.client.post(path, headers=await lab.as_user(user))
    assert response.status_code == 200, response.text
    return httpx.URL(response.json()["connectionString"]).path.split("/")[5]


async def test_session_is_single_use_and_bound_to_its_user(lab: RunningLab) -> None:
    """A session URL opens one connection, for the user who asked for it, to that VM."""
    sessions = lab.runtime.context.sessions  # type: ignore[union-attr]
    session_id = await _session(lab, "alice", connect_path("vm-a"))
    with pytest.raises(SessionWrongUser):
        sessions.claim(session_id, "carol")
    grant = sessions.claim(session_id, "alice")
    assert grant.user == "alice"
    assert grant.vm_id == f"{VMS}/vm-a"
    with pytest.raises(SessionUsed):
        sessions.claim(session_id, "alice")
    with pytest.raises(UnknownSession):
        sessions.claim("no-such-session", "alice")
    instance = await _session(lab, "frank", instance_connect_path("web-vmss", 1))
    assert sessions.claim(instance, "frank").vm_id == f"{VMSS}/web-vmss/virtualMachines/1"


async def test_session_expires_after_sixty_seconds(lab: RunningLab) -> None:
    """A session not used within 60 seconds of connect can no longer be opened."""
    sessions = lab.runtime.context.sessions  # type: ignore[union-attr]
    session_id = await _session(lab, "alice", connect_path("vm-a"))
    real = sessions.clock
    sessions.clock = lambda: real() + 60.5
    with pytest.raises(SessionExpired, match="60 seconds"):
        sessions.claim(session_id, "alice")


async def test_every_connect_makes_a_new_session(lab: RunningLab) -> None:
    """Two connects give two different URLs (Azure: every call makes a new session)."""
    first = await _session(lab, "alice", connect_path("vm-a"))
    second = await _session(lab, "alice", connect_path("vm-a"))
    assert first != second


# -- compute --------------------------------------------------------------------------------


async def power_status(lab: RunningLab, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The operation status at ``url``, polled until it is no longer InProgress."""
    async with asyncio.timeout(scaled(30)):
        while True:
            status = await lab.client.get(url, headers=headers)
            body: dict[str, Any] = status.json()
            if body["status"] != "InProgress":
                return body
            assert int(status.headers["Retry-After"]) >= 1  # pollers wait this long
            # The status resource is polled, as ARM's clients do; it has no event to await.
            await asyncio.sleep(0.05)


async def power(lab: RunningLab, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """POST a power action as ARM's long-running operation: 202 with Azure-AsyncOperation,
    Location and Retry-After; then the status resource until it is final. Its last body."""
    response = await lab.client.post(path, headers=headers)
    assert response.status_code == 202, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "monitor=true" in response.headers["Location"]
    status_url = response.headers["Azure-AsyncOperation"]
    assert "/providers/Microsoft.Compute/locations/" in status_url
    body = await power_status(lab, status_url, headers)
    final = await lab.client.get(response.headers["Location"], headers=headers)
    assert final.status_code == (200 if body["status"] == "Succeeded" else 409), final.text
    return body


async def _power_state(lab: RunningLab, path: str, headers: dict[str, str]) -> str:
    response = await lab.client.get(f"{path}/instanceView", headers=headers)
    codes = [s["code"] for s in response.json()["statuses"]]
    return next(c for c in codes if c.startswith("PowerState/"))


async def test_power_actions_drive_the_machine(lab: RunningLab) -> None:
    """powerOff, start, restart and deallocate reach the machine and show in the instance view."""
    alice = await lab.as_user("alice")
    vm = f"{VMS}/vm-a"
    assert await _power_state(lab, vm, alice) == "PowerState/running"
    for action, state in (
        ("powerOff", "PowerState/stopped"),
        ("start", "PowerState/running"),
        ("restart", "PowerState/running"),
        ("deallocate", "PowerState/deallocated"),
    ):
        body = await power(lab, f"{vm}/{action}", alice)
        assert body["status"] == "Succeeded", body
        assert body["endTime"] >= body["startTime"]
        assert await _power_state(lab, vm, alice) == state
    machine = lab.runtime.machines["vm-a"]
    assert machine.calls[-4:] == ["stop", "start", "restart", "deallocate"]  # type: ignore[attr-defined]
    response = await lab.client.post(f"{vm}/restart", headers=alice)
    assert "deallocated" in assert_arm_error(response, 409, "OperationNotAllowed")


class SlowMachine(FakeMachine):
    """Restarts only when the test says so: a power action that is still running."""

    def __init__(self, name: str, os_type: str = "linux") -> None:
        super().__init__(name, os_type)
        self.restart_entered = asyncio.Event()
        self.finish_restart = asyncio.Event()

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        self._require(PowerState.RUNNING, action="restart")
        self.restart_entered.set()
        await self.finish_restart.wait()
        return RestartOutcome.GRACEFUL


def slow_factory(spec: MachineSpec, run_dir: Path) -> SlowMachine:
    return SlowMachine(spec.name, spec.os)


async def test_a_running_power_action_is_polled_then_ends_with_the_lab(tmp_path: Path) -> None:
    """While the machine works, the status is InProgress with Retry-After and the Location
    URL answers 202; once done, Succeeded and 200. An operation still running when the lab
    stops is canceled, not left behind."""
    async with running_lab(CONTROL_PLANE_LAB, tmp_path, slow_factory) as lab:
        lab.client.event_hooks["request"].append(_with_api_version)
        alice = await lab.as_user("alice")
        machine = lab.runtime.machines["vm-a"]
        assert isinstance(machine, SlowMachine)
        accepted = await lab.client.post(f"{VMS}/vm-a/restart", headers=alice)
        assert accepted.status_code == 202
        await asyncio.wait_for(machine.restart_entered.wait(), scaled(10))
        status = await lab.client.get(accepted.headers["Azure-AsyncOperation"], headers=alice)
        assert status.json()["status"] == "InProgress"
        assert status.headers["Retry-After"] == "1"
        monitor = await lab.client.get(accepted.headers["Location"], headers=alice)
        assert monitor.status_code == 202
        machine.finish_restart.set()
        body = await power_status(lab, accepted.headers["Azure-AsyncOperation"], alice)
        assert (body["status"], body["properties"]["output"]) == ("Succeeded", "graceful")
        assert (
            await lab.client.get(accepted.headers["Location"], headers=alice)
        ).status_code == 200
        machine.finish_restart.clear()
        machine.restart_entered.clear()
        second = await lab.client.post(f"{VMS}/vm-a/restart", headers=alice)
        await asyncio.wait_for(machine.restart_entered.wait(), scaled(10))
        operations = lab.runtime.context.operations  # type: ignore[union-attr]
        pending = operations.get(
            second.headers["Azure-AsyncOperation"].split("/")[-1].split("?")[0]
        )
        assert pending is not None
    assert pending.status == "Canceled"
    assert pending.task is not None
    assert pending.task.done()


async def test_vm_and_scale_set_bodies_look_like_arm(lab: RunningLab) -> None:
    """VM, scale set and instance GETs carry ARM's ids, types and the instance view."""
    bob = await lab.as_user("bob")
    vm = (await lab.client.get(f"{VMS}/nodiag-1?$expand=instanceView", headers=bob)).json()
    assert vm["id"] == f"{VMS}/nodiag-1"
    assert vm["type"] == "Microsoft.Compute/virtualMachines"
    assert vm["properties"]["diagnosticsProfile"]["bootDiagnostics"]["enabled"] is False
    assert vm["properties"]["instanceView"]["statuses"][1]["code"] == "PowerState/running"
    vmss = (await lab.client.get(f"{VMSS}/web-vmss", headers=bob)).json()
    assert vmss["sku"]["capacity"] == 3
    instances = (await lab.client.get(f"{VMSS}/web-vmss/virtualMachines", headers=bob)).json()
    latest = [i["properties"]["latestModelApplied"] for i in instances["value"]]
    assert latest == [True, True, False]
    assert instances["value"][0]["name"] == "web-vmss_0"


# -- boot diagnostics -----------------------------------------------------------------------


def pages(url: str | httpx.URL, **params: int) -> httpx.URL:
    """The paged JSON reading of the serial log blob at ``url`` (same se and sig)."""
    blob = httpx.URL(url)
    return blob.copy_with(path=blob.path + "/pages").copy_merge_params(params)


async def test_boot_diagnostics_url_is_a_blob(lab: RunningLab) -> None:
    """retrieveBootDiagnosticsData gives a signed URL that answers like a block blob: the
    log's bytes as text/plain with Content-Length, ETag, Last-Modified, x-ms-blob-type;
    HEAD gives the headers alone; Range a 206; a Range past the end a 416 in XML."""
    log = b"[    0.000000] Linux version 6.1\nlogin: "
    lab.runtime.bootlogs["vm-a"].append(log)
    alice = await lab.as_user("alice")
    response = await lab.client.post(f"{VMS}/vm-a/retrieveBootDiagnosticsData", headers=alice)
    url = response.json()["serialConsoleLogBlobUri"]
    blob = await lab.client.get(url)
    assert blob.status_code == 200
    assert blob.content == log
    assert blob.headers["content-type"].startswith("text/plain")
    assert blob.headers["content-length"] == str(len(log))
    assert blob.headers["x-ms-blob-type"] == "BlockBlob"
    assert blob.headers["etag"].startswith('"')
    assert blob.headers["last-modified"].endswith(" GMT")
    head = await lab.client.head(url)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["etag"] == blob.headers["etag"]
    assert head.headers["content-length"] == str(len(log))
    part = await lab.client.get(url, headers={"Range": "bytes=15-19"})
    assert (part.status_code, part.content) == (206, b"Linux")
    assert part.headers["content-range"] == f"bytes 15-19/{len(log)}"
    tail = await lab.client.get(url, headers={"x-ms-range": "bytes=-7"})
    assert (tail.status_code, tail.content) == (206, b"login: ")
    past = await lab.client.get(url, headers={"Range": f"bytes={len(log)}-"})
    assert past.status_code == 416
    assert "<Code>InvalidRange</Code>" in past.text
    lab.runtime.bootlogs["vm-a"].append(b"root\n")
    grown = await lab.client.get(url)
    assert grown.content == log + b"root\n"
    assert grown.headers["etag"] != blob.headers["etag"]


async def test_boot_diagnostics_pages_read_the_log_by_offset(lab: RunningLab) -> None:
    """The same signature reads the log by byte offset as JSON (serial-console boot-log)."""
    lab.runtime.bootlogs["vm-a"].append(b"[    0.000000] Linux version 6.1\nlogin: ")
    alice = await lab.as_user("alice")
    response = await lab.client.post(f"{VMS}/vm-a/retrieveBootDiagnosticsData", headers=alice)
    url = response.json()["serialConsoleLogBlobUri"]
    page = (await lab.client.get(pages(url, start=0))).json()
    assert page["contents"].startswith("[    0.000000] Linux")
    assert (page["start"], page["next"], page["rotated"]) == (0, 40, False)
    lab.runtime.bootlogs["vm-a"].append(b"root\n")
    more = (await lab.client.get(pages(url, start=page["next"]))).json()
    assert (more["contents"], more["start"], more["next"]) == ("root\n", 40, 45)


async def test_boot_diagnostics_reports_rotated_bytes(lab: RunningLab) -> None:
    """Asking for bytes the ring no longer keeps says so, and where the kept bytes start."""
    bootlog = lab.runtime.bootlogs["vm-a"]
    bootlog.append(b"x" * (bootlog.capacity + 100))
    alice = await lab.as_user("alice")
    url = (await lab.client.post(f"{VMS}/vm-a/retrieveBootDiagnosticsData", headers=alice)).json()[
        "serialConsoleLogBlobUri"
    ]
    page = (await lab.client.get(pages(url, start=10, maxBytes=10))).json()
    assert page["rotated"] is True
    assert page["start"] == 100
    assert page["next"] == 110
    assert "rotated" in page["warning"]
    blob = await lab.client.get(url)
    assert len(blob.content) == bootlog.capacity  # the blob is the kept bytes


def assert_blob_error(response: httpx.Response, status: int, code: str) -> str:
    """Azure Storage's error: XML with Code and Message, x-ms-error-code; its XML."""
    assert response.status_code == status, response.text
    assert response.headers["x-ms-error-code"] == code
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text.startswith('<?xml version="1.0" encoding="utf-8"?><Error>')
    assert f"<Code>{code}</Code>" in response.text
    return response.text


async def test_boot_diagnostics_url_is_signed_and_expires(lab: RunningLab) -> None:
    """A tampered or expired log URL is refused with the blob service's 403
    AuthenticationFailed (in XML; JSON on the pages); no bearer token opens it either."""
    alice = await lab.as_user("alice")
    url = httpx.URL(
        (await lab.client.post(f"{VMS}/vm-a/retrieveBootDiagnosticsData", headers=alice)).json()[
            "serialConsoleLogBlobUri"
        ]
    )
    other = url.copy_with(path=url.path.replace("vm-a", "vm-b"))
    assert_blob_error(await lab.client.get(other), 403, "AuthenticationFailed")
    assert_blob_error(await lab.client.get(url.copy_with(query=b"")), 403, "AuthenticationFailed")
    forged = url.copy_merge_params({"sig": "\u96e3\u00a9\u00ec"})  # non-ASCII: still a 403
    assert_blob_error(await lab.client.get(forged), 403, "AuthenticationFailed")
    head = await lab.client.head(forged)
    assert (head.status_code, head.headers["x-ms-error-code"]) == (403, "AuthenticationFailed")
    assert_arm_error(await lab.client.get(pages(forged)), 403, "AuthenticationFailed")
    signer = lab.runtime.context.signer  # type: ignore[union-attr]
    signer.clock = lambda: time.time() + 3 * 3600
    assert "expired" in assert_blob_error(await lab.client.get(url), 403, "AuthenticationFailed")
    assert "expired" in assert_arm_error(await lab.client.get(pages(url)), 403)


async def test_boot_diagnostics_needs_boot_diagnostics(lab: RunningLab) -> None:
    """A VM with boot diagnostics off has no serial log to hand out."""
    response = await lab.client.post(
        f"{VMS}/nodiag-1/retrieveBootDiagnosticsData", headers=await lab.as_user("carol")
    )
    assert_arm_error(response, 409)


# -- audit ----------------------------------------------------------------------------------


async def test_audit_records_tokens_connects_and_power_actions(lab: RunningLab) -> None:
    """Owners read who got tokens, who connected or was refused, and who powered what."""
    await lab.client.post(
        "/oauth2/token", data={"grant_type": "password", "username": "alice", "password": "x"}
    )
    alice = await lab.as_user("alice")
    await lab.client.post(connect_path("vm-a"), headers=alice)
    await lab.client.post(connect_path("vm-a"), headers=await lab.as_user("bob"))
    await lab.client.post(connect_path("nodiag-1"), headers=alice)
    await power(lab, f"{VMS}/vm-b/powerOff", alice)
    carol = await lab.as_user("carol")
    await lab.client.post(f"{SC}/consoleServices/default/disableConsole", headers=carol)
    rows = (await lab.client.get(f"{SC}/auditLogs", headers=carol)).json()["value"]
    seen = {(r["user"], r["action"], r["outcome"]) for r in rows}
    assert ("alice", "token", "denied") in seen
    assert ("alice", "token", "allowed") in seen
    assert ("alice", "connect", "allowed") in seen
    assert ("bob", "connect", "denied") in seen
    assert ("carol", "disableConsole", "succeeded") in seen
    stopped = next(r for r in rows if r["action"].endswith("powerOff/action"))
    assert (stopped["user"], stopped["outcome"], stopped["target"]) == (
        "alice",
        "succeeded",
        f"{VMS}/vm-b",
    )
    nodiag = next(r for r in rows if r["action"] == "connect" and "nodiag-1" in r["target"])
    assert nodiag["outcome"] == "denied"
    assert "BootDiagnostics" in nodiag["detail"]
    assert all(r["address"].startswith("127.0.0.1:") for r in rows)
    assert all(r["time"].endswith("Z") for r in rows)
    page = (await lab.client.get(f"{SC}/auditLogs?$top=2", headers=carol)).json()
    assert len(page["value"]) == 2
    assert "sinceId=" in page["nextLink"]


# -- hostile and malformed input ------------------------------------------------------------


HOSTILE = [
    ("GET", f"{VMS}/%2E%2E", 400),
    ("GET", f"{VMS}/..", None),  # clients may fold dot segments: any 4xx
    ("GET", f"{VMS}/a%2Fb", 404),
    ("GET", f"{VMS}/{'a' * 5000}", 400),
    ("GET", f"{VMS}/bad%20name", 400),
    ("GET", f"{VMS}/%00", 400),
    ("GET", f"{VMS}/%E2%98%83", 400),
    ("POST", connect_path("-x"), 400),
    ("GET", f"{SUB}/resourceGroups/%2E%2E/providers/Microsoft.Compute/virtualMachines", 400),
    ("GET", f"{VMSS}/web-vmss/virtualMachines/abc", 400),
    ("GET", f"{VMSS}/web-vmss/virtualMachines/{'9' * 50}", 400),
    ("GET", f"{VMS}/no-such-vm", 404),
    ("GET", f"{VMSS}/web-vmss/virtualMachines/7", 404),
    ("GET", f"{SUB}/resourceGroups/no-rg/providers/Microsoft.Compute/virtualMachines/x", 404),
    (
        "GET",
        "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.SerialConsole/serialPorts",
        404,
    ),
    (
        "GET",
        "/subscriptions/..%2F../providers/Microsoft.SerialConsole/consoleServices/default",
        404,
    ),
    ("GET", f"{VMS}/vm-a/providers/Microsoft.SerialConsole/serialPorts/1", 404),
    ("GET", "/no/such/route", 404),
    ("GET", f"{RG}/providers/Microsoft.Compute/disks/d1", 404),
    ("DELETE", f"{VMS}/vm-a", 405),
    ("GET", f"{SC}/auditLogs?$top=-1", 400),
    ("GET", f"{SC}/auditLogs?sinceId=abc", 400),
    ("POST", f"{VMS}/vm-a/retrieveBootDiagnosticsData?sasUriExpirationTimeInMinutes=0", 400),
]


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


@pytest.mark.parametrize(("method", "path", "status"), HOSTILE)
async def test_hostile_paths_get_a_clear_4xx(
    lab: RunningLab, method: str, path: str, status: int | None
) -> None:
    """Names with '..', '/', control characters or huge lengths, unknown resources and
    routes: 4xx in ARM's shape with a message, never 5xx."""
    response = await lab.client.request(method, path, headers=await lab.as_user("carol"))
    assert 400 <= response.status_code < 500, response.text
    if status is not None:
        assert_arm_error(response, status)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"properties": {"state": "on"}}',
        b'{"properties": "enabled"}',
        b"{}",
        b"\xff\xfe",
        b'{"properties": {"state": "' + b"e" * 100000 + b'"}}',
    ],
)
async def test_malformed_bodies_get_400(lab: RunningLab, content: bytes) -> None:
    """A serial port PUT with a body that is not ``{"properties": {"state": ...}}`` is 400."""
    headers = await lab.as_user("carol") | {"Content-Type": "application/json"}
    response = await lab.client.put(f"{VMS}/vm-a/{PORT}", content=content, headers=headers)
    message = assert_arm_error(response, 400, "InvalidRequestContent")
    assert "invalid" in message


async def test_openapi_lists_the_azure_paths(lab: RunningLab) -> None:
    """/openapi.json documents the Azure-shaped paths."""
    spec = (await lab.client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert "/oauth2/token" in paths
    assert any(p.endswith("/serialPorts/{port}/connect") for p in paths)
    assert any(p.endswith("/retrieveBootDiagnosticsData") for p in paths)
    connect = next(p for p in paths if p.endswith("/serialPorts/{port}/connect"))
    version = next(
        p for p in spec["paths"][connect]["post"]["parameters"] if p["name"] == "api-version"
    )
    assert (version["in"], version["required"]) == ("query", True)
    assert {"2024-07-01", "2018-05-01"} <= set(version["schema"]["enum"])
    token = spec["paths"]["/oauth2/token"]["post"]
    assert all(p["name"] != "api-version" for p in token.get("parameters", []))


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
