"""The HTTP server under hostile requests: bounded bodies, the token before the body,
timeouts on headers, keep-alive and websocket handshakes, a cap on connections, and
oversized request heads refused at once. Every client here is a raw socket on 127.0.0.1
(or httpx), every wait bounded; the lab runs in this process, so its memory is ours."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.lab import connections
from gateway.lab.runtime import ReadyServer
from gateway.testing.timeouts import scaled
from tests.support.lab import LabHandle, running_lab

GIB = 1 << 30
HEADER_TIMEOUT = scaled(1.5)
KEEP_ALIVE = scaled(1.0)
PORT_QUERY = "/providers/Microsoft.SerialConsole/serialPorts/0?api-version=2024-07-01"
LIST_SUBSCRIPTIONS = b"GET /subscriptions?api-version=2022-12-01 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
UPGRADE = (
    "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds from the last byte sent to the connection's end

    def error(self) -> dict[str, str]:
        """ARM's ``{"error": {"code", "message"}}``, asserted to be that shape."""
        payload = json.loads(self.body)
        assert set(payload) == {"error"}, payload
        assert set(payload["error"]) == {"code", "message"}, payload
        return dict(payload["error"])


def _parse(raw: bytes, elapsed: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body, elapsed)


async def exchange(port: int, data: bytes, timeout: float = scaled(5)) -> Answer:
    """Send ``data``, then read until the lab closes the connection (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        began = time.monotonic()
        async with asyncio.timeout(timeout):
            raw = await reader.read()
        return _parse(raw, time.monotonic() - began)
    finally:
        writer.close()


def rss_kib() -> int:
    """This process's resident memory (the lab's: it runs here), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> connections.ServerLimits:
    """The lab's server limits with timeouts scaled down for tests."""
    scaled_limits = connections.ServerLimits(
        header_timeout=HEADER_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE,
        ws_handshake_timeout=scaled(2),
        body_timeout=scaled(2),
        max_connections=40,
    )
    monkeypatch.setattr(connections, "SERVER", scaled_limits)
    return scaled_limits


@pytest.fixture
async def lab(tmp_path: Path, limits: connections.ServerLimits) -> AsyncIterator[LabHandle]:
    async with running_lab(tmp_path) as handle:
        yield handle


def put_port(lab: LabHandle, headers: str, body: bytes = b"") -> bytes:
    path = lab.vm_path("linux-1") + PORT_QUERY
    return (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n"
    ).encode() + body


# -- bodies ---------------------------------------------------------------------------------


async def test_huge_body_without_token_is_401_at_once_and_nothing_is_read(
    lab: LabHandle,
) -> None:
    """A PUT announcing 1 GiB with no token (then with a bad one) is ARM's 401 as soon as
    its headers are in; the lab's memory does not grow by the body."""
    before = rss_kib()
    cases = [("", "AuthenticationFailed"),
             ("Authorization: Bearer not-a-token\r\n", "InvalidAuthenticationToken")]  # fmt: skip
    for auth, code in cases:
        answer = await exchange(
            lab.runtime.port,
            put_port(lab, f"{auth}Content-Length: {GIB}\r\n", b"x" * 65536),
        )
        assert answer.status == 401
        assert answer.error()["code"] == code
        assert "POST /oauth2/token" in answer.error()["message"]
        assert answer.headers["connection"] == "close"
        assert answer.elapsed < scaled(1)
    grown = rss_kib() - before
    print(f"RSS before {before} KiB, after two 1 GiB PUTs: +{grown} KiB")
    assert grown < 16 * 1024


async def test_content_length_over_the_limit_is_413_naming_it(lab: LabHandle) -> None:
    """With a good token, a 1 GiB Content-Length is ARM's 413 with the route's limit, at
    once, without ``100 Continue`` first; memory stays put."""
    token = await lab.token("carol")
    before = rss_kib()
    answer = await exchange(
        lab.runtime.port,
        put_port(
            lab,
            f"Authorization: Bearer {token}\r\nExpect: 100-continue\r\nContent-Length: {GIB}\r\n",
        ),
    )
    assert answer.status == 413
    error = answer.error()
    assert error["code"] == "RequestEntityTooLarge"
    assert "131072 bytes (128 KiB)" in error["message"]
    assert f"Content-Length {GIB}" in error["message"]
    assert answer.elapsed < scaled(1)
    assert rss_kib() - before < 16 * 1024


