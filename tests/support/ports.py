"""A port on 127.0.0.1 that a lab file must name before the lab binds it.

Everything that can bind port 0 and say which port it got does so (the lab's HTTP server,
``LabProcess``); this module is only for the doors a lab file opens on a fixed port
(``ssh_port``, ``rfc2217_port``: 0 there means "off"). The port is free when this returns;
another process may still take it before the lab binds it, which the kernel makes unlikely
(it hands ephemeral ports out in turn) and which fails loudly ("cannot listen"), never
silently.
"""

from __future__ import annotations

import contextlib
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports on 127.0.0.1 (a scale set's
    ``rfc2217_port`` opens one per instance from it)."""
    for _ in range(50):
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind((HOST, port))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {count} consecutive free ports on {HOST}")
