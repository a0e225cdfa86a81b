"""labgrid for the tests, in a virtual environment of its own: ``.venv-labgrid/``.

labgrid depends on ``pyserial-labgrid``, a fork of pyserial (RFC 2217 fixes) that installs
its own ``serial`` package over pyserial's; in the project's environment it would replace
the pyserial that the gateway and its tests use. labgrid also registers a pytest plugin
that would load into this suite. So labgrid gets an environment beside the project's
(``tests.support.sidevenv``), made on first use from ``tests/e2e/labgrid/requirements.txt``
(pinned), and a test runs labgrid's side as a script in a subprocess, talking to the lab
on 127.0.0.1 as any labgrid user's code would.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.sidevenv import ROOT, side_python

REQUIREMENTS = ROOT / "tests" / "e2e" / "labgrid" / "requirements.txt"


def labgrid_python() -> Path:
    """The interpreter of ``.venv-labgrid/``, made first when missing or out of date."""
    return side_python("labgrid", REQUIREMENTS)
