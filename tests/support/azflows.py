"""az serial-console's websocket flows, replayed with websocket-client as its extension
uses it (Azure/azure-cli-extensions, src/serialconsole/azext_serialconsole/custom.py):
``websocket.WebSocketApp`` in a thread, one text frame per keystroke, what arrives printed
as it comes, admin commands posted with ``requests`` to the URL az rewrites from the
websocket's.

- ``AzConsole``: ``connect``. The current flow sends the token when the socket opens and
  again after the first message, which it does not print; ``token_in_url`` adds az's older
  ``?authorization=``.
- ``az_send``: ``send nmi|reset|sysrq``. Opens the socket with no token, waits for a first
  message, sends the token, then posts the admin command.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket


def admin_url(websocket_url: str, command: str) -> str:
    """az's rewrite of the websocket URL, character for character."""
    return (
        websocket_url.replace("wss", "https")
        .replace("ws", "http")
        .replace("/client", "/adminCommand/" + command)
    )


def post_admin(
    websocket_url: str, token: str, command: str, parameters: dict[str, str], verify: str | bool
) -> requests.Response:
    headers = {
        "accept": "application/json",
        "authorization": "Bearer " + token,
        "accept-language": "en",
        "content-type": "application/json",
    }
    data = {"command": command, "requestId": str(uuid.uuid4()), "commandParameters": parameters}
    return requests.post(
        admin_url(websocket_url, command), headers=headers, data=json.dumps(data), verify=verify,
        timeout=30,
    )  # fmt: skip


@dataclass
class AzConsole:
    """``az serial-console connect``: what it prints, and a way to type."""

    url: str
    token: str
    token_in_url: bool = False
    ca_certs: str | None = None
    printed: list[str | bytes] = field(default_factory=list)
    first_message: str | bytes | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    close_code: int | None = None

    def start(self) -> None:
        full = self.url + ("?authorization=" + self.token if self.token_in_url else "")
        self.app = websocket.WebSocketApp(
            full,
            on_open=lambda ws: ws.send(self.token),
            on_message=self._on_message,
            on_close=self._on_close,
        )
        self._thread = threading.Thread(
            target=self.app.run_forever,
            kwargs={
                "skip_utf8_validation": True,
                "sslopt": {"ca_certs": self.ca_certs} if self.ca_certs else None,
                # How often its reading loop looks up from the socket (10 s by default): a
                # close() from another thread ends the thread only then. No ping is sent:
                # the timeout applies to pings only once one has gone out.
                "ping_timeout": 0.2,
            },
            daemon=True,
        )
        self._thread.start()

    def _on_message(self, ws: websocket.WebSocketApp, message: str | bytes) -> None:
        if self.first_message is None:
            self.first_message = message
            ws.send(self.token)  # az: the token again, and the first message is not printed
            self.ready.set()
            return
        self.printed.append(message)

    def _on_close(self, _ws: websocket.WebSocketApp, code: int | None, _reason: str | None) -> None:
        self.close_code = code
        self.closed.set()

    @property
    def text(self) -> bytes:
        return b"".join(m if isinstance(m, bytes) else m.encode() for m in self.printed)

    def type(self, keys: str, timeout: float = 30) -> None:
        """Type ``keys``, once the first message came (az reads keys only then)."""
        if not self.ready.wait(timeout):
            raise TimeoutError(f"no first message in {timeout} s")
        for key in keys:  # az: one frame per keystroke
            self.app.send(key)

    def wait_for(self, needle: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not printed; printed: {self.text[-300:]!r}")
            if self.closed.wait(0.01):
                raise ConnectionError(f"closed ({self.close_code}); printed: {self.text!r}")

    def stop(self) -> None:
        self.app.close()
        self._thread.join(10)


@dataclass
class SendOutcome:
    status: int | None
    body: dict[str, object] | None
    first_message: str | bytes | None
    seconds: float


def az_send(
    url: str, token: str, command: str, parameters: dict[str, str], verify: str | bool = True
) -> SendOutcome:
    """``az serial-console send``: the outcome of the admin command, timed from open."""
    outcome = SendOutcome(None, None, None, 0.0)
    started = time.monotonic()

    def on_message(ws: websocket.WebSocketApp, message: str | bytes) -> None:
        if outcome.first_message is not None:
            return
        outcome.first_message = message
        ws.send(token)
        reply = post_admin(url, token, command, parameters, verify)
        outcome.status, outcome.body = reply.status_code, reply.json()
        outcome.seconds = time.monotonic() - started
        ws.close()

    app = websocket.WebSocketApp(url, on_message=on_message)
    sslopt = {"ca_certs": verify} if isinstance(verify, str) else None
    app.run_forever(sslopt=sslopt)
    return outcome
