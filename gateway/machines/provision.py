"""Provisioning as Azure provisions a new Linux VM, for the image's own cloud-init.

Azure hands a new VM three things, and this module makes each for a disk VM:

==================  =========================================================================
the chassis tag     SMBIOS type 3's asset tag ``7783-7084-3265-9085-8269-3286-77``: how
                    cloud-init (``ds-identify``) knows it runs on Azure; the system UUID is
                    the VM's ``vmId``, the instance id cloud-init keeps
the provisioning    a CD (ISO 9660 with Rock Ridge names, made by ``pycdlib``) holding
CD                  ``ovf-env.xml``: user, password, SSH keys, host name, custom data
the wireserver      168.63.129.16 (goal state, health report: "ready") and the instance
and IMDS            metadata service at 169.254.169.254 (``/metadata/instance``), served by
                    ``Fabric`` on 127.0.0.1 and reached through the VM's user-mode NIC
==================  =========================================================================

The NIC: QEMU's user network forwards a guest connection to an address of its own network
only (``guestfwd``), so a provisioned VM's network is ``168.0.0.0/7``, which holds both
Azure addresses; it still reaches nothing else (``restrict=on``). Each connection the guest
opens to them starts ``fabric_relay.py``, which carries it to the ``Fabric``'s port.

The VM's provisioning state is Azure's: ``Creating`` until the guest reports ready (then
``Succeeded``), ``Failed`` when it reports a failure or stays silent past the timeout
(Azure's ``OSProvisioningTimedOut``). A provisioned VM's disk folder keeps a marker, so a
second boot gets no CD and is not provisioned again; reimage removes it with the disks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import h11

log = logging.getLogger("gateway.machines.provision")

AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # cloud-init's ChassisAssetTag.AZURE_CLOUD
WIRESERVER = "168.63.129.16"
IMDS = "169.254.169.254"
NETWORK = "168.0.0.0/7"  # QEMU's user network: holds both of Azure's addresses
GATEWAY = "168.0.0.1"  # QEMU's own address in it, the default gateway (as Azure's is .1)
GUEST_IP = "168.0.0.4"  # what QEMU's DHCP server hands the guest (Azure's first is .4)
PROVISIONED_MARKER = "provisioned.json"  # in the VM's disk folder
DEFAULT_TIMEOUT = 600.0  # seconds from launch to "ready"; Azure allows 20 minutes
MAX_REQUEST = 1 << 20  # bytes of a request body the fabric reads
RELAY = Path(__file__).with_name("fabric_relay.py")

CREATING, SUCCEEDED, FAILED = "Creating", "Succeeded", "Failed"


@dataclass(frozen=True, slots=True)
class OsProfile:
    """A VM's ``osProfile``, as the lab file gives it (``[vms.os_profile]``)."""

    admin_username: str
    computer_name: str
    admin_password: str | None = field(default=None, repr=False)
    ssh_public_keys: tuple[str, ...] = ()
    custom_data: str | None = field(default=None, repr=False)  # as typed; base64 on the CD
    disable_password_authentication: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def key_path(self) -> str:
        return f"/home/{self.admin_username}/.ssh/authorized_keys"

    def arm(self) -> dict[str, Any]:
        """ARM's ``osProfile`` of a Linux VM: never the password or the custom data."""
        return {
            "computerName": self.computer_name,
            "adminUsername": self.admin_username,
            "linuxConfiguration": {
                "disablePasswordAuthentication": self.disable_password_authentication,
                "ssh": {
                    "publicKeys": [
                        {"path": self.key_path(), "keyData": key} for key in self.ssh_public_keys
                    ]
                },
                "provisionVMAgent": True,
                "patchSettings": {"patchMode": "ImageDefault", "assessmentMode": "ImageDefault"},
            },
            "secrets": [],
            "allowExtensionOperations": True,
            "requireGuestProvisionSignal": True,
        }


@dataclass(frozen=True, slots=True)
class VmIdentity:
    """What Azure's fabric knows of the VM it provisions (for IMDS and the goal state)."""

    vm_id: str
    name: str
    resource_id: str
    subscription_id: str
    resource_group: str
    location: str
    vm_size: str

    @property
    def mac(self) -> str:
        """The NIC's MAC address: Microsoft's prefix (00:0d:3a), the rest from the vmId."""
        tail = hashlib.sha256(self.vm_id.encode()).digest()[:3]
        return ":".join(f"{b:02x}" for b in (0x00, 0x0D, 0x3A, *tail))


