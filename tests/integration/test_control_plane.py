"""The control plane against a real server: tokens, RBAC, Azure's prerequisites and texts,
one-time sessions, audit, and hostile input."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from gateway.access.errors import SessionExpired, SessionUsed, SessionWrongUser, UnknownSession
from gateway.api import errors as texts
from tests.integration.armapi import (
    PORT,
    RG,
    SC,
    SUB,
    VMS,
    VMSS,
    assert_arm_error,
    connect_path,
    instance_connect_path,
    power,
    sending_api_version,
)
from tests.integration.conftest import (
    RunningLab,
)


@pytest.fixture
async def lab(lab: RunningLab) -> RunningLab:
    """The control-plane lab, its client sending ``api-version`` as ARM requires (unless a
    request names its own)."""
    return sending_api_version(lab)


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
    # Virtual Machine Contributor's one Microsoft.SerialConsole action is connect, as
    # published: no serialPorts/read (Azure answers it 403)
    ("GET", f"{VMS}/vm-a/{PORT}", None, {"bob", "carol", "dave"}),
    ("POST", f"{VMSS}/web-vmss/restart", None, {"alice", "carol", "dave", "frank"}),
    ("GET", f"{VMSS}/web-vmss/instanceView", None, {"alice", "bob", "carol", "dave", "frank"}),
    ("GET", f"{VMS}/vm-a/vmSizes", None, {"alice", "bob", "carol", "dave", "erin"}),
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
    started, stopped = [r for r in rows if r["action"].endswith("powerOff/action")]
    assert (started["outcome"], started["detail"]) == ("allowed", "started")  # before acting
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


async def test_a_refusal_names_the_scope_as_the_request_spelled_it(lab: RunningLab) -> None:
    """az sends ``resourcegroups``: ARM's 403 echoes the scope as sent, not as the lab
    spells it."""
    bob = await lab.as_user("bob")  # a Reader
    path = f"{VMS}/vm-a/restart".replace("/resourceGroups/", "/resourcegroups/")
    message = assert_arm_error(await lab.client.post(path, headers=bob), 403, "AuthorizationFailed")
    assert "over scope '/subscriptions/" in message
    assert "/resourcegroups/lab-rg/providers/Microsoft.Compute/virtualMachines/vm-a'" in message
