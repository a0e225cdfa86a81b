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
