"""``[recordings]`` of the lab file, as the recorder takes it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SESSION_BYTES = 16 << 20  # a 115200-baud line's output, recorded, in ~17 min
DEFAULT_TOTAL_BYTES = 512 << 20


@dataclass(frozen=True, slots=True)
class RecordingSettings:
    """Whether sessions are recorded, whether typed bytes are too, and the bounds: one
    session's file stops growing at ``session_bytes`` (it says so); past ``total_bytes``
    for all of them, the oldest finished recordings are removed first."""

    enabled: bool = True
    record_input: bool = False  # typed bytes hold passwords: off unless the lab file says
    session_bytes: int = DEFAULT_SESSION_BYTES
    total_bytes: int = DEFAULT_TOTAL_BYTES
