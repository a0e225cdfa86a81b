"""What every route (and the websocket door) reaches through ``request.app.state.context``.

``ApiContext`` bundles the lab's inventory and the access services; the lab runtime builds
it and hands it to ``create_app``. ``context_of(request)`` gets it back in a route or a
websocket handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.access.audit import AuditLog
from gateway.access.connect_sessions import ConnectSessions
from gateway.access.tokens import TokenService
from gateway.access.users import Directory, User
from gateway.api.bootdiag import BlobVersions, UrlSigner
from gateway.api.operations import Operations
from gateway.api.resources import ConsoleState, Inventory


@dataclass(eq=False)
class ApiContext:
    """The control plane's state and services. One per app."""

    inventory: Inventory
    directory: Directory
    tokens: TokenService
    audit: AuditLog
    sessions: ConnectSessions
    console: ConsoleState
    signer: UrlSigner
    idle_timeout: float = 0.0  # 0: off
    replay_bytes: int = 65536
    session_buffer: int = 1 << 20  # output queued per console client before it is cut off
    allowed_origins: tuple[str, ...] = ()  # browser origins besides the gateway's own
    allowed_hosts: frozenset[str] | None = None  # Host header names answered (None: any)
    operations: Operations = field(default_factory=Operations)  # power actions (202 + polling)
    blob_versions: BlobVersions = field(default_factory=BlobVersions)  # serial log ETags


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
