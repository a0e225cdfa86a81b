"""Fixtures for the control plane and lab runtime tests: a real lab on 127.0.0.1, port 0.

``running_lab(toml, tmp_path, factory)`` is an async context manager that starts a whole
``LabRuntime`` (uvicorn serving the app on a free port, like uvicorn's own
``tests/utils.py``) and yields it with an ``httpx.AsyncClient`` bound to its URL.
``FakeMachine`` (on ``MachineBase``, no PTY, no guest) stands in for a VM where only the
control plane matters; the runtime tests use the emulated guests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.lab.config import LabConfig, MachineSpec, parse_lab
from gateway.lab.runtime import LabRuntime, MachineFactory
from gateway.machines.base import MachineBase, PowerState, RestartOutcome
from tests.support.lab import serve_lab


class FakeMachine(MachineBase):
    """A machine with power states and no guest: what the control plane needs, nothing more."""

    def __init__(self, name: str, os_type: str = "linux") -> None:
        super().__init__(name)
        self.os_type = os_type
        self.calls: list[str] = []

    @property
    def serial_port(self) -> str | None:
        return None

    async def start(self) -> None:
        self.calls.append("start")
        if self._state is PowerState.RUNNING:
            return
        self._set_state(PowerState.STARTING)
        self._set_state(PowerState.RUNNING)

    async def stop(self, timeout: float = 30.0) -> None:
        self.calls.append("stop")
        if self._state is PowerState.STOPPED:
            return
        self._require(PowerState.RUNNING, PowerState.PANICKED, action="stop")
        self._set_state(PowerState.STOPPING)
        self._set_state(PowerState.STOPPED)

    async def restart(self, timeout: float = 30.0) -> RestartOutcome:
        self.calls.append("restart")
        self._require(PowerState.RUNNING, PowerState.PANICKED, action="restart")
        return RestartOutcome.GRACEFUL

    async def reset(self) -> None:
        self.calls.append("reset")
        self._require(PowerState.RUNNING, PowerState.PANICKED, action="reset")

    async def deallocate(self, timeout: float = 10.0) -> None:
        self.calls.append("deallocate")
        self._set_state(PowerState.DEALLOCATED)

    async def send_break(self) -> None:
        self.calls.append("break")

    async def inject_nmi(self) -> None:
        self.calls.append("nmi")


def fake_factory(spec: MachineSpec, run_dir: Path) -> FakeMachine:
    return FakeMachine(spec.name, spec.os)


SUBSCRIPTION = "5e71a1c0-0000-4000-8000-000000000001"

CONTROL_PLANE_LAB = """
[gateway]
port = 0
token_lifetime = 600

[[resource_groups]]
name = "lab-rg"

[[resource_groups]]
name = "other-rg"

[[vms]]
name = "vm-a"
resource_group = "lab-rg"

[[vms]]
name = "vm-b"
resource_group = "lab-rg"

[[vms]]
name = "win-1"
resource_group = "lab-rg"
os = "windows"

[[vms]]
name = "nodiag-1"
resource_group = "lab-rg"
boot_diagnostics = false

[[vms]]
name = "creating-1"
resource_group = "lab-rg"
provisioning_state = "Creating"
boot_diagnostics = false

[[vms]]
name = "portoff-1"
resource_group = "lab-rg"
serial_port_enabled = false

[[vms]]
name = "vm-other"
resource_group = "other-rg"

[[scale_sets]]
name = "web-vmss"
resource_group = "lab-rg"
capacity = 3
latest_model = [0, 1]

[[scale_sets]]
name = "nodiag-vmss"
resource_group = "lab-rg"
capacity = 1
boot_diagnostics = false

[[users]]
name = "alice"
password = "alice-pw"
roles = [{ role = "Virtual Machine Contributor", scope = "resourceGroups/lab-rg" }]

[[users]]
name = "bob"
password = "bob-pw"
roles = [{ role = "Reader", scope = "subscription" }]

[[users]]
name = "carol"
password = "carol-pw"
roles = [{ role = "Owner", scope = "subscription" }]

[[users]]
name = "dave"
password = "dave-pw"
roles = [{ role = "Contributor", scope = "subscription" }]

[[users]]
name = "erin"
password = "erin-pw"
[[users.roles]]
role = "Virtual Machine Contributor"
scope = "resourceGroups/lab-rg/virtualMachines/vm-a"

[[users]]
name = "frank"
password = "frank-pw"
[[users.roles]]
role = "Virtual Machine Contributor"
scope = "resourceGroups/lab-rg/virtualMachineScaleSets/web-vmss"

[[users]]
name = "gina"
password = "gina-pw"
"""


def lab_config(text: str, state_dir: Path) -> LabConfig:
    config = parse_lab(text, source="test-lab.toml", base=state_dir)
    return config.with_overrides(state_dir=state_dir / ".lab")


@dataclass
class RunningLab:
    """A lab served by ``tests.support.lab.serve_lab`` with this folder's password rule
    (``{user}-pw``)."""

    runtime: LabRuntime
    client: httpx.AsyncClient

    async def token(self, user: str, password: str | None = None) -> str:
        """A bearer token for ``user`` (password ``{user}-pw`` unless given)."""
        response = await self.client.post(
            "/oauth2/token",
            data={"grant_type": "password", "username": user, "password": password or f"{user}-pw"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def as_user(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(user)}"}


@asynccontextmanager
async def running_lab(
    text: str, tmp_path: Path, factory: MachineFactory = fake_factory
) -> AsyncIterator[RunningLab]:
    """A started lab (machines from ``factory``) and an HTTP client for it."""
    async with serve_lab(lab_config(text, tmp_path), factory) as handle:
        yield RunningLab(handle.runtime, handle.http)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[RunningLab]:
    """The control-plane test lab (fake machines, every one started)."""
    async with running_lab(CONTROL_PLANE_LAB, tmp_path) as running:
        yield running


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds, checking every 20 ms (for state with no event)."""
    try:
        async with asyncio.timeout(timeout):
            # The boot log and a child's output have no event to await: poll, bounded.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}") from None
