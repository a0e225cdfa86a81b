"""The console's data path against the PTY under it and against ser2net as a peer.

Measured, each on loopback, with the clients in this process and every server in a child
process of its own (``tests.bench.console_peers``):

- keystroke round trip: one byte typed, echoed by the guest, read back; p50 and p99 over
  ``KEYS`` keystrokes (after a warm-up), one at a time;
- output throughput: the guest writes a blast as fast as its port takes it; MiB/s seen at
  1 client and at ``FANOUT`` clients (each gets every byte), from the blast command being
  sent to the blast's last byte reaching the client.

The guest is ``BenchGuest`` on the emulator's PTY and UART (``EmulatedMachine``): a raw
echo (no line editor, no shell) that can also blast numbered lines. Paths:

- ``PTY, guest in-process``: a ``SerialPort`` reader in the guest's own event loop: the
  floor of the emulated PTY itself.
- ``PTY, guest in a child``: the same reader on a guest in another process, the layout
  ser2net has.
- ``gateway raw`` / ``gateway framed``: the lab (uvicorn + uvloop, the VM's hub, boot log,
  sessions, each session recorded as the lab does by default) in a child; clients speak
  the websocket with a minimal frame walk (the handshake, then frame headers only; see
  ``Probe``) so the figures are the gateway's, not a Python client's.
- ``gateway raw, recording on`` / ``recording off``: the same lab, recording as it does
  by default and with ``[recordings] enabled = false``, each in children of its own,
  measured in turn ``RECORDING_ROUNDS`` times: what recording costs a keystroke and a
  blast (the medians; the lab's CPU time per keystroke in the notes).
- ``FastAPI websocket echo``: the framework under the gateway echoing frames, no PTY: the
  floor the design measures.
- ``ser2net default`` / ``ser2net tuned``: ser2net 4 bridging a guest PTY to raw TCP
  (no telnet), with its defaults and with ``chardelay: false``, 64 KiB buffers, nodelay.
- ``SSH``: the lab's SSH door (``ssh -p PORT alice+lab-rg+bench-1@127.0.0.1``) from
  asyncssh's client in this process: a session channel with no PTY request (the door
  needs none), bytes in and out as they are; the fan-out's other clients run ``watch``.
  Its figures include this process's share of the cipher and asyncssh's Python framing.
- ``RFC 2217``: the lab's RFC 2217 door, from a raw TCP client that drops the telnet
  negotiation (``TelnetProbe``) and answers none of it. A door has one role and a writer
  coming in takes the console over, so the fan-out's clients are on ``bench-2``'s
  watchers' door, the blast typed there by a websocket writer.
- ``az client: ...``: the client az serial-console uses (websocket-client, synchronous,
  one text frame per keystroke, in a thread of this process), typing into the websockets
  library's bare echo (``websockets echo``: the floor an az-like client can reach), into
  the gateway's raw echo guest, and into an emulated Linux guest's shell after logging in
  (``shell``), raw and framed. These rows are what a person at ``az serial-console``
  meets; the aims compare them with the bare echo measured in the same run.

``python -m tests.bench`` runs it with the other benchmarks; alone:
``python -m tests.bench.bench_console [KEYS] [FANOUT]``. It stops by itself in under three
minutes; missing ser2net only drops its rows (and says what to install).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import asyncssh
import httpx
import websocket
from websockets.utils import accept_key, apply_mask

from gateway.console.frames import SUBPROTOCOL
from gateway.console.port import SerialPort
from tests.bench.console_peers import (
    SHELL_VM,
    VM,
    WATCHED_VM,
    bench_machine,
    blast_command,
    end_marker,
)
from tests.support.lab import SUBSCRIPTION

KEYS = 2000
WARMUP = 200
FANOUT = 50
BLAST_ONE = 64 << 20  # bytes for one client
BLAST_FAN = 4 << 20  # bytes for each of FANOUT clients
BLAST_TIMEOUT = 15.0  # a blast that takes longer is reported from what arrived
RECORDING_ROUNDS = 3  # labs measured in turn, recording on and off
STEP_TIMEOUT = 10.0  # any single wait: a handshake, an echo, a child's start
ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


# -- clients ------------------------------------------------------------------------------


class Sink:
    """Where a client's incoming console bytes go: echo waits and blast counting."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.received = 0
        self._echo: asyncio.Future[bytes] | None = None
        self._echo_buf = bytearray()
        self._echo_want = 0
        self._until: bytes = b""
        self._tail = b""
        self._until_done: asyncio.Future[float] | None = None
        self.closed: asyncio.Future[int] = self.loop.create_future()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self._echo is not None:
            self._echo_buf += data
            if len(self._echo_buf) >= self._echo_want and not self._echo.done():
                self._echo.set_result(bytes(self._echo_buf))
        if self._until_done is not None:
            seen = self._tail + data
            if self._until in seen:
                if not self._until_done.done():
                    self._until_done.set_result(time.perf_counter())
                self._until_done = None
            self._tail = seen[-len(self._until) :]

    def watch_for(self, marker: bytes) -> asyncio.Future[float]:
        """A future of the time ``marker`` is next seen in the stream."""
        self._until, self._tail = marker, b""
        self._until_done = self.loop.create_future()
        return self._until_done

    async def roundtrip(self, data: bytes) -> int:
        """Send ``data``, wait for as many bytes back: nanoseconds. The echo must match."""
        self._echo_buf.clear()
        self._echo_want = len(data)
        self._echo = self.loop.create_future()
        started = time.perf_counter_ns()
        await self.send(data)
        echoed = await self._echo
        elapsed = time.perf_counter_ns() - started
        self._echo = None
        if echoed != data:
            raise RuntimeError(f"expected the echo {data!r}, read {echoed!r}")
        return elapsed

    async def sync(self, tag: str) -> None:
        """Type ``tag`` and read up to its echo: everything before it is drained."""
        seen = self.watch_for(tag.encode())
        await self.send(tag.encode())
        async with asyncio.timeout(STEP_TIMEOUT):
            await seen

    def close(self) -> None:
        raise NotImplementedError


