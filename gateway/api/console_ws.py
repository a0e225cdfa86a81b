"""The websocket console: ``/n/connector/{container}/sessions/{id}/client``.

Two modes on one URL (docs/protocol.md):

- raw (no subprotocol; what ``az serial-console`` speaks): the token comes as
  ``?authorization=`` or as the first text message; every client frame, text or binary, is
  input; output goes out as binary frames. Gateway texts (Azure's banner, takeover) are
  written into the stream as a terminal would show them.
- framed (subprotocol ``serial-console.v1``): binary frames are serial bytes both ways;
  text frames are JSON events (gateway) and commands (client), see ``frames``.

A connection: Origin check -> token -> claim the one-time session -> attach to the VM's
hub (replay, or resume from ``?offset=``) -> pump both ways until either side closes.
This module moves bytes and maps errors to close codes; the hub does the console's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from gateway.access import audit
from gateway.access.connect_sessions import ConnectGrant
from gateway.access.errors import (
    AccessError,
    AuthenticationError,
    ConnectSessionError,
    SessionWrongUser,
)
from gateway.access.users import User
from gateway.api.context import ApiContext, client_address, context_of
from gateway.api.resources import VmResource
from gateway.console.bootlog import LogRead
from gateway.console.frames import SUBPROTOCOL, CloseCode, Command, FrameError, encode_event
from gateway.console.frames import parse_command as parse_frame
from gateway.console.hub import ConsoleError, ConsoleHub
from gateway.console.sessions import BANNER_TEXT, Closing, ConsoleSession, Event, Output, Role
from gateway.machines.base import MachineError

log = logging.getLogger("serial_console_lab.api.console")
router = APIRouter()

CONSOLE_PATH = "/n/connector/{container}/sessions/{session_id}/client"
TOKEN_WAIT = 10.0
IDLE_WARNING = 60.0
MAX_REASON = 120  # a close frame's reason is at most 123 bytes
INPUT_LIMIT = 1 << 20  # typed bytes waiting for a guest that does not read its port


class _Refused(Exception):
    """The connection cannot go on: close with ``code``; ``message`` is for the user."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class _Connection:
    """One websocket client and its current console session."""

    websocket: WebSocket
    framed: bool
    ctx: ApiContext
    address: str
    user: User | None = None
    vm: VmResource | None = None
    hub: ConsoleHub | None = None
    session: ConsoleSession | None = None
    last_input: float = field(default_factory=time.monotonic)
    activity: asyncio.Event = field(default_factory=asyncio.Event)
    told: bool = False
    input: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    input_pending: int = 0

    async def send_text_to_user(self, text: str) -> None:
        """A gateway message as the user sees it: a JSON event (framed) or terminal text."""
        if self.framed:
            await self.websocket.send_text(encode_event("message", text=text))
        else:
            await self.websocket.send_bytes(f"\r\n{text}\r\n".encode())

    def audit(self, action: str, outcome: str, detail: str = "") -> None:
        """Record an access to the console; a failing audit log never breaks the console."""
        try:
            self._record(action, outcome, detail)
        except AccessError as err:
            log.error("audit record lost (%s %s): %s", action, outcome, err)

    def _record(self, action: str, outcome: str, detail: str) -> None:
        self.ctx.audit.record(
            action,
            user=self.user.name if self.user else "",
            address=self.address,
            target=self.vm.id if self.vm else self.websocket.url.path,
            outcome=outcome,
            detail=detail,
        )


@router.websocket(CONSOLE_PATH)
async def console(websocket: WebSocket, container: str, session_id: str) -> None:
    """Serve one console connection (see the module docstring)."""
    ctx = context_of(websocket)
    framed = SUBPROTOCOL in websocket.scope.get("subprotocols", [])
    conn = _Connection(websocket, framed, ctx, client_address(websocket))
    await websocket.accept(subprotocol=SUBPROTOCOL if framed else None)
    try:
        _check_origin(websocket, ctx)
        conn.user = await _authenticate(conn)
        role, resume = _options(conn)
        grant = _claim(conn, container, session_id)
        await _serve(conn, grant, role, resume)
    except _Refused as refused:
        conn.audit("console.connect", audit.DENIED, refused.message)
        await _close(conn, Closing(refused.code, refused.message, refused.message))
    except WebSocketDisconnect:
        pass


