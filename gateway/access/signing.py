"""Signed, expiring URLs shaped as Azure Storage's service SAS URLs: the boot diagnostics blobs.

A URL carries Azure's SAS parameters: ``sv`` (the storage service version), ``sr=b`` (a
blob), ``sp=r`` (read), ``se`` (the expiry, ISO 8601 UTC: ``2026-12-08T06:00:00Z``) and
``sig`` (base64 of an HMAC-SHA256 over the others and the path), with a key kept in
``lab.db`` (so URLs survive a restart). The signature is the credential: no bearer token is
needed, as with a SAS URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

from gateway.access.errors import SignatureRefused
from gateway.access.store import LabDatabase

KEY_SETTING = "bootdiag_signing_key"
SERVICE_VERSION = "2021-08-06"  # a version of Azure Storage that SAS URLs name in sv
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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

    def signature(self, path: str, sp: str, se: str, sv: str, sr: str) -> str:
        """The SAS signature: base64 of the HMAC over the string to sign, as Storage's."""
        message = f"{sp}\n\n{se}\n{path}\n\n\n\n{sv}\n{sr}".encode()
        return base64.b64encode(hmac.new(self._key, message, hashlib.sha256).digest()).decode()

    def sign(self, path: str, lifetime: float) -> str:
        """``path`` with Azure's SAS parameters appended (read only, for ``lifetime`` s)."""
        se = datetime.fromtimestamp(int(self.clock() + lifetime), UTC).strftime(TIME_FORMAT)
        sig = self.signature(path, "r", se, SERVICE_VERSION, "b")
        return (f"{path}?sv={SERVICE_VERSION}&sr=b&sp=r&se={quote(se, safe='')}"
                f"&sig={quote(sig, safe='')}")  # fmt: skip

    def verify(self, path: str, query: Mapping[str, str]) -> None:
        """Return when the URL whose query is ``query`` is genuine, for reading, and not
        expired; SignatureRefused, saying what to do, otherwise."""
        se, sig = query.get("se"), query.get("sig")
        if not se or not sig:
            raise SignatureRefused(
                "the URL is not signed (se and sig are missing). Get one from "
                "retrieveBootDiagnosticsData."
            )
        sp, sv, sr = query.get("sp", ""), query.get("sv", ""), query.get("sr", "")
        expected = self.signature(path, sp, se, sv, sr).encode()
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a forged URL may hold any.
        if not hmac.compare_digest(expected, sig.encode("utf-8", "surrogateescape")):
            raise SignatureRefused(
                "the signature does not match. Get a new URL from retrieveBootDiagnosticsData."
            )
        try:
            expires = datetime.strptime(se, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise SignatureRefused(
                f"se is not a time such as 2026-01-01T00:00:00Z: {se[:40]!r}"
            ) from None
        if self.clock() >= expires:
            raise SignatureRefused(
                f"the URL expired at {se}. Get a new URL from retrieveBootDiagnosticsData."
            )
