"""RFC 2217 servers: a VM's console as a network serial port, on 127.0.0.1 only.

A lab file opens the door for a VM with ``rfc2217_port = N`` (and ``rfc2217_role``); each
scale-set instance ``n`` gets port ``N + n``. Any RFC 2217 client (pyserial's
``rfc2217://127.0.0.1:N``, labgrid's ``NetworkSerialPort``, ser2net-style tools, or a
plain ``telnet``) then reads and types on the console, as any other door does:

- each connection is a ``ConsoleService`` session of the user ``rfc2217`` in the door's
  role: Azure's one-writer rule holds (a writer takes the console over from the writer
  before it, whichever door it came by), the per-user bound counts every RFC 2217 client,
  and the connect, takeover and disconnect are audited with the client's address;
- Azure's checks run at the connect, as at every door (``gateway.console.opening``: the
  subscription's console, the VM provisioned and running, boot diagnostics, its serial
  port): a console that cannot be opened is refused with Azure's text on a line;
- typed bytes go to the hub (``ConsoleHub.submit``); a watcher's are refused, and the
  client is told once on a line of its own;
- a BREAK (RFC 2217's break condition set then cleared, as ``send_break`` does, or
  telnet's ``IAC BRK``) is the ``break`` command, through the ``CommandPolicy`` like every
  door's commands, in order with the bytes typed around it;
- line settings (baud rate, data bits, parity, stop bits, flow control, DTR, RTS) are
  accepted, kept and reported back, not applied: the guest's console is a PTY, not a UART
  (``gateway.rfc2217.line``).

There is no authentication in RFC 2217: the lab file opening the port is the grant, and
the door listens on loopback only. pyserial's ``PortManager`` speaks telnet and RFC 2217;
this module moves its bytes and calls the lab's services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from dataclasses import dataclass

from serial.rfc2217 import BRK, PortManager

from gateway.access import audit
from gateway.access.rbac import RoleAssignment
from gateway.console.connection import Refused
from gateway.console.errors import ConsoleError
from gateway.console.frames import CloseCode
from gateway.console.hub import ConsoleHub
from gateway.console.opening import ConsoleUnavailable, check_console_enabled, check_open
from gateway.console.policy import Actor, Target
from gateway.console.render import framed_line, line_of
from gateway.console.serve import idle_watch, serve
from gateway.console.service import ConsoleService
from gateway.console.sessions import (
    Closing,
    ConsoleSession,
    Output,
    Role,
)
from gateway.lab.context import LabContext, service_of
from gateway.lab.inventory import VmResource
from gateway.rfc2217.line import RecordedLine

log = logging.getLogger("serial_console_lab.rfc2217")

HOST = "127.0.0.1"  # never beyond this machine: RFC 2217 has no authentication
USER = "rfc2217"  # who every RFC 2217 client is, in sessions and the audit log
DOOR = "rfc2217"
CLOSE_BOUND = 5.0  # seconds to deliver the last words to a client, then it is cut
READ_SIZE = 4096
STALL_BOUND = 60.0  # seconds a client may leave sent bytes unread before it is let go
ANSWERS_BOUND = 64 << 10  # unsent negotiation answers before the reader waits for the client
# pyserial's PortManager logs each telnet option it rejects at WARNING: any client could
# fill the lab's log at will, so its negotiation speaks only of errors (lower this logger's
# level to follow a negotiation).
NEGOTIATION_LOG = logging.getLogger("serial_console_lab.rfc2217.negotiation")
NEGOTIATION_LOG.setLevel(logging.ERROR)
LINGER = 3.0  # seconds a client has to read the last words before the door hangs up
# What a client's malformed negotiation makes pyserial's PortManager raise.
_BAD_NEGOTIATION = (struct.error, KeyError, IndexError, TypeError, ValueError)


class Rfc2217Error(Exception):
    """An RFC 2217 door cannot open; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class DoorSpec:
    """One door to open: the VM (or instance), its port, the role of its clients."""

    vm: VmResource
    port: int
    role: Role


