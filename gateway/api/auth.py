"""Authentication and authorization for the routes: the token endpoint and ``require``.

``POST /oauth2/token`` (form: ``grant_type=password``, ``username``, ``password``) answers
``{"access_token", "token_type": "Bearer", "expires_in"}``; its errors follow OAuth 2.0
(RFC 6749 section 5.2: ``{"error": "invalid_grant", "error_description": ...}``), as Azure
AD's token endpoint does. It is the only route that answers without a token.

Both token endpoints (this one and Entra's v2.0 in ``identity``) sign in through
``sign_in`` and ``issue_token``: a user locked for failing too often (smart lockout) is
refused with Entra's ``AADSTS50053``; a token is issued and audited in one write of
``lab.db``, so a full disk answers 507 and issues nothing.

Every other route declares one dependency, ``require(action, scope_of)``: it authenticates
the bearer token (401 in ARM's shape, with a hint how to get a token), computes the scope
from the path (rejecting hostile names with 400 and unknown subscriptions with 404) and
checks the action there (403). Routes that audit their decisions pass ``audit_as``: every
refusal from then on is recorded with who, from where, on what and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer

from gateway.access import audit, rbac
from gateway.access.errors import (
    AccountLocked,
    AuthenticationError,
    AuthorizationError,
    ExpiredToken,
    InvalidCredentials,
    MissingToken,
)
from gateway.access.tokens import IssuedToken
from gateway.access.users import User
from gateway.api.context import ApiContext, Caller, client_address, context_of
from gateway.api.errors import TOKEN_HINT, ArmError, entra_error
from gateway.lab.inventory import check_instance, check_name
from gateway.lab.signin import audit_refusal, sign_in

router = APIRouter(tags=["authentication"])
bearer = OAuth2PasswordBearer(tokenUrl="/oauth2/token", auto_error=False)

ScopeOf = Callable[[ApiContext, Mapping[str, Any]], str]
Before = Callable[[ApiContext, Caller], None]


@router.post("/oauth2/token", summary="Get a bearer token for a lab user (password grant)")
async def token(
    request: Request,
    grant_type: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form(max_length=256)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
) -> JSONResponse:
    ctx = context_of(request)
    address = client_address(request)
    who = (username or "")[:64]
    if grant_type != "password":
        audit_refusal(ctx, "token", who, address, f"unsupported grant_type {grant_type!r}"[:200])
        return _oauth_error(
            "unsupported_grant_type",
            "Only grant_type=password is supported: send the form fields grant_type=password, "
            "username and password.",
        )
    if not username or password is None:
        return _oauth_error(
            "invalid_request", "The form fields username and password are both required."
        )
    try:
        user = sign_in(ctx, username, password, address)
    except AccountLocked as err:
        return locked_response(err)
    except InvalidCredentials as err:
        return _oauth_error("invalid_grant", str(err))
    issued = await asyncio.to_thread(issue_token, ctx, user, address)  # a write: off the loop
    return JSONResponse(
        {
            "access_token": issued.access_token,
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.post("/oauth2/revoke", summary="Revoke a token (RFC 7009): signing out of the portal")
async def revoke(
    request: Request, token: Annotated[str | None, Form(max_length=4096)] = None
) -> JSONResponse:
    """Make ``token`` unusable at once. As RFC 7009 says, the answer is 200 whether or not
    the token was valid, so a caller learns nothing about other people's tokens."""
    if not token:
        return _oauth_error("invalid_request", "The form field token is required.")
    ctx = context_of(request)
    try:
        user = ctx.tokens.authenticate(token)
    except AuthenticationError:
        return JSONResponse({}, headers={"Cache-Control": "no-store"})
    await asyncio.to_thread(ctx.tokens.revoke, token)  # a write: off the loop
    ctx.audit.post("token", user=user.name, address=client_address(request),
                   target=user.name, outcome=audit.ALLOWED, detail="revoked")  # fmt: skip
    return JSONResponse({}, headers={"Cache-Control": "no-store"})


def _oauth_error(code: str, description: str) -> JSONResponse:
    return JSONResponse({"error": code, "error_description": description}, status_code=400)


def issue_token(ctx: ApiContext, user: User, address: str, grant: str = "") -> IssuedToken:
    """A new token for ``user``, stored and audited in one write: a full disk raises
    StorageFull (answered 507) and no token exists."""
    prefix = f"{grant}, " if grant else ""
    with ctx.audit.db.transaction():
        issued = ctx.tokens.issue(user)
        ctx.audit.record("token", user=user.name, address=address, target=user.name,
                         outcome=audit.ALLOWED,
                         detail=f"{prefix}expires in {issued.expires_in} s")  # fmt: skip
    return issued


def locked_response(err: AccountLocked) -> JSONResponse:
    """Entra's answer to a sign-in of a locked user (AADSTS50053, 400 invalid_grant), with
    the seconds left in ``Retry-After``."""
    wait = str(max(1, round(err.retry_after)))
    return entra_error(400, "invalid_grant", 50053, str(err), headers={"Retry-After": wait})


def authenticate(ctx: ApiContext, token: str | None) -> User:
    """The user of bearer ``token``; ArmError 401 (with ARM's code and a hint) otherwise."""
    try:
        return ctx.tokens.authenticate(token)
    except AuthenticationError as err:
        if isinstance(err, MissingToken):
            code = "AuthenticationFailed"
        elif isinstance(err, ExpiredToken):
            code = "ExpiredAuthenticationToken"
        else:
            code = "InvalidAuthenticationToken"
        raise ArmError(
            401,
            code,
            str(err) + TOKEN_HINT,
            headers={"WWW-Authenticate": 'Bearer authorization_uri="/oauth2/token"'},
        ) from err


