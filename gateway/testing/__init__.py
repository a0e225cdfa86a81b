"""Serial Console Lab for pytest: a lab per run, consoles with expect, transcripts on failure.

The plugin (``gateway.testing.plugin``) is registered as a ``pytest11`` entry point, so
installing the distribution is enough; see docs/pytest.md. What a test imports::

    from gateway.testing import Console, Sac, SerialLab, ExpectTimeout, ConsoleClosed, ConsoleError
    from gateway.testing import AT_END, echoed       # kernel lines between a guest's bytes
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
from gateway.testing.patterns import AT_END, KERNEL_LINES, echoed, without_kernel_lines
from gateway.testing.plugin import SerialLab
from gateway.testing.sac import Sac

__all__ = [
    "AT_END",
    "KERNEL_LINES",
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
    "echoed",
    "strip_ansi",
    "without_kernel_lines",
]
