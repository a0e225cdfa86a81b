"""The lab file (TOML) -> frozen, validated dataclasses. The format is in docs/lab-file.md.

``load_lab(path)`` reads a lab file (``load_default_lab()`` the one shipped in the package)
and returns a ``LabConfig``, or raises ``LabConfigError`` whose message names the file, the
key and what was expected: ``lab.toml: vms[2].os: expected one of linux, windows, got 'bsd'``.
Unknown keys are errors too (a typo must not be ignored silently).

Paths of files the lab reads (image, TLS) are relative to the lab file's folder; the state
folder is relative to the working directory, where ``serial-console lab run`` is started.

Exceptions::

    LabConfigError      the lab file cannot be read or says something invalid
"""

from __future__ import annotations

import builtins
import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.access import lockout, rbac
from gateway.access.rbac import RoleAssignment
from gateway.access.users import MIN_PASSWORD_LENGTH, User, password_weakness
from gateway.lab.errors import LabError
from gateway.lab.tls import CertificateError, check_certificate_pair
from gateway.machines.disk import DataDisk, DiskSpec
from gateway.machines.image import builtin_disk
from gateway.machines.provision import DEFAULT_TIMEOUT as DEFAULT_PROVISIONING_TIMEOUT
from gateway.machines.provision import OsProfile
from gateway.recordings.settings import (
    DEFAULT_SESSION_BYTES,
    DEFAULT_TOTAL_BYTES,
    RecordingSettings,
)

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?")
OS_TYPES = ("linux", "windows")
BACKENDS = ("qemu", "libvirt", "emulated")
PROVISIONING_STATES = ("Succeeded", "Creating", "Updating", "Failed")
# user names Azure refuses as a Linux VM's admin (its osProfile validation)
RESERVED_USERS = frozenset((
    "administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1",
    "1", "123", "a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david",
    "guest", "john", "owner", "root", "server", "sql", "support", "support_388945a0", "sys",
    "test2", "test3", "user4", "user5",
))  # fmt: skip
DEFAULT_SUBSCRIPTION = "5e71a1c0-0000-4000-8000-000000000001"
DEFAULT_TENANT = "5e71a1c0-0000-4000-8000-00000000ad00"
_GUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
DEFAULT_GUEST_PASSWORD = "serial-lab"


class LabConfigError(LabError):
    """The lab file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    name: str
    tenant_id: str = DEFAULT_TENANT  # the directory its users sign in to (azure-identity)


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    name: str
    location: str


@dataclass(frozen=True, slots=True)
class Image:
    """What a QEMU or libvirt guest boots: a kernel and initrd directly (None: the image
    ``make images`` builds), or, with ``disk``, firmware and a boot disk (a disk VM)."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    disk: DiskSpec | None = None


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What a backend needs to make one machine (a VM or a scale-set instance)."""

    name: str  # unique in the lab; names its bootdiag/ and run/ folders
    os: str
    backend: str
    memory_mb: int
    image: Image
    hostname: str
    password: str = field(repr=False)
    boot_delay: float
    output_rate: int | None
    uri: str | None = None  # libvirt's connection URI (backend "libvirt" only)
    warm_start: bool = True  # QEMU, libvirt: start from a saved boot (machines.warm)
    cpus: int = 1  # QEMU and libvirt: virtual CPUs
    os_profile: OsProfile | None = None  # a disk VM provisioned by its cloud-init


@dataclass(frozen=True, slots=True)
class Rfc2217Door:
    """An RFC 2217 (telnet COM port) door onto one machine's console, on 127.0.0.1:``port``;
    its clients are console sessions in ``role`` (``writer`` or ``watcher``)."""

    port: int
    role: str = "writer"


@dataclass(frozen=True, slots=True)
class VmConfig:
    """One virtual machine and the prerequisite flags Azure checks before a connect."""

    name: str
    resource_group: str
    machine: MachineSpec
    boot_diagnostics: bool = True
    provisioning_state: str = "Succeeded"
    serial_port_enabled: bool = True
    rfc2217: Rfc2217Door | None = None  # off unless the lab file opens it


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """One scale-set instance: ``{set}_{n}`` as a machine, ``n`` as its instance id."""

    instance_id: str
    latest_model: bool
    machine: MachineSpec
    rfc2217: Rfc2217Door | None = None  # the scale set's rfc2217_port + the instance number


@dataclass(frozen=True, slots=True)
class ScaleSetConfig:
    """A VM scale set: ``capacity`` instances numbered from 0, made from one model."""

    name: str
    resource_group: str
    capacity: int
    boot_diagnostics: bool  # in the scale set's model
    instances: tuple[InstanceConfig, ...]
    provisioning_state: str = "Succeeded"
    serial_port_enabled: bool = True


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8400
    tls_cert: Path | None = None  # the user's certificate and key: they win over lab_ca
    tls_key: Path | None = None
    lab_ca: bool = False  # ``tls = true``: serve with a certificate from the lab's own CA
    idle_timeout: float = 0.0  # 0: off (Azure documents none)
    replay_bytes: int = 65536
    bootlog_bytes: int = 1 << 20
    token_lifetime: float = 3600.0
    allowed_origins: tuple[str, ...] = ()  # browser pages besides the gateway's own
    ssh_port: int = 0  # the SSH door's port, on ``host``; 0: off

    @property
    def tls(self) -> bool:
        """Whether the gateway serves HTTPS and WSS (the user's certificate or the lab's)."""
        return self.tls_cert is not None or self.lab_ca

    @property
    def loopback(self) -> bool:
        """True when ``host`` only listens on this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """``[access]``: sign-in protection (Entra ID's smart lockout, kept in memory)."""

    lockout_threshold: int = lockout.DEFAULT_THRESHOLD  # failed sign-ins before a lockout
    lockout_duration: float = lockout.DEFAULT_DURATION  # seconds; doubles on each repeat


