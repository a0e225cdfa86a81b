"""The websocket console on a real QEMU guest: what Azure's key paths look like for real."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import require_qemu
from tests.support.lab import LabHandle, running_lab
from tests.support.wsclient import login, open_console

pytestmark = pytest.mark.qemu

QEMU_VM = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "qemu"
"""
BOOT = 90


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    require_qemu()
    async with running_lab(tmp_path, vms=QEMU_VM) as handle:
        yield handle


async def test_boot_from_the_first_byte_login_command_sysrq_and_nmi(lab: LabHandle) -> None:
    """Resuming from offset 0 shows the kernel's first line; then the user logs in, runs a
    command, and sees the kernel answer SysRq h and an NMI."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True, query="offset=0")
    connected = await client.event("connected")
    assert connected["replay_from"] == 0
    await client.expect(r"login: ", BOOT)
    assert client.data.startswith(b"[    0.000000] Linux version ")
    await login(client)
    await client.type("uname -n\r")
    await client.expect(r"\r\nlinux-1\r\n")
    await client.ws.send(json.dumps({"type": "sysrq", "keys": "h"}))
    await client.expect(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\)")
    await client.ws.send(json.dumps({"type": "nmi"}))
    await client.expect(r"Uhhuh\. NMI received for unknown reason")


async def test_a_hard_reset_is_watched_live_on_the_same_connection(lab: LabHandle) -> None:
    """Reset VM (Hard) through the raw protocol's admin command: the open console shows the
    new boot from its first line, with no reconnect."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await client.expect(r"login: ", BOOT)
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand/reset"
    reply = await lab.http.post(
        admin, json={"command": "reset"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.json()["message"] == "Successfully Hard Reset VM"
    await client.expect(r"\[    0\.000000\] Linux version", BOOT)
    await client.expect(r"login: ", BOOT)
    assert client.ws.close_code is None


@pytest.mark.parametrize("typed", [2_000, 20_000], ids=["2000-keys", "20000-byte-paste"])
async def test_sysrq_after_typed_input_fires_the_key_asked_for(lab: LabHandle, typed: int) -> None:
    """A writer types a burst of 5s (or pastes 20,000 bytes) and then asks for SysRq h: the
    BREAK waits until the guest has taken every typed byte, so the kernel shows its help and
    no typed 5 becomes the key ("Loglevel set to 5")."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.expect(r"login: ", BOOT)
    await client.ws.send(b"5" * typed)
    await client.ws.send(json.dumps({"type": "sysrq", "keys": "h", "id": "h"}))
    result = await client.event("result", 120)
    assert result["ok"], result
    await client.expect(r"sysrq: HELP : loglevel\(0-9\)", 60)
    assert b"Loglevel set to" not in client.data
