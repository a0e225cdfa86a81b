"""The client subcommands of ``serial-console``, mirroring ``az serial-console``.

``register(subparsers)`` adds ``login``, ``logout``, ``connect``, ``send {sysrq,nmi,reset}``,
``enable``, ``disable``, ``boot-log`` and ``vm {list,start,stop,restart,deallocate}`` to
the ``serial-console`` parser; ``build_parser()`` makes a parser with only these (tests).
Each sets ``func`` to ``(args) -> exit status``: 0 done, 1 failed (one line on stderr
saying why, then, as az prints them, its recommendation when it has one:
``gateway.cli.advice``), 2 bad usage (argparse), 130 interrupted.

The lab is found at ``--url``, else ``$SERIAL_CONSOLE_URL``, else the lab of the last
login, else ``DEFAULT_URL``. Every command but ``login`` needs a token from ``login``.
Commands that name a resource take az's ``--subscription`` (an ID or a display name);
without it, the subscription of the last login.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO

from gateway.cli.advice import (
    SEND_SUCCESS,
    SUBSCRIPTION_NOT_FOUND,
    SYSRQ_WINDOWS,
    recommendation,
    send_failure,
)
from gateway.cli.client import POWER_ACTIONS, GatewayClient
from gateway.cli.connect import Target, run_connect
from gateway.cli.credentials import Credentials, CredentialStore, normalize_url
from gateway.cli.errors import CliError, GatewayError, GatewayUnreachable
from gateway.cli.trust import lab_ca_for_login

DEFAULT_URL = "http://127.0.0.1:8400"  # the default lab's port
URL_ENV = "SERIAL_CONSOLE_URL"
FOLLOW_INTERVAL = 1.0
READ_SIZE = 1 << 20

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# -- the parser -----------------------------------------------------------------------------


def _instance_id(value: str) -> str:
    if not value.isdigit() or len(value) > 9:
        raise argparse.ArgumentTypeError(f"{value!r} is not an instance id (0, 1, ...)")
    return value


def _offset(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte offset (a whole number >= 0)")
    return int(value)


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"the lab's URL (default: ${URL_ENV}, else the last login's, else {DEFAULT_URL})",
    )


def _subscription_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscription",
        help="name or ID of subscription (default: the one of the last login)",
    )


def _machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-g", "--resource-group", required=True, help="name of resource group")
    parser.add_argument(
        "-n",
        "--name",
        required=True,
        help="name of the Virtual Machine or Virtual Machine Scale Set",
    )
    parser.add_argument(
        "--instance-id",
        type=_instance_id,
        help="ID of VMSS instance. Not needed when connecting to the serialport of a Virtual "
        "Machine.",
    )
    _subscription_option(parser)
    _url_option(parser)


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )


def _add(
    subparsers: Any, name: str, handler: Handler, summary: str, description: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description or summary
    )
    parser.set_defaults(func=_runner(handler))
    return parser


def register(subparsers: Any) -> None:
    """Add the client commands to ``subparsers`` (from ``add_subparsers``)."""
    login = _add(subparsers, "login", cmd_login, "get a token for a lab user and keep it",
                 "Log in to the lab: the token is kept, owner-only, in "
                 "$XDG_CONFIG_HOME/serial-console/credentials.json.")  # fmt: skip
    login.add_argument("-u", "--username", required=True, help="the lab user")
    login.add_argument("-p", "--password", help="the password (asked for when not given)")
    login.add_argument(
        "--ca-file",
        type=Path,
        help="the lab's CA certificate (a lab run with --tls prints it: <state-dir>/tls/ca.pem); "
        "kept with the token and trusted by every later command. Default for a lab on this "
        "machine: .lab/tls/ca.pem here, if present",
    )
    _url_option(login)

    logout = _add(subparsers, "logout", cmd_logout, "forget the token of a lab")
    _url_option(logout)

    connect = _add(subparsers, "connect", cmd_connect,
                   "connect to Serial Console VM or VMSS Instance",
                   "Connect to the serial port (ttyS0, COM1) of a VM or VMSS instance in this "
                   "terminal, independent of its network. To exit serial console type Ctrl + ] "
                   "and then q. To send an NMI/SysRq/Reset type Ctrl + ] and then n/s/r "
                   "respectively. On a close, Enter reconnects.")  # fmt: skip
    _machine_options(connect)
    connect.add_argument(
        "--watch", action="store_true", help="read-only: watch without taking the console over"
    )

    send = subparsers.add_parser(
        "send",
        help="send NMI/SysRq/Reset to a VM or VMSS Instance",
        description="Send NMI/SysRq/Reset to a VM or VMSS Instance.",
    )
    kinds = send.add_subparsers(dest="send_command", metavar="COMMAND", required=True)
    sysrq = _add(kinds, "sysrq", cmd_send_sysrq,
                 "send SysRq sequence to a VM or VMSS Instance (Linux only)",
                 "A SysRq is a sequence of keys understood by the Linux kernel, which can "
                 "trigger a set of pre-defined actions (for example when the VM is not "
                 "responding). Each key goes as a serial break followed by the key; --input "
                 "takes one key, or a sequence such as REISUB.")  # fmt: skip
    _machine_options(sysrq)
    sysrq.add_argument("--input", required=True, help="the SysRq key, e.g. h, or a sequence")
    nmi = _add(kinds, "nmi", cmd_send_nmi,
               "send a Non-Maskable Interrupt (NMI) to a VM or VMSS Instance",
               "A Non-Maskable Interrupt (NMI) is used in debugging scenarios and is designed "
               "to crash your target Virtual Machine.")  # fmt: skip
    _machine_options(nmi)
    reset = _add(kinds, "reset", cmd_send_reset,
                 'perform a "hard" restart of the VM or VMSS Instance',
                 'This results in a "hard" restart, like powering the computer down, then back '
                 "up again. This can result in data loss in the virtual machine. You should "
                 "only perform this operation if a graceful restart is not effective.")  # fmt: skip
    _machine_options(reset)

    for verb, handler in (("enable", cmd_enable), ("disable", cmd_disable)):
        parser = _add(subparsers, verb, handler,
                      f"{verb} the serial console service for an entire subscription")  # fmt: skip
        _subscription_option(parser)
        _url_option(parser)

    boot_log = _add(subparsers, "boot-log", cmd_boot_log, "print a VM's boot diagnostics log",
                    "Print the VM's serial log (boot diagnostics) as it was written, from byte "
                    "--start (default: the oldest kept).")  # fmt: skip
    _machine_options(boot_log)
    boot_log.add_argument("--start", type=_offset, help="first byte offset to print")
    boot_log.add_argument("--follow", action="store_true", help="keep printing new output")

    vm = subparsers.add_parser("vm", help="list VMs; start, stop, restart, deallocate one",
                               description="The lab's virtual machines.")  # fmt: skip
    actions = vm.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    vm_list = _add(actions, "list", cmd_vm_list, "list the VMs with their power state")
    vm_list.add_argument("-g", "--resource-group", help="only this resource group")
    _output_option(vm_list)
    _subscription_option(vm_list)
    _url_option(vm_list)
    for action in POWER_ACTIONS:
        parser = _add(actions, action, cmd_vm_power, f"{action} a VM (waits until done)")
        _machine_options(parser)
        _output_option(parser)


def build_parser() -> argparse.ArgumentParser:
    """A ``serial-console`` parser with the client commands only."""
    parser = argparse.ArgumentParser(prog="serial-console")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


# -- running a command ----------------------------------------------------------------------


def _runner(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(handler(args))
        except CliError as err:
            advice = err.recommendation or _recommendation(err, args)
            print(f"serial-console: error: {err}", file=sys.stderr)
            if advice:
                print(advice, file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print("serial-console: interrupted", file=sys.stderr)
            return 130
        except EOFError:
            print("serial-console: error: input ended before it was read (no terminal?); "
                  "give the value as an option, e.g. --password", file=sys.stderr)  # fmt: skip
            return 1
        except BrokenPipeError:
            # The reader went away (e.g. `boot-log ... | head`): nothing more to say to it.
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
            return 0

    return run


def resolve_url(args: argparse.Namespace, store: CredentialStore) -> str:
    """The lab's URL: ``--url``, ``$SERIAL_CONSOLE_URL``, the last login's, the default."""
    url = getattr(args, "url", None) or os.environ.get(URL_ENV) or store.default_url()
    return normalize_url(url or DEFAULT_URL)


def _recommendation(err: CliError, args: argparse.Namespace) -> str:
    """az's advice for a refusal of the machine ``args`` name (if any)."""
    if not isinstance(err, GatewayError):
        return ""
    return recommendation(
        err.code,
        getattr(args, "resource_group", None) or "",
        getattr(args, "name", None) or "",
        getattr(args, "instance_id", None),
    )


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace) -> AsyncIterator[GatewayClient]:
    """A client for the lab of ``args`` with the stored token, in the subscription of the
    last login or the one ``--subscription`` names (by ID or name, as az takes it)."""
    store = CredentialStore()
    creds = store.load(resolve_url(args, store))
    async with GatewayClient(
        creds.url, creds.token, creds.subscription_id, ca_pem=creds.ca_pem
    ) as client:
        wanted = getattr(args, "subscription", None)
        if wanted:
            client.subscription_id = await _subscription_id(client, wanted)
        yield client


