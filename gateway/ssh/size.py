"""When an SSH console offers the ``stty rows R cols C`` hint, and its words (no I/O).

A serial line carries no window size: the guest's tty keeps whatever size it was given,
so full-screen programs draw for the wrong terminal. The SSH client does tell the door its
size (the PTY request, then a window-change request on each resize), so the door tells the
user the ``stty`` line that makes the guest agree. ``SizeHints`` decides when:

- the size of the PTY request is offered at once (``opened``);
- a new size is offered at once (``changed`` returns the hint) unless a hint was shown less
  than ``quiet`` seconds ago: dragging a window's corner sends a window-change per step,
  and the console must not fill with hints. The last size of such a burst is held, and
  ``due`` says when ``flush`` shows it;
- a size equal to the last one offered is never offered again.

The caller owns the clock: every method takes ``now`` (``time.monotonic()``), so the tests
use a fake one.
"""

from __future__ import annotations

QUIET = 1.0  # seconds between two hints at most once


def hint(cols: int, rows: int, *, changed: bool = False) -> str:
    """The hint for a terminal of ``cols`` x ``rows``; ``changed``: after a resize."""
    now = "now " if changed else ""
    return (
        f"[Your terminal is {now}{rows} rows by {cols} columns; the guest does not know it: "
        f"run 'stty rows {rows} cols {cols}' in the guest so full-screen programs fit.]"
    )


class SizeHints:
    """The hints of one console's terminal (see the module docstring)."""

    def __init__(self, quiet: float = QUIET) -> None:
        self.quiet = quiet
        self.offered: tuple[int, int] | None = None  # (cols, rows) of the last hint shown
        self.pending: tuple[int, int] | None = None  # a size held back until ``due``
        self.shown_at: float | None = None

    def opened(self, cols: int, rows: int, now: float) -> str | None:
        """The PTY request's size: its hint, or None when the client sent no size."""
        if not (cols and rows):
            return None
        return self._show((cols, rows), now, changed=False)

    def changed(self, cols: int, rows: int, now: float) -> str | None:
        """A window-change request: the hint to show now, or None (no size, the same size
        as the last hint, or held back until ``due``)."""
        if not (cols and rows):
            return None
        size = (cols, rows)
        if self.shown_at is not None and now - self.shown_at < self.quiet:
            self.pending = None if size == self.offered else size
            return None
        self.pending = None
        if size == self.offered:
            return None
        return self._show(size, now, changed=True)

    @property
    def due(self) -> float | None:
        """When the held size's hint is to be shown (``flush``); None when none is held."""
        if self.pending is None or self.shown_at is None:
            return None
        return self.shown_at + self.quiet

    def flush(self, now: float) -> str | None:
        """The held size's hint (call it at ``due``), or None when none is held."""
        size, self.pending = self.pending, None
        if size is None or size == self.offered:
            return None
        return self._show(size, now, changed=True)

    def _show(self, size: tuple[int, int], now: float, *, changed: bool) -> str:
        self.offered, self.shown_at = size, now
        return hint(*size, changed=changed)
