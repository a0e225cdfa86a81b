"""The Ctrl+] escape menu of ``serial-console connect``, fed bytes alone."""

from __future__ import annotations

import pytest

from gateway.console.escape import (
    MENU_TEXT,
    MENU_TEXT_WINDOWS,
    NMI_PROMPT,
    QUIT_MENU_TEXT,
    READ_ONLY_NOTE,
    RESET_PROMPT,
    SYSRQ_PROMPT,
    EscapeMenu,
    EscapeStateError,
    Forward,
    Mode,
    Quit,
    Reconnect,
    SendNmi,
    SendReset,
    SendSysRq,
    Show,
)


def connected(**kwargs: bool) -> EscapeMenu:
    menu = EscapeMenu(**kwargs)
    menu.connection_opened()
    return menu


def test_typing_goes_to_the_guest_as_one_forward() -> None:
    """Keys typed on a connected console reach the guest unchanged, Ctrl+C included."""
    menu = connected()
    assert menu.receive_input(b"root\r\x03") == [Forward(b"root\r\x03")]
    assert menu.mode == Mode.CONNECTED


def test_ctrl_bracket_shows_azs_menu() -> None:
    """Ctrl+] shows az's two-line menu, and bytes typed before it still reach the guest."""
    menu = connected()
    actions = menu.receive_input(b"ls\x1d")
    assert actions == [Forward(b"ls"), Show("\r\n" + MENU_TEXT)]
    assert MENU_TEXT == (
        "| Press n for NMI | s for SysRq | r to Reset VM |\r\n"
        "| q to quit Console | CTRL + ] to forward input |"
    )
    assert menu.mode == Mode.MENU


def test_windows_menu_has_no_sysrq_and_ignores_s() -> None:
    """A Windows guest's menu offers no SysRq, and pressing s there only closes the menu."""
    menu = connected(windows=True)
    assert menu.receive_input(b"\x1d") == [Show("\r\n" + MENU_TEXT_WINDOWS)]
    assert MENU_TEXT_WINDOWS == (
        "| Press n for NMI | r to Reset VM |\r\n| q to quit Console | CTRL + ] to forward input |"
    )
    assert menu.receive_input(b"s") == [Show("\r\n")]
    assert menu.mode == Mode.CONNECTED


def test_ctrl_bracket_twice_sends_a_literal_0x1d() -> None:
    """Ctrl+] Ctrl+] sends one 0x1d byte to the guest and returns to typing."""
    menu = connected()
    menu.receive_input(b"\x1d")
    assert menu.receive_input(b"\x1dx") == [Show("\r\n"), Forward(b"\x1d"), Forward(b"x")]
    assert menu.mode == Mode.CONNECTED


@pytest.mark.parametrize(
    ("key", "prompt", "action"),
    [(b"n", NMI_PROMPT, SendNmi()), (b"r", RESET_PROMPT, SendReset())],
)
def test_nmi_and_reset_need_a_capital_y(key: bytes, prompt: str, action: object) -> None:
    """n and r ask for confirmation; only a capital Y sends the command."""
    menu = connected()
    menu.receive_input(b"\x1d")
    assert menu.receive_input(key) == [Show("\r\n" + prompt)]
    assert menu.receive_input(b"Y") == [Show("\r\n"), action]
    menu.receive_input(b"\x1d" + key)
    assert menu.receive_input(b"y") == [Show("\r\n")]
    assert menu.mode == Mode.CONNECTED


def test_sysrq_reads_one_key() -> None:
    """s asks az's SysRq question and sends the next key as SysRq; typing then resumes."""
    menu = connected()
    assert menu.receive_input(b"\x1ds") == [Show("\r\n" + MENU_TEXT), Show("\r\n" + SYSRQ_PROMPT)]
    assert menu.receive_input(b"hls") == [Show("\r\n"), SendSysRq("h"), Forward(b"ls")]


def test_sysrq_prompt_cancelled_by_a_control_key() -> None:
    """Enter or Ctrl+C at the SysRq question sends nothing."""
    menu = connected()
    menu.receive_input(b"\x1ds")
    assert menu.receive_input(b"\r") == [Show("\r\n")]
    assert menu.mode == Mode.CONNECTED


def test_q_in_the_menu_quits_and_ignores_the_rest() -> None:
    """q in the menu quits the console; keys after it are not sent."""
    menu = connected()
    assert menu.receive_input(b"\x1dqabc") == [Show("\r\n" + MENU_TEXT), Show("\r\n"), Quit()]
    assert menu.mode == Mode.QUIT