def _check_origin(websocket: WebSocket, ctx: ApiContext) -> None:
    """No Origin (not a browser), the gateway's own origin, or one of the allowed ones."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return
    host = websocket.headers.get("host", "")
    allowed = set(ctx.allowed_origins)
    if urlsplit(origin).netloc == host or origin in allowed:
        return
    raise _Refused(
        CloseCode.ORIGIN_REFUSED,
        f"pages from {origin} may not open this console; add it to the lab's allowed origins",
    )


async def _authenticate(conn: _Connection) -> User:
    token = conn.websocket.query_params.get("authorization")
    if token is None:
        token = await _first_message_token(conn)
    if token.lower().startswith("bearer "):
        token = token[7:]
    try:
        return conn.ctx.tokens.authenticate(token)
    except AuthenticationError as err:
        raise _Refused(
            CloseCode.UNAUTHORIZED, f"{err} Get a token with POST /oauth2/token (or log in)."
        ) from None


async def _first_message_token(conn: _Connection) -> str:
    try:
        async with asyncio.timeout(TOKEN_WAIT):
            message = await conn.websocket.receive()
    except TimeoutError:
        raise _Refused(
            CloseCode.UNAUTHORIZED,
            "no token: pass ?authorization=<token> or send the token as the first message",
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if not text:
        raise _Refused(CloseCode.UNAUTHORIZED, "the first message must be the token, as text")
    if not conn.framed:
        return text.strip()
    try:
        command = parse_frame(text)
    except FrameError as err:
        raise _Refused(CloseCode.MALFORMED, f"expected an authorize command: {err}") from None
    if command.type != "authorize" or command.token is None:
        raise _Refused(CloseCode.UNAUTHORIZED, 'send {"type": "authorize", "token": ...} first')
    return command.token


def _options(conn: _Connection) -> tuple[Role, int | None]:
    """``?watch=`` and ``?offset=``, read before the one-time session is used up."""
    query = conn.websocket.query_params
    role = Role.WATCHER if query.get("watch", "").lower() in ("1", "true", "yes") else Role.WRITER
    offset = query.get("offset")
    if offset is None:
        return role, None
    if not (offset.isascii() and offset.isdigit()):
        raise _Refused(CloseCode.MALFORMED, "?offset= must be a byte offset (a whole number)")
    return role, int(offset)


def _claim(conn: _Connection, container: str, session_id: str) -> ConnectGrant:
    """Use up the one-time session (after checking, without using it, that it is this URL's)."""
    assert conn.user is not None
    try:
        if conn.ctx.sessions.lookup(session_id, conn.user.name).container != container:
            raise _Refused(
                CloseCode.SESSION_REFUSED, "This console URL is not valid. Call connect again."
            )
        return conn.ctx.sessions.claim(session_id, conn.user.name)
    except SessionWrongUser as err:
        raise _Refused(CloseCode.UNAUTHORIZED, str(err)) from None
    except ConnectSessionError as err:
        raise _Refused(CloseCode.SESSION_REFUSED, str(err)) from None


async def _serve(conn: _Connection, grant: ConnectGrant, role: Role, resume: int | None) -> None:
    vm = conn.ctx.inventory.by_id(grant.vm_id)
    hub = vm.hub
    if hub is None:
        raise _Refused(CloseCode.PORT_LOST, f"VM '{vm.name}' has no console in this lab")
    conn.vm, conn.hub = vm, hub
    session = ConsoleSession(grant.session_id, grant.user, vm.name, role, conn.ctx.session_buffer)
    try:
        backlog, displaced = hub.attach(session, resume)
    except ConsoleError as err:
        raise _Refused(CloseCode.GOING_AWAY, str(err)) from None
    conn.session = session
    conn.audit("console.connect", audit.ALLOWED, f"{role} session {grant.session_id[:8]}...")
    if displaced is not None:
        conn.audit(
            "console.takeover", audit.SUCCEEDED, f"took the console over from {displaced.user}"
        )
    tasks: list[asyncio.Task[None]] = []
    try:
        await _greet(conn, backlog, resume)
        pumps = [asyncio.create_task(_send_loop(conn)), asyncio.create_task(_receive_loop(conn))]
        tasks = [*pumps, asyncio.create_task(_input_loop(conn))]
        if conn.ctx.idle_timeout:
            tasks.append(asyncio.create_task(_idle_watch(conn)))
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, WebSocketDisconnect):
                log.debug("console pump of %s ended: %r", vm.name, outcome)
        hub.detach(conn.session)
        closing = conn.session.closing
        conn.audit(
            "console.disconnect", audit.SUCCEEDED, closing.reason if closing else "client left"
        )


