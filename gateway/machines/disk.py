"""Disk VMs: what a QEMU guest that boots from a disk needs besides QEMU itself.

A disk VM is what people take to Azure: firmware, a bootloader on a disk, an init system.

==============  ==============================================================================
generation 1    BIOS: SeaBIOS on QEMU's ``pc`` machine, its serial console on (so the boot
                log starts with the firmware's own bytes, as a Gen1 VM's does)
generation 2    UEFI: OVMF on ``q35``; its variables in a copy per VM. ``secure_boot``: OVMF's
                Secure Boot build with Microsoft's keys enrolled (the ``.ms`` variables),
                SMM on. ``tpm``: a TPM 2.0 from ``swtpm``, its state kept per VM
==============  ==============================================================================

Disks: the base image (qcow2, raw, a fixed VHD as Azure exports an OS disk, or VHDX; the
format is read from the file, since ``qemu-img info`` calls a fixed VHD "raw") is never
written. Each VM writes to its own copy-on-write overlay in its disk folder; ``reimage``
throws the overlay (and the firmware's variables) away, so the next start is the image as
built. Data disks are overlays on a file, or new empty qcow2 disks of a size.

The NIC is QEMU's user-mode network with ``restrict=on``: the guest reaches nothing outside
QEMU (no host, no internet), and its SSH port is forwarded from a port on 127.0.0.1 (the
port asked for, or one the kernel picks; ``ssh_port`` reports it once the VM runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.machines.agent import AgentCommands
from gateway.machines.base import MachineBase, MachineLaunchError, MachineStateError, PowerState
from gateway.machines.process import die_with_parent
from gateway.machines.provision import Provisioning

OVMF_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/ovmf"), Path("/usr/share/qemu"))
SERCON_FW_CFG = "etc/sercon-port"  # SeaBIOS's serial console: the port's I/O address
COM1 = 0x3F8
SWTPM = "swtpm"


class DiskError(MachineLaunchError):
    """A disk VM's disk, firmware or TPM could not be prepared (the message says why)."""


@dataclass(frozen=True, slots=True)
class DataDisk:
    """A data disk: an overlay on ``file``, or a new empty disk of ``size_gb``."""

    size_gb: int | None = None
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """A disk VM's boot disk and firmware (see the module docstring)."""

    image: Path
    generation: int = 2
    secure_boot: bool = False
    tpm: bool = False
    data_disks: tuple[DataDisk, ...] = field(default_factory=tuple)
    ssh_port: int = 0  # on 127.0.0.1; 0: one the kernel picks when the VM starts

    @property
    def hyper_v_generation(self) -> str:
        """As Azure's instance view names it: ``V1`` or ``V2``."""
        return f"V{self.generation}"


