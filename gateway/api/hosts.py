"""Answer only to the gateway's own names: a defence against DNS rebinding.

A page on ``evil.example`` whose name is made to resolve to 127.0.0.1 reaches a loopback
gateway with ``Host: evil.example``; its Origin then matches that Host, so an Origin check
alone lets it in. A loopback lab therefore answers only requests whose Host is one of its
own names (``ApiContext.allowed_hosts``): HTTP gets ARM's 400, a websocket is refused.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

MESSAGE = (
    "This gateway answers to {names} only (the Host header was {host!r}). Use "
    "{scheme}://127.0.0.1:PORT, or set the lab's host to the name you use."
)


def host_name(header: str) -> str | None:
    """The host name in a Host header (``[::1]:8400`` -> ``::1``); None if unreadable."""
    try:
        return urlsplit("//" + header).hostname
    except ValueError:
        return None


class HostCheck:
    """ASGI middleware: refuse requests whose Host is not in ``allowed`` (None: any)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        text = MESSAGE.format(names=", ".join(sorted(self.allowed)), host=header, scheme=scheme)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4008, "reason": "unknown Host"})
            return
        body = json.dumps({"error": {"code": "InvalidHost", "message": text}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
