"""The framed console protocol and SysRq input, as bytes and text alone."""

from __future__ import annotations

import json

import pytest

from gateway.console.frames import Command, FrameError, encode_event, parse_command
from gateway.console.sysrq import SysRqError, parse_sysrq


def test_a_sequence_is_one_key_per_letter_in_lower_case() -> None:
    """`REISUB` is sent as r, e, i, s, u, b: the kernel's handlers are lower-case."""
    assert parse_sysrq("REISUB") == ["r", "e", "i", "s", "u", "b"]
    assert parse_sysrq(" h ") == ["h"]
    assert parse_sysrq("9") == ["9"]


@pytest.mark.parametrize("text", ["", "   ", "h!", "ä", "b c", "x" * 33])
def test_bad_sysrq_input_says_what_is_accepted(text: str) -> None:
    """Anything but 0-9/a-z (or too long) is refused with the accepted form in the text."""
    with pytest.raises(SysRqError, match=r"0-9|at most"):
        parse_sysrq(text)


def test_commands_are_read_from_json_text_frames() -> None:
    """Each client command becomes a Command with its arguments."""
    assert parse_command('{"type":"sysrq","keys":"REISUB","id":7}') == Command(
        "sysrq", "7", keys=("r", "e", "i", "s", "u", "b")
    )
    assert parse_command('{"type":"nmi"}') == Command("nmi")
    assert parse_command('{"type":"resume","offset":1024}') == Command("resume", offset=1024)
    assert parse_command('{"type":"authorize","token":"t"}') == Command("authorize", token="t")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("not json", "JSON objects"),
        ("[1, 2]", "JSON objects"),
        ('{"type":"format-disk"}', "unknown command type 'format-disk'"),
        ('{"type":"sysrq"}', '"keys"'),
        ('{"type":"sysrq","keys":"!"}', "0-9 and a-z"),
        ('{"type":"resume","offset":-1}', "whole number"),
        ('{"type":"resume","offset":true}', "whole number"),
        ('{"type":"authorize"}', "token"),
        ('{"type":"nmi","id":[1]}', "'id'"),
        ('{"type":"nmi","pad":"' + "x" * 5000 + '"}', "at most 4096"),
    ],
)
def test_malformed_frames_are_refused_with_the_expected_shape(text: str, hint: str) -> None:
    """A malformed frame raises FrameError naming what a valid one looks like."""
    with pytest.raises(FrameError) as err:
        parse_command(text)
    assert hint in str(err.value)


def test_events_are_compact_json_objects_with_a_type() -> None:
    """Events carry their type and fields and nothing else."""
    assert json.loads(encode_event("taken_over", by="carol")) == {
        "type": "taken_over",
        "by": "carol",
    }
