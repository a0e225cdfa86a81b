"""The console under hostile input, faults and load: nothing is lost, nothing is given
twice, every close carries its code, and no client can crowd out another."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.console import service
from gateway.console.frames import SUBPROTOCOL, CloseCode
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.integration.test_console_load import Framed, assert_matches_log
from tests.support.lab import SUBSCRIPTION, LabHandle, running_lab
from tests.support.wsclient import open_console


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path, gateway="bootlog_bytes = 16777216") as handle:
        yield handle


async def _read_to_close(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_deep_json_closes_with_4007_and_logs_no_traceback(
    lab: LabHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON nested 2,000 deep, as the token or as a command, closes with 4007 and a reason;
    nothing is logged as an error."""
    caplog.set_level(logging.WARNING)
    deep = "[" * 2000 + "]" * 2000
    url, token = await lab.session_url("alice")
    async with connect(url, subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.send(deep)
        with pytest.raises(ConnectionClosed):
            await _read_to_close(ws)
        assert ws.close_code == CloseCode.MALFORMED
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.ws.send(deep)
    code, reason = await client.closed()
    assert code == CloseCode.MALFORMED
    assert "nested too deep" in reason
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_invalid_utf8_text_frames_close_with_1007_and_no_traceback(
    lab: LabHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A text frame that is not UTF-8 ends that connection with the protocol's 1007; the
    gateway logs no error for it, however many clients do it, and serves on."""
    caplog.set_level(logging.WARNING)
    for _ in range(50):
        url, token = await lab.session_url("alice")
        client = await open_console(url, token)
        await client.expect("Connected to the serial port")
        await client.ws.send(b"\xff\xfe", text=True)
        code, _ = await client.closed()
        assert code == 1007
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await client.expect("login: ")
    await client.ws.close()


async def test_one_user_cannot_expire_another_users_console_url(lab: LabHandle) -> None:
    """alice asks for 300 console URLs as fast as she can; carol's, asked for before, still
    opens."""
    carol_url, carol = await lab.session_url("carol")
    alice = await lab.token("alice")
    for _ in range(300):
        assert (await lab.connect(alice, "linux-1")).status_code == 200
    client = await open_console(carol_url, carol)
    await client.expect("Connected to the serial port")
    await client.ws.close()


async def test_one_user_cannot_hold_every_console(
    lab: LabHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the open consoles one user may hold, the next is refused with 4010 and what to
    do; another user still connects."""
    monkeypatch.setattr(service, "MAX_CONSOLES_PER_USER", 3)
    held = []
    for _ in range(3):
        url, token = await lab.session_url("carol")
        held.append(await open_console(url, token, query="watch=1"))
        await held[-1].expect("Connected to the serial port")
    url, token = await lab.session_url("carol")
    refused = await open_console(url, token, framed=True, query="watch=1")
    code, reason = await refused.closed()
    assert code == CloseCode.TOO_MANY
    assert "too many consoles" in reason
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token)
    await alice.expect("Connected to the serial port")
    for client in (*held, alice):
        await client.ws.close()


LINES = 60_000  # ~350 KiB of numbered lines
DONE = re.compile(rb"\r\n" + str(LINES).encode() + rb"\r\n")


async def test_200_clients_get_every_byte_in_order(
    lab: LabHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer and 199 watchers while the guest prints flat out: each client's bytes are
    exactly the boot log's at the same offsets; a watcher that falls behind is told where
    to resume, resumes, and misses nothing."""
    monkeypatch.setattr(service, "MAX_CONSOLES_PER_USER", 1000)  # one user, 199 watchers
    writer = await Framed.open(lab, "alice")
    await writer.send("\r")
    await writer.read_until(re.compile(rb"login: $"))
    # busybox's shell asks the terminal where its cursor is (ESC [6n) after the prompt
    for text, prompt in (("root\r", rb"Password: $"), ("serial-lab\r", rb"# (?:\x1b\[6n)?$")):
        await writer.send(text)
        await writer.read_until(re.compile(prompt))
    watchers = [await Framed.open(lab, "carol", "&watch=1") for _ in range(199)]
    await writer.send(f"seq 1 {LINES}\r")

    async def follow(client: Framed) -> list[Framed]:
        """Read to the end; a client cut off resumes where it was cut."""
        chain = [client]
        while True:
            try:
                await client.read_until(DONE, 120)
                return chain
            except ConnectionClosed:
                assert client.ws.close_code == CloseCode.FELL_BEHIND
                assert client.closing is not None
                resume = client.closing["resume_offset"]
                assert resume == client.start + len(client.data)
                client = await Framed.open(lab, "carol", f"&watch=1&offset={resume}")
                chain.append(client)

    async with asyncio.timeout(scaled(180)):
        chains = await asyncio.gather(follow(writer), *(follow(w) for w in watchers))
    for chain in chains:
        for client in chain:
            assert_matches_log(lab, client)
        first, last = chain[0], chain[-1]
        assert last.start + len(last.data) - first.start >= len(first.data)
    for chain in chains:
        await chain[-1].ws.close()


async def _framed_session(http: httpx.AsyncClient, url: str, query: str) -> ClientConnection:
    reply = await http.post(
        "/oauth2/token", data={"grant_type": "password", "username": "carol", "password": "carol"}
    )
    token = reply.json()["access_token"]
    path = (
        f"/subscriptions/{SUBSCRIPTION_OF_DEFAULT_LAB}/resourceGroups/lab-rg/providers/"
        "Microsoft.Compute/virtualMachines/linux-1/providers/Microsoft.SerialConsole/"
        "serialPorts/0/connect"
    )
    reply = await http.post(
        path, params={"api-version": "2024-07-01"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 200, reply.text
    target = reply.json()["connectionString"] + f"?authorization={token}{query}"
    return await connect(target, subprotocols=[SUBPROTOCOL], max_size=None)  # type: ignore[list-item]


SUBSCRIPTION_OF_DEFAULT_LAB = "5e71a1c0-0000-4000-8000-000000000001"
assert SUBSCRIPTION != SUBSCRIPTION_OF_DEFAULT_LAB  # the lab process runs the default lab


async def test_kill_9_during_output_never_gives_an_offset_twice(tmp_path: Path) -> None:
    """The lab is killed (SIGKILL) while a guest prints and a watcher reads. After the
    restart, every offset the watcher received holds the same byte or is reported lost
    (rotated or never written), never another byte; the new boot starts past them all."""
    lab = await asyncio.to_thread(LabProcess.start, tmp_path, emulated=True)
    try:
        async with httpx.AsyncClient(base_url=lab.url, timeout=scaled(10)) as http:
            writer = await _framed_session(http, lab.url, "")
            watcher = await _framed_session(http, lab.url, "&watch=1")
            connected = json.loads(await watcher.recv())
            start, seen = connected["replay_from"], bytearray()
            # Typed as a person would, each after its prompt (getty drops what is typed
            # before it asks), then well into the output: kill now.
            steps = (
                ("\r", b"login: "),
                ("root\r", b"Password: "),
                ("serial-lab\r", b"# "),
                ("seq 1 400000\r", b"\r\n150000\r\n"),
            )
            async with asyncio.timeout(scaled(60)):
                for text, until in steps:
                    mark = len(seen)
                    await writer.send(text.encode())
                    while until not in seen[mark:]:
                        frame = await watcher.recv()
                        if isinstance(frame, bytes):
                            seen += frame
            os.kill(lab.process.pid, signal.SIGKILL)
            lab.process.wait(scaled(10))
    finally:
        lab.stop()
    received_to = start + len(seen)

    again = await asyncio.to_thread(LabProcess.start, tmp_path, emulated=True)
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=scaled(10)) as http:
            ws = await _framed_session(http, again.url, f"&watch=1&offset={start}")
            connected = json.loads(await ws.recv())
            assert connected["offset"] > received_to  # the new boot starts past them all
            replay, lost = bytearray(), []
            async with asyncio.timeout(scaled(30)):
                while connected["replay_from"] + len(replay) < connected["offset"]:
                    frame = await ws.recv()
                    if isinstance(frame, bytes):
                        replay += frame
                    elif (event := json.loads(frame))["type"] == "lost":
                        lost.append((event["start"], event["end"]))
                        if not replay:  # the kept bytes before the gap are none
                            connected["replay_from"] = event["end"]
                        else:  # what comes after the gap is the new boot: stop here
                            break
            # The store may have kept more than the watcher read (a watcher lags the
            # guest), but whatever it did not keep is reported lost up to the new boot;
            # when its writes had caught up before the kill, nothing is lost and every
            # offset the watcher read is replayed.
            new_boot = connected["offset"]
            gap_start, gap_end = lost[0] if lost else (new_boot, new_boot)
            assert received_to <= gap_end  # lost, not given other bytes
            kept_from = connected["replay_from"]
            # What the restarted lab still has of the watcher's range is the same bytes.
            overlap = replay[: max(0, min(received_to, gap_start) - kept_from)]
            assert len(overlap) == max(0, min(received_to, gap_start) - kept_from)
            assert bytes(overlap) == bytes(
                seen[kept_from - start : kept_from - start + len(overlap)]
            )
            if not connected["rotated"]:
                assert kept_from == start
            await ws.close()
    finally:
        again.stop()


async def test_a_url_refused_after_its_claim_is_done_for_admin_commands(
    lab: LabHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A console refused once its URL was used (here: too many consoles) leaves no admin URL
    behind that works forever."""
    monkeypatch.setattr(service, "MAX_CONSOLES_PER_USER", 0)
    url, token = await lab.session_url("alice")
    refused = await open_console(url, token, framed=True)
    code, _ = await refused.closed()
    assert code == CloseCode.TOO_MANY
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand/nmi"
    reply = await lab.http.post(
        admin, json={"command": "nmi"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 404, reply.text
