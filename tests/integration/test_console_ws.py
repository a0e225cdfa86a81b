"""The websocket console over a real gateway on loopback, with emulated guests.

What a client of ``connect``'s URL sees: Azure's banner, the recent output, live bytes,
its typing reaching the guest, SysRq/NMI beside the stream, takeover, watchers, and a clear
close code and reason for everything that goes wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.console.frames import CloseCode
from gateway.console.sessions import TAKEOVER_TEXT
from gateway.testing.timeouts import scaled
from tests.support.lab import LabHandle, running_lab
from tests.support.wsclient import login, open_console


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path) as handle:
        yield handle


async def test_raw_console_shows_the_banner_the_boot_and_runs_commands(lab: LabHandle) -> None:
    """az's protocol: banner, then the recent output, then typing reaches the guest."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await client.expect(r"Connected to the serial port of the VM\.\r\nIf no login prompt")
    await login(client)
    await client.type("hostname\r")
    await client.expect(r"\r\nlinux-1\r\n")
    await client.ws.close()


async def test_raw_token_may_come_as_the_first_text_message(lab: LabHandle) -> None:
    """Newer az clients send the token as the first text frame instead of in the URL."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, None)
    await client.ws.send(token)
    await client.expect(r"Connected to the serial port of the VM")
    await client.ws.close()


async def test_framed_console_reports_offsets_and_runs_sysrq(lab: LabHandle) -> None:
    """Framed clients get a connected event with byte offsets and command results."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    connected = await client.event("connected")
    assert connected["vm"] == "linux-1"
    assert connected["role"] == "writer"
    assert connected["offset"] >= connected["replay_from"] >= 0
    await client.ws.send(json.dumps({"type": "sysrq", "keys": "h", "id": "q1"}))
    result = await client.event("result")
    assert result == {"type": "result", "id": "q1", "command": "sysrq", "ok": True,
                      "message": "Successfully sent SysRq command"}  # fmt: skip
    await client.expect(r"sysrq: HELP : loglevel\(0-9\)")
    await client.ws.send(json.dumps({"type": "nmi"}))
    await client.expect(r"Uhhuh\. NMI received for unknown reason")


async def test_a_new_writer_takes_over_with_azures_text(lab: LabHandle) -> None:
    """The first user is closed with Azure's message and code 4001; the guest login stays."""
    url, token = await lab.session_url("alice")
    first = await open_console(url, token)
    await login(first)
    url2, token2 = await lab.session_url("carol")
    second = await open_console(url2, token2)
    code, reason = await first.closed()
    assert code == CloseCode.TAKEN_OVER
    assert "carol" in reason
    assert TAKEOVER_TEXT.encode() in first.data
    await second.type("hostname\r")  # still logged in: takeover does not log the guest out
    await second.expect(r"\r\nlinux-1\r\n")
    rows = lab.runtime.context.audit.query(action="console.takeover")  # type: ignore[union-attr]
    assert [(r.user, r.detail) for r in rows] == [("carol", "took the console over from alice")]


async def test_a_watcher_reads_along_and_kicks_nobody(lab: LabHandle) -> None:
    """A read-only watcher sees the writer's session; its typing is refused and never
    reaches the guest; the writer stays connected."""
    url, token = await lab.session_url("alice")
    writer = await open_console(url, token)
    await login(writer)
    url2, token2 = await lab.session_url("carol")
    watcher = await open_console(url2, token2, query="watch=1")
    await watcher.expect(r"Connected to the serial port")
    await watcher.type("reboot\r")
    await watcher.expect(r"read-only")
    await writer.type("echo from-the-writer\r")
    await writer.expect(r"\r\nfrom-the-writer")
    await watcher.expect(r"\r\nfrom-the-writer")
    assert b"reboot" not in lab.runtime.hubs["linux-1"].bootlog.read(0).contents
    assert lab.runtime.hubs["linux-1"].writer is not None
    assert lab.runtime.hubs["linux-1"].writer.user == "alice"


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("bad-token", CloseCode.UNAUTHORIZED, "access token is invalid"),
        ("other-user", CloseCode.UNAUTHORIZED, "another user"),
        ("used-twice", CloseCode.SESSION_REFUSED, "already used"),
        ("unknown-session", CloseCode.SESSION_REFUSED, "does not exist"),
        ("foreign-origin", CloseCode.ORIGIN_REFUSED, "allowed origins"),
    ],
)
async def test_refusals_have_a_code_and_a_reason(
    lab: LabHandle, case: str, code: int, words: str
) -> None:
    """Every refused connection is closed with its documented code and a readable reason."""
    url, token = await lab.session_url("alice")
    kw: dict[str, Any] = {}
    if case == "bad-token":
        token = "not-a-token"
    elif case == "other-user":
        token = await lab.token("carol")
    elif case == "used-twice":
        first = await open_console(url, token)
        await first.expect(r"Connected")
    elif case == "unknown-session":
        url = re.sub(r"/sessions/[^/]+/", "/sessions/nope/", url)
    elif case == "foreign-origin":
        kw["origin"] = "http://evil.example"
    client = await open_console(url, token, **kw)
    got_code, reason = await client.closed()
    assert got_code == code
    assert words in reason


