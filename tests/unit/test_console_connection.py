"""The connection core, with events alone: no socket, no lab."""

from __future__ import annotations

import json

import pytest

from gateway.console import texts
from gateway.console.connection import (
    ConsoleConnection,
    Phase,
    PhaseError,
    Refused,
    Resume,
    RunCommand,
    SendBinary,
    SendClose,
    SendText,
    TypeInput,
)
from gateway.console.frames import CloseCode
from gateway.console.sessions import (
    Closing,
    Event,
    Gap,
    Notice,
    Output,
    Power,
    Resumed,
    Role,
    TakenOver,
)

TOKEN = "t0k3n-" + "x" * 40


def _raw(**query: str) -> ConsoleConnection:
    return ConsoleConnection(framed=False, query=query, host="127.0.0.1:8400")


def _framed(**query: str) -> ConsoleConnection:
    return ConsoleConnection(framed=True, query=query, host="127.0.0.1:8400")


def _serving(conn: ConsoleConnection) -> ConsoleConnection:
    conn.open()
    conn.attached(vm="linux-1", user="alice", os="linux", power_state="running", start=0,
                  offset=0, rotated=False)  # fmt: skip
    assert conn.phase is Phase.SERVING
    return conn


def test_a_token_in_the_url_needs_no_challenge() -> None:
    conn = _raw(authorization=f"Bearer {TOKEN}")
    assert conn.open() == []
    assert conn.token == TOKEN
    assert conn.phase is Phase.AUTHORIZING


def test_raw_without_a_token_is_challenged_first_and_takes_the_token_as_a_frame() -> None:
    """az's send waits for a first frame before it sends its token: the challenge is it."""
    conn = _raw()
    assert conn.open() == [SendText(texts.TOKEN_CHALLENGE + "\r\n")]
    assert conn.phase is Phase.AWAITING_TOKEN
    assert conn.token_received(TOKEN.encode()) == TOKEN


def test_no_token_in_time_is_refused_with_what_to_do() -> None:
    conn = _raw()
    conn.open()
    with pytest.raises(Refused) as refused:
        conn.token_received(None)
    assert refused.value.code is CloseCode.UNAUTHORIZED
    assert "?authorization=" in refused.value.message


def test_framed_clients_authorize_with_a_command() -> None:
    conn = _framed()
    assert conn.open() == []
    assert conn.token_received(json.dumps({"type": "authorize", "token": TOKEN})) == TOKEN
    other = _framed()
    other.open()
    with pytest.raises(Refused) as refused:
        other.token_received(json.dumps({"type": "nmi"}))
    assert refused.value.code is CloseCode.UNAUTHORIZED


def test_the_token_sent_again_while_serving_is_never_typed() -> None:
    """az sends its token on open and again after the first frame: the second is dropped,
    bare or as "Bearer ...", text or binary; a short frame is typing."""
    conn = _serving(_raw(authorization=TOKEN))
    assert conn.receive(TOKEN) == []
    assert conn.receive(f"Bearer {TOKEN}\r\n".encode()) == []
    assert conn.receive("ls\r") == [TypeInput(b"ls\r")]
    assert conn.receive(TOKEN[:-1] + "y") == [TypeInput((TOKEN[:-1] + "y").encode())]


def test_origins_other_than_the_gateways_own_are_refused() -> None:
    conn = ConsoleConnection(
        framed=False, query={}, origin="http://evil.test", host="127.0.0.1:8400"
    )
    with pytest.raises(Refused) as refused:
        conn.open()
    assert refused.value.code is CloseCode.ORIGIN_REFUSED
    own = ConsoleConnection(
        framed=False, query={}, origin="http://127.0.0.1:8400", host="127.0.0.1:8400"
    )
    own.open()


@pytest.mark.parametrize("offset", ["-1", "1e3", "0x10", "9" * 40, "١٢"])
def test_a_bad_offset_is_malformed(offset: str) -> None:
    with pytest.raises(Refused) as refused:
        _raw(offset=offset).open()
    assert refused.value.code is CloseCode.MALFORMED


@pytest.mark.parametrize("value", ["maybe", "2", "writer"])
def test_a_watch_value_that_is_neither_yes_nor_no_is_refused(value: str) -> None:
    """An unknown ``watch`` never silently means writer (which would take the console over)."""
    with pytest.raises(Refused) as refused:
        _raw(watch=value, authorization=TOKEN).open()
    assert refused.value.code is CloseCode.MALFORMED


@pytest.mark.parametrize(("value", "role"), [("on", Role.WATCHER), ("True ", Role.WATCHER),
                                             ("0", Role.WRITER), ("off", Role.WRITER)])  # fmt: skip
def test_watch_takes_the_usual_spellings(value: str, role: Role) -> None:
    conn = _raw(watch=value, authorization=TOKEN)
    conn.open()
    assert conn.options.role is role


def test_watch_and_offset_are_read_from_the_query() -> None:
    conn = _raw(watch="1", offset="42", authorization=TOKEN)
    conn.open()
    assert conn.options.role is Role.WATCHER
    assert conn.options.resume == 42


def test_framed_frames_become_commands_resume_or_a_4007() -> None:
    conn = _serving(_framed(authorization=TOKEN))
    actions = conn.receive('{"type": "sysrq", "keys": "h", "id": 7}')
    assert len(actions) == 1
    assert isinstance(actions[0], RunCommand)
    assert actions[0].command.keys == ("h",)
    assert conn.receive('{"type": "resume", "offset": 5}') == [Resume(5, None)]
    assert conn.receive(b"\x03") == [TypeInput(b"\x03")]
    assert conn.receive(json.dumps({"type": "authorize", "token": TOKEN})) == []
    with pytest.raises(Refused) as refused:
        conn.receive("[" * 2000 + "]" * 2000)
    assert refused.value.code is CloseCode.MALFORMED
    assert len(refused.value.reason.encode()) < 200


