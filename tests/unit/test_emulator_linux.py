"""The Linux personality as bytes in, bytes out: no PTY, no event loop, a fake clock."""

from __future__ import annotations

import pytest

from emulator.guest import GuestEvent
from emulator.linux import LinuxGuest, LinuxState

T0 = 1000.0


def drain(guest: LinuxGuest) -> tuple[str, list[GuestEvent]]:
    """Everything the guest has to say: its text, and its events in order."""
    text, events = bytearray(), []
    while (item := guest.pop_output(4096)) is not None:
        if isinstance(item, GuestEvent):
            events.append(item)
        else:
            text += item
    return text.decode(), events


def booted(password: str = "pw", boot_delay: float = 0.0) -> LinuxGuest:
    guest = LinuxGuest("vm1", password, boot_delay=boot_delay)
    guest.boot(T0)
    guest.handle_timer(T0 + boot_delay)
    drain(guest)
    return guest


def logged_in() -> LinuxGuest:
    guest = booted()
    guest.receive_data(b"root\rpw\r", T0 + 1)
    drain(guest)
    return guest


def run(guest: LinuxGuest, line: str, now: float = T0 + 2) -> str:
    guest.receive_data(line.encode() + b"\r", now)
    return drain(guest)[0]


def sysrq(guest: LinuxGuest, key: bytes, now: float = T0 + 3) -> tuple[str, list[GuestEvent]]:
    guest.receive_break(now)
    guest.receive_data(key, now + 0.1)
    return drain(guest)


def test_boot_prints_kernel_lines_then_the_login_prompt() -> None:
    """The console shows a 6.1 kernel's boot, the 8250 line, init, then ``vm1 login:``."""
    guest = LinuxGuest("vm1", "pw")
    guest.boot(T0)
    guest.handle_timer(T0)
    text, events = drain(guest)
    lines = text.split("\r\n")
    assert lines[0].startswith("[    0.000000] Linux version 6.1.0-56-cloud-amd64 ")
    assert "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A" in text
    assert "Run /init as init process" in text
    assert text.endswith("\r\nvm1 login: ")
    assert "\n" not in text.replace("\r\n", "")  # every line ends CR LF
    assert events == []


def test_boot_delay_holds_the_login_prompt_until_its_timer() -> None:
    """With a boot delay the kernel lines come at once and ``login:`` only when the delay ends."""
    guest = LinuxGuest("vm1", "pw", boot_delay=2.0)
    guest.boot(T0)
    assert "login:" not in drain(guest)[0]
    assert guest.get_timer() == T0 + 2.0
    guest.handle_timer(T0 + 1.0)  # early: nothing yet
    assert drain(guest)[0] == ""
    guest.handle_timer(T0 + 2.0)
    assert drain(guest)[0].endswith("vm1 login: ")


def test_login_hides_the_password_and_gives_a_root_prompt() -> None:
    """The user name is echoed, the password is not, then ``root@vm1:~#`` appears."""
    guest = booted(password="s3cret")
    guest.receive_data(b"root\r", T0)
    assert drain(guest)[0] == "root\r\nPassword: "
    guest.receive_data(b"s3cret\r", T0)
    text = drain(guest)[0]
    assert "s3cret" not in text
    assert text == "\r\nroot@vm1:~# "


def test_wrong_password_says_login_incorrect_and_asks_again() -> None:
    """A wrong password prints ``Login incorrect`` and a new ``login:`` prompt."""
    guest = booted()
    guest.receive_data(b"root\rnope\r", T0)
    text = drain(guest)[0]
    assert "Login incorrect" in text
    assert text.endswith("vm1 login: ")
    assert guest.state is LinuxState.LOGIN


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("echo hello world", "hello world\r\n"),
        ("hostname", "vm1\r\n"),
        ("uname -a", "Linux vm1 6.1.0-56-cloud-amd64 #1 SMP PREEMPT_DYNAMIC "),
        ("cat /proc/cmdline", "console=ttyS0,115200"),
        ("sysctl kernel.sysrq", "kernel.sysrq = 1\r\n"),
        ("seq 3", "1\r\n2\r\n3\r\n"),
        ("false; echo $?", "1\r\n"),
        ("true && echo yes || echo no", "yes\r\n"),
        ("nosuch", "-sh: nosuch: not found\r\n"),
        ("printf '%s_%s\\n' a b", "a_b\r\n"),
    ],
)
def test_shell_commands_answer_like_busybox(line: str, expected: str) -> None:
    """Each command's output follows its echoed line, and the prompt comes back."""
    text = run(logged_in(), line)
    assert text.startswith(line + "\r\n" + expected)
    assert text.endswith("root@vm1:~# ")


