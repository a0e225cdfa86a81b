"""The other ends of ``bench_console``: an echo-and-blast guest and the child processes.

``BenchGuest`` is a personality (``emulator.guest.Personality``) made for measuring a
console path and nothing else: it echoes every byte typed at once, as ``stty raw -echo;
cat`` answers a key, with no line editing and no shell in between; and a *blast* command
(``STX <bytes> <tag> CR``) makes it write ``<bytes>`` of printable lines as fast as the
port takes them, then the line ``[end <tag>]``. It runs on the emulator's own PTY and UART
(``EmulatedMachine``), like every emulated guest.

The benchmark keeps clients in its own process and runs each server in a child, so the
clients' work never shares an event loop with what it measures::

    python -m tests.bench.console_peers lab STATE_DIR    # the gateway: "bench-1", "shell-1"
    python -m tests.bench.console_peers guest            # one guest PTY, for ser2net or a reader
    python -m tests.bench.console_peers wsecho           # FastAPI websocket echo (the floor)
    python -m tests.bench.console_peers wsbare           # the websockets library's echo alone

The lab's ``shell-1`` is an ordinary emulated Linux guest (its login and shell), for typing
as a person types. The lab also opens its other doors onto the bench guests: SSH (its
ready line's ``ssh`` port) and RFC 2217, a writer's door on ``bench-1`` (``rfc2217``) and a
watchers' door on a second bench guest, ``bench-2`` (``rfc2217_watch``): one door has one
role, and a writer coming in takes the console over from the writer before it, so
clients watching together need the watchers' door.

Each prints one JSON line (``{"url": ...}``, ``{"pty": ...}``) once it is ready and runs
until its standard input closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from emulator.guest import OutputItem
from emulator.machine import EmulatedMachine
from gateway.lab.config import MachineSpec, parse_lab
from gateway.lab.runtime import ReadyServer
from gateway.machines.base import Machine

VM = "bench-1"
WATCHED_VM = "bench-2"  # a second bench guest, whose RFC 2217 door is for watchers
SHELL_VM = "shell-1"  # an emulated Linux guest with its shell
BLAST = 0x02  # STX: a blast command follows, up to CR
# Printable ASCII only: no 0xFF, which telnet (the RFC 2217 door) would send doubled.
BLOCK = b"".join(b"%08d 0123456789abcdefghijklmnopqrstuvwxyz\r\n" % n for n in range(93))[:4096]
END = b"\r\n[end %s]\r\n"
READY = b"bench guest ready\r\n"


def end_marker(tag: str) -> bytes:
    """The line a blast tagged ``tag`` ends with (it cannot occur inside a blast)."""
    return END % tag.encode()


def blast_command(size: int, tag: str) -> bytes:
    return bytes([BLAST]) + f"{size} {tag}".encode() + b"\r"


class BenchGuest:
    """A raw echo guest that can also write as fast as its port takes bytes (see the module
    docstring). Sans I/O, like every personality."""

    os_type = "linux"

    def __init__(self) -> None:
        self._out = bytearray()
        self._command: bytearray | None = None
        self._blast_left = 0
        self._tail = b""
        self._on = False

    def boot(self, now: float) -> None:
        self.halt()
        self._on = True
        self._out += READY

    def halt(self) -> None:
        self._out.clear()
        self._command = None
        self._blast_left = 0
        self._tail = b""
        self._on = False

    def receive_data(self, data: bytes, now: float) -> None:
        if not self._on:
            return
        if self._command is None and BLAST not in data:
            self._out += data  # the common case: a keystroke, echoed as it came
            return
        for byte in data:
            if self._command is None:
                if byte == BLAST:
                    self._command = bytearray()
                else:
                    self._out.append(byte)
            elif byte == 0x0D:
                self._start_blast(self._command.decode(errors="replace"))
                self._command = None
            elif len(self._command) < 64:
                self._command.append(byte)

    def _start_blast(self, command: str) -> None:
        size, _, tag = command.partition(" ")
        if not size.isdigit() or not tag:
            self._out += b"\r\nblast: expected STX <bytes> <tag> CR\r\n"
            return
        self._blast_left = int(size)
        self._tail = end_marker(tag)

    def receive_break(self, now: float) -> None:
        pass

    def receive_nmi(self, now: float) -> None:
        pass

    def power_button(self, now: float) -> None:
        pass  # no ACPI: the lab's graceful stop falls back to its forced halt

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def pop_output(self, limit: int) -> OutputItem | None:
        if self._out:
            chunk = bytes(self._out[:limit])
            del self._out[:limit]
            return chunk
        if self._blast_left:
            size = min(limit, len(BLOCK), self._blast_left)
            self._blast_left -= size
            return BLOCK if size == len(BLOCK) else BLOCK[:size]
        if self._tail:
            tail, self._tail = self._tail[:limit], self._tail[limit:]
            return tail
        return None

    def output_buffered(self) -> int:
        return len(self._out)


def bench_machine(name: str) -> EmulatedMachine:
    """An emulated machine whose guest is a ``BenchGuest``; output as fast as it is read."""
    machine = EmulatedMachine(name, "linux", output_rate=None)
    machine.guest = BenchGuest()
    return machine


def _bench_factory(spec: MachineSpec, run_dir: Path) -> Machine:
    from gateway.lab.runtime import default_machine_factory

    if spec.name == SHELL_VM:
        return default_machine_factory(spec, run_dir)
    return bench_machine(spec.name)


# -- the child processes ------------------------------------------------------------------


async def _until_stdin_closes() -> None:
    """Wait for the parent to close our standard input (or to go away)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def serve_lab(state: Path, record: bool = True) -> None:
    """The gateway with one bench VM, as ``serial-console lab run`` serves it (``record``:
    sessions recorded, the lab's default)."""
    from gateway.console import service
    from gateway.lab.runtime import LabRuntime
    from tests.support.lab import lab_toml

    service.MAX_CONSOLES_PER_USER = 1000  # the load benchmark opens 199 watchers as one user

    ssh, rfc2217, watch = _free_ports(3)
    doors = {
        VM: f"rfc2217_port = {rfc2217}\n",
        WATCHED_VM: f'rfc2217_port = {watch}\nrfc2217_role = "watcher"\n',
        SHELL_VM: "",
    }
    vms = "".join(
        f'[[vms]]\nname = "{name}"\nresource_group = "lab-rg"\nos = "linux"\nbackend = "emulated"\n'
        f"{door}"
        for name, door in doors.items()
    )
    extra = "" if record else "[recordings]\nenabled = false\n"
    text = lab_toml(state / "state", vms=vms, gateway=f"ssh_port = {ssh}", extra=extra)
    config = parse_lab(text, source=str(state / "lab.toml"), base=state)
    async with LabRuntime(config, machine_factory=_bench_factory) as runtime:
        _say(url=runtime.url, pid=os.getpid(), ssh=ssh, rfc2217=rfc2217, rfc2217_watch=watch)
        await _until_stdin_closes()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 just now (the lab listens on them)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def serve_guest() -> None:
    """One bench guest on a PTY; its path is printed, nobody here reads it."""
    async with bench_machine(VM) as machine:
        await machine.start()
        _say(pty=machine.serial_port)
        await _until_stdin_closes()


