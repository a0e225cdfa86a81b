"""``serial-console recording list|download|play``: the lab's recorded console sessions.

- ``list -g -n [--instance-id]``: the VM's recorded sessions, oldest first (``-o json``:
  the ARM resources as the lab answers them);
- ``download -g -n --session ID [--file PATH]``: the asciicast file (default
  ``<vm>-<session>.cast`` here; ``--file -``: standard output);
- ``play (-g -n --session ID | --file PATH) [--speed X] [--idle-limit S]``: replays it in
  this terminal at the speed it was recorded (``--speed 2``: twice as fast), pauses longer
  than ``--idle-limit`` seconds cut short. Ctrl+C stops it; the terminal is given back as
  it was (its settings, and colours, cursor and screen the recording may have changed).

The files are asciicast v2: ``asciinema play FILE`` and asciinema-player read them too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import termios
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.cli.client import GatewayClient
from gateway.cli.commands import (
    _add,
    _instance_id,
    _machine_options,
    _output_option,
    _print_json,
    _session,
    _subscription_option,
    _url_option,
    format_table,
)
from gateway.cli.errors import CliError
from gateway.recordings import RecordingError, cast

# What a replay may have left on: attributes (the gateway's reverse video), a hidden
# cursor, the alternate screen. Written when a replay ends, however it ends.
TERMINAL_RESET = "\x1b[0m\x1b[?25h\x1b[?1049l"


def register(subparsers: Any) -> None:
    """Add ``recording`` and its actions to ``subparsers``."""
    recording = subparsers.add_parser(
        "recording",
        help="list, download or replay the recorded console sessions of a VM",
        description="Every console session is recorded by the lab (asciicast v2). List a "
        "VM's sessions, download one, or replay it in this terminal.",
    )
    actions = recording.add_subparsers(dest="recording_command", metavar="ACTION", required=True)
    listing = _add(actions, "list", cmd_list, "list the VM's recorded console sessions")
    _machine_options(listing)
    _output_option(listing)
    download = _add(actions, "download", cmd_download, "save a session's recording (.cast)")
    _machine_options(download)
    download.add_argument("--session", required=True, help="the session id (see list)")
    download.add_argument(
        "-f", "--file", help="where to save it (default: VM-SESSION.cast here; - for stdout)"
    )
    play = _add(
        actions,
        "play",
        cmd_play,
        "replay a session in this terminal (Ctrl+C stops)",
        "Replay a recorded session at the speed it was recorded. Give the VM and --session "
        "to fetch it from the lab, or --file for one downloaded before.",
    )
    play.add_argument("-g", "--resource-group", help="name of resource group")
    play.add_argument("-n", "--name", help="name of the Virtual Machine or Virtual Machine "
                      "Scale Set")  # fmt: skip
    play.add_argument("--instance-id", type=_instance_id, help="ID of VMSS instance")
    play.add_argument("--session", help="the session id (see list)")
    play.add_argument("--file", type=Path, help="a recording on this machine instead")
    play.add_argument("--speed", type=_positive, default=1.0, help="2: twice as fast")
    play.add_argument(
        "--idle-limit", type=_positive, help="cut pauses longer than this many seconds"
    )
    _subscription_option(play)
    _url_option(play)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number above 0")
    return number


def _sessions_path(client: GatewayClient, args: argparse.Namespace) -> str:
    return (
        client.machine_path(args.resource_group, args.name, args.instance_id)
        + "/providers/Microsoft.SerialConsole/serialPorts/0/sessions"
    )


async def _fetch(args: argparse.Namespace) -> bytes:
    async with _session(args) as client:
        path = f"{_sessions_path(client, args)}/{args.session}/recording"
        response = await client._request("GET", path)
        return response.content


def _when(iso: str | None) -> str:
    if not iso:
        return "(running)"
    return (
        datetime.fromisoformat(iso.replace("Z", "+00:00"))
        .astimezone()
        .strftime("%Y-%m-%d %H:%M:%S")
    )


async def cmd_list(args: argparse.Namespace) -> int:
    async with _session(args) as client:
        body = await client._json("GET", _sessions_path(client, args))
    sessions = list(body.get("value", [])) if isinstance(body, dict) else []
    if args.output == "json":
        _print_json(sessions)
        return 0
    if not sessions:
        print(f"No recorded sessions on {args.name}: a console session is recorded from "
              "its connect on.")  # fmt: skip
        return 0
    rows = []
    for s in sessions:
        p = s.get("properties", {})
        rows.append([
            str(s.get("name", "")), str(p.get("user", "")), str(p.get("door", "")),
            _when(p.get("startTime")), _when(p.get("endTime")), str(p.get("bytes", "")),
            str(p.get("endReason", "")),
        ])  # fmt: skip
    print(format_table(["Session", "User", "Door", "Start", "End", "Bytes", "Ended"], rows))
    return 0


async def cmd_download(args: argparse.Namespace) -> int:
    body = await _fetch(args)
    if args.file == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return 0
    target = Path(args.file or f"{args.name}-{args.session}.cast")
    try:
        target.write_bytes(body)
    except OSError as err:
        raise CliError(f"cannot write {target}: {err.strerror or err}") from None
    print(f"Saved {len(body)} bytes to {target} (replay: serial-console recording play "
          f"--file {target}, or asciinema play {target})")  # fmt: skip
    return 0


async def cmd_play(args: argparse.Namespace) -> int:
    if args.file is not None:
        try:
            text = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CliError(f"cannot read {args.file}: {err}") from None
    elif args.session and args.resource_group and args.name:
        text = (await _fetch(args)).decode("utf-8", errors="replace")
    else:
        raise CliError(
            "say which recording to play: -g GROUP -n VM --session ID (see recording list), "
            "or --file PATH"
        )
    try:
        recording = cast.parse(text)
    except RecordingError as err:
        raise CliError(f"this is not a recording the lab made: {err}") from None
    await replay(recording, sys.stdout, args.speed, args.idle_limit)
    return 0


async def replay(recording: cast.Cast, out: Any, speed: float, idle_limit: float | None) -> None:
    """Write the recording's output to ``out`` in its own time; the terminal restored at
    the end, and on Ctrl+C (which stops the replay and ends the program with status 130)."""
    with _quiet(out):
        try:
            for delay, code, data in cast.schedule(recording.events, speed, idle_limit):
                if delay > 0:
                    await asyncio.sleep(delay)
                if code == cast.OUTPUT:
                    out.write(data)
                    out.flush()
        finally:
            with contextlib.suppress(OSError, ValueError):
                if _is_terminal(out):  # a file or a pipe keeps the recording's bytes only
                    out.write(TERMINAL_RESET + "\r\n")
                out.flush()


def _is_terminal(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def _quiet(out: Any) -> Iterator[None]:
    """Keys typed during a replay are not echoed into it, and are dropped at its end."""
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        fd = -1
    if fd < 0 or not os.isatty(fd) or not _is_terminal(out):
        yield
        return
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(fd, termios.TCIFLUSH)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
