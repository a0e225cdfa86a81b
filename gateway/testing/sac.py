"""Windows' Special Administration Console (SAC) on a console: channels and a cmd login.

``Sac(console)`` drives the ``SAC>`` prompt of a Windows guest's COM1 (Emergency
Management Services), as a person at Azure Serial Console does::

    sac = Sac(console("win-1"))
    number = sac.cmd()                     # a new Command Prompt channel: its number
    sac.channel(number)                    # ch -si N, then a key to view it
    sac.login("Administrator", "serial-lab")   # Username, Domain, Password
    assert "win-1" in sac.run("hostname")
    sac.back()                             # Esc+Tab then 0: the SAC channel again

Errors are the console's (``ExpectTimeout``, ``ConsoleClosed``, ``ConsoleError``).
"""

from __future__ import annotations

import re

from gateway.testing.console import Console, ConsoleError

SAC_PROMPT = "SAC>"
SYSTEM32 = re.escape("C:\\Windows\\system32>")
ESC_TAB = b"\x1b\t"


class Sac:
    """SAC commands on ``console`` (a Windows guest's console)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def prompt(self, timeout: float = 30.0) -> None:
        """Press Enter and wait for a fresh ``SAC>`` (what came before is skipped)."""
        self.console.drain()
        self.console.sendline()
        self.console.expect(SAC_PROMPT, timeout)

    def command(self, line: str, timeout: float = 30.0) -> str:
        """Run SAC command ``line``; what it printed before the next ``SAC>``."""
        self.prompt(timeout)
        self.console.drain()
        self.console.sendline(line)
        self.console.expect(re.escape(line) + r"\r?\n", timeout)  # SAC's echo
        self.console.expect(SAC_PROMPT, timeout)
        return str(self.console.before).replace("\r\n", "\n").strip("\n")

    def cmd(self, timeout: float = 30.0) -> int:
        """``cmd``: a new Command Prompt channel; its number (for ``channel``)."""
        self.prompt(timeout)
        self.console.drain()
        self.console.sendline("cmd")
        self.console.expect("A new channel has been created", timeout)
        self.console.expect(r"Channel: Cmd(\d+)", timeout)
        number = int(self.console.match.group(1))
        self.console.expect(SAC_PROMPT, timeout)
        return number

    def channel(self, number: int, timeout: float = 30.0) -> None:
        """``ch -si N``, then a key to view channel ``number``."""
        self.console.sendline(f"ch -si {number}")
        self.console.expect("Use any other key to view this channel.", timeout)
        self.console.sendline()

    def login(
        self, user: str = "Administrator", password: str | None = None, domain: str = ""
    ) -> None:
        """Answer the channel's Username, Domain and Password (default: the lab's guest
        password); returns at ``C:\\Windows\\system32>``. ConsoleError when refused."""
        console = self.console
        console.expect("Username: ")
        console.sendline(user)
        console.expect(r"Domain\s*: ")
        console.sendline(domain)
        console.expect("Password: ")
        console.sendline(console.password if password is None else password)
        if console.expect([SYSTEM32, "Unable to authenticate"]) != 0:
            raise ConsoleError(f"{console.name}: SAC refused {user}'s password")

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command`` in the cmd channel in front; its output before the next prompt."""
        self.console.sendline(command)
        self.console.expect(SYSTEM32, timeout)
        lines = str(self.console.before).replace("\r\n", "\n").split("\n")
        return "\n".join(lines[1:]).strip("\n")  # the first line is the echo

    def back(self, timeout: float = 30.0) -> None:
        """Esc+Tab then 0: back to the SAC channel and its prompt."""
        self.console.send(ESC_TAB)
        self.console.send("0")
        self.console.expect(SAC_PROMPT, timeout)