async def _subscription_id(client: GatewayClient, wanted: str) -> str:
    """The ID of the caller's subscription whose ID or display name is ``wanted``
    (case-insensitive). Raises CliError with az's text when there is none."""
    for subscription in await client.subscriptions():
        sub_id = str(subscription.get("subscriptionId", ""))
        name = str(subscription.get("displayName", ""))
        if wanted.lower() in (sub_id.lower(), name.lower()):
            return sub_id
    raise CliError(SUBSCRIPTION_NOT_FOUND.format(wanted))


def _target(args: argparse.Namespace) -> Target:
    return Target(args.resource_group, args.name, args.instance_id)


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2))


# -- identity -------------------------------------------------------------------------------


async def cmd_login(args: argparse.Namespace) -> int:
    """Get a token, find the subscription, keep both (0600)."""
    store = CredentialStore()
    url = resolve_url(args, store)
    password = args.password
    if password is None:
        password = await asyncio.to_thread(getpass.getpass, f"Password for {args.username}: ")
    ca_pem = lab_ca_for_login(url, args.ca_file)
    async with GatewayClient(url, ca_pem=ca_pem) as anonymous:
        token, expires_in = await anonymous.login(args.username, password)
    async with GatewayClient(url, token, ca_pem=ca_pem) as client:
        subscriptions = await client.subscriptions()
    if not subscriptions:
        raise CliError(
            f"{args.username} holds no role in this lab's subscription: ask its owner for one"
        )
    subscription = subscriptions[0]
    expires_at = time.time() + expires_in
    store.save(
        Credentials(
            url, args.username, token, expires_at, str(subscription["subscriptionId"]), ca_pem
        )
    )
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires_at))
    name = subscription.get("displayName") or subscription["subscriptionId"]
    print(f"Logged in to {url} as {args.username} (subscription {name}; token valid until {until})")
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    store = CredentialStore()
    url = resolve_url(args, store)
    creds = store.remove(url)
    if creds is None:
        print(f"Not logged in to {url}: nothing to forget")
    else:
        print(f"Logged out {creds.username} from {url}")
    return 0