def detect_format(path: Path) -> str:
    """QEMU's name for the format of the image at ``path``: ``qcow2``, ``vpc`` (a VHD, fixed
    or dynamic: its footer, or its header copy, starts with ``conectix``), ``vhdx`` or
    ``raw``. Raises DiskError if the file cannot be read."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            size = file.seek(0, os.SEEK_END)
            tail = b""
            if size >= 512:
                file.seek(size - 512)
                tail = file.read(8)
    except OSError as err:
        raise DiskError(f"cannot read the disk image {path}: {err.strerror or err}") from err
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head == b"vhdxfile":
        return "vhdx"
    if tail == b"conectix" or head == b"conectix":
        return "vpc"
    return "raw"


def firmware_file(*names: str) -> Path:
    """The first of ``names`` found in the places distributions keep OVMF; DiskError with
    the package to install when none is there."""
    for folder in OVMF_DIRS:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise DiskError(
        f"UEFI firmware {names[0]} not found in {', '.join(map(str, OVMF_DIRS))}: a generation 2 "
        "VM needs OVMF (sudo apt-get install ovmf)"
    )


class DiskSet:
    """A disk VM's own files in ``folder``: the OS disk's overlay, data disks, the UEFI
    variables and the TPM's state. ``prepare`` makes what is missing; ``discard`` (reimage)
    removes them all."""

    def __init__(self, spec: DiskSpec, folder: Path, *, qemu_img: str = "qemu-img") -> None:
        self.spec = spec
        self.folder = Path(folder)
        self.qemu_img = qemu_img
        self.base_format = ""

    @property
    def os_disk(self) -> Path:
        return self.folder / "os.qcow2"

    @property
    def uefi_vars(self) -> Path:
        return self.folder / "uefi-vars.fd"

    @property
    def tpm_state(self) -> Path:
        return self.folder / "tpm"

    def data_disk(self, index: int) -> Path:
        return self.folder / f"data-{index}.qcow2"

    async def prepare(self, *, os_backing: Path | None = None) -> None:
        """Make the overlays and the firmware's variables that do not exist yet.
        ``os_backing`` (a qcow2 that itself sits on the image) replaces the image as the OS
        disk's backing file: a warm start's frozen disk."""
        image = self.spec.image
        if not image.is_file():
            raise DiskError(f"the disk image {image} does not exist")
        self.base_format = detect_format(image)
        self.folder.mkdir(parents=True, exist_ok=True)
        if os_backing is not None:
            self.os_disk.unlink(missing_ok=True)
            await self._overlay(self.os_disk, os_backing, "qcow2")
        elif not self.os_disk.exists():
            await self._overlay(self.os_disk, image, self.base_format)
        for index, disk in enumerate(self.spec.data_disks):
            path = self.data_disk(index)
            if path.exists():
                continue
            if disk.file is not None:
                await self._overlay(path, disk.file, detect_format(disk.file))
            else:
                await self._run(self.qemu_img, "create", "-q", "-f", "qcow2", str(path),
                                f"{disk.size_gb}G")  # fmt: skip
        if self.spec.generation == 2 and not self.uefi_vars.exists():
            names = ("OVMF_VARS_4M.ms.fd",) if self.spec.secure_boot else ("OVMF_VARS_4M.fd",)
            shutil.copyfile(firmware_file(*names), self.uefi_vars)
        if self.spec.tpm:
            self.tpm_state.mkdir(exist_ok=True)

    def firmware_code(self) -> Path:
        """A Gen2 VM's UEFI code (read only): OVMF's secure-boot build with Secure Boot."""
        if self.spec.secure_boot:
            return firmware_file("OVMF_CODE_4M.secboot.fd", "OVMF_CODE_4M.ms.fd")
        return firmware_file("OVMF_CODE_4M.fd", "OVMF_CODE.fd")

    def discard(self) -> None:
        """Reimage: every file of this VM's disks goes; the next ``prepare`` starts anew."""
        shutil.rmtree(self.folder, ignore_errors=True)

    async def _overlay(self, path: Path, backing: Path, backing_format: str) -> None:
        tmp = path.with_suffix(".tmp")
        await self._run(self.qemu_img, "create", "-q", "-f", "qcow2", "-F", backing_format,
                        "-b", str(backing.resolve()), str(tmp))  # fmt: skip
        tmp.replace(path)

    async def _run(self, *argv: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as err:
            raise DiskError(
                f"cannot run {argv[0]}: {err.strerror or err} (sudo apt-get install qemu-utils)"
            ) from err
        out, _ = await proc.communicate()
        if proc.returncode:
            raise DiskError(f"{' '.join(argv[:2])} failed: {out.decode(errors='replace').strip()}")

    def qemu_args(self, run_dir: Path, *, tpm_socket: Path | None = None) -> list[str]:
        """QEMU's options for the machine type, the firmware, the disks and the TPM."""
        spec = self.spec
        args: list[str] = []
        if spec.generation == 1:
            sercon = run_dir / "sercon-port"
            sercon.write_bytes(COM1.to_bytes(2, "little"))
            args += ["-machine", "pc", "-fw_cfg", f"name={SERCON_FW_CFG},file={_q(sercon)}"]
        else:
            code = self.firmware_code()
            machine = "q35,smm=on" if spec.secure_boot else "q35"
            args += ["-machine", machine]
            if spec.secure_boot:
                args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_q(code)}",
                "-drive", f"if=pflash,format=raw,unit=1,file={_q(self.uefi_vars)}",
            ]  # fmt: skip
        args += [
            "-drive", f"if=none,id=os,format=qcow2,discard=unmap,file={_q(self.os_disk)}",
            "-device", "virtio-blk-pci,drive=os,bootindex=0",
        ]  # fmt: skip
        for index in range(len(spec.data_disks)):
            path = self.data_disk(index)
            args += [
                "-drive", f"if=none,id=data{index},format=qcow2,discard=unmap,file={_q(path)}",
                "-device", f"virtio-blk-pci,drive=data{index}",
            ]  # fmt: skip
        if tpm_socket is not None:
            args += [
                "-chardev", f"socket,id=tpmchr,path={_q(tpm_socket)}",
                "-tpmdev", "emulator,id=tpm0,chardev=tpmchr",
                "-device", "tpm-crb,tpmdev=tpm0",
            ]  # fmt: skip
        return args


