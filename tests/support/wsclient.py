"""A websocket console client for tests: keeps every byte and event it received."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.console.frames import SUBPROTOCOL
from gateway.testing.timeouts import scaled
from tests.support.console import Transcript


class Client(Transcript):
    """A websocket console client that keeps everything it received: the bytes (its
    transcript, read by ``expect``) and, in framed mode, the gateway's events."""

    default_timeout = 10.0

    def __init__(self, ws: ClientConnection, *, framed: bool = False) -> None:
        super().__init__()
        self.ws = ws
        self.framed = framed
        self.events: list[dict[str, Any]] = []

    async def _more(self) -> None:
        try:
            self._take(await self.ws.recv())
        except ConnectionClosed:
            self.ended(f"websocket closed: {self.ws.close_code} {self.ws.close_reason or ''}")

    async def event(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                for event in self.events:
                    if event["type"] == kind:
                        self.events.remove(event)
                        return event
                self._take(await self.ws.recv())

    async def closed(self, timeout: float = 10) -> tuple[int, str]:
        """Read to the end; the close code and reason."""
        async with asyncio.timeout(scaled(timeout)):
            try:
                while True:
                    self._take(await self.ws.recv())
            except ConnectionClosed:
                pass
        assert self.ws.close_code is not None
        return self.ws.close_code, self.ws.close_reason or ""

    def _take(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self.feed(frame)
        elif not self.framed:  # raw mode: the console as text frames (what az prints)
            self.feed(frame.encode())
        else:
            self.events.append(json.loads(frame))

    async def type(self, text: str) -> None:
        await self.ws.send(text.encode())


async def open_console(
    url: str, token: str | None, *, framed: bool = False, query: str = "", **kw: Any
) -> Client:
    params = [p for p in (f"authorization={token}" if token else "", query) if p]
    full = url + ("?" + "&".join(params) if params else "")
    ws = await connect(full, subprotocols=[SUBPROTOCOL] if framed else None, **kw)  # type: ignore[list-item]
    return Client(ws, framed=framed)


async def login(client: Client) -> None:
    await client.type("\r")
    await client.expect(r"login: ")
    await client.type("root\r")
    await client.expect(r"Password: ")
    await client.type("serial-lab\r")
    await client.expect(r"# ")
