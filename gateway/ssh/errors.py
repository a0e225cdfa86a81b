"""What ``gateway.ssh`` raises, one tree::

SshError            base of everything this package raises
 +-- SshDoorError   the SSH door cannot start (its port, its host key)
 +-- AddressError   an SSH user name that names no user and console (also a ValueError)
"""

from __future__ import annotations


class SshError(Exception):
    """Base of what the SSH door's package raises; the message says what to do."""
