"""The pytest plugin (entry point ``pytest11``: ``serial_console_lab``): a lab for a test suite.

Fixtures::

    serial_lab   (session) the lab: started for the run, or one already running (--lab-url)
    console      (function) console("linux-1"), console("web-vmss", instance=0): a Console

Options (each with an ini key of the same name, dashes as underscores)::

    --lab-file FILE       the lab to start (default: the lab `make run-lab` starts)
    --lab-emulated        every guest emulated (no QEMU needed)
    --lab-url URL         use the lab running at URL instead of starting one
    --lab-user NAME       the lab user the tests act as (default: the first who may connect)
    --lab-password TEXT   that user's password (default: the lab file's)
    --lab-keep            leave the lab running after the run, and print how to reach it
    --lab-xdist-group G   under ``-n`` with ``--dist loadgroup``: every test that uses the
                          lab joins xdist group G, so one worker starts one lab and runs
                          them in their order (default: each worker a lab of its own)

Marker: ``@pytest.mark.lab_fresh`` hard-resets each guest a test opens a console on (or only
those named: ``lab_fresh("linux-1")``) and waits for its boot before handing it over.

The lab runs as a child process (``serial-console lab run``), not in the test process's
event loop: its loop, signals and QEMUs are its own, whatever the tests do with theirs
(pytest-asyncio gives each test a loop; a session lab would outlive them); it is exactly
what a person starts; and it is stopped by one SIGINT, so Ctrl+C of the run, a failing
fixture or the end of the run deallocate every guest. If the run is killed outright the lab
gets SIGTERM from the kernel (parent-death signal) and still stops its QEMUs.

Under pytest-xdist each worker starts a lab of its own (a free port, a state folder in the
worker's temporary folder), so no two workers ever share a console; with --lab-xdist-group
(and ``--dist loadgroup``) the lab's tests all go to one worker instead, which starts the
one lab, while the tests that need no lab run beside them.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

from gateway.access.users import User, password_weakness
from gateway.lab.config import (
    DEFAULT_GUEST_PASSWORD,
    LabConfig,
    LabConfigError,
    load_default_lab,
    load_lab,
)
from gateway.testing.client import LabClient
from gateway.testing.console import BOOT, Console, ConsoleError, strip_ansi
from gateway.testing.lab import LabProcess, LabStartError
from gateway.testing.timeouts import scale

CONSOLES = pytest.StashKey[list[Console]]()
KEPT = pytest.StashKey[list[str]]()
LAB_WARNINGS = pytest.StashKey[list[str]]()
# A line the lab logs at WARNING or above: "2026-12-02 05:01:37,805 WARNING logger: text".
WARNING_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \S+: (.*)$", re.M)
CONNECTING_ROLES = ("Owner", "Contributor", "Virtual Machine Contributor")
START_TIMEOUT = 180.0  # the whole lab, QEMU guests included, on a busy machine
TRANSCRIPT_LIMIT = 100_000  # characters of a console's transcript in a report (the newest)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("serial-console-lab", "Serial Console Lab")

    def option(name: str, help: str, **kwargs: Any) -> None:
        group.addoption(f"--{name}", dest=name.replace("-", "_"), help=help, **kwargs)
        ini_type: Literal["bool", "string"] = (
            "bool" if kwargs.get("action") == "store_true" else "string"
        )
        parser.addini(name.replace("-", "_"), help, type=ini_type)

    option("lab-file", "the lab file to start (default: the lab make run-lab starts)")
    option("lab-emulated", "run every guest emulated (no QEMU needed)", action="store_true")
    option("lab-url", "use the lab already running at this URL instead of starting one")
    option("lab-user", "the lab user the tests act as (default: the first who may connect)")
    option("lab-password", "that user's password (default: the lab file's)")
    option(
        "lab-keep",
        "leave the lab running after the run and print how to reach it",
        action="store_true",
    )
    option(
        "lab-xdist-group",
        "under -n with --dist loadgroup: the xdist group of every test that uses the lab, "
        "so one worker starts one lab for them all (default: a lab per worker)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab_fresh(*vms): hard-reset each guest the test opens a console on (or only the "
        "named ones) and wait for its boot first",
    )
    config.stash[KEPT] = []
    try:
        scale()
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    workers = getattr(config.option, "numprocesses", None)
    if workers and _setting(config, "lab_keep"):
        raise pytest.UsageError(
            "--lab-keep keeps one lab up to debug with: run without -n (pytest-xdist starts "
            "a lab per worker)"
        )
    if workers and _setting(config, "lab_url"):
        raise pytest.UsageError(
            "--lab-url shares one lab, and xdist's workers would fight over its consoles: "
            "drop --lab-url (each worker then starts a lab of its own) or run without -n"
        )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group = _setting(config, "lab_xdist_group")
    if not group:
        return
    for item in items:
        if "serial_lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(str(group)))


def _setting(config: pytest.Config, name: str) -> Any:
    """The command line's value of ``name``, else the ini file's."""
    value = config.getoption(name, None)
    if value not in (None, False, ""):
        return value
    return config.getini(name)


def _lab_file(config: pytest.Config) -> Path | None:
    """--lab-file (relative to the working folder), else the ini's ``lab_file`` (relative
    to the ini file's folder); None for the default lab."""
    given = config.getoption("lab_file", None)
    if given:
        return Path(given).resolve()
    written = config.getini("lab_file")
    if not written:
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return (base / str(written)).resolve()


