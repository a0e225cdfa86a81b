"""A lab whose VM runs on libvirt: the gateway, its REST API and its websocket console serve
it as they serve a QEMU guest (nothing above the machine knows the backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.lab import running_lab
from tests.support.libvirtd import Libvirtd
from tests.support.wsclient import login, open_console, ws_url

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

VMS = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
backend = "libvirt"
uri = "qemu:///system"
"""
COMPUTE = "?api-version=2024-07-01"


async def test_a_libvirt_vm_is_served_like_any_other(libvirtd: Libvirtd, tmp_path: Path) -> None:
    """alice connects to linux-1 on libvirt: Azure's connect, a framed websocket console,
    login, SysRq h through the console's command, the instance view, and a boot log that
    starts at the kernel's first line."""
    async with running_lab(tmp_path, vms=VMS) as lab:
        url, token = await lab.session_url("alice")
        client = await open_console(ws_url(url), token, framed=True)
        try:
            await client.expect(r"linux-1 login: ", 60)
            await login(client)
            await client.type("hostname\r")
            await client.expect(r"\nlinux-1\r?\n", 15)
            await client.ws.send(json.dumps({"type": "sysrq", "keys": "h", "id": 1}))
            result = await client.event("result", 30)
            assert (result["ok"], result["message"]) == (True, "Successfully sent SysRq command")
            await client.expect(r"sysrq: HELP : loglevel\(0-9\)", 15)
        finally:
            await client.ws.close()
        auth = {"Authorization": f"Bearer {token}"}
        view = await lab.http.get(lab.vm_path("linux-1") + "/instanceView" + COMPUTE, headers=auth)
        assert "PowerState/running" in [s["code"] for s in view.json()["statuses"]]
        reply = await lab.http.post(
            lab.vm_path("linux-1") + "/retrieveBootDiagnosticsData" + COMPUTE, headers=auth
        )
        blob = await lab.http.get(reply.json()["serialConsoleLogBlobUri"])
        assert blob.text.startswith("[    0.000000] Linux version "), blob.text[:200]
        assert "linux-1 login: " in blob.text
