"""A guest's serial console for tests: pexpect's ``expect`` over the lab's framed websocket.

``Console.open(client, vm)`` asks the lab for a console URL (``connect``, as ``az
serial-console connect`` does), opens it in framed mode (``serial-console.v1``, see
docs/protocol.md) and returns once the gateway said ``connected``. The bytes the gateway
replays first (the recent output: usually the boot) are kept in ``replay``; ``expect``
reads what comes after, live. The object is a ``pexpect.spawnbase.SpawnBase``: ``expect``,
``expect_exact``, ``before``, ``after``, ``match`` and ``logfile_read`` are pexpect's own.

On top of it::

    console.login()                      root and the lab's guest password, unless given
    output, status = console.run("uname -r")      status read from $?, never guessed
    console.sysrq("h"); console.nmi(); console.reset(); console.restart()
    console.wait_for_boot()              the current boot's login prompt (SAC> on Windows)
    console.expect_seen(pattern)         in the replay or live: what came before counts
    console.wait_for_power("panicked")   the VM's power state, as the gateway reports it
    console.read_boot_log()              the boot-diagnostics log (REST)
    console.watch()                      a read-only console on the same VM

Every byte received (replay included) is kept, in order, in ``transcript``; the plugin
attaches it, ANSI sequences stripped, to the report of a test that fails.

A console holds the VM's one writer seat: opening another writer on the same VM (another
test, a person with the CLI) takes it over, and this one then reads EOF with the reason.

Exceptions (pexpect's, so ``expect([..., pexpect.TIMEOUT])`` works as usual)::

    pexpect.ExceptionPexpect
     +-- ExpectTimeout (also pexpect.TIMEOUT)   the pattern did not come in time
     +-- ConsoleClosed (also pexpect.EOF)       the gateway closed the console (reason given)
     +-- ConsoleError                           the lab refused a command or a connect
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pexpect
from pexpect.spawnbase import SpawnBase
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from gateway.console.frames import SUBPROTOCOL
from gateway.testing.client import LabClient, LabClientError
from gateway.testing.timeouts import scaled

DEFAULT_PROMPT = r"[\w.-]+@[\w.-]+:[^\r\n]*?[#$] "  # busybox ash's PS1: root@linux-1:~#
LOGIN_PROMPT = r"(?<!Last )login: "  # not the "Last login: ..." line a login prints
SAC_PROMPT = "SAC>"
BOOT = 120.0  # a QEMU guest's boot under TCG on a busy machine
COMMAND = 60.0  # a console command's answer (a graceful restart waits for the guest)
# Where a boot begins in a console's output: the kernel's banner, or SAC's.
BOOT_STARTS = re.compile(rb"Linux version \d|Computer is booting, SAC started")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[@-Z\\-_]")
TAIL = 800


class ConsoleError(pexpect.ExceptionPexpect):
    """The lab refused to open the console or to run a command; the message says why."""


class ExpectTimeout(pexpect.TIMEOUT):
    """A pattern did not appear in time; the message shows what the console did show."""


class ConsoleClosed(pexpect.EOF):
    """The gateway closed the console (takeover, deallocate, lab stopping): its reason."""


def strip_ansi(text: str) -> str:
    """``text`` without terminal control sequences, with CR LF as LF and lone CRs dropped."""
    text = ANSI.sub("", text).replace("\r\n", "\n")
    return re.sub(r"\r+(?=\n)|\r", "", text)


class _Stream:
    """Bytes and events of one console connection, in arrival order, shared by the thread
    that reads the websocket and the test's thread."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()
        self.connected: dict[str, Any] | None = None
        self.replay_end = 0  # bytes before this index were replayed, not live
        self.power: str = ""
        self.marks: list[int] = []  # stream positions of power events (a boot may follow)
        self.results: dict[str, dict[str, Any]] = {}
        self.closed: str | None = None

    def take(self, frame: str | bytes) -> None:
        with self.cond:
            if isinstance(frame, bytes):
                self.data += frame
            else:
                self._event(json.loads(frame))
            self.cond.notify_all()

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "connected":
            self.connected = event
            self.replay_end = int(event.get("offset", 0)) - int(event.get("replay_from", 0))
            self.power = str(event.get("power_state", ""))
        elif kind == "power":
            self.power = str(event.get("state", self.power))
            self.marks.append(len(self.data))
        elif kind == "result":
            self.results[str(event.get("id"))] = event
        elif kind == "closing":
            self.closed = str(event.get("message") or event.get("reason") or "closed")

    def close(self, reason: str) -> None:
        with self.cond:
            if self.closed is None:
                self.closed = reason
            self.cond.notify_all()


