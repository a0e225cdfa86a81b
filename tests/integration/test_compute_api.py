"""Microsoft.Compute against a real server: power actions as ARM's long-running
operations, ARM's bodies, and the boot diagnostics log as a blob and as JSON pages."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import httpx
import pytest

from gateway.lab.config import MachineSpec
from gateway.machines.base import PowerState, RestartOutcome
from gateway.testing.timeouts import scaled
from tests.integration.armapi import (
    VMS,
    VMSS,
    assert_arm_error,
    power,
    power_status,
    sending_api_version,
)
from tests.integration.conftest import (
    CONTROL_PLANE_LAB,
    FakeMachine,
    RunningLab,
    running_lab,
)


@pytest.fixture
async def lab(lab: RunningLab) -> RunningLab:
    """The control-plane lab, its client sending ``api-version`` as ARM requires (unless a
    request names its own)."""
    return sending_api_version(lab)


# -- compute --------------------------------------------------------------------------------


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


async def test_run_command_is_refused_as_azure_refuses_it(lab: RunningLab) -> None:
    """Run Command: a Reader may not; a command id the VM does not run is a 400; a VM
    without a VM agent (here, one with no disk) says so at once (409), with what to use."""
    alice, bob = await lab.as_user("alice"), await lab.as_user("bob")
    vm = f"{VMS}/vm-a/runCommand"
    script = {"commandId": "RunShellScript", "script": ["hostname"]}
    assert_arm_error(await lab.client.post(vm, json=script, headers=bob), 403)
    response = await lab.client.post(vm, json={"commandId": "RunPowerShellScript"}, headers=alice)
    assert "RunShellScript" in assert_arm_error(response, 400, "InvalidParameter")
    response = await lab.client.post(vm, json={"commandId": "RunShellScript"}, headers=alice)
    assert "needs a script" in assert_arm_error(response, 400, "InvalidParameter")
    response = await lab.client.post(vm, json=script, headers=alice)
    assert "no VM agent" in assert_arm_error(response, 409, "OperationNotAllowed")


async def test_the_vm_access_extension_is_refused_as_azure_refuses_it(lab: RunningLab) -> None:
    """A Reader may read extensions but not write them; only VMAccessForLinux runs here,
    with something to do; a VM without a VM agent says so (409); an extension never put
    is a 404."""
    alice, bob = await lab.as_user("alice"), await lab.as_user("bob")
    path = f"{VMS}/vm-a/extensions/enablevmaccess"
    access = {"publisher": "Microsoft.OSTCExtensions", "type": "VMAccessForLinux",
              "protectedSettings": {"username": "azureuser", "password": "pw-1"}}  # fmt: skip
    assert_arm_error(await lab.client.put(path, json={"properties": access}, headers=bob), 403)
    other = {**access, "publisher": "Microsoft.Azure.Extensions", "type": "CustomScript"}
    response = await lab.client.put(path, json={"properties": other}, headers=alice)
    assert "VMAccessForLinux" in assert_arm_error(response, 400, "InvalidParameter")
    empty = {**access, "protectedSettings": {"username": "azureuser"}}
    response = await lab.client.put(path, json={"properties": empty}, headers=alice)
    assert "Nothing to do" in assert_arm_error(response, 400, "InvalidParameter")
    response = await lab.client.put(path, json={"properties": access}, headers=alice)
    assert "no VM agent" in assert_arm_error(response, 409, "OperationNotAllowed")
    assert_arm_error(await lab.client.get(path, headers=bob), 404, "NotFound")


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
        sending_api_version(lab)
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
    # Azure Storage's SAS parameters: version, a blob, read, an ISO 8601 expiry, base64 sig
    params = url.params
    assert (params["sr"], params["sp"]) == ("b", "r")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", params["sv"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", params["se"])
    assert len(base64.b64decode(params["sig"], validate=True)) == 32
    writable = url.copy_merge_params({"sp": "rw"})  # the signature covers the permissions
    assert_blob_error(await lab.client.get(writable), 403, "AuthenticationFailed")
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


# -- what az asks beyond the SDK's first steps ------------------------------------------------


async def test_scale_set_actions_reach_the_named_instances_or_all(lab: RunningLab) -> None:
    """``az vmss deallocate|start --instance-ids``: one long-running operation for the
    instances named (all when none are), their power states in the scale set's view."""
    alice = await lab.as_user("alice")
    vmss = f"{VMSS}/web-vmss"

    async def summary() -> dict[str, int]:
        view = (await lab.client.get(f"{vmss}/instanceView", headers=alice)).json()
        return {s["code"]: s["count"] for s in view["virtualMachine"]["statusesSummary"]}

    assert await summary() == {"PowerState/running": 3}
    response = await lab.client.post(
        f"{vmss}/deallocate", json={"instanceIds": ["0", "2"]}, headers=alice
    )
    assert response.status_code == 202, response.text
    body = await power_status(lab, response.headers["Azure-AsyncOperation"], alice)
    assert body["status"] == "Succeeded", body
    assert await summary() == {"PowerState/deallocated": 2, "PowerState/running": 1}
    assert (await power(lab, f"{vmss}/start", alice))["status"] == "Succeeded"  # no body: all
    assert await summary() == {"PowerState/running": 3}
    response = await lab.client.post(f"{vmss}/restart", json={"instanceIds": ["7"]}, headers=alice)
    assert "not an active Virtual Machine Scale Set VM instanceId" in assert_arm_error(
        response, 400, "InvalidParameter"
    )
    bob = await lab.as_user("bob")  # a Reader
    assert_arm_error(await lab.client.post(f"{vmss}/start", headers=bob), 403)


