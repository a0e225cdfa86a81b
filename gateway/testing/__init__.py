"""Serial Console Lab for pytest: a lab per run, consoles with expect, transcripts on failure.

The plugin (``gateway.testing.plugin``) is registered as a ``pytest11`` entry point, so
installing the distribution is enough; see docs/pytest.md. What a test imports::

    from gateway.testing import Console, Sac, SerialLab, ExpectTimeout, ConsoleClosed, ConsoleError
"""

from gateway.testing.client import LabClient, LabClientError
from gateway.testing.console import (
    Console,
    ConsoleClosed,
    ConsoleError,
    ExpectTimeout,
    strip_ansi,
)
from gateway.testing.lab import LabProcess, LabStartError
from gateway.testing.plugin import SerialLab
from gateway.testing.sac import Sac

__all__ = [
    "Console",
    "ConsoleClosed",
    "ConsoleError",
    "ExpectTimeout",
    "LabClient",
    "LabClientError",
    "LabProcess",
    "LabStartError",
    "Sac",
    "SerialLab",
    "strip_ansi",
]