async def test_chunked_body_over_the_limit_is_413_while_streaming(lab: LabHandle) -> None:
    """A chunked body is counted as it arrives: past 128 KiB the lab answers 413 without
    waiting for the end (the client here never sends one)."""
    token = await lab.token("carol")
    chunk = b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
    answer = await exchange(
        lab.runtime.port,
        put_port(lab, f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n")
        + chunk * 5,
    )
    assert answer.status == 413
    assert "sent in chunks" in answer.error()["message"]
    assert "131072 bytes (128 KiB)" in answer.error()["message"]


async def test_bodies_within_the_limit_still_work(lab: LabHandle) -> None:
    """A serial port's PUT, as a whole body and in chunks, reaches the route as before."""
    token = await lab.token("carol")
    headers = {"Authorization": f"Bearer {token}"}
    path = lab.vm_path("linux-1") + PORT_QUERY
    reply = await lab.http.put(path, json={"properties": {"state": "enabled"}}, headers=headers)
    assert reply.status_code in (200, 201), reply.text
    assert reply.json()["properties"]["state"] == "enabled"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"properties": '
        yield b'{"state": "disabled"}}'

    reply = await lab.http.put(
        path, content=chunks(), headers=headers | {"Content-Type": "application/json"}
    )
    assert reply.status_code in (200, 201), reply.text
    assert reply.json()["properties"]["state"] == "disabled"


async def test_token_forms_are_bounded_too(lab: LabHandle) -> None:
    """The token endpoints need no token, but a form over 16 KiB is 413 at once."""
    for path in ("/oauth2/token", "/organizations/oauth2/v2.0/token"):
        answer = await exchange(
            lab.runtime.port,
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {GIB}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
            ).encode()
            + b"grant_type=password&username=alice&password=",
        )
        assert answer.status == 413, path
        assert "16384 bytes (16 KiB)" in answer.error()["message"]
    assert await lab.token("alice")  # a real form still works


