"""labgrid for the tests, in a virtual environment of its own: ``.venv-labgrid/``.

labgrid depends on ``pyserial-labgrid``, a fork of pyserial (RFC 2217 fixes) that installs
its own ``serial`` package over pyserial's; in the project's environment it would replace
the pyserial that the gateway and its tests use. labgrid also registers a pytest plugin
that would load into this suite. So labgrid gets an environment beside the project's,
made on first use from ``tests/e2e/labgrid/requirements.txt`` (pinned) and remade when
that file changes, and a test runs labgrid's side as a script in a subprocess, talking to
the lab on 127.0.0.1 as any labgrid user's code would.
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
VENV = ROOT / ".venv-labgrid"
REQUIREMENTS = ROOT / "tests" / "e2e" / "labgrid" / "requirements.txt"
STAMP = VENV / ".installed"
SETUP_TIMEOUT = 600  # a fresh machine downloads labgrid and its dependencies from PyPI


def _wanted() -> str:
    """What the stamp must say: the requirements and the interpreter they were made for."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{digest} {sys.version_info[0]}.{sys.version_info[1]}\n"


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SETUP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"making {VENV.name} took over {SETUP_TIMEOUT} s: {' '.join(argv)}")
    if done.returncode != 0:
        pytest.fail(
            f"could not make {VENV.name} for the labgrid tests ({' '.join(argv)} exited "
            f"{done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}\n"
            f"Remove {VENV.name}/ and run the tests again; PyPI must be reachable."
        )


def labgrid_python() -> Path:
    """The interpreter of ``.venv-labgrid/``, made first when missing or out of date.

    Two test runs at once make it once (a lock on the requirements file). The venv has no
    pip of its own: the project's pip installs into it (``pip --python``), which spares
    a download and half the time. Fails the test, with pip's words, when it cannot."""
    python = VENV / "bin" / "python"
    with REQUIREMENTS.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _wanted()
        if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        _run([sys.executable, "-m", "venv", "--without-pip", str(VENV)])
        _run([
            sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
            "--python", str(python), "install", "-r", str(REQUIREMENTS),
        ])  # fmt: skip
        STAMP.write_text(wanted)
    return python