def ovf_env(profile: OsProfile) -> bytes:
    """``ovf-env.xml`` as Azure writes it on the provisioning CD."""
    keys = "".join(
        "<PublicKey><Fingerprint>"
        + hashlib.sha1(key.encode()).hexdigest().upper()  # a key's name here, not a MAC
        + f"</Fingerprint><Path>{escape(profile.key_path())}</Path>"
        f"<Value>{escape(key)}</Value></PublicKey>"
        for key in profile.ssh_public_keys
    )
    password = ""
    if profile.admin_password is not None:
        password = f"<UserPassword>{escape(profile.admin_password)}</UserPassword>"
    custom = ""
    if profile.custom_data:
        encoded = base64.b64encode(profile.custom_data.encode()).decode()
        custom = f"<CustomData>{encoded}</CustomData>"
    disable = "true" if profile.disable_password_authentication else "false"
    text = f"""<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" \
xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" \
xmlns:wa="http://schemas.microsoft.com/windowsazure" \
xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
 <wa:ProvisioningSection>
  <wa:Version>1.0</wa:Version>
  <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure" \
xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
   <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
   <HostName>{escape(profile.computer_name)}</HostName>
   <UserName>{escape(profile.admin_username)}</UserName>
   {password}
   <DisableSshPasswordAuthentication>{disable}</DisableSshPasswordAuthentication>
   <SSH><PublicKeys>{keys}</PublicKeys></SSH>
   {custom}
  </LinuxProvisioningConfigurationSet>
 </wa:ProvisioningSection>
 <wa:PlatformSettingsSection>
  <wa:Version>1.0</wa:Version>
  <PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure" \
xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
   <KmsServerHostname>kms.core.windows.net</KmsServerHostname>
   <ProvisionGuestAgent>true</ProvisionGuestAgent>
   <GuestAgentPackageName i:nil="true"/>
   <PreprovisionedVm>false</PreprovisionedVm>
  </PlatformSettings>
 </wa:PlatformSettingsSection>
</Environment>
"""
    return text.encode()


def write_media(profile: OsProfile, path: Path) -> Path:
    """The provisioning CD at ``path`` (mode 0600: it holds the password)."""
    import pycdlib  # only a VM that is provisioned needs it

    data = ovf_env(profile)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="rd_rdfe_stable.cloudapp.net")
    iso.add_fp(io.BytesIO(data), len(data), "/OVF_ENV.XML;1", rr_name="ovf-env.xml")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb") as out:
        tmp.chmod(0o600)
        iso.write_fp(out)
    iso.close()
    tmp.replace(path)
    return path


def relay_command(port: int) -> str:
    """The command QEMU starts for each guest connection to Azure's addresses."""
    return f"{sys.executable} -I -S {RELAY} {port}"


def network_option(ssh_port: int, fabric_port: int) -> str:
    """``-netdev`` of a provisioned VM: Azure's addresses forwarded to the fabric."""
    relay = relay_command(fabric_port).replace(",", ",,")
    return (
        f"user,id=net0,restrict=on,net={NETWORK},host={GATEWAY},dhcpstart={GUEST_IP},"
        f"dns=168.0.0.3,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
        f"guestfwd=tcp:{WIRESERVER}:80-cmd:{relay},guestfwd=tcp:{IMDS}:80-cmd:{relay}"
    )


def smbios_args(identity: VmIdentity) -> list[str]:
    """Hyper-V's SMBIOS as cloud-init reads it: the vendor, the vmId, Azure's asset tag."""
    return [
        "-uuid", identity.vm_id,
        "-smbios", "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
        "-smbios", f"type=3,manufacturer=Microsoft Corporation,asset={AZURE_ASSET_TAG}",
    ]  # fmt: skip


