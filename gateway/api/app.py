"""The FastAPI app of the gateway: ``create_app(context)``.

Routes: ``auth`` (``/oauth2/token``), ``identity`` (Entra's v2.0 discovery and token
endpoints), ``arm`` (Microsoft.SerialConsole, subscriptions, tenants, audit), ``compute``
(Microsoft.Compute, long-running power actions), ``bootdiag`` (signed serial-log blobs),
``authorization`` (the caller's permissions), ``metadata`` (the cloud's endpoints, for
``az cloud register``), ``portal`` (the browser page at ``/``).
``armpath`` applies ARM's routing rules (case-insensitive words, ``api-version``) before
any route; ``limits`` then checks the token of a request with a body before reading it,
and bounds the body per route family (413). Every error is ARM-shaped (``errors``). OpenAPI
at ``/openapi.json``. Further routers (the websocket console, admin commands) are added
with ``app.include_router`` by whoever owns them; they reach the lab through
``context_of(request)``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from gateway.api import (
    admin,
    arm,
    auth,
    authorization,
    bootdiag,
    compute,
    console_ws,
    extensions,
    identity,
    metadata,
    portal,
    recordings,
)
from gateway.api.armpath import API_VERSIONS, ArmRouting, canonical_path, is_arm_path
from gateway.api.context import ApiContext
from gateway.api.errors import install_handlers
from gateway.api.hosts import HostCheck
from gateway.api.limits import RequestLimits

API_VERSION = "2024-07-01"


def create_app(context: ApiContext, *, body_timeout: float | None = None) -> FastAPI:
    """A new app serving ``context``'s lab. The context is at ``app.state.context``.
    ``body_timeout``: seconds a request body may take to arrive (None: ``limits``')."""
    app = FastAPI(
        title="Serial Console Lab",
        version=API_VERSION,
        description=(
            "Azure Serial Console's control plane on one machine: Microsoft.SerialConsole "
            "and Microsoft.Compute on ARM's paths, as Azure's SDKs and az call them. Get a "
            "token with POST /oauth2/token (or Entra's /{tenant}/oauth2/v2.0/token), send "
            "it as 'Authorization: Bearer <token>'. Every path under /subscriptions, "
            "/providers and /tenants needs ARM's api-version query parameter (e.g. "
            "2024-07-01 for Microsoft.SerialConsole, 2026-04-01 for Microsoft.Compute)."
        ),
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    install_handlers(app)
    app.include_router(auth.router)
    app.include_router(identity.router)
    app.include_router(arm.router)
    app.include_router(compute.router)
    app.include_router(extensions.router)
    app.include_router(bootdiag.router)
    app.include_router(console_ws.router)
    app.include_router(admin.router)
    app.include_router(recordings.router)
    app.include_router(authorization.router)
    app.include_router(metadata.router)
    portal.install(app)
    app.add_middleware(RequestLimits, context=context, body_timeout=body_timeout)
    app.add_middleware(ArmRouting)
    app.add_middleware(HostCheck, allowed=context.allowed_hosts)  # outermost: runs first
    _declare_path_parameters(app)
    return app


def _api_version_parameter(path: str) -> dict[str, Any]:
    """ARM's required ``api-version``, with the versions the path's provider publishes."""
    _, provider = canonical_path(path)
    versions = list(API_VERSIONS[provider])
    return {
        "name": "api-version",
        "in": "query",
        "required": True,
        "description": f"A version {provider} publishes; the newest is {versions[0]}.",
        "schema": {"type": "string", "enum": versions, "default": versions[0]},
    }


def _declare_path_parameters(app: FastAPI) -> None:
    """Routes read ARM's path segments through their access check (``require``), not as
    arguments, so FastAPI leaves them out of the schema: add each ``{name}`` of a path that
    an operation does not declare, and ARM's ``api-version`` on ARM's paths, so that
    clients generated from /openapi.json work."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path, operations in schema.get("paths", {}).items():
            names = re.findall(r"{([^}]+)}", path)
            for operation in operations.values():
                declared = {
                    p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"
                }
                missing = [n for n in names if n not in declared]
                operation.setdefault("parameters", []).extend(
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in missing
                )
                if is_arm_path(path):
                    operation["parameters"].append(_api_version_parameter(path))
        app.openapi_schema = schema
        return schema

    # FastAPI documents replacing the method to extend the schema; mypy sees a method
    app.openapi = openapi  # type: ignore[method-assign]