def test_raw_output_is_text_frames_and_loses_no_byte() -> None:
    """A character split across reads is held for its last byte; bytes that are not UTF-8
    go in a binary frame in their place."""
    conn = _serving(_raw(authorization=TOKEN))
    euro = "€".encode()
    frames = conn.render([Output(0, b"price: " + euro[:1])])
    frames += conn.render([Output(8, euro[1:] + b" \xff\xfe ok")])
    assert frames == [
        SendText("price: "),
        SendText("€ "),
        SendBinary(b"\xff\xfe"),
        SendText(" ok"),
    ]


def test_framed_output_is_binary_and_notices_are_results() -> None:
    conn = _serving(_framed(authorization=TOKEN))
    frames = conn.render([Output(0, b"abc"), Event('{"type":"power"}'), Notice("input", "no")])
    assert frames[0] == SendBinary(b"abc")
    assert frames[1] == SendText('{"type":"power"}')
    assert isinstance(frames[2], SendText)
    assert json.loads(frames[2].text) == {
        "type": "result", "id": None, "command": "input", "ok": False, "message": "no"
    }  # fmt: skip


def test_raw_clients_read_gateway_messages_as_lines_and_skip_events() -> None:
    conn = _serving(_raw(authorization=TOKEN))
    assert conn.render([Event('{"type":"power"}'), Notice("input", "guest busy")]) == [
        SendText("\r\nguest busy\r\n")
    ]
    assert conn.result("1", "nmi", True, "NMI sent successfully") is None
    assert conn.result("1", "nmi", False, "nope") == Notice("nmi", "nope")


def test_a_gap_in_the_replay_is_an_event_or_a_line() -> None:
    """Bytes gone from the boot log (rotated, or lost in a crash) are named, never skipped
    silently: a ``lost`` event for framed clients, a line for raw ones."""
    framed = _serving(_framed(authorization=TOKEN))
    (frame,) = framed.render([Gap(100, 250)])
    assert isinstance(frame, SendText)
    event = json.loads(frame.text)
    assert (event["type"], event["start"], event["end"]) == ("lost", 100, 250)
    raw = _serving(_raw(authorization=TOKEN))
    assert raw.render([Gap(100, 250)]) == [
        SendText("\r\n[bytes 100 to 250 are gone from the boot log]\r\n")
    ]


def test_what_happens_beside_the_bytes_is_events_for_framed_and_lines_for_raw() -> None:
    """Power changes, a takeover and a resume are structured items every door shows its
    own way: JSON events for framed clients; raw clients (az) get the lines every text door
    shows (SSH, RFC 2217), and nothing for the takeover, whose close text follows."""
    items = [Power("stopped", "state", ""), TakenOver("carol"), Resumed(10, 12, True)]
    framed = _serving(_framed(authorization=TOKEN))
    kinds = [json.loads(f.text)["type"] for f in framed.render(items)]  # type: ignore[union-attr]
    assert kinds == ["power", "taken_over", "resumed"]
    assert _serving(_raw(authorization=TOKEN)).render(items) == [
        SendText("\r\n[VM state: stopped]\r\n"),
        SendText("\r\n[bytes before 12 are gone from the boot log]\r\n"),
    ]


def test_closing_says_why_then_closes_with_a_reason_that_fits() -> None:
    conn = _serving(_framed(authorization=TOKEN))
    long = "x" * 300
    frames = conn.closing(Closing(CloseCode.TAKEN_OVER, long, texts.TAKEOVER))
    event = json.loads(frames[0].text)  # type: ignore[union-attr]
    assert event["type"] == "closing"
    assert event["message"] == texts.TAKEOVER
    close = frames[-1]
    assert isinstance(close, SendClose)
    assert close.code == 4001
    assert len(close.reason.encode()) <= 123
    assert conn.phase is Phase.CLOSED


def test_raw_closing_flushes_a_held_tail_before_the_text() -> None:
    conn = _serving(_raw(authorization=TOKEN))
    assert conn.render([Output(0, b"\xe2\x82")]) == []
    frames = conn.closing(Closing(CloseCode.DEALLOCATED, "gone", "The VM was deallocated."))
    assert frames == [
        SendBinary(b"\xe2\x82"),
        SendText("\r\nThe VM was deallocated.\r\n"),
        SendClose(4003, "gone"),
    ]


def test_typing_before_the_token_or_after_the_close_is_refused_and_does_nothing() -> None:
    """The diagram holds whatever a door does: no frame becomes input before the client is
    authorized, nor after its connection was closed; nothing is attached twice."""
    early = _raw()
    with pytest.raises(PhaseError, match=r"receive\(\) in phase opening"):
        early.receive("rm -rf /\r")
    early.open()  # no token in the URL: the challenge
    with pytest.raises(PhaseError, match="awaiting_token"):
        early.receive(b"typed before the token")
    with pytest.raises(PhaseError):
        early.attached(vm="linux-1", user="alice", os="linux", power_state="running",
                       start=0, offset=0, rotated=False)  # fmt: skip
    served = _serving(_raw(authorization=TOKEN))
    with pytest.raises(PhaseError):
        served.open()
    served.closing(Closing(CloseCode.NORMAL, "client left"))
    with pytest.raises(PhaseError, match="closed"):
        served.receive("late\r")
    with pytest.raises(PhaseError):
        served.render([Output(0, b"late output")])
