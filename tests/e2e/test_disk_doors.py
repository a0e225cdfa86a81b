"""Reset VM and GRUB's menu through each door of a Gen1 disk VM, with no reconnect.

Debian's BIOS image (SeaBIOS, GRUB on its serial terminal, ``GRUB_TIMEOUT=5``) booted by
a lab with an SSH door and an RFC 2217 door. For each door a real client opens the
console, a hard reset is sent, and on that client's own stream: SeaBIOS, GRUB's menu with
both entries and its countdown; Esc typed on the same client within the 5 s stops the
countdown (GRUB wipes the countdown line, and neither a countdown nor a boot follows for
longer than GRUB would have waited); Enter then boots the highlighted entry, whose kernel
starts, still on the first connection.

- SSH: OpenSSH's ``ssh`` under pexpect; the reset is the door's own Ctrl+] menu (``r``,
  then a capital ``Y``), and the door's ``[VM reset: ...]`` line marks where the new
  boot starts in its stream.
- RFC 2217: pyserial's ``rfc2217://`` client. RFC 2217 has no reset (only the line's
  settings and BREAK), so the reset goes through Azure's REST route, as ``az
  serial-console send reset`` sends it (``connect``, then ``adminCommand/reset``), while
  the port stays open.
- The ``serial-console connect`` CLI on a pseudo-terminal; the reset is its Ctrl+] menu,
  and its ``[VM power state: running]`` note marks the new boot.

One VM for the module, on the worker of the other Gen1 tests (never two Gen1 boots at
once); each test starts with its own reset, so they may run in any order.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import serial
from pexpect.spawnbase import SpawnBase

from gateway.console import texts
from gateway.testing.client import LabClient
from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.e2e.disklab import (
    BOOT,
    COUNTDOWN,
    GRUB_MENU,
    PASSWORD,
    RG,
    USER,
    client,
    kernels,
    open_console,
    start_lab,
    vm_table,
)
from tests.support.cli import CLI, Cli
from tests.support.ports import free_port

__all__ = ["client"]  # module fixture, shared by import

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a systemd boot under TCG, with the lab's start, on a busy machine
    pytest.mark.xdist_group("disk-doors"),
    # pyserial's client thread calls setDaemon()/setName(): its own business, not this lab's.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217"),
]

VM = "gen1"
GRUB_TIMEOUT = 5  # the built image's GRUB_TIMEOUT: the menu's countdown, in seconds
FIRMWARE = "SeaBIOS (version"  # the first line of every boot from the firmware
# GRUB's countdown line, with the row it is drawn on (a cursor move to column 1)
COUNTDOWN_AT = r"\x1b\[(\d+);1H[^\x1b]*" + COUNTDOWN
MENU = re.escape(
    "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
    "| q to quit Console | CTRL + ] to forward input |"
)
RESET_PROMPT = re.escape("Are you sure you want to Hard Reset the VM? (Y/n): ")
READ_POLL = 0.1  # pyserial's read timeout: how often a waiting read looks at its deadline


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    """The SSH door's port and the VM's RFC 2217 door's port."""
    return free_port(), free_port()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, ports: tuple[int, int]) -> Iterator[LabProcess]:
    ssh_door, rfc2217_door = ports
    vms = vm_table(VM, "debian-12-gen1", rfc2217_port=rfc2217_door)
    running = start_lab(tmp_path_factory.mktemp("doors-lab"), vms, ssh_door=ssh_door)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def booted(client: LabClient) -> Iterator[None]:
    """The VM's first boot at its login prompt: every boot in a test's stream is then one
    its reset began (a door opened early could see the first boot's own GRUB). Deallocated
    at the end: a guest left in its early boot ignores the power button, and the lab's
    stop would wait its 30 s for it."""
    console = open_console(client, VM)
    try:
        console.wait_for_boot(BOOT)
    finally:
        console.close()
    yield
    client.call("power", "deallocate", RG, VM, timeout=scaled(60))


