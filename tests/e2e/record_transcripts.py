"""Record docs/transcripts.md: what a user's terminal shows, from real commands on a real lab.

    python -m tests.e2e.record_transcripts [OUTPUT]

Starts the default lab (``serial-console lab run``, QEMU guests included) with replay
turned off, so each console starts at Azure's banner instead of the last 64 KiB of
output, then runs the CLI on a pseudo-terminal for each scene and renders what the
terminal shows: colours dropped, backspaces and carriage returns applied, a cleared screen
starting a new line. Exit statuses are the processes' own.
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
from pathlib import Path

import pexpect

from gateway.testing.lab import LabProcess
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, require_qemu
from tests.support.cli import CLI, Cli

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "docs" / "transcripts.md"
PREFERRED_PORT = 8400  # the default lab's port, when it is free
BOOT = 90.0
BANNER = "press ENTER."
PROMPT = "root@linux-1:~# "
MENU = "to forward input |"
TOKEN = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b.|[\r\n\b]")

INTRO = """# Transcripts

What the terminal shows, recorded from the real commands against the default lab
(`serial-console lab run`: QEMU guests linux-1 and linux-2, emulated win-1) by
`python -m tests.e2e.record_transcripts`. Colours are dropped. The lab ran with
`replay_bytes = 0` so each console starts at Azure's banner; with the default, the last
64 KiB of the console's output follow the banner. Keys that print nothing (Enter on an
empty line, Ctrl+], a password) are named in each heading.
"""


class Screen:
    """Renders a terminal's bytes to lines: a tiny emulator for line-oriented output."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line: list[str] = []
        self.col = 0

    def feed(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        position = 0
        for match in TOKEN.finditer(text):
            self._text(text[position : match.start()])
            self._control(match.group())
            position = match.end()
        self._text(text[position:])

    def _text(self, text: str) -> None:
        for char in text:
            if char < " " and char != "\t":
                continue
            if self.col < len(self.line):
                self.line[self.col] = char
            else:
                self.line.extend(" " * (self.col - len(self.line)))
                self.line.append(char)
            self.col += 1

    def _control(self, token: str) -> None:
        if token == "\n":
            self._newline()
        elif token == "\r":
            self.col = 0
        elif token == "\b":
            self.col = max(0, self.col - 1)
        elif token.endswith("K"):  # erase to the end of the line
            del self.line[self.col :]
        elif token == "\x1b[2J" and self.line:  # a cleared screen: start a new line
            self._newline()

    def _newline(self) -> None:
        self.lines.append("".join(self.line).rstrip())
        self.line, self.col = [], 0

    def text(self) -> str:
        lines = [*self.lines, "".join(self.line).rstrip()]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip("\n")


class Scene:
    """One terminal: the commands typed at its shell prompt and what they showed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.screen = Screen()

    def shell(self, line: str) -> None:
        self.screen.feed(f"$ {line}\r\n".encode())

    def run(self, *argv: str) -> int:
        """Run ``serial-console argv`` to its end; its exit status."""
        child = self.spawn(*argv)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus is not None
        return child.exitstatus

    def spawn(self, *argv: str) -> pexpect.spawn:
        self.shell(" ".join(["serial-console", *argv]))
        child = pexpect.spawn(CLI[0], [*CLI[1:], *argv], env=self.env, timeout=scaled(15))
        child.setwinsize(40, 200)
        child.logfile_read = self
        return child

    def write(self, data: bytes) -> None:  # pexpect's logfile
        self.screen.feed(data)

    def flush(self) -> None:
        pass

    def status(self, code: int) -> None:
        self.shell("echo $?")
        self.screen.feed(f"{code}\r\n".encode())


def quit_console(child: pexpect.spawn) -> None:
    child.send("\x1d")
    child.expect_exact(MENU)
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def preferred_port() -> int:
    """PREFERRED_PORT when it is free (the transcripts then show the same URL every time),
    else 0: the lab takes any port and its banner says which."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", PREFERRED_PORT))
        except OSError:
            return 0
    return PREFERRED_PORT


