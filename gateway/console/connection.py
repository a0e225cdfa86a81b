"""One console connection's lifecycle, with no I/O: events in, frames and actions out.

Every door (the websocket now; SSH and the browser stand on the same rules) feeds a
``ConsoleConnection`` what happened and performs what it returns, as websockets'
``protocol.py`` does for its wire protocol. The door owns the sockets, the tasks and the
lab's services; this class owns every decision::

    opening --open()--> awaiting_token --token_received()--> authorizing
    opening --open()--> authorizing            (token in the URL)
    authorizing --attached()--> serving --closing()--> closed
    any --refuse()--> closed

- ``open()``: the Origin check and the query (``watch``, ``offset``); the token from the
  URL, or, in raw mode, a challenge as the first frame (az's ``send`` waits for one), or,
  in framed mode, an ``authorize`` command to wait for.
- ``receive(frame)`` while serving: what the client's frame means, as actions
  (``TypeInput``, ``RunCommand``, ``Resume``), or a refusal that closes with 4007. A token
  sent again as a message (az sends it on open and again after the first frame it gets)
  is dropped, never typed into a guest nor written to its log.
- ``render(items)``: a session's queue as frames. Raw clients get text frames (az prints
  them), with bytes that are not UTF-8 in binary frames in their place, losing and
  altering nothing; framed clients get binary serial bytes and JSON events.
- ``closing(closing)`` / ``refuse(code, message)``: the last frames, then the close frame
  with its code and a reason that fits (123 bytes).

Raises nothing for any client input: every bad frame is a ``Refused`` result. An event the
diagram does not allow in the current phase (``receive`` before ``attached`` or after
``closing``, ``attached`` twice...) raises ``PhaseError`` and does nothing: a door cannot
type a frame into a guest before its client is authorized, or after it was closed.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.console import texts
from gateway.console.errors import ConsoleError
from gateway.console.frames import CloseCode, Command, FrameError, encode_event, parse_command
from gateway.console.render import framed_line, line_of
from gateway.console.sessions import (
    Closing,
    Event,
    Gap,
    Happening,
    IdleWarning,
    Item,
    Notice,
    Output,
    Power,
    Resumed,
    Role,
    Shown,
    TakenOver,
)
from gateway.console.utf8 import TextSplitter

MAX_REASON = 123  # a close frame's reason, in bytes
TOKEN_WAIT = 10.0  # seconds a client has to send its token when the URL has none
MIN_TOKEN = 20  # shorter frames are typing, never a token: no check per keystroke


class Phase(enum.StrEnum):
    OPENING = "opening"
    AWAITING_TOKEN = "awaiting_token"
    AUTHORIZING = "authorizing"
    SERVING = "serving"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SendText:
    text: str


@dataclass(frozen=True, slots=True)
class SendBinary:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendClose:
    code: int
    reason: str


Frame = SendText | SendBinary | SendClose


@dataclass(frozen=True, slots=True)
class TypeInput:
    """Bytes the client typed, for the guest."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RunCommand:
    """A framed client's command for the command policy; its outcome goes to ``result``."""

    command: Command


@dataclass(frozen=True, slots=True)
class Resume:
    """Replay from ``offset``, then live again (framed clients)."""

    offset: int
    id: str | None


Action = TypeInput | RunCommand | Resume


class PhaseError(RuntimeError):
    """A door fed the connection an event its state diagram does not allow in its phase
    (typing before the token, a frame after the close): a fault of the door's, refused with
    nothing done."""


