"""Session recordings on a real lab (emulated guests, the gateway on loopback).

What a user of the recordings sees: every console session kept as an asciicast v2 file
that the real ``asciinema`` reads, its events in the order they happened (login, command,
SysRq, takeover) with who did them, the sessions listed as ARM resources beside
``connect`` (Readers refused with Azure's text), the file served with ``Range``, the
audit rows naming their session, and typed bytes only when the lab file says so.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway.cli.recording import TERMINAL_RESET
from gateway.console import texts
from gateway.console.frames import CloseCode
from gateway.recordings import cast
from gateway.testing.timeouts import scaled
from tests.support.cli import Cli, expect, finished
from tests.support.lab import EMULATED_VMS, SUBSCRIPTION, LabHandle, running_lab, scale_set
from tests.support.ports import free_port
from tests.support.wsclient import login, open_console

API = "?api-version=2024-07-01"
PORT = "/providers/Microsoft.SerialConsole/serialPorts/0"
SCALE_SET = scale_set()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path, vms=EMULATED_VMS + SCALE_SET) as handle:
        yield handle


async def _get(lab: LabHandle, user: str, path: str, **kw: Any) -> Any:
    token = await lab.token(user)
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return await lab.http.get(path, headers=headers, **kw)


async def _sessions(lab: LabHandle, user: str = "alice", vm: str = "linux-1") -> list[Any]:
    reply = await _get(lab, user, lab.vm_path(vm) + PORT + "/sessions" + API)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["value"])


async def _ended(lab: LabHandle, session_id: str, vm: str = "linux-1") -> dict[str, Any]:
    """The session's resource once the lab has written its end (the writer runs apart)."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        for s in await _sessions(lab, "carol", vm):
            if s["name"] == session_id and s["properties"]["state"] == "ended":
                found.update(s)
                return True
        return False

    async with asyncio.timeout(scaled(10)):
        while not await check():  # noqa: ASYNC110 - the index has no event to await
            await asyncio.sleep(0.05)
    return found


