"""Request bodies the lab accepts: a bound per route family, the token checked first.

``RequestLimits`` (ASGI middleware) runs before any route reads a body:

- on the routes that need a bearer token (ARM's paths, the console's admin commands), a
  request that carries a body is authenticated first: no token or a bad one is ARM's 401
  at once, and not one byte of the body is read;
- a ``Content-Length`` over the route's limit is ARM's 413 ``RequestEntityTooLarge`` at
  once, naming the limit, before the body is read (and before ``Expect: 100-continue`` is
  answered, so a client that waits for it sends nothing);
- a body without a length (``Transfer-Encoding: chunked``) is read here, up to the limit:
  one byte more is the same 413; a body that does not arrive in ``BODY_TIMEOUT`` seconds
  is 408 ``RequestTimeout``. The routes then get the body as read, in one piece.

Every early answer carries ``Connection: close``: the rest of a refused body is never
read. The limits are module constants (``BODY_LIMITS``, ``DEFAULT_BODY_LIMIT``), each a
few times what the largest legitimate body of its family needs.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.armpath import is_arm_path
from gateway.api.auth import authenticate
from gateway.api.context import ApiContext
from gateway.api.errors import ArmError

KIB = 1024


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """The largest body (bytes) a family of routes accepts, and whether it needs a token."""

    family: str
    limit: int
    needs_token: bool


# First match wins. A serial port's PUT or a power action carries a few dozen bytes of
# JSON (ARM's bound leaves room for a malformed one to be answered 400 with what is wrong
# in it); a token form a user name and a password (at most 256 and 1,024 characters); an
# admin command ``{"command", "requestId", "commandParameters"}``.
BODY_LIMITS: tuple[tuple[re.Pattern[str], BodyLimit], ...] = (
    (re.compile(r"^/oauth2/token$"), BodyLimit("the token endpoint", 16 * KIB, False)),
    (re.compile(r"^/[^/]+/oauth2/v2\.0/token$"), BodyLimit("the token endpoint", 16 * KIB, False)),
    (
        re.compile(r"^/n/connector/[^/]+/sessions/[^/]+/adminCommand/"),
        BodyLimit("admin commands", 8 * KIB, True),
    ),
)
ARM_LIMIT = BodyLimit("ARM's routes", 128 * KIB, True)
DEFAULT_BODY_LIMIT = BodyLimit("this route", 8 * KIB, False)

# How long a body may take to arrive once its headers have.
BODY_TIMEOUT = 30.0


def body_limit(path: str) -> BodyLimit:
    """The limit of the route family ``path`` belongs to."""
    if is_arm_path(path):
        return ARM_LIMIT
    for pattern, limit in BODY_LIMITS:
        if pattern.match(path):
            return limit
    return DEFAULT_BODY_LIMIT


def size_text(n: int) -> str:
    """``32768 bytes (32 KiB)``: exact, and readable."""
    return f"{n} bytes ({n // KIB} KiB)" if n >= KIB and n % KIB == 0 else f"{n} bytes"


def too_large(limit: BodyLimit, sent: str) -> ArmError:
    return ArmError(
        413,
        "RequestEntityTooLarge",
        f"The request body {sent} is larger than the {size_text(limit.limit)} that "
        f"{limit.family} accept. Send a smaller body.",
    )


class RequestLimits:
    """ASGI middleware: the token before the body, and a bounded body (module docstring)."""

    def __init__(
        self, app: ASGIApp, context: ApiContext, body_timeout: float | None = None
    ) -> None:
        self.app = app
        self.context = context
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length_header = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        try:
            length = int(length_header) if length_header is not None else None
        except ValueError:  # the HTTP parser refuses these first; never trust it twice
            length = None
        if not chunked and not length:
            await self.app(scope, receive, send)  # no body: nothing to bound
            return
        limit = body_limit(scope["path"])
        if limit.needs_token:
            refusal = self._token_refusal(headers.get(b"authorization", b""))
            if refusal is not None:
                await _send_error(send, refusal)
                return
        if length is not None and length > limit.limit:
            await _send_error(send, too_large(limit, f"(Content-Length {length})"))
            return
        timeout = BODY_TIMEOUT if self.body_timeout is None else self.body_timeout
        try:
            async with asyncio.timeout(timeout):
                body = await _read_body(receive, limit.limit)
        except TimeoutError:
            await _send_error(
                send,
                ArmError(
                    408,
                    "RequestTimeout",
                    f"The request body did not arrive within {timeout:g} s. Send it at once, "
                    "with its Content-Length.",
                ),
            )
            return
        if body is None:
            return  # the client left
        if len(body) > limit.limit:
            await _send_error(send, too_large(limit, "(sent in chunks)"))
            return
        await self.app(scope, _replay(body, receive), send)

    def _token_refusal(self, authorization: bytes) -> ArmError | None:
        """ARM's 401 for a missing or bad bearer token; None when the token is good (or the
        check itself failed: the route then answers, after reading a bounded body)."""
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        try:
            authenticate(self.context, token.strip() if scheme.lower() == "bearer" else None)
        except ArmError as err:
            return err
        except Exception:  # e.g. the database: the route reports it in its words
            return None
        return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or as much as shows it is over ``limit``; None if the client left."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the server says (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, err: ArmError) -> None:
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
