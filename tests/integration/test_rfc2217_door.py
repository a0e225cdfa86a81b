"""The RFC 2217 door over a real lab on loopback, with emulated guests, driven by pyserial's
own RFC 2217 client (``rfc2217://``), as labgrid and other serial tools use it.

What its user sees: the console's bytes, a login and a command, line settings accepted, a
BREAK that is the guest's SysRq, a watcher that cannot type, every connection in the audit
log; and a lab file that asks for a wrong door is told what to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial

from gateway.cli.lab import banner
from gateway.console import texts
from gateway.console.frames import CloseCode
from gateway.console.sessions import TAKEOVER_TEXT
from gateway.lab.config import LabConfigError, parse_lab
from gateway.lab.runtime import LabRuntimeError
from gateway.rfc2217 import door
from gateway.testing.timeouts import scaled
from tests.support.console import Transcript
from tests.support.lab import LabHandle, lab_toml, running_lab
from tests.support.ports import free_port, free_ports
from tests.support.wsclient import login, open_console

# pyserial's client thread calls setDaemon()/setName(): its own business, not this lab's.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217")

READ_POLL = 0.1  # pyserial's read timeout: how often a waiting read looks at its deadline


class SerialClient(Transcript):
    """pyserial's blocking RFC 2217 client, driven from the event loop through threads; every
    call is bounded."""

    default_timeout = 10.0

    def __init__(self, port: serial.SerialBase) -> None:
        super().__init__()
        self.port = port

    @classmethod
    async def open(cls, port: int) -> SerialClient:
        url = f"rfc2217://127.0.0.1:{port}"
        return cls(await asyncio.to_thread(serial.serial_for_url, url, timeout=READ_POLL))

    async def _more(self) -> None:
        # a read returns after READ_POLL with what came, so a timed-out wait ends soon
        self.feed(await asyncio.to_thread(self.port.read, max(1, self.port.in_waiting)))

    async def type(self, text: str) -> None:
        await asyncio.to_thread(self.port.write, text.encode())

    async def send_break(self) -> None:
        await asyncio.to_thread(self.port.send_break, 0.05)

    async def close(self) -> None:
        await asyncio.to_thread(self.port.close)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[LabHandle, int, int]]:
    writer_port, watcher_port = free_port(), free_port()
    vms = f"""
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"
rfc2217_port = {writer_port}

