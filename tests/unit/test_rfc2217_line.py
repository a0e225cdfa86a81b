"""The RFC 2217 door's serial line: settings kept and checked as a port would, a BREAK
reported once it ends."""

from __future__ import annotations

import pytest

from gateway.rfc2217.line import RecordedLine


def test_settings_are_kept_and_bad_ones_refused() -> None:
    line = RecordedLine(lambda: None)
    line.baudrate, line.bytesize, line.parity, line.stopbits = 9600, 7, "E", 2
    assert line.describe() == "9600 7E2"
    for name, value in (("baudrate", 0), ("bytesize", 9), ("parity", "X"), ("stopbits", 3)):
        with pytest.raises(ValueError, match="not a"):
            setattr(line, name, value)
    assert line.describe() == "9600 7E2"  # what a client reads back after a refusal


def test_a_break_is_reported_when_it_ends_and_only_then() -> None:
    ended: list[int] = []
    line = RecordedLine(lambda: ended.append(1))
    line.break_condition = False  # clearing a break that never began is no BREAK
    line.break_condition = True
    line.break_condition = True
    assert ended == []
    line.break_condition = False
    assert ended == [1]
    assert line.breaks == 1
