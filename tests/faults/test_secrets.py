"""Secrets stay secret: no password nor token in the lab's logs, its audit rows, its state
folder or a guest's boot log, after the flows that carry them (sign-in right and wrong, a
console session with a guest login, a power action, the signed boot log URL).

The QEMU side: a guest of the lab (one boot) here; a reset, a restart and a start again
in tests/e2e/test_qemu_machine.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.machines import MachineLaunchError
from gateway.machines.qemu import PASSWORD_FILE, PASSWORD_FW_CFG, QemuMachine
from tests.e2e.conftest import require_qemu
from tests.support.lab import running_lab
from tests.support.wsclient import open_console

GUEST_PASSWORD = "Guest-Pw-5e1f9a"
USER_PASSWORD = "Dave-Pw-7c2e91"
WRONG_PASSWORD = "Wrong-Pw-0d9a44"
VMS = f"""
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"
password = "{GUEST_PASSWORD}"
"""
DAVE = f"""
[[users]]
name = "dave"
password = "{USER_PASSWORD}"
roles = [{{ role = "Owner", scope = "subscription" }}]
"""
API = "api-version=2024-07-01"
CLIENT_LOGGERS = ("httpx", "httpcore", "websockets.client")


def _websocket_request_line(record: logging.LogRecord) -> bool:
    """uvicorn's lines about a websocket request (logged as ``uvicorn.error``): its INFO
    line with the request's path and query, and the websockets library's DEBUG trace of
    the handshake. See test_uvicorn_websocket_lines_carry_no_token."""
    message = record.getMessage()
    return record.name == "uvicorn.error" and (
        '"WebSocket ' in message or message.startswith(("< ", "> "))
    )


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret and secret in text]


async def test_no_password_nor_token_in_logs_audit_state_or_boot_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record of the lab (DEBUG and up, arguments filled in), every audit row,
    every file of the state folder and the boot log through its signed URL are free of the
    guest's and the user's passwords, a mistyped password, the bearer token, the console's
    one-time URL token and the URL's signature; the emulated guest's boot still prints its
    kernel command line, without the password."""
    caplog.set_level(logging.DEBUG)
    async with running_lab(tmp_path, vms=VMS, extra=DAVE) as lab:
        refused = await lab.http.post(
            "/oauth2/token",
            data={"grant_type": "password", "username": "dave", "password": WRONG_PASSWORD},
        )
        assert refused.status_code in (400, 401), refused.text
        token = await lab.token("dave", USER_PASSWORD)
        bearer = {"Authorization": f"Bearer {token}"}

        reply = await lab.connect(token, "linux-1")
        assert reply.status_code == 200, reply.text
        url = str(reply.json()["connectionString"])
        console = await open_console(url, token)
        await console.type("\r")
        await console.expect(r"login: ", 30)
        await console.type("root\r")
        await console.expect(r"Password: ")
        await console.type(GUEST_PASSWORD + "\r")
        await console.expect(r"# ")
        await console.type("echo logged-in\r")
        await console.expect(r"\r\nlogged-in\r\n")

        vm = lab.vm_path("linux-1")
        restart = await lab.http.post(f"{vm}/restart?{API}", headers=bearer)
        assert restart.status_code in (200, 202), restart.text
        await console.expect(r"Kernel command line: ", 30)  # the restarted guest boots again
        await console.expect(r"login: ", 30)
        await console.ws.close()

        diag = await lab.http.post(f"{vm}/retrieveBootDiagnosticsData?{API}", headers=bearer)
        assert diag.status_code == 200, diag.text
        blob_url = str(diag.json()["serialConsoleLogBlobUri"])
        blob = await lab.http.get(blob_url)
        assert blob.status_code == 200
        log_bytes = blob.content

    # The console's one-time URL (its session id) and the boot log URL's signature.
    session = urlsplit(url).path.split("/sessions/")[1].split("/")[0]
    signature = parse_qs(urlsplit(blob_url).query)["sig"][0]
    url_secrets = {"the console URL's session id": session, "the log URL's signature": signature}
    assert min(map(len, url_secrets.values())) >= 32, url_secrets
    secrets = {
        "the guest password": GUEST_PASSWORD,
        "the user's password": USER_PASSWORD,
        "a mistyped password": WRONG_PASSWORD,
        "the bearer token": token,
        **url_secrets,
    }

    # The boot log: the kernel's command line is there, the password is not.
    assert log_bytes.count(b"Kernel command line: ") == 2
    assert b"lab.hostname=linux-1" in log_bytes
    assert b"logged-in" in log_bytes  # the session's own output is kept, as Azure keeps it
    assert _leaks(log_bytes.decode(errors="replace"), secrets) == []

    # The lab's logs (the test's own HTTP and websocket clients log the URLs they open).
    records = [
        r
        for r in caplog.records
        if not r.name.startswith(CLIENT_LOGGERS) and not _websocket_request_line(r)
    ]
    assert any(r.name.startswith("serial_console_lab.") for r in records), "nothing captured"
    for record in records:
        line = f"{record.name} {record.getMessage()} {record.exc_text or ''}"
        assert _leaks(line, secrets) == [], line

    # The audit rows: the refused and the issued token are there, without the secrets.
    with sqlite3.connect(tmp_path / "state" / "lab.db") as db:
        rows = db.execute("SELECT user, address, action, target, outcome, detail FROM audit")
        audit = [" ".join(map(str, row)) for row in rows]
    assert any("dave" in row and "token" in row for row in audit), audit
    for row in audit:
        assert _leaks(row, secrets) == [], row

    # The state folder, file by file (the database, boot logs, run folders).
    for path in sorted((tmp_path / "state").rglob("*")):
        if path.is_file():
            data = path.read_bytes().decode("latin-1")
            leaked = _leaks(data, {k: v for k, v in secrets.items() if "password" in k})
            assert leaked == [], f"{path.relative_to(tmp_path)}: {leaked}"