@dataclass
class SerialLab:
    """The lab of this run, and how to reach it.

    ``url`` and ``client`` (a signed-in ``LabClient``) always; ``process`` and ``config``
    when the plugin started it (None for ``--lab-url``)."""

    url: str
    client: LabClient
    process: LabProcess | None = None
    config: LabConfig | None = None
    password: str = ""
    guests: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def user(self) -> str:
        return self.client.user

    def guest_password(self, vm: str) -> str:
        """The root (or Administrator) password of ``vm``, as the lab file sets it."""
        if self.config is not None:
            for spec in self.config.machine_specs():
                if spec.name == vm or spec.name.startswith(f"{vm}_"):
                    return spec.password
        return DEFAULT_GUEST_PASSWORD

    def console(
        self,
        vm: str,
        instance: int | None = None,
        *,
        group: str | None = None,
        watch: bool = False,
    ) -> Console:
        """A new console on ``vm`` (instance ``instance`` of a scale set) in resource group
        ``group`` (default: the one holding ``vm``); close it yourself, or use the
        ``console`` fixture, which closes and reports them."""
        return Console.open(
            self.client,
            vm,
            instance,
            group=group,
            password=self.guest_password(vm),
            watch=watch,
        )

    def power_state(self, vm: str, instance: int | None = None) -> str:
        """The VM's power state from its instance view (REST)."""
        return self.client.power_state(vm, instance)

    def wait_until_up(self, timeout: float = BOOT) -> None:
        """Wait until each guest shows its login prompt (``SAC>`` on Windows), watching its
        console (read only: nobody is displaced). Guests whose console the lab refuses
        (boot diagnostics off) are skipped: their power state was checked at start."""
        watchers: list[Console] = []
        try:
            for vm, instance in self.guests:
                try:
                    watchers.append(self.console(vm, instance, watch=True))
                except ConsoleError:
                    continue
            for watcher in watchers:
                watcher.wait_for_boot(timeout)
        finally:
            for watcher in watchers:
                watcher.close()

    def _shown_password(self) -> str:
        """The user's password when it is a demo one (as the lab's banner shows them);
        a real one never reaches a terminal or a CI log."""
        user = User(self.user, self.password)
        return self.password if self.password and password_weakness(user) else "PASSWORD"

    def how_to_connect(self) -> str:
        """Lines a person types to reach this lab's consoles."""
        group = "lab-rg"
        vm = self.guests[0][0] if self.guests else "linux-1"
        if self.config is not None and self.config.vms:
            group = self.config.vms[0].resource_group
        where = ""
        if self.process is not None:
            where = f" (pid {self.process.pid}, state in {self.process.state_dir})"
        lines = [
            f"Serial Console Lab left running at {self.url}{where}",
            f"  serial-console login --url {self.url} --username {self.user} "
            f"--password {self._shown_password()}",
            f"  serial-console connect -g {group} -n {vm}",
        ]
        if self.process is not None:
            lines.append(f"  stop it: kill -INT {self.process.pid}")
        return "\n".join(lines)


