"""Boot diagnostics: signed, expiring URLs to a VM's serial log, and the log read by offset.

``retrieveBootDiagnosticsData`` (in ``compute``) returns a URL like Azure's SAS blob URLs:
``/bootdiagnostics/{vm}/serialconsole.log?sv=...&sr=b&sp=r&se=<expiry>&sig=<HMAC>``. The
signature is the credential (no bearer token needed, as with a SAS URL): an HMAC-SHA256,
with a key kept in ``lab.db``, over the path and the other parameters
(``gateway.access.signing``).

The URL answers as Azure Storage serves a block blob: GET gives the log's kept bytes
(``text/plain``, ``ETag``, ``Last-Modified``, ``x-ms-blob-type: BlockBlob``), HEAD the
headers, ``Range`` a 206; an expired or forged signature is a 403 in the blob service's XML
(``AuthenticationFailed``). The same ``se`` and ``sig`` on ``.../serialconsole.log/pages``
read the log by byte offset as JSON (GCP's getSerialPortOutput shape: ``start`` in;
``contents``, ``start``, ``next`` out, and ``rotated`` when the bytes asked for have
rotated out of the ring): what ``serial-console boot-log`` follows.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.access.errors import SignatureRefused
from gateway.api.context import context_of
from gateway.api.errors import ArmError
from gateway.console.bootlog import BootLogError

LOG_NAME = "serialconsole.log"
SCREENSHOT_NAME = "screenshot.png"
MAX_READ = 1 << 20

router = APIRouter(tags=["boot diagnostics"])


def log_path(machine_name: str) -> str:
    """The path a URL is signed for: the blob of ``machine_name``'s serial log."""
    return f"/bootdiagnostics/{machine_name}/{LOG_NAME}"


def screenshot_path(machine_name: str) -> str:
    """The path a screenshot URL is signed for: a PNG of ``machine_name``'s display."""
    return f"/bootdiagnostics/{machine_name}/{SCREENSHOT_NAME}"


def pages_path(machine_name: str) -> str:
    """The paged JSON reading of the same log (signed by the blob's URL: same se and sig)."""
    return log_path(machine_name) + "/pages"


# -- the blob -------------------------------------------------------------------------------

BLOB_HEADERS = {
    "x-ms-blob-type": "BlockBlob",
    "x-ms-version": "2021-08-06",
    "Accept-Ranges": "bytes",
}
_AUTH_PREFIX = "Server failed to authenticate the request: "


_BLOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {}}, "description": "The log's bytes"},
    206: {"content": {"text/plain": {}}, "description": "The Range asked for"},
    403: {"content": {"application/xml": {}}, "description": "AuthenticationFailed"},
    404: {"content": {"application/xml": {}}, "description": "BlobNotFound"},
    416: {"content": {"application/xml": {}}, "description": "InvalidRange"},
}
BLOB = "/bootdiagnostics/{machine}/serialconsole.log"


@router.head(BLOB, summary="The serial log blob's headers", operation_id="head_serial_log_blob",
             response_class=Response, responses=_BLOB_RESPONSES)  # fmt: skip
@router.get(
    BLOB,
    summary="A VM's serial log as a blob (signed URL from retrieveBootDiagnosticsData)",
    operation_id="get_serial_log_blob",
    response_class=Response,
    responses=_BLOB_RESPONSES,
)
async def read_serial_log_blob(
    request: Request,
    machine: str,
    se: Annotated[
        str | None, Query(max_length=40, description="expiry (ISO 8601), from the URL")
    ] = None,
    sig: Annotated[str | None, Query(max_length=128, description="signature, from the URL")] = None,
) -> Response:
    """The kept bytes of the serial log, as Azure Storage serves a block blob: ``ETag``,
    ``Last-Modified``, ``Content-Length``; ``Range`` (or ``x-ms-range``) for a 206; errors
    in the blob service's XML (``AuthenticationFailed``, ``BlobNotFound``, ``InvalidRange``)."""
    ctx = context_of(request)
    head = request.method == "HEAD"
    try:
        ctx.signer.verify(log_path(machine), request.query_params)
    except SignatureRefused as err:
        return blob_error(403, "AuthenticationFailed", AUTH_FAILED, head, str(err))
    vm = ctx.inventory.by_machine_name(machine)
    if vm is None or vm.bootlog is None:
        return blob_error(404, "BlobNotFound", "The specified blob does not exist.", head)
    try:
        page = vm.bootlog.read_kept()  # across a crash's hole, too
    except BootLogError as err:
        return blob_error(503, "ServerBusy", str(err), head)
    data = page.contents
    etag, modified = ctx.blob_versions.version(machine, page.start, page.next)
    headers = dict(BLOB_HEADERS)
    headers.update({"ETag": etag, "Last-Modified": modified})
    wanted = request.headers.get("x-ms-range") or request.headers.get("range")
    span = parse_range(wanted, len(data)) if wanted else None
    if span == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{len(data)}"
        return blob_error(
            416, "InvalidRange", "The range specified is invalid for the current size of the "
            "resource.", head, headers=headers,
        )  # fmt: skip
    status = 200
    if isinstance(span, tuple):
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        data, status = data[first : last + 1], 206
    headers["Content-Length"] = str(len(data))
    return Response(
        b"" if head else data, status_code=status, media_type="text/plain", headers=headers
    )


