"""The QEMU guest agent (qemu-ga in a disk VM) over its virtio-serial channel.

``AgentCommands`` is what the lab asks of an agent (files, programs), over any way of
reaching it: a machine gives ``execute``. ``GuestAgent`` reaches it directly: QEMU serves
the channel as a Unix socket in the VM's run folder (``qga.sock``). The agent speaks QMP's
JSON without a greeting or capabilities, which ``qemu.qmp`` expects, so this is a small
client of its own: ``guest-sync-delimited`` first (the agent may hold half a request from
an earlier client; its 0xFF byte marks where the answer starts), then one command at a
time, each timed. (On libvirt, libvirtd holds the channel and passes commands on:
``gateway.machines.libvirt``.)

Exceptions::

    AgentError     the agent did not answer in time, or answered with an error
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from pathlib import Path
from typing import Any

from gateway.machines.base import MachineError


class AgentError(MachineError):
    """The guest agent is not there, did not answer in time, or refused a command."""


class AgentCommands:
    """What the lab asks of a guest agent, built on ``execute`` (one command, its return)."""

    async def execute(self, command: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:  # fmt: skip
        """Run ``command``; its ``return``. AgentError on an error reply or no reply."""
        raise NotImplementedError

    async def read_file(self, path: str, limit: int = 1 << 20) -> bytes:
        """The first ``limit`` bytes of a guest file (``guest-file-open``/``read``/``close``:
        no program started in the guest)."""
        handle = await self.execute("guest-file-open", {"path": path, "mode": "r"})
        try:
            answer = await self.execute("guest-file-read", {"handle": handle, "count": limit})
        finally:
            await self.execute("guest-file-close", {"handle": handle})
        return base64.b64decode(answer.get("buf-b64", ""))

    async def write_file(self, path: str, data: bytes) -> None:
        """Replace a guest file's contents (it keeps its owner and mode)."""
        handle = await self.execute("guest-file-open", {"path": path, "mode": "w"})
        try:
            await self.execute(
                "guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()}
            )
        finally:
            await self.execute("guest-file-close", {"handle": handle})

    async def start(self, path: str, *args: str) -> None:
        """Start a program in the guest and do not wait for it."""
        await self.execute("guest-exec", {"path": path, "arg": list(args)})

    async def run(self, path: str, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a program in the guest (``guest-exec``) and wait for it: (exit code, output)."""
        code, out, err = await self.run_apart(path, *args, timeout=timeout)
        return code, out + err

    async def run_apart(
        self, path: str, *args: str, timeout: float = 60.0, stdin: bytes | None = None
    ) -> tuple[int, str, str]:
        """``run``, with the program's standard output and error apart: (exit code, stdout,
        stderr); ``stdin`` its standard input (what must not be in its arguments, which
        every user of the guest may read). AgentError when it does not end in ``timeout`` s."""
        request: dict[str, Any] = {"path": path, "arg": list(args), "capture-output": True}
        if stdin is not None:
            request["input-data"] = base64.b64encode(stdin).decode()
        started = await self.execute("guest-exec", request)
        pid = started["pid"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = 0.005
        while True:
            status = await self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                return int(status.get("exitcode", -1)), out, err
            if loop.time() >= deadline:
                raise AgentError(f"{path} did not end in the guest within {timeout:.0f} s")
            await asyncio.sleep(pause)  # the agent has no event for an exit: poll it
            pause = min(pause * 1.5, 0.05)  # a status costs the guest little


class GuestAgent(AgentCommands):
    """A connection to one VM's guest agent. Use ``async with GuestAgent.connect(path)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, path: Path, timeout: float = 30.0) -> Any:
        """Connected and synchronised with the agent within ``timeout`` s (it starts late in
        a booting guest: the sync is retried until then). Raises AgentError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
            except OSError as err:
                raise AgentError(f"no guest agent channel at {path}: {err}") from err
            agent = cls(reader, writer)
            try:
                await agent._sync(min(2.0, max(deadline - loop.time(), 0.1)))
            except (AgentError, OSError) as err:
                last = str(err)
                await agent.close()
                if loop.time() >= deadline:
                    raise AgentError(
                        f"the guest agent did not answer in {timeout:.0f} s: {last}"
                    ) from err
                continue
            try:
                yield agent
            finally:
                await agent.close()
            return

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _sync(self, timeout: float) -> None:
        token = random.randrange(1, 1 << 31)
        self._writer.write(b"\xff" + _line("guest-sync-delimited", {"id": token}))
        await self._writer.drain()
        try:
            async with asyncio.timeout(timeout):
                await self._reader.readuntil(b"\xff")
                while True:
                    reply = json.loads(await self._reader.readline())
                    if reply.get("return") == token:
                        return
        except (TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            raise AgentError(f"no sync from the guest agent ({type(err).__name__})") from err

    async def execute(self, command: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:  # fmt: skip
        """Run ``command``; its ``return``. AgentError on an error reply or no reply."""
        self._writer.write(_line(command, args))
        await self._writer.drain()
        try:
            async with asyncio.timeout(timeout):
                reply = json.loads(await self._reader.readline())
        except (TimeoutError, ValueError) as err:
            raise AgentError(
                f"the guest agent did not answer {command} in {timeout:.0f} s"
            ) from err
        if "error" in reply:
            raise AgentError(f"the guest agent refused {command}: {reply['error'].get('desc')}")
        return reply.get("return")


def _line(command: str, args: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"execute": command}
    if args is not None:
        message["arguments"] = args
    return json.dumps(message).encode() + b"\n"