async def serve_wsecho() -> None:
    """A FastAPI websocket route that echoes each binary frame, on uvicorn as the lab
    serves it: the framework's floor under the gateway's round trip."""
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.send_bytes(await websocket.receive_bytes())

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, ws="websockets-sansio", log_config=None, access_log=False, lifespan="off"
    )
    server = ReadyServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(30):
        await server.ready.wait()
    _say(url=f"ws://127.0.0.1:{sock.getsockname()[1]}/echo")
    try:
        await _until_stdin_closes()
    finally:
        server.should_exit = True
        await serving


async def serve_wsbare() -> None:
    """The websockets library's own server echoing each frame as it came (text as text): no
    framework, no PTY. The floor under an az-like client's round trip."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(websocket: ServerConnection) -> None:
        async for message in websocket:
            await websocket.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _say(url=f"ws://127.0.0.1:{port}/")
        await _until_stdin_closes()


def run(main: Callable[[], object]) -> None:
    """Run ``main()`` (a coroutine) on uvloop when it is installed, as the lab does."""
    kwargs: dict[str, object] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**kwargs) as runner:  # type: ignore[arg-type]
        runner.run(main())  # type: ignore[arg-type]


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=r"The `websockets` implementation is deprecated")
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "lab" and len(sys.argv) in (3, 4):
        run(lambda: serve_lab(Path(sys.argv[2]), record=sys.argv[3:] != ["norecord"]))
    elif what == "guest":
        run(serve_guest)
    elif what == "wsecho":
        run(serve_wsecho)
    elif what == "wsbare":
        run(serve_wsbare)
    else:
        raise SystemExit(
            "usage: python -m tests.bench.console_peers lab DIR [norecord] | guest | wsecho "
            "| wsbare"
        )