class Probe(Sink, asyncio.Protocol):
    """A TCP client, raw (ser2net) or websocket (the gateway, the FastAPI floor).

    The websocket is spoken by hand on purpose: after the handshake (keys from
    ``websockets.utils``) it only walks frame headers, a few operations per frame. The
    websockets client parses every frame in Python, which at tens of thousands of frames
    a second would measure this process instead of the server.
    """

    def __init__(self, websocket: bool, framed: bool = False) -> None:
        super().__init__()
        self.websocket = websocket
        self.framed = framed  # raw websocket clients get the console as text frames
        self.transport: asyncio.Transport | None = None
        self.events: list[dict[str, object]] = []
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self._buf = bytearray()
        self._key = ""
        self._subprotocol: str | None = None
        self._handshaken = not websocket

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self.websocket:
            self.opened.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.websocket:
            self.feed(data)
            return
        self._buf += data
        if not self._handshaken:
            self._read_response()
        if self._handshaken:
            self._walk_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(1006)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost: {exc}"))

    # the websocket by hand

    def handshake(self, url: str, subprotocol: str | None) -> None:
        parts = urlsplit(url)
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._subprotocol = subprotocol
        lines = [
            f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _read_response(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buf[:end].decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        problem = ""
        if not head[0].startswith("HTTP/1.1 101"):
            problem = f"the server answered {head[0]!r}"
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            problem = "a wrong Sec-WebSocket-Accept"
        elif self._subprotocol and headers.get("sec-websocket-protocol") != self._subprotocol:
            problem = f"no {self._subprotocol} subprotocol"
        if problem:
            self.opened.set_exception(ConnectionError(f"websocket handshake: {problem}"))
            assert self.transport is not None
            self.transport.close()
            return
        self._handshaken = True
        self.opened.set_result(None)

    def _walk_frames(self) -> None:
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            opcode, size = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if len(buf) - pos < 4:
                    break
                (size,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif size == 127:
                if len(buf) - pos < 10:
                    break
                (size,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            if len(buf) - pos < head + size:
                break
            payload = bytes(buf[pos + head : pos + head + size])
            pos += head + size
            if opcode in (0x0, 0x2) or (opcode == 0x1 and not self.framed):
                self.feed(payload)
            elif opcode == 0x1:
                self.events.append(json.loads(payload))
            elif opcode == 0x8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                if not self.closed.done():
                    self.closed.set_result(code)
            elif opcode == 0x9:
                self._frame(0xA, payload)
        del buf[:pos]

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        assert len(payload) < 126
        mask = os.urandom(4)
        frame = bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + apply_mask(payload, mask)
        self.transport.write(frame)

    async def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.websocket:
            self._frame(0x2, data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TelnetProbe(Probe):
    """A raw TCP client of a telnet stream (the RFC 2217 door): it drops the server's
    option negotiation (``IAC`` commands and subnegotiations), answers none of it, and
    undoubles ``IAC IAC`` into the byte 0xFF. Typed bytes go as they are (none is 0xFF)."""

    def __init__(self) -> None:
        super().__init__(False)
        self._pending = b""  # a command cut at the end of a read

    def data_received(self, data: bytes) -> None:
        if not self._pending and 0xFF not in data:
            self.feed(data)
            return
        buf, self._pending = self._pending + data, b""
        out = bytearray()
        pos = 0
        while (at := buf.find(0xFF, pos)) >= 0:
            out += buf[pos:at]
            if at + 1 >= len(buf):
                self._pending = buf[at:]
                pos = len(buf)
                break
            command = buf[at + 1]
            if command == 0xFF:  # an escaped data byte
                out.append(0xFF)
                pos = at + 2
            elif command in (0xFB, 0xFC, 0xFD, 0xFE):  # WILL, WONT, DO, DONT + option
                if at + 2 >= len(buf):
                    self._pending = buf[at:]
                    pos = len(buf)
                    break
                pos = at + 3
            elif command == 0xFA:  # SB ... IAC SE
                end = buf.find(b"\xff\xf0", at + 2)
                if end < 0:
                    self._pending = buf[at:]
                    pos = len(buf)
                    break
                pos = end + 2
            else:
                pos = at + 2
        out += buf[pos:]
        if out:
            self.feed(bytes(out))


class SshSink(Sink, asyncssh.SSHClientSession[bytes]):
    """One console over the lab's SSH door: asyncssh's client, a session channel with no
    PTY; ``watch`` as the command for a read-only one."""

    def __init__(self) -> None:
        super().__init__()
        self.conn: asyncssh.SSHClientConnection | None = None
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype is None:
            self.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(1006)

    async def send(self, data: bytes) -> None:
        assert self.chan is not None
        self.chan.write(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def open_ssh(port: int, user: str, vm: str, watch: bool = False) -> SshSink:
    async with asyncio.timeout(STEP_TIMEOUT * 3):  # key exchange in Python, on a busy host
        conn = await asyncssh.connect(
            "127.0.0.1", port, username=f"{user}+lab-rg+{vm}", password=user,
            known_hosts=None, client_keys=None, agent_path=None,
            compression_algs=None,  # as OpenSSH's client (Compression no)
        )  # fmt: skip
        try:
            chan, sink = await conn.create_session(
                SshSink, "watch" if watch else None, encoding=None
            )
        except BaseException:
            conn.close()
            raise
    sink.conn, sink.chan = conn, chan
    return sink


async def open_telnet(port: int) -> TelnetProbe:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(STEP_TIMEOUT):
        _, probe = await loop.create_connection(TelnetProbe, "127.0.0.1", port)
    return probe


class PortSink(Sink):
    """A reader on the guest's PTY itself, through the gateway's ``SerialPort``."""

    def __init__(self) -> None:
        super().__init__()
        self.port: SerialPort | None = None

    async def attach(self, path: str) -> None:
        self.port = await SerialPort.open(path, on_data=self.feed)

    async def send(self, data: bytes) -> None:
        assert self.port is not None
        await self.port.write(data)

    def close(self) -> None:
        if self.port is not None:
            self.port.close()


async def open_tcp(host: str, port: int) -> Probe:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(STEP_TIMEOUT):
        _, probe = await loop.create_connection(lambda: Probe(False), host, port)
    return probe


async def open_ws(url: str, subprotocol: str | None = None) -> Probe:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(STEP_TIMEOUT):
        _, probe = await loop.create_connection(
            lambda: Probe(True, framed=subprotocol is not None), parts.hostname, parts.port
        )
        probe.handshake(url, subprotocol)
        await probe.opened
    return probe


class AzProbe:
    """az serial-console's side of a console: websocket-client's synchronous socket, one
    frame per keystroke (text in raw mode, as az sends them; binary in framed mode). Used
    from one thread."""

    def __init__(self, url: str, framed: bool = False) -> None:
        self.framed = framed
        self.ws = websocket.create_connection(
            url,
            subprotocols=[SUBPROTOCOL] if framed else None,
            skip_utf8_validation=True,
            timeout=STEP_TIMEOUT,
        )
        self.buf = bytearray()

    def type(self, keys: str) -> None:
        for key in keys:
            if self.framed:
                self.ws.send_binary(key.encode())
            else:
                self.ws.send(key)

    def wait_for(self, *needles: bytes) -> bytes:
        """Read until one of ``needles`` arrives; which one (what came before is dropped)."""
        while True:
            found = [(at, n) for n in needles if (at := self.buf.find(n)) >= 0]
            if found:
                at, needle = min(found)
                del self.buf[: at + len(needle)]
                return needle
            opcode, data = self.ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_BINARY or (
                opcode == websocket.ABNF.OPCODE_TEXT and not self.framed
            ):
                self.buf += data
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError(f"closed while waiting for {needles!r}")

    def roundtrip(self, key: str) -> int:
        self.buf.clear()
        started = time.perf_counter_ns()
        self.type(key)
        self.wait_for(key.encode())
        return time.perf_counter_ns() - started

    def close(self) -> None:
        self.ws.close()


def az_rtt(probe: AzProbe, keys: int, row: Row, shell: bool) -> None:
    """Keystroke round trips from an az-like client; in a shell, Enter every 64 keys (not
    timed) keeps the line short."""
    tag = f"sync-a{next(_tags)}"
    if shell:
        probe.type("\r")
        probe.wait_for(b"# ")
    else:
        probe.type(tag)
        probe.wait_for(tag.encode())
    samples = []
    for n in range(WARMUP + keys):
        if shell and n and n % 64 == 0:
            probe.type("\r")
            probe.wait_for(b"# ")
        elapsed = probe.roundtrip("x" if n % 2 else "y")
        if n >= WARMUP:
            samples.append(elapsed)
    samples.sort()
    row.p50_us = samples[len(samples) // 2] / 1000
    row.p99_us = samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000


def az_login(probe: AzProbe) -> None:
    """Log in at the shell VM's console, unless an earlier row left it logged in."""
    probe.type("\r")
    if probe.wait_for(b"login: ", b"# ") == b"# ":
        return
    for keys, prompt in (("root\r", b"Password: "), ("serial-lab\r", b"# ")):
        probe.type(keys)
        probe.wait_for(prompt)


def az_row(name: str, url: str, keys: int, *, framed: bool = False, shell: bool = False) -> Row:
    row = Row(name)
    probe = AzProbe(url, framed)
    try:
        if shell:
            az_login(probe)
        az_rtt(probe, keys, row, shell)
    finally:
        probe.close()
    return row


# -- measures -----------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    p50_us: float | None = None
    p99_us: float | None = None
    one_mib_s: float | None = None
    fan_mib_s: float | None = None  # per client, the slowest
    fan_total_mib_s: float | None = None
    notes: list[str] = field(default_factory=list)


_tags = iter(range(1_000_000))


async def measure_rtt(sink: Sink, keys: int, row: Row) -> None:
    await sink.sync(f"sync-r{next(_tags)}")  # unique: the gateway replays earlier output
    samples = []
    for n in range(WARMUP + keys):
        async with asyncio.timeout(STEP_TIMEOUT):
            elapsed = await sink.roundtrip(b"x" if n % 2 else b"y")
        if n >= WARMUP:
            samples.append(elapsed)
    samples.sort()
    row.p50_us = samples[len(samples) // 2] / 1000
    row.p99_us = samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_lab_rtt(sink: Sink, keys: int, row: Row, pid: int) -> None:
    """``measure_rtt``, and the lab's CPU time per keystroke (its note): a figure that a
    busy machine disturbs far less than a round trip's time."""
    began = _cpu_seconds(pid)
    await measure_rtt(sink, keys, row)
    per_key = (_cpu_seconds(pid) - began) / (WARMUP + keys) * 1e6
    row.notes.append(f"lab CPU {per_key:.0f} us per keystroke")


async def measure_blast(writer: Sink, sinks: list[Sink], size: int) -> tuple[float, float, str]:
    """Blast ``size`` bytes to every sink: (slowest client's MiB/s, total MiB/s, note)."""
    tag = f"b{next(_tags)}"
    synced = [sink.watch_for(f"sync-{tag}".encode()) for sink in sinks]
    await writer.send(f"sync-{tag}".encode())
    async with asyncio.timeout(STEP_TIMEOUT):  # everyone has read up to here: a quiet line
        await asyncio.gather(*synced)
    marker = end_marker(tag)
    starts = [sink.received for sink in sinks]
    ends = [sink.watch_for(marker) for sink in sinks]
    started = time.perf_counter()
    await writer.send(blast_command(size, tag))
    done, pending = await asyncio.wait(ends, timeout=BLAST_TIMEOUT)
    stopped = time.perf_counter()
    rates, moved = [], 0
    for sink, start, end in zip(sinks, starts, ends, strict=True):
        got = sink.received - start
        moved += got
        took = (end.result() if end in done else stopped) - started
        rates.append(got / took / MIB)
    for end in pending:
        end.cancel()
    finish = max((end.result() for end in done), default=stopped)
    note = ""
    if pending:
        note = f"{len(pending)} of {len(sinks)} did not finish in {BLAST_TIMEOUT:g} s"
    return min(rates), moved / (finish - started) / MIB, note


async def blast_rows(writer: Sink, sinks: list[Sink], size: int, row: Row, fan: bool) -> None:
    slowest, total, note = await measure_blast(writer, sinks, size)
    if fan:
        row.fan_mib_s, row.fan_total_mib_s = slowest, total
    else:
        row.one_mib_s = slowest
    if note:
        row.notes.append(note)


# -- child processes ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def child(log: Path, *args: str) -> AsyncIterator[dict[str, str]]:
    """Run ``python -m tests.bench.console_peers *args``; yield its ready line (JSON).

    It stops when its standard input closes; it is killed by PID if it has not after 10 s.
    """
    with log.open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.console_peers", *args,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if not line:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"console_peers {' '.join(args)} did not start:\n{tail}")
        yield json.loads(line)
    finally:
        await _end(proc, close_stdin=True)


async def _end(proc: asyncio.subprocess.Process, close_stdin: bool = False) -> None:
    if close_stdin and proc.stdin is not None:
        proc.stdin.close()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 15)
    try:
        async with asyncio.timeout(10):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 9)
        await proc.wait()


async def gateway_session(http: httpx.AsyncClient, user: str, vm: str = VM) -> str:
    """A one-time console URL with its token, as ``az serial-console connect`` gets one."""
    reply = await http.post(
        "/oauth2/token",
        data={"grant_type": "password", "username": user, "password": user},
    )
    reply.raise_for_status()
    token = reply.json()["access_token"]
    path = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/lab-rg/providers/Microsoft.Compute"
        f"/virtualMachines/{vm}/providers/Microsoft.SerialConsole/serialPorts/0/connect"
    )
    reply = await http.post(
        path, params={"api-version": "2018-05-01"}, headers={"Authorization": f"Bearer {token}"}
    )
    reply.raise_for_status()
    return f"{reply.json()['connectionString']}?authorization={token}"


def ser2net_missing() -> str:
    """Why ser2net cannot run here ('' when it can), in the manner of tools/sysdeps.sh."""
    if shutil.which("ser2net") is None:
        return "ser2net is not installed: sudo apt-get install -y ser2net"
    return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ser2net_yaml(pty: str, port: int, tuned: bool) -> str:
    accepter = f"tcp{'(nodelay)' if tuned else ''},127.0.0.1,{port}"
    options = [f"max-connections: {FANOUT + 1}"]
    if tuned:
        options += ["chardelay: false", "dev-to-net-bufsize: 65536", "net-to-dev-bufsize: 65536"]
    body = "\n".join(f"    {option}" for option in options)
    return (
        "%YAML 1.1\n---\n"
        "connection: &bench\n"
        f"  accepter: {accepter}\n"
        f"  connector: serialdev,{pty},115200n81,local\n"
        f"  options:\n{body}\n"
    )


@contextlib.asynccontextmanager
async def ser2net(work: Path, pty: str, tuned: bool) -> AsyncIterator[int]:
    """ser2net on 127.0.0.1 bridging ``pty``; yields its TCP port; ended by PID."""
    port = _free_port()
    name = "tuned" if tuned else "default"
    config = work / f"ser2net-{name}.yaml"
    config.write_text(ser2net_yaml(pty, port, tuned))
    with (work / f"ser2net-{name}.log").open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            "ser2net", "-n", "-u", "-c", str(config), stdout=errors, stderr=errors
        )
    try:
        for _ in range(100):
            if proc.returncode is not None:
                raise RuntimeError(f"ser2net exited with {proc.returncode}; see {config}")
            with contextlib.suppress(OSError):
                probe = await open_tcp("127.0.0.1", port)
                probe.close()
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"ser2net did not listen on 127.0.0.1:{port} within 5 s")
        yield port
    finally:
        await _end(proc)


# -- the paths ----------------------------------------------------------------------------


async def _fan_out(
    opener: Callable[[int], Awaitable[Sink]], count: int
) -> AsyncIterator[list[Sink]]:
    sinks: list[Sink] = []
    try:
        for n in range(count):
            sinks.append(await opener(n))
        yield sinks
    finally:
        for sink in sinks:
            sink.close()


fan_out = contextlib.asynccontextmanager(_fan_out)


async def pty_in_process(keys: int) -> Row:
    row = Row("PTY, guest in-process")
    sink = PortSink()
    machine = bench_machine("bench-pty")
    machine.add_port_hook(sink.attach)
    async with machine:
        await machine.start()
        try:
            await measure_rtt(sink, keys, row)
            await blast_rows(sink, [sink], BLAST_ONE, row, fan=False)
        finally:
            sink.close()
    row.notes.append("one reader: no fan-out")
    return row


async def pty_child(pty: str, keys: int) -> Row:
    row = Row("PTY, guest in a child")
    sink = PortSink()
    await sink.attach(pty)
    try:
        await measure_rtt(sink, keys, row)
        await blast_rows(sink, [sink], BLAST_ONE, row, fan=False)
    finally:
        sink.close()
    return row


async def gateway_rows(work: Path, keys: int, fanout: int) -> list[Row]:
    rows = []
    async with (
        child(work / "lab.log", "lab", str(work / "lab")) as ready,
        httpx.AsyncClient(base_url=ready["url"], timeout=STEP_TIMEOUT) as http,
    ):
        for framed in (False, True):
            row = Row(f"gateway {'framed' if framed else 'raw'}")
            sub = SUBPROTOCOL if framed else None

            async def opener(n: int, sub: str | None = sub) -> Sink:
                url = await gateway_session(http, "alice" if n == 0 else "carol")
                return await open_ws(url + ("&watch=1" if n else ""), sub)

            async with fan_out(opener, 1) as (writer,):
                await measure_lab_rtt(writer, keys, row, int(ready["pid"]))
                await blast_rows(writer, [writer], BLAST_ONE, row, fan=False)
            async with fan_out(opener, fanout) as sinks:
                await blast_rows(sinks[0], sinks, BLAST_FAN, row, fan=True)
                cut = [s.closed.result() for s in sinks if s.closed.done()]
                if cut:
                    row.notes.append(f"{len(cut)} clients closed (codes {sorted(set(cut))})")
            rows.append(row)
        rows.append(await ssh_row(ready, keys, fanout))
        rows.append(await rfc2217_row(http, ready, keys, fanout))
        for framed in (False, True):
            mode = "framed" if framed else "raw"
            for vm, guest in ((VM, "echo guest"), (SHELL_VM, "shell")):
                url = await gateway_session(http, "alice", vm)
                rows.append(await asyncio.to_thread(
                    az_row, f"az client: gateway {mode}, {guest}", url, keys, framed=framed,
                    shell=vm == SHELL_VM,
                ))  # fmt: skip
    return rows


async def ssh_row(ready: dict[str, str], keys: int, fanout: int) -> Row:
    row = Row("SSH")
    port = int(ready["ssh"])

    async def opener(n: int) -> Sink:
        return await open_ssh(port, "alice" if n == 0 else "carol", VM, watch=n > 0)

    async with fan_out(opener, 1) as (writer,):
        await measure_rtt(writer, keys, row)
        await blast_rows(writer, [writer], BLAST_ONE, row, fan=False)
    async with fan_out(opener, fanout) as sinks:
        await blast_rows(sinks[0], sinks, BLAST_FAN, row, fan=True)
    row.notes.append("asyncssh client, no PTY; fan-out: 1 writer and the rest run 'watch'")
    return row


async def rfc2217_row(
    http: httpx.AsyncClient, ready: dict[str, str], keys: int, fanout: int
) -> Row:
    row = Row("RFC 2217")
    async with fan_out(lambda n: open_telnet(int(ready["rfc2217"])), 1) as (writer,):
        await measure_rtt(writer, keys, row)
        await blast_rows(writer, [writer], BLAST_ONE, row, fan=False)
    url = await gateway_session(http, "alice", WATCHED_VM)
    typist = await open_ws(url)
    try:
        port = int(ready["rfc2217_watch"])
        async with fan_out(lambda n: open_telnet(port), fanout) as sinks:
            await blast_rows(typist, sinks, BLAST_FAN, row, fan=True)
    finally:
        typist.close()
    row.notes.append(
        f"raw TCP, telnet negotiation dropped; fan-out: {fanout} on {WATCHED_VM}'s "
        "watchers' door, the blast typed by a websocket writer (who also reads it)"
    )
    return row


async def bare_echo_row(work: Path, keys: int) -> Row:
    async with child(work / "wsbare.log", "wsbare") as ready:
        row = await asyncio.to_thread(az_row, "az client: websockets echo", ready["url"], keys)
    row.notes.append("the websockets library alone, no PTY, no guest: the floor for az")
    return row


async def floor_row(work: Path, keys: int) -> Row:
    row = Row("FastAPI websocket echo")
    async with child(work / "wsecho.log", "wsecho") as ready:
        probe = await open_ws(ready["url"])
        try:
            await measure_rtt(probe, keys, row)
        finally:
            probe.close()
    row.notes.append("no PTY, no guest: the framework's floor")
    return row


async def ser2net_rows(work: Path, keys: int, fanout: int) -> list[Row]:
    rows = [Row("PTY, guest in a child")]
    async with child(work / "guest.log", "guest") as ready:
        pty = ready["pty"]
        rows[0] = await pty_child(pty, keys)
        if why := ser2net_missing():
            return [*rows, Row("ser2net", notes=[why])]
        for tuned in (False, True):
            row = Row(f"ser2net {'tuned' if tuned else 'default'}")
            async with ser2net(work, pty, tuned) as port:
                async with fan_out(lambda n: open_tcp("127.0.0.1", port), 1) as (writer,):
                    await measure_rtt(writer, keys, row)
                    await blast_rows(writer, [writer], BLAST_ONE, row, fan=False)
                async with fan_out(lambda n: open_tcp("127.0.0.1", port), fanout) as sinks:
                    await blast_rows(sinks[0], sinks, BLAST_FAN, row, fan=True)
            rows.append(row)
    return rows


async def measure(keys: int, fanout: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        rows = [await pty_in_process(keys)]
        rows += await ser2net_rows(work, keys, fanout)
        rows.append(await floor_row(work, keys))
        rows.append(await bare_echo_row(work, keys))
        rows += await gateway_rows(work, keys, fanout)
        rows += await recording_rows(work, keys)
    return rows


async def recording_rows(work: Path, keys: int, rounds: int = RECORDING_ROUNDS) -> list[Row]:
    """``gateway raw`` on a lab of its own with recording on (the default) and on one with
    recording off, measured in turn ``rounds`` times (a fresh lab each time, so a busy
    moment of the machine falls on both alike); each figure is the median of its rounds,
    the 1-client blast from the last round."""
    rows = {True: Row("gateway raw, recording on"), False: Row("gateway raw, recording off")}
    runs: dict[bool, list[Row]] = {True: [], False: []}
    for n in range(rounds):
        for record in (True, False):
            run = Row(rows[record].path)
            name = f"lab-{'record' if record else 'norecord'}-{n}"
            args = ["lab", str(work / name)] + ([] if record else ["norecord"])
            async with (
                child(work / f"{name}.log", *args) as ready,
                httpx.AsyncClient(base_url=ready["url"], timeout=STEP_TIMEOUT) as http,
            ):
                url = await gateway_session(http, "alice")
                async with fan_out(lambda n, url=url: open_ws(url), 1) as (writer,):
                    await measure_lab_rtt(writer, keys, run, int(ready["pid"]))
                    if n == rounds - 1:
                        await blast_rows(writer, [writer], BLAST_ONE, rows[record], fan=False)
            runs[record].append(run)
    for record, row in rows.items():
        row.p50_us = statistics.median(r.p50_us or 0.0 for r in runs[record])
        row.p99_us = statistics.median(r.p99_us or 0.0 for r in runs[record])
        cpu = statistics.median(float(r.notes[0].split()[2]) for r in runs[record])
        row.notes.append(f"lab CPU {cpu:.0f} us per keystroke; medians of {rounds} labs")
    rows[True].notes.append("the recording stops at 16 MiB, in the blast (the lab's bound)")
    return list(rows.values())


# -- the table ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row], keys: int, fanout: int) -> list[str]:
    head = (
        "path",
        "rtt p50 us",
        "rtt p99 us",
        "1 client MiB/s",
        f"{fanout} clients MiB/s each",
        "total",
    )
    body = [
        (
            r.path,
            _num(r.p50_us),
            _num(r.p99_us),
            _num(r.one_mib_s, 1),
            _num(r.fan_mib_s, 1),
            _num(r.fan_total_mib_s, 1),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = [
        "  "
        + "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in (head, *body)
    ]
    notes = [f"  {r.path}: {'; '.join(r.notes)}" for r in rows if r.notes]
    return [*lines, *(["  notes:", *notes] if notes else [])]


def aims(rows: list[Row]) -> list[str]:
    """The aims beside the figures (reported, not asserted)."""
    by = {r.path: r for r in rows}
    bar = by.get("ser2net tuned")
    lines = []
    for name in ("gateway raw", "gateway framed"):
        gw = by.get(name)
        if gw is None or gw.p50_us is None or gw.p99_us is None:
            continue
        if bar is not None and bar.p50_us:
            ratio = gw.p50_us / bar.p50_us
            lines.append(
                f"  {name}: rtt p50 {ratio:.1f}x tuned ser2net's (aim: within 2x) "
                f"{'met' if ratio <= 2 else 'MISSED'}"
            )
        lines.append(
            f"  {name}: rtt p99 {gw.p99_us:.0f} us (aim: under 1000 us) "
            f"{'met' if gw.p99_us < 1000 else 'MISSED'}"
        )
        for label, ours, theirs in (
            ("1 client", gw.one_mib_s, bar.one_mib_s if bar else None),
            ("fan-out per client", gw.fan_mib_s, bar.fan_mib_s if bar else None),
        ):
            if ours is not None and theirs:
                lines.append(
                    f"  {name}: {label} {ours:.1f} vs {theirs:.1f} MiB/s (aim: at least "
                    f"tuned ser2net's) {'met' if ours >= theirs else 'MISSED'}"
                )
    on, off = by.get("gateway raw, recording on"), by.get("gateway raw, recording off")
    if on is not None and off is not None and None not in (on.p50_us, off.p50_us):
        lines.append(
            f"  recording: rtt p50 {on.p50_us:.0f} us on vs {off.p50_us:.0f} us off, p99 "
            f"{_num(on.p99_us)} vs {_num(off.p99_us)} us (aim: no more than 10% at p50) "
            f"{'met' if on.p50_us <= 1.1 * off.p50_us else 'MISSED'}"  # type: ignore[operator]
        )
    floor = by.get("az client: websockets echo")
    for gw in rows:
        if not gw.path.startswith("az client: gateway") or gw.p50_us is None:
            continue
        if floor is not None and floor.p50_us:
            ratio = gw.p50_us / floor.p50_us
            lines.append(
                f"  {gw.path}: rtt p50 {ratio:.2f}x the bare websockets echo's (aim: within "
                f"1.3x) {'met' if ratio <= 1.3 else 'MISSED'}"
            )
        if gw.p99_us is not None:
            lines.append(
                f"  {gw.path}: rtt p99 {gw.p99_us:.0f} us (aim: under 1000 us) "
                f"{'met' if gw.p99_us < 1000 else 'MISSED'}"
            )
    return lines


def main(keys: int = KEYS, fanout: int = FANOUT) -> None:
    kwargs: dict[str, object] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**kwargs) as runner:  # type: ignore[arg-type]
        rows = runner.run(measure(keys, fanout))
    print(
        f"Console data path: keystroke round trip over {keys} keys (one at a time, after "
        f"{WARMUP} warm-up), output throughput to 1 and {fanout} clients "
        f"({BLAST_ONE // MIB} MiB and {BLAST_FAN // MIB} MiB each)"
    )
    print(
        "  guest: a raw echo (no line editor, no shell) that blasts numbered lines on "
        "command, on the emulator's PTY; loopback; clients in this process, servers in children"
    )
    for line in table(rows, keys, fanout):
        print(line)
    if lines := aims(rows):
        print("  aims:")
        for line in lines:
            print(line)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else KEYS,
        int(sys.argv[2]) if len(sys.argv) > 2 else FANOUT,
    )
