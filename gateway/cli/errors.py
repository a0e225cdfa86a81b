"""The CLI client's exceptions: each message is the one line a user reads, saying what to do.

Exceptions::

    CliError                 base; main prints str(err) and exits non-zero
      CredentialsError       the stored credentials cannot be read or written
      NotLoggedIn            no token, or it expired: run serial-console login
      GatewayError           the gateway answered with an error (ARM or OAuth body)
        GatewayUnreachable   no answer: the lab is not running at that URL
"""

from __future__ import annotations

LOGIN_HINT = "run serial-console login --username NAME"


class CliError(Exception):
    """Base of every error the client commands raise; ``exit_code`` is the process's.

    ``recommendation`` is what to do about it, printed on the line after the message (as
    az prints its recommendations); "" when the message says it all.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, recommendation: str = "") -> None:
        super().__init__(message)
        self.recommendation = recommendation


class CredentialsError(CliError):
    """The credentials file cannot be read or written (the message names it)."""


class NotLoggedIn(CliError):
    """No usable token: the message ends with what to run."""

    def __init__(self, reason: str = "Not logged in", url: str | None = None) -> None:
        hint = LOGIN_HINT if url is None else LOGIN_HINT.replace("login", f"login --url {url}")
        super().__init__(f"{reason}: {hint}")


class GatewayError(CliError):
    """An error answer from the gateway: HTTP ``status``, ARM ``code`` and its ``message``."""

    def __init__(
        self, message: str, *, status: int = 0, code: str = "", recommendation: str = ""
    ) -> None:
        super().__init__(message, recommendation=recommendation)
        self.status = status
        self.code = code


class GatewayUnreachable(GatewayError):
    """The gateway did not answer (refused, timed out, not HTTP)."""