def test_other_key_in_the_menu_closes_it() -> None:
    """Any other key closes the menu without sending anything."""
    menu = connected()
    menu.receive_input(b"\x1d")
    assert menu.receive_input(b"z") == [Show("\r\n")]
    assert menu.receive_input(b"z") == [Forward(b"z")]


def test_output_is_held_while_a_prompt_is_shown() -> None:
    """Guest output that arrives during a prompt is shown after its answer, not over it."""
    menu = connected()
    assert menu.output(b"before") == b"before"
    menu.receive_input(b"\x1dn")
    assert menu.output(b"during") == b""
    assert menu.receive_input(b"n") == [Show("\r\n"), Show("during")]
    assert menu.output(b"after") == b"after"


def test_closed_connection_enter_reconnects() -> None:
    """After a close, Enter asks for a new connection and typing is not forwarded."""
    menu = connected()
    assert menu.connection_closed() == []
    assert menu.receive_input(b"abc") == []
    assert menu.receive_input(b"\r") == [Show("\r\n"), Reconnect()]
    assert menu.mode == Mode.CONNECTING
    menu.connection_opened()
    assert menu.receive_input(b"x") == [Forward(b"x")]


@pytest.mark.parametrize("key", [b"q", b"\x03", b"\x04"])
def test_closed_connection_q_or_ctrl_c_quits(key: bytes) -> None:
    """After a close, q, Ctrl+C or Ctrl+D quit."""
    menu = connected()
    menu.connection_closed()
    assert menu.receive_input(key) == [Show("\r\n"), Quit()]


def test_closed_connection_ctrl_bracket_offers_quit() -> None:
    """After a close, Ctrl+] offers q to quit; another key goes back to waiting."""
    menu = connected()
    menu.connection_closed()
    assert menu.receive_input(b"\x1d") == [Show("\r\n" + QUIT_MENU_TEXT)]
    assert menu.receive_input(b"x") == [Show("\r\n")]
    assert menu.mode == Mode.CLOSED
    menu.receive_input(b"\x1d")
    assert menu.receive_input(b"q") == [Show("\r\n"), Quit()]


def test_close_during_a_prompt_releases_held_output() -> None:
    """A connection that closes while the menu is open shows what the guest sent."""
    menu = connected()
    menu.receive_input(b"\x1d")
    menu.output(b"bye")
    assert menu.connection_closed() == [Show("bye"), Show("\r\n")]
    assert menu.mode == Mode.CLOSED


def test_connecting_drops_keys_and_ctrl_c_quits() -> None:
    """Before the connection is up, typing is dropped and Ctrl+C quits."""
    menu = EscapeMenu()
    assert menu.receive_input(b"abc\r") == []
    assert menu.receive_input(b"\x03") == [Show("\r\n"), Quit()]


def test_opened_during_the_quit_menu_returns_to_typing() -> None:
    """If the connection comes up while the quit prompt is shown, dismissing it resumes typing."""
    menu = EscapeMenu()
    menu.receive_input(b"\x1d")
    menu.connection_opened()
    assert menu.receive_input(b"x") == [Show("\r\n")]
    assert menu.receive_input(b"y") == [Forward(b"y")]


def test_read_only_forwards_nothing_and_says_so_once() -> None:
    """A watcher's keys go nowhere; it is told once, and the menu still quits."""
    menu = connected(read_only=True)
    assert menu.receive_input(b"ls") == [Show("\r\n" + READ_ONLY_NOTE + "\r\n")]
    assert menu.receive_input(b"ls") == []
    assert menu.receive_input(b"\x1dq")[-1] == Quit()


def test_opened_twice_is_a_state_error() -> None:
    """A second connection_opened without a close is a caller bug, reported as such."""
    menu = connected()
    with pytest.raises(EscapeStateError):
        menu.connection_opened()


def test_end_of_input_quits_from_any_mode() -> None:
    """When stdin closes (even inside the menu), the console quits."""
    menu = connected()
    menu.receive_input(b"\x1d")
    assert menu.end_of_input() == [Quit()]
    assert menu.end_of_input() == []


def test_a_connection_that_opens_after_the_user_quit_is_ignored() -> None:
    """Input ended (stdin at end of file) before the websocket came up: no crash."""
    menu = EscapeMenu()
    menu.end_of_input()
    menu.connection_opened()
    assert menu.mode == Mode.QUIT
