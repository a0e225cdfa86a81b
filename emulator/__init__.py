"""Emulated guests on PTYs: Linux and Windows (SAC) personalities behind the Machine protocol.

Modules::

    machine.py      EmulatedMachine: a MachineBase whose serial port is a real PTY
    pty.py          PtyPair and Uart: the thin adapter between a PTY and a personality
    guest.py        the sans-I/O personality contract, GuestEvent, output queue, line editor
    linux.py        LinuxGuest: kernel boot, getty, login, sh, SysRq, NMI (texts: linux_texts.py)
    userland.py     UserlandLinuxGuest: LinuxGuest's kernel with the image's own userland under it
    sandbox.py      that userland's process tree in Linux namespaces, on a PTY of its own
    sac.py          SacGuest: Windows EMS/SAC on COM1, Command Prompt channels, bugchecks

Errors are ``gateway.machines.base``'s tree (``MachineError`` and its subclasses); the
personalities raise nothing (what a guest cannot do, it says on its console). Bad
constructor arguments raise ``ValueError``.
"""

from emulator.machine import EmulatedMachine

__all__ = ["EmulatedMachine"]
