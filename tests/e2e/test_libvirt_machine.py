"""Real guests on a real libvirtd: the QEMU backend's behaviour tests, run on the libvirt
backend, and what only libvirt has (domains a lab owns, a host reached over SSH).

The tests imported from ``test_qemu_machine`` run here with this module's ``guest`` and
``module_guest`` fixtures:
the same assertions on what a person at the console sees, through libvirt's console stream.
libvirtd is the one running, or started here (``tests.support.libvirtd``) and stopped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.machines import EventKind, MachineError, MachineLaunchError, PowerState
from gateway.machines.libvirt import OWNER_NS, LibvirtMachine, domain_prefix
from gateway.machines.process import wait_pid_exit
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, Guest, running
from tests.e2e.test_qemu_machine import *  # noqa: F403 - the machine contract, on libvirt
from tests.e2e.test_qemu_machine import (  # noqa: F401 - collected here too: QEMU under libvirt
    test_a_hung_qemu_fails_a_command_in_time,
    test_deallocate_then_start_gives_a_new_port,
    test_restart_falls_back_to_a_hard_reset_when_the_guest_ignores_acpi,
)
from tests.support.libvirtd import URI, Libvirtd

# Each test boots a guest of its own, on any worker: the workers share one libvirtd (see
# the libvirtd fixture), so these run side by side.
pytestmark = [pytest.mark.qemu]

BOOT = 60.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def guest(libvirtd: Libvirtd, tmp_path: Path) -> AsyncIterator[Guest]:
    """A booting guest on libvirt whose console is read from before its CPU runs."""
    vm = LibvirtMachine("guest-1", run_dir=tmp_path / "run", password=GUEST_PASSWORD)
    async for guest in running(vm):
        yield guest


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_guest(
    libvirtd: Libvirtd, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Guest]:
    """The libvirt guest the module's ``shared_guest`` tests share."""
    folder = tmp_path_factory.mktemp("shared-libvirt-guest")
    vm = LibvirtMachine("guest-1", run_dir=folder / "run", password=GUEST_PASSWORD)
    async for guest in running(vm):
        yield guest


def _virsh(*args: str, uri: str = URI) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _domains() -> set[str]:
    return set(_virsh("list", "--all", "--name").stdout.split())


async def test_boot_is_seen_from_the_first_byte_to_login(guest: Guest) -> None:
    """Through libvirt's console stream, the console shows the kernel's very first line,
    then the login prompt; the domain is libvirt's, named for this lab."""
    await guest.console.expect(r"guest-1 login: ", BOOT)
    assert guest.console.data.startswith(b"[    0.000000] Linux version ")
    assert b"Run /init as init process" in guest.console.data
    assert guest.vm.power_state is PowerState.RUNNING
    vm = guest.vm
    assert isinstance(vm, LibvirtMachine)
    assert vm.domain_name.startswith("scl-")
    assert vm.domain_name.endswith("-guest-1")
    assert vm.domain_name in _domains()
    assert _virsh("domstate", vm.domain_name).stdout.strip() == "running"


async def test_the_password_reaches_the_guest_but_not_argv_nor_the_boot_log(
    libvirtd: Libvirtd, tmp_path: Path
) -> None:
    """A password of the VM's own logs root in; it is not in QEMU's argv, nor in the
    domain's XML, nor in the boot log, and no copy is left on disk."""
    secret = "Fw-cfg-only 7x!"
    vm = LibvirtMachine("guest-1", run_dir=tmp_path / "run", password=secret)
    async for guest in running(vm):
        console = guest.console
        await console.expect(r"login: ", BOOT)
        assert vm.pid is not None
        argv = Path(f"/proc/{vm.pid}/cmdline").read_bytes()
        assert b"-fw_cfg" in argv
        assert secret.encode() not in argv
        # this VM's private folder for the password file (other workers make their own)
        found = re.search(rb"file=(/[^,\x00]*serial-console-lab-secret-[^/,\x00]+)/", argv)
        assert found, argv
        folder = Path(found.group(1).decode())
        assert secret not in _virsh("dumpxml", vm.domain_name).stdout
        await console.login(secret)
        await vm.reset()
        await console.expect(r"login: ", BOOT)
        await console.login(secret)
        assert secret.encode() not in console.data
    assert not folder.exists()  # the private folder with the password file is gone


