"""Opening a console: Azure's checks on the VM, in Azure's order, for every door.

Every door (the websocket's connect route, SSH, RFC 2217) asks the same questions before a
session starts, after its own authentication and the caller's role:

1. the subscription's console is enabled (``CONSOLE_DISABLED``), which Azure checks before
   the role, so a door asks ``check_console_enabled`` first;
2. the VM is provisioned (``NOT_PROVISIONED``);
3. the VM runs (``NOT_RUNNING``; a panicked VM still runs, its console is the point);
4. boot diagnostics are on and the VM has its scale set's latest model
   (``BOOT_DIAGNOSTICS_OFF``);
5. the VM's serial port is enabled (``PORT_DISABLED``).

``ConsoleUnavailable`` carries the ``Unavailable`` rule (ARM's error code and status) and
Azure's text; each door spells it its own way (an ARM error, an SSH line and exit, a line
on the RFC 2217 stream). Nothing here does I/O.
"""

from __future__ import annotations

import enum
from typing import Protocol

from gateway.console import texts
from gateway.console.errors import ConsoleError
from gateway.machines.base import Machine, PowerState


class ArmRule(enum.Enum):
    """A rule the console keeps, as ARM reports it: each member's value is (error code,
    HTTP status). The base of ``Unavailable`` here and of the command policy's ``Refusal``."""

    @property
    def code(self) -> str:
        return str(self.value[0])

    @property
    def status(self) -> int:
        return int(self.value[1])


class Unavailable(ArmRule):
    """Why a console cannot be opened."""

    CONSOLE_DISABLED = ("SerialConsoleDisabled", 409)
    NOT_PROVISIONED = ("ProvisioningNotSucceeded", 409)
    NOT_RUNNING = ("VMNotRunning", 409)
    BOOT_DIAGNOSTICS_OFF = ("BootDiagnosticsNotEnabled", 409)
    PORT_DISABLED = ("SerialPortDisabled", 409)


class ConsoleUnavailable(ConsoleError):
    """The console cannot be opened now; ``str()`` is Azure's text, ``rule`` which check."""

    def __init__(self, rule: Unavailable, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class ConsoleVm(Protocol):
    """What the checks read of a VM (the lab's inventory entry of a VM or an instance)."""

    @property
    def provisioning_state(self) -> str: ...

    @property
    def boot_diagnostics(self) -> bool: ...

    @property
    def latest_model(self) -> bool: ...

    @property
    def machine(self) -> Machine: ...


RUNNING_STATES = (PowerState.RUNNING, PowerState.PANICKED)


def check_console_enabled(disabled: bool) -> None:
    """Rule 1: ConsoleUnavailable when the subscription's console is turned off."""
    if disabled:
        raise ConsoleUnavailable(Unavailable.CONSOLE_DISABLED, texts.CONSOLE_DISABLED)


def check_open(vm: ConsoleVm, *, port_enabled: bool) -> None:
    """Rules 2-5 for ``vm``: ConsoleUnavailable with Azure's text for the first that fails."""
    if vm.provisioning_state != "Succeeded":
        raise ConsoleUnavailable(Unavailable.NOT_PROVISIONED, texts.NOT_PROVISIONED)
    if vm.machine.power_state not in RUNNING_STATES:
        raise ConsoleUnavailable(Unavailable.NOT_RUNNING, texts.NOT_RUNNING)
    if not vm.boot_diagnostics or not vm.latest_model:
        raise ConsoleUnavailable(Unavailable.BOOT_DIAGNOSTICS_OFF, texts.BOOT_DIAGNOSTICS_OFF)
    if not port_enabled:
        raise ConsoleUnavailable(Unavailable.PORT_DISABLED, texts.PORT_DISABLED)