def test_line_editing_backspace_ctrl_c_and_crlf() -> None:
    """Backspace (DEL or BS) erases, Ctrl+C drops the line, CR LF counts as one Enter."""
    guest = logged_in()
    guest.receive_data(b"echo abX\x7fc\x08d\r\n", T0)
    text = drain(guest)[0]
    assert "abd\r\n" in text
    assert text.count("root@vm1:~# ") == 1
    guest.receive_data(b"echo lost\x03", T0)
    assert drain(guest)[0] == "echo lost^C\r\nroot@vm1:~# "


def test_ctrl_c_interrupts_a_long_command() -> None:
    """``seq 1000000`` streams lazily; Ctrl+C stops it and the prompt returns."""
    guest = logged_in()
    guest.receive_data(b"seq 1000000\r", T0)
    first = guest.pop_output(4096)
    assert isinstance(first, bytes)
    assert guest.output_buffered() < 64 * 1024  # produced as taken, not all at once
    guest.receive_data(b"\x03", T0)
    text = drain(guest)[0]
    assert text.endswith("^C\r\nroot@vm1:~# ")
    assert "1000000" not in text
    assert run(guest, "echo $?").startswith("echo $?\r\n130\r\n")


def test_exit_and_ctrl_d_go_back_to_login() -> None:
    """``exit`` and Ctrl+D on an empty line log out to a fresh ``login:``."""
    guest = logged_in()
    assert run(guest, "exit").endswith("vm1 login: ")
    guest.receive_data(b"root\rpw\r\x04", T0)
    assert drain(guest)[0].endswith("vm1 login: ")


def test_sysrq_help_lists_the_keys_with_a_timestamp() -> None:
    """BREAK then ``h`` prints the kernel's SysRq help, stamped like every kernel line."""
    text, events = sysrq(logged_in(), b"h")
    assert "] sysrq: HELP : loglevel(0-9) reboot(b) crash(c) " in text
    assert "show-blocked-tasks(w) dump-ftrace-buffer(z)" in text
    assert text.startswith("[")
    assert events == []


@pytest.mark.parametrize(
    ("key", "lines"),
    [
        (b"s", ["sysrq: Emergency Sync", "Emergency Sync complete"]),
        (b"u", ["sysrq: Emergency Remount R/O", "Emergency Remount complete"]),
        (b"t", ["sysrq: Show State"]),
        (b"m", ["sysrq: Show Memory"]),
        (b"w", ["sysrq: Show Blocked State"]),
    ],
)
def test_sysrq_keys_print_the_kernel_messages(key: bytes, lines: list[str]) -> None:
    """Each SysRq key prints its action message; the key never reaches the shell."""
    guest = logged_in()
    text, _ = sysrq(guest, key)
    for line in lines:
        assert line in text
    assert run(guest, "echo ok").startswith("echo ok\r\n")  # no stray key in the line


def test_sysrq_c_panics() -> None:
    """BREAK + ``c``: the crash message, the panic line, then the guest is panicked."""
    guest = logged_in()
    text, events = sysrq(guest, b"c")
    assert "sysrq: Trigger a crash" in text
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    assert events == [GuestEvent.PANICKED]
    guest.receive_data(b"echo dead\r", T0 + 5)
    assert drain(guest) == ("", [])


def test_sysrq_b_reboots_and_o_powers_off() -> None:
    """``b`` boots again from the first kernel line; ``o`` powers the guest off."""
    text, events = sysrq(logged_in(), b"b")
    assert events == [GuestEvent.REBOOTED]
    assert "sysrq: Resetting" in text
    assert text.count("Linux version") == 1
    text, events = sysrq(logged_in(), b"o")
    assert events == [GuestEvent.POWERED_OFF]
    assert "reboot: Power down" in text


