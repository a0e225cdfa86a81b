"""A client's own virtual environment beside the project's, for tests that run a real
client which must not share the project's packages (``labgrid``, ``az``).

``side_python(name, requirements)`` makes ``.venv-<name>/`` on first use from a pinned
requirements file and makes it anew when that file changes; the test runs the client as
a subprocess, talking to the lab on 127.0.0.1 as a user's would. Two test runs at once
make it once (a lock on the requirements file). The venv has no pip of its own: the
project's pip installs into it (``pip --python``), which spares a download and half the
time. Fails the test, with pip's words, when it cannot.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_TIMEOUT = 600  # a fresh machine downloads the client and its dependencies from PyPI


def _wanted(requirements: Path) -> str:
    """What the stamp must say: the requirements and the interpreter they were made for."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    return f"{digest} {sys.version_info[0]}.{sys.version_info[1]}\n"


def _run(venv: Path, argv: list[str]) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SETUP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"making {venv.name} took over {SETUP_TIMEOUT} s: {' '.join(argv)}")
    if done.returncode != 0:
        pytest.fail(
            f"could not make {venv.name} ({' '.join(argv)} exited {done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-3000:]}\n"
            f"Remove {venv.name}/ and run the tests again; PyPI must be reachable."
        )


def side_python(name: str, requirements: Path) -> Path:
    """The interpreter of ``.venv-<name>/`` with ``requirements`` installed, made first
    when missing or out of date."""
    venv = ROOT / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    with requirements.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _wanted(requirements)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        _run(venv, [sys.executable, "-m", "venv", "--without-pip", str(venv)])
        _run(venv, [
            sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
            "--python", str(python), "install", "-r", str(requirements),
        ])  # fmt: skip
        stamp.write_text(wanted)
    return python
