"""The SSH door on a real QEMU guest: OpenSSH's ``ssh`` as the terminal, one boot.

The guest's login, a command, the ``stty`` line offered on a resize (which the guest's
tty takes), ``~B`` then ``h`` (the kernel's SysRq help) and the Ctrl+] menu's NMI, as a
user sees them through ``ssh -p PORT alice+lab-rg+linux-1@127.0.0.1``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pexpect
import pytest

from gateway.console import texts
from gateway.ssh.server import SshDoor, load_host_key
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, require_qemu
from tests.support.cli import expect, finished
from tests.support.lab import QEMU_VM, running_lab

pytestmark = pytest.mark.qemu

BOOT = 90
MENU = re.escape("| q to quit Console | CTRL + ] to forward input |")


def ssh(port: int, login: str) -> pexpect.spawn:
    """OpenSSH's client on a PTY, signing in by password (answered by the test)."""
    args = [
        "-F", "/dev/null", "-tt", "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
        "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
        f"{login}@127.0.0.1",
    ]  # fmt: skip
    child = pexpect.spawn("ssh", args, timeout=scaled(30))
    child.setwinsize(40, 200)
    return child


async def test_login_command_tilde_b_sysrq_and_menu_nmi_over_openssh(tmp_path: Path) -> None:
    """The user logs in to the booted guest through ``ssh``, runs ``uname -n`` and the
    ``stty`` line offered on a resize; ``~B`` then ``h`` makes the kernel print its SysRq
    help, and the menu's NMI (confirmed with a capital Y) makes it report the NMI."""
    require_qemu()
    if shutil.which("ssh") is None:
        pytest.fail("OpenSSH's ssh is missing: sudo apt-get install openssh-client")
    async with running_lab(tmp_path, vms=QEMU_VM) as lab:
        assert lab.runtime.context is not None
        door = SshDoor(lab.runtime.context, load_host_key(lab.runtime.state_dir))
        await door.start("127.0.0.1", 0)
        child = ssh(door.port, "alice+lab-rg+linux-1")
        try:
            await expect(child, r"(?i)password: ?")
            child.sendline("alice")
            await expect(child, re.escape(texts.BANNER))
            await expect(child, r"login: ", BOOT)
            child.send("root\r")
            await expect(child, r"Password: ")
            child.send(GUEST_PASSWORD + "\r")
            await expect(child, r"# ")
            child.send("uname -n\r")
            await expect(child, r"\r\nlinux-1\r\n")
            child.setwinsize(30, 120)  # a resize: the door offers the new stty line
            await expect(child, r"run '(stty rows 30 cols 120)' in the guest")
            child.send(child.match.group(1).decode() + "; stty size\r")
            await expect(child, r"\r\n30 120\r\n")
            child.send("\r~B")
            child.send("h")
            await expect(child, r"sysrq: HELP : loglevel\(0-9\) reboot\(b\)")
            child.send("\x1d")
            await expect(child, MENU)
            child.send("n")
            await expect(child, re.escape("Are you sure you want to send an NMI? (Y/n): "))
            child.send("Y")
            answers = [r"NMI received", re.escape(texts.SUCCESS["nmi"])]
            assert {await expect(child, answers), await expect(child, answers)} == {0, 1}
            child.send("\x1d")
            await expect(child, MENU)
            child.send("q")
            assert await finished(child) == 0
        finally:
            child.close(force=True)
            await door.close()
