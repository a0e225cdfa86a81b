"""The Ctrl+] escape menu of ``serial-console connect``, as a state machine with no I/O.

Keys typed by the user go in through ``receive_input(data)``; what to do comes out as a
list of actions: bytes to forward to the guest (``Forward``), text to show on the local
terminal (``Show``), commands to run (``SendNmi``, ``SendReset``, ``SendSysRq``) and the
session's fate (``Reconnect``, ``Quit``). The connection's life goes in through
``connection_opened()`` and ``connection_closed()``. Guest output goes through
``output(data)``, which holds it back while a prompt is on screen (as az does) and
releases it with the prompt's answer.

It behaves like ``az serial-console connect``:

- connected: every byte goes to the guest, except Ctrl+] (0x1d), which opens the menu
  ``MENU_TEXT`` (``MENU_TEXT_WINDOWS`` without ``s`` for Windows guests);
- in the menu: ``n`` and ``r`` ask for a capital ``Y`` to confirm an NMI or a hard
  reset; ``s`` asks ``SYSRQ_PROMPT`` and sends the next key as SysRq; ``q`` quits;
  Ctrl+] sends a literal 0x1d; any other key closes the menu;
- while connecting: keys are dropped, Ctrl+C quits, Ctrl+] offers ``q`` to quit;
- closed: Enter reconnects, ``q``, Ctrl+C or Ctrl+D quit, Ctrl+] offers ``q`` to quit.

States (``Mode``): ``connecting`` -> ``connected`` <-> (``menu`` -> ``confirm_nmi`` |
``confirm_reset`` | ``sysrq_key``) -> ``closed`` -> (Reconnect) ``connecting``; the
``quit_menu`` prompt exists in ``connecting`` and ``closed``; ``quit`` is final.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

CTRL_RIGHT_BRACKET = 0x1D
CTRL_C = 0x03
CTRL_D = 0x04
ENTER = (0x0D, 0x0A)

# az's two lines, word for word (SysRq only for Linux guests).
MENU_TEXT = (
    "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
    "| q to quit Console | CTRL + ] to forward input |"
)
MENU_TEXT_WINDOWS = (
    "| Press n for NMI | r to Reset VM |\r\n| q to quit Console | CTRL + ] to forward input |"
)
QUIT_MENU_TEXT = "| Press q to quit Console |"
NMI_PROMPT = (
    "Warning: A Non-Maskable Interrupt (NMI) is used in debugging\r\n"
    "scenarios and is designed to crash your target Virtual Machine.\r\n"
    "Are you sure you want to send an NMI? (Y/n): "
)
RESET_PROMPT = (
    "Warning: This results in a hard restart, like powering the computer\r\n"
    "down, then back up again. This can result in data loss in the virtual\r\n"
    "machine. You should only perform this operation if a graceful restart\r\n"
    "is not effective.\r\n"
    "Are you sure you want to Hard Reset the VM? (Y/n): "
)
SYSRQ_PROMPT = "Which SysRq command would you like to send? Press h for help: "
READ_ONLY_NOTE = "(watching read-only: typing goes nowhere; CTRL + ] then q quits)"

# Guest output held while a prompt is on screen; past this it is shown anyway, so a
# forgotten prompt never makes the client hold an unbounded amount of memory.
MAX_HELD_OUTPUT = 1 << 20


class Mode(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    MENU = "menu"
    CONFIRM_NMI = "confirm_nmi"
    CONFIRM_RESET = "confirm_reset"
    SYSRQ_KEY = "sysrq_key"
    QUIT_MENU = "quit_menu"
    CLOSED = "closed"
    QUIT = "quit"


class EscapeStateError(RuntimeError):
    """A connection event that cannot happen in the current mode (a caller's bug)."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Bytes to send to the guest."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Show:
    """Text to write on the local terminal (already with ``\\r\\n`` line ends)."""

    text: str


@dataclass(frozen=True, slots=True)
class SendNmi:
    """The user confirmed an NMI."""


@dataclass(frozen=True, slots=True)
class SendReset:
    """The user confirmed a hard reset."""


@dataclass(frozen=True, slots=True)
class SendSysRq:
    """The user chose SysRq ``key`` (one character, not checked here: the gateway does)."""

    key: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The user pressed Enter on a closed connection: call connect again."""


@dataclass(frozen=True, slots=True)
class Quit:
    """The user asked to leave the console."""


Action = Forward | Show | SendNmi | SendReset | SendSysRq | Reconnect | Quit

_PROMPTS = (Mode.MENU, Mode.CONFIRM_NMI, Mode.CONFIRM_RESET, Mode.SYSRQ_KEY, Mode.QUIT_MENU)


class EscapeMenu:
    """The keyboard side of a console session. ``windows`` hides SysRq from the menu;
    ``read_only`` (a watcher) forwards nothing. See the module docstring for the rules."""

    def __init__(self, *, windows: bool = False, read_only: bool = False) -> None:
        self.windows = windows
        self.read_only = read_only
        self.mode = Mode.CONNECTING
        self._back = Mode.CONNECTING  # where the quit menu returns to
        self._held: list[bytes] = []
        self._held_size = 0
        self._noted_read_only = False

    @property
    def prompting(self) -> bool:
        """True while a prompt waits for its key (guest output is held meanwhile)."""
        return self.mode in _PROMPTS

    # -- the connection ---------------------------------------------------------------

    def connection_opened(self) -> None:
        """The websocket is up. Allowed while connecting (or its quit menu); ignored once
        the user quit (input ended, say, before the connection came up)."""
        if self.mode == Mode.QUIT:
            return
        if self.mode == Mode.QUIT_MENU and self._back == Mode.CONNECTING:
            self._back = Mode.CONNECTED
            return
        if self.mode != Mode.CONNECTING:
            raise EscapeStateError(f"connection_opened in mode {self.mode}")
        self.mode = Mode.CONNECTED

    def connection_closed(self) -> list[Action]:
        """The websocket is gone (any reason). Returns held output to show, if any.

        From now on Enter reconnects and q quits. Harmless after ``Quit``.
        """
        if self.mode == Mode.QUIT:
            return []
        actions = self._release()
        if actions or self.prompting:
            actions.append(Show("\r\n"))
        self.mode = Mode.CLOSED
        return actions

    def reconnecting(self) -> None:
        """The caller acted on ``Reconnect``: a new connection is being made."""
        if self.mode not in (Mode.CLOSED, Mode.CONNECTING):
            raise EscapeStateError(f"reconnecting in mode {self.mode}")
        self.mode = Mode.CONNECTING

    def end_of_input(self) -> list[Action]:
        """The keyboard is gone (stdin closed): quit, whatever the mode."""
        if self.mode == Mode.QUIT:
            return []
        self.mode = Mode.QUIT
        return [Quit()]

    # -- guest output -----------------------------------------------------------------

    def output(self, data: bytes) -> bytes:
        """Guest bytes to show now: ``data``, or nothing while a prompt is on screen."""
        if not self.prompting:
            return data
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > MAX_HELD_OUTPUT:
            released = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
            return released
        return b""

    def _release(self) -> list[Action]:
        if not self._held:
            return []
        text = b"".join(self._held).decode("utf-8", "replace")
        self._held.clear()
        self._held_size = 0
        return [Show(text)]

    # -- keys -------------------------------------------------------------------------

    def receive_input(self, data: bytes) -> list[Action]:
        """Keys typed by the user, in order; returns the actions, in order.

        Runs of forwarded bytes come out as one ``Forward``. After ``Quit`` the rest of
        ``data`` is ignored.
        """
        actions: list[Action] = []
        pending = bytearray()
        for byte in data:
            if self.mode == Mode.QUIT:
                break
            if self.mode == Mode.CONNECTED and byte != CTRL_RIGHT_BRACKET:
                pending.append(byte)
                continue
            if pending:
                actions.extend(self._forward(bytes(pending)))
                pending.clear()
            actions.extend(self._key(byte))
        if pending:
            actions.extend(self._forward(bytes(pending)))
        return actions

    def _forward(self, data: bytes) -> list[Action]:
        if not self.read_only:
            return [Forward(data)]
        if self._noted_read_only:
            return []
        self._noted_read_only = True
        return [Show("\r\n" + READ_ONLY_NOTE + "\r\n")]

    def _prompt(self, mode: Mode, text: str) -> list[Action]:
        self.mode = mode
        return [Show("\r\n" + text)]

    def _answered(self, mode: Mode, *then: Action) -> list[Action]:
        """Leave a prompt: a new line, the held output, then ``then``."""
        self.mode = mode
        return [Show("\r\n"), *self._release(), *then]

    def _key(self, byte: int) -> list[Action]:
        mode = self.mode
        if mode == Mode.CONNECTED:  # only Ctrl+] gets here
            return self._prompt(Mode.MENU, MENU_TEXT_WINDOWS if self.windows else MENU_TEXT)
        if mode == Mode.MENU:
            return self._menu_key(byte)
        if mode == Mode.CONFIRM_NMI:
            return self._answered(Mode.CONNECTED, *([SendNmi()] if byte == ord("Y") else []))
        if mode == Mode.CONFIRM_RESET:
            return self._answered(Mode.CONNECTED, *([SendReset()] if byte == ord("Y") else []))
        if mode == Mode.SYSRQ_KEY:
            if 0x21 <= byte < 0x7F:
                return self._answered(Mode.CONNECTED, SendSysRq(chr(byte)))
            return self._answered(Mode.CONNECTED)  # Ctrl+], Ctrl+C, Enter...: cancelled
        if mode == Mode.QUIT_MENU:
            if byte == ord("q"):
                self.mode = Mode.QUIT
                return [Show("\r\n"), Quit()]
            return self._answered(self._back)
        if mode == Mode.CONNECTING:
            return self._waiting_key(byte, Mode.CONNECTING)
        if mode == Mode.CLOSED:
            if byte in ENTER:
                self.mode = Mode.CONNECTING
                return [Show("\r\n"), Reconnect()]
            if byte == ord("q"):
                self.mode = Mode.QUIT
                return [Show("\r\n"), Quit()]
            return self._waiting_key(byte, Mode.CLOSED)
        return []

    def _waiting_key(self, byte: int, back: Mode) -> list[Action]:
        if byte in (CTRL_C, CTRL_D):
            self.mode = Mode.QUIT
            return [Show("\r\n"), Quit()]
        if byte == CTRL_RIGHT_BRACKET:
            self._back = back
            return self._prompt(Mode.QUIT_MENU, QUIT_MENU_TEXT)
        return []

    def _menu_key(self, byte: int) -> list[Action]:
        if byte == CTRL_RIGHT_BRACKET:
            return self._answered(Mode.CONNECTED, *self._forward(bytes([CTRL_RIGHT_BRACKET])))
        if byte == ord("n"):
            return self._prompt(Mode.CONFIRM_NMI, NMI_PROMPT)
        if byte == ord("r"):
            return self._prompt(Mode.CONFIRM_RESET, RESET_PROMPT)
        if byte == ord("s") and not self.windows:
            return self._prompt(Mode.SYSRQ_KEY, SYSRQ_PROMPT)
        if byte == ord("q"):
            self.mode = Mode.QUIT
            return [Show("\r\n"), Quit()]
        return self._answered(Mode.CONNECTED)