def stop_grub_and_boot(door: SpawnBase, newest: str, older: str) -> None:
    """On ``door``'s stream, from a reset on: SeaBIOS, GRUB's menu with both entries and
    its countdown; Esc stops the countdown (GRUB wipes its line, and no countdown and no
    boot follow for longer than GRUB would wait); Enter boots the first entry, the newest
    kernel."""
    door.expect_exact(FIRMWARE, scaled(120))
    door.expect_exact(GRUB_MENU, scaled(120))
    door.expect_exact("*Debian GNU/Linux ", scaled(30))  # the first entry, highlighted
    door.expect_exact(f"Debian GNU/Linux, with Linux {older}", scaled(30))
    door.expect(COUNTDOWN_AT, scaled(30))
    row = door.match.group(1)
    door.send("\x1b")
    door.expect(rf"\x1b\[{row};1H {{70,}}", scaled(GRUB_TIMEOUT))  # the countdown wiped
    after = [COUNTDOWN, "Loading Linux", "Linux version", pexpect.TIMEOUT]
    seen = door.expect(after, scaled(GRUB_TIMEOUT + 2))
    assert seen == 3, f"GRUB went on after Esc: {door.after!r} after {door.before[-300:]!r}"
    door.send("\r")
    door.expect_exact(f"Loading Linux {newest} ...", scaled(30))
    door.expect_exact(f"Linux version {newest} ", scaled(120))


# -- SSH: OpenSSH's client ------------------------------------------------------------------


def ssh(port: int, login: str) -> pexpect.spawn:
    """OpenSSH's client on a PTY, signing in by password (answered by the test)."""
    args = [
        "-F", "/dev/null", "-tt", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
        "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
        f"{login}@127.0.0.1",
    ]  # fmt: skip
    child = pexpect.spawn("ssh", args, timeout=scaled(30), encoding="utf-8", codec_errors="replace")
    child.setwinsize(40, 200)
    return child


def test_ssh_door_resets_and_esc_stops_grub(
    ports: tuple[int, int], lab: LabProcess, booted: None
) -> None:
    """``ssh -p PORT carol+disk-rg+gen1@127.0.0.1``: Ctrl+] ``r`` ``Y`` resets the VM and
    the door says so; GRUB is caught with Esc, Enter boots the newest kernel, and Ctrl+]
    ``q`` leaves with status 0 (the user left a console that was still open)."""
    if shutil.which("ssh") is None:
        pytest.fail("OpenSSH's ssh is missing: sudo apt-get install openssh-client")
    newest, older = kernels()
    child = ssh(ports[0], f"{USER}+{RG}+{VM}")
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect(r"(?i)password: ?")
        child.sendline(PASSWORD)
        child.expect_exact(texts.BANNER)
        child.send("\x1d")
        child.expect(MENU)
        child.send("r")
        child.expect(RESET_PROMPT)
        child.send("Y")
        child.expect(r"\[VM reset: [^\]]+\]")  # in the stream: the new boot comes after it
        stop_grub_and_boot(child, newest, older)
        child.send("\x1d")
        child.expect(MENU)
        child.send("q")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, seen.getvalue()[-2000:]
    finally:
        child.close(force=True)
    shown = seen.getvalue()
    assert f"[{texts.SUCCESS['reset']}]" in shown
    assert shown.count(texts.BANNER) == 1, "the console was opened again"


# -- RFC 2217: pyserial's client ------------------------------------------------------------


