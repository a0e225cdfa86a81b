"""Microsoft's ``az`` (azure-cli from PyPI) against a lab, as a person runs it.

az lives in ``.venv-az/`` (``tests.support.sidevenv``: azure-cli pins azure-* packages of
its own). Each ``Az`` has its own configuration folder (``AZURE_CONFIG_DIR``: clouds,
login, tokens), trusts the lab's CA (``REQUESTS_CA_BUNDLE``, as az's docs say for a
private CA) and sends no telemetry. ``az(...)`` runs one command and returns its JSON
output (``-o json``); a command that fails fails the test with az's own words.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from gateway.testing.timeouts import scaled
from tests.support.sidevenv import ROOT, side_python

REQUIREMENTS = ROOT / "tests" / "clients" / "az" / "requirements.txt"


def az_python() -> Path:
    """The interpreter of ``.venv-az/``, made first when missing or out of date."""
    return side_python("az", REQUIREMENTS)


class AzFailed(AssertionError):
    """An az command exited with an error; the message has its standard error."""


class Az:
    def __init__(self, config_dir: Path, ca_path: Path) -> None:
        self.python = az_python()
        config_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PYTEST"))},
            "AZURE_CONFIG_DIR": str(config_dir),
            "REQUESTS_CA_BUNDLE": str(ca_path),
            "AZURE_CORE_COLLECT_TELEMETRY": "no",
            "AZURE_CORE_NO_COLOR": "true",
            "AZURE_CORE_SURVEY_MESSAGE": "false",
        }

    def __call__(self, *args: str, timeout: float = 120) -> Any:
        """``az ARGS -o json``: its parsed output (None when it printed nothing)."""
        done = self.run(*args, "-o", "json", timeout=timeout)
        if done.returncode != 0:
            raise AzFailed(f"az {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "azure.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=scaled(timeout), check=False,
        )  # fmt: skip
