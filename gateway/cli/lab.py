"""``serial-console lab run``: start the lab, serve it, stop it all on Ctrl+C or SIGTERM.

The first Ctrl+C (or SIGTERM) stops gracefully: the server closes, guests are asked to
shut down, then every machine is deallocated. A second one forces: connections are cut and
machines deallocated at once. Either way no QEMU is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import resource
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.access.users import User, password_weakness
from gateway.lab.config import (
    DEFAULT_GUEST_PASSWORD,
    LabConfig,
    LabConfigError,
    MachineSpec,
    load_default_lab,
    load_lab,
)
from gateway.machines import accel


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
    run.add_argument(
        "--ssh-port",
        type=int,
        help="port of the SSH door (ssh -p PORT USER+GROUP+VM@host); 0 turns it off "
        "(default from the lab file)",
    )
    run.add_argument(
        "--tls",
        action="store_true",
        help="serve https and wss with a certificate from the lab's own CA, made on first use "
        "in <state-dir>/tls/ (the lab file's tls_cert and tls_key win when given)",
    )
    run.add_argument(
        "--emulated",
        action="store_true",
        help="run every VM as an emulated guest (no QEMU needed); without it, a lab with QEMU "
        "VMs on a machine without qemu-system-x86_64 says what to install",
    )
    run.add_argument(
        "--cold",
        action="store_true",
        help="boot every QEMU VM from its firmware or kernel, never from a saved boot (warm "
        "starts: a VM like one booted before starts from that boot's saved state)",
    )
    run.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="when the lab stops, how long its running guests get to power off after the "
        "ACPI power button before they are halted (default 30; 0: halted at once)",
    )
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_lab(args.lab) if args.lab else load_default_lab()
        config = config.with_overrides(
            host=args.host,
            port=args.port,
            state_dir=args.state_dir,
            tls=args.tls,
            ssh_port=args.ssh_port,
            cold=args.cold,
        )
    except LabConfigError as err:
        print(f"serial-console: {err}", file=sys.stderr)
        return 2
    refusal = config.exposure_refusal()
    if refusal is not None:
        # Before anything is started or written: an exposed lab with guessable passwords
        # or plain HTTP never serves a single request.
        print(f"serial-console: {refusal}", file=sys.stderr)
        return 1
    if args.emulated:
        config = emulated_only(config)
    elif _needs_qemu(config) and shutil.which("qemu-system-x86_64") is None:
        print(
            "serial-console: this lab runs QEMU guests and qemu-system-x86_64 is not installed.\n"
            "  Install it:  sudo apt-get install -y qemu-system-x86\n"
            "  Or run every VM as an emulated guest:  serial-console lab run --emulated"
            "  (make run-lab-emulated)",
            file=sys.stderr,
        )
        return 1
    _raise_file_limit()
    runner_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_kwargs) as runner:
        return runner.run(run_lab(config, stop_timeout=max(0.0, args.stop_timeout)))


def _raise_file_limit() -> None:
    """Each VM holds a few descriptors (PTY, QMP, logs) and each client a socket: take the
    hard limit, not the soft 1024 a shell starts with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _needs_qemu(config: LabConfig) -> bool:
    return any(spec.backend == "qemu" for _, _, spec in _machines(config))


def emulated_only(config: LabConfig) -> LabConfig:
    """``config`` with every QEMU (or libvirt) machine replaced by an emulated guest of the
    same OS."""

    def swap(spec: MachineSpec) -> MachineSpec:
        real = spec.backend in ("qemu", "libvirt")
        return dataclasses.replace(spec, backend="emulated", uri=None) if real else spec

    vms = tuple(dataclasses.replace(vm, machine=swap(vm.machine)) for vm in config.vms)
    sets = tuple(
        dataclasses.replace(s, instances=tuple(
            dataclasses.replace(i, machine=swap(i.machine)) for i in s.instances
        ))
        for s in config.scale_sets
    )  # fmt: skip
    return dataclasses.replace(config, vms=vms, scale_sets=sets)