def record(lab: LabProcess, config: Path) -> list[tuple[str, list[Scene]]]:
    def env(user: str) -> dict[str, str]:
        return Cli.at(lab.url, config / user).env

    scenes: list[tuple[str, list[Scene]]] = []

    # The guest must be up: a console nobody sees waits for its login prompt.
    warmup = pexpect.spawn(CLI[0], [*CLI[1:], "login", "-u", "alice", "-p", "alice"],
                           env=env("warmup"))  # fmt: skip
    warmup.expect(pexpect.EOF)
    warmup = pexpect.spawn(CLI[0], [*CLI[1:], "connect", "-g", "lab-rg", "-n", "linux-1"],
                           env=env("warmup"), timeout=scaled(BOOT))  # fmt: skip
    warmup.expect_exact(BANNER)
    warmup.send("\r")
    warmup.expect_exact("login: ")
    quit_console(warmup)

    alice = Scene(env("alice"))
    assert alice.run("login", "--username", "alice", "--password", "alice") == 0
    child = alice.spawn("connect", "-g", "lab-rg", "-n", "linux-1")
    child.expect_exact(BANNER)
    child.send("\r")
    child.expect_exact("login: ")
    child.send("root\r")
    child.expect_exact("Password: ")
    child.send(GUEST_PASSWORD + "\r")
    child.expect_exact(PROMPT)
    child.send("hostname\r")
    child.expect_exact("linux-1\r\n")
    child.expect_exact(PROMPT)
    quit_console(child)
    scenes.append(("1. Log in, connect to linux-1, Enter, log in as root (password serial-lab), "
                   "hostname, Ctrl+] q", [alice]))  # fmt: skip

    sysrq = Scene(env("alice"))
    child = sysrq.spawn("connect", "-g", "lab-rg", "-n", "linux-1")
    child.expect_exact(BANNER)
    child.send("\r")
    child.expect_exact(PROMPT)
    child.send("\x1d")
    child.expect_exact(MENU)
    child.send("s")
    child.expect_exact("Press h for help: ")
    child.send("h")
    pending = [r"sysrq: HELP[^\n]*\n", "Successfully sent SysRq command"]
    while pending:  # the kernel's line and the gateway's answer, in either order
        pending.pop(child.expect(pending))
    quit_console(child)
    scenes.append(("2. SysRq h through the menu: Enter, Ctrl+] s h, then Ctrl+] q", [sysrq]))

    first, second = Scene(env("alice")), Scene(env("carol"))
    assert second.run("login", "--username", "carol", "--password", "carol") == 0
    child = first.spawn("connect", "-g", "lab-rg", "-n", "linux-1")
    child.expect_exact(BANNER)
    child.send("\r")
    child.expect_exact(PROMPT)
    other = second.spawn("connect", "-g", "lab-rg", "-n", "linux-1")
    other.expect_exact(BANNER)
    child.expect_exact('To reconnect, press "Enter".')
    child.send("q")
    child.expect(pexpect.EOF)
    other.send("\r")
    other.expect_exact(PROMPT)
    quit_console(other)
    scenes.append(("5. carol connects while alice is on linux-1: alice's terminal (she then "
                   "presses q), then carol's (Enter, Ctrl+] q)", [first, second]))  # fmt: skip

    bob = Scene(env("bob"))
    assert bob.run("login", "--username", "bob", "--password", "bob") == 0
    bob.status(bob.run("connect", "-g", "lab-rg", "-n", "linux-1"))
    scenes.append(("6. bob (Reader) is refused", [bob]))

    win = Scene(env("alice"))
    child = win.spawn("connect", "-g", "lab-rg", "-n", "win-1")
    child.expect_exact(BANNER)
    child.send("\r")
    child.expect_exact("SAC>")
    child.send("cmd\r")
    child.expect(r"Channel: Cmd(\d+)")
    number = child.match.group(1).decode()
    child.expect_exact("SAC>")
    child.send(f"ch -si {int(number)}\r")
    child.expect_exact("Use any other key to view this channel.")
    child.send("\r")
    child.expect_exact("Username: ")
    child.send("Administrator\r")
    child.expect_exact("Domain  : ")
    child.send("\r")
    child.expect_exact("Password: ")
    child.send(GUEST_PASSWORD + "\r")
    child.expect_exact("C:\\Windows\\system32>")
    quit_console(child)
    scenes.append(("8. win-1's SAC: Enter, cmd, ch -si 1, any key, Administrator, Enter (domain), "
                   "password serial-lab, then Ctrl+] q", [win]))  # fmt: skip
    return scenes


def markdown(scenes: list[tuple[str, list[Scene]]]) -> str:
    parts = [INTRO]
    for heading, terminals in scenes:
        parts.append(f"## {heading}\n")
        for terminal in terminals:
            parts.append(f"```text\n{terminal.screen.text()}\n```\n")
    text = "\n".join(parts)
    for private in (str(ROOT), str(ROOT.parent), tempfile.gettempdir()):
        assert private not in text, f"the transcripts show a local path: {private}"
    return text


def main(argv: list[str]) -> int:
    require_qemu()
    output = Path(argv[0]) if argv else OUTPUT
    with tempfile.TemporaryDirectory(prefix="transcripts-") as folder:
        lab = LabProcess.start(Path(folder), port=preferred_port(), replay_bytes=0)
        try:
            scenes = record(lab, Path(folder) / "config")
        finally:
            code = lab.stop()
        assert code == 0, lab.output
        assert not lab.qemu_pids()
    output.write_text(markdown(scenes))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
