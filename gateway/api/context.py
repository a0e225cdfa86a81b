"""What every route (and the websocket door) reaches through ``request.app.state.context``.

``ApiContext`` bundles the lab's inventory and the access services; the lab runtime builds
it and hands it to ``create_app``. ``context_of(request)`` gets it back in a route or a
websocket handler; ``service_of(ctx)`` and ``policy_of(ctx)`` give every door (websocket,
adminCommand, SSH, RFC 2217) the same console service and command policy.
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
from gateway.console.policy import CommandPolicy
from gateway.console.service import ConsoleService
from gateway.recordings.recorder import Recorder


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
    recorder: Recorder | None = None  # every console session's recording (None: not kept)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made the request (after ``require`` let it through), from where, at which scope."""

    user: User
    address: str
    scope: str


def policy_of(ctx: ApiContext) -> CommandPolicy:
    """The lab's command policy, with its switches read at each command."""
    return CommandPolicy(
        ctx.audit,
        console_disabled=lambda: ctx.console.disabled,
        port_enabled=lambda vm_id: ctx.console.port_enabled(ctx.inventory.by_id(vm_id)),
    )


def service_of(ctx: ApiContext) -> ConsoleService:
    """The lab's console service, for any door served by this app."""
    return ConsoleService(
        ctx.audit,
        policy_of(ctx),
        lambda: (vm.hub for vm in ctx.inventory.all_machines() if vm.hub is not None),
        session_buffer=ctx.session_buffer,
        recorder=ctx.recorder,
    )


def context_of(connection: HTTPConnection) -> ApiContext:
    """The ApiContext of the app serving ``connection`` (a Request or a WebSocket)."""
    context: ApiContext = connection.app.state.context
    return context


def client_address(connection: HTTPConnection) -> str:
    """The peer's address as ``host:port`` (empty when unknown)."""
    client = connection.client
    return f"{client.host}:{client.port}" if client else ""
