"""The default lab's emulated Linux guests run the image's real userland, through the gateway.

On ``web-vmss`` instance 0 of the default lab file (its QEMU guests emulated too, as
``lab run --emulated`` does), over the websocket door as az's client uses it: a real
busybox shell (``ls /``, ``ps``, pipes, variables, arithmetic, ``ip addr``), files kept
between console sessions until the guest reboots, SysRq ``h``/``b``/``c`` handled by the
emulated kernel, and the guest's isolation from the host (files both ways, processes,
network).

Skipped, with the reason, where this machine cannot make the guest's namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulator.linux_texts import KERNEL_BUILD, KERNEL_RELEASE
from emulator.machine import EmulatedMachine
from emulator.sandbox import HOST_ID, KEEP_CAPS, LIMITS, userland_unavailable
from emulator.userland import userland_for_lab
from gateway.cli.lab import emulated_only
from gateway.lab.config import DEFAULT_SUBSCRIPTION, load_lab
from gateway.machines.base import EventKind, PowerState
from gateway.testing.patterns import without_kernel_lines
from gateway.testing.timeouts import scaled
from tests.support.console import PortConsole
from tests.support.lab import LabHandle, serve_lab
from tests.support.wsclient import Client, login, open_console

DEFAULT_LAB = Path(__file__).resolve().parents[2] / "gateway" / "lab" / "default.toml"
INSTANCE = (
    f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/lab-rg/providers/"
    "Microsoft.Compute/virtualMachineScaleSets/web-vmss/virtualMachines/0"
)
CONNECT = INSTANCE + "/providers/Microsoft.SerialConsole/serialPorts/0/connect"

pytestmark = pytest.mark.skipif(
    userland_unavailable() is not None,
    reason=f"emulated guests cannot run the image's userland here: {userland_unavailable()}",
)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    config = emulated_only(load_lab(DEFAULT_LAB)).with_overrides(
        port=0, ssh_port=0, state_dir=tmp_path / "state"
    )
    async with serve_lab(config) as handle:
        yield handle


async def instance_console(lab: LabHandle, *, framed: bool = False) -> Client:
    """A console session on web-vmss instance 0, as alice (az's connect, then the socket)."""
    token = await lab.token("alice")
    reply = await lab.http.post(
        CONNECT,
        params={"api-version": "2018-05-01"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200, reply.text
    return await open_console(reply.json()["connectionString"], token, framed=framed)


async def run(client: Client, command: str, timeout: float = 15) -> str:
    """``command``'s output at the guest's shell, once the next prompt is back."""
    token = secrets.token_hex(3)
    start = len(client.data)
    await client.type(f"{command}; printf '%s_%s\\n' __done {token}\r")
    await client.expect(f"__done_{token}\r*\n", timeout)
    await client.expect(r"# ", timeout)
    text = without_kernel_lines(bytes(client.data[start:]))
    text = text.replace("\r\r\n", "")  # where ash wraps a long line at 80 columns
    echo = text.index(f"__done {token}") + len(f"__done {token}")
    return text[echo:].lstrip("\r\n").split(f"__done_{token}")[0].replace("\r\n", "\n")


async def test_a_real_shell_answers_on_the_scale_set_instance(lab: LabHandle) -> None:
    """ls, ps, pipes, variables, arithmetic and ip addr are busybox's, as on the QEMU guest."""
    client = await instance_console(lab)
    await client.expect(r"Connected to the serial port of the VM")
    await login(client)
    assert (await run(client, "hostname")).strip() == "web-vmss000000"
    assert {"bin", "etc", "proc", "root", "sbin", "usr"} <= set((await run(client, "ls /")).split())
    ps = await run(client, "ps")
    assert re.search(r"^\s*1 root\s+init\s*$", ps, re.M), ps
    assert "-sh" in ps
    assert (await run(client, "echo serial lab | tr a-z A-Z | wc -w")).strip() == "2"
    assert (await run(client, "echo console | tr a-z A-Z")).strip() == "CONSOLE"
    assert (await run(client, "x=5; echo $x $HOME")).strip() == "5 /root"
    assert (await run(client, "echo $((6 * 7)) $(( 2 ** 10 ))")).strip() == "42 1024"
    addresses = await run(client, "ip addr")
    assert "inet 127.0.0.1/8 scope host lo" in addresses
    assert re.findall(r"^\d+: (\S+):", addresses, re.M) == ["lo"], addresses
    assert "BusyBox" in await run(client, "busybox | head -1")
    # dmesg reads the emulated kernel's log (the stamps cut: the console's own kernel
    # lines look the same)
    assert (await run(client, "dmesg | tail -2 | cut -c16-")).splitlines() == [
        "Write protecting the kernel read-only data: 26624k",
        "Run /init as init process",
    ]
    assert "PRETTY_NAME=" in await run(client, "cat /etc/os-release")
    # The kernel is the emulated one, here too: the release its boot banner printed.
    assert (await run(client, "uname -r")).strip() == KERNEL_RELEASE
    assert (await run(client, "uname -a")).strip() == (
        f"Linux web-vmss000000 {KERNEL_RELEASE} {KERNEL_BUILD} x86_64 GNU/Linux"
    )
    await client.ws.close()


async def test_files_stay_between_sessions_until_the_guest_reboots(lab: LabHandle) -> None:
    """A file written in one console session is there in the next; SysRq b (through the
    gateway) reboots the guest, whose root is fresh again."""
    client = await instance_console(lab)
    await login(client)
    await run(client, "echo kept > ~/note; mkdir -p /srv/app && echo v1 > /srv/app/conf")
    await client.ws.close()

    client = await instance_console(lab, framed=True)
    await client.event("connected")
    await client.type("\r")
    await client.expect(r"# ")
    assert (await run(client, "cat ~/note /srv/app/conf")).split() == ["kept", "v1"]

    await client.ws.send(json.dumps({"type": "sysrq", "keys": "h", "id": "h"}))
    assert (await client.event("result"))["ok"] is True
    await client.expect(r"sysrq: HELP : loglevel\(0-9\) reboot\(b\) crash\(c\)")
    await client.ws.send(json.dumps({"type": "sysrq", "keys": "b", "id": "b"}))
    assert (await client.event("result"))["ok"] is True
    await client.expect(r"sysrq: Resetting\r\n")
    await client.expect(r"Linux version 6\.1")
    # the userland starts anew in fresh namespaces: seconds, or a minute on a machine
    # busy with the suite's QEMU guests
    await client.expect(r"lab guest web-vmss000000 is up", 90)
    await client.expect(r"web-vmss000000 login: ", 90)
    await login(client)
    gone = await run(client, "cat ~/note")
    assert re.search(r"can't open '\S*/note': No such file or directory", gone)
    await client.ws.close()


async def test_sysrq_c_kills_the_userland_and_the_vm_reports_panicked(lab: LabHandle) -> None:
    """SysRq c through the gateway: the kernel's panic text, every guest process ends, and
    the VM reports panicked."""
    client = await instance_console(lab, framed=True)
    await client.event("connected")
    await login(client)
    machine = lab.runtime.machines["web-vmss_0"]
    init = machine.guest.sandbox.init_pid()  # type: ignore[attr-defined]
    assert init is not None
    ended = asyncio.Event()
    pidfd = os.pidfd_open(init)
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, ended.set)  # readable once the process has ended
    try:
        with machine.events() as events:
            await client.ws.send(json.dumps({"type": "sysrq", "keys": "c", "id": "c"}))
            await client.expect(r"sysrq: Trigger a crash\r\n")
            await client.expect(r"Kernel panic - not syncing: sysrq triggered crash")
            await events.wait_for(lambda e: e.kind is EventKind.PANICKED, scaled(10))
        async with asyncio.timeout(scaled(10)):
            await ended.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    assert machine.power_state is PowerState.PANICKED
    await client.ws.close()


async def test_the_guest_sees_nothing_of_the_host(lab: LabHandle, tmp_path: Path) -> None:
    """Host files are invisible inside, files written inside never reach the host, PID 1 is
    the guest's init, host processes are invisible, and nothing routes out."""
    marker = tmp_path / f"host-only-{secrets.token_hex(4)}"
    marker.write_text("host secret\n")
    client = await instance_console(lab)
    await login(client)

    assert "No such file or directory" in await run(client, f"cat {marker}")
    assert "No such file or directory" in await run(client, f"ls {Path.cwd()}")
    assert "host secret" not in await run(client, f"cat {marker}")

    inside = f"guest-only-{secrets.token_hex(4)}"
    await run(client, f"echo guest > /tmp/{inside}; echo guest > ~/{inside}; sync")
    state = lab.runtime.state_dir
    assert not Path("/tmp", inside).exists()
    assert list(state.rglob(inside)) == []

    assert (await run(client, "cat /proc/1/comm")).strip() == "init"
    cmdline = (await run(client, "cat /proc/cmdline")).strip()
    assert cmdline == "console=ttyS0,115200 panic=-1 lab.hostname=web-vmss000000"
    assert (await run(client, "cat /proc/version")).startswith("Linux version 6.1.0-56-cloud")
    commands = (await run(client, "ps -o comm")).split()[1:]
    assert set(commands) <= {"init", "login", "sh", "-sh", "getty", "ps"}, commands
    assert str(os.getpid()) not in (await run(client, "ls /proc")).split()

    assert (await run(client, "ip route")).strip() == ""
    port = lab.url.rsplit(":", 1)[1]
    refused = await run(client, f"nc -w 3 127.0.0.1 {port} </dev/null 2>&1; echo status=$?")
    assert "Connection refused" in refused, refused
    assert "status=1" in refused
    out = await run(client, "nc -w 3 10.0.2.2 80 </dev/null 2>&1; echo status=$?")
    assert "Network is unreachable" in out, out
    assert "status=1" in out

    ids = (await run(client, "id")).strip()
    assert ids.startswith("uid=0(root) gid=0(root)")
    assert "CapEff" in await run(client, "grep Cap /proc/self/status")
    init = lab.runtime.machines["web-vmss_0"].guest.sandbox.init_pid()  # type: ignore[attr-defined]
    status = Path(f"/proc/{init}/status").read_text()
    assert re.search(rf"^Uid:\s+{HOST_ID}\s", status, re.M), "root inside is root outside"
    await client.ws.close()


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[tuple[EmulatedMachine, PortConsole]]:
    """One emulated Linux guest with the image's userland, its port read as the gateway does."""
    image = userland_for_lab(tmp_path / "state")
    assert image is not None
    async with EmulatedMachine("vm-1", "linux", userland=image) as machine:
        await machine.start()
        assert machine.serial_port is not None
        console = await PortConsole.open(machine.serial_port)
        try:
            await console.expect(r"vm-1 login: ", 20)
            await console.login("serial-lab")
            yield machine, console
        finally:
            console.close_port()


def _ended(pid: int) -> asyncio.Event:
    """An event set once process ``pid`` has ended (its pidfd turns readable)."""
    ended = asyncio.Event()
    pidfd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        ended.set()

    loop.add_reader(pidfd, readable)
    return ended


async def test_the_guest_has_limits_and_few_capabilities(
    guest: tuple[EmulatedMachine, PortConsole],
) -> None:
    """Processes, open files and the writable layer are bounded; the capability bounding
    set is what init needs, no more (no module loading, no raw I/O, no network admin)."""
    _, console = guest
    assert (await console.run("ulimit -u")).strip() == str(LIMITS["nproc"])
    assert (await console.run("ulimit -n")).strip() == str(LIMITS["nofile"])
    full = await console.run("dd if=/dev/zero of=$HOME/big bs=1M count=64 2>&1; rm ~/big")
    assert "No space left on device" in full
    bounding = int((await console.run("grep CapBnd /proc/self/status")).split()[1], 16)
    kept = {name for name in KEEP_CAPS.split(",")}
    for bit, name in ((16, "sys_module"), (17, "sys_rawio"), (12, "net_admin"), (19, "sys_ptrace")):
        assert name not in kept
        assert not bounding & (1 << bit), f"cap_{name} is in the bounding set"
    assert bounding & (1 << 22)  # sys_boot: init's reboot(2)
    assert "Operation not permitted" in await console.run("ip link add dummy0 type dummy 2>&1")


async def test_deallocate_and_the_labs_death_end_every_guest_process(
    guest: tuple[EmulatedMachine, PortConsole], tmp_path: Path
) -> None:
    machine, _ = guest
    init = machine.guest.sandbox.init_pid()  # type: ignore[attr-defined]
    assert init is not None
    ended = _ended(init)
    await machine.deallocate()
    async with asyncio.timeout(scaled(10)):
        await ended.wait()

    # A lab killed outright (SIGKILL: no cleanup runs) takes its guests with it.
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from emulator.machine import EmulatedMachine\n"
        "from emulator.userland import userland_for_lab\n"
        "from tests.support.console import PortConsole\n"
        "async def main():\n"
        f"    image = userland_for_lab(Path({str(tmp_path / 'state')!r}))\n"
        "    vm = EmulatedMachine('vm-2', 'linux', userland=image)\n"
        "    await vm.start()\n"
        "    console = await PortConsole.open(vm.serial_port)\n"
        "    await console.expect('login: ')\n"
        "    print(vm.guest.sandbox.init_pid(), flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    lab = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert lab.stdout is not None
    async with asyncio.timeout(scaled(30)):
        line = await lab.stdout.readline()
    orphan = _ended(int(line))
    lab.kill()
    await lab.wait()
    async with asyncio.timeout(scaled(10)):
        await orphan.wait()
