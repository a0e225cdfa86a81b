"""The client commands' arguments, as ``serial-console`` parses them (argv lists, no I/O)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import connect
from gateway.cli.client import SCALE_SET_WITHOUT_INSTANCE, admin_command_url
from gateway.cli.commands import (
    DEFAULT_URL,
    build_parser,
    format_table,
    page_bytes,
    power_state,
    resolve_url,
)
from gateway.cli.credentials import Credentials, CredentialStore
from gateway.cli.errors import GatewayError
from gateway.console import frames, sessions


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_connect_takes_azs_flags() -> None:
    """connect accepts -g/-n/--instance-id like az, plus --watch for read-only."""
    args = parse("connect", "-g", "lab-rg", "-n", "web", "--instance-id", "3", "--watch")
    assert (args.resource_group, args.name, args.instance_id, args.watch) == (
        "lab-rg", "web", "3", True,
    )  # fmt: skip
    args = parse("connect", "--resource-group", "lab-rg", "--name", "linux-1")
    assert (args.instance_id, args.watch, args.url) == (None, False, None)
    assert callable(args.func)


def test_send_commands() -> None:
    """send sysrq needs --input (a key or a sequence); send nmi and reset need only the VM."""
    args = parse("send", "sysrq", "-g", "rg", "-n", "vm", "--input", "REISUB")
    assert (args.send_command, args.input) == ("sysrq", "REISUB")
    assert parse("send", "nmi", "-g", "rg", "-n", "vm").send_command == "nmi"
    assert parse("send", "reset", "-g", "rg", "-n", "vm", "--instance-id", "0").instance_id == "0"


@pytest.mark.parametrize(
    "argv",
    [
        ["connect", "-n", "vm"],  # no resource group
        ["send", "sysrq", "-g", "rg", "-n", "vm"],  # no --input
        ["connect", "-g", "rg", "-n", "vm", "--instance-id", "one"],
        ["boot-log", "-g", "rg", "-n", "vm", "--start", "-5"],
        ["vm", "list", "--output", "yaml"],
        ["send"],
        ["login"],
    ],
)
def test_bad_usage_exits_2_with_a_reason(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or malformed argument is exit status 2 with one line saying which."""
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["connect"], ["send", "sysrq"], ["boot-log"], ["vm", "list"], ["vm", "stop"], ["login"],
     ["logout"], ["enable"], ["disable"], ["send"], ["vm"]],
)  # fmt: skip
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help works on every command and exits 0."""
    with pytest.raises(SystemExit) as exited:
        parse(*argv, "--help")
    assert exited.value.code == 0
    assert "usage: serial-console" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["connect", "-g", "rg", "-n", "vm"], ["send", "nmi", "-g", "rg", "-n", "vm"],
     ["send", "reset", "-g", "rg", "-n", "vm"],
     ["send", "sysrq", "-g", "rg", "-n", "vm", "--input", "h"],
     ["boot-log", "-g", "rg", "-n", "vm"], ["vm", "start", "-g", "rg", "-n", "vm"],
     ["vm", "list"], ["enable"], ["disable"]],
)  # fmt: skip
def test_every_command_that_names_a_resource_takes_subscription(argv: list[str]) -> None:
    """--subscription (az's: a name or an ID) on every command that names a resource."""
    assert parse(*argv).subscription is None
    assert parse(*argv, "--subscription", "My lab").subscription == "My lab"


def test_boot_log_and_vm_options() -> None:
    """boot-log takes --start and --follow; vm commands take --output table|json."""
    args = parse("boot-log", "-g", "rg", "-n", "vm", "--start", "1024", "--follow")
    assert (args.start, args.follow) == (1024, True)
    assert parse("vm", "list").output == "table"
    args = parse("vm", "deallocate", "-g", "rg", "-n", "vm", "-o", "json")
    assert (args.vm_command, args.output) == ("deallocate", "json")


def test_login_password_is_optional() -> None:
    """login prompts when --password is left out (so it is None after parsing)."""
    args = parse("login", "--username", "alice", "--url", "http://127.0.0.1:9000")
    assert (args.username, args.password, args.url) == ("alice", None, "http://127.0.0.1:9000")


def test_url_comes_from_flag_env_last_login_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab is --url, else $SERIAL_CONSOLE_URL, else the last login's, else the default."""
    store = CredentialStore(tmp_path / "c.json")
    monkeypatch.delenv("SERIAL_CONSOLE_URL", raising=False)
    assert resolve_url(parse("enable"), store) == DEFAULT_URL
    store.save(Credentials("http://lab:1/", "a", "t", 1e12, "s"))
    assert resolve_url(parse("enable"), store) == "http://lab:1"
    assert resolve_url(parse("login", "-u", "a"), store) == "http://lab:1"  # the last lab
    monkeypatch.setenv("SERIAL_CONSOLE_URL", "http://env:2")
    assert resolve_url(parse("enable"), store) == "http://env:2"
    assert resolve_url(parse("enable", "--url", "http://flag:3/"), store) == "http://flag:3"


def test_admin_command_url_is_the_session_url_beside_client() -> None:
    """Admin commands go to the console URL with /client replaced, over http(s)."""
    url = "ws://127.0.0.1:8080/n/connector/c1/sessions/abc/client"
    assert admin_command_url(url, "nmi") == (
        "http://127.0.0.1:8080/n/connector/c1/sessions/abc/adminCommand/nmi"
    )
    assert admin_command_url("wss://gw.example/n/connector/ws/sessions/x/client", "sysrq") == (
        "https://gw.example/n/connector/ws/sessions/x/adminCommand/sysrq"
    )
    with pytest.raises(GatewayError):
        admin_command_url("ws://h/elsewhere", "nmi")
    assert "--instance-id" in SCALE_SET_WITHOUT_INSTANCE


def test_vm_table_and_power_state() -> None:
    """vm list shows aligned columns and the power state from the instance view."""
    vm = {"properties": {"instanceView": {"statuses": [{"code": "PowerState/running"}]}}}
    assert power_state(vm) == "running"
    assert power_state({"properties": {}}) == ""
    assert format_table(["Name", "PowerState"], [["linux-1", "running"], ["w", "stopped"]]) == (
        "Name     PowerState\n-------  ----------\nlinux-1  running\nw        stopped"
    )


def test_boot_log_page_bytes() -> None:
    """Boot-log bytes are exact when the gateway sends base64, else the text as UTF-8."""
    assert page_bytes({"contentsBase64": "/wA="}) == b"\xff\x00"
    assert page_bytes({"contents": "é"}) == "é".encode()


def test_wire_constants_match_the_protocol() -> None:
    """The client's copies of the protocol's name, close codes and Azure's texts are exact."""
    assert connect.SUBPROTOCOL == frames.SUBPROTOCOL
    assert connect.CLOSE_TAKEN_OVER == frames.CloseCode.TAKEN_OVER
    assert connect.CLOSE_FELL_BEHIND == frames.CloseCode.FELL_BEHIND
    assert connect.TAKEOVER_TEXT == sessions.TAKEOVER_TEXT
    assert connect.BANNER_TEXT == sessions.BANNER_TEXT
