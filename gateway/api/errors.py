"""Errors as ARM answers them: ``{"error": {"code": ..., "message": ...}}``, with Azure's texts.

``ArmError(status, code, message)`` is raised by routes and dependencies; the handlers
installed by ``install_handlers`` turn it, FastAPI's validation errors, unknown paths and
unexpected failures into that shape. Hostile or malformed input is a 4xx with a message
that says what was wrong, never a 5xx.

A full disk under the state folder (``StorageFull`` from ``lab.db``, or ENOSPC from any
other write) is ``507 InsufficientStorage``, saying what to free; the request did nothing.
The lab database failing otherwise is ``503 ServiceUnavailable``. Neither is logged per
request: the store logs a full disk once a minute.

``entra_error`` is the token endpoints' error: Entra ID's ``{"error", "error_description",
"error_codes", ...}`` with an ``AADSTS`` code.

Exceptions::

    ArmError            an HTTP error with ARM's body; status, code, message, headers
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.access.errors import StorageFull, StoreError
from gateway.access.store import FullDiskNotice, full_message, is_disk_full
from gateway.api.armpath import unknown_resource_type

# Azure's texts, word for word: one copy, in the console core, for every door.
from gateway.console.texts import (
    BOOT_DIAGNOSTICS_OFF,
    CONSOLE_DISABLED,
    NO_PERMISSION,
    NOT_PROVISIONED,
    NOT_RUNNING,
    PORT_DISABLED,
)
from gateway.lab.errors import ArmError, not_found

log = logging.getLogger("serial_console_lab.api")


__all__ = [
    "BOOT_DIAGNOSTICS_OFF",
    "CONSOLE_DISABLED",
    "NOT_PROVISIONED",
    "NOT_RUNNING",
    "NO_PERMISSION",
    "PORT_DISABLED",
    "TOKEN_HINT",
    "ArmError",
    "entra_error",
    "install_handlers",
    "not_found",
]

# ENOSPC from writes outside lab.db (a request's own files): one log line a minute too.
_other_writes = FullDiskNotice("the state folder", what="the control plane cannot write")

TOKEN_HINT = (
    " Get a token with POST /oauth2/token (form fields grant_type=password, username, "
    "password) and send it as 'Authorization: Bearer <access_token>'."
)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(err: ArmError) -> JSONResponse:
    body = (
        {"code": err.code, "message": err.message}
        if err.flat
        else error_body(err.code, err.message)
    )
    return JSONResponse(body, err.status, headers=err.headers)


def storage_error(err: StoreError) -> ArmError:
    """ARM's answer to a lab database that refused: 507 for a full disk, else 503."""
    if isinstance(err, StorageFull):
        return ArmError(507, "InsufficientStorage", str(err))
    return ArmError(
        503,
        "ServiceUnavailable",
        f"The lab cannot use its database, so it did nothing: {err}. Check the state folder "
        "(its disk, its permissions), then try again.",
    )


def entra_error(
    status: int, error: str, code: int, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error of Entra ID's token endpoints: ``AADSTS<code>: <description>`` and its
    trace and correlation ids, as MSAL and azure-identity parse it."""
    trace = str(uuid.uuid4())
    stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {trace} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": trace,
        },
        status_code=status,
        headers=headers,
    )


def install_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in ARM's shape."""

    @app.exception_handler(ArmError)
    async def _arm(_: Request, err: ArmError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StoreError)
    async def _store(_: Request, err: StoreError) -> JSONResponse:
        return error_response(storage_error(err))

    @app.exception_handler(OSError)
    async def _os(request: Request, err: OSError) -> JSONResponse:
        if is_disk_full(err):
            _other_writes.refused()
            where = os.path.dirname(str(err.filename)) if err.filename else "the state folder"
            return error_response(ArmError(507, "InsufficientStorage", full_message(where)))
        log.error("%s %s failed: %s", request.method, request.url.path, err)
        log.debug("traceback", exc_info=err)
        return error_response(
            ArmError(500, "InternalServerError", f"The gateway failed to serve the request: {err}")
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for item in err.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        message = "The request content was invalid and could not be deserialized: " + "; ".join(
            problems
        )
        return error_response(ArmError(400, "InvalidRequestContent", message))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            invalid = unknown_resource_type(
                request.url.path, request.query_params.get("api-version", "")
            )
            if invalid is not None:
                return error_response(ArmError(404, "InvalidResourceType", invalid))
            message = (
                f"No route matches '{request.method} {request.url.path}'. The paths this "
                "gateway serves are listed in /openapi.json."
            )
            return error_response(ArmError(404, "NotFound", message))
        if err.status_code == 405:
            message = f"The method '{request.method}' is not allowed on '{request.url.path}'."
            return error_response(ArmError(405, "MethodNotAllowed", message))
        code = "BadRequest" if 400 <= err.status_code < 500 else "InternalServerError"
        return error_response(ArmError(err.status_code, code, str(err.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, err)
        log.debug("traceback", exc_info=err)
        return error_response(
            ArmError(500, "InternalServerError", f"The gateway failed to serve the request: {err}")
        )
