"""The README's "Your Azure tools against the lab" example, run as written against a TLS
lab: what it prints is what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing.timeouts import scaled
from tests.clients.conftest import ClientLab

pytestmark = pytest.mark.clients

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Your Azure tools against the lab"


def readme_example() -> str:
    """The first python code block of the section."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "the section has no python example"
    return blocks[0]


def test_the_readme_example_runs_against_a_lab(client_lab: ClientLab) -> None:
    env = dict(
        os.environ,
        LAB_URL=client_lab.url,
        LAB_TENANT=client_lab.tenant_id,
        LAB_SUBSCRIPTION=client_lab.subscription_id,
        REQUESTS_CA_BUNDLE=str(client_lab.ca_path),
    )
    done = subprocess.run(
        [sys.executable, "-c", readme_example()],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "serial port 0 enabled: True"
    assert re.fullmatch(r"wss://127\.0\.0\.1:\d+/n/connector/\w+/sessions/[\w-]+/client", lines[1])
    assert lines[2] == "['ProvisioningState/succeeded', 'PowerState/running']"
    assert lines[3].startswith(f"{client_lab.url}/bootdiagnostics/linux-1/serialconsole.log?sv=")
