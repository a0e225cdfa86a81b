"""What the portal asks of the gateway, over HTTP: the page and its headers, the caller's
permissions (Microsoft.Authorization), the subscription's scale sets, token revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.api import portal
from tests.support.lab import EMULATED_VMS, SUBSCRIPTION, LabHandle, running_lab, scale_set

SCALE_SET = scale_set()
AUTHZ = "api-version=2022-04-01"
COMPUTE = "api-version=2026-04-01"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path, vms=EMULATED_VMS + SCALE_SET) as handle:
        yield handle


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_page_is_served_with_its_security_headers(lab: LabHandle) -> None:
    page = await lab.http.get("/")  # make test builds the portal first
    assert page.status_code == 200, "the portal is not built: run make portal"
    assert '<script type="module" src="/portal/app.js">' in page.text
    script = await lab.http.get("/portal/app.js")
    assert script.status_code == 200
    assert script.headers["content-security-policy"] == page.headers["content-security-policy"]
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert (await lab.http.get("/portal/no-such-file.js")).status_code == 404


async def test_an_unbuilt_portal_says_how_to_build_it(
    lab: LabHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portal, "DIST", tmp_path / "nothing")
    page = await lab.http.get("/")
    assert page.status_code == 503
    assert "make portal" in page.text
    assert "npm ci" in page.text


async def test_permissions_list_what_the_callers_roles_allow(lab: LabHandle) -> None:
    vm = lab.vm_path("linux-1")
    alice = await lab.token("alice")
    answer = await lab.http.get(
        f"{vm}/providers/Microsoft.Authorization/permissions?{AUTHZ}", headers=bearer(alice)
    )
    assert answer.status_code == 200
    [rules] = answer.json()["value"]
    assert "Microsoft.Compute/virtualMachines/*" in rules["actions"]
    assert "Microsoft.SerialConsole/serialPorts/connect/action" in rules["actions"]

    bob = await lab.token("bob")
    answer = await lab.http.get(
        f"{vm}/providers/microsoft.authorization/PERMISSIONS?{AUTHZ}", headers=bearer(bob)
    )
    assert answer.json()["value"] == [
        {"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}
    ]

    instance = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg/providers/Microsoft.Compute"
        "/virtualMachineScaleSets/web-vmss/virtualMachines/0"
    )
    answer = await lab.http.get(
        f"{instance}/providers/Microsoft.Authorization/permissions?{AUTHZ}", headers=bearer(alice)
    )
    assert answer.status_code == 200
    missing = await lab.http.get(
        f"{lab.vm_path('nope')}/providers/Microsoft.Authorization/permissions?{AUTHZ}",
        headers=bearer(alice),
    )
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]["message"]
    anonymous = await lab.http.get(f"{vm}/providers/Microsoft.Authorization/permissions?{AUTHZ}")
    assert anonymous.status_code == 401


async def test_the_subscriptions_scale_sets_are_listed_for_those_who_may_read_them(
    lab: LabHandle,
) -> None:
    path = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/virtualMachineScaleSets"
    answer = await lab.http.get(f"{path}?{COMPUTE}", headers=bearer(await lab.token("bob")))
    assert [s["name"] for s in answer.json()["value"]] == ["web-vmss"]
    assert (await lab.http.get(f"{path}?{COMPUTE}")).status_code == 401


async def test_a_revoked_token_no_longer_works_and_revoking_tells_nothing(
    lab: LabHandle,
) -> None:
    token = await lab.token("alice")
    subscriptions = "/subscriptions?api-version=2022-12-01"
    assert (await lab.http.get(subscriptions, headers=bearer(token))).status_code == 200
    assert (await lab.http.post("/oauth2/revoke", data={"token": token})).status_code == 200
    refused = await lab.http.get(subscriptions, headers=bearer(token))
    assert refused.status_code == 401
    # An unknown token answers the same 200 (RFC 7009); no token is a clear 400.
    assert (await lab.http.post("/oauth2/revoke", data={"token": "junk"})).status_code == 200
    empty = await lab.http.post("/oauth2/revoke", data={})
    assert empty.status_code == 400
    assert "token is required" in empty.json()["error_description"]