[[vms]]
name = "linux-2"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"
rfc2217_port = {watcher_port}
rfc2217_role = "watcher"
"""
    async with running_lab(tmp_path, vms=vms) as handle:
        yield handle, writer_port, watcher_port


async def test_a_writer_logs_in_sets_the_line_sends_a_break_and_is_audited(
    lab: tuple[LabHandle, int, int],
) -> None:
    handle, port, _ = lab
    client = await SerialClient.open(port)
    try:
        await client.type("\r")
        await client.expect(r"login: ")
        await client.type("root\r")
        await client.expect(r"Password: ")
        await client.type("serial-lab\r")
        await client.expect(r"# ")
        await client.type("echo from-rfc2217\r")
        await client.expect(r"\r\nfrom-rfc2217\r\n")

        await asyncio.to_thread(setattr, client.port, "baudrate", 9600)  # the server acks it
        assert client.port.baudrate == 9600
        doors = handle.runtime.rfc2217
        assert doors is not None
        assert [c.line.baudrate for c in doors.clients] == [9600]  # recorded, not applied

        await client.send_break()
        await client.type("h")
        await client.expect(r"sysrq: HELP : loglevel\(0-9\)")
    finally:
        await client.close()
    async with asyncio.timeout(scaled(10)):
        await doors.wait_idle()
    assert handle.runtime.context is not None
    rows = handle.runtime.context.audit.query(user="rfc2217")
    vm_id = handle.runtime.context.inventory.by_machine_name("linux-1").id  # type: ignore[union-attr]
    seen = [(r.action, r.outcome) for r in rows]
    assert seen[0] == ("console.connect", "allowed")
    assert ("console.break", "succeeded") in seen
    assert seen[-1] == ("console.disconnect", "succeeded")
    assert {r.target for r in rows} == {vm_id}
    assert {r.address for r in rows} == {"127.0.0.1"}


async def test_a_watcher_sees_the_console_and_cannot_type_or_break(
    lab: tuple[LabHandle, int, int],
) -> None:
    handle, _, port = lab
    client = await SerialClient.open(port)
    url, token = await handle.session_url("alice", "linux-2")
    writer = await open_console(url, token)  # a writer by the websocket door
    try:
        await login(writer)  # pyserial empties its input at open: this is what it sees first
        await client.expect(r"login: ")
        await client.type("reboot\r")
        await client.expect(re.escape(texts.READ_ONLY))
        await client.send_break()
        await client.expect(re.escape(texts.READ_ONLY))
        await writer.type("echo from-the-writer\r")
        await client.expect(r"\r\nfrom-the-writer\r\n")
    finally:
        await client.close()
        await writer.ws.close()
    hub = handle.runtime.hubs["linux-2"]
    assert b"reboot" not in hub.bootlog.read(0).contents
    assert handle.runtime.context is not None
    denied = handle.runtime.context.audit.query(user="rfc2217", action="console.break")
    assert [r.outcome for r in denied] == ["denied"]


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ('rfc2217_role = "watcher"', "rfc2217_role: expected rfc2217_port beside it"),
        ('rfc2217_port = 4000\nrfc2217_role = "reader"', "expected one of writer, watcher"),
        ("rfc2217_port = 70000", "rfc2217_port: expected an integer in 1..65535"),
    ],
)
def test_a_wrong_door_in_the_lab_file_says_what_to_write(
    tmp_path: Path, keys: str, words: str
) -> None:
    vms = f'[[vms]]\nname = "linux-1"\nresource_group = "lab-rg"\n{keys}\n'
    with pytest.raises(LabConfigError, match=re.escape(words)):
        parse_lab(lab_toml(tmp_path, vms=vms), source="lab.toml", base=tmp_path)


def test_scale_set_instances_get_one_port_each_and_no_port_twice(tmp_path: Path) -> None:
    vms = """
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
rfc2217_port = 4002

[[scale_sets]]
name = "web"
resource_group = "lab-rg"
capacity = 3
rfc2217_port = 4000
"""
    with pytest.raises(LabConfigError, match=r"rfc2217_port .* '4002' is used twice"):
        parse_lab(lab_toml(tmp_path, vms=vms), source="lab.toml", base=tmp_path)
    config = parse_lab(
        lab_toml(tmp_path, vms=vms.replace("4002", "4003")), source="lab.toml", base=tmp_path
    )
    doors = [i.rfc2217 for i in config.scale_sets[0].instances]
    assert [(d.port, d.role) for d in doors if d] == [(4000, "writer"), (4001, "writer"),
                                                      (4002, "writer")]  # fmt: skip


async def test_a_writer_takes_over_across_doors_and_each_side_is_told(
    lab: tuple[LabHandle, int, int],
) -> None:
    """Azure's one-writer rule holds between the websocket and RFC 2217 doors."""
    handle, port, _ = lab
    url, token = await handle.session_url("alice", "linux-1")
    websocket = await open_console(url, token)
    await login(websocket)
    client = await SerialClient.open(port)  # takes over from alice
    try:
        code, _ = await websocket.closed()
        assert code == CloseCode.TAKEN_OVER
        assert TAKEOVER_TEXT.encode() in websocket.data
        url, token = await handle.session_url("alice", "linux-1")
        again = await open_console(url, token)  # and alice takes it back
        try:
            await client.expect(re.escape(TAKEOVER_TEXT))
            writer = handle.runtime.hubs["linux-1"].writer
            assert writer is not None
            assert writer.user == "alice"
        finally:
            await again.ws.close()
    finally:
        await client.close()


