"""Connections the lab's HTTP server keeps: how many, how long, how large a request head.

uvicorn bounds none of this by itself: its HTTP protocols start no timer before the first
request (an idle connection is kept for ever), its ``limit_concurrency`` is checked only
once a request's headers are in (idle connections still hold their descriptors) and logs
one warning per refused request, httptools bounds neither the URL nor the headers, and a
websocket upgrade whose request line exceeds the 8,192 bytes the websockets library reads
is left unanswered (its handshake fails silently and nothing is written). So the lab
serves with its own protocol classes, ``protocols(limits)``, made from uvicorn's
httptools and websockets-sansio ones:

- a cap on open connections (HTTP and websocket alike): a connection past it is answered
  503 ``ServerBusy`` (ARM's shape, ``Retry-After``) at once and closed, before it can hold
  its descriptor; one warning when the cap is reached and one line when the lab is below
  it again, never one per connection;
- request headers must be complete within ``header_timeout`` of the connection opening
  (or of a kept-alive request's first byte): a client that sent part of a request gets
  408 ``RequestTimeout`` and is closed, an idle one is closed;
- a kept-alive connection idle for ``keep_alive_timeout`` after a response is closed
  (uvicorn's own timer); a response sent before its request's body was read closes the
  connection, so a refused body is never read;
- a URL over ``max_url`` bytes is 414 ``UriTooLong`` and headers over ``max_header_line``
  (one), ``max_headers`` (count) or ``max_head`` (all) are 431
  ``RequestHeaderFieldsTooLarge``, both at once, websocket upgrades included;
- a websocket handshake not answered within ``ws_handshake_timeout`` after the upgrade
  is 503; one the websockets library refuses gets the library's answer (414, 431) or 400,
  never silence.

``SERVER`` holds the lab's limits; tests replace it (before the lab starts) to scale the
timeouts down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("serial_console_lab.http")

KIB = 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The bounds of the lab's HTTP server (seconds, bytes, connections)."""

    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    ws_handshake_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    max_url: int = 8000  # the websockets library reads request lines of 8,192 bytes
    max_header_line: int = 8 * KIB
    max_headers: int = 100  # the websockets library takes 128
    max_head: int = 32 * KIB

    def connection_cap(self) -> int:
        """``max_connections``, but never more than half the descriptors this process may
        open: the other half stays for the guests' consoles, the database, the boot logs and
        the connections being refused."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft // 2))


SERVER = ServerLimits()


class ConnectionGate:
    """Counts what the cap refused and says so once per episode (reached, then below)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.refused = 0
        self.at_cap = False

    def admit(self, open_connections: int) -> bool:
        """Whether a new connection may stay, given the number open (itself included)."""
        if open_connections <= self.cap:
            return True
        self.refused += 1
        if not self.at_cap:
            self.at_cap = True
            log.warning(
                "connection cap reached: %d connections are open, the most this lab keeps; "
                "new connections are answered 503 until some close",
                self.cap,
            )
        return False

    def released(self, open_connections: int) -> None:
        """Called as a connection closes: once well below the cap, say so once."""
        if self.at_cap and open_connections < max(1, self.cap * 9 // 10):
            self.at_cap = False
            log.warning(
                "below the connection cap again (%d open): %d connections were refused",
                open_connections,
                self.refused,
            )
            self.refused = 0


def _response(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Refused(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the lab's bounds (see the module docstring).
    ``limits`` and ``gate`` are set on the subclass ``protocols()`` makes."""

    limits: ServerLimits
    gate: ConnectionGate

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0  # bytes of chunks that left the head incomplete
        self._head_size = 0  # the URL and the complete headers, exactly
        self._header_count = 0
        self._request_bytes = False  # part of a request arrived
        self._refused = False

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream server's transport (uvloop's is not an asyncio.Transport subclass)
        super().connection_made(cast(asyncio.Transport, transport))
        if not self.gate.admit(len(self.connections)):
            self._refuse(
                503,
                "ServerBusy",
                f"The lab has {self.gate.cap} connections open, the most it keeps. Close idle "
                "connections or retry in a few seconds.",
                b"retry-after: 5\r\n",
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        self.gate.released(len(self.connections))

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with refusals from the callbacks and a bound on the head's size.
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            if isinstance(err.__context__, _Refused):
                refusal = err.__context__
                self._refuse(refusal.status, refusal.code, refusal.message)
                return
            self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_head_timer()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            # A head still incomplete after this chunk: all of it was head (bar the end of a
            # pipelined body), so the count bounds what the parser keeps meanwhile.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head:
                refusal = self._head_too_large()
                self._refuse(refusal.status, refusal.code, refusal.message)

    def _invalid(self) -> None:
        self._refuse(
            400,
            "InvalidRequest",
            "The request is not valid HTTP/1.1. Send a request line, headers and a blank line.",
        )

    def _head_too_large(self) -> _Refused:
        return _Refused(
            431,
            "RequestHeaderFieldsTooLarge",
            f"The request's headers are over {self.limits.max_head} bytes, or "
            f"{self.limits.max_headers} headers, or one header over "
            f"{self.limits.max_header_line} bytes. Send fewer or shorter headers.",
        )

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._header_count = 0
        self._request_bytes = True
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if len(self.url) > self.limits.max_url:
            raise _Refused(
                414,
                "UriTooLong",
                f"The URL is over {self.limits.max_url} bytes, the longest this lab reads. "
                "Send a shorter one.",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if (
            len(name) + len(value) + 2 > self.limits.max_header_line
            or self._header_count > self.limits.max_headers
            or self._head_size > self.limits.max_head
        ):
            raise self._head_too_large()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._request_bytes = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if cycle is not None and cycle.more_body and not self.pipeline:
            # Answered before its body was read (a refusal): do not read the rest.
            self.transport.close()

    # -- timers and refusals --------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._request_bytes:
            self.transport.close()  # idle from the start: nothing to answer
            return
        self._refuse(
            408,
            "RequestTimeout",
            f"The request's headers did not arrive within {self.limits.header_timeout:g} s. "
            "Send the whole request at once.",
        )

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        self._refused = True
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.write(_response(status, code, message, extra))
            self.transport.close()


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with a handshake bound and an answer to every
    handshake (see the module docstring)."""

    limits: ServerLimits
    gate: ConnectionGate

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._handshake_timer = self.loop.call_later(
            self.limits.ws_handshake_timeout, self._handshake_timeout
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_handshake_timer()
        super().connection_lost(exc)
        self.gate.released(len(self.connections))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.handshake_initiated or self.conn.handshake_exc is None or self.close_sent:
            return
        # The websockets library refused the request and uvicorn never sends what it
        # queued (its answer, or nothing at all): send it, or an answer of our own.
        self._cancel_handshake_timer()
        reply = b"".join(self.conn.data_to_send())
        if not reply:
            self._answer(
                400,
                "InvalidRequest",
                f"The websocket upgrade request cannot be read: {self.conn.handshake_exc}.",
            )
            return
        self.handshake_complete = True
        self.close_sent = True
        self.transport.write(reply)
        self.transport.close()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_timeout(self) -> None:
        self._handshake_timer = None
        if self.handshake_complete or self.transport.is_closing():
            return
        self._answer(
            503,
            "ServerBusy",
            f"The websocket handshake was not answered within "
            f"{self.limits.ws_handshake_timeout:g} s. Retry.",
        )

    def _answer(self, status: int, code: str, message: str) -> None:
        self._cancel_handshake_timer()
        self.handshake_complete = True
        self.close_sent = True
        if not self.transport.is_closing():
            self.transport.write(_response(status, code, message))
            self.transport.close()


def protocols(
    limits: ServerLimits,
) -> tuple[type[LimitedHttpProtocol], type[LimitedWebSocketProtocol]]:
    """The HTTP and websocket protocol classes for one server, sharing one gate."""
    gate = ConnectionGate(limits.connection_cap())
    attributes = {"limits": limits, "gate": gate}
    http = type("LabHttpProtocol", (LimitedHttpProtocol,), attributes)
    ws = type("LabWebSocketProtocol", (LimitedWebSocketProtocol,), attributes)
    return http, ws
