"""What every route (and the websocket door) reaches through ``request.app.state.context``.

``ApiContext`` is the lab's services (``gateway.lab.context.LabContext``, which every door
gets) with what only the HTTP door keeps; the lab runtime builds it and hands it to
``create_app``. ``context_of(request)`` gets it back in a route or a websocket handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from starlette.requests import HTTPConnection

from gateway.access.users import User
from gateway.api.operations import Operations
from gateway.lab.context import LabContext, policy_of, service_of
from gateway.lab.inventory import VmResource

__all__ = ["ApiContext", "Caller", "client_address", "context_of", "policy_of", "service_of"]


class BlobVersions:
    """ETag and Last-Modified of each serial log blob: a new version whenever the kept
    bytes change; Last-Modified is when the gateway first served that version."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[int, int, float]] = {}

    def version(self, machine: str, first: int, end: int) -> tuple[str, str]:
        seen = self._seen.get(machine)
        if seen is None or seen[:2] != (first, end):
            seen = (first, end, self.clock())
            self._seen[machine] = seen
        etag = f'"0x{first:X}{end:012X}"'
        return etag, formatdate(seen[2], usegmt=True)


@dataclass
class Extension:
    """One extension of a VM as ARM shows it; its protected settings are not kept."""

    name: str
    publisher: str
    type: str
    version: str
    auto_upgrade: bool
    settings: dict[str, Any]
    state: str = "Creating"
    message: str = ""


@dataclass
class Extensions:
    """Every VM's extensions, by VM id (lower case), then by name (as first given)."""

    by_vm: dict[str, dict[str, Extension]] = field(default_factory=dict)

    def of(self, vm: VmResource) -> dict[str, Extension]:
        return self.by_vm.setdefault(vm.id.lower(), {})


@dataclass(eq=False)
class ApiContext(LabContext):
    """The lab's services (``LabContext``) and what only the HTTP door keeps."""

    allowed_origins: tuple[str, ...] = ()  # browser origins besides the gateway's own
    allowed_hosts: frozenset[str] | None = None  # Host header names answered (None: any)
    operations: Operations = field(default_factory=Operations)  # power actions (202 + polling)
    blob_versions: BlobVersions = field(default_factory=BlobVersions)  # serial log ETags
    extensions: Extensions = field(default_factory=Extensions)  # VM extensions, by VM


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made the request (after ``require`` let it through), from where, at which scope."""

    user: User
    address: str
    scope: str


def context_of(connection: HTTPConnection) -> ApiContext:
    """The ApiContext of the app serving ``connection`` (a Request or a WebSocket)."""
    context: ApiContext = connection.app.state.context
    return context


def client_address(connection: HTTPConnection) -> str:
    """The peer's address as ``host:port`` (empty when unknown)."""
    client = connection.client
    return f"{client.host}:{client.port}" if client else ""
