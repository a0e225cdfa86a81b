"""``serial-console lab run`` as a child process: now the pytest plugin's
``gateway.testing.lab``. Kept for the tests that import it from here."""

from gateway.testing.lab import STOPPED, UP, LabProcess, lab_file

__all__ = ["STOPPED", "UP", "LabProcess", "lab_file"]