async def test_uvicorn_websocket_lines_carry_no_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A console connection logs no bearer token nor the console URL's session id, at any
    log level (``serial-console lab run -v`` shows INFO, ``-vv`` DEBUG)."""
    caplog.set_level(logging.DEBUG)
    async with running_lab(tmp_path, vms=VMS, extra=DAVE) as lab:
        token = await lab.token("dave", USER_PASSWORD)
        reply = await lab.connect(token, "linux-1")
        assert reply.status_code == 200, reply.text
        url = str(reply.json()["connectionString"])
        console = await open_console(url, token)
        await console.expect(r"Connected to the serial port of the VM")
        await console.ws.close()
    session = urlsplit(url).path.split("/sessions/")[1].split("/")[0]
    lines = [r.getMessage() for r in caplog.records if _websocket_request_line(r)]
    if not lines:
        pytest.fail("uvicorn logged no websocket request line: update _websocket_request_line")
    for line in lines:
        assert token not in line, line
        assert session not in line, line


def test_the_password_file_for_qemu_is_private_and_never_written_through_a_link(
    tmp_path: Path,
) -> None:
    """The file QEMU reads the password from is made 0600 whatever the umask, replaces a
    file or a link planted under its name without writing through it, and goes away."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (run_dir / PASSWORD_FILE).symlink_to(target)
    vm = QemuMachine("vm-1", run_dir=run_dir, password=GUEST_PASSWORD)
    old_umask = os.umask(0)
    try:
        path = vm._write_password_file()
    finally:
        os.umask(old_umask)
    assert path == run_dir / PASSWORD_FILE
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == GUEST_PASSWORD
    assert target.read_text() == "untouched"
    argv = vm._argv(Path("vmlinux"), Path("initramfs.cpio"), run_dir / "qmp.sock", path)
    assert GUEST_PASSWORD not in " ".join(argv)
    assert f"name={PASSWORD_FW_CFG},file={path}" in argv
    vm._remove_password_file()
    assert not path.exists()
    assert QemuMachine("vm-2", run_dir=run_dir)._write_password_file() is None
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    with pytest.raises(MachineLaunchError, match="cannot write the guest password for QEMU"):
        QemuMachine("vm-3", run_dir=not_a_folder, password=GUEST_PASSWORD)._write_password_file()


@pytest.mark.qemu
async def test_a_qemu_guest_of_the_lab_keeps_its_password_out_of_argv_and_the_log(
    tmp_path: Path,
) -> None:
    """The password of the lab file logs root in on a real guest; QEMU's argv (any local
    user's /proc/<pid>/cmdline) and the boot log read through its signed URL have none."""
    require_qemu()
    vms = VMS.replace('"emulated"', '"qemu"')
    async with running_lab(tmp_path, vms=vms, extra=DAVE) as lab:
        token = await lab.token("dave", USER_PASSWORD)
        reply = await lab.connect(token, "linux-1")
        assert reply.status_code == 200, reply.text
        console = await open_console(str(reply.json()["connectionString"]), token)
        await console.expect(r"login: ", 90)
        pid = getattr(lab.runtime.machines["linux-1"], "pid", None)
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"-fw_cfg" in argv
        assert GUEST_PASSWORD.encode() not in argv
        await console.type("\r")
        await console.expect(r"login: ")
        await console.type("root\r")
        await console.expect(r"Password: ")
        await console.type(GUEST_PASSWORD + "\r")
        await console.expect(r"# ", 30)
        await console.ws.close()
        vm = lab.vm_path("linux-1")
        diag = await lab.http.post(
            f"{vm}/retrieveBootDiagnosticsData?{API}",
            headers={"Authorization": f"Bearer {token}"},
        )
        blob = await lab.http.get(str(diag.json()["serialConsoleLogBlobUri"]))
    assert b"Kernel command line: " in blob.content
    assert b"lab.hostname=linux-1" in blob.content
    assert b"root login on" in blob.content
    assert GUEST_PASSWORD.encode() not in blob.content