async def _greet(conn: _Connection, backlog: LogRead, resume: int | None) -> None:
    """The first words: the connected event (framed) or Azure's banner (raw)."""
    assert conn.vm is not None
    assert conn.session is not None
    vm = conn.vm
    if conn.framed:
        await conn.websocket.send_text(
            encode_event(
                "connected",
                vm=vm.name,
                user=conn.session.user,
                role=conn.session.role.value,
                os=vm.os_type,
                power_state=vm.machine.power_state.value,
                banner=BANNER_TEXT,
                replay_from=backlog.start,
                offset=backlog.next,
                rotated=backlog.rotated,
            )
        )
    else:
        await conn.websocket.send_bytes(BANNER_TEXT.encode() + b"\r\n")
    if backlog.rotated and resume is not None:
        await conn.send_text_to_user(
            f"[bytes {resume} to {backlog.start} have rotated out of the boot log]"
        )


async def _send_loop(conn: _Connection) -> None:
    """Session queue -> client, at the client's pace; then the close with its reason."""
    while True:
        session = conn.session
        assert session is not None
        items = await session.take()
        if not items:
            if session is not conn.session:
                continue  # swapped for a resumed session
            break
        for item in items:
            if isinstance(item, Output):
                await conn.websocket.send_bytes(item.data)
            elif conn.framed and isinstance(item, Event):
                await conn.websocket.send_text(item.text)
    assert conn.session is not None and conn.session.closing is not None
    await _close(conn, conn.session.closing)


async def _receive_loop(conn: _Connection) -> None:
    """Client -> guest: input bytes, and commands in framed mode."""
    assert conn.hub is not None and conn.session is not None
    while True:
        message = await conn.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        conn.last_input = time.monotonic()
        conn.activity.set()
        data, text = message.get("bytes"), message.get("text")
        try:
            if data is not None:
                _queue_input(conn, data)
            elif text is not None and not conn.framed:
                _queue_input(conn, text.encode())
            elif text is not None:
                await _command(conn, parse_frame(text))
        except FrameError as err:
            reason = f"malformed frame: {err}"[:MAX_REASON]
            message = f"The gateway could not read a frame: {err}"
            conn.session.close(Closing(CloseCode.MALFORMED, reason, message), drain=False)
            return
        except ConsoleError as err:
            if not conn.told:
                await _report(conn, None, "input", False, str(err))
            conn.told = not conn.framed  # raw terminals hear it once, not per keystroke


def _queue_input(conn: _Connection, data: bytes) -> None:
    """Hand typed bytes to ``_input_loop``, so that a guest that stopped reading its port
    never holds up the commands behind them (a reset is how one unsticks such a guest)."""
    assert conn.session is not None
    assert conn.hub is not None
    if conn.session.role is not Role.WRITER:
        raise ConsoleError("this console is read-only: connect as a writer to type")
    if conn.input_pending + len(data) > INPUT_LIMIT:
        state = conn.hub.machine.power_state
        raise ConsoleError(
            f"the guest is not reading its serial port (it is {state}): {len(data)} typed "
            "bytes were not sent. Reset or restart the VM if it hangs."
        )
    conn.input_pending += len(data)
    conn.input.put_nowait(data)