class Provisioning:
    """One VM's provisioning: its state, the marker in ``folder``, and the fabric the guest
    talks to while it runs. ``on_change(state)`` hears each change of state."""

    def __init__(self, profile: OsProfile, identity: VmIdentity | None = None) -> None:
        self.profile = profile
        self._identity = identity
        self.folder: Path | None = None  # the VM's disk folder, once a machine has it
        self.on_change: Callable[[str], None] = lambda state: None  # the lab's inventory
        self.on_ready: Callable[[], None] = lambda: None  # the machine: eject the CD
        self.error: dict[str, str] | None = None  # Azure's code and message once Failed
        self.ready_after: float | None = None  # seconds from launch to ready, once ready
        self._launched = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.state = CREATING

    @property
    def identity(self) -> VmIdentity:
        if self._identity is None:
            raise RuntimeError("a provisioning is told its VM's identity before the VM starts")
        return self._identity

    def identify(self, identity: VmIdentity) -> None:
        """The VM's Azure identity (its ARM id, vmId, location...), known once it is listed."""
        self._identity = identity

    def attach(self, folder: Path) -> None:
        """The machine keeps its disks, and this marker, in ``folder``."""
        self.folder = folder
        self.state = SUCCEEDED if self.marker.exists() else CREATING

    @property
    def marker(self) -> Path:
        if self.folder is None:
            raise RuntimeError("a provisioning is attached to a machine's disk folder first")
        return self.folder / PROVISIONED_MARKER

    @property
    def pending(self) -> bool:
        """Whether the next boot provisions (it gets the CD)."""
        return not self.marker.exists()

    def launched(self) -> None:
        """The VM's QEMU started: a pending provisioning has ``profile.timeout`` s."""
        self.cancel_timer()
        self.state = SUCCEEDED if self.marker.exists() else CREATING
        if self.state == CREATING:
            self.error = None
            self._launched = time.monotonic()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.profile.timeout, self._timed_out)
        self.on_change(self.state)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reimaged(self) -> None:
        """The disks (and the marker with them) are gone: the next boot provisions."""
        self.cancel_timer()
        self.state = CREATING
        self.error = None
        self.on_change(self.state)

    def ready(self) -> None:
        self.cancel_timer()
        if self.marker.exists():
            return
        self.ready_after = time.monotonic() - self._launched
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(
            json.dumps({"vmId": self.identity.vm_id, "readyAfter": round(self.ready_after, 1)})
        )
        self.state, self.error = SUCCEEDED, None
        log.info("%s: provisioned: the guest reported ready %.1f s after it started",
                 self.identity.name, self.ready_after)  # fmt: skip
        self.on_change(self.state)
        self.on_ready()

    def failed(self, description: str) -> None:
        self.cancel_timer()
        self.state = FAILED
        self.error = {
            "code": "OSProvisioningClientError",
            "message": f"OS provisioning failed for VM '{self.identity.name}': the guest "
            f"reported: {description or 'no description'}. Read the boot diagnostics log "
            "(cloud-init's messages) to see why.",
        }
        log.warning("%s: provisioning failed: %s", self.identity.name, description)
        self.on_change(self.state)

    def _timed_out(self) -> None:
        self._timer = None
        if self.state != CREATING:
            return
        self.state = FAILED
        self.error = {
            "code": "OSProvisioningTimedOut",
            "message": f"OS Provisioning for VM '{self.identity.name}' did not finish in the "
            f"allotted time ({self.profile.timeout:g} s). The VM may still finish provisioning "
            "successfully. Please check provisioning state later. Also, make sure the image "
            "has been properly prepared (generalized): its cloud-init must be enabled and "
            "reach the wireserver.",
        }
        log.warning("%s: provisioning timed out after %g s", self.identity.name,
                    self.profile.timeout)  # fmt: skip
        self.on_change(self.state)

    def imds(self) -> dict[str, Any]:
        """The instance metadata (``/metadata/instance``) of this VM."""
        ident, profile = self.identity, self.profile
        compute = {
            "azEnvironment": "AzurePublicCloud",
            "location": ident.location,
            "name": ident.name,
            "osType": "Linux",
            "osProfile": {
                "adminUsername": profile.admin_username,
                "computerName": profile.computer_name,
                "disablePasswordAuthentication": str(
                    profile.disable_password_authentication
                ).lower(),
            },
            "provider": "Microsoft.Compute",
            "publicKeys": [
                {"keyData": key, "path": profile.key_path()} for key in profile.ssh_public_keys
            ],
            "resourceGroupName": ident.resource_group,
            "resourceId": ident.resource_id,
            "subscriptionId": ident.subscription_id,
            "tagsList": [],
            "userData": "",
            "vmId": ident.vm_id,
            "vmSize": ident.vm_size,
            "zone": "",
        }
        network = {
            "interface": [
                {
                    "ipv4": {
                        "ipAddress": [{"privateIpAddress": GUEST_IP, "publicIpAddress": ""}],
                        "subnet": [{"address": NETWORK.split("/")[0], "prefix": "7"}],
                    },
                    "ipv6": {"ipAddress": []},
                    "macAddress": ident.mac.replace(":", "").upper(),
                }
            ]
        }
        return {"compute": compute, "network": network, "extended": {"compute": {}}}

    def goal_state(self) -> bytes:
        ident = self.identity
        container = uuid.uuid5(uuid.NAMESPACE_URL, ident.resource_id.lower() + "/container")
        return f"""<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>1</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{container}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{ident.vm_id}.{escape(ident.name)}</InstanceId>
        <State>Started</State>
        <Configuration>
          <ConfigName>{escape(ident.name)}.1.{escape(ident.name)}.1.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
""".encode()

    def health(self, body: bytes) -> None:
        """A health report (``POST /machine?comp=health``): ready, or a failure."""
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as err:
            raise ValueError(f"not a health report: {err}") from err
        state = root.findtext("./Container/RoleInstanceList/Role/Health/State") or ""
        if state == "Ready":
            self.ready()
        elif state == "NotReady":
            details = root.find("./Container/RoleInstanceList/Role/Health/Details")
            if details is not None and details.findtext("SubStatus") == "ProvisioningFailed":
                self.failed(details.findtext("Description") or "")
        else:
            raise ValueError(f"a health report's State is Ready or NotReady, not {state!r}")


