"""``serial-console lab run``: start the lab, serve it, stop it all on Ctrl+C or SIGTERM.

The first Ctrl+C (or SIGTERM) stops gracefully: the server closes, guests are asked to
shut down, then every machine is deallocated. A second one forces: connections are cut and
machines deallocated at once. Either way no QEMU is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.lab.config import LabConfig, LabConfigError, load_default_lab, load_lab


def register(subparsers: Any) -> None:
    """Add ``lab`` and its subcommands to the ``serial-console`` parser."""
    lab = subparsers.add_parser("lab", help="run the lab (machines, gateway, API)")
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="start every machine and serve the gateway until Ctrl+C",
        description="Start every machine of the lab in parallel and serve the gateway on one "
        "port until Ctrl+C or SIGTERM.",
    )
    run.add_argument("--lab", type=Path, help="lab file (TOML); default: the lab shipped")
    run.add_argument("--host", help="address to listen on (default from the lab file)")
    run.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    run.add_argument("--state-dir", type=Path, help="state folder (default .lab/)")
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_lab(args.lab) if args.lab else load_default_lab()
        config = config.with_overrides(host=args.host, port=args.port, state_dir=args.state_dir)
    except LabConfigError as err:
        print(f"serial-console: {err}", file=sys.stderr)
        return 2
    runner_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_kwargs) as runner:
        return runner.run(run_lab(config))


def _progress(name: str, message: str) -> None:
    print(f"  {name:<16} {message}", flush=True)


async def run_lab(config: LabConfig) -> int:
    """Run the lab until a signal; the exit status."""
    from gateway.lab.runtime import LabRuntime, LabRuntimeError

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    lab: LabRuntime | None = None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if lab is None:
            if signals == 1 and main_task is not None:
                print("\nInterrupted while starting: deallocating the machines...", flush=True)
                main_task.cancel()
        elif signals == 1:
            print(
                "\nStopping: guests are shutting down (press Ctrl+C again to force)...",
                flush=True,
            )
            lab.request_stop()
        elif signals == 2:
            print("\nForcing: deallocating every machine now...", flush=True)
            lab.force_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    print(f"Starting the lab from {config.source}, state in {config.state_dir}/", flush=True)
    try:
        async with LabRuntime(config, on_progress=_progress) as running:
            lab = running
            print(banner(running), flush=True)
            await running.wait_for_stop()
            if running.server_error is not None:
                print(f"serial-console: the server failed: {running.server_error}", file=sys.stderr)
    except LabRuntimeError as err:
        print(f"serial-console: {err}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("Lab stopped before it was up.", flush=True)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("Lab stopped: every machine is deallocated.", flush=True)
    return 0


def banner(lab: Any) -> str:
    """What to print once the lab is up: where it is, what runs, how to get in."""
    config: LabConfig = lab.config
    url = lab.url
    lines = ["", f"Serial Console Lab is up at {url}"]
    if not config.gateway.loopback:
        lines.append(f"  listening on {config.gateway.host}:{lab.port}")
    lines.append(f"  subscription  {config.subscription.id} ({config.subscription.name})")
    for name, machine in lab.machines.items():
        failure = lab.start_failures.get(name)
        lines.append(f"  {name:<16} {machine.power_state}" + (f" ({failure})" if failure else ""))
    for user in config.users:
        roles = ", ".join(f"{a.role} on {_short_scope(a.scope)}" for a in user.roles) or "no role"
        lines.append(f"  user {user.name:<11} {roles}")
    first = config.users[0].name if config.users else "USER"
    lines += [
        "",
        f"Get a token:  curl -s -d grant_type=password -d username={first} "
        f"-d password=PASSWORD {url}/oauth2/token",
        f"API:          {url}/docs  (OpenAPI: {url}/openapi.json)",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


def _short_scope(scope: str) -> str:
    parts = scope.strip("/").split("/")
    if len(parts) <= 2:
        return "the subscription"
    return "/".join(parts[2:]).replace("/providers/Microsoft.Compute", "")