def _refuse(message: str) -> NoReturn:
    """Fail every test that needs the lab with ``message`` alone (no traceback: the
    message says what to do)."""
    pytest.fail(message, pytrace=False)


def _connecting_user(config: LabConfig) -> tuple[str, str]:
    """The first user of ``config`` with a password and a role that may connect."""
    for user in config.users:
        if user.password and any(a.role in CONNECTING_ROLES for a in user.roles):
            return user.name, user.password
    _refuse(
        f"{config.source}: no user with a password may use the consoles (roles "
        f"{', '.join(CONNECTING_ROLES)}): add one, or name one with --lab-user/--lab-password"
    )


def _guests(config: LabConfig) -> list[tuple[str, int | None]]:
    found: list[tuple[str, int | None]] = [(vm.name, None) for vm in config.vms]
    for vmss in config.scale_sets:
        found += [(vmss.name, int(i.instance_id)) for i in vmss.instances]
    return found


def _require_qemu(config: LabConfig) -> None:
    """Fail, saying what to do, when the lab runs QEMU guests this machine cannot."""
    from gateway.machines.image import IMAGE_DIR, KERNEL, not_built

    specs = [s for s in config.machine_specs() if s.backend == "qemu"]
    if not specs:
        return
    if shutil.which("qemu-system-x86_64") is None:
        _refuse(
            "the lab runs QEMU guests and qemu-system-x86_64 is missing: sudo apt-get install "
            "qemu-system-x86, or run every guest emulated with --lab-emulated"
        )
    if any(s.image.kernel is None for s in specs) and not (IMAGE_DIR / KERNEL).is_file():
        _refuse(f"{not_built(IMAGE_DIR)} (or use --lab-emulated)")


def _start(pytestconfig: pytest.Config, folder: Path) -> SerialLab:
    """Start the lab the options name; return it once it serves."""
    path = _lab_file(pytestconfig)
    emulated = bool(_setting(pytestconfig, "lab_emulated"))
    try:
        config = load_lab(path) if path else load_default_lab()
    except LabConfigError as err:
        problem = f"--lab-file: {err}"  # said outside the except: no chained traceback
    else:
        problem = ""
    if problem:
        _refuse(problem)
    if not emulated:
        _require_qemu(config)
    else:
        from gateway.cli.lab import emulated_only

        config = emulated_only(config)
    user, password = _connecting_user(config)
    user = _setting(pytestconfig, "lab_user") or user
    password = _setting(pytestconfig, "lab_password") or password
    keep = bool(_setting(pytestconfig, "lab_keep"))
    process = LabProcess.start(
        folder,
        lab=path,
        emulated=emulated,
        timeout=START_TIMEOUT,
        die_with_parent=not keep and threading.current_thread() is threading.main_thread(),
    )
    try:
        failed = process.start_failures
        if failed:
            raise LabStartError(
                "some guests did not start: "
                + "; ".join(f"{vm}: {why}" for vm, why in failed.items())
                + f"\n{process.output}"
            )
        client = LabClient(process.url, user, password)
    except BaseException:
        process.stop()
        raise
    return SerialLab(process.url, client, process, config, password, _guests(config))


