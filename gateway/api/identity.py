"""The lab's directory as Microsoft Entra ID's v2.0 endpoints answer MSAL and azure-identity.

``azure.identity.ClientSecretCredential(tenant_id, client_id=<user>,
client_secret=<password>, authority=<lab URL>, disable_instance_discovery=True)`` asks

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: where the token endpoint is;
- ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``,
  ``client_id``, ``client_secret`` and ``scope`` (``https://management.azure.com/.default``).

A lab user is both a user and an application: ``client_id``/``client_secret`` are a user's
name and password, and ``grant_type=password`` (``username``, ``password``) works as well.
The tenant in the path is the lab's (``[subscription] tenant_id``), or ``organizations`` /
``common``. Errors follow Entra's shape: ``{"error", "error_description", "error_codes"}``
with its AADSTS texts, 400 (401 for a bad client secret). A user who failed to sign in
too often (either grant, either endpoint) is locked for a while: ``AADSTS50053``, even for
the right secret (smart lockout, ``gateway.access.lockout``). The lab's first endpoint,
``POST /oauth2/token`` (``auth``), stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.access.errors import AccountLocked, InvalidCredentials
from gateway.api.auth import issue_token, locked_response, sign_in
from gateway.api.context import ApiContext, client_address, context_of
from gateway.api.errors import entra_error as _entra_error

router = APIRouter(tags=["identity"])

ANY_TENANT = frozenset({"organizations", "common"})
MAX_FIELD = 1024


def _known_tenant(ctx: ApiContext, tenant: str) -> bool:
    return tenant.lower() in ANY_TENANT or tenant.lower() == ctx.inventory.tenant_id.lower()


@router.get(
    "/{tenant}/v2.0/.well-known/openid-configuration",
    summary="OpenID Connect discovery of the lab's tenant (what MSAL asks first)",
)
async def openid_configuration(request: Request, tenant: str) -> JSONResponse:
    ctx = context_of(request)
    if not _known_tenant(ctx, tenant):
        return _entra_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant[:64]}' not found. Check to make sure you have the correct tenant "
            f"ID: the lab's is {ctx.inventory.tenant_id}.",
        )
    base = str(request.base_url).rstrip("/")
    tid = ctx.inventory.tenant_id
    return JSONResponse(
        {
            "issuer": f"{base}/{tid}/v2.0",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "grant_types_supported": ["client_credentials", "password"],
            "response_types_supported": ["token"],
            "scopes_supported": ["https://management.azure.com/.default"],
            "tenant_region_scope": None,
            "cloud_instance_name": "serialconsole.lab",
        }
    )


@router.post(
    "/{tenant}/oauth2/v2.0/token",
    summary="A bearer token for a lab user (client_credentials or password grant)",
)
async def token_v2(request: Request, tenant: str) -> JSONResponse:
    ctx = context_of(request)
    if not _known_tenant(ctx, tenant):
        return _entra_error(
            400,
            "invalid_request",
            90002,
            f"Tenant '{tenant[:64]}' not found. The lab's tenant is {ctx.inventory.tenant_id}.",
        )
    try:
        form = await request.form(max_files=0, max_fields=32)
    except Exception:  # a body that is not a form
        return _entra_error(
            400,
            "invalid_request",
            900144,
            "The request body must be application/x-www-form-urlencoded with grant_type.",
        )
    fields = {k: v for k, v in form.items() if isinstance(v, str) and len(v) <= MAX_FIELD}
    basic = _basic_credentials(request.headers.get("authorization", ""))
    grant = fields.get("grant_type", "")
    if grant == "client_credentials":
        name = fields.get("client_id") or (basic[0] if basic else "")
        secret = fields.get("client_secret") or (basic[1] if basic else "")
        if not name or not secret:
            return _entra_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_secret' (a "
                "lab user's password; client_id is the user's name).",
            )
        bad = (401, "invalid_client", 7000215, "Invalid client secret provided.")
    elif grant == "password":
        name, secret = fields.get("username", ""), fields.get("password", "")
        if not name or not secret:
            return _entra_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameters: 'username' and "
                "'password'.",
            )
        bad = (400, "invalid_grant", 50126, "Error validating credentials due to invalid "
               "username or password.")  # fmt: skip
    else:
        return _entra_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant[:64]}': use "
            "client_credentials (client_id and client_secret: a lab user's name and password) "
            "or password (username and password).",
        )
    address = client_address(request)
    try:
        user = sign_in(ctx, name, secret, address, grant)
    except AccountLocked as err:
        return locked_response(err)
    except InvalidCredentials:
        return _entra_error(*bad)
    issued = await asyncio.to_thread(issue_token, ctx, user, address, grant)  # off the loop
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "ext_expires_in": issued.expires_in,
        "access_token": issued.access_token,
    }
    if fields.get("scope"):
        body["scope"] = fields["scope"]
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) of an ``Authorization: Basic`` header (client_secret_basic)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, secret = decoded.partition(":")
    return (unquote(name), unquote(secret)) if sep else None