def test_sysrq_e_kills_the_shell_and_getty_respawns() -> None:
    """``e`` terminates every task but init: the console is back at ``login:``."""
    text, _ = sysrq(logged_in(), b"e")
    assert "sysrq: Terminate All Tasks" in text
    assert text.endswith("vm1 login: ")


def test_sysrq_times_out_five_seconds_after_the_break() -> None:
    """A key typed more than 5 s after the break is ordinary input."""
    guest = logged_in()
    guest.receive_break(T0)
    guest.receive_data(b"h", T0 + 5.1)
    assert drain(guest)[0] == "h"


def test_sysrq_bitmask_refuses_operations_it_does_not_allow() -> None:
    """kernel.sysrq=16 allows sync only: ``b`` answers ``This sysrq operation is disabled.``"""
    guest = logged_in()
    run(guest, "sysctl -w kernel.sysrq=16")
    text, events = sysrq(guest, b"b")
    assert "sysrq: This sysrq operation is disabled." in text
    assert events == []
    assert "Emergency Sync" in sysrq(guest, b"s")[0]


def test_sysrq_zero_turns_sysrq_off_and_the_key_is_typed() -> None:
    """kernel.sysrq=0: as in Linux, the kernel says nothing and the key goes to the shell."""
    guest = logged_in()
    assert "kernel.sysrq = 0" in run(guest, "sysctl kernel.sysrq=0")
    text, events = sysrq(guest, b"c")
    assert text == "c"
    assert events == []


def test_nmi_is_survived_by_default_and_panics_with_unknown_nmi_panic() -> None:
    """An NMI prints ``Uhhuh...`` and ``Dazed and confused``; with the sysctl set, a panic."""
    guest = logged_in()
    guest.receive_nmi(T0 + 4)
    text, events = drain(guest)
    assert "Uhhuh. NMI received for unknown reason 30 on CPU 0." in text
    assert "Dazed and confused, but trying to continue" in text
    assert events == []
    run(guest, "sysctl -w kernel.unknown_nmi_panic=1")
    guest.receive_nmi(T0 + 5)
    text, events = drain(guest)
    assert "Kernel panic - not syncing: NMI: Not continuing" in text
    assert events == [GuestEvent.PANICKED]


def test_reboot_and_poweroff_commands() -> None:
    """``reboot`` prints ``reboot: Restarting system`` and boots again; ``poweroff`` powers off."""
    text = run(logged_in(), "reboot")
    assert "reboot: Restarting system" in text
    assert text.index("Restarting system") < text.index("Linux version")
    guest = logged_in()
    guest.receive_data(b"poweroff\r", T0)
    text, events = drain(guest)
    assert "reboot: Power down" in text
    assert events == [GuestEvent.POWERED_OFF]


def test_power_button_shuts_down_a_running_guest() -> None:
    """ACPI power button: shutdown messages, ``reboot: Power down``, then powered off."""
    guest = booted()
    guest.power_button(T0 + 1)
    text, events = drain(guest)
    assert "The system is going down NOW!" in text
    assert text.rstrip().endswith("reboot: Power down")
    assert events == [GuestEvent.POWERED_OFF]


def test_dmesg_shows_the_kernel_log() -> None:
    """``dmesg`` replays boot lines and later kernel messages such as SysRq."""
    guest = logged_in()
    sysrq(guest, b"s")
    text = run(guest, "dmesg")
    assert "Linux version" in text
    assert "sysrq: Emergency Sync" in text


def test_a_sysrq_armed_before_power_off_does_nothing_afterwards() -> None:
    """Break, power off, then `b`: the powered-off guest stays off (no reboot)."""
    guest = booted()
    guest.receive_break(T0 + 1)
    guest.halt()
    guest.receive_data(b"b", T0 + 2)
    text, events = drain(guest)
    assert guest.state is LinuxState.OFF
    assert text == ""
    assert events == []


def test_a_non_ascii_digit_is_not_a_sysrq_setting() -> None:
    """`sysctl kernel.sysrq=²` is refused, and SysRq keeps working."""
    guest = logged_in()
    assert "Invalid argument" in run(guest, "sysctl kernel.sysrq=\u00b2")
    text, _ = sysrq(guest, b"h")
    assert "sysrq: HELP" in text
