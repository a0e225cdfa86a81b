"""What the console core tells a session's recording, whatever keeps it.

The core (``ConsoleService``, ``ConsoleSession``, ``ConsoleHub``, ``CommandPolicy``) calls
these from the event loop at the moment things happen; an implementation
(``gateway.recordings``) must return at once, never touch the disk in the caller's
thread, and never raise: a recording that cannot keep up loses events, never a console.

- ``ConsoleService.attach`` starts a ``Recording`` for each session through the
  lab's ``Recorder`` (none: nothing is recorded), and gives it the banner;
- ``ConsoleSession.take`` hands it every batch of items as the door takes them for its
  client (the output as the client saw it, with its notices, power changes, takeover);
- ``ConsoleHub.submit`` hands it typed bytes, only when ``records_input`` is true;
- ``CommandPolicy`` marks SysRq, NMI, reset, restart and break with who asked for them,
  in every recording of the VM;
- ``ConsoleService.detach`` ends it with how the session ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.console.sessions import ConsoleSession, Item


class Recording(Protocol):
    """One session's recording. Every method returns at once and raises nothing."""

    @property
    def records_input(self) -> bool:
        """Whether typed bytes go into this recording (the lab file says)."""
        ...

    def took(self, items: list[Item]) -> None:
        """The door took ``items`` for its client now."""

    def typed(self, data: bytes) -> None:
        """The client typed ``data`` (called only when ``records_input``)."""

    def marker(self, label: str) -> None:
        """Something happened on the console (a command, a takeover): ``label`` says what
        and who."""

    def message(self, text: str) -> None:
        """The gateway told the user ``text`` (the banner, a refusal, why it closed)."""

    def ended(self, how: str, message: str = "") -> None:
        """The session is over: ``how`` in a few words, ``message`` what the user read.
        Nothing more is recorded after this."""


class Recorder(Protocol):
    """Starts a recording for each console session."""

    @property
    def records_input(self) -> bool:
        """Whether sessions' typed bytes are recorded (users are told when they connect)."""
        ...

    def start(self, session: ConsoleSession, *, vm_id: str, door: str) -> Recording | None:
        """A new recording of ``session`` on the VM ``vm_id`` (its ARM id), opened through
        ``door``; None when this session is not recorded."""
