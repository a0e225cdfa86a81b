"""The Windows personality: Emergency Management Services' Special Administration Console (SAC).

What Azure Serial Console shows on a Windows VM's COM1, with no I/O (see
``emulator.guest``): the ``SAC>`` prompt and its commands, Command Prompt channels
(``cmd``, ``ch``, ``ch -si N``, Esc+Tab to switch, Esc+Tab then ``0`` back to SAC) with a
credential prompt, and the bugchecks of ``crashdump`` and of an NMI (NMICrashDump).
No SysRq: a BREAK does nothing. The screen is 80x24 with no scroll-back: each channel
keeps only its last 24 lines, redrawn when it is selected.

States::

    OFF --boot--> SAC <--Esc+Tab 0--> SELECTING --any key--> CHANNEL
    SAC --restart--> SAC (REBOOTED)   --shutdown / ACPI--> OFF (POWERED_OFF)
    any --crashdump / NMI--> PANICKED (PANICKED)
"""

from __future__ import annotations

import enum
import uuid
from collections import deque
from dataclasses import dataclass, field

from emulator.guest import GuestEvent, Key, LineEditor, OutputItem, OutputQueue, crlf

ROWS = 24
CLEAR = b"\x1b[2J\x1b[0;0H"
ESC, TAB = 0x1B, 0x09
CMD_APPLICATION_GUID = "63d02271-8aa4-11d5-bccf-00b0d014a2d0"
WINDOWS_VERSION = "Microsoft Windows [Version 10.0.20348.2700]"
SYSTEM32 = "C:\\Windows\\system32>"
COPYRIGHT = "(c) Microsoft Corporation. All rights reserved."

BANNER = (
    "\nComputer is booting, SAC started and initialized.\n\n"
    'Use the "ch -?" command for information about using channels.\n'
    'Use the "?" command for general help.\n\n\n'
)
CMD_AVAILABLE = "EVENT: The CMD command is now available."
HELP = """ch                   Channel management commands.  Use ch -? for more help.
cmd                  Create a Command Prompt channel.
d                    Dump the current kernel log.
f                    Toggle detailed or abbreviated tlist info.
? or help            Display this list.
i                    List all IP network numbers and their IP addresses and set IP info.
id                   Display the computer identification information.
k <pid>              Kill the given process.
l <pid>              Lower the priority of a process to the lowest possible.
lock                 Lock access to Command Prompt channels.
m <pid> <MB-allow>   Limit the memory usage of a process to <MB-allow>.
p                    Toggle paging the display.
r <pid>              Raise the priority of a process by one.
s                    Display the current time and date (24 hour clock used).
s mm/dd/yyyy hh:mm   Set the current time and date (24 hour clock used).
t                    Tlist.
restart              Restart the system immediately.
shutdown             Shutdown the system immediately.
crashdump            Crash the system. You must have crash dump enabled.
"""
CH_HELP = """Channel management commands:
ch                   List all channels.

Status Legend: (AB)
A: Channel operational status
    'A' = Channel is active.
    'I' = Channel is inactive.
B: Channel Type
    'V' = VT-UTF8 emulation.
    'R' = Raw - no emulation.

ch -si <#>           Switch to a channel by its number.
ch -sn <name>        Switch to a channel by its name.
ch -ci <#>           Close a channel by its number.
ch -cn <name>        Close a channel by its name.

Press <esc><tab> to select a channel.
Press <esc><tab>0 to return to the SAC channel.
"""
CMD_LAUNCHED = "The Command Prompt session was successfully launched."
CHANNEL_CREATED = 'EVENT:   A new channel has been created.  Use "ch -?" for channel help.'
CHANNEL_CLOSED = "EVENT:   A channel has been closed."
UNKNOWN_COMMAND = "Unrecognized command.  Try the 'help' command for more details."
NO_CHANNEL = "Error: There is no channel present at the specified index."
LOGIN_PROMPT = "Please enter login credentials."
LOGIN_FAILED = "Unable to authenticate: the user name or password is incorrect."
BUGCHECK = """
<?xml version="1.0"?>
<BP>
<INSTANCE CLASSNAME="BLUESCREEN">
<PROPERTY NAME="STOPCODE" TYPE="string"><VALUE>"0x{code:X}"</VALUE></PROPERTY>
<PROPERTY NAME="STOPCODE_NAME" TYPE="string"><VALUE>"{name}"</VALUE></PROPERTY>
</INSTANCE>
</BP>
!SAC>
Your PC ran into a problem and needs to restart.
Stop code: {name} (0x{code:08X})
"""


