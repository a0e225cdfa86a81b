"""The framed console protocol (``serial-console.v1``): its messages, with no I/O.

Binary frames carry serial bytes both ways. Text frames carry one JSON object each: the
gateway's events (``connected``, ``power``, ``taken_over``, ``idle_warning``, ``result``,
``closing``) and the client's commands (``sysrq``, ``nmi``, ``reset``, ``restart``,
``break``, ``resume``, ``authorize``). ``parse_command`` turns a client's text frame into a
``Command`` or raises ``FrameError`` saying what is wrong; ``encode_event`` makes the text
of an event. docs/protocol.md is the reference; the close codes live here.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from gateway.console.errors import ConsoleError
from gateway.console.sysrq import SysRqError, parse_sysrq

SUBPROTOCOL = "serial-console.v1"
MAX_TEXT_FRAME = 4096


class CloseCode(enum.IntEnum):
    """Websocket close codes the gateway uses, with the reason a user reads."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the gateway is shutting down
    INTERNAL = 1011  # the gateway failed (a fault of its own, in its log)
    TAKEN_OVER = 4001  # another writer connected to this VM's console
    FELL_BEHIND = 4002  # the client read too slowly; resume from the offset given
    DEALLOCATED = 4003  # the VM was deallocated: its serial port is gone
    IDLE = 4004  # no input for the idle timeout
    SESSION_REFUSED = 4005  # unknown, expired or already used session URL
    UNAUTHORIZED = 4006  # no token, a bad token, or another user's session
    MALFORMED = 4007  # a frame the gateway could not read
    ORIGIN_REFUSED = 4008  # a browser page from an origin that is not allowed
    PORT_LOST = 4009  # the VM's serial port went away (its process ended)
    TOO_MANY = 4010  # this user already has the most consoles open that one user may


class FrameError(ConsoleError, ValueError):
    """A client frame that is not a valid command; the message says what was expected."""


COMMANDS = ("sysrq", "nmi", "reset", "restart", "break", "resume", "authorize")


@dataclass(frozen=True, slots=True)
class Command:
    """A client's command. ``keys`` for sysrq, ``offset`` for resume, ``token`` for authorize."""

    type: str
    id: str | None = None
    keys: tuple[str, ...] = ()
    offset: int | None = None
    token: str | None = None


def parse_command(text: str) -> Command:
    """Read one client text frame. Raises FrameError with what a valid frame looks like."""
    if len(text) > MAX_TEXT_FRAME:
        raise FrameError(f"text frame of {len(text)} characters; at most {MAX_TEXT_FRAME}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise FrameError(f"text frames must be JSON objects ({err.msg})") from None
    except RecursionError:
        raise FrameError("JSON nested too deep: send a flat object") from None
    if not isinstance(message, dict):
        raise FrameError('text frames must be JSON objects such as {"type": "nmi"}')
    kind = message.get("type")
    if kind not in COMMANDS:
        raise FrameError(f"unknown command type {kind!r}; expected one of {', '.join(COMMANDS)}")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str | int):
        raise FrameError("'id' must be a string or a number")
    rid = None if request_id is None else str(request_id)
    if kind == "sysrq":
        keys = message.get("keys")
        if not isinstance(keys, str):
            raise FrameError('sysrq needs "keys": a key such as "h" or a sequence such as "REISUB"')
        try:
            return Command(kind, rid, keys=tuple(parse_sysrq(keys)))
        except SysRqError as err:
            raise FrameError(str(err)) from None
    if kind == "resume":
        offset = message.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise FrameError('resume needs "offset": a byte offset (a whole number >= 0)')
        return Command(kind, rid, offset=offset)
    if kind == "authorize":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise FrameError('authorize needs "token": the bearer token')
        return Command(kind, rid, token=token)
    return Command(kind, rid)


def encode_event(kind: str, **fields: Any) -> str:
    """The text frame of a gateway event: ``{"type": kind, **fields}``."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))
