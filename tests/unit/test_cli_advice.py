"""az's recommendations after a refusal and its texts for send, with this CLI's commands."""

from __future__ import annotations

import pytest

from gateway.cli.advice import machine_args, recommendation, send_failure


@pytest.mark.parametrize(
    ("code", "instance", "advice"),
    [
        ("SerialConsoleDisabled", None, 'Enable Serial Console with "serial-console enable".'),
        (
            "VMNotRunning",
            None,
            'Use "serial-console vm start -g lab-rg -n web" to start the Virtual Machine.',
        ),
        (
            "VMNotRunning",
            "2",
            'Use "serial-console vm start -g lab-rg -n web --instance-id 2" to start the '
            "Virtual Machine.",
        ),
        (
            "BootDiagnosticsNotEnabled",
            None,
            "Set boot_diagnostics = true in the lab file's [[vms]] entry of web, then restart "
            "the lab.",
        ),
        (
            "BootDiagnosticsNotEnabled",
            "1",
            "Set boot_diagnostics = true in the lab file's [[scale_sets]] entry of web and "
            "keep instance 1 in its latest_model, then restart the lab.",
        ),
        (
            "IsScaleSet",
            None,
            "We found that you specified a Virtual Machine Scale Set and not a VM. Use the "
            "--instance-id parameter to select the VMSS instance you want to connect to.",
        ),
        ("AuthorizationFailed", None, ""),
    ],
)
def test_refusals_get_azs_recommendation(code: str, instance: str | None, advice: str) -> None:
    """Where az follows a refusal with advice, the CLI does too, naming the machine."""
    assert recommendation(code, "lab-rg", "web", instance) == advice


def test_names_that_need_quotes_are_quoted() -> None:
    """A name a shell would split is quoted in the command to copy."""
    assert machine_args("my rg", "vm") == "-g 'my rg' -n vm"


def test_send_failures_are_azs_lines() -> None:
    """az's "Failed to ..." per command; a bad SysRq input gets az's longer line."""
    assert send_failure("nmi", "Conflict") == "Failed to send NMI"
    assert send_failure("reset", "") == "Failed to Hard Reset VM"
    assert send_failure("sysrq", "SysRqNotSupported") == "Failed to send SysRq command"
    assert send_failure("sysrq", "InvalidSysRqCommand") == (
        "Failed to send SysRq command. Make sure the input only contains numbers and letters."
    )
