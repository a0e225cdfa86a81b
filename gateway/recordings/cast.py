"""The asciicast v2 format, with no I/O: what a session's items become, and back.

A recording is a JSON header line, then one JSON array per event: ``[seconds, code,
data]`` with ``code`` ``"o"`` (output: what the client was shown), ``"i"`` (typed bytes,
only when the lab file turns input recording on) or ``"m"`` (a marker: a command, a power
change, a takeover, with who did it). asciinema (``asciinema cat``, ``asciinema play``)
and asciinema-player read it as is.

The gateway's own words (the banner, a refusal, why the console closed) go out as output
on a line of their own, in reverse video (``MARK_ON`` ... ``MARK_OFF``): a player shows
them apart from the guest's bytes.

``Renderer`` turns one session's items into events (one per session: it keeps the UTF-8
decoder's state across reads); ``parse`` reads a recording back and ``schedule`` times its
events for a replay (``--speed``, ``--idle-limit``).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.console import texts
from gateway.console.sessions import (
    Event,
    Gap,
    IdleWarning,
    Item,
    Notice,
    Output,
    Power,
    Resumed,
    TakenOver,
)
from gateway.recordings import RecordingError

_string = json.encoder.encode_basestring  # a JSON string, in C: one call per event
CONTENT_TYPE = "application/x-asciicast"
WIDTH, HEIGHT = 80, 24  # a serial line has no size; getty's 80x24 is what guests assume
MARK_ON, MARK_OFF = "\x1b[7m", "\x1b[27m"
OUTPUT, INPUT, MARKER = "o", "i", "m"
NEW_LINE = "\r\n"


def header(*, started: float, title: str, lab: dict[str, Any], input_recorded: bool) -> str:
    """The first line: asciicast v2's fields, and the lab's own under ``serial_console_lab``
    (the session's VM, user, door; ``input``: whether typed bytes are in it)."""
    body = {
        "version": 2,
        "width": WIDTH,
        "height": HEIGHT,
        "timestamp": int(started),
        "title": title,
        "env": {"TERM": "xterm-256color"},
        "serial_console_lab": {**lab, "input": input_recorded},
    }
    return json.dumps(body, ensure_ascii=False) + "\n"


def event(seconds: float, code: str, data: str) -> str:
    """One event line: ``[seconds, code, data]`` as JSON (UTF-8 kept as is)."""
    return f"[{seconds:.6f}, {_string(code)}, {_string(data)}]\n"


def gateway_text(text: str, *, new_line: bool = True) -> str:
    """The gateway's ``text`` as a terminal shows it: a line of its own (``new_line``: the
    cursor is not at the start of one yet), marked."""
    return f"{NEW_LINE if new_line else ''}{MARK_ON}{text}{MARK_OFF}{NEW_LINE}"


class Renderer:
    """One session's items -> ``(code, data)`` events. Serial bytes that are not UTF-8
    become U+FFFD; a character split across two reads is kept whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line_start = True  # nothing shown yet, or the last text ended a line

    def output(self, data: bytes) -> list[tuple[str, str]]:
        text = self._decoder.decode(data)
        if not text:
            return []
        self._line_start = text.endswith("\n")
        return [(OUTPUT, text)]

    def message(self, text: str) -> list[tuple[str, str]]:
        """The gateway's words on a line of their own, after whatever half character was
        pending."""
        pending = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        new_line = bool(pending) or not self._line_start
        self._line_start = True
        return [(OUTPUT, pending + gateway_text(text, new_line=new_line))]

    def items(self, items: Iterable[Item]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for item in items:
            if isinstance(item, Output):
                out += self.output(item.data)
            elif isinstance(item, Notice):
                out += self.message(item.text)
            elif isinstance(item, Gap):
                out += self.message(texts.gone(item.start, item.end))
            elif isinstance(item, IdleWarning):
                out += self.message(texts.idle_warning(item.seconds))
            elif isinstance(item, Power):
                detail = f": {item.detail}" if item.detail else ""
                out.append((MARKER, f"power: {item.state} ({item.event}{detail})"))
            elif isinstance(item, TakenOver):
                out.append((MARKER, f"takeover: {item.by} took the console over"))
            elif isinstance(item, Resumed):
                out.append((MARKER, f"resumed from byte {item.requested}"))
            elif isinstance(item, Event):
                out += self._event(item.text)
            # Shown: a door's own text, not recorded (see sessions.Shown)
        return out

    def _event(self, text: str) -> list[tuple[str, str]]:
        """A framed client's event: a refused or failed command is the gateway's words
        (its success is marked by the command policy already)."""
        try:
            body = json.loads(text)
        except ValueError:
            return []
        if isinstance(body, dict) and body.get("type") == "result" and not body.get("ok"):
            return self.message(f"{body.get('command')}: {body.get('message')}")
        return []


@dataclass(frozen=True, slots=True)
class Cast:
    """A recording read back: its header and its events ``(seconds, code, data)``."""

    header: dict[str, Any]
    events: list[tuple[float, str, str]]

    def output(self) -> str:
        """Every ``"o"`` event's data, in order (what ``asciinema cat`` prints)."""
        return "".join(data for _, code, data in self.events if code == OUTPUT)

    def markers(self) -> list[tuple[float, str]]:
        return [(t, data) for t, code, data in self.events if code == MARKER]


def parse(text: str) -> Cast:
    """Read a recording. A last line cut short (the lab stopped while writing it) is
    left out; anything else that is not asciicast v2 raises RecordingError saying where."""
    lines = text.splitlines()
    if not lines:
        raise RecordingError("the recording is empty: it has no asciicast header")
    try:
        head = json.loads(lines[0])
    except ValueError as err:
        raise RecordingError(f"line 1 is not an asciicast header: {err}") from None
    if not isinstance(head, dict) or head.get("version") != 2:
        raise RecordingError("line 1 is not an asciicast v2 header (version 2)")
    events: list[tuple[float, str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, code, data = json.loads(line)
            events.append((float(t), str(code), str(data)))
        except (ValueError, TypeError) as err:
            if number == len(lines):
                break  # cut short by a stop mid-write: the rest stands
            raise RecordingError(f"line {number} is not an asciicast event: {err}") from None
    return Cast(head, events)


def schedule(
    events: Iterable[tuple[float, str, str]], speed: float = 1.0, idle_limit: float | None = None
) -> Iterator[tuple[float, str, str]]:
    """``(delay, code, data)``: how long to wait before each event for a replay at
    ``speed`` (2: twice as fast), no pause longer than ``idle_limit`` seconds (before
    the speed applies; None: as recorded). Raises ValueError for a speed <= 0."""
    if speed <= 0:
        raise ValueError("the speed must be above 0 (1: as recorded, 2: twice as fast)")
    last = 0.0
    for t, code, data in events:
        pause = max(t - last, 0.0)
        last = max(t, last)
        if idle_limit is not None:
            pause = min(pause, idle_limit)
        yield pause / speed, code, data