# -- the console ----------------------------------------------------------------------------


async def cmd_connect(args: argparse.Namespace) -> int:
    async with _session(args) as client:
        return await run_connect(client, _target(args), watch=args.watch)


async def _send(args: argparse.Namespace, command: str, parameters: dict[str, str]) -> int:
    """``send COMMAND``: az's checks and texts. A refused ``connect`` is the gateway's
    refusal (with az's advice); a refused command is az's "Failed to ..." line, with the
    gateway's reason under it."""
    target = _target(args)
    async with _session(args) as client:
        if command == "sysrq":
            machine = await client.get_machine(target.group, target.name, target.instance_id)
            if os_type(machine).lower() == "windows":
                raise CliError(SYSRQ_WINDOWS)
        url = await client.connect(target.group, target.name, target.instance_id)
        try:
            await client.admin_command(url, command, parameters)
        except GatewayError as err:
            if isinstance(err, GatewayUnreachable) or err.status == 401:
                raise
            raise GatewayError(
                send_failure(command, err.code),
                status=err.status,
                code=err.code,
                recommendation=str(err),
            ) from err
    print(SEND_SUCCESS[command])
    return 0


def os_type(machine: dict[str, Any]) -> str:
    """``Linux`` or ``Windows``, from a VM body ("" if absent)."""
    profile = machine.get("properties", {}).get("storageProfile", {})
    return str(profile.get("osDisk", {}).get("osType", ""))


async def cmd_send_sysrq(args: argparse.Namespace) -> int:
    return await _send(args, "sysrq", {"SysRqCommand": args.input})


async def cmd_send_nmi(args: argparse.Namespace) -> int:
    return await _send(args, "nmi", {})


async def cmd_send_reset(args: argparse.Namespace) -> int:
    return await _send(args, "reset", {})


async def _set_console(args: argparse.Namespace, enabled: bool) -> int:
    async with _session(args) as client:
        _print_json(await client.set_console(enabled))
    return 0