async def test_redeploy_reapply_and_sizes(lab: RunningLab) -> None:
    """A VM's redeploy (deallocated, then started), reapply (nothing to change), its
    sizes and the scale set's SKUs, as azure-mgmt-compute reads them."""
    alice = await lab.as_user("alice")
    vm = f"{VMS}/vm-a"
    assert (await power(lab, f"{vm}/redeploy", alice))["status"] == "Succeeded"
    machine = lab.runtime.machines["vm-a"]
    assert machine.calls[-2:] == ["deallocate", "start"]  # type: ignore[attr-defined]
    assert await _power_state(lab, vm, alice) == "PowerState/running"
    assert (await power(lab, f"{vm}/reapply", alice))["status"] == "Succeeded"
    sizes = (await lab.client.get(f"{vm}/vmSizes", headers=alice)).json()["value"]
    assert [s["name"] for s in sizes] == ["Lab_128MB"]
    skus = (await lab.client.get(f"{VMSS}/web-vmss/skus", headers=alice)).json()["value"]
    assert skus[0]["sku"]["name"].startswith("Lab_")


async def test_the_cloud_metadata_is_what_az_cloud_register_reads(lab: RunningLab) -> None:
    """``az cloud register --endpoint-resource-manager URL/`` reads
    ``URL//metadata/endpoints?api-version=2022-09-01`` (its own double slash): the lab
    names itself for sign-in, the resource manager and the portal; no token needed."""
    base = str(lab.client.base_url).rstrip("/") + "/"
    response = await lab.client.get(base + "/metadata/endpoints?api-version=2022-09-01")
    assert response.status_code == 200, response.text
    cloud = response.json()
    assert cloud["resourceManager"] == base
    assert cloud["authentication"]["loginEndpoint"] == base
    assert cloud["authentication"]["audiences"][0] == "https://management.core.windows.net/"
    assert "storage" in cloud["suffixes"]
    listed = await lab.client.get("/metadata/endpoints?api-version=2019-05-01")
    assert listed.json() == [cloud]
    missing = await lab.client.get("/metadata/endpoints")
    assert_arm_error(missing, 400, "MissingApiVersionParameter")
