"""A full disk under the state folder: the lab says so, does nothing half, and recovers.

The state folder is a 2 MiB tmpfs (mounting needs root: without it the test is skipped
with the reason), filled to the last byte by a file beside ``lab.db``. Then every
operation that must write answers 507 in ARM's shape with a message that names the
folder and what to do, and changes nothing (a refused restart does not restart the guest);
reads and an open console keep working; the log says it once, not once per request. Once
the file is removed the same operations work again.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.lab.config import DEFAULT_TENANT
from gateway.machines.base import EventKind
from gateway.testing.timeouts import scaled
from tests.support.lab import SUBSCRIPTION, LabHandle, running_lab
from tests.support.wsclient import open_console

LINUX_ONLY = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"
"""
SC = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.SerialConsole"
API = "api-version=2024-07-01"
COMPUTE_API = "api-version=2026-04-01"
STORE_LOG = "serial_console_lab.access.store"


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "2m") -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size``, unmounted on the way out; skips the test when
    this machine does not let the test mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "a full disk needs a small tmpfs for the state folder, and mounting one was "
            f"refused here (run the faults suite as root): {mounted.stderr.strip()}"
        )
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its disk refuses one more byte; the file."""
    filler = folder / "filler"
    refused: list[int | None] = []
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as err:
                refused.append(err.errno)
    assert refused == [errno.ENOSPC] * 4, refused
    return filler


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    with small_tmpfs(tmp_path / "state"):
        async with running_lab(tmp_path, vms=LINUX_ONLY, gateway="bootlog_bytes = 65536") as handle:
            yield handle


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_disk_full(reply: httpx.Response, state: Path) -> None:
    """507 in ARM's shape, saying the state folder's disk is full and what to do."""
    assert reply.status_code == 507, (reply.status_code, reply.text)
    error = reply.json()["error"]
    assert error["code"] == "InsufficientStorage"
    assert f"The disk of the lab's state folder {state} is full" in error["message"]
    assert "it did nothing" in error["message"]
    assert "Free some space on that disk" in error["message"]
    assert "Traceback" not in reply.text


async def test_full_state_disk_refuses_writes_clearly_and_recovers(
    lab: LabHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    vm = lab.vm_path("linux-1")
    port = f"{vm}/providers/Microsoft.SerialConsole/serialPorts/0?{API}"
    carol = bearer(await lab.token("carol"))
    url, alice_token = await lab.session_url("alice")
    console = await open_console(url, alice_token)
    await console.expect(r"Connected to the serial port of the VM")
    machine = lab.runtime.machines["linux-1"]
    history = list(machine.state_history)
    rows_before = len(lab.runtime.context.audit.query(limit=1000))  # type: ignore[union-attr]

    caplog.set_level(logging.WARNING, logger=STORE_LOG)
    filler = fill(state)
    v2 = f"/{DEFAULT_TENANT}/oauth2/v2.0/token"
    writes = {
        "token": ("POST", "/oauth2/token",
                  {"data": {"grant_type": "password", "username": "carol", "password": "carol"}}),
        "token v2": ("POST", v2, {"data": {"grant_type": "client_credentials",
                     "client_id": "carol", "client_secret": "carol"}}),
        "connect": ("POST", f"{vm}/providers/Microsoft.SerialConsole/serialPorts/0/connect?{API}",
                    {"headers": carol}),
        "start": ("POST", f"{vm}/start?{COMPUTE_API}", {"headers": carol}),
        "powerOff": ("POST", f"{vm}/powerOff?{COMPUTE_API}", {"headers": carol}),
        "restart": ("POST", f"{vm}/restart?{COMPUTE_API}", {"headers": carol}),
        "deallocate": ("POST", f"{vm}/deallocate?{COMPUTE_API}", {"headers": carol}),
        "disableConsole": ("POST", f"{SC}/consoleServices/default/disableConsole?{API}",
                           {"headers": carol}),
        "enableConsole": ("POST", f"{SC}/consoleServices/default/enableConsole?{API}",
                          {"headers": carol}),
        "port PUT": ("PUT", port, {"headers": carol,
                     "json": {"properties": {"state": "disabled"}}}),
        "port DELETE": ("DELETE", port, {"headers": carol}),
    }  # fmt: skip
    for name, (method, path, kwargs) in writes.items():
        reply = await lab.http.request(method, path, **kwargs)
        with contextlib.suppress(AssertionError):
            assert_disk_full(reply, state)
            continue
        raise AssertionError(f"{name} on a full disk: {reply.status_code} {reply.text}")

    # Nothing was done: the guest never left "running", no operation runs, the console
    # service and the port are as they were, no token and no audit row were written.
    assert machine.state_history == history
    assert machine.operation is None
    service = await lab.http.get(f"{SC}/consoleServices/default?{API}", headers=carol)
    assert service.json()["properties"]["disabled"] is False
    assert (await lab.http.get(port, headers=carol)).json()["properties"]["state"] == "enabled"
    assert len(lab.runtime.context.audit.query(limit=1000)) == rows_before  # type: ignore[union-attr]

    # A refusal is still a refusal, reads still work, and the open console still streams.
    wrong = await lab.http.post(
        "/oauth2/token", data={"grant_type": "password", "username": "bob", "password": "x"}
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert (await lab.http.get(f"{vm}?{COMPUTE_API}", headers=carol)).status_code == 200
    await console.type("\r")
    await console.expect(r"login: ")
    await console.type("root\r")
    await console.expect(r"Password: ")

    # Said once a spell (not once per refused write), and said again when space is back.
    # A small write may still fit in lab.db's free pages: it is logged as writable again,
    # and the next refusal starts a new spell; two notices never follow each other.
    store = [r for r in caplog.records if r.name == STORE_LOG]
    full = [r for r in store if r.levelno == logging.ERROR]
    assert full, "the full disk was not logged"
    assert f"the disk of the state folder {state} is full" in full[0].getMessage()
    assert len(full) < len(writes), [r.getMessage() for r in store]
    twice = [
        (a, b) for a, b in itertools.pairwise(store) if a.levelno == b.levelno == logging.ERROR
    ]
    assert not twice, [r.getMessage() for r in store]

    filler.unlink()
    token = await lab.token("carol")
    enabled = {"properties": {"state": "enabled"}}
    assert (await lab.http.put(port, headers=bearer(token), json=enabled)).status_code == 201
    assert (await lab.connect(token, "linux-1")).status_code == 200
    with machine.events() as events:
        restarted = await lab.http.post(f"{vm}/restart?{COMPUTE_API}", headers=bearer(token))
        assert restarted.status_code == 202, restarted.text
        await events.wait_for(lambda e: e.kind is EventKind.RESET, scaled(10))
    assert machine.state_history != history
    back = [r for r in caplog.records if r.name == STORE_LOG and r.levelno == logging.WARNING]
    assert len(back) == 1
    assert "can be written again" in back[0].getMessage()
    await console.ws.close()
