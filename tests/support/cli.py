"""The ``serial-console`` CLI as a user runs it, for tests against a running lab.

``Cli.at(url, config)`` runs the real CLI (``python -m gateway.cli.main``) against the lab
at ``url`` with its own config folder (``XDG_CONFIG_HOME``), so credentials never leak
between tests. Plain commands run as subprocesses (``run``); ``spawn`` starts one under
pexpect on a pseudo-terminal, so raw mode, the Ctrl+] menu and the terminal's restoration
are the real thing. ``expect`` and ``finished`` wait on such a child without blocking the
event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pexpect

from gateway.testing.timeouts import scaled

CLI = [sys.executable, "-m", "gateway.cli.main"]


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")


@dataclass
class Cli:
    """Runs ``serial-console`` with ``env`` (its own config folder ``config``), in the
    working directory ``cwd`` (None: the test's); ``login`` gives it ``ca_file`` (the CA
    of a TLS lab) when set."""

    env: dict[str, str]
    config: Path
    cwd: Path | None = None
    ca_file: Path | None = None

    @classmethod
    def at(cls, url: str, config: Path, ca_file: Path | None = None) -> Cli:
        """The CLI pointed at the lab at ``url``, keeping its credentials in ``config``;
        ``ca_file`` is the lab CA to log in with (a lab run with ``--tls``)."""
        env = dict(os.environ, XDG_CONFIG_HOME=str(config), SERIAL_CONSOLE_URL=url)
        return cls(env, config, ca_file=ca_file)

    async def run(self, *argv: str, timeout: float = 30) -> Result:
        process = await asyncio.create_subprocess_exec(
            *CLI, *argv, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(scaled(timeout)):
            out, err = await process.communicate()
        assert process.returncode is not None
        return Result(process.returncode, out, err.decode())

    async def login(self, user: str) -> None:
        """Log ``user`` in (password: the name), with ``ca_file`` when there is one."""
        trust = ["--ca-file", str(self.ca_file)] if self.ca_file is not None else []
        result = await self.run("login", "--username", user, "--password", user, *trust)
        assert result.code == 0, result.err

    def spawn(self, *argv: str, timeout: float = 15) -> pexpect.spawn:
        child = pexpect.spawn(
            CLI[0], [*CLI[1:], *argv], env=self.env, cwd=self.cwd, timeout=scaled(timeout)
        )
        child.setwinsize(40, 200)  # wide: the menu line stays on one line
        return child


async def expect(child: pexpect.spawn, pattern: object, timeout: float | None = None) -> int:
    """Wait for ``pattern``: the child's own timeout, or ``timeout`` seconds (scaled)."""
    wait = -1 if timeout is None else scaled(timeout)
    index: int = await child.expect(pattern, timeout=wait, async_=True)
    return index


async def finished(child: pexpect.spawn) -> int | None:
    """Wait for ``child`` to end; its exit status (None when killed by a signal)."""
    await expect(child, pexpect.EOF)
    child.close()
    return child.exitstatus
