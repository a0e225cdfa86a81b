"""The Linux personality: a 6.1 kernel, busybox init, getty, login and a small sh, with no I/O.

Feed it what the serial port carries and take back what the guest prints (see
``emulator.guest``). States::

    OFF --boot--> BOOTING --(boot delay)--> LOGIN --user--> PASSWORD --ok--> SHELL
    PASSWORD --wrong--> LOGIN ("Login incorrect")     SHELL --exit/Ctrl+D--> LOGIN
    SHELL --reboot / SysRq b--> BOOTING (REBOOTED)    any --panic--> PANICKED (PANICKED)
    SHELL --poweroff / ACPI / SysRq o--> OFF (POWERED_OFF)

SysRq works as on a real 8250 console: a BREAK arms it for 5 seconds and the next byte
is the key, consumed by the kernel. ``kernel.sysrq`` is a bitmask as in Linux: 1 allows
every operation, 0 turns SysRq off (the byte after the break is then ordinary input, and
the kernel prints nothing), any other value allows the operations whose bits it holds and
answers ``sysrq: This sysrq operation is disabled.`` for the others.
"""

from __future__ import annotations

import enum
import shlex
from collections import deque
from collections.abc import Iterator

from emulator import linux_texts as texts
from emulator.guest import GuestEvent, Key, LineEditor, OutputItem, OutputQueue, crlf

SYSRQ_TIMEOUT = 5.0
DMESG_LINES = 512


class LinuxState(enum.StrEnum):
    OFF = "off"
    BOOTING = "booting"
    LOGIN = "login"
    PASSWORD = "password"
    SHELL = "shell"
    BUSY = "busy"  # a command runs (seq, sleep): typed bytes wait, Ctrl+C interrupts
    PANICKED = "panicked"
    USERLAND = "userland"  # the image's own init runs (emulator.userland)