class Console(SpawnBase):  # pexpect has no type hints: its classes are Any
    """One open console; see the module docstring. Make it with ``Console.open``."""

    def __init__(
        self,
        client: LabClient,
        vm: str,
        instance: int | None,
        *,
        group: str,
        password: str,
        prompt: str,
        watch: bool,
        timeout: float,
    ) -> None:
        super().__init__(
            timeout=scaled(timeout), maxread=65536, encoding="utf-8", codec_errors="replace"
        )
        self.client = client
        self.vm = vm
        self.instance = instance
        self.group = group
        self.password = password
        self.prompt = prompt
        self.watching = watch
        self.linesep = "\r"  # Enter on a serial line
        self.delaybeforesend = None
        self.name = vm if instance is None else f"{vm} #{instance}"
        self._stream = _Stream()
        self._cursor = 0
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Future[None] | None = None
        self._ids = itertools.count(1)
        self.closed = True
        # Called with each console opened from this one (``watch``): the plugin keeps them.
        self.on_open: list[Callable[[Console], None]] = []

    @classmethod
    def open(
        cls,
        client: LabClient,
        vm: str,
        instance: int | None = None,
        *,
        group: str | None = None,
        password: str = "serial-lab",
        prompt: str = DEFAULT_PROMPT,
        watch: bool = False,
        timeout: float = 30.0,
    ) -> Console:
        """The console of VM ``vm`` (or instance ``instance`` of scale set ``vm``), open and
        connected; ``watch`` opens it read only. ``password`` is what ``login`` types by
        default, ``prompt`` the shell prompt's regex, ``timeout`` the default of ``expect``.

        Raises ConsoleError with the lab's own words (Azure's) when it refuses."""
        console = cls(
            client,
            vm,
            instance,
            group=group or client.group_of(vm),
            password=password,
            prompt=prompt,
            watch=watch,
            timeout=timeout,
        )
        try:
            url = client.call(
                "connect", console.group, vm, None if instance is None else str(instance)
            )
        except LabClientError as err:
            raise ConsoleError(f"cannot open the console of {console.name}: {err}") from None
        client.io.run(console._connect(url), scaled(timeout))
        console.closed = False
        return console

    async def _connect(self, url: str) -> None:
        query = f"authorization={self.client.token}" + ("&watch=1" if self.watching else "")
        context = None
        if url.startswith("wss:"):
            context = ssl.create_default_context()
            if self.client.ca_pem:
                context.load_verify_locations(cadata=self.client.ca_pem)
        try:
            self._ws = await connect(
                f"{url}?{query}",
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                ssl=context,
                max_size=None,
            )
        except (OSError, InvalidStatus, WebSocketException) as err:
            raise ConsoleError(f"cannot open the console of {self.name}: {err}") from err
        first = await self._ws.recv()
        self._stream.take(first)
        if self._stream.connected is None:
            reason = self._stream.closed or str(first)[:200]
            await self._ws.close()
            raise ConsoleError(f"the console of {self.name} did not open: {reason}")
        self._cursor = self._stream.replay_end
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                self._stream.take(frame)
            reason = f"closed by the gateway ({self._ws.close_code}: {self._ws.close_reason})"
        except ConnectionClosed as err:
            reason = f"connection lost ({err})"
        self._stream.close(reason)

    # -- pexpect's contract --------------------------------------------------------------

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> str:
        """Up to ``size`` bytes past the read cursor, decoded; waits up to ``timeout`` for
        them (pexpect.TIMEOUT), and raises pexpect.EOF once the console closed."""
        if timeout == -1:
            timeout = self.timeout
        stream = self._stream
        with stream.cond:
            stream.cond.wait_for(
                lambda: self._cursor < len(stream.data) or stream.closed is not None, timeout
            )
            chunk = bytes(stream.data[self._cursor : self._cursor + size])
            self._cursor += len(chunk)
            closed = stream.closed
        if not chunk:
            if closed is not None:
                self.flag_eof = True
                raise ConsoleClosed(f"the console of {self.name} closed: {closed}")
            raise pexpect.TIMEOUT(f"nothing new on {self.name} in {timeout} s")
        text: str = self._decoder.decode(chunk, final=False)
        self._log(text, "read")
        return text

    def expect(
        self, pattern: Any, timeout: float | None = -1, searchwindowsize: int | None = -1, **kw: Any
    ) -> int:
        """pexpect's ``expect`` (``timeout`` -1: the console's default; None: no bound); an
        explicit ``timeout`` is scaled by LAB_TIMEOUT_SCALE. Raises ExpectTimeout /
        ConsoleClosed with the console's last output."""
        return self._expecting(super().expect, pattern, self._wait(timeout, kw), searchwindowsize)

    def expect_exact(
        self, pattern: Any, timeout: float | None = -1, searchwindowsize: int | None = -1, **kw: Any
    ) -> int:
        """pexpect's ``expect_exact``, with ``expect``'s timeouts and errors."""
        wait = self._wait(timeout, kw)
        return self._expecting(super().expect_exact, pattern, wait, searchwindowsize)

    def _expecting(
        self, call: Any, pattern: Any, wait: float | None, searchwindowsize: int | None
    ) -> int:
        """``call`` (pexpect's expect or expect_exact), its TIMEOUT and EOF turned into
        ExpectTimeout and ConsoleClosed that show the console's last output."""
        try:
            index: int = call(pattern, wait, searchwindowsize)
        except pexpect.TIMEOUT:
            why = f"did not appear within {wait or 0:.0f} s"
            raise ExpectTimeout(self._explain(pattern, why)) from None
        except pexpect.EOF:
            why = f"never came: the console closed ({self._stream.closed})"
            raise ConsoleClosed(self._explain(pattern, why)) from None
        return index

    def _wait(self, timeout: float | None, options: dict[str, Any]) -> float | None:
        """pexpect's timeout: -1 the console's default, None no bound, else ``timeout``
        seconds scaled."""
        if options.get("async_"):
            raise TypeError(
                "Console.expect blocks (its bytes arrive on a thread of their own): in an "
                "async test, call it through asyncio.to_thread"
            )
        if timeout == -1:
            return float(self.timeout)
        return None if timeout is None else scaled(timeout)

    def _explain(self, pattern: Any, what: str) -> str:
        shown = (
            [getattr(p, "pattern", p) for p in pattern]
            if isinstance(pattern, list)
            else [getattr(pattern, "pattern", pattern)]
        )
        tail = strip_ansi(self.live_text[-TAIL:])
        return f"{self.name}: {' or '.join(map(repr, shown))} {what}; last output:\n{tail}"

    def send(self, data: str | bytes) -> int:
        """Type ``data`` (str as UTF-8) into the console, as the VM's writer."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._check_open()
        self._log(raw.decode(errors="replace"), "send")
        self.client.io.run(self._send(raw), self.timeout)
        return len(raw)

    async def _send(self, frame: str | bytes) -> None:
        assert self._ws is not None
        try:
            await self._ws.send(frame)
        except ConnectionClosed as err:
            raise ConsoleClosed(f"the console of {self.name} closed: {err}") from None

    def sendline(self, line: str = "") -> int:
        """``line`` then Enter (CR, as a terminal sends it)."""
        return self.send(line + self.linesep)

    def sendcontrol(self, char: str) -> int:
        """Ctrl+``char`` (``c`` sends 0x03)."""
        return self.send(bytes([ord(char.lower()) & 0x1F]))

    def _check_open(self) -> None:
        if self.closed:
            raise ConsoleClosed(f"the console of {self.name} is closed")
        if self._stream.closed is not None:
            raise ConsoleClosed(f"the console of {self.name} closed: {self._stream.closed}")

    def close(self) -> None:
        """Close the websocket (the VM keeps running); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._ws is not None:
            self.client.io.run(self._close(), scaled(10))

    async def _close(self) -> None:
        assert self._ws is not None
        await self._ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=5)

    # -- what a test reads ---------------------------------------------------------------

    @property
    def transcript(self) -> str:
        """Every byte this console received (replay first), as text."""
        with self._stream.cond:
            return self._stream.data.decode(errors="replace")

    @property
    def replay(self) -> str:
        """The output the gateway replayed on connecting (the console's recent past)."""
        with self._stream.cond:
            return self._stream.data[: self._stream.replay_end].decode(errors="replace")

    @property
    def live_text(self) -> str:
        """What arrived after the replay, while this console was open."""
        with self._stream.cond:
            return self._stream.data[self._stream.replay_end :].decode(errors="replace")

    @property
    def os(self) -> str:
        """``linux`` or ``windows``, as the gateway said on connecting."""
        assert self._stream.connected is not None
        return str(self._stream.connected.get("os", "linux"))

    @property
    def power_state(self) -> str:
        """The VM's power state as the console last heard it (``running``, ``panicked``...)."""
        return self._stream.power

    def wait_for_power(self, state: str, timeout: float = 30.0) -> None:
        """Wait until the gateway reports power state ``state`` (ExpectTimeout if not)."""
        with self._stream.cond:
            if not self._stream.cond.wait_for(
                lambda: self._stream.power == state or self._stream.closed is not None,
                scaled(timeout),
            ):
                raise ExpectTimeout(
                    f"{self.name}: power state {state!r} not reported within "
                    f"{scaled(timeout):.0f} s (last: {self._stream.power!r})"
                )
        if self._stream.power != state:
            raise ConsoleClosed(f"the console of {self.name} closed: {self._stream.closed}")

    # -- the guest -----------------------------------------------------------------------

    def wait_for_boot(self, timeout: float = BOOT) -> None:
        """Return once the current boot has reached its login prompt (``SAC>`` on Windows):
        at once when it did before (in the replay or earlier), else when it comes.

        The current boot starts at the last power event (reset, restart, start) or the
        last kernel or SAC banner, whichever is later. Afterwards ``expect`` reads only
        what comes next. Raises ExpectTimeout, ConsoleClosed."""
        stream = self._stream
        with stream.cond:
            starts = [m.start() for m in BOOT_STARTS.finditer(stream.data)]
            boundary = max([0, *starts[-1:], *stream.marks[-1:]])
        self._reset_reader(boundary)
        ready = SAC_PROMPT if self.os == "windows" else LOGIN_PROMPT
        self.expect(ready, timeout)
        with stream.cond:
            self._reset_reader(len(stream.data))

    def expect_seen(self, pattern: str, timeout: float = BOOT) -> int:
        """``expect`` over everything this console received, its replay included: the
        guest may have written ``pattern`` before the console opened, or write it later.
        (The replay arrives after ``open`` returns, so ``replay`` may not hold it yet.)
        Afterwards ``expect`` reads on from the match. Raises ExpectTimeout, ConsoleClosed."""
        with self._stream.cond:
            self._reset_reader(0)
        return self.expect(pattern, timeout)

    def _reset_reader(self, position: int) -> None:
        """Read from stream ``position`` on, with pexpect's buffer emptied."""
        self._cursor = position
        self._buffer = self.buffer_type()
        self._before = self.buffer_type()  # pexpect searches this too on its next expect
        self._decoder.reset()

    def login(self, user: str = "root", password: str | None = None, timeout: float = BOOT) -> None:
        """Log ``user`` in at the login prompt (press Enter for a fresh one; waits for a
        booting guest) with ``password`` (default: the lab's guest password); returns at
        the shell prompt. Already at a shell prompt: returns at once.

        Raises ConsoleError when the guest refuses the password."""
        self.drain()
        self.sendline()
        if self.expect([LOGIN_PROMPT, self.prompt], timeout) == 1:
            return
        self.sendline(user)
        self.expect(r"[Pp]assword: ?")
        self.sendline(self.password if password is None else password)
        if self.expect([self.prompt, r"Login incorrect", LOGIN_PROMPT]) != 0:
            raise ConsoleError(f"{self.name}: the guest refused {user}'s password")

    def run(self, command: str, timeout: float = 60.0) -> tuple[str, int]:
        """Run ``command`` (one line) at the shell prompt; its output (CR LF as LF) and its
        exit status, read from ``$?`` between two markers only the shell's output can
        contain. Returns at the next prompt. Raises ExpectTimeout when it does not end."""
        if "\n" in command or "\r" in command:
            raise ValueError("run() takes one command line; join commands with ';' or '&&'")
        token = uuid.uuid4().hex[:10]
        self.drain()
        # printf's format keeps the markers out of the shell's echo of the typed line.
        self.sendline(
            f"printf '%s_%s\\n' __begin {token}; {command}; printf '%s_%s_%s\\n' __end {token} $?"
        )
        self.expect(rf"__begin_{token}\r*\n", timeout)
        self.expect(rf"__end_{token}_(\d+)\r*\n", timeout)
        output = str(self.before).replace("\r\n", "\n")
        status = int(self.match.group(1))
        self.expect(self.prompt, timeout)
        return output, status

    def drain(self) -> None:
        """Skip what arrived and was not read yet: the next ``expect`` reads only what
        comes after this call (a new exchange; ``login`` and ``run`` start with it)."""
        with self._stream.cond:
            self._reset_reader(len(self._stream.data))

    # -- commands beside the bytes (docs/protocol.md) ------------------------------------

    def sysrq(self, keys: str, timeout: float = COMMAND) -> str:
        """SysRq ``keys`` (``h``, or a sequence such as ``REISUB``): a BREAK then each key,
        after what was typed before. The gateway's answer; ConsoleError when refused."""
        return self._command("sysrq", timeout, keys=keys)

    def nmi(self, timeout: float = COMMAND) -> str:
        """A non-maskable interrupt. The gateway's answer; ConsoleError when refused."""
        return self._command("nmi", timeout)

    def reset(self, timeout: float = COMMAND) -> str:
        """Hard reset: the console stays open and shows the new boot (``wait_for_boot``)."""
        return self._command("reset", timeout)

    def restart(self, timeout: float = 180.0) -> str:
        """Graceful restart (ACPI power-off, then boot; a hard reset if the guest ignores
        it), waited for. The gateway's answer; ConsoleError when refused."""
        return self._command("restart", timeout)

    def _command(self, kind: str, timeout: float, **fields: Any) -> str:
        self._check_open()
        rid = f"t{next(self._ids)}"
        stream = self._stream
        with stream.cond:
            marks = len(stream.marks)
        self.client.io.run(self._send(json.dumps({"type": kind, "id": rid, **fields})))
        wait = scaled(timeout)
        with stream.cond:
            stream.cond.wait_for(lambda: rid in stream.results or stream.closed is not None, wait)
            result = stream.results.pop(rid, None)
            if result is not None and result.get("ok") and kind in ("reset", "restart"):
                # The power event may come after the result: wait_for_boot must see it,
                # or it would take the old boot's prompt for the new one's.
                stream.cond.wait_for(
                    lambda: len(stream.marks) > marks or stream.closed is not None, wait
                )
        if result is None:
            if stream.closed is not None:
                raise ConsoleClosed(f"the console of {self.name} closed: {stream.closed}")
            raise ExpectTimeout(f"{self.name}: no answer to {kind} within {wait:.0f} s")
        if not result.get("ok"):
            raise ConsoleError(f"{self.name}: {kind} refused: {result.get('message')}")
        return str(result.get("message", ""))

    # -- elsewhere in the lab ------------------------------------------------------------

    def read_boot_log(self) -> str:
        """The VM's boot-diagnostics serial log (the newest bytes the lab keeps)."""
        try:
            return self.client.boot_log(self.vm, self.instance, self.group)
        except LabClientError as err:
            raise ConsoleError(str(err)) from None

    def watch(self) -> Console:
        """A read-only console on the same VM: it sees everything, displaces nobody, and
        its typing is refused. Close it (or let the plugin do it at the test's end)."""
        viewer = Console.open(
            self.client,
            self.vm,
            self.instance,
            group=self.group,
            password=self.password,
            prompt=self.prompt,
            watch=True,
            timeout=self.timeout / (scaled(1.0) or 1.0),
        )
        viewer.on_open = self.on_open
        for hook in self.on_open:
            hook(viewer)
        return viewer

    def __repr__(self) -> str:
        watching = " (watch)" if getattr(self, "watching", False) else ""
        return f"<Console {getattr(self, 'vm', '?')}{watching}>"
