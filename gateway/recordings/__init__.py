"""Session recordings: every console session kept as an asciicast v2 file.

- ``cast``: the asciicast v2 format with no I/O: the header, the events a session's items
  become (output as the client saw it, the gateway's messages marked, ``"m"`` markers),
  and reading a recording back for replay (speed, idle limit);
- ``index``: the ``recordings`` table in ``lab.db``: one row per session (who, which
  door, when, how many bytes, how it ended, the file);
- ``writer``: the thread that writes every recording, off the event loop, flushing each
  file at least once a second and keeping the per-session and total bounds;
- ``recorder``: the ``Recorder`` the console core calls (``gateway.console.recording``).

Exceptions::

    RecordingError            a recording cannot be read or found; the message says why
     +-- RecordingNotFound    no such session on this VM (or its file is gone)
"""

from __future__ import annotations


class RecordingError(Exception):
    """A recording cannot be read, found or written; the message says why and what to do."""


class RecordingNotFound(RecordingError):
    """No recording of that session on this VM."""