def _attach(pytestconfig: pytest.Config) -> SerialLab:
    """The lab running at --lab-url, signed in as --lab-user."""
    url = str(_setting(pytestconfig, "lab_url"))
    user = _setting(pytestconfig, "lab_user")
    password = _setting(pytestconfig, "lab_password")
    if not user or not password:
        _refuse("--lab-url needs --lab-user and --lab-password (a user who may use the consoles)")
    client = LabClient(url, str(user), str(password))
    guests: list[tuple[str, int | None]] = [(vm["name"], None) for vm in client.vms()]
    return SerialLab(url, client, password=str(password), guests=guests)


@pytest.fixture(scope="session")
def serial_lab(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SerialLab]:
    """The lab of this run, every guest up (its login prompt shown); stopped at the end with
    no QEMU left, unless --lab-keep (a lab given by --lab-url is never stopped)."""
    if _setting(pytestconfig, "lab_url"):
        lab = _attach(pytestconfig)
    else:
        lab = _start(pytestconfig, tmp_path_factory.mktemp("serial-lab"))
    try:
        lab.wait_until_up()
        yield lab
    finally:
        lab.client.close()
        if lab.process is not None:
            try:
                if _setting(pytestconfig, "lab_keep"):
                    pytestconfig.stash[KEPT].append(lab.how_to_connect())
                else:
                    _stop(lab.process)
            finally:
                pytestconfig.stash[LAB_WARNINGS] = lab_warnings(lab.process.output)


def lab_warnings(output: str) -> list[str]:
    """What the lab warned of in ``output`` (a guest that fell back, a boot log it had to
    repair, ...), one line each, as ``warning: text``."""
    return [f"{level.lower()}: {text}" for level, text in WARNING_LINE.findall(output)]


def _stop(process: LabProcess) -> None:
    """Stop the lab (Ctrl+C to its pid); fail loudly if it leaves a QEMU behind."""
    code = process.stop()
    left = process.qemu_pids()
    if left:
        raise AssertionError(
            f"the lab (exit status {code}) left QEMU processes {left}:\n{process.output}"
        )
    if code != 0:
        raise AssertionError(f"the lab stopped with exit status {code}:\n{process.output}")


@pytest.fixture
def console(
    serial_lab: SerialLab, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Console]]:
    """``console(vm, instance=None, group=None)``: that guest's console, opened once per
    test (asking twice gives the same one) and closed after it. Its transcript goes into
    the report when the test fails; with ``lab_fresh``, the guest is reset and booted
    first."""
    opened: dict[tuple[str, int | None, str | None], Console] = {}
    used = request.node.stash.setdefault(CONSOLES, [])
    marker = request.node.get_closest_marker("lab_fresh")

    def open_console(vm: str, instance: int | None = None, group: str | None = None) -> Console:
        key = (vm, instance, group)
        if key not in opened:
            console = serial_lab.console(vm, instance, group=group)
            console.on_open.append(used.append)
            used.append(console)
            opened[key] = console
            if marker is not None and (not marker.args or vm in marker.args):
                console.reset()
                console.wait_for_boot()
        return opened[key]

    yield open_console
    for console in used:
        console.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, one report section per console the test used: what it showed while
    the test ran, terminal sequences stripped."""
    report = yield
    if report.failed:
        for console in item.stash.get(CONSOLES, []):
            kind = "watch" if console.watching else "console"
            text = strip_ansi(console.live_text)
            if len(text) > TRANSCRIPT_LIMIT:
                left_out = len(text) - TRANSCRIPT_LIMIT
                text = f"[... {left_out} characters before]\n" + text[-TRANSCRIPT_LIMIT:]
            report.sections.append((f"Serial {kind} {console.name} (ANSI stripped)", text))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    warnings = terminalreporter.config.stash.get(LAB_WARNINGS, [])
    if warnings:
        terminalreporter.write_sep("=", "the lab's warnings")
        for line in warnings:
            terminalreporter.write_line(line)
    for text in terminalreporter.config.stash.get(KEPT, []):
        terminalreporter.write_sep("=", "lab kept (--lab-keep)")
        terminalreporter.write_line(text)
