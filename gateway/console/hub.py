"""ConsoleHub: owns one machine's serial port for the machine's whole life.

``install()`` registers a port hook on the machine, so each time the machine makes a new
serial port (every start from deallocated), and before the guest's CPU runs, the hub opens
it and reads it continuously into the boot log: the boot is logged from its first byte,
whether or not anyone is connected. Guest output never waits for a client.

This is the hub's first part; sessions (one writer, watchers), fan-out and replay grow
here next.
"""

from __future__ import annotations

import logging

from gateway.console.bootlog import BootLog, BootLogError
from gateway.console.port import SerialPort
from gateway.machines.base import Machine

log = logging.getLogger("serial_console_lab.console.hub")


class ConsoleHub:
    """The gateway's side of one machine's serial port, feeding its boot log.

    Call ``install()`` once, before the machine's first ``start``; ``close()`` when the lab
    ends (it closes the port; the machine's hooks then do nothing). The boot log stays the
    caller's to close.
    """

    def __init__(self, machine: Machine, bootlog: BootLog) -> None:
        self.machine = machine
        self.bootlog = bootlog
        self.log = log.getChild(machine.name)
        self._port: SerialPort | None = None
        self._installed = False
        self._closed = False
        self._log_failed = False

    @property
    def port(self) -> SerialPort | None:
        """The open serial port, or None while the machine has none (deallocated)."""
        if self._port is not None and self._port.closed:
            return None
        return self._port

    def install(self) -> None:
        """Attach to the machine: every new serial port is opened and read from here on."""
        if not self._installed:
            self.machine.add_port_hook(self._attach)
            self._installed = True

    async def _attach(self, path: str) -> None:
        """Port hook: open ``path`` and start logging. SerialPortError fails the start."""
        if self._closed:
            return
        if self._port is not None:
            self._port.close()
        self._port = await SerialPort.open(path, on_data=self._on_data, on_close=self._on_close)
        self.log.debug("reading serial port %s", path)

    def _on_data(self, chunk: bytes) -> None:
        try:
            self.bootlog.append(chunk)
        except BootLogError as err:
            # Keep reading: the guest must never block on the log. Say it once.
            if not self._log_failed:
                self.log.error("boot log stopped: %s", err)
                self._log_failed = True
        else:
            self._log_failed = False

    def _on_close(self, reason: str) -> None:
        self.log.debug("serial port closed: %s", reason)

    def close(self) -> None:
        """Close the port and stop attaching to new ones. Idempotent."""
        self._closed = True
        if self._port is not None:
            self._port.close()
            self._port = None
