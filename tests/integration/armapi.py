"""Helpers for the control-plane tests: ARM's paths in the test lab, a client hook that
sends ``api-version`` as ARM requires, and ARM's error shape."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateway.testing.timeouts import scaled
from tests.integration.conftest import SUBSCRIPTION, RunningLab

SUB = f"/subscriptions/{SUBSCRIPTION}"
RG = f"{SUB}/resourceGroups/lab-rg"
VMS = f"{RG}/providers/Microsoft.Compute/virtualMachines"
VMSS = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets"
SC = f"{SUB}/providers/Microsoft.SerialConsole"
PORT = "providers/Microsoft.SerialConsole/serialPorts/0"
# Published by Microsoft.SerialConsole, Microsoft.Compute and Microsoft.Resources alike.
API_VERSION = "2024-07-01"


async def with_api_version(request: httpx.Request) -> None:
    """An httpx request hook: ARM's paths get ``api-version`` unless they name their own."""
    arm = request.url.path.startswith(("/subscriptions", "/providers", "/tenants"))
    if arm and "api-version" not in request.url.params:
        request.url = request.url.copy_merge_params({"api-version": API_VERSION})


def sending_api_version(lab: RunningLab) -> RunningLab:
    """``lab`` with its client sending ``api-version`` on ARM's paths."""
    lab.client.event_hooks["request"].append(with_api_version)
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
