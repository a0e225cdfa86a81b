"""The userland personality alone: the emulated kernel in front of a stand-in process tree.

``UserlandLinuxGuest`` with its ``Sandbox`` replaced by a recording stand-in: what the
kernel forwards to the userland, what it keeps (SysRq keys), what it does to the tree
(kill, signals) and how the tree's end becomes a reboot, a power-off or a panic. The real
tree is tested in tests/integration/test_emulated_userland.py. Also: the initramfs unpacker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from emulator import userland
from emulator.guest import GuestEvent
from emulator.linux import LinuxState
from emulator.sandbox import SandboxError, UserlandImage, _unpack_cpio
from emulator.userland import HIGH_WATER, UserlandLinuxGuest

T0 = 1000.0


class FakeSandbox:
    """Records what the personality does to its userland; calling ``on_output`` and
    ``on_exit`` plays the tree."""

    made: ClassVar[list[FakeSandbox]] = []
    fail = False

    def __init__(
        self,
        image: object,
        hostname: str,
        password: str,
        *,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[str, int], None],
        on_input_taken: Callable[[], None],
        kmsg: Path,
    ) -> None:
        self.hostname, self.password = hostname, password
        self.kmsg = kmsg
        self.on_output, self.on_exit = on_output, on_exit
        self.typed = bytearray()
        self.signals: list[tuple[str, int]] = []
        self.killed = False
        self.paused = False
        self.init_up = True
        FakeSandbox.made.append(self)

    async def start(self) -> None:
        if FakeSandbox.fail:
            raise SandboxError("cannot start the guest's userland: no")

    def write(self, data: bytes) -> None:
        self.typed += data

    def input_room(self) -> bool:
        return len(self.typed) < 100

    def pause_output(self) -> None:
        self.paused = True

    def resume_output(self) -> None:
        self.paused = False

    def signal_init(self, sig: int) -> bool:
        if not self.init_up:
            return False
        self.signals.append(("init", sig))
        return True

    def signal_tasks(self, sig: int) -> None:
        self.signals.append(("tasks", sig))

    def kill(self) -> None:
        self.killed = True


@pytest.fixture(autouse=True)
def fake_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    FakeSandbox.made = []
    FakeSandbox.fail = False
    monkeypatch.setattr(userland, "Sandbox", FakeSandbox)
    monkeypatch.chdir(tmp_path)  # the guests' relative "cache" folder (their kernel log)


def drain(guest: UserlandLinuxGuest) -> tuple[str, list[GuestEvent]]:
    text, events = bytearray(), []
    while (item := guest.pop_output(4096)) is not None:
        if isinstance(item, GuestEvent):
            events.append(item)
        else:
            text += item
    return text.decode(errors="replace"), events


async def booted() -> tuple[UserlandLinuxGuest, FakeSandbox]:
    guest = UserlandLinuxGuest("vm1", "pw", UserlandImage(Path("x.cpio"), Path("cache")))
    guest.boot(T0)
    guest.handle_timer(T0)
    await asyncio.sleep(0)  # the tree starts in a task
    drain(guest)
    return guest, FakeSandbox.made[-1]


async def test_after_the_kernels_boot_lines_the_images_init_runs_with_the_vms_password() -> None:
    guest = UserlandLinuxGuest("vm1", "pw", UserlandImage(Path("x.cpio"), Path("cache")))
    guest.boot(T0)
    assert FakeSandbox.made == []  # the kernel boots first
    text, _ = drain(guest)
    assert text.rstrip().endswith("Run /init as init process")
    guest.handle_timer(T0)
    await asyncio.sleep(0)
    (tree,) = FakeSandbox.made
    assert (tree.hostname, tree.password) == ("vm1", "pw")
    assert guest.state is LinuxState.USERLAND
    tree.on_output(b"\r\nvm1 login: ")
    assert drain(guest)[0] == "\r\nvm1 login: "


async def test_typed_bytes_reach_the_userland_but_a_sysrq_key_stays_with_the_kernel() -> None:
    guest, tree = await booted()
    assert guest.input_room()
    guest.receive_data(b"ls /\r", T0 + 1)
    guest.receive_break(T0 + 2)
    guest.receive_data(b"hecho after\r", T0 + 2.1)
    assert bytes(tree.typed) == b"ls /\recho after\r"
    text, _ = drain(guest)
    assert "sysrq: HELP : loglevel(0-9) reboot(b) crash(c)" in text
    guest.receive_break(T0 + 3)
    guest.receive_data(b"x", T0 + 9)  # the 5 s window has passed: an ordinary byte
    assert bytes(tree.typed).endswith(b"x")


async def test_output_keeps_its_order_with_the_kernels_lines() -> None:
    guest, tree = await booted()
    tree.on_output(b"before ")
    guest.receive_nmi(T0 + 1)
    tree.on_output(b"after")
    text, _ = drain(guest)
    assert text.startswith("before [")
    assert "NMI received for unknown reason" in text
    assert text.endswith("after")


async def test_sysrq_b_kills_the_tree_and_boots_a_new_one() -> None:
    guest, tree = await booted()
    guest.receive_break(T0 + 1)
    guest.receive_data(b"bignored", T0 + 1.1)
    assert tree.killed
    assert bytes(tree.typed) == b""  # what followed the key went to the rebooting machine
    text, events = drain(guest)
    assert "sysrq: Resetting" in text
    assert "Linux version" in text.split("sysrq: Resetting", 1)[1]
    assert events == [GuestEvent.REBOOTED]
    guest.handle_timer(T0 + 2)
    await asyncio.sleep(0)
    assert len(FakeSandbox.made) == 2
    assert not FakeSandbox.made[1].killed


async def test_sysrq_c_and_o_kill_the_tree() -> None:
    guest, tree = await booted()
    guest.receive_break(T0 + 1)
    guest.receive_data(b"c", T0 + 1.1)
    assert tree.killed
    text, events = drain(guest)
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    assert events == [GuestEvent.PANICKED]

    guest, tree = await booted()
    guest.receive_break(T0 + 1)
    guest.receive_data(b"o", T0 + 1.1)
    assert tree.killed
    text, events = drain(guest)
    assert text.rstrip().endswith("reboot: Power down")
    assert events == [GuestEvent.POWERED_OFF]


async def test_sysrq_e_and_i_signal_every_task_but_init() -> None:
    guest, tree = await booted()
    for key in (b"e", b"i"):
        guest.receive_break(T0 + 1)
        guest.receive_data(key, T0 + 1.1)
    assert tree.signals == [("tasks", signal.SIGTERM), ("tasks", signal.SIGKILL)]
    assert not tree.killed


async def test_the_power_button_asks_init_to_power_off() -> None:
    guest, tree = await booted()
    guest.power_button(T0 + 1)
    assert tree.signals == [("init", signal.SIGUSR2)]
    assert "ACPI: button: Power Button [PWRF]" in drain(guest)[0]

    guest, tree = await booted()
    tree.init_up = False  # init has not set its handlers yet: nothing to shut down
    guest.power_button(T0 + 1)
    assert tree.killed
    text, events = drain(guest)
    assert text.rstrip().endswith("reboot: Power down")
    assert events == [GuestEvent.POWERED_OFF]


async def test_inits_end_is_a_reboot_a_power_off_or_a_panic() -> None:
    guest, tree = await booted()
    tree.on_exit("reboot", -1)
    text, events = drain(guest)
    assert "reboot: Restarting system" in text
    assert events == [GuestEvent.REBOOTED]

    guest, tree = await booted()
    tree.on_exit("poweroff", -2)
    text, events = drain(guest)
    assert text.rstrip().endswith("reboot: Power down")
    assert events == [GuestEvent.POWERED_OFF]

    guest, tree = await booted()
    tree.on_exit("died", 1)
    text, events = drain(guest)
    assert "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100" in text
    assert events == [GuestEvent.PANICKED]


async def test_the_kernels_log_is_kept_for_the_userlands_dmesg(tmp_path: Path) -> None:
    guest = UserlandLinuxGuest("vm1", "pw", UserlandImage(Path("x.cpio"), tmp_path))
    guest.boot(T0)
    guest.handle_timer(T0)
    await asyncio.sleep(0)
    (tree,) = FakeSandbox.made
    assert tree.kmsg == guest.kmsg
    boot = guest.kmsg.read_text().splitlines()
    assert boot[0].startswith("[    0.000000] Linux version 6.1.0-56-cloud-amd64")
    assert boot[-1].endswith("] Run /init as init process")
    guest.receive_nmi(T0 + 5)
    assert "NMI received for unknown reason" in guest.kmsg.read_text().splitlines()[-2]
    guest.halt()
    assert not guest.kmsg.exists()


async def test_a_tree_that_cannot_start_is_a_panic() -> None:
    FakeSandbox.fail = True
    guest = UserlandLinuxGuest("vm1", "pw", UserlandImage(Path("x.cpio"), Path("cache")))
    guest.boot(T0)
    guest.handle_timer(T0)
    await asyncio.sleep(0)
    text, events = drain(guest)
    assert "Kernel panic - not syncing: Requested init /init failed (error -2)." in text
    assert events == [GuestEvent.PANICKED]


async def test_a_full_output_queue_stops_reading_the_userland_until_drained() -> None:
    guest, tree = await booted()
    tree.on_output(b"x" * HIGH_WATER)
    assert tree.paused
    while guest.pop_output(4096) is not None:
        pass
    assert not tree.paused


async def test_halt_and_reset_kill_the_tree() -> None:
    guest, tree = await booted()
    guest.halt()
    assert tree.killed
    guest, tree = await booted()
    guest.boot(T0 + 5)
    assert tree.killed


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray()
    for name, mode, body in [*entries, ("TRAILER!!!", 0, b"")]:
        raw = name.encode() + b"\0"
        fields = [0, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + body
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def test_the_initramfs_unpacks_to_files_links_and_modes(tmp_path: Path) -> None:
    archive = _newc(
        [
            ("bin", 0o040755, b""),
            ("bin/busybox", 0o100755, b"\x7fELF"),
            ("bin/sh", 0o120777, b"/bin/busybox"),
            ("etc", 0o040755, b""),
            ("etc/lab-password", 0o100600, b"pw\n"),
            ("dev/console", 0o020600, b""),
        ]
    )
    _unpack_cpio(archive, tmp_path / "root")
    root = tmp_path / "root"
    assert (root / "bin/busybox").read_bytes() == b"\x7fELF"
    assert (root / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert str((root / "bin/sh").readlink()) == "/bin/busybox"
    assert (root / "etc/lab-password").stat().st_mode & 0o777 == 0o600
    assert not (root / "dev/console").exists()  # device nodes are the sandbox's to bind


def test_an_initramfs_path_leaving_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"unsafe path '\.\./evil'"):
        _unpack_cpio(_newc([("../evil", 0o100644, b"x")]), tmp_path / "root")
    with pytest.raises(SandboxError, match="not a newc cpio archive"):
        _unpack_cpio(b"x" * 200, tmp_path / "other")


def test_where_namespaces_are_refused_the_lab_says_so_once_and_keeps_the_emulated_shell(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(userland, "userland_unavailable", lambda image_dir: "no user namespaces")
    monkeypatch.setattr(userland, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="serial_console_lab.emulator"):
        assert userland.userland_for_lab(tmp_path) is None
        assert userland.userland_for_lab(tmp_path) is None
    assert [r.getMessage() for r in caplog.records] == [
        "emulated Linux guests keep the emulated shell, not the image's userland: "
        "no user namespaces"
    ]