async def test_power_state_follows_the_guest_powering_itself_off(guest: Guest) -> None:
    """`poweroff` typed in the guest: libvirt's lifecycle event makes the VM stopped (its
    console stays); start boots it again on the same console."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    with guest.vm.events() as events:
        await console.send("poweroff\r")
        await events.wait_for(lambda e: e.kind is EventKind.SHUTDOWN, scaled(30))
    assert guest.vm.power_state is PowerState.STOPPED
    assert guest.vm.serial_port is not None
    await console.expect(r"reboot: Power down", 5)
    await guest.vm.start()
    await console.expect(r"\[    0\.000000\] Linux version", BOOT)
    await console.expect(r"login: ", BOOT)
    assert len(guest.consoles) == 1


async def test_a_domain_killed_behind_the_labs_back_ends_the_machine(guest: Guest) -> None:
    """QEMU killed while a stop waits for the guest to power off: the stop fails at once
    with the reason, not after its timeout, and the machine is deallocated."""
    console = guest.console
    await console.expect(r"login: ", BOOT)
    await console.login(GUEST_PASSWORD)
    await console.run("killall acpid")  # the power button is now ignored
    with guest.vm.events() as events:
        stop = asyncio.create_task(guest.vm.stop(timeout=scaled(120)))
        await events.wait_for(lambda e: e.kind is EventKind.POWERDOWN, scaled(10))
        assert guest.vm.pid is not None
        os.kill(guest.vm.pid, signal.SIGKILL)
        with pytest.raises(MachineError, match=r"went away: its domain .* ended"):
            async with asyncio.timeout(scaled(10)):
                await stop
        await events.wait_for(lambda e: e.state is PowerState.DEALLOCATED, scaled(10))
    assert guest.vm.serial_port is None
    assert await console.wait_closed() == "the guest closed its serial port"


async def test_a_domain_the_lab_did_not_make_is_never_touched(
    libvirtd: Libvirtd, tmp_path: Path
) -> None:
    """A domain that happens to bear the VM's domain name, made by someone else, stops the
    start with what to do, and is left running; another lab's VM of the same name gets a
    name of its own."""
    vm = LibvirtMachine("guest-1", run_dir=tmp_path / "a" / "run" / "guest-1")
    other = LibvirtMachine("guest-1", run_dir=tmp_path / "b" / "run" / "guest-1")
    assert vm.domain_name != other.domain_name
    assert domain_prefix(tmp_path / "a") != domain_prefix(tmp_path / "b")
    xml = tmp_path / "foreign.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{vm.domain_name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    )
    made = _virsh("create", str(xml), "--paused")
    assert made.returncode == 0, made.stderr
    try:
        with pytest.raises(MachineLaunchError, match=r"that this lab did not make.*remove it"):
            await vm.start()
        assert vm.power_state is PowerState.DEALLOCATED
        assert _virsh("domstate", vm.domain_name).stdout.strip() == "paused"
    finally:
        _virsh("destroy", vm.domain_name)


async def test_a_domain_left_by_an_earlier_run_of_the_lab_is_replaced(
    libvirtd: Libvirtd, tmp_path: Path
) -> None:
    """A domain of this lab's (its name and owner) still there from an earlier run, as
    after a libvirtd that outlived a lost connection, is destroyed before the new one
    starts; the VM then boots from its first byte."""
    vm = LibvirtMachine("guest-1", run_dir=tmp_path / "run", password=GUEST_PASSWORD)
    owner = " ".join(f"{key}='{value}'" for key, value in vm._owner.items())
    xml = tmp_path / "left.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{vm.domain_name}</name><memory unit='MiB'>32</memory>"
        f"<metadata><lab:owner xmlns:lab='{OWNER_NS}' {owner}/></metadata>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    )
    made = _virsh("create", str(xml), "--paused")
    assert made.returncode == 0, made.stderr
    left = _virsh("domuuid", vm.domain_name).stdout.strip()
    async for guest in running(vm):
        await guest.console.expect(r"guest-1 login: ", BOOT)
        assert guest.console.data.startswith(b"[    0.000000] Linux version ")
        assert _virsh("domuuid", vm.domain_name).stdout.strip() != left
    assert vm.domain_name not in _domains()


async def test_a_guest_that_cannot_start_says_why_and_leaves_nothing(
    libvirtd: Libvirtd, tmp_path: Path
) -> None:
    """A kernel file QEMU cannot boot: the start fails with QEMU's reason through libvirt,
    the machine is deallocated with no port, and no domain is left on the host."""
    images = Path(tempfile.mkdtemp(prefix="lab-image-"))  # a folder QEMU's user can reach
    images.chmod(0o755)
    kernel, initrd = images / "vmlinux", images / "initramfs.cpio"
    kernel.write_bytes(b"not a kernel\n" * 10)
    initrd.write_bytes(b"")
    kernel.chmod(0o644)
    initrd.chmod(0o644)
    vm = LibvirtMachine("guest-1", run_dir=tmp_path / "run", kernel=kernel, initrd=initrd)
    try:
        with pytest.raises(MachineLaunchError, match=r"did not start on qemu:///system: .*kernel"):
            await vm.start()
    finally:
        shutil.rmtree(images)
    assert vm.power_state is PowerState.DEALLOCATED
    assert vm.serial_port is None
    assert vm.domain_name not in _domains()


async def test_kill_9_of_the_lab_takes_its_domain_along(libvirtd: Libvirtd, tmp_path: Path) -> None:
    """The lab's connection closes when its process dies, even by SIGKILL: libvirtd destroys
    the domain it started (AUTODESTROY), so no guest outlives a crashed lab."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.libvirt_owner", str(tmp_path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert owner.stdout is not None
    async with asyncio.timeout(scaled(60)):
        line = await owner.stdout.readline()
    assert line.startswith(b"domain "), line
    name, pid = line.split()[1].decode(), int(line.split()[2])
    assert name in _domains()
    owner.kill()
    await owner.wait()
    await wait_pid_exit(pid, scaled(30))
    assert name not in _domains()


def _sshd_or_skip(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """An sshd of this test's own on 127.0.0.1, with a host key and a client key made for
    it; skipped (with why) where sshd cannot run."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else "")
    if not sshd or shutil.which("ssh-keygen") is None:
        pytest.skip("sshd is not installed here (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("qemu+ssh://127.0.0.1/system needs root's libvirt: run as root")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    (keys / "authorized_keys").chmod(0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
         "-h", str(keys / "host"), "-o", f"AuthorizedKeysFile={keys / 'authorized_keys'}",
         "-o", "PasswordAuthentication=no", "-o", "PermitRootLogin=prohibit-password",
         "-o", "StrictModes=no", "-o", f"PidFile={keys / 'sshd.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    check = subprocess.run(
        ["ssh", "-p", str(port), "-i", str(keys / "client"), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={keys / 'known'}",
         "-o", "ConnectTimeout=10", "-o", "ConnectionAttempts=5", "root@127.0.0.1", "true"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        pytest.skip(f"sshd cannot run here: {(check.stderr or err).decode(errors='replace')}")
    return proc, port, keys


async def test_a_host_reached_over_ssh(libvirtd: Libvirtd, tmp_path: Path) -> None:
    """qemu+ssh://root@127.0.0.1/system with a key made for the test: the guest boots from
    its first byte through the remote console stream, logs in, takes SysRq after 2,000
    typed bytes (its own key, not a typed 5) and a reset."""
    proc, port, keys = _sshd_or_skip(tmp_path)
    # libvirt runs ``ssh``; the wrapper keeps its host key out of root's known_hosts.
    wrapper = keys / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec ssh -o UserKnownHostsFile={keys / 'known'} -o StrictHostKeyChecking=no "
        '-o BatchMode=yes "$@"\n'
    )
    wrapper.chmod(0o700)
    uri = f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={keys / 'client'}&command={wrapper}"
    vm = LibvirtMachine(
        "guest-1", run_dir=tmp_path / "run", uri=uri, password=GUEST_PASSWORD, accel="tcg"
    )
    try:
        async for guest in running(vm):
            console = guest.console
            await console.expect(r"guest-1 login: ", BOOT)
            assert console.data.startswith(b"[    0.000000] Linux version ")
            await console.login(GUEST_PASSWORD)
            assert (await console.run("hostname")).strip() == "guest-1"
            # 2,000 typed 5s, then SysRq h: the BREAK still comes after the last 5.
            await console.send("5" * 2000)
            await vm.wait_input_taken(scaled(30))
            await vm.send_break()
            await console.send("h")
            match = await console.expect(r"sysrq: (HELP|Loglevel set to \d)", 15)
            assert match.group(1) == b"HELP", console.since(match.start())
            await vm.reset()
            await console.expect(r"\[    0\.000000\] Linux version", BOOT)
            await console.expect(r"login: ", BOOT)
            assert vm.domain_name in _domains()
        assert vm.domain_name not in _domains()
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