async def _recording(lab: LabHandle, session_id: str, vm: str = "linux-1") -> bytes:
    reply = await _get(
        lab, "alice", lab.vm_path(vm) + PORT + f"/sessions/{session_id}/recording" + API
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == cast.CONTENT_TYPE
    return reply.content


def _session_id(url: str) -> str:
    return url.rsplit("/sessions/", 1)[1].split("/")[0]


async def _asciinema_cat(path: Path) -> str:
    """What ``asciinema cat`` prints for ``path`` (the real tool, from PyPI)."""
    exe = shutil.which("asciinema", path=str(Path(sys.executable).parent))
    assert exe is not None, "asciinema is in the test extra: pip install -e '.[test]'"
    process = await asyncio.create_subprocess_exec(
        exe, "cat", str(path), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(scaled(30)):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_a_session_with_a_login_a_command_a_sysrq_and_a_takeover_replays_in_order(
    lab: LabHandle, tmp_path: Path
) -> None:
    began = time.time()
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token, framed=True)
    await alice.event("connected")
    await login(alice)
    await alice.type("hostname\r")
    await alice.expect(r"\r\nlinux-1\r\n")
    await alice.ws.send(json.dumps({"type": "sysrq", "keys": "h", "id": "s1"}))
    assert (await alice.event("result"))["ok"] is True
    await alice.expect(r"sysrq: HELP : loglevel\(0-9\)")
    url2, token2 = await lab.session_url("carol")
    carol = await open_console(url2, token2)
    await carol.expect(r"Connected to the serial port of the VM")
    code, _ = await alice.closed()
    assert code == CloseCode.TAKEN_OVER
    took = time.time() - began
    session_id = _session_id(url)

    ended = await _ended(lab, session_id)
    props = ended["properties"]
    assert ended["id"].lower().endswith(f"/serialports/0/sessions/{session_id}")
    assert (props["user"], props["door"], props["inputRecorded"]) == ("alice", "websocket", False)
    assert props["bytes"] > 0
    assert "carol" in props["endReason"]
    body = await _recording(lab, session_id)
    assert props["bytes"] == len(body)
    recording = cast.parse(body.decode())
    assert recording.header["serial_console_lab"]["user"] == "alice"
    assert recording.header["serial_console_lab"]["input"] is False

    # The real asciinema reads it: the banner, the login, the command, SysRq's help, and
    # Azure's takeover text, in that order.
    saved = tmp_path / "alice.cast"
    saved.write_bytes(body)
    shown = await _asciinema_cat(saved)
    order = [texts.BANNER, "login: ", "\r\nlinux-1\r\n", "sysrq: HELP", texts.TAKEOVER]
    places = [shown.find(text) for text in order]
    assert min(places) >= 0, places
    assert places == sorted(places), places
    assert f"{cast.MARK_ON}{texts.BANNER}{cast.MARK_OFF}" in shown  # the gateway's, marked

    # Markers: the SysRq with who sent it, then the takeover with who took it.
    labels = [label for _, label in recording.markers()]
    sysrq = labels.index("SysRq h by alice (websocket)")
    takeover = next(i for i, label in enumerate(labels) if label.startswith("takeover: carol"))
    assert sysrq < takeover
    # Plausible times: rising, within the test's own duration, the SysRq after the login.
    times = [t for t, _, _ in recording.events]
    assert times == sorted(times)
    assert 0 < times[-1] <= took + 1
    t_login = next(t for t, c, d in recording.events if c == "o" and "# " in d)
    t_sysrq = recording.markers()[sysrq][0]
    assert t_login <= t_sysrq
    assert not [e for e in recording.events if e[1] == "i"]  # typed bytes are not kept
    await carol.ws.close()


async def test_audit_rows_name_their_session(lab: LabHandle) -> None:
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token, framed=True)
    await alice.event("connected")
    await alice.ws.send(json.dumps({"type": "nmi", "id": "n1"}))
    assert (await alice.event("result"))["ok"] is True
    await alice.ws.close()
    session_id = _session_id(url)
    await _ended(lab, session_id)
    reply = await _get(lab, "carol", f"/subscriptions/{SUBSCRIPTION}/providers/"
                       "Microsoft.SerialConsole/auditLogs" + API + "&$top=1000")  # fmt: skip
    rows = [r for r in reply.json()["value"] if r["session"] == session_id]
    actions = [(r["action"], r["outcome"]) for r in rows]
    assert ("connect", "allowed") in actions  # the REST call that made the session
    assert ("console.connect", "allowed") in actions
    assert ("console.nmi", "succeeded") in actions
    assert ("console.disconnect", "succeeded") in actions


async def test_a_reader_may_not_list_or_download_recordings(lab: LabHandle) -> None:
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token)
    await alice.expect(r"Connected to the serial port")
    await alice.ws.close()
    session_id = _session_id(url)
    await _ended(lab, session_id)
    base = lab.vm_path("linux-1") + PORT + "/sessions"
    for path in (base, f"{base}/{session_id}", f"{base}/{session_id}/recording"):
        reply = await _get(lab, "bob", path + API)
        assert reply.status_code == 403, reply.text
        assert reply.json()["error"]["message"] == texts.NO_PERMISSION


