"""A lab whose VM runs on libvirt, as a user's pytest suite meets it through the lab's
plugin: Azure's connect, the framed websocket console, SysRq, the instance view and the
boot log serve it as they serve a QEMU guest (nothing above the machine knows the backend).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_pytest_plugin import run_suite, suite
from tests.support.libvirtd import Libvirtd

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

LIBVIRT_LAB = """
state_dir = "state"

[gateway]
port = 0
ssh_port = 0

[[resource_groups]]
name = "lab-rg"
location = "local"

[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "libvirt"
uri = "qemu:///system"

[[users]]
name = "alice"
password = "alice"
roles = [{ role = "Virtual Machine Contributor", scope = "resourceGroups/lab-rg" }]
"""

USER_SUITE = """
def test_linux_1_on_libvirt(console, serial_lab):
    vm = console("linux-1")
    vm.wait_for_boot()
    vm.login()
    assert vm.run("hostname") == ("linux-1\\n", 0)
    assert "Successfully sent SysRq command" in vm.sysrq("h")
    vm.expect(r"sysrq: HELP : loglevel\\(0-9\\)")
    assert vm.power_state == "running"
    log = vm.read_boot_log()
    assert log.startswith("[    0.000000] Linux version "), log[:200]
    assert "linux-1 login: " in log
"""


def test_a_libvirt_vm_is_served_like_any_other(libvirtd: Libvirtd, tmp_path: Path) -> None:
    """A suite run with ``--lab-file`` on a lab of one libvirt VM (as alice, its one user):
    linux-1 boots to its login prompt, logs in, answers a command, prints SysRq help on
    ``sysrq("h")``, reports itself running, and its boot log starts at the kernel's first
    line."""
    folder = suite(tmp_path / "suite", USER_SUITE)
    (folder / "lab.toml").write_text(LIBVIRT_LAB)
    result = run_suite(folder, "--lab-file", "lab.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