async def test_a_body_that_never_ends_is_408_after_the_body_timeout(
    lab: LabHandle, limits: connections.ServerLimits
) -> None:
    token = await lab.token("carol")
    answer = await exchange(
        lab.runtime.port,
        put_port(lab, f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n", b'{"pro'),
        timeout=limits.body_timeout + scaled(3),
    )
    assert answer.status == 408
    assert "did not arrive within" in answer.error()["message"]
    assert limits.body_timeout - 0.2 < answer.elapsed < limits.body_timeout + scaled(2)


# -- heads and timeouts ---------------------------------------------------------------------


async def _trickle(port: int, data: bytes, every: float) -> tuple[Answer, int]:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the lab answers;
    the answer (elapsed from the connection's start) and how many bytes went out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    sent = 0

    async def drip() -> None:
        nonlocal sent
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(every)  # the client's pace, not a wait for an event

    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(scaled(10)):
            raw = await reader.read()
    finally:
        dripping.cancel()
        writer.close()
    return _parse(raw, time.monotonic() - began), sent


async def test_slowloris_headers_are_cut_with_408(lab: LabHandle) -> None:
    """Headers sent a byte at a time get 408 once the header timeout has passed since the
    connection opened, long before the head is complete."""
    head = b"GET /subscriptions?api-version=2022-12-01 HTTP/1.1\r\nHost: 127.0.0.1\r\n" * 4
    answer, sent = await _trickle(lab.runtime.port, head, every=HEADER_TIMEOUT / 8)
    print(f"slowloris: {answer.status} after {answer.elapsed:.2f} s, {sent} bytes sent")
    assert answer.status == 408
    assert answer.error()["code"] == "RequestTimeout"
    assert HEADER_TIMEOUT - 0.1 < answer.elapsed < HEADER_TIMEOUT + scaled(1)
    assert sent < len(head)


async def test_slow_websocket_upgrade_is_cut_too(lab: LabHandle) -> None:
    """A websocket handshake whose request trickles in is cut by the same bound."""
    head = f"GET /n/connector/c/sessions/s/client HTTP/1.1\r\n{UPGRADE}\r\n".encode()
    answer, sent = await _trickle(lab.runtime.port, head, every=HEADER_TIMEOUT / 8)
    assert answer.status == 408
    assert HEADER_TIMEOUT - 0.1 < answer.elapsed < HEADER_TIMEOUT + scaled(1)
    assert sent < len(head)


async def test_an_idle_connection_is_closed_after_the_header_timeout(lab: LabHandle) -> None:
    """A connection that sends nothing is closed (no answer: there was no request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.runtime.port)
    began = time.monotonic()
    try:
        async with asyncio.timeout(scaled(10)):
            assert await reader.read() == b""
    finally:
        writer.close()
    elapsed = time.monotonic() - began
    print(f"idle connection closed after {elapsed:.2f} s")
    assert HEADER_TIMEOUT - 0.1 < elapsed < HEADER_TIMEOUT + scaled(1)


async def test_an_idle_kept_alive_connection_is_closed(lab: LabHandle) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.runtime.port)
    try:
        writer.write(LIST_SUBSCRIPTIONS + b"\r\n")
        async with asyncio.timeout(scaled(10)):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            answered = time.monotonic()
            assert await reader.read() == b""
        elapsed = time.monotonic() - answered
    finally:
        writer.close()
    assert KEEP_ALIVE - 0.1 < elapsed < KEEP_ALIVE + scaled(1)


@pytest.mark.parametrize("websocket", [True, False], ids=["upgrade", "plain"])
async def test_a_url_over_8000_bytes_is_414_at_once(lab: LabHandle, websocket: bool) -> None:
    """A 9 KB URL (longer than the websockets library reads) is 414 at once, not hung."""
    extra = UPGRADE if websocket else "Host: 127.0.0.1\r\n"
    url = "/n/connector/c/sessions/s/client?" + "a" * 9000
    answer = await exchange(lab.runtime.port, f"GET {url} HTTP/1.1\r\n{extra}\r\n".encode())
    assert answer.status == 414
    assert answer.error()["code"] == "UriTooLong"
    assert "8000 bytes" in answer.error()["message"]
    assert answer.elapsed < scaled(1)


@pytest.mark.parametrize(
    "headers",
    [
        "X-Big: " + "b" * 9000 + "\r\n",  # one header longer than a line the library reads
        "".join(f"X-H{i}: {'h' * 4000}\r\n" for i in range(10)),  # 40 KB in all
        "".join(f"X-H{i}: h\r\n" for i in range(150)),  # more headers than it takes
    ],
    ids=["one-long", "many-bytes", "many-headers"],
)
async def test_oversized_heads_are_431_at_once(lab: LabHandle, headers: str) -> None:
    answer = await exchange(
        lab.runtime.port,
        f"GET /n/connector/c/sessions/s/client HTTP/1.1\r\n{UPGRADE}{headers}\r\n".encode(),
    )
    assert answer.status == 431
    assert answer.error()["code"] == "RequestHeaderFieldsTooLarge"
    assert answer.elapsed < scaled(1)


# -- the connection cap ---------------------------------------------------------------------


async def test_idle_connections_past_the_cap_are_refused_and_all_are_closed(
    lab: LabHandle, limits: connections.ServerLimits, caplog: pytest.LogCaptureFixture
) -> None:
    """300 idle sockets against a cap of 40: those past the cap get ARM's 503 at once, a
    new client too (cleanly, with Retry-After), the lab says it once; after the header
    timeout every idle socket is closed and a new client is served."""
    caplog.set_level(logging.INFO, logger="serial_console_lab.http")
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    began = time.monotonic()
    try:
        # all at once: opened one by one on a busy machine, the first would reach the
        # header timeout (and leave the cap) before the last were open
        opening = [asyncio.open_connection("127.0.0.1", lab.runtime.port) for _ in range(300)]
        idle += await asyncio.gather(*opening)
        refused = await exchange(
            lab.runtime.port, b"GET /subscriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert refused.status == 503
        assert refused.error()["code"] == "ServerBusy"
        assert refused.headers["retry-after"] == "5"
        assert f"{limits.max_connections} connections" in refused.error()["message"]

        async def outcome(reader: asyncio.StreamReader) -> tuple[bytes, float]:
            raw = await reader.read()
            return raw, time.monotonic() - began

        async with asyncio.timeout(HEADER_TIMEOUT + scaled(5)):
            outcomes = await asyncio.gather(*(outcome(reader) for reader, _ in idle))
    finally:
        for _, writer in idle:
            writer.close()
    busy = [t for raw, t in outcomes if raw.startswith(b"HTTP/1.1 503 ")]
    closed = [t for raw, t in outcomes if raw == b""]
    print(
        f"cap {limits.max_connections}: {len(busy)} refused with 503 within "
        f"{max(busy):.2f} s, {len(closed)} idle closed after {min(closed):.2f}-"
        f"{max(closed):.2f} s"
    )
    assert len(busy) + len(closed) == 300
    assert len(busy) >= 300 - limits.max_connections
    # At once: every 503 came before the header timeout closed the first idle socket (an
    # order, which a busy machine cannot change; the clock, it can).
    assert max(busy) < min(closed)
    assert all(HEADER_TIMEOUT - 0.1 < t < HEADER_TIMEOUT + scaled(5) for t in closed)
    reached = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
    assert len(reached) == 1
    assert any("below the connection cap again" in r.getMessage() for r in caplog.records)
    served = await exchange(
        lab.runtime.port,
        b"GET /subscriptions?api-version=2022-12-01 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert served.status == 401  # the route's own answer: the lab serves again


# -- websocket handshakes -------------------------------------------------------------------


async def test_an_upgrade_the_websocket_library_refuses_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with the lab's own URL bound lifted, a request line longer than the websockets
    library reads gets its 414 at once: uvicorn alone would leave it unanswered."""
    monkeypatch.setattr(connections, "SERVER", connections.ServerLimits(max_url=16000))
    async with running_lab(tmp_path) as lab:
        url = "/n/connector/c/sessions/s/client?" + "a" * 9000
        answer = await exchange(lab.runtime.port, f"GET {url} HTTP/1.1\r\n{UPGRADE}\r\n".encode())
    assert answer.status == 414
    assert b"no more than 8192 bytes" in answer.body
    assert answer.elapsed < scaled(1)


async def _never_accepts(scope: Scope, receive: Receive, send: Send) -> None:
    """A websocket app that takes the connection and never answers the handshake."""
    assert scope["type"] == "websocket"
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_a_handshake_left_unanswered_is_503_after_the_bound() -> None:
    """The lab's websocket protocol answers 503 when the app has not accepted the
    handshake in time (the lab's own door accepts at once: this app never does)."""
    limits = connections.ServerLimits(ws_handshake_timeout=scaled(1))
    http, ws = connections.protocols(limits)
    config = uvicorn.Config(_never_accepts, http=http, ws=ws, log_config=None, lifespan="off")
    sock = socket.create_server(("127.0.0.1", 0))
    server = ReadyServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(scaled(10)):
            await server.ready.wait()
        answer = await exchange(
            sock.getsockname()[1], f"GET /console HTTP/1.1\r\n{UPGRADE}\r\n".encode()
        )
    finally:
        server.should_exit = True
        await asyncio.wait({serving}, timeout=scaled(10))
        sock.close()
    assert answer.status == 503
    assert answer.error()["code"] == "ServerBusy"
    assert limits.ws_handshake_timeout - 0.1 < answer.elapsed < limits.ws_handshake_timeout + 1


def test_the_cap_is_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    """However many connections the cap refuses, the log gets one line when it is reached
    and one when the lab is well below it again, with the count."""
    caplog.set_level(logging.INFO, logger="serial_console_lab.http")
    gate = connections.ConnectionGate(10)
    assert gate.admit(10)
    assert not any(gate.admit(11) for _ in range(500))
    gate.released(9)  # just below: still an episode
    gate.released(8)
    assert not gate.admit(11)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("connection cap reached: 10 connections")
    assert lines[1] == "below the connection cap again (8 open): 500 connections were refused"
    assert lines[2].startswith("connection cap reached")
