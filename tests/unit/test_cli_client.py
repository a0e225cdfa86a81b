"""The REST client and boot-log printing against a stand-in gateway (httpx.MockTransport)."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from gateway.cli.client import GatewayClient
from gateway.cli.commands import print_boot_log
from gateway.cli.connect import Target, final_refusal
from gateway.cli.errors import GatewayError, GatewayUnreachable, NotLoggedIn

LOG = b"boot line one\r\nboot line two\r\n"
LOG_URL = (
    "http://lab/bootdiagnostics/vm/serialconsole.log"
    "?sv=2021-08-06&sr=b&sp=r&se=2026-01-01T00%3A00%3A00Z&sig=s"
)


def gateway(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.endswith("/retrieveBootDiagnosticsData"):
        return httpx.Response(200, json={"serialConsoleLogBlobUri": LOG_URL})
    if path == "/bootdiagnostics/vm/serialconsole.log/pages":  # the log read as JSON
        assert request.url.params["sig"] == "s", "the signature must survive ?start="
        assert "authorization" not in request.headers
        start = int(request.url.params.get("start", "0"))
        kept = 5  # bytes before offset 5 have rotated out
        begin = max(start, kept)
        body = {"contents": LOG[begin:].decode(), "start": begin, "next": len(LOG),
                "rotated": start < kept}  # fmt: skip
        if start < kept:
            body["warning"] = f"Bytes {start} to {kept - 1} have rotated out of the boot log"
        return httpx.Response(200, json=body)
    if "/gone" in path:
        return httpx.Response(404, json={"error": {"code": "ResourceNotFound", "message": "No VM"}})
    return httpx.Response(401, json={"error": {"code": "ExpiredAuthenticationToken",
                                               "message": "expired"}})  # fmt: skip


def client() -> GatewayClient:
    return GatewayClient("http://lab", "tok", "sub", transport=httpx.MockTransport(gateway))


async def test_boot_log_prints_exact_bytes_and_warns_about_rotation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """boot-log writes the kept bytes as they are, and says on stderr which ones rotated away."""
    out = io.BytesIO()
    async with client() as c:
        assert await print_boot_log(c, Target("rg", "vm"), 0, False, out) == 0
    assert out.getvalue() == LOG[5:]
    assert "warning: Bytes 0 to 4 have rotated out" in capsys.readouterr().err
    out = io.BytesIO()
    async with client() as c:
        await print_boot_log(c, Target("rg", "vm"), 20, False, out)
    assert out.getvalue() == LOG[20:]
    assert capsys.readouterr().err == ""


async def test_errors_become_one_line_messages() -> None:
    """ARM error bodies become the message the user reads; a refused token says log in."""
    async with client() as c:
        with pytest.raises(GatewayError, match=r"^No VM$") as caught:
            await c.get_machine("rg", "gone")
        assert (caught.value.status, caught.value.code) == (404, "ResourceNotFound")
        with pytest.raises(NotLoggedIn, match="run serial-console login"):
            await c.list_vms()


def test_mock_gateway_is_json() -> None:
    """(guard) the stand-in answers JSON, as the gateway does."""
    request = httpx.Request("GET", "http://lab/x")
    assert json.loads(gateway(request).content)["error"]["code"]


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (GatewayError("no permission", status=403, code="AuthorizationFailed"), True),
        (GatewayError("no boot diagnostics", status=409, code="BootDiagnosticsNotEnabled"), True),
        (GatewayError("console disabled", status=409, code="SerialConsoleDisabled"), True),
        (GatewayError("not running", status=409, code="VMNotRunning"), False),
        (GatewayError("slow down", status=429, code="TooManyRequests"), False),
        (GatewayError("gateway failed", status=500, code="InternalServerError"), False),
        (GatewayUnreachable("no answer"), False),
    ],
)
def test_connect_gives_up_only_on_refusals_that_enter_cannot_fix(
    error: GatewayError, final: bool
) -> None:
    """A refused connect ends the CLI at once (like az) unless pressing Enter may help:
    a stopped VM, a busy or failing gateway, or none at all keep the console waiting."""
    assert final_refusal(error) is final
