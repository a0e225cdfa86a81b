"""The SSH user name of a console: who signs in, and which VM's console they want.

``alice+lab-rg+linux-1`` is user ``alice`` on VM ``linux-1`` of resource group ``lab-rg``;
``alice+lab-rg+web-vmss+0`` is instance ``0`` of scale set ``web-vmss``. ``parse`` raises
``AddressError`` with a message that shows the spelling to use.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ssh.errors import SshError

USAGE = (
    "Sign in as USER+RESOURCE_GROUP+VM (a VM) or USER+RESOURCE_GROUP+SCALE_SET+INSTANCE "
    "(a scale-set instance), for example: ssh -p PORT alice+lab-rg+linux-1@127.0.0.1"
)


class AddressError(SshError, ValueError):
    """An SSH user name that does not name a user and a console; the message says how."""


@dataclass(frozen=True, slots=True)
class ConsoleAddress:
    """A lab user and the console they ask for (``instance`` only for a scale set)."""

    user: str
    group: str
    vm: str
    instance: str | None = None

    @property
    def label(self) -> str:
        """The VM as a person names it: ``linux-1`` or ``web-vmss/0``."""
        return self.vm if self.instance is None else f"{self.vm}/{self.instance}"


def user_of(name: str) -> str:
    """The lab user's part of an SSH user name (all of it when it has no ``+``)."""
    return name.split("+", 1)[0]


def parse(name: str) -> ConsoleAddress:
    """The console ``name`` asks for; AddressError when it is not spelled as ``USAGE`` says."""
    parts = name.split("+")
    if len(parts) not in (3, 4) or not all(parts):
        raise AddressError(f"'{name[:128]}' does not name a console. {USAGE}")
    if len(parts) == 3:
        return ConsoleAddress(parts[0], parts[1], parts[2])
    return ConsoleAddress(parts[0], parts[1], parts[2], parts[3])