def say(text: str, *, stream: TextIO | None = None) -> None:
    """Print for the person running the lab, best effort: a closed pipe (``| tee`` ended
    by the same Ctrl+C) must never stop the lab from stopping."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream or sys.stdout, flush=True)


def _progress(name: str, message: str) -> None:
    say(f"  {name:<16} {message}")


async def run_lab(config: LabConfig, stop_timeout: float = 30.0) -> int:
    """Run the lab until a signal; the exit status. ``stop_timeout``: how long a graceful
    stop of the guests may take then (0: halted at once)."""
    from gateway.lab.runtime import LabRuntime, LabRuntimeError

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    lab: LabRuntime | None = None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        # Act first, then tell: the telling may fail (see ``say``).
        if lab is None:
            if signals == 1 and main_task is not None:
                main_task.cancel()
                say("\nInterrupted while starting: deallocating the machines...")
        elif signals == 1:
            lab.request_stop()
            say("\nStopping: guests are shutting down (press Ctrl+C again to force)...")
        elif signals == 2:
            lab.force_stop()
            say("\nForcing: deallocating every machine now...")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    say(f"Starting the lab from {config.source}, state in {config.state_dir}/")
    try:
        async with LabRuntime(config, on_progress=_progress, stop_timeout=stop_timeout) as running:
            lab = running
            say(banner(running))
            await running.wait_for_stop()
            if running.server_error is not None:
                say(f"serial-console: the server failed: {running.server_error}", stream=sys.stderr)
    except LabRuntimeError as err:
        say(f"serial-console: {err}", stream=sys.stderr)
        return 1
    except asyncio.CancelledError:
        say("Lab stopped before it was up.")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say("Lab stopped: every machine is deallocated.")
    return 0


def banner(lab: Any) -> str:
    """What to print once the lab is up: where it is, what runs, who may log in, and three
    commands to copy."""
    config: LabConfig = lab.config
    url = lab.url
    lines = ["", f"Serial Console Lab is up at {url}"]
    if not config.gateway.loopback:
        lines.append(f"  listening on {config.gateway.host}:{lab.port}")
    ca = lab.ca_path
    if ca is not None:
        lines.append(f"  TLS by the lab's CA {ca}; to trust it in other programs:")
        lines.append(f"    export REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca}")
    ssh = getattr(lab, "ssh", None)
    host = url.split("://", 1)[-1].rsplit(":", 1)[0]
    if ssh is not None:
        lines.append(f"  SSH consoles on port {ssh.port}: ssh -p {ssh.port} USER+GROUP+VM@{host}")
        lines.append(f"    host key fingerprint {ssh.fingerprint} (ED25519)")
    lines.append(f"  subscription  {config.subscription.id} ({config.subscription.name})")
    lines.append("")
    lines.append(f"  {'VM':<16} {'group':<10} {'os':<8} {'backend':<9} {'gen':<4} {'ssh':<6} state")
    ssh_ports = []
    for group, name, spec in _machines(config):
        failure = lab.start_failures.get(spec.name)
        machine = lab.machines[spec.name]
        generation = getattr(machine, "generation", None)
        ssh_port = getattr(machine, "ssh_port", None)
        if ssh_port:
            ssh_ports.append((name, ssh_port))
        lines.append(
            f"  {name:<16} {group:<10} {spec.os:<8} {spec.backend:<9} "
            f"{generation or '-'!s:<4} {ssh_port or '-'!s:<6} {machine.power_state}"
            + (f" ({failure})" if failure else "")
        )
    if ssh_ports:
        name, port = ssh_ports[0]
        lines.append(
            f"  Disk VMs' own sshd on 127.0.0.1 (their NIC reaches nothing else): "
            f"ssh -p {port} root@127.0.0.1   # {name}"
        )
    lines += _rfc2217_lines(lab)
    names = max([len("user"), *(len(u.name) for u in config.users)])
    shown = {u.name: _shown_password(u) for u in config.users}
    secrets = max([len("password"), *(len(p) for p in shown.values())])
    lines += ["", f"  {'user':<{names}}  {'password':<{secrets}}  role"]
    for user in config.users:
        roles = ", ".join(f"{a.role} on {_short_scope(a.scope)}" for a in user.roles) or "no role"
        lines.append(f"  {user.name:<{names}}  {shown[user.name]:<{secrets}}  {roles}")
    guests = [(spec.os, spec.password) for _, _, spec in _machines(config)]
    linux = sorted({_shown_guest(p) for os_type, p in guests if os_type == "linux"})
    windows = sorted({_shown_guest(p) for os_type, p in guests if os_type == "windows"})
    if linux:
        lines.append(f"  Linux guests: root / {', '.join(linux)}")
    if windows:
        lines.append(f"  Windows SAC (ch -si 1): Administrator / {', '.join(windows)}")
    if _needs_qemu(config) and accel.last_choice is not None:
        lines.append(f"  QEMU accelerator: {accel.last_choice[0]} ({accel.last_choice[1]})")
    weak = next((u for u in config.users if u.password and password_weakness(u)), None)
    target = _first_linux_vm(config)
    if weak is not None and target is not None:
        group, vm = target
        trust = f" --ca-file {ca}" if ca is not None else ""
        lines += [
            "",
            "In another terminal (the CLI is .venv/bin/serial-console):",
            f"  serial-console login --url {url}{trust} --username {weak.name} "
            f"--password {weak.password}",
            f"  serial-console connect -g {group} -n {vm}      # Ctrl+] for NMI, SysRq, reset",
            f"  serial-console send sysrq -g {group} -n {vm} --input h",
        ]
        if ssh is not None:
            lines.append(
                f"  ssh -p {ssh.port} {weak.name}+{group}+{vm}@{host}"
                "      # ~B then a key: SysRq; Ctrl+] for the menu"
            )
    lines += [
        "",
        f"Portal: {url}/ (Azure's Serial Console pane in your browser)",
        f"API: {url}/docs (OpenAPI: {url}/openapi.json)",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


def _rfc2217_lines(lab: Any) -> list[str]:
    """The RFC 2217 doors open (gateway.rfc2217), a few at most: no authentication, say so."""
    doors = getattr(lab, "rfc2217", None)
    listening = doors.listening if doors is not None else []
    if not listening:
        return []
    lines = ["", "  RFC 2217 serial ports (no authentication; this machine only):"]
    for spec in listening[:RFC2217_SHOWN]:
        lines.append(f"    rfc2217://127.0.0.1:{spec.port:<6} {spec.vm.name} ({spec.role})")
    if len(listening) > RFC2217_SHOWN:
        lines.append(f"    ... and {len(listening) - RFC2217_SHOWN} more (see the lab file)")
    return lines


RFC2217_SHOWN = 8


def _machines(config: LabConfig) -> list[tuple[str, str, MachineSpec]]:
    """(group, name as the CLI names it, spec) of every VM and scale-set instance."""
    rows = [(vm.resource_group, vm.name, vm.machine) for vm in config.vms]
    for vmss in config.scale_sets:
        rows += [
            (vmss.resource_group, f"{vmss.name} #{i.instance_id}", i.machine)
            for i in vmss.instances
        ]
    return rows


def _first_linux_vm(config: LabConfig) -> tuple[str, str] | None:
    """A VM a first console is best tried on: Linux, QEMU if any, boot diagnostics on."""
    usable = [vm for vm in config.vms if vm.machine.os == "linux" and vm.boot_diagnostics]
    usable.sort(key=lambda vm: vm.machine.backend != "qemu")
    return (usable[0].resource_group, usable[0].name) if usable else None


def _shown_password(user: User) -> str:
    """A demo password (guessable by design, as the default lab's) is printed to help; a
    real one never is: the banner often ends up in a terminal log or a journal."""
    if user.password is None:
        return "(SSH key only)"
    return user.password if password_weakness(user) else "(in the lab file)"


def _shown_guest(password: str) -> str:
    return password if password == DEFAULT_GUEST_PASSWORD else "(in the lab file)"


def _short_scope(scope: str) -> str:
    parts = scope.strip("/").split("/")
    if len(parts) <= 2:
        return "the subscription"
    return "/".join(parts[2:]).replace("/providers/Microsoft.Compute", "")