class Fabric:
    """Azure's wireserver and instance metadata service for one VM, on 127.0.0.1."""

    def __init__(self, provisioning: Provisioning) -> None:
        self.provisioning = provisioning
        self._server: asyncio.Server | None = None
        self.requests: list[str] = []  # "GET /path": what the guest asked, in order

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with asyncio.timeout(30):
                while True:
                    request, body = await self._request(conn, reader)
                    if request is None:
                        break
                    status, ctype, payload = self._answer(request, body)
                    headers = [("content-type", ctype), ("content-length", str(len(payload)))]
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    writer.write(conn.send(h11.Data(data=payload)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, TimeoutError) as err:
            log.debug("fabric connection of %s ended: %s", self.provisioning.identity.name, err)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST:
                    raise h11.LocalProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    def _answer(self, request: h11.Request, body: bytes) -> tuple[int, str, bytes]:
        method = request.method.decode()
        target = request.target.decode(errors="replace")
        self.requests.append(f"{method} {target}")
        url = urlsplit(target)
        path = url.path.rstrip("/")
        query = parse_qs(url.query)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        xml = "text/xml; charset=utf-8"
        if path == "/machine" and query.get("comp") == ["goalstate"] and method == "GET":
            return 200, xml, self.provisioning.goal_state()
        if path == "/machine" and query.get("comp") == ["health"] and method == "POST":
            try:
                self.provisioning.health(body)
            except ValueError as err:
                return 400, "text/plain", f"{err}\n".encode()
            return 200, xml, b""
        if path.startswith("/metadata"):
            if headers.get("metadata", "").lower() != "true":
                answer = {"error": "Bad request. Required metadata header not specified"}
                return 400, "application/json", json.dumps(answer).encode()
            if path == "/metadata/instance" and method == "GET":
                return 200, "application/json", json.dumps(self.provisioning.imds()).encode()
            if path == "/metadata/instance/network" and method == "GET":
                network = self.provisioning.imds()["network"]
                return 200, "application/json", json.dumps(network).encode()
            if path == "/metadata/instance/compute" and method == "GET":
                compute = self.provisioning.imds()["compute"]
                return 200, "application/json", json.dumps(compute).encode()
        return 404, "text/plain", b"Not found\n"
