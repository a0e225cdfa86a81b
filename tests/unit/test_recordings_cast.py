"""The asciicast v2 core: what a session's items become, and reading a recording back."""

from __future__ import annotations

import json

import pytest

from gateway.console import texts
from gateway.console.sessions import (
    Event,
    Gap,
    IdleWarning,
    Notice,
    Output,
    Power,
    Resumed,
    TakenOver,
)
from gateway.recordings import RecordingError, cast


def test_the_header_is_asciicast_v2_with_the_labs_own_fields() -> None:
    line = cast.header(started=1700000000.7, title="linux-1: alice", lab={"user": "alice"},
                       input_recorded=True)  # fmt: skip
    assert line.endswith("\n")
    head = json.loads(line)
    assert (head["version"], head["width"], head["height"]) == (2, 80, 24)
    assert head["timestamp"] == 1700000000
    assert head["serial_console_lab"] == {"user": "alice", "input": True}


def test_output_is_text_and_a_character_split_across_reads_stays_whole() -> None:
    r = cast.Renderer()
    assert r.items([Output(0, b"caf\xc3")]) == [("o", "caf")]
    assert r.items([Output(4, b"\xa9 \xff\r\n")]) == [("o", "é \ufffd\r\n")]


def test_the_gateways_words_are_marked_on_a_line_of_their_own() -> None:
    r = cast.Renderer()
    r.output(b"abc\xe2\x82")  # half a euro sign pending: flushed as U+FFFD before the words
    events = r.items([Notice("sysrq", "You can only send a SysRq to a Linux VM.")])
    assert events == [
        ("o", "\ufffd\r\n\x1b[7mYou can only send a SysRq to a Linux VM.\x1b[27m\r\n")
    ]
    # At the start of a line already: no blank line before the words.
    gone = f"\x1b[7m{texts.gone(0, 10)}\x1b[27m\r\n"
    assert r.items([Gap(0, 10)]) == [("o", gone)]
    r.output(b"prompt# ")
    assert r.items([IdleWarning(30)]) == [("o", cast.gateway_text(texts.idle_warning(30)))]


def test_the_banner_opens_a_recording_without_a_blank_line() -> None:
    assert cast.Renderer().message("Connected.") == [("o", "\x1b[7mConnected.\x1b[27m\r\n")]


def test_power_takeover_and_resume_are_markers() -> None:
    r = cast.Renderer()
    items = [Power("running", "reset", ""), TakenOver("carol"), Resumed(100, 90, True),
             Power("stopped", "state", "guest powered off")]  # fmt: skip
    assert r.items(items) == [
        ("m", "power: running (reset)"),
        ("m", "takeover: carol took the console over"),
        ("m", "resumed from byte 100"),
        ("m", "power: stopped (state: guest powered off)"),
    ]


def test_a_framed_clients_refused_command_is_shown_its_success_is_not() -> None:
    r = cast.Renderer()
    failed = json.dumps({"type": "result", "command": "nmi", "ok": False, "message": "no"})
    ok = json.dumps({"type": "result", "command": "nmi", "ok": True, "message": "sent"})
    r.output(b"root@linux-1:~# ")
    assert r.items([Event(failed)]) == [("o", cast.gateway_text("nmi: no"))]
    assert r.items([Event(ok), Event("{not json")]) == []


def test_parse_reads_events_and_leaves_out_a_last_line_cut_short() -> None:
    text = (cast.header(started=0, title="t", lab={}, input_recorded=False)
            + cast.event(0.5, "o", "hi") + cast.event(1.25, "m", "SysRq h by alice")
            + '[2.0, "o", "cut sh')  # fmt: skip
    recording = cast.parse(text)
    assert recording.events == [(0.5, "o", "hi"), (1.25, "m", "SysRq h by alice")]
    assert recording.output() == "hi"
    assert recording.markers() == [(1.25, "SysRq h by alice")]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("hello\n", "line 1 is not an asciicast header"),
        ('{"version": 1}\n', "asciicast v2"),
        ('{"version": 2}\n[1, "o"]\n[2, "o", "x"]\n', "line 2 is not an asciicast event"),
    ],
)
def test_parse_says_where_a_file_is_not_a_recording(text: str, says: str) -> None:
    with pytest.raises(RecordingError, match=says):
        cast.parse(text)


def test_schedule_keeps_time_speeds_up_and_cuts_long_pauses() -> None:
    events = [(0.5, "o", "a"), (1.5, "o", "b"), (61.5, "o", "c"), (61.5, "m", "x")]
    assert [d for d, _, _ in cast.schedule(events)] == [0.5, 1.0, 60.0, 0.0]
    assert [d for d, _, _ in cast.schedule(events, speed=2)] == [0.25, 0.5, 30.0, 0.0]
    assert [d for d, _, _ in cast.schedule(events, idle_limit=2)] == [0.5, 1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="above 0"):
        list(cast.schedule(events, speed=0))