async def test_the_recording_is_served_in_ranges_for_players_and_resumed_downloads(
    lab: LabHandle,
) -> None:
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token)
    await login(alice)
    await alice.ws.close()
    session_id = _session_id(url)
    await _ended(lab, session_id)
    whole = await _recording(lab, session_id)
    path = lab.vm_path("linux-1") + PORT + f"/sessions/{session_id}/recording" + API
    reply = await _get(lab, "alice", path, headers={"Range": "bytes=0-99"})
    assert reply.status_code == 206
    assert reply.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    assert reply.headers["content-type"] == cast.CONTENT_TYPE
    assert reply.content == whole[:100]
    reply = await _get(lab, "alice", path, headers={"Range": "bytes=100-"})
    assert reply.status_code == 206
    assert whole[:100] + reply.content == whole
    reply = await _get(lab, "alice", path, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert reply.status_code == 416
    missing = lab.vm_path("linux-1") + PORT + "/sessions/nope/recording" + API
    reply = await _get(lab, "alice", missing)
    assert reply.status_code == 404
    assert "serial-console recording list" in reply.json()["error"]["message"]


async def test_a_scale_set_instance_lists_its_own_sessions(lab: LabHandle) -> None:
    instance = (
        lab.vm_path("linux-1").rsplit("/virtualMachines/", 1)[0]
        + "/virtualMachineScaleSets/web-vmss/virtualMachines/0"
    )
    token = await lab.token("alice")
    reply = await lab.http.post(instance + PORT + "/connect" + API,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert reply.status_code == 200, reply.text
    url = reply.json()["connectionString"]
    client = await open_console(url, token)
    await client.expect(r"Connected to the serial port")
    await client.ws.close()
    session_id = _session_id(url)
    reply = await _get(lab, "alice", instance + PORT + "/sessions" + API)
    async with asyncio.timeout(scaled(10)):
        while session_id not in reply.text:  # the index has no event to await
            await asyncio.sleep(0.05)
            reply = await _get(lab, "alice", instance + PORT + "/sessions" + API)
    assert session_id not in str(await _sessions(lab))  # not linux-1's


async def test_typed_bytes_are_kept_only_when_the_lab_file_says_and_the_user_is_told(
    tmp_path: Path,
) -> None:
    async with running_lab(tmp_path, extra="[recordings]\nrecord_input = true\n") as lab:
        url, token = await lab.session_url("alice")
        alice = await open_console(url, token)
        await alice.expect(r"Connected to the serial port")
        await alice.expect(r"so is what you type \(passwords too\)")
        await login(alice)
        await alice.ws.close()
        session_id = _session_id(url)
        ended = await _ended(lab, session_id)
        assert ended["properties"]["inputRecorded"] is True
        recording = cast.parse((await _recording(lab, session_id)).decode())
    assert recording.header["serial_console_lab"]["input"] is True
    typed = "".join(d for _, c, d in recording.events if c == "i")
    assert "root\r" in typed
    assert "serial-lab\r" in typed


async def test_the_session_bound_stops_the_file_and_says_so(tmp_path: Path) -> None:
    extra = "[recordings]\nsession_bytes = 4096\n"
    async with running_lab(tmp_path, extra=extra) as lab:
        url, token = await lab.session_url("alice")
        alice = await open_console(url, token)
        await login(alice)
        await alice.type("dmesg\r")
        await alice.expect(r"# ")
        await alice.ws.close()
        ended = await _ended(lab, _session_id(url))
        body = await _recording(lab, _session_id(url))
    assert ended["properties"]["truncated"] is True
    assert len(body) <= 4096 + 512
    assert "reached the lab's limit of 4096 bytes" in cast.parse(body.decode()).output()


# -- the CLI ----------------------------------------------------------------------------------


async def test_cli_lists_downloads_and_plays_a_session(lab: LabHandle, tmp_path: Path) -> None:
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token)
    await login(alice)
    await alice.type("hostname\r")
    await alice.expect(r"\r\nlinux-1\r\n")
    await alice.ws.close()
    session_id = _session_id(url)
    await _ended(lab, session_id)
    cli = Cli.at(lab.url, tmp_path / "config")
    cli.cwd = tmp_path
    await cli.login("alice")
    machine = ["-g", "lab-rg", "-n", "linux-1"]

    table = await cli.run("recording", "list", *machine)
    assert table.code == 0, table.err
    head, _, *rows = table.text.splitlines()
    assert head.split() == ["Session", "User", "Door", "Start", "End", "Bytes", "Ended"]
    assert any(row.startswith(session_id) and " alice " in row for row in rows), table.text
    listed = await cli.run("recording", "list", *machine, "-o", "json")
    assert session_id in [s["name"] for s in json.loads(listed.text)]

    saved = await cli.run("recording", "download", *machine, "--session", session_id)
    assert saved.code == 0, saved.err
    file = tmp_path / f"linux-1-{session_id}.cast"
    assert file.read_bytes() == await _recording(lab, session_id)

    played = await cli.run("recording", "play", *machine, "--session", session_id)
    assert played.code == 0, played.err
    assert played.text == cast.parse(file.read_text()).output()  # a pipe gets it as it was
    assert "\r\nlinux-1\r\n" in played.text

    reader = Cli.at(lab.url, tmp_path / "bob")
    await reader.login("bob")
    refused = await reader.run("recording", "list", *machine)
    assert refused.code == 1
    assert texts.NO_PERMISSION in refused.err
    unknown = await cli.run("recording", "download", *machine, "--session", "nope")
    assert unknown.code == 1
    assert "serial-console recording list" in unknown.err


def _slow_cast(path: Path, pause: float) -> None:
    """A recording with ``pause`` seconds between its two lines."""
    head = cast.header(started=0, title="t", lab={}, input_recorded=False)
    path.write_text(
        head + cast.event(0.1, "o", "first line\r\n") + cast.event(0.1 + pause, "o", "second\r\n")
    )


async def test_cli_play_keeps_time_speeds_up_and_cuts_long_pauses(tmp_path: Path) -> None:
    cli = Cli.at("http://127.0.0.1:9", tmp_path / "config")  # no lab needed for a file
    path = tmp_path / "slow.cast"
    _slow_cast(path, 2.0)
    began = time.monotonic()
    result = await cli.run("recording", "play", "--file", str(path), "--speed", "4")
    took = time.monotonic() - began
    assert result.code == 0, result.err
    assert result.text.index("first line") < result.text.index("second")
    assert took >= 0.5  # 2 s at 4x
    _slow_cast(path, 3600.0)
    result = await cli.run("recording", "play", "--file", str(path), "--idle-limit", "0.2")
    assert result.code == 0, result.err
    assert "second" in result.text
    bad = await cli.run("recording", "play", "--file", str(path), "--speed", "0")
    assert bad.code == 2
    assert "not a number above 0" in bad.err
    path.write_text("not a recording\n")
    bad = await cli.run("recording", "play", "--file", str(path))
    assert bad.code == 1
    assert "not a recording the lab made" in bad.err


async def test_cli_play_stops_on_ctrl_c_and_gives_the_terminal_back(tmp_path: Path) -> None:
    cli = Cli.at("http://127.0.0.1:9", tmp_path / "config")
    path = tmp_path / "slow.cast"
    _slow_cast(path, 3600.0)
    child = cli.spawn("recording", "play", "--file", str(path))
    await expect(child, "first line")
    echo_during = termios.tcgetattr(child.child_fd)[3] & termios.ECHO
    child.sendintr()
    await expect(child, re.escape(TERMINAL_RESET))
    assert await finished(child) == 130
    assert echo_during == 0  # keys typed during the replay are not echoed into it


# -- every door --------------------------------------------------------------------------------


async def _ssh_as_alice(port: int) -> asyncssh.SSHClientConnection:
    """alice on linux-1's console through the SSH door (asyncssh as the client)."""
    async with asyncio.timeout(scaled(30)):
        return await asyncssh.connect(
            "127.0.0.1", port, username="alice+lab-rg+linux-1", password="alice",
            known_hosts=None, client_keys=None, agent_path=None,
        )  # fmt: skip


async def test_the_ssh_and_rfc2217_doors_are_recorded_too(tmp_path: Path) -> None:
    ssh_port, rfc_port = free_port(), free_port()
    vms = EMULATED_VMS.replace(
        'name = "linux-1"\n', f'name = "linux-1"\nrfc2217_port = {rfc_port}\n'
    )
    async with running_lab(tmp_path, vms=vms, gateway=f"ssh_port = {ssh_port}") as lab:
        conn = await _ssh_as_alice(ssh_port)
        async with conn:
            process = await conn.create_process(term_type="xterm", encoding=None)
            seen = b""
            async with asyncio.timeout(scaled(15)):
                while b"Connected to the serial port" not in seen:
                    seen += await process.stdout.read(4096)
                process.stdin.write(b"\r")
                while b"login: " not in seen:
                    seen += await process.stdout.read(4096)
        reader, writer = await asyncio.open_connection("127.0.0.1", rfc_port)
        writer.write(b"\r")
        async with asyncio.timeout(scaled(15)):
            seen = b""
            while b"login: " not in seen:
                seen += await reader.read(4096)
        writer.close()
        await writer.wait_closed()

        async def doors() -> set[str]:
            return {s["properties"]["door"] for s in await _sessions(lab)
                    if s["properties"]["state"] == "ended"}  # fmt: skip

        async with asyncio.timeout(scaled(10)):
            while not {"ssh", "rfc2217"} <= await doors():  # noqa: ASYNC110 - no event: the index
                await asyncio.sleep(0.05)
        for s in await _sessions(lab):
            body = (await _recording(lab, s["name"])).decode()
            assert "login: " in cast.parse(body).output(), s["properties"]["door"]


async def test_a_power_action_through_the_api_is_marked_with_who_did_it(lab: LabHandle) -> None:
    url, token = await lab.session_url("alice")
    alice = await open_console(url, token, framed=True)
    await alice.event("connected")
    carol = await lab.token("carol")
    reply = await lab.http.post(
        lab.vm_path("linux-1") + "/restart?api-version=2024-07-01",
        headers={"Authorization": f"Bearer {carol}"},
    )
    assert reply.status_code == 202, reply.text
    await alice.event("power")
    await alice.ws.close()
    session_id = _session_id(url)
    await _ended(lab, session_id)
    recording = cast.parse((await _recording(lab, session_id)).decode())
    labels = [label for _, label in recording.markers()]
    assert labels[0] == "power: restart by carol (REST)"
    assert any(label.startswith("power: ") for label in labels[1:])  # the guest's own change


async def test_a_watchers_refused_nmi_is_on_its_own_session_not_its_writers(
    tmp_path: Path,
) -> None:
    """alice writes by the websocket and watches by SSH; the watcher's NMI is refused. The
    audit row names the watcher's session, and only the watcher's recording has the
    refusal, as its user read it: the writer did nothing, and saw nothing of it."""
    ssh_port = free_port()
    async with running_lab(tmp_path, vms=EMULATED_VMS, gateway=f"ssh_port = {ssh_port}") as lab:
        url, token = await lab.session_url("alice")
        writer = await open_console(url, token, framed=True)
        await writer.event("connected")
        conn = await _ssh_as_alice(ssh_port)
        async with conn:
            process = await conn.create_process("watch", term_type="xterm", encoding=None)
            seen = b""
            async with asyncio.timeout(scaled(15)):
                while b"Connected to the serial port" not in seen:
                    seen += await process.stdout.read(4096)
                process.stdin.write(b"\x1dn")  # Ctrl+] n: the menu's NMI
                while b"(Y/n)" not in seen:
                    seen += await process.stdout.read(4096)
                process.stdin.write(b"Y")
                while texts.READ_ONLY.encode() not in seen:
                    seen += await process.stdout.read(4096)
        await writer.ws.close()
        writer_id = _session_id(url)
        await _ended(lab, writer_id)

        async def ended_ssh() -> list[Any]:
            return [s for s in await _sessions(lab) if s["properties"]["door"] == "ssh"
                    and s["properties"]["state"] == "ended"]  # fmt: skip

        async with asyncio.timeout(scaled(10)):
            while not await ended_ssh():  # noqa: ASYNC110 - no event: the index
                await asyncio.sleep(0.05)
        watcher_id = (await ended_ssh())[0]["name"]
        assert lab.runtime.context is not None
        rows = lab.runtime.context.audit.query(user="alice", action="console.nmi")
        assert [(r.outcome, r.session) for r in rows] == [("denied", watcher_id)]
        watched = cast.parse((await _recording(lab, watcher_id)).decode())
        written = cast.parse((await _recording(lab, writer_id)).decode())
        assert any("NMI by alice refused" in label for _, label in watched.markers())
        assert not any("NMI" in label for _, label in written.markers())
        # what the SSH user read is in their recording: the refusal's line too
        assert texts.READ_ONLY in watched.output()
