"""What ``gateway.lab`` raises, one tree; and ARM's error shape, ``ArmError``.

::

    LabError                base of everything this package raises
     +-- LabConfigError     the lab file is unreadable or invalid (config.py)
     +-- LabRuntimeError    the lab cannot start (runtime.py)
     +-- TlsError           a certificate or key cannot be made, read or used (tls.py)
     |    +-- CertificateError
     +-- ArmError           a refusal in ARM's shape (below)

``ArmError``: the inventory raises it (a VM that does not exist, a name ARM would refuse),
the command and connect checks are mapped to it, and each door spells it its own way: the
HTTP door as ARM's JSON body, SSH and RFC 2217 as a line of text.
"""

from __future__ import annotations


class LabError(Exception):
    """Base of what the lab's package raises; the message says what happened and what
    to do."""


class ArmError(LabError):
    """An error response in ARM's shape. ``message`` is what the user reads.

    ``flat`` answers ``{"code", "message"}`` without the ``error`` wrapper: the shape the
    Microsoft.SerialConsole spec gives its console service's ``SubscriptionNotFound``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        flat: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.flat = flat


def not_found(kind: str, name: str, group: str | None = None) -> ArmError:
    """ARM's ResourceNotFound for ``kind`` (``Microsoft.Compute/virtualMachines``) ``name``."""
    where = f" under resource group '{group}'" if group else ""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}'{where} was not found. For more details please go to "
        "https://aka.ms/ARMResourceNotFoundFix",
    )
