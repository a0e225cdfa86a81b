"""LibvirtMachine: a real Linux guest on a libvirt host (this one or another), behind the same
``Machine`` interface as ``QemuMachine``.

The guest is a transient domain (q35, the project's kernel and initramfs, ttyS0 on a ``pty``
serial) started with ``createXML(PAUSED | AUTODESTROY)``: its CPU is held until the console
is attached, and libvirtd destroys it if the lab's connection closes (the lab stopped or
died, even by ``kill -9``), on whichever host it runs.

The console goes through libvirt (``virDomainOpenConsole``), not through the host's PTY, so
a guest on another host is served exactly like a local one: the machine makes a PTY pair of
its own, and bridges the console stream to its master, event-driven both ways (the stream's
readable/writable callbacks in libvirt's event thread, an asyncio reader on the master). Its
slave is the machine's ``serial_port``, which the hub opens in the port hook before the
domain's CPU runs (it starts paused; ``resume`` comes after the hooks): the boot log has the
guest's first byte. Why a stream rather than the host PTY's path from the domain's XML: the
path names a device on the libvirt host, which the gateway can open only when that host is
this machine; the stream works on every host, and reads from before the first byte all the
same, because the domain is paused until it is open. The bridge's PTY belongs to the
machine, not to the domain, so it outlives a domain that powers off: a stop, a start and a
restart keep the same port (and the sessions on it); ``deallocate`` closes it.

Out-of-band actions:

=================  ==========================================================================
send_break         ``chardev-send-break`` on ``charserial0`` through libvirt's
                   ``qemu-monitor-command`` (libvirt has no call for a serial BREAK). On a
                   host whose driver is not QEMU there is no monitor: MachineCommandError
                   saying that SysRq over the serial line is not available there
inject_nmi         ``virDomainInjectNMI``
reset (hard)       ``virDomainReset`` (+ ``resume`` after a panic): same domain, same port
restart            ``shutdown`` (ACPI power button); the domain ends when the guest powers off
                   (``on_poweroff=destroy``); then a new domain on the same port. A hard
                   reset after the timeout, reported as ``RestartOutcome.FORCED``
stop               ``shutdown``; ``destroy`` after the timeout. The port stays
start              a new domain (from deallocated: a new port too)
deallocate         ``destroy`` (the transient domain is gone, nothing stays defined); the
                   port is closed
=================  ==========================================================================

Power state follows libvirt's lifecycle events: ``STOPPED`` (the guest powered off, or the
domain went away without being asked), ``CRASHED``/``PANICKED`` (pvpanic), and the reboot event is
passed on as ``RESET``. libvirt 9.0 knows only the ISA pvpanic device, whose driver the
guest image does not load, so on a QEMU host the PCI one is added on QEMU's command line
through libvirt's ``qemu:commandline``; libvirt still sees the panic (QEMU's
``GUEST_PANICKED``). QEMU is told not to pause a panicked guest (``-action panic=none``):
libvirt's ``on_crash=preserve`` alone pauses it at once, and a panic in NMI context is then
never written out. The machine suspends it once its console has been quiet for
``PANIC_QUIET`` s, as the QEMU backend halts its own.

Warm starts (``gateway.machines.warm.WarmStarts``), on this machine's libvirt with a QEMU
driver: a new allocation whose domain definition (less what is the VM's own) has a saved
boot is created paused with ``-incoming defer`` on QEMU's command line and handed the state
as a descriptor (``getfd`` through ``qemuMonitorCommandWithFiles``: libvirt's QEMU may not
start programs, so no ``exec:``), then resumed; another VM's identity goes through
libvirtd's agent passthrough (``qemuAgentCommand``). libvirt's own save and restore would
not do: a saved domain restores only under its own name, UUID and fw_cfg entries.

Domains the lab owns: named ``scl-<digest>-<vm>``, where the digest is of this gateway's host
name and the lab's state folder, so two labs never share a name, even on one libvirt host;
each carries the same owner in its ``<metadata>``. A domain of that name left by an earlier
run of this lab (whose connection did not close cleanly) is destroyed before a new one
starts; one of that name that this lab did not make is never touched: the start fails with
what to do.

The guest's root password goes through fw_cfg as with the QEMU backend. On this machine's
libvirt it is a file of mode 0600 in a private folder (made for the start, removed as soon
as the domain runs), which libvirt hands to QEMU's user; it is in no command line. On another
host the file would have to be on that host, so the password is given in the domain's
definition instead (``<entry>`` text): readable there by whoever may read the domain's XML or
QEMU's command line on that host.

Typed input and BREAK order (``wait_input_taken``): typed bytes wait in the bridge's PTY,
then in the stream, then (on the libvirt host) in the host PTY that QEMU reads, then in the
16550's FIFO. The first two are the machine's own and exact; the host PTY is counted as the
QEMU backend counts it (QEMU's master, copied with ``pidfd_getfd``) when the host is this
machine; then ``FIFO_DRAIN``. On another host the host PTY cannot be seen from here: the wait
covers the bridge and the stream, then a round trip to that host's libvirtd (which has then
read every byte sent before it), then ``REMOTE_DRAIN`` plus time for the bytes typed since
the last wait at a rate any guest keeps up with (``REMOTE_RATE``, ``REMOTE_MOST`` at most),
and says so in the log once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from gateway.machines.accel import select_accel
from gateway.machines.agent import AgentCommands, AgentError
from gateway.machines.base import (
    EventKind,
    MachineCommandError,
    MachineError,
    MachineLaunchError,
    MachineStateError,
    PowerState,
)
from gateway.machines.disk import (
    COM1,
    SERCON_FW_CFG,
    DiskMachine,
    DiskSet,
    DiskSpec,
    forwarded_port,
    network_args,
)
from gateway.machines.libvirt_console import ConsoleBridge
from gateway.machines.libvirt_domain import OWNER_NS, Domain
from gateway.machines.libvirt_host import (
    LIFECYCLE,
    HostError,
    LibvirtHost,
    call,
    is_local,
    require_libvirt,
)
from gateway.machines.qemu import (
    _POLL_FIRST,
    _POLL_MAX,
    DISK_TB_SIZE_MB,
    FIFO_DRAIN,
    HOSTNAME_FW_CFG,
    PANIC_HALT_MAX,
    PANIC_QUIET,
    PASSWORD_FW_CFG,
    _grab_input_probe,
    _InputProbe,
    default_image,
)
from gateway.machines.warm import SavedState, TypingPort, WarmStarts, WarmStore, state_key

DEFAULT_URI = "qemu:///system"
COMMAND_TIMEOUT = 10.0  # a libvirt call the host does not answer in this time fails
LAUNCH_TIMEOUT = 60.0  # createXML: QEMU starts on the host
REMOTE_DRAIN = 0.25  # another host's PTY cannot be seen: time for it to pass the bytes on
REMOTE_RATE = 4000.0  # bytes/s a guest surely takes (TCG here: about 13,000): per typed byte
REMOTE_MOST = 3.0  # at most this much more, so a long paste stays within a SysRq's wait
SERIAL_CHARDEV = "charserial0"  # libvirt's id for the first <serial>'s chardev
PVPANIC_ADDR = "0x10"  # a free slot on the root bus (q35's pcie.0, pc's pci.0)
NIC_ADDR = "0x11"  # a disk VM's NIC and balloon, given on QEMU's command line with slots of
BALLOON_ADDR = "0x12"  # their own (QEMU would take the first free one, which libvirt's are)
_HMP = 1  # VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
# libvirt's event numbers (virDomainEventType and its details)
_STARTED, _SUSPENDED, _RESUMED, _STOPPED, _SHUTDOWN, _CRASHED = 2, 3, 4, 5, 6, 8
_STOPPED_SHUTDOWN = 0
_VIR_ERR_NO_DOMAIN = 42
ACPI_POWER_BUTTON = 1  # VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN


def domain_prefix(state_dir: Path) -> str:
    """``scl-<digest>``: this gateway host and the lab's state folder, in 8 hex digits."""
    key = f"{socket.gethostname()}:{Path(state_dir).resolve()}"
    return "scl-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class LibvirtMachine(WarmStarts, DiskMachine):
    """A Linux guest on a libvirt host whose ttyS0 the gateway reads as a local PTY.

    See the module docstring. Use as ``async with LibvirtMachine(...) as vm:`` or call
    ``start`` and ``deallocate`` yourself. ``uri`` is libvirt's (``qemu:///system``,
    ``qemu+ssh://user@host/system``); kernel and initrd are paths on that host.
    """

    os_type = "linux"

    def __init__(
        self,
        name: str,
        *,
        run_dir: Path,
        uri: str = DEFAULT_URI,
        kernel: Path | None = None,
        initrd: Path | None = None,
        memory_mb: int = 128,
        cpus: int = 1,
        hostname: str | None = None,
        password: str | None = None,
        append: str = "",
        accel: str | None = None,
        prefix: str | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
        disk: DiskSpec | None = None,
        disk_dir: Path | None = None,
        warm: WarmStore | None = None,
    ) -> None:
        super().__init__(name)
        self.run_dir = Path(run_dir)
        self._init_warm(warm)
        self.uri = uri
        self.disk = disk
        self.disks = DiskSet(disk, Path(disk_dir or self.run_dir / "disks")) if disk else None
        self._ssh_port: int | None = None
        self._kernel = kernel
        self._initrd = initrd
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.hostname = hostname or name
        self._password = password
        self._append = append
        self._accel = accel
        self.accel: str | None = None
        self.command_timeout = command_timeout
        self.domain_name = f"{prefix or domain_prefix(self.run_dir)}-{name}"
        self._owner = {
            "gateway": socket.gethostname(),
            "state": str(self.run_dir.resolve()),
            "vm": name,
        }
        self._host: LibvirtHost | None = None
        self._dom: Any = None
        self._bridge: ConsoleBridge | None = None
        self._probe: _InputProbe | None = None
        self._expect_gone = False  # the domain ends because the machine ended it
        self._remote_told = False
        self._taken_mark = 0  # bytes the bridge had sent when a wait for them last ended
        self._halt_task: asyncio.Task[None] | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def serial_port(self) -> str | None:
        return self._bridge.path if self._bridge is not None else None

    async def _command(self, cmd: str, args: dict[str, object] | None = None) -> object:
        """A QMP command through libvirt's monitor passthrough (QEMU hosts only; a file it
        writes is on that host: this machine for a disk VM); its ``return``."""
        command, arguments = cmd, args
        host = self._host
        if host is None or host.driver != "QEMU":
            raise MachineCommandError(
                f"VM '{self.name}': '{command}' needs QEMU's monitor, which only a QEMU "
                "libvirt host has"
            )
        libvirt_qemu = _libvirt_qemu()
        message: dict[str, object] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        raw = await self._domain_call(
            command, lambda dom: libvirt_qemu.qemuMonitorCommand(dom, json.dumps(message), 0)
        )
        return json.loads(raw).get("return")

    @property
    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0,115200", "no_timer_check", f"lab.hostname={self.hostname}"]
        if self._append:
            parts.append(self._append)
        return " ".join(parts)

    @property
    def pid(self) -> int | None:
        """The QEMU process of the domain when the host is this machine, else None."""
        if self._dom is None or not is_local(self.uri):
            return None
        try:
            return int(Path(f"/run/libvirt/qemu/{self.domain_name}.pid").read_text())
        except (OSError, ValueError):
            return None

    async def __aenter__(self) -> LibvirtMachine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.deallocate())

    # -- power -----------------------------------------------------------------------------

    # The sequence of each operation is MachineBase's; these are libvirt's primitives.

    async def _power_on(self) -> None:
        await self._create()  # powered off, the (transient) domain is gone: a new one

    async def _press_power_button(self) -> None:
        await self._domain_call("shutdown", lambda dom: dom.shutdownFlags(ACPI_POWER_BUTTON))
        self._publish(EventKind.POWERDOWN)

    async def _halt(self) -> None:
        if self._halt_task is not None and self._halt_task is not asyncio.current_task():
            self._halt_task.cancel()
        await self._destroy()

    async def _hard_reset(self, detail: str) -> None:
        if self._halt_task is not None:
            self._halt_task.cancel()
        await self._domain_call("reset", lambda dom: dom.reset(0))

    async def _resume_after_panic(self) -> None:
        paused = require_libvirt().VIR_DOMAIN_PAUSED
        state = await self._domain_call("state", lambda dom: dom.state()[0])
        if state == paused:  # halted after its panic (not yet: it runs)
            await self._domain_call("resume", lambda dom: dom.resume())

    async def _release(self, timeout: float) -> None:
        if self._host is None:
            return
        with contextlib.suppress(MachineError):
            await self._destroy(timeout)
        await self._let_go()

    async def _break(self) -> None:
        host = self._host
        assert host is not None
        if host.driver != "QEMU":
            raise MachineCommandError(
                f"VM '{self.name}' runs on a {host.driver} libvirt host, which offers no serial "
                "BREAK (libvirt has no call for one; on QEMU hosts it goes through QEMU's "
                "monitor): SysRq over the serial console is not available there; use NMI, or "
                "place the VM on a QEMU host"
            )
        libvirt_qemu = _libvirt_qemu()
        command = f'{{"execute":"chardev-send-break","arguments":{{"id":"{SERIAL_CHARDEV}"}}}}'
        await self._domain_call(
            "chardev-send-break", lambda dom: libvirt_qemu.qemuMonitorCommand(dom, command, 0)
        )

    async def _nmi(self) -> None:
        await self._domain_call("inject-nmi", lambda dom: dom.injectNMI(0))

    async def wait_input_taken(self, timeout: float) -> None:
        """Return once the guest has read every byte written to the serial port so far (see
        the module docstring for what can be seen on another host).

        MachineStateError unless the guest's CPU runs; MachineError after ``timeout`` s, or
        at once when the machine ends meanwhile."""
        self._require_guest_running("wait for typed input on")
        bridge = self._bridge
        assert bridge is not None
        try:
            await self._wait(self._input_drained(bridge), timeout)
        except TimeoutError:
            left = bridge.unread() + (self._probe.unread() if self._probe else 0)
            raise MachineError(
                f"VM '{self.name}' has not read {left} typed byte(s) on its serial port in "
                f"{timeout:.1f} s (it is {self._state}): the guest is not reading its console; "
                "wait for it, or reset or restart the VM"
            ) from None

    async def _input_drained(self, bridge: ConsoleBridge) -> None:
        while True:
            pause = _POLL_FIRST
            while bridge.unread() or (self._probe is not None and self._probe.unread()):
                await asyncio.sleep(pause)  # nothing signals a read by QEMU: poll, backing off
                pause = min(pause * 2, _POLL_MAX)
            if self._probe is None:
                await self._remote_drained(bridge)
                return
            await asyncio.sleep(FIFO_DRAIN)
            if bridge.closed:
                raise MachineStateError(f"VM '{self.name}' lost its serial port: start it again")
            # libvirtd may have held bytes that it passed on meanwhile: still empty?
            if not bridge.unread() and not self._probe.unread():
                return

    async def _remote_drained(self, bridge: ConsoleBridge) -> None:
        """Another host: the stream is empty here; a call answered by its libvirtd proves
        that libvirtd has read every byte sent before it (one connection, in order); then
        time for the host's PTY: ``REMOTE_DRAIN``, plus the bytes typed since the last wait
        at ``REMOTE_RATE`` (at most ``REMOTE_MOST``): the host PTY itself cannot be seen."""
        host = self._host
        if host is None:
            raise MachineStateError(f"VM '{self.name}' lost its serial port: start it again")
        burst = max(bridge.sent - self._taken_mark, 0)
        try:
            await call(host.conn.getLibVersion, timeout=self.command_timeout, what="a round trip")
        except Exception as err:
            raise MachineError(
                f"VM '{self.name}': libvirt at {self.uri} did not answer ({err}): cannot tell "
                "whether the guest took its input; check the host, then try again"
            ) from err
        drain = REMOTE_DRAIN + min(burst / REMOTE_RATE, REMOTE_MOST)
        if not self._remote_told:
            self._remote_told = True
            self.log.info(
                "typed input on %s: the host's PTY cannot be seen from here; after the "
                "stream, waiting %.2f s plus %.0f ms per KB typed for it",
                self.uri,
                REMOTE_DRAIN,
                1024 / REMOTE_RATE * 1000,
            )
        await asyncio.sleep(drain)
        if bridge.closed:
            raise MachineStateError(f"VM '{self.name}' lost its serial port: start it again")
        self._taken_mark = bridge.sent

    # -- internals -------------------------------------------------------------------------

    def _state_after_failure(self, before: PowerState) -> PowerState | None:
        """Back to ``before``, or ``stopped`` when the domain is gone meanwhile (it powered
        off and a new one did not start); None once the host is gone."""
        if self._host is None:
            return None
        gone = self._dom is None and before is not PowerState.STOPPED
        return PowerState.STOPPED if gone else before

    async def _allocate(self) -> None:
        """From deallocated: the host's connection, a new port, the hooks, a running domain."""
        host = await LibvirtHost.acquire(self.uri, self.command_timeout)
        self._host = host
        loop = asyncio.get_running_loop()

        def on_event(kind: int, event: Any, detail: Any) -> None:
            loop.call_soon_threadsafe(self._on_domain_event, kind, event, detail)

        def on_lost(why: str) -> None:
            loop.call_soon_threadsafe(self._on_lost, why)

        host.watch(self.domain_name, on_event, on_lost)
        self._set_state(PowerState.STARTING)
        try:
            try:
                self._bridge = ConsoleBridge(self.name, loop)
                self._taken_mark = 0
            except OSError as err:
                raise MachineLaunchError(
                    f"VM '{self.name}': cannot make its serial port (a PTY): {err}"
                ) from err
            saved, key = await self._create(hooks=True)
        except BaseException:
            with contextlib.suppress(MachineError):
                await self._destroy(5.0)
            await self._let_go()
            raise
        self._set_state(PowerState.RUNNING)
        await self._after_start(saved, key)

    async def _create(self, hooks: bool = False) -> tuple[SavedState | None, str | None]:
        """A new paused domain, its console on the bridge, the port hooks, then ``resume``.
        A new allocation (``hooks``) may start warm: then the saved state is loaded before
        the hooks. (The saved state and the warm-start key of this launch.)"""
        libvirt = require_libvirt()
        host, bridge = self._host, self._bridge
        assert host is not None and bridge is not None
        await self._clear_leftover(host)
        kernel, initrd = self._kernel, self._initrd
        if kernel is None or initrd is None:
            kernel, initrd = default_image()
        if self.accel is None:
            self.accel = await self._select_accel(host, Path(kernel))
        key = self._warm_key(host, Path(kernel), Path(initrd)) if hooks else None
        saved = self._warm_saved(key)
        if self.disks is not None:
            await self._prepare_disks(saved)
        elif is_local(self.uri):
            for path in (kernel, initrd):
                if not Path(path).is_file():
                    raise MachineLaunchError(f"VM '{self.name}': {path} does not exist")
        secret_dir = self._password_folder() if is_local(self.uri) else None
        try:
            xml = self._domain_xml(host, Path(kernel), Path(initrd), secret_dir, saved is not None)
            flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
            self._expect_gone = False
            try:
                self._dom = await call(
                    host.conn.createXML, xml, flags, timeout=LAUNCH_TIMEOUT, what="createXML"
                )
            except TimeoutError:
                raise MachineLaunchError(
                    f"VM '{self.name}' did not start: libvirt at {self.uri} did not answer "
                    f"within {LAUNCH_TIMEOUT:.0f} s; see libvirtd's log on that host"
                ) from None
            except libvirt.libvirtError as err:
                said = _qemu_said(self.domain_name) if is_local(self.uri) else ""
                raise MachineLaunchError(
                    f"VM '{self.name}' did not start on {self.uri}: {err.get_error_message()}"
                    + (f" (QEMU said: {said})" if said else "")
                ) from err
        finally:
            if secret_dir is not None:
                shutil.rmtree(secret_dir, ignore_errors=True)  # QEMU read it before it ran
        warm = ", warm" if saved else ""
        self.log.info("domain %s created on %s (paused%s)", self.domain_name, self.uri, warm)

        def open_console(dom: Any) -> Any:
            stream = host.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            return stream

        try:
            stream = await self._domain_call("openConsole", open_console)
            bridge.attach(stream)
            if saved is not None:
                await self._load_state(saved)
            self._probe = await self._host_probe()
            if self.disks is not None:
                usernet = await self._domain_call(
                    "info usernet",
                    lambda dom: _libvirt_qemu().qemuMonitorCommand(dom, "info usernet", _HMP),
                )
                self._ssh_port = forwarded_port(usernet)
            if hooks:
                try:
                    await self._run_port_hooks(bridge.path)
                finally:
                    self.restored_output = None
            self._watch_boot(saved, key)
            await self._domain_call("resume", lambda dom: dom.resume())
        except BaseException:
            with contextlib.suppress(MachineError):  # no paused domain is left behind
                await self._destroy(5.0)
            raise
        return saved, key

    async def _prepare_disks(self, saved: SavedState | None) -> None:
        """A disk VM's overlays and firmware variables (see ``gateway.machines.disk``), on
        this machine: its QEMU runs here, as the lab's own user (the domain's DAC label),
        so it reaches the lab's state folder as the QEMU backend does."""
        assert self.disks is not None and self.disk is not None
        if not is_local(self.uri):
            raise MachineLaunchError(
                f"VM '{self.name}': a disk VM runs on this machine's libvirt (qemu:///system "
                f"or qemu:///session), not on {self.uri}: its disks are in the lab's folder"
            )
        if self.disk.tpm:
            raise MachineLaunchError(
                f"VM '{self.name}': a TPM is not offered on the libvirt backend yet: set "
                'backend = "qemu" for a Trusted Launch VM, or tpm = false'
            )
        await self._restore_disks(saved)

    async def _select_accel(self, host: LibvirtHost, kernel: Path) -> str:
        if self._accel:
            return self._accel
        if is_local(self.uri):
            return await select_accel(kernel)  # the same check as the QEMU backend's
        if os.environ.get("LAB_ACCEL") in ("kvm", "tcg"):
            return os.environ["LAB_ACCEL"]
        try:
            caps = await call(
                host.conn.getDomainCapabilities, None, "x86_64", "q35", "kvm", 0,
                timeout=self.command_timeout, what="getDomainCapabilities",
            )  # fmt: skip
        except (TimeoutError, Exception):  # no KVM there (libvirtError) or no answer
            return "tcg"
        return "kvm" if "<domain>kvm</domain>" in caps else "tcg"

    def _password_folder(self) -> Path | None:
        """A private folder with the password file for QEMU, or None without a password.

        Mode 0711: QEMU's user (libvirt hands it the file) may pass through, nobody may list
        it; the file is 0600, written with O_EXCL."""
        if self._password is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="serial-console-lab-secret-"))
        try:
            folder.chmod(0o711)
            path = folder / "guest-password"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(self._password.encode())
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise MachineLaunchError(
                f"VM '{self.name}': cannot write the guest password for libvirt in {folder}: "
                f"{err.strerror or err}; check the temporary folder's space and permissions"
            ) from err
        return folder

    def _domain_xml(
        self,
        host: LibvirtHost,
        kernel: Path,
        initrd: Path,
        secret_dir: Path | None,
        incoming: bool = False,
        owner: bool = True,
    ) -> str:
        """The domain's definition; ``incoming``: QEMU waits for a saved state to load
        (``-incoming defer``, a warm start); ``owner``: with the lab's mark."""
        qemu = host.driver == "QEMU"
        dom = Domain(self.domain_name, "kvm" if self.accel == "kvm" else "qemu",
                     self.memory_mb, self.cpus)  # fmt: skip
        if owner:
            dom.owner(self._owner)
        if secret_dir is not None:
            dom.fw_cfg(PASSWORD_FW_CFG, file=secret_dir / "guest-password")
        elif self._password is not None:
            dom.fw_cfg(PASSWORD_FW_CFG, text=self._password)
        # libvirt 9.0's ISA pvpanic needs a driver the image does not load: the PCI one,
        # on QEMU's command line, where the host is QEMU.
        root_bus = "pci.0" if self.generation == 1 else "pcie.0"
        args = ["-device", f"pvpanic-pci,bus={root_bus},addr={PVPANIC_ADDR}"] if qemu else []
        # A panic does not pause the guest at once (libvirt's on_crash=preserve would: a
        # panic in NMI context is then never written out); the machine halts it once its
        # console is quiet, as the QEMU backend does.
        args += ["-action", "panic=none"] if qemu else []
        if not qemu:
            dom.isa_panic()
        if self.disks is not None:
            dom.fw_cfg(HOSTNAME_FW_CFG, text=self.hostname)
            args += self._disk_domain(dom, root_bus)
            # QEMU runs as the lab's own user, nothing relabelled (see _disk_domain)
            dom.run_as(os.getuid(), os.getgid())
        else:
            dom.boot_kernel(kernel, initrd, self.kernel_cmdline)
        if incoming:
            args += ["-incoming", "defer"]
        dom.qemu_args(args)
        return dom.xml()

    def _disk_domain(self, dom: Domain, root_bus: str) -> list[str]:
        """A disk VM's parts of the domain, the same machine as the QEMU backend's
        (``gateway.machines.disk``); what the domain XML cannot say comes back as QEMU
        arguments. QEMU runs as the lab's own user with no relabelling (the DAC label), so
        the lab's folders and the image stay as they are; the NIC is QEMU's restricted user
        network with the SSH forward, which libvirt's XML cannot say (its ``portForward``
        needs passt), so it goes on QEMU's command line."""
        assert self.disks is not None and self.disk is not None
        disks, spec = self.disks, self.disk
        more: list[str] = []
        if self.accel != "kvm":
            dom.tcg_cache(DISK_TB_SIZE_MB)
        if spec.generation == 1:
            sercon = self.run_dir / "sercon-port"
            self.run_dir.mkdir(parents=True, exist_ok=True)
            sercon.write_bytes(COM1.to_bytes(2, "little"))
            dom.boot_disk("pc")
            more += ["-fw_cfg", f"name={SERCON_FW_CFG},file={sercon}"]
        else:
            dom.boot_disk("q35", disks.firmware_code(), disks.uefi_vars, spec.secure_boot)
            if spec.secure_boot:
                dom.feature("smm", state="on")
        dom.disk(disks.os_disk, "vda")
        for i in range(len(spec.data_disks)):
            dom.disk(disks.data_disk(i), f"vd{chr(ord('b') + i)}")
        dom.vga()
        dom.agent_channel()
        nic = network_args(spec.ssh_port)
        nic[-1] += f",bus={root_bus},addr={NIC_ADDR}"
        return [
            *more,
            *nic,
            "-device",
            f"virtio-balloon-pci,free-page-reporting=on,bus={root_bus},addr={BALLOON_ADDR}",
        ]

    # -- warm starts (gateway.machines.warm.WarmStarts) -------------------------------------

    def _warm_key(self, host: LibvirtHost, kernel: Path, initrd: Path) -> str | None:
        """The saved-state key of this launch (the domain's definition with what is the
        VM's own taken out), or None when it cannot start warm: another host (the state is
        a file here, handed to QEMU as a descriptor), a host whose driver is not QEMU, or
        a disk VM whose disks were written already (they are its own now)."""
        if self.warm is None or not is_local(self.uri) or host.driver != "QEMU":
            return None
        xml = self._domain_xml(host, kernel, initrd, None, owner=False)
        own = {"domain": self.domain_name, "run": str(self.run_dir)}
        files = [Path(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")]
        if self.disks is not None and self.disk is not None:
            if self.disks.os_disk.exists():
                return None
            if any(self.disks.data_disk(i).exists() for i in range(len(self.disk.data_disks))):
                return None
            own |= {"disks": str(self.disks.folder), "host": escape(self.hostname)}
            if self._password is not None:
                own["password"] = escape(self._password)
            if self.disk.ssh_port:
                own["ssh"] = f"127.0.0.1:{self.disk.ssh_port}-:22"
            files += [self.disk.image, *(d.file for d in self.disk.data_disks if d.file)]
            if self.generation == 2:
                files.append(self.disks.firmware_code())
        else:  # no agent to take an identity after a restore: it is part of the key
            files += [kernel, initrd]
            own.pop("run")
        return state_key(xml.splitlines(), own, files)

    async def _send_fd(self, fd: int, name: str) -> None:
        message = json.dumps({"execute": "getfd", "arguments": {"fdname": name}})
        raw = await self._domain_call(
            "getfd",
            lambda dom: _libvirt_qemu().qemuMonitorCommandWithFiles(dom, message, [fd], 0)[0],
        )
        reply = json.loads(raw)
        if "error" in reply:
            raise MachineCommandError(f"QEMU refused getfd: {reply['error'].get('desc')}")

    @contextlib.asynccontextmanager
    async def _agent(self, timeout: float) -> AsyncIterator[AgentCommands]:
        """The guest agent through libvirtd (which holds its channel), once it answers."""
        agent = _LibvirtAgent(self)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await agent.execute("guest-ping", timeout=2.0)
                break
            except AgentError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.1)  # libvirt says nothing when the agent connects
        yield agent

    def _typing_port(self) -> TypingPort | None:
        return self._bridge

    async def _clear_leftover(self, host: LibvirtHost) -> None:
        """Destroy a domain of this machine's name left by an earlier run of this lab; refuse
        (MachineLaunchError) when one of that name was not made by this lab."""
        libvirt = require_libvirt()

        def look() -> tuple[Any, str]:
            try:
                dom = host.conn.lookupByName(self.domain_name)
            except libvirt.libvirtError as err:
                if err.get_error_code() == _VIR_ERR_NO_DOMAIN:
                    return None, ""
                raise
            return dom, dom.XMLDesc(0)

        try:
            dom, xml = await call(look, timeout=self.command_timeout, what="lookupByName")
        except (TimeoutError, libvirt.libvirtError) as err:
            raise MachineLaunchError(
                f"VM '{self.name}': cannot ask libvirt at {self.uri} about domain "
                f"{self.domain_name}: {err}"
            ) from err
        if dom is None:
            return
        if _owner_of(xml) != self._owner:
            raise MachineLaunchError(
                f"VM '{self.name}': libvirt at {self.uri} already has a domain named "
                f"{self.domain_name} that this lab did not make; the lab leaves it alone: "
                "remove it yourself (virsh destroy / undefine) or rename the VM"
            )
        self.log.warning("destroying domain %s left by an earlier run", self.domain_name)
        with contextlib.suppress(libvirt.libvirtError):
            await call(dom.destroy, timeout=self.command_timeout, what="destroy")
        with contextlib.suppress(libvirt.libvirtError):
            await call(dom.undefine, timeout=self.command_timeout, what="undefine")

    async def _host_probe(self) -> _InputProbe | None:
        """QEMU's master of the host PTY, when the host is this machine (else None)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        pid = self.pid
        if pid is None or self._dom is None:
            return None
        try:
            xml = await self._domain_call("XMLDesc", lambda dom: dom.XMLDesc(0))
            source = ElementTree.fromstring(xml).find("./devices/serial/source")
        except (MachineError, ElementTree.ParseError):
            return None
        if source is None or not source.get("path"):
            return None
        probe, why = _grab_input_probe(pid, str(source.get("path")))
        if probe is None:
            self.log.warning("typed input on the host's PTY cannot be tracked: %s", why)
        return probe

    async def _domain_call(self, what: str, fn: Any) -> Any:
        """``fn(domain)`` in a worker thread; MachineCommandError when libvirt fails it or
        does not answer within ``command_timeout``; MachineStateError without a domain."""
        libvirt = require_libvirt()
        dom = self._dom
        if dom is None:
            raise MachineStateError(f"VM '{self.name}' has no running domain: start it first")
        try:
            return await call(fn, dom, timeout=self.command_timeout, what=what)
        except TimeoutError:
            raise MachineCommandError(
                f"libvirt at {self.uri} did not answer {what} for VM '{self.name}' within "
                f"{self.command_timeout:.0f} s: the host or its QEMU is hung; deallocate and "
                "start it again"
            ) from None
        except libvirt.libvirtError as err:
            raise MachineCommandError(
                f"libvirt refused {what} for VM '{self.name}': {err.get_error_message()}"
            ) from err

    async def _destroy(self, timeout: float | None = None) -> None:
        """End the domain (transient: nothing stays defined); the bridge's port stays."""
        libvirt = require_libvirt()
        dom, self._dom = self._dom, None
        self._expect_gone = True
        self._forget_boot()
        if self._bridge is not None:
            self._bridge.detach()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if dom is None:
            return
        try:
            await call(dom.destroy, timeout=timeout or self.command_timeout, what="destroy")
        except TimeoutError:
            raise MachineCommandError(
                f"libvirt at {self.uri} did not destroy domain {self.domain_name} in time"
            ) from None
        except libvirt.libvirtError as err:
            if err.get_error_code() != _VIR_ERR_NO_DOMAIN and "not running" not in str(err):
                raise MachineCommandError(
                    f"libvirt refused to destroy {self.domain_name}: {err.get_error_message()}"
                ) from err

    async def _let_go(self) -> None:
        """Forget the domain, close the port, let the connection go: deallocated."""
        self._dom = None
        self._forget_boot()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        host, self._host = self._host, None
        self.accel = None
        self._ssh_port = None
        self._set_state(PowerState.DEALLOCATED)
        if host is not None:
            host.unwatch(self.domain_name)
            await host.release()

    def _on_domain_event(self, kind: int, event: Any, detail: Any) -> None:
        """A lifecycle or reboot event of this machine's domain, in the machine's loop."""
        self.log.debug("libvirt event %s %s %s", kind, event, detail)
        if kind != LIFECYCLE:
            self._publish(EventKind.RESET, "reboot")
            return
        if event == _CRASHED:
            self._set_state(PowerState.PANICKED, "pvpanic")
            self._publish(EventKind.PANICKED, "guest panicked")
            if self._halt_task is None or self._halt_task.done():
                self._halt_task = asyncio.get_running_loop().create_task(
                    self._halt_after_panic(), name=f"{self.name}-panic-halt"
                )
        elif event == _STOPPED:
            if self._expect_gone or self._dom is None:
                return
            self._dom = None
            if self._bridge is not None:
                self._bridge.detach()
            if self._probe is not None:
                self._probe.close()
                self._probe = None
            if detail == _STOPPED_SHUTDOWN:  # the guest powered itself off
                self._set_state(PowerState.STOPPED, "the guest powered off")
                self._publish(EventKind.SHUTDOWN, "guest-shutdown")
                return
            why = f"VM '{self.name}' went away: its domain on {self.uri} ended (libvirt: {detail})"
            self._gone(why)

    async def _halt_after_panic(self) -> None:
        """Halt a panicked guest (``suspend``) once its console has been quiet for
        ``PANIC_QUIET`` s, or after ``PANIC_HALT_MAX`` s (see the QEMU backend's)."""
        began = time.monotonic()
        while self._state is PowerState.PANICKED and self._bridge is not None:
            now = time.monotonic()
            quiet = now - self._bridge.last_output
            if quiet >= PANIC_QUIET or now - began >= PANIC_HALT_MAX:
                with contextlib.suppress(MachineError):
                    await self._domain_call("suspend", lambda dom: dom.suspend())
                return
            await asyncio.sleep(PANIC_QUIET - quiet)  # a debounce: no event says "done"

    def _on_lost(self, why: str) -> None:
        if self._host is not None and self._host.closed_reason:
            self._dom = None
            self._gone(f"VM '{self.name}' went away: {why}")

    def _gone(self, why: str) -> None:
        self.log.error("%s", why)
        self._publish(EventKind.EXITED, why)

        async def take_over() -> None:
            async with self._taking_over(why, "start it again", MachineError):
                if self._host is not None:
                    await self._let_go()

        asyncio.get_running_loop().create_task(take_over(), name=f"{self.name}-gone")


QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")  # where a local libvirtd keeps QEMU's output
# a line QEMU wrote: "qemu: ...", or "<time> qemu-system-x86_64: ..."
QEMU_SAID = re.compile(r"(?:^|\s)qemu(?:-system-\w+)?: (.+)$")


def _qemu_said(domain: str) -> str:
    """The last thing QEMU wrote in libvirt's log of ``domain`` on this host: why it exited
    at once, which libvirt's own error ("failed to connect to monitor socket") may not say
    when QEMU died before libvirt read its output. Empty when there is no such log."""
    try:
        lines = (QEMU_LOG_DIR / f"{domain}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    said = [m.group(1) for m in map(QEMU_SAID.search, lines) if m]
    said = [text for text in said if not text.startswith("terminating on signal")]
    return said[-1].strip() if said else ""


def _owner_of(xml: str) -> dict[str, str] | None:
    try:
        owner = ElementTree.fromstring(xml).find(f"./metadata/{{{OWNER_NS}}}owner")
    except ElementTree.ParseError:
        return None
    return dict(owner.attrib) if owner is not None else None


def _libvirt_qemu() -> Any:
    try:
        import libvirt_qemu
    except ImportError as err:  # pragma: no cover - shipped with libvirt-python
        raise HostError("libvirt-python's libvirt_qemu module is missing") from err
    return libvirt_qemu


class _LibvirtAgent(AgentCommands):
    """A guest agent's commands through libvirtd (``virDomainQemuAgentCommand``)."""

    def __init__(self, machine: LibvirtMachine) -> None:
        self._machine = machine

    async def execute(self, command: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:  # fmt: skip
        message: dict[str, Any] = {"execute": command}
        if args is not None:
            message["arguments"] = args
        text, wait = json.dumps(message), max(int(timeout), 1)
        try:
            raw = await self._machine._domain_call(
                command, lambda dom: _libvirt_qemu().qemuAgentCommand(dom, text, wait, 0)
            )
        except MachineError as err:
            raise AgentError(f"the guest agent did not answer {command}: {err}") from err
        reply = json.loads(raw)
        if "error" in reply:
            raise AgentError(f"the guest agent refused {command}: {reply['error'].get('desc')}")
        return reply.get("return")