@router.get(
    "/bootdiagnostics/{machine}/" + SCREENSHOT_NAME,
    summary="A PNG of the VM's display now (signed URL from retrieveBootDiagnosticsData)",
    operation_id="get_console_screenshot_blob",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The screenshot"}},
)
async def read_console_screenshot_blob(
    request: Request,
    machine: str,
    se: Annotated[
        str | None, Query(max_length=40, description="expiry (ISO 8601), from the URL")
    ] = None,
    sig: Annotated[str | None, Query(max_length=128, description="signature, from the URL")] = None,
) -> Response:
    """The display of a QEMU or libvirt VM as a PNG, taken when asked (QMP ``screendump``),
    as Azure serves ``consoleScreenshotBlobUri``; errors in the blob service's XML."""
    import tempfile
    from pathlib import Path

    from gateway.machines.base import MachineError

    ctx = context_of(request)
    try:
        ctx.signer.verify(screenshot_path(machine), request.query_params)
    except SignatureRefused as err:
        return blob_error(403, "AuthenticationFailed", AUTH_FAILED, detail=str(err))
    vm = ctx.inventory.by_machine_name(machine)
    screendump = getattr(vm.machine, "screendump", None) if vm is not None else None
    if vm is None or screendump is None or not getattr(vm.machine, "has_display", False):
        return blob_error(404, "BlobNotFound", "The specified blob does not exist.")
    with tempfile.TemporaryDirectory(prefix="screenshot-") as folder:
        path = Path(folder) / SCREENSHOT_NAME
        try:
            await screendump(path)
            data = path.read_bytes()
        except (MachineError, OSError) as err:
            return blob_error(409, "BlobNotFound", f"No screenshot of '{vm.name}' now: {err}")
    headers = dict(BLOB_HEADERS)
    headers["Content-Length"] = str(len(data))
    return Response(data, media_type="image/png", headers=headers)


AUTH_FAILED = (
    "Server failed to authenticate the request. Make sure the value of Authorization header "
    "is formed correctly including the signature."
)


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The (first, last) byte of a single ``bytes=`` range of a ``size``-byte blob;
    ``"unsatisfiable"`` when it starts past the end; None when the header is not one
    range (then the whole blob is served, as HTTP says)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    start_text, dash, end_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not start_text:  # the last N bytes
            suffix = int(end_text)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
        first = int(start_text)
        last = int(end_text) if end_text else size - 1
    except ValueError:
        return None
    if first >= size:
        return "unsatisfiable"
    if last < first:
        return None
    return first, min(last, size - 1)


def blob_error(
    status: int,
    code: str,
    message: str,
    head: bool = False,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error as Azure Storage answers it: XML ``<Error><Code>...``, ``x-ms-error-code``."""
    now = datetime.now(UTC)
    text = f"{message}\nRequestId:{uuid.uuid4()}\nTime:{now.isoformat().replace('+00:00', 'Z')}"
    extra = (
        f"<AuthenticationErrorDetail>{escape(detail)}</AuthenticationErrorDetail>" if detail else ""
    )
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(text)}</Message>{extra}</Error>"
    )
    all_headers = {"x-ms-error-code": code, "x-ms-version": BLOB_HEADERS["x-ms-version"]}
    all_headers.update(headers or {})
    return Response(
        b"" if head else body.encode(),
        status_code=status,
        media_type="application/xml",
        headers=all_headers,
    )


# -- the paged JSON reading (serial-console boot-log) ---------------------------------------


@router.get(
    "/bootdiagnostics/{machine}/serialconsole.log/pages",
    summary="A VM's serial log by byte offset, as JSON (the blob URL's se and sig)",
)
async def read_serial_log(
    request: Request,
    machine: str,
    se: Annotated[
        str | None, Query(max_length=40, description="expiry (ISO 8601), from the URL")
    ] = None,
    sig: Annotated[str | None, Query(max_length=128, description="signature, from the URL")] = None,
    start: Annotated[int | None, Query(ge=0, description="first byte offset wanted")] = None,
    max_bytes: Annotated[int, Query(ge=0, le=MAX_READ, alias="maxBytes")] = MAX_READ,
) -> JSONResponse:
    """GCP's getSerialPortOutput shape: ``contents``, ``contentsBase64``, ``start``,
    ``next``, ``rotated`` (and a ``warning`` when bytes asked for have rotated out)."""
    ctx = context_of(request)
    try:
        ctx.signer.verify(log_path(machine), request.query_params)
    except SignatureRefused as err:
        raise ArmError(403, "AuthenticationFailed", _AUTH_PREFIX + str(err)) from None
    vm = ctx.inventory.by_machine_name(machine)
    if vm is None or vm.bootlog is None:
        raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
    try:
        page = vm.bootlog.read(start, max_bytes)
    except BootLogError as err:
        raise ArmError(503, "BootLogUnavailable", str(err)) from err
    body: dict[str, Any] = {
        "kind": "compute#serialPortOutput",
        "contents": page.contents.decode("utf-8", "replace"),
        # The bytes exactly as the guest wrote them (contents is text for reading).
        "contentsBase64": base64.b64encode(page.contents).decode("ascii"),
        "start": page.start,
        "next": page.next,
        "rotated": page.rotated,
    }
    if page.rotated:
        body["warning"] = (
            f"Bytes {start} to {page.start - 1} have rotated out of the boot log "
            f"(it keeps the newest {vm.bootlog.capacity} bytes); output starts at {page.start}."
        )
    return JSONResponse(body)
