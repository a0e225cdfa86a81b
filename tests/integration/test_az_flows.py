"""az serial-console's own websocket flows against a real lab over TLS, replayed with
websocket-client as its extension does (tests.support.azflows), and the console core's
promises to every client: no token ever reaches a guest, no stall, no byte altered, every
close with its code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from gateway.console import texts
from gateway.testing.timeouts import scaled
from tests.support.azflows import AzConsole, az_send, post_admin
from tests.support.lab import LabHandle, running_lab, trusting
from tests.support.wsclient import open_console


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path, tls=True) as handle:
        yield handle


async def _read_to_close(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def _login(az: AzConsole) -> None:
    for keys, prompt in (("\r", b"login: "), ("root\r", b"Password: "), ("serial-lab\r", b"# ")):
        await asyncio.to_thread(az.type, keys)
        await asyncio.to_thread(az.wait_for, prompt, scaled(10))


@pytest.mark.parametrize(
    "token_in_url", [False, True], ids=["token-as-messages", "url-and-messages"]
)
async def test_az_connect_logs_in_and_no_token_reaches_the_guest(
    lab: LabHandle, token_in_url: bool
) -> None:
    """az sends its token on open and again after the first message: the console works, and
    neither copy is typed into the guest, shown, or kept in the boot log."""
    url, token = await lab.session_url("alice")
    assert url.startswith("wss://")
    az = AzConsole(url, token, token_in_url=token_in_url, ca_certs=str(lab.ca_path))
    az.start()
    try:
        await _login(az)
        await asyncio.to_thread(az.type, "hostname\r")
        await asyncio.to_thread(az.wait_for, b"linux-1\r\n", scaled(10))
    finally:
        await asyncio.to_thread(az.stop)
    first = az.first_message
    assert isinstance(first, bytes)  # skip_utf8_validation: az gets text frames as bytes
    if not token_in_url:
        assert first.decode().startswith(texts.TOKEN_CHALLENGE)
    assert token.encode() not in az.text
    log = lab.runtime.hubs["linux-1"].bootlog.read(0).contents
    assert b"hostname" in log
    assert token.encode() not in log


async def test_az_send_nmi_is_done_without_a_stall_or_a_denial(lab: LabHandle) -> None:
    """az's send opens with no token and waits for a first message: the challenge comes at
    once, the token follows, and the admin command answers az's success text."""
    url, token = await lab.session_url("alice")
    outcome = await asyncio.to_thread(az_send, url, token, "nmi", {}, str(lab.ca_path))
    assert outcome.status == 200, outcome.body
    assert outcome.body is not None
    assert outcome.body["message"] == "NMI sent successfully"
    assert isinstance(outcome.first_message, str)
    assert outcome.first_message.startswith(texts.TOKEN_CHALLENGE)
    rows = lab.runtime.context.audit.query(user="alice", limit=100)
    assert not [r for r in rows if r.outcome == "denied"], [r.as_json() for r in rows]


async def test_admin_commands_work_for_as_long_as_the_console_is_open(lab: LabHandle) -> None:
    """az's Ctrl+] menu posts to the session URL while the console runs, well past the 60 s
    a URL has to be opened in; once the console closes, the URL is done."""
    url, token = await lab.session_url("alice")
    sessions = lab.runtime.context.sessions
    az = AzConsole(url, token, ca_certs=str(lab.ca_path))
    az.start()
    await asyncio.to_thread(az.type, "\r")
    await asyncio.to_thread(az.wait_for, b"login: ", scaled(10))
    real = sessions.clock
    sessions.clock = lambda: real() + 3600  # an hour later, the console still open
    try:
        reply = await asyncio.to_thread(post_admin, url, token, "nmi", {}, str(lab.ca_path))
        assert reply.status_code == 200, reply.text
        await asyncio.to_thread(az.stop)
        await asyncio.to_thread(az.closed.wait, scaled(10))
        reply = await asyncio.to_thread(post_admin, url, token, "nmi", {}, str(lab.ca_path))
        assert reply.status_code == 404
        assert "ended" in reply.json()["error"]["message"]
    finally:
        sessions.clock = real


async def test_raw_output_reaches_az_as_text_with_every_byte_kept(lab: LabHandle) -> None:
    """What az prints, joined, is exactly the console's bytes: UTF-8 as text frames, the
    bytes that are not UTF-8 in binary frames in their place."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, ssl=trusting(lab.ca_path))
    await client.expect("login: ", 10)
    await client.ws.send(b"caf\xc3\xa9 \xff\xfe \xe2\x82\xac\r")  # a user name, echoed
    await client.expect("Password: ", 10)
    await client.ws.close()
    hub = lab.runtime.hubs["linux-1"]
    banner = (texts.BANNER + "\r\n").encode()
    assert client.data.startswith(banner)
    received = bytes(client.data[len(banner) :])
    log = hub.bootlog.read(0).contents
    assert received in log
    assert b"caf\xc3\xa9 \xff\xfe \xe2\x82\xac" in received


async def test_framed_commands_obey_the_console_switch(lab: LabHandle) -> None:
    """After disableConsole, an NMI on an open framed console is refused with Azure's text,
    exactly as adminCommand refuses it."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True, ssl=trusting(lab.ca_path))
    await client.event("connected")
    carol = await lab.token("carol")
    service = lab.vm_path("x").split("/resourceGroups")[0] + (
        "/providers/Microsoft.SerialConsole/consoleServices/default"
    )
    reply = await lab.http.post(
        service + "/disableConsole?api-version=2024-07-01",
        headers={"Authorization": f"Bearer {carol}"},
    )
    assert reply.status_code == 200, reply.text
    await client.ws.send(json.dumps({"type": "nmi", "id": "n1"}))
    result = await client.event("result")
    assert result == {
        "type": "result", "id": "n1", "command": "nmi", "ok": False,
        "message": texts.CONSOLE_DISABLED,
    }  # fmt: skip
    await client.ws.close()
