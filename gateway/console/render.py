"""What a text door shows for a session item that is not serial output: one renderer, no I/O.

SSH, RFC 2217 and the websocket's raw clients (az's) are terminals: serial bytes go to
them as they are, and everything else the session queues (a command's outcome, the idle
warning, bytes lost from the boot log, a power change, a resume past rotated bytes) is a
line of text of its own. Every such door shows the same lines, and the session's recording
holds them as its user saw them. Items with nothing to show return None: ``Event`` is JSON
for framed clients, and a takeover's close text follows it.
"""

from __future__ import annotations

from gateway.console import texts
from gateway.console.sessions import (
    Gap,
    Happening,
    IdleWarning,
    Notice,
    Power,
    Resumed,
)


def line_of(item: Happening | Gap) -> str | None:
    """The text a terminal shows for ``item`` (without the line breaks around it)."""
    if isinstance(item, Notice):
        return item.text
    if isinstance(item, IdleWarning):
        return texts.idle_warning(item.seconds)
    if isinstance(item, Gap):
        return texts.gone(item.start, item.end)
    if isinstance(item, Power):
        return f"[VM {item.event}: {item.detail or item.state}]"
    if isinstance(item, Resumed) and item.rotated:
        return f"[bytes before {item.start} are gone from the boot log]"
    return None


def framed_line(text: str) -> str:
    """A line of the gateway's among the guest's bytes: on a line of its own."""
    return f"\r\n{text}\r\n"
