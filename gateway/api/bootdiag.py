"""Boot diagnostics: signed, expiring URLs to a VM's serial log, and the log read by offset.

``retrieveBootDiagnosticsData`` (in ``compute``) returns a URL like Azure's SAS blob URLs:
``/bootdiagnostics/{vm}/serialconsole.log?se=<expiry>&sig=<HMAC>``. The signature is the
credential (no bearer token needed, as with a SAS URL): an HMAC-SHA256, with a key kept in
``lab.db``, over the path and the expiry. Reading it returns GCP's getSerialPortOutput
shape: ``start`` in; ``contents``, ``start``, ``next`` out, and ``rotated`` when the bytes
asked for have rotated out of the ring (``start`` then says where the kept bytes begin).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gateway.access.store import LabDatabase
from gateway.api.errors import ArmError
from gateway.console.bootlog import BootLogError

KEY_SETTING = "bootdiag_signing_key"
LOG_NAME = "serialconsole.log"
MAX_READ = 1 << 20

router = APIRouter(tags=["boot diagnostics"])


class UrlSigner:
    """Signs and checks expiring URLs. The key lives in ``lab.db``: URLs survive a restart."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.clock = clock

    @classmethod
    def from_db(cls, db: LabDatabase) -> UrlSigner:
        """The lab's signer; makes and stores its key on first use."""
        stored = db.setting(KEY_SETTING)
        if stored is None:
            stored = secrets.token_hex(32)
            db.set_setting(KEY_SETTING, stored)
        return cls(bytes.fromhex(stored))

    def signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, lifetime: float) -> str:
        """``path`` with ``se`` (expiry, Unix seconds) and ``sig`` appended."""
        expires = int(self.clock() + lifetime)
        return f"{path}?se={expires}&sp=r&sig={self.signature(path, expires)}"

    def verify(self, path: str, expires: int | None, signature: str | None) -> None:
        """Return when the URL is genuine and not expired; ArmError 403 otherwise."""
        if expires is None or not signature:
            raise ArmError(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request: the URL is not signed (se and sig "
                "are missing). Get one from retrieveBootDiagnosticsData.",
            )
        expected = self.signature(path, expires).encode()
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a forged URL may hold any.
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")):
            raise ArmError(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request: the signature does not match. "
                "Get a new URL from retrieveBootDiagnosticsData.",
            )
        if self.clock() >= expires:
            when = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
            raise ArmError(
                403,
                "AuthenticationFailed",
                f"Server failed to authenticate the request: the URL expired at {when}. "
                "Get a new URL from retrieveBootDiagnosticsData.",
            )


def log_path(machine_name: str) -> str:
    return f"/bootdiagnostics/{machine_name}/{LOG_NAME}"


@router.get(
    "/bootdiagnostics/{machine}/serialconsole.log",
    summary="A VM's serial log by byte offset (signed URL from retrieveBootDiagnosticsData)",
)
async def read_serial_log(
    request: Request,
    machine: str,
    se: Annotated[int | None, Query(description="expiry (Unix seconds), from the URL")] = None,
    sig: Annotated[str | None, Query(max_length=128, description="signature, from the URL")] = None,
    start: Annotated[int | None, Query(ge=0, description="first byte offset wanted")] = None,
    max_bytes: Annotated[int, Query(ge=0, le=MAX_READ, alias="maxBytes")] = MAX_READ,
) -> JSONResponse:
    from gateway.api.context import context_of  # the context imports this module

    ctx = context_of(request)
    ctx.signer.verify(log_path(machine), se, sig)
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