class Refused(ConsoleError):
    """The connection cannot go on: close with ``code``; ``message`` is for the user."""

    def __init__(self, code: CloseCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or message


@dataclass(frozen=True, slots=True)
class Options:
    """What the URL asks for: read-only, and where to resume from."""

    role: Role
    resume: int | None


class ConsoleConnection:
    """The state of one console connection; no I/O (see the module docstring)."""

    def __init__(
        self,
        *,
        framed: bool,
        query: Mapping[str, str],
        origin: str | None = None,
        host: str = "",
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.framed = framed
        self.phase = Phase.OPENING
        self.token: str | None = None
        self.options = Options(Role.WRITER, None)
        self._query = query
        self._origin = origin
        self._host = host
        self._allowed = allowed_origins
        self._text = TextSplitter()

    # -- opening -----------------------------------------------------------------------------

    def open(self) -> list[Frame]:
        """Check the Origin and the query. Returns the frames to send first (raw mode
        without a token in the URL: the challenge). Raises Refused."""
        self._expect("open()", Phase.OPENING)
        self._check_origin()
        self.options = self._parse_options()
        token = self._query.get("authorization")
        if token:
            self.token = _bare(token)
            self.phase = Phase.AUTHORIZING
            return []
        self.phase = Phase.AWAITING_TOKEN
        return [] if self.framed else [SendText(texts.TOKEN_CHALLENGE + "\r\n")]

    def _expect(self, event: str, *phases: Phase) -> None:
        if self.phase not in phases:
            allowed = ", ".join(p.value for p in phases)
            raise PhaseError(f"{event} in phase {self.phase.value} (only in {allowed})")

    def _check_origin(self) -> None:
        """No Origin (not a browser), the gateway's own origin, or one of the allowed ones."""
        origin = self._origin
        if origin is None or urlsplit(origin).netloc == self._host or origin in self._allowed:
            return
        raise Refused(
            CloseCode.ORIGIN_REFUSED,
            f"pages from {origin} may not open this console; add it to the lab's allowed origins",
        )

    def _parse_options(self) -> Options:
        watch = self._query.get("watch", "").strip().lower()
        if watch not in _YES + _NO:
            raise Refused(
                CloseCode.MALFORMED,
                f"?watch= must be 1 (read only) or 0 (writer), not {watch[:20]!r}",
            )
        role = Role.WATCHER if watch in _YES else Role.WRITER
        offset = self._query.get("offset")
        if offset is None:
            return Options(role, None)
        if not (offset.isascii() and offset.isdigit() and len(offset) <= 20):
            raise Refused(CloseCode.MALFORMED, "?offset= must be a byte offset (a whole number)")
        return Options(role, int(offset))

    def token_received(self, frame: str | bytes | None) -> str:
        """The client's first frame while ``awaiting_token`` (None: none came in time).
        Returns the token; raises Refused."""
        self._expect("token_received()", Phase.AWAITING_TOKEN)
        if frame is None:
            raise Refused(
                CloseCode.UNAUTHORIZED,
                "no token: pass ?authorization=<token> or send the token as the first message",
            )
        if isinstance(frame, bytes):
            try:
                frame = frame.decode()
            except UnicodeDecodeError:
                raise Refused(
                    CloseCode.UNAUTHORIZED, "the first message must be the token"
                ) from None
        if self.framed:
            try:
                command = parse_command(frame)
            except FrameError as err:
                message = f"expected an authorize command: {err}"
                raise Refused(CloseCode.MALFORMED, message) from None
            if command.type != "authorize" or command.token is None:
                message = 'send {"type": "authorize", "token": ...} first'
                raise Refused(CloseCode.UNAUTHORIZED, message)
            frame = command.token
        token = _bare(frame)
        if not token:
            raise Refused(CloseCode.UNAUTHORIZED, "the first message must be the token, as text")
        self.token = token
        self.phase = Phase.AUTHORIZING
        return token

    def attached(
        self, *, vm: str, user: str, os: str, power_state: str, start: int, offset: int,
        rotated: bool,
    ) -> list[Frame]:  # fmt: skip
        """The session is attached (the replay ``[start, offset)`` is queued in it). The
        greeting: the connected event (framed) or Azure's banner (raw)."""
        self._expect("attached()", Phase.AUTHORIZING)
        self.phase = Phase.SERVING
        frames: list[Frame] = []
        if self.framed:
            frames.append(SendText(encode_event(
                "connected", vm=vm, user=user, role=self.options.role.value, os=os,
                power_state=power_state, banner=texts.BANNER, replay_from=start,
                offset=offset, rotated=rotated,
            )))  # fmt: skip
        else:
            frames.append(SendText(texts.BANNER + "\r\n"))
        resume = self.options.resume
        if rotated and resume is not None:
            frames += self._message(f"[bytes {resume} to {start} have rotated out of the boot log]")
        return frames

    # -- serving -----------------------------------------------------------------------------

    def receive(self, frame: str | bytes) -> list[Action]:
        """A client frame while serving: the actions it asks for. Raises Refused (4007) for a
        framed text frame that is not a command."""
        self._expect("receive()", Phase.SERVING)
        if isinstance(frame, bytes):
            return [] if self._is_token(frame) else [TypeInput(frame)]
        if not self.framed:
            return [] if self._is_token(frame) else [TypeInput(frame.encode())]
        try:
            command = parse_command(frame)
        except FrameError as err:
            raise Refused(
                CloseCode.MALFORMED,
                f"The gateway could not read a frame: {err}",
                f"malformed frame: {err}",
            ) from None
        if command.type == "authorize":
            return []  # already authorized: a repeated token is harmless, and never typed
        if command.type == "resume":
            assert command.offset is not None
            return [Resume(command.offset, command.id)]
        return [RunCommand(command)]

    def _is_token(self, frame: str | bytes) -> bool:
        """A frame that is the connection's own token (az sends it again after the first
        frame it gets): a credential, so it is dropped rather than typed."""
        if self.token is None or len(frame) < MIN_TOKEN:
            return False
        text = frame.decode(errors="replace") if isinstance(frame, bytes) else frame
        return hmac.compare_digest(_bare(text).encode(), self.token.encode())

    def result(
        self, rid: str | None, command: str, ok: bool, message: str
    ) -> Event | Notice | None:
        """The outcome of a command, as the session queues it for this client (None: raw
        clients hear only of failures, as a terminal shows them)."""
        if self.framed:
            return Event(encode_event("result", id=rid, command=command, ok=ok, message=message))
        return None if ok else Notice(command, message)

    def render(self, items: list[Item]) -> list[Frame]:
        """A session's items as frames for this client: serial bytes as they are; the rest
        as events (framed) or as the lines every text door shows (``gateway.console.render``)."""
        self._expect("render()", Phase.SERVING)
        frames: list[Frame] = []
        for item in items:
            if isinstance(item, Output):
                if self.framed:
                    frames.append(SendBinary(item.data))
                else:
                    frames += _as_frames(self._text.feed(item.data))
            elif self.framed:
                frames.append(SendText(_event_of(item)))
            elif (text := line_of(item)) is not None:
                frames += self._message(text)
        return frames

    def _message(self, text: str) -> list[Frame]:
        """A gateway message as the user sees it: an event (framed) or a line (raw)."""
        if self.framed:
            return [SendText(encode_event("message", text=text))]
        return [*_as_frames(self._text.flush()), SendText(framed_line(text))]

    # -- closing -----------------------------------------------------------------------------

    def closing(self, closing: Closing) -> list[Frame]:
        """The last frames of a session that ended: why (an event, or the text), then the
        close frame."""
        frames: list[Frame] = []
        if self.framed:
            frames.append(SendText(encode_event(
                "closing", code=int(closing.code), reason=closing.reason,
                message=closing.message or closing.reason, resume_offset=closing.resume_offset,
            )))  # fmt: skip
        else:
            frames += _as_frames(self._text.flush())
            if closing.message:
                frames.append(SendText(f"\r\n{closing.message}\r\n"))
        self.phase = Phase.CLOSED
        return [*frames, SendClose(int(closing.code), _fit(closing.reason))]

    def refuse(self, refused: Refused) -> list[Frame]:
        """The frames that end a connection refused before or while serving."""
        return self.closing(Closing(refused.code, refused.reason, refused.message))


_YES = ("1", "true", "yes", "on")  # "on": what an HTML checkbox sends
_NO = ("", "0", "false", "no", "off")


def _event_of(item: Happening | Gap) -> str:
    """A framed client's JSON event for a session item that is not serial output."""
    if isinstance(item, Event):
        return item.text
    if isinstance(item, Power):
        return encode_event("power", state=item.state, event=item.event, detail=item.detail)
    if isinstance(item, TakenOver):
        return encode_event("taken_over", by=item.by)
    if isinstance(item, Resumed):
        return encode_event(
            "resumed", requested=item.requested, start=item.start, rotated=item.rotated
        )
    if isinstance(item, IdleWarning):
        return encode_event("idle_warning", seconds=item.seconds)
    if isinstance(item, Gap):
        text = texts.gone(item.start, item.end)
        return encode_event("lost", start=item.start, end=item.end, message=text)
    if isinstance(item, Shown):  # a text door's own; framed clients draw their own menus
        return encode_event("message", text=item.text)
    return encode_event("result", id=None, command=item.command, ok=item.ok, message=item.text)


def _bare(token: str) -> str:
    token = token.strip()
    return token[7:].strip() if token[:7].lower() == "bearer " else token


def _fit(reason: str) -> str:
    return reason.encode()[:MAX_REASON].decode(errors="ignore")


def _as_frames(parts: list[str | bytes]) -> list[Frame]:
    return [SendText(p) if isinstance(p, str) else SendBinary(p) for p in parts]
