"""A labgrid user's script: through a VM's RFC 2217 door, log in, run a command, then send
a serial BREAK and ``h`` (the kernel's SysRq help).

Run it with labgrid's interpreter (``.venv-labgrid``, see ``tests/support/labgrid.py``)::

    python login_and_sysrq.py ENV.yaml TARGET

``ENV.yaml`` is a labgrid environment whose ``TARGET`` has a ``NetworkSerialPort`` (the
VM's ``rfc2217_port``), a ``SerialDriver`` and a ``ShellDriver`` that logs in. It prints
what it saw, one line each (``uname -n: NAME``, then the kernel's ``sysrq: HELP : ...``
line) and exits 0; on any failure labgrid's own error ends it with status 1.
"""

from __future__ import annotations

import os
import sys

from labgrid import Environment

SCALE = float(os.environ.get("LAB_TIMEOUT_SCALE", "1"))


def main(config: str, name: str) -> None:
    target = Environment(config_file=config).get_target(name)
    try:
        shell = target.get_driver("ShellDriver")  # opens rfc2217://, answers the prompts
        print(f"uname -n: {shell.run_check('uname -n')[0]}", flush=True)
        console = target.get_driver("SerialDriver")
        console.serial.send_break(0.25)  # pyserial's RFC 2217 client: SET-CONTROL on, off
        console.write(b"h")
        # the whole line, to its end: the pattern alone would match whatever part of it had
        # come when pexpect looked
        _, _, match, _ = console.expect(rb"(sysrq: HELP : [^\r\n]*)\r?\n", timeout=10 * SCALE)
        print(match.group(1).decode(), flush=True)
    finally:
        target.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:3])