class LinuxGuest:
    """A Linux guest on ttyS0. ``boot_delay`` is the time between init starting and getty."""

    os_type = "linux"

    def __init__(self, hostname: str, password: str, *, boot_delay: float = 0.0) -> None:
        self.hostname = hostname
        self.password = password
        self.boot_delay = boot_delay
        self.state = LinuxState.OFF
        self.sysctl: dict[str, str] = dict(texts.SYSCTL_DEFAULTS)
        self.dmesg: deque[tuple[float, str]] = deque(maxlen=DMESG_LINES)
        self._out = OutputQueue()
        self._editor = LineEditor()
        self._timer: float | None = None
        self._booted_at = 0.0
        self._sysrq_until: float | None = None
        self._user = ""
        self._status = 0
        self._typeahead = bytearray()
        self._replaying = False
        self._rest: Iterator[tuple[str, list[str]]] | None = None
        self._now = 0.0

    # -- the Personality contract ---------------------------------------------------------

    def boot(self, now: float) -> None:
        self._out.clear()
        self._editor.reset()
        self._typeahead.clear()
        self._rest = None
        self._now = now
        self.sysctl = dict(texts.SYSCTL_DEFAULTS)
        self.dmesg.clear()
        self._sysrq_until = None
        self._status = 0
        self._booted_at = now - texts.KERNEL_BOOT_SECONDS
        self.state = LinuxState.BOOTING
        cmd = texts.cmdline(self.hostname)
        for stamp, line in texts.KERNEL_BOOT:
            self._kernel(line.format(cmdline=cmd), stamp)
        self._timer = now + self.boot_delay

    def halt(self) -> None:
        self._out.clear()
        self._timer = None
        self._sysrq_until = None
        self.state = LinuxState.OFF

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        self._now = now
        if self.state is LinuxState.BOOTING:
            for line in texts.INIT_LINES:
                self._print(line.format(hostname=self.hostname))
            self._getty()
        elif self.state is LinuxState.BUSY:
            self._finish(0)

    def pop_output(self, limit: int) -> OutputItem | None:
        return self._out.pop(limit)

    def output_buffered(self) -> int:
        return len(self._out)

    def receive_break(self, now: float) -> None:
        if self.state in (LinuxState.OFF, LinuxState.PANICKED):
            return
        # 8250 core (uart_handle_break): a break arms SysRq; a second one disarms it.
        armed = self._sysrq_until is not None and now < self._sysrq_until
        self._sysrq_until = None if armed else now + SYSRQ_TIMEOUT

    def receive_nmi(self, now: float) -> None:
        if self.state in (LinuxState.OFF, LinuxState.PANICKED):
            return
        self._kernel(texts.NMI_UNKNOWN, self._uptime(now))
        panics = "1" in (
            self.sysctl["kernel.unknown_nmi_panic"],
            self.sysctl["kernel.panic_on_unrecovered_nmi"],
        )
        if panics:
            self._panic(texts.NMI_PANIC_REASON, "swapper/0", texts.NMI_PANIC_STACK, now)
        else:
            self._kernel(texts.NMI_DAZED, self._uptime(now))

    def power_button(self, now: float) -> None:
        # acpid runs from init on: before that (BOOTING) the press is lost, as on real hardware.
        if self.state in (LinuxState.OFF, LinuxState.PANICKED, LinuxState.BOOTING):
            return
        self._now = now
        self._out.interrupt()
        self._shutdown(poweroff=True, now=now, acpi=True)

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self.state is LinuxState.OFF:
            return  # a powered-off guest reads nothing, a SysRq armed before included
        for byte in data:
            if self._sysrq_until is not None:
                armed = now < self._sysrq_until
                self._sysrq_until = None
                if armed and self.sysctl["kernel.sysrq"] != "0":
                    self._sysrq(chr(byte).lower(), now)
                    continue
            self._key(byte, now)

    # -- console input ---------------------------------------------------------------------

    def _key(self, byte: int, now: float) -> None:
        state = self.state
        if state in (LinuxState.OFF, LinuxState.PANICKED, LinuxState.BOOTING):
            return  # getty flushes what was typed before it started
        if state is LinuxState.BUSY:
            if byte == 0x03:
                self._out.interrupt()
                self._timer = None
                self._rest = None
                self._typeahead.clear()
                self._out.write(b"^C\r\n")
                self._finish(130)
            elif len(self._typeahead) < 4096:
                self._typeahead.append(byte)
            return
        echo, result = self._editor.feed(byte)
        self._out.write(echo)
        if result is None:
            return
        if state is LinuxState.LOGIN:
            self._login_input(result)
        elif state is LinuxState.PASSWORD:
            self._password_input(result)
        elif result is Key.INTERRUPT:
            self._prompt()
        elif result is Key.EOF:
            self._out.write(b"\r\n")
            self._logout()
        else:
            self._run_line(result, now)

    def _login_input(self, result: str | Key) -> None:
        if isinstance(result, Key) or not result.strip():
            self._out.write(crlf(f"\n{self.hostname} login: "))
            return
        self._user = result.strip()
        self.state = LinuxState.PASSWORD
        self._editor.echo = False
        self._out.write(b"Password: ")

    def _password_input(self, result: str | Key) -> None:
        self._editor.echo = True
        if result == self.password and self._user == "root":
            self.state = LinuxState.SHELL
            self._status = 0
            self._prompt()
        else:
            self._out.write(b"Login incorrect\r\n")
            self._getty()

    # -- boot, login, shutdown -----------------------------------------------------------

    def _getty(self) -> None:
        self.state = LinuxState.LOGIN
        self._editor.reset()
        self._editor.echo = True
        self._out.write(crlf(f"\n{self.hostname} login: "))

    def _logout(self) -> None:
        self._getty()

    def _prompt(self) -> None:
        self.state = LinuxState.SHELL
        self._out.write(f"root@{self.hostname}:~# ".encode())
        if self._typeahead and not self._replaying:
            # What was typed while a command ran is read by the shell now, as from a tty.
            self._replaying = True
            try:
                while self._typeahead and self.state is LinuxState.SHELL:
                    byte = self._typeahead.pop(0)
                    self._key(byte, self._now)
            finally:
                self._replaying = False

    def _finish(self, status: int) -> None:
        """The running command ended with ``status``: the rest of its list, then the prompt."""
        self._status = status
        rest, self._rest = self._rest, None
        if rest is not None:
            self._run_list(rest, self._now)
        else:
            self._prompt()

    def _shutdown(self, *, poweroff: bool, now: float, acpi: bool = False) -> None:
        self._rest = None
        if acpi:
            self._kernel(texts.ACPI_POWER_BUTTON, self._uptime(now))
        for line in texts.SHUTDOWN_LINES:
            self._print(line)
        self._print(texts.POWEROFF_REQUEST if poweroff else texts.REBOOT_REQUEST)
        if poweroff:
            self._kernel(texts.POWEROFF_KERNEL, self._uptime(now))
            self._power_off()
        else:
            self._kernel(texts.REBOOT_KERNEL, self._uptime(now))
            self._reboot(now)

    def _power_off(self) -> None:
        self.state = LinuxState.OFF
        self._timer = None
        self._sysrq_until = None
        self._out.emit(GuestEvent.POWERED_OFF)

    def _reboot(self, now: float) -> None:
        pending = self._out
        self._out = OutputQueue()
        self.boot(now)
        # What was printed before the reboot still reaches the port first.
        rebooted = self._out
        self._out = pending
        self._out.emit(GuestEvent.REBOOTED)
        while (item := rebooted.pop(1 << 30)) is not None:
            if isinstance(item, bytes):
                self._out.write(item)
            else:
                self._out.emit(item)

    def _panic(self, reason: str, comm: str, stack: tuple[str, ...], now: float) -> None:
        self._out.interrupt()
        for line in texts.panic_lines(reason, comm, stack):
            self._kernel(line, self._uptime(now))
        self.state = LinuxState.PANICKED
        self._timer = None
        self._sysrq_until = None
        self._out.emit(GuestEvent.PANICKED)

    # -- SysRq -------------------------------------------------------------------------------

    def _sysrq(self, key: str, now: float) -> None:
        stamp = self._uptime(now)
        mask = int(self.sysctl["kernel.sysrq"])
        if key.isdigit():
            message, need = texts.SYSRQ_LOGLEVEL
            extra: tuple[str, ...] = (f"Loglevel set to {key}",)
        elif key in texts.SYSRQ_OPS:
            message, need, extra = texts.SYSRQ_OPS[key]
        else:
            self._kernel("sysrq: " + texts.SYSRQ_HELP, stamp)
            return
        if mask != 1 and not mask & need:
            self._kernel("sysrq: " + texts.SYSRQ_DISABLED, stamp)
            return
        self._kernel(f"sysrq: {message}", stamp)
        for line in extra:
            self._kernel(line, stamp)
        if key == "b":
            self._out.interrupt()
            self._reboot(now)
        elif key == "c":
            self._panic("sysrq triggered crash", "swapper/0", texts.SYSRQ_CRASH_STACK, now)
        elif key == "o":
            self._out.interrupt()
            self._kernel(texts.POWEROFF_KERNEL, stamp)
            self._power_off()
        elif key in "ei" and self.state in (LinuxState.SHELL, LinuxState.BUSY):
            # Every task but init dies: init respawns getty on ttyS0.
            self._out.interrupt()
            self._typeahead.clear()
            self._getty()

    # -- the shell ------------------------------------------------------------------------

    def _run_line(self, line: str, now: float) -> None:
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:
            self._out.write(b"-sh: syntax error: unterminated quoted string\r\n")
            self._finish(2)
            return
        commands: list[tuple[str, list[str]]] = []
        joiner, words = ";", list[str]()
        for token in tokens:
            if token in (";", "&&", "||"):
                commands.append((joiner, words))
                joiner, words = token, []
            else:
                words.append(token)
        commands.append((joiner, words))
        self._run_list(iter(commands), now)

    def _run_list(self, commands: Iterator[tuple[str, list[str]]], now: float) -> None:
        """Run ``commands`` in turn until one runs long (BUSY); then the prompt."""
        for joiner, words in commands:
            if (
                not words
                or (joiner == "&&" and self._status)
                or (joiner == "||" and not self._status)
            ):
                continue
            words = [w.replace("$?", str(self._status)) for w in words]
            words = [w.replace("$HOSTNAME", self.hostname) for w in words]
            self.state = LinuxState.SHELL
            self._command(words[0], words[1:], now)
            if self.state is LinuxState.BUSY:
                self._rest = commands  # run by _finish when the long command ends
                return
            if self.state is not LinuxState.SHELL:
                return  # a logout, a reboot: they print what comes next
        self._prompt()

    def _command(self, name: str, args: list[str], now: float) -> None:
        handler = getattr(self, f"_cmd_{name.replace('-', '_')}", None)
        if name.startswith("_") or handler is None:
            self._out.write(crlf(f"-sh: {name}: not found\n"))
            self._status = 127
            return
        self._status = handler(args, now)

    def _say(self, text: str) -> int:
        self._out.write(crlf(text + "\n"))
        return 0

    def _cmd_echo(self, args: list[str], now: float) -> int:
        if args[:1] == ["-n"]:
            self._out.write(" ".join(args[1:]).encode())
            return 0
        return self._say(" ".join(args))

    def _cmd_printf(self, args: list[str], now: float) -> int:
        if not args:
            return self._say("printf: usage: printf FORMAT [ARGUMENT]...") or 1
        self._out.write(crlf(_printf(args[0], args[1:])))
        return 0

    def _cmd_true(self, args: list[str], now: float) -> int:
        return 0

    def _cmd_false(self, args: list[str], now: float) -> int:
        return 1

    def _cmd_hostname(self, args: list[str], now: float) -> int:
        if args:
            self.hostname = args[0]
            return 0
        return self._say(self.hostname)

    def _cmd_whoami(self, args: list[str], now: float) -> int:
        return self._say("root")

    def _cmd_pwd(self, args: list[str], now: float) -> int:
        return self._say("/root")

    def _cmd_uname(self, args: list[str], now: float) -> int:
        fields = {
            "-s": "Linux",
            "-n": self.hostname,
            "-r": texts.KERNEL_RELEASE,
            "-v": texts.KERNEL_BUILD,
            "-m": "x86_64",
        }
        if "-a" in args:
            return self._say(" ".join([*fields.values(), "GNU/Linux"]))
        return self._say(" ".join(fields[a] for a in args if a in fields) or "Linux")

    def _cmd_cat(self, args: list[str], now: float) -> int:
        status = 0
        for path in args:
            content = self._file(path)
            if content is None:
                self._say(f"cat: can't open '{path}': No such file or directory")
                status = 1
            else:
                self._say(content)
        return status

    def _file(self, path: str) -> str | None:
        if path == "/proc/cmdline":
            return texts.cmdline(self.hostname)
        if path == "/proc/version":
            return texts.LINUX_VERSION
        if path == "/etc/hostname":
            return self.hostname
        if path == "/proc/uptime":
            return "12.34 12.00"
        if path.startswith("/proc/sys/"):
            return self.sysctl.get(path[len("/proc/sys/") :].replace("/", "."))
        return None

    def _cmd_dmesg(self, args: list[str], now: float) -> int:
        lines = [self._stamped(line, stamp) for stamp, line in self.dmesg]
        return self._say("\n".join(lines))

    def _cmd_sysctl(self, args: list[str], now: float) -> int:
        status = 0
        for arg in (a for a in args if not a.startswith("-")):
            key, sep, value = arg.partition("=")
            key = key.replace("/", ".")
            if key not in self.sysctl:
                self._say(f"sysctl: error: '{key}' is an unknown key")
                status = 1
                continue
            if sep:
                numeric = value.isascii() and value.isdigit()
                if key in ("kernel.sysrq", "kernel.unknown_nmi_panic") and not numeric:
                    self._say(f"sysctl: error setting key '{key}': Invalid argument")
                    status = 1
                    continue
                self.sysctl[key] = value
            if "-q" not in args:
                self._say(f"{key} = {self.sysctl[key]}")
        return status

    def _cmd_seq(self, args: list[str], now: float) -> int:
        try:
            numbers = [int(a) for a in args]
        except ValueError:
            return self._say(f"seq: invalid number '{args[-1]}'") or 1
        if not 1 <= len(numbers) <= 2:
            return self._say("Usage: seq [-w] [-s SEP] [FIRST [INC]] LAST") or 1
        first, last = (numbers[0], numbers[1]) if len(numbers) == 2 else (1, numbers[0])
        self.state = LinuxState.BUSY
        self._out.produce(_lines(first, last), lambda: self._finish(0))
        return 0

    def _cmd_sleep(self, args: list[str], now: float) -> int:
        try:
            seconds = float(args[0]) if args else -1.0
        except ValueError:
            seconds = -1.0
        if seconds < 0:
            return self._say("sleep: invalid number") or 1
        self.state = LinuxState.BUSY
        self._timer = now + seconds
        return 0

    def _cmd_exit(self, args: list[str], now: float) -> int:
        self._logout()
        return 0

    _cmd_logout = _cmd_exit

    def _cmd_reboot(self, args: list[str], now: float) -> int:
        self.state = LinuxState.BUSY
        self._shutdown(poweroff=False, now=now)
        return 0

    def _cmd_poweroff(self, args: list[str], now: float) -> int:
        self.state = LinuxState.BUSY
        self._shutdown(poweroff=True, now=now)
        return 0

    _cmd_halt = _cmd_poweroff

    # -- kernel log ----------------------------------------------------------------------

    def _uptime(self, now: float) -> float:
        return max(now - self._booted_at, texts.KERNEL_BOOT_SECONDS)

    @staticmethod
    def _stamped(line: str, stamp: float) -> str:
        return f"[{stamp:12.6f}] {line}"

    def _kernel(self, line: str, stamp: float) -> None:
        self.dmesg.append((stamp, line))
        self._out.write(crlf(self._stamped(line, stamp) + "\n"))

    def _print(self, line: str) -> None:
        self._out.write(crlf(line + "\n"))


def _printf(form: str, args: list[str]) -> str:
    """busybox printf's common subset: %s %d %%, escapes; the format is reused for extra args."""
    form = form.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")
    form = form.replace("%%", "\0")
    out, rest = [], list(args)
    while True:
        pieces = form.split("%")
        out.append(pieces[0])
        used = 0
        for piece in pieces[1:]:
            if piece and piece[0] in "sd":
                out.append(rest.pop(0) if rest else ("" if piece[0] == "s" else "0"))
                used += 1
            out.append(piece[1:])
        if not rest or not used:
            return "".join(out).replace("\0", "%")


def _lines(first: int, last: int) -> Iterator[bytes]:
    for start in range(first, last + 1, 256):
        yield "".join(f"{n}\r\n" for n in range(start, min(start + 256, last + 1))).encode()