@dataclass(frozen=True, slots=True)
class LabConfig:
    """A whole lab, as the lab file (and the command line) describe it."""

    source: str
    subscription: Subscription
    resource_groups: tuple[ResourceGroup, ...]
    vms: tuple[VmConfig, ...]
    scale_sets: tuple[ScaleSetConfig, ...]
    users: tuple[User, ...]
    gateway: GatewaySettings
    state_dir: Path
    access: AccessSettings = AccessSettings()
    recordings: RecordingSettings = field(default_factory=RecordingSettings)

    def machine_specs(self) -> Iterator[MachineSpec]:
        """Every machine of the lab: the VMs, then each scale set's instances."""
        for vm in self.vms:
            yield vm.machine
        for scale_set in self.scale_sets:
            for instance in scale_set.instances:
                yield instance.machine

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        state_dir: Path | None = None,
        tls: bool = False,
        ssh_port: int | None = None,
        cold: bool = False,
    ) -> LabConfig:
        """This lab with the command line's ``--host``, ``--port``, ``--state-dir``,
        ``--tls`` and ``--ssh-port`` applied (``--tls`` turns the lab CA on; a certificate
        of the lab file's still wins)."""
        settings = self.gateway
        if tls:
            settings = dataclasses.replace(settings, lab_ca=True)
        if host is not None:
            settings = dataclasses.replace(settings, host=host)
        if port is not None:
            if not 0 <= port <= 65535:
                raise LabConfigError(f"--port: expected 0..65535, got {port}")
            settings = dataclasses.replace(settings, port=port)
        if ssh_port is not None:
            if not 0 <= ssh_port <= 65535:
                raise LabConfigError(f"--ssh-port: expected 0..65535 (0: off), got {ssh_port}")
            settings = dataclasses.replace(settings, ssh_port=ssh_port)
        lab = dataclasses.replace(
            self, gateway=settings, state_dir=state_dir if state_dir is not None else self.state_dir
        )
        return lab.all_cold() if cold else lab

    def all_cold(self) -> LabConfig:
        """This lab with every machine booting cold (``--cold``): no warm starts."""

        def cold(spec: MachineSpec) -> MachineSpec:
            return dataclasses.replace(spec, warm_start=False)

        vms = tuple(dataclasses.replace(vm, machine=cold(vm.machine)) for vm in self.vms)
        sets = tuple(
            dataclasses.replace(
                vmss,
                instances=tuple(
                    dataclasses.replace(i, machine=cold(i.machine)) for i in vmss.instances
                ),
            )
            for vmss in self.scale_sets
        )
        return dataclasses.replace(self, vms=vms, scale_sets=sets)

    def exposure_problems(self) -> list[str]:
        """Why this lab must not listen beyond loopback; empty when it may (or it does not).

        One line per user whose password is guessable (``password_weakness``: its name,
        never the password), then TLS if it is off."""
        if self.gateway.loopback:
            return []
        problems = []
        for user in self.users:
            weakness = password_weakness(user)
            if weakness is not None:
                problems.append(f"user '{user.name}' {weakness}")
        if not self.gateway.tls:
            problems.append("TLS is off (run with --tls, or set tls = true in [gateway])")
        return problems

    def exposure_refusal(self) -> str | None:
        """The message that stops a lab exposed beyond loopback, or None when it may run."""
        problems = self.exposure_problems()
        if not problems:
            return None
        advice = []
        if any(p.startswith("user ") for p in problems):
            advice.append(
                f"give those users strong passwords in the lab file (at least "
                f"{MIN_PASSWORD_LENGTH} characters, not their name, not a common password)"
            )
        if not self.gateway.tls:
            advice.append("turn TLS on")
        todo = ", ".join(advice)
        return (
            f"refusing to listen on {self.gateway.host}, beyond this machine: "
            + "; ".join(problems)
            + f". {todo[:1].upper()}{todo[1:]}, or listen on 127.0.0.1."
        )