async def test_a_malformed_frame_closes_with_what_was_wrong(lab: LabHandle) -> None:
    """Framed mode: a frame that is not a command closes the session with code 4007."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.ws.send('{"type": "format-disk"}')
    code, reason = await client.closed()
    assert code == CloseCode.MALFORMED
    assert "unknown command type 'format-disk'" in reason


async def test_admin_commands_on_azures_shape(lab: LabHandle) -> None:
    """POST .../adminCommand/{sysrq|nmi|reset}: 200 and the effect on the open console."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await client.expect(r"Connected")
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"command": "sysrq", "requestId": "r1", "commandParameters": {"SysRqCommand": "h"}}
    reply = await lab.http.post(admin + "/sysrq", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    await client.expect(r"sysrq: HELP")
    reply = await lab.http.post(admin + "/nmi", json={"command": "nmi"}, headers=headers)
    assert reply.json()["message"] == "NMI sent successfully"
    await client.expect(r"NMI received for unknown reason")
    reply = await lab.http.post(admin + "/reset", json={"command": "reset"}, headers=headers)
    assert reply.json()["message"] == "Successfully Hard Reset VM"
    await client.expect(r"Linux version")
    await client.expect(r"login: ")


async def test_sysrq_to_windows_is_refused_with_azures_text(lab: LabHandle) -> None:
    """SAC has no SysRq: the admin command answers Azure's message."""
    url, token = await lab.session_url("alice", "win-1")
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand/sysrq"
    body = {"command": "sysrq", "commandParameters": {"SysRqCommand": "b"}}
    reply = await lab.http.post(admin, json=body, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "You can only send a SysRq to a Linux VM."


async def test_a_hard_reset_keeps_the_session_and_shows_the_new_boot(lab: LabHandle) -> None:
    """Reset VM (Hard): the open console stays and streams the boot from its first line."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.ws.send(json.dumps({"type": "reset"}))
    assert (await client.event("result"))["message"] == "Successfully Hard Reset VM"
    await client.expect(r"\[    0\.000000\] Linux version")
    await client.expect(r"login: ")
    assert client.ws.close_code is None


async def test_a_graceful_restart_is_announced_and_the_console_goes_on(lab: LabHandle) -> None:
    """Restart: power events stopping -> stopped -> starting -> running, same connection."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.ws.send(json.dumps({"type": "restart", "id": 1}))
    result = await client.event("result", 30)
    assert result["ok"], result
    states = [(await client.event("power"))["state"] for _ in range(4)]
    assert states == ["stopping", "stopped", "starting", "running"]
    await client.expect(r"login: ")


async def test_deallocate_closes_sessions_with_the_reason(lab: LabHandle) -> None:
    """A deallocated VM has no serial port: its consoles close with 4003 and say so."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await client.expect(r"Connected")
    await lab.runtime.machines["linux-1"].deallocate()
    code, reason = await client.closed()
    assert code == CloseCode.DEALLOCATED
    assert "deallocated" in reason
    assert b"Start it and reconnect." in client.data


async def test_after_deallocate_and_start_the_console_follows_the_new_port(
    lab: LabHandle,
) -> None:
    """The hub reopens the VM's new port: a new connection sees the new boot and types."""
    machine = lab.runtime.machines["linux-1"]
    await machine.deallocate()
    await machine.start()
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await login(client)
    await client.type("hostname\r")
    await client.expect(r"\r\nlinux-1\r\n")


async def test_a_64_kib_paste_arrives_whole_and_in_order(lab: LabHandle) -> None:
    """A long paste is not cut or reordered: the guest echoes all 8192 lines, in order."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token)
    await login(client)
    lines = [f"{n:07d}" for n in range(8192)]  # 8 bytes a line with the newline: 64 KiB
    paste = "".join(line + "\r" for line in lines)
    # Pasted once the shell has run the line (left its line editor, which does not echo
    # what it has not read yet): from then on the guest's tty echoes every byte.
    await client.type("echo ready; cat > /dev/null\r")
    await client.expect(r"\r\nready\r\n")
    await client.ws.send(paste.encode())
    await client.expect(re.escape(lines[-1]) + r"\r\n", 60)
    echoed = re.findall(rb"(\d{7})\r\n", client.data)
    assert [e.decode() for e in echoed[-len(lines) :]] == lines


async def test_the_idle_timeout_is_announced_then_closes(lab: LabHandle) -> None:
    """With an idle timeout set, a silent client is warned, then closed with code 4004."""
    assert lab.runtime.context is not None
    lab.runtime.context.idle_timeout = 2.0
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    warning = await client.event("idle_warning")
    assert 0 < warning["seconds"] <= 2
    code, reason = await client.closed()
    assert code == CloseCode.IDLE
    assert "idle" in reason


async def test_a_taken_over_writer_cannot_come_back_by_resuming(lab: LabHandle) -> None:
    """After a takeover, the old session's `resume` is refused: the console stays carol's."""
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token, framed=True)
    await alice.event("connected")
    url2, token2 = await lab.session_url("carol")
    carol = await open_console(url2, token2, framed=True)
    await carol.event("connected")
    with contextlib.suppress(ConnectionClosed):  # the close may already be on its way
        await alice.ws.send(json.dumps({"type": "resume", "offset": 0}))
    code, _ = await alice.closed()
    assert code == CloseCode.TAKEN_OVER
    hub = lab.runtime.hubs["linux-1"]
    assert hub.writer is not None
    assert hub.writer.user == "carol"
    assert carol.ws.close_code is None


async def test_resumed_comes_before_the_bytes_it_announces(lab: LabHandle) -> None:
    """Framed `resume`: the `resumed` event, then the bytes from its `start`, in that order."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.expect(r"login: ")
    await client.ws.send(json.dumps({"type": "resume", "offset": 0}))
    frames = []
    async with asyncio.timeout(scaled(10)):
        while not frames or isinstance(frames[-1], bytes) is False:
            frames.append(await client.ws.recv())
    assert json.loads(frames[0])["type"] == "resumed"
    assert json.loads(frames[0])["start"] == 0
    assert frames[1].startswith(b"[    0.000000] Linux version")


async def test_admin_commands_expire_with_the_session_and_obey_disable(lab: LabHandle) -> None:
    """An old session URL cannot send commands; nor can a fresh one once the console is off."""
    url, token = await lab.session_url("alice")
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand/nmi"
    headers = {"Authorization": f"Bearer {token}"}
    sessions = lab.runtime.context.sessions  # type: ignore[union-attr]
    real_clock = sessions.clock
    sessions.clock = lambda: real_clock() + 3600
    try:
        reply = await lab.http.post(admin, json={"command": "nmi"}, headers=headers)
    finally:
        sessions.clock = real_clock
    assert reply.status_code == 404
    assert "expired" in reply.json()["error"]["message"]
    url, token = await lab.session_url("carol")
    admin = url.replace("ws://", "http://").removesuffix("/client") + "/adminCommand/nmi"
    headers = {"Authorization": f"Bearer {token}"}
    lab.runtime.context.console.set_disabled(True)  # type: ignore[union-attr]
    reply = await lab.http.post(admin, json={"command": "nmi"}, headers=headers)
    assert reply.status_code == 409
    assert "not enabled for this subscription" in reply.json()["error"]["message"]


async def test_a_bad_offset_is_refused_without_using_up_the_session(lab: LabHandle) -> None:
    """`?offset=²` closes with 4007 and a reason; the same URL then still opens once."""
    url, token = await lab.session_url("alice")
    bad = await open_console(url, token, query="offset=%C2%B2")
    code, reason = await bad.closed()
    assert code == CloseCode.MALFORMED
    assert "byte offset" in reason
    good = await open_console(url, token)
    await good.expect(r"Connected to the serial port")


async def test_a_page_on_another_name_is_refused(lab: LabHandle) -> None:
    """DNS rebinding: a request naming another host (even with a matching Origin) is
    refused, REST with ARM's 400 and the websocket before anything is read."""
    reply = await lab.http.get("/subscriptions", headers={"Host": "evil.example"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "InvalidHost"
    url, token = await lab.session_url("alice")
    with pytest.raises(InvalidStatus):
        await open_console(
            url, token, additional_headers={"Host": "evil.example"}, origin="http://evil.example"
        )
    client = await open_console(url, token)  # the session was not used up
    await client.expect(r"Connected to the serial port")


async def test_an_oversized_input_frame_is_refused_without_blaming_the_guest(
    lab: LabHandle,
) -> None:
    """A single frame over 1 MiB is refused as too big, not as a guest that stopped
    reading; the console goes on."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, framed=True)
    await client.event("connected")
    await client.ws.send(b"x" * ((1 << 20) + 1))
    result = await client.event("result")
    assert result["command"] == "input"
    assert result["ok"] is False
    assert "in one piece" in result["message"]
    assert "not reading" not in result["message"]
    await login(client)


async def test_a_raw_client_hears_every_refused_input_not_only_the_first(lab: LabHandle) -> None:
    """A watcher typing in raw mode is told each time, as a terminal shows it."""
    url, token = await lab.session_url("alice")
    client = await open_console(url, token, query="watch=1")
    await client.expect("Connected to the serial port")
    for _ in range(2):
        await client.ws.send("x")
        await client.expect("this console is read-only")
    await client.ws.close()


async def test_a_fault_of_the_gateways_own_is_an_error_in_its_log_not_a_client_leaving(
    lab: LabHandle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while rendering the console (here, made to fail) is logged at ERROR with its
    traceback, and the client is closed with 1011, not left waiting or told it left."""
    from gateway.console.connection import ConsoleConnection

    def broken(self: ConsoleConnection, items: list[Any]) -> list[Any]:
        raise ValueError("a renderer bug")

    url, token = await lab.session_url("alice")
    monkeypatch.setattr(ConsoleConnection, "render", broken)
    client = await open_console(url, token)
    code, reason = await client.closed()
    assert code == CloseCode.INTERNAL
    assert "see the lab's log" in reason
    faults = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert faults, "the fault is in the log"
    assert "a renderer bug" in str(faults[0].exc_info[1])  # type: ignore[index]


async def test_a_stuck_audit_disk_stalls_no_console_and_loses_no_row(lab: LabHandle) -> None:
    """Another process holds ``lab.db``'s write lock (a disk that does not answer): a
    console opened meanwhile connects, one already logged in goes on typing; the audit
    rows of what happened meanwhile are written once the database lets go, none lost."""
    url_a, token = await lab.session_url("alice")
    url_b, _ = await lab.session_url("alice")
    first = await open_console(url_a, token)
    await login(first)
    blocker = sqlite3.connect(lab.runtime.state_dir / "lab.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # every other write waits (5 s), then fails
        second = await open_console(url_b, token, query="watch=1")
        await second.expect(r"Connected to the serial port")
        await first.type("echo still-$((6*7))\r")
        await first.expect(r"still-42\r\n")
        (rows,) = blocker.execute(
            "SELECT count(*) FROM audit WHERE action = 'console.connect'"
        ).fetchone()
        assert rows == 1, "the second console's row waits for the database"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    connects = [
        r for r in lab.runtime.context.audit.query(limit=1000) if r.action == "console.connect"
    ]
    assert len(connects) == 2, connects
    assert lab.runtime.context.audit.lost == 0
