"""The pytest plugin's Console, read side only: frames in (as the websocket gives them),
pexpect's matches and the boot's boundary out. No lab, no socket."""

from __future__ import annotations

import json
from typing import cast

import pytest

from gateway.testing.client import LabClient
from gateway.testing.console import (
    DEFAULT_PROMPT,
    Console,
    ConsoleClosed,
    ExpectTimeout,
    strip_ansi,
)

SHORT = 0.2


def fed(replay: bytes, os: str = "linux") -> Console:
    """A console whose gateway said ``connected`` and replayed ``replay``."""
    console = Console(
        cast(LabClient, None), "linux-1", None, group="lab-rg", password="pw",
        prompt=DEFAULT_PROMPT, watch=False, timeout=SHORT,
    )  # fmt: skip
    connected = {"type": "connected", "os": os, "power_state": "running"}
    connected.update(replay_from=100, offset=100 + len(replay))
    console._stream.take(json.dumps(connected))
    console._cursor = console._stream.replay_end
    if replay:
        console._stream.take(replay)
    return console


BOOT = b"[    0.000000] Linux version 6.1.0-lab\r\n...\r\nlinux-1 login: "


def test_expect_reads_live_bytes_not_the_replay() -> None:
    console = fed(BOOT)
    with pytest.raises(ExpectTimeout, match=r"'login: ' did not appear"):
        console.expect("login: ")
    console._stream.take(b"\r\nlinux-1 login: ")
    assert console.expect("login: ") == 0
    assert console.replay == BOOT.decode()


def test_expect_seen_finds_what_the_replay_brings_even_after_open_returned() -> None:
    """The replay's bytes arrive after ``open`` returns: a line in them is found once they
    come, and so is one that only comes live."""
    late = b"cloud-init finished\r\nlinux-1 login: "
    console = fed(late)
    console._stream.data.clear()  # as open() returns: connected, its replay still to come
    assert console.replay == ""
    with pytest.raises(ExpectTimeout):
        console.expect("cloud-init finished")  # expect reads past the replay: never there
    console._stream.take(late)
    assert console.replay == late.decode()
    assert console.expect_seen("cloud-init finished", SHORT) == 0
    with pytest.raises(ExpectTimeout):
        console.expect_seen("custom data ran", SHORT)
    console._stream.take(b"\r\ncustom data ran\r\n")  # live
    assert console.expect_seen("custom data ran", SHORT) == 0


def test_wait_for_boot_finds_the_prompt_in_the_replay_then_reads_on() -> None:
    console = fed(BOOT + b"root\r\nPassword: \r\nroot@linux-1:~# ")
    console.wait_for_boot(SHORT)
    with pytest.raises(ExpectTimeout):
        console.expect(DEFAULT_PROMPT)  # the old prompt is behind the reader now
    console._stream.take(b"\r\nroot@linux-1:~# ")
    assert console.expect(DEFAULT_PROMPT) == 0


def test_wait_for_boot_waits_for_the_prompt_of_the_last_boot() -> None:
    """A reset's new boot in the replay, not at its prompt yet: the older prompt does not
    count."""
    console = fed(BOOT + b"\r\n[    0.000000] Linux version 6.1.0-lab\r\n")
    with pytest.raises(ExpectTimeout):
        console.wait_for_boot(SHORT)
    console._stream.take(b"Run /init\r\nlinux-1 login: ")
    console.wait_for_boot(SHORT)


def test_a_power_event_starts_a_new_boot() -> None:
    console = fed(BOOT)
    console._stream.take(json.dumps({"type": "power", "state": "running", "event": "reset"}))
    assert console.power_state == "running"
    with pytest.raises(ExpectTimeout):
        console.wait_for_boot(SHORT)
    console._stream.take(b"linux-1 login: ")
    console.wait_for_boot(SHORT)


def test_a_panic_is_not_a_boot() -> None:
    console = fed(BOOT)
    console._stream.take(b"Kernel panic - not syncing: sysrq triggered crash\r\n")
    console._stream.take(json.dumps({"type": "power", "state": "panicked", "event": "panicked"}))
    console.wait_for_power("panicked", SHORT)
    with pytest.raises(ExpectTimeout, match="sysrq triggered crash"):
        console.wait_for_boot(SHORT)


def test_windows_boots_to_sac() -> None:
    console = fed(b"\r\nComputer is booting, SAC started and initialized.\r\n\r\nSAC>", "windows")
    console.wait_for_boot(SHORT)


def test_a_closed_console_says_why() -> None:
    console = fed(b"")
    console._stream.take(
        json.dumps({"type": "closing", "code": 4001, "message": "another user connected"})
    )
    with pytest.raises(ConsoleClosed, match="another user connected"):
        console.expect("login: ")


def test_the_transcript_keeps_every_byte_and_strip_ansi_cleans_it() -> None:
    console = fed(b"\x1b[2J\x1b[0;0Hold\r\n")
    console._stream.take(b"\x1b[1mnew\x1b[0m\r\n")
    assert console.transcript == "\x1b[2J\x1b[0;0Hold\r\n\x1b[1mnew\x1b[0m\r\n"
    assert strip_ansi(console.live_text) == "new\n"
    assert strip_ansi("a\rb\r\r\nc") == "ab\nc"