def load_default_lab() -> LabConfig:
    """The lab shipped in the package (``gateway/lab/default.toml``)."""
    ref = resources.files("gateway.lab").joinpath("default.toml")
    return parse_lab(ref.read_text(encoding="utf-8"), source="default.toml", base=Path.cwd())


def load_lab(path: Path | str) -> LabConfig:
    """Read and validate the lab file at ``path``. Raises LabConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise LabConfigError(f"{path}: cannot read the lab file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise LabConfigError(f"{path}: the lab file is not UTF-8 text") from err
    return parse_lab(text, source=str(path), base=path.parent)


def parse_lab(text: str, *, source: str, base: Path) -> LabConfig:
    """Validate the TOML ``text`` of a lab file; ``base`` anchors its relative file paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LabConfigError(f"{source}: not valid TOML: {err}") from err
    return _Parser(source, base).lab(_Table(data, source, ""))


class _Table:
    """A TOML table being read: typed getters whose errors name the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: str, path: str) -> None:
        self.data, self.source, self.path = data, source, path
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, expected: str, got: Any = ...) -> LabConfigError:
        tail = "" if got is ... else f", got {got!r}"
        return LabConfigError(f"{self.source}: {self.key(name)}: expected {expected}{tail}")

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any) -> Any:
        self.read.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.fail(name, f"{expected} (the key is required)")
            return default
        value = self.data[name]
        # bool is an int in Python; a TOML true is never a number here.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise self.fail(name, expected, value)
        return value

    def str(self, name: str, default: Any = None, *, choices: tuple[str, ...] = ()) -> Any:
        expected = f"one of {', '.join(choices)}" if choices else "a string"
        value = self.get(name, str, expected, default)
        if choices and value is not None and value not in choices:
            raise self.fail(name, expected, value)
        return value

    def name(self, name: builtins.str) -> builtins.str:
        value = self.str(name, _REQUIRED)
        if not NAME_RE.fullmatch(value):
            raise self.fail(
                name,
                "a name of 1 to 64 letters, digits, '_', '.' or '-' that starts with a letter "
                "or digit and does not end with '.' or '-'",
                value,
            )
        return value

    def int(self, name: builtins.str, default: Any, lo: builtins.int, hi: builtins.int) -> Any:
        value = self.get(name, int, f"an integer in {lo}..{hi}", default)
        if value is not None and not lo <= value <= hi:
            raise self.fail(name, f"an integer in {lo}..{hi}", value)
        return value

    def number(self, name: builtins.str, default: float, lo: float, hi: float) -> float:
        value = self.get(name, (int, float), f"a number in {lo}..{hi}", default)
        if not lo <= value <= hi:
            raise self.fail(name, f"a number in {lo}..{hi}", value)
        return float(value)

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        return self.get(name, bool, "true or false", default)

    def table(self, name: builtins.str) -> _Table:
        value = self.get(name, dict, "a table", {})
        return _Table(value, self.source, self.key(name))

    def tables(self, name: builtins.str) -> list[_Table]:
        value = self.get(name, list, "an array of tables", [])
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise LabConfigError(
                    f"{self.source}: {self.key(name)}[{index}]: expected a table, got {item!r}"
                )
            out.append(_Table(item, self.source, f"{self.key(name)}[{index}]"))
        return out

    def done(self) -> None:
        """Reject keys nobody asked for: they are typos or unsupported settings."""
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise LabConfigError(
                f"{self.source}: {self.key(unknown[0])}: unknown key (expected one of {known})"
            )


_REQUIRED = object()


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class _Parser:
    def __init__(self, source: str, base: Path) -> None:
        self.source, self.base = source, base

    def lab(self, top: _Table) -> LabConfig:
        sub_t = top.table("subscription")
        subscription = Subscription(
            id=sub_t.str("id", DEFAULT_SUBSCRIPTION),
            name=sub_t.str("name", "Serial Console Lab"),
            tenant_id=sub_t.str("tenant_id", DEFAULT_TENANT),
        )
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", subscription.id):
            raise sub_t.fail("id", "a subscription id such as a GUID", subscription.id)
        if not _GUID.fullmatch(subscription.tenant_id):
            expected = f"a GUID such as {DEFAULT_TENANT}"
            raise sub_t.fail("tenant_id", expected, subscription.tenant_id)
        sub_t.done()
        guest_t = top.table("guest")
        guest_password = self.guest_password(guest_t, "password", DEFAULT_GUEST_PASSWORD)
        guest_t.done()
        settings = self.gateway(top.table("gateway"))
        access = self.access(top.table("access"))
        recordings = self.recordings(top.table("recordings"))
        state_dir = Path(top.str("state_dir", ".lab"))

        groups: list[ResourceGroup] = []
        for t in top.tables("resource_groups"):
            groups.append(ResourceGroup(t.name("name"), t.str("location", "local")))
            t.done()
        self.unique(top, "resource_groups", [g.name for g in groups])
        group_names = {g.name.lower(): g.name for g in groups}

        vms = tuple(self.vm(t, group_names, guest_password) for t in top.tables("vms"))
        self.unique(top, "vms", [(vm.resource_group + "/" + vm.name) for vm in vms])
        sets = tuple(
            self.scale_set(t, group_names, guest_password) for t in top.tables("scale_sets")
        )
        self.unique(top, "scale_sets", [(s.resource_group + "/" + s.name) for s in sets])
        machines = [vm.machine.name for vm in vms] + [
            i.machine.name for s in sets for i in s.instances
        ]
        self.unique(top, "vms", machines, what="machine name (VM names and '{set}_{n}')")
        doors = [vm.rfc2217 for vm in vms] + [i.rfc2217 for s in sets for i in s.instances]
        ports = [str(door.port) for door in doors if door is not None]
        self.unique(top, "vms", ports, what="rfc2217_port (one per VM and instance)")

        lab = LabConfig(
            source=self.source,
            subscription=subscription,
            resource_groups=tuple(groups),
            vms=vms,
            scale_sets=sets,
            users=(),
            gateway=settings,
            state_dir=state_dir,
            access=access,
            recordings=recordings,
        )
        users = tuple(self.user(t, lab) for t in top.tables("users"))
        self.unique(top, "users", [u.name for u in users], fold=False)
        top.done()
        return dataclasses.replace(lab, users=users)

    def unique(
        self, top: _Table, key: str, names: list[str], what: str = "name", fold: bool = True
    ) -> None:
        seen: set[str] = set()
        for name in names:
            folded = name.lower() if fold else name
            if folded in seen:
                raise LabConfigError(f"{self.source}: {key}: {what} {name!r} is used twice")
            seen.add(folded)

    def path(self, t: _Table, name: str) -> Path | None:
        value = t.str(name)
        return None if value in (None, "") else (self.base / value)

    def gateway(self, t: _Table) -> GatewaySettings:
        settings = GatewaySettings(
            host=t.str("host", "127.0.0.1"),
            port=t.int("port", 8400, 0, 65535),
            tls_cert=self.path(t, "tls_cert"),
            tls_key=self.path(t, "tls_key"),
            lab_ca=t.bool("tls", False),
            idle_timeout=t.number("idle_timeout", 0.0, 0.0, 7 * 86400.0),
            replay_bytes=t.int("replay_bytes", 65536, 0, 64 << 20),
            bootlog_bytes=t.int("bootlog_bytes", 1 << 20, 4096, 1 << 30),
            token_lifetime=t.number("token_lifetime", 3600.0, 1.0, 30 * 86400.0),
            allowed_origins=self.origins(t),
            ssh_port=t.int("ssh_port", 0, 0, 65535),
        )
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise t.fail("tls_key", "tls_cert and tls_key given together (or neither)")
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.certificate(t, settings.tls_cert, settings.tls_key)
        t.done()
        return settings

    def access(self, t: _Table) -> AccessSettings:
        settings = AccessSettings(
            lockout_threshold=t.int("lockout_threshold", lockout.DEFAULT_THRESHOLD, 0, 1000),
            lockout_duration=t.number(
                "lockout_duration", lockout.DEFAULT_DURATION, 0.1, lockout.CEILING
            ),
        )
        t.done()
        return settings

    def recordings(self, t: _Table) -> RecordingSettings:
        """``[recordings]``: on by default; typed bytes only with ``record_input = true``."""
        settings = RecordingSettings(
            enabled=t.bool("enabled", True),
            record_input=t.bool("record_input", False),
            session_bytes=t.int("session_bytes", DEFAULT_SESSION_BYTES, 4096, 1 << 40),
            total_bytes=t.int("total_bytes", DEFAULT_TOTAL_BYTES, 4096, 1 << 50),
        )
        t.done()
        return settings

    def certificate(self, t: _Table, cert: Path, key: Path) -> None:
        """The user's certificate and key: existing files, PEM, a pair."""
        for name, path in (("tls_cert", cert), ("tls_key", key)):
            if not path.is_file():
                raise t.fail(
                    name, "an existing PEM file (paths are relative to the lab file)", str(path)
                )
        try:
            check_certificate_pair(cert, key)
        except CertificateError as err:
            raise LabConfigError(f"{self.source}: {t.key(err.key)}: {err}") from err

    def origins(self, t: _Table) -> tuple[str, ...]:
        expected = 'an array of origins such as "https://portal.example:8443"'
        values = t.get("allowed_origins", list, expected, [])
        for value in values:
            if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s]+", value):
                raise t.fail("allowed_origins", expected, value)
        return tuple(values)

    def guest_password(self, t: _Table, key: str, default: str) -> str:
        """A guest root password (QEMU hands it over through fw_cfg, never a command line):
        printable ASCII. A refusal never repeats it."""
        value: str = t.str(key, default)
        if not re.fullmatch(r"[ -~]{1,64}", value):
            raise t.fail(key, "1-64 printable ASCII characters", "a password (not shown)")
        return value

    def hostname(self, t: _Table, name: str) -> str:
        """The guest's host name: ``hostname``, or the VM's name made into one."""
        default = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:63] or "lab-guest"
        value: str = t.str("hostname", default)
        if not re.fullmatch(r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise t.fail("hostname", "a host name (letters, digits, '-', at most 63)", value)
        return value

    def group_of(self, t: _Table, groups: dict[str, str]) -> str:
        """The group's name as its [[resource_groups]] entry spells it (ARM names are
        case-insensitive: ``LAB-RG`` is ``lab-rg``)."""
        group = t.name("resource_group")
        if group.lower() not in groups:
            raise t.fail("resource_group", "the name of a [[resource_groups]] entry", group)
        return groups[group.lower()]

    def machine(
        self, t: _Table, name: str, hostname: str, guest_password: str
    ) -> tuple[MachineSpec, dict[str, Any]]:
        image_t = t.table("image")
        backend = t.str("backend", "emulated", choices=BACKENDS)
        uri = self.libvirt_uri(t, backend)
        remote = uri is not None and bool(urlsplit(uri).netloc)  # paths on another host
        disk = self.disk(t, image_t, remote)
        image = Image(
            kernel=self.path(image_t, "kernel"),
            initrd=self.path(image_t, "initrd"),
            append=image_t.str("append", ""),
            disk=disk,
        )
        if disk is not None and (image.kernel or image.initrd or image.append):
            raise image_t.fail("disk", "either disk or kernel/initrd/append, not both")
        for key, path in (("kernel", image.kernel), ("initrd", image.initrd)):
            if path is not None and not remote and not path.is_file():
                raise image_t.fail(
                    key, "an existing file (paths are relative to the lab file)", str(path)
                )
        image_t.done()
        spec = MachineSpec(
            name=name,
            os=t.str("os", "linux", choices=OS_TYPES),
            backend=backend,
            memory_mb=t.int("memory_mb", 512 if disk else 128, 16, 65536),
            cpus=t.int("cpus", 2 if disk else 1, 1, 16),
            image=image,
            hostname=hostname,
            password=self.guest_password(t, "password", guest_password),
            boot_delay=t.number("boot_delay", 0.0, 0.0, 600.0),
            output_rate=t.int("output_rate", None, 1, 1 << 30),
            uri=uri,
            warm_start=t.bool("warm_start", True),
            os_profile=self.os_profile(t, hostname),
        )
        if spec.os_profile is not None and (disk is None or backend != "qemu"):
            raise t.fail(
                "os_profile",
                'backend = "qemu" and an [image] disk beside it (cloud-init provisions a disk '
                "VM; libvirt and emulated VMs take password instead)",
            )
        if spec.backend in ("qemu", "libvirt") and spec.os != "linux":
            raise t.fail(
                "backend", "emulated for a windows VM (QEMU guests are Linux)", spec.backend
            )
        if disk is not None and spec.backend == "emulated":
            raise t.fail("backend", "qemu or libvirt beside [image] disk", spec.backend)
        if disk is not None and disk.tpm and spec.backend == "libvirt":
            raise t.fail("backend", 'qemu beside [image] tpm = true (a vTPM is QEMU\'s only)',
                         spec.backend)  # fmt: skip
        if spec.os_profile is not None and "provisioning_state" in t.data:
            raise t.fail(
                "provisioning_state",
                "no provisioning_state beside os_profile (the guest's cloud-init reports it)",
            )
        flags = {
            "provisioning_state": t.str(
                "provisioning_state", "Succeeded", choices=PROVISIONING_STATES
            ),
            "serial_port_enabled": t.bool("serial_port_enabled", True),
            "boot_diagnostics": t.bool("boot_diagnostics", True),
        }
        return spec, flags

    def os_profile(self, t: _Table, hostname: str) -> OsProfile | None:
        """``[os_profile]``: what Azure's ``osProfile`` hands a new Linux VM's cloud-init."""
        if "os_profile" not in t.data:
            return None
        p = t.table("os_profile")
        user = p.str("admin_username", _REQUIRED)
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user) or user in RESERVED_USERS:
            raise p.fail(
                "admin_username",
                "a Linux user name (lower case, at most 32) that Azure allows (not root, admin...)",
                user,
            )
        password: str | None = p.str("admin_password", None)
        if password is not None and not re.fullmatch(r"[ -~]{6,72}", password):
            raise p.fail(
                "admin_password", "6-72 printable ASCII characters", "a password (not shown)"
            )
        keys = p.get("ssh_public_keys", list, "an array of SSH public keys", [])
        for key in keys:
            if not isinstance(key, str) or len(key.split()) < 2 or not key.startswith("ssh-"):
                raise p.fail("ssh_public_keys", "SSH public keys such as 'ssh-ed25519 AAAA... me'",
                             key)  # fmt: skip
        if password is None and not keys:
            raise p.fail(
                "admin_password", "an admin_password or ssh_public_keys (a VM needs a way in)"
            )
        key_only = p.bool("disable_password_authentication", password is None)
        if key_only and not keys:
            raise p.fail(
                "ssh_public_keys", "at least one key when password authentication is disabled"
            )
        if not key_only and password is None:
            raise p.fail("admin_password", "a password when password authentication is enabled")
        computer = p.str("computer_name", hostname)
        if not re.fullmatch(r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", computer):
            raise p.fail(
                "computer_name", "a host name (letters, digits, '-', at most 63)", computer
            )
        custom = p.str("custom_data", None)
        if custom is not None and len(custom.encode()) > 65535:
            raise p.fail(
                "custom_data", "at most 64 KiB (Azure's limit)", f"{len(custom)} characters"
            )
        profile = OsProfile(
            admin_username=user,
            computer_name=computer,
            admin_password=None if key_only else password,
            ssh_public_keys=tuple(keys),
            custom_data=custom,
            disable_password_authentication=key_only,
            timeout=p.number("provisioning_timeout", DEFAULT_PROVISIONING_TIMEOUT, 10.0, 3600.0),
        )
        p.done()
        return profile

    def disk(self, t: _Table, image_t: _Table, remote: bool) -> DiskSpec | None:
        """``[image]`` ``disk`` (a file, or a built image's name: ``debian-12-gen1``,
        ``debian-12-gen2``), ``generation``, ``secure_boot``, ``tpm``; ``[[data_disks]]``
        (``size_gb`` or ``file``); ``ssh_port`` (0: picked at start)."""
        value = image_t.str("disk", None)
        data_t = t.tables("data_disks")
        ssh_port = t.int("ssh_port", None, 0, 65535)
        if value in (None, ""):
            for key in ("generation", "secure_boot", "tpm"):
                if key in image_t.data:
                    raise image_t.fail(key, "disk beside it (only a disk VM has firmware)")
            if data_t or ssh_port is not None:
                what = "data_disks" if data_t else "ssh_port"
                raise t.fail(what, "[image] disk beside it (only a disk VM has disks and a NIC)")
            return None
        builtin = builtin_disk(value)
        path = builtin.path if builtin else self.base / value
        if builtin is None and not remote and not path.is_file():
            raise image_t.fail(
                "disk",
                "an existing qcow2, raw or fixed VHD file (relative to the lab file), or "
                "debian-12-gen1 / debian-12-gen2 (the images `make images` builds)",
                value,
            )
        implied = builtin.generation if builtin else 2
        generation = image_t.int("generation", implied, 1, 2)
        if builtin and generation != builtin.generation:
            raise image_t.fail("generation", f"{builtin.generation} for {value}", generation)
        secure_boot = image_t.bool("secure_boot", False)
        if secure_boot and generation != 2:
            raise image_t.fail("secure_boot", "generation = 2 beside it (Secure Boot is UEFI's)")
        data = []
        for d in data_t:
            size, file = d.int("size_gb", None, 1, 4096), self.path(d, "file")
            if (size is None) == (file is None):
                raise d.fail("size_gb", "either size_gb (a new empty disk) or file")
            if file is not None and not remote and not file.is_file():
                raise d.fail("file", "an existing disk image (relative to the lab file)", str(file))
            d.done()
            data.append(DataDisk(size_gb=size, file=file))
        return DiskSpec(
            image=path,
            generation=generation,
            secure_boot=secure_boot,
            tpm=image_t.bool("tpm", False),
            data_disks=tuple(data),
            ssh_port=ssh_port or 0,
        )

    def libvirt_uri(self, t: _Table, backend: str) -> str | None:
        """``uri`` (libvirt's connection URI; ``qemu:///system`` by default), only beside
        ``backend = "libvirt"``. Image paths on a remote host are that host's: not checked."""
        uri: str | None = t.str("uri", None)
        if backend != "libvirt":
            if uri is not None:
                raise t.fail("uri", 'backend = "libvirt" beside it (only libvirt takes a URI)')
            return None
        uri = uri or "qemu:///system"
        if not re.fullmatch(
            r"qemu(\+(ssh|tls|tcp|unix|libssh|libssh2))?://[^\s]*/(system|session)"
            r"(\?[^\s]*)?",
            uri,
        ):
            raise t.fail(
                "uri",
                "a libvirt QEMU URI such as qemu:///system or qemu+ssh://user@host/system",
                uri,
            )
        return uri

    def vm(self, t: _Table, groups: dict[str, str], guest_password: str) -> VmConfig:
        name = t.name("name")
        group = self.group_of(t, groups)
        hostname = self.hostname(t, name)
        spec, flags = self.machine(t, name, hostname, guest_password)
        door = self.rfc2217(t, 1)
        t.done()
        return VmConfig(name=name, resource_group=group, machine=spec, rfc2217=door, **flags)

    def rfc2217(self, t: _Table, count: int) -> Rfc2217Door | None:
        """``rfc2217_port`` (off when absent; ``count`` ports from it, one per instance)
        and ``rfc2217_role``."""
        port = t.int("rfc2217_port", None, 1, 65536 - max(count, 1))
        role = t.str("rfc2217_role", None, choices=("writer", "watcher"))
        if port is None:
            if role is not None:
                raise t.fail("rfc2217_role", "rfc2217_port beside it (the door is off without)")
            return None
        return Rfc2217Door(port, role or "writer")

    def scale_set(self, t: _Table, groups: dict[str, str], guest_password: str) -> ScaleSetConfig:
        name = t.name("name")
        group = self.group_of(t, groups)
        capacity = t.int("capacity", 2, 0, 1000)
        latest = t.get("latest_model", list, "an array of instance numbers", None)
        if latest is None:
            latest = list(range(capacity))
        for n in latest:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < capacity:
                raise t.fail("latest_model", f"instance numbers in 0..{capacity - 1}", n)
        instances = []
        spec, flags = self.machine(t, name, name, guest_password)
        door = self.rfc2217(t, capacity)
        for n in range(capacity):
            hostname = f"{name}{_base36(n):0>6}"
            machine = dataclasses.replace(spec, name=f"{name}_{n}", hostname=hostname)
            if spec.os_profile is not None:  # the model's computer name is a prefix
                prefix = spec.os_profile.computer_name
                profile = dataclasses.replace(
                    spec.os_profile, computer_name=f"{prefix}{_base36(n):0>6}"
                )
                machine = dataclasses.replace(machine, os_profile=profile)
            disk = spec.image.disk
            if disk is not None and disk.ssh_port:  # one forwarded port per instance
                own_disk = dataclasses.replace(disk, ssh_port=disk.ssh_port + n)
                machine = dataclasses.replace(
                    machine, image=dataclasses.replace(spec.image, disk=own_disk)
                )
            own = dataclasses.replace(door, port=door.port + n) if door else None
            instances.append(InstanceConfig(str(n), n in latest, machine, own))
        t.done()
        return ScaleSetConfig(
            name=name,
            resource_group=group,
            capacity=capacity,
            instances=tuple(instances),
            **flags,
        )

    def user(self, t: _Table, lab: LabConfig) -> User:
        name = t.name("name")
        password = t.str("password")
        if password == "":
            raise t.fail("password", "a password (or leave the key out for SSH keys only)", "")
        keys = t.get("ssh_keys", list, "an array of SSH public keys", [])
        for key in keys:
            if not isinstance(key, str) or len(key.split()) < 2:
                raise t.fail("ssh_keys", "SSH public keys such as 'ssh-ed25519 AAAA... me'", key)
        roles = []
        for r in t.tables("roles"):
            role = r.str("role", _REQUIRED)
            try:
                role = rbac.role_named(role).name
            except KeyError as err:
                raise r.fail("role", str(err.args[0]).split("expected ", 1)[1], role) from None
            roles.append(RoleAssignment(role, self.scope(r, lab)))
            r.done()
        t.done()
        return User(name=name, password=password, ssh_keys=tuple(keys), roles=tuple(roles))

    def scope(self, r: _Table, lab: LabConfig) -> str:
        """A role's scope: ``subscription``, ``resourceGroups/{rg}[/virtualMachines/{vm}|
        /virtualMachineScaleSets/{set}[/virtualMachines/{n}]]`` or a full ARM id."""
        text = r.str("scope", _REQUIRED)
        sub = lab.subscription.id
        expected = (
            "'subscription', 'resourceGroups/{rg}', 'resourceGroups/{rg}/virtualMachines/{vm}', "
            "'resourceGroups/{rg}/virtualMachineScaleSets/{set}[/virtualMachines/{n}]' "
            "or a full ARM id, naming resources of this lab"
        )
        parts = [p for p in text.strip().split("/") if p]
        if parts[:2] and parts[0].lower() == "subscriptions":
            if len(parts) < 2 or parts[1].lower() != sub.lower():
                raise r.fail("scope", expected, text)
            parts = parts[2:]
            if len(parts) >= 4 and parts[2].lower() == "providers":
                compute = parts[3].lower() == "microsoft.compute"
                parts = parts[:2] + parts[4:] if compute else ["?"]
        elif parts in (["subscription"], []):
            parts = []
        lowered = [p.lower() for p in parts]
        if not parts:
            return rbac.subscription_scope(sub)
        if len(parts) < 2 or lowered[0] != "resourcegroups":
            raise r.fail("scope", expected, text)
        group = next((g.name for g in lab.resource_groups if g.name.lower() == lowered[1]), None)
        if group is None:
            raise r.fail("scope", expected, text)
        if len(parts) == 2:
            return rbac.resource_group_scope(sub, group)
        if len(parts) == 4 and lowered[2] == "virtualmachines":
            vm = next(
                (v for v in lab.vms if v.resource_group == group and v.name.lower() == lowered[3]),
                None,
            )
            if vm is not None:
                return rbac.vm_scope(sub, group, vm.name)
        if len(parts) in (4, 6) and lowered[2] == "virtualmachinescalesets":
            vmss = next(
                (
                    s
                    for s in lab.scale_sets
                    if s.resource_group == group and s.name.lower() == lowered[3]
                ),
                None,
            )
            if vmss is not None and len(parts) == 4:
                return rbac.scale_set_scope(sub, group, vmss.name)
            if (
                vmss is not None
                and lowered[4] == "virtualmachines"
                and any(i.instance_id == parts[5] for i in vmss.instances)
            ):
                return rbac.instance_scope(sub, group, vmss.name, parts[5])
        raise r.fail("scope", expected, text)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, rem = divmod(n, 36)
        out = digits[rem] + out
        if n == 0:
            return out