class Rfc2217Doors:
    """Every RFC 2217 server of a lab. ``await Rfc2217Doors.open(config, ctx)`` listens;
    ``await close()`` stops listening and ends every connection (each client hears why).
    ``listening`` names the doors open; ``clients`` the connections, each with its ``line``
    (the settings its client set)."""

    def __init__(self, ctx: LabContext) -> None:
        self.ctx = ctx
        self.service = service_of(ctx)
        self.servers: dict[str, asyncio.Server] = {}  # machine name -> its server
        self.listening: list[DoorSpec] = []  # the doors open, in the lab file's order
        self.clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no client is connected
        self._idle.set()

    @classmethod
    async def open(cls, specs: list[DoorSpec], ctx: LabContext) -> Rfc2217Doors:
        """Listen on every door of ``specs`` (the runtime's, from the lab file). Raises
        Rfc2217Error (nothing left open) when a port cannot be had."""
        doors = cls(ctx)
        try:
            for spec in specs:
                await doors._listen(spec)
        except BaseException:
            await doors.close()
            raise
        return doors

    async def _listen(self, spec: DoorSpec) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(spec, reader, writer)

        try:
            server = await asyncio.start_server(on_client, HOST, spec.port, reuse_address=True)
        except OSError as err:
            raise Rfc2217Error(
                f"cannot listen on {HOST}:{spec.port} for the RFC 2217 door of "
                f"'{spec.vm.name}': {err.strerror or err}. Pick another rfc2217_port in the "
                "lab file (a scale set uses one port per instance from it)."
            ) from err
        self.servers[spec.vm.name] = server
        self.listening.append(spec)
        log.info("RFC 2217 door of %s on %s:%d (%s)", spec.vm.name, HOST, spec.port, spec.role)

    async def _serve(
        self, spec: DoorSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client = _Client(self, spec, reader, writer)
        self.clients.add(client)
        self._idle.clear()
        try:
            await client.serve()
        except Exception as err:  # one client's failure never takes the door down
            log.error("RFC 2217 client of %s failed: %r", spec.vm.name, err, exc_info=err)
        finally:
            self.clients.discard(client)
            await _hang_up(reader, writer)
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no client is connected (every session detached and audited)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop listening; each client hears that the gateway is shutting down (within
        ``CLOSE_BOUND``), then is cut. Idempotent."""
        for server in self.servers.values():
            server.close()
        going = Closing(CloseCode.GOING_AWAY, "the gateway is shutting down",
                        "The gateway is shutting down.")  # fmt: skip
        for client in list(self.clients):
            if client.session is not None:
                client.session.close(going)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_BOUND + 1)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        self.servers.clear()


class _Manager(PortManager):
    """pyserial's RFC 2217 server side, plus telnet's own BREAK (``IAC BRK``)."""

    def __init__(self, line: RecordedLine, connection: _Sink, logger: logging.Logger) -> None:
        super().__init__(line, connection, logger)
        self.line = line

    def _telnet_process_command(self, command: bytes) -> None:
        if command == BRK:
            self.line.break_condition = True
            self.line.break_condition = False
        else:
            super()._telnet_process_command(command)


class _Sink:
    """Where ``PortManager`` writes its negotiation: the client's transport."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


_BREAK = None  # in a client's pieces: a BREAK between two runs of typed bytes


class _Client:
    """One RFC 2217 connection: a console session, its reader and its writer."""

    def __init__(
        self,
        doors: Rfc2217Doors,
        spec: DoorSpec,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.doors = doors
        self.service: ConsoleService = doors.service
        self.spec = spec
        self.vm = spec.vm
        assert spec.vm.hub is not None
        self.hub: ConsoleHub = spec.vm.hub
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.session: ConsoleSession | None = None
        self.line = RecordedLine(self._on_break)
        self._breaks = 0  # BREAKs seen by the filter and not yet put in order
        self._told_input = False  # the user heard why typing failed; reset by a success
        self.last_input = time.monotonic()  # for the lab's idle timeout
        self.activity = asyncio.Event()
        self.log = log.getChild(spec.vm.name)

    # -- who and what -----------------------------------------------------------------------

    def actor(self) -> Actor:
        """The client as the policy sees it: granted connect on this VM by the lab file."""
        session = self.session
        return Actor(
            USER,
            (RoleAssignment("Virtual Machine Contributor", self.vm.id),),
            self.address,
            DOOR,
            self.spec.role,
            session is None or session.is_open,
            session.id if session is not None else "",
        )

    def target(self) -> Target:
        return Target(self.vm.id, self.vm.name, self.hub)

    def refusal(self) -> str | None:
        """Azure's text when the console cannot be opened now (``gateway.console.opening``:
        the lab turned it off, the VM is not running, ...), else None."""
        console = self.doors.ctx.console
        try:
            check_console_enabled(console.disabled)
            check_open(self.vm, port_enabled=console.port_enabled(self.vm))
        except ConsoleUnavailable as err:
            return err.message
        return None

    # -- serving ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Attach, then read and write until the session ends; audited from end to end."""
        refused = self.refusal()
        attached = None
        if refused is None:
            try:
                attached = self.service.attach(self.target(), self.actor(), uuid.uuid4().hex)
            except Refused as err:
                refused = err.message
        if attached is None:
            refused = refused or "the console refused this connection"
            self.service.record(self.actor(), self.vm.id, "console.connect", audit.DENIED,
                                f"{DOOR}: {refused}")  # fmt: skip
            await self._last_words(refused)
            return
        self.session = session = attached.session
        manager = _Manager(self.line, _Sink(self.writer), NEGOTIATION_LOG)
        idle = idle_watch(self.doors.ctx.idle_timeout, lambda: self.session,
                          lambda: self.last_input, self.activity)  # fmt: skip
        try:  # the writer ends with the session
            await serve(self._send(session), self._receive(manager, session), idle,
                        client_gone=(ConnectionError,), log=self.log,
                        who=f"RFC 2217 client {self.address}")  # fmt: skip
        finally:
            self.service.detach(self.target(), self.actor(), session)
            self.log.debug("RFC 2217 client %s left the line at %s (recorded, not applied)",
                           self.address, self.line.describe())  # fmt: skip

    async def _last_words(self, text: str) -> None:
        """``text`` on a line of its own, delivered within ``CLOSE_BOUND`` if the client
        still reads."""
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                self.writer.write(_line(text))
                await self.writer.drain()
        except (TimeoutError, ConnectionError, OSError) as err:
            self.log.debug("RFC 2217 client %s did not take the last words: %r", self.address, err)

    async def _send(self, session: ConsoleSession) -> None:
        """The session's queue -> the client, serial bytes escaped for telnet; then why it
        ended, unless the client left."""
        try:
            while items := await session.take():
                out = bytearray()
                for item in items:
                    if isinstance(item, Output):
                        out += item.data.replace(b"\xff", b"\xff\xff")
                    elif (text := line_of(item)) is not None:
                        out += _line(text)
                if out:
                    self.writer.write(bytes(out))
                    async with asyncio.timeout(STALL_BOUND):
                        await self.writer.drain()
        except TimeoutError:
            self.log.info("RFC 2217 client %s stopped reading: closed", self.address)
            session.close(Closing(CloseCode.FELL_BEHIND, "client stopped reading"), drain=False)
            return
        except (ConnectionError, OSError) as err:
            self.log.debug("RFC 2217 client %s gone while sending: %r", self.address, err)
            session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)
            return
        closing = session.closing
        if closing is not None and closing.reason != "client left":
            await self._last_words(closing.message or closing.reason)

    async def _receive(self, manager: _Manager, session: ConsoleSession) -> None:
        """Client bytes -> negotiation answers, typed bytes and BREAKs, in order."""
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)
                return
            self.last_input = time.monotonic()
            self.activity.set()
            try:
                pieces = self._pieces(manager, data)
            except _BAD_NEGOTIATION as err:
                self.log.info("RFC 2217 client %s: bad negotiation: %r", self.address, err)
                session.close(Closing(
                    CloseCode.MALFORMED, "bad RFC 2217 negotiation",
                    "The gateway could not read this client's telnet/RFC 2217 negotiation, "
                    "so it closed the connection. Use an RFC 2217 client (pyserial's "
                    "rfc2217://) or telnet.",
                ))  # fmt: skip
                return
            for piece in pieces:
                if piece is _BREAK:
                    await self._break()
                else:
                    self._type(piece)
            if not await self._answers_taken(session):
                return

    async def _answers_taken(self, session: ConsoleSession) -> bool:
        """The negotiation answers are bounded: past ``ANSWERS_BOUND`` unsent bytes, the
        reader reads no more until the client takes them (so a client that asks and never
        reads holds the gateway's memory flat); after ``STALL_BOUND`` it is let go."""
        if self.writer.transport.get_write_buffer_size() <= ANSWERS_BOUND:
            return True
        try:
            async with asyncio.timeout(STALL_BOUND):
                await self.writer.drain()
        except TimeoutError:
            self.log.info("RFC 2217 client %s stopped reading its answers: closed", self.address)
            session.close(Closing(CloseCode.FELL_BEHIND, "client stopped reading"), drain=False)
            return False
        except (ConnectionError, OSError):
            session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)
            return False
        return True

    def _on_break(self) -> None:
        self._breaks += 1

    def _pieces(self, manager: _Manager, data: bytes) -> list[bytes | None]:
        """``data`` through the telnet/RFC 2217 filter: runs of typed bytes and BREAKs
        (``_BREAK``), in the order the client sent them."""
        pieces: list[bytes | None] = []
        run = bytearray()

        def take_breaks() -> None:
            while self._breaks:
                self._breaks -= 1
                if run:
                    pieces.append(bytes(run))
                    run.clear()
                pieces.append(_BREAK)

        for byte in manager.filter(data):
            take_breaks()  # a BREAK the filter met before this byte
            run += byte
        take_breaks()
        if run:
            pieces.append(bytes(run))
        return pieces

    def _type(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            self.hub.submit(session, data)
        except ConsoleError as err:
            if not self._told_input:
                self._told_input = True
                session.push_notice("input", str(err))
        else:
            self._told_input = False

    async def _break(self) -> None:
        """The ``break`` command through the policy; awaited, so what the client typed
        after the BREAK follows it. A refusal or failure is told on a line."""
        session = self.session
        assert session is not None
        try:
            await self.service.policy.run(self.actor(), self.target(), "break")
        except ConsoleError as err:
            session.push_notice("break", str(err))


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close the connection once the client could read what was sent last: wait (at most
    ``LINGER``) for the client to hang up, reading what it still sends, then close. A
    client that is closed on at once may lose the last words (pyserial's stops reading
    what it received once the connection ended), and closing with unread bytes from the
    client would reset the connection."""
    try:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER):
                while await reader.read(READ_SIZE):
                    pass
    finally:  # cancelled while lingering (the lab stopping): closed all the same
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # a client that stopped reading: no flush to wait for
        else:
            writer.close()


def _line(text: str) -> bytes:
    return framed_line(text).encode().replace(b"\xff", b"\xff\xff")
