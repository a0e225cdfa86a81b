"""The FastAPI app of the gateway: ``create_app(context)``.

Routes: ``auth`` (``/oauth2/token``), ``arm`` (Microsoft.SerialConsole, subscriptions,
audit), ``compute`` (Microsoft.Compute), ``bootdiag`` (signed serial-log URLs). Every
error is ARM-shaped (``errors``). OpenAPI at ``/openapi.json``. Further routers (the
websocket console, admin commands) are added with ``app.include_router`` by whoever owns
them; they reach the lab through ``context_of(request)``.
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway.api import admin, arm, auth, bootdiag, compute, console_ws
from gateway.api.context import ApiContext
from gateway.api.errors import install_handlers
from gateway.api.hosts import HostCheck

API_VERSION = "2024-07-01"


def create_app(context: ApiContext) -> FastAPI:
    """A new app serving ``context``'s lab. The context is at ``app.state.context``."""
    app = FastAPI(
        title="Serial Console Lab",
        version=API_VERSION,
        description=(
            "Azure Serial Console's control plane on one machine: Microsoft.SerialConsole "
            "and Microsoft.Compute on ARM's paths. Get a token with POST /oauth2/token, "
            "send it as 'Authorization: Bearer <token>'. The api-version query parameter "
            "is accepted and not required."
        ),
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    install_handlers(app)
    app.include_router(auth.router)
    app.include_router(arm.router)
    app.include_router(compute.router)
    app.include_router(bootdiag.router)
    app.include_router(console_ws.router)
    app.include_router(admin.router)
    app.add_middleware(HostCheck, allowed=context.allowed_hosts)
    return app
