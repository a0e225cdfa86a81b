"""The SSH door over a real asyncssh server on loopback, driven by OpenSSH's ``ssh``.

One lab per test (emulated Linux and Windows guests and a one-instance scale set); the
door listens on 127.0.0.1 port 0 with the lab's own services, and the real ``ssh`` client
runs under pexpect on a pseudo-terminal, so ``~B``, ``~.``, Ctrl+] and the password prompt
are the real thing.
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from gateway.cli.lab import banner
from gateway.console import texts
from gateway.console.frames import CloseCode
from gateway.lab.config import LabConfigError, load_default_lab, parse_lab
from gateway.ssh import server as ssh_server
from gateway.ssh.server import HOST_KEY_FILE, SshDoor, load_host_key
from gateway.testing.timeouts import scaled
from tests.integration.conftest import eventually
from tests.support.cli import expect, finished
from tests.support.lab import EMULATED_VMS, LabHandle, lab_toml, running_lab, scale_set
from tests.support.ports import free_port
from tests.support.wsclient import open_console

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh")

SCALE_SET = scale_set()
MENU_LINUX = re.escape(
    "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
    "| q to quit Console | CTRL + ] to forward input |"
)


@dataclass
class SshLab:
    lab: LabHandle
    door: SshDoor

    def ssh(self, login: str, *command: str, plain: bool = False) -> pexpect.spawn:
        """OpenSSH's client to ``login`` (``user+group+vm``), with a PTY, asking for the
        password (answer it with ``sign_in``); ``plain``: its own choice of methods and
        its usual messages (the server's banner among them)."""
        chosen = [] if plain else [
            "-o", "PreferredAuthentications=password", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        args = [
            "-F", "/dev/null", "-tt", "-p", str(self.door.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1", *chosen,
            f"{login}@127.0.0.1", *command,
        ]  # fmt: skip
        child = pexpect.spawn("ssh", args, timeout=scaled(15))
        child.setwinsize(40, 200)
        return child


@pytest.fixture
async def ssh_lab(tmp_path: Path) -> AsyncIterator[SshLab]:
    async with running_lab(tmp_path, vms=EMULATED_VMS + SCALE_SET) as lab:
        assert lab.runtime.context is not None
        door = SshDoor(lab.runtime.context, load_host_key(lab.runtime.state_dir))
        await door.start("127.0.0.1", 0)
        try:
            yield SshLab(lab, door)
        finally:
            await door.close()


async def sign_in(child: pexpect.spawn, password: str) -> None:
    await expect(child, r"(?i)password: ?")
    child.sendline(password)


async def guest_login(child: pexpect.spawn) -> None:
    child.send("\r")
    await expect(child, r"login: ")
    child.send("root\r")
    await expect(child, r"Password: ")
    child.send("serial-lab\r")
    await expect(child, r"# ")


async def test_a_user_signs_in_and_runs_a_command_then_leaves_with_tilde_dot(
    ssh_lab: SshLab,
) -> None:
    """Azure's banner, the size hint, the guest's login and a command; ``~.`` leaves."""
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    await expect(child, r"run 'stty rows 40 cols 200' in the guest")
    await guest_login(child)
    child.send("hostname\r")
    await expect(child, r"\r\nlinux-1\r\n")
    child.send("\r~.")
    await finished(child)
    rows = ssh_lab.lab.runtime.context.audit.query(action="console.connect")  # type: ignore[union-attr]
    assert [(r.user, r.outcome) for r in rows] == [("alice", "allowed")]


async def test_a_resized_terminal_is_offered_its_stty_line_again(ssh_lab: SshLab) -> None:
    """Resizing the terminal (``ssh`` sends a window-change request) shows the new size's
    ``stty`` line, as the PTY request's size was shown at connect."""
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, r"run 'stty rows 40 cols 200' in the guest")
    await guest_login(child)
    child.setwinsize(30, 120)  # SIGWINCH: ssh sends a window-change request
    await expect(child, r"Your terminal is now 30 rows by 120 columns; the guest does not "
                        r"know it: run 'stty rows 30 cols 120' in the guest")  # fmt: skip
    child.setwinsize(50, 160)  # shown at once, or when the last hint is a second old
    await expect(child, r"run 'stty rows 50 cols 160' in the guest")
    child.send("\r~.")
    await finished(child)


async def test_no_stty_line_where_it_cannot_help(ssh_lab: SshLab) -> None:
    """SAC has no ``stty``, and a watcher cannot type: neither is offered the line, at
    connect or on a resize."""
    seen = io.BytesIO()
    writer = ssh_lab.ssh("alice+lab-rg+win-1")
    writer.logfile_read = seen
    await sign_in(writer, "alice")
    await expect(writer, re.escape(texts.BANNER))
    writer.setwinsize(30, 120)
    writer.send("resize-mark\r")  # after the window-change, on the same channel
    await expect(writer, r"resize-mark\r?\n.*Unrecognized command")
    watcher = ssh_lab.ssh("carol+lab-rg+linux-1", "watch")
    watcher.logfile_read = seen
    await sign_in(watcher, "carol")
    await expect(watcher, r"Watching read-only")
    watcher.setwinsize(30, 120)
    watcher.send("x")
    await expect(watcher, r"typing goes nowhere")
    for child in (writer, watcher):
        child.send("\r~.")
        await finished(child)
    assert b"stty" not in seen.getvalue()


async def test_a_scale_set_instance_is_user_group_set_instance(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+web-vmss+0")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    hub = ssh_lab.lab.runtime.hubs["web-vmss_0"]
    await guest_login(child)
    assert hub.writer is not None
    assert hub.writer.user == "alice"
    child.send("\r~.")
    await finished(child)


async def test_a_wrong_password_is_refused(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "not-alice")
    await expect(child, r"Permission denied")
    assert await finished(child) != 0
    rows = ssh_lab.lab.runtime.context.audit.query(action="token")  # type: ignore[union-attr]
    assert [(r.user, r.outcome) for r in rows] == [("alice", "denied")]


async def test_a_locked_user_is_told_so_even_with_the_right_password(tmp_path: Path) -> None:
    """The token endpoint's lockout: after a failure past the threshold, the right password
    is refused too, and the sign-in banner says why."""
    access = "[access]\nlockout_threshold = 1\nlockout_duration = 600\n"
    async with running_lab(tmp_path, extra=access) as lab:
        assert lab.runtime.context is not None
        door = SshDoor(lab.runtime.context, load_host_key(lab.runtime.state_dir))
        await door.start("127.0.0.1", 0)
        try:
            child = SshLab(lab, door).ssh("alice+lab-rg+linux-1")
            await sign_in(child, "wrong")
            assert await finished(child) != 0
            child = SshLab(lab, door).ssh("alice+lab-rg+linux-1", plain=True)
            await sign_in(child, "alice")
            await expect(child, r"Your account is locked .* Try again in \d+ s\.")
            child.close(force=True)  # it would offer another method; the answer is the same
            reply = await lab.http.post("/oauth2/token", data={
                "grant_type": "password", "username": "alice", "password": "alice",
            })  # fmt: skip
            assert "AADSTS50053" in reply.text
        finally:
            await door.close()


async def test_tilde_b_is_a_serial_break_so_the_next_key_is_sysrq(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    child.send("\r~B")
    child.send("h")
    await expect(child, r"sysrq: HELP : loglevel\(0-9\)")
    rows = ssh_lab.lab.runtime.context.audit.query(action="console.break")  # type: ignore[union-attr]
    assert ("alice", "succeeded", "ssh") in [(r.user, r.outcome, r.detail) for r in rows]
    child.send("\r~.")
    await finished(child)


async def test_the_ctrl_bracket_menu_sends_sysrq_and_quits(ssh_lab: SshLab) -> None:
    """az's menu: s then a key is SysRq (az's success text, the guest's answer); q quits
    with status 0."""
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    child.send("\x1d")
    await expect(child, MENU_LINUX)
    child.send("s")
    await expect(child, r"Which SysRq command would you like to send\? Press h for help: ")
    child.send("h")
    # the guest's answer and az's success text, in whichever order they come
    answers = [r"sysrq: HELP : loglevel\(0-9\)", re.escape(texts.SUCCESS["sysrq"])]
    assert {await expect(child, answers), await expect(child, answers)} == {0, 1}
    child.send("\x1d")
    await expect(child, MENU_LINUX)
    child.send("q")
    assert await finished(child) == 0


async def test_a_reader_is_refused_with_azures_text(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("bob+lab-rg+linux-1")
    await sign_in(child, "bob")
    await expect(child, re.escape(texts.NO_PERMISSION))
    assert await finished(child) == 1
    assert ssh_lab.lab.runtime.hubs["linux-1"].session_count == 0


async def test_an_unknown_vm_is_refused_with_its_name(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+nope-1")
    await sign_in(child, "alice")
    await expect(child, r"nope-1")
    assert await finished(child) == 1


async def test_prerequisites_are_refused_in_azures_words(ssh_lab: SshLab) -> None:
    """A stopped VM, a disabled port, a disabled console: Azure's text and status 1."""
    runtime = ssh_lab.lab.runtime
    assert runtime.context is not None
    await runtime.machines["win-1"].deallocate()
    cases = [("alice+lab-rg+win-1", texts.NOT_RUNNING)]
    runtime.context.console.set_port_enabled(
        runtime.context.inventory.vm("lab-rg", "linux-1"), False
    )
    cases.append(("alice+lab-rg+linux-1", texts.PORT_DISABLED))
    for login, text in cases:
        child = ssh_lab.ssh(login)
        await sign_in(child, "alice")
        await expect(child, re.escape(text))
        assert await finished(child) == 1
    runtime.context.console.set_disabled(True)
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.CONSOLE_DISABLED))
    assert await finished(child) == 1


async def test_the_menu_asks_a_capital_y_before_an_nmi(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    child.send("\x1d")
    await expect(child, MENU_LINUX)
    child.send("n")
    await expect(child, re.escape("Are you sure you want to send an NMI? (Y/n): "))
    child.send("y")  # not a capital Y: nothing is sent
    child.send("\x1d")
    await expect(child, MENU_LINUX)
    child.send("n")
    await expect(child, re.escape("Are you sure you want to send an NMI? (Y/n): "))
    child.send("Y")
    answers = [r"Uhhuh\. NMI received", re.escape(texts.SUCCESS["nmi"])]
    assert {await expect(child, answers), await expect(child, answers)} == {0, 1}
    rows = ssh_lab.lab.runtime.context.audit.query(action="console.nmi")  # type: ignore[union-attr]
    assert [r.outcome for r in rows] == ["allowed", "succeeded"]
    child.send("\r~.")
    await finished(child)


async def test_a_client_that_vanishes_frees_the_console(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    hub = ssh_lab.lab.runtime.hubs["linux-1"]
    assert hub.session_count == 1
    child.kill(signal.SIGKILL)
    await finished(child)
    await eventually(lambda: hub.session_count == 0, scaled(10), "the console to be freed")


async def test_a_user_name_without_a_console_says_how_to_name_one(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice")
    await sign_in(child, "alice")
    await expect(child, re.escape("Sign in as USER+RESOURCE_GROUP+VM (a VM)"))
    assert await finished(child) == 1


async def test_a_watchers_typing_never_reaches_the_guest(ssh_lab: SshLab) -> None:
    writer = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(writer, "alice")
    await guest_login(writer)
    watcher = ssh_lab.ssh("carol+lab-rg+linux-1", "watch")
    await sign_in(watcher, "carol")
    await expect(watcher, r"Watching read-only")
    watcher.send("reboot\r")
    await expect(watcher, r"typing goes nowhere")
    watcher.send("\x1d")
    await expect(watcher, MENU_LINUX)
    watcher.send("r")
    await expect(watcher, re.escape("Are you sure you want to Hard Reset the VM? (Y/n): "))
    watcher.send("Y")
    await expect(watcher, re.escape(texts.READ_ONLY))
    writer.send("echo from-the-writer\r")
    await expect(writer, r"\r\nfrom-the-writer")
    await expect(watcher, r"\r\nfrom-the-writer")
    hub = ssh_lab.lab.runtime.hubs["linux-1"]
    assert b"reboot" not in hub.bootlog.read(0).contents
    assert hub.writer is not None
    assert hub.writer.user == "alice"
    for child in (writer, watcher):
        child.send("\r~.")
        await finished(child)


async def test_a_websocket_writer_takes_over_from_ssh(ssh_lab: SshLab) -> None:
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await expect(child, re.escape(texts.BANNER))
    url, token = await ssh_lab.lab.session_url("carol")
    client = await open_console(url, token)
    await client.expect(r"Connected to the serial port")
    await expect(child, re.escape(texts.TAKEOVER))
    child.send("\r")  # as the text says: Enter reconnects, and takes the console back
    await expect(child, re.escape(texts.BANNER))
    code, _ = await client.closed()
    assert code == CloseCode.TAKEN_OVER
    url, token = await ssh_lab.lab.session_url("carol")
    again = await open_console(url, token)
    await again.expect(r"Connected to the serial port")
    await expect(child, re.escape(texts.TAKEOVER))
    child.send("q")  # leaves a console the lab closed: status 1
    assert await finished(child) == 1
    await again.ws.close()


async def test_an_ssh_writer_takes_over_from_the_websocket(ssh_lab: SshLab) -> None:
    url, token = await ssh_lab.lab.session_url("carol")
    client = await open_console(url, token)
    await client.expect(r"Connected to the serial port")
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    code, reason = await client.closed()
    assert code == CloseCode.TAKEN_OVER
    assert "alice" in reason
    await expect(child, re.escape(texts.BANNER))
    child.send("\r~.")
    await finished(child)


def test_the_host_key_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    first = load_host_key(tmp_path)
    path = tmp_path / HOST_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_host_key(tmp_path)
    assert again.get_fingerprint() == first.get_fingerprint()


async def test_the_lab_file_ssh_port_serves_the_door(tmp_path: Path) -> None:
    """``ssh_port`` in [gateway] starts the door beside the HTTP server, with the host
    key kept in the state folder."""
    port = free_port()  # for the lab file (the door binds it next)
    async with running_lab(tmp_path, gateway=f"ssh_port = {port}") as lab:
        door = lab.runtime.ssh
        assert door is not None
        assert door.port == port
        assert (lab.runtime.state_dir / HOST_KEY_FILE).exists()
        shown = banner(lab.runtime)
        assert f"SSH consoles on port {port}: ssh -p {port} USER+GROUP+VM@127.0.0.1" in shown
        assert f"host key fingerprint {door.fingerprint} (ED25519)" in shown
        assert f"ssh -p {port} alice+lab-rg+linux-1@127.0.0.1" in shown
        child = SshLab(lab, door).ssh("alice+lab-rg+linux-1")
        await sign_in(child, "alice")
        await expect(child, re.escape(texts.BANNER))
    # the lab stopped: the console said why, and the connection ended
    await expect(child, r"The gateway is shutting down\.")
    await expect(child, pexpect.EOF)
    child.close()


def test_ssh_port_is_off_unless_the_lab_file_or_the_command_line_sets_it(tmp_path: Path) -> None:
    assert parse_lab(lab_toml(tmp_path), source="lab.toml", base=tmp_path).gateway.ssh_port == 0
    shipped = load_default_lab()
    assert shipped.gateway.ssh_port == 2222
    assert shipped.with_overrides(ssh_port=0).gateway.ssh_port == 0
    with pytest.raises(LabConfigError, match=r"--ssh-port: expected 0\.\.65535 \(0: off\)"):
        shipped.with_overrides(ssh_port=70000)
    with pytest.raises(LabConfigError, match="ssh_port"):
        parse_lab(lab_toml(tmp_path, gateway="ssh_port = -1"), source="lab.toml", base=tmp_path)


def make_key(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair made by OpenSSH's ``ssh-keygen``: the private key's path
    and the public key's line."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path, path.with_suffix(".pub").read_text().strip()


def by_key(door: SshDoor, key: Path, login: str, *, banner: bool = False) -> pexpect.spawn:
    """OpenSSH's client to ``login`` offering only ``key``, with passwords turned off;
    ``banner``: its usual messages (the server's sign-in banner among them)."""
    args = [
        "-F", "/dev/null", "-tt", "-p", str(door.port), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", f"LogLevel={'INFO' if banner else 'ERROR'}", f"{login}@127.0.0.1",
    ]  # fmt: skip
    child = pexpect.spawn("ssh", args, timeout=scaled(15))
    child.setwinsize(40, 200)
    return child


@asynccontextmanager
async def lab_with_keys(
    tmp_path: Path, extra: str = ""
) -> AsyncIterator[tuple[SshLab, Path, Path]]:
    """A lab whose user ``dave`` has a public key and no password; yields the lab, dave's
    private key and another key that is nobody's."""
    keys = tmp_path / "keys"
    keys.mkdir()
    mine, public = make_key(keys, "dave")
    other, _ = make_key(keys, "stranger")
    dave = f"""
[[users]]
name = "dave"
ssh_keys = ["{public}"]
roles = [{{ role = "Virtual Machine Contributor", scope = "resourceGroups/lab-rg" }}]
"""
    async with running_lab(tmp_path / "lab", extra=extra + dave) as lab:
        assert lab.runtime.context is not None
        door = SshDoor(lab.runtime.context, load_host_key(lab.runtime.state_dir))
        await door.start("127.0.0.1", 0)
        try:
            yield SshLab(lab, door), mine, other
        finally:
            await door.close()


@pytest.fixture
async def key_lab(tmp_path: Path) -> AsyncIterator[tuple[SshLab, Path, Path]]:
    async with lab_with_keys(tmp_path) as handle:
        yield handle


async def test_a_user_with_a_key_and_no_password_signs_in_by_key(
    key_lab: tuple[SshLab, Path, Path],
) -> None:
    """The lab file's ``ssh_keys``: no password prompt, Azure's banner, the guest, and the
    console audited as dave's."""
    ssh_lab, mine, _ = key_lab
    child = by_key(ssh_lab.door, mine, "dave+lab-rg+linux-1")
    await expect(child, re.escape(texts.BANNER))
    await guest_login(child)
    child.send("hostname\r")
    await expect(child, r"\r\nlinux-1\r\n")
    child.send("\r~.")
    await finished(child)
    context = ssh_lab.lab.runtime.context
    assert context is not None
    rows = context.audit.query(action="console.connect")
    assert [(r.user, r.outcome) for r in rows] == [("dave", "allowed")]
    assert context.audit.query(action="token") == []


async def test_a_key_that_is_not_the_users_is_refused_and_audited(
    key_lab: tuple[SshLab, Path, Path],
) -> None:
    ssh_lab, _, other = key_lab
    child = by_key(ssh_lab.door, other, "dave+lab-rg+linux-1")
    await expect(child, r"Permission denied \(publickey")
    assert await finished(child) != 0
    context = ssh_lab.lab.runtime.context
    assert context is not None
    rows = context.audit.query(action="token")
    assert [(r.user, r.outcome) for r in rows] == [("dave", "denied")]
    assert "ssh: public key SHA256:" in rows[0].detail
    assert context.audit.query(action="console.connect") == []


async def test_a_password_cannot_sign_in_a_user_who_has_keys_only(
    key_lab: tuple[SshLab, Path, Path],
) -> None:
    """dave has no password: whatever is typed, the answer is the wrong password's."""
    ssh_lab, _, _ = key_lab
    child = ssh_lab.ssh("dave+lab-rg+linux-1")
    await sign_in(child, "dave")
    await expect(child, r"Permission denied")
    assert await finished(child) != 0


async def test_a_locked_user_is_refused_by_key_too(tmp_path: Path) -> None:
    """After a failed password past the lockout threshold, dave's own key is refused as
    well, and the sign-in banner says why."""
    access = "[access]\nlockout_threshold = 1\nlockout_duration = 600\n"
    async with lab_with_keys(tmp_path, extra=access) as (ssh_lab, mine, _):
        child = ssh_lab.ssh("dave+lab-rg+linux-1")
        await sign_in(child, "guess")
        assert await finished(child) != 0
        child = by_key(ssh_lab.door, mine, "dave+lab-rg+linux-1", banner=True)
        await expect(child, r"Your account is locked .* Try again in \d+ s\.")
        await expect(child, r"Permission denied \(publickey")
        assert await finished(child) != 0
        context = ssh_lab.lab.runtime.context
        assert context is not None
        details = [r.detail for r in context.audit.query(action="token")]
        assert any(d.startswith("ssh: locked for") for d in details), details
        assert context.audit.query(action="console.connect") == []


@pytest.mark.slow  # megabytes through a PTY, SSH and a websocket: make test, not the inner loop
async def test_a_client_that_never_reads_is_let_go_and_the_guest_goes_on(
    ssh_lab: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSH whose terminal is never read (its PTY fills, then its SSH window): the
    gateway lets it go after the stall bound (made short here) instead of holding what
    it cannot send, and the guest is not held either: a watcher sees its output to the
    end."""
    monkeypatch.setattr(ssh_server, "STALL_BOUND", 1.0)
    child = ssh_lab.ssh("alice+lab-rg+linux-1")
    await sign_in(child, "alice")
    await guest_login(child)
    url, token = await ssh_lab.lab.session_url("alice")
    watcher = await open_console(url, token, query="watch=1")
    child.send("seq 1 400000\r")  # 2.7 MB, past its SSH window; from now on nobody reads it
    await watcher.expect(r"\r\n400000\r\n", scaled(120))
    audit = ssh_lab.lab.runtime.context.audit  # type: ignore[union-attr]

    def let_go() -> list[str]:
        rows = audit.query(user="alice", action="console.disconnect", limit=1000)
        return [r.detail for r in rows if "fell behind" in r.detail or "stopped" in r.detail]

    await eventually(lambda: bool(let_go()), scaled(30), "the SSH console to be let go")
    child.close(force=True)