async def test_a_console_the_lab_turned_off_is_refused_in_azures_words(
    lab: tuple[LabHandle, int, int],
) -> None:
    handle, port, _ = lab
    assert handle.runtime.context is not None
    handle.runtime.context.console.set_disabled(True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(scaled(10)):
            said = await reader.readuntil(texts.CONSOLE_DISABLED.encode() + b"\r\n")
            writer.close()  # the door waits for the client to hang up, then closes too
            assert await reader.read() == b""
    finally:
        writer.close()
    assert said.endswith(texts.CONSOLE_DISABLED.encode() + b"\r\n")
    rows = handle.runtime.context.audit.query(user="rfc2217", action="console.connect")
    assert [(r.outcome, r.address) for r in rows] == [("denied", "127.0.0.1")]


async def test_a_vm_that_is_not_running_is_refused_as_the_other_doors_refuse_it(
    lab: tuple[LabHandle, int, int],
) -> None:
    """Azure's checks are every door's: a stopped VM's port says Azure's "requires a
    virtual machine to be running", as the websocket's connect and SSH do."""
    handle, port, _ = lab
    await handle.runtime.machines["linux-1"].stop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(scaled(10)):
            said = await reader.readuntil(texts.NOT_RUNNING.encode() + b"\r\n")
    finally:
        writer.close()
    assert said.endswith(texts.NOT_RUNNING.encode() + b"\r\n")
    assert handle.runtime.context is not None
    rows = handle.runtime.context.audit.query(user="rfc2217", action="console.connect")
    assert [r.outcome for r in rows] == ["denied"]
    assert texts.NOT_RUNNING in rows[0].detail


async def test_a_power_change_is_a_line_as_on_every_text_door(
    lab: tuple[LabHandle, int, int],
) -> None:
    """A hard reset while the client reads: the line SSH and az's raw client show too."""
    handle, port, _ = lab
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r")
        async with asyncio.timeout(scaled(10)):
            await reader.readuntil(b"login: ")
            await handle.runtime.machines["linux-1"].reset()
            said = await reader.readuntil(b"[VM reset: hard reset]\r\n")
    finally:
        writer.close()
    assert said.endswith(b"\r\n[VM reset: hard reset]\r\n")  # a line of its own


async def test_telnets_own_break_is_the_guests_sysrq(lab: tuple[LabHandle, int, int]) -> None:
    """A plain telnet client (no RFC 2217): ``IAC BRK`` then ``h`` is SysRq help."""
    _, port, _ = lab
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\xff\xf3h")  # IAC BRK, then the SysRq key
        seen = bytearray()
        async with asyncio.timeout(scaled(10)):
            while b"sysrq: HELP" not in seen:
                chunk = await reader.read(4096)
                assert chunk, f"closed before the SysRq help; got {bytes(seen)[-300:]!r}"
                seen += chunk
    finally:
        writer.close()


async def test_the_banner_lists_the_doors_and_says_they_have_no_authentication(
    lab: tuple[LabHandle, int, int],
) -> None:
    handle, writer_port, watcher_port = lab
    shown = banner(handle.runtime)
    assert "RFC 2217 serial ports (no authentication; this machine only):" in shown
    assert f"rfc2217://127.0.0.1:{writer_port:<6} linux-1 (writer)" in shown
    assert f"rfc2217://127.0.0.1:{watcher_port:<6} linux-2 (watcher)" in shown


async def test_a_scale_set_instance_has_its_own_port_and_hears_the_lab_stop(
    tmp_path: Path,
) -> None:
    port = free_ports(2)
    vms = f"""
[[scale_sets]]
name = "web"
resource_group = "lab-rg"
capacity = 2
rfc2217_port = {port}
"""
    async with running_lab(tmp_path, vms=vms) as handle:
        client = await SerialClient.open(port + 1)  # instance 1
        try:
            await client.send_break()
            await client.type("h")
            await client.expect(r"sysrq: HELP")
            assert b"sysrq: HELP" in handle.runtime.hubs["web_1"].bootlog.read(0).contents
            assert b"sysrq: HELP" not in handle.runtime.hubs["web_0"].bootlog.read(0).contents
            doors = handle.runtime.rfc2217
            assert doors is not None
            closing = asyncio.create_task(doors.close())  # what the lab does when it stops
            await client.expect(r"The gateway is shutting down\.")
        finally:
            await client.close()
        async with asyncio.timeout(scaled(10)):
            await closing
        assert handle.runtime.context is not None
        rows = handle.runtime.context.audit.query(user="rfc2217", action="console.break")
        assert [(r.outcome, r.target.rsplit("/", 2)[-2:]) for r in rows][-1] == (
            "succeeded",
            ["virtualMachines", "1"],
        )


async def test_a_door_on_a_port_in_use_stops_the_lab_saying_which(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        vms = f"""
[[vms]]
name = "linux-1"
resource_group = "lab-rg"
rfc2217_port = {port}
"""
        with pytest.raises(
            LabRuntimeError, match=re.escape(f"127.0.0.1:{port} for the RFC 2217 door of 'linux-1'")
        ):
            async with running_lab(tmp_path, vms=vms):
                pass


@pytest.mark.parametrize(
    "negotiation",
    [
        b"\xff\xfa\x2c\x03\x63\xff\xf0",  # SET_PARITY 99: no such parity
        b"\xff\xfa\x2c\x01\xff\xf0",  # SET_BAUDRATE with no rate
    ],
)
async def test_a_malformed_negotiation_closes_with_a_line_saying_what_to_use(
    lab: tuple[LabHandle, int, int], negotiation: bytes
) -> None:
    handle, port, _ = lab
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(negotiation)
        async with asyncio.timeout(scaled(10)):
            said = await reader.readuntil(b"Use an RFC 2217 client")
    finally:
        writer.close()
    assert b"could not read this client's telnet/RFC 2217 negotiation" in said
    writer_session = handle.runtime.hubs["linux-1"].writer
    assert writer_session is None or not writer_session.is_open


async def test_the_labs_idle_timeout_warns_then_closes_a_silent_client(
    lab: tuple[LabHandle, int, int],
) -> None:
    handle, port, _ = lab
    assert handle.runtime.context is not None
    handle.runtime.context.idle_timeout = 2.0
    client = await SerialClient.open(port)
    try:
        await client.expect(
            r"\[This console closes in [12] seconds without input\. Type to stay\.\]"
        )
        await client.expect(r"Closed after [0-9.]+ minutes without input\. Reconnect to go on\.")
    finally:
        await client.close()
    doors = handle.runtime.rfc2217
    assert doors is not None
    async with asyncio.timeout(scaled(10)):
        await doors.wait_idle()
    rows = handle.runtime.context.audit.query(user="rfc2217", action="console.disconnect")
    assert [r.detail for r in rows] == ["idle for 0.0333333 minutes"]


@pytest.mark.slow  # 96 MiB through loopback: make test, not the inner loop
async def test_a_client_that_asks_and_never_reads_is_held_then_let_go(
    lab: tuple[LabHandle, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Telnet option requests, each answered, sent by the megabyte and never read: the
    gateway (in this process) does not grow by the answers it cannot send, and lets the
    client go after the stall bound (made short here)."""
    for bound in ("STALL_BOUND", "CLOSE_BOUND", "LINGER"):
        monkeypatch.setattr(door, bound, 1.0)
    handle, port, _ = lab
    request = b"\xff\xfd\x63" * 4096  # IAC DO <an option nobody offers>: each gets a WONT
    total = 96 << 20

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(scaled(30))
            with contextlib.suppress(OSError):  # let go: reset
                for _ in range(total // len(request)):
                    sock.sendall(request)

    def rss() -> int:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) << 10  # type: ignore[union-attr]

    before, peak = rss(), 0
    sender = asyncio.ensure_future(asyncio.to_thread(flood))
    while not sender.done():
        peak = max(peak, rss())
        await asyncio.sleep(0.02)
    await sender
    assert peak - before < 32 << 20, f"grew by {(peak - before) >> 20} MiB of {total >> 20} MiB"
    assert handle.runtime.context is not None
    rows = handle.runtime.context.audit.query(user="rfc2217", action="console.disconnect")
    assert any("client stopped reading" in r.detail for r in rows), [r.detail for r in rows]
