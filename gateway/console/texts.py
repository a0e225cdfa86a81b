"""The console's words: what every door shows a user, Azure's text where Azure has one.

One place for them, so the websocket (raw and framed), adminCommand and the doors to come
say the same thing, and the CLI can import the pure constants instead of copying them.
"""

from __future__ import annotations

BANNER = "Connected to the serial port of the VM.\r\nIf no login prompt is displayed, press ENTER."
TAKEOVER = (
    "The serial console connection was closed. This can occur if there was an error or "
    "another user connected to the console of this virtual machine. "
    'To reconnect, press "Enter".'
)
# The first frame of a raw connection opened without ``?authorization=``: the client answers
# it with its bearer token (az serial-console waits for it, then sends the token).
TOKEN_CHALLENGE = "Authorization required: send your bearer token."

# Azure's prerequisite texts, word for word.
NOT_PROVISIONED = (
    "Provisioning for this VM has not yet succeeded. Please ensure the VM is fully deployed "
    "and retry the serial console connection."
)
NOT_RUNNING = "Azure Serial Console requires a virtual machine to be running."
BOOT_DIAGNOSTICS_OFF = "Azure Serial Console requires boot diagnostics to be enabled."
CONSOLE_DISABLED = (
    "Azure Serial Console is not enabled for this subscription, contact your subscription "
    "administrator to enable."
)
PORT_DISABLED = (
    "The serial port of this virtual machine is disabled. Enable it with PUT "
    ".../providers/Microsoft.SerialConsole/serialPorts/0 and a body of "
    '{"properties": {"state": "enabled"}}, then retry the serial console connection.'
)
NO_PERMISSION = (
    "You do not have the required permissions to use this VM with the serial console. "
    "Ensure you have at least Virtual Machine Contributor role permissions."
)
READ_ONLY = "this console is read-only (watch): connect as a writer to type or send commands"
SESSION_CLOSED = (
    "this console session is closed (another user took it over, it was idle, or the VM was "
    "deallocated): connect again to send commands"
)
SYSRQ_LINUX_ONLY = "You can only send a SysRq to a Linux VM."

# az's success texts, per command
SUCCESS = {
    "sysrq": "Successfully sent SysRq command",
    "nmi": "NMI sent successfully",
    "reset": "Successfully Hard Reset VM",
    "restart": "Successfully restarted VM",
    "break": "Break sent",
}
INPUT_RECORDED = (
    "This console session is recorded, and so is what you type (passwords too): the lab "
    "file turns input recording on. Its administrators can replay it."
)
RESTART_FORCED = "Successfully restarted VM (the guest did not shut down: it was hard-reset)"


def idle_warning(seconds: int) -> str:
    """What a terminal shows before the idle timeout closes its console."""
    return f"[This console closes in {seconds} seconds without input. Type to stay.]"


def gone(start: int, end: int) -> str:
    """What a terminal shows for offsets the boot log no longer has (rotated, or lost)."""
    return f"[bytes {start} to {end} are gone from the boot log]"
