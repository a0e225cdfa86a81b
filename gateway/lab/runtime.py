"""The lab runtime: builds every machine, its boot log and console hub, serves HTTP, and
stops it all.

Use::

    async with LabRuntime(config, on_progress=show) as lab:
        print(lab.url)
        await lab.wait_for_stop()        # until lab.request_stop() or the server dies

Entering: refuses to listen beyond loopback while a user keeps a default password or TLS is
off; opens the state folder (``lab.db``, ``bootdiag/<vm>/``, ``run/<vm>/``, and ``tls/``
with the lab CA when ``tls`` is on and the lab file names no certificate); makes one
``BootLog`` + ``ConsoleHub`` per machine and installs the hub before the machine starts,
so the boot is logged from its first byte; serves the app on one port (uvicorn, websockets);
starts every machine in parallel, reporting progress. A machine that fails to start is
reported and left deallocated: the rest of the lab runs.

Leaving (normally, on an error or on cancellation): the server stops (graceful, forced
after a timeout); running machines are stopped gracefully in parallel (unless leaving by
cancellation), then every machine is deallocated in a ``finally``, so no QEMU outlives the
lab; hubs, boot logs and the database are closed. An ``asyncio.TaskGroup`` owns the
server and the boot-log flusher.

Exceptions::

    LabRuntimeError      the lab cannot start (message says why: exposure, port, TLS, state)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Generator
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from gateway.access import rbac
from gateway.access.audit import AuditLog
from gateway.access.connect_sessions import ConnectSessions
from gateway.access.errors import StoreError
from gateway.access.lockout import SignInLockout
from gateway.access.signing import UrlSigner
from gateway.access.store import LabDatabase
from gateway.access.tokens import TokenService
from gateway.access.users import Directory
from gateway.api.app import create_app
from gateway.api.context import ApiContext
from gateway.console.bootlog import BootLog, BootLogError
from gateway.console.hub import ConsoleHub
from gateway.console.sessions import Role
from gateway.lab import connections
from gateway.lab.config import LabConfig, MachineSpec, Rfc2217Door
from gateway.lab.errors import LabError
from gateway.lab.inventory import ConsoleState, Inventory, ScaleSetResource, VmResource
from gateway.lab.tls import TlsError, TlsFiles, ensure_lab_certificate, server_hosts
from gateway.machines.base import Machine, MachineError, PowerState
from gateway.machines.provision import VmIdentity
from gateway.recordings.recorder import Recorder
from gateway.rfc2217.door import DoorSpec, Rfc2217Doors, Rfc2217Error
from gateway.ssh.server import SshDoor, SshDoorError, load_host_key

log = logging.getLogger("serial_console_lab.lab")

# The lab serves websockets with the `websockets` library's implementation on purpose;
# uvicorn's notice that its default will change is not for the lab's users.
warnings.filterwarnings("ignore", message=r"The `websockets` implementation is deprecated")

MachineFactory = Callable[[MachineSpec, Path], Machine]
Progress = Callable[[str, str], None]


class LabRuntimeError(LabError):
    """The lab cannot start; the message says why and what to do."""


def default_machine_factory(spec: MachineSpec, run_dir: Path) -> Machine:
    """A QemuMachine, a LibvirtMachine or an EmulatedMachine for ``spec`` (imported only
    when needed)."""
    if spec.backend == "qemu":
        from gateway.machines.provision import Provisioning
        from gateway.machines.qemu import QemuMachine
        from gateway.machines.warm import WarmStore

        profile = spec.os_profile  # cloud-init provisions the VM: no root password for it
        return QemuMachine(
            spec.name,
            run_dir=run_dir,
            kernel=spec.image.kernel,
            initrd=spec.image.initrd,
            memory_mb=spec.memory_mb,
            cpus=spec.cpus,
            hostname=profile.computer_name if profile else spec.hostname,
            password=None if profile else spec.password,
            append=spec.image.append,
            disk=spec.image.disk,
            disk_dir=run_dir.parent.parent / "disks" / spec.name,  # kept across runs
            warm=WarmStore.for_lab(run_dir.parent.parent) if spec.warm_start else None,
            provisioning=Provisioning(profile) if profile else None,
        )
    if spec.backend == "libvirt":
        from gateway.machines.libvirt import LibvirtMachine, domain_prefix
        from gateway.machines.warm import WarmStore

        return LibvirtMachine(
            spec.name,
            run_dir=run_dir,
            uri=spec.uri or "qemu:///system",
            kernel=spec.image.kernel,
            initrd=spec.image.initrd,
            memory_mb=spec.memory_mb,
            cpus=spec.cpus,
            hostname=spec.hostname,
            password=spec.password,
            append=spec.image.append,
            prefix=domain_prefix(run_dir.parent.parent),  # one prefix per state folder
            disk=spec.image.disk,
            disk_dir=run_dir.parent.parent / "disks" / spec.name,  # kept across runs
            warm=WarmStore.for_lab(run_dir.parent.parent) if spec.warm_start else None,
        )
    from emulator.machine import EmulatedMachine
    from emulator.userland import userland_for_lab

    # Linux: the image's own userland under the emulated kernel where namespaces allow it
    # (unpacked once, beside the image or else in the state folder: run_dir's grandparent).
    userland = userland_for_lab(run_dir.parent.parent) if spec.os == "linux" else None
    return EmulatedMachine(
        spec.name,
        spec.os,
        hostname=spec.hostname,
        password=spec.password,
        boot_delay=spec.boot_delay,
        output_rate=spec.output_rate,
        userland=userland,
        run_dir=run_dir,
    )


class ReadyServer(uvicorn.Server):
    """uvicorn's server, minus its signal handling (the lab owns signals) and with a
    ``ready`` event instead of polling ``started``."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class LabRuntime:
    """One running lab. An async context manager; see the module docstring."""

    def __init__(
        self,
        config: LabConfig,
        *,
        machine_factory: MachineFactory = default_machine_factory,
        on_progress: Progress | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 30.0,
        server_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.machine_factory = machine_factory
        self.on_progress = on_progress or (lambda name, message: None)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.server_timeout = server_timeout
        self.state_dir = config.state_dir.resolve()
        self.machines: dict[str, Machine] = {}
        self.bootlogs: dict[str, BootLog] = {}
        self.hubs: dict[str, ConsoleHub] = {}
        self.start_failures: dict[str, str] = {}
        self.context: ApiContext | None = None
        self.port = 0
        self.tls: TlsFiles | None = None  # set on entering when the lab serves TLS
        self.server_error: BaseException | None = None
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self._server: ReadyServer | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []  # tell the user what machines did
        self._flusher: asyncio.Task[None] | None = None
        self._forced = asyncio.Event()
        self.rfc2217: Rfc2217Doors | None = None  # the lab file's RFC 2217 doors, once open
        self.ssh: SshDoor | None = None  # the SSH door, when the lab file's ssh_port is set

    # -- public --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where clients reach the gateway (loopback when it listens on every address)."""
        host = self.config.gateway.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.gateway.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def ca_path(self) -> Path | None:
        """The lab CA's certificate (``<state-dir>/tls/ca.pem``) clients trust, when the lab
        serves with its own CA; None over HTTP or with the user's certificate."""
        return self.tls.ca if self.tls is not None else None

    def request_stop(self) -> None:
        """Ask ``wait_for_stop`` to return (what Ctrl+C and SIGTERM do)."""
        self._stop.set()

    def force_stop(self) -> None:
        """Stop without waiting for anyone (a second Ctrl+C): open connections are cut,
        guests are not asked to shut down; every machine is still deallocated."""
        self._forced.set()
        if self._server is not None:
            self._server.force_exit = True
        self._stop.set()

    async def wait_for_stop(self) -> None:
        """Return on ``request_stop()`` or when the HTTP server ends by itself."""
        assert self._server_task is not None
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({stop, self._server_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    # -- entering ------------------------------------------------------------------------

    async def __aenter__(self) -> LabRuntime:
        try:
            await self._enter()
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError | KeyboardInterrupt):
                self._forced.set()  # interrupted while starting: deallocate, no graceful stop
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._forced.set()
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def _enter(self) -> None:
        settings = self.config.gateway
        problems = self.config.exposure_problems()
        if problems:
            raise LabRuntimeError(
                f"refusing to listen on {settings.host}, beyond this machine: "
                + "; ".join(problems)
                + ". Change the passwords and set TLS in the lab file, or listen on 127.0.0.1."
            )
        # The port first, then the state folder: a lab that cannot run touches nothing.
        sock = _bind(settings.host, settings.port)
        self._stack.callback(sock.close)  # closed after the server stopped (LIFO)
        self.port = sock.getsockname()[1]
        try:
            # Private: the database holds the audit log and the key that signs log URLs.
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.state_dir.chmod(0o700)
            self._stack.callback(os.close, _lock_state(self.state_dir))
            (self.state_dir / "bootdiag").mkdir(parents=True, exist_ok=True)
            (self.state_dir / "run").mkdir(parents=True, exist_ok=True)
            db = LabDatabase(self.state_dir / "lab.db")
            self._stack.callback(db.close)
            recorder = Recorder(self.state_dir / "recordings", db, self.config.recordings)
        except (OSError, StoreError) as err:
            raise LabRuntimeError(f"cannot use the state folder {self.state_dir}: {err}") from err
        self._stack.callback(recorder.close)  # after the consoles ended, before lab.db closes
        audit_log = AuditLog(db)
        self._stack.callback(audit_log.close)  # the same: its posted rows written first
        self.tls = self._tls_files()
        # Registered before anything is built: it deallocates, then closes hubs and logs.
        self._stack.push_async_callback(self._release_machines)
        inventory = self._build(db)
        self.context = ApiContext(
            inventory=inventory,
            directory=Directory(
                self.config.users,
                SignInLockout(
                    self.config.access.lockout_threshold, self.config.access.lockout_duration
                ),
            ),
            tokens=TokenService(db, Directory(self.config.users), settings.token_lifetime),
            audit=audit_log,
            sessions=ConnectSessions(),
            console=ConsoleState(db, self.config.subscription.id),
            signer=UrlSigner.from_db(db),
            idle_timeout=settings.idle_timeout,
            replay_bytes=settings.replay_bytes,
            allowed_origins=settings.allowed_origins,
            allowed_hosts=_allowed_hosts(settings.host) if settings.loopback else None,
            recorder=recorder,
        )
        server = self._prepare_server()
        # The doors' ports are opened outside the TaskGroup: a port in use is a plain error.
        await self._open_rfc2217()
        self._stack.push_async_callback(self._stop_ssh)  # after the consoles heard why
        if settings.ssh_port:
            await self._start_ssh(settings.host, settings.ssh_port)
        group = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._stack.push_async_callback(self._stop_tasks)
        await self._serve(group, server, sock)
        self._flusher = group.create_task(self._flush_loop(), name="bootlog-flush")
        await self._start_all()

    async def _open_rfc2217(self) -> None:
        """The RFC 2217 doors the lab file opens (loopback only), before the guests start;
        closed after the HTTP server, their clients told why with every console's."""
        assert self.context is not None
        try:
            specs = rfc2217_doors(self.config, self.context.inventory)
            self.rfc2217 = await Rfc2217Doors.open(specs, self.context)
        except Rfc2217Error as err:
            raise LabRuntimeError(str(err)) from err
        self._stack.push_async_callback(self.rfc2217.close)

    def _build(self, db: LabDatabase) -> Inventory:
        """Machines, boot logs, hubs (installed), and the inventory the API serves."""
        cfg = self.config
        sub = cfg.subscription.id
        inventory = Inventory(sub, cfg.subscription.name, cfg.subscription.tenant_id)
        locations = {g.name: g.location for g in cfg.resource_groups}
        for group in cfg.resource_groups:
            inventory.add_group(group.name, group.location)

        def resource(spec: MachineSpec, id: str, group: str, **parts: Any) -> VmResource:
            """The VM (or instance) ``spec``: its machine, boot log and installed hub."""
            try:
                bootlog = BootLog(
                    self.state_dir / "bootdiag" / spec.name, cfg.gateway.bootlog_bytes
                )
            except BootLogError as err:
                raise LabRuntimeError(str(err)) from err
            self.bootlogs[spec.name] = bootlog
            run_dir = self.state_dir / "run" / spec.name
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                machine = self.machine_factory(spec, run_dir)
            except (MachineError, ValueError, OSError, ImportError) as err:
                raise LabRuntimeError(f"{spec.name}: cannot make the machine: {err}") from err
            hub = ConsoleHub(machine, bootlog, replay=cfg.gateway.replay_bytes)
            hub.install()
            self.machines[spec.name] = machine
            self.hubs[spec.name] = hub
            provisioning = getattr(machine, "provisioning", None)
            if provisioning is not None:  # the guest's cloud-init reports the state
                parts["provisioning_state"] = provisioning.state
            vm = VmResource(
                id=id,
                name=spec.name,
                resource_group=group,
                location=locations[group],
                os_type=spec.os,
                hostname=spec.hostname,
                memory_mb=spec.memory_mb,
                machine=machine,
                bootlog=bootlog,
                hub=hub,
                **parts,
            )
            if provisioning is not None:
                provisioning.identify(
                    VmIdentity(
                        vm_id=vm.vm_id,
                        name=vm.name,
                        resource_id=vm.id,
                        subscription_id=sub,
                        resource_group=group,
                        location=vm.location,
                        vm_size=vm.vm_size,
                    )
                )
                vm.provisioning = provisioning

                def follow(state: str, vm: VmResource = vm) -> None:
                    vm.provisioning_state = state

                provisioning.on_change = follow
            return vm

        for vm in cfg.vms:
            inventory.add_vm(
                resource(
                    vm.machine,
                    rbac.vm_scope(sub, vm.resource_group, vm.name),
                    vm.resource_group,
                    provisioning_state=vm.provisioning_state,
                    boot_diagnostics=vm.boot_diagnostics,
                    port_enabled_default=vm.serial_port_enabled,
                )
            )
        for vmss in cfg.scale_sets:
            inventory.add_scale_set(
                ScaleSetResource(
                    id=rbac.scale_set_scope(sub, vmss.resource_group, vmss.name),
                    name=vmss.name,
                    resource_group=vmss.resource_group,
                    location=locations[vmss.resource_group],
                    capacity=vmss.capacity,
                    memory_mb=vmss.instances[0].machine.memory_mb if vmss.instances else 0,
                    os_type=vmss.instances[0].machine.os if vmss.instances else "linux",
                    provisioning_state=vmss.provisioning_state,
                    boot_diagnostics=vmss.boot_diagnostics,
                )
            )
            for instance in vmss.instances:
                inventory.add_vm(
                    resource(
                        instance.machine,
                        rbac.instance_scope(
                            sub, vmss.resource_group, vmss.name, instance.instance_id
                        ),
                        vmss.resource_group,
                        provisioning_state=vmss.provisioning_state,
                        boot_diagnostics=vmss.boot_diagnostics,
                        port_enabled_default=vmss.serial_port_enabled,
                        scale_set=vmss.name,
                        instance_id=instance.instance_id,
                        latest_model=instance.latest_model,
                    )
                )
        return inventory

    def _tls_files(self) -> TlsFiles | None:
        """What the server speaks TLS with: the lab file's certificate when it names one
        (the user's wins), else with ``tls`` the lab CA's in ``<state-dir>/tls/``."""
        settings = self.config.gateway
        if settings.tls_cert is not None and settings.tls_key is not None:
            return TlsFiles(settings.tls_cert, settings.tls_key)
        if not settings.lab_ca:
            return None
        hosts = server_hosts(settings.host, (socket.gethostname(),))
        try:
            return ensure_lab_certificate(self.state_dir / "tls", hosts)
        except TlsError as err:
            raise LabRuntimeError(str(err)) from err

    def _prepare_server(self) -> ReadyServer:
        settings = self.config.gateway
        tls = self.tls
        assert self.context is not None
        # The server's bounds (connections, header and keep-alive timeouts, head sizes):
        # uvicorn's httptools and websockets-sansio protocols with the lab's limits.
        limits = connections.SERVER
        http_protocol, ws_protocol = connections.protocols(limits)
        config = uvicorn.Config(
            create_app(self.context, body_timeout=limits.body_timeout),
            http=http_protocol,
            ws=ws_protocol,  # the websockets library's sans-I/O core
            ws_ping_interval=20.0,  # keep-alive pings; a silent client is dropped
            ws_ping_timeout=20.0,
            # uvicorn hints int, but takes seconds as a float (it passes them to call_later)
            timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self.server_timeout,  # type: ignore[arg-type]  # (same)
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        try:
            config.load()
        except (OSError, ValueError) as err:
            assert tls is not None  # nothing else in load() reads a file
            where = (
                f" (gateway.tls_cert and gateway.tls_key of {self.config.source})"
                if settings.tls_cert
                else ""
            )
            raise LabRuntimeError(
                f"cannot load the TLS certificate {tls.cert} with the key {tls.key}{where}: {err}"
            ) from err
        return ReadyServer(config)

    async def _serve(
        self, group: asyncio.TaskGroup, server: ReadyServer, sock: socket.socket
    ) -> None:
        self._server = server
        self._server_task = group.create_task(self._run_server(sock), name="http")
        ready = asyncio.ensure_future(self._server.ready.wait())
        try:
            async with asyncio.timeout(30):
                await asyncio.wait({ready, self._server_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._server.ready.is_set():
            raise LabRuntimeError(f"the HTTP server did not start: {self.server_error}")
        log.info("serving %s", self.url)

    async def _run_server(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[sock])
        except Exception as err:
            # Kept, not raised: the lab reports it and shuts down in order.
            self.server_error = err
            log.error("the HTTP server failed: %s", err)
            log.debug("traceback", exc_info=err)

    async def _start_all(self) -> None:
        async def start(name: str, machine: Machine) -> None:
            self.on_progress(name, "starting")
            began = time.monotonic()
            try:
                async with asyncio.timeout(self.start_timeout):
                    await machine.start()
            except Exception as err:  # one machine's failure never takes the lab down
                reason = str(err) or type(err).__name__
                log.debug("%s: start failure", name, exc_info=err)
                self.start_failures[name] = reason
                self.on_progress(name, f"failed to start: {reason}")
                log.info("%s: failed to start: %s", name, reason)  # on_progress tells the user
                return
            warm = " from a saved boot" if getattr(machine, "started_warm", False) else ""
            self.on_progress(
                name, f"{machine.power_state} ({time.monotonic() - began:.1f} s{warm})"
            )
            saved = getattr(machine, "warm_saved", None)
            if saved is not None and not warm and getattr(machine, "warm", None) is not None:
                self._watchers.append(asyncio.create_task(self._tell_saved(name, saved)))

        async with asyncio.TaskGroup() as starting:
            for name, machine in self.machines.items():
                starting.create_task(start(name, machine), name=f"start-{name}")

    async def _tell_saved(self, name: str, saved: asyncio.Event) -> None:
        """Say when a VM's cold boot is saved: VMs like it start warm from then on."""
        await saved.wait()
        self.on_progress(name, "boot saved: VMs like it now start from it in about a second")

    async def _start_ssh(self, host: str, port: int) -> None:
        """The SSH door on ``host:port``, with its host key from the state folder."""
        assert self.context is not None
        try:
            door = SshDoor(self.context, load_host_key(self.state_dir))
            await door.start(host, port)
        except SshDoorError as err:
            raise LabRuntimeError(str(err)) from err
        self.ssh = door

    async def _stop_ssh(self) -> None:
        if self.ssh is not None:
            await self.ssh.close()

    async def _flush_loop(self) -> None:
        """Each boot log reaches the disk at least once a second; each hub flushes in a
        worker thread, never in the loop that serves the consoles."""
        while True:
            await asyncio.sleep(1.0)  # a period, not a wait for an event
            for hub in self.hubs.values():
                hub.flush_log()

    # -- leaving -------------------------------------------------------------------------

    async def _stop_tasks(self) -> None:
        """Stop the server (graceful, then forced) and the flusher; the TaskGroup then ends."""
        if self._flusher is not None:
            self._flusher.cancel()
        for watcher in self._watchers:
            watcher.cancel()
        # Console clients first, while the audit log is open: each hears why it closes, and
        # the server then has no connection left to wait for. The hubs keep reading their
        # guests, so the last words of a graceful stop still reach the boot logs.
        for hub in self.hubs.values():
            hub.close_sessions()
        if self._server is None or self._server_task is None:
            return
        self._server.should_exit = True
        # asyncio.wait, not asyncio.timeout: this also runs while the task is being cancelled.
        done, _ = await asyncio.wait({self._server_task}, timeout=self.server_timeout + 2)
        if not done:
            log.warning("the HTTP server did not stop in time: closing its connections")
            self._server.force_exit = True
            self._server_task.cancel()

    async def _release_machines(self) -> None:
        """Stop running machines gracefully (unless forced), then deallocate every one, then
        close the hubs and boot logs (so the guests' last words are logged)."""
        if self.context is not None:  # power actions still running (their 202s) end first
            await self.context.operations.close()
        try:
            if not self._forced.is_set() and self.stop_timeout > 0:
                await self._stop_gracefully()
        finally:
            try:
                await asyncio.gather(
                    *(self._deallocate(name, m) for name, m in self.machines.items()),
                    return_exceptions=True,
                )
            finally:
                for hub in self.hubs.values():
                    hub.close()
                for bootlog in self.bootlogs.values():
                    bootlog.close()

    async def _stop_gracefully(self) -> None:
        running = {
            name: m
            for name, m in self.machines.items()
            if m.power_state in (PowerState.RUNNING, PowerState.PANICKED, PowerState.STARTING)
        }
        if not running:
            return

        async def stop(name: str, machine: Machine) -> None:
            self.on_progress(name, "stopping")
            try:
                await machine.stop(timeout=self.stop_timeout)
            except MachineError as err:
                log.warning("%s: graceful stop failed: %s", name, err)

        stopping = asyncio.ensure_future(asyncio.gather(*(stop(n, m) for n, m in running.items())))
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            await asyncio.wait(
                (stopping, forced),
                timeout=self.stop_timeout + 5,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            forced.cancel()
        if not stopping.done():
            log.warning("machines did not stop in time: deallocating them")
            stopping.cancel()
            await asyncio.wait({stopping}, timeout=self.stop_timeout)

    async def _deallocate(self, name: str, machine: Machine) -> None:
        try:
            await machine.deallocate()
        except Exception as err:
            log.error("%s: deallocate failed: %s", name, err)
            raise
        self.on_progress(name, "deallocated")


SEND_BUFFER = 256 * 1024


def _lock_state(state_dir: Path) -> int:
    """Hold ``state_dir/lock`` for this lab's life (the fd; closing it lets go). Two labs on
    one state folder would fight over its QEMUs: the second is refused, naming the first."""
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LabRuntimeError(
            f"the state folder {state_dir} is in use by another lab (pid {holder}): stop it, "
            "or give this one its own --state-dir (and --port)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _allowed_hosts(host: str) -> frozenset[str]:
    """Host names a loopback gateway answers to. Any other Host header is a page on another
    name that resolves here (DNS rebinding): it must not reach the lab's consoles."""
    return frozenset({"127.0.0.1", "localhost", "::1", host.strip("[]").lower()})


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: a console client's bytes in flight stay bounded
        # (loopback would otherwise buffer megabytes), so one that stops reading is noticed
        # by its session queue (and told to resume) instead of hiding in the kernel.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as err:
        raise LabRuntimeError(
            f"cannot listen on {host}:{port}: {err.strerror or err}"
            + (" (another lab may be running; pick another --port)" if port else "")
        ) from err
    return sock


def rfc2217_doors(config: LabConfig, inventory: Inventory) -> list[DoorSpec]:
    """The RFC 2217 doors the lab file opens, for the door (which knows no lab file): each
    VM's ``rfc2217_port``, and each scale-set instance's (the set's port plus the instance
    number)."""
    wanted: list[tuple[str, Rfc2217Door | None]] = [
        (vm.machine.name, vm.rfc2217) for vm in config.vms
    ]
    wanted += [(i.machine.name, i.rfc2217) for s in config.scale_sets for i in s.instances]
    specs = []
    for name, door in wanted:
        vm = inventory.by_machine_name(name)
        if door is not None and vm is not None and vm.hub is not None:
            specs.append(DoorSpec(vm, door.port, Role(door.role)))
    return specs
