"""The websocket console: ``/n/connector/{container}/sessions/{id}/client``.

A thin adapter: ``gateway.console.connection.ConsoleConnection`` decides everything (the
token, the options, what each frame means, what each item looks like on the wire, how a
connection closes); ``gateway.console.policy.CommandPolicy`` decides every command; the
VM's ``ConsoleHub`` carries input and commands to the guest. This module moves frames and
calls the lab's services (tokens, one-time sessions, audit). docs/protocol.md is the
reference.

One task writes to the socket at a time: the handler until the session is attached, then
the writer task, which sends the session's queue at the client's pace and, when the
session ends, its closing frames and the close frame (with a bound, so a client that stops
reading still gets its close code when it reads again, and never holds the gateway). The
reader only reads: a bad frame closes the session, and the writer says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected

from gateway.access import audit
from gateway.access.connect_sessions import ConnectGrant
from gateway.access.errors import (
    AuthenticationError,
    ConnectSessionError,
    SessionWrongUser,
)
from gateway.access.users import User
from gateway.api.context import ApiContext, client_address, context_of, service_of
from gateway.console.connection import (
    TOKEN_WAIT,
    ConsoleConnection,
    Frame,
    Refused,
    Resume,
    RunCommand,
    SendBinary,
    SendClose,
    SendText,
    TypeInput,
)
from gateway.console.errors import ConsoleError
from gateway.console.frames import SUBPROTOCOL, CloseCode
from gateway.console.hub import ConsoleHub
from gateway.console.policy import Actor, CommandPolicy, Target
from gateway.console.serve import idle_watch, serve
from gateway.console.sessions import Closing, ConsoleSession
from gateway.lab.inventory import VmResource

log = logging.getLogger("serial_console_lab.api.console")
router = APIRouter()

CONSOLE_PATH = "/n/connector/{container}/sessions/{session_id}/client"


class _ServerLines(logging.Filter):
    """What uvicorn (and the websockets library under it) logs as ``uvicorn.error`` about a
    console connection, made safe to keep:

    - the request line and the handshake trace carry the console URL, whose query holds the
      bearer token (``?authorization=``) and whose path holds the one-time session id: both
      are replaced by ``<redacted>`` (a log must never hold a credential);
    - a text frame that is not UTF-8 is logged with a traceback at ERROR (then closed with
      1007, as it should be): a client's mistake, and 500 clients doing it would write
      hundreds of KB of tracebacks; one line at DEBUG instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Invalid UTF-8 sequence received from client"):
            log.debug("a client sent a text frame that is not UTF-8: closed with 1007")
            return False
        safe = _SECRET_IN_URL.sub(r"\1<redacted>", message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


_SECRET_IN_URL = re.compile(r"((?:[?&]authorization=|/sessions/))[^&\s\"/]+", re.IGNORECASE)
logging.getLogger("uvicorn.error").addFilter(_ServerLines())
# What sending to or reading from a client that went away raises, depending on the moment.
_CLIENT_GONE = (WebSocketDisconnect, ClientDisconnected, ConnectionError, RuntimeError)


class ClientGone(Exception):
    """The client went away while frames were being sent to it."""


CLOSE_BOUND = 5.0  # seconds to deliver the last frames and the close frame to a slow client


class _Door:
    """One websocket client: the connection core, its session, and the lab's services."""

    def __init__(self, websocket: WebSocket, ctx: ApiContext) -> None:
        self.websocket = websocket
        self.ctx = ctx
        self.address = client_address(websocket)
        headers = websocket.headers
        self.core = ConsoleConnection(
            framed=SUBPROTOCOL in websocket.scope.get("subprotocols", []),
            query=websocket.query_params,
            origin=headers.get("origin"),
            host=headers.get("host", ""),
            allowed_origins=ctx.allowed_origins,
        )
        self.service = service_of(ctx)
        self.user: User | None = None
        self.vm: VmResource | None = None
        self.hub: ConsoleHub | None = None
        self.grant: ConnectGrant | None = None
        self.session: ConsoleSession | None = None
        self.last_input = time.monotonic()
        self.activity = asyncio.Event()
        self.commands: set[asyncio.Task[None]] = set()  # framed commands under way

    # -- sending -----------------------------------------------------------------------------

    async def send(self, frames: list[Frame]) -> bool:
        """Send ``frames`` in order; False once the close frame went. ClientGone when the
        transport fails (the peer vanished): only sending is caught as that."""
        try:
            for frame in frames:
                if isinstance(frame, SendBinary):
                    await self.websocket.send_bytes(frame.data)
                elif isinstance(frame, SendText):
                    await self.websocket.send_text(frame.text)
                else:
                    await self.websocket.close(frame.code, frame.reason)
                    return False
        except _CLIENT_GONE as err:
            raise ClientGone(str(err) or type(err).__name__) from err
        return True

    async def finish(self, frames: list[Frame]) -> None:
        """The last frames and the close, within ``CLOSE_BOUND``; a client gone is fine."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_BOUND):
                await self.send(frames)

    # -- the lab's services ------------------------------------------------------------------

    def audit(self, action: str, outcome: str, detail: str = "") -> None:
        """Record an access to the console, by the audit log's thread: a slow disk never
        stalls the console, a failing audit log never breaks it."""
        self.ctx.audit.post(
            action,
            user=self.user.name if self.user else "",
            address=self.address,
            target=self.vm.id if self.vm else self.websocket.url.path,
            outcome=outcome,
            detail=detail,
        )

    def authenticate(self, token: str) -> User:
        try:
            return self.ctx.tokens.authenticate(token)
        except AuthenticationError as err:
            raise Refused(
                CloseCode.UNAUTHORIZED, f"{err} Get a token with POST /oauth2/token (or log in)."
            ) from None

    def claim(self, container: str, session_id: str) -> ConnectGrant:
        """Use up the one-time session (after checking, without using it, that it is this
        URL's)."""
        assert self.user is not None
        sessions = self.ctx.sessions
        try:
            if sessions.lookup(session_id, self.user.name).container != container:
                raise Refused(
                    CloseCode.SESSION_REFUSED, "This console URL is not valid. Call connect again."
                )
            return sessions.claim(session_id, self.user.name)
        except SessionWrongUser as err:
            raise Refused(CloseCode.UNAUTHORIZED, str(err)) from None
        except ConnectSessionError as err:
            raise Refused(CloseCode.SESSION_REFUSED, str(err)) from None

    def attach(self, grant: ConnectGrant) -> list[Frame]:
        vm = self.ctx.inventory.by_id(grant.vm_id)
        if vm.hub is None:
            raise Refused(CloseCode.PORT_LOST, f"VM '{vm.name}' has no console in this lab")
        self.vm, self.hub = vm, vm.hub
        attached = self.service.attach(
            self.target(), self.actor(), grant.session_id, self.core.options.resume
        )
        self.session = attached.session
        backlog = attached.backlog
        return self.core.attached(
            vm=vm.name, user=grant.user, os=vm.os_type,
            power_state=vm.machine.power_state.value, start=backlog.start, offset=backlog.next,
            rotated=backlog.rotated,
        )  # fmt: skip

    def actor(self) -> Actor:
        assert self.user is not None
        session = self.session
        role = session.role if session is not None else self.core.options.role
        active = session is None or session.is_open
        return Actor(
            self.user.name, self.user.roles, self.address, "websocket", role, active,
            session.id if session is not None else "",
        )  # fmt: skip

    def target(self) -> Target:
        assert self.vm is not None and self.hub is not None
        return Target(self.vm.id, self.vm.name, self.hub)


@router.websocket(CONSOLE_PATH)
async def console(websocket: WebSocket, container: str, session_id: str) -> None:
    """Serve one console connection (see the module docstring)."""
    ctx = context_of(websocket)
    door = _Door(websocket, ctx)
    await websocket.accept(subprotocol=SUBPROTOCOL if door.core.framed else None)
    try:
        greeting = await _open(door, container, session_id)
    except Refused as refused:
        if door.grant is not None:  # claimed, then refused: its admin URL ends here too
            ctx.sessions.release(session_id)
        door.audit("console.connect", audit.DENIED, refused.message)
        await door.finish(door.core.refuse(refused))
        return
    except (WebSocketDisconnect, ClientGone):
        return
    try:
        await _serve(door, greeting)
    finally:
        assert door.session is not None
        door.service.detach(door.target(), door.actor(), door.session)
        ctx.sessions.release(session_id)


async def _open(door: _Door, container: str, session_id: str) -> list[Frame]:
    """Token, claim, attach: the greeting to send. Raises Refused or WebSocketDisconnect."""
    core = door.core
    await door.send(core.open())
    if core.token is None:
        core.token_received(await _first_frame(door.websocket))
    assert core.token is not None
    door.user = door.authenticate(core.token)
    door.grant = door.claim(container, session_id)
    return door.attach(door.grant)


async def _first_frame(websocket: WebSocket) -> str | bytes | None:
    try:
        async with asyncio.timeout(TOKEN_WAIT):
            message = await websocket.receive()
    except TimeoutError:
        return None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message.get("text") if message.get("text") is not None else message.get("bytes")


async def _serve(door: _Door, greeting: list[Frame]) -> None:
    """The console core's serve loop (``gateway.console.serve``) with this door's writer
    (it ends after the close frame, or when the client is gone) and reader."""
    idle = idle_watch(door.ctx.idle_timeout, lambda: door.session, lambda: door.last_input,
                      door.activity)  # fmt: skip
    try:
        await serve(_write_loop(door, greeting), _read_loop(door), idle,
                    client_gone=(*_CLIENT_GONE, ClientGone), log=log,
                    who=f"console of {door.vm.name if door.vm else '?'}")  # fmt: skip
    finally:
        if door.commands:  # commands under way finish (a reset half done helps nobody)
            await asyncio.wait(door.commands, timeout=CLOSE_BOUND)
            for task in door.commands:
                task.cancel()


async def _write_loop(door: _Door, greeting: list[Frame]) -> None:
    """The only sender while serving: the session's queue, then its close. A client gone
    mid-send ends the session: there is nobody left to deliver to. Any other failure is
    the gateway's own: logged at ERROR with its traceback, and the client is closed with
    1011 and told so."""
    name = door.vm.name if door.vm else "?"
    try:
        await _write_all(door, greeting)
    except ClientGone as err:  # the transport's error when the peer vanished
        log.debug("console of %s: client gone while sending: %s", name, err)
        if door.session is not None:
            door.session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)
    except Exception:
        log.exception("console of %s: the gateway failed while serving it", name)
        if door.session is not None:
            door.session.close(Closing(CloseCode.INTERNAL, "gateway error"), drain=False)
        await door.finish([SendClose(int(CloseCode.INTERNAL), "gateway error: see the lab's log")])


async def _write_all(door: _Door, greeting: list[Frame]) -> None:
    if not await door.send(greeting):
        return
    while True:
        session = door.session
        assert session is not None
        items = await session.take()
        if items:
            await door.send(door.core.render(items))
            continue
        if session is not door.session:
            continue  # swapped for a resumed session
        assert session.closing is not None
        door.ctx.sessions.release(session.id)  # before the close: its admin URL ends with it
        await door.finish(door.core.closing(session.closing))
        return


async def _read_loop(door: _Door) -> None:
    """Client frames -> actions. A bad frame, or the client leaving, closes the session."""
    policy = door.service.policy
    commands = door.commands
    while True:
        try:
            message = await door.websocket.receive()
        except (RuntimeError, UnicodeDecodeError, WebSocketDisconnect):
            message = {"type": "websocket.disconnect"}
        if message["type"] == "websocket.disconnect":
            _end(door, Closing(CloseCode.NORMAL, "client left"))
            return
        door.last_input = time.monotonic()
        door.activity.set()
        frame = message.get("text")
        if frame is None:
            frame = message.get("bytes") or b""
        try:
            actions = door.core.receive(frame)
        except Refused as refused:
            _end(door, Closing(refused.code, refused.reason, refused.message))
            return
        for action in actions:
            if isinstance(action, TypeInput):
                _type(door, action.data)
            elif isinstance(action, Resume):
                _resume(door, action)
            else:
                task = asyncio.create_task(_command(door, policy, action))
                commands.add(task)
                task.add_done_callback(commands.discard)


def _end(door: _Door, closing: Closing) -> None:
    """End the session from the reader's side; what is queued is dropped, the writer
    sends the close."""
    assert door.session is not None
    door.session.close(closing, drain=False)


def _type(door: _Door, data: bytes) -> None:
    assert door.hub is not None and door.session is not None
    try:
        door.hub.submit(door.session, data)
    except ConsoleError as err:
        door.session.push_notice("input", str(err))


async def _command(door: _Door, policy: CommandPolicy, action: RunCommand) -> None:
    """Run a framed command through the policy; its result goes into the session's queue,
    in order with the output around it."""
    command = action.command
    assert door.session is not None
    try:
        message = await policy.run(door.actor(), door.target(), command.type, command.keys)
        ok = True
    except ConsoleError as err:
        message, ok = str(err), False
    except Exception:  # a bug must not leave the client without an answer
        log.exception("console %s of %s failed", command.type, door.vm.name if door.vm else "?")
        message, ok = f"the gateway failed to run {command.type}: see the lab's log", False
    result = door.core.result(command.id, command.type, ok, message)
    if result is not None:
        door.session.push_item(result)


def _resume(door: _Door, action: Resume) -> None:
    """Start over from ``action.offset`` (the service makes a fresh session, so the bytes
    stay in order); refused once this session is closing."""
    assert door.session is not None
    fresh = door.service.resume(door.target(), door.session, action.offset)
    if fresh is None:
        result = door.core.result(action.id, "resume", False, "this session is closed: reconnect")
        if result is not None:
            door.session.push_item(result)
        return
    door.session = fresh


__all__ = ["CONSOLE_PATH", "router"]
