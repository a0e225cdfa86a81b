"""The CLI's power actions follow ARM's long-running operations (202, then the
Azure-AsyncOperation status until final), against a stand-in gateway."""

from __future__ import annotations

import httpx
import pytest

from gateway.cli.client import GatewayClient
from gateway.cli.errors import GatewayError

STATUS = "http://lab/subscriptions/sub/providers/Microsoft.Compute/locations/local/operations/op1"


def gateway(final: dict[str, object], polls: list[str]) -> httpx.MockTransport:
    """202 for the action; InProgress on the first poll, ``final`` on the next."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.params["api-version"] == "2024-07-01"
        if request.method == "POST":
            assert request.url.path.endswith("/virtualMachines/vm/restart")
            return httpx.Response(
                202,
                headers={
                    "Azure-AsyncOperation": f"{STATUS}?api-version=2024-07-01",
                    "Location": f"{STATUS}?monitor=true&api-version=2024-07-01",
                    "Retry-After": "0",
                },
            )
        polls.append(str(request.url))
        if len(polls) == 1:
            return httpx.Response(200, json={"name": "op1", "status": "InProgress"})
        return httpx.Response(200, json=final)

    return httpx.MockTransport(answer)


async def test_power_waits_for_the_operation_and_returns_its_status() -> None:
    polls: list[str] = []
    final = {"name": "op1", "status": "Succeeded", "properties": {"output": "graceful"}}
    async with GatewayClient("http://lab", "tok", "sub", transport=gateway(final, polls)) as c:
        body = await c.power("restart", "rg", "vm")
    assert body == final
    assert polls == [f"{STATUS}?api-version=2024-07-01"] * 2


async def test_a_failed_operation_is_the_error_the_user_reads() -> None:
    final = {
        "name": "op1",
        "status": "Failed",
        "error": {"code": "OperationNotAllowed", "message": "cannot restart VM 'vm' ..."},
    }
    async with GatewayClient("http://lab", "tok", "sub", transport=gateway(final, [])) as c:
        with pytest.raises(GatewayError, match=r"^cannot restart VM 'vm' \.\.\.$") as caught:
            await c.power("restart", "rg", "vm")
    assert caught.value.code == "OperationNotAllowed"
