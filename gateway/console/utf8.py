"""Serial bytes as websocket text, losing and altering nothing.

Raw-mode clients (``az serial-console``) print what they receive as text, so the console
goes out in text frames. A serial port carries bytes, not text: a UTF-8 character can be
split across two reads, and a guest can write bytes that are not UTF-8 at all (a binary
dump, a Latin-1 banner, line noise). ``TextSplitter`` turns a stream of chunks into frames:
valid UTF-8 as text, the bytes that are not as binary frames in their place, and a
character cut at a chunk's end held back until its remaining bytes come. Concatenating the
frames' bytes gives back exactly the bytes fed in.
"""

from __future__ import annotations

# The bytes a UTF-8 character may still need after its lead byte, by lead byte.
_LEAD = {**{b: 1 for b in range(0xC2, 0xE0)}, **{b: 2 for b in range(0xE0, 0xF0)},
         **{b: 3 for b in range(0xF0, 0xF5)}}  # fmt: skip


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a character that is not finished yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the lead is further back
        need = _LEAD.get(byte)
        return back if need is not None and back <= need else 0
    return 0


class TextSplitter:
    """Feed chunks in order; get frames (``str`` for text, ``bytes`` for what is not UTF-8).

    A tail held back for a character still being written comes out with the next chunk;
    ``flush()`` gives it up as it is (as bytes) when no more are coming.
    """

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> list[str | bytes]:
        data = self._held + chunk if self._held else chunk
        tail = _incomplete_tail(data)
        self._held = data[len(data) - tail :] if tail else b""
        return split(data[: len(data) - tail] if tail else data)

    def flush(self) -> list[str | bytes]:
        held, self._held = self._held, b""
        return [held] if held else []


def split(data: bytes) -> list[str | bytes]:
    """``data`` as frames: runs of valid UTF-8 as ``str``, invalid runs as ``bytes``."""
    frames: list[str | bytes] = []
    view = memoryview(data)
    while view:
        try:
            frames.append(str(view, "utf-8"))
            break
        except UnicodeDecodeError as err:
            if err.start:
                frames.append(str(view[: err.start], "utf-8"))
            frames.append(bytes(view[err.start : err.end]))
            view = view[err.end :]
    return _merge(frames)


def _merge(frames: list[str | bytes]) -> list[str | bytes]:
    merged: list[str | bytes] = []
    for frame in frames:
        if merged and isinstance(frame, bytes) and isinstance(merged[-1], bytes):
            merged[-1] += frame
        else:
            merged.append(frame)
    return merged