def require(
    action: str,
    scope_of: ScopeOf,
    *,
    audit_as: str | None = None,
    before: Before | None = None,
    denied_message: str | None = None,
) -> Any:
    """A dependency that lets the request through only if its caller may do ``action``.

    Order: token (401) -> scope from the path (400/404) -> ``before`` (the checks Azure
    makes ahead of the role, e.g. "console enabled") -> the role (403, with
    ``denied_message`` instead of ARM's text when given). Returns a ``Caller``.
    """

    async def dependency(request: Request, token: Annotated[str | None, Depends(bearer)]) -> Caller:
        ctx = context_of(request)
        user = authenticate(ctx, token)
        caller = Caller(user, client_address(request), "")
        try:
            scope = scope_of(ctx, request.path_params)
            caller = Caller(user, caller.address, scope)
            if before is not None:
                before(ctx, caller)
            try:
                rbac.check(user.name, user.roles, action, scope)
            except AuthorizationError as err:
                sent = f"scope '{scope_as_sent(request, scope)}'"
                message = denied_message or str(err).replace(f"scope '{scope}'", sent, 1)
                raise ArmError(403, "AuthorizationFailed", message) from err
        except ArmError as err:
            if audit_as is not None:  # posted: the refusal stands on a full disk
                post(ctx, caller, audit_as, audit.DENIED, f"{err.code}: {err.message}",
                     target=caller.scope or request.url.path)  # fmt: skip
            raise
        return caller

    return Depends(dependency)


def scope_as_sent(request: Request, scope: str) -> str:
    """``scope`` spelled as the request spelled it, as ARM echoes it in a refusal: az sends
    ``resourcegroups``, and its 403 names ``resourcegroups``. (The routes see the path in
    ARM's canonical spelling; the server keeps the path as sent in ``raw_path``.)"""
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return scope
    wanted = scope.strip("/").split("/")
    sent = unquote(raw.decode("latin-1")).strip("/").split("/")
    if len(sent) < len(wanted):
        return scope
    prefix = sent[: len(wanted)]
    if [p.lower() for p in prefix] != [w.lower() for w in wanted]:
        return scope
    return "/" + "/".join(prefix)


def record(
    ctx: ApiContext,
    caller: Caller,
    action: str,
    outcome: str,
    detail: str = "",
    *,
    target: str = "",
    session: str = "",
) -> None:
    """Audit ``action`` by ``caller`` on ``target`` (default: the caller's scope), about
    the console session ``session`` if any: written now, for a worker thread or inside a
    transaction with the state it describes (StoreError when it cannot be)."""
    ctx.audit.record(action, **_fields(caller, outcome, detail, target, session))


async def record_before(
    ctx: ApiContext,
    caller: Caller,
    action: str,
    outcome: str,
    detail: str = "",
    *,
    target: str = "",
    session: str = "",
) -> None:
    """``record`` from the event loop, for a row that must be written before the request
    goes on (a full disk refuses the action): in a worker thread, so the disk never stalls
    the loop and its consoles."""
    fields = _fields(caller, outcome, detail, target, session)
    await asyncio.to_thread(ctx.audit.record_in_turn, action, **fields)


def post(
    ctx: ApiContext,
    caller: Caller,
    action: str,
    outcome: str,
    detail: str = "",
    *,
    target: str = "",
    session: str = "",
) -> None:
    """Audit a refusal or an outcome, best effort: the audit log's thread writes it
    (``AuditLog.post``); a disk that cannot take it does not change the answer."""
    ctx.audit.post(action, **_fields(caller, outcome, detail, target, session))


def _fields(caller: Caller, outcome: str, detail: str, target: str, session: str) -> dict[str, str]:
    return {"user": caller.user.name, "address": caller.address,
            "target": target or caller.scope, "outcome": outcome, "detail": detail,
            "session": session}  # fmt: skip


# -- scopes from paths ----------------------------------------------------------------------


def subscription_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    ctx.inventory.check_subscription(params["subscription_id"])
    return rbac.subscription_scope(ctx.inventory.subscription_id)


def group_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    subscription_scope(ctx, params)
    group = check_name("resource group", params["resource_group"])
    return rbac.resource_group_scope(ctx.inventory.subscription_id, group)


def vm_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    subscription_scope(ctx, params)
    group = check_name("resource group", params["resource_group"])
    vm = check_name("virtual machine", params["vm_name"])
    return rbac.vm_scope(ctx.inventory.subscription_id, group, vm)


def scale_set_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    subscription_scope(ctx, params)
    group = check_name("resource group", params["resource_group"])
    name = check_name("virtual machine scale set", params["scale_set"])
    return rbac.scale_set_scope(ctx.inventory.subscription_id, group, name)


def instance_scope(ctx: ApiContext, params: Mapping[str, Any]) -> str:
    subscription_scope(ctx, params)
    group = check_name("resource group", params["resource_group"])
    name = check_name("virtual machine scale set", params["scale_set"])
    instance = check_instance(params["instance_id"])
    return rbac.instance_scope(ctx.inventory.subscription_id, group, name, instance)
