"""A real lab for tests: the gateway on 127.0.0.1 (a free port), emulated guests, real users.

``running_lab(tmp_path)`` starts ``LabRuntime`` with a small lab file (override any part
with ``vms=``/``gateway=``/``extra=``) and yields a ``LabHandle``: the runtime, and helpers
that speak the lab's public REST API as a client would (token, connect).

``running_lab(tmp_path, tls=True)`` serves HTTPS and WSS with the lab's own CA: the
handle's ``url`` is ``https://127.0.0.1:<port>``, ``ca_path`` the CA certificate to trust
(``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE`` for other clients), and its ``http`` client
verifies against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.lab.config import LabConfig, parse_lab
from gateway.lab.runtime import LabRuntime, MachineFactory, default_machine_factory
from gateway.lab.tls import ensure_lab_certificate
from gateway.testing.timeouts import scaled

SUBSCRIPTION = "5e71a1c0-0000-4000-8000-0000000000aa"
EMULATED_VMS = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"

[[vms]]
name = "win-1"
resource_group = "lab-rg"
os = "windows"
backend = "emulated"
"""
QEMU_VM = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "qemu"
warm_start = false  # a test's power actions never wait behind a save of its first boot
"""


def scale_set(capacity: int = 1) -> str:
    """The lab file's ``web-vmss``: a scale set of ``capacity`` emulated Linux instances."""
    return f"""
[[scale_sets]]
name = "web-vmss"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"
capacity = {capacity}
"""


USERS = """
[[users]]
name = "alice"
password = "alice"
roles = [{ role = "Virtual Machine Contributor", scope = "resourceGroups/lab-rg" }]

[[users]]
name = "bob"
password = "bob"
roles = [{ role = "Reader", scope = "subscription" }]

[[users]]
name = "carol"
password = "carol"
roles = [{ role = "Owner", scope = "subscription" }]
"""


def lab_toml(state_dir: Path, vms: str = EMULATED_VMS, gateway: str = "", extra: str = "") -> str:
    return f"""
state_dir = "{state_dir}"

[subscription]
id = "{SUBSCRIPTION}"
name = "Test subscription"

[guest]
password = "serial-lab"

[gateway]
host = "127.0.0.1"
port = 0
replay_bytes = 4096
{gateway}

[[resource_groups]]
name = "lab-rg"
location = "local"
{vms}
{USERS}
{extra}
"""


@dataclass
class LabHandle:
    runtime: LabRuntime
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, or ``https://...`` for a TLS lab."""
        return self.runtime.url

    @property
    def ca_path(self) -> Path | None:
        """The lab CA's certificate (``<state>/tls/ca.pem``) of a ``tls=True`` lab."""
        return self.runtime.ca_path

    async def token(self, user: str, password: str | None = None) -> str:
        reply = await self.http.post(
            "/oauth2/token",
            data={"grant_type": "password", "username": user, "password": password or user},
        )
        reply.raise_for_status()
        return str(reply.json()["access_token"])

    def vm_path(self, vm: str, group: str = "lab-rg") -> str:
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}"
            f"/providers/Microsoft.Compute/virtualMachines/{vm}"
        )

    async def connect(self, token: str, vm: str) -> httpx.Response:
        """``POST .../serialPorts/0/connect`` as ``az serial-console connect`` does."""
        return await self.http.post(
            self.vm_path(vm)
            + "/providers/Microsoft.SerialConsole/serialPorts/0/connect?api-version=2018-05-01",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def session_url(self, user: str, vm: str = "linux-1") -> tuple[str, str]:
        """A fresh one-time console URL for ``user`` on ``vm``, and the user's token."""
        token = await self.token(user)
        reply = await self.connect(token, vm)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["connectionString"]), token


def trusting(ca_path: Path | None) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca_path`` (and the system's CAs)."""
    context = ssl.create_default_context()
    if ca_path is not None:
        context.load_verify_locations(cafile=ca_path)
    return context


@contextlib.asynccontextmanager
async def serve_lab(
    config: LabConfig,
    factory: MachineFactory = default_machine_factory,
    *,
    graceful: bool = False,
) -> AsyncIterator[LabHandle]:
    """The one way a test runs a lab: ``config`` served by a ``LabRuntime`` (machines from
    ``factory``), started within a bound, with an HTTP client pointed at it (trusting the
    lab's CA when it serves TLS); stopped, machines and all, on the way out.

    The stop is the lab's forced one (a second Ctrl+C: consoles still hear why they close,
    every machine is deallocated) unless ``graceful``: then the guests are asked to shut
    down and waited for, as on a first Ctrl+C. An emulated guest running the image's
    busybox takes two seconds to do so (its init's TERM and KILL rounds), which only the
    tests about stopping a lab should pay."""
    runtime = LabRuntime(config, machine_factory=factory)
    async with asyncio.timeout(scaled(60)):
        await runtime.__aenter__()
    try:
        verify = trusting(runtime.ca_path) if runtime.url.startswith("https:") else True
        async with httpx.AsyncClient(
            base_url=runtime.url, timeout=scaled(30), verify=verify
        ) as http:
            yield LabHandle(runtime, http)
    finally:
        if not graceful:
            runtime.force_stop()
        await runtime.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def running_lab(
    tmp_path: Path, *, tls: bool = False, graceful: bool = False, **parts: Any
) -> AsyncIterator[LabHandle]:
    """The lab of ``lab_toml(**parts)`` with emulated guests, running (``serve_lab``, with
    its ``graceful``); with ``tls``, served by the lab's own CA (see the module docstring)."""
    text = lab_toml(tmp_path / "state", **parts)
    config = parse_lab(text, source=str(tmp_path / "lab.toml"), base=tmp_path)
    if tls:
        config = config.with_overrides(tls=True)
    async with serve_lab(config, graceful=graceful) as handle:
        yield handle


def user_certificate(
    folder: Path, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[Path, Path, Path]:
    """A certificate a user would bring (from a CA of their own, not the lab's), for
    ``hosts``: (certificate, key, that CA's certificate)."""
    files = ensure_lab_certificate(folder, hosts)
    assert files.ca is not None
    return files.cert, files.key, files.ca