class SerialDoor(SpawnBase):  # type: ignore[misc]  # pexpect has no type hints
    """pyserial's ``rfc2217://`` port under pexpect's ``expect``: reads wait on the port
    with a deadline; ``send`` writes to it."""

    def __init__(self, port: int, timeout: float) -> None:
        super().__init__(timeout=timeout, encoding="utf-8", codec_errors="replace")
        self.port = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", timeout=READ_POLL)
        self.delayafterread = None

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        """What came, up to ``size`` bytes, decoded; pexpect.TIMEOUT when nothing came in
        ``timeout`` seconds, pexpect.EOF once the port closed."""
        wait = self.timeout if timeout == -1 else timeout
        deadline = time.monotonic() + (wait or 0)
        while True:
            try:
                data = self.port.read(max(1, min(size, self.port.in_waiting)))
            except serial.SerialException as err:
                self.flag_eof = True
                raise pexpect.EOF(f"the RFC 2217 port closed: {err}") from None
            if data:
                text: str = self._decoder.decode(data, final=False)
                self._log(text, "read")
                return text
            if time.monotonic() >= deadline:
                raise pexpect.TIMEOUT(f"nothing from the RFC 2217 port in {wait} s")

    def send(self, s: str | bytes) -> int:
        data = s.encode() if isinstance(s, str) else s
        self._log(data.decode(errors="replace"), "send")
        written: int = self.port.write(data)
        return written

    def close(self) -> None:
        self.port.close()


def test_rfc2217_door_stays_open_through_a_reset_and_esc_stops_grub(
    ports: tuple[int, int], client: LabClient, booted: None
) -> None:
    """pyserial's ``rfc2217://`` port stays open while Azure's REST route resets the VM
    (the door has no reset of its own); its stream shows the new boot from SeaBIOS on, Esc
    typed on it stops GRUB's countdown, Enter boots the newest kernel."""
    newest, older = kernels()
    door = SerialDoor(ports[1], scaled(30))
    door.logfile_read = seen = io.StringIO()
    try:  # pyserial empties its input at open: the port reads what came after
        url = client.call("connect", RG, VM)
        answer = client.call("admin_command", url, "reset")
        assert answer["message"] == texts.SUCCESS["reset"], answer
        stop_grub_and_boot(door, newest, older)
        assert door.port.is_open
    finally:
        door.close()
    assert texts.TAKEOVER not in seen.getvalue()


# -- the serial-console CLI -----------------------------------------------------------------


def test_cli_connect_resets_and_esc_stops_grub(
    lab: LabProcess, booted: None, tmp_path: Path
) -> None:
    """``serial-console connect -g disk-rg -n gen1``: Ctrl+] ``r`` ``Y`` resets the VM
    (az's success text, and a power note in the stream before the new boot); GRUB is caught
    with Esc, Enter boots the newest kernel, and Ctrl+] ``q`` quits with status 0, never
    having reconnected."""
    newest, older = kernels()
    cli = Cli.at(lab.url, tmp_path / "config", ca_file=lab.ca_path)
    login = subprocess.run(
        [*CLI, "login", "--username", USER, "--password", PASSWORD,
         "--ca-file", str(lab.ca_path)],
        env=cli.env, capture_output=True, text=True, timeout=scaled(60),
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    child = pexpect.spawn(
        CLI[0], [*CLI[1:], "connect", "-g", RG, "-n", VM], env=cli.env,
        timeout=scaled(30), encoding="utf-8", codec_errors="replace",
    )  # fmt: skip
    child.setwinsize(40, 200)  # wide: the menu line stays on one line
    child.logfile_read = seen = io.StringIO()
    try:
        child.expect_exact(texts.BANNER)
        child.send("\x1d")
        child.expect(MENU)
        child.send("r")
        child.expect(RESET_PROMPT)
        child.send("Y")
        child.expect_exact("[VM power state: running]")  # the reset, before the new boot
        stop_grub_and_boot(child, newest, older)
        child.send("\x1d")
        child.expect(MENU)
        child.send("q")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, seen.getvalue()[-2000:]
    finally:
        child.close(force=True)
    shown = seen.getvalue()
    assert texts.SUCCESS["reset"] in shown
    assert shown.count(texts.BANNER) == 1, "the console was opened again"
    assert "Connection Closed" not in shown
