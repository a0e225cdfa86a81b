"""labgrid, as its users drive a board, on a real QEMU guest through the RFC 2217 door.

labgrid's ``NetworkSerialPort`` points at the VM's ``rfc2217_port``; its ``SerialDriver``
opens it with labgrid's own pyserial (``rfc2217://``), its ``ShellDriver`` answers the
guest's user name and password prompts and runs a command, and a BREAK then ``h`` on the
same port makes the kernel print its SysRq help. labgrid runs in its own environment
(``tests/support/labgrid.py`` says why) as a script, against the lab running here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.testing.timeouts import scale, scaled
from tests.e2e.conftest import GUEST_PASSWORD, require_qemu
from tests.support.lab import running_lab
from tests.support.labgrid import labgrid_python
from tests.support.ports import free_port

pytestmark = pytest.mark.qemu

SCRIPT = Path(__file__).parent / "labgrid" / "login_and_sysrq.py"
BOOT = 90
# A labgrid environment as a user writes one for a lab VM (the port the lab prints).
ENVIRONMENT = """
targets:
  linux-1:
    resources:
      NetworkSerialPort:
        host: 127.0.0.1
        port: {port}
        speed: 115200
    drivers:
      SerialDriver: {{}}
      ShellDriver:
        login_prompt: ' login: '
        username: root
        password: {password}
        prompt: 'root@linux-1:~# '
        login_timeout: {login_timeout}
        await_login_timeout: 1
"""


def labgrid_environment() -> dict[str, str]:
    """This process's environment, less what would point labgrid's interpreter at the
    project's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["LAB_TIMEOUT_SCALE"] = str(scale())
    return env


@pytest.fixture(scope="session")
def labgrid() -> Path:
    """labgrid's interpreter, its environment made on first use."""
    return labgrid_python()


async def test_labgrid_logs_in_runs_a_command_and_sends_sysrq_over_rfc2217(
    tmp_path: Path, labgrid: Path
) -> None:
    require_qemu()
    port = free_port()
    vms = f"""
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "qemu"
rfc2217_port = {port}
"""
    environment = tmp_path / "lab-env.yaml"
    environment.write_text(
        ENVIRONMENT.format(port=port, password=GUEST_PASSWORD, login_timeout=int(scaled(BOOT)))
    )
    async with running_lab(tmp_path, vms=vms) as lab:
        process = await asyncio.create_subprocess_exec(
            str(labgrid), str(SCRIPT), str(environment), "linux-1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=labgrid_environment(),
        )  # fmt: skip
        try:
            async with asyncio.timeout(scaled(BOOT + 30)):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()[-3000:]
        lines = out.decode().splitlines()
        assert lines[0] == "uname -n: linux-1"
        assert lines[1].startswith("sysrq: HELP : loglevel(0-9) reboot(b)"), lines
        doors = lab.runtime.rfc2217
        assert doors is not None
        async with asyncio.timeout(scaled(10)):
            await doors.wait_idle()
        assert lab.runtime.context is not None
        rows = lab.runtime.context.audit.query(user="rfc2217")
    seen = [(r.action, r.outcome) for r in rows]
    assert seen[0] == ("console.connect", "allowed")
    assert ("console.break", "succeeded") in seen
    assert seen[-1] == ("console.disconnect", "succeeded")
