"""Bearer tokens: issued for a user and password, valid for a configurable lifetime.

A token is 32 random bytes (URL-safe text). Only its SHA-256 is stored in ``lab.db``, so a
copy of the database gives nobody a usable token; tokens survive a gateway restart until
they expire. Each row also keeps a mark of the user's password at issue (an HMAC under a
secret of this lab): change a password in the lab file and that user's tokens stop
working. ``authenticate`` is what every door calls to turn a token into a user.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.access.errors import ExpiredToken, InvalidToken, MissingToken
from gateway.access.store import LabDatabase
from gateway.access.users import Directory, User

SECRET_KEY = "token_credential_secret"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token; ``access_token`` is shown once and never stored in clear."""

    access_token: str
    user: str
    expires_in: int
    expires_at: float
    token_type: str = "Bearer"


class TokenService:
    """Issues and checks bearer tokens. ``clock`` (Unix time) can be replaced in tests."""

    def __init__(
        self,
        db: LabDatabase,
        directory: Directory,
        lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.directory = directory
        self.lifetime = lifetime
        self.clock = clock
        secret = db.setting(SECRET_KEY)
        if secret is None:
            secret = secrets.token_hex(32)
            db.set_setting(SECRET_KEY, secret)
        self._secret = bytes.fromhex(secret)

    def _credential(self, user: User) -> str:
        material = f"{user.name}\0{user.password or ''}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, material, hashlib.sha256).hexdigest()

    def issue(self, user: User) -> IssuedToken:
        """A new token for ``user``, valid for ``lifetime`` seconds from now."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.lifetime
        self.db.execute("DELETE FROM tokens WHERE expires < ?", (now,))
        self.db.execute(
            "INSERT INTO tokens (hash, user, issued, expires, credential) VALUES (?, ?, ?, ?, ?)",
            (_hash(token), user.name, now, expires, self._credential(user)),
        )
        return IssuedToken(token, user.name, int(self.lifetime), expires)

    def authenticate(self, token: str | None) -> User:
        """The user ``token`` was issued to.

        Raises MissingToken (no token), InvalidToken (unknown token, or its user left the
        lab), ExpiredToken (too old; the message carries ARM's times).
        """
        if not token:
            raise MissingToken("Authentication failed. The 'Authorization' header is missing.")
        rows = self.db.execute(
            "SELECT user, expires, credential FROM tokens WHERE hash = ?", (_hash(token),)
        )
        if not rows:
            raise InvalidToken("Authentication failed. The access token is invalid.")
        name, expires, credential = rows[0]
        now = self.clock()
        if now >= expires:
            raise ExpiredToken(
                f"The access token expiry UTC time '{_utc(expires)}' is earlier than current "
                f"UTC time '{_utc(now)}'.",
                expired_at=expires,
            )
        user = self.directory.get(name)
        if user is None:
            raise InvalidToken(f"Authentication failed. The user '{name}' is no longer in the lab.")
        if not hmac.compare_digest(credential.encode(), self._credential(user).encode()):
            raise InvalidToken(
                f"Authentication failed. The password of '{name}' changed after this token "
                "was issued: log in again."
            )
        return user

    def revoke(self, token: str) -> None:
        """Make ``token`` unusable at once."""
        self.db.execute("DELETE FROM tokens WHERE hash = ?", (_hash(token),))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%m/%d/%Y %H:%M:%S")