async def cmd_enable(args: argparse.Namespace) -> int:
    return await _set_console(args, True)


async def cmd_disable(args: argparse.Namespace) -> int:
    return await _set_console(args, False)


# -- boot diagnostics -----------------------------------------------------------------------


def page_bytes(page: dict[str, Any]) -> bytes:
    """The bytes of a serial-log page: ``contentsBase64`` when the gateway sends it (exact
    bytes), else the ``contents`` text as UTF-8."""
    encoded = page.get("contentsBase64")
    if isinstance(encoded, str):
        return base64.b64decode(encoded)
    return str(page.get("contents", "")).encode("utf-8")


async def cmd_boot_log(args: argparse.Namespace) -> int:
    target = _target(args)
    async with _session(args) as client:
        return await print_boot_log(client, target, args.start, args.follow, sys.stdout.buffer)


TERMINAL_QUERIES = re.compile(rb"\x1b\[[0-9;?]*[nc]")  # device status / attributes queries


def _is_terminal(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


async def print_boot_log(
    client: GatewayClient, target: Target, start: int | None, follow: bool, out: BinaryIO
) -> int:
    """Write the serial log from ``start`` to ``out``; with ``follow``, keep going.

    Bytes that rotated out of the log are reported on stderr (once per gap).
    """
    url = await client.boot_log_url(target.group, target.name, target.instance_id)
    offset = start
    while True:
        try:
            page = await client.read_boot_log(url, offset)
        except GatewayError as err:
            if err.status != 403:
                raise
            # The signed URL expired during a long --follow: ask for a new one.
            url = await client.boot_log_url(target.group, target.name, target.instance_id)
            page = await client.read_boot_log(url, offset)
        if page.get("rotated"):
            warning = page.get("warning") or (
                f"Bytes before {page.get('start')} have rotated out of the boot log."
            )
            print(f"serial-console: warning: {warning}", file=sys.stderr)
        data = page_bytes(page)
        if data and _is_terminal(out):
            # On a terminal the guest's old queries (busybox's ESC[6n after each prompt)
            # would be answered again and land at the user's shell prompt.
            data = TERMINAL_QUERIES.sub(b"", data)
        if data:
            out.write(data)
            out.flush()
        offset = int(page["next"])
        if int(page["next"]) - int(page["start"]) >= READ_SIZE:
            continue  # a full page: more is waiting
        if not follow:
            return 0
        await asyncio.sleep(FOLLOW_INTERVAL)  # the log is read by offset (GCP's shape): poll


# -- virtual machines -----------------------------------------------------------------------


def power_state(vm: dict[str, Any]) -> str:
    """``running``, ``stopped``... from a VM body with its instance view ("" if absent)."""
    view = vm.get("properties", {}).get("instanceView") or {}
    for status in view.get("statuses", []):
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return ""


def resource_group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    if "resourcegroups" in lowered:
        index = lowered.index("resourcegroups") + 1
        if index < len(parts):
            return parts[index]
    return ""


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns as az prints them: a header, a dashed rule, left-aligned cells."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


async def cmd_vm_list(args: argparse.Namespace) -> int:
    async with _session(args) as client:
        try:
            vms = await client.list_vms(args.resource_group)
        except GatewayError as err:
            if err.status != 403 or args.resource_group is not None:
                raise
            raise GatewayError(
                f"{err} To list the VMs of one resource group: serial-console vm list -g NAME",
                status=err.status,
                code=err.code,
            ) from err
    if args.output == "json":
        _print_json(vms)
        return 0
    rows = [
        [
            str(vm.get("name", "")),
            resource_group(str(vm.get("id", ""))),
            str(vm.get("location", "")),
            power_state(vm),
            str(
                vm.get("properties", {})
                .get("storageProfile", {})
                .get("osDisk", {})
                .get("osType", "")
            ),
        ]
        for vm in vms
    ]
    print(format_table(["Name", "ResourceGroup", "Location", "PowerState", "OsType"], rows))
    return 0


async def cmd_vm_power(args: argparse.Namespace) -> int:
    target = _target(args)
    async with _session(args) as client:
        body = await client.power(args.vm_command, target.group, target.name, target.instance_id)
    if args.output == "json":
        _print_json(body)
        return 0
    name = target.name if target.instance_id is None else f"{target.name}_{target.instance_id}"
    row = [name, args.vm_command, str(body.get("status", "")), str(body.get("endTime", ""))]
    print(format_table(["Name", "Action", "Status", "EndTime"], [row]))
    return 0
