"""The Linux personality with a real userland: the emulated kernel, the image's init under it.

``UserlandLinuxGuest`` is ``LinuxGuest`` (boot lines, SysRq, NMI, panic, power) whose shell
is not imitated: once the kernel's boot lines are out, the guest image's busybox init runs
in namespaces (``emulator.sandbox``) on a PTY of its own, and this personality bridges
that PTY and the serial port. The emulated kernel keeps the port: what the userland writes
and what the kernel prints go out in the order they happen, and every byte typed reaches
the kernel first (a BREAK arms SysRq, the next byte is the key and never reaches the
userland).

What the kernel does to the userland::

    boot / hard reset     the old tree is killed, the boot lines, then a new init
    SysRq b               "sysrq: Resetting", the tree is killed, the guest boots again
    SysRq c, NMI panic    the tree is killed, the panic text, the VM reports panicked
    SysRq o               the tree is killed, "reboot: Power down", the VM is stopped
    SysRq e / i           SIGTERM / SIGKILL to every task but init (init respawns getty)
    ACPI power button     SIGUSR2 to init (busybox: power off), as the image's acpid does;
                          before init catches it (its first moments), the power goes at once
    init calls reboot(2)  "reboot: Restarting system" and a new boot; power off: stopped
    init dies             "Kernel panic - not syncing: Attempted to kill init!"

The kernel's log (what ``dmesg`` shows on a real guest) is kept in a file the userland
reads at ``/dev/kmsg``; the lab's layer of the image makes root's ``dmesg`` print it.

``userland_for_lab(state_dir)`` is what a lab calls once per machine: the unpacked image
(shared by the lab's guests) or None when this machine cannot run it; the reason is logged
once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from emulator import linux_texts as texts
from emulator.guest import OutputItem
from emulator.linux import LinuxGuest, LinuxState
from emulator.sandbox import (
    IMAGE_DIR,
    INITRD,
    Sandbox,
    SandboxError,
    UserlandImage,
    userland_unavailable,
)

log = logging.getLogger("serial_console_lab.emulator")

HIGH_WATER = 32 * 1024  # queued output beyond which the userland's console is not read
INIT_FAILED = "Requested init /init failed (error -2)."
_images: dict[Path, UserlandImage] = {}
_warned: set[str] = set()
_guests = itertools.count(1)


def userland_for_lab(state_dir: Path, image_dir: Path = IMAGE_DIR) -> UserlandImage | None:
    """The image unpacked once for the lab's emulated Linux guests (beside the image, or in
    ``state_dir/userland`` when that folder cannot be written), or None: logged once, why,
    and that those guests keep the emulated shell."""
    reason = userland_unavailable(image_dir)
    if reason is None:
        for root in (image_dir, (state_dir / "userland").resolve()):
            image = _images.get(root)
            if image is not None:
                return image
            image = UserlandImage(image_dir / INITRD, root)
            try:
                image.prepare()
            except (OSError, SandboxError) as err:
                reason = f"cannot unpack the guest image into {root}: {err}"
            else:
                _images[root] = image
                return image
    assert reason is not None
    if reason not in _warned:
        _warned.add(reason)
        log.warning(
            "emulated Linux guests keep the emulated shell, not the image's userland: %s",
            reason,
        )
    return None


class UserlandLinuxGuest(LinuxGuest):
    """A Linux guest on ttyS0 whose userland is the image's own (see the module docstring).

    ``image`` is the unpacked image (``userland_for_lab``); ``password`` is root's;
    ``run_dir`` is the machine's run folder (the kernel's log is kept there).
    """

    def __init__(
        self,
        hostname: str,
        password: str,
        image: UserlandImage,
        *,
        boot_delay: float = 0.0,
        run_dir: Path | None = None,
    ) -> None:
        super().__init__(hostname, password, boot_delay=boot_delay)
        self.image = image
        self.sandbox: Sandbox | None = None
        self._wake: Callable[[], None] = lambda: None
        self._paused = False
        self._starting: asyncio.Task[None] | None = None
        # The kernel's log as the userland reads it (/dev/kmsg, busybox dmesg's stand-in).
        # In the machine's run folder, or beside the image for a machine without one.
        self.kmsg = (
            run_dir / "kmsg"
            if run_dir is not None
            else image.cache_root / "kmsg" / f"{os.getpid()}-{next(_guests)}"
        )

    def bind_port(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called when the guest printed something outside a call to it, or
        its userland took typed bytes (the port may be read again: ``input_room``)."""
        self._wake = wake

    def input_room(self) -> bool:
        """False while typed bytes wait for the userland's tty: the port is not read."""
        return self.sandbox is None or self.sandbox.input_room()

    # -- the Personality contract, where the userland differs -------------------------------

    def boot(self, now: float) -> None:
        self._end_userland()
        super().boot(now)

    def halt(self) -> None:
        self._end_userland()
        super().halt()
        with contextlib.suppress(OSError):
            self.kmsg.unlink()

    def handle_timer(self, now: float) -> None:
        if self.state is LinuxState.BOOTING and self._timer is not None and now >= self._timer:
            self._timer = None
            self._now = now
            self._start_userland()
            return
        super().handle_timer(now)

    def pop_output(self, limit: int) -> OutputItem | None:
        item = super().pop_output(limit)
        if self._paused and len(self._out) < HIGH_WATER // 2 and self.sandbox is not None:
            self._paused = False
            self.sandbox.resume_output()
        return item

    def power_button(self, now: float) -> None:
        if self.state is not LinuxState.USERLAND:
            super().power_button(now)
            return
        self._now = now
        self._kernel(texts.ACPI_POWER_BUTTON, self._uptime(now))
        if self.sandbox is not None and self.sandbox.signal_init(signal.SIGUSR2):
            return  # init shuts down; reboot(2) then powers the machine off
        # Init is not up yet (its first moments): nothing to shut down, the power goes.
        self._kernel(texts.POWEROFF_KERNEL, self._uptime(now))
        self._power_off()

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is not LinuxState.USERLAND:
            super().receive_data(data, now)
            return
        self._now = now
        start = 0
        for index, byte in enumerate(data):
            if self._sysrq_until is None:
                continue
            armed = now < self._sysrq_until
            self._sysrq_until = None
            if armed and self.sysctl["kernel.sysrq"] != "0":
                self._type(data[start:index])
                start = index + 1
                self._sysrq(chr(byte).lower(), now)
                if self.state is not LinuxState.USERLAND:
                    return  # reboot, crash, power off: the rest is not read
        self._type(data[start:])

    # -- the kernel acting on the tree --------------------------------------------------

    def _sysrq(self, key: str, now: float) -> None:
        super()._sysrq(key, now)
        if self.state is LinuxState.USERLAND and self.sandbox is not None and key in "ei":
            mask = int(self.sysctl["kernel.sysrq"])
            if mask == 1 or mask & texts.SYSRQ_ENABLE_SIGNAL:
                self.sandbox.signal_tasks(signal.SIGTERM if key == "e" else signal.SIGKILL)

    def _kernel(self, line: str, stamp: float) -> None:
        super()._kernel(line, stamp)
        if self.sandbox is not None:
            self._write_kmsg("a", [(stamp, line)])

    def _write_kmsg(self, mode: str, lines: list[tuple[float, str]]) -> None:
        """The kernel's log file: written anew (``w``, at each boot's userland) or added to
        (``a``, a line at a time)."""
        try:
            if mode == "w":
                self.kmsg.parent.mkdir(parents=True, exist_ok=True)
            with self.kmsg.open(mode) as kmsg:
                kmsg.writelines(self._stamped(line, stamp) + "\n" for stamp, line in lines)
        except OSError as err:
            log.debug("%s: cannot keep the kernel's log for dmesg: %s", self.hostname, err)

    def _panic(self, reason: str, comm: str, stack: tuple[str, ...], now: float) -> None:
        self._end_userland()
        super()._panic(reason, comm, stack, now)

    def _power_off(self) -> None:
        self._end_userland()
        super()._power_off()

    # -- the userland ------------------------------------------------------------------

    def _type(self, data: bytes) -> None:
        if data and self.sandbox is not None:
            self.sandbox.write(data)

    def _start_userland(self) -> None:
        self.state = LinuxState.USERLAND
        self._write_kmsg("w", list(self.dmesg))
        sandbox = Sandbox(
            self.image,
            self.hostname,
            self.password,
            on_output=self._userland_output,
            on_exit=lambda how, code: self._userland_exit(sandbox, how, code),
            on_input_taken=lambda: self._wake(),
            kmsg=self.kmsg,
        )
        self.sandbox = sandbox
        self._paused = False
        self._starting = asyncio.ensure_future(self._run(sandbox))

    async def _run(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.start()
        except SandboxError as err:
            log.warning("%s: %s", self.hostname, err)
            if self.sandbox is sandbox:
                self.sandbox = None
                loop = asyncio.get_running_loop()
                self._panic(INIT_FAILED, "swapper/0", (), loop.time())
                self._wake()

    def _end_userland(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            sandbox.kill()
        self._paused = False

    def _userland_output(self, data: bytes) -> None:
        self._out.write(data)
        if len(self._out) >= HIGH_WATER and self.sandbox is not None and not self._paused:
            self._paused = True
            self.sandbox.pause_output()
        self._wake()

    def _userland_exit(self, sandbox: Sandbox, how: str, code: int) -> None:
        if self.sandbox is not sandbox:
            return
        self.sandbox = None
        now = asyncio.get_running_loop().time()
        self._now = now
        if how == "reboot":
            self._kernel(texts.REBOOT_KERNEL, self._uptime(now))
            self._reboot(now)
        elif how == "poweroff":
            self._kernel(texts.POWEROFF_KERNEL, self._uptime(now))
            self._power_off()
        else:
            status = (code & 0xFF) << 8 if code >= 0 else -code
            reason = f"Attempted to kill init! exitcode=0x{status:08x}"
            self._panic(reason, "init", (), now)
        self._wake()
