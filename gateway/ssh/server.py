"""The SSH door: ``ssh -p PORT alice+lab-rg+linux-1@127.0.0.1`` opens that VM's console.

The user name says who signs in and which console (``gateway.ssh.address``); the password
is checked by the same sign-in as ``POST /oauth2/token`` (its lockout and audit rows), and
a public key against the user's ``ssh_keys`` in the lab file (a user with keys and no
password signs in by key only). A refused key is audited as a refused password is (action
``token``, outcome ``denied``, detail ``ssh: ...``); a locked user is refused by key too.
Then the session is a console, as ``az serial-console connect`` gives one:

- refusals first, in Azure's order and words (console disabled, no connect permission,
  unknown VM, not provisioned, not running, boot diagnostics off, port disabled): the
  text on stderr and exit status 1;
- Azure's banner, the replay, then live bytes; typed bytes go to the guest;
- an SSH break request (OpenSSH's ``~B``) is a serial BREAK, so ``~B`` then a key is a
  SysRq; Ctrl+] opens az's menu (``gateway.console.escape``: NMI, SysRq, reset, quit, Ctrl+]
  twice types 0x1d); every command goes through the lab's ``CommandPolicy``, and its
  outcome is shown on a line of its own;
- the command ``watch`` (``ssh ... watch``) is a read-only session; a writer takes the
  console over from the previous writer, whichever door either came through;
- the PTY's size is accepted; a writer on a Linux guest is shown the ``stty rows R cols
  C`` line that tells the guest that size, and again when the terminal is resized (a
  window-change request), at most once a second (``gateway.ssh.size``).

After the lab closed the console (taken over, idle, VM deallocated), Enter reconnects (as
Azure's text says; a writer then takes it back) and q leaves. The exit status is 0 when
the user leaves a live console, 1 when the lab refused or closed it.
The host key is made on first use in ``<state>/ssh_host_key`` (0600) and reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from pathlib import Path

import asyncssh

from gateway.access import audit, rbac
from gateway.access.errors import AccountLocked, AuthorizationError, InvalidCredentials
from gateway.access.users import User
from gateway.console import texts
from gateway.console.connection import Refused
from gateway.console.errors import ConsoleError
from gateway.console.escape import (
    EscapeMenu,
    Forward,
    Quit,
    Reconnect,
    SendNmi,
    SendReset,
    SendSysRq,
    Show,
)
from gateway.console.frames import CloseCode
from gateway.console.opening import ConsoleUnavailable, check_console_enabled, check_open
from gateway.console.policy import Actor, Target
from gateway.console.render import framed_line, line_of
from gateway.console.serve import idle_watch, serve
from gateway.console.sessions import (
    Closing,
    ConsoleSession,
    Item,
    Output,
    Role,
    Shown,
)
from gateway.lab.context import LabContext, service_of
from gateway.lab.errors import ArmError
from gateway.lab.inventory import VmResource, check_instance, check_name
from gateway.lab.signin import audit_refusal, sign_in
from gateway.ssh.address import AddressError, ConsoleAddress, parse, user_of
from gateway.ssh.errors import SshError
from gateway.ssh.size import SizeHints

STALL_BOUND = 60.0  # seconds a client may leave sent bytes unread before it is let go
log = logging.getLogger("serial_console_lab.ssh")

HOST_KEY_FILE = "ssh_host_key"
WATCH = "watch"
EXIT_LEFT = 0  # the user left (Ctrl+] q, ~., end of input)
EXIT_REFUSED = 1  # refused, or closed by the lab (taken over, idle, VM deallocated...)
READ_SIZE = 4096


class SshDoorError(SshError):
    """The SSH door cannot start (its port, its host key); the message says what to do."""


def load_host_key(state_dir: Path) -> asyncssh.SSHKey:
    """The door's host key, ``<state_dir>/ssh_host_key``: made (ed25519, 0600) on first
    use, then the same one every run, so clients' known_hosts stay right."""
    path = state_dir / HOST_KEY_FILE
    try:
        if path.exists():
            return asyncssh.read_private_key(path)
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        return key
    except (OSError, asyncssh.KeyImportError) as err:
        raise SshDoorError(
            f"cannot use the SSH host key {path}: {err}. Remove the file to make a new one "
            "(clients will then warn that the host key changed)."
        ) from err


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``SHA256:...``, as ``ssh`` shows it when it first meets the host."""
    return str(key.get_fingerprint("sha256"))


class SshDoor:
    """The lab's SSH server: ``start(host, port)``, ``port``, ``fingerprint``, ``close()``."""

    def __init__(self, ctx: LabContext, host_key: asyncssh.SSHKey) -> None:
        self.ctx = ctx
        self.host_key = host_key
        self.service = service_of(ctx)
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key)

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: any free port); SshDoorError when it cannot."""
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: _Server(self),
                host,
                port,
                server_host_keys=[self.host_key],
                process_factory=self._serve,
                encoding=None,
                line_editor=False,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                keepalive_interval=30,
            )
        except OSError as err:
            raise SshDoorError(
                f"cannot listen for SSH on {host}:{port}: {err.strerror or err} (another lab "
                "may be running; pick another --ssh-port, or 0 to turn SSH off)"
            ) from err
        self.port = self._acceptor.get_port()

    async def close(self) -> None:
        """Stop listening and end the connections left (their consoles were closed
        before, each with its reason), within a bound."""
        if self._acceptor is not None:
            self._acceptor.close()
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                if self._acceptor is not None:
                    await self._acceptor.wait_closed()
                await asyncio.gather(
                    *(conn.wait_closed() for conn in connections), return_exceptions=True
                )
        self._acceptor = None

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        console = _Console(self, process)
        try:
            status = await console.run()
        except Exception:  # a bug must not leave the client hanging without a word
            log.exception("SSH console of %s failed", console.user_name)
            _write(process, "\r\nThe gateway failed: see the lab's log.\r\n")
            status = EXIT_REFUSED
        with contextlib.suppress(Exception):
            process.exit(status)


def matches(key: asyncssh.SSHKey, user: User) -> bool:
    """True when ``key`` is one of ``user``'s ``ssh_keys``; a key line that does not parse
    is logged and never matches."""
    for line in user.ssh_keys:
        try:
            known = asyncssh.import_public_key(line)
        except (asyncssh.KeyImportError, ValueError) as err:
            log.warning("user %s: an ssh_keys entry is not a public key (%s)", user.name, err)
            continue
        if known.public_data == key.public_data:
            return True
    return False


class _Server(asyncssh.SSHServer):
    """Password sign-in against the lab's users (``sign_in``: lockout and audit), and
    public keys against their ``ssh_keys`` (refusals audited the same way)."""

    def __init__(self, door: SshDoor) -> None:
        self.door = door
        self.ctx = door.ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.door.connections.add(conn)
        peer = conn.get_extra_info("peername") or ("", 0)
        self.address = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.door.connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        assert self.conn is not None
        try:
            user = sign_in(self.ctx, user_of(username), password, self.address, grant="ssh")
        except AccountLocked as err:
            with contextlib.suppress(Exception):
                wait = max(1, math.ceil(err.retry_after))
                self.conn.send_auth_banner(f"{err} Try again in {wait} s.\r\n")
            return False
        except InvalidCredentials:
            return False
        self.conn.set_extra_info(lab_user=user, lab_address=self.address)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Asked once when the client offers ``key`` and once more with its signature:
        True for a key of the user (not locked); a refusal is audited, and does not count
        towards the lockout (clients offer each key they hold in turn)."""
        assert self.conn is not None
        name = user_of(username)
        try:
            self.ctx.directory.lockout.check(name)
        except AccountLocked as err:
            audit_refusal(self.ctx, "token", name[:64], self.address,
                          f"ssh: locked for {err.retry_after:.0f} s more")  # fmt: skip
            with contextlib.suppress(Exception):
                wait = max(1, math.ceil(err.retry_after))
                self.conn.send_auth_banner(f"{err} Try again in {wait} s.\r\n")
            return False
        user = self.ctx.directory.get(name)
        if user is None or not matches(key, user):
            audit_refusal(self.ctx, "token", name[:64], self.address,
                          f"ssh: public key {fingerprint(key)} is not one of the user's "
                          "ssh_keys")  # fmt: skip
            return False
        self.conn.set_extra_info(lab_user=user, lab_address=self.address)
        return True


