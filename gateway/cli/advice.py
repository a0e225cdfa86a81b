"""What to do after a refusal: ``az serial-console``'s recommendations, for this lab.

``recommendation(code, group, name, instance_id)`` is the line printed under a refusal
whose ARM error ``code`` az follows with advice of its own ("Enable Serial Console with
...", "Use "az vm start" ...", boot diagnostics, ``--instance-id``), in az's words with
this CLI's commands and the machine's own names filled in; "" when az has none. Where az
points at an Azure command the lab has no counterpart for (turning boot diagnostics on),
the advice names what to change in the lab file instead.

The texts of ``send`` are az's too: ``SEND_SUCCESS`` and ``SEND_FAILURE`` per command,
``SYSRQ_WINDOWS`` before a SysRq to a Windows machine, and ``SUBSCRIPTION_NOT_FOUND`` for
a ``--subscription`` that names none of the caller's.
"""

from __future__ import annotations

SCALE_SET_WITHOUT_INSTANCE = (
    "We found that you specified a Virtual Machine Scale Set and not a VM. Use the "
    "--instance-id parameter to select the VMSS instance you want to connect to."
)
SEND_SUCCESS = {
    "sysrq": "Successfully sent SysRq command",
    "nmi": "NMI sent successfully",
    "reset": "Successfully Hard Reset VM",
}
SEND_FAILURE = {
    "sysrq": "Failed to send SysRq command",
    "nmi": "Failed to send NMI",
    "reset": "Failed to Hard Reset VM",
}
SYSRQ_BAD_INPUT = (
    "Failed to send SysRq command. Make sure the input only contains numbers and letters."
)
SYSRQ_WINDOWS = "You can only send a SysRq to a Linux VM."
SUBSCRIPTION_NOT_FOUND = "Subscription '{}' not found. Check the spelling and casing and try again."


def machine_args(group: str, name: str, instance_id: str | None = None) -> str:
    """``-g GROUP -n NAME [--instance-id N]``, as the user would type them."""
    text = f"-g {_quoted(group)} -n {_quoted(name)}"
    return text if instance_id is None else f"{text} --instance-id {instance_id}"


def recommendation(
    code: str, group: str = "", name: str = "", instance_id: str | None = None
) -> str:
    """The advice under a refusal with ARM error ``code`` for the machine named; ""."""
    if code == "SerialConsoleDisabled":
        return 'Enable Serial Console with "serial-console enable".'
    if code == "IsScaleSet":
        return SCALE_SET_WITHOUT_INSTANCE
    if not name:
        return ""
    machine = machine_args(group, name, instance_id)
    if code == "VMNotRunning":
        return f'Use "serial-console vm start {machine}" to start the Virtual Machine.'
    if code == "BootDiagnosticsNotEnabled":
        if instance_id is not None:
            return (
                f"Set boot_diagnostics = true in the lab file's [[scale_sets]] entry of {name} "
                f"and keep instance {instance_id} in its latest_model, then restart the lab."
            )
        return (
            f"Set boot_diagnostics = true in the lab file's [[vms]] entry of {name}, then "
            "restart the lab."
        )
    return ""


def send_failure(command: str, code: str) -> str:
    """az's line when ``send COMMAND`` was refused with ARM error ``code``."""
    if command == "sysrq" and code == "InvalidSysRqCommand":
        return SYSRQ_BAD_INPUT
    return SEND_FAILURE[command]


def _quoted(value: str) -> str:
    return value if value and all(c.isalnum() or c in "-_.()" for c in value) else repr(value)