async def _input_loop(conn: _Connection) -> None:
    """Typed bytes -> the guest, in order, at the pace its port takes them."""
    assert conn.hub is not None
    while True:
        data = await conn.input.get()
        try:
            assert conn.session is not None
            await conn.hub.write(conn.session, data)
        except ConsoleError as err:
            await _report(conn, None, "input", False, str(err))
        finally:
            conn.input_pending -= len(data)


async def _command(conn: _Connection, command: Command) -> None:
    hub, session = conn.hub, conn.session
    assert hub is not None and session is not None
    if command.type == "authorize":
        return  # already authorized; a repeated token is harmless
    if command.type == "resume":
        assert command.offset is not None
        if not _resume(conn, command.offset):
            await _report(conn, command.id, "resume", False, "this session is closed: reconnect")
        return
    if session.role is not Role.WRITER:
        await _report(conn, command.id, command.type, False, "this console is read-only (watch)")
        return
    try:
        message = await hub.command(command.type, list(command.keys))
    except (ConsoleError, MachineError) as err:
        conn.audit(f"console.{command.type}", audit.FAILED, str(err))
        await _report(conn, command.id, command.type, False, str(err))
        return
    conn.audit(f"console.{command.type}", audit.SUCCEEDED, "".join(command.keys))
    await _report(conn, command.id, command.type, True, message)


def _resume(conn: _Connection, offset: int) -> bool:
    """Start over from ``offset``: a fresh session, so the bytes stay in order. False when
    this session is already closing (taken over, idle, deallocated): it cannot come back."""
    hub, old = conn.hub, conn.session
    assert hub is not None
    assert old is not None
    if not old.is_open:
        return False
    hub.detach(old)
    fresh = ConsoleSession(old.id, old.user, old.vm, old.role, old.limit)
    backlog, _ = hub.attach(fresh, offset)  # nobody to displace: this was the writer
    fresh.prepend_event(
        encode_event("resumed", requested=offset, start=backlog.start, rotated=backlog.rotated)
    )
    conn.session = fresh
    old.close(Closing(CloseCode.NORMAL, "resumed"), drain=False)
    return True


async def _report(conn: _Connection, rid: str | None, command: str, ok: bool, text: str) -> None:
    if conn.framed:
        await conn.websocket.send_text(
            encode_event("result", id=rid, command=command, ok=ok, message=text)
        )
    elif not ok:
        await conn.send_text_to_user(text)


async def _idle_watch(conn: _Connection) -> None:
    """Warn a minute before the idle timeout, then close the session. Any input resets it."""
    timeout = conn.ctx.idle_timeout
    warned = False
    while True:
        left = conn.last_input + timeout - time.monotonic()
        if left <= 0:
            assert conn.session is not None
            minutes = timeout / 60
            conn.session.close(Closing(CloseCode.IDLE, f"idle for {minutes:g} minutes",
                                       f"Closed after {minutes:g} minutes without input. "
                                       "Reconnect to go on."), drain=True)  # fmt: skip
            return
        if not warned and left <= IDLE_WARNING:
            warned = True
            if conn.framed:
                assert conn.session is not None
                conn.session.push_event(encode_event("idle_warning", seconds=round(left)))
            else:
                await conn.send_text_to_user(
                    f"[This console closes in {left:.0f} seconds without input. Type to stay.]"
                )
        wait = left - IDLE_WARNING if left > IDLE_WARNING else left
        conn.activity.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await conn.activity.wait()
                warned = False


async def _close(conn: _Connection, closing: Closing) -> None:
    """Tell the user why (framed: a closing event; raw: the text), then close the socket."""
    with contextlib.suppress(Exception):  # the client may already be gone
        if conn.framed:
            await conn.websocket.send_text(
                encode_event(
                    "closing",
                    code=int(closing.code),
                    reason=closing.reason,
                    message=closing.message or closing.reason,
                    resume_offset=closing.resume_offset,
                )
            )
        elif closing.message:
            await conn.websocket.send_bytes(f"\r\n{closing.message}\r\n".encode())
        reason = closing.reason.encode()[:MAX_REASON].decode(errors="ignore")
        await conn.websocket.close(int(closing.code), reason)