def _write(process: asyncssh.SSHServerProcess[bytes], text: str, *, err: bool = False) -> None:
    stream = process.stderr if err else process.stdout
    with contextlib.suppress(Exception):
        stream.write(text.encode())


class _Console:
    """One SSH session on one console (see the module docstring)."""

    def __init__(self, door: SshDoor, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.door = door
        self.ctx = door.ctx
        self.process = process
        self.user: User = process.get_extra_info("lab_user")
        self.user_name = self.user.name
        self.address: str = process.get_extra_info("lab_address") or ""
        command = (process.command or "").strip()
        self.role = Role.WATCHER if command == WATCH else Role.WRITER
        self.command = command
        self.vm: VmResource | None = None
        self.session: ConsoleSession | None = None
        self.menu: EscapeMenu | None = None
        self.last_input = time.monotonic()
        self.activity = asyncio.Event()
        self.left = False
        self.closed_by_lab = False  # the last session was closed by the lab, not the user
        self.reconnect = asyncio.Event()  # Enter pressed on a closed console
        self.sizes = SizeHints()
        self.size_timer: asyncio.TimerHandle | None = None
        self.writing = False  # a session's writer task is the channel's one writer now

    # -- opening -----------------------------------------------------------------------

    async def run(self) -> int:
        try:
            if self.command not in ("", WATCH):
                raise Refused(
                    CloseCode.SESSION_REFUSED,
                    f"unknown command '{self.command[:64]}': run no command for the console, "
                    f"or '{WATCH}' to watch it read-only",
                )
            self._attach()
        except Refused as refused:
            _write(self.process, refused.message + "\r\n", err=True)
            return EXIT_REFUSED
        assert self.vm is not None
        self.menu = EscapeMenu(windows=self.vm.os_type != "linux", read_only=not self.writer)
        self._greet()
        reader = asyncio.create_task(self._read_loop())
        try:
            while True:
                self.menu.connection_opened()
                await self._serve(reader)
                if reader.done():
                    break
                self.closed_by_lab = True  # Azure's text said: press Enter to reconnect
                for action in self.menu.connection_closed():
                    if isinstance(action, Show):
                        self._show(action.text)
                self.reconnect.clear()
                waiting = asyncio.ensure_future(self.reconnect.wait())
                await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if reader.done():
                    break
                self.menu.reconnecting()
                try:
                    self._attach()
                except Refused as refused:
                    self._line(refused.message)
                    break
                self.closed_by_lab = False
                self._show(texts.BANNER + "\r\n")
        finally:
            if self.size_timer is not None:
                self.size_timer.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return EXIT_REFUSED if self.closed_by_lab else EXIT_LEFT

    def _attach(self) -> None:
        """Azure's checks, then a new session on the console (a writer takes over)."""
        self.vm = self._resolve(self._address())
        attached = self.door.service.attach(self.target(), self.actor(), secrets.token_hex(16))
        self.session = attached.session

    def _address(self) -> ConsoleAddress:
        name = self.process.get_extra_info("username") or ""
        try:
            return parse(name)
        except AddressError as err:
            raise Refused(CloseCode.SESSION_REFUSED, str(err)) from None

    def _resolve(self, address: ConsoleAddress) -> VmResource:
        """The VM of ``address``, after Azure's checks, in the connect route's order."""
        ctx = self.ctx
        inventory = ctx.inventory
        try:
            check_console_enabled(ctx.console.disabled)
            group = check_name("resource group", address.group)
            if address.instance is None:
                name = check_name("virtual machine", address.vm)
                scope = rbac.vm_scope(inventory.subscription_id, group, name)
            else:
                name = check_name("virtual machine scale set", address.vm)
                instance = check_instance(address.instance)
                scope = rbac.instance_scope(inventory.subscription_id, group, name, instance)
            try:
                rbac.check(self.user.name, self.user.roles, rbac.CONNECT, scope)
            except AuthorizationError:
                self.door.service.record(self.actor(), scope, "connect", audit.DENIED,
                                         f"ssh: {texts.NO_PERMISSION}")  # fmt: skip
                raise Refused(CloseCode.SESSION_REFUSED, texts.NO_PERMISSION) from None
            if address.instance is None:
                vm = inventory.vm(group, name)
            else:
                vm = inventory.instance(group, name, instance)
            check_open(vm, port_enabled=ctx.console.port_enabled(vm))
        except (ArmError, ConsoleUnavailable) as err:
            raise Refused(CloseCode.SESSION_REFUSED, err.message) from None
        if vm.hub is None:
            raise Refused(CloseCode.PORT_LOST, f"VM '{vm.name}' has no console in this lab")
        return vm

    @property
    def writer(self) -> bool:
        return self.role is Role.WRITER

    def actor(self) -> Actor:
        session = self.session
        active = session is None or session.is_open
        return Actor(
            self.user.name, self.user.roles, self.address, "ssh", self.role, active,
            session.id if session is not None else "",
        )  # fmt: skip

    def target(self) -> Target:
        assert self.vm is not None and self.vm.hub is not None
        return Target(self.vm.id, self.vm.name, self.vm.hub)

    # -- serving -----------------------------------------------------------------------

    def _greet(self) -> None:
        self._show(texts.BANNER + "\r\n")
        cols, rows = self.process.get_terminal_size()[:2]
        if self.offers_size and self.process.get_terminal_type():
            shown = self.sizes.opened(cols, rows, asyncio.get_running_loop().time())
            if shown is not None:
                self._show(shown + "\r\n")
        if not self.writer:
            self._show("[Watching read-only: CTRL + ] then q quits.]\r\n")

    @property
    def offers_size(self) -> bool:
        """Whether the ``stty`` hint helps: only a writer can type it, and only a Linux
        guest has ``stty`` (SAC has no terminal size to set)."""
        return self.writer and self.vm is not None and self.vm.os_type == "linux"

    def _size_changed(self, cols: int, rows: int) -> None:
        """A window-change request: the hint now, or once the last one is a second old."""
        if not self.offers_size:
            return
        loop = asyncio.get_running_loop()
        shown = self.sizes.changed(cols, rows, loop.time())
        if shown is not None:
            self._hint(shown)
        elif (due := self.sizes.due) is not None and self.size_timer is None:
            self.size_timer = loop.call_at(due, self._flush_size)

    def _flush_size(self) -> None:
        self.size_timer = None
        shown = self.sizes.flush(asyncio.get_running_loop().time())
        if shown is not None:
            self._hint(shown)

    def _hint(self, text: str) -> None:
        if self.session is not None and self.session.is_open:  # not on a closed console
            self.session.push_notice("size", text, ok=True)

    async def _serve(self, reader: asyncio.Task[None]) -> None:
        """One session, until it closes (the user left, or the lab closed it); then it is
        detached and audited."""
        assert self.session is not None
        session, target = self.session, self.target()
        idle = idle_watch(self.ctx.idle_timeout, lambda: session if session.is_open else None,
                          lambda: self.last_input, self.activity)  # fmt: skip
        self.writing = True
        ended = False
        try:  # the reader is the connection's, across its sessions: not the loop's
            ended = await serve(self._write_loop(), idle,
                                client_gone=(asyncssh.Error, ConnectionError, BrokenPipeError),
                                log=log, who=f"SSH console of {self.user_name}")  # fmt: skip
        finally:
            self.writing = False
            if not ended:
                reader.cancel()  # the client is gone: nothing more to read for
            session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)
            self.door.service.detach(target, self.actor(), session)

    def _show(self, text: str) -> None:
        """Text for the client (the banner, the menu's prompts). While a session is served
        its writer is the one writer on the channel, so the text goes through the session
        (in turn, and recorded); before and between sessions, straight out."""
        session = self.session
        if self.writing and session is not None and session.is_open:
            session.push_item(Shown(text))
        else:
            _write(self.process, text)

    async def _write_loop(self) -> None:
        """Session items -> the client's terminal, at its pace; then why it closed."""
        assert self.session is not None and self.menu is not None
        session = self.session
        while items := await session.take():
            for item in items:
                self._render(item)
            try:
                async with asyncio.timeout(STALL_BOUND):
                    await self.process.stdout.drain()
            except TimeoutError:  # a client that stopped reading holds nothing for ever
                log.info("SSH console of %s stopped reading: closed", self.user_name)
                session.close(Closing(CloseCode.FELL_BEHIND, "client stopped reading"),
                              drain=False)  # fmt: skip
                return
        closing = session.closing
        if closing is not None and closing.message and not self.left:
            self._show(f"\r\n{closing.message}\r\n")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.stdout.drain(), 5)

    def _render(self, item: Item) -> None:
        assert self.menu is not None
        if isinstance(item, Output):
            data = self.menu.output(item.data)
            if data:
                self.process.stdout.write(data)
        elif isinstance(item, Shown):
            self.process.stdout.write(item.text.encode())
        elif (text := line_of(item)) is not None:
            self._line(text)

    def _line(self, text: str) -> None:
        self._show(framed_line(text))

    async def _read_loop(self) -> None:
        """Keys, breaks and window sizes from the client, in order. A command runs before
        the next key is read, so ``~B`` then ``h`` reaches the guest as BREAK, then h.
        However it ends (the user left, the connection dropped), the session closes, so
        the writer stops and the console is freed."""
        try:
            await self._read_keys()
        finally:
            if self.session is not None:
                self.session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)

    async def _read_keys(self) -> None:
        assert self.session is not None and self.menu is not None
        stdin = self.process.stdin
        while True:
            try:
                data = await stdin.read(READ_SIZE)
            except asyncssh.BreakReceived:
                self._touch()
                await self._command("break")
                continue
            except asyncssh.TerminalSizeChanged as change:
                self._size_changed(change.width, change.height)  # the guest's tty: see the hint
                continue
            except asyncssh.SignalReceived:
                continue
            if not data:  # end of input (~. or the client went away)
                self._leave()
                return
            self._touch()
            for action in self.menu.receive_input(data):
                if isinstance(action, Forward):
                    self._type(action.data)
                elif isinstance(action, Show):
                    self._show(action.text)
                elif isinstance(action, SendNmi):
                    await self._command("nmi")
                elif isinstance(action, SendReset):
                    await self._command("reset")
                elif isinstance(action, SendSysRq):
                    await self._command("sysrq", [action.key])
                elif isinstance(action, Reconnect):
                    self.reconnect.set()
                elif isinstance(action, Quit):
                    self._leave()
                    return

    def _touch(self) -> None:
        self.last_input = time.monotonic()
        self.activity.set()

    def _leave(self) -> None:
        assert self.session is not None
        self.left = True
        self.session.close(Closing(CloseCode.NORMAL, "client left"), drain=False)

    def _type(self, data: bytes) -> None:
        assert self.session is not None and self.vm is not None and self.vm.hub is not None
        try:
            self.vm.hub.submit(self.session, data)
        except ConsoleError as err:
            self.session.push_notice("input", str(err))

    async def _command(self, command: str, keys: list[str] | None = None) -> None:
        """``command`` through the lab's policy; its outcome on a line of its own."""
        ok = True
        try:
            message = await self.door.service.policy.run(
                self.actor(), self.target(), command, keys or []
            )
        except ConsoleError as err:
            message, ok = str(err), False
        if command == "break" and ok:
            return  # silent, as on a serial line: the next key (a SysRq) answers for it
        assert self.session is not None
        # through the session, as every item the user sees: in order, and recorded
        self.session.push_notice(command, f"[{message}]", ok=ok)
