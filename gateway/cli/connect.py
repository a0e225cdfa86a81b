"""``serial-console connect``: the interactive console, like ``az serial-console connect``.

One run: look the machine up (its OS decides the menu) and ask for the first session URL
(``connect``); a refusal that Enter cannot cure (no permission, boot diagnostics off, the
console disabled...) ends the command there with the gateway's text and exit status 1, as
``az serial-console connect`` does. Then put the terminal in raw mode and repeat:
``connect`` (a new one-time session URL, the first one already in hand) -> open the
websocket with the framed subprotocol ``serial-console.v1`` and ``?authorization=<token>``
(``&watch=1`` for a read-only watcher; ``wss://`` verified as the REST calls are) -> show
the banner and the guest's bytes, send the keys -> on close, say why and wait for Enter
(reconnect) or q (quit). Ctrl+] opens az's menu (``gateway.console.escape``); its NMI, reset
and SysRq go as framed commands and their results are shown when they come back. A
session closed because the client fell behind reconnects by itself from the byte it had
reached, so nothing is lost.

Keys are read with ``loop.add_reader`` on stdin into a bounded queue (no threads, no
polling); a full queue stops reading stdin until it drains. The terminal is restored
however the command ends (``gateway.cli.terminal``).

The wire constants are the protocol's (docs/protocol.md); they are repeated here because
the client talks to the gateway only over the network, never by importing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from gateway.cli.advice import recommendation
from gateway.cli.client import GatewayClient
from gateway.cli.errors import CliError, GatewayError, GatewayUnreachable
from gateway.cli.terminal import RawTerminal
from gateway.cli.trust import untrusted_hint
from gateway.console import texts
from gateway.console.escape import (
    EscapeMenu,
    Forward,
    Quit,
    Reconnect,
    SendNmi,
    SendReset,
    SendSysRq,
    Show,
)
from gateway.console.frames import SUBPROTOCOL as FRAMED_SUBPROTOCOL
from gateway.console.frames import CloseCode

# The console's wire constants, imported rather than copied (pure: no I/O comes with them).
SUBPROTOCOL = Subprotocol(FRAMED_SUBPROTOCOL)
CLOSE_TAKEN_OVER = int(CloseCode.TAKEN_OVER)
CLOSE_FELL_BEHIND = int(CloseCode.FELL_BEHIND)
TAKEOVER_TEXT = texts.TAKEOVER
BANNER_TEXT = texts.BANNER
CLOSED_TEXT = 'Connection Closed: Press "Enter" to reconnect...'
NEVER_CONNECTED_TEXT = (
    "Could not establish connection to VM or VMSS. Make sure that it is powered on and "
    'press "Enter" try again...'
)
# az's text when the connect call itself fails (no answer), not the console.
UNREACHABLE_TEXT = (
    "An unexpected error occurred. Could not establish connection to VM or VMSS. "
    'Check network connection and press "Enter" to try again...'
)
QUIT_HINT = "(press q to quit)"

# Refusals of ``connect`` that may pass while the console waits for Enter: the VM can be
# started, a throttled caller can retry. Any other 4xx is final.
RETRYABLE_CODES = frozenset({"VMNotRunning"})
RETRYABLE_STATUSES = frozenset({408, 429})

OPEN_TIMEOUT = 20.0
INPUT_QUEUE = 64
READ_SIZE = 4096
RED, YELLOW, CYAN = "\x1b[91m", "\x1b[33m", "\x1b[36m"
RESET_COLOUR = "\x1b[0m"


@dataclass(frozen=True, slots=True)
class Target:
    """The machine to connect to, as named on the command line."""

    group: str
    name: str
    instance_id: str | None = None


@dataclass(slots=True)
class _Outcome:
    """How one connection ended."""

    opened: bool = False  # the gateway said ``connected``
    quit: bool = False  # the user asked to leave
    code: int | None = None
    message: str = ""
    resume_offset: int | None = None
    error: str = ""  # why it could not even start (connect refused, socket failed)
    unreachable: bool = False  # the connect call got no answer at all


class KeyReader:
    """Keys from ``fd`` into a bounded queue via ``loop.add_reader``. ``b""`` means EOF."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.loop = loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(INPUT_QUEUE)
        self._reading = False
        self._eof = False

    def start(self) -> None:
        """Read ``fd`` when it is readable. A file that cannot be watched counts as EOF."""
        if self._reading or self._eof:
            return
        try:
            self.loop.add_reader(self.fd, self._readable)
        except (OSError, ValueError):  # e.g. /dev/null or a regular file under epoll
            self._eof = True
            self.queue.put_nowait(b"")
            return
        self._reading = True

    def stop(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self.stop()
        self.queue.put_nowait(data)
        if self.queue.full():
            self.stop()  # backpressure: resumed by get()

    async def get(self) -> bytes:
        data = await self.queue.get()
        if not self.queue.full():
            self.start()
        return data


class Screen:
    """The local terminal's output side: guest bytes as they are, and our own texts."""

    def __init__(self, out: BinaryIO, colour: bool) -> None:
        self.out = out
        self.colour = colour

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.out.flush()

    def text(self, text: str) -> None:
        self.write(text.encode("utf-8", "replace"))

    def note(self, text: str, colour: str = YELLOW) -> None:
        """``text`` on its own line(s), coloured on a terminal."""
        if self.colour:
            text = f"{colour}{text}{RESET_COLOUR}"
        self.text(f"\r\n{text}\r\n")


class ConsoleRun:
    """One ``serial-console connect``: see the module docstring."""

    def __init__(
        self,
        client: GatewayClient,
        target: Target,
        *,
        watch: bool = False,
        windows: bool = False,
        stdin_fd: int,
        screen: Screen,
        first_url: str | None = None,
    ) -> None:
        self.client = client
        self._next_url = first_url
        self.target = target
        self.watch = watch
        self.menu = EscapeMenu(windows=windows, read_only=watch)
        self.stdin_fd = stdin_fd
        self.screen = screen
        self._request_id = 0
        self._power_shown = ""  # the power state last shown: each change once

    async def run(self) -> int:
        """Until the user quits (0). Raises nothing the user should not read."""
        keys = KeyReader(self.stdin_fd, asyncio.get_running_loop())
        keys.start()
        try:
            resume: int | None = None
            while True:
                outcome = await self._connection(keys, resume)
                resume = None
                if outcome.quit:
                    return 0
                self._tell(outcome)
                if outcome.code == CLOSE_FELL_BEHIND and outcome.resume_offset is not None:
                    resume = outcome.resume_offset
                    self.menu.reconnecting()
                    continue
                if not await self._wait_reconnect(keys):
                    return 0
        finally:
            keys.stop()

    # -- one connection ---------------------------------------------------------------

    async def _connection(self, keys: KeyReader, resume: int | None) -> _Outcome:
        outcome = _Outcome()
        url, self._next_url = self._next_url, None
        try:
            if url is None:
                url = await self.client.connect(
                    self.target.group, self.target.name, self.target.instance_id
                )
        except GatewayError as err:
            outcome.unreachable = isinstance(err, GatewayUnreachable)
            advice = err.recommendation or recommendation(
                err.code, self.target.group, self.target.name, self.target.instance_id
            )
            outcome.error = f"{err}\r\n{advice}" if advice else str(err)
            return outcome
        query: dict[str, str] = {"authorization": self.client.token}
        if self.watch:
            query["watch"] = "1"
        if resume is not None:
            query["offset"] = str(resume)
        try:
            ws = await websockets.connect(
                f"{url}?{urlencode(query)}",
                subprotocols=[SUBPROTOCOL],
                open_timeout=OPEN_TIMEOUT,
                max_size=1 << 22,
                compression=None,
                ssl=self.client.ssl if url.startswith("wss:") else None,
            )
        except ssl.SSLCertVerificationError:
            outcome.error = untrusted_hint(self.client.url)
            return outcome
        except (OSError, TimeoutError, websockets.InvalidHandshake) as err:
            outcome.error = f"The console websocket could not be opened: {err}"
            return outcome
        try:
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(self._receive(ws, outcome))
                typing = group.create_task(self._type(ws, keys, outcome))
                receiving.add_done_callback(lambda _: typing.cancel())
        finally:
            await ws.close()
        return outcome

    async def _receive(self, ws: ClientConnection, outcome: _Outcome) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self.screen.write(self.menu.output(message))
                else:
                    self._event(message, outcome)
        except websockets.ConnectionClosed:
            pass
        if outcome.code is None and ws.close_code is not None:
            outcome.code = ws.close_code
            outcome.message = outcome.message or ws.close_reason or ""

    async def _type(self, ws: ClientConnection, keys: KeyReader, outcome: _Outcome) -> None:
        """Keys -> the menu -> the gateway, until quit. A close racing a keystroke ends it
        quietly: ``_receive`` has the close and says why."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._type_keys(ws, keys, outcome)

    async def _type_keys(self, ws: ClientConnection, keys: KeyReader, outcome: _Outcome) -> None:
        while True:
            data = await keys.get()
            actions = self.menu.receive_input(data) if data else self.menu.end_of_input()
            for action in actions:
                if isinstance(action, Forward):
                    await ws.send(action.data)
                elif isinstance(action, Show):
                    self.screen.text(action.text)
                elif isinstance(action, SendNmi):
                    await self._command(ws, "nmi")
                elif isinstance(action, SendReset):
                    await self._command(ws, "reset")
                elif isinstance(action, SendSysRq):
                    await self._command(ws, "sysrq", keys=action.key)
                elif isinstance(action, Quit):
                    outcome.quit = True
                    await ws.close()
                    return

    async def _command(self, ws: ClientConnection, kind: str, **fields: str) -> None:
        self._request_id += 1
        await ws.send(json.dumps({"type": kind, "id": str(self._request_id), **fields}))

    def _event(self, text: str, outcome: _Outcome) -> None:
        try:
            event: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "connected":
            outcome.opened = True
            self.menu.windows = str(event.get("os", "")).lower() == "windows"
            self.menu.connection_opened()
            banner = str(event.get("banner") or BANNER_TEXT)
            self.screen.text(banner + "\r\n")
            if event.get("role") == "watcher":
                self.screen.note("Watching read-only: CTRL + ] then q quits.", CYAN)
        elif kind == "result":
            message = str(event.get("message", ""))
            ok = bool(event.get("ok"))
            self.screen.note(message if ok else f"Failed: {message}", YELLOW if ok else RED)
        elif kind == "power":
            state = str(event.get("state"))
            if state != self._power_shown or event.get("event") != "state":
                self.screen.note(f"[VM power state: {state}]", CYAN)  # once per change
            self._power_shown = state
        elif kind == "idle_warning":
            self.screen.note(texts.idle_warning(int(event.get("seconds") or 0)))
        elif kind == "message":
            self.screen.note(str(event.get("text", "")))
        elif kind == "taken_over":
            outcome.code = CLOSE_TAKEN_OVER
            outcome.message = TAKEOVER_TEXT
        elif kind == "closing":
            code = event.get("code")
            outcome.code = code if isinstance(code, int) else outcome.code
            outcome.message = str(event.get("message") or event.get("reason") or "")
            offset = event.get("resume_offset")
            outcome.resume_offset = offset if isinstance(offset, int) else None

    # -- between connections ----------------------------------------------------------

    def _tell(self, outcome: _Outcome) -> None:
        """Say why the connection ended, in Azure's words where Azure has them."""
        for action in self.menu.connection_closed():
            if isinstance(action, Show):
                self.screen.text(action.text)
        if outcome.code == CLOSE_FELL_BEHIND and outcome.resume_offset is not None:
            self.screen.note(f"[Reconnecting from byte {outcome.resume_offset}...]", CYAN)
            return
        if outcome.code == CLOSE_TAKEN_OVER:
            self.screen.note(outcome.message or TAKEOVER_TEXT, RED)
            return
        if not outcome.opened:
            reason = outcome.error or outcome.message
            if reason:
                self.screen.note(reason, RED)
            text = UNREACHABLE_TEXT if outcome.unreachable else NEVER_CONNECTED_TEXT
            self.screen.note(text + " " + QUIT_HINT, RED)
            return
        if outcome.message and outcome.code not in (None, 1000):
            self.screen.note(outcome.message, RED)
        self.screen.note(CLOSED_TEXT + " " + QUIT_HINT, RED)

    async def _wait_reconnect(self, keys: KeyReader) -> bool:
        """Keys after a close: True on Enter (reconnect), False on quit or EOF."""
        while True:
            data = await keys.get()
            if not data:
                return False
            for action in self.menu.receive_input(data):
                if isinstance(action, Show):
                    self.screen.text(action.text)
                elif isinstance(action, Reconnect):
                    return True
                elif isinstance(action, Quit):
                    return False


async def run_connect(
    client: GatewayClient,
    target: Target,
    *,
    watch: bool = False,
    stdin_fd: int | None = None,
    out: BinaryIO | None = None,
    terminal: Callable[[int], contextlib.AbstractContextManager[Any]] = RawTerminal,
) -> int:
    """``serial-console connect``: look the machine up, then the console until q.

    Raises CliError (before touching the terminal) when the machine cannot be found or
    read, or when the first ``connect`` is refused for good (``final_refusal``);
    everything after is told on the console and ends with exit status 0.
    """
    machine = await client.get_machine(target.group, target.name, target.instance_id)
    first_url: str | None = None
    try:
        first_url = await client.connect(target.group, target.name, target.instance_id)
    except GatewayError as err:
        if final_refusal(err):
            raise
        # Told on the console, where Enter tries again (e.g. once the VM is started).
    os_type = str(
        machine.get("properties", {}).get("storageProfile", {}).get("osDisk", {}).get("osType", "")
    )
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    output = sys.stdout.buffer if out is None else out
    screen = Screen(output, colour=_is_tty(output))
    with terminal(fd):
        run = ConsoleRun(
            client,
            target,
            watch=watch,
            windows=os_type.lower() == "windows",
            stdin_fd=fd,
            screen=screen,
            first_url=first_url,
        )
        try:
            return await run.run()
        except CliError as err:
            screen.note(str(err), RED)
            return err.exit_code


def final_refusal(err: GatewayError) -> bool:
    """Whether a refused ``connect`` stays refused however often Enter is pressed: a 4xx
    such as Azure's permission or boot-diagnostics texts, not a stopped VM or no answer."""
    if isinstance(err, GatewayUnreachable) or not 400 <= err.status < 500:
        return False
    return err.status not in RETRYABLE_STATUSES and err.code not in RETRYABLE_CODES


def _is_tty(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False
