"""Under load, nothing is lost: the boot log and every client that lagged and resumed hold
every byte the guest wrote, in order, at the same offsets.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.console.frames import SUBPROTOCOL, CloseCode
from gateway.testing.timeouts import scaled
from tests.support.lab import LabHandle, running_lab

pytestmark = pytest.mark.slow

LINES = 300_000  # ~2 MiB of numbered lines
DONE = re.compile(rb"\r\n" + str(LINES).encode() + rb"\r\n")


class Framed:
    """A framed client keeping each binary frame's bytes with their absolute offsets."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.start = -1
        self.data = bytearray()
        self.closing: dict[str, object] | None = None

    @classmethod
    async def open(cls, lab: LabHandle, user: str, query: str = "", slow: bool = False) -> Framed:
        url, token = await lab.session_url(user)
        # A slow reader: a small receive buffer and no read-ahead, so that not reading
        # pushes back on the gateway within a few KiB instead of the kernel's megabytes.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        host, port = urlsplit(url).hostname, urlsplit(url).port
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        ws = await connect(
            f"{url}?authorization={token}{query}",
            sock=sock,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            max_size=None,
            max_queue=1 if slow else 16,
        )
        client = cls(ws)
        connected = json.loads(await ws.recv())
        assert connected["type"] == "connected"
        client.start = connected["replay_from"]
        return client

    async def read_until(self, pattern: re.Pattern[bytes], timeout: float = 60) -> None:
        async with asyncio.timeout(scaled(timeout)):
            while not pattern.search(self.data):
                await self._one()

    async def read_to_close(self, timeout: float = 60) -> int:
        async with asyncio.timeout(scaled(timeout)):
            try:
                while True:
                    await self._one()
            except ConnectionClosed:
                pass
        assert self.ws.close_code is not None
        return self.ws.close_code

    async def _one(self) -> None:
        frame = await self.ws.recv()
        if isinstance(frame, bytes):
            self.data += frame
        else:
            event = json.loads(frame)
            if event["type"] == "closing":
                self.closing = event

    async def send(self, text: str) -> None:
        await self.ws.send(text.encode())


def assert_matches_log(lab: LabHandle, client: Framed) -> None:
    """The client's bytes are exactly the boot log's bytes at the same offsets."""
    kept = lab.runtime.bootlogs["linux-1"].read(client.start, len(client.data))
    assert kept.start == client.start
    assert kept.contents == bytes(client.data)


async def test_lagging_and_resuming_clients_lose_no_byte(tmp_path: Path) -> None:
    """A guest writes ~2 MiB of numbered lines while a reader keeps up, another lags past
    its queue and is cut off with a resume offset, and a third leaves and comes back: the
    log has every line in order, and each client's bytes equal the log's at their offsets.
    """
    async with running_lab(tmp_path, gateway="bootlog_bytes = 16777216") as lab:
        assert lab.runtime.context is not None
        lab.runtime.context.session_buffer = 256 * 1024
        writer = await Framed.open(lab, "alice")
        await writer.send("\r")
        await writer.read_until(re.compile(rb"login: $"))
        # busybox's shell asks the terminal where its cursor is (ESC [6n) after the prompt
        for text, prompt in (("root\r", rb"Password: $"), ("serial-lab\r", rb"# (?:\x1b\[6n)?$")):
            await writer.send(text)
            await writer.read_until(re.compile(prompt))
        laggard = await Framed.open(lab, "carol", "&watch=1", slow=True)  # then reads nothing
        leaver = await Framed.open(lab, "carol", "&watch=1")
        await writer.send(f"seq 1 {LINES}\r")
        await leaver.read_until(re.compile(rb"\r\n100000\r\n"))
        leaver_end = leaver.start + len(leaver.data)
        await leaver.ws.close()
        await writer.read_until(DONE, 120)

        assert await laggard.read_to_close() == CloseCode.FELL_BEHIND
        assert laggard.closing is not None
        resume = laggard.closing["resume_offset"]
        assert isinstance(resume, int)
        assert resume == laggard.start + len(laggard.data)  # cut off exactly where it stopped
        resumed = await Framed.open(lab, "carol", f"&watch=1&offset={resume}")
        assert resumed.start == resume
        await resumed.read_until(DONE)
        back = await Framed.open(lab, "carol", f"&watch=1&offset={leaver_end}")
        await back.read_until(DONE)

        for client in (writer, laggard, resumed, leaver, back):
            assert_matches_log(lab, client)
        log = lab.runtime.bootlogs["linux-1"].read(0)
        assert not log.rotated
        numbers = re.findall(rb"\r\n(\d+)(?=\r\n)", log.contents.split(b"seq 1 ", 1)[1])
        assert [int(n) for n in numbers[:LINES]] == list(range(1, LINES + 1))
