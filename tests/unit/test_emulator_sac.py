"""The Windows SAC personality as bytes in, bytes out: no PTY, no event loop."""

from __future__ import annotations

from emulator.guest import GuestEvent
from emulator.sac import SacGuest, SacState

ESC_TAB = b"\x1b\t"


def drain(guest: SacGuest) -> tuple[str, list[GuestEvent]]:
    text, events = bytearray(), []
    while (item := guest.pop_output(4096)) is not None:
        if isinstance(item, GuestEvent):
            events.append(item)
        else:
            text += item
    return text.decode(), events


def booted(nmi_crash_dump: bool = True) -> SacGuest:
    guest = SacGuest("win-vm", "pw", nmi_crash_dump=nmi_crash_dump)
    guest.boot(0.0)
    guest.handle_timer(0.0)
    drain(guest)
    return guest


def type_(guest: SacGuest, data: bytes) -> str:
    guest.receive_data(data, 1.0)
    return drain(guest)[0]


def test_boot_banner_and_prompt() -> None:
    """COM1 shows EMS's banner, the ``SAC>`` prompt, then ``The CMD command is now available``."""
    guest = SacGuest("win-vm", "pw")
    guest.boot(0.0)
    guest.handle_timer(0.0)
    text = drain(guest)[0]
    assert "Computer is booting, SAC started and initialized." in text
    assert 'Use the "ch -?" command for information about using channels.' in text
    assert 'Use the "?" command for general help.' in text
    assert text.endswith("EVENT: The CMD command is now available.\r\nSAC>")


def test_help_lists_the_sac_commands() -> None:
    """``?`` and ``help`` print the command list, including cmd, ch, restart and crashdump."""
    guest = booted()
    for word in (b"?", b"help"):
        text = type_(guest, word + b"\r")
        assert "cmd                  Create a Command Prompt channel." in text
        assert "crashdump            Crash the system." in text
        assert text.endswith("SAC>")


def test_cmd_creates_a_channel_and_ch_lists_it() -> None:
    """``cmd`` launches Cmd0001 with SAC's texts; ``ch`` shows it beside SAC."""
    guest = booted()
    text = type_(guest, b"cmd\r")
    assert "The Command Prompt session was successfully launched." in text
    assert 'EVENT:   A new channel has been created.  Use "ch -?" for channel help.' in text
    assert "Channel: Cmd0001" in text
    text = type_(guest, b"ch\r")
    assert "# Status  Channel Name" in text
    assert "0 (AV)  SAC" in text
    assert "1 (AV)  Cmd0001" in text


def test_switch_to_channel_and_log_in() -> None:
    """``ch -si 1`` shows the header; a key asks Username/Domain/Password; then C:\\ prompt."""
    guest = booted()
    type_(guest, b"cmd\r")
    text = type_(guest, b"ch -si 1\r")
    assert "Name:                  Cmd0001" in text
    assert "Use any other key to view this channel." in text
    assert type_(guest, b"\r").endswith("Please enter login credentials.\r\nUsername: ")
    assert type_(guest, b"azureuser\r").endswith("Domain  : ")
    assert type_(guest, b"\r").endswith("Password: ")
    text = type_(guest, b"pw\r")
    assert "pw" not in text
    assert text.endswith("C:\\Windows\\system32>")
    assert type_(guest, b"whoami\r").startswith("whoami\r\nwin-vm\\azureuser\r\n")
    assert "WIN-VM" in type_(guest, b"hostname\r")
    assert "Microsoft Windows [Version 10.0." in type_(guest, b"ver\r")
    assert "hi there" in type_(guest, b"echo hi there\r")
    assert "is not recognized as an internal or external command" in type_(guest, b"nosuch\r")


def test_wrong_password_asks_for_credentials_again() -> None:
    """A wrong Windows password is refused and the credential prompt starts over."""
    guest = booted()
    type_(guest, b"cmd\rch -si 1\r\r")
    text = type_(guest, b"admin\r\rwrong\r")
    assert "user name or password is incorrect" in text
    assert text.endswith("Username: ")


def test_esc_tab_zero_returns_to_sac() -> None:
    """Esc+Tab then ``0`` brings back the SAC channel and its prompt."""
    guest = booted()
    type_(guest, b"cmd\rch -si 1\r\radmin\r\rpw\r")
    text = type_(guest, ESC_TAB)
    assert "Press <esc><tab>0 to return to the SAC channel." in text
    text = type_(guest, b"0")
    assert text.endswith("SAC>")
    assert guest.state is SacState.SAC
    assert "Computer Name: WIN-VM" in type_(guest, b"id\r")


def test_screen_keeps_only_24_lines() -> None:
    """SAC has no scroll-back: a redrawn channel shows at most its last 24 lines."""
    guest = booted()
    for _ in range(30):
        type_(guest, b"i\r")
    type_(guest, b"cmd\rch -si 1\r")
    text = type_(guest, ESC_TAB + b"0")
    redraw = text.rsplit("\x1b[2J\x1b[0;0H", 1)[1]
    assert redraw.count("\r\n") <= 24


def test_restart_shutdown_and_crashdump() -> None:
    """``restart`` reboots (banner again), ``shutdown`` powers off, ``crashdump`` bugchecks."""
    guest = booted()
    guest.receive_data(b"restart\r", 1.0)
    text, events = drain(guest)
    assert events == [GuestEvent.REBOOTED]
    assert "SAC started and initialized" in text
    guest.receive_data(b"shutdown\r", 1.0)
    assert drain(guest)[1] == [GuestEvent.POWERED_OFF]
    guest = booted()
    guest.receive_data(b"crashdump\r", 1.0)
    text, events = drain(guest)
    assert "MANUALLY_INITIATED_CRASH" in text
    assert events == [GuestEvent.PANICKED]


def test_nmi_bugchecks_only_with_nmi_crash_dump() -> None:
    """An NMI bugchecks (0x80) when NMICrashDump is on and is ignored when it is off."""
    guest = booted()
    guest.receive_nmi(1.0)
    text, events = drain(guest)
    assert "NMI_HARDWARE_FAILURE" in text
    assert events == [GuestEvent.PANICKED]
    guest = booted(nmi_crash_dump=False)
    guest.receive_nmi(1.0)
    assert drain(guest) == ("", [])


def test_break_does_nothing_on_windows() -> None:
    """No SysRq on Windows: a break then ``c`` is just a typed ``c``."""
    guest = booted()
    guest.receive_break(1.0)
    assert type_(guest, b"c") == "c"
