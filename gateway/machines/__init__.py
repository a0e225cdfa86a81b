"""Machines: the VMs whose first serial port the gateway serves (see ``base``)."""

from gateway.machines.base import (
    EventKind,
    EventListener,
    Machine,
    MachineBase,
    MachineCommandError,
    MachineError,
    MachineEvent,
    MachineLaunchError,
    MachineStateError,
    PowerState,
    RestartOutcome,
)

__all__ = [
    "EventKind",
    "EventListener",
    "Machine",
    "MachineBase",
    "MachineCommandError",
    "MachineError",
    "MachineEvent",
    "MachineLaunchError",
    "MachineStateError",
    "PowerState",
    "RestartOutcome",
]
