"""Signed, expiring URLs, as Azure Storage's SAS URLs are: the boot diagnostics blobs.

A URL carries its expiry (``se``, Unix seconds) and an HMAC-SHA256 (``sig``) over its path
and the expiry, with a key kept in ``lab.db`` (so URLs survive a restart). The signature is
the credential: no bearer token is needed, as with a SAS URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.access.errors import SignatureRefused
from gateway.access.store import LabDatabase

KEY_SETTING = "bootdiag_signing_key"


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
        """Return when the URL is genuine and not expired; SignatureRefused otherwise."""
        if expires is None or not signature:
            raise SignatureRefused(
                "the URL is not signed (se and sig are missing). Get one from "
                "retrieveBootDiagnosticsData."
            )
        expected = self.signature(path, expires).encode()
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a forged URL may hold any.
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")):
            raise SignatureRefused(
                "the signature does not match. Get a new URL from retrieveBootDiagnosticsData."
            )
        if self.clock() >= expires:
            when = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
            raise SignatureRefused(
                f"the URL expired at {when}. Get a new URL from retrieveBootDiagnosticsData."
            )
