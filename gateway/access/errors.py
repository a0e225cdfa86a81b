"""The access package's exceptions; the tree is drawn in ``gateway.access``'s docstring.

Every message is what the user should read.
"""

from __future__ import annotations


class AccessError(Exception):
    """Base of everything the access package raises."""


class AuthenticationError(AccessError):
    """The caller could not be identified (HTTP 401)."""


class InvalidCredentials(AuthenticationError):
    """Wrong user name or password."""


class AccountLocked(AuthenticationError):
    """Too many failed sign-ins of this user: it is locked for ``retry_after`` seconds
    (Entra ID's smart lockout, AADSTS50053), even for the right password."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MissingToken(AuthenticationError):
    """The request carried no bearer token."""


class InvalidToken(AuthenticationError):
    """The token was never issued by this lab, or was revoked."""


class ExpiredToken(AuthenticationError):
    """The token's lifetime is over; ``expired_at`` is when (Unix time)."""

    def __init__(self, message: str, expired_at: float) -> None:
        super().__init__(message)
        self.expired_at = expired_at


class AuthorizationError(AccessError):
    """The caller holds no role that grants the action at the scope (HTTP 403)."""

    def __init__(self, message: str, *, user: str, action: str, scope: str) -> None:
        super().__init__(message)
        self.user = user
        self.action = action
        self.scope = scope


class StoreError(AccessError):
    """The lab database cannot be opened or used; the message names the file."""


class StorageFull(StoreError):
    """The state folder's disk is full: ``lab.db`` cannot take the write. Nothing was
    written; the same write works again once space is freed. ``folder`` is the state
    folder, for the message a user reads."""

    def __init__(self, message: str, *, folder: str) -> None:
        super().__init__(message)
        self.folder = folder


class ConnectSessionError(AccessError):
    """A one-time connect session cannot be claimed."""


class UnknownSession(ConnectSessionError):
    """No session has this id."""


class SessionExpired(ConnectSessionError):
    """The session was not claimed within its lifetime."""


class SessionUsed(ConnectSessionError):
    """The session was already claimed: each session opens one connection."""


class SessionWrongUser(ConnectSessionError):
    """The session was made for another user."""


class SignatureRefused(AccessError):
    """A signed URL that is not genuine, or expired; the message says which and what to do."""