def network_args(ssh_port: int) -> list[str]:
    """A NIC on QEMU's user network that reaches nothing outside QEMU (``restrict=on``),
    with the guest's port 22 forwarded from ``127.0.0.1:ssh_port`` (0: the kernel picks)."""
    return [
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def forwarded_port(usernet: str) -> int | None:
    """The host port of the forward to the guest's port 22, read from the monitor's
    ``info usernet`` (the only place QEMU says which port it bound)."""
    for line in usernet.splitlines():
        words = line.split()
        if words and words[0].startswith("TCP[HOST_FORWARD]") and len(words) >= 6:
            with contextlib.suppress(ValueError):
                if int(words[5]) == 22:
                    return int(words[3])
    return None


class Swtpm:
    """A TPM 2.0 emulator (``swtpm socket``) for one VM, its state in ``state_dir``. It
    ends when QEMU closes its control socket (``--terminate``) or with ``stop``."""

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket = run_dir / "swtpm.sock"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Path:
        if shutil.which(SWTPM) is None:
            raise DiskError("a VM with tpm = true needs swtpm (sudo apt-get install swtpm)")
        self.socket.unlink(missing_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            SWTPM, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
            "--ctrl", f"type=unixio,path={self.socket}", "--terminate",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
        )  # fmt: skip
        for _ in range(200):  # swtpm makes its socket at once; no event says so
            if self.socket.exists():
                return self.socket
            if self._proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        err = b""
        if self._proc.returncode is not None and self._proc.stderr is not None:
            err = await self._proc.stderr.read()
        await self.stop()
        why = err.decode(errors="replace").strip() or "it made no socket"
        raise DiskError(f"swtpm did not start: {why}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _q(path: Path) -> str:
    """A path in a QEMU option value: a comma is doubled."""
    return str(path).replace(",", ",,")


RUN_COMMAND_TIMEOUT = 90.0  # Azure lets a Run Command script run 90 minutes; a lab, less
AGENT_WAIT = 30.0  # how long Run Command waits for a booting guest's agent to answer


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What a script run in the guest left: its exit code, standard output and error."""

    code: int
    stdout: str
    stderr: str


# VMAccessForLinux's work, as a root shell script: the user, then its password and key on
# standard input (never in arguments, which any user of the guest may read).
RESET_ACCESS = r"""set -e
user="$1"; reset_ssh="$2"; remove="$3"
IFS= read -r password || true
IFS= read -r key || true
if [ -n "$user" ] && [ "$remove" = 1 ]; then
  userdel -r "$user" 2>/dev/null || userdel "$user"
  echo "removed user $user"; exit 0
fi
if [ -n "$user" ]; then
  if ! id "$user" >/dev/null 2>&1; then
    useradd -m -s /bin/bash -G sudo "$user"; echo "created user $user"
  fi
  if [ -n "$password" ]; then
    printf '%s:%s\n' "$user" "$password" | chpasswd; echo "set the password of $user"
  fi
  if [ -n "$key" ]; then
    home=$(getent passwd "$user" | cut -d: -f6)
    mkdir -p "$home/.ssh"; printf '%s\n' "$key" >> "$home/.ssh/authorized_keys"
    chown -R "$user:" "$home/.ssh"; chmod 700 "$home/.ssh"; chmod 600 "$home/.ssh/authorized_keys"
    echo "added an SSH key for $user"
  fi
fi
if [ "$reset_ssh" = 1 ]; then
  cp /usr/share/openssh/sshd_config /etc/ssh/sshd_config
  systemctl restart ssh; echo "reset the SSH configuration"
fi
"""


class DiskMachine(MachineBase):
    """A QEMU or libvirt machine that may boot a disk (a disk VM) rather than a kernel: what
    such a VM shows and does beyond the console. Subclasses set ``disk``, ``disks`` and
    ``_ssh_port``, and give ``_command``: a QMP command, through whatever reaches QEMU."""

    disk: DiskSpec | None
    disks: DiskSet | None
    _ssh_port: int | None
    provisioning: Provisioning | None = None  # cloud-init provisions it (an osProfile)

    async def _command(self, cmd: str, args: dict[str, object] | None = None) -> object:
        raise NotImplementedError

    def _agent(self, timeout: float) -> contextlib.AbstractAsyncContextManager[AgentCommands]:
        """The guest agent (qemu-ga), once it answers within ``timeout`` s."""
        raise NotImplementedError

    async def run_command(
        self, script: str, args: Sequence[str] = (), timeout: float = RUN_COMMAND_TIMEOUT
    ) -> ScriptResult:
        """Azure's Run Command (``RunShellScript``): ``script`` run by ``/bin/sh`` as root in
        the guest, ``args`` its positional parameters, through the guest agent (so it works
        with the guest's network down, as the serial console does). MachineStateError unless
        the guest runs; AgentError when the agent does not answer or the script does not
        end within ``timeout`` s."""
        self._require(PowerState.RUNNING, action="run a command in")
        if self.disks is None:
            raise MachineStateError(
                f"VM '{self.name}' has no VM agent to run a command: it boots a kernel "
                "directly; Run Command needs a disk VM (its image has qemu-guest-agent)"
            )
        async with self._agent(min(timeout, AGENT_WAIT)) as agent:
            code, out, err = await agent.run_apart("/bin/sh", "-c", script, "sh", *args,
                                                   timeout=timeout)  # fmt: skip
        return ScriptResult(code, out, err)

    async def reset_access(
        self, user: str = "", password: str = "", ssh_key: str = "", *,
        reset_ssh: bool = False, remove_user: bool = False, timeout: float = RUN_COMMAND_TIMEOUT,
    ) -> ScriptResult:  # fmt: skip
        """What Azure's VM access extension does (``VMAccessForLinux``): create ``user`` (in
        the ``sudo`` group) if missing, set its password, add an SSH key, or remove it; reset
        sshd's configuration. Through the guest agent, the secrets on standard input.
        ValueError for a user name no Linux has; MachineStateError unless the guest runs
        (and has an agent); AgentError as ``run_command``."""
        if any(c in user for c in ":/\n ") or user.startswith("-"):
            raise ValueError(f"not a user name: {user[:64]!r}")
        self._require(PowerState.RUNNING, action="reset access to")
        if self.disks is None:
            raise MachineStateError(
                f"VM '{self.name}' has no VM agent to reset a password: it boots a kernel "
                "directly; the VM access extension needs a disk VM"
            )
        secrets = f"{password}\n{ssh_key.strip()}\n".encode()
        flags = ("1" if reset_ssh else "0", "1" if remove_user else "0")
        async with self._agent(min(timeout, AGENT_WAIT)) as agent:
            code, out, err = await agent.run_apart(
                "/bin/sh", "-c", RESET_ACCESS, "sh", user, *flags, timeout=timeout, stdin=secrets
            )
        return ScriptResult(code, out, err)

    @property
    def generation(self) -> int | None:
        """1 (BIOS) or 2 (UEFI) for a disk VM; None for a kernel booted directly."""
        return self.disk.generation if self.disk else None

    @property
    def ssh_port(self) -> int | None:
        """The port on 127.0.0.1 forwarded to the guest's SSH (disk VMs, while allocated)."""
        return self._ssh_port

    @property
    def has_display(self) -> bool:
        """A disk VM has a VGA display to take screenshots of; a kernel booted directly has
        none (its console is the serial port alone)."""
        return self.disks is not None

    async def screendump(self, path: Path) -> Path:
        """A PNG of the VM's display (QMP ``screendump``; QEMU writes ``path``)."""
        self._require(
            PowerState.STARTING, PowerState.RUNNING, PowerState.STOPPING, PowerState.STOPPED,
            PowerState.PANICKED, action="take a screenshot of",
        )  # fmt: skip
        await self._command("screendump", {"filename": str(path), "format": "png"})
        return path

    async def reimage(self) -> None:
        """Azure's reimage: the OS disk as the image has it. The VM is deallocated, its
        overlays and firmware variables are thrown away, and it starts again if it was
        allocated. MachineStateError for a VM that boots a kernel directly (no disk)."""
        if self.disks is None:
            raise MachineStateError(
                f"VM '{self.name}' has no OS disk to reimage: it boots a kernel directly"
            )
        was_allocated = self._state is not PowerState.DEALLOCATED
        await self.deallocate()
        self.disks.discard()
        if self.provisioning is not None:
            self.provisioning.reimaged()  # its marker went with the disks
        self.log.info("reimaged: its disks are the image's again")
        if was_allocated:
            await self.start()
