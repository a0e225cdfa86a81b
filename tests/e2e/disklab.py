"""What the disk VM tests share: a lab of disk VMs over TLS (each module its own, so the
two generations boot side by side on two workers), Microsoft's azure-mgmt-compute against
it, and the steps a person takes at GRUB."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

from gateway.machines.image import builtin_disk, disk_dir
from gateway.testing.client import LabClient
from gateway.testing.console import Console
from gateway.testing.lab import LabProcess

RG = "disk-rg"
USER, PASSWORD = "carol", "carol-disk-lab"
GUEST_PASSWORD = "disk-guest-pw"
TENANT = "5e71a1c0-0000-4000-8000-00000000ad00"
BOOT = 300.0  # a systemd disk VM under TCG on a machine busy with other tests
GRUB_MENU = "GNU GRUB"
# GRUB's countdown line, drawn once a second while the menu waits
COUNTDOWN = r"will be\s+(booted|executed) automatically in \d+s"
CURSOR_MOVED = r"\x1b\[\d+;\d+H"  # the terminal's cursor placed, as GRUB's editor does


def kernels() -> tuple[str, str]:
    """(newest, older) kernel release in the built images, from their build record."""
    text = (disk_dir() / "disk.env").read_text()
    match = re.search(r'^KERNELS="(\S+) (\S+)"$', text, re.M)
    assert match, f"disk.env names no two kernels: {text}"
    return match.group(1), match.group(2)


def sha256(path: Path) -> str:
    """The file's SHA-256, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image(name: str) -> Path:
    """A built disk image; fails with the command to run when it is not built."""
    disk = builtin_disk(name)
    assert disk is not None
    if not disk.path.is_file():
        pytest.fail(f"the disk image {disk.path} is not built: make images")
    return disk.path


def vm_table(
    name: str, disk: str, *, warm: bool = False, rfc2217_port: int = 0, **image: object
) -> str:
    """A ``[[vms]]`` entry of a disk VM; it boots cold unless ``warm`` (most of these tests
    are about booting). ``rfc2217_port``: its RFC 2217 door's port (0: none). ``image``
    keys go to its ``[vms.image]``."""
    keys = "".join(f"{key} = {str(v).lower() if isinstance(v, bool) else v}\n"
                   for key, v in image.items())  # fmt: skip
    door = f"rfc2217_port = {rfc2217_port}\n" if rfc2217_port else ""
    return f"""
[[vms]]
name = "{name}"
resource_group = "{RG}"
backend = "qemu"
ssh_port = 0
cpus = 1  # the suite runs several VMs at once on two cores: one thread each
warm_start = {str(warm).lower()}
{door}[vms.image]
disk = "{disk}"
{keys}"""


def start_lab(
    folder: Path, vms: str, *, password: str = GUEST_PASSWORD, ssh_door: int = 0
) -> LabProcess:
    """A TLS lab of ``vms`` (``vm_table`` entries), up and serving; ``password`` is its
    guests' root password, ``ssh_door`` its SSH door's port (0: no SSH door)."""
    lab_file = folder / "lab.toml"
    lab_file.write_text(f"""
state_dir = "{folder / "state"}"
[guest]
password = "{password}"
[gateway]
host = "127.0.0.1"
port = 0
ssh_port = 0
[[resource_groups]]
name = "{RG}"
{vms}
[[users]]
name = "{USER}"
password = "{PASSWORD}"
roles = [{{ role = "Owner", scope = "subscription" }}]
""")
    # The tests' clean-up halts the guests: systemd's own shutdown (half a minute under
    # TCG on a busy machine) is what the restart and stop tests see, not the clean-up.
    return LabProcess.start(
        folder, lab=lab_file, tls=True, timeout=120, die_with_parent=True, ssh_port=ssh_door,
        stop_timeout=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(lab: LabProcess) -> Iterator[LabClient]:
    client = LabClient(lab.url, USER, PASSWORD, ca_path=lab.ca_path)
    yield client
    client.close()


@pytest.fixture(scope="module")
def compute(lab: LabProcess, client: LabClient) -> Iterator[ComputeManagementClient]:
    """azure-mgmt-compute as a user's script makes it, the lab as ARM and authority."""
    before = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(lab.ca_path)
    credential = ClientSecretCredential(
        TENANT, USER, PASSWORD, authority=lab.url, disable_instance_discovery=True
    )
    with ComputeManagementClient(credential, client.subscription_id, base_url=lab.url) as arm:
        yield arm
    credential.close()
    if before is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = before


def reset_password(compute: ComputeManagementClient, vm: str, user: str, password: str) -> str:
    """Azure's Reset password: azure-mgmt-compute's ``begin_create_or_update`` of the VM
    access extension (VMAccessForLinux) with ``user`` and ``password`` in its protected
    settings, waited for; the extension's provisioning state."""
    body = {
        "location": "westeurope",
        "properties": {
            "publisher": "Microsoft.OSTCExtensions",
            "type": "VMAccessForLinux",
            "typeHandlerVersion": "1.5",
            "protectedSettings": {"username": user, "password": password},
        },
    }
    extensions = compute.virtual_machine_extensions
    done = extensions.begin_create_or_update(RG, vm, "enablevmaccess", body).result()
    return str(done.provisioning_state)


def open_console(client: LabClient, vm: str) -> Console:
    return Console.open(client, vm, group=RG, password=GUEST_PASSWORD, timeout=BOOT)


def in_order(text: str, *marks: str) -> list[int]:
    """The positions of ``marks`` in ``text``; fails unless each comes after the last."""
    places = []
    start = 0
    for mark in marks:
        place = text.find(mark, start)
        assert place >= 0, f"{mark!r} not found after {text[start - 80 : start]!r}"
        places.append(place)
        start = place + len(mark)
    return places


def editor_rows_to(word: str, screen: str) -> int:
    """How many lines down from the cursor (on the entry's first line, ``setparams``)
    GRUB's editor shows the line that starts with ``word``, read from the editor's drawing
    in ``screen`` (each line placed at its row by a cursor move)."""
    rows = [(int(m.group(1)), m.end()) for m in re.finditer(r"\x1b\[(\d+);\d+H", screen)]

    def row_of(start: str) -> int:
        found = [row for row, end in rows if screen[end:].lstrip().startswith(start)]
        assert found, f"GRUB's editor shows no line starting with {start!r}: {screen!r}"
        return found[-1]

    return row_of(word + " ") - row_of("setparams ")


def catch_grub(console: Console, *entries: str) -> None:
    """After a reset: wait for GRUB's menu (with ``entries`` listed) and stop its countdown
    with a key, as a person does within its 5 s."""
    console.expect(GRUB_MENU, BOOT)
    for entry in entries:
        console.expect_exact(entry, 30)
    console.expect(COUNTDOWN, 60)
    console.send("\x1b[A")  # Up: stops the countdown, the first entry stays highlighted


def ssh_port(lab: LabProcess, vm: str) -> int:
    """The SSH port the lab's banner prints for ``vm``."""
    for line in lab.output.splitlines():
        words = line.split()
        if words and words[0] == vm and len(words) >= 7:
            return int(words[5])
    raise AssertionError(f"no SSH port for {vm} in the banner:\n{lab.output}")
