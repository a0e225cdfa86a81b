"""What the console core raises: one tree, so a door can catch the console's refusals and
failures in one place and let everything else (a bug) reach its error log.

::

    ConsoleError                 base: a console operation that cannot be done now
     +-- SysRqNotSupported       SysRq to a VM that is not Linux (Azure's text)
     +-- CommandRefused          a rule of the command policy said no (with Azure's code)
     +-- CommandFailed           the guest, its port or its monitor failed the command
     +-- Refused                 a console connection refused, with its close code
     +-- SerialPortError         the guest's serial port failed
     +-- BootLogError            the boot log cannot be read or written
     +-- FrameError              a framed client's message is malformed (also a ValueError)
     +-- SysRqError              not a SysRq key (also a ValueError)

Each message says what happened and what to do. A caller's bug is not in the tree: the
state machines raise ``PhaseError`` and ``EscapeStateError`` (RuntimeErrors), which no
door catches as a refusal.
"""

from __future__ import annotations


class ConsoleError(Exception):
    """A console operation that cannot be done now; the message says why and what to do."""