class SacState(enum.StrEnum):
    OFF = "off"
    SAC = "sac"  # the SAC channel, at its prompt
    SELECTING = "selecting"  # a channel's header is shown (Esc+Tab, ch -si)
    CHANNEL = "channel"  # a Command Prompt channel is in front
    PANICKED = "panicked"


class Login(enum.Enum):
    USER = "user"
    DOMAIN = "domain"
    PASSWORD = "password"
    READY = "ready"


@dataclass
class Channel:
    """One SAC channel; ``screen`` holds what it shows (its last 24 lines, no more)."""

    number: int
    name: str
    description: str
    guid: str
    active: bool = True
    login: Login = Login.USER
    user: str = ""
    domain: str = ""
    screen: deque[bytes] = field(default_factory=lambda: deque([b""], maxlen=ROWS))
    editor: LineEditor = field(default_factory=LineEditor)


class SacGuest:
    """A Windows Server guest's COM1 under EMS. ``nmi_crash_dump``: an NMI bugchecks (0x80)."""

    os_type = "windows"

    def __init__(
        self,
        hostname: str,
        password: str,
        *,
        boot_delay: float = 0.0,
        nmi_crash_dump: bool = True,
    ) -> None:
        self.hostname = hostname.upper()[:15]
        self.password = password
        self.boot_delay = boot_delay
        self.nmi_crash_dump = nmi_crash_dump
        self.state = SacState.OFF
        self.channels: list[Channel] = []
        self._out = OutputQueue()
        self._front = 0  # the channel on screen (or whose header is shown)
        self._timer: float | None = None
        self._after_esc = False
        self._now = 0.0

    # -- the Personality contract -----------------------------------------------------------

    def boot(self, now: float) -> None:
        self._now = now
        self._out.clear()
        self.channels = [Channel(0, "SAC", "Special Administration Console", self._guid("SAC"))]
        self._front = 0
        self._after_esc = False
        self.state = SacState.SAC
        self._show(BANNER)
        self._show("SAC>")
        self._timer = now + self.boot_delay

    def halt(self) -> None:
        self._out.clear()
        self._timer = None
        self.state = SacState.OFF

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        if self.state is not SacState.OFF and self.state is not SacState.PANICKED:
            self._to(0, f"\n{CMD_AVAILABLE}\nSAC>")

    def pop_output(self, limit: int) -> OutputItem | None:
        return self._out.pop(limit)

    def output_buffered(self) -> int:
        return len(self._out)

    def receive_break(self, now: float) -> None:
        """Windows has no SysRq: a break on COM1 changes nothing."""

    def receive_nmi(self, now: float) -> None:
        if self.nmi_crash_dump and self.state not in (SacState.OFF, SacState.PANICKED):
            self._bugcheck(0x80, "NMI_HARDWARE_FAILURE")

    def power_button(self, now: float) -> None:
        if self.state not in (SacState.OFF, SacState.PANICKED):
            self._power_off()

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        for byte in data:
            if self.state in (SacState.OFF, SacState.PANICKED):
                return
            if self._after_esc:
                self._after_esc = False
                if byte == TAB:
                    self._select((self._front + 1) % len(self.channels))
                    continue
                self._feed(ESC)
            if byte == ESC:
                self._after_esc = True
                continue
            self._feed(byte)

    # -- screens ---------------------------------------------------------------------------

    def _to(self, number: int, text: str) -> None:
        """Write ``text`` on channel ``number``'s screen; to the port if it is in front."""
        data = crlf(text)
        channel = self.channels[number]
        lines = data.split(b"\r\n")
        channel.screen[-1] += lines[0]
        channel.screen.extend(lines[1:])
        if number == self._front and self.state is not SacState.SELECTING:
            self._out.write(data)

    def _show(self, text: str) -> None:
        self._to(self._front, text)

    def _redraw(self, channel: Channel) -> None:
        self._out.write(CLEAR + b"\r\n".join(channel.screen))

    def _select(self, number: int) -> None:
        channel = self.channels[number]
        self._front = number
        self.state = SacState.SELECTING
        self._out.write(CLEAR + crlf(self._header(channel)))

    def _header(self, channel: Channel) -> str:
        kind = "VT-UTF8"
        app = CMD_APPLICATION_GUID if channel.number else channel.guid
        return (
            f"Name:                  {channel.name}\n"
            f"Description:           {channel.description}\n"
            f"Type:                  {kind}\n"
            f"Channel GUID:          {channel.guid}\n"
            f"Application Type GUID: {app}\n\n"
            "Press <esc><tab> for next channel.\n"
            "Press <esc><tab>0 to return to the SAC channel.\n"
            "Use any other key to view this channel.\n"
        )

    def _view(self, number: int) -> None:
        channel = self.channels[number]
        self._front = number
        self.state = SacState.SAC if number == 0 else SacState.CHANNEL
        self._redraw(channel)
        if number == 0 and channel.screen[-1] != b"SAC>":
            self._show("\nSAC>" if channel.screen[-1] else "SAC>")
        if number and channel.login is Login.USER and not channel.user:
            self._show(f"{LOGIN_PROMPT}\nUsername: ")

    # -- input ----------------------------------------------------------------------------

    def _feed(self, byte: int) -> None:
        if self.state is SacState.SELECTING:
            if ord("0") <= byte <= ord("9") and byte - ord("0") < len(self.channels):
                number = byte - ord("0")
                if number == 0:
                    self._view(0)
                else:
                    self._select(number)
            else:
                self._view(self._front)
            return
        channel = self.channels[self._front]
        echo, result = channel.editor.feed(byte)
        self._show(echo.decode("utf-8", "replace"))
        if result is None:
            return
        if self.state is SacState.SAC:
            if isinstance(result, str):
                self._sac_command(result.strip())
            else:
                self._show("SAC>")
        else:
            self._channel_input(channel, result)

    def _sac_command(self, line: str) -> None:
        words = line.split()
        name = words[0].lower() if words else ""
        if name in ("?", "help"):
            self._show(HELP)
        elif name == "cmd":
            self._new_cmd_channel()
            return
        elif name == "ch":
            if self._ch(words[1:]):
                return
        elif name == "id":
            self._show(self._id())
        elif name == "i":
            self._show("Net: 10, Ip=10.0.0.4  Subnet=255.255.255.0  Gateway=10.0.0.1\n")
        elif name == "restart":
            self._restart()
            return
        elif name == "shutdown":
            self._power_off()
            return
        elif name == "crashdump":
            self._bugcheck(0xE2, "MANUALLY_INITIATED_CRASH")
            return
        elif name:
            self._show(UNKNOWN_COMMAND + "\n")
        self._show("SAC>")

    def _ch(self, args: list[str]) -> bool:
        """The ``ch`` command; True when it switched the screen away from SAC."""
        if not args:
            rows = "".join(
                f"{c.number} ({'A' if c.active else 'I'}V)  {c.name}\n" for c in self.channels
            )
            self._show(
                'Channel List\n\n(Use "ch -?" for information on using channels)\n\n'
                f"# Status  Channel Name\n{rows}"
            )
            return False
        option = args[0].lower()
        target = self._find(option, args[1:])
        if option == "-?":
            self._show(CH_HELP)
        elif option in ("-si", "-sn", "-ci", "-cn") and target is None:
            self._show(NO_CHANNEL + "\n")
        elif target is not None and option in ("-si", "-sn"):
            self._select(target.number)
            return True
        elif target is not None:
            self._close(target)
        else:
            self._show(UNKNOWN_COMMAND + "\n")
        return False

    def _find(self, option: str, rest: list[str]) -> Channel | None:
        if not rest:
            return None
        for channel in self.channels:
            by_number = option.endswith("i") and rest[0] == str(channel.number)
            by_name = option.endswith("n") and rest[0].lower() == channel.name.lower()
            if (by_number or by_name) and channel.active:
                return channel
        return None

    def _new_cmd_channel(self) -> None:
        number = len(self.channels)
        name = f"Cmd{number:04d}"
        self.channels.append(Channel(number, name, "Command", self._guid(name)))
        self._show(f"{CMD_LAUNCHED}\nSAC>\n{CHANNEL_CREATED}\nChannel: {name}\nSAC>")

    def _close(self, channel: Channel) -> None:
        channel.active = False
        self._to(0, f"\n{CHANNEL_CLOSED}\nChannel: {channel.name}\n")
        if self._front == channel.number:
            self._view(0)
        self._to(0, "SAC>")

    def _id(self) -> str:
        return (
            f"\nComputer Name: {self.hostname}\n"
            f"Computer GUID: {self._guid('computer')}\n"
            "Processor Architecture: x64\n"
            "Build Number: 20348\n"
            "Product: Windows Server Datacenter\n"
            "Applied Service Pack: None\n"
            "Version Number: 10.0\n"
            "Build Type: Multiprocessor Free\n"
            "Product ID: 00454-60000-00001-AA795\n"
        )

    # -- a Command Prompt channel ----------------------------------------------------------

    def _channel_input(self, channel: Channel, result: str | Key) -> None:
        text = result if isinstance(result, str) else ""
        if result is Key.INTERRUPT and channel.login is Login.READY:
            self._to(channel.number, SYSTEM32)
            return
        if channel.login is Login.USER:
            if text.strip():
                channel.user = text.strip()
                channel.login = Login.DOMAIN
                self._to(channel.number, "Domain  : ")
            else:
                self._to(channel.number, "Username: ")
        elif channel.login is Login.DOMAIN:
            channel.domain = text.strip() or self.hostname
            channel.login = Login.PASSWORD
            channel.editor.echo = False
            self._to(channel.number, "Password: ")
        elif channel.login is Login.PASSWORD:
            channel.editor.echo = True
            if text == self.password:
                channel.login = Login.READY
                self._to(
                    channel.number,
                    f"{WINDOWS_VERSION}\n{COPYRIGHT}\n\n{SYSTEM32}",
                )
            else:
                channel.login, channel.user = Login.USER, ""
                self._to(channel.number, f"{LOGIN_FAILED}\n\n{LOGIN_PROMPT}\nUsername: ")
        else:
            self._cmd(channel, text.strip())

    def _cmd(self, channel: Channel, line: str) -> None:
        name, _, rest = line.partition(" ")
        name = name.lower()
        if not name:
            self._to(channel.number, SYSTEM32)
            return
        if name == "exit":
            self._close(channel)
            return
        if name == "cls":
            channel.screen.clear()
            channel.screen.append(b"")
            self._out.write(CLEAR)
            self._to(channel.number, SYSTEM32)
            return
        answers = {
            "hostname": self.hostname,
            "ver": f"\n{WINDOWS_VERSION}",
            "whoami": f"{channel.domain}\\{channel.user}".lower(),
            "dir": self._dir(),
        }
        if name in answers:
            output = answers[name]
        elif name == "echo" or name.startswith("echo."):
            output = rest if rest else ("" if name == "echo." else "ECHO is on.")
        else:
            output = (
                f"'{name}' is not recognized as an internal or external command,\n"
                "operable program or batch file."
            )
        self._to(channel.number, f"{output}\n\n{SYSTEM32}")

    @staticmethod
    def _dir() -> str:
        return (
            " Volume in drive C is Windows\n Volume Serial Number is 6A2B-1F3C\n\n"
            " Directory of C:\\Windows\\system32\n\n"
            "05/08/2021  08:20 AM    <DIR>          .\n"
            "05/08/2021  08:20 AM    <DIR>          ..\n"
            "05/08/2021  08:14 AM           289,792 cmd.exe\n"
            "05/08/2021  08:14 AM            59,904 hostname.exe\n"
            "05/08/2021  08:14 AM            66,560 whoami.exe\n"
            "               3 File(s)        416,256 bytes\n"
            "               2 Dir(s)  114,374,754,304 bytes free"
        )

    # -- power and crashes -----------------------------------------------------------------

    def _restart(self) -> None:
        self._out.emit(GuestEvent.REBOOTED)
        pending, self._out = self._out, OutputQueue()
        self.boot(self._now)
        booted, self._out = self._out, pending
        while (item := booted.pop(1 << 30)) is not None:
            if isinstance(item, bytes):
                self._out.write(item)
            else:
                self._out.emit(item)

    def _power_off(self) -> None:
        self.state = SacState.OFF
        self._timer = None
        self._out.emit(GuestEvent.POWERED_OFF)

    def _bugcheck(self, code: int, name: str) -> None:
        self._out.write(crlf(BUGCHECK.format(code=code, name=name)))
        self.state = SacState.PANICKED
        self._timer = None
        self._out.emit(GuestEvent.PANICKED)

    def _guid(self, what: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{what}.{self.hostname}.serial-console-lab"))
