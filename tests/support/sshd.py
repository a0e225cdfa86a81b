"""Waiting for a guest's own sshd behind a forwarded loopback port.

A guest shows its login prompt on the console before its sshd listens (systemd starts both
at once). Until then QEMU's user-mode network accepts the connection on the host's port and
resets it as soon as the guest refuses it, which OpenSSH reports as "kex_exchange_identification:
read: Connection reset by peer". So a test that means "SSH answers" waits for the server's
identification line (RFC 4253 section 4.2), trying again after each reset, the way a
client such as Ansible's ``wait_for`` does.
"""

from __future__ import annotations

import asyncio

HOST = "127.0.0.1"
RETRY = 0.25  # between a reset and the next try: nothing from outside says sshd is up


async def sshd_answers(port: int, timeout: float) -> str:
    """The identification line of the sshd behind ``port`` (``SSH-2.0-OpenSSH_...``),
    once it answers; AssertionError naming the last failure after ``timeout`` seconds."""
    last = "nothing tried"
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    reader, writer = await asyncio.open_connection(HOST, port)
                except OSError as error:
                    last = f"connect: {error}"
                else:
                    try:
                        line = await reader.readline()
                        last = f"read {line!r}" if line else "closed before a line"
                    except OSError as error:
                        line, last = b"", f"read: {error}"
                    finally:
                        writer.close()
                    if line.startswith(b"SSH-"):
                        return line.decode("ascii", "replace").strip()
                await asyncio.sleep(RETRY)
    except TimeoutError:
        raise AssertionError(
            f"no sshd answered on {HOST}:{port} in {timeout:.0f} s (last: {last})"
        ) from None
